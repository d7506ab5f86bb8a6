"""How a run tells the world about itself: :class:`Progress` callbacks, and the
:class:`Hub` that fans one instance's events out to whoever follows it (a
``durabook run`` or ``wait`` on the socket, an HTTP stream, a widget).

Events are small dicts with an ``event`` key: ``start`` (total and done cells),
``executed`` (a cell finished: index, ok, duration, outputs), ``committed``
(its checkpoint is in the store) and ``status`` (the instance changed status).
A follower that falls behind loses its oldest events, never blocks a run.
"""

from __future__ import annotations

import collections
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .runner import CellResult

__all__ = ["Hub", "HubProgress", "Progress", "Subscription"]

FOLLOWER_BACKLOG = 10_000  # events kept for one follower before the oldest go


class Progress:
    """Told about a run as it goes; the CLI draws a bar with it."""

    def start(self, instance_id: str, total: int, done: int) -> None: ...
    def executed(self, result: CellResult) -> None:
        """A cell finished (called on the runner's thread, before its commit)."""

    def committed(self, index: int) -> None: ...
    def close(self) -> None: ...


class Subscription:
    """One follower's events, oldest first; ``get`` waits for the next."""

    def __init__(self, hub: Hub, key: str | None) -> None:
        self.hub = hub
        self.key = key
        self._events: collections.deque[dict[str, Any]] = collections.deque(maxlen=FOLLOWER_BACKLOG)
        self._cv = threading.Condition()
        self.closed = False

    def put(self, event: dict[str, Any]) -> None:
        with self._cv:
            self._events.append(event)
            self._cv.notify_all()

    def get(self, timeout: float | None = None) -> dict[str, Any] | None:
        with self._cv:
            if not self._events and not self.closed:
                self._cv.wait(timeout)
            return self._events.popleft() if self._events else None

    def close(self) -> None:
        self.hub._drop(self)
        with self._cv:
            self.closed = True
            self._cv.notify_all()

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Hub:
    """Per-instance fan-out of run events (``key`` None follows every instance)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subs: dict[str | None, set[Subscription]] = {}

    def subscribe(self, instance_id: str | None) -> Subscription:
        sub = Subscription(self, instance_id)
        with self._lock:
            self._subs.setdefault(instance_id, set()).add(sub)
        return sub

    def _drop(self, sub: Subscription) -> None:
        with self._lock:
            subs = self._subs.get(sub.key)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del self._subs[sub.key]

    def publish(self, instance_id: str, event: dict[str, Any]) -> None:
        with self._lock:
            if not self._subs:
                return
            targets = [*self._subs.get(instance_id, ()), *self._subs.get(None, ())]
        if not targets:
            return
        event = {**event, "id": instance_id}
        for sub in targets:
            sub.put(event)


class HubProgress(Progress):
    """A run's progress, published on the hub (and passed on to ``inner`` if given)."""

    def __init__(self, hub: Hub, instance_id: str, inner: Progress | None = None) -> None:
        self.hub = hub
        self.instance_id = instance_id
        self.inner = inner

    def start(self, instance_id: str, total: int, done: int) -> None:
        self.hub.publish(instance_id, {"event": "start", "total": total, "done": done})
        if self.inner:
            self.inner.start(instance_id, total, done)

    def executed(self, result: CellResult) -> None:
        self.hub.publish(
            self.instance_id,
            {
                "event": "executed",
                "index": result.cell.index,
                "ok": result.ok,
                "duration_ms": result.content.get("duration_ms"),
                "execution_count": result.content.get("execution_count"),
                "outputs": result.outputs,
            },
        )
        if self.inner:
            self.inner.executed(result)

    def committed(self, index: int) -> None:
        self.hub.publish(self.instance_id, {"event": "committed", "index": index})
        if self.inner:
            self.inner.committed(index)
