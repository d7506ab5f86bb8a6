"""The dispatcher: takes queued instances and runs them, within limits, fairly.

It holds the queue in memory (loaded from the store when the engine starts, fed
by the engine's status changes), so taking the next instance costs no query.
Limits: ``concurrency`` instances executing at once (idle warm kernels do not
count), and optionally at most ``per_tenant`` of one tenant and ``per_workflow``
of one workflow (an instance's ``workflow``, else its notebook).

Order: higher priority first; among equal priorities, the tenant served least
recently goes next (round robin), and within a tenant the oldest queued. So a
tenant with one instance waits for at most one free slot however many thousands
another tenant queued before it.

Each taken instance runs on a thread of its own (its kernel is a process of its
own); the thread ends when the instance leaves ``running`` for now (completed,
failed, suspended, paused, terminated).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import DurabookError
from .kernels.pool import close_thread_loop
from .models import Status
from .progress import HubProgress

if TYPE_CHECKING:
    from .engine import Engine

__all__ = ["Dispatcher", "Limits"]

log = logging.getLogger("durabook.dispatcher")

RETRY_AFTER_ERROR = 0.5  # seconds before a run that raised before its claim is taken again


@dataclass(frozen=True)
class Limits:
    concurrency: int = field(default_factory=lambda: os.cpu_count() or 1)
    per_tenant: int | None = None
    per_workflow: int | None = None


@dataclass(order=True)
class _Entry:
    rank: tuple[int, int]  # (-priority, queue order)
    id: str = field(compare=False)
    tenant: str = field(compare=False)
    workflow: str = field(compare=False)


class Dispatcher:
    def __init__(self, engine: Engine, limits: Limits | None = None) -> None:
        self.engine = engine
        self.limits = limits or Limits()
        self._cv = threading.Condition()
        self._queues: dict[str, list[_Entry]] = {}  # tenant -> heap
        self._queued: set[str] = set()
        self._running: dict[str, _Entry] = {}
        self._again: set[str] = set()  # queued again while running: looked at as it ends
        self._by_tenant: Counter[str] = Counter()
        self._by_workflow: Counter[str] = Counter()
        self._served: dict[str, int] = {}  # tenant -> turn it was last served
        self._turn = itertools.count(1)
        self._workflow_limits: dict[str, int] = {}  # e.g. a schedule that must not overlap
        self._stopping = False
        self._threads: set[threading.Thread] = set()
        self.started = 0
        self._thread = threading.Thread(target=self._loop, name="durabook-dispatch", daemon=True)

    # -- feeding ---------------------------------------------------------------------
    def start(self) -> None:
        for iid, tenant, workflow, notebook, priority, seq in self.engine.store.queued():
            self._add(iid, tenant, workflow or notebook, priority, seq)
        self.engine.created_hooks.append(self._on_created)
        self.engine.listeners.append(self._on_status)
        self._thread.start()

    def _on_created(self, row: dict[str, Any]) -> None:
        """A new instance: queued from the row just inserted (no read back)."""
        self._add(
            row["id"],
            row["tenant"],
            row["workflow"] or row["notebook"],
            row["priority"] or 0,
            row["queued_seq"],
        )

    def _on_status(self, instance_id: str, status: Status) -> None:
        if status != Status.QUEUED:
            return
        with self._cv:
            if instance_id in self._queued:
                return  # taken already (a new instance, by _on_created)
            if instance_id in self._running:
                # queued again while its run ends (an event, an unpause), or a new one
                # taken before this notice: the run's end reads its row (in _run)
                self._again.add(instance_id)
                return
        self._take_if_queued(instance_id)

    def _take_if_queued(self, instance_id: str) -> None:
        row = self.engine.store.instance_row(instance_id)
        if row is None or row["status"] != Status.QUEUED.value or row["version"] == "interactive":
            return
        self._add(
            instance_id,
            row["tenant"],
            row["workflow"] or row["notebook"],
            row["priority"] or 0,
            row["queued_seq"] or time.time_ns(),
        )

    def _add(self, iid: str, tenant: str | None, workflow: str, priority: int, seq: int) -> None:
        entry = _Entry((-int(priority), int(seq)), iid, tenant or "", workflow)
        with self._cv:
            if iid in self._queued or iid in self._running:
                return
            self._queued.add(iid)
            heapq.heappush(self._queues.setdefault(entry.tenant, []), entry)
            self._cv.notify_all()

    def set_workflow_limit(self, workflow: str, limit: int | None) -> None:
        """At most ``limit`` instances of ``workflow`` at once (None: the default)."""
        with self._cv:
            if limit is None:
                self._workflow_limits.pop(workflow, None)
            else:
                self._workflow_limits[workflow] = limit
            self._cv.notify_all()

    # -- state -----------------------------------------------------------------------
    def counts(self) -> tuple[int, int]:
        """(queued here, running here)."""
        with self._cv:
            return len(self._queued), len(self._running)

    def is_running(self, instance_id: str) -> bool:
        with self._cv:
            return instance_id in self._running

    # -- taking ----------------------------------------------------------------------
    def _eligible(self, tenant: str, heap: list[_Entry]) -> _Entry | None:
        """The first entry of a tenant's queue that its workflow's limit admits."""
        lim = self.limits
        if lim.per_tenant is not None and self._by_tenant[tenant] >= lim.per_tenant:
            return None
        if lim.per_workflow is None and not self._workflow_limits:
            return heap[0]
        for entry in heapq.nsmallest(64, heap):  # a blocked workflow's entries are skipped
            cap = self._workflow_limits.get(entry.workflow, lim.per_workflow)
            if cap is None or self._by_workflow[entry.workflow] < cap:
                return entry
        return None

    def _pick(self) -> _Entry | None:
        best: tuple[tuple[int, int], _Entry] | None = None
        for tenant, heap in self._queues.items():
            if not heap:
                continue
            entry = self._eligible(tenant, heap)
            if entry is None:
                continue
            key = (entry.rank[0], self._served.get(tenant, 0))
            if best is None or key < best[0]:
                best = (key, entry)
        if best is None:
            return None
        entry = best[1]
        heap = self._queues[entry.tenant]
        if heap[0] is entry:
            heapq.heappop(heap)
        else:
            heap.remove(entry)
            heapq.heapify(heap)
        if not heap:
            del self._queues[entry.tenant]
        self._queued.discard(entry.id)
        self._served[entry.tenant] = next(self._turn)
        return entry

    def _loop(self) -> None:
        while True:
            with self._cv:
                entry: _Entry | None = None
                while not self._stopping:
                    if len(self._running) < self.limits.concurrency:
                        entry = self._pick()
                        if entry is not None:
                            break
                    self._cv.wait()
                if self._stopping or entry is None:
                    return
                self._running[entry.id] = entry
                self._by_tenant[entry.tenant] += 1
                self._by_workflow[entry.workflow] += 1
                self.started += 1
                t = threading.Thread(
                    target=self._run, args=(entry,), name=f"run-{entry.id}", daemon=True
                )
                self._threads.add(t)
            t.start()

    def _run(self, entry: _Entry) -> None:
        eng = self.engine
        raised = True  # until execute returns: a run that never claimed leaves it queued
        try:
            # not if it was paused, terminated or taken by a foreground `resume` while it
            # was queued (execute reads its row once, as it recovers its last journal)
            eng.executor.execute(entry.id, HubProgress(eng.hub, entry.id), queued_only=True)
            raised = False
        except DurabookError as exc:
            log.info("%s: not run: %s", entry.id, exc.message)
        except Exception:
            log.exception("%s: run failed", entry.id)
        finally:
            close_thread_loop()
            with self._cv:  # one step with _on_status's look: no notice falls between
                self._running.pop(entry.id, None)
                self._by_tenant[entry.tenant] -= 1
                self._by_workflow[entry.workflow] -= 1
                # queued again meanwhile, or perhaps never taken (recovery refused while
                # the last run's kernel held its journal, a full disk): look at its row
                again = entry.id in self._again or raised
                self._again.discard(entry.id)
                self._cv.notify_all()
            eng.hub.publish(entry.id, {"event": "done"})
            try:
                # queued again while it was finishing (an event, an unpause): take it again
                if again and not self._stopping:
                    if raised:  # what failed may fail again at once (a full disk): not hot
                        time.sleep(RETRY_AFTER_ERROR)
                    self._take_if_queued(entry.id)
            finally:
                with self._cv:  # close() waits for this thread until here
                    self._threads.discard(threading.current_thread())

    def close(self, wait: float = 30.0) -> None:
        """Take nothing more; wait up to ``wait`` seconds for the runs under way."""
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
            threads = list(self._threads)
        deadline = time.monotonic() + wait
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
