"""``rgbt-seg train CONFIG.yaml``."""
from __future__ import annotations

import argparse
import json

HELP = """train a network from a YAML config and write a self-describing model file.

Single process: rgbt-seg train config/train/builtin_rgb_only.yaml
Several GPUs / nodes (DistributedDataParallel; gloo on CPU):
  torchrun --nproc_per_node=2 -m rgbt_seg_ros.cli train config/train/efnet_mfnet.yaml
Resume the same run: add --resume auto (latest checkpoint in output_dir) or --resume PATH."""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="training config (YAML); see config/train/")
    parser.add_argument("--resume", default=None, help="'auto' or a checkpoint path (overrides the config)")
    parser.add_argument("--output-dir", default=None, help="override output_dir")
    parser.add_argument("--model-out", default=None, help="override model_out (the .safetensors model file)")
    parser.add_argument("--steps", type=int, default=None, help="override train.steps (single-stage configs)")
    parser.add_argument("--max-steps", type=int, default=None,
                        help="stop after this many more steps (checkpointed; resume later); the model file is "
                             "written only if the run reaches its last step")
    parser.add_argument("--force", action="store_true", help="overwrite an existing model file (model_out)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def main(args: argparse.Namespace) -> int:
    from pathlib import Path

    from rgbt_seg_ros.errors import RgbtSegError
    from rgbt_seg_ros.tools import check_output_file, check_output_folder
    from rgbt_seg_ros.training.trainer import load_config, train

    for flag, value in (("--steps", args.steps), ("--max-steps", args.max_steps)):
        if value is not None and value < 1:
            raise RgbtSegError(f"{flag}: must be ≥ 1, got {value}")
    cfg = load_config(args.config)
    if args.resume:
        cfg["resume"] = args.resume
    if args.output_dir:
        cfg["output_dir"] = args.output_dir
    if args.model_out:
        cfg["model_out"] = args.model_out
    if args.steps is not None:
        if cfg["stages"]:
            raise RgbtSegError(f"--steps: {args.config} has stages; set each stage's steps in the config")
        cfg["train"]["steps"] = args.steps
    # checked now, not after hours of training: the model file must not replace one silently, nor fail to write
    out_dir = Path(cfg["output_dir"])
    check_output_folder(out_dir, "output_dir")
    check_output_file(Path(cfg["model_out"] or out_dir / "model.safetensors"), args.force, "model_out")
    if args.no_progress:
        cfg["train"]["progress"] = False
    result = train(cfg, max_steps=args.max_steps)
    import os

    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(result))
    return 0
