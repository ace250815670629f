"""A latest-only hand-over between the synchronizer callback and the inference worker.

message_filters runs the synchronizer callback while holding its lock, so the callback must only
drop the pair here and return. The worker always takes the newest pair; a pair replaced before the
worker took it is counted as dropped. Memory is one pair, whatever the camera or network speed.
"""
from __future__ import annotations

import threading
import time
from typing import Any


class LatestSlot:
    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._item: Any = None
        self._full = False
        self._closed = False
        self.put_count = 0
        self.dropped = 0

    def put(self, item: Any) -> bool:
        """Store ``item``; returns True when it replaced an unprocessed one (a drop)."""
        with self._cond:
            replaced = self._full
            if replaced:
                self.dropped += 1
            self._item, self._full = item, True
            self.put_count += 1
            self._cond.notify()
            return replaced

    def take(self, timeout: float | None = None) -> Any:
        """The newest item, waiting up to ``timeout`` s; None on timeout or after ``close``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not self._full and not self._closed:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                self._cond.wait(remaining)
            if not self._full:
                return None
            item, self._item, self._full = self._item, None, False
            return item

    def __len__(self) -> int:
        with self._cond:
            return int(self._full)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed
