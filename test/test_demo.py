"""The demo bag behaves like a real RGB + thermal rig, and `rgbt-seg demo` runs end to end."""
from __future__ import annotations

import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
from rosbags.highlevel import AnyReader

from rgbt_seg_ros.cli import main as cli
from rgbt_seg_ros.io.image import image_to_numpy
from rgbt_seg_ros.synthetic.demo_bag import TOPICS, DemoBagSpec, write_demo_bag

SMALL = dict(rgb_size=(180, 320), thermal_size=(128, 160))


def _ns(header) -> int:
    return int(header.stamp.sec) * 10**9 + int(header.stamp.nanosec)


@pytest.fixture(scope="module")
def bag(tmp_path_factory):
    spec = DemoBagSpec(frames=90, **SMALL)  # 3 s: enough thermal frames for rate, jitter and drop statistics
    path = tmp_path_factory.mktemp("demo") / "bag"
    result = write_demo_bag(path, spec)
    msgs: dict[str, list] = {t: [] for t in TOPICS.values()}
    with AnyReader([path]) as reader:
        for conn, log_time, raw in reader.messages():
            msgs[conn.topic].append((log_time, reader.deserialize(raw, conn.msgtype)))
    return result, msgs


def test_rgb_stream_is_30hz_rgb8(bag):
    result, msgs = bag
    rgb = msgs[TOPICS["rgb"]]
    assert len(rgb) == 90
    stamps = np.array([_ns(m.header) for _, m in rgb])
    np.testing.assert_allclose(np.diff(stamps), 1e9 / 30, atol=1)
    _, first = rgb[0]
    assert (first.encoding, first.width, first.height) == ("rgb8", 320, 180)
    assert first.header.frame_id == "rgb_optical_frame"
    assert image_to_numpy(first).std() > 1.0  # a rendered picture, not a blank buffer


def test_thermal_stream_has_own_rate_clock_jitter_and_drops(bag):
    result, msgs = bag
    spec = result.spec
    thermal = msgs[TOPICS["thermal"]]
    stamps = np.array([_ns(m.header) for _, m in thermal]) / 1e9
    gaps = np.diff(stamps)
    period = 1.0 / spec.thermal_rate
    assert len(thermal) + result.thermal_dropped in (26, 27, 28)  # 3 s at 9 Hz
    assert 1 <= result.thermal_dropped <= 8
    assert np.median(gaps) == pytest.approx(period, abs=0.004)
    assert gaps.max() > 1.8 * period  # at least one dropped frame shows as a double gap
    normal = gaps[gaps < 1.5 * period]
    assert 0.0005 < normal.std() < 0.006  # jitter, milliseconds
    # the header clock runs ahead of the receive time by the configured offset (minus transport latency)
    offsets = np.array([_ns(m.header) - log for log, m in thermal]) / 1e9
    np.testing.assert_allclose(offsets, spec.thermal_clock_offset - 2 * spec.latency, atol=2e-9)
    _, first = thermal[0]
    assert (first.encoding, first.width, first.height) == ("mono16", 160, 128)
    counts = image_to_numpy(first)
    assert 23000 < np.median(counts) < 33000  # centi-kelvin: -43 °C .. 57 °C


def test_camera_infos_accompany_every_image(bag):
    result, msgs = bag
    for image_topic, info_topic, K in ((TOPICS["rgb"], TOPICS["rgb_info"], result.rgb_K),
                                       (TOPICS["thermal"], TOPICS["thermal_info"], result.thermal_K)):
        images, infos = msgs[image_topic], msgs[info_topic]
        assert len(images) == len(infos)
        for (log_i, img), (log_c, info) in zip(images, infos):
            assert log_i == log_c and _ns(img.header) == _ns(info.header)
            assert (info.width, info.height) == (img.width, img.height)
            np.testing.assert_allclose(np.asarray(info.k).reshape(3, 3), K)


def test_extrinsic_offset_makes_registration_matter():
    """Labels seen by the thermal camera, warped with the plane-induced homography of the spec's extrinsics,
    agree with the RGB labels far better than a plain resize does (computed here from textbook formulas)."""
    from rgbt_seg_ros.synthetic.scenes import SceneGenerator, default_intrinsics

    spec = DemoBagSpec()
    scene = SceneGenerator(seed=spec.seed).scene(spec.scene_index, night=spec.night)
    rh, rw = 360, 640
    th, tw = 256, 320
    K_rgb = default_intrinsics(rw, rh, spec.rgb_hfov_deg)
    K_th = default_intrinsics(tw, th, spec.thermal_hfov_deg)
    R, t = spec.extrinsic_R, spec.extrinsic_t
    rgb_labels = scene.render(K_rgb, (rh, rw), modalities=())["labels"]
    th_labels = scene.render(K_th, (th, tw), R, t, modalities=())["labels"]
    n = np.array([0.0, 0.0, 1.0])
    H = K_rgb @ (R + np.outer(t, n) / spec.plane_distance) @ np.linalg.inv(K_th)  # p_rgb = R p_th + t, n·X = d
    warped = cv2.warpPerspective(th_labels, H, (rw, rh), flags=cv2.INTER_NEAREST, borderValue=255)
    # without the extrinsics (intrinsics only) and without any registration (plain resize)
    H0 = K_rgb @ np.linalg.inv(K_th)
    no_extr = cv2.warpPerspective(th_labels, H0, (rw, rh), flags=cv2.INTER_NEAREST, borderValue=255)
    resized = cv2.resize(th_labels, (rw, rh), interpolation=cv2.INTER_NEAREST)
    valid = (warped != 255) & (no_extr != 255)
    err_reg = (warped[valid] != rgb_labels[valid]).mean()
    err_no_extr = (no_extr[valid] != rgb_labels[valid]).mean()
    err_naive = (resized[valid] != rgb_labels[valid]).mean()
    assert valid.mean() > 0.3
    assert err_reg < 0.05
    assert err_no_extr > 2 * err_reg and err_naive > 4 * err_reg

