"""The promise of docs/TRAINING.md: from a dataset folder to a replayed bag with your own model, using only
the commands at the top of docs/TRAINING.md (run through ``rgbt_seg_ros.cli.main`` with the argv a user types
in the shell).

dataset folder (rgb/, thermal/ 16-bit, labels/, train.txt / val.txt) → ``rgbt-seg train`` → ``rgbt-seg
evaluate`` → ``rgbt-seg export`` → ``rgbt-seg demo`` (a synthetic RGB-T bag) → ``rgbt-seg replay`` with the
.safetensors and with the exported .onnx.
"""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from rosbags.highlevel import AnyReader

from rgbt_seg_ros.cli import main as cli
from rgbt_seg_ros.inference.artifact import read_card
from rgbt_seg_ros.pipeline.config import NormalizationConfig
from rgbt_seg_ros.pipeline.palettes import get_class_set
from rgbt_seg_ros.synthetic import SceneGenerator

ROOT = Path(__file__).resolve().parents[1]
SIZE = (96, 128)  # (h, w) of the dataset images and of the network input
SPLITS = {"train": 8, "val": 4}
OUTPUTS = ("labels", "colour", "confidence", "info")


def _write_folder_dataset(root: Path) -> None:
    """The `folder` layout of docs/TRAINING.md: rgb/, thermal/, labels/ with matching stems + <split>.txt."""
    for sub in ("rgb", "thermal", "labels"):
        (root / sub).mkdir(parents=True)
    gen = SceneGenerator(seed=3)
    index = 0
    for split, count in SPLITS.items():
        names = []
        for _ in range(count):
            night = index % 2 == 1
            f = gen.frame(index, *SIZE, night=night, modality="thermal")
            name = f"{index:04d}{'N' if night else 'D'}"
            assert cv2.imwrite(str(root / "rgb" / f"{name}.png"), cv2.cvtColor(f["rgb"], cv2.COLOR_RGB2BGR))
            assert f["thermal"].dtype == np.uint16  # raw 16-bit counts, as a radiometric camera writes them
            assert cv2.imwrite(str(root / "thermal" / f"{name}.png"), f["thermal"])
            assert cv2.imwrite(str(root / "labels" / f"{name}.png"), f["labels"])
            names.append(name)
            index += 1
        (root / f"{split}.txt").write_text("\n".join(names) + "\n", encoding="utf-8")


def _config(path: Path, data: Path, out_dir: Path) -> Path:
    """config/train/builtin.yaml, copied and pointed at the folder dataset as docs/TRAINING.md says."""
    cfg = yaml.safe_load((ROOT / "config" / "train" / "builtin.yaml").read_text(encoding="utf-8"))
    assert cfg["network"] == {"name": "fusion_baseline", "variant": "mobilenetv3_small_100", "pretrained": False}
    cfg["output_dir"] = str(out_dir)
    del cfg["model_out"]  # the model then goes to <output_dir>/model.safetensors
    for split in SPLITS:
        cfg["data"][split] = {"type": "folder", "root": str(data), "split": split, "class_set": "synthetic"}
    cfg["data"]["input_size"] = list(SIZE)
    cfg["data"]["normalization"] = {"thermal_percentiles": [2.0, 98.0]}  # not the pipeline default (1, 99)
    cfg["schedule"]["warmup_steps"] = 2
    cfg["train"].update(steps=12, ckpt_every=1000, log_every=4)
    cfg["card"] = {"dataset": "mine", "notes": "workflow test"}
    path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    return path


def _ns(header) -> int:
    return int(header.stamp.sec) * 10**9 + int(header.stamp.nanosec)


def _read_bag(path: Path) -> dict[str, list]:
    """topic → [(log_time, message)] for the RGB images and the outputs."""
    topics = ["/rgb/image"] + [f"/rgbt_seg/{name}" for name in OUTPUTS]
    with AnyReader([path]) as reader:
        assert set(topics) <= set(reader.topics), sorted(reader.topics)
        out: dict[str, list] = {t: [] for t in topics}
        for conn, t, raw in reader.messages([c for c in reader.connections if c.topic in topics]):
            out[conn.topic].append((t, reader.deserialize(raw, conn.msgtype)))
    return out


def _labels(msg) -> np.ndarray:
    assert msg.encoding == "mono8"
    return np.frombuffer(bytes(msg.data), np.uint8).reshape(msg.height, msg.step)[:, :msg.width]


def _check_replayed(bag: Path, stdout: str, num_classes: int, model_name: str, model_file: Path) -> list[np.ndarray]:
    msgs = _read_bag(bag)
    rgb = {t: m.header for t, m in msgs["/rgb/image"]}  # receive time → header
    labels = msgs["/rgbt_seg/labels"]
    # "N segmented" is replay's own count of RGB/thermal pairs
    pairs = int(stdout.split(" segmented")[0].rsplit(" ", 1)[-1])
    assert pairs >= 2
    for name in OUTPUTS:
        assert len(msgs[f"/rgbt_seg/{name}"]) == pairs, name
    seen = set()
    for name in OUTPUTS:
        for t, m in msgs[f"/rgbt_seg/{name}"]:
            # written at the RGB message's receive time, with the RGB image's header
            assert t in rgb, (name, t)
            assert _ns(m.header) == _ns(rgb[t]) and m.header.frame_id == rgb[t].frame_id, name
            if name == "labels":
                seen.add(t)
    assert len(seen) == pairs  # one result per pair, no RGB frame segmented twice
    rgb_sizes = {t: (m.height, m.width) for t, m in msgs["/rgb/image"]}
    arrays = []
    for t, m in labels:
        assert (m.height, m.width) == rgb_sizes[t]
        arr = _labels(m)
        assert int(arr.max()) < num_classes
        arrays.append(arr)
    for _, m in msgs["/rgbt_seg/confidence"]:
        assert m.encoding == "32FC1"
    infos = [m for _, m in msgs["/rgbt_seg/info"]]
    assert all(i.model_name == model_name and i.model_file == str(model_file) for i in infos)
    assert all(list(i.class_names) == list(get_class_set("synthetic").class_names) and i.aux_used for i in infos)
    assert [int(i.pairs_processed) for i in infos] == list(range(1, pairs + 1))
    return arrays


