"""The engine's control socket: how other processes of a home reach its one writer.

DuckDB lets one process write a database file. The process that opens a home's
store (a ``durabook run``, ``durabook serve``, ...) is that home's engine and
listens on a unix socket; any other command for the same home talks to it
instead of opening the store: ``status`` and ``list`` answer from the live
store, ``run`` and ``resume`` execute in the engine with progress streamed back,
and interactive kernels send their checkpoints. The engine process stays up
until the runs it accepted have ended.

Safety (see :mod:`durabook_kernel.wire` for the socket's folder): the server
drops connections from other uids (``SO_PEERCRED``); every request is one JSON
line of at most ``$DURABOOK_MAX_MESSAGE_BYTES`` (16 MiB) whose arguments are
checked by a pydantic model per operation, and anything else gets a
``bad_input`` reply. Replies and progress events go through a bounded queue per
connection drained by its own thread, so a client that stops reading is
dropped instead of stalling a run.

Hand-off: the server answers ``{"event": "accepted"}`` before it acts on a
request. A client whose connection ends before that knows nothing was done and
asks again (the owner was leaving: it reaches the next owner or opens the store
itself); one whose connection ends after it gets :class:`EngineLost`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from durabook_kernel.wire import (
    UnsafeSocket,
    encode,
    ensure_runtime_dir,
    max_message_bytes,
    peer_credentials,
    socket_path,
)

from .api.models import validation_summary
from .api.service import VERBS, Service, Verb
from .errors import (
    BadInput,
    DurabookError,
    EngineBusy,
    EngineLost,
    ErrorCode,
    InvalidNotebook,
    InvalidParameter,
    InvalidState,
    StorageFull,
    UnknownInstance,
    UnknownSchedule,
    UnsafePath,
)
from .progress import CellEvent, Progress

__all__ = ["ERRORS", "READ_ONLY", "ControlServer"]

log = logging.getLogger("durabook.control")

OUTBOUND_QUEUE = 1000  # messages waiting for one client before it is dropped
CLOSE_WAIT = 5.0  # seconds ControlServer.close waits for its connections' threads
ACCEPT_TIMEOUT = 10.0  # seconds for "accepted" to reach a client before acting for it
READ_ONLY = frozenset(  # safe to ask again
    {"ping", "restore_plan", *(name for name, verb in VERBS.items() if verb.read_only)}
)

ERRORS: dict[str, type[DurabookError]] = {  # error codes back to classes, client side
    ErrorCode.INVALID_NOTEBOOK.value: InvalidNotebook,
    ErrorCode.INVALID_PARAMETER.value: InvalidParameter,
    ErrorCode.UNKNOWN_INSTANCE.value: UnknownInstance,
    ErrorCode.UNKNOWN_SCHEDULE.value: UnknownSchedule,
    ErrorCode.INVALID_STATE.value: InvalidState,
    ErrorCode.BAD_INPUT.value: BadInput,
    ErrorCode.ENGINE_BUSY.value: EngineBusy,
    ErrorCode.STORAGE_FULL.value: StorageFull,
    ErrorCode.ENGINE_LOST.value: EngineLost,
    ErrorCode.UNSAFE_PATH.value: UnsafePath,
}


# -- requests: the engine's verbs (durabook.api.service.VERBS) and the kernels' own ----


class _Args(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class _NoArgs(_Args):
    pass


class _IdArgs(_Args):
    id: str


class _OpenSessionArgs(_Args):
    notebook: str
    pid: int
    cwd: str | None = None


class _Step(BaseModel):
    """A cell an interactive kernel ran (see durabook_kernel.interactive): the fields the
    engine reads are checked; others pass through for newer kernels."""

    model_config = ConfigDict(extra="allow")

    index: int = Field(ge=0)
    source: str
    status: Literal["ok", "error"]
    cell_id: str | None = None
    execution_count: int | None = None
    started_at: float | None = None
    duration_ms: float | None = None
    cpu_s: float | None = Field(default=None, ge=0)
    peak_rss_bytes: int | None = Field(default=None, ge=0)
    manifest: dict[str, Any] | None = None
    outputs: list[dict[str, Any]] | None = None
    error: dict[str, Any] | None = None


class _CheckpointArgs(_IdArgs):
    step: _Step


_Created = Callable[[str], None] | None
_Handler = Callable[[Service, Any, Progress | None, _Created], Any]


def _ping(svc: Service, a: _NoArgs, progress: Progress | None, created: _Created) -> Any:
    return {"pid": os.getpid(), "home": str(svc.home), "serving": svc.serving, "host": svc.host}


def _handoff(svc: Service, a: _NoArgs, progress: Progress | None, created: _Created) -> Any:
    """A `durabook serve` asks for the home: only an engine hosted by JupyterLab
    gives it up (its runs go on in the new owner, from their last committed cell)."""
    if svc.on_handoff is None:
        raise InvalidState(
            f"this home is served by a {svc.host!r} engine (pid {os.getpid()}), which "
            "hands it over to no one: stop it first",
            pid=os.getpid(),
        )
    svc.on_handoff()
    return {"pid": os.getpid(), "host": svc.host}


def _open_session(
    svc: Service, a: _OpenSessionArgs, progress: Progress | None, created: _Created
) -> Any:
    return svc.open_session(a.notebook, a.pid, a.cwd)


def _checkpoint(
    svc: Service, a: _CheckpointArgs, progress: Progress | None, created: _Created
) -> Any:
    svc.checkpoint(a.id, a.step.model_dump(exclude_none=True))


def _end_session(svc: Service, a: _IdArgs, progress: Progress | None, created: _Created) -> Any:
    svc.end_session(a.id)


def _restore_plan(svc: Service, a: _IdArgs, progress: Progress | None, created: _Created) -> Any:
    return svc.restore_plan(a.id)


def _dump(result: Any) -> Any:
    if isinstance(result, BaseModel):
        return result.model_dump(mode="json")
    if isinstance(result, list):
        return [_dump(r) for r in result]
    return result


def _verb(name: str, verb: Verb) -> _Handler:
    def handle(svc: Service, a: Any, progress: Progress | None, created: _Created) -> Any:
        method = getattr(svc, name)
        if name in ("run", "create"):
            result = method(a, progress, created) if name == "run" else method(a, created)
        elif verb.streams:
            result = method(a, progress)
        else:
            result = method(a)
        return _dump(result)

    return handle


_OPS: dict[str, tuple[type[BaseModel], _Handler]] = {
    "ping": (_NoArgs, _ping),
    "open_session": (_OpenSessionArgs, _open_session),
    "checkpoint": (_CheckpointArgs, _checkpoint),
    "end_session": (_IdArgs, _end_session),
    "restore_plan": (_IdArgs, _restore_plan),
    "handoff": (_NoArgs, _handoff),
}
_OPS.update({name: (verb.request or _NoArgs, _verb(name, verb)) for name, verb in VERBS.items()})


def _summary(exc: ValidationError) -> str:
    return validation_summary(exc, "args")


class Request:
    """A request checked against its operation's model, ready to run."""

    def __init__(self, op: Any, args: Any) -> None:
        if not isinstance(op, str):
            raise BadInput('a request needs an operation name: {"op": "...", "args": {...}}')
        if op not in _OPS:
            raise BadInput(f"unknown operation {op[:80]!r}; one of: {', '.join(sorted(_OPS))}")
        if args is None:
            args = {}
        if not isinstance(args, dict):
            raise BadInput(f"the args of `{op}` must be a JSON object, not {type(args).__name__}")
        model, self.handler = _OPS[op]
        try:
            # strict, from JSON: `true` is no number, "5" no integer (enums take their values)
            self.args = model.model_validate_json(json.dumps(args), strict=True)
        except ValidationError as exc:
            raise BadInput(f"bad arguments for `{op}`: {_summary(exc)}") from None
        self.op = op

    @classmethod
    def parse(cls, line: bytes) -> Request:
        try:
            req = json.loads(line)
        except RecursionError:
            raise BadInput("the request nests too deeply to be read") from None
        except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
            raise BadInput(f"the request is not JSON: {exc}") from None
        if not isinstance(req, dict):
            raise BadInput('a request must be a JSON object: {"op": "...", "args": {...}}')
        return cls(req.get("op"), req.get("args"))

    def run(self, svc: Service, progress: Progress | None, created: _Created) -> Any:
        try:
            return self.handler(svc, self.args, progress, created)
        except RecursionError:
            raise BadInput(f"the arguments of `{self.op}` nest too deeply") from None
        except ValidationError as exc:  # a record built from the arguments (a step's manifest)
            raise BadInput(f"bad arguments for `{self.op}`: {_summary(exc)}") from None


