"""Approximate-time pairing of the RGB stream with the thermal/depth stream, and latest-seen CameraInfos.

``ApproximateTimePairer`` follows the policy of message_filters' ApproximateTimeSynchronizer for two
streams: among the queued messages it emits the pair with the smallest time difference, each message is
used at most once, pairs come out in time order, and a pair is emitted only once no later arrival can give
a better one for either of its messages (assuming each stream's stamps increase). Like message_filters,
``queue_size`` bounds each stream's queue and ``slop`` (seconds) is the largest stamp difference of a pair.

Decision rule (two streams). Let x be the oldest queued message overall and p the oldest of the other
stream (x's nearest partner now and forever, since later arrivals are later in time):

* |t_p − t_x| > slop → x can never be paired: dropped ("unmatched").
* otherwise, once x's stream holds a message stamped ≥ t_p, p's nearest partner in x's stream is known;
  if it is x, (x, p) is emitted; if not, x is dropped (p prefers a later message, and every other partner
  of x is further away). Until then nothing is decided (the same wait message_filters has).

Where this differs from message_filters:

* two streams only; CameraInfos are not paired (real bags stamp them differently): ``LatestCameraInfo``
  keeps the latest one seen per camera;
* no ``age_penalty`` / inter-message lower bounds: decisions wait for the next message of the stream;
* out-of-order arrivals are inserted in stamp order while still undecided; a message older than what was
  already decided on its stream is dropped and counted as ``late`` (message_filters would only warn).
  Decisions assume each stream arrives in stamp order; ``reorder_window`` (seconds, default 0) holds each
  message back until its stream has shown a stamp that much newer, so reorderings up to that size are
  undone before any decision (at the cost of that much latency);
* a stamp that jumps backwards by more than ``reset_threshold`` seconds (a looping bag, a restarted driver)
  clears all queues and starts afresh (counted in ``resets``) instead of waiting forever; so does a smaller
  jump (a bag shorter than ``reset_threshold`` played in a loop), once ``LATE_RUN_RESET`` messages in a row of
  one stream have come in older than what was decided on it (isolated late messages do not reset);
* every drop is counted per stream and per reason, and pair skews are kept for statistics;
* ``flush()`` decides every pending message as if no more will arrive (the end of a bag): the wait
  above is skipped, since p's nearest partner among the queued messages is then final; what is left
  unpaired is dropped as ``unmatched``. A live stream has no end: the node never calls it.

Same arrival sequence → same pairs and counters (no wall-clock time is used).
"""
from __future__ import annotations

import bisect
import heapq
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from rgbt_seg_ros.errors import RgbtSegError

STREAMS = ("rgb", "aux")
DROP_REASONS = ("overflow", "unmatched", "late", "reset")
LATE_RUN_RESET = 3  # consecutive late messages on one stream taken as its clock having gone back


def stamp_seconds(stamp: Any) -> float:
    """float seconds from a float/int, a ROS 2 ``builtin_interfaces/Time`` (sec, nanosec), a ROS 1 time
    (secs, nsecs) or a message with a ``header``."""
    if isinstance(stamp, (int, float, np.integer, np.floating)):
        return float(stamp)
    if hasattr(stamp, "header"):
        stamp = stamp.header.stamp
    if hasattr(stamp, "nanosec"):
        return float(stamp.sec) + float(stamp.nanosec) * 1e-9
    if hasattr(stamp, "nsecs"):
        return float(stamp.secs) + float(stamp.nsecs) * 1e-9
    raise RgbtSegError(f"stamp: cannot read a time from {type(stamp).__name__}")


@dataclass(frozen=True)
class Pair:
    rgb: Any
    aux: Any
    rgb_stamp: float
    aux_stamp: float

    @property
    def skew(self) -> float:
        """aux stamp − rgb stamp, seconds."""
        return self.aux_stamp - self.rgb_stamp


@dataclass
class SyncStats:
    pairs: int = 0
    received: dict[str, int] = field(default_factory=lambda: {s: 0 for s in STREAMS})
    dropped: dict[str, dict[str, int]] = field(default_factory=lambda: {s: {r: 0 for r in DROP_REASONS} for s in STREAMS})
    resets: int = 0
    skews: deque = field(default_factory=lambda: deque(maxlen=1000))  # recent |skew| values, seconds

    def dropped_total(self, stream: str) -> int:
        return sum(self.dropped[stream].values())

    def skew_summary(self) -> dict[str, float]:
        """Statistics of |aux − rgb| stamp differences over the recent pairs, in milliseconds."""
        if not self.skews:
            return {"mean_ms": 0.0, "p50_ms": 0.0, "p95_ms": 0.0, "max_ms": 0.0, "n": 0}
        a = np.fromiter(self.skews, dtype=np.float64) * 1e3
        return {"mean_ms": float(a.mean()), "p50_ms": float(np.percentile(a, 50)),
                "p95_ms": float(np.percentile(a, 95)), "max_ms": float(a.max()), "n": int(a.size)}

    def as_dict(self) -> dict:
        return {"pairs": self.pairs, "received": dict(self.received),
                "dropped": {s: dict(v) for s, v in self.dropped.items()}, "resets": self.resets,
                "skew": self.skew_summary()}


