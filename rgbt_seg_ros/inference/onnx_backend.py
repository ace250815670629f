"""onnxruntime backend: TensorRT (fp16, engine cache), CUDA or CPU execution providers.

``infer`` takes and returns numpy arrays (the ``Backend`` protocol). ``infer_tensors`` is the pipeline's
device path: it runs on torch tensors where they already lie (GPU memory with the CUDA/TensorRT providers)
through onnxruntime's I/O binding, so inputs and logits never pass through the host.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from rgbt_seg_ros.errors import RgbtSegError, first_line
from rgbt_seg_ros.inference.artifact import read_card

FEEDABLE_INPUTS = ("rgb", "aux")  # the graph inputs a backend can supply (export names them so)


def graph_inputs(session, where: str) -> tuple[str, ...]:
    """The input names ``session`` declares, each one of ``FEEDABLE_INPUTS``.

    Feeds must follow the graph: the exporter prunes an input the network never reads (a network that
    ignores aux has no 'aux'), and onnxruntime rejects a feed the graph does not declare.
    """
    names = tuple(i.name for i in session.get_inputs())
    for name in names:
        if name not in FEEDABLE_INPUTS:
            raise RgbtSegError(f"{where}: the ONNX graph declares input {name!r}, which cannot be supplied "
                               f"(only {', '.join(FEEDABLE_INPUTS)})")
    return names


def choose_providers(device: str, precision: str, cache_dir: Path) -> list:
    """Execution providers in order of preference for ``device`` ("cpu", "cuda", "cuda:N")."""
    import onnxruntime as ort

    available = set(ort.get_available_providers())
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if not device.startswith("cuda"):
        raise RgbtSegError(f"parameter device: {device!r} is not 'cpu' or 'cuda[:N]'")
    index = int(device.split(":", 1)[1]) if ":" in device else 0
    providers: list = []
    if "TensorrtExecutionProvider" in available:
        providers.append(("TensorrtExecutionProvider", {
            "device_id": index,
            "trt_fp16_enable": precision == "fp16",
            "trt_engine_cache_enable": True,  # building an engine takes minutes; reuse it across runs
            "trt_engine_cache_path": str(cache_dir),
        }))
    if "CUDAExecutionProvider" in available:
        providers.append(("CUDAExecutionProvider", {"device_id": index}))
    if not providers:
        raise RgbtSegError(f"parameter device: {device!r} asked for, but this onnxruntime has only "
                           f"{', '.join(sorted(available))} (install onnxruntime-gpu)")
    return providers + ["CPUExecutionProvider"]


class OnnxBackend:
    def __init__(self, path: str | Path, device: str = "cpu", precision: str = "fp32", threads: int = 0):
        import onnxruntime as ort

        path = Path(path)
        if path.suffix != ".onnx":
            raise RgbtSegError(f"parameter backend: onnxruntime needs an .onnx file (got {path}); "
                               f"make one with `rgbt-seg export {path}`")
        if precision not in ("fp32", "fp16"):
            raise RgbtSegError(f"parameter precision: onnxruntime runs fp32, or fp16 through TensorRT; got {precision!r}")
        self.card = read_card(path)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
        providers = choose_providers(device, precision, path.parent / ".trt_cache")
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as exc:  # onnxruntime's own error types for graphs it cannot load
            raise RgbtSegError(f"model file {path}: onnxruntime cannot load it ({first_line(exc)})") from None
        self.inputs = graph_inputs(self.session, f"model file {path}")
        self._check_shapes(path)
        self.name = f"onnxruntime-{self.session.get_providers()[0].replace('ExecutionProvider', '')}-{precision}"
        # where infer_tensors expects its tensors: the GPU when a GPU provider took the session
        on_gpu = self.session.get_providers()[0] != "CPUExecutionProvider"
        self.device = torch.device(device if on_gpu else "cpu")

    def _check_shapes(self, path: Path) -> None:
        """The graph's fixed input dimensions must be what the card says the pipeline will feed."""
        h, w = self.card.input_size
        want = {"rgb": (None, 3, h, w), "aux": (None, self.card.aux_channels, h, w)}
        for i in self.session.get_inputs():
            dims = list(i.shape)
            fixed = [(d, e) for d, e in zip(dims, want[i.name]) if isinstance(d, int) and e is not None]
            if len(dims) != 4 or any(d != e for d, e in fixed):
                raise RgbtSegError(f"model file {path}: the graph's input {i.name!r} is {dims}, but its card says "
                                   f"{list(want[i.name][1:])} per image (aux_channels, input_size); re-export it")

    def infer(self, rgb: np.ndarray, aux: np.ndarray | None) -> np.ndarray:
        feeds = {}
        if "rgb" in self.inputs:
            feeds["rgb"] = np.ascontiguousarray(rgb, np.float32)
        if "aux" in self.inputs:
            if aux is None:  # RGB-only: zeros, as modality dropout trains
                n, _, h, w = rgb.shape
                aux = np.zeros((n, self.card.aux_channels, h, w), np.float32)
            feeds["aux"] = np.ascontiguousarray(aux, np.float32)
        try:
            return self.session.run(["logits"], feeds)[0]
        except Exception as exc:  # onnxruntime's own error types; one line naming the backend
            raise RgbtSegError(f"backend {self.name}: {first_line(exc)}") from None

    def infer_tensors(self, rgb: torch.Tensor, aux: torch.Tensor | None) -> torch.Tensor:
        """float32 N×3×h×w (and N×C×h×w, or None: zeros are fed) on ``self.device`` → float32 logits
        N×K×h×w on ``self.device``. onnxruntime reads the inputs and writes the logits in place (I/O binding)."""
        n, _, h, w = rgb.shape
        tensors = {"rgb": rgb}
        if "aux" in self.inputs:
            tensors["aux"] = aux if aux is not None else torch.zeros((n, self.card.aux_channels, h, w),
                                                                     device=self.device)
        logits = torch.empty((n, self.card.num_classes, h, w), dtype=torch.float32, device=self.device)
        binding = self.session.io_binding()
        kind, index = self.device.type, self.device.index or 0
        kept = []  # the contiguous float32 copies must outlive the run
        for name in self.inputs:
            t = tensors[name].to(self.device, torch.float32).contiguous()
            kept.append(t)
            binding.bind_input(name, kind, index, np.float32, tuple(t.shape), t.data_ptr())
        binding.bind_output("logits", kind, index, np.float32, tuple(logits.shape), logits.data_ptr())
        if kind == "cuda":
            torch.cuda.current_stream(self.device).synchronize()  # torch's work on the inputs is done
        try:
            self.session.run_with_iobinding(binding)
        except Exception as exc:  # onnxruntime's own error types; one line naming the backend
            raise RgbtSegError(f"backend {self.name}: {first_line(exc)}") from None
        binding.synchronize_outputs()
        return logits
