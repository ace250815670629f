"""Pipeline overhead per pair, excluding the network.

1280×720 RGB + 640×512 mono16 thermal → 640×480 network input, plane-induced registration with lens
distortion on both cameras, percentile AGC, resize, post-processing of 9-class logits into labels,
confidence, colour and overlay at 1280×720. One thread. The network is a 1×1 convolution run through
the real TorchBackend; its time (the ``infer`` stage) is subtracted from each call's total.

Two clocks are reported: wall time (what a node sees on a quiet core) and the calling thread's CPU time
(``time.thread_time``), which does not count the time the thread sits preempted — on a shared,
oversubscribed machine the wall-clock median mostly measures the neighbours.

    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 python benchmarks/pipeline_overhead.py [--iters 200]
"""
from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from rgbt_seg_ros.inference.artifact import ModelCard  # noqa: E402
from rgbt_seg_ros.inference.torch_backend import TorchBackend  # noqa: E402
from rgbt_seg_ros.pipeline import CameraModel, Extrinsics, LatencyStats, SegmentationPipeline, get_class_set  # noqa: E402


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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--outputs", default="labels,colour,confidence,overlay",
                    help="comma-separated outputs to compute (a node computes only what is subscribed)")
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
    outputs = frozenset(o.strip() for o in args.outputs.split(",") if o.strip())
    print(f"outputs: {', '.join(sorted(outputs))}; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    stats = LatencyStats()
    overhead, overhead_cpu = [], []
    for i in range(args.warmup + args.iters):
        t_cpu = time.thread_time()
        r = pipe.process(rgbs[i % 4], ths[i % 4], "mono16", rgb_camera=rgb_cam, aux_camera=th_cam, extrinsics=ext,
                         outputs=outputs)
        cpu_ms = (time.thread_time() - t_cpu) * 1e3
        if i >= args.warmup:
            stats.add(r.timings)
            overhead.append(r.timings["total"] - r.timings["infer"])
            overhead_cpu.append(cpu_ms - backend.last_cpu_ms)
    o, oc = np.asarray(overhead), np.asarray(overhead_cpu)
    print(stats.format())
    print(f"maps built: {pipe.registrar.maps_built} (once per geometry)")
    print(f"overhead excluding the network, per pair (wall):       median {np.median(o):.2f} ms, "
          f"p95 {np.percentile(o, 95):.2f} ms, n={o.size}")
    print(f"overhead excluding the network, per pair (thread CPU): median {np.median(oc):.2f} ms, "
          f"p95 {np.percentile(oc, 95):.2f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
