"""Workflow primitives called from notebook cells: durable sleep and waiting for events.

``durabook.sleep("10m")`` and ``durabook.wait_for_event("approval")`` end the
kernel: the cells before are committed, the instance becomes ``sleeping`` or
``waiting`` holding only rows and blobs, and a fresh kernel resumes it later.
The cell that called them runs again from its top on resume, where the call
returns at once (sleep) or returns the event's payload (wait). So put them at
the top of their cell: code before them in the same cell runs twice.

Outside a durable run (a plain notebook) ``sleep`` just sleeps and
``wait_for_event`` raises, since nothing could deliver the event.
"""

from __future__ import annotations

import re
import sys
import time
from datetime import datetime, timezone
from typing import Any

__all__ = ["EventTimeout", "Suspend", "parse_duration", "sleep", "sleep_until", "wait_for_event"]

MAX_SLEEP = 365 * 24 * 3600.0
IN_PROCESS_SLEEP = 1.0  # seconds: sub-second sleeps complete in the process, no suspension
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h|d|w)")


class EventTimeout(Exception):
    """``wait_for_event`` reached its timeout with no event."""


class Suspend(BaseException):
    """Ends the cell so the instance can suspend; never meant to be caught by cells."""

    def __init__(self, request: dict[str, Any]) -> None:
        super().__init__(request.get("kind"))
        self.request = request


def parse_duration(value: float | int | str) -> float:
    """Seconds from ``600``, ``"10m"``, ``"1h30m"``, ``"2d"``, ``"1.5s"``."""
    if isinstance(value, bool):
        raise ValueError(f"not a duration: {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().lower().replace(" ", "")
        if text.startswith("-"):
            raise ValueError(f"a duration cannot be negative: {value!r}")
        pos, seconds = 0, 0.0
        for m in _PART.finditer(text):
            if m.start() != pos:
                break
            seconds += float(m.group(1)) * _UNITS[m.group(2)]
            pos = m.end()
        if not text or pos != len(text):
            try:
                seconds = float(text)
            except ValueError:
                raise ValueError(
                    f"not a duration: {value!r} (try 30, '30s', '10m', '2h', '1d')"
                ) from None
    else:
        raise ValueError(f"not a duration: {value!r}")
    if seconds != seconds or seconds < 0:
        raise ValueError(f"a duration cannot be negative: {value!r}")
    return seconds


class _RunContext:
    """Set by the driver while a durable run executes a cell."""

    def __init__(self, resolutions: dict[str, Any]) -> None:
        self.resolutions = resolutions  # "cell:ordinal" -> what the engine decided
        self.cell = -1
        self.ordinal = 0
        self.first_line = 1

    def start_cell(self, index: int, source: str) -> None:
        self.cell, self.ordinal = index, 0
        lines = source.splitlines()
        code = [
            i
            for i, ln in enumerate(lines, 1)
            if ln.strip() and not ln.strip().startswith(("#", "%"))
        ]
        self.first_line = code[0] if code else 1


_context: _RunContext | None = None


def _warn_if_not_first(ctx: _RunContext, what: str) -> None:
    frame = sys._getframe(1)
    while frame is not None and frame.f_code.co_filename == __file__:
        frame = frame.f_back  # type: ignore[assignment]
    if (
        frame is not None
        and frame.f_globals.get("__name__") == "__main__"
        and (frame.f_code.co_name == "<module>" and frame.f_lineno > ctx.first_line)
    ):
        print(
            f"durabook: code above {what}() in this cell runs again when the instance "
            f"resumes; put {what}() at the top of its cell",
            file=sys.stderr,
        )


def _suspend(request: dict[str, Any], short: float | None = None) -> Any:
    """Return the call's resolution if it has one, else suspend the run.

    ``short``: a sleep this brief completes here, in the process (suspending would
    cost more than it saves). It still takes its ordinal, so the calls after it
    in the cell keep their keys whatever this sleep's length was on an earlier run.
    """
    ctx = _context
    assert ctx is not None
    ctx.ordinal += 1
    key = f"{ctx.cell}:{ctx.ordinal}"
    done = ctx.resolutions.get(key)
    if done is not None or short is None:
        # this call suspends, or did: code above it in the cell runs twice
        _warn_if_not_first(ctx, request["kind"] if request["kind"] == "sleep" else "wait_for_event")
    if done is not None:
        if done.get("timeout"):
            raise EventTimeout(f"no {request.get('event')!r} event within the timeout")
        return done.get("payload")
    if short is not None:
        time.sleep(short)
        return None
    raise Suspend({**request, "cell": ctx.cell, "ordinal": ctx.ordinal, "key": key})


def sleep(duration: float | int | str) -> None:
    """Sleep durably: ``duration`` in seconds, or ``"10m"``, ``"2h"``, ``"1d"`` (<= 365 days)."""
    seconds = parse_duration(duration)
    if seconds > MAX_SLEEP:
        raise ValueError(f"durabook sleeps up to 365 days, not {duration!r}")
    if _context is None:
        time.sleep(seconds)
        return
    short = seconds if seconds < IN_PROCESS_SLEEP else None
    _suspend({"kind": "sleep", "until": time.time() + seconds}, short)


def sleep_until(when: datetime) -> None:
    """Sleep durably until ``when`` (a naive datetime is taken as UTC)."""
    if not isinstance(when, datetime):
        raise TypeError(f"sleep_until takes a datetime, not {type(when).__name__}")
    aware = when if when.tzinfo else when.replace(tzinfo=timezone.utc)
    sleep(max(0.0, aware.timestamp() - time.time()))


def wait_for_event(name: str, timeout: float | int | str | None = None) -> Any:
    """Suspend until ``durabook send-event ID NAME`` arrives; returns its JSON payload.

    Raises :class:`EventTimeout` in the resumed cell when ``timeout`` passes first.
    Events sent before the instance waits are kept and delivered, once each.
    """
    if not isinstance(name, str) or not name:
        raise ValueError("wait_for_event needs an event name")
    limit = None if timeout is None else parse_duration(timeout)
    if _context is None:
        raise RuntimeError(
            "wait_for_event works in a durable run (durabook run), where an event can be delivered"
        )
    return _suspend(
        {"kind": "wait", "event": name, "until": None if limit is None else time.time() + limit}
    )
