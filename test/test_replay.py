"""rgbt-seg replay on real bags (ROS 1 JPEG camera, rosbag2 with truncated images) and on a synthetic RGB-T bag."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from rosbags.highlevel import AnyReader

from bag_checks import mcap_ros2, tree_hash

from rgbt_seg_ros.cli import main as cli
from rgbt_seg_ros.errors import RgbtSegError
from rgbt_seg_ros.io.bag import BagReader
from rgbt_seg_ros.io.image import image_to_numpy

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
FIDUCIALS = DATA / "fiducials-ros1-bags" / "aruco_images.bag"
FIXTURE = DATA / "rosbags-rs-format-fixture"
JPEG_TOPIC = "/raspicam_node/image/compressed"


def _need(path: Path) -> None:
    if not path.exists():
        pytest.skip(f"shared data absent: {path}")






def _ns(header) -> int:
    return int(header.stamp.sec) * 10**9 + int(header.stamp.nanosec)


@pytest.fixture(scope="module")
def small_model(tmp_path_factory) -> Path:
    """A real model file (untrained small fusion network, synthetic classes, 64×96 input) written with save_model."""
    from rgbt_seg_ros.inference.artifact import save_model
    from rgbt_seg_ros.tools.demo import untrained_backend

    backend = untrained_backend(input_size=(64, 96))
    path = tmp_path_factory.mktemp("model") / "small.safetensors"
    save_model(path, backend.network.state_dict(), backend.card)
    return path


@pytest.fixture(scope="module")
def demo_bag(tmp_path_factory) -> Path:
    """A small synthetic RGB-T bag: 18 RGB frames 320×180 at 30 Hz, thermal 160×128 at ~9 Hz with drops."""
    from rgbt_seg_ros.synthetic.demo_bag import DemoBagSpec, write_demo_bag

    path = tmp_path_factory.mktemp("demo") / "in"
    write_demo_bag(path, DemoBagSpec(frames=18, rgb_size=(180, 320), thermal_size=(128, 160)))
    return path


def _plane_config(folder: Path) -> Path:
    """The demo bag's cameras differ in aspect ratio and sit 8 cm apart: plane registration, as the demo uses."""
    config = folder / "pipeline.yaml"
    config.write_text("registration:\n  mode: plane\n  extrinsics: {R: [[1,0,0],[0,1,0],[0,0,1]], t: [0.08, 0, 0]}\n"
                      "  plane_distance: 8.0\n")
    return config


def _no_leftovers(folder: Path, allowed: set[str]) -> None:
    assert {p.name for p in folder.iterdir()} == allowed


