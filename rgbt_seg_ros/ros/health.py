"""Stream health, latency statistics and the /diagnostics content, without ROS types.

``build_diagnostics`` returns plain ``DiagnosticEntry`` tuples; the node copies them into
diagnostic_msgs/DiagnosticStatus. Times are seconds of the node clock (sim time during bag replay,
so a paused bag does not look like a lost camera).
"""
from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from rgbt_seg_ros.pipeline.timing import LatencyStats

OK, WARN, ERROR, STALE = 0, 1, 2, 3  # diagnostic_msgs/DiagnosticStatus levels


class StreamMonitor:
    """Arrival times of one topic: rate over a sliding window, age of the last message."""

    def __init__(self, name: str, window: int = 60) -> None:
        self.name = name
        self._times: deque[float] = deque(maxlen=window)
        self._lock = threading.Lock()
        self.count = 0

    def tick(self, now: float) -> None:
        with self._lock:
            if self._times and now < self._times[-1]:
                self._times.clear()  # clock jumped backwards (looping bag): restart the window
            self._times.append(now)
            self.count += 1

    def rate(self, now: float, horizon: float = 5.0) -> float:
        """Messages per second over the last ``horizon`` seconds (0 when fewer than two)."""
        with self._lock:
            recent = [t for t in self._times if now - t <= horizon]
        if len(recent) < 2 or recent[-1] <= recent[0]:
            return 0.0
        return (len(recent) - 1) / (recent[-1] - recent[0])

    def age(self, now: float) -> float | None:
        with self._lock:
            return None if not self._times else now - self._times[-1]

    def stale(self, now: float, timeout: float, started: float) -> bool:
        """No message for ``timeout`` s (counting from ``started`` when none came yet)."""
        age = self.age(now)
        return (now - started if age is None else age) > timeout


@dataclass
class Counters:
    pairs_synced: int = 0
    pairs_rgb_only: int = 0
    pairs_processed: int = 0
    pairs_dropped: int = 0
    bad_messages: int = 0
    last_skew: float = 0.0
    skews: deque = field(default_factory=lambda: deque(maxlen=200))


@dataclass
class DiagnosticEntry:
    level: int
    name: str
    message: str
    values: dict[str, str]


def _fmt(x: float | None, unit: str = "") -> str:
    return "n/a" if x is None else f"{x:.3f}{unit}"


def build_diagnostics(*, node_name: str, now: float, started: float, rgb: StreamMonitor, aux: StreamMonitor,
                      modality: str, aux_timeout: float, rgb_only_possible: bool, counters: Counters,
                      latency: LatencyStats, output_rate: float, last_error: str = "") -> list[DiagnosticEntry]:
    """One status per concern: each input stream, pairing, inference/output."""
    out: list[DiagnosticEntry] = []
    rgb_lost = rgb.stale(now, aux_timeout, started)
    rgb_vals = {"rate_hz": f"{rgb.rate(now):.2f}", "age_s": _fmt(rgb.age(now)), "received": str(rgb.count)}
    out.append(DiagnosticEntry(ERROR if rgb_lost else OK, f"{node_name}: rgb input",
                               "no RGB images: nothing to segment" if rgb_lost else "receiving", rgb_vals))

    aux_lost = aux.stale(now, aux_timeout, started)
    aux_vals = {"rate_hz": f"{aux.rate(now):.2f}", "age_s": _fmt(aux.age(now)), "received": str(aux.count),
                "timeout_s": f"{aux_timeout:.3f}"}
    if not aux_lost:
        level, msg = OK, "receiving"
    elif rgb_only_possible:
        level, msg = WARN, f"{modality} stream lost: publishing RGB-only results"
    else:
        level, msg = ERROR, f"{modality} stream lost and the model cannot run RGB-only: no segmentation"
    out.append(DiagnosticEntry(level, f"{node_name}: {modality} input", msg, aux_vals))

    skews = np.abs(np.asarray(counters.skews)) if counters.skews else None
    sync_vals = {"pairs_synced": str(counters.pairs_synced), "pairs_rgb_only": str(counters.pairs_rgb_only),
                 "skew_last_s": f"{counters.last_skew:.4f}",
                 "skew_abs_p50_s": _fmt(None if skews is None else float(np.median(skews))),
                 "skew_abs_max_s": _fmt(None if skews is None else float(skews.max()))}
    unpaired = max(0, rgb.count - counters.pairs_synced - counters.pairs_rgb_only)
    sync_vals["rgb_unpaired"] = str(unpaired)
    sync_level = WARN if (rgb.count > 10 and counters.pairs_synced == 0 and not aux_lost) else OK
    sync_msg = "no pairs within slop: check stamps/slop" if sync_level else "pairing"
    out.append(DiagnosticEntry(sync_level, f"{node_name}: sync", sync_msg, sync_vals))

    inf_vals = {"pairs_processed": str(counters.pairs_processed), "pairs_dropped": str(counters.pairs_dropped),
                "bad_messages": str(counters.bad_messages), "output_rate_hz": f"{output_rate:.2f}"}
    for stage, s in latency.summary().items():
        inf_vals[f"{stage}_ms_p50"] = f"{s['p50']:.2f}"
        inf_vals[f"{stage}_ms_p95"] = f"{s['p95']:.2f}"
        inf_vals[f"{stage}_ms_max"] = f"{s['max']:.2f}"
    if last_error:
        inf_vals["last_error"] = last_error
    inf_level = WARN if last_error else OK
    out.append(DiagnosticEntry(inf_level, f"{node_name}: inference", last_error or "ok", inf_vals))
    return out
