"""Suspended instances: durable sleep, waiting for events, and what wakes them.

A cell that calls ``durabook.sleep`` / ``wait_for_event`` ends its kernel; the
instance keeps only rows: ``wake_at``, ``waiting_for`` and the pending request
(``suspension``, keyed ``"cell:ordinal"``). Waking writes the request's
*resolution* (``{}`` for a sleep, ``{"payload": ...}`` or ``{"timeout": true}``
for a wait) and re-queues the instance in one transaction; the resumed cell
re-runs from its top and the call returns that resolution. An event is marked
delivered in the same transaction that records it as a resolution, so it is
delivered once, and an event sent before the instance waits is kept until it does.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from .errors import BadInput, InvalidState
from .models import Status
from .store import Store, utcnow

if TYPE_CHECKING:
    from .engine import Engine

__all__ = ["Suspensions"]

_FINISHED = (Status.COMPLETED.value, Status.FAILED.value, Status.TERMINATED.value)


def _ts(epoch: float | None) -> datetime | None:
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, timezone.utc).replace(tzinfo=None)


def _resolve(
    c: Any, instance_id: str, key: str, resolution: dict[str, Any], event_seq: int | None = None
) -> None:
    """Record how a suspension ended and queue the instance: one transaction."""
    row = c.execute("SELECT resolutions FROM instances WHERE id = ?", [instance_id]).fetchone()
    resolutions = json.loads(row[0]) if row and row[0] else {}
    resolutions[key] = resolution
    Store.requeue(c, instance_id, resolutions=resolutions)
    if event_seq is not None:
        c.execute(
            "UPDATE events SET delivered_at = ?, delivered_key = ? WHERE seq = ?",
            [utcnow(), f"{instance_id}/{key}", event_seq],
        )


class Suspensions:
    """The engine's suspended instances: what wakes them, and events sent to them."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @staticmethod
    def fields(request: dict[str, Any]) -> tuple[Status, dict[str, Any]]:
        """The instance's status and columns while a cell's request is pending."""
        sleeping = request["kind"] == "sleep"
        return (Status.SLEEPING if sleeping else Status.WAITING), {
            "wake_at": _ts(request.get("until")),
            "waiting_for": None if sleeping else request["event"],
            "suspension": request,
        }

    def deliver_pending(self, iid: str, request: dict[str, Any]) -> bool:
        """An event sent before the instance began to wait is delivered now."""
        if request["kind"] != "wait":
            return False
        pending = self.engine.store.pending_event(iid, request["event"])
        if pending is None:
            return False
        self._deliver(iid, request["key"], pending)
        return True

    def _deliver(self, iid: str, key: str, pending: tuple[int, str | None]) -> None:
        seq, data = pending
        payload = json.loads(data) if data is not None else None
        self.engine.writer.call(lambda c: _resolve(c, iid, key, {"payload": payload}, seq))
        self.engine.changed(iid, Status.QUEUED)

    def wake_if_due(self, inst: dict[str, Any], now: datetime | None = None) -> bool:
        """Queue one suspended instance if its event is here or its time has come."""
        now = now or utcnow()
        req = inst["suspension"] or {}
        key = req.get("key")
        if not key or inst["status"] not in (Status.SLEEPING.value, Status.WAITING.value):
            return False
        if inst["status"] == Status.WAITING.value:
            pending = self.engine.store.pending_event(inst["id"], inst["waiting_for"])
            if pending is not None:
                self._deliver(inst["id"], key, pending)
                return True
        if inst["wake_at"] is not None and inst["wake_at"] <= now:
            res = {} if inst["status"] == Status.SLEEPING.value else {"timeout": True}
            self._wake(inst["id"], key, res)
            return True
        return False

    def wake_now(self, instance_id: str) -> None:
        """``durabook resume ID --now``: a sleeper wakes before its time."""
        inst = self.engine._instance(instance_id)
        if inst["status"] != Status.SLEEPING.value:
            raise InvalidState(
                f"instance {instance_id} is {inst['status']}, not sleeping: --now wakes sleepers",
                instance=instance_id,
                status=inst["status"],
            )
        key = (inst["suspension"] or {}).get("key")
        if key:
            self._wake(instance_id, key, {"early": True})

    def _wake(self, iid: str, key: str, resolution: dict[str, Any]) -> None:
        self.engine.writer.call(lambda c: _resolve(c, iid, key, resolution))
        self.engine.changed(iid, Status.QUEUED)

    def send_event(self, instance_id: str, name: str, data: str | None = None) -> bool:
        """Keep an event for an instance; True when it woke the instance (now queued)."""
        inst = self.engine._instance(instance_id)
        if inst["status"] in _FINISHED:
            raise InvalidState(
                f"instance {instance_id} is {inst['status']}: it takes no events",
                instance=instance_id,
                status=inst["status"],
            )
        if not name or len(name) > 200:
            raise BadInput("an event needs a name of 1 to 200 characters")
        if data is not None:
            try:
                json.loads(data)
            except json.JSONDecodeError as exc:
                raise BadInput(f"event data is not JSON: {exc.msg} at column {exc.colno}") from None
        seq = time.time_ns()
        self.engine.writer.call(
            lambda c: c.execute(
                "INSERT INTO events (seq, instance_id, name, data, created_at) VALUES (?,?,?,?,?)",
                [seq, instance_id, name, data, utcnow()],
            )
        )
        if inst["status"] == Status.WAITING.value and inst["waiting_for"] == name:
            key = (inst["suspension"] or {}).get("key")
            if key:
                self._deliver(instance_id, key, (seq, data))
                return True
        return False
