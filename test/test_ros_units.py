"""The ROS-free parts of rgbt_seg_ros/ros: parameter specs and validation, the latest-only slot,
stream health, /diagnostics content and message filling. No ROS, no stand-in."""
from __future__ import annotations

import threading
from collections import deque
import time
import types

import numpy as np
import pytest

from rgbt_seg_ros.errors import RgbtSegError
from rgbt_seg_ros.pipeline.timing import LatencyStats
from rgbt_seg_ros.ros import health, messages
from rgbt_seg_ros.ros.params import (PARAMS, SPECS, check_device, pipeline_config_dict, resolve_against_card,
                                    validate_params)
from rgbt_seg_ros.ros.slot import LatestSlot


# ------------------------------------------------------------------------------------ parameters
def test_every_parameter_has_a_description_and_a_sane_default():
    for spec in PARAMS:
        assert len(spec.description) > 15, spec.name
        if spec.range:
            assert spec.range[0] <= spec.default <= spec.range[1], spec.name
        if spec.choices:
            assert spec.default in spec.choices, spec.name
    validate_params({})  # the defaults alone are valid


@pytest.mark.parametrize("values, fragment", [
    ({"qos_reliability": "fast"}, "parameter qos_reliability: 'fast' is not one of best_effort, reliable"),
    ({"queue_size": 0}, "parameter queue_size: 0 is outside [1, 1000]"),
    ({"overlay_alpha": 1.5}, "parameter overlay_alpha: 1.5 is outside [0.0, 1.0]"),
    ({"registration": "homography", "homography": [0.0] * 9}, "parameter homography: the 3x3 matrix is singular"),
    ({"registration": "homography", "homography": [1.0] * 10}, "parameter homography: expected 3x3"),
    ({"registration": "plane", "extrinsic_rotation": [2.0, 0, 0, 0, 1, 0, 0, 0, 1]},
     "parameter extrinsic_rotation: not a rotation matrix"),
    ({"thermal_range": [100.0, 10.0]}, "parameter thermal_range: [100.0, 10.0] needs min < max"),
    ({"thermal_percentiles": [-1.0, 99.0]}, "parameter thermal_percentiles"),
    ({"depth_range": [0.0, -1.0]}, "parameter depth_range: [0.0, -1.0] needs min < max"),  # only [0, 0] = card's
    ({"thermal_normalisation": "agc"}, "parameter thermal_normalisation: 'agc' is not one of auto, percentile"),
    ({"model_file": "/tmp/model.pt"}, "parameter model_file: /tmp/model.pt does not exist"),
    ({"extrinsics_file": "/nope/camchain.yaml#cam0,cam1"}, "parameter extrinsics_file: /nope/camchain.yaml does not exist"),
    ({"frame_rate": 30}, "parameter frame_rate: unknown parameter"),
    ({"overlay": "yes"}, "parameter overlay: expected true or false"),
    ({"device_ops": "gpu"}, "parameter device_ops: 'gpu' is not one of auto, on, off"),
    ({"compile_mode": "max"}, "parameter compile_mode: 'max' is not one of off, default, reduce-overhead"),
])
def test_bad_values_give_one_line_naming_the_parameter(values, fragment):
    with pytest.raises(RgbtSegError) as err:
        validate_params(values)
    assert str(err.value).startswith(fragment) and "\n" not in str(err.value)


def test_model_file_with_wrong_suffix(tmp_path):
    p = tmp_path / "model.pt"
    p.write_bytes(b"x")
    with pytest.raises(RgbtSegError, match="parameter model_file: .* is neither .safetensors nor .onnx"):
        validate_params({"model_file": str(p)})


