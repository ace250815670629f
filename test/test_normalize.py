"""Thermal and depth normalisation: ranges, AGC, REP 118 invalid values, never NaN/inf."""
from __future__ import annotations

import numpy as np
import pytest

from rgbt_seg_ros.errors import RgbtSegError
from rgbt_seg_ros.pipeline.config import NormalizationConfig
from rgbt_seg_ros.pipeline.normalize import (depth_to_metres, normalize_aux, normalize_depth, normalize_thermal,
                                             percentile_range, scale_into, value_range)


def _finite01(x):
    return x.dtype == np.float32 and np.isfinite(x).all() and x.min() >= 0.0 and x.max() <= 1.0


def test_mono8_thermal():
    img = np.array([[0, 51, 255]], np.uint8)
    out, valid = normalize_thermal(img, "mono8")
    assert np.allclose(out, [[0.0, 0.2, 1.0]]) and valid.all() and _finite01(out)


def test_mono16_fixed_range_clips():
    cfg = NormalizationConfig(thermal_agc="fixed", thermal_range=(1000, 3000))
    img = np.array([[0, 1000, 2000, 3000, 65535]], np.uint16)
    out, _ = normalize_thermal(img, "mono16", cfg)
    assert np.allclose(out, [[0, 0, 0.5, 1, 1]])


def test_percentile_agc_matches_numpy_and_ignores_hot_pixels():
    rng = np.random.default_rng(0)
    img = rng.normal(22000, 300, (512, 640)).astype(np.uint16)
    lo, hi = percentile_range(img, (1.0, 99.0), subsample=1)
    ref_lo, ref_hi = np.percentile(img, [1, 99], method="nearest")
    assert abs(lo - ref_lo) <= 1 and abs(hi - ref_hi) <= 1
    lo4, hi4 = percentile_range(img, (1.0, 99.0), subsample=4)  # the subsample agrees to within a few counts
    assert abs(lo4 - ref_lo) < 20 and abs(hi4 - ref_hi) < 20
    img[100, 100] = 65000  # a dead-hot pixel must not squash the image's contrast
    out, _ = normalize_thermal(img, "mono16", NormalizationConfig(thermal_percentiles=(1, 99)))
    assert _finite01(out) and 0.4 < np.median(out) < 0.6 and out[100, 100] == 1.0
    flat = np.full((10, 10), 1234, np.uint16)  # a flat image must not divide by zero
    out, _ = normalize_thermal(flat, "16UC1")
    assert _finite01(out)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_percentile_histogram_gives_the_exact_order_statistics(dtype):
    # 8/16-bit images take the histogram path; it must pick the very samples np.partition picks
    rng = np.random.default_rng(3)
    top = np.iinfo(dtype).max
    images = [rng.integers(0, top, (97, 131), dtype=dtype), np.full((40, 50), 7, dtype),
              np.clip(rng.normal(top * 0.4, top * 0.01, (64, 80)), 0, top).astype(dtype)]
    images[0][5, 5], images[0][6, 6] = 0, top  # both ends of the range
    for img in images:
        for sub in (1, 3):
            sample = img[::sub, ::sub].reshape(-1)
            n = sample.size - 1
            for q in ((0, 100), (1, 99), (2.5, 97.5), (50, 50)):
                ia, ib = round(q[0] / 100 * n), round(q[1] / 100 * n)
                part = np.partition(sample.astype(np.int64), (ia, ib))  # the partition path's answer
                lo, hi = float(part[ia]), float(part[ib])
                hi = hi if hi > lo else lo + 1.0
                assert percentile_range(img, q, subsample=sub) == (lo, hi), (q, sub)


def test_scale_into_one_pass_equals_the_formula_and_patches_non_finite_values():
    rng = np.random.default_rng(4)
    lo, hi, mean, std = 100.0, 900.0, 0.4, 0.3
    for src in (rng.integers(0, 256, (31, 17), dtype=np.uint8), rng.integers(0, 1200, (31, 17)).astype(np.uint16),
                rng.uniform(0, 1000, (31, 17)).astype(np.float32)):
        ref = (np.clip((src.astype(np.float64) - lo) / (hi - lo), 0, 1) - mean) / std
        assert np.allclose(scale_into(src, lo, hi, mean, std), ref, atol=1e-5)
        strided = np.asfortranarray(src)  # any layout in, the same numbers out
        assert np.allclose(scale_into(strided, lo, hi, mean, std), ref, atol=1e-5)
    bad = np.array([[np.nan, np.inf, -np.inf, 1e30, 500.0]], np.float32)
    out = scale_into(bad, lo, hi, mean, std)
    assert np.allclose(out, [(0 - mean) / std] * 3 + [(1 - mean) / std, (0.5 - mean) / std], atol=1e-6)
    with pytest.raises(RgbtSegError, match="dst must be"):
        scale_into(bad, lo, hi, dst=np.empty((1, 4), np.float32))


