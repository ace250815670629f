"""The ``rgbt-seg`` subcommands: one module each, with ``HELP``, ``configure(parser)`` and ``main(args)``.

Shared option choices and checks live here, free of heavy imports so that ``--help`` stays instant.
"""
import os
from pathlib import Path

from rgbt_seg_ros.errors import RgbtSegError

BACKENDS = ("auto", "torch", "onnxruntime")  # = rgbt_seg_ros.inference.BACKENDS
BACKEND_HELP = ("inference backend: auto = onnxruntime for an .onnx file; for a .safetensors file the faster "
                "of torch and its ONNX export beside it (made by rgbt-seg export; both timed at start-up), "
                "else torch")


def check_output_folder(out: Path, flag: str = "--out") -> Path:
    """``out`` must be a folder or become one: not a file, nor under one (checked before any work starts).
    Returns ``out`` or its closest existing ancestor: the folder it would be made in."""
    out = Path(out)
    p = next(level for level in (out, *out.parents) if level.exists())
    if not p.is_dir():
        raise RgbtSegError(f"{flag} {out}: {p} is a file, not a folder")
    return p


def check_output_file(out: Path, force: bool, flag: str = "--out", inputs: tuple[Path, ...] = ()) -> None:
    """``out`` is a file to write at the end of a long run: refuse now what would fail or destroy something then
    (an existing file without ``force``, a folder, one of the run's ``inputs``, a parent that is a file or
    cannot be written)."""
    out = Path(out)
    if out.exists() and any(Path(source).exists() and out.samefile(source) for source in inputs):
        raise RgbtSegError(f"{flag} {out}: is the input file; choose another path")
    if out.is_dir():
        raise RgbtSegError(f"{flag} {out}: is a folder; give a file path")
    if out.exists() and not force:
        raise RgbtSegError(f"{flag} {out}: exists; pass --force to overwrite it")
    p = check_output_folder(out.parent, flag)
    if not os.access(p, os.W_OK | os.X_OK):
        raise RgbtSegError(f"{flag} {out}: cannot write in {p} (permission denied or read-only)")