class ApproximateTimePairer:
    """Pairs ``rgb`` with ``aux`` messages by stamp. ``add`` returns the pairs that became final.

    ``on_drop(stream, reason, msg)`` (optional) is called for every dropped message.
    """

    def __init__(self, queue_size: int = 10, slop: float = 0.05, reset_threshold: float = 1.0,
                 reorder_window: float = 0.0, on_drop: Callable[[str, str, Any], None] | None = None):
        # a pair is final once a later message of its stream is queued: one slot pairs nothing before flush()
        if int(queue_size) < 2:
            raise RgbtSegError(f"parameter queue_size: must be ≥ 2, got {queue_size}")
        if not float(slop) >= 0:
            raise RgbtSegError(f"parameter slop: must be ≥ 0 seconds, got {slop}")
        if not float(reset_threshold) > 0:
            raise RgbtSegError(f"parameter reset_threshold: must be > 0 seconds, got {reset_threshold}")
        if not float(reorder_window) >= 0:
            raise RgbtSegError(f"parameter reorder_window: must be ≥ 0 seconds, got {reorder_window}")
        self.reorder_window = float(reorder_window)
        self.queue_size = int(queue_size)
        self.slop = float(slop)
        self.reset_threshold = float(reset_threshold)
        self.on_drop = on_drop
        self.stats = SyncStats()
        self._q: dict[str, list[tuple[float, int, Any]]] = {s: [] for s in STREAMS}  # sorted by (stamp, seq)
        self._held: dict[str, list[tuple[float, int, Any]]] = {s: [] for s in STREAMS}  # reorder buffer (heap)
        self._latest: dict[str, float | None] = {s: None for s in STREAMS}  # newest stamp seen per stream
        self._decided: dict[str, float | None] = {s: None for s in STREAMS}  # newest stamp decided per stream
        self._late_run = {s: 0 for s in STREAMS}  # consecutive arrivals older than the stream's decisions
        self._seq = 0

    def reset(self) -> None:
        """Forget every queued message (counted as dropped, reason ``reset``)."""
        for s in STREAMS:
            for _, _, msg in self._q[s] + self._held[s]:
                self._drop(s, "reset", msg)
            self._q[s] = []
            self._held[s] = []
            self._latest[s] = None
            self._decided[s] = None
            self._late_run[s] = 0

    def queued(self, stream: str) -> int:
        return len(self._q[stream]) + len(self._held[stream])

    def _drop(self, stream: str, reason: str, msg: Any) -> None:
        self.stats.dropped[stream][reason] += 1
        if self.on_drop is not None:
            self.on_drop(stream, reason, msg)

    def add(self, stream: str, stamp, msg: Any = None) -> list[Pair]:
        if stream not in STREAMS:
            raise RgbtSegError(f"pairing: unknown stream {stream!r}; use 'rgb' or 'aux'")
        t = stamp_seconds(stamp)
        if not np.isfinite(t):
            raise RgbtSegError(f"pairing: {stream} stamp {t} is not finite")
        self.stats.received[stream] += 1
        latest, decided = self._latest[stream], self._decided[stream]
        self._late_run[stream] = self._late_run[stream] + 1 if decided is not None and t < decided else 0
        if (latest is not None and t < latest - self.reset_threshold) or self._late_run[stream] >= LATE_RUN_RESET:
            self.stats.resets += 1  # the clock went backwards: a looping bag or a restarted driver
            self.reset()
        if self._latest[stream] is None or t > self._latest[stream]:
            self._latest[stream] = t
        held = self._held[stream]
        heapq.heappush(held, (t, self._seq, msg))  # the unique seq keeps msg out of comparisons
        self._seq += 1
        while held and (held[0][0] <= self._latest[stream] - self.reorder_window or len(held) > self.queue_size):
            self._enqueue(stream, *heapq.heappop(held))
        return self._match()

    def flush(self) -> list[Pair]:
        """Decide every pending message as if no more messages will arrive; return the pairs, in time order.

        Messages held by the reorder window are released first, in stamp order (rgb first on ties), each
        followed by the usual matching, exactly as if their window had passed. Then the remaining queue is
        matched with the same rule minus the wait for a later message, and whatever is left unpaired is
        dropped as ``unmatched``. Afterwards nothing is queued; ``add`` may go on (older stamps are late).
        """
        out: list[Pair] = []
        held = sorted((t, STREAMS.index(s), seq, msg) for s in STREAMS for t, seq, msg in self._held[s])
        for s in STREAMS:
            self._held[s] = []
        for t, i, seq, msg in held:
            self._enqueue(STREAMS[i], t, seq, msg)
            out += self._match()
        out += self._match(final=True)
        for s in STREAMS:
            for t, _, msg in self._q[s]:
                self._mark_decided(s, t)
                self._drop(s, "unmatched", msg)
            self._q[s] = []
        return out

    def _enqueue(self, stream: str, t: float, seq: int, msg: Any) -> None:
        decided = self._decided[stream]
        if decided is not None and t < decided:  # an equal stamp (a repeated frame) may still pair
            self._drop(stream, "late", msg)
            return
        q = self._q[stream]
        bisect.insort(q, (t, seq, msg))
        if len(q) > self.queue_size:  # bounded memory: a stream whose partner stopped sheds its oldest
            old_t, _, old = q.pop(0)
            self._mark_decided(stream, old_t)
            self._drop(stream, "overflow", old)

    def _mark_decided(self, stream: str, t: float) -> None:
        if self._decided[stream] is None or t > self._decided[stream]:
            self._decided[stream] = t

    def _match(self, final: bool = False) -> list[Pair]:
        """Emit the pairs that became certain; ``final``: no message will arrive any more (see ``flush``)."""
        out = []
        a, b = self._q["rgb"], self._q["aux"]
        while a and b:
            # x: the oldest message overall (ties: rgb first); p: the oldest of the other stream
            xs, ps = ("rgb", "aux") if a[0][0] <= b[0][0] else ("aux", "rgb")
            xq, pq = self._q[xs], self._q[ps]
            tx, tp = xq[0][0], pq[0][0]
            if tp - tx > self.slop:
                _, _, msg = xq.pop(0)
                self._mark_decided(xs, tx)
                self._drop(xs, "unmatched", msg)
                continue
            if xq[-1][0] < tp and not final:
                break  # x's stream may still deliver a message closer to p: wait
            # p's nearest in x's stream (ties go to the earlier one, i.e. x)
            best = min(range(len(xq)), key=lambda i: (abs(xq[i][0] - tp), i))
            if best != 0:
                _, _, msg = xq.pop(0)
                self._mark_decided(xs, tx)
                self._drop(xs, "unmatched", msg)
                continue
            _, _, xmsg = xq.pop(0)
            _, _, pmsg = pq.pop(0)
            self._mark_decided(xs, tx)
            self._mark_decided(ps, tp)
            if xs == "rgb":
                pair = Pair(xmsg, pmsg, tx, tp)
            else:
                pair = Pair(pmsg, xmsg, tp, tx)
            self.stats.pairs += 1
            self.stats.skews.append(abs(pair.skew))
            out.append(pair)
        return out


