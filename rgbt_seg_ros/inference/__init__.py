"""Inference backends and model files.

``create_backend(model, backend, device, precision)`` is the one way front doors get a runnable model.
"""
from __future__ import annotations

import os
from pathlib import Path

from rgbt_seg_ros.errors import RgbtSegError
from rgbt_seg_ros.inference.artifact import ModelCard, ModelFileError, load_model, read_card, save_model
from rgbt_seg_ros.inference.base import Backend

BACKENDS = ("auto", "torch", "onnxruntime")  # repeated, torch-free, in tools/__init__.py and ros/params.py
BUILTIN_MODEL_NAME = "builtin_rgbt.safetensors"


def builtin_model_path() -> Path:
    """The model `rgbt-seg demo` and the node use by default (``models/`` of the package)."""
    env = os.environ.get("RGBT_SEG_BUILTIN_MODEL")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[1] / "models" / BUILTIN_MODEL_NAME


def create_backend(model: str | Path | None = None, backend: str = "auto", device: str = "cpu",
                   precision: str = "fp32", compile_mode: str = "off") -> Backend:
    """Load a model file (.safetensors or .onnx) into a backend. ``model=None`` means the built-in model.

    ``backend="auto"``: an .onnx file runs on onnxruntime. A .safetensors file runs on torch, unless its
    ONNX export lies beside it (``exported_onnx_for``) and onnxruntime can run it at ``precision``: then both
    are timed on this machine (``AUTO_WARMUP`` + ``AUTO_ITERS`` calls at the card's input size) and the faster
    one is returned. The chosen backend's ``selection`` says what was measured.
    ``compile_mode`` applies to the torch backend only (see ``TorchBackend``)."""
    if backend not in BACKENDS:
        raise RgbtSegError(f"parameter backend: unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    path = Path(model) if model is not None else builtin_model_path()
    if not path.is_file():
        raise ModelFileError(f"model file {path} " + ("is a folder, not a model file" if path.is_dir() else
                                                       "does not exist"))
    if path.suffix == ".onnx" or backend == "onnxruntime":
        return _onnx_backend(path, device, precision)
    from rgbt_seg_ros.inference.torch_backend import TorchBackend

    network, card = load_model(path)
    torch_backend = TorchBackend(network, card, device=device, precision=precision, compile_mode=compile_mode)
    onnx_path = exported_onnx_for(path) if backend == "auto" and _onnxruntime_runs(device, precision) else None
    if onnx_path is None:
        return torch_backend
    candidates = [torch_backend, _onnx_backend(onnx_path, device, precision)]
    timed = sorted(((median_latency_ms(b), i, b) for i, b in enumerate(candidates)), key=lambda t: t[:2])
    best = timed[0][2]
    best.selection = ("backend auto: " + ", ".join(f"{b.name} {ms:.1f} ms" for ms, _, b in timed)
                      + f" (median of {AUTO_ITERS} calls at {card.input_size[0]}×{card.input_size[1]}); "
                      f"chose {best.name}")
    return best


AUTO_WARMUP, AUTO_ITERS = 2, 5


def infer_times_ms(backend: Backend, rgb, aux, warmup: int, iters: int) -> list[float]:
    """Wall time (ms) of each of ``iters`` ``backend.infer(rgb, aux)`` calls after ``warmup`` untimed ones."""
    import time

    for _ in range(warmup):
        backend.infer(rgb, aux)
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        backend.infer(rgb, aux)
        times.append((time.perf_counter() - start) * 1e3)
    return times


def median_latency_ms(backend: Backend, iters: int = AUTO_ITERS, warmup: int = AUTO_WARMUP) -> float:
    """Median of ``infer_times_ms`` on one random input at the card's size (``backend: auto``)."""
    import numpy as np

    h, w = backend.card.input_size
    rng = np.random.default_rng(0)
    rgb = rng.standard_normal((1, 3, h, w), dtype=np.float32)
    aux = rng.standard_normal((1, backend.card.aux_channels, h, w), dtype=np.float32)
    return float(np.median(infer_times_ms(backend, rgb, aux, warmup, iters)))


def exported_onnx_for(path: str | Path) -> Path | None:
    """The ONNX export of a .safetensors file lying beside it (same name, .onnx) and made from exactly these
    weights (``rgbt-seg export`` records the source file's SHA-256), else None."""
    path = Path(path)
    candidate = path.with_suffix(".onnx")
    if path.suffix != ".safetensors" or not candidate.is_file():
        return None
    try:
        import onnx
    except ImportError:
        return None
    from rgbt_seg_ros.inference.artifact import SOURCE_KEY, file_sha256

    try:
        props = {p.key: p.value for p in onnx.load(str(candidate), load_external_data=False).metadata_props}
    except Exception:  # a half-copied or foreign .onnx beside the model: not an export of it
        return None
    return candidate if props.get(SOURCE_KEY) == file_sha256(path) else None


def _onnxruntime_runs(device: str, precision: str) -> bool:
    """onnxruntime is installed and runs ``precision`` on ``device`` (fp16 only through TensorRT)."""
    try:
        import onnxruntime as ort
    except ImportError:
        return False
    if precision == "fp32":
        return True
    return (precision == "fp16" and device.startswith("cuda")
            and "TensorrtExecutionProvider" in ort.get_available_providers())


def _onnx_backend(path: Path, device: str, precision: str) -> Backend:
    from rgbt_seg_ros.inference.onnx_backend import OnnxBackend

    return OnnxBackend(path, device=device, precision=precision)


__all__ = ["BACKENDS", "Backend", "ModelCard", "ModelFileError", "builtin_model_path", "create_backend",
           "exported_onnx_for", "infer_times_ms", "load_model", "median_latency_ms", "read_card", "save_model"]
