"""Second-modality images → float32 in [0, 1] plus a validity mask. Invalid pixels are 0, never NaN/inf.

Thermal: ``mono8``/``8UC1`` (÷255); ``mono16``/``16UC1`` raw counts, by a fixed range or per-frame
percentile AGC (percentiles on a strided subsample: the same answer to within the sampling error at a
fraction of the cost); ``32FC1`` temperatures in °C or K mapped through ``temperature_range``.
Depth (REP 118): ``16UC1`` millimetres with 0 = invalid; ``32FC1`` metres with NaN (or ≤ 0, inf) = invalid;
mapped through ``depth_range`` metres.
"""
from __future__ import annotations

import numpy as np

from rgbt_seg_ros.errors import RgbtSegError
from rgbt_seg_ros.pipeline.config import NormalizationConfig
from rgbt_seg_ros.pipeline.kernels import scale_clip, two_order_statistics

THERMAL_ENCODINGS = ("mono8", "8UC1", "mono16", "16UC1", "32FC1")
DEPTH_ENCODINGS = ("16UC1", "mono16", "32FC1")
_DTYPES = {"mono8": np.uint8, "8UC1": np.uint8, "mono16": np.uint16, "16UC1": np.uint16, "32FC1": np.float32}


def _check(image: np.ndarray, encoding: str, allowed: tuple[str, ...], what: str) -> None:
    if encoding not in allowed:
        raise RgbtSegError(f"{what} image: encoding {encoding!r} is not supported; use one of {', '.join(allowed)}")
    if not isinstance(image, np.ndarray) or image.ndim != 2:
        raise RgbtSegError(f"{what} image: expected a 2-D array, got {getattr(image, 'shape', type(image).__name__)}")
    if image.dtype != _DTYPES[encoding]:
        raise RgbtSegError(f"{what} image: encoding {encoding} needs dtype {np.dtype(_DTYPES[encoding])}, got {image.dtype}")


