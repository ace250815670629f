"""ONNX export that carries the model card and proves numeric parity with torch before it counts as done."""
from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from rgbt_seg_ros.errors import RgbtSegError
from rgbt_seg_ros.inference.artifact import CARD_KEY, SOURCE_KEY, ModelCard, file_sha256
from rgbt_seg_ros.inference.onnx_backend import graph_inputs

PARITY_TOLERANCE = 1e-3  # max abs difference of fp32 logits between onnxruntime (CPU) and torch


@dataclass
class ExportReport:
    path: Path
    opset: int
    dynamic: bool
    max_abs_diff: float
    checked_hw: tuple[int, ...]
    inputs: tuple[str, ...] = ("rgb", "aux")  # graph inputs: 'aux' is pruned if the network ignores it


def _to_onnx_bytes(network: torch.nn.Module, rgb: torch.Tensor, aux: torch.Tensor, opset: int, dynamic: bool) -> bytes:
    dynamic_axes = None
    if dynamic:
        dynamic_axes = {"rgb": {0: "batch", 2: "height", 3: "width"}, "aux": {0: "batch", 2: "height", 3: "width"},
                        "logits": {0: "batch", 2: "height", 3: "width"}}
    buffer = io.BytesIO()
    # The TorchScript exporter handles these graphs (grid_sample, data-dependent padding) most robustly;
    # torch >= 2.9 flags it as legacy, which is noise for our users.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(network, (rgb, aux), buffer, input_names=["rgb", "aux"], output_names=["logits"],
                          opset_version=opset, dynamic_axes=dynamic_axes, dynamo=False, do_constant_folding=True)
    return buffer.getvalue()


def onnx_session(model_bytes_or_path, threads: int = 1):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    source = model_bytes_or_path if isinstance(model_bytes_or_path, bytes) else str(model_bytes_or_path)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def export_onnx(network: torch.nn.Module, card: ModelCard, path: str | Path, opset: int = 17, dynamic: bool = True,
                check_sizes: tuple[tuple[int, int], ...] | None = None, seed: int = 0,
                source: str | Path | None = None) -> ExportReport:
    """Export ``network`` (fp32, eval) to ONNX with the card in ``metadata_props``.

    ``source``: the model file the weights came from; its SHA-256 is recorded (``SOURCE_KEY``) so that
    ``backend: auto`` knows this ONNX file runs the same weights (``inference.exported_onnx_for``).

    The file is written only if onnxruntime's CPU output matches torch within ``PARITY_TOLERANCE`` on every
    size in ``check_sizes`` (default: the card's input size and, for dynamic exports, one other size).
    """
    import onnx

    if opset < 17:
        raise RgbtSegError(f"parameter opset: {opset} is below 17, the lowest opset this package exports")
    path = Path(path)
    network = network.float().eval()
    h, w = card.input_size
    sizes = check_sizes or (((h, w), (max(32, h // 2 + 8), max(32, w // 2 + 24))) if dynamic else ((h, w),))
    gen = torch.Generator().manual_seed(seed)
    rgb = torch.randn(1, 3, h, w, generator=gen)
    aux = torch.randn(1, card.aux_channels, h, w, generator=gen)
    with torch.no_grad():
        model_bytes = _to_onnx_bytes(network, rgb, aux, opset, dynamic)
    proto = onnx.load_from_string(model_bytes)
    entry = proto.metadata_props.add()
    entry.key, entry.value = CARD_KEY, card.to_json()
    if source is not None:
        entry = proto.metadata_props.add()
        entry.key, entry.value = SOURCE_KEY, file_sha256(source)
    model_bytes = proto.SerializeToString()

    session = onnx_session(model_bytes)
    inputs = graph_inputs(session, f"ONNX export of {card.network}")
    worst = 0.0
    for sh, sw in sizes:
        rgb = torch.randn(1, 3, sh, sw, generator=gen)
        aux = torch.randn(1, card.aux_channels, sh, sw, generator=gen)
        with torch.no_grad():
            expected = network(rgb, aux).numpy()
        feeds = {"rgb": rgb.numpy(), "aux": aux.numpy()}
        got = session.run(["logits"], {k: v for k, v in feeds.items() if k in inputs})[0]
        if got.shape != expected.shape:
            raise RgbtSegError(f"ONNX export of {card.network}: output shape {got.shape} != torch {expected.shape} "
                               f"at {sh}x{sw}")
        # NaN or inf on one side only is the worst disagreement of all (max() would skip a NaN)
        same_nonfinite = (np.isnan(got) & np.isnan(expected)) | ((got == expected) & ~np.isfinite(expected))
        if not (np.isfinite(got) | same_nonfinite).all() or not (np.isfinite(expected) | same_nonfinite).all():
            worst = float("inf")
        else:
            diff = np.abs(np.where(same_nonfinite, 0.0, got - expected))
            worst = max(worst, float(diff.max()) if diff.size else 0.0)
    if not worst <= PARITY_TOLERANCE:
        raise RgbtSegError(f"ONNX export of {card.network}: onnxruntime differs from torch by {worst:.2e} "
                           f"(> {PARITY_TOLERANCE:g}); not written")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    tmp.write_bytes(model_bytes)
    tmp.replace(path)
    return ExportReport(path, opset, dynamic, worst, tuple(sizes), inputs)


def exported_backend(network: torch.nn.Module, card: ModelCard, folder: str | Path, device: str = "cpu",
                     precision: str = "fp32", threads: int = 0, **export_kwargs):
    """Export ``network`` to ``folder``/model.onnx (parity-checked) and open it with onnxruntime.

    For benchmarks that compare backends on one torch network. ``folder`` must outlive the backend on a GPU
    (TensorRT keeps its engine cache beside the file). onnxruntime runs fp16 only through TensorRT; any
    other precision runs fp32.
    """
    from rgbt_seg_ros.inference.onnx_backend import OnnxBackend

    path = export_onnx(network, card, Path(folder) / "model.onnx", **export_kwargs).path
    return OnnxBackend(path, device=device, precision="fp16" if precision == "fp16" else "fp32", threads=threads)
