"""Logits → labels/confidence/colour/overlay, resize/letterbox geometry, palettes, stage timing."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from rgbt_seg_ros.errors import RgbtSegError
from rgbt_seg_ros.pipeline.palettes import CLASS_SETS, get_class_set, palette_for, voc_colormap
from rgbt_seg_ros.pipeline.postprocess import colourize, label_dtype, logits_to_labels, overlay
from rgbt_seg_ros.pipeline.resize import ResizeTransform, preprocess_rgb
from rgbt_seg_ros.pipeline.timing import LatencyStats, StageTimer


def _softmax_max(logits):
    e = np.exp(logits - logits.max(0, keepdims=True))
    return (e / e.sum(0, keepdims=True)).max(0)


@pytest.mark.parametrize("k", [1, 2, 9, 40])
def test_labels_and_confidence_match_reference(k):
    logits = np.random.default_rng(k).normal(0, 3, (k, 24, 32)).astype(np.float32)
    labels, conf = logits_to_labels(logits)
    assert labels.dtype == np.uint8 and np.array_equal(labels, logits.argmax(0))
    assert conf.dtype == np.float32 and np.allclose(conf, _softmax_max(logits.astype(np.float64)), atol=1e-6)
    assert conf.min() >= 1.0 / k - 1e-6 and conf.max() <= 1.0


def test_confidence_is_stable_for_extreme_logits():
    logits = np.array([[[200.0, -300.0]], [[190.0, -310.0]]], np.float32)  # exp() would overflow / underflow
    labels, conf = logits_to_labels(logits)
    assert labels.tolist() == [[0, 0]]
    assert np.allclose(conf, 1 / (1 + np.exp(-10.0)), atol=1e-6) and np.isfinite(conf).all()


def test_ties_go_to_lowest_id_and_outputs_can_be_skipped():
    logits = np.zeros((3, 2, 2), np.float32)
    logits[2, 0, 0] = 1.0
    labels, conf = logits_to_labels(logits)
    assert labels.tolist() == [[2, 0], [0, 0]]
    assert conf[1, 1] == pytest.approx(1 / 3)
    assert logits_to_labels(logits, need_labels=False)[0] is None
    assert logits_to_labels(logits, need_confidence=False)[1] is None
    with pytest.raises(RgbtSegError, match="logits"):
        logits_to_labels(np.zeros((4, 4), np.float32))


def test_more_than_256_classes_give_uint16_labels():
    k = 300
    logits = np.random.default_rng(0).normal(size=(k, 8, 8)).astype(np.float32)
    logits[299, 0, 0] = 50.0
    labels, _ = logits_to_labels(logits)
    assert labels.dtype == np.uint16 and labels[0, 0] == 299 and np.array_equal(labels, logits.argmax(0))
    assert label_dtype(256) == np.uint8 and label_dtype(257) == np.uint16
    pal = np.asarray(voc_colormap(k), np.uint8)
    assert np.array_equal(colourize(labels, pal), pal[labels])


def test_colourize_and_overlay():
    pal = get_class_set("mfnet").palette_array()
    labels = np.array([[0, 1, 2], [8, 9, 200]], np.uint8)
    col = colourize(labels, pal)
    assert col.dtype == np.uint8 and col.shape == (2, 3, 3)
    assert col[0, 1].tolist() == [64, 0, 128] and col[1, 0].tolist() == list(pal[8])
    assert col[1, 1].tolist() == [0, 0, 0] and col[1, 2].tolist() == [0, 0, 0]  # ids past the palette: black
    rgb = np.full((2, 3, 3), 200, np.uint8)
    ov = overlay(rgb, col, 0.25)
    expect = np.round(0.25 * col.astype(float) + 0.75 * 200)
    assert np.abs(ov.astype(float) - expect).max() <= 1
    assert np.array_equal(overlay(rgb, col, 0.0), rgb) and np.array_equal(overlay(rgb, col, 1.0), col)
    with pytest.raises(RgbtSegError, match="overlay"):
        overlay(rgb, col[:1], 0.5)


def test_class_sets():
    assert {n: s.num_classes for n, s in CLASS_SETS.items()} == {
        "mfnet": 9, "pst900": 5, "fmb": 15, "nyuv2": 40, "sunrgbd": 37, "synthetic": 6}
    syn = get_class_set("synthetic")
    assert syn.class_names == ("background", "road", "sidewalk", "vegetation", "car", "person")
    assert syn.palette == ((70, 70, 70), (128, 64, 128), (244, 35, 232), (107, 142, 35), (0, 0, 142), (220, 20, 60))
    assert get_class_set("NYU-Depth v2").ignore_index == 255
    assert get_class_set("MFNet").class_names[0] == "unlabelled" and get_class_set("pst900").class_names[-1] == "survivor"
    for s in CLASS_SETS.values():  # palettes are distinct so every class can be told apart
        assert len(set(s.palette)) == s.num_classes
    with pytest.raises(RgbtSegError, match="class set"):
        get_class_set("cityscapes")
    with pytest.raises(RgbtSegError, match="palette"):
        palette_for(5, [[0, 0, 0]])
    assert voc_colormap(3) == [(0, 0, 0), (128, 0, 0), (0, 128, 0)]


def test_stretch_transform_matches_cv2_resize_and_inverts():
    tf = ResizeTransform((720, 1280), (480, 640), "stretch")
    img = np.random.default_rng(0).integers(0, 255, (720, 1280, 3), dtype=np.uint8)
    assert np.array_equal(tf.forward(img), cv2.resize(img, (640, 480)))
    assert tf.inverse(np.zeros((480, 640), np.uint8), "nearest").shape == (720, 1280)
    # src_coords gives the source pixel sampled by each network pixel, cv2.resize's convention
    mx, my = tf.src_coords()
    assert mx[0, 0] == pytest.approx((0.5 / 0.5) - 0.5) and my[0, 0] == pytest.approx(0.5 * 1.5 - 0.5)


def test_letterbox_pads_and_maps_back():
    tf = ResizeTransform((720, 1280), (480, 640), "letterbox")
    assert tf.content_hw == (360, 640) and (tf.top, tf.left) == (60, 0)
    img = np.full((720, 1280), 7, np.uint8)
    out = tf.forward(img, "nearest")
    assert out.shape == (480, 640) and (out[:60] == 0).all() and (out[60:420] == 7).all() and (out[420:] == 0).all()
    labels = np.zeros((480, 640), np.uint8)
    labels[60:420, 320:] = 3  # the right half of the content
    back = tf.inverse(labels, "nearest")
    assert back.shape == (720, 1280) and (back[:, 640:] == 3).all() and (back[:, :640] == 0).all()
    mx, my = tf.src_coords()
    assert my[0, 0] < -100 and my[60, 0] == pytest.approx(0.5 / 0.5 - 0.5)
    with pytest.raises(RgbtSegError, match="resize"):
        tf.forward(np.zeros((10, 10), np.uint8))


def test_preprocess_rgb_normalises_per_channel():
    tf = ResizeTransform((4, 6), (4, 6))
    rgb = np.zeros((4, 6, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 0, 128, 255
    mean, std = np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32)
    x = preprocess_rgb(rgb, tf, mean, std)
    assert x.shape == (1, 3, 4, 6) and x.dtype == np.float32
    expect = [(0 - 0.485) / 0.229, (128 / 255 - 0.456) / 0.224, (1 - 0.406) / 0.225]
    assert np.allclose(x[0, :, 0, 0], expect, atol=1e-5)


def test_stage_timer_and_latency_stats():
    t = StageTimer()
    t.start_total()
    with t("a"):
        sum(range(1000))
    with t("a"):
        pass
    t.stop_total()
    d = t.as_dict()
    assert set(d) == {"a", "total"} and d["total"] >= d["a"] >= 0
    s = LatencyStats(window=100)
    for v in range(1, 101):
        s.add({"x": float(v)})
    summ = s.summary()["x"]
    assert summ["p50"] == pytest.approx(50.5) and summ["p95"] == pytest.approx(95.05) and summ["p99"] == pytest.approx(99.01)
    assert summ["max"] == 100 and summ["n"] == 100 and "p99" in s.format()
