"""``durabook serve``: a home's engine kept running.

It answers other processes on the control socket, fires timers (sleepers due,
waits timed out), resumes instances an event woke, and on start resumes what a
crash of the previous engine left behind: instances woken but not yet resumed,
and instances whose runner died mid-run (from their last committed cell).
"""

from __future__ import annotations

import logging
import threading
import time

from .control import ControlServer
from .engine import Engine
from .errors import DurabookError
from .models import Status
from .pool import close_thread_loop

__all__ = ["serve"]

log = logging.getLogger("durabook.serve")
TICK = 0.2  # seconds between timer checks: the resolution of durable sleeps


def _resume(eng: Engine, instance_id: str) -> None:
    try:
        res = eng.resume(instance_id)
        log.info("%s: %s", instance_id, res.status.value)
    except DurabookError as exc:  # e.g. resumed meanwhile by another request
        log.info("%s: not resumed: %s", instance_id, exc.message)
    except Exception:
        log.exception("%s: resume failed", instance_id)
    finally:
        close_thread_loop()


def serve(
    eng: Engine,
    stop: threading.Event,
    idle_timeout: float = 0.0,
    ready: threading.Event | None = None,
) -> None:
    eng.wakes_instances = True
    server = ControlServer(eng)
    threads: list[threading.Thread] = []

    def start(iid: str) -> None:
        t = threading.Thread(target=_resume, args=(eng, iid), name=f"run-{iid}", daemon=True)
        t.start()
        threads.append(t)

    for inst in eng.store.instances_with_status(Status.QUEUED.value):
        if inst["resolutions"] or inst["version"] != "interactive":
            start(inst["id"])
    # runs whose runner or engine died: whoever noticed first marked them RunnerDied
    for inst in eng.store.instances_with_status(Status.FAILED.value):
        if (inst["error"] or {}).get("ename") == "RunnerDied":
            start(inst["id"])
    if ready is not None:
        ready.set()
    try:
        while not stop.wait(TICK):
            for iid in eng.tick():
                start(iid)
            while eng.woken:
                start(eng.woken.pop())
            threads = [t for t in threads if t.is_alive()]
            if idle_timeout and not threads and server.idle_for() > idle_timeout:
                break
    finally:
        server.close()
        deadline = time.monotonic() + 30
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
