"""Pipeline overhead per pair, excluding the network.

1280×720 RGB + 640×512 mono16 thermal → 640×480 network input, plane-induced registration with lens
distortion on both cameras, percentile AGC, resize, post-processing of 9-class logits into labels,
confidence, colour and overlay at 1280×720. One thread. The network is a 1×1 convolution run through
the real TorchBackend; its time (the ``infer`` stage) is subtracted from each call's total.

Each output set (default: labels, then adding confidence, colour and overlay in turn) is measured in
turns of ``--block`` pairs, so that all of them share the drifts in the machine's speed.

Two clocks are reported: wall time (what a node sees on a quiet core) and the calling thread's CPU time
(``time.thread_time``), which does not count the time the thread sits preempted — on a shared,
oversubscribed machine the wall-clock median mostly measures the neighbours.

``--breakdown`` also times each building block alone on the same inputs (thread CPU, median and p95), and
``--maps`` times the one-off build of the plane-induced warp maps for this rig (what the first pair of a geometry
pays), into the network grid and into the RGB grid (``registered_aux``), best of three, each with a fresh ``Registrar``.
``--depth`` times depth reprojection with the z-buffer and hole filling (``Registrar.register_depth``) on the
real 848×480 OpenLORIS frames in ../shared/data when present, else on a synthetic depth image of that size.

    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 python benchmarks/pipeline_overhead.py [--iters 200] [--outputs LIST ...]
        [--breakdown] [--maps] [--depth]

Measured figures, with the load they were taken under: BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from rgbt_seg_ros.inference.artifact import ModelCard  # noqa: E402
from rgbt_seg_ros.inference.torch_backend import TorchBackend  # noqa: E402
from rgbt_seg_ros.pipeline import CameraModel, Extrinsics, LatencyStats, SegmentationPipeline, get_class_set  # noqa: E402
from rgbt_seg_ros.pipeline import load_camera, load_extrinsics  # noqa: E402
from rgbt_seg_ros.pipeline.normalize import scale_into, value_range  # noqa: E402
from rgbt_seg_ros.pipeline.postprocess import logits_to_labels, render  # noqa: E402
from rgbt_seg_ros.pipeline.registration import Registrar  # noqa: E402
from rgbt_seg_ros.pipeline.resize import preprocess_rgb  # noqa: E402
from rgbt_seg_ros.tools.bench import cpu_info  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


class CpuTimedBackend:
    """Delegates to a real backend and records the thread CPU time of each ``infer``."""

    def __init__(self, inner):
        self.inner, self.card, self.name = inner, inner.card, inner.name
        self.last_cpu_ms = 0.0

    def infer(self, rgb, aux):
        t = time.thread_time()
        out = self.inner.infer(rgb, aux)
        self.last_cpu_ms = (time.thread_time() - t) * 1e3
        return out


class OneByOne(torch.nn.Module):
    def __init__(self, k: int):
        super().__init__()
        self.conv = torch.nn.Conv2d(4, k, 1)

    def forward(self, rgb, aux):
        return self.conv(torch.cat([rgb, aux], 1))


# What a node computes depends on what is subscribed: each set adds one output to the one before.
DEFAULT_SETS = ("labels", "labels,confidence", "labels,confidence,colour", "labels,confidence,colour,overlay")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=200, help="measured pairs per output set")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--outputs", action="append", metavar="LIST",
                    help="comma-separated outputs to compute (a node computes only what is subscribed); repeat "
                         "for several sets, measured interleaved; default: " + " | ".join(DEFAULT_SETS))
    ap.add_argument("--block", type=int, default=10,
                    help="pairs per set in turn: the sets share the machine's drifts in speed (default 10)")
    ap.add_argument("--breakdown", action="store_true", help="also time each building block alone (thread CPU)")
    ap.add_argument("--maps", action="store_true", help="also time the one-off warp-map build for this rig")
    ap.add_argument("--depth", action="store_true", help="also time depth reprojection (register_depth), 848×480")
    args = ap.parse_args()
    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    cs = get_class_set("mfnet")
    card = ModelCard(network="bench_1x1", num_classes=cs.num_classes, class_names=list(cs.class_names),
                     palette=[list(c) for c in cs.palette], input_size=(480, 640))
    rgb_cam = CameraModel(K=[[900, 0, 640], [0, 900, 360], [0, 0, 1]], D=[-0.1, 0.05, 0, 0, 0], width=1280, height=720)
    th_cam = CameraModel(K=[[510, 0, 320], [0, 510, 256], [0, 0, 1]], D=[-0.43, 0.19, 0, 0, 0], width=640, height=512)
    ext = Extrinsics(cv2.Rodrigues(np.array([0.01, -0.02, 0.005]))[0], [0.08, 0.01, 0.0])
    backend = CpuTimedBackend(TorchBackend(OneByOne(cs.num_classes), card))
    pipe = SegmentationPipeline(backend, {
        "registration": {"mode": "plane", "plane_distance": 15.0},
        "normalization": {"thermal_agc": "percentile", "thermal_percentiles": [1, 99]},
        "resize_mode": "stretch", "overlay_alpha": 0.5})
    rng = np.random.default_rng(0)
    rgbs = [rng.integers(0, 256, (720, 1280, 3), dtype=np.uint8) for _ in range(4)]
    ths = [rng.integers(20000, 30000, (512, 640), dtype=np.uint16) for _ in range(4)]
    sets = [frozenset(o.strip() for o in spec.split(",") if o.strip()) for spec in (args.outputs or DEFAULT_SETS)]
    print(machine_line())
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; {args.iters} pairs per output set, "
          f"in turns of {args.block}")
    stats = [LatencyStats() for _ in sets]
    wall = [[] for _ in sets]
    cpu = [[] for _ in sets]
    frame = 0

    def one(k: int, measured: bool) -> None:
        nonlocal frame
        frame += 1
        t_cpu = time.thread_time()
        r = pipe.process(rgbs[frame % 4], ths[frame % 4], "mono16", rgb_camera=rgb_cam, aux_camera=th_cam,
                         extrinsics=ext, outputs=sets[k])
        cpu_ms_ = (time.thread_time() - t_cpu) * 1e3
        if measured:
            stats[k].add(r.timings)
            wall[k].append(r.timings["total"] - r.timings["infer"])
            cpu[k].append(cpu_ms_ - backend.last_cpu_ms)

    for k in range(len(sets)):
        for _ in range(args.warmup):
            one(k, False)
    for start in range(0, args.iters, args.block):
        for k in range(len(sets)):
            for _ in range(min(args.block, args.iters - start)):
                one(k, True)
    print(f"stages, outputs {', '.join(sorted(sets[-1]))}:")
    print(stats[-1].format())
    print(f"maps built: {pipe.registrar.maps_built} (once per geometry)")
    print("overhead excluding the network, per pair (ms):")
    print(f"  {'outputs':<36}{'thread CPU median':>18}{'p95':>8}{'wall median':>13}{'p95':>8}")
    for outputs, c, w in zip(sets, cpu, wall):
        c, w = np.asarray(c), np.asarray(w)
        print(f"  {','.join(o for o in ('labels', 'confidence', 'colour', 'overlay', 'registered_aux') if o in outputs):<36}"
              f"{np.median(c):18.2f}{np.percentile(c, 95):8.2f}{np.median(w):13.2f}{np.percentile(w, 95):8.2f}")
    if args.breakdown:
        breakdown(pipe, rgbs, ths, rgb_cam, th_cam, ext, args.iters)
    if args.maps:
        maps_benchmark(pipe, rgb_cam, th_cam, ext)
    if args.depth:
        depth_benchmark(args.iters)
    return 0


def machine_line() -> str:
    """The CPU these figures belong to, and how fast it runs plain Python right now.

    The development machines are shared VMs whose host, and speed, change from one day to the next: a figure
    without its CPU (and LLVM's name for it, which decides the kernels' machine code) cannot be compared.
    """
    from llvmlite import binding as llvm

    info = cpu_info()
    if {"model name", "cpu family", "model"} <= info.keys():
        model = f"{info['model name']}, family {info['cpu family']} model {info['model']}"
    else:
        model = platform.processor() or "?"  # not Linux: the platform's name is all there is
    t = time.perf_counter()
    total = 0
    for i in range(10 ** 6):
        total += i
    loop_ms = (time.perf_counter() - t) * 1e3
    return (f"CPU {model} (LLVM: {llvm.get_host_cpu_name()}); a pure-Python loop of 10^6 additions took "
            f"{loop_ms:.0f} ms")


def cpu_ms(fn, iters: int) -> tuple[float, float]:
    """Median and p95 thread CPU (ms) of ``fn(i)``."""
    ts = []
    for i in range(iters):
        t = time.thread_time()
        fn(i)
        ts.append((time.thread_time() - t) * 1e3)
    return float(np.median(ts)), float(np.percentile(ts, 95))


def breakdown(pipe, rgbs, ths, rgb_cam, th_cam, ext, iters: int) -> None:
    """Each stage's building block alone, on the benchmark's inputs and the pipeline's own state."""
    tf = pipe._transform(rgbs[0].shape[:2])
    ncfg = pipe.config.normalization
    pipe.registrar.set_geometry(rgb_cam, th_cam, ext)
    lo, hi = value_range(ths[0], "mono16", "thermal", ncfg)
    warped = pipe.registrar.warp(ths[0], rgbs[0].shape[:2], tf, border_value=lo)
    rng = np.random.default_rng(1)
    logits = [(3 * rng.standard_normal((pipe.num_classes,) + tf.dst_hw)).astype(np.float32) for _ in range(4)]
    labels_s, conf_s = logits_to_labels(logits[0])
    maps = tf.nearest_index()
    alpha = pipe.config.overlay_alpha
    rows = [
        ("preprocess_rgb", lambda i: preprocess_rgb(rgbs[i % 4], tf, pipe._rgb_mean, pipe._rgb_std)),
        ("thermal AGC", lambda i: value_range(ths[i % 4], "mono16", "thermal", ncfg)),
        ("thermal warp", lambda i: pipe.registrar.warp(ths[i % 4], rgbs[0].shape[:2], tf, border_value=lo)),
        ("thermal scale", lambda i: scale_into(warped, lo, hi, 0.5, 0.25)),
        ("labels+confidence", lambda i: logits_to_labels(logits[i % 4])),
        ("labels only", lambda i: logits_to_labels(logits[i % 4], need_confidence=False)),
        ("confidence upsample + clip", lambda i: tf.inverse_clipped(conf_s)),
        ("render labels", lambda i: render(labels_s, *maps, pipe._lut, rgbs[i % 4], alpha, True, False, False)),
        ("render labels+colour", lambda i: render(labels_s, *maps, pipe._lut, rgbs[i % 4], alpha, True, True, False)),
        ("render labels+colour+overlay", lambda i: render(labels_s, *maps, pipe._lut, rgbs[i % 4], alpha, True, True, True)),
    ]
    print(f"building blocks alone, thread CPU (ms, n={iters}): {'median':>8}{'p95':>8}")
    for name, fn in rows:
        med, p95 = cpu_ms(fn, iters)
        print(f"  {name:<44}{med:8.2f}{p95:8.2f}")