def test_card_resolution():
    card = types.SimpleNamespace(modality="depth", network="fusion_baseline")
    cfg = resolve_against_card(validate_params({}), card)
    assert cfg.modality == "depth"
    with pytest.raises(RgbtSegError, match="registration: depth reprojection needs modality depth"):
        resolve_against_card(validate_params({"registration": "depth"}),
                             types.SimpleNamespace(modality="thermal", network="x"))
    with pytest.raises(RgbtSegError, match="cannot feed network x"):
        resolve_against_card(validate_params({"input_height": 480, "input_width": 650}),
                             types.SimpleNamespace(modality="thermal", network="x"), size_multiple=32)


def test_fixed_size_graph_and_missing_cuda():
    card = types.SimpleNamespace(modality="thermal", network="x")
    with pytest.raises(RgbtSegError, match="480x640 but the ONNX graph takes only 384x640"):
        resolve_against_card(validate_params({"input_height": 480, "input_width": 640}), card, fixed_hw=(384, 640))
    resolve_against_card(validate_params({"input_height": 384, "input_width": 640}), card, fixed_hw=(384, 640))
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(RgbtSegError, match=r"^parameter device: cuda:1 asked for, but torch sees 0 CUDA device"):
        check_device(validate_params({"device": "cuda:1"}))
    check_device(validate_params({"device": "cuda", "backend": "onnxruntime"}))  # onnxruntime checks its own


def test_pipeline_config_accepts_the_node_parameters():
    from rgbt_seg_ros.pipeline.config import PipelineConfig

    cfg = validate_params({"registration": "homography", "homography": [1.0, 0, 5, 0, 1, -2, 0, 0, 1],
                           "input_height": 320, "input_width": 640, "thermal_normalisation": "fixed",
                           "thermal_range": [1000.0, 9000.0], "overlay_alpha": 0.3, "resize_mode": "letterbox",
                           "device_ops": "off"})
    pc = PipelineConfig.from_dict(pipeline_config_dict(cfg))
    assert pc.device_ops == "off"
    assert pc.registration.mode == "homography" and pc.registration.homography[0][2] == 5.0
    assert pc.input_size == (320, 640) and pc.overlay_alpha == 0.3 and pc.resize_mode == "letterbox"
    assert pc.normalization.thermal_agc == "fixed" and pc.normalization.thermal_range == (1000.0, 9000.0)
    # left at their defaults, the normalisation parameters pass nothing: the model card decides
    untouched = PipelineConfig.from_dict(pipeline_config_dict(validate_params({})))
    assert untouched.normalization.explicit_keys == frozenset()
    card_norm = {"thermal_agc": "fixed", "thermal_range": [19000, 31000], "depth_range": [0.5, 5.0]}
    assert untouched.normalization.over_card(card_norm).thermal_range == (19000.0, 31000.0)
    only = PipelineConfig.from_dict(pipeline_config_dict(validate_params({"depth_range": [0.2, 6.0]})))
    merged = only.normalization.over_card(card_norm)
    assert merged.depth_range == (0.2, 6.0) and merged.thermal_agc == "fixed"
    plane = PipelineConfig.from_dict(pipeline_config_dict(validate_params(
        {"registration": "plane", "extrinsic_translation": [0.1, 0.0, 0.0], "plane_distance": 20.0})))
    assert plane.registration.extrinsics["t"] == [0.1, 0.0, 0.0] and plane.registration.plane_distance == 20.0
    assert set(SPECS) >= {"model_file", "backend", "device", "precision", "slop", "queue_size", "aux_timeout"}


# ---------------------------------------------------------------------------------- latest slot
def test_slot_keeps_only_the_newest_and_counts_drops():
    s = LatestSlot()
    assert s.put(1) is False and s.put(2) is True and s.put(3) is True
    assert len(s) == 1 and s.dropped == 2 and s.put_count == 3
    assert s.take(timeout=0) == 3 and s.take(timeout=0.01) is None and len(s) == 0


