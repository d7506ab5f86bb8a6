"""The engine's control socket: how other processes of a home reach its one writer.

DuckDB lets one process write a database file. The process that opens a home's
store (a ``durabook run``, ``durabook serve``, ...) is that home's engine and
listens on a unix socket; any other command for the same home talks to it
instead of opening the store: ``status`` and ``list`` answer from the live
store, ``run`` and ``resume`` execute in the engine with progress streamed back,
and interactive kernels send their checkpoints. The engine process stays up
until the runs it accepted have ended.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from durabook_kernel.wire import connect, recv, send, socket_path

from .engine import Engine, Progress, resolve_home
from .errors import (
    BadInput,
    DurabookError,
    EngineBusy,
    ErrorCode,
    InvalidNotebook,
    InvalidParameter,
    InvalidState,
    UnknownInstance,
)
from .models import InstanceStatus, InstanceSummary, RunResult

__all__ = ["ControlServer", "RemoteEngine", "open_engine"]

_ERRORS: dict[str, type[DurabookError]] = {
    ErrorCode.INVALID_NOTEBOOK.value: InvalidNotebook,
    ErrorCode.INVALID_PARAMETER.value: InvalidParameter,
    ErrorCode.UNKNOWN_INSTANCE.value: UnknownInstance,
    ErrorCode.INVALID_STATE.value: InvalidState,
    ErrorCode.BAD_INPUT.value: BadInput,
    ErrorCode.ENGINE_BUSY.value: EngineBusy,
}


class _StreamProgress(Progress):
    def __init__(self, wfile: socket.socket) -> None:
        self.sock = wfile
        self._lock = threading.Lock()

    def _emit(self, event: dict[str, Any]) -> None:
        with self._lock, contextlib.suppress(OSError):
            send(self.sock, event)

    def start(self, instance_id: str, total: int, done: int) -> None:
        self._emit({"event": "start", "id": instance_id, "total": total, "done": done})

    def committed(self, index: int) -> None:
        self._emit({"event": "committed", "index": index})


class ControlServer:
    """Serves one engine's verbs on its home's socket, a thread per connection."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.path = socket_path(engine.home)
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # a stale socket: we hold the store's lock, so it is ours
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(self.path))
        self.sock.listen(64)
        self.busy = 0
        self.connections = 0
        self.last_activity = time.monotonic()
        self._cv = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._accept, daemon=True, name="durabook-control")
        self._thread.start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with self._cv:
            self.connections += 1
        try:
            self._serve_requests(conn)
        finally:
            with self._cv:
                self.connections -= 1
                self.last_activity = time.monotonic()

    def _serve_requests(self, conn: socket.socket) -> None:
        with conn, conn.makefile("rb") as rfile:
            while True:
                try:
                    req = recv(rfile)
                except (ConnectionError, OSError, ValueError):
                    return
                with self._cv:
                    self.busy += 1
                try:
                    result = self._handle(req.get("op"), req.get("args") or {}, conn)
                    reply: dict[str, Any] = {"ok": True, "result": result}
                except DurabookError as exc:
                    reply = {"ok": False, "error": {**exc.to_dict(), "exit_code": exc.exit_code}}
                except Exception as exc:
                    reply = {
                        "ok": False,
                        "error": {
                            "code": "internal",
                            "message": f"{type(exc).__name__}: {exc}",
                            "exit_code": 1,
                        },
                    }
                finally:
                    with self._cv:
                        self.busy -= 1
                        self.last_activity = time.monotonic()
                        self._cv.notify_all()
                try:
                    send(conn, reply)
                except OSError:
                    return

    def _handle(self, op: str | None, args: dict[str, Any], conn: socket.socket) -> Any:
        eng = self.engine
        if op == "ping":
            return {"pid": os.getpid(), "home": str(eng.home)}
        if op == "status":
            return eng.status(args["id"]).model_dump(mode="json")
        if op == "list":
            return [
                i.model_dump(mode="json") for i in eng.list(args.get("status"), args.get("limit"))
            ]
        if op == "run":
            progress = _StreamProgress(conn)
            res = eng.run(
                args["notebook"],
                args.get("parameters"),
                args.get("id"),
                args.get("output"),
                from_text=bool(args.get("from_text")),
                progress=progress,
                on_created=lambda iid: progress._emit({"event": "created", "id": iid}),
                if_exists=args.get("if_exists", "return"),
            )
            return res.model_dump(mode="json")
        if op == "resume":
            res = eng.resume(args["id"], args.get("notebook"), progress=_StreamProgress(conn))
            return res.model_dump(mode="json")
        if op == "open_session":
            return eng.open_session(args["notebook"], args["pid"], args.get("cwd"))
        if op == "checkpoint":
            eng.commit_interactive(args["id"], args["step"])
            return None
        if op == "end_session":
            eng.end_session(args["id"])
            return None
        if op in ("pause", "unpause", "terminate"):
            status = getattr(eng, op)(args["id"])
            return {"status": status.value, "resumed_by_engine": eng.wakes_instances}
        if op == "restart":
            eng.restart(args["id"], args.get("from_cell"))
            return None
        if op == "send_event":
            delivered = eng.send_event(args["id"], args["name"], args.get("data"))
            return {"delivered": delivered, "resumed_by_engine": delivered and eng.wakes_instances}
        if op == "restore_plan":
            return eng.session_restore_plan(args["id"])
        raise BadInput(f"unknown operation {op!r}")

    def idle_for(self) -> float:
        """Seconds since the last request ended, or 0 while anyone is connected or served."""
        with self._cv:
            if self.busy or self.connections:
                return 0.0
            return time.monotonic() - self.last_activity

    def wait_idle(self) -> None:
        with self._cv:
            while self.busy:
                self._cv.wait()

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self.sock.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


