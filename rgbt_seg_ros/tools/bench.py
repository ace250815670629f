"""rgbt-seg bench: network latency per backend, and pipeline overhead / end-to-end latency per pair."""
from __future__ import annotations

import argparse
import json
import platform
import tempfile
from pathlib import Path

import numpy as np

HELP = ("Benchmark the registered networks on each available backend (batch 1, random weights: latency does\n"
        "not depend on the values) and the full pipeline per pair (1280x720 RGB + 640x512 thermal -> network\n"
        "input -> outputs at RGB resolution). Prints a markdown table; --json/--markdown write them to files.\n"
        "Figures are measured on this machine as it runs; nothing is estimated.")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--networks", default="all", help="comma-separated registry names, or 'all' (default)")
    parser.add_argument("--variants", default="smallest", choices=("smallest", "default", "all"),
                        help="which variants of each network (default: smallest)")
    parser.add_argument("--backends", default="torch,onnxruntime", help="comma-separated: torch, onnxruntime")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "fp16", "bf16"))
    parser.add_argument("--compile-mode", default="off", choices=("off", "default", "reduce-overhead"),
                        help="torch backend: torch.compile mode (reduce-overhead = CUDA graphs on a GPU); the "
                             "compilation itself happens in the warm-up calls and is not timed")
    parser.add_argument("--size", default="640x480", help="network input WxH (default 640x480)")
    parser.add_argument("--num-classes", type=int, default=9)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--threads", type=int, default=0, help="CPU threads for torch/onnxruntime (0 = default)")
    parser.add_argument("--skip-networks", action="store_true", help="only the pipeline benchmark")
    parser.add_argument("--pipeline", action="store_true", help="also benchmark the pipeline with --model")
    parser.add_argument("--model", type=Path, default=None,
                        help="model file for the pipeline benchmark (default: the built-in model)")
    parser.add_argument("--pipeline-backend", default="torch", choices=("torch", "onnxruntime"),
                        help="backend for the pipeline benchmark (onnxruntime exports the model first)")
    parser.add_argument("--agreement", type=int, default=0, metavar="N",
                        help="also compare labels on N held-out synthetic frames (generator seed 2000) with --model: torch at "
                             "--precision and onnxruntime against torch fp32 on --device (0 = skip)")
    parser.add_argument("--json", type=Path, help="write all figures as JSON")
    parser.add_argument("--markdown", type=Path, help="write the tables as markdown")


def latency_stats(samples_ms: list[float]) -> dict:
    from rgbt_seg_ros.pipeline import LatencyStats

    stats = LatencyStats()
    for ms in samples_ms:
        stats.add({"infer": ms})
    s = stats.summary()["infer"]
    return {"p50_ms": s["p50"], "p95_ms": s["p95"], "p99_ms": s["p99"], "mean_ms": s["mean"],
            "fps": 1000.0 / s["mean"], "n": s["n"]}


def bench_network(name: str, variant: str, backends: list[str], args, h: int, w: int, workdir: Path) -> list[dict]:
    import torch

    from rgbt_seg_ros.inference import infer_times_ms
    from rgbt_seg_ros.inference.artifact import ModelCard
    from rgbt_seg_ros.inference.torch_backend import TorchBackend
    from rgbt_seg_ros.networks import create_network
    from rgbt_seg_ros.networks.complexity import count_macs, count_parameters

    k = args.num_classes
    torch.manual_seed(0)
    net = create_network(name, k, variant=variant).eval()
    card = ModelCard(network=name, variant=variant, num_classes=k, class_names=[str(i) for i in range(k)],
                     palette=[[0, 0, 0]] * k, input_size=(h, w), trained=False)
    base = {"network": name, "variant": variant, "params_M": count_parameters(net) / 1e6,
            "GMACs": count_macs(net, h, w), "size": f"{w}x{h}", "device": args.device}
    rng = np.random.default_rng(0)
    rgb = rng.standard_normal((1, 3, h, w)).astype(np.float32)
    aux = rng.standard_normal((1, 1, h, w)).astype(np.float32)
    rows = []
    for backend_name in backends:
        if backend_name == "torch":
            backend = TorchBackend(net, card, device=args.device, precision=args.precision,
                                   compile_mode=args.compile_mode)
        else:
            from rgbt_seg_ros.inference.export import exported_backend

            backend = exported_backend(net, card, workdir, args.device, args.precision, args.threads,
                                       check_sizes=((h, w),))
        samples = infer_times_ms(backend, rgb, aux, args.warmup, args.iters)
        rows.append({**base, "backend": backend.name, **latency_stats(samples)})
        print(_row_md(rows[-1]), flush=True)
    return rows


NET_HEADER = ("| network | variant | backend | params (M) | GMACs | p50 ms | p95 ms | p99 ms | FPS |\n"
              "|---|---|---|---:|---:|---:|---:|---:|---:|")