@pytest.mark.slow
def test_demo_with_no_arguments(tmp_path, capsys, monkeypatch):
    """The README's front page command, as a user runs it: no arguments, default output folder."""
    from rgbt_seg_ros.inference import builtin_model_path
    from rgbt_seg_ros.pipeline.config import PipelineConfig

    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "rgbt_seg_ros.cli", "demo"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    missing = "UNTRAINED weights: the built-in model is missing" in proc.stderr
    assert missing == (not builtin_model_path().is_file())
    assert "segmented" in proc.stdout and "preview.png" in proc.stdout
    out = tmp_path / "rgbt_seg_demo"
    preview = cv2.imread(str(out / "preview.png"))
    assert preview.shape == (360, 4 * 640, 3)
    assert all(tile.std() > 1.0 for tile in np.split(preview, 4, axis=1))  # every panel has content
    assert PipelineConfig.from_yaml(out / "pipeline.yaml").registration.mode == "plane"
    with AnyReader([out / "demo_output"]) as reader:
        counts = {name: info.msgcount for name, info in reader.topics.items()}
        labels = [reader.deserialize(r, c.msgtype) for c, _, r in reader.messages() if c.topic == "/rgbt_seg/labels"]
        rgb = {_ns(reader.deserialize(r, c.msgtype).header) for c, _, r in reader.messages() if c.topic == "/rgb/image"}
    assert counts["/rgb/image"] == 30 and len(labels) >= 5
    assert counts["/rgbt_seg/labels"] == counts["/rgbt_seg/info"] == counts["/rgbt_seg/confidence"]
    assert all((m.width, m.height) == (1280, 720) and _ns(m.header) in rgb for m in labels)
    # a second run must not overwrite the first without --force
    monkeypatch.chdir(tmp_path)
    assert cli(["demo", "--no-progress"]) == 2
    assert "pass --force" in capsys.readouterr().err


def test_demo_bad_arguments_are_one_line(tmp_path, capsys):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    assert cli(["demo", "--out", str(a_file), "--frames", "1", "--no-progress"]) == 2
    assert f"--out {a_file}: {a_file} is a file, not a folder" in capsys.readouterr().err
    assert cli(["demo", "--out", str(tmp_path / "d"), "--frames", "0", "--no-progress"]) == 2
    assert "--frames: must be ≥ 1, got 0" in capsys.readouterr().err
    assert cli(["demo", "--out", str(tmp_path / "d"), "--seed", "-1", "--no-progress"]) == 2  # was numpy's traceback
    err = capsys.readouterr().err
    assert "--seed: must be ≥ 0, got -1" in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


def test_demo_interrupted_while_rendering_leaves_no_folder(tmp_path, monkeypatch):
    import rgbt_seg_ros.synthetic.demo_bag as demo_bag

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt  # Ctrl-C during the render: the bag writer itself leaves nothing

    monkeypatch.setattr(demo_bag, "write_demo_bag", interrupted)
    assert cli(["demo", "--out", str(tmp_path / "new" / "demo"), "--frames", "1", "--no-progress"]) != 0
    assert list(tmp_path.iterdir()) == []  # the two folders it made are gone (an empty --out was left before)
    (tmp_path / "mine").mkdir()
    assert cli(["demo", "--out", str(tmp_path / "mine"), "--frames", "1", "--no-progress"]) != 0
    assert (tmp_path / "mine").is_dir()  # a folder that was there before stays


@pytest.mark.parametrize("level", [0.0, 1.0])
def test_preview_captions_read_on_black_and_on_white(level):
    # the confidence tile is mostly white (confident), the night RGB mostly black: captions must show on both
    from types import SimpleNamespace

    from rgbt_seg_ros.tools.demo import preview_image

    h, w = 360, 640
    result = SimpleNamespace(registered_aux=np.full((h, w), level, np.float32),
                             colour=np.full((h, w, 3), 255 * level, np.uint8),
                             confidence=np.full((h, w), level, np.float32))
    preview = preview_image(np.full((h, w, 3), 255 * level, np.uint8), result)
    for tile in np.split(preview, 4, axis=1):
        caption = tile[5:35, 5:120].max(axis=2)  # where the caption is drawn
        assert (caption < 80).any() and (caption > 215).any()