def _error_reply(exc: DurabookError) -> dict[str, Any]:
    return {"ok": False, "error": {**exc.to_dict(), "exit_code": exc.exit_code}}


# -- server side ---------------------------------------------------------------------


class _Conn:
    """One client: a reader thread serves its requests one after the other; what goes
    back waits in a bounded queue that a sender thread drains, so the engine never
    blocks on a client (one that falls ``limit`` messages behind is dropped)."""

    def __init__(self, sock: socket.socket, pid: int, limit: int) -> None:
        self.sock = sock
        self.pid = pid
        # bytes to send; an Event is set once everything before it was sent; None ends
        self._queue: queue.Queue[bytes | threading.Event | None] = queue.Queue(limit)
        self._dropped = threading.Event()
        self.reader: threading.Thread | None = None  # serves its requests, set by the server
        self._sender = threading.Thread(
            target=self._drain, daemon=True, name=f"durabook-control-send-{pid}"
        )
        self._sender.start()

    def send(self, obj: Any) -> bool:
        """Queue a message; False when the client is gone (or was just dropped)."""
        if self._dropped.is_set():
            return False
        try:
            data = encode(obj)
        except (TypeError, ValueError, RecursionError) as exc:  # a bug of ours: say so
            log.exception("unsendable control message")
            error = {"code": ErrorCode.INTERNAL.value, "message": f"unsendable reply: {exc}"}
            data = encode({"ok": False, "error": {**error, "exit_code": 1}})
        try:
            self._queue.put_nowait(data)
        except queue.Full:
            log.info("dropping control client pid %d: it stopped reading", self.pid)
            self.drop()
            return False
        return True

    def flush(self, timeout: float) -> bool:
        """Wait until everything queued so far was handed to the client's socket."""
        sent = threading.Event()
        try:
            self._queue.put(sent, timeout=timeout)
        except queue.Full:
            self.drop()
            return False
        return sent.wait(timeout) and not self._dropped.is_set()

    def drop(self) -> None:
        self._dropped.set()
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the reader and a blocked send

    def stop_reading(self) -> None:
        """The engine is leaving: no more requests (a pending reply still goes out)."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RD)

    def join(self, deadline: float) -> None:
        for t in (self.reader, self._sender):
            if t is not None and t is not threading.current_thread():
                t.join(max(0.0, deadline - time.monotonic()))

    def finish(self) -> None:
        """Nothing more will be queued: the sender flushes, then closes the socket."""
        try:
            self._queue.put_nowait(None)
        except queue.Full:
            self.drop()
            self._queue.put(None)  # the sender discards quickly once dropped

    def _drain(self) -> None:
        try:
            while True:
                data = self._queue.get()
                if data is None:
                    return
                if isinstance(data, threading.Event):
                    data.set()
                    continue
                if self._dropped.is_set():
                    continue
                try:
                    self.sock.sendall(data)
                except OSError:
                    self.drop()
        finally:
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RDWR)
            self.sock.close()


class _StreamProgress(Progress):
    def __init__(self, conn: _Conn) -> None:
        self.conn = conn

    def start(self, instance_id: str, total: int, done: int) -> None:
        self.conn.send({"event": "start", "id": instance_id, "total": total, "done": done})

    def committed(self, index: int) -> None:
        self.conn.send({"event": "committed", "index": index})

    def executed(self, event: CellEvent) -> None:
        self.conn.send({"event": "executed", **event.to_dict()})


def _private_socket(path: Path) -> socket.socket:
    """Bind ``path`` (in a folder checked to be ours) and make it 0600."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()  # a stale socket: we hold the store's lock, so it is ours
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
        os.chmod(path, 0o600)  # the folder is 0700 already: this is the second wall
        sock.listen(64)
    except BaseException:
        sock.close()
        raise
    return sock


