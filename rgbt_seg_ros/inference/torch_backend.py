"""PyTorch backend (CPU or CUDA)."""
from __future__ import annotations

import numpy as np
import torch

from rgbt_seg_ros.inference.artifact import ModelCard


class TorchBackend:
    def __init__(self, network: torch.nn.Module, card: ModelCard, device: str = "cpu", precision: str = "fp32"):
        if precision not in ("fp32", "fp16", "bf16"):
            raise ValueError(f"precision must be fp32, fp16 or bf16, got {precision!r}")
        self.card = card
        self.device = torch.device(device)
        self.dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
        self.network = network.to(self.device).eval()
        self.name = f"torch-{self.device.type}-{precision}"

    @torch.inference_mode()
    def infer(self, rgb: np.ndarray, aux: np.ndarray | None) -> np.ndarray:
        rgb_t = torch.from_numpy(np.ascontiguousarray(rgb)).to(self.device)
        if aux is None:
            n, _, h, w = rgb.shape
            aux_t = torch.zeros((n, self.card.aux_channels, h, w), device=self.device)
        else:
            aux_t = torch.from_numpy(np.ascontiguousarray(aux)).to(self.device)
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
            logits = self.network(rgb_t, aux_t)
        return logits.float().cpu().numpy()