class LatestCameraInfo:
    """The latest CameraInfo seen on a topic, converted to a ``CameraModel`` only when its geometry changes.

    Real bags stamp CameraInfo differently from the images (or publish it once), so infos are not paired:
    the newest one at the time a pair is processed is used. ``max_age`` (seconds, optional) makes ``get``
    return None for an info older than that relative to the image stamp.
    """

    def __init__(self, name: str = "camera_info", max_age: float | None = None):
        self.name = name
        self.max_age = max_age
        self._msg = None
        self._stamp: float | None = None
        self._model = None
        self._raw_key = None
        self.updates = 0
        self.error: str | None = None

    def update(self, msg, stamp=None) -> None:
        from rgbt_seg_ros.pipeline.camera import CameraModel

        k = getattr(msg, "k", getattr(msg, "K", None))
        d = getattr(msg, "d", getattr(msg, "D", None))
        roi = getattr(msg, "roi", None)
        raw_key = (tuple(np.asarray(k, dtype=np.float64).reshape(-1)) if k is not None else None,
                   tuple(np.asarray(d if d is not None else [], dtype=np.float64).reshape(-1)),
                   getattr(msg, "width", None), getattr(msg, "height", None), getattr(msg, "distortion_model", None),
                   tuple(getattr(roi, f, None) for f in ("x_offset", "y_offset", "width", "height")))
        if raw_key != self._raw_key:
            try:
                self._model, self.error = CameraModel.from_camera_info(msg, self.name), None
            except RgbtSegError as exc:
                self._model, self.error = None, str(exc)
            self._raw_key = raw_key
        self._msg = msg
        if stamp is None:
            try:
                stamp = stamp_seconds(msg)
            except RgbtSegError:
                stamp = None
        self._stamp = None if stamp is None else stamp_seconds(stamp)
        self.updates += 1

    @property
    def msg(self):
        return self._msg

    @property
    def stamp(self) -> float | None:
        return self._stamp

    def get(self, at=None):
        """The latest CameraModel, or None if none was seen (or it is older than ``max_age`` at ``at``)."""
        if self._model is None:
            return None
        if self.max_age is not None and at is not None and self._stamp is not None:
            if abs(stamp_seconds(at) - self._stamp) > self.max_age:
                return None
        return self._model
