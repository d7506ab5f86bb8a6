"""The client side of the control socket: the engine's verbs asked of the home's owner.

:func:`open_engine` gives the home's engine: opened here when nobody owns the
store, else reached over the socket (see :mod:`durabook.control` for the
server and the protocol). :class:`RemoteEngine` re-sends a request the owner
never accepted (it was leaving: the request reaches the next owner, or this
process opens the store itself), and raises :class:`EngineLost` (exit 4) when
the owner dies after accepting one.
"""

from __future__ import annotations

import builtins
import contextlib
import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from pydantic import BaseModel, TypeAdapter

from durabook_kernel.wire import UnsafeSocket, encode, max_message_bytes, peer_credentials, recv
from durabook_kernel.wire import connect as wire_connect

from .api.models import (
    CreateRequest,
    CronPreview,
    CronPreviewRequest,
    EventReply,
    EventRequest,
    Health,
    IdRequest,
    InstancePage,
    InstanceRef,
    LifecycleReply,
    ListRequest,
    NameRequest,
    RestartRequest,
    ResumeRequest,
    ScheduleInfo,
    ScheduleRunsRequest,
    ScheduleSpec,
    TopReply,
    WaitRequest,
)
from .api.service import VERBS, Service
from .control import ERRORS, READ_ONLY, ControlServer, Request
from .errors import BadInput, DurabookError, EngineBusy, EngineLost, UnsafePath
from .home import resolve_home
from .models import InstanceStatus, RunResult
from .progress import CellEvent, Progress

if TYPE_CHECKING:
    from .engine import Engine

__all__ = ["RemoteEngine", "open_engine"]


def _connect(path: Path) -> socket.socket | None:
    try:
        return wire_connect(path)
    except UnsafeSocket as exc:
        raise UnsafePath(str(exc), path=exc.path) from None


