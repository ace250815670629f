"""PyTorch backend (CPU or CUDA)."""
from __future__ import annotations

import numpy as np
import torch

from rgbt_seg_ros.errors import RgbtSegError
from rgbt_seg_ros.inference.artifact import ModelCard

COMPILE_MODES = ("off", "default", "reduce-overhead")


def torch_device(device: str) -> torch.device:
    """``device`` as a torch device that exists here, else one line naming the parameter (not torch's errors)."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise RgbtSegError(f"parameter device: {device!r} is not a device name; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (dev.index or 0) >= count:
            raise RgbtSegError(f"parameter device: {device} asked for, but torch sees {count} CUDA device(s); "
                               f"use cpu or install a CUDA build of torch")
    return dev


class TorchBackend:
    """``infer`` (numpy in, numpy out: the ``Backend`` protocol) and ``infer_tensors`` (tensors on ``self.device``
    in, logits tensor on it out: what the pipeline's device path uses, so nothing crosses the bus here).

    ``channels_last``: run the network in NHWC memory format (faster convolutions on GPUs); default on for CUDA,
    off elsewhere. Results are the same up to floating-point reassociation.

    ``compile_mode``: ``"off"`` (eager), ``"default"`` (``torch.compile``: fused kernels; the first call of each
    input shape compiles, which takes tens of seconds) or ``"reduce-overhead"`` (``torch.compile`` with CUDA
    graphs on a GPU, which removes per-kernel launch cost; on a CPU it is the same as ``"default"``). Opt-in:
    whether it pays depends on the network and the device; measure with ``rgbt-seg bench --compile-mode``.
    """

    def __init__(self, network: torch.nn.Module, card: ModelCard, device: str = "cpu", precision: str = "fp32",
                 channels_last: bool | None = None, compile_mode: str = "off"):
        if precision not in ("fp32", "fp16", "bf16"):
            raise RgbtSegError(f"parameter precision: must be fp32, fp16 or bf16, got {precision!r}")
        if compile_mode not in COMPILE_MODES:
            raise RgbtSegError(f"parameter compile_mode: {compile_mode!r} is not one of {', '.join(COMPILE_MODES)}")
        self.card = card
        self.device = torch_device(device)
        self.dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
        self.channels_last = self.device.type == "cuda" if channels_last is None else bool(channels_last)
        self._memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        self.network = network.to(self.device).eval()
        if self.channels_last:
            self.network = self.network.to(memory_format=torch.channels_last)
        self.compile_mode = compile_mode
        # the compiled wrapper shares the parameters of self.network; dynamic=False: one input size per node
        self._forward = (self.network if compile_mode == "off"
                         else torch.compile(self.network, mode=compile_mode, dynamic=False))
        self.name = f"torch-{self.device.type}-{precision}" + ("" if compile_mode == "off" else f"-{compile_mode}")

    @torch.inference_mode()
    def infer(self, rgb: np.ndarray, aux: np.ndarray | None) -> np.ndarray:
        rgb_t = torch.from_numpy(np.ascontiguousarray(rgb)).to(self.device)
        aux_t = None if aux is None else torch.from_numpy(np.ascontiguousarray(aux)).to(self.device)
        return self.infer_tensors(rgb_t, aux_t).float().cpu().numpy()

    @torch.inference_mode()
    def infer_tensors(self, rgb: torch.Tensor, aux: torch.Tensor | None) -> torch.Tensor:
        """Normalised float32 N×3×h×w (and N×C×h×w, or None for RGB-only: zeros are fed) on ``self.device`` →
        logits N×K×h×w on ``self.device``, in the autocast dtype of ``precision`` (float32 for fp32)."""
        if aux is None:
            n, _, h, w = rgb.shape
            aux = torch.zeros((n, self.card.aux_channels, h, w), device=self.device)
        rgb, aux = self._standard_layout(rgb), self._standard_layout(aux)
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
            return self._forward(rgb, aux)

    def _standard_layout(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` in the backend's memory format with the standard strides, also on size-1 dimensions.

        torch.compile guards on strides, and tensors of one shape reach here with several (a permuted camera
        image from the device path, a numpy array, the warm-up's blank input, the zeros of RGB-only frames):
        without this each layout would compile the network again, on a live frame. A size-1 dimension's stride
        addresses nothing, so restating it is free.
        """
        x = x.contiguous(memory_format=self._memory_format)
        n, c, h, w = x.shape
        want = (c * h * w, 1, w * c, c) if self.channels_last else (c * h * w, h * w, w, 1)
        return x if x.stride() == want else x.as_strided(x.shape, want)
