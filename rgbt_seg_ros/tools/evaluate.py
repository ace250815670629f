"""``rgbt-seg evaluate --model M --dataset TYPE ...``."""
from __future__ import annotations

import argparse
import json

from rgbt_seg_ros.tools import BACKEND_HELP, BACKENDS

HELP = """evaluate a model file on a dataset: per-class IoU/accuracy, mIoU, mAcc, confusion matrix.

Runs every sample through the same pipeline as `rgbt-seg replay` and scores the labels at the dataset's
resolution. MFNet and synthetic scores are also split by day/night. Writes report.md, metrics.csv,
metrics.json and confusion_all.png (plus confusion_day.png / confusion_night.png where scored by day
and night) to --out.

Examples:
  rgbt-seg evaluate --model models/builtin_rgbt.safetensors --dataset synthetic \\
      --option seed=1000 --option length=200 --option size=[180,320] --out runs/eval_builtin
  rgbt-seg evaluate --model mfnet.safetensors --dataset mfnet --root /data/MFNet --split test
  rgbt-seg evaluate --model nyu.safetensors --dataset rgbx --root /data/NYUDepthv2 --split test \\
      --option class_set=nyuv2 --option x_folder=HHA"""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="model file (.safetensors or .onnx); default: the built-in model")
    parser.add_argument("--dataset", required=True,
                        help="layout: mfnet, pst900, fmb, rgbx, folder, synthetic")
    parser.add_argument("--root", default=None, help="dataset folder")
    parser.add_argument("--split", default=None, help="split (e.g. test, test_night); default: the layout's own")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="further dataset option (YAML value), e.g. size=[180,320] or x_folder=HHA; repeatable")
    parser.add_argument("--rgb-only", action="store_true", help="feed no thermal/depth image (RGB-only operation)")
    parser.add_argument("--pipeline-config", default=None, help="pipeline YAML (registration; normalisation keys set "
                        "here override the model card's)")
    parser.add_argument("--backend", default="auto", choices=BACKENDS, help=BACKEND_HELP)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "fp16", "bf16"))
    parser.add_argument("--limit", type=int, default=None, help="evaluate only the first N samples")
    parser.add_argument("--out", default=None, help="report folder (default: print only)")
    parser.add_argument("--force", action="store_true", help="overwrite the report files in an existing --out")
    parser.add_argument("--json", action="store_true", help="print the metrics as JSON")
    parser.add_argument("--no-progress", action="store_true")


def _dataset_cfg(args) -> dict:
    import yaml

    from rgbt_seg_ros.errors import RgbtSegError

    cfg = {"type": args.dataset}
    if args.root:
        cfg["root"] = args.root
    if args.split:
        cfg["split"] = args.split
    for opt in args.option:
        if "=" not in opt:
            raise RgbtSegError(f"--option {opt!r}: expected KEY=VALUE")
        k, v = opt.split("=", 1)
        cfg[k.strip()] = yaml.safe_load(v)
    return cfg


def main(args: argparse.Namespace) -> int:
    from pathlib import Path

    from rgbt_seg_ros.errors import RgbtSegError
    from rgbt_seg_ros.inference import create_backend
    from rgbt_seg_ros.tools import check_output_file
    from rgbt_seg_ros.training.datasets import build_dataset
    from rgbt_seg_ros.training.evaluate import evaluate, write_report

    if args.limit is not None and args.limit < 1:
        raise RgbtSegError(f"--limit: must be ≥ 1, got {args.limit}")
    if args.out:  # checked before the evaluation, which can take hours, not after it (--out itself a file too)
        check_output_file(Path(args.out) / "report.md", args.force)
    dataset = build_dataset(_dataset_cfg(args))
    backend = create_backend(args.model, backend=args.backend, device=args.device, precision=args.precision)
    pcfg = None
    if args.pipeline_config:
        from rgbt_seg_ros.pipeline.config import PipelineConfig

        pcfg = PipelineConfig.from_yaml(args.pipeline_config)
    result = evaluate(backend, dataset, rgb_only=args.rgb_only, pipeline_config=pcfg, limit=args.limit,
                      progress=not args.no_progress)
    # the rgb_only baseline network receives the aux image but ignores it
    mode = "RGB only" if args.rgb_only or backend.card.network == "rgb_only" else f"RGB + {backend.card.modality}"
    if args.json:
        print(json.dumps({k: v.as_dict() for k, v in result.scores.items()}, indent=2))
    else:
        from rgbt_seg_ros.training.metrics import markdown_table

        print(f"{backend.card.network}/{backend.card.variant} on {dataset.name} ({result.num_samples} samples, {mode}):")
        print(markdown_table(result.scores))
        print("mIoU " + "  ".join(f"{k} {100 * v.miou:.2f}" for k, v in result.scores.items()))
    if args.out:
        files = write_report(result, args.out, f"{backend.card.network} on {dataset.name} ({mode})")
        print(f"report: {files['report.md']}")
    return 0
