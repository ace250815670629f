"""Logits → labels, confidence, palette colours and overlay.

Labels and confidence are computed at the network resolution (arg-max and max-softmax of the logits
there) and then brought to RGB resolution: labels with nearest-neighbour, confidence bilinearly. This is
the documented alternative to upsampling the K logit planes first: it costs K× less at full resolution
and differs from it only along class boundaries, within one network pixel.
"""
from __future__ import annotations

import cv2
import numpy as np

from rgbt_seg_ros.errors import RgbtSegError


def label_dtype(num_classes: int) -> np.dtype:
    """uint8 up to 256 classes (ids 0..255), uint16 beyond (sensor_msgs mono16)."""
    if num_classes > 65536:
        raise RgbtSegError(f"num_classes: {num_classes} classes do not fit a mono16 label image")
    return np.dtype(np.uint8) if num_classes <= 256 else np.dtype(np.uint16)


def logits_to_labels(logits: np.ndarray, need_labels: bool = True, need_confidence: bool = True
                     ) -> tuple[np.ndarray | None, np.ndarray | None]:
    """K×h×w logits → (labels h×w uint8/uint16, confidence h×w float32 in [0, 1]); either may be skipped (None).

    Ties go to the lowest class id. Confidence is max softmax = 1 / Σ_k exp(l_k − max_k l).
    A running max over the K planes with OpenCV element-wise ops: several times faster than numpy's
    strided arg-max over axis 0, and no K×h×w temporaries. Each logit plane is visited once for the
    arg-max and the exp-sum together, while it is still in cache (one pass over the K planes, not two).
    """
    if logits.ndim != 3 or logits.shape[0] < 1:
        raise RgbtSegError(f"logits: expected K×h×w, got shape {logits.shape}")
    logits = np.ascontiguousarray(logits, dtype=np.float32)
    k, h, w = logits.shape
    labels = conf = None
    best = logits[0].copy()
    dtype = label_dtype(k)
    if need_labels:
        labels = np.zeros((h, w), dtype)
        mask = np.empty((h, w), np.uint8)
        won = np.empty((h, w), dtype)
    if need_confidence:
        acc = np.empty((h, w), np.float32)
        tmp = np.empty((h, w), np.float32)
        # Σ_k exp(l_k) without subtracting the max, speculatively; used only if exp cannot over/underflow (below)
        cv2.exp(logits[0], dst=acc)
    for c in range(1, k):
        lc = logits[c]
        if need_labels:
            cv2.compare(lc, best, cv2.CMP_GT, dst=mask)  # strictly greater: ties keep the lower id
            # "c where c wins, else keep": a memset and one masked copy, cheaper than AND + max over the plane
            won.fill(c)
            cv2.copyTo(won, mask, labels)
        cv2.max(best, lc, dst=best)
        if need_confidence:
            cv2.exp(lc, dst=tmp)
            cv2.add(acc, tmp, dst=acc)
    if need_confidence:
        low, top, _, _ = cv2.minMaxLoc(best)
        if top < 80.0 and low > -80.0:
            # exp(l) neither overflows nor underflows float32 here: Σ exp(l_k) / exp(max) needs no per-class
            # subtraction
            conf = cv2.divide(cv2.exp(best), acc)
        else:
            # extreme logits: the speculative sum may hold inf; redo it relative to the max
            acc.fill(0.0)
            for c in range(k):
                cv2.subtract(logits[c], best, dst=tmp)
                cv2.exp(tmp, dst=tmp)
                cv2.add(acc, tmp, dst=acc)
            conf = cv2.divide(1.0, acc)  # acc ≥ 1 (the arg-max term is exp(0)), so conf ∈ (0, 1]
        cv2.min(conf, 1.0, dst=conf)
    return labels, conf


def colour_lut(palette: np.ndarray) -> np.ndarray:
    """256×1×3 uint8 table for ``cv2.applyColorMap``; ids past the palette are black."""
    palette = np.asarray(palette, np.uint8).reshape(-1, 3)
    lut = np.zeros((256, 1, 3), np.uint8)
    n = min(256, len(palette))
    lut[:n, 0] = palette[:n]
    return lut


def colourize(labels: np.ndarray, palette: np.ndarray, lut: np.ndarray | None = None) -> np.ndarray:
    """h×w integer labels → h×w×3 uint8 RGB; ids past the palette are drawn black."""
    if labels.dtype == np.uint8:
        # applyColorMap with a user table is a plain per-pixel lookup (no BGR swap): the RGB table gives RGB
        return cv2.applyColorMap(labels, colour_lut(palette) if lut is None else lut)
    palette = np.asarray(palette, np.uint8).reshape(-1, 3)
    full = np.zeros((int(labels.max(initial=0)) + 1, 3), np.uint8)
    n = min(len(full), len(palette))
    full[:n] = palette[:n]
    return full[labels]


def overlay(rgb: np.ndarray, colour: np.ndarray, alpha: float) -> np.ndarray:
    """alpha · colour + (1 − alpha) · rgb, uint8 (alpha is the weight of the label colours)."""
    if rgb.shape != colour.shape:
        raise RgbtSegError(f"overlay: rgb {rgb.shape} and colour {colour.shape} differ in size")
    return cv2.addWeighted(colour, float(alpha), rgb, 1.0 - float(alpha), 0.0)