def _row_md(r: dict) -> str:
    return (f"| {r['network']} | {r['variant']} | {r['backend']} | {r['params_M']:.2f} | {r['GMACs']:.1f} | "
            f"{r['p50_ms']:.1f} | {r['p95_ms']:.1f} | {r['p99_ms']:.1f} | {r['fps']:.1f} |")


def cpu_info() -> dict[str, str]:
    """The first processor's fields in /proc/cpuinfo ("model name", "cpu family", "model", ...); {} off Linux."""
    try:
        with open("/proc/cpuinfo") as f:
            first = f.read().split("\n\n")[0]
    except OSError:
        return {}
    return {key.strip(): value.strip() for key, _, value in (line.partition(":") for line in first.splitlines())}


def machine_description(device: str) -> str:
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(torch.device(device))}, torch {torch.__version__}"
    import os

    # Linux: the CPU's marketing name, which platform.processor() leaves empty
    name = cpu_info().get("model name") or platform.processor() or platform.machine()
    return f"CPU {name}, {os.cpu_count()} logical cores, torch {torch.__version__}"


def main(args: argparse.Namespace) -> int:
    import torch

    from rgbt_seg_ros.errors import RgbtSegError
    from rgbt_seg_ros.networks import get_network_spec, list_networks
    from rgbt_seg_ros.tools import check_output_file

    for flag, value, least in (("--iters", args.iters, 1), ("--warmup", args.warmup, 0), ("--threads", args.threads, 0),
                               ("--agreement", args.agreement, 0)):
        if value < least:
            raise RgbtSegError(f"{flag}: must be ≥ {least}, got {value}")
    for flag, path in (("--json", args.json), ("--markdown", args.markdown)):
        if path is not None:  # before the benchmark, not after it; a report file may be replaced
            check_output_file(path, force=True, flag=flag)
    if args.model is not None and (args.pipeline or args.skip_networks or args.agreement):
        from rgbt_seg_ros.inference.artifact import read_card

        read_card(args.model)  # a missing or foreign file, before minutes of network benchmarks
        if args.agreement and args.model.suffix.lower() == ".onnx":
            raise RgbtSegError(f"--agreement: compares torch with onnxruntime, so --model must be the .safetensors "
                               f"model file, not the ONNX file {args.model}")
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        w, h = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        raise RgbtSegError(f"--size: expected WxH such as 640x480, got {args.size!r}") from None
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    for b in backends:
        if b not in ("torch", "onnxruntime"):
            raise RgbtSegError(f"--backends: unknown backend {b!r}; choose torch and/or onnxruntime")
    specs = list_networks() if args.networks == "all" else [get_network_spec(n.strip()) for n in args.networks.split(",")]
    report = {"machine": machine_description(args.device), "precision": args.precision, "networks": [],
              "pipeline": None, "agreement": None}
    print(f"# {report['machine']}, {args.precision}, batch 1, {w}x{h}\n")
    with tempfile.TemporaryDirectory() as tmp:  # exported ONNX files; each network overwrites the last
        workdir = Path(tmp)
        if not args.skip_networks:
            print(NET_HEADER, flush=True)
            for spec in specs:
                variants = {"smallest": [spec.smallest_variant], "default": [spec.default_variant],
                            "all": list(spec.variants)}[args.variants]
                for variant in variants:
                    report["networks"].extend(bench_network(spec.name, variant, backends, args, h, w, workdir))
        if args.pipeline or args.skip_networks:
            report["pipeline"] = bench_pipeline(args, workdir)
        if args.agreement:
            report["agreement"] = bench_agreement(args, workdir)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    if args.markdown:
        args.markdown.write_text(to_markdown(report))
    return 0


def to_markdown(report: dict) -> str:
    lines = [f"Machine: {report['machine']}; precision {report['precision']}; batch 1.", ""]
    if report["networks"]:
        lines += [NET_HEADER] + [_row_md(r) for r in report["networks"]] + [""]
    if report["pipeline"]:
        lines += [pipeline_markdown(report["pipeline"]), ""]
    if report.get("agreement"):
        lines += [agreement_markdown(report["agreement"]), ""]
    return "\n".join(lines)


def bench_agreement(args, workdir: Path) -> dict:
    """Share of pixels whose label matches torch fp32, on the held-out synthetic scenes, through the pipeline."""
    from rgbt_seg_ros.inference import builtin_model_path
    from rgbt_seg_ros.inference.artifact import load_model
    from rgbt_seg_ros.inference.export import exported_backend
    from rgbt_seg_ros.inference.torch_backend import TorchBackend
    from rgbt_seg_ros.training.datasets import SyntheticDataset
    from rgbt_seg_ros.training.evaluate import label_agreement

    model = args.model or builtin_model_path()
    net, card = load_model(model)
    backends = {"torch-fp32": TorchBackend(net, card, device=args.device)}
    if args.precision != "fp32":
        backends[f"torch-{args.precision}"] = TorchBackend(net, card, device=args.device, precision=args.precision)
    # onnxruntime runs fp16 only through TensorRT on a GPU
    gpu_fp16 = args.precision == "fp16" and args.device.startswith("cuda")
    for precision in ("fp32", "fp16") if gpu_fp16 else ("fp32",):
        b = exported_backend(net, card, workdir / precision, args.device, precision, args.threads)
        backends[b.name] = b
    dataset = SyntheticDataset(seed=2000, length=args.agreement, size=card.input_size)
    agree = label_agreement(backends, dataset, reference="torch-fp32")
    result = {"model": str(model), "frames": args.agreement, "size": list(card.input_size), "reference": "torch-fp32",
              "agreement": {name: agree[name] for name in backends if name != "torch-fp32"}}
    print("\n" + agreement_markdown(result), flush=True)
    return result


