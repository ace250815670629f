"""Metrics agree with scikit-learn on random inputs (ignored labels included); reports and plots are written."""
from __future__ import annotations

import numpy as np
import pytest

from rgbt_seg_ros.training.metrics import (ConfusionMatrix, csv_table, excluded_classes, markdown_table,
                                           plot_confusion, scores_from_matrix)

sklearn_metrics = pytest.importorskip("sklearn.metrics")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_confusion_iou_acc_match_sklearn_with_ignored_pixels(seed):
    rng = np.random.default_rng(seed)
    k = 7
    cm = ConfusionMatrix(k, ignore_index=255)
    all_t, all_p = [], []
    for _ in range(3):  # accumulate over several "images"
        target = rng.integers(0, k, (37, 53))
        # predictions right 60 % of the time, else random
        pred = np.where(rng.random(target.shape) < 0.6, target, rng.integers(0, k, target.shape))
        target = target.astype(np.uint8)
        target[rng.random(target.shape) < 0.15] = 255  # ignored pixels
        if seed == 2:
            target[target == 3] = 255  # class 3 absent from the ground truth
            pred[pred == 3] = 4  # and never predicted -> undefined IoU, left out of the mean
        cm.update(pred, target)
        keep = target != 255
        all_t.append(target[keep].astype(int))
        all_p.append(pred[keep])
    t, p = np.concatenate(all_t), np.concatenate(all_p)
    ref = sklearn_metrics.confusion_matrix(t, p, labels=list(range(k)))
    np.testing.assert_array_equal(cm.matrix, ref)
    sc = cm.scores()
    present = np.union1d(np.unique(t), np.unique(p))
    ref_iou = sklearn_metrics.jaccard_score(t, p, labels=present, average=None)
    np.testing.assert_allclose(sc.iou[present], ref_iou, rtol=1e-12)
    assert sc.miou == pytest.approx(sklearn_metrics.jaccard_score(t, p, labels=present, average="macro"))
    gt_present = np.unique(t)
    ref_acc = sklearn_metrics.recall_score(t, p, labels=gt_present, average=None)
    np.testing.assert_allclose(sc.acc[gt_present], ref_acc, rtol=1e-12)
    assert sc.macc == pytest.approx(ref_acc.mean())
    assert sc.pixel_acc == pytest.approx(sklearn_metrics.accuracy_score(t, p))
    if seed == 2:
        assert np.isnan(sc.iou[3]) and np.isnan(sc.acc[3])


def test_excluding_class_zero_follows_the_dataset_convention():
    from rgbt_seg_ros.pipeline.palettes import get_class_set

    m = np.array([[5, 5, 0], [0, 10, 0], [0, 0, 10]])
    full = scores_from_matrix(m)
    no0 = scores_from_matrix(m, exclude=excluded_classes(get_class_set("fmb")))
    assert full.miou == pytest.approx((5 / 10 + 10 / 15 + 1.0) / 3)
    assert no0.miou == pytest.approx((10 / 15 + 1.0) / 2)
    assert excluded_classes(get_class_set("mfnet")) == ()  # MFNet counts "unlabelled"
    assert excluded_classes(get_class_set("fmb")) == (0,)
    for name in ("nyuv2", "sunrgbd"):  # class 0 is wall there (void is 255): it counts
        assert get_class_set(name).class_names[0] == "wall" and excluded_classes(get_class_set(name)) == ()


def test_bad_predictions_are_rejected():
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match="outside"):
        cm.update(np.array([0, 5]), np.array([0, 1]))
    with pytest.raises(ValueError, match="pixels"):
        cm.update(np.array([0, 1, 2]), np.array([0, 1]))


def test_ground_truth_ids_outside_the_class_set_are_an_error_not_dropped():
    from rgbt_seg_ros.errors import RgbtSegError

    cm = ConfusionMatrix(6, ignore_index=255)
    cm.update(np.array([0, 1, 2, 3]), np.array([0, 1, 255, 3]))  # the ignore index is fine
    with pytest.raises(RgbtSegError, match=r"class ids 7 outside 0..5 \(ignore index 255\) in 2 pixels"):
        cm.update(np.array([0, 1, 2, 3]), np.array([0, 7, 7, 3]))


def test_reports_and_plot(tmp_path):
    m = np.array([[8, 2], [1, 9]])
    sc = {"all": scores_from_matrix(m, ["road", "car"]), "night": scores_from_matrix(m * 2, ["road", "car"])}
    md = markdown_table(sc)
    assert "| road |" in md and "IoU night" in md
    assert f"{100 * (8 / 11 + 9 / 12) / 2:.1f}" in md
    csv = csv_table(sc)
    assert "all,mIoU," in csv and csv.count("\n") == 9  # header + 2 splits × (2 classes + mIoU + mAcc)
    png = plot_confusion(m, ["road", "car"], tmp_path / "cm.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