def test_slot_wakes_the_consumer_and_closes():
    s = LatestSlot()
    got = []
    t = threading.Thread(target=lambda: got.append(s.take(timeout=5)))
    t.start()
    time.sleep(0.05)
    s.put("pair")
    t.join(2)
    assert got == ["pair"]
    t2 = threading.Thread(target=lambda: got.append(s.take()))
    t2.start()
    s.close()
    t2.join(2)
    assert not t2.is_alive() and got[-1] is None and s.closed


def test_slot_under_a_fast_producer_stays_one_deep():
    s = LatestSlot()
    taken = []

    def consume():
        while not s.closed:
            item = s.take(timeout=0.05)
            if item is not None:
                taken.append(item)
                time.sleep(0.01)  # slow consumer

    t = threading.Thread(target=consume)
    t.start()
    for i in range(300):
        s.put(i)
        assert len(s) <= 1
        time.sleep(0.0005)
    time.sleep(0.1)
    s.close()
    t.join(2)
    assert taken == sorted(taken) and taken[-1] == 299  # newest always wins, never out of order
    assert len(taken) + s.dropped == 300 and s.dropped > 100


# ----------------------------------------------------------------------------------- health
def test_stream_monitor_rate_age_and_backwards_clock():
    m = health.StreamMonitor("rgb")
    for k in range(31):
        m.tick(100.0 + k / 30)
    assert m.rate(101.0) == pytest.approx(30.0, rel=1e-6) and m.age(101.5) == pytest.approx(0.5)
    assert not m.stale(101.2, 0.5, started=0.0) and m.stale(102.0, 0.5, started=0.0)
    m.tick(5.0)  # a looping bag: the window restarts instead of giving a negative rate
    assert m.rate(5.0) == 0.0 and m.age(5.0) == 0.0
    fresh = health.StreamMonitor("thermal")
    assert not fresh.stale(10.4, 0.5, started=10.0) and fresh.stale(10.6, 0.5, started=10.0)


def _diag(**kw):
    rgb, aux = health.StreamMonitor("rgb"), health.StreamMonitor("thermal")
    aux_frames = kw.pop("aux_frames", 10)
    for k in range(10):
        rgb.tick(k * 0.1)
        if k < aux_frames:
            aux.tick(k * 0.1)
    c = health.Counters(pairs_synced=5, pairs_processed=4, pairs_dropped=1, skews=deque([0.01, -0.03]))
    lat = LatencyStats()
    lat.add({"infer": 10.0})
    lat.add({"infer": 30.0})
    args = dict(node_name="rgbt_seg", now=0.95, started=0.0, rgb=rgb, aux=aux, modality="thermal",
                aux_timeout=0.3, rgb_only_possible=False, counters=c, latency=lat, output_rate=4.0)
    args.update(kw)
    return {e.name.split(": ")[1]: e for e in health.build_diagnostics(**args)}


def test_diagnostics_levels():
    ok = _diag()
    assert [e.level for e in ok.values()] == [health.OK] * 4
    assert ok["sync"].values["skew_abs_max_s"] == "0.030" and ok["inference"].values["infer_ms_p50"] == "20.00"
    lost = _diag(aux_frames=3)
    assert lost["thermal input"].level == health.ERROR
    assert _diag(aux_frames=3, rgb_only_possible=True)["thermal input"].level == health.WARN
    assert _diag(now=5.0)["rgb input"].level == health.ERROR
    assert _diag(last_error="topic x: bad")["inference"].level == health.WARN


# ---------------------------------------------------------------------------------- messages
def _header(sec=4, nsec=7, frame="cam_rgb"):
    return types.SimpleNamespace(stamp=types.SimpleNamespace(sec=sec, nanosec=nsec), frame_id=frame)


def _blank_image():
    return types.SimpleNamespace(header=_header(0, 0, ""), height=0, width=0, encoding="", is_bigendian=0,
                                 step=0, data=b"")