def maps_benchmark(pipe, rgb_cam, th_cam, ext) -> None:
    """Wall time of building the warp maps from scratch, best of three (a fresh Registrar has no cache)."""
    tf = pipe._transform((720, 1280))
    for label, target in (("640×480 network grid", tf), ("1280×720 RGB grid (registered_aux)", None)):
        times = []
        for _ in range(3):
            reg = Registrar(pipe.config.registration)
            reg.set_geometry(rgb_cam, th_cam, ext)
            t = time.perf_counter()
            reg.warp_maps((512, 640), (720, 1280), target)
            times.append((time.perf_counter() - t) * 1e3)
        print(f"warp maps, {label}: {min(times):.0f} ms (best of 3)")


def depth_benchmark(iters: int) -> None:
    root = DATA / "openloris-rgbd"
    if (root / "sensors.yaml").is_file():
        rgb = load_camera(f"{root / 'sensors.yaml'}#d400_color_optical_frame")
        dep = load_camera(f"{root / 'sensors.yaml'}#d400_depth_optical_frame")
        ext = load_extrinsics(root / "trans_matrix.yaml", rgb="d400_color_optical_frame", aux="d400_depth_optical_frame")
        frames = [cv2.imread(str(p), cv2.IMREAD_UNCHANGED).astype(np.float32) * 1e-3
                  for p in sorted((root / "depth").glob("*.png"))]
        what = f"OpenLORIS raw depth ({len(frames)} frames)"
    else:
        rgb = CameraModel(K=[[615, 0, 424], [0, 615, 240], [0, 0, 1]], D=np.zeros(5), width=848, height=480)
        dep = CameraModel(K=[[425, 0, 424], [0, 425, 240], [0, 0, 1]], D=np.zeros(5), width=848, height=480)
        ext = Extrinsics(cv2.Rodrigues(np.array([0.0, 0.01, 0.0]))[0], [0.015, 0.0, 0.0])
        rng = np.random.default_rng(2)
        frames = [(0.5 + 5 * rng.random((480, 848))).astype(np.float32) for _ in range(4)]
        for f in frames:
            f[rng.random(f.shape) < 0.06] = 0.0  # invalid pixels, as a RealSense leaves them
        what = "synthetic depth (OpenLORIS frames absent)"
    hw = (rgb.height, rgb.width)
    # the same frames again with a lens on the colour camera (these RealSense colour intrinsics have none; many
    # RGB-D colour cameras do): the projection then goes through the distortion model
    lens = CameraModel(K=rgb.K, D=[0.1, -0.25, 0.001, 0.0005, 0.1], width=rgb.width, height=rgb.height)
    for rgb_cam, lens_desc in ((rgb, "colour camera without distortion"), (lens, "colour camera with plumb_bob "
                                                                                  "distortion")):
        reg = Registrar({"mode": "depth", "hole_fill": 1})
        reg.set_geometry(rgb_cam, dep, ext)
        reg.register_depth(frames[0], hw)  # builds the rays once
        wall = []

        def one(i):
            t = time.perf_counter()
            reg.register_depth(frames[i % len(frames)], hw)
            wall.append((time.perf_counter() - t) * 1e3)
        med, p95 = cpu_ms(one, iters)
        print(f"register_depth {frames[0].shape[1]}×{frames[0].shape[0]} → {hw[1]}×{hw[0]}, hole_fill 1, {what}, "
              f"{lens_desc}: thread CPU median {med:.2f} ms, p95 {p95:.2f} ms; wall median {np.median(wall):.2f} ms, "
              f"p95 {np.percentile(wall, 95):.2f} ms")


if __name__ == "__main__":
    raise SystemExit(main())