@pytest.mark.slow
def test_dataset_folder_to_replayed_bag_with_the_trained_model(tmp_path, capsys):
    classes = get_class_set("synthetic")
    data, runs = tmp_path / "data" / "mine", tmp_path / "runs" / "mine"
    _write_folder_dataset(data)
    config = _config(tmp_path / "my_config.yaml", data, runs)

    # 1. the dataset folder, 2. a config copied from config/train/builtin.yaml; rgbt-seg train my_config.yaml
    assert cli(["train", str(config)]) == 0
    model = runs / "model.safetensors"
    assert model.is_file()
    card = read_card(model)
    assert (card.network, card.variant, card.modality) == ("fusion_baseline", "mobilenetv3_small_100", "thermal")
    assert list(card.class_names) == list(classes.class_names) and card.num_classes == classes.num_classes
    assert tuple(card.input_size) == SIZE and card.dataset == "mine" and card.trained
    # data.normalization resolved, every key: the one set in the config, the pipeline defaults for the rest
    assert isinstance(card.normalization, dict)
    assert card.normalization == {**NormalizationConfig().to_dict(), "thermal_percentiles": [2.0, 98.0]}
    assert card.metrics["split"] == "folder-val" and 0.0 <= card.metrics["mIoU"] <= 1.0
    capsys.readouterr()

    # 3. rgbt-seg evaluate --model ... --dataset folder --root ... --split val --option class_set=... --out ...
    eval_dir = runs / "eval"
    assert cli(["evaluate", "--model", str(model), "--dataset", "folder", "--root", str(data), "--split", "val",
                "--option", "class_set=synthetic", "--out", str(eval_dir)]) == 0
    for name in ("report.md", "metrics.csv", "metrics.json", "confusion_all.png"):
        assert (eval_dir / name).is_file() and (eval_dir / name).stat().st_size > 0, name
    metrics = json.loads((eval_dir / "metrics.json").read_text(encoding="utf-8"))
    miou = metrics["all"]["mIoU"]  # score groups: "all" (a folder dataset has no day/night tags)
    assert 0.0 <= miou <= 1.0 and set(metrics["all"]["per_class"]) == set(classes.class_names)
    # the trainer's own validation (same data, same normalisation from the card) scores the same
    assert abs(miou - card.metrics["mIoU"]) < 0.01, (miou, card.metrics)
    report = (eval_dir / "report.md").read_text(encoding="utf-8")
    assert report.startswith("# fusion_baseline on folder") and f"| **mean** | **{100 * miou:.1f}** |" in report
    capsys.readouterr()

    # 4. rgbt-seg export runs/mine/model.safetensors  → model.onnx beside it, same card
    assert cli(["export", str(model)]) == 0
    onnx_model = runs / "model.onnx"
    assert onnx_model.is_file()
    onnx_card = read_card(onnx_model)
    assert onnx_card.to_json() == card.to_json()
    capsys.readouterr()

    # a bag to replay: `rgbt-seg demo` writes a synthetic RGB-T rig bag (and segments it with --model)
    demo = tmp_path / "demo"
    assert cli(["demo", "--out", str(demo), "--frames", "12", "--model", str(model)]) == 0
    in_bag, rig = demo / "demo_input", demo / "pipeline.yaml"
    assert in_bag.is_dir() and rig.is_file()
    capsys.readouterr()

    # rgbt-seg replay BAG --out OUT --model MODEL --rgb-topic ... --thermal-topic ... --config RIG.yaml
    topics = ["--rgb-topic", "/rgb/image", "--thermal-topic", "/thermal/image", "--config", str(rig)]
    out_st = tmp_path / "my_drive_seg"
    assert cli(["replay", str(in_bag), "--out", str(out_st), "--model", str(model), *topics]) == 0
    labels_st = _check_replayed(out_st, capsys.readouterr().out, classes.num_classes,
                                "fusion_baseline/mobilenetv3_small_100", model)
    # the demo segmented the same bag with the same model and registration: same labels
    with AnyReader([demo / "demo_output"]) as reader:
        demo_labels = [_labels(reader.deserialize(r, c.msgtype)) for c, _, r in reader.messages()
                       if c.topic == "/rgbt_seg/labels"]
    assert len(demo_labels) == len(labels_st)
    assert all(np.array_equal(a, b) for a, b in zip(demo_labels, labels_st))

    out_onnx = tmp_path / "my_drive_seg_onnx"
    assert cli(["replay", str(in_bag), "--out", str(out_onnx), "--model", str(onnx_model), "--backend",
                "onnxruntime", *topics]) == 0
    labels_onnx = _check_replayed(out_onnx, capsys.readouterr().out, classes.num_classes,
                                  "fusion_baseline/mobilenetv3_small_100", onnx_model)
    assert len(labels_onnx) == len(labels_st)
    # onnxruntime and torch run the same network: labels agree except at near-ties
    agree = np.mean([np.mean(a == b) for a, b in zip(labels_onnx, labels_st)])
    assert agree > 0.99, agree

