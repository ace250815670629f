"""Per-stage wall-clock timing: a per-call ``StageTimer`` and a running ``LatencyStats`` with p50/p95/p99."""
from __future__ import annotations

import threading
import time
from collections import deque
from contextlib import contextmanager

import numpy as np

TOTAL = "total"  # key of the whole call's time in a timings dict; it spans the stages


class StageTimer:
    """Collects milliseconds per named stage of one call (a stage entered twice accumulates)."""

    def __init__(self):
        self._ms: dict[str, float] = {}
        self._t0: float | None = None

    @contextmanager
    def __call__(self, stage: str):
        t = time.perf_counter()
        try:
            yield
        finally:
            self._ms[stage] = self._ms.get(stage, 0.0) + (time.perf_counter() - t) * 1e3

    def start_total(self) -> None:
        self._t0 = time.perf_counter()

    def stop_total(self) -> None:
        if self._t0 is not None:
            self._ms[TOTAL] = (time.perf_counter() - self._t0) * 1e3

    def as_dict(self) -> dict[str, float]:
        return dict(self._ms)


class LatencyStats:
    """Running per-stage latency over the last ``window`` samples; ``summary()`` gives p50/p95/p99/mean/max.

    Thread-safe: the node's worker adds while its diagnostics timer reads.
    """

    def __init__(self, window: int = 10000):
        if window < 1:
            raise ValueError("window must be ≥ 1")
        self.window = int(window)
        self._samples: dict[str, deque] = {}
        self._lock = threading.Lock()
        self.count = 0

    def add(self, timings: dict[str, float]) -> None:
        with self._lock:
            self.count += 1
            for stage, ms in timings.items():
                self._samples.setdefault(stage, deque(maxlen=self.window)).append(float(ms))

    def summary(self) -> dict[str, dict[str, float]]:
        with self._lock:
            snapshot = {stage: list(values) for stage, values in self._samples.items() if values}
        out = {}
        for stage, values in snapshot.items():
            a = np.asarray(values, dtype=np.float64)
            p50, p95, p99 = np.percentile(a, [50, 95, 99])
            out[stage] = {"p50": float(p50), "p95": float(p95), "p99": float(p99), "mean": float(a.mean()),
                          "max": float(a.max()), "n": int(a.size)}
        return out

    def format(self) -> str:
        rows = [f"{'stage':<16}{'p50':>9}{'p95':>9}{'p99':>9}  (ms, n={self.count})"]
        for stage, s in self.summary().items():
            rows.append(f"{stage:<16}{s['p50']:9.2f}{s['p95']:9.2f}{s['p99']:9.2f}")
        return "\n".join(rows)
