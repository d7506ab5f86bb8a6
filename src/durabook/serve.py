"""``durabook serve``: a home's engine kept running, as a service.

:func:`start` attaches the collaborators that make an engine a service: the
:class:`~durabook.dispatcher.Dispatcher` (queued instances run within limits),
:class:`~durabook.timers.Timers` (sleeps and timeouts fire when due) and the
:class:`~durabook.scheduler.Scheduler` (cron). :func:`serve` runs them with the
control socket (and HTTP when asked) until stopped.

On start it takes what a crash of the previous engine left behind: queued
instances (created, woken or retried), and instances whose runner died mid-run
(``RunnerDied``: they continue from their last committed cell).
"""

from __future__ import annotations

import logging
import sys
import threading
from dataclasses import dataclass, field
from typing import Any

from .api.service import Service
from .dispatcher import Dispatcher, Limits
from .engine import Engine
from .models import Status
from .timers import Timers

__all__ = ["Served", "serve", "start"]

log = logging.getLogger("durabook.serve")


@dataclass
class Served:
    engine: Engine
    service: Service
    dispatcher: Dispatcher
    timers: Timers
    scheduler: Any = None
    closers: list[Any] = field(default_factory=list)

    def close(self, wait: float = 30.0) -> None:
        for closer in reversed(self.closers):
            try:
                closer()
            except Exception:
                log.exception("closing %r failed", closer)
        if self.scheduler is not None:
            self.scheduler.close()
        self.timers.close()
        self.dispatcher.close(wait)
        self.engine.serving = False


def start(
    eng: Engine,
    limits: Limits | None = None,
    schedules: bool = True,
    webhook: str | None = None,
    webhooks: bool = True,
) -> Served:
    """Make ``eng`` a service: dispatch, timers, cron and webhooks run from now on.

    ``webhook``: the URL told of instances that complete, fail or wait when they
    name none of their own."""
    from .notify import Notifier

    eng.serving = True
    notifier = Notifier(eng, webhook) if webhooks else None
    if notifier is not None:
        notifier.start()  # before anything can finish a run
    # runs whose runner or engine died: whoever noticed first marked them RunnerDied
    for inst in eng.store.instances_with_status(Status.FAILED.value):
        if (inst["error"] or {}).get("ename") == "RunnerDied":
            eng.requeue(inst["id"])
    dispatcher = Dispatcher(eng, limits)
    timers = Timers(eng)
    service = Service(eng, dispatcher)
    served = Served(eng, service, dispatcher, timers)
    if notifier is not None:
        served.closers.append(notifier.close)
    if schedules:
        from .scheduler import Scheduler

        served.scheduler = service.scheduler = Scheduler(eng, dispatcher)
        # before the dispatcher starts: a `queue` schedule's runs left queued by a killed
        # engine must not start side by side in the moment before its limit is known
        served.scheduler.limit_workflows()
    dispatcher.start()
    timers.start()
    if served.scheduler is not None:
        served.scheduler.start()
    return served


def _serve_http_privately(served: Served) -> None:
    """HTTP on a unix socket only this user reaches: a JupyterLab on this home
    forwards its ``/durabook/api`` here. Not having it costs only that."""
    from durabook_kernel.wire import http_socket_path

    from .api.http import start_http_unix
    from .errors import DurabookError

    path = http_socket_path(served.engine.home)
    try:
        web = start_http_unix(served.service, path)
    except DurabookError as exc:
        log.warning("no HTTP socket for JupyterLab: %s", exc.message)
        return

    def close() -> None:
        web.close()
        path.unlink(missing_ok=True)

    served.closers.append(close)


def serve(
    eng: Engine,
    stop: threading.Event,
    idle_timeout: float = 0.0,
    ready: threading.Event | None = None,
    limits: Limits | None = None,
    http: dict[str, Any] | None = None,
    webhook: str | None = None,
) -> None:
    """Serve until ``stop`` is set (or ``idle_timeout`` seconds without work).

    ``http``: keyword arguments of :func:`durabook.api.http.start_http` to serve
    HTTP beside the socket."""
    from .control import ControlServer

    served = start(eng, limits, webhook=webhook)
    try:
        server = ControlServer(served.service)
        served.closers.append(server.close)
        _serve_http_privately(served)
        if http is not None:
            from .api.http import start_http

            web = start_http(served.service, **http)
            served.closers.append(web.close)
            print(f"HTTP API: {web.token_url}", file=sys.stderr, flush=True)
    except BaseException:
        served.close()
        raise
    if ready is not None:
        ready.set()
    try:
        while not stop.wait(0.2):
            if idle_timeout and server.idle_for() > idle_timeout:
                queued, running = served.dispatcher.counts()
                if not queued and not running:
                    break
    finally:
        served.close()
