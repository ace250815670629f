"""Evaluation through the pipeline: day/night split, RGB-only, the direct path for HHA, reports, CLI errors."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from rgbt_seg_ros.inference.artifact import ModelCard, save_model
from rgbt_seg_ros.inference.torch_backend import TorchBackend
from rgbt_seg_ros.networks import create_network
from rgbt_seg_ros.pipeline.palettes import get_class_set
from rgbt_seg_ros.training.datasets import build_dataset
from rgbt_seg_ros.training.evaluate import evaluate, write_report
from rgbt_seg_ros.training.metrics import ConfusionMatrix


def _model(tmp_path, class_set="synthetic", aux_channels=1, modality="thermal", size=(48, 64)):
    cs = get_class_set(class_set)
    torch.manual_seed(0)
    net = create_network("fusion_baseline", cs.num_classes, modality=modality, variant="mobilenetv3_small_100",
                         aux_channels=aux_channels).eval()
    card = ModelCard(network="fusion_baseline", variant="mobilenetv3_small_100", num_classes=cs.num_classes,
                     class_names=list(cs.class_names), palette=[list(c) for c in cs.palette], modality=modality,
                     aux_channels=aux_channels, input_size=size, aux_mean=(0.5,) * aux_channels,
                     aux_std=(0.25,) * aux_channels, trained=False)
    path = save_model(tmp_path / "m.safetensors", net.state_dict(), card)
    return path, TorchBackend(net, card)


def test_evaluate_matches_the_pipeline_labels_and_splits_day_night(tmp_path):
    from rgbt_seg_ros.pipeline.pipeline import SegmentationPipeline

    _, backend = _model(tmp_path)
    ds = build_dataset({"type": "synthetic", "seed": 5, "length": 4, "size": [60, 80]})
    res = evaluate(backend, ds)
    assert res.path == "pipeline" and res.num_samples == 4 and set(res.scores) == {"all", "day", "night"}
    pipe = SegmentationPipeline(backend)
    cm = {k: ConfusionMatrix(6) for k in ("all", "day", "night")}
    for i in range(4):
        s = ds.read(i)
        lab = pipe.process(s["rgb"], s["aux"], s["aux_encoding"], outputs={"labels"}).labels
        assert lab.shape == s["labels"].shape  # scored at the dataset's resolution
        cm["all"].update(lab, s["labels"])
        cm["night" if s["tags"]["night"] else "day"].update(lab, s["labels"])
    for k in cm:
        np.testing.assert_array_equal(res.scores[k].matrix, cm[k].matrix)
    np.testing.assert_array_equal(res.scores["day"].matrix + res.scores["night"].matrix, res.scores["all"].matrix)
    rgb_only = evaluate(backend, ds, rgb_only=True)
    assert not np.array_equal(rgb_only.scores["all"].matrix, res.scores["all"].matrix)
    files = write_report(res, tmp_path / "rep", "test")
    assert "| **mean** |" in files["report.md"].read_text()
    assert files["confusion_night.png"].stat().st_size > 1000
    assert "night,mIoU," in files["metrics.csv"].read_text()


def test_hha_depth_takes_the_direct_path(tmp_path):
    rng = np.random.default_rng(0)
    for d in ("RGB", "HHA"):
        (tmp_path / d).mkdir()
        cv2.imwrite(str(tmp_path / d / "1.png"), rng.integers(0, 256, (30, 40, 3), dtype=np.uint8))
    (tmp_path / "Label").mkdir()
    cv2.imwrite(str(tmp_path / "Label" / "1.png"), rng.integers(0, 41, (30, 40), dtype=np.uint8))
    (tmp_path / "test.txt").write_text("1\n")
    ds = build_dataset({"type": "rgbx", "root": str(tmp_path), "split": "test", "class_set": "nyuv2"})
    _, backend = _model(tmp_path, "nyuv2", aux_channels=3, modality="depth", size=(32, 32))
    res = evaluate(backend, ds)
    assert res.path == "direct"
    lab = ds.read(0)["labels"]
    assert res.scores["all"].matrix.sum() == int((lab != 255).sum())  # void pixels never scored
    assert set(res.scores) == {"all"}


def test_class_count_mismatch_is_a_clear_error(tmp_path):
    from rgbt_seg_ros.errors import RgbtSegError

    _, backend = _model(tmp_path)
    ds = build_dataset({"type": "synthetic", "length": 1, "size": [32, 32]})
    ds.class_set = get_class_set("mfnet")
    with pytest.raises(RgbtSegError, match="6 classes but dataset"):
        evaluate(backend, ds)


def test_cli_evaluate(tmp_path, capsys):
    from rgbt_seg_ros.cli import main

    path, _ = _model(tmp_path)
    out = tmp_path / "rep"
    rc = main(["evaluate", "--model", str(path), "--dataset", "synthetic", "--option", "length=2",
               "--option", "size=[48,64]", "--out", str(out), "--no-progress"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "mIoU all" in text and (out / "report.md").is_file() and (out / "confusion_all.png").is_file()
    rc = main(["evaluate", "--model", str(path), "--dataset", "mfnet", "--root", str(tmp_path / "nope")])
    assert rc == 2
    assert "images is missing" in capsys.readouterr().err


def test_builtin_model_file_is_complete():
    """The committed built-in model: a trained, self-describing file for the synthetic classes, RGB-only capable."""
    from rgbt_seg_ros.inference import builtin_model_path, create_backend, read_card

    path = builtin_model_path()
    assert path.is_file() and path.stat().st_size < 20 * 2 ** 20
    card = read_card(path)
    assert card.trained and card.supports_rgb_only and card.dataset == "synthetic"
    assert list(card.class_names) == list(get_class_set("synthetic").class_names)
    assert card.metrics["mIoU"] >= 0.75
    backend = create_backend(path)
    ds = build_dataset({"type": "synthetic", "seed": 4242, "length": 2, "size": list(card.input_size)})
    res = evaluate(backend, ds)
    assert res.scores["all"].pixel_acc > 0.8  # a trained model, not random weights
