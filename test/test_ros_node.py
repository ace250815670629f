"""The rgbt_seg node's wiring, run against the rclpy/message_filters STAND-IN in test/ros_standin.

Everything below rgbt_seg_ros/ros is real: a real model file written with save_model, loaded by
create_backend into a TorchBackend, and the real SegmentationPipeline.
"""
from __future__ import annotations

import array
import importlib
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ros_standin  # noqa: E402

torch = pytest.importorskip("torch")
pytest.importorskip("rgbt_seg_ros.pipeline.pipeline", reason="core pipeline not in the tree yet")

from rgbt_seg_ros.inference import ModelCard, save_model  # noqa: E402
from rgbt_seg_ros.inference.torch_backend import TorchBackend  # noqa: E402
from rgbt_seg_ros.networks import create_network  # noqa: E402

NET, VARIANT = "fusion_baseline", "mobilenetv3_small_100"
RGB_HW, AUX_HW = (48, 64), (24, 32)
OUTS = ("labels", "colour", "confidence", "overlay")


def _model(path: Path, supports_rgb_only: bool, **card_kw) -> Path:
    torch.manual_seed(0)
    net = create_network(NET, 3, modality="thermal", variant=VARIANT, pretrained=False)
    card = ModelCard(network=NET, variant=VARIANT, num_classes=3, class_names=["road", "car", "person"],
                     palette=[[128, 64, 128], [0, 0, 142], [220, 20, 60]], input_size=(64, 64),
                     supports_rgb_only=supports_rgb_only, trained=False, dataset="test", **card_kw)
    return save_model(path, net.state_dict(), card)


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    return {"rgb_only": _model(d / "tiny_rgbonly.safetensors", True),
            "fusion_only": _model(d / "tiny_fusion.safetensors", False)}