class ControlServer:
    """Serves one engine's verbs on its home's socket, a thread per connection."""

    def __init__(self, service: Service, queue_limit: int = OUTBOUND_QUEUE) -> None:
        self.service = service
        self.path = socket_path(service.home)
        self.max_message = max_message_bytes()
        self.queue_limit = queue_limit
        try:
            ensure_runtime_dir()
        except UnsafeSocket as exc:
            raise UnsafePath(str(exc), path=exc.path) from None
        self.sock = _private_socket(self.path)
        st = os.stat(self.path)
        self._inode = (st.st_dev, st.st_ino)
        self._uid = os.getuid()
        self.busy = 0
        self.connections = 0
        self.last_activity = time.monotonic()
        self._conns: set[_Conn] = set()
        self._cv = threading.Condition()
        self._closing = False
        self._thread = threading.Thread(target=self._accept, daemon=True, name="durabook-control")
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.sock.accept()
            except OSError:
                if self._closing:
                    return
                time.sleep(0.1)  # e.g. out of file descriptors: try again, do not stop serving
                continue
            try:
                pid, uid, _ = peer_credentials(sock)
            except OSError:
                sock.close()
                continue
            if uid != self._uid:
                # another user's process: not a word back (it reached a socket it should not)
                log.warning("refused a control connection from uid %d (pid %d)", uid, pid)
                sock.close()
                continue
            conn = _Conn(sock, pid, self.queue_limit)
            conn.reader = threading.Thread(
                target=self._serve, args=(conn,), daemon=True, name=f"durabook-control-{pid}"
            )
            with self._cv:
                self._conns.add(conn)
                self.connections += 1
            conn.reader.start()

    def _serve(self, conn: _Conn) -> None:
        try:
            with conn.sock.makefile("rb") as rfile:
                self._serve_requests(conn, rfile)
        except OSError:
            pass  # the client went away
        finally:
            from .kernels.pool import close_thread_loop  # here: a client never imports the pool

            close_thread_loop()
            conn.finish()
            with self._cv:
                self._conns.discard(conn)
                self.connections -= 1
                self.last_activity = time.monotonic()

    def _serve_requests(self, conn: _Conn, rfile: Any) -> None:
        limit = self.max_message
        while True:
            line = rfile.readline(limit + 1)  # never more than the limit in memory
            if not line:
                return
            if len(line) > limit and not line.endswith(b"\n"):
                conn.send(
                    _error_reply(
                        BadInput(
                            f"a message may hold at most {limit} bytes "
                            "(DURABOOK_MAX_MESSAGE_BYTES); closing the connection"
                        )
                    )
                )
                return
            try:
                req = Request.parse(line)
            except DurabookError as exc:
                if not conn.send(_error_reply(exc)):
                    return
                continue
            with self._cv:
                if self._closing:
                    return  # not accepted: the client asks the next owner
                self.busy += 1
            try:
                reply = self._answer(conn, req)
                if reply is None:
                    return
            finally:
                with self._cv:
                    self.busy -= 1
                    self.last_activity = time.monotonic()
                    self._cv.notify_all()
            if not conn.send(reply):
                return

    def _answer(self, conn: _Conn, req: Request) -> dict[str, Any] | None:
        """The reply to ``req``; None when the client could not be told it was accepted
        (then nothing was done, which is what the client will assume)."""
        conn.send({"event": "accepted"})
        if not conn.flush(ACCEPT_TIMEOUT):
            return None

        def created(iid: str) -> None:
            conn.send({"event": "created", "id": iid})

        try:
            result = req.run(self.service, _StreamProgress(conn), created)
        except DurabookError as exc:
            return _error_reply(exc)
        except Exception as exc:
            log.exception("control request %s failed", req.op)
            return {
                "ok": False,
                "error": {
                    "code": ErrorCode.INTERNAL.value,
                    "message": f"{type(exc).__name__}: {exc}",
                    "exit_code": 1,
                },
            }
        return {"ok": True, "result": result}

    def idle_for(self) -> float:
        """Seconds since the last request ended, or 0 while anyone is connected or served."""
        with self._cv:
            if self.busy or self.connections:
                return 0.0
            return time.monotonic() - self.last_activity

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until no request is being served, then accept no new one; False when
        ``timeout`` passed first (then nothing new is accepted either).

        Both under one lock: a request is either accepted before (and waited for) or
        refused unseen after, so its client can safely ask again elsewhere."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cv:
            while self.busy:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    self._closing = True
                    return False
                self._cv.wait(left)
            self._closing = True
            return True

    def close(self) -> None:
        with self._cv:
            self._closing = True
            conns = list(self._conns)
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the accept thread
        with contextlib.suppress(OSError):
            self.sock.close()
        with contextlib.suppress(OSError):
            st = os.lstat(self.path)
            if (st.st_dev, st.st_ino) == self._inode:
                self.path.unlink()
        for conn in conns:
            conn.stop_reading()
        # their threads tear down kernel clients' leftovers: let them finish before this
        # process exits (daemon threads still at work during the interpreter's exit can
        # abort it); a request still being served (serve stopped mid-run) is not waited for
        deadline = time.monotonic() + CLOSE_WAIT
        self._thread.join(max(0.0, deadline - time.monotonic()))
        for conn in conns:
            conn.join(deadline)