def agreement_markdown(a: dict) -> str:
    lines = [f"Label agreement with {a['reference']} on {a['frames']} held-out synthetic frames "
             f"({a['size'][1]}x{a['size'][0]}), model {a['model']}:", "", "| backend | same label |", "|---|---:|"]
    lines += [f"| {name} | {100 * v:.3f} % |" for name, v in a["agreement"].items()]
    return "\n".join(lines)


def bench_pipeline(args, workdir: Path) -> dict:
    """End-to-end per pair through SegmentationPipeline: 1280x720 rgb8 + 640x512 mono16, plane registration."""
    import cv2

    from rgbt_seg_ros.inference import builtin_model_path, create_backend
    from rgbt_seg_ros.pipeline import CameraModel, Extrinsics, LatencyStats, SegmentationPipeline

    model = args.model or builtin_model_path()
    if args.pipeline_backend == "onnxruntime" and model.suffix != ".onnx":
        from rgbt_seg_ros.inference.artifact import load_model
        from rgbt_seg_ros.inference.export import exported_backend

        backend = exported_backend(*load_model(model), workdir, args.device, args.precision, args.threads)
    else:
        # the backend asked for: "auto" would take an .onnx export lying beside the model file
        backend = create_backend(model, backend="onnxruntime" if model.suffix == ".onnx" else "torch",
                                 device=args.device, precision=args.precision, compile_mode=args.compile_mode)
    # A typical vehicle rig: wide RGB, narrower thermal with strong barrel distortion, 8 cm baseline.
    rgb_cam = CameraModel(K=[[900, 0, 640], [0, 900, 360], [0, 0, 1]], D=[-0.1, 0.05, 0, 0, 0], width=1280, height=720)
    th_cam = CameraModel(K=[[510, 0, 320], [0, 510, 256], [0, 0, 1]], D=[-0.43, 0.19, 0, 0, 0], width=640, height=512)
    ext = Extrinsics(cv2.Rodrigues(np.array([0.01, -0.02, 0.005]))[0], [0.08, 0.01, 0.0])
    pipe = SegmentationPipeline(backend, {"registration": {"mode": "plane", "plane_distance": 15.0},
                                          "normalization": {"thermal_agc": "percentile"}})
    rng = np.random.default_rng(0)
    frames = [(rng.integers(0, 256, (720, 1280, 3), dtype=np.uint8),
               rng.integers(20000, 30000, (512, 640), dtype=np.uint16)) for _ in range(4)]
    stats = LatencyStats()
    overhead = []
    for i in range(args.warmup + args.iters):
        rgb, th = frames[i % len(frames)]
        r = pipe.process(rgb, th, "mono16", rgb_camera=rgb_cam, aux_camera=th_cam, extrinsics=ext)
        if i >= args.warmup:
            stats.add(r.timings)
            overhead.append(r.timings["total"] - r.timings["infer"])
    summary = stats.summary()
    total = summary["total"]
    result = {"model": str(model), "network": f"{backend.card.network}/{backend.card.variant}",
              "backend": backend.name, "input_size": list(pipe.input_size),
              "end_to_end": total, "overhead_p50_ms": float(np.median(overhead)),
              "overhead_share": float(np.median(overhead) / total["p50"]),
              "pairs_per_s": float(1000.0 / total["mean"]), "stages": summary}
    print("\n" + pipeline_markdown(result), flush=True)
    return result


def pipeline_markdown(p: dict) -> str:
    e = p["end_to_end"]
    h, w = p["input_size"]
    lines = [f"Pipeline per pair: 1280x720 rgb8 + 640x512 mono16 -> {h}x{w}, model {p['network']}, {p['backend']}",
             "", "| stage | p50 ms | p95 ms | p99 ms |", "|---|---:|---:|---:|"]
    for stage, s in p["stages"].items():
        lines.append(f"| {stage} | {s['p50']:.2f} | {s['p95']:.2f} | {s['p99']:.2f} |")
    lines += ["", f"End to end: p50 {e['p50']:.1f} ms, p95 {e['p95']:.1f} ms, p99 {e['p99']:.1f} ms, "
                  f"{p['pairs_per_s']:.1f} pairs/s; pipeline overhead (all but the network) p50 "
                  f"{p['overhead_p50_ms']:.2f} ms = {100 * p['overhead_share']:.1f} % of end to end."]
    return "\n".join(lines)
