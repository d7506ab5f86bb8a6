"""Interactive sessions: ``%load_ext durabook.kernel`` in a notebook you run by hand.

Each cell you run is checkpointed (the variables it changed, its result or
error) to the engine of ``$DURABOOK_HOME`` (default ``./.durabook``) as one
instance per kernel. The kernel never opens the store: it talks to the engine
over the home's control socket, and starts ``durabook serve`` in the background
when no engine is running. If the kernel dies, ``%durabook restore ID`` in a new
kernel brings the session's variables back.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import traceback
from typing import Any

from . import wire
from .blobs import BlobStore
from .meter import CellMeter

__all__ = ["InteractiveSession", "durabook_magic"]

ENGINE_START_TIMEOUT = 30.0


def _ensure_engine(home: Any) -> Any:
    sock = wire.connect(home)
    if sock is not None:
        return sock
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    (home / "logs").mkdir(mode=0o700, exist_ok=True)
    # the owner's alone, as everything in a home (the kernel's umask may be looser)
    with open(home / "logs" / "engine.log", "ab", opener=lambda p, f: os.open(p, f, 0o600)) as log:
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "durabook",
                "--home",
                str(home),
                "serve",
                "--idle-timeout",
                "600",
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
    deadline = time.monotonic() + ENGINE_START_TIMEOUT
    while time.monotonic() < deadline:
        sock = wire.connect(home)
        if sock is not None:
            return sock
        time.sleep(0.1)
    raise RuntimeError(f"no durabook engine answered for {home}; see {home}/logs/engine.log")


class InteractiveSession:
    def __init__(self, ext: Any) -> None:
        self.ext = ext
        self.home = wire.home_path()
        self.sock: Any = None
        self.id: str | None = None
        self.index = 0
        self.disabled = False
        self._started = time.time()
        self._t0 = time.perf_counter()
        self._cell_id: str | None = None
        self._meter = CellMeter()

    def connect(self) -> None:
        if self.sock is not None:
            return
        self.sock = _ensure_engine(self.home)
        notebook = os.environ.get("JPY_SESSION_NAME") or "<interactive>"
        self.id = wire.call(
            self.sock, "open_session", notebook=notebook, pid=os.getpid(), cwd=os.getcwd()
        )
        self.ext.tracker.blobs = BlobStore(self.home / "blobs")
        self.ext.tracker.reset_baseline()
        print(
            f"durabook: checkpointing this kernel as instance {self.id} (home {self.home})",
            file=sys.stderr,
        )

    def pre_run_cell(self, info: Any) -> None:
        self._started = time.time()
        self._meter.start()
        self._t0 = time.perf_counter()
        self._cell_id = getattr(info, "cell_id", None)

    def post_run_cell(self, result: Any) -> None:
        if self.disabled:
            return
        try:
            self.connect()
            self._checkpoint(result)
        except Exception as exc:  # never break the user's cell; say so once, plainly
            self.disabled = True
            print(f"durabook: checkpointing is off for this kernel: {exc}", file=sys.stderr)
            traceback.print_exc(file=sys.__stderr__)

    def _checkpoint(self, result: Any) -> None:
        info = result.info
        source = info.raw_cell if info is not None else ""
        step: dict[str, Any] = {
            "index": self.index,
            "cell_id": self._cell_id or getattr(info, "cell_id", None),
            "source": source,
            "execution_count": result.execution_count,
            "started_at": self._started,
            "duration_ms": (time.perf_counter() - self._t0) * 1000.0,
            **self._meter.stop(),
        }
        if result.success:
            step["status"] = "ok"
            step["manifest"] = self.ext.tracker.checkpoint(source)
            for name, info in step["manifest"].get("unserializable", {}).items():
                # said at once, one line, while the author still looks at the cell
                print(
                    f"durabook: {name} ({info['type']}) cannot be saved: {info['error']}; "
                    "a restore will not bring it back (mark the cell '# durabook: replay')",
                    file=sys.stderr,
                )
            if result.result is not None:
                step["outputs"] = [
                    {
                        "output_type": "execute_result",
                        "metadata": {},
                        "execution_count": result.execution_count,
                        "data": {"text/plain": repr(result.result)},
                    }
                ]
        else:
            exc = result.error_in_exec or result.error_before_exec
            step["status"] = "error"
            step["error"] = {
                "ename": type(exc).__name__,
                "evalue": str(exc),
                "traceback": traceback.format_exception(exc),
            }
        wire.call(self.sock, "checkpoint", id=self.id, step=step)
        self.index += 1

    def close(self) -> None:
        if self.sock is not None and self.id is not None:
            try:
                wire.call(self.sock, "end_session", id=self.id)
            finally:
                self.sock.close()
                self.sock = None


def durabook_magic(shell: Any, ext: Any, line: str) -> None:
    """``%durabook status`` | ``%durabook restore ID``."""
    args = line.split()
    if not args or args[0] == "status":
        session = ext.interactive
        print(f"instance {session.id}" if session and session.id else "no session yet")
        return
    if args[0] == "restore" and len(args) == 2:
        from .restore import restore_now

        home = wire.home_path()
        sock = wire.connect(home) or _ensure_engine(home)
        try:
            plan = wire.call(sock, "restore_plan", id=args[1])
        finally:
            sock.close()
        tracker = ext.tracker
        tracker.blobs = BlobStore(plan["blobs"])
        report = restore_now(shell, tracker, plan["restore"], plan["replay"])
        names = sorted(n for n in report.loaded if not n.startswith("__"))
        print(f"restored {len(names)} variables from {args[1]}: {', '.join(names) or '-'}")
        # everything that could not come back, each with why: never silently dropped
        lost = {**(plan.get("unrestorable") or {}), **report.failed}
        for name, why in sorted(lost.items()):
            print(f"  not restored: {name}: {why}")
        for problem in report.problems:
            print(f"  not re-applied: {problem}")
        return
    raise ValueError("usage: %durabook status | %durabook restore ID")