@pytest.mark.parametrize("array, encoding", [
    (np.arange(12, dtype=np.uint8).reshape(3, 4), "mono8"),
    (np.arange(12, dtype=np.uint16).reshape(3, 4) * 1000, "mono16"),
    (np.zeros((3, 4, 3), np.uint8) + 7, "rgb8"),
    (np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4), "32FC1"),
])
def test_fill_image_round_trips_through_io(array, encoding):
    from rgbt_seg_ros.io.image import image_to_numpy

    msg = messages.fill_image(_blank_image(), array, _header())
    assert msg.encoding == encoding and (msg.header.stamp.sec, msg.header.frame_id) == (4, "cam_rgb")
    np.testing.assert_array_equal(image_to_numpy(msg), array)


def test_fill_image_rejects_unpublishable_arrays():
    with pytest.raises(RgbtSegError, match="output image: no encoding for dtype float64"):
        messages.fill_image(_blank_image(), np.zeros((2, 2)), _header())


def test_info_message_same_as_replay_with_total_out_of_the_stages():
    """The node's SegmentationInfo (fill_info on rclpy-like objects) and replay's (rosbags class) carry the
    same content for one real pipeline result; the pipeline's ``total`` is a latency, not a stage."""
    from rgbt_seg_ros.io.bag import output_typestore
    from rgbt_seg_ros.pipeline.pipeline import SegmentationPipeline
    from rgbt_seg_ros.tools.demo import untrained_backend
    from rgbt_seg_ros.tools.replay import ReplaySettings, _info_msg

    backend = untrained_backend(input_size=(32, 48))
    rng = np.random.default_rng(0)
    result = SegmentationPipeline(backend).process(rng.integers(0, 255, (60, 80, 3), dtype=np.uint8),
                                                   rng.integers(0, 40000, (48, 64), dtype=np.uint16), "mono16")
    assert "total" in result.timings and len(result.timings) > 2
    node = messages.fill_info(
        types.SimpleNamespace(header=_header(0, 0, "")), header=_header(), card=backend.card,
        model_file="m.safetensors", modality="thermal", aux_used=True, pair_skew=0.004, latency_total_ms=42.0,
        timings=result.timings, pairs_processed=3, pairs_dropped=0, frames_unpaired=2,
        colour_factory=types.SimpleNamespace)
    store = output_typestore()
    Header, Time = store.types["std_msgs/msg/Header"], store.types["builtin_interfaces/msg/Time"]
    replay = _info_msg(store, Header(stamp=Time(sec=4, nanosec=7), frame_id="cam_rgb"), backend.card,
                       ReplaySettings(model_file="m.safetensors"), result, 0.004, 3, 2)

    stages = [k for k in result.timings if k != "total"]
    assert node.stage_names == stages and list(replay.stage_names) == stages
    np.testing.assert_allclose(replay.stage_latency_ms, node.stage_latency_ms, rtol=1e-6)
    np.testing.assert_allclose(node.stage_latency_ms, [result.timings[k] for k in stages])
    # each its own end-to-end figure: the node's receive→publish, replay's pipeline total (spans the stages)
    assert node.latency_total_ms == 42.0
    assert replay.latency_total_ms == pytest.approx(result.timings["total"])
    assert replay.latency_total_ms >= sum(replay.stage_latency_ms) * (1 - 1e-6)
    for name in ("model_name", "model_file", "modality", "aux_used", "pair_skew", "pairs_processed",
                 "pairs_dropped", "frames_unpaired"):
        assert getattr(node, name) == getattr(replay, name), name
    assert list(node.class_names) == list(replay.class_names) == list(backend.card.class_names)
    assert node.model_name == backend.card.network + f"/{backend.card.variant}"
    assert [(c.r, c.g, c.b, c.a) for c in node.colours] == [(c.r, c.g, c.b, c.a) for c in replay.colours]
    assert node.colours[1].g == pytest.approx(backend.card.palette[1][1] / 255)
    assert (node.header.stamp.sec, node.header.stamp.nanosec, node.header.frame_id) == (4, 7, "cam_rgb")
