"""Dataset layouts on tiny fixture trees written by the tests, broken layouts, and joint augmentation."""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from rgbt_seg_ros.errors import RgbtSegError
from rgbt_seg_ros.training.datasets import IGNORE, TrainTransform, aux_to_unit, build_dataset

MFNET_REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "mfnet-rgbt"
if not MFNET_REAL.is_dir():
    MFNET_REAL = Path("/work/shared/data/mfnet-rgbt")


def _rgb(rng, h=12, w=16):
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _write_rgb(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


def _write(path: Path, img: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), img)


# ------------------------------------------------------------------------------------------------ MFNet

def _mfnet_tree(root: Path, rng, names=("00001D", "00002N")):
    truth = {}
    for n in names:
        rgb, t = _rgb(rng), rng.integers(0, 256, (12, 16), dtype=np.uint8)
        lab = rng.integers(0, 9, (12, 16), dtype=np.uint8)
        # MFNet stores R,G,B,T in the PNG; cv2 writes its arrays as B,G,R,A.
        _write(root / "images" / f"{n}.png", np.dstack([rgb[..., 2], rgb[..., 1], rgb[..., 0], t]))
        _write(root / "labels" / f"{n}.png", lab)
        truth[n] = (rgb, t, lab)
    for split in ("train", "val", "test", "test_day", "test_night"):
        (root / f"{split}.txt").write_text("\n".join(names) + "\n")
    return truth


def test_mfnet_layout_reads_rgb_thermal_labels_and_day_night(tmp_path):
    truth = _mfnet_tree(tmp_path, np.random.default_rng(0))
    ds = build_dataset({"type": "mfnet", "root": str(tmp_path), "split": "test"})
    assert len(ds) == 2 and ds.class_set.num_classes == 9
    for i, (name, (rgb, t, lab)) in enumerate(truth.items()):
        s = ds.read(i)
        np.testing.assert_array_equal(s["rgb"], rgb)
        np.testing.assert_array_equal(s["aux"], t)
        np.testing.assert_array_equal(s["labels"], lab)
        assert s["aux_encoding"] == "mono8"
        assert s["tags"]["night"] is name.endswith("N")


@pytest.mark.parametrize("remove,expect", [("labels", "labels"), ("test.txt", "test.txt"), ("images", "images")])
def test_mfnet_broken_layout_names_the_missing_thing(tmp_path, remove, expect):
    _mfnet_tree(tmp_path, np.random.default_rng(1))
    target = tmp_path / remove
    if target.is_dir():
        for f in target.iterdir():
            f.unlink()
        target.rmdir()
    else:
        target.unlink()
    with pytest.raises(RgbtSegError, match=expect) as err:
        build_dataset({"type": "mfnet", "root": str(tmp_path), "split": "test"})
    assert "\n" not in str(err.value)


def test_mfnet_split_listing_a_missing_image(tmp_path):
    _mfnet_tree(tmp_path, np.random.default_rng(2))
    (tmp_path / "val.txt").write_text("00001D\n00009N\n")
    with pytest.raises(RgbtSegError, match="00009N"):
        build_dataset({"type": "mfnet", "root": str(tmp_path), "split": "val"})


@pytest.mark.skipif(not MFNET_REAL.is_dir(), reason="shared/data/mfnet-rgbt is absent")
def test_real_mfnet_images(tmp_path):
    """The real 4-channel MFNet PNGs, linked (not copied) into a fixture tree with made-up labels."""
    names = sorted(p.stem for p in MFNET_REAL.glob("0*.png"))
    assert names
    (tmp_path / "images").mkdir()
    for n in names:
        os.symlink(MFNET_REAL / f"{n}.png", tmp_path / "images" / f"{n}.png")
        _write(tmp_path / "labels" / f"{n}.png", np.zeros((480, 640), np.uint8))
    (tmp_path / "test.txt").write_text("\n".join(names))
    ds = build_dataset({"type": "mfnet", "root": str(tmp_path), "split": "test"})
    for i, n in enumerate(names):
        s = ds.read(i)
        raw = cv2.imread(str(MFNET_REAL / f"{n}.png"), cv2.IMREAD_UNCHANGED)
        assert s["rgb"].shape == (480, 640, 3) and s["aux"].shape == (480, 640)
        np.testing.assert_array_equal(s["rgb"][..., 0], raw[..., 2])  # stored R arrives as cv2's channel 2
        np.testing.assert_array_equal(s["aux"], raw[..., 3])
        assert s["tags"]["night"] is n.endswith("N")
        # thermal is its own image, not a copy of a colour channel
        assert not np.array_equal(s["aux"], s["rgb"][..., 0])


# ------------------------------------------------------------------------------------------------ PST900 / FMB

def test_pst900_layout_and_raw_thermal(tmp_path):
    rng = np.random.default_rng(3)
    rgb, lab = _rgb(rng), rng.integers(0, 5, (12, 16), dtype=np.uint8)
    raw = rng.integers(20000, 30000, (12, 16), dtype=np.uint16)
    for split in ("train", "test"):
        _write_rgb(tmp_path / split / "rgb" / "32.png", rgb)
        _write(tmp_path / split / "thermal" / "32.png", (raw // 256).astype(np.uint8))
        _write(tmp_path / split / "thermal_raw" / "32.png", raw)
        _write(tmp_path / split / "labels" / "32.png", lab)
    s = build_dataset({"type": "pst900", "root": str(tmp_path), "split": "test", "aux_folder": "thermal_raw"}).read(0)
    np.testing.assert_array_equal(s["rgb"], rgb)
    np.testing.assert_array_equal(s["aux"], raw)
    assert s["aux_encoding"] == "mono16"
    np.testing.assert_array_equal(s["labels"], lab)
    assert build_dataset({"type": "pst900", "root": str(tmp_path)}).read(0)["aux_encoding"] == "mono8"
    for f in (tmp_path / "train" / "labels").iterdir():
        f.unlink()
    (tmp_path / "train" / "labels").rmdir()
    with pytest.raises(RgbtSegError, match=r"train/labels is missing"):
        build_dataset({"type": "pst900", "root": str(tmp_path), "split": "train"})


def test_fmb_layout_and_missing_infrared_file(tmp_path):
    rng = np.random.default_rng(4)
    rgb, ir, lab = _rgb(rng), rng.integers(0, 256, (12, 16), dtype=np.uint8), rng.integers(0, 15, (12, 16), np.uint8)
    _write_rgb(tmp_path / "test" / "Visible" / "00010.png", rgb)
    _write(tmp_path / "test" / "Infrared" / "00010.png", np.dstack([ir, ir, ir]))  # saved as 3 equal channels
    _write(tmp_path / "test" / "Label" / "00010.png", lab)
    s = build_dataset({"type": "fmb", "root": str(tmp_path), "split": "test"}).read(0)
    np.testing.assert_array_equal(s["aux"], ir)
    np.testing.assert_array_equal(s["labels"], lab)
    assert s["aux"].ndim == 2
    _write_rgb(tmp_path / "test" / "Visible" / "00011.png", rgb)
    _write(tmp_path / "test" / "Label" / "00011.png", lab)
    with pytest.raises(RgbtSegError, match=r"Infrared has no image named '00011'"):
        build_dataset({"type": "fmb", "root": str(tmp_path), "split": "test"})


# ------------------------------------------------------------------------------------------------ RGB-X / folder

def test_rgbx_layout_hha_and_label_shift(tmp_path):
    rng = np.random.default_rng(5)
    rgb, hha = _rgb(rng), _rgb(rng)
    raw_lab = rng.integers(0, 41, (12, 16), dtype=np.uint8)
    raw_lab[0, :4] = 0
    _write_rgb(tmp_path / "RGB" / "1.png", rgb)  # PNG: lossless, so the test can compare exactly
    _write_rgb(tmp_path / "HHA" / "1.png", hha)
    _write(tmp_path / "Label" / "1.png", raw_lab)
    (tmp_path / "train.txt").write_text("RGB/1.jpg Label/1.png\n")  # CMX lists paths, we match stems
    ds = build_dataset({"type": "rgbx", "root": str(tmp_path), "split": "train", "class_set": "nyuv2"})
    s = ds.read(0)
    assert ds.aux_channels == 3 and s["aux_encoding"] == "hha8"
    np.testing.assert_array_equal(s["aux"], hha)
    expected = raw_lab.astype(int) - 1
    expected[raw_lab == 0] = IGNORE
    np.testing.assert_array_equal(s["labels"], expected)
    with pytest.raises(RgbtSegError, match="test.txt is missing"):
        build_dataset({"type": "rgbx", "root": str(tmp_path), "split": "test"})
    with pytest.raises(RgbtSegError, match="Depth is missing"):
        build_dataset({"type": "rgbx", "root": str(tmp_path), "x_folder": "Depth"})


def test_folder_layout_depth_16bit(tmp_path):
    rng = np.random.default_rng(6)
    rgb, depth_mm = _rgb(rng), rng.integers(0, 8000, (12, 16), dtype=np.uint16)
    lab = rng.integers(0, 6, (12, 16), dtype=np.uint8)
    _write_rgb(tmp_path / "rgb" / "f0.png", rgb)
    _write(tmp_path / "depth" / "f0.png", depth_mm)
    _write(tmp_path / "labels" / "f0.png", lab)
    ds = build_dataset({"type": "folder", "root": str(tmp_path), "modality": "depth"})
    s = ds.read(0)
    assert s["aux_encoding"] == "16UC1"
    np.testing.assert_array_equal(s["aux"], depth_mm)
    unit = aux_to_unit(s["aux"], s["aux_encoding"], "depth")
    assert unit.shape == (12, 16, 1) and 0.0 <= unit.min() and unit.max() <= 1.0
    assert np.all(unit[..., 0][depth_mm == 0] == 0.0)  # invalid depth never reaches the network as garbage
    with pytest.raises(RgbtSegError, match="thermal is missing"):
        build_dataset({"type": "folder", "root": str(tmp_path), "modality": "thermal"})


def test_bad_dataset_config_keys():
    with pytest.raises(RgbtSegError, match="'type'"):
        build_dataset({"root": "/x"})
    with pytest.raises(RgbtSegError, match="dataset.type"):
        build_dataset({"type": "kitti"})
    with pytest.raises(RgbtSegError, match="'colour'"):
        build_dataset({"type": "synthetic", "colour": 1})
    with pytest.raises(RgbtSegError, match="needs 'root'"):
        build_dataset({"type": "mfnet"})


@pytest.mark.parametrize("option, value, message", [
    ("length", "abc", "length must be a whole number ≥ 1, got 'abc'"),
    ("length", 0, "length must be a whole number ≥ 1, got 0"),  # an empty dataset scored NaN
    ("length", -3, "length must be a whole number ≥ 1"),
    ("seed", 1.5, "seed must be a whole number ≥ 0, got 1.5"),  # was truncated to 1 without a word
    ("seed", True, "seed must be a whole number"),
    ("offset", -1, "offset must be a whole number ≥ 0"),
    ("size", 5, r"size must be \[height, width\], got 5"),
    ("size", [0, 5], "size must be a whole number ≥ 8, got 0"),
    ("cache", "maybe", "cache must be true or false"),
])
def test_synthetic_dataset_options_are_checked_and_named(option, value, message):
    # --option KEY=VALUE and a training YAML give these values as YAML read them
    with pytest.raises(RgbtSegError, match=f"synthetic dataset: {message}"):
        build_dataset({"type": "synthetic", option: value})


# ------------------------------------------------------------------------------------------------ synthetic + transform

def test_synthetic_dataset_is_deterministic_and_alternates_day_night():
    ds = build_dataset({"type": "synthetic", "seed": 3, "length": 4, "size": [48, 64]})
    a, b = ds.read(1), build_dataset({"type": "synthetic", "seed": 3, "length": 4, "size": [48, 64]}).read(1)
    np.testing.assert_array_equal(a["rgb"], b["rgb"])
    assert a["aux"].dtype == np.uint16 and a["aux_encoding"] == "mono16"
    assert [ds.read(i)["tags"]["night"] for i in range(4)] == [False, True, False, True]


def _coded_sample(h=40, w=60):
    """rgb, aux and labels all encode the same pixel coordinates, so misalignment is detectable."""
    yy, xx = np.mgrid[0:h, 0:w]
    code = ((yy * 7 + xx * 3) % 200).astype(np.uint8)
    rgb = np.dstack([code, code, code])
    return {"rgb": rgb, "aux": code.copy(), "aux_encoding": "mono8", "labels": (code % 5).astype(np.uint8)}


def test_geometric_augmentation_keeps_modalities_and_labels_aligned():
    sample = _coded_sample()
    tf = TrainTransform((32, 48), "thermal", (0, 0, 0), (1, 1, 1), (0,), (1,), scale=(1.0, 1.0), flip=True,
                        photometric=0.0, seed=1)
    flipped_seen = False
    for i in range(8):
        rgb, aux, lab = tf(sample, i)
        assert rgb.shape == (3, 32, 48) and aux.shape == (1, 32, 48) and lab.shape == (32, 48)
        code_rgb = torch.round(rgb[0] * 255).long()
        code_aux = torch.round(aux[0] * 255).long()
        assert torch.equal(code_rgb, code_aux)
        valid = lab != IGNORE
        assert torch.equal(code_rgb[valid] % 5, lab[valid])
        flipped_seen |= bool(code_rgb[0, 1] < code_rgb[0, 0])
    assert flipped_seen
    # identical call -> identical augmentation (seeded by seed, epoch, index)
    assert torch.equal(tf(sample, 3)[0], tf(sample, 3)[0])


def test_photometric_changes_rgb_only_and_modality_dropout_zeroes_aux():
    sample = _coded_sample()
    base = TrainTransform((40, 60), "thermal", (0.5,) * 3, (0.25,) * 3, (0.5,), (0.25,), scale=(1.0, 1.0),
                          flip=False, photometric=0.0)
    jitter = TrainTransform((40, 60), "thermal", (0.5,) * 3, (0.25,) * 3, (0.5,), (0.25,), scale=(1.0, 1.0),
                            flip=False, photometric=1.0)
    r0, a0, l0 = base(sample, 0)
    r1, a1, l1 = jitter(sample, 0)
    assert not torch.allclose(r0, r1)
    assert torch.equal(a0, a1) and torch.equal(l0, l1)
    drop = TrainTransform((40, 60), "thermal", (0.5,) * 3, (0.25,) * 3, (0.5,), (0.25,), scale=(1.0, 1.0),
                          flip=False, aux_dropout=1.0)
    r2, a2, _ = drop(sample, 0)
    assert torch.count_nonzero(a2) == 0 and torch.equal(r2, r0)


class _AuxSpy(torch.nn.Module):
    """A 1×1 convolution that keeps the aux tensor it was fed."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(4, 2, 1)

    def forward(self, rgb_in, aux_in):
        self.seen = aux_in.clone()
        return self.conv(torch.cat([rgb_in, aux_in], 1))


def _spy_pipeline(tf: TrainTransform, modality: str, registration: dict, **config):
    """(SegmentationPipeline, spy) for a network trained with ``tf``: same input size and normalisation;
    ``config``: further pipeline settings."""
    from rgbt_seg_ros.inference.artifact import ModelCard
    from rgbt_seg_ros.inference.torch_backend import TorchBackend
    from rgbt_seg_ros.pipeline import SegmentationPipeline

    card = ModelCard(network="spy", num_classes=2, class_names=["a", "b"], palette=[[0, 0, 0], [1, 1, 1]],
                     input_size=tf.size, modality=modality, aux_mean=(0.5,), aux_std=(0.25,),
                     normalization=tf.norm.to_dict())
    spy = _AuxSpy()
    return SegmentationPipeline(TorchBackend(spy, card), {"registration": registration, **config}), spy


@pytest.mark.parametrize("modality, encoding", [("thermal", "mono16"), ("depth", "16UC1")])
def test_crop_padding_is_the_aux_value_the_pipeline_gives_outside_the_view(modality, encoding):
    rng = np.random.default_rng(5)
    aux = (rng.integers(21000, 23000, (40, 80)) if modality == "thermal" else rng.integers(500, 4000, (40, 80)))
    sample = {"rgb": rng.integers(0, 255, (40, 80, 3), dtype=np.uint8), "aux": aux.astype(np.uint16),
              "aux_encoding": encoding, "labels": np.zeros((40, 80), np.uint8)}
    tf = TrainTransform((48, 96), modality, (0.5,) * 3, (0.25,) * 3, (0.5,), (0.25,), scale=(1.0, 1.0), flip=False)
    _, aux_t, labels = tf(sample, 0)  # 40×80 padded to 48×96: the pad is ignored in the loss, but still seen
    pad = aux_t[0][labels == IGNORE]
    # the pipeline: a letterbox band of a 40×80 image in a 48×80 network input
    pipe, spy = _spy_pipeline(tf, modality, {"mode": "identity"}, resize_mode="letterbox", input_size=[48, 80])
    pipe.process(sample["rgb"], sample["aux"], encoding, outputs={"labels"})
    band = spy.seen[0, 0, :4]
    assert pad.numel() > 0 and band.numel() > 0
    expected = 0.0 if modality == "thermal" else (0 - 0.5) / 0.25  # standardised mean, or invalid depth 0
    assert torch.allclose(pad, torch.full_like(pad, expected), atol=1e-6)
    # the pipeline warps raw uint16 counts: its fill is rounded to a whole count (range ≈ 2000 counts)
    assert torch.allclose(band, torch.full_like(band, expected), atol=0.005)


def test_depth_reaches_the_network_as_the_pipeline_feeds_it():
    # training's resize of depth must not blend invalid zeros into valid depths: nearest, as the pipeline
    rng = np.random.default_rng(4)
    depth = rng.integers(400, 9000, (480, 848)).astype(np.uint16)
    depth[rng.random(depth.shape) < 0.05] = 0  # RealSense holes
    rgb = rng.integers(0, 255, (480, 848, 3), dtype=np.uint8)
    tf = TrainTransform((240, 424), "depth", (0.5,) * 3, (0.25,) * 3, (0.5,), (0.25,), train=False)
    _, aux_t, _ = tf({"rgb": rgb, "aux": depth, "aux_encoding": "16UC1",
                      "labels": np.zeros((480, 848), np.uint8)}, 0)

    # the pipeline's depth registration, with one camera for both: depth lands on its own pixels, then is
    # resized to the network nearest
    from rgbt_seg_ros.pipeline import CameraModel, Extrinsics

    cam = CameraModel(K=[[600.0, 0, 423.5], [0, 600.0, 239.5], [0, 0, 1]], D=np.zeros(5), width=848, height=480)
    pipe, spy = _spy_pipeline(tf, "depth", {"mode": "depth", "hole_fill": 0})
    pipe.process(rgb, depth, "16UC1", rgb_camera=cam, aux_camera=cam, extrinsics=Extrinsics.identity(),
                 outputs={"labels"})
    assert torch.allclose(spy.seen[0], aux_t, atol=1e-5)
    # and no invalid zero is blended into a valid depth: every value is one of the image's own
    raw = torch.from_numpy(aux_to_unit(depth, "16UC1", "depth", tf.norm)[..., 0].reshape(-1))
    assert torch.isin(((aux_t[0] * 0.25) + 0.5).reshape(-1).round(decimals=5), raw.round(decimals=5)).all()


@pytest.mark.parametrize("encoding", ["mono16", "32FC1"])
def test_clipped_thermal_reaches_the_network_as_the_pipeline_feeds_it(encoding):
    # the pipeline warps raw values and clips after; training clipped before resizing, so pixels beside the
    # range's ends reached the network with other values than at run time (up to ~1 standardised unit)
    rng = np.random.default_rng(5)
    if encoding == "mono16":
        thermal = rng.integers(1000, 9000, (256, 320)).astype(np.uint16)
        normalization = {"thermal_agc": "fixed", "thermal_range": [3000, 7000]}  # half the pixels clip
    else:
        thermal = rng.uniform(-10.0, 60.0, (256, 320)).astype(np.float32)
        thermal[rng.random(thermal.shape) < 0.02] = np.nan  # dead pixels
        normalization = {"temperature_range": [5.0, 40.0]}
    rgb = rng.integers(0, 255, (256, 320, 3), dtype=np.uint8)
    tf = TrainTransform((128, 160), "thermal", (0.5,) * 3, (0.25,) * 3, (0.5,), (0.25,), train=False,
                        normalization=normalization)
    _, aux_t, _ = tf({"rgb": rgb, "aux": thermal, "aux_encoding": encoding,
                      "labels": np.zeros((256, 320), np.uint8)}, 0)

    pipe, spy = _spy_pipeline(tf, "thermal", {"mode": "identity"})
    pipe.process(rgb, thermal, encoding, outputs={"labels"})
    seen = spy.seen[0]
    finite = torch.isfinite(seen) & torch.isfinite(aux_t)
    assert finite.all()
    # the pipeline's warp rounds raw counts to integers (mono16): half a count of 4000 is 5e-4 standardised
    assert (seen - aux_t).abs().max().item() < 2e-3