class RemoteEngine:
    """The engine's verbs, asked of the process that owns the home."""

    def __init__(self, home: Path, sock: socket.socket) -> None:
        self.home = home
        self.sock = sock
        self.rfile = sock.makefile("rb")

    def close(self) -> None:
        self.rfile.close()
        self.sock.close()

    def _call(
        self, op: str, progress: Progress | None = None, on_created: Any = None, **args: Any
    ) -> Any:
        send(self.sock, {"op": op, "args": args})
        while True:
            msg = recv(self.rfile)
            event = msg.get("event")
            if event == "start" and progress:
                progress.start(msg["id"], msg["total"], msg["done"])
            elif event == "committed" and progress:
                progress.committed(msg["index"])
            elif event == "created" and on_created:
                on_created(msg["id"])
            elif event is None:
                break
        if msg.get("ok"):
            return msg.get("result")
        err = msg.get("error", {})
        cls = _ERRORS.get(err.get("code", ""), DurabookError)
        fields = {k: v for k, v in err.items() if k not in ("code", "message", "exit_code")}
        raise cls(err.get("message", "engine error"), **fields)

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
        )
        return RunResult.model_validate(out)

    def resume(
        self, instance_id: str, notebook: Any = None, progress: Progress | None = None
    ) -> RunResult:
        nb = str(Path(notebook).absolute()) if notebook else None
        return RunResult.model_validate(self._call("resume", progress, id=instance_id, notebook=nb))

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
    deadline = time.monotonic() + wait
    while True:
        try:
            eng = Engine(path)
        except EngineBusy as busy:
            sock = connect(path)
            if sock is not None:
                remote = RemoteEngine(path, sock)
                try:
                    yield remote
                finally:
                    remote.close()
                return
            if time.monotonic() > deadline:
                raise EngineBusy(
                    busy.message + ", which does not answer on its control "
                    "socket; try again when it has finished",
                    **busy.fields,
                ) from None
            time.sleep(0.1)  # the owner is starting up (or just leaving)
            continue
        server = ControlServer(eng) if serve else None
        try:
            yield eng
        finally:
            if server is not None:
                server.wait_idle()
                server.close()
            eng.close()
        return