def test_ros1_bag_without_second_camera_fails_in_one_line(tmp_path, small_model, capsys):
    _need(FIDUCIALS)
    out = tmp_path / "out"
    rc = cli(["replay", str(FIDUCIALS), "--out", str(out), "--model", str(small_model),
              "--rgb-topic", JPEG_TOPIC, "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "--thermal-topic /thermal/image: not in bag" in err and "--rgb-only" in err
    assert JPEG_TOPIC in err  # lists what the bag has
    _no_leftovers(tmp_path, set())


@pytest.mark.parametrize("name, n_info", [("aruco_images.bag", 15), ("aruco_marker.bag", 1)])
def test_ros1_bag_rgb_only_writes_valid_output(tmp_path, small_model, capsys, name, n_info):
    src_bag = DATA / "fiducials-ros1-bags" / name
    _need(src_bag)
    before = tree_hash(src_bag)
    out = tmp_path / "out"
    rc = cli(["replay", str(src_bag), "--out", str(out), "--model", str(small_model), "--rgb-topic", JPEG_TOPIC,
              "--rgb-only", "--rgb-info-topic", "/raspicam_node/camera_info", "--no-progress"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "1 segmented" in captured.out and "p99" in captured.out
    assert tree_hash(src_bag) == before
    _no_leftovers(tmp_path, {"out"})

    with AnyReader([src_bag]) as src:
        conn = next(c for c in src.connections if c.topic == JPEG_TOPIC)
        _, in_log, raw = next(src.messages([conn]))
        jpeg_header = src.deserialize(raw, conn.msgtype).header
        infos_in = [src.deserialize(r, c.msgtype) for c, _, r in src.messages()
                    if c.topic == "/raspicam_node/camera_info"]
    with BagReader(out) as bag:
        topics = bag.topics
        assert topics["/raspicam_node/camera_info"].count == n_info and topics[JPEG_TOPIC].count == 1
        for name in ("labels", "colour", "confidence", "overlay", "info"):
            assert topics[f"/rgbt_seg/{name}"].count == 1
        outputs = {m.topic: (m.log_time, bag.deserialize(m)) for m in bag.messages() if m.topic.startswith("/rgbt_seg")}
        infos_out = [bag.deserialize(m) for m in bag.messages(["/raspicam_node/camera_info"])]
    assert len(infos_out) == len(infos_in) == n_info
    width, height = infos_in[0].width, infos_in[0].height  # the camera's resolution (1280×960 / 1280×720)
    for ci_in, ci_out in zip(infos_in, infos_out):
        np.testing.assert_array_equal(ci_out.k, ci_in.K)
        assert _ns(ci_out.header) == _ns(ci_in.header)
    for name, enc in (("labels", "mono8"), ("colour", "rgb8"), ("confidence", "32FC1"), ("overlay", "rgb8")):
        log_time, img = outputs[f"/rgbt_seg/{name}"]
        assert log_time == in_log
        assert (img.width, img.height, img.encoding) == (width, height, enc)  # the JPEG's resolution
        assert _ns(img.header) == _ns(jpeg_header) and img.header.frame_id == "raspicam"
    conf = image_to_numpy(outputs["/rgbt_seg/confidence"][1])
    assert conf.min() >= 0.0 and conf.max() <= 1.0 and conf.min() > 0.0  # softmax of 6 classes ≥ 1/6
    labels = image_to_numpy(outputs["/rgbt_seg/labels"][1])
    assert labels.max() < 6
    info = outputs["/rgbt_seg/info"][1]
    assert not info.aux_used and list(info.class_names)[1] == "road" and info.pairs_processed == 1

    # Foxglove's decoder reads every message of the output, with the same stamps.
    decoded = mcap_ros2(out / "out.mcap")
    by_topic = {}
    for schema, channel, _, msg in decoded:
        by_topic.setdefault(channel.topic, []).append((schema.name, msg))
    assert len(by_topic["/raspicam_node/camera_info"]) == n_info
    schema, labels_msg = by_topic["/rgbt_seg/labels"][0]
    assert schema == "sensor_msgs/msg/Image" and (labels_msg.width, labels_msg.height) == (width, height)
    assert labels_msg.header.frame_id == "raspicam" and _ns(labels_msg.header) == _ns(jpeg_header)
    assert bytes(labels_msg.data) == labels.tobytes()
    schema, info_msg = by_topic["/rgbt_seg/info"][0]
    assert schema == "rgbt_seg_ros/msg/SegmentationInfo" and len(info_msg.colours) == 6


@pytest.mark.parametrize("storage", ["test_bag_mcap", "test_bag_sqlite3"])
def test_truncated_images_fail_cleanly(tmp_path, small_model, capsys, storage):
    _need(FIXTURE)
    bag = FIXTURE / storage
    before = tree_hash(bag)
    out = tmp_path / "out"
    rc = cli(["replay", str(bag), "--out", str(out), "--model", str(small_model),
              "--rgb-topic", "/test/sensor_msgs/image", "--rgb-only", "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    last = err[-1]
    assert "Traceback" not in "\n".join(err)
    assert "topic /test/sensor_msgs/image: field data: 30 bytes" in last and "921600" in last
    _no_leftovers(tmp_path, set())
    assert tree_hash(bag) == before


def test_existing_output_refused_without_force(tmp_path, small_model, demo_bag, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("keep")
    rc = cli(["replay", str(demo_bag), "--out", str(out), "--model", str(small_model), "--no-progress"])
    assert rc == 2
    assert f"output {out} exists; pass --force" in capsys.readouterr().err
    assert (out / "precious.txt").read_text() == "keep"


def test_missing_rgb_topic_lists_bag(tmp_path, small_model, demo_bag, capsys):
    rc = cli(["replay", str(demo_bag), "--out", str(tmp_path / "o"), "--model", str(small_model),
              "--rgb-topic", "/camera/image_raw", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "--rgb-topic /camera/image_raw: not in bag" in err
    assert "/thermal/image [sensor_msgs/msg/Image" in err


def test_rgbt_replay_pairs_and_stamps(tmp_path, small_model, demo_bag, capsys):
    config = _plane_config(tmp_path)
    out = tmp_path / "out"
    rc = cli(["replay", str(demo_bag), "--out", str(out), "--model", str(small_model), "--config", str(config),
              "--storage", "sqlite3"])  # with the progress bar, as users run it
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    with AnyReader([demo_bag]) as src:
        inputs = {(c.topic, t): bytes(r) for c, t, r in src.messages()}
        rgb = {}
        for c, t, r in src.messages():
            if c.topic == "/rgb/image":
                rgb[t] = src.deserialize(r, c.msgtype).header
        thermal_count = sum(1 for (topic, _) in inputs if topic == "/thermal/image")
    with AnyReader([out]) as res:
        copied = {(c.topic, t): bytes(r) for c, t, r in res.messages() if not c.topic.startswith("/rgbt_seg")}
        assert copied == inputs  # every input message, same bytes, same log time
        labels = [(t, res.deserialize(r, c.msgtype)) for c, t, r in res.messages() if c.topic == "/rgbt_seg/labels"]
        infos = [res.deserialize(r, c.msgtype) for c, t, r in res.messages() if c.topic == "/rgbt_seg/info"]
    # every thermal frame is paired (RGB at 30 Hz always has one within the slop)
    assert len(labels) == thermal_count >= 3
    for log_time, img in labels:
        assert log_time in rgb, "outputs are written at an RGB message's log time"
        header = rgb[log_time]
        assert _ns(img.header) == _ns(header) and img.header.frame_id == "rgb_optical_frame"
        assert (img.width, img.height) == (320, 180)
    assert all(i.aux_used for i in infos) and [i.pairs_processed for i in infos] == list(range(1, len(infos) + 1))
    assert all(abs(i.pair_skew) <= 0.05 for i in infos)
    assert any(i.frames_unpaired > 0 for i in infos)  # 30 Hz RGB vs 9 Hz thermal: most RGB frames go unpaired
    assert "pair skew" in captured.out


class _FailingBackend:
    """A real backend that raises on its n-th frame, as a crash or Ctrl-C midway would (the start-up warm-up's
    blank inputs are not frames: a normalised camera image is never all zeros)."""

    def __init__(self, backend, fail_at: int, error: type[BaseException]):
        self.backend, self.fail_at, self.error, self.calls, self.warmups = backend, fail_at, error, 0, 0
        self.card, self.name = backend.card, backend.name

    def infer(self, rgb, aux):
        if not rgb.any():
            self.warmups += 1
            return self.backend.infer(rgb, aux)
        self.calls += 1
        if self.calls == self.fail_at:
            raise self.error("simulated failure on the 3rd frame")
        return self.backend.infer(rgb, aux)


class _SlowFirstCallBackend:
    """A real backend whose first call takes 0.5 s longer, as kernel selection or compilation do."""

    def __init__(self, backend):
        self.backend, self.card, self.name, self.calls = backend, backend.card, backend.name, 0

    def infer(self, rgb, aux):
        import time

        self.calls += 1
        if self.calls == 1:
            time.sleep(0.5)
        return self.backend.infer(rgb, aux)


def test_network_start_up_cost_is_paid_before_the_first_pair(tmp_path, small_model, demo_bag):
    from rgbt_seg_ros.inference import create_backend
    from rgbt_seg_ros.pipeline.pipeline import SegmentationPipeline
    from rgbt_seg_ros.tools.replay import ReplaySettings, run_replay

    backend = _SlowFirstCallBackend(create_backend(small_model))
    pipeline = SegmentationPipeline(backend, {"registration": {"mode": "identity", "aspect_tolerance": 0.5}})
    summary = run_replay(demo_bag, tmp_path / "out", pipeline,
                         ReplaySettings(aux_topic="/thermal/image", progress=False))
    assert summary.pairs >= 3 and summary.warmup_s >= 0.5
    assert summary.latency_ms["infer"]["max"] < 250, summary.latency_ms["infer"]  # no pair paid the 0.5 s
    assert any(f"after a {summary.warmup_s:.1f} s network warm-up" in line for line in summary.lines())


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt, RgbtSegError])
def test_interrupted_run_leaves_nothing_and_input_unchanged(tmp_path, small_model, demo_bag, error):
    from rgbt_seg_ros.inference import create_backend
    from rgbt_seg_ros.pipeline.pipeline import SegmentationPipeline
    from rgbt_seg_ros.tools.replay import ReplaySettings, run_replay

    before = tree_hash(demo_bag)
    backend = _FailingBackend(create_backend(small_model), 3, error)
    pipeline = SegmentationPipeline(backend, {"registration": {"mode": "identity", "aspect_tolerance": 0.5}})
    out = tmp_path / "out"
    with pytest.raises(error, match="3rd frame"):
        run_replay(demo_bag, out, pipeline, ReplaySettings(aux_topic="/thermal/image", progress=False))
    assert backend.calls == 3 and backend.warmups == 2
    _no_leftovers(tmp_path, set())
    assert tree_hash(demo_bag) == before


def test_list_topics(capsys):
    _need(FIDUCIALS)
    assert cli(["replay", str(FIDUCIALS), "--list"]) == 0
    out = capsys.readouterr().out
    assert "ROS 1, 16 messages" in out and "/raspicam_node/camera_info" in out and "CompressedImage" in out


def test_rgbd_bag_with_jpeg_rgb_and_16bit_depth(tmp_path, capsys):
    """RGB-D: JPEG CompressedImage RGB + 16UC1 depth (mm) on other topic names, replayed with --depth-topic."""
    from rgbt_seg_ros.inference.artifact import save_model
    from rgbt_seg_ros.io.bag import BagWriter
    from rgbt_seg_ros.io.image import numpy_to_compressed_fields, numpy_to_image_fields
    from rgbt_seg_ros.synthetic.scenes import SceneGenerator
    from rgbt_seg_ros.tools.demo import untrained_backend

    backend = untrained_backend(input_size=(64, 96), modality="depth")
    model = tmp_path / "depth.safetensors"
    save_model(model, backend.network.state_dict(), backend.card)
    scene = SceneGenerator(seed=3).scene(0, night=False)
    bag = tmp_path / "rgbd"
    stamps = []
    with BagWriter(bag, storage="sqlite3") as w:
        store = w.typestore
        Header, Time = store.types["std_msgs/msg/Header"], store.types["builtin_interfaces/msg/Time"]
        for i in range(4):
            frame = scene.render(None, (96, 128), modalities=("rgb", "depth"))
            t = 10**9 * (50 + i) // 15
            stamps.append(t)
            header = Header(stamp=Time(sec=t // 10**9, nanosec=t % 10**9), frame_id="color")
            depth_mm = np.where(np.isfinite(frame["depth"]), np.clip(frame["depth"] * 1000, 0, 65535), 0)
            w.write("/cam/color/compressed", t + 1000, store.types["sensor_msgs/msg/CompressedImage"](
                header=header, **numpy_to_compressed_fields(frame["rgb"], "rgb8", "jpeg")),
                "sensor_msgs/msg/CompressedImage")
            w.write("/cam/depth", t + 2000, store.types["sensor_msgs/msg/Image"](
                header=Header(stamp=Time(sec=t // 10**9, nanosec=t % 10**9 + 3000), frame_id="color"),
                **numpy_to_image_fields(depth_mm.astype(np.uint16), "16UC1")), "sensor_msgs/msg/Image")
    out = tmp_path / "out"
    rc = cli(["replay", str(bag), "--out", str(out), "--model", str(model), "--rgb-topic", "/cam/color/compressed",
              "--depth-topic", "/cam/depth", "--namespace", "seg", "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    with BagReader(out) as result:
        labels = [(m.log_time, result.deserialize(m)) for m in result.messages(["/seg/labels"])]
        infos = [result.deserialize(m) for m in result.messages(["/seg/info"])]
    assert len(labels) >= 3 and all(i.aux_used and i.modality == "depth" for i in infos)
    for log_time, img in labels:
        assert _ns(img.header) in stamps and log_time == _ns(img.header) + 1000
        assert (img.width, img.height, img.header.frame_id) == (128, 96, "color")
    assert all(abs(i.pair_skew - 3e-6) < 1e-9 for i in infos)


def _bag_with_uncalibrated_thermal_info(path: Path) -> None:
    """RGB + thermal images with CameraInfos whose thermal K is all zeros (an uncalibrated driver)."""
    from rgbt_seg_ros.io.bag import BagWriter
    from rgbt_seg_ros.io.image import numpy_to_image_fields

    rng = np.random.default_rng(0)
    with BagWriter(path) as w:
        store = w.typestore
        Header, Time = store.types["std_msgs/msg/Header"], store.types["builtin_interfaces/msg/Time"]
        Info, Image = store.types["sensor_msgs/msg/CameraInfo"], store.types["sensor_msgs/msg/Image"]
        roi = store.types["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0,
                                                              do_rectify=False)
        for i in range(4):
            t = 10**9 + i * 10**8
            for topic, frame, (h, w_), enc, k in (("rgb", "rgb", (60, 80), "rgb8", [70, 0, 40, 0, 70, 30, 0, 0, 1]),
                                                  ("thermal", "thermal", (48, 64), "mono16", [0.0] * 9)):
                header = Header(stamp=Time(sec=t // 10**9, nanosec=t % 10**9), frame_id=frame)
                info = Info(header=header, height=h, width=w_, distortion_model="plumb_bob", d=np.zeros(5),
                            k=np.asarray(k, np.float64), r=np.eye(3).reshape(-1), p=np.zeros(12), binning_x=0,
                            binning_y=0, roi=roi)
                w.write(f"/{topic}/camera_info", t, info, "sensor_msgs/msg/CameraInfo")
                shape = (h, w_, 3) if enc == "rgb8" else (h, w_)
                dtype = np.uint8 if enc == "rgb8" else np.uint16
                array = rng.integers(0, 255 if enc == "rgb8" else 40000, shape).astype(dtype)
                w.write(f"/{topic}/image", t + 1, Image(header=header, **numpy_to_image_fields(array, enc)),
                        "sensor_msgs/msg/Image")


def test_uncalibrated_camera_info(tmp_path, small_model, capsys):
    bag = tmp_path / "uncal"
    _bag_with_uncalibrated_thermal_info(bag)
    plane = tmp_path / "plane.yaml"
    plane.write_text("registration: {mode: plane, extrinsics: {R: [[1,0,0],[0,1,0],[0,0,1]], t: [0.05,0,0]}}\n")
    rc = cli(["replay", str(bag), "--out", str(tmp_path / "a"), "--model", str(small_model), "--config", str(plane),
              "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert rc == 2 and err.startswith("rgbt-seg replay: error: pair at RGB stamp 1.000000000:")
    assert "thermal camera_info" in err and "uncalibrated" in err
    assert not (tmp_path / "a").exists()
    # registration that needs no calibration runs despite the unusable CameraInfo
    identity = tmp_path / "identity.yaml"
    identity.write_text("registration: {mode: identity, aspect_tolerance: 0.1}\n")
    rc = cli(["replay", str(bag), "--out", str(tmp_path / "b"), "--model", str(small_model), "--config",
              str(identity), "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    with BagReader(tmp_path / "b") as out:
        assert out.topics["/rgbt_seg/labels"].count >= 3


def test_last_thermal_frame_is_segmented_at_the_end(tmp_path, small_model, capsys):
    """The bag ends right after a thermal frame whose RGB partner came first: no later frame ever confirms
    the pair, so only the end-of-bag flush can emit it. It is segmented, in stamp order, in a valid bag."""
    from rgbt_seg_ros.io.bag import BagWriter
    from rgbt_seg_ros.io.image import numpy_to_image_fields

    rng = np.random.default_rng(5)
    bag, stamps = tmp_path / "ends_on_thermal", []
    with BagWriter(bag) as w:
        store = w.typestore
        Header, Time, Image = (store.types[t] for t in ("std_msgs/msg/Header", "builtin_interfaces/msg/Time",
                                                        "sensor_msgs/msg/Image"))
        for i in range(4):
            t = 10**9 + i * 10**8
            stamps.append(t)
            for topic, skew, shape, enc, dtype in (("rgb", 0, (60, 80, 3), "rgb8", np.uint8),
                                                   ("thermal", 3 * 10**6, (48, 64), "mono16", np.uint16)):
                ts = t + skew  # thermal stamped 3 ms after RGB and received after it
                header = Header(stamp=Time(sec=ts // 10**9, nanosec=ts % 10**9), frame_id=topic)
                array = rng.integers(0, 250, shape).astype(dtype)
                w.write(f"/{topic}/image", ts + 10**6, Image(header=header, **numpy_to_image_fields(array, enc)),
                        "sensor_msgs/msg/Image")
    out = tmp_path / "out"
    rc = cli(["replay", str(bag), "--out", str(out), "--model", str(small_model), "--no-progress"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "4 segmented" in captured.out
    assert "decided at the end of the bag (no later frame to wait for): 1 segmented" in captured.out
    # Foxglove's independent reader decodes the whole output; results come in stamp order
    by_topic = {}
    for _, channel, message, msg in mcap_ros2(out / "out.mcap"):
        by_topic.setdefault(channel.topic, []).append((message.log_time, msg))
    labels, infos = by_topic["/rgbt_seg/labels"], by_topic["/rgbt_seg/info"]
    assert [_ns(m.header) for _, m in labels] == stamps and [_ns(m.header) for _, m in infos] == stamps
    assert [lt for lt, _ in labels] == [t + 10**6 for t in stamps]  # written at the RGB receive time
    assert [i.pairs_processed for _, i in infos] == [1, 2, 3, 4]
    assert all(i.aux_used and abs(i.pair_skew - 0.003) < 1e-9 for _, i in infos)
    assert len(by_topic["/thermal/image"]) == len(by_topic["/rgb/image"]) == 4


def _write_rgbt_bag(path: Path, rgb_hz: float, thermal_hz: float, seconds: float, info_delay: float | None = None):
    """RGB 80×60 and mono16 thermal 64×48 at the given rates (stamps = receive times), with CameraInfos for
    both first published ``info_delay`` seconds into the bag (None: no CameraInfo at all)."""
    from rgbt_seg_ros.io.bag import BagWriter
    from rgbt_seg_ros.io.image import numpy_to_image_fields

    rng = np.random.default_rng(9)
    with BagWriter(path) as w:
        store = w.typestore
        Header, Time, Image, Info = (store.types[t] for t in ("std_msgs/msg/Header", "builtin_interfaces/msg/Time",
                                                              "sensor_msgs/msg/Image", "sensor_msgs/msg/CameraInfo"))
        events = [(round(i * 1e9 / rgb_hz), "rgb") for i in range(int(seconds * rgb_hz))]
        events += [(round(i * 1e9 / thermal_hz) + 10**6, "thermal") for i in range(int(seconds * thermal_hz))]
        if info_delay is not None:
            events += [(round(info_delay * 1e9) + k, f"{cam}_info") for k, cam in enumerate(("rgb", "thermal"))]
        for t, what in sorted(events):
            t += 10**9
            header = Header(stamp=Time(sec=t // 10**9, nanosec=t % 10**9), frame_id=what.split("_")[0])
            if what.endswith("_info"):
                cam = what.split("_")[0]
                wh = (80, 60) if cam == "rgb" else (64, 48)
                k = np.array([60.0, 0, wh[0] / 2 - 0.5, 0, 60.0, wh[1] / 2 - 0.5, 0, 0, 1])
                w.write(f"/{cam}/camera_info", t, Info(header=header, height=wh[1], width=wh[0],
                        distortion_model="plumb_bob", d=np.zeros(5), k=k, r=np.eye(3).reshape(-1),
                        p=np.zeros(12), binning_x=0, binning_y=0, roi=store.types["sensor_msgs/msg/RegionOfInterest"](
                            x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)),
                        "sensor_msgs/msg/CameraInfo")
                continue
            shape, enc, dtype = ((60, 80, 3), "rgb8", np.uint8) if what == "rgb" else ((48, 64), "mono16", np.uint16)
            array = rng.integers(0, 250, shape).astype(dtype)
            w.write(f"/{what}/image", t, Image(header=header, **numpy_to_image_fields(array, enc)),
                    "sensor_msgs/msg/Image")


def test_frames_unpaired_counts_rgb_frames_only(tmp_path, small_model, capsys):
    # thermal at twice the RGB rate: every RGB frame is paired, half the thermal frames are not
    bag = tmp_path / "x2"
    _write_rgbt_bag(bag, rgb_hz=10, thermal_hz=20, seconds=1.0)
    out = tmp_path / "out"
    assert cli(["replay", str(bag), "--out", str(out), "--model", str(small_model), "--slop", "0.02",
                "--no-progress"]) == 0, capsys.readouterr().err
    with BagReader(out) as res:
        infos = [res.deserialize(m) for m in res.messages(["/rgbt_seg/info"])]
    assert len(infos) == 10 and all(i.frames_unpaired == 0 for i in infos)


def test_pairs_before_the_first_camera_info_are_skipped(tmp_path, small_model, capsys):
    plane = tmp_path / "plane.yaml"
    plane.write_text("registration: {mode: plane, extrinsics: {R: [[1,0,0],[0,1,0],[0,0,1]], t: [0.05,0,0]}}\n")
    late = tmp_path / "late_info"
    _write_rgbt_bag(late, rgb_hz=10, thermal_hz=10, seconds=1.0, info_delay=0.35)
    out = tmp_path / "out"
    rc = cli(["replay", str(late), "--out", str(out), "--model", str(small_model), "--config", str(plane),
              "--no-progress"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    # pairs are decided one frame late: those of 0.0, 0.1 and 0.2 s come before the CameraInfos of 0.35 s
    assert "skipped 3 pairs before the first rgb camera_info and thermal camera_info" in captured.out
    with BagReader(out) as res:
        assert res.topics["/rgbt_seg/labels"].count == 7
    never = tmp_path / "no_info"
    _write_rgbt_bag(never, rgb_hz=10, thermal_hz=10, seconds=0.5)
    rc = cli(["replay", str(never), "--out", str(tmp_path / "none"), "--model", str(small_model), "--config",
              str(plane), "--no-progress"])
    err = [line for line in capsys.readouterr().err.strip().splitlines() if not line.startswith("warning:")]
    assert rc == 2 and len(err) == 1 and "registration.mode 'plane': needs rgb camera_info" in err[0]
    assert not (tmp_path / "none").exists()


def test_output_topics_already_in_the_input_and_topic_roles(tmp_path, small_model, capsys):
    bag, first = tmp_path / "in", tmp_path / "first"
    _write_rgbt_bag(bag, rgb_hz=10, thermal_hz=10, seconds=0.4, info_delay=0.0)
    assert cli(["replay", str(bag), "--out", str(first), "--model", str(small_model), "--no-progress"]) == 0
    capsys.readouterr()
    rc = cli(["replay", str(first), "--out", str(tmp_path / "again"), "--model", str(small_model), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "--namespace /rgbt_seg: bag" in err and "already has /rgbt_seg/labels" in err
    assert cli(["replay", str(first), "--out", str(tmp_path / "again"), "--model", str(small_model),
                "--namespace", "/second_run", "--no-progress"]) == 0
    with BagReader(tmp_path / "again") as res:
        assert res.topics["/second_run/labels"].count == res.topics["/rgbt_seg/labels"].count
    for flags, expected in (
            (["--thermal-topic", "/rgb/image"], "--rgb-topic and --thermal-topic: both are /rgb/image"),
            (["--rgb-info-topic", "/rgb/camera_info", "--aux-info-topic", "/rgb/camera_info"],
             "--rgb-info-topic and --aux-info-topic: both are /rgb/camera_info"),
            (["--namespace", "bad ns"], "--namespace 'bad ns': not a ROS 2 namespace"),
            (["--namespace", "/1st"], "--namespace '/1st': not a ROS 2 namespace"),
            (["--queue-size", "1"], "--queue-size: must be ≥ 2, got 1"),  # a queue of one pairs nothing before the end
            (["--slop", "nan"], "--slop: must be ≥ 0 seconds, got nan")):  # was named "parameter slop"
        rc = cli(["replay", str(bag), "--out", str(tmp_path / "x"), "--model", str(small_model),
                  "--no-progress", *flags])
        assert rc == 2 and expected in capsys.readouterr().err, flags
    folder = tmp_path / "not_a_bag"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    rc = cli(["replay", str(bag), "--out", str(folder), "--force", "--no-progress"])
    assert rc == 2 and "is not a rosbag2 folder" in capsys.readouterr().err
    assert (folder / "notes.txt").read_text() == "mine"


@pytest.mark.slow
def test_sigterm_midway_leaves_nothing(tmp_path, small_model, demo_bag):
    # what `timeout`, `docker stop` and systemd send: the partial output goes, as with Ctrl-C
    import signal
    import subprocess
    import sys
    import time

    work = tmp_path / "work"  # the config lives outside the folder checked for leftovers
    work.mkdir()
    out = work / "out"
    # a replay that would run to the end (the demo bag needs plane registration), so the signal is what stops it
    proc = subprocess.Popen([sys.executable, "-m", "rgbt_seg_ros.cli", "replay", str(demo_bag), "--out", str(out),
                             "--model", str(small_model), "--config", str(_plane_config(tmp_path)), "--no-progress"],
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list(work.glob(".out.partial-*")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, "the replay ended before it could be terminated"
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 128 + signal.SIGTERM and "rgbt-seg replay: terminated" in err, err[-2000:]
    assert "error:" not in err, err[-2000:]
    _no_leftovers(work, set())
