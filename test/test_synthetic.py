"""Synthetic scenes: determinism, geometry against analytic ground truth, and the day/night modality contrast."""
from __future__ import annotations

import math

import numpy as np
import pytest

from rgbt_seg_ros.errors import RgbtSegError
from rgbt_seg_ros.synthetic import (CAR, NUM_CLASSES, PERSON, ROAD, SceneGenerator, default_intrinsics,
                                    thermal_celsius)


def test_frame_shapes_dtypes_and_determinism():
    gen = SceneGenerator(seed=7)
    a = gen.frame(3, 96, 128, night=True)
    b = SceneGenerator(seed=7).frame(3, 96, 128, night=True)
    assert a["rgb"].shape == (96, 128, 3) and a["rgb"].dtype == np.uint8
    assert a["thermal"].shape == (96, 128) and a["thermal"].dtype == np.uint16
    assert a["depth"].shape == (96, 128) and a["depth"].dtype == np.float32
    assert a["labels"].shape == (96, 128) and a["labels"].dtype == np.uint8
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    c = SceneGenerator(seed=8).frame(3, 96, 128, night=True)
    assert not np.array_equal(a["labels"], c["labels"])
    assert a["labels"].max() < NUM_CLASSES


def test_modality_selection_and_bad_input():
    gen = SceneGenerator(1)
    f = gen.frame(0, 64, 80, modality="depth")
    assert set(f) == {"rgb", "depth", "labels"}
    with pytest.raises(RgbtSegError, match="modality"):
        gen.frame(0, 64, 80, modality="lidar")
    with pytest.raises(RgbtSegError, match="too small"):
        gen.frame(0, 4, 80)


def test_class_ids_match_the_synthetic_class_set():
    palettes = pytest.importorskip("rgbt_seg_ros.pipeline.palettes")
    names = palettes.get_class_set("synthetic").class_names
    assert len(names) == NUM_CLASSES
    assert names[ROAD] == "road" and names[CAR] == "car" and names[PERSON] == "person"


def test_every_class_appears_over_a_few_frames():
    gen = SceneGenerator(3)
    seen = np.zeros(NUM_CLASSES, bool)
    for i in range(6):
        seen[np.unique(gen.frame(i, 120, 160, night=bool(i % 2), modality=("depth",))["labels"])] = True
    assert seen.all(), seen


def test_ground_depth_matches_analytic_plane():
    gen = SceneGenerator(5)
    scene = gen.scene(2, night=False)
    h, w = 120, 160
    K = default_intrinsics(w, h)
    f = scene.render(K, (h, w), modalities=("depth",))
    ground = np.isin(f["labels"], (ROAD,)) & np.isfinite(f["depth"])
    v, u = np.nonzero(ground)
    # Optical-axis depth of the plane y_world = cam_height seen by a camera pitched down by `pitch`.
    ray_y = (v - K[1, 2]) / K[1, 1]
    c, s = math.cos(scene.pitch), math.sin(scene.pitch)
    expected = scene.cam_height / (c * ray_y + s)
    np.testing.assert_allclose(f["depth"][v, u], expected, rtol=1e-4)


def test_second_camera_is_consistent_with_the_first():
    """Reproject main-camera hits into a second camera (other K, size, offset): same class and depth."""
    scene = SceneGenerator(11).scene(4, night=False)
    h1, w1, h2, w2 = 144, 256, 128, 160
    K1, K2 = default_intrinsics(w1, h1, 70.0), default_intrinsics(w2, h2, 50.0)
    yaw = math.radians(2.0)
    R = np.array([[math.cos(yaw), 0, math.sin(yaw)], [0, 1, 0], [-math.sin(yaw), 0, math.cos(yaw)]])
    t = np.array([0.12, -0.05, 0.02])
    main = scene.render(K1, (h1, w1), modalities=("depth",))
    aux = scene.render(K2, (h2, w2), R, t, modalities=("depth",))
    v, u = np.nonzero(np.isfinite(main["depth"]))
    d = main["depth"][v, u]
    p_main = np.linalg.inv(K1) @ np.stack([u * d, v * d, d])
    p_aux = R.T @ (p_main - t[:, None])
    uv = K2 @ p_aux
    u2, v2 = uv[0] / uv[2], uv[1] / uv[2]
    inb = (u2 > 0.5) & (u2 < w2 - 1.5) & (v2 > 0.5) & (v2 < h2 - 1.5)
    u2i, v2i = np.rint(u2[inb]).astype(int), np.rint(v2[inb]).astype(int)
    z_aux = p_aux[2, inb]
    visible = np.abs(aux["depth"][v2i, u2i] - z_aux) < 0.02 * z_aux + 0.05  # not occluded in the second view
    assert visible.mean() > 0.8
    same = aux["labels"][v2i, u2i][visible] == main["labels"][v[inb], u[inb]][visible]
    assert same.mean() > 0.97


def _separation(img: np.ndarray, labels: np.ndarray, cls: int, ref: int) -> float:
    """|mean(cls) - mean(ref)| / pooled std: how well one threshold separates the two classes."""
    a, b = img[labels == cls].astype(np.float64), img[labels == ref].astype(np.float64)
    return abs(a.mean() - b.mean()) / math.sqrt(0.5 * (a.var() + b.var()) + 1e-12)


def test_night_people_are_visible_in_thermal_not_in_rgb():
    gen = SceneGenerator(2)
    rgb_sep, th_sep, day_rgb, night_rgb = [], [], [], []
    for i in range(4):
        n = gen.frame(i, 120, 160, night=True)
        d = gen.frame(i, 120, 160, night=False)
        if (n["labels"] == PERSON).sum() < 20:
            continue
        gray = n["rgb"].astype(np.float32).mean(axis=2)
        rgb_sep.append(_separation(gray, n["labels"], PERSON, ROAD))
        th_sep.append(_separation(n["thermal"], n["labels"], PERSON, ROAD))
        day_rgb.append(d["rgb"].mean())
        night_rgb.append(n["rgb"].mean())
        assert np.median(thermal_celsius(n["thermal"][n["labels"] == PERSON])) > 24.0
    assert len(th_sep) >= 2
    assert np.mean(th_sep) > 3.0 * np.mean(rgb_sep), (th_sep, rgb_sep)
    assert np.mean(night_rgb) < 0.25 * np.mean(day_rgb)
