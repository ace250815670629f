"""rgbt-seg export: model file (.safetensors) → ONNX with the same card, written only after a parity check."""
from __future__ import annotations

import argparse
from pathlib import Path

HELP = ("Export a model file to ONNX (opset >= 17, dynamic batch and image size). The ONNX file carries the\n"
        "model card in its metadata, so `rgbt-seg replay --model X.onnx` and the node need no other flag.\n"
        "It is written only if onnxruntime (CPU) matches torch fp32 within 1e-3 on the logits.")


MAX_OPSET = 20  # the newest opset of torch's TorchScript exporter (export uses dynamo=False)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", type=Path, help="model file written by `rgbt-seg train` (.safetensors)")
    parser.add_argument("--out", type=Path, help="output .onnx path (default: next to MODEL)")
    parser.add_argument("--opset", type=int, default=17, help=f"ONNX opset, 17 to {MAX_OPSET} (default 17)")
    parser.add_argument("--static", action="store_true", help="fix batch and image size to the card's input size")
    parser.add_argument("--force", action="store_true", help="overwrite an existing output file")


def main(args: argparse.Namespace) -> int:
    from rgbt_seg_ros.errors import RgbtSegError
    from rgbt_seg_ros.inference.artifact import load_model
    from rgbt_seg_ros.inference.export import export_onnx
    from rgbt_seg_ros.tools import check_output_file

    if args.model.suffix.lower() == ".onnx":
        raise RgbtSegError(f"model {args.model}: is an ONNX file already; export takes the .safetensors model file")
    if not 17 <= args.opset <= MAX_OPSET:
        raise RgbtSegError(f"--opset {args.opset}: choose 17 to {MAX_OPSET}")
    out = args.out or args.model.with_suffix(".onnx")
    check_output_file(out, args.force, inputs=(args.model,))  # before the minutes of export and parity check
    network, card = load_model(args.model)
    report = export_onnx(network, card, out, opset=args.opset, dynamic=not args.static, source=args.model)
    sizes = ", ".join(f"{h}x{w}" for h, w in report.checked_hw)
    print(f"wrote {report.path} (opset {report.opset}, {'dynamic' if report.dynamic else 'static'} shapes); "
          f"onnxruntime vs torch max |diff| = {report.max_abs_diff:.2e} at {sizes}")
    return 0
