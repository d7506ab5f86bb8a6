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
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .runner import CellResult

__all__ = ["CellEvent", "Hub", "HubProgress", "Progress", "Subscription"]


@dataclass
class CellEvent:
    """A cell finished: what a follower (a progress bar, papermill, a stream) is told."""

    index: int
    ok: bool
    outputs: list[dict[str, Any]] = field(default_factory=list)  # [] when kept in a blob
    execution_count: int | None = None
    status: str | None = None  # the kernel's: ok, error, exit, ...
    error: dict[str, Any] | None = None  # ename, evalue, traceback
    duration_ms: float | None = None

    @classmethod
    def from_result(cls, res: CellResult) -> CellEvent:
        c = res.content
        return cls(
            index=res.cell.index,
            ok=res.ok,
            outputs=res.outputs,
            execution_count=c.get("execution_count"),
            status=c.get("status"),
            error=c.get("error"),
            duration_ms=c.get("duration_ms"),
        )

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CellEvent:
        fields: dict[str, Any] = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        return cls(**fields)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


FOLLOWER_BACKLOG = 10_000  # events kept for one follower before the oldest go


class Progress:
    """Told about a run as it goes; the CLI draws a bar with it."""

    def start(self, instance_id: str, total: int, done: int) -> None: ...
    def executed(self, event: CellEvent) -> None:
        """A cell finished (called on the runner's thread, before its commit)."""

    def committed(self, index: int) -> None: ...
    def output(self, index: int | None, output: dict[str, Any]) -> None:
        """Part of the running cell's output, as the kernel sends it (text only)."""

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

    def drain(self) -> list[dict[str, Any]]:
        """Every event waiting, oldest first (and none left)."""
        with self._cv:
            events = list(self._events)
            self._events.clear()
            return events

    def close(self) -> None:
        self.hub._drop(self)
        with self._cv:
            self.closed = True
            self._cv.notify_all()

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


LIVE_BACKLOG = 256  # output events of a running cell kept for followers that come later


class Hub:
    """Per-instance fan-out of run events (``key`` None follows every instance)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subs: dict[str | None, set[Subscription]] = {}
        # the running cell's output events so far, per instance: a follower that comes
        # in mid-cell sees what the cell printed before it came
        self._live: dict[str, collections.deque[dict[str, Any]]] = {}

    def subscribe(self, instance_id: str | None) -> Subscription:
        sub = Subscription(self, instance_id)
        with self._lock:
            self._subs.setdefault(instance_id, set()).add(sub)
            for event in self._live.get(instance_id or "", ()):
                sub.put(event)
        return sub

    def _drop(self, sub: Subscription) -> None:
        with self._lock:
            subs = self._subs.get(sub.key)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del self._subs[sub.key]

    def publish(self, instance_id: str, event: dict[str, Any]) -> None:
        kind = event.get("event")
        with self._lock:
            if kind == "output":  # kept for followers that come later (nobody may follow yet)
                event = {**event, "id": instance_id}
                live = self._live.get(instance_id)
                if live is None:
                    live = self._live[instance_id] = collections.deque(maxlen=LIVE_BACKLOG)
                live.append(event)
            elif kind in ("executed", "status", "done") and self._live:
                self._live.pop(instance_id, None)
            if not self._subs:
                return  # the common case: no follower, nothing copied
            targets = [*self._subs.get(instance_id, ()), *self._subs.get(None, ())]
        if not targets:
            return
        if kind != "output":
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

    def executed(self, event: CellEvent) -> None:
        self.hub.publish(self.instance_id, {"event": "executed", **event.to_dict()})
        if self.inner:
            self.inner.executed(event)

    def committed(self, index: int) -> None:
        self.hub.publish(self.instance_id, {"event": "committed", "index": index})
        if self.inner:
            self.inner.committed(index)

    def output(self, index: int | None, output: dict[str, Any]) -> None:
        self.hub.publish(self.instance_id, {"event": "output", "index": index, "output": output})
        if self.inner:
            self.inner.output(index, output)
