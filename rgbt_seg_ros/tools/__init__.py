"""The ``rgbt-seg`` subcommands: one module each, with ``HELP``, ``configure(parser)`` and ``main(args)``.

Shared option choices and checks live here, free of heavy imports so that ``--help`` stays instant.
"""
from pathlib import Path

from rgbt_seg_ros.errors import RgbtSegError

BACKENDS = ("auto", "torch", "onnxruntime")  # = rgbt_seg_ros.inference.BACKENDS
BACKEND_HELP = ("inference backend: auto = onnxruntime for an .onnx file; for a .safetensors file the faster "
                "of torch and its ONNX export beside it (made by rgbt-seg export; both timed at start-up), "
                "else torch")


def check_output_folder(out: Path, flag: str = "--out") -> None:
    """``out`` must be a folder or become one: not a file, nor under one (checked before any work starts)."""
    for p in (out, *out.parents):
        if p.exists():
            if not p.is_dir():
                raise RgbtSegError(f"{flag} {out}: {p} is a file, not a folder")
            return
