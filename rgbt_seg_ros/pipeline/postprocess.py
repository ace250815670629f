"""Logits → labels, confidence, palette colours and overlay (the loops themselves: ``kernels.py``).

Labels and confidence are computed at the network resolution (arg-max and max-softmax of the logits
there) and then brought to RGB resolution: labels with nearest-neighbour, confidence bilinearly. This is
the documented alternative to upsampling the K logit planes first: it costs K× less at full resolution
and differs from it only along class boundaries, within one network pixel.
"""
from __future__ import annotations

import numpy as np

from rgbt_seg_ros.errors import RgbtSegError
from rgbt_seg_ros.pipeline.kernels import argmax_softmax, blend, expand_labels


def label_dtype(num_classes: int) -> np.dtype:
    """uint8 up to 256 classes (ids 0..255), uint16 beyond (sensor_msgs mono16)."""
    if num_classes > 65536:
        raise RgbtSegError(f"num_classes: {num_classes} classes do not fit a mono16 label image")
    return np.dtype(np.uint8) if num_classes <= 256 else np.dtype(np.uint16)


def logits_to_labels(logits: np.ndarray, need_labels: bool = True, need_confidence: bool = True
                     ) -> tuple[np.ndarray | None, np.ndarray | None]:
    """K×h×w logits → (labels h×w uint8/uint16, confidence h×w float32 in [0, 1]); either may be skipped (None).

    Ties go to the lowest class id. Confidence is max softmax = 1 / Σ_k exp(l_k − max_k l), exact for any
    logit magnitude. One fused pass over the K planes (``kernels.argmax_softmax``: per pixel for up to 10
    classes, tile by tile past that); without confidence no exp is computed at all.
    """
    if logits.ndim != 3 or logits.shape[0] < 1:
        raise RgbtSegError(f"logits: expected K×h×w, got shape {logits.shape}")
    logits = np.ascontiguousarray(logits, dtype=np.float32)
    k, h, w = logits.shape
    dtype = label_dtype(k)
    labels = np.empty((h, w), dtype) if need_labels else np.empty((0, 0), dtype)
    conf = np.empty((h, w), np.float32) if need_confidence else np.empty((0, 0), np.float32)
    if need_labels or need_confidence:
        argmax_softmax(logits.reshape(k, h * w), labels.reshape(-1), conf.reshape(-1))
    return (labels if need_labels else None), (conf if need_confidence else None)


def colour_lut(palette: np.ndarray, size: int = 256) -> np.ndarray:
    """max(size, 256)×3 uint8 table, row = class id; ids past the palette are black."""
    palette = np.asarray(palette, np.uint8).reshape(-1, 3)
    lut = np.zeros((max(256, int(size)), 3), np.uint8)
    n = min(len(lut), len(palette))
    lut[:n] = palette[:n]
    return lut


def _as_label_image(labels: np.ndarray) -> np.ndarray:
    """uint8/uint16 labels as they are; other non-negative integer arrays as uint16 (the kernels index with them)."""
    if not isinstance(labels, np.ndarray) or labels.ndim != 2 or labels.dtype.kind not in "ui":
        raise RgbtSegError(f"labels: expected an h×w integer array, got "
                           f"{getattr(labels, 'dtype', type(labels).__name__)} {getattr(labels, 'shape', '')}")
    if labels.dtype in (np.uint8, np.uint16):
        return np.ascontiguousarray(labels)
    if labels.size and (labels.min() < 0 or labels.max() > 65535):
        raise RgbtSegError(f"labels: ids must lie in [0, 65535], got [{labels.min()}, {labels.max()}]")
    return labels.astype(np.uint16)


def _column_factor(cols: np.ndarray) -> int:
    """f when ``cols`` repeats each of a run of source columns f times (cols[x] = cols[0] + x // f), else 0."""
    w = cols.size
    span = int(cols[-1] - cols[0]) + 1 if w else 0
    factor = w // span if span > 0 else 0
    if factor < 1 or factor * span != w:
        return 0
    return factor if np.array_equal(cols, cols[0] + np.arange(w) // factor) else 0


def render(labels: np.ndarray, rows: np.ndarray, cols: np.ndarray, lut: np.ndarray, rgb: np.ndarray | None = None,
           alpha: float = 0.5, want_labels: bool = True, want_colour: bool = True, want_overlay: bool = False
           ) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    """Labels (at the network resolution) → (labels, colour, overlay) at the output resolution, one pass.

    Output pixel (y, x) takes ``labels[rows[y], cols[x]]`` (``ResizeTransform.nearest_index`` gives the
    maps of ``cv2.resize(INTER_NEAREST_EXACT)``; ``np.arange`` for the same size). ``lut`` (``colour_lut``)
    must cover every label id. overlay = alpha · colour + (1 − alpha) · rgb, rounded half to even like
    ``cv2.addWeighted``. Outputs not wanted are None and not computed.
    """
    labels = _as_label_image(labels)
    rows = np.ascontiguousarray(rows, np.int64)
    cols = np.ascontiguousarray(cols, np.int64)
    h, w = rows.size, cols.size
    if rows.size and cols.size and (rows.min() < 0 or rows.max() >= labels.shape[0] or cols.min() < 0
                                     or cols.max() >= labels.shape[1]):
        raise RgbtSegError(f"render: index maps reach outside the {labels.shape[0]}×{labels.shape[1]} labels")
    if want_colour or want_overlay:
        top = int(labels.max()) if labels.size else -1
        if top >= len(lut):
            raise RgbtSegError(f"render: label id {top} is past the {len(lut)}-entry colour table")
        lut = lut[:top + 1]  # the ids present: the kernel builds its per-class colour-word tables for these only
    if want_overlay:
        if rgb is None or rgb.shape != (h, w, 3) or rgb.dtype != np.uint8:
            raise RgbtSegError(f"overlay: rgb {getattr(rgb, 'shape', None)} is not the {h}×{w}×3 uint8 output size")
        rgb = np.ascontiguousarray(rgb)
    out_l = np.empty((h, w) if want_labels else (0, 0), labels.dtype)
    out_c = np.empty((h, w, 3) if want_colour else (0, 0, 3), np.uint8)
    out_o = np.empty((h, w, 3) if want_overlay else (0, 0, 3), np.uint8)
    expand_labels(labels, rows, cols, _column_factor(cols), np.ascontiguousarray(lut, np.uint8),
                  rgb if want_overlay else out_o, float(alpha), out_l, out_c, out_o)
    return (out_l if want_labels else None), (out_c if want_colour else None), (out_o if want_overlay else None)


def colourize(labels: np.ndarray, palette: np.ndarray, lut: np.ndarray | None = None) -> np.ndarray:
    """h×w integer labels → h×w×3 uint8 RGB; ids past the palette are drawn black."""
    labels = _as_label_image(labels)
    if lut is None or (labels.size and int(labels.max()) >= len(lut)):
        lut = colour_lut(palette, int(labels.max(initial=0)) + 1)
    h, w = labels.shape
    return render(labels, np.arange(h), np.arange(w), lut, want_labels=False)[1]


def overlay(rgb: np.ndarray, colour: np.ndarray, alpha: float) -> np.ndarray:
    """alpha · colour + (1 − alpha) · rgb, uint8 (alpha is the weight of the label colours), half to even."""
    if rgb.shape != colour.shape or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise RgbtSegError(f"overlay: rgb {rgb.shape} and colour {colour.shape} differ in size")
    out = np.empty(rgb.shape, np.uint8)
    blend(np.ascontiguousarray(colour, np.uint8), np.ascontiguousarray(rgb, np.uint8), float(alpha), out)
    return out