def _scale(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """(x − lo) / (hi − lo) clipped to [0, 1], float32 throughout."""
    out = x.astype(np.float32)
    out -= np.float32(lo)
    out *= np.float32(1.0 / (hi - lo))
    np.clip(out, 0.0, 1.0, out=out)
    return out


def percentile_range(image: np.ndarray, percentiles: tuple[float, float], subsample: int = 4,
                     valid: np.ndarray | None = None) -> tuple[float, float]:
    """Low/high percentiles of an image (every ``subsample``-th row/column), never an empty range.

    The percentiles are order statistics of the sample (``method="nearest"``): for 8- and 16-bit images they
    are read off a histogram of the sample (``kernels.two_order_statistics``), otherwise selected by
    ``np.partition``.
    """
    sample = image[::subsample, ::subsample]
    if valid is not None:
        sample = sample[valid[::subsample, ::subsample]]
    if sample.size == 0:
        return 0.0, 1.0
    n = sample.size - 1
    ia, ib = int(round(percentiles[0] / 100 * n)), int(round(percentiles[1] / 100 * n))
    if sample.dtype in (np.uint8, np.uint16):
        # the masked sample is taken and flat already; else the kernel walks the strided sample in place
        src, step = (sample.reshape(1, -1), 1) if valid is not None else (image, int(subsample))
        lo, hi = (float(v) for v in two_order_statistics(src, step, ia, ib))
    else:
        sample = sample.reshape(-1)
        part = np.partition(sample, (ia, ib))  # O(n): two order statistics, no full sort
        lo, hi = float(part[ia]), float(part[ib])
    if hi <= lo:  # a flat image: keep its level, avoid a zero division
        hi = lo + 1.0
    return lo, hi


def value_range(image: np.ndarray, encoding: str, modality: str, config: NormalizationConfig | None = None
                ) -> tuple[float, float]:
    """The raw values (in the image's own units) that map to 0 and 1. Validates encoding and dtype.

    Invalid raw values (0 mm depth, NaN) are ≤ the low end or NaN, so ``(x − lo)/(hi − lo)`` clipped to
    [0, 1] sends them to 0 once NaNs are patched to ``lo``.
    """
    cfg = config or NormalizationConfig()
    if modality == "depth":
        _check(image, encoding, DEPTH_ENCODINGS, "depth")
        lo, hi = cfg.depth_range
        return (lo * 1e3, hi * 1e3) if encoding in ("16UC1", "mono16") else (lo, hi)
    if modality != "thermal":
        raise RgbtSegError(f"model card: modality {modality!r} is not 'thermal' or 'depth'")
    _check(image, encoding, THERMAL_ENCODINGS, "thermal")
    if encoding in ("mono8", "8UC1"):
        return 0.0, 255.0
    if encoding in ("mono16", "16UC1"):
        if cfg.thermal_agc == "fixed":
            return cfg.thermal_range
        return percentile_range(image, cfg.thermal_percentiles, cfg.agc_subsample)
    lo, hi = cfg.temperature_range
    if cfg.temperature_unit == "K":  # the range is in °C, the image in kelvin
        lo, hi = lo + 273.15, hi + 273.15
    return lo, hi


def normalize_thermal(image: np.ndarray, encoding: str, config: NormalizationConfig | None = None
                      ) -> tuple[np.ndarray, np.ndarray]:
    lo, hi = value_range(image, encoding, "thermal", config)
    if encoding != "32FC1":
        return _scale(image, lo, hi), np.ones(image.shape, bool)
    valid = np.isfinite(image)
    out = _scale(np.where(valid, image, np.float32(lo)), lo, hi)
    out[~valid] = 0.0
    return out, valid


def depth_to_metres(image: np.ndarray, encoding: str) -> np.ndarray:
    """REP 118 depth → float32 metres with 0 where invalid (0 mm, NaN, inf, negative)."""
    _check(image, encoding, DEPTH_ENCODINGS, "depth")
    if encoding in ("16UC1", "mono16"):
        return image.astype(np.float32) * np.float32(1e-3)
    out = image.astype(np.float32, copy=True)
    out[~(np.isfinite(out) & (out > 0))] = 0.0
    return out


def normalize_depth_metres(depth_m: np.ndarray, config: NormalizationConfig | None = None
                           ) -> tuple[np.ndarray, np.ndarray]:
    """float32 metres (0 = invalid) → [0, 1] through ``depth_range`` and the validity mask."""
    cfg = config or NormalizationConfig()
    valid = depth_m > 0
    lo, hi = cfg.depth_range
    out = _scale(depth_m, lo, hi)
    out[~valid] = 0.0
    return out, valid


def normalize_depth(image: np.ndarray, encoding: str, config: NormalizationConfig | None = None
                    ) -> tuple[np.ndarray, np.ndarray]:
    return normalize_depth_metres(depth_to_metres(image, encoding), config)


def normalize_aux(image: np.ndarray, encoding: str, modality: str, config: NormalizationConfig | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Dispatch on modality ("thermal" | "depth"): float32 [0, 1] image and bool validity mask."""
    if modality == "thermal":
        return normalize_thermal(image, encoding, config)
    if modality == "depth":
        return normalize_depth(image, encoding, config)
    raise RgbtSegError(f"model card: modality {modality!r} is not 'thermal' or 'depth'")


def scale_into(src: np.ndarray, lo: float, hi: float, mean: float = 0.0, std: float = 1.0,
               dst: np.ndarray | None = None) -> np.ndarray:
    """((clip((src − lo)/(hi − lo), 0, 1)) − mean) / std as float32, in one fused pass (written into ``dst``).

    Standardisation is affine and increasing, so clipping after it to [(0 − mean)/std, (1 − mean)/std] equals
    clipping before it. Non-finite values of float sources are invalid and come out as the value of 0.
    """
    src = np.ascontiguousarray(src)
    if src.dtype not in (np.uint8, np.uint16, np.float32):
        src = src.astype(np.float32)
    if dst is None:
        dst = np.empty(src.shape, np.float32)
    if dst.shape != src.shape or dst.dtype != np.float32 or not dst.flags.c_contiguous:
        raise RgbtSegError(f"scale_into: dst must be a C-contiguous float32 array of shape {src.shape}")
    a = 1.0 / ((hi - lo) * std)
    b = (-lo / (hi - lo) - mean) / std
    scale_clip(src, a, b, (0.0 - mean) / std, (1.0 - mean) / std, dst)
    return dst
