"""The one interface every inference backend implements.

The pipeline hands a backend network-ready tensors and gets logits back:

* ``rgb``: float32 N×3×h×w, already normalised with ``card.rgb_mean/std``;
* ``aux``: float32 N×C×h×w normalised with ``card.aux_mean/std``, or ``None`` when the second camera
  is lost (RGB-only operation): backends then feed zeros, the value modality dropout trains with;
* returns float32 logits N×K×h×w as a numpy array.
"""
from __future__ import annotations

from typing import Protocol

import numpy as np

from rgbt_seg_ros.inference.artifact import ModelCard


class Backend(Protocol):
    card: ModelCard
    name: str  # e.g. "torch-cpu-fp32", "onnxruntime-CPUExecutionProvider"

    def infer(self, rgb: np.ndarray, aux: np.ndarray | None) -> np.ndarray: ...
