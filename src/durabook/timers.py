"""Timers: sleeps that end, waits that time out, ``%%step`` retries far off.

Indexed by due time in a heap (loaded from the store when the engine starts,
fed by the engine's status changes), so an idle engine sleeps until the next one
is due instead of polling every suspended instance. Firing one re-reads its row
and wakes it only if it is still due (an event may have woken it already): a
stale entry does nothing.
"""

from __future__ import annotations

import heapq
import logging
import threading
from datetime import datetime
from typing import TYPE_CHECKING

from .models import Status
from .store import utcnow

if TYPE_CHECKING:
    from .engine import Engine

__all__ = ["Timers"]

log = logging.getLogger("durabook.timers")
MAX_NAP = 60.0  # seconds: woken at least this often (a changed wall clock is noticed)


class Timers:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._heap: list[tuple[datetime, str]] = []
        self._cv = threading.Condition()
        self._stopping = False
        self.fired = 0
        self._thread = threading.Thread(target=self._loop, name="durabook-timers", daemon=True)

    def start(self) -> None:
        with self._cv:
            for iid, due in self.engine.store.timers():
                self._heap.append((due, iid))
            heapq.heapify(self._heap)
        self.engine.listeners.append(self._on_status)
        self._thread.start()

    def __len__(self) -> int:
        with self._cv:
            return len(self._heap)

    def _on_status(self, instance_id: str, status: Status) -> None:
        if status not in (Status.SLEEPING, Status.WAITING):
            return
        row = self.engine.store.instance_row(instance_id)
        if row is not None and row["wake_at"] is not None:
            self.add(instance_id, row["wake_at"])

    def add(self, instance_id: str, due: datetime) -> None:
        with self._cv:
            heapq.heappush(self._heap, (due, instance_id))
            if self._heap[0][1] == instance_id:
                self._cv.notify_all()  # earlier than what the loop sleeps for

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._stopping:
                    now = utcnow()
                    if self._heap and self._heap[0][0] <= now:
                        break
                    nap = MAX_NAP
                    if self._heap:
                        nap = min(nap, (self._heap[0][0] - now).total_seconds())
                    self._cv.wait(max(nap, 0.001))
                if self._stopping:
                    return
                due = []
                while self._heap and self._heap[0][0] <= now:
                    due.append(heapq.heappop(self._heap)[1])
            for iid in due:
                self._fire(iid, now)

    def _fire(self, instance_id: str, now: datetime) -> None:
        try:
            row = self.engine.store.instance_row(instance_id)
            if row is not None and self.engine.suspensions.wake_if_due(row, now):
                self.fired += 1
        except Exception:
            log.exception("%s: timer failed", instance_id)

    def close(self) -> None:
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
        if self._thread.is_alive():
            self._thread.join(5)
