"""rgbt-seg infer on real registered RGB-T pairs: MSRS folders and MFNet 4-channel PNGs."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from rgbt_seg_ros.cli import main as cli

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
MSRS = DATA / "msrs-rgbt"
MFNET = DATA / "mfnet-rgbt"


def _need(path: Path) -> None:
    if not path.exists():
        pytest.skip(f"shared data absent: {path}")


@pytest.fixture(scope="module")
def mfnet_model(tmp_path_factory) -> tuple[Path, np.ndarray]:
    """A real (untrained) model file with the MFNet class set and a 120×160 input; returns (path, palette)."""
    from rgbt_seg_ros.inference.artifact import save_model
    from rgbt_seg_ros.tools.demo import untrained_backend

    backend = untrained_backend("mfnet", input_size=(120, 160))
    path = tmp_path_factory.mktemp("model") / "mfnet_small.safetensors"
    save_model(path, backend.network.state_dict(), backend.card)
    return path, np.asarray(backend.card.palette, np.uint8)


def _check_outputs(out: Path, name: str, palette: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    labels = cv2.imread(str(out / "labels" / f"{name}.png"), cv2.IMREAD_UNCHANGED)
    colour = cv2.imread(str(out / "colour" / f"{name}.png"), cv2.IMREAD_UNCHANGED)[:, :, ::-1]
    conf = cv2.imread(str(out / "confidence" / f"{name}.png"), cv2.IMREAD_UNCHANGED)
    assert labels.shape == shape and labels.dtype == np.uint8 and labels.max() < len(palette)
    np.testing.assert_array_equal(colour, palette[labels])  # colour image is the palette of the labels
    assert conf.dtype == np.uint16 and conf.shape == shape
    assert conf.min() >= int(65535 / len(palette)) - 1  # max softmax over K classes is ≥ 1/K
    return labels


def test_msrs_folders(tmp_path, mfnet_model, capsys):
    _need(MSRS)
    model, palette = mfnet_model
    out = tmp_path / "out"
    rc = cli(["infer", "--rgb", str(MSRS / "vi"), "--thermal", str(MSRS / "ir"), "--out", str(out),
              "--model", str(model), "--overlay"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "wrote 20 pair(s)" in captured.out and "UNTRAINED" in captured.err
    names = sorted(p.stem for p in (MSRS / "vi").glob("*.png"))
    assert sorted(p.stem for p in (out / "labels").iterdir()) == names
    for name in names[:3]:
        _check_outputs(out, name, palette, (480, 640))
        overlay = cv2.imread(str(out / "overlay" / f"{name}.png"))
        assert overlay.shape == (480, 640, 3)
    assert not any(p.name.startswith(".") for p in out.rglob("*"))


def test_mfnet_four_channel_matches_split_files(tmp_path, mfnet_model, capsys):
    _need(MFNET)
    model, palette = mfnet_model
    out4 = tmp_path / "four"
    rc = cli(["infer", "--rgbt", str(MFNET), "--out", str(out4), "--model", str(model)])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "sample.png skipped" in captured.err and "wrote 2 pair(s)" in captured.out
    # The same pairs written as separate RGB and thermal files must give identical results: this pins
    # the channel order (file R,G,B,T) and that the 4th channel reaches the network as thermal.
    rgb_dir, ir_dir = tmp_path / "vi", tmp_path / "ir"
    rgb_dir.mkdir()
    ir_dir.mkdir()
    for name in ("01234N", "01477D"):
        image = cv2.imread(str(MFNET / f"{name}.png"), cv2.IMREAD_UNCHANGED)
        cv2.imwrite(str(rgb_dir / f"{name}.png"), image[:, :, :3])
        cv2.imwrite(str(ir_dir / f"{name}.png"), image[:, :, 3])
    out2 = tmp_path / "split"
    assert cli(["infer", "--rgb", str(rgb_dir), "--thermal", str(ir_dir), "--out", str(out2), "--model", str(model),
                "--confidence-format", "npy"]) == 0
    for name in ("01234N", "01477D"):
        labels4 = _check_outputs(out4, name, palette, (480, 640))
        labels2 = cv2.imread(str(out2 / "labels" / f"{name}.png"), cv2.IMREAD_UNCHANGED)
        np.testing.assert_array_equal(labels4, labels2)
        conf16 = cv2.imread(str(out4 / "confidence" / f"{name}.png"), cv2.IMREAD_UNCHANGED) / 65535.0
        conf = np.load(out2 / "confidence" / f"{name}.npy")
        assert conf.dtype == np.float32 and np.abs(conf - conf16).max() <= 1.0 / 65535 + 1e-6
    # swapping R and B changes the input, so the check above is not vacuous
    swapped = tmp_path / "swapped"
    swapped.mkdir()
    image = cv2.imread(str(MFNET / "01234N.png"), cv2.IMREAD_UNCHANGED)
    cv2.imwrite(str(swapped / "01234N.png"), image[:, :, [2, 1, 0]])
    out_s = tmp_path / "out_swapped"
    assert cli(["infer", "--rgb", str(swapped), "--thermal", str(ir_dir), "--out", str(out_s),
                "--model", str(model), "--confidence-format", "npy"]) == 0
    assert not np.array_equal(np.load(out_s / "confidence" / "01234N.npy"), np.load(out2 / "confidence" / "01234N.npy"))


def test_bad_inputs_one_line(tmp_path, mfnet_model, capsys):
    _need(MSRS)
    model, _ = mfnet_model
    empty = tmp_path / "empty"
    empty.mkdir()
    rc = cli(["infer", "--rgb", str(MSRS / "vi"), "--thermal", str(empty), "--out", str(tmp_path / "o"),
              "--model", str(model)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "--thermal" in err
    assert err.endswith("no image files (.png, .jpg, .jpeg, .bmp, .tif, .tiff, .npy)")
    rc = cli(["infer", "--rgb", str(MSRS / "vi"), "--depth", str(MSRS / "ir"), "--out", str(tmp_path / "o"),
              "--model", str(model)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "--depth-topic" not in err and "the model expects thermal images" in err
    assert len(err.splitlines()) == 1
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    for out in (a_file, a_file / "under"):  # --out a file, or under one: before the model loads
        rc = cli(["infer", "--rgb", str(MSRS / "vi"), "--thermal", str(MSRS / "ir"), "--out", str(out),
                  "--model", str(model)])
        assert rc == 2 and f"--out {out}: {a_file} is a file, not a folder" in capsys.readouterr().err
    two = tmp_path / "two_channels"
    for kind, array in (("vi", np.zeros((8, 8, 2), np.uint8)), ("ir", np.zeros((8, 8), np.uint8))):
        (two / kind).mkdir(parents=True)
        np.save(two / kind / "a.npy", array)
    rc = cli(["infer", "--rgb", str(two / "vi"), "--thermal", str(two / "ir"), "--out", str(tmp_path / "o2"),
              "--model", str(model)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and "RGB must have 1, 3 or 4 channels" in err[-1]
    assert not (tmp_path / "o2").exists()  # nothing written, no empty output folders either


def test_existing_outputs_refused(tmp_path, mfnet_model, capsys):
    _need(MFNET)
    model, _ = mfnet_model
    out = tmp_path / "out"
    (out / "labels").mkdir(parents=True)
    (out / "labels" / "01234N.png").write_bytes(b"mine")
    rc = cli(["infer", "--rgbt", str(MFNET), "--out", str(out), "--model", str(model)])
    assert rc == 2 and "exists; pass --force" in capsys.readouterr().err
    assert (out / "labels" / "01234N.png").read_bytes() == b"mine"
    assert cli(["infer", "--rgbt", str(MFNET), "--out", str(out), "--model", str(model), "--force"]) == 0
    assert cv2.imread(str(out / "labels" / "01234N.png"), cv2.IMREAD_UNCHANGED).shape == (480, 640)
