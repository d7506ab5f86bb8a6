"""The client side of the control socket: the engine's verbs asked of the home's owner.

:func:`open_engine` gives the home's engine: opened here when nobody owns the
store, else reached over the socket (see :mod:`durabook.control` for the
server and the protocol). :class:`RemoteEngine` re-sends a request the owner
never accepted (it was leaving: the request reaches the next owner, or this
process opens the store itself), and raises :class:`EngineLost` (exit 4) when
the owner dies after accepting one.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from durabook_kernel.wire import UnsafeSocket, encode, max_message_bytes, peer_credentials, recv
from durabook_kernel.wire import connect as wire_connect

from .control import ERRORS, READ_ONLY, ControlServer, Request
from .engine import Engine, Progress, resolve_home
from .errors import BadInput, DurabookError, EngineBusy, EngineLost, UnsafePath
from .models import InstanceStatus, InstanceSummary, RunResult

__all__ = ["RemoteEngine", "open_engine"]


def _connect(path: Path) -> socket.socket | None:
    try:
        return wire_connect(path)
    except UnsafeSocket as exc:
        raise UnsafePath(str(exc), path=exc.path) from None


def _acquire(path: Path, deadline: float) -> Engine | socket.socket:
    """Open the home's store, or reach the process that has it open."""
    while True:
        try:
            return Engine(path)
        except EngineBusy as busy:
            sock = _connect(path)
            if sock is not None:
                return sock
            if time.monotonic() > deadline:
                raise EngineBusy(
                    busy.message + ", which does not answer on its control "
                    "socket; try again when it has finished",
                    **busy.fields,
                ) from None
            time.sleep(0.1)  # the owner is starting up (or just leaving)


def _serve_engine(eng: Engine, serve: bool) -> ControlServer | None:
    if not serve:
        return None
    try:
        return ControlServer(eng)
    except BaseException:
        eng.close()
        raise


def _release(eng: Engine, server: ControlServer | None) -> None:
    try:
        if server is not None:
            server.drain()
            server.close()
    finally:
        eng.close()


def _gone(pid: int | None) -> bool:
    """The process has exited (a zombie counts: only its parent has not reaped it)."""
    if pid is None:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            state = fh.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except OSError:
            return False
        return False
    return state in (b"Z", b"X")


class _NotServed(Exception):
    """The connection ended before the engine accepted the request: nothing was done."""


class _Lost(Exception):
    """The connection ended after the engine accepted the request."""