def test_32fc1_temperatures_celsius_and_kelvin():
    c = np.array([[-20.0, 20.0, 60.0, np.nan, np.inf]], np.float32)
    out_c, valid = normalize_thermal(c, "32FC1", NormalizationConfig(temperature_range=(-20, 60)))
    assert np.allclose(out_c[0, :3], [0, 0.5, 1]) and valid.tolist() == [[True, True, True, False, False]]
    assert _finite01(out_c) and out_c[0, 3] == 0 and out_c[0, 4] == 0
    k = (c + np.float32(273.15)).astype(np.float32)
    out_k, _ = normalize_thermal(k, "32FC1", NormalizationConfig(temperature_range=(-20, 60), temperature_unit="K"))
    assert np.allclose(out_k, out_c, atol=1e-5)


def test_depth_rep118():
    mm = np.array([[0, 500, 5000, 12000]], np.uint16)
    out, valid = normalize_depth(mm, "16UC1", NormalizationConfig(depth_range=(0, 10)))
    assert valid.tolist() == [[False, True, True, True]]
    assert np.allclose(out, [[0, 0.05, 0.5, 1.0]]) and _finite01(out)
    m = np.array([[np.nan, 0.5, -1.0, np.inf, 0.0, 5.0]], np.float32)
    out, valid = normalize_depth(m, "32FC1")
    assert valid.tolist() == [[False, True, False, False, False, True]]
    assert _finite01(out) and out[0, 0] == 0 and out[0, 3] == 0
    assert np.allclose(depth_to_metres(mm, "16UC1"), [[0, 0.5, 5.0, 12.0]])


def test_bad_inputs_raise_one_line_errors():
    with pytest.raises(RgbtSegError, match="thermal image: encoding 'rgb8'"):
        normalize_aux(np.zeros((4, 4), np.uint8), "rgb8", "thermal")
    with pytest.raises(RgbtSegError, match="needs dtype uint16"):
        normalize_aux(np.zeros((4, 4), np.uint8), "mono16", "thermal")
    with pytest.raises(RgbtSegError, match="depth image: encoding 'mono8'"):
        normalize_aux(np.zeros((4, 4), np.uint8), "mono8", "depth")
    with pytest.raises(RgbtSegError, match="2-D"):
        normalize_aux(np.zeros((4, 4, 3), np.uint8), "mono8", "thermal")
    with pytest.raises(RgbtSegError, match="modality"):
        normalize_aux(np.zeros((4, 4), np.uint8), "mono8", "lidar")
    with pytest.raises(RgbtSegError, match="normalization.thermal_agc"):
        NormalizationConfig(thermal_agc="auto")
    with pytest.raises(RgbtSegError, match="normalization.depth_range"):
        NormalizationConfig(depth_range=(5, 1))


@pytest.mark.parametrize("encoding,modality,img", [
    ("mono16", "thermal", np.random.default_rng(1).integers(0, 65535, (16, 16), dtype=np.uint16)),
    ("32FC1", "thermal", np.where(np.eye(16) > 0, np.nan, 25.0).astype(np.float32)),
    ("16UC1", "depth", np.random.default_rng(2).integers(0, 9000, (16, 16), dtype=np.uint16)),
    ("32FC1", "depth", np.where(np.eye(16) > 0, np.nan, 3.0).astype(np.float32)),
])
def test_fused_scale_equals_normalise_then_standardise(encoding, modality, img):
    cfg = NormalizationConfig()
    ref, _ = normalize_aux(img, encoding, modality, cfg)
    lo, hi = value_range(img, encoding, modality, cfg)
    fused = scale_into(img, lo, hi, mean=0.5, std=0.25)
    assert np.isfinite(fused).all()
    assert np.allclose(fused, (ref - 0.5) / 0.25, atol=1e-5)
