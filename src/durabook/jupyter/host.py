"""The home's engine as JupyterLab's server sees it: hosted in this process, or a
``durabook serve`` to forward to.

A home has one engine (DuckDB takes one writer). When ``jupyter lab`` starts and a
``durabook serve`` already owns the home, ``/durabook/api`` is forwarded to it (its
HTTP API on a private unix socket). Otherwise the engine is opened here, as a
service: queued runs, timers and schedules run while JupyterLab runs, and its
control socket answers the CLI and the kernels. ``durabook serve`` run later takes
the home over (the ``handoff`` request) and this process forwards from then on:
runs under way continue there from their last committed cell.

A short-lived command (``durabook status``, a ``durabook run`` without an engine)
may hold the store for a moment: the host then retries on the next request.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from durabook_kernel import wire

from ..errors import DurabookError, EngineBusy
from ..home import resolve_home

if TYPE_CHECKING:
    from ..api.service import Service
    from ..control import ControlServer
    from ..serve import Served

__all__ = ["EngineHost"]

log = logging.getLogger("durabook.jupyter")

RETRY = 2.0  # seconds between attempts to open a store that someone else holds
HANDOFF_WAIT = 10.0  # seconds a run under way may take to reach a checkpoint on hand-over


class EngineHost:
    """``mode``: ``hosted`` (the engine runs here), ``forwarding`` (to a ``durabook
    serve``), ``idle`` (no home yet: the first run makes it), ``starting``, or
    ``unavailable`` (``error`` says why)."""

    def __init__(self, home: str | os.PathLike[str] | None = None, concurrency: int = 0) -> None:
        self.home: Path = resolve_home(home)
        self.concurrency = concurrency or os.cpu_count() or 1
        self.mode = "starting"
        self.error: str | None = None
        self.owner_pid: int | None = None
        self._served: Served | None = None
        self._control: ControlServer | None = None
        self._lock = threading.RLock()
        self._next_try = 0.0
        self._closed = False
        # the handlers' blocking calls: never the IOLoop's default executor, which
        # the rest of Jupyter shares
        self.executor = ThreadPoolExecutor(4, thread_name_prefix="durabook-host")

    # -- what the handlers ask ------------------------------------------------------------
    def start(self) -> None:
        """Settle in the background: opening the store must not delay the server. A
        folder never used with durabook gets no home until its first run."""
        self.executor.submit(self.settle, False)

    def service(self) -> Service:
        """The hosted engine's service (forwarding is decided before this is asked)."""
        served = self._served
        if served is None:
            self.settle(True)
            served = self._served
        if served is None:
            raise EngineBusy(self.error or "the engine is starting", home=str(self.home))
        return served.service

    def forward_to(self) -> Path | None:
        """The ``durabook serve`` HTTP socket to forward to, or None (hosted here)."""
        if self._served is not None:
            return None
        path = wire.http_socket_path(self.home)
        if self.mode == "forwarding" and path.exists():
            return path
        self.settle(True)
        return path if self.mode == "forwarding" else None

    def forward_failed(self) -> None:
        """The serve we forwarded to did not answer: find out again who owns the home."""
        with self._lock:
            if self.mode == "forwarding":
                self.mode, self._next_try = "starting", 0.0

    def info(self) -> dict[str, Any]:
        self.settle(False)
        return {
            "mode": self.mode,
            "home": str(self.home),
            "pid": os.getpid(),
            "owner_pid": self.owner_pid,
            "error": self.error,
            "durable": self.mode == "forwarding",
            "serve_command": f"durabook --home {self.home} serve",
        }

    # -- settling who owns the home -----------------------------------------------------
    def settle(self, create: bool = True) -> None:
        """Find the home's engine, or host it here (``create``: even when the home
        does not exist yet)."""
        with self._lock:
            if self._closed or self._served is not None:
                return
            owner = self._owner()
            if owner is not None:
                self.mode, self.owner_pid, self.error = "forwarding", owner.get("pid"), None
                return
            if self.mode == "forwarding":
                self.mode, self._next_try = "starting", 0.0  # the serve left: host it here
            if not create and not self.home.exists():
                if self.mode in ("starting", "idle"):
                    self.mode = "idle"
                return
            if time.monotonic() < self._next_try:
                return
            try:
                self._host()
            except EngineBusy as exc:  # a short-lived command has the store
                self._next_try = time.monotonic() + RETRY
                self.mode, self.error = "unavailable", exc.message
            except DurabookError as exc:
                self._next_try = time.monotonic() + RETRY
                self.mode, self.error = "unavailable", exc.message
                log.warning("durabook: cannot open the engine of %s: %s", self.home, exc.message)

    def _owner(self) -> dict[str, Any] | None:
        """The serving engine that owns the home, when one answers."""
        try:
            sock = wire.connect(self.home)
        except (OSError, wire.UnsafeSocket):
            return None
        if sock is None:
            return None
        try:
            sock.settimeout(5.0)
            owner = wire.call(sock, "ping") or {}
        except (OSError, RuntimeError, ValueError):
            return None
        finally:
            sock.close()
        if owner.get("serving") and wire.http_socket_path(self.home).exists():
            return dict(owner)
        return None

    def _host(self) -> None:
        from ..control import ControlServer
        from ..dispatcher import Limits
        from ..engine import Engine
        from ..kernels.pool import pool_setting
        from ..serve import start

        # a long-lived engine, as serve's: kernels kept warm (DURABOOK_POOL_SIZE, default 2;
        # they and their zygote go after DURABOOK_POOL_IDLE seconds without a run)
        eng = Engine(self.home, pool_size=pool_setting("DURABOOK_POOL_SIZE", 2))
        try:
            served = start(eng, Limits(concurrency=self.concurrency))
        except BaseException:
            eng.close()
            raise
        served.service.host = "jupyter"
        served.service.on_handoff = self._hand_off
        try:
            self._control = ControlServer(served.service)
        except BaseException:
            served.close()
            eng.close()
            raise
        self._served, self.mode, self.error, self.owner_pid = served, "hosted", None, os.getpid()
        log.info("durabook: JupyterLab hosts the engine of %s", self.home)

    def _hand_off(self) -> None:
        """A ``durabook serve`` takes the home: release it (after this reply is sent)."""
        threading.Thread(target=self._release, name="durabook-handoff", daemon=True).start()

    def _release(self) -> None:
        time.sleep(0.05)  # the handoff reply goes out first
        with self._lock:
            self.mode = "starting"
            self._next_try = time.monotonic() + HANDOFF_WAIT + 30.0  # the serve takes it
            taken = self._take()
        _shut(*taken, wait=HANDOFF_WAIT)  # outside the lock: requests meanwhile are told
        log.info("durabook: handed the engine of %s over to `durabook serve`", self.home)

    def _take(self) -> tuple[Served | None, ControlServer | None]:
        served, control = self._served, self._control
        self._served = self._control = None
        return served, control

    def close(self, wait: float = 5.0) -> None:
        """JupyterLab stops: runs under way stop at their last commit (the next
        engine of this home continues them)."""
        with self._lock:
            self._closed = True
            taken = self._take()
        _shut(*taken, wait=wait)
        self.executor.shutdown(wait=False, cancel_futures=True)


def _shut(served: Served | None, control: ControlServer | None, wait: float) -> None:
    if control is not None:
        control.drain(wait)  # attached clients (a `durabook wait`) are let go after this
        control.close()
    if served is not None:
        served.close(wait)
        served.engine.close()
