"""Approximate-time pairing against hand-computed expected pairs on adversarial stamp streams."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from rgbt_seg_ros.errors import RgbtSegError
from rgbt_seg_ros.pipeline.sync import ApproximateTimePairer, LatestCameraInfo, stamp_seconds


def run(events, **kw):
    """Feed (stream, stamp) events; return the pairer and the pairs as (rgb_stamp, aux_stamp) rounded to µs."""
    p = ApproximateTimePairer(**kw)
    pairs = []
    for stream, t in events:
        for pr in p.add(stream, t, (stream, t)):
            assert pr.rgb == ("rgb", pr.rgb_stamp) and pr.aux == ("aux", pr.aux_stamp)
            pairs.append((round(pr.rgb_stamp, 6), round(pr.aux_stamp, 6)))
    return p, pairs


def merged(rgb, aux, aux_latency=0.0):
    """Arrival order: by arrival time = stamp (+ latency for aux); rgb first on ties."""
    ev = [(t, 0, "rgb", t) for t in rgb] + [(t + aux_latency, 1, "aux", t) for t in aux]
    return [(s, t) for _, _, s, t in sorted(ev)]


def test_identical_stamps_pair_one_to_one():
    ts = [i * 0.1 for i in range(10)]
    p, pairs = run(merged(ts, ts), slop=0.01)
    # equal stamps are final at once: no later message can be closer than 0
    assert pairs == [(round(t, 6), round(t, 6)) for t in ts]
    assert p.stats.pairs == 10 and p.queued("rgb") == p.queued("aux") == 0


def test_jitter_pairs_nearest():
    rgb = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5]
    aux = [0.012, 0.093, 0.207, 0.288, 0.411, 0.505]
    _, pairs = run(merged(rgb, aux, aux_latency=0.02), slop=0.02)
    assert pairs == [(0.0, 0.012), (0.1, 0.093), (0.2, 0.207), (0.3, 0.288), (0.4, 0.411)]


def test_rate_30_to_9_hand_computed():
    rgb = [k / 30 for k in range(31)]
    aux = [0.005 + m / 9 for m in range(9)]
    p, pairs = run(merged(rgb, aux, aux_latency=0.03), slop=0.02, queue_size=10)
    # nearest rgb index per thermal stamp, worked out by hand: 0.005→0, 0.1161→3 (0.1), 0.2272→7, 0.3383→10,
    # 0.4494→13, 0.5606→17, 0.6717→20, 0.7828→23, 0.8939→27
    expect = [(round(k / 30, 6), round(0.005 + m / 9, 6)) for m, k in enumerate([0, 3, 7, 10, 13, 17, 20, 23, 27])]
    # the last thermal frame waits: a later thermal frame could still be closer to rgb 0.9
    assert pairs == expect[:-1]
    out = p.add("aux", 0.005 + 9 / 9)
    assert [(round(x.rgb_stamp, 6), round(x.aux_stamp, 6)) for x in out][:1] == expect[-1:]
    pairs.append(expect[-1])
    assert p.stats.dropped["aux"]["unmatched"] == 0
    # rgb frames with no thermal partner are dropped, never queued forever
    assert p.stats.dropped_total("rgb") + p.queued("rgb") + p.stats.pairs == len(rgb)
    assert p.queued("rgb") <= 10


def test_rate_30_to_60():
    rgb = [k / 30 for k in range(10)]
    aux = [0.002 + m / 60 for m in range(20)]
    p, pairs = run(merged(rgb, aux), slop=0.005)
    # rgb 0.3 waits for a later rgb frame (one could be closer to aux 0.302)
    assert pairs == [(round(k / 30, 6), round(0.002 + 2 * k / 60, 6)) for k in range(9)]
    assert p.stats.dropped["aux"]["unmatched"] == 9  # the odd aux frames between rgb frames
    assert p.queued("aux") == 2 and p.queued("rgb") == 1


def test_dropped_frames_leave_rgb_unpaired():
    rgb = [i * 0.1 for i in range(8)]
    aux = [t + 0.004 for i, t in enumerate(rgb) if i not in (2, 3, 5)]
    p, pairs = run(merged(rgb, aux), slop=0.01)
    assert [a for a, _ in pairs] == [0.0, 0.1, 0.4, 0.6]
    assert p.stats.dropped["rgb"]["unmatched"] == 3


def test_smallest_spread_wins_not_first_come():
    # A: 0, 10 ; B: 6, 11 (×10 ms). 6's nearest A is 10 but 10's nearest B is 11 → the only pair is (10, 11)
    ev = [("rgb", 0.00), ("aux", 0.06), ("rgb", 0.10), ("aux", 0.11), ("rgb", 0.20), ("aux", 0.25)]
    p, pairs = run(ev, slop=0.07)
    assert pairs[0] == (0.1, 0.11)
    assert p.stats.dropped["rgb"]["unmatched"] >= 1 and p.stats.dropped["aux"]["unmatched"] == 1


def test_out_of_order_arrivals_are_reordered():
    # undecided messages arriving out of order are put back in stamp order
    ev = [("rgb", 0.1), ("rgb", 0.0), ("aux", 0.001), ("rgb", 0.2), ("aux", 0.199), ("aux", 0.101), ("rgb", 0.3),
          ("aux", 0.301), ("rgb", 0.4), ("aux", 0.401), ("rgb", 0.5), ("aux", 0.501), ("rgb", 0.6), ("aux", 0.601),
          ("rgb", 0.7)]
    expect = [(0.0, 0.001), (0.1, 0.101), (0.2, 0.199), (0.3, 0.301), (0.4, 0.401)]
    p, pairs = run(ev, slop=0.01, reorder_window=0.15)
    assert pairs == expect
    assert p.stats.dropped_total("aux") == 0 and p.stats.dropped_total("rgb") == 0
    # without the reorder window, aux 0.199 arriving before 0.101 makes rgb 0.1 look unmatched
    p0, pairs0 = run(ev, slop=0.01)
    assert (0.1, 0.101) not in pairs0 and p0.stats.dropped["rgb"]["unmatched"] == 1


def test_message_older_than_a_decision_is_late():
    ev = [("rgb", 0.0), ("aux", 0.001), ("rgb", 0.1), ("aux", 0.101), ("rgb", 0.2), ("aux", 0.05)]
    p, pairs = run(ev, slop=0.01)
    assert pairs == [(0.0, 0.001), (0.1, 0.101)]
    assert p.stats.dropped["aux"]["late"] == 1


def test_stream_that_stops_keeps_partner_bounded():
    ev = [("rgb", 0.0), ("aux", 0.0)] + [("rgb", 0.1 * i) for i in range(1, 101)]
    p, pairs = run(ev, queue_size=5, slop=0.01)
    assert pairs == [(0.0, 0.0)]
    assert p.queued("rgb") == 5 and p.queued("aux") == 0
    assert p.stats.dropped["rgb"]["overflow"] == 100 - 5
    # the partner comes back: pairing resumes with the queued frames
    _ = p.add("aux", 10.001, ("aux", 10.001))
    out = p.add("rgb", 10.1, ("rgb", 10.1))
    assert [(round(x.rgb_stamp, 3), round(x.aux_stamp, 3)) for x in out] == [(10.0, 10.001)]


def test_backwards_clock_jump_resets_instead_of_wedging():
    loop = [("rgb", 100 + 0.1 * i) for i in range(5)] + [("aux", 100 + 0.1 * i + 0.002) for i in range(5)]
    loop.sort(key=lambda e: e[1])
    again = [(s, t - 100) for s, t in loop]  # the bag loops: stamps start from 0 again
    p, pairs = run(loop + again, slop=0.01, reset_threshold=1.0)
    assert p.stats.resets == 1
    first = [(round(100 + 0.1 * i, 6), round(100 + 0.1 * i + 0.002, 6)) for i in range(4)]
    second = [(round(0.1 * i, 6), round(0.1 * i + 0.002, 6)) for i in range(4)]
    assert pairs == first + second
    assert p.stats.dropped["aux"]["late"] == 0


def test_a_loop_shorter_than_the_reset_threshold_resets_after_a_run_of_late_messages():
    # a 0.5 s bag played five times: each jump back (0.5 s) is under reset_threshold (1 s)
    one = [("rgb", i / 30) for i in range(15)] + [("aux", i / 30 + 0.003) for i in range(15)]
    one.sort(key=lambda e: e[1])
    p, pairs = run(one * 5, slop=0.02, reset_threshold=1.0)
    assert p.stats.resets == 4  # once per jump, after LATE_RUN_RESET late messages of a stream
    # per loop after the first: the first two frames of each stream are dropped as late, one queued frame per
    # stream is dropped by the reset, and the last one waits (no later frame yet) until the next loop resets it
    assert len(pairs) == 14 + 4 * 12 and p.stats.dropped["rgb"]["late"] == 4 * 2
    assert pairs[-12:] == [(round(i / 30, 6), round(i / 30 + 0.003, 6)) for i in range(2, 14)]
    # isolated late messages (out-of-order arrivals) do not reset
    ev = [("rgb", 0.0), ("aux", 0.001), ("rgb", 0.1), ("aux", 0.101), ("rgb", 0.2), ("aux", 0.05), ("aux", 0.201),
          ("rgb", 0.3), ("aux", 0.15), ("aux", 0.301), ("rgb", 0.4)]
    p, pairs = run(ev, slop=0.01)
    assert p.stats.resets == 0 and p.stats.dropped["aux"]["late"] == 2
    assert pairs == [(0.0, 0.001), (0.1, 0.101), (0.2, 0.201), (0.3, 0.301)]


def test_a_repeated_stamp_is_not_late_and_arrival_order_does_not_matter():
    # the same streams (rgb stamps 1.0 twice, aux 1.0 and 1.02) in two arrival orders: the same pairs
    for order in (["rgb", "rgb", "aux", "aux"], ["rgb", "aux", "rgb", "aux"]):
        stamps = {"rgb": [1.0, 1.0], "aux": [1.0, 1.02]}
        ev = [(s, stamps[s].pop(0)) for s in order]
        p, pairs = run(ev, slop=0.05)
        pairs += [(round(x.rgb_stamp, 6), round(x.aux_stamp, 6)) for x in p.flush()]
        assert pairs == [(1.0, 1.0), (1.0, 1.02)], order
        assert p.stats.dropped["rgb"]["late"] == 0


def test_deterministic_for_same_sequence():
    rng = np.random.default_rng(3)
    rgb = np.cumsum(rng.uniform(0.02, 0.045, 200))
    aux = np.cumsum(rng.uniform(0.08, 0.14, 60)) + 0.01
    ev = merged(list(rgb), list(aux), aux_latency=0.015)
    swaps = rng.integers(0, len(ev) - 1, 30)
    for i in swaps:  # adjacent reorderings
        ev[i], ev[i + 1] = ev[i + 1], ev[i]
    p1, pairs1 = run(ev, slop=0.03, queue_size=8)
    p2, pairs2 = run(ev, slop=0.03, queue_size=8)
    assert pairs1 == pairs2 and p1.stats.as_dict() == p2.stats.as_dict()
    assert len(pairs1) > 40
    assert all(abs(a - b) <= 0.03 + 1e-9 for a, b in pairs1)
    assert all(x[0] < y[0] and x[1] < y[1] for x, y in zip(pairs1, pairs1[1:]))  # time order, each used once
    s = p1.stats.skew_summary()
    assert 0 <= s["p50_ms"] <= s["p95_ms"] <= s["max_ms"] <= 30.0 + 1e-6


def test_stamps_from_messages_and_bad_parameters():
    assert stamp_seconds(SimpleNamespace(sec=3, nanosec=500_000_000)) == 3.5
    assert stamp_seconds(SimpleNamespace(secs=2, nsecs=250_000_000)) == 2.25
    hdr = SimpleNamespace(header=SimpleNamespace(stamp=SimpleNamespace(sec=1, nanosec=0)))
    assert stamp_seconds(hdr) == 1.0
    for q in (0, 1):  # one slot pairs nothing before flush(): a pair waits for a later message of its stream
        with pytest.raises(RgbtSegError, match="queue_size: must be ≥ 2"):
            ApproximateTimePairer(queue_size=q)
    with pytest.raises(RgbtSegError, match="slop"):
        ApproximateTimePairer(slop=-1)
    with pytest.raises(RgbtSegError, match="stream"):
        ApproximateTimePairer().add("depth", 0.0)


def _info(fx, lower=True, stamp=0.0):
    k = [fx, 0, 320, 0, fx, 240, 0, 0, 1]
    hdr = SimpleNamespace(stamp=SimpleNamespace(sec=int(stamp), nanosec=int((stamp % 1) * 1e9)), frame_id="cam")
    if lower:
        return SimpleNamespace(header=hdr, k=k, d=[0.0] * 5, width=640, height=480, distortion_model="plumb_bob")
    return SimpleNamespace(header=hdr, K=k, D=[0.0] * 5, width=640, height=480, distortion_model="plumb_bob")


def test_latest_camera_info():
    h = LatestCameraInfo("thermal/camera_info", max_age=2.0)
    assert h.get() is None
    h.update(_info(500.0, stamp=1.0))
    m1 = h.get(at=1.5)
    assert m1.K[0, 0] == 500.0
    h.update(_info(500.0, stamp=1.2))
    assert h.get() is m1  # same geometry: the model is not rebuilt
    h.update(_info(510.0, lower=False, stamp=1.3))  # a ROS 1 message with upper-case fields
    assert h.get().K[0, 0] == 510.0 and h.stamp == pytest.approx(1.3)
    assert h.get(at=10.0) is None  # older than max_age at the image's stamp
    cropped = _info(510.0, stamp=1.4)
    cropped.roi = SimpleNamespace(x_offset=80, y_offset=60, width=480, height=360)  # only the window changes
    h.update(cropped)
    assert (h.get().width, h.get().K[0, 2]) == (480, 240.0)


def test_unusable_camera_info_is_reported_not_raised():
    h = LatestCameraInfo("thermal/camera_info")
    info = _info(500.0)
    info.k = [0.0] * 9  # an uncalibrated driver
    h.update(info)
    assert h.get() is None and "thermal/camera_info" in h.error and "uncalibrated" in h.error
    h.update(_info(500.0))
    assert h.get() is not None and h.error is None


def _stamps(pairs):
    return [(round(x.rgb_stamp, 6), round(x.aux_stamp, 6)) for x in pairs]


def _accounted(p):
    """Every received message is paired or dropped once nothing is queued."""
    return all(p.queued(s) == 0 and p.stats.pairs + p.stats.dropped_total(s) == p.stats.received[s]
               for s in ("rgb", "aux"))


def test_flush_emits_the_last_thermal_frame():
    rgb = [k / 30 for k in range(28)]  # the bag ends at rgb 0.9, just after the last thermal frame
    aux = [0.005 + m / 9 for m in range(9)]
    p, pairs = run(merged(rgb, aux, aux_latency=0.03), slop=0.02, queue_size=10)
    expect = [(round(k / 30, 6), round(0.005 + m / 9, 6)) for m, k in enumerate([0, 3, 7, 10, 13, 17, 20, 23, 27])]
    assert pairs == expect[:-1]  # aux 0.8939 waits: a later thermal frame could be closer to rgb 0.9
    assert _stamps(p.flush()) == expect[-1:]
    assert p.stats.dropped["aux"]["unmatched"] == 0 and _accounted(p)
    assert p.flush() == [] and _accounted(p)  # idempotent


def test_flush_keeps_the_nearest_rule():
    # rgb 0.0 and 0.01, aux 0.03: without a later rgb the wait never ends; at the end aux 0.03's nearest
    # rgb is 0.01, so rgb 0.0 is dropped (its only partner prefers another frame)
    p, pairs = run([("rgb", 0.0), ("rgb", 0.01), ("aux", 0.03)], slop=0.05)
    assert pairs == []
    assert _stamps(p.flush()) == [(0.01, 0.03)]
    assert p.stats.dropped["rgb"]["unmatched"] == 1 and _accounted(p)


def test_flush_30_to_60_hand_computed():
    rgb = [k / 30 for k in range(10)]
    aux = [0.002 + m / 60 for m in range(20)]
    p, pairs = run(merged(rgb, aux), slop=0.005)
    assert len(pairs) == 9 and p.queued("aux") == 2 and p.queued("rgb") == 1
    # rgb 0.3 goes with aux 0.302; aux 0.3187 is 18.7 ms from anything: unmatched
    assert _stamps(p.flush()) == [(0.3, 0.302)]
    assert p.stats.dropped["aux"]["unmatched"] == 10 and _accounted(p)


def test_flush_releases_the_reorder_window():
    ev = [("rgb", 0.0), ("aux", 0.001), ("rgb", 0.1), ("aux", 0.101), ("rgb", 0.2)]
    p, pairs = run(ev, slop=0.01, reorder_window=0.15)
    assert pairs == []  # all still held back by the window
    assert _stamps(p.flush()) == [(0.0, 0.001), (0.1, 0.101)]
    assert p.stats.dropped["rgb"]["unmatched"] == 1 and _accounted(p)


def test_flush_equals_far_future_sentinels():
    """flush() decides as if one more message per stream came much later (such a message can be nobody's
    nearest partner, so it only ends the waits). The queue is large enough that the sentinels overflow nothing."""
    rng = np.random.default_rng(11)
    for trial in range(40):
        rgb = list(np.cumsum(rng.uniform(0.01, 0.06, rng.integers(1, 40))))
        aux = list(np.cumsum(rng.uniform(0.01, 0.12, rng.integers(1, 20))) + rng.uniform(-0.02, 0.02))
        ev = merged(rgb, aux, aux_latency=float(rng.uniform(0, 0.05)))
        kw = dict(slop=float(rng.uniform(0.0, 0.04)), queue_size=100)
        p, pairs = run(ev, **kw)
        flushed = _stamps(p.flush())
        ref, ref_pairs = run(ev + [("aux", 1e6), ("rgb", 1e6 + 1.0)], **kw)
        assert pairs + flushed == ref_pairs, trial
        assert p.stats.dropped["rgb"] == ref.stats.dropped["rgb"]
        ref.stats.dropped["aux"]["unmatched"] -= 1  # the aux sentinel
        assert p.stats.dropped["aux"] == ref.stats.dropped["aux"] and _accounted(p)
