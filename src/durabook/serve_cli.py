"""``durabook serve``: open the home's store for good (waiting for a short-lived
command that holds it, taking it over from a JupyterLab that hosts it), then serve.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from .errors import BadInput

__all__ = ["serve_command"]


def serve_command(args: argparse.Namespace) -> int:
    """`durabook serve`: the home's engine in the foreground until SIGTERM or SIGINT."""
    import signal
    import threading

    from .dispatcher import Limits
    from .engine import Engine
    from .serve import serve

    for flag in ("concurrency", "per_tenant", "per_workflow"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise BadInput(f"--{flag.replace('_', '-')} must be at least 1")
    limits = Limits(
        concurrency=args.concurrency or os.cpu_count() or 1,
        per_tenant=args.per_tenant,
        per_workflow=args.per_workflow,
    )
    if args.webhook is not None:
        from .api.models import check_url

        try:
            check_url(args.webhook)
        except ValueError as exc:
            raise BadInput(f"--webhook: {exc}") from None
    http = None
    if args.port is not None:
        http = {"host": args.host, "port": args.port, "token": args.token, "no_auth": args.no_auth}
        if args.no_auth and args.token:
            raise BadInput("--token and --no-auth exclude each other")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *a: stop.set())
    signal.signal(signal.SIGINT, lambda *a: stop.set())
    if args.warm < 0:
        raise BadInput("--warm must be 0 or more")
    with _open_for_serve(args.home, lambda home: Engine(home, pool_size=args.warm)) as eng:
        print(
            f"durabook engine for {eng.home} (pid {os.getpid()}, {limits.concurrency} at once)",
            file=sys.stderr,
            flush=True,
        )
        serve(eng, stop, args.idle_timeout, limits=limits, http=http, webhook=args.webhook)
    return 0


def _open_for_serve(home: str | None, engine: Any, wait: float = 60.0) -> Any:
    """The home's store, for `serve`. A short-lived command (`status`, `list`, a
    `run`) may hold it for a moment: wait for it. Another `serve` holds it for good:
    refuse at once."""
    import time

    from durabook_kernel import wire

    from .errors import EngineBusy
    from .home import resolve_home

    deadline = time.monotonic() + wait
    said = False
    while True:
        try:
            return engine(home)
        except EngineBusy as busy:
            sock = wire.connect(resolve_home(home))
            owner: dict[str, Any] = {}
            if sock is not None:
                try:
                    owner = wire.call(sock, "ping") or {}
                except (OSError, RuntimeError, ValueError):
                    owner = {}
                finally:
                    sock.close()
            if owner.get("host") == "jupyter":
                if not said:  # JupyterLab hosts it: it hands over, its runs go on here
                    _take_over(home, owner)
                    said = True
                    deadline = time.monotonic() + wait
                elif time.monotonic() > deadline:
                    raise busy from None
            elif owner.get("serving") or time.monotonic() > deadline:
                raise busy from None
            if not said:
                pid = owner.get("pid") or busy.fields.get("pid")
                print(f"waiting for pid {pid} to finish with the store", file=sys.stderr)
                said = True
            time.sleep(0.1)


def _take_over(home: str | None, owner: dict[str, Any]) -> None:
    from durabook_kernel import wire

    from .home import resolve_home

    sock = wire.connect(resolve_home(home))
    if sock is None:
        return  # it just left: the next try opens the store
    try:
        wire.call(sock, "handoff")
    except (OSError, RuntimeError, ValueError) as exc:
        print(f"JupyterLab did not hand the home over: {exc}", file=sys.stderr)
        return
    finally:
        sock.close()
    pid = owner.get("pid")
    print(
        f"taking the home over from JupyterLab (pid {pid}): its runs and schedules go on "
        "here, and JupyterLab forwards to this engine",
        file=sys.stderr,
        flush=True,
    )
