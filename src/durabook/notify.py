"""Webhooks: an instance that completed, failed or waits is POSTed to a URL.

The URL is the instance's ``webhook`` (schedules pass theirs on), else the engine's
default. For completed, failed and waiting the listener reads the row once, queues a
``notifications`` row (attempts 0) on the group-commit writer and hands the delivery to
the notifier's threads: it never waits for the network or for a commit.

Delivery: ``workers`` daemon threads (4) share one heap of due deliveries. An attempt is
one POST with ``timeout`` (5 s) per socket operation, so a slow or dead webhook holds one
worker that long per attempt while the others deliver; runs never wait. 2xx is delivered;
else retried after ``backoff``, 2x, 4x ... (capped) up to ``max_attempts`` (6), each
attempt written to the row; after the last it keeps its last_error. ``start`` queues again
what a previous engine left undelivered. At least once: the ``X-Durabook-Delivery``
header (the row's seq) tells a repeat after a crash. Redirects: only 307/308 within the
same scheme are followed (POST kept). Only the body and the headers below are sent.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import json
import logging
import threading
import time
import urllib.error
import urllib.request
from collections import OrderedDict
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin, urlsplit

from . import __version__
from .models import Status
from .store import utcnow

if TYPE_CHECKING:
    from .engine import Engine

__all__ = ["NOTIFIED", "Notifier", "notification_body", "webhook_url_ok"]

log = logging.getLogger("durabook.notify")

NOTIFIED = frozenset({Status.COMPLETED, Status.FAILED, Status.WAITING})
ERROR_CAP = 2048  # characters of an error's value in a body: a summary, not a log
_NAME_CAP = 200
_LAST_ERROR_CAP = 500
_READ_CAP = 64 * 1024  # of a response: read (so the connection ends cleanly), never kept
_MAX_REDIRECTS = 3
_STORE_WAIT = 30.0  # seconds a delivery waits for the writer (a closed engine never answers)
_SEEN_CAP = 10_000  # transitions remembered to drop repeated listener calls


def webhook_url_ok(url: str | None) -> bool:
    """An http(s) URL with a host and no user:password (never sent in the clear)."""
    if not url or len(url) > 2000:
        return False
    try:
        parts = urlsplit(url)
        _ = parts.port  # a malformed port raises
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname) and "@" not in parts.netloc


def _cap(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _iso(at: datetime | None) -> str:
    return (at or utcnow()).isoformat() + "Z"  # the store keeps naive UTC


def notification_body(row: dict[str, Any]) -> dict[str, Any]:
    """What a webhook is told of an instance row: small, no traceback, no parameters."""
    status = row["status"]
    failed = status == Status.FAILED.value
    err = row.get("error") if failed else None
    return {
        "id": row["id"],
        "status": status,
        "failed_cell": row.get("failed_cell") if failed else None,
        "error": {
            "ename": _cap(str(err.get("ename") or ""), _NAME_CAP),
            "evalue": _cap(str(err.get("evalue") or ""), ERROR_CAP),
        }
        if err
        else None,
        "waiting_for": row.get("waiting_for") if status == Status.WAITING.value else None,
        "notebook": row.get("notebook"),
        "tenant": row.get("tenant"),
        "schedule": row.get("schedule"),
        "at": _iso(row.get("updated_at")),
    }


@dataclass
class _Delivery:
    seq: int  # the notifications row
    instance_id: str
    url: str
    body: bytes
    attempts: int = 0
    recorded: Future[Any] | None = None  # the row's INSERT, committed before the first POST


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Redirects come back as HTTPError: :meth:`Notifier._post` decides what to follow."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class Notifier:
    def __init__(
        self,
        engine: Engine,
        default_url: str | None = None,
        *,
        max_attempts: int = 6,
        backoff: float = 1.0,
        max_backoff: float = 300.0,
        timeout: float = 5.0,
        workers: int = 4,
    ) -> None:
        if default_url is not None and not webhook_url_ok(default_url):
            raise ValueError(f"the default webhook must be an http(s) URL, not {default_url!r}")
        self.engine = engine
        self.default_url = default_url
        self._some_webhook = True  # until start() has looked: no notice is skipped
        self._seen_webhook = False
        self.max_attempts = max(1, max_attempts)
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.timeout = timeout
        self._workers = max(1, workers)
        self._cv = threading.Condition()
        self._heap: list[tuple[float, int, _Delivery]] = []
        self._pending: dict[int, _Delivery] = {}  # queued or in flight, by seq
        self._seen: OrderedDict[tuple[str, str, Any], None] = OrderedDict()
        self._last_seq = 0
        self._order = itertools.count()  # ties in the heap: first queued, first sent
        self._stopping = False
        self._threads: list[threading.Thread] = []
        self._opener = urllib.request.build_opener(_NoRedirect)
        self.delivered = 0
        self.given_up = 0

    # -- life ---------------------------------------------------------------------------
    def start(self) -> Notifier:
        if self._threads:
            return self
        # listen first, then load: a row recorded in between is known by its seq
        self.engine.listeners.append(self._on_status)
        # whether any instance names a webhook: while none does (and no default is set)
        # a status change costs no read of its row
        self.engine.created_hooks.append(self._on_created)
        found = (
            self.engine.store.cursor()
            .execute("SELECT 1 FROM instances WHERE webhook IS NOT NULL LIMIT 1")
            .fetchone()
        )
        self._some_webhook = found is not None or self._seen_webhook
        rows = (
            self.engine.store.cursor()
            .execute(
                "SELECT seq, instance_id, url, body, attempts FROM notifications "
                "WHERE delivered_at IS NULL AND attempts < ? ORDER BY seq",
                [self.max_attempts],
            )
            .fetchall()
        )
        now = time.monotonic()
        with self._cv:
            for seq, iid, url, body, attempts in rows:
                self._last_seq = max(self._last_seq, int(seq))
                if int(seq) not in self._pending:
                    self._push(_Delivery(int(seq), iid, url, body.encode(), int(attempts)), now)
        for i in range(self._workers):
            t = threading.Thread(target=self._work, name=f"durabook-webhook-{i}", daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def close(self, timeout: float = 5.0) -> None:
        """Stop delivering; what is undelivered stays in the store for the next start.

        The listener stays in ``engine.listeners`` but does nothing from now on (removing
        it while the engine iterates the list could make another listener miss a call)."""
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))  # an attempt in flight may outlive

    @property
    def pending(self) -> int:
        """Deliveries queued, waiting to retry or in flight."""
        with self._cv:
            return len(self._pending)

    # -- intake (on the engine's threads: quick, never raises) -------------------------
    def _on_status(self, instance_id: str, status: Status) -> None:
        if status not in NOTIFIED or self._stopping:
            return
        try:
            self._notice(instance_id)
        except Exception:
            log.exception("%s: webhook not queued", instance_id)

    def _on_created(self, row: dict[str, Any]) -> None:
        if row.get("webhook"):
            self._seen_webhook = True  # before the flag: start() may be setting it now
            self._some_webhook = True

    def _notice(self, instance_id: str) -> None:
        if not self.default_url and not self._some_webhook:
            return
        # the stored status, not the one told: a write refused (the instance was
        # terminated meanwhile) is still told to listeners
        row = self.engine.store.instance_row(instance_id)
        if row is None or Status(row["status"]) not in NOTIFIED:
            return
        url = row.get("webhook") or self.default_url
        if not url:
            return
        if not webhook_url_ok(url):
            log.warning("%s: webhook %r is not an http(s) URL: not sent", instance_id, url[:100])
            return
        key = (instance_id, row["status"], row["updated_at"])
        with self._cv:
            if key in self._seen:
                return  # the same transition told again
            self._seen[key] = None
            if len(self._seen) > _SEEN_CAP:
                self._seen.popitem(last=False)
            self._last_seq = seq = max(time.time_ns(), self._last_seq + 1)
            body = json.dumps(notification_body(row), separators=(",", ":"))
            d = self._pending[seq] = _Delivery(seq, instance_id, url, body.encode())
        # pending (so start() will not load it too) but not on the heap until recorded;
        # submit, not call: in order with the engine's writes, without waiting for them
        d.recorded = self.engine.writer.submit(
            lambda c: c.execute(
                "INSERT INTO notifications (seq, instance_id, url, body, attempts, created_at) "
                "VALUES (?, ?, ?, ?, 0, ?)",
                [seq, instance_id, url, body, utcnow()],
            )
        )
        with self._cv:
            self._push(d, 0.0)

    def _push(self, d: _Delivery, due: float) -> None:
        """Queue ``d`` to be tried at ``due`` (monotonic); the caller holds ``_cv``."""
        if self._stopping:  # its row stays undelivered: the next start sends it
            self._pending.pop(d.seq, None)
            return
        self._pending[d.seq] = d
        heapq.heappush(self._heap, (due, next(self._order), d))
        self._cv.notify()

    # -- delivery (the notifier's threads) -----------------------------------------------
    def _work(self) -> None:
        while True:
            with self._cv:
                while not self._stopping:
                    now = time.monotonic()
                    if self._heap and self._heap[0][0] <= now:
                        break
                    self._cv.wait(self._heap[0][0] - now if self._heap else None)
                if self._stopping:
                    return
                d = heapq.heappop(self._heap)[2]
            try:
                self._attempt(d)
            except Exception:  # a bug here must not end the thread
                log.exception("%s: webhook delivery failed", d.instance_id)
                with self._cv:
                    self._pending.pop(d.seq, None)

    def _attempt(self, d: _Delivery) -> None:
        if d.recorded is not None:
            try:
                d.recorded.result(timeout=_STORE_WAIT)
            except Exception as exc:  # sent all the same; its row updates change nothing
                log.warning("%s: webhook delivery not recorded: %s", d.instance_id, exc)
            d.recorded = None
        d.attempts += 1
        error = self._post(d)
        self._write(  # a success keeps the last failure's error, for the record
            "UPDATE notifications SET attempts = ?, delivered_at = ?, "
            "last_error = coalesce(?, last_error) WHERE seq = ? AND instance_id = ?",
            [d.attempts, utcnow() if error is None else None, error, d.seq, d.instance_id],
        )
        with self._cv:
            if error is not None and d.attempts < self.max_attempts:
                delay = min(self.backoff * 2 ** (d.attempts - 1), self.max_backoff)
                self._push(d, time.monotonic() + delay)
                return
            self._pending.pop(d.seq, None)  # after its row is written: start() never races it
            if error is None:
                self.delivered += 1
            else:
                self.given_up += 1
                log.warning("%s: webhook gave up after %d attempts", d.instance_id, d.attempts)

    def _write(self, sql: str, args: list[Any]) -> None:
        try:
            self.engine.writer.submit(lambda c: c.execute(sql, args)).result(_STORE_WAIT)
        except Exception as exc:
            log.warning("webhook delivery row not updated: %s", exc)

    def _post(self, d: _Delivery) -> str | None:
        """One attempt: None when delivered (2xx), else why not."""
        url = d.url
        scheme = urlsplit(url).scheme
        headers = {
            "Content-Type": "application/json",
            "User-Agent": f"durabook/{__version__}",
            "X-Durabook-Delivery": str(d.seq),
        }
        for _hop in range(_MAX_REDIRECTS + 1):
            req = urllib.request.Request(url, data=d.body, headers=headers, method="POST")
            try:
                with self._opener.open(req, timeout=self.timeout) as resp:
                    resp.read(_READ_CAP)
                return None  # the opener raises for anything but 2xx
            except urllib.error.HTTPError as exc:
                location = exc.headers.get("Location") if exc.headers else None
                with contextlib.suppress(Exception):
                    exc.close()
                if exc.code not in (307, 308) or not location:
                    return _cap(f"HTTP {exc.code} {exc.reason}", _LAST_ERROR_CAP)
                nxt = urljoin(url, location)
                if urlsplit(nxt).scheme != scheme or not webhook_url_ok(nxt):
                    return _cap(f"HTTP {exc.code}: redirect to {nxt} not followed", _LAST_ERROR_CAP)
                url = nxt
            except Exception as exc:  # refused, timed out, reset, TLS, bad status line
                reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
                return _cap(f"{type(exc).__name__}: {reason}", _LAST_ERROR_CAP)
        return f"more than {_MAX_REDIRECTS} redirects"