@pytest.fixture
def standin(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    state = ros_standin.install(monkeypatch)
    mod = importlib.import_module("rgbt_seg_ros.ros.node")
    made = []
    yield state, mod, made
    for node in made:
        node.shutdown()


def make_node(standin, **overrides):
    state, mod, made = standin
    state.overrides = overrides
    node = mod.RgbtSegNode()
    made.append(node)
    return node


def msgs():
    return sys.modules["sensor_msgs.msg"]


def image(stamp_ns: int, frame: str, hw, encoding: str, value: int = 0, data=None):
    m = msgs().Image()
    m.header.stamp.sec, m.header.stamp.nanosec = stamp_ns // 10**9, stamp_ns % 10**9
    m.header.frame_id = frame
    h, w = hw
    bpp = {"rgb8": 3, "mono16": 2, "mono8": 1}.get(encoding, 1)
    m.height, m.width, m.encoding, m.step = h, w, encoding, w * bpp
    if data is None:
        rng = np.random.default_rng(stamp_ns % 1000)
        data = rng.integers(0, 255 if bpp != 2 else 60000, size=(h, w * bpp // (2 if bpp == 2 else 1)),
                            dtype=np.uint16 if bpp == 2 else np.uint8).tobytes()
    m.data = array.array("B", data)
    return m


def pair(node, stamp_ns, skew_ns=3_000_000, aux_encoding="mono16"):
    rgb = image(stamp_ns, "cam_rgb", RGB_HW, "rgb8")
    aux = image(stamp_ns + skew_ns, "cam_thermal", AUX_HW, aux_encoding)
    node.deliver("rgb/image", rgb)
    node.deliver("thermal/image", aux)
    return rgb, aux


def subscribe(node, *names, info=True):
    for n in OUTS:
        node.image_pubs[n].subscribers = int(n in names) if n in node.image_pubs else 0
    node.info_pub.subscribers = int(info)


def published(node, name):
    pub = node.info_pub if name == "info" else node.image_pubs[name]
    with pub._lock:
        return list(pub.published)


def wait_for(cond, timeout=20.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.01)
    return False


# -------------------------------------------------------------------------------- header, outputs
def test_every_output_carries_the_rgb_header_and_resolution(standin, model_files):
    node = make_node(standin, model_file=str(model_files["fusion_only"]))
    subscribe(node, *OUTS)
    rgb, aux = pair(node, 12 * 10**9 + 345_000)
    assert wait_for(lambda: len(published(node, "info")) == 1)
    encodings = {"labels": "mono8", "colour": "rgb8", "confidence": "32FC1", "overlay": "rgb8"}
    for name in OUTS:
        (out,) = published(node, name)
        assert (out.header.stamp.sec, out.header.stamp.nanosec, out.header.frame_id) == (12, 345_000, "cam_rgb")
        assert (out.height, out.width, out.encoding) == (*RGB_HW, encodings[name])
        assert out.step * out.height == len(out.data)
    conf = np.frombuffer(bytes(published(node, "confidence")[0].data), np.float32)
    assert conf.min() >= 0.0 and conf.max() <= 1.0
    labels = np.frombuffer(bytes(published(node, "labels")[0].data), np.uint8)
    assert labels.max() < 3
    (info,) = published(node, "info")
    assert (info.header.stamp.sec, info.header.stamp.nanosec, info.header.frame_id) == (12, 345_000, "cam_rgb")
    assert info.class_names == ["road", "car", "person"] and len(info.colours) == 3
    assert info.colours[1].b == pytest.approx(142 / 255)
    assert info.aux_used and info.pair_skew == pytest.approx(0.003)
    assert info.model_name == f"{NET}/{VARIANT}" and info.pairs_processed == 1
    assert "infer" in info.stage_names and len(info.stage_names) == len(info.stage_latency_ms)
    assert "total" not in info.stage_names and info.latency_total_ms >= sum(info.stage_latency_ms)


def test_outputs_without_subscribers_are_not_computed(standin, model_files):
    node = make_node(standin, model_file=str(model_files["fusion_only"]))
    subscribe(node, "confidence", info=True)
    pair(node, 10**9)
    assert wait_for(lambda: len(published(node, "info")) == 1)
    assert len(published(node, "confidence")) == 1
    assert all(not published(node, n) for n in ("labels", "colour", "overlay"))
    stages = published(node, "info")[0].stage_names
    assert "render" not in stages  # labels, colour and overlay skipped inside the pipeline, not only unpublished
    assert "postprocess" in stages  # the confidence

    subscribe(node, info=False)  # nobody listens: no inference at all
    before = node.counters.pairs_processed
    pair(node, 2 * 10**9)
    assert wait_for(lambda: node.counters.pairs_synced == 2)
    time.sleep(0.3)
    assert node.counters.pairs_processed == before


def test_overlay_disabled_has_no_publisher(standin, model_files):
    node = make_node(standin, model_file=str(model_files["fusion_only"]), overlay=False)
    assert "overlay" not in node.image_pubs
    assert "/rgbt_seg/overlay" not in node.publishers and "/rgbt_seg/colour" in node.publishers


# ------------------------------------------------------------------------------- latest-only worker
class SlowBackend(TorchBackend):
    """The real TorchBackend, made slower than the cameras with a sleep before the network runs."""

    def __init__(self, inner: TorchBackend, delay: float):
        super().__init__(inner.network, inner.card)
        self.delay = delay
        self.calls = 0

    def infer(self, rgb, aux):
        self.calls += 1
        time.sleep(self.delay)
        return super().infer(rgb, aux)


def test_slow_network_drops_old_pairs_and_stays_bounded(standin, model_files):
    node = make_node(standin, model_file=str(model_files["fusion_only"]), queue_size=5)
    slow = SlowBackend(node.backend, delay=0.12)
    node.pipeline.backend = slow
    subscribe(node, "labels", info=True)
    period = 0.06  # cameras at twice the rate the network manages
    slot_lengths, sync_queues = [], []
    threads_before = threading.active_count()
    for k in range(40):
        pair(node, (k + 1) * int(period * 1e9))
        slot_lengths.append(len(node._slot))
        sync_queues.append(max(len(q) for q in node._sync.queues))
        time.sleep(period)
    assert wait_for(lambda: len(node._slot) == 0 and
                    node.counters.pairs_processed + node.counters.pairs_dropped == node.counters.pairs_synced)
    time.sleep(0.3)
    c = node.counters
    assert c.pairs_synced == 40
    assert max(slot_lengths) <= 1 and max(sync_queues) <= 5  # memory: one pending pair, bounded sync queues
    assert threading.active_count() <= threads_before  # no thread per frame
    assert c.pairs_dropped >= 10, c  # roughly half must be dropped at 2x the rate
    assert c.pairs_processed == slow.calls
    infos = published(node, "info")
    assert len(infos) == c.pairs_processed and infos[-1].pairs_dropped == c.pairs_dropped
    lat = [i.latency_total_ms for i in infos]
    # A backlog would grow latency by ~60 ms per frame (to seconds); latest-only keeps it near one
    # inference (+ at most one wait), whatever the run length.
    assert max(lat) < 1500, lat
    assert np.mean(lat[-5:]) < 3 * np.mean(lat[:5]) + 200, lat
    stamps = [i.header.stamp.sec * 10**9 + i.header.stamp.nanosec for i in infos]
    assert stamps == sorted(stamps)  # newest pair first, never an old one after a new one


# --------------------------------------------------------------------------------- stream loss
def _diag(node, suffix):
    (st,) = [s for s in node.diag_pub.published[-1].status if s.name.endswith(suffix)]
    return st


def _run_rgb_only(node, state, t0_ns):
    state.clock_ns = t0_ns
    for k in range(3):
        state.clock_ns = t0_ns + k * 100_000_000
        pair(node, state.clock_ns)
    assert wait_for(lambda: len(published(node, "info")) >= 1)
    n_before = node.counters.pairs_processed
    for k in range(3, 12):  # thermal camera gone; RGB keeps coming at 10 Hz for 0.9 s
        state.clock_ns = t0_ns + k * 100_000_000
        node.deliver("rgb/image", image(state.clock_ns, "cam_rgb", RGB_HW, "rgb8"))
        time.sleep(0.15)
    node.diag_timer.fire()
    return n_before


def test_aux_loss_with_rgb_only_model_keeps_publishing(standin, model_files):
    state = standin[0]
    node = make_node(standin, model_file=str(model_files["rgb_only"]), aux_timeout=0.25)
    subscribe(node, "labels", info=True)
    n_before = _run_rgb_only(node, state, 50 * 10**9)
    assert wait_for(lambda: sum(not i.aux_used for i in published(node, "info")) >= 3)
    infos = published(node, "info")
    assert node.counters.pairs_processed > n_before and node.counters.pairs_rgb_only >= 3
    assert infos[-1].aux_used is False
    st = _diag(node, "thermal input")
    assert st.level == b"\x01" and "RGB-only" in st.message
    assert _diag(node, "rgb input").level == b"\x00"

    # thermal comes back: its first frame's RGB partner came first and was already run RGB-only, so it is
    # not published again; from the next pair on, fused results
    for _ in range(2):
        state.clock_ns += 100_000_000
        pair(node, state.clock_ns)
    assert wait_for(lambda: published(node, "info")[-1].aux_used)
    node.diag_timer.fire()
    assert _diag(node, "thermal input").level == b"\x00"
    stamps = [(m.header.stamp.sec, m.header.stamp.nanosec) for m in published(node, "labels")]
    assert stamps == sorted(set(stamps))  # each RGB frame at most once, never going backwards
    c = node.counters
    assert c.pairs_processed + c.pairs_dropped + c.bad_messages == c.pairs_synced + c.pairs_rgb_only


def test_aux_loss_without_rgb_only_support_reports_error(standin, model_files):
    state = standin[0]
    node = make_node(standin, model_file=str(model_files["fusion_only"]), aux_timeout=0.25)
    subscribe(node, "labels", info=True)
    _run_rgb_only(node, state, 80 * 10**9)
    time.sleep(0.2)
    assert all(i.aux_used for i in published(node, "info"))  # no fake RGB-only results
    st = _diag(node, "thermal input")
    assert st.level == b"\x02" and "cannot run RGB-only" in st.message
    errors = [m for lvl, m in state.logs if lvl == "ERROR"]
    assert len(errors) == 1 and "thermal/image" in errors[0]  # throttled, not one per frame
    assert any("thermal/image" in m for _, m in state.suppressed)
    node.diag_timer.fire()  # still talking at 1 Hz
    assert len(node.diag_pub.published) == 2


def test_diagnostics_content(standin, model_files):
    state = standin[0]
    node = make_node(standin, model_file=str(model_files["fusion_only"]))
    subscribe(node, "labels", info=True)
    state.clock_ns = 100 * 10**9
    for k in range(5):
        state.clock_ns += 100_000_000
        pair(node, state.clock_ns, skew_ns=-2_000_000)
    assert wait_for(lambda: node.counters.pairs_processed + node.counters.pairs_dropped == 5)
    node.diag_timer.fire()
    arr = node.diag_pub.published[-1]
    assert node.diag_pub.topic == "/diagnostics"
    assert {s.name for s in arr.status} == {"rgbt_seg: rgb input", "rgbt_seg: thermal input", "rgbt_seg: sync",
                                            "rgbt_seg: inference"}
    rgb = {kv.key: kv.value for kv in _diag(node, "rgb input").values}
    assert float(rgb["rate_hz"]) == pytest.approx(10.0, rel=1e-3)
    sync = {kv.key: kv.value for kv in _diag(node, "sync").values}
    assert sync["pairs_synced"] == "5" and float(sync["skew_abs_max_s"]) == pytest.approx(0.002, abs=1e-6)
    inf = {kv.key: kv.value for kv in _diag(node, "inference").values}
    assert "infer_ms_p50" in inf and int(inf["pairs_processed"]) + int(inf["pairs_dropped"]) == 5


# ----------------------------------------------------------------------------------- bad messages
def test_bad_messages_are_logged_throttled_and_skipped(standin, model_files):
    state = standin[0]
    node = make_node(standin, model_file=str(model_files["fusion_only"]))
    subscribe(node, "labels", info=True)
    for k in range(4):
        pair(node, (k + 1) * 10**9, aux_encoding="yuv422")
        wait_for(lambda: node.counters.bad_messages == k + 1, timeout=5)
    assert node.counters.bad_messages == 4
    warns = [m for lvl, m in state.logs if lvl == "WARN"]
    assert len(warns) == 1 and "thermal/image" in warns[0] and "encoding" in warns[0]
    assert len(state.suppressed) == 3
    truncated = image(6 * 10**9, "cam_rgb", RGB_HW, "rgb8", data=bytes(100))
    node.deliver("rgb/image", truncated)
    node.deliver("thermal/image", image(6 * 10**9, "cam_thermal", AUX_HW, "mono16"))
    assert wait_for(lambda: node.counters.bad_messages == 5)
    pair(node, 7 * 10**9)  # the node is still alive and working
    assert wait_for(lambda: len(published(node, "labels")) == 1)
    node.diag_timer.fire()
    st = _diag(node, "inference")
    assert st.level == b"\x01" and "rgb/image" in st.message


def test_missing_camera_info_is_skipped_with_a_clear_line(standin, model_files):
    node = make_node(standin, model_file=str(model_files["fusion_only"]), registration="plane")
    subscribe(node, "labels", info=True)
    pair(node, 10**9)
    assert wait_for(lambda: node.counters.bad_messages == 1)
    assert "rgb/camera_info: no CameraInfo received yet" in node._last_error[0]
    assert not published(node, "labels")


def _camera_info(h, w, f, stamp_sec):
    m = msgs().CameraInfo()
    m.header.stamp.sec = stamp_sec
    m.height, m.width, m.distortion_model = h, w, "plumb_bob"
    m.d = [0.0] * 5
    m.k = [f, 0.0, w / 2, 0.0, f, h / 2, 0.0, 0.0, 1.0]
    m.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    m.p = [f, 0.0, w / 2, 0.0, 0.0, f, h / 2, 0.0, 0.0, 0.0, 1.0, 0.0]
    return m


def test_plane_registration_uses_the_latest_camera_infos(standin, model_files):
    node = make_node(standin, model_file=str(model_files["fusion_only"]), registration="plane",
                     extrinsic_translation=[0.05, 0.0, 0.0], plane_distance=5.0)
    subscribe(node, "labels", info=True)
    # CameraInfo stamps that match no image, as real drivers publish them: latest seen is used
    node.deliver("rgb/camera_info", _camera_info(*RGB_HW, 50.0, 999))
    node.deliver("thermal/camera_info", _camera_info(*AUX_HW, 25.0, 3))
    pair(node, 10**9)
    assert wait_for(lambda: len(published(node, "labels")) == 1)
    assert node.counters.bad_messages == 0 and published(node, "info")[0].aux_used
    assert "register" in published(node, "info")[0].stage_names


# --------------------------------------------------------------------------------- parameters
def test_parameters_are_declared_with_descriptions_and_ranges(standin, model_files):
    from rgbt_seg_ros.ros.params import PARAMS

    node = make_node(standin, model_file=str(model_files["fusion_only"]))
    for spec in PARAMS:
        d = node._descriptors[spec.name]
        assert d.description and d.name == spec.name
        if spec.range and spec.type == "integer":
            assert (d.integer_range[0].from_value, d.integer_range[0].to_value) == spec.range
        if spec.range and spec.type == "double":
            assert (d.floating_point_range[0].from_value, d.floating_point_range[0].to_value) == spec.range
    assert node._descriptors["slop"].read_only and not node._descriptors["overlay_alpha"].read_only
    # sensor-data QoS by default, reliable on request
    assert node.subscriptions["/rgb/image"].qos.reliability == "best_effort"
    assert node.subscriptions["/thermal/camera_info"].msg_type.__name__ == "CameraInfo"


def test_network_is_warmed_up_before_the_first_frame(standin, model_files, monkeypatch):
    # kernel choice, CUDA context, torch.compile: paid at start-up, not by the first frames
    state = standin[0]
    calls = []
    real_infer = TorchBackend.infer

    def counting_infer(self, rgb, aux):  # the real method, counted
        calls.append(rgb.shape)
        return real_infer(self, rgb, aux)

    monkeypatch.setattr(TorchBackend, "infer", counting_infer)
    node = make_node(standin, model_file=str(model_files["fusion_only"]))
    h, w = node.pipeline.input_size
    assert calls == [(1, 3, h, w)] * 2 and node.counters.pairs_synced == 0
    assert any("network warm-up" in m for lvl, m in state.logs if lvl == "INFO")


def test_thermal_normalisation_comes_from_the_card_unless_a_parameter_sets_it(standin, tmp_path):
    state = standin[0]
    path = _model(tmp_path / "fixed.safetensors", False,
                  normalization={"thermal_agc": "fixed", "thermal_range": [19000.0, 31000.0]})
    node = make_node(standin, model_file=str(path))  # every normalisation parameter at its default
    n = node.pipeline.normalization
    assert n.thermal_agc == "fixed" and n.thermal_range == (19000.0, 31000.0)
    assert any("thermal normalisation fixed 19000-31000 counts" in m for lvl, m in state.logs if lvl == "INFO")
    node = make_node(standin, model_file=str(path), thermal_range=[1000.0, 9000.0])
    n = node.pipeline.normalization
    assert n.thermal_agc == "fixed" and n.thermal_range == (1000.0, 9000.0)  # that key only
    node = make_node(standin, model_file=str(path), thermal_normalisation="percentile")
    assert node.pipeline.normalization.thermal_agc == "percentile"


def test_reliable_qos_switch(standin, model_files):
    node = make_node(standin, model_file=str(model_files["fusion_only"]), qos_reliability="reliable", qos_depth=3)
    qos = node.subscriptions["/thermal/image"].qos
    assert (qos.reliability, qos.depth) == ("reliable", 3)


def test_runtime_parameter_changes(standin, model_files):
    node = make_node(standin, model_file=str(model_files["fusion_only"]))
    Parameter = sys.modules["rclpy.parameter"].Parameter
    (ok,) = node.set_parameters([Parameter("overlay_alpha", value=0.25)])
    assert ok.successful and node.pipeline.config.overlay_alpha == 0.25
    (bad,) = node.set_parameters([Parameter("overlay_alpha", value=1.5)])
    assert not bad.successful and "overlay_alpha" in bad.reason
    (ro,) = node.set_parameters([Parameter("slop", value=0.2)])
    assert not ro.successful and node.cfg.slop == 0.05


@pytest.mark.parametrize("overrides, expected", [
    ({"model_file": "/nonexistent/model.safetensors"}, "parameter model_file: /nonexistent/model.safetensors does not exist"),
    ({"backend": "tensorrt"}, "parameter backend: 'tensorrt' is not one of auto, torch, onnxruntime"),
    ({"input_height": 50, "input_width": 64}, "parameter input_height/input_width: 50x64 cannot feed network"),
    ({"input_height": 64}, "parameter input_height/input_width: set both"),
    ({"registration": "homography", "homography": [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0]},
     "parameter homography: expected 3x3 (9 numbers, row-major), got 8 numbers"),
    ({"slop": 20.0}, "parameter slop:"),
    ({"slop": 1}, "parameter slop:"),
    ({"modality": "depth"}, "parameter modality: depth but the model was trained on thermal"),
    ({"device": "gpu0"}, "parameter device: 'gpu0' is not cpu, cuda or cuda:N"),
    ({"model_file": ""}, "parameter model_file: model file "),  # built-in model pointed at a missing file
    ({"homography": [1, 0, 0, 0, 1, 0, 0, 0, 1]}, "parameter homography:"),  # integers: rclpy's static typing
])
def test_bad_parameters_fail_at_start_with_one_line(standin, model_files, overrides, expected, monkeypatch, tmp_path):
    state, mod, _ = standin
    monkeypatch.setenv("RGBT_SEG_BUILTIN_MODEL", str(tmp_path / "missing.safetensors"))
    state.overrides = {"model_file": str(model_files["fusion_only"]), **overrides}
    assert mod.main([]) == 2
    fatal = [m for lvl, m in state.logs if lvl == "FATAL"]
    assert len(fatal) == 1 and fatal[0].startswith(expected), state.logs
    assert "\n" not in fatal[0] and not state.initialised


def test_main_spins_and_shuts_down_cleanly(standin, model_files):
    state, mod, _ = standin
    state.overrides = {"model_file": str(model_files["fusion_only"])}
    seen = []
    state.spin_hook = lambda nodes: seen.extend(nodes)
    assert mod.main([]) == 0
    (node,) = seen
    assert node.destroyed and node._slot.closed and not node._worker.is_alive() and not state.initialised


# ------------------------------------------------------------------------- a real (synthetic) bag
def _to_standin(obj):
    """A rosbags message → the stand-in class of the same type, field by field."""
    import array as array_mod

    cls = ros_standin.STATE.reg.cls(obj.__msgtype__)
    out = cls()
    for name in cls._fields:
        v = getattr(obj, name)
        if hasattr(v, "__msgtype__"):
            v = _to_standin(v)
        elif isinstance(v, np.ndarray):
            v = array_mod.array("B", v.tobytes()) if v.dtype == np.uint8 else [float(x) for x in v]
        elif isinstance(v, list):
            v = [_to_standin(x) if hasattr(x, "__msgtype__") else x for x in v]
        setattr(out, name, v)
    return out


@pytest.mark.slow
def test_demo_bag_through_the_node_with_the_demo_parameters(standin, model_files, tmp_path):
    """The demo rig's bag (30 Hz RGB, ~9 Hz thermal with its own clock offset, CameraInfos, an
    extrinsic offset) replayed in log-time order into the node with config/demo_rgbt.yaml."""
    import yaml
    from rosbags.highlevel import AnyReader
    from rosbags.typesys import Stores, get_typestore

    from rgbt_seg_ros.synthetic.demo_bag import DemoBagSpec, write_demo_bag

    state = standin[0]
    bag = write_demo_bag(tmp_path / "demo", DemoBagSpec(frames=10)).path
    params = yaml.safe_load((Path(__file__).resolve().parents[1] / "config" / "demo_rgbt.yaml").read_text())
    params = params["/**/rgbt_seg"]["ros__parameters"]
    params["model_file"] = str(model_files["fusion_only"])  # the tiny test network, not the built-in model
    node = make_node(standin, **params)
    subscribe(node, *OUTS, info=True)
    rgb_headers = {}
    topics = {"/rgb/image": "rgb/image", "/rgb/camera_info": "rgb/camera_info",
              "/thermal/image": "thermal/image", "/thermal/camera_info": "thermal/camera_info"}
    with AnyReader([bag], default_typestore=get_typestore(Stores.ROS2_HUMBLE)) as reader:
        for conn, log_ns, raw in reader.messages():
            msg = _to_standin(reader.deserialize(raw, conn.msgtype))
            state.clock_ns = log_ns
            if conn.topic == "/rgb/image":
                rgb_headers[(msg.header.stamp.sec, msg.header.stamp.nanosec)] = msg.header.frame_id
            node.deliver(topics[conn.topic], msg)
            c = node.counters
            assert wait_for(lambda: len(node._slot) == 0 and
                            c.pairs_processed + c.pairs_dropped + c.bad_messages == c.pairs_synced + c.pairs_rgb_only)
        n_thermal = sum(conn.msgcount for conn in reader.connections if conn.topic == "/thermal/image")
    c = node.counters
    # The bag logs a thermal image just before its CameraInfo: the very first pair cannot be
    # registered yet and is skipped with a clear reason; every later one must go through.
    assert c.bad_messages <= 1, node._last_error
    if c.bad_messages:
        assert node._last_error[0].startswith("thermal/camera_info: no CameraInfo received yet")
    assert c.pairs_synced == n_thermal and c.pairs_rgb_only == 0  # every thermal frame found its RGB partner
    assert c.pairs_processed == n_thermal - c.bad_messages
    infos = published(node, "info")
    assert len(infos) == c.pairs_processed >= 1
    for info in infos:
        assert abs(info.pair_skew) <= params["slop"] and info.aux_used
    for name in OUTS:
        for out in published(node, name):
            assert rgb_headers[(out.header.stamp.sec, out.header.stamp.nanosec)] == out.header.frame_id
            assert (out.height, out.width) == (720, 1280)
