"""Logits → labels/confidence/colour/overlay, resize/letterbox geometry, palettes, stage timing."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from rgbt_seg_ros.errors import RgbtSegError
from rgbt_seg_ros.pipeline.palettes import CLASS_SETS, get_class_set, palette_for, voc_colormap
from rgbt_seg_ros.pipeline.postprocess import colour_lut, colourize, label_dtype, logits_to_labels, overlay, render
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


def test_confidence_is_accurate_over_the_whole_exp_range():
    # two classes, logit gaps from 0 to 120: conf = 1 / (1 + exp(-gap)), the fused kernel's exp included
    gaps = np.concatenate([np.linspace(0, 20, 4001), np.linspace(20, 120, 101)])
    logits = np.stack([np.zeros_like(gaps), gaps]).astype(np.float32)[:, None, :]
    labels, conf = logits_to_labels(logits)
    expect = 1.0 / (1.0 + np.exp(-gaps.astype(np.float32).astype(np.float64)))
    assert np.abs(conf[0] / expect - 1).max() < 5e-7
    assert (labels[0, 1:] == 1).all() and labels[0, 0] == 0  # gap 0 is a tie: the lower id


@pytest.mark.parametrize("shape", [(9, 37, 113), (5, 1, 1), (3, 64, 64), (15, 45, 91)])
def test_labels_and_confidence_across_tile_boundaries(shape):
    # pixel counts below, at and past several kernel tiles (2048 pixels), none a multiple of it
    logits = (np.random.default_rng(sum(shape)).normal(0, 4, shape)).astype(np.float32)
    labels, conf = logits_to_labels(logits)
    assert np.array_equal(labels, logits.argmax(0))
    assert np.allclose(conf, _softmax_max(logits.astype(np.float64)), atol=1e-6, rtol=0)
    only_labels, none = logits_to_labels(logits, need_confidence=False)
    none2, only_conf = logits_to_labels(logits, need_labels=False)
    assert none is None and none2 is None
    assert np.array_equal(only_labels, labels) and np.array_equal(only_conf, conf)


def test_nan_logits_never_win_and_all_nan_pixels_have_no_confidence():
    logits = np.array([[[np.nan, 1.0, np.nan]], [[2.0, np.nan, np.nan]], [[0.0, 0.5, np.nan]]], np.float32)
    labels, conf = logits_to_labels(logits)
    assert labels.tolist() == [[1, 0, 0]]
    assert conf[0, 0] == pytest.approx(1 / (1 + np.exp(-2.0)), abs=1e-6)  # softmax over the finite logits
    assert conf[0, 1] == pytest.approx(1 / (1 + np.exp(-0.5)), abs=1e-6)
    assert conf[0, 2] == 0.0


@pytest.mark.parametrize("k", [1, 2, 5, 9, 10])
def test_unrolled_and_tiled_argmax_kernels_agree(k):
    # the two implementations argmax_softmax chooses between by class count, on the same awkward logits
    from rgbt_seg_ros.pipeline import kernels

    logits = np.random.default_rng(k).normal(0, 5, (k, 3001)).astype(np.float32)
    logits[:, :7] = np.nan  # all-NaN pixels
    logits[::2, 7:20] = np.nan  # some NaN logits
    logits[:, 20:30] = 1.0  # ties everywhere
    logits[k - 1, 30:40] = np.inf
    logits[0, 40:50] = -np.inf
    logits[:, 50:60] *= 1e30  # gaps that no exp survives
    labels_only, with_confidence = kernels.unrolled_argmax(k)
    tiled = (np.empty(3001, np.uint8), np.empty(3001, np.float32))
    kernels.argmax_softmax_tiled(logits, *tiled)
    unrolled = (np.empty(3001, np.uint8), np.empty(3001, np.float32))
    with_confidence(logits, *unrolled)
    unrolled_labels = np.empty(3001, np.uint8)
    labels_only(logits, unrolled_labels)
    assert np.array_equal(unrolled[0], tiled[0]) and np.array_equal(unrolled_labels, tiled[0])
    finite = np.isfinite(tiled[1])
    assert finite.all() and np.allclose(unrolled[1], tiled[1], atol=1e-6, rtol=0)
    assert (tiled[1][:7] == 0).all() and (tiled[0][:7] == 0).all()


def test_the_exp_bound_kernels_are_compiled_for_full_width_vectors():
    # kernels._full_width_vectors puts LLVM's "prefer-vector-width" attribute on the kernels whose exps set the
    # pace (0.68× the time on AVX-512 CPUs); it reaches into llvmlite's attribute set, so this notices the day a
    # llvmlite release stops taking it there and the speed quietly goes. Compiled afresh: a kernel loaded from
    # numba's disk cache has no LLVM IR to show.
    import numba

    from rgbt_seg_ros.pipeline import kernels

    def llvm_ir(kernel, *args) -> str:
        options = {k: v for k, v in kernel.targetoptions.items() if k not in ("cache", "nopython")}
        fresh = numba.njit(**options)(kernel.py_func)
        fresh(*args)
        return "".join(fresh.inspect_llvm().values())

    logits = np.zeros((9, 4), np.float32)
    labels_only, with_confidence = kernels.unrolled_argmax(9)
    outputs = (np.empty(4, np.uint8), np.empty(4, np.float32))
    assert '"prefer-vector-width"="512"' in llvm_ir(with_confidence, logits, *outputs)
    assert '"prefer-vector-width"="512"' in llvm_ir(kernels.argmax_softmax_tiled, logits, *outputs)
    assert "prefer-vector-width" not in llvm_ir(labels_only, logits, outputs[0])  # memory-bound: the default


def test_preprocess_rgb_matches_the_formula_on_an_odd_size():
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    mean, std = np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32)
    tf = ResizeTransform((37, 53), (20, 31))
    x = preprocess_rgb(rgb, tf, mean, std)
    small = cv2.resize(rgb, (31, 20)).astype(np.float64)
    expect = ((small / 255.0 - mean) / std).transpose(2, 0, 1)[None]
    assert x.shape == (1, 3, 20, 31) and x.flags.c_contiguous and np.abs(x - expect).max() < 1e-5
    view = rgb[:, ::-1]  # a non-contiguous view is fine too
    assert np.allclose(preprocess_rgb(view, ResizeTransform((37, 53), (37, 53)), mean, std)[0],
                       ((view / 255.0 - mean) / std).transpose(2, 0, 1), atol=1e-5)


@pytest.mark.parametrize("src_hw,dst_hw,mode,factor", [((720, 1280), (480, 640), "stretch", 2),
                                                        ((720, 1280), (480, 640), "letterbox", 2),
                                                        ((1080, 1920), (480, 640), "stretch", 3),
                                                        ((512, 640), (480, 640), "stretch", 1),
                                                        ((1440, 2560), (360, 640), "stretch", 4),
                                                        ((720, 1300), (480, 640), "stretch", 0)])
def test_preprocess_rgb_one_pass_agrees_with_cv2_resize(src_hw, dst_hw, mode, factor):
    # widths divided by 1-4 take the fused float kernel; it must sample where cv2.resize(INTER_LINEAR) does
    rng = np.random.default_rng(factor)
    rgb = rng.integers(0, 256, src_hw + (3,), dtype=np.uint8)
    mean, std = np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32)
    tf = ResizeTransform(src_hw, dst_hw, mode)
    assert tf.column_factor == factor
    x = preprocess_rgb(rgb, tf, mean, std)
    small = tf.forward(rgb, "linear").astype(np.float64)  # cv2.resize, rounded to uint8, letterbox padded with 0
    expect = ((small / 255.0 - mean) / std).transpose(2, 0, 1)[None]
    grey_levels = np.abs(x - expect) * 255.0 * std[None, :, None, None]
    assert x.shape == (1, 3) + dst_hw and x.dtype == np.float32 and x.flags.c_contiguous
    assert grey_levels.max() <= (0.0 if factor == 0 else 1.0) + 1e-3
    if factor:  # unrounded: on average closer to the true bilinear value than cv2's uint8 result is to it
        assert 0.1 < grey_levels.mean() < 0.4
    if mode == "letterbox":
        assert np.allclose(x[0, :, :tf.top], expect[0, :, :tf.top]) and tf.top > 0


@pytest.mark.parametrize("src_hw,dst_hw,mode", [((720, 1280), (480, 640), "stretch"), ((720, 1280), (480, 640), "letterbox"),
                                                 ((1080, 1920), (480, 640), "stretch"), ((512, 640), (480, 640), "stretch"),
                                                 ((1440, 2560), (360, 640), "stretch"), ((333, 999), (100, 37), "letterbox")])
def test_confidence_upsampling_equals_cv2_resize_clipped(src_hw, dst_hw, mode):
    # the one-pass kernel (source width = content width × 1-4) and the cv2 fallback give cv2.resize's bilinear, ≤ 1
    tf = ResizeTransform(src_hw, dst_hw, mode)
    conf = np.random.default_rng(7).random(dst_hw).astype(np.float32)
    conf[: dst_hw[0] // 3] = 1.0  # saturated rows, where rounding could lift a blend above 1
    conf[:, -3:] = 0.0  # and a hard edge at the right border
    out = tf.inverse_clipped(conf)
    expect = np.minimum(tf.inverse(conf, "linear"), 1.0)
    assert out.shape == src_hw and out.dtype == np.float32 and out.max() <= 1.0
    assert np.abs(out - expect).max() < 1e-6
    with pytest.raises(RgbtSegError, match="resize"):
        tf.inverse_clipped(conf[:-1])


@pytest.mark.parametrize("src_hw,dst_hw,mode", [((720, 1280), (480, 640), "stretch"), ((720, 1280), (480, 640), "letterbox"),
                                                 ((512, 640), (480, 640), "stretch"), ((333, 999), (100, 37), "letterbox"),
                                                 ((64, 48), (64, 48), "stretch")])
def test_nearest_index_is_exactly_inverse_nearest(src_hw, dst_hw, mode):
    tf = ResizeTransform(src_hw, dst_hw, mode)
    small = np.random.default_rng(1).integers(0, 250, dst_hw, dtype=np.uint8)
    rows, cols = tf.nearest_index()
    assert np.array_equal(small[rows][:, cols], tf.inverse(small, "nearest"))


@pytest.mark.parametrize("alpha", [0.0, 0.25, 0.5, 1.0])
def test_render_equals_resize_colour_and_overlay(alpha):
    rng = np.random.default_rng(7)
    pal = get_class_set("mfnet").palette_array()
    lut = colour_lut(pal)
    tf = ResizeTransform((720, 1280), (480, 640), "letterbox")
    small = rng.integers(0, 12, (480, 640), dtype=np.uint8)  # ids 9-11 are past the palette: black
    rgb = rng.integers(0, 256, (720, 1280, 3), dtype=np.uint8)
    labels, colour, over = render(small, *tf.nearest_index(), lut, rgb, alpha, True, True, True)
    full = tf.inverse(small, "nearest")
    assert np.array_equal(labels, full)
    assert np.array_equal(colour, lut[full]) and np.array_equal(colour, colourize(full, pal))
    # dyadic alphas are exact in float32, so the blend is bit-identical to OpenCV's
    assert np.array_equal(over, cv2.addWeighted(colour, alpha, rgb, 1 - alpha, 0.0))
    assert np.array_equal(over, overlay(rgb, colour, alpha))


@pytest.mark.parametrize("src_hw,dst_hw,mode,factor", [((720, 1280), (480, 640), "stretch", 2),
                                                        ((512, 640), (480, 640), "stretch", 1),
                                                        ((1080, 1920), (480, 640), "stretch", 3),
                                                        ((96, 256), (48, 64), "stretch", 4),
                                                        ((40, 62), (20, 31), "stretch", 2),
                                                        ((40, 66), (20, 33), "stretch", 2),
                                                        ((40, 68), (20, 34), "stretch", 2),
                                                        ((40, 6), (20, 3), "stretch", 2),
                                                        ((720, 1300), (480, 640), "stretch", 0),
                                                        ((300, 1280), (480, 640), "letterbox", 2)])
def test_render_with_repeated_columns_equals_the_index_lookup(src_hw, dst_hw, mode, factor):
    # RGB widths of 1-4 × the network's take the repeat-each-column path (at 2× network widths of every remainder
    # mod 4, and one narrower than a colour word); all must equal small[rows][:, cols]
    from rgbt_seg_ros.pipeline.postprocess import _column_factor

    tf = ResizeTransform(src_hw, dst_hw, mode)
    rows, cols = tf.nearest_index()
    assert _column_factor(cols) == factor
    rng = np.random.default_rng(src_hw[1])
    small = rng.integers(0, 9, dst_hw, dtype=np.uint8)
    rgb = rng.integers(0, 256, src_hw + (3,), dtype=np.uint8)
    lut = colour_lut(get_class_set("mfnet").palette_array())
    labels, colour, over = render(small, rows, cols, lut, rgb, 0.5, True, True, True)
    full = small[rows][:, cols]
    assert np.array_equal(labels, full) and np.array_equal(colour, lut[full])
    assert np.array_equal(over, cv2.addWeighted(lut[full], 0.5, rgb, 0.5, 0.0))


def test_render_overlay_within_one_of_opencv_for_any_alpha_and_skips_outputs():
    rng = np.random.default_rng(8)
    lut = colour_lut(voc_colormap(300), 300)
    small = rng.integers(0, 300, (30, 40)).astype(np.uint16)
    rgb = rng.integers(0, 256, (45, 80, 3), dtype=np.uint8)
    rows, cols = ResizeTransform((45, 80), (30, 40)).nearest_index()
    labels, colour, over = render(small, rows, cols, lut, rgb, 0.7, False, False, True)
    assert labels is None and colour is None
    ref = cv2.addWeighted(lut[small[rows][:, cols]], 0.7, rgb, 0.3, 0.0)
    assert np.abs(over.astype(int) - ref).max() <= 1
    labels, colour, over = render(small, rows, cols, lut, None, 0.7, True, False, False)
    assert labels.dtype == np.uint16 and np.array_equal(labels, small[rows][:, cols]) and over is None
    with pytest.raises(RgbtSegError, match="colour table"):
        render(small, rows, cols, colour_lut(voc_colormap(9)), want_labels=False)
    with pytest.raises(RgbtSegError, match="index maps"):
        render(small, rows + 1, cols, lut)
    with pytest.raises(RgbtSegError, match="overlay"):
        render(small, rows, cols, lut, rgb[:10], want_overlay=True)
    with pytest.raises(RgbtSegError, match="labels"):
        colourize(np.array([[-1, 2]]), voc_colormap(3))