def _acquire(path: Path, deadline: float) -> Engine | socket.socket:
    """Open the home's store, or reach the process that has it open."""
    sock = _connect(path)  # an engine answers: no need to load the store's code at all
    if sock is not None:
        return sock
    from .engine import Engine

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
        return ControlServer(Service(eng))
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
        self.wait_s = wait
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
        if not isinstance(target, socket.socket):
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
                return Request(op, args).run(Service(self._local), progress, on_created)
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
                deadline = time.monotonic() + self.wait_s
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
            elif event == "executed" and progress:
                progress.executed(CellEvent.from_dict(msg))

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

    # -- the verbs: the same methods, requests and replies as durabook.api.service.Service
    def _verb(
        self,
        name: str,
        req: BaseModel | None = None,
        progress: Progress | None = None,
        on_created: Callable[[str], None] | None = None,
    ) -> Any:
        args = req.model_dump(mode="json", exclude_defaults=True) if req is not None else {}
        out = self._call(name, progress, on_created, **args)
        return _adapter(name).validate_python(out)

    def create(
        self, req: CreateRequest, on_created: Callable[[str], None] | None = None
    ) -> InstanceRef:
        return cast(InstanceRef, self._verb("create", _absolute(req), None, on_created))

    def run(
        self,
        req: CreateRequest,
        progress: Progress | None = None,
        on_created: Callable[[str], None] | None = None,
    ) -> RunResult:
        return cast(RunResult, self._verb("run", _absolute(req), progress, on_created))

    def resume(self, req: ResumeRequest, progress: Progress | None = None) -> RunResult:
        if req.notebook:
            req = req.model_copy(update={"notebook": str(Path(req.notebook).absolute())})
        return cast(RunResult, self._verb("resume", req, progress))

    def wait(self, req: WaitRequest, progress: Progress | None = None) -> RunResult:
        return cast(RunResult, self._verb("wait", req, progress))

    def status(self, req: IdRequest) -> InstanceStatus:
        return cast(InstanceStatus, self._verb("status", req))

    def list(self, req: ListRequest) -> InstancePage:
        return cast(InstancePage, self._verb("list", req))

    def notebook(self, req: IdRequest) -> dict[str, Any]:
        return cast("dict[str, Any]", self._verb("notebook", req))

    def health(self, req: Any = None) -> Health:
        return cast(Health, self._verb("health"))

    def top(self, req: Any = None) -> TopReply:
        return cast(TopReply, self._verb("top"))

    def send_event(self, req: EventRequest) -> EventReply:
        return cast(EventReply, self._verb("send_event", req))

    def pause(self, req: IdRequest) -> LifecycleReply:
        return cast(LifecycleReply, self._verb("pause", req))

    def unpause(self, req: IdRequest) -> LifecycleReply:
        return cast(LifecycleReply, self._verb("unpause", req))

    def terminate(self, req: IdRequest) -> LifecycleReply:
        return cast(LifecycleReply, self._verb("terminate", req))

    def cancel(self, req: IdRequest) -> LifecycleReply:
        return cast(LifecycleReply, self._verb("cancel", req))

    def restart(self, req: RestartRequest) -> LifecycleReply:
        return cast(LifecycleReply, self._verb("restart", req))

    def schedule_add(self, req: ScheduleSpec) -> ScheduleInfo:
        req = req.model_copy(update={"notebook": str(Path(req.notebook).absolute())})
        return cast(ScheduleInfo, self._verb("schedule_add", req))

    def schedule_list(self, req: Any = None) -> builtins.list[ScheduleInfo]:
        return cast("list[ScheduleInfo]", self._verb("schedule_list"))

    def schedule_get(self, req: NameRequest) -> ScheduleInfo:
        return cast(ScheduleInfo, self._verb("schedule_get", req))

    def schedule_pause(self, req: NameRequest) -> ScheduleInfo:
        return cast(ScheduleInfo, self._verb("schedule_pause", req))

    def schedule_unpause(self, req: NameRequest) -> ScheduleInfo:
        return cast(ScheduleInfo, self._verb("schedule_unpause", req))

    def schedule_remove(self, req: NameRequest) -> ScheduleInfo:
        return cast(ScheduleInfo, self._verb("schedule_remove", req))

    def schedule_runs(self, req: ScheduleRunsRequest) -> InstancePage:
        return cast(InstancePage, self._verb("schedule_runs", req))

    def schedule_preview(self, req: CronPreviewRequest) -> CronPreview:
        return cast(CronPreview, self._verb("schedule_preview", req))


_ADAPTERS: dict[str, TypeAdapter[Any]] = {}


def _adapter(name: str) -> TypeAdapter[Any]:
    if name not in _ADAPTERS:
        _ADAPTERS[name] = TypeAdapter(VERBS[name].reply)
    return _ADAPTERS[name]


def _absolute(req: CreateRequest) -> CreateRequest:
    """Paths are the caller's: the engine may run in another folder."""
    update: dict[str, Any] = {}
    if req.notebook:
        update["notebook"] = str(Path(req.notebook).absolute())
    if req.output:
        update["output"] = str(Path(req.output).absolute())
    if req.cwd:
        update["cwd"] = str(Path(req.cwd).absolute())
    return req.model_copy(update=update) if update else req


@contextlib.contextmanager
def open_engine(
    home: str | os.PathLike[str] | None = None, serve: bool = False, wait: float = 10.0
) -> Iterator[Service | RemoteEngine]:
    """The home's engine verbs: a :class:`Service` over the store opened here when
    nobody owns it, else a :class:`RemoteEngine` asking the owner. Both have the
    same methods, requests and replies.

    With ``serve`` the opened engine listens for other processes while in use,
    and on leaving waits for the runs it accepted.
    """
    path = resolve_home(home)
    target = _acquire(path, time.monotonic() + wait)
    if not isinstance(target, socket.socket):
        server = _serve_engine(target, serve)
        try:
            yield Service(target)
        finally:
            _release(target, server)
        return
    remote = RemoteEngine(path, target, serve=serve, wait=wait)
    try:
        yield remote
    finally:
        remote.close()
