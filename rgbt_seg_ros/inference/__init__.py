"""Inference backends and model files.

``create_backend(model, backend, device, precision)`` is the one way front doors get a runnable model.
"""
from __future__ import annotations

import os
from pathlib import Path

from rgbt_seg_ros.errors import RgbtSegError
from rgbt_seg_ros.inference.artifact import ModelCard, ModelFileError, load_model, read_card, save_model
from rgbt_seg_ros.inference.base import Backend

BACKENDS = ("auto", "torch", "onnxruntime")
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

    ``compile_mode`` applies to the torch backend only (see ``TorchBackend``)."""
    if backend not in BACKENDS:
        raise RgbtSegError(f"parameter backend: unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    path = Path(model) if model is not None else builtin_model_path()
    if not path.is_file():
        raise ModelFileError(f"model file {path} does not exist")
    if path.suffix == ".onnx" or backend == "onnxruntime":
        from rgbt_seg_ros.inference.onnx_backend import OnnxBackend

        return OnnxBackend(path, device=device, precision=precision)
    from rgbt_seg_ros.inference.torch_backend import TorchBackend

    network, card = load_model(path)
    return TorchBackend(network, card, device=device, precision=precision, compile_mode=compile_mode)


__all__ = ["BACKENDS", "Backend", "ModelCard", "ModelFileError", "builtin_model_path", "create_backend",
           "load_model", "read_card", "save_model"]