class RemoteEngine:
    """The engine's verbs, asked of the process that owns the home.

    When that owner leaves before taking a request, the request goes to the next
    owner, or this process opens the store itself (serving others too when
    ``serve``) and answers it here: callers see one engine either way.
    """

    def __init__(
        self, home: Path, sock: socket.socket, serve: bool = False, wait: float = 10.0
    ) -> None:
        self.home = home
        self.serve = serve
        self.wait = wait
        self._local: Engine | None = None
        self._server: ControlServer | None = None
        self._attach(sock)

    def _attach(self, sock: socket.socket) -> None:
        self.sock = sock
        self.rfile = sock.makefile("rb")
        try:
            self.peer_pid: int | None = peer_credentials(sock)[0]
        except OSError:
            self.peer_pid = None

    def _detach(self) -> None:
        with contextlib.suppress(OSError):
            self.rfile.close()
        with contextlib.suppress(OSError):
            self.sock.close()

    def close(self) -> None:
        self._detach()
        if self._local is not None:
            eng, self._local = self._local, None
            _release(eng, self._server)

    def _reconnect(self, deadline: float) -> None:
        self._detach()
        target = _acquire(self.home, deadline)
        if isinstance(target, Engine):
            self._server = _serve_engine(target, self.serve)
            self._local = target
        else:
            self._attach(target)

    def _call(
        self, op: str, progress: Progress | None = None, on_created: Any = None, **args: Any
    ) -> Any:
        deadline: float | None = None
        asked_again = False
        known = {"id": args.get("id")}

        def created(iid: str) -> None:
            known["id"] = iid
            if on_created:
                on_created(iid)

        while True:
            if self._local is not None:
                return Request(op, args).run(self._local, progress, on_created)
            try:
                msg = self._ask(op, args, progress, created, known)
            except _NotServed:
                pass
            except _Lost:
                if op not in READ_ONLY or asked_again:
                    raise EngineLost(
                        self._lost_message(op, known["id"]), op=op, instance=known["id"]
                    ) from None
                asked_again = True  # a read: safe to ask whoever owns the home now
            else:
                break
            if deadline is None:
                deadline = time.monotonic() + self.wait
            elif time.monotonic() > deadline:
                raise EngineBusy(
                    f"the engine of {self.home} did not take the request `{op}`; try again"
                )
            self._reconnect(deadline)
        if msg.get("ok"):
            return msg.get("result")
        err = msg.get("error") or {}
        cls = ERRORS.get(err.get("code", ""), DurabookError)
        fields = {k: v for k, v in err.items() if k not in ("code", "message", "exit_code")}
        raise cls(err.get("message", "engine error"), **fields)

    def _ask(
        self,
        op: str,
        args: dict[str, Any],
        progress: Progress | None,
        created: Callable[[str], None],
        known: dict[str, Any],
    ) -> dict[str, Any]:
        data = encode({"op": op, "args": args})
        limit = max_message_bytes()
        if len(data) > limit + 1:
            raise BadInput(
                f"the request `{op}` is larger than the {limit} bytes a message may hold "
                "(DURABOOK_MAX_MESSAGE_BYTES)"
            )
        accepted = False
        with contextlib.suppress(OSError):
            self.sock.sendall(data)  # on failure a reply may still wait: read it below
        while True:
            try:
                msg = recv(self.rfile)  # the engine's uid was checked: its replies are trusted
            except (OSError, ValueError):
                raise (_Lost if accepted else _NotServed)() from None
            if not isinstance(msg, dict):
                raise _Lost()
            event = msg.get("event")
            if event is None:
                return msg
            if event == "accepted":
                accepted = True
            elif event == "created":
                created(msg["id"])
            elif event == "start":
                known["id"] = msg["id"]
                if progress:
                    progress.start(msg["id"], msg["total"], msg["done"])
            elif event == "committed" and progress:
                progress.committed(msg["index"])

    def _lost_message(self, op: str, instance_id: str | None) -> str:
        pid = self.peer_pid
        who = f"the engine of {self.home}" + (f" (pid {pid})" if pid else "")
        deadline = time.monotonic() + 1.0
        while not _gone(pid) and time.monotonic() < deadline:
            time.sleep(0.05)  # the socket closes a moment before the process is gone
        if not _gone(pid):
            text = f"lost the connection to {who} while it served `{op}`"
            if instance_id:
                return text + f"; `durabook status {instance_id}` shows how the instance goes on"
            return text + "; try again"
        text = f"{who} went away while serving `{op}`"
        if instance_id and op in ("run", "resume", "restart", "unpause", "send_event"):
            return (
                text + "; the instance continues from its last committed cell with "
                f"`durabook resume {instance_id}`"
            )
        if op == "run":
            return text + "; `durabook list` shows whether the instance was created"
        return text + "; try again"

    def run(
        self,
        notebook: Any,
        parameters: dict[str, Any] | None = None,
        instance_id: str | None = None,
        output: Any = None,
        from_text: bool = False,
        progress: Progress | None = None,
        on_created: Any = None,
        if_exists: str = "return",
        env: dict[str, str] | None = None,
        scan_all: bool = False,
    ) -> RunResult:
        out = self._call(
            "run",
            progress,
            on_created,
            notebook=str(Path(notebook).absolute()),
            parameters=parameters,
            id=instance_id,
            output=str(Path(output).absolute()) if output else None,
            from_text=from_text,
            if_exists=if_exists,
            env=env,
            scan_all=scan_all,
        )
        return RunResult.model_validate(out)

    def resume(
        self,
        instance_id: str,
        notebook: Any = None,
        progress: Progress | None = None,
        now: bool = False,
    ) -> RunResult:
        nb = str(Path(notebook).absolute()) if notebook else None
        out = self._call("resume", progress, id=instance_id, notebook=nb, now=now)
        return RunResult.model_validate(out)

    def status(self, instance_id: str) -> InstanceStatus:
        return InstanceStatus.model_validate(self._call("status", id=instance_id))

    def lifecycle(self, op: str, instance_id: str) -> dict[str, Any]:
        out: dict[str, Any] = self._call(op, id=instance_id)
        return out

    def restart(self, instance_id: str, from_cell: int | None = None) -> None:
        self._call("restart", id=instance_id, from_cell=from_cell)

    def send_event(self, instance_id: str, name: str, data: str | None = None) -> dict[str, Any]:
        out: dict[str, Any] = self._call("send_event", id=instance_id, name=name, data=data)
        return out

    def list(self, status: str | None = None, limit: int | None = None) -> list[InstanceSummary]:
        return [
            InstanceSummary.model_validate(i)
            for i in self._call("list", status=status, limit=limit)
        ]


@contextlib.contextmanager
def open_engine(
    home: str | os.PathLike[str] | None = None, serve: bool = False, wait: float = 10.0
) -> Iterator[Engine | RemoteEngine]:
    """The home's engine: opened here when nobody owns the store, else reached remotely.

    With ``serve`` the opened engine listens for other processes while in use,
    and on leaving waits for the runs it accepted.
    """
    path = resolve_home(home)
    target = _acquire(path, time.monotonic() + wait)
    if isinstance(target, Engine):
        server = _serve_engine(target, serve)
        try:
            yield target
        finally:
            _release(target, server)
        return
    remote = RemoteEngine(path, target, serve=serve, wait=wait)
    try:
        yield remote
    finally:
        remote.close()
