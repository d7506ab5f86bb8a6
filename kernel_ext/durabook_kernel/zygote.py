"""The zygote: a prepared process that forks ready kernels in milliseconds.

A cold ipykernel spends most of its start importing some 540 modules and setting
up its shell. The zygote pays that once: it imports everything a kernel's
``IPKernelApp.initialize()`` imports (learned by initializing one probe kernel in
a child and reading its ``sys.modules``), parses the application's configuration
and builds the kernel's shell (``_prepare_shell``), and then forks a child per
request. The child sets its environment, folder and output, makes its sockets,
threads and kernel object around that shell (about 16 ms of CPU, half of it the
copy-on-write faults of a forked Python, instead of about 650 ms cold) and tells
the pool it is ready through a pipe.

fork() and threads do not mix, so the zygote never starts a thread, an event loop
or a zmq context: it is a single loop over one SOCK_SEQPACKET socket to the pool
(``python -m durabook_kernel.zygote FD``). Each request is one JSON message with
file descriptors beside it (``socket.send_fds``): the kernel's lifeline (the read
end of a pipe whose write end only the pool holds), its readiness pipe and its log.
The reply carries the child's pid and a pidfd, through which the pool watches and
signals a process that is not its own child. The zygote reaps its children and
reports each exit status (``{"exit": pid, "status": n}``), so a dead kernel's
signal can still be told. It exits when the pool's end of the socket closes.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import sys
from typing import Any

__all__ = ["KERNEL_ARGS", "initialize", "main"]

# the arguments every durabook run kernel starts with (cold starts use them too)
KERNEL_ARGS = [
    "--ext=durabook_kernel",
    "--HistoryManager.enabled=False",
    "--IPKernelApp.log_level=ERROR",
]
_MAX_REQUEST = 1 << 20
_DRIVER_MODULES = (
    "driver",
    "state",
    "serialize",
    "restore",
    "process",
    "capture",
    "journal",
    "blobs",
    "meter",
    "primitives",
    "wire",
    "interactive",
)
_WAKE: tuple[int, ...] = ()  # the signal wakeup pipe: the zygote's, closed in children


def _probe_modules() -> list[str]:
    """The modules a kernel's initialize() imports, from a probe child that does it."""
    import tempfile

    read_end, write_end = os.pipe()
    folder = tempfile.mkdtemp(prefix="dbk-z-")
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the probe child
        try:
            os.close(read_end)
            devnull = os.open(os.devnull, os.O_RDWR)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
            from ipykernel.kernelapp import IPKernelApp
            from jupyter_client.connect import write_connection_file

            conn = os.path.join(folder, "probe.json")
            write_connection_file(conn, transport="ipc", ip=os.path.join(folder, "k"))
            app = IPKernelApp.instance()
            app.initialize(["-f", conn, *KERNEL_ARGS])
            names = "\n".join(sorted(sys.modules)).encode()
            with os.fdopen(write_end, "wb") as fh:
                fh.write(names)
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as fh:
        found = fh.read().decode().split("\n")
    os.waitpid(pid, 0)
    import shutil

    shutil.rmtree(folder, ignore_errors=True)
    return [n for n in found if n]


def prepare() -> int:
    """Import what a kernel imports, without starting what a kernel starts."""
    import importlib

    import ipykernel.kernelapp  # noqa: F401

    # and what a run's driver imports at its first cell (a kernel's initialize() does
    # not): every run would pay for these again
    names = _probe_modules() + [f"durabook_kernel.{m}" for m in _DRIVER_MODULES]
    loaded = 0
    for name in names:
        if name in sys.modules or name.startswith("__"):
            continue
        try:
            importlib.import_module(name)
            loaded += 1
        except Exception:  # some modules only import as part of their parent; fine
            pass
    _configure_app()
    import gc

    gc.collect()
    gc.freeze()  # keep the prepared objects out of the children's collections (COW)
    return len(sys.modules)


_CONFIGURED = False


def _already_configured(self: Any, argv: Any = None) -> None:
    """In a child: the configuration the zygote did before the fork stands."""


def _configure_app() -> None:
    """Do the kernel application's configuration once, here: parsing its arguments and
    reading config files (about a quarter of initialize()) start no thread and no
    socket. Each child then runs the rest of ``IPKernelApp.initialize`` as ipykernel
    wrote it, with only this part skipped (see ``_child``), in the lean application of
    :mod:`.runapp` where this ipykernel is the one it was written for."""
    global _CONFIGURED
    try:
        from ipykernel.kernelapp import IPKernelApp
        from IPython.core.application import BaseIPythonApplication

        from .runapp import RunKernelApp, lean_supported

        app = (RunKernelApp if lean_supported() else IPKernelApp).instance()
        BaseIPythonApplication.initialize(app, ["-f", "kernel.json", *KERNEL_ARGS])
        _CONFIGURED = app.subapp is None
    except Exception:  # an ipykernel this does not fit: children do it all themselves
        _CONFIGURED = False
    if _CONFIGURED:
        _prepare_shell(app)


_SHELL_READY = False


def _prepare_shell(app: Any) -> None:
    """Build the kernel's shell here, once: ``InteractiveShell.__init__`` (magics,
    prefilters, formatters, completer: half of what a child's initialize() has left)
    starts no thread and opens nothing with history off. The child's kernel then takes
    this very shell (``ZMQInteractiveShell.instance()`` returns the one that exists),
    wires it to its sockets as ipykernel does, and ``_settle_shell`` sets what belongs
    to the child's process (its environment and folder)."""
    global _SHELL_READY
    try:
        from ipykernel.compiler import XCachingCompiler
        from ipykernel.ipkernel import IPythonKernel
        from ipykernel.zmqshell import ZMQInteractiveShell

        kernel_class = app.kernel_class
        if (
            kernel_class is not IPythonKernel
            or kernel_class.class_traits()["shell_class"].default_value is not ZMQInteractiveShell
        ):
            return  # configured otherwise: the child builds what its kernel asks for
        shell = ZMQInteractiveShell.instance(
            parent=app,
            profile_dir=app.profile_dir,
            user_module=None,
            user_ns=None,  # as IPKernelApp passes it: the shell makes its namespace
            kernel=None,
            compiler_class=XCachingCompiler,
        )
        shell.logger  # noqa: B018 - built at a run's first cell otherwise (an import)
        _warm_up(shell)
        _SHELL_READY = True
    except Exception:  # a shell this does not fit: children build their own
        with contextlib.suppress(Exception):
            ZMQInteractiveShell.clear_instance()
        _SHELL_READY = False


def _warm_up(shell: Any) -> None:
    """Fill, here, the caches every child would otherwise fill at its first cell.

    IPython tokenizes each cell with a regular expression that ``tokenize`` compiles at
    its first use: about 2 ms of a child's CPU (measured), paid by every run.
    Transforming and compiling a cell (never running it: the namespace, history and
    counters stay as they are) leaves that and the other lazily built parts compiled."""
    with contextlib.suppress(Exception):
        code = shell.transform_cell("x = [1]\nfor i in x:\n    y = f'{i}'\n")
        compile(code, "<durabook-warm-up>", "exec")


def _settle_shell(app: Any) -> None:
    """In a child, once its kernel exists: the prepared shell becomes that kernel's."""
    from pathlib import Path

    kernel = app.kernel
    shell = kernel.shell
    shell.kernel = kernel
    shell.parent = kernel
    shell.init_environment()  # the child's environment replaced the zygote's
    shell.starting_dir = os.getcwd()
    shell.history_manager.dir_hist[:] = [Path.cwd()]  # `_dh`, as a new shell has it


def _child(request: dict[str, Any], fds: list[int], sock: socket.socket) -> None:
    """In the forked child: become the kernel. Never returns."""
    code = 1
    try:
        sock.close()
        signal.set_wakeup_fd(-1)
        for fd in _WAKE:
            os.close(fd)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        os.setsid()  # its own session: signals to the pool's group never reach it
        lifeline, ready, log = fds
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(log)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        os.environ.clear()
        os.environ.update(request["env"])
        os.environ["DURABOOK_PARENT_FD"] = str(lifeline)
        if request.get("cwd"):
            os.chdir(request["cwd"])
        import ipykernel_launcher

        args = ["-f", request["conn"], *KERNEL_ARGS]
        sys.argv = [ipykernel_launcher.__file__, *args]  # what a cold kernel's code sees
        app = initialize(request["conn"], args)
        os.write(ready, b"1")
        os.close(ready)
        app.start()
        code = 0
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        os._exit(code)


def initialize(conn: str, args: list[str]) -> Any:
    """In a child: ``IPKernelApp.initialize``, less what the zygote did before the fork."""
    from ipykernel.kernelapp import IPKernelApp

    app = IPKernelApp.instance()
    if _CONFIGURED:  # configured before the fork: skip that part, do the rest
        from IPython.core.application import BaseIPythonApplication

        skip = _already_configured
        BaseIPythonApplication.initialize = skip  # type: ignore[method-assign]
        app.connection_file = conn
    if _SHELL_READY:
        import ipykernel.debugger

        # a run's kernel is driven by the engine, never debugged over DAP: no debugpy
        # client per kernel (ipykernel reads this flag at each use)
        ipykernel.debugger._is_debugpy_available = False
        init_kernel = app.init_kernel

        def init_kernel_with_shell() -> None:
            init_kernel()
            _settle_shell(app)

        app.init_kernel = init_kernel_with_shell  # type: ignore[method-assign]
    app.initialize(args)
    return app


def _reap(sock: socket.socket) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        code = os.waitstatus_to_exitcode(status)
        try:
            sock.send(json.dumps({"exit": pid, "status": code}).encode())
        except OSError:
            return


def serve(sock: socket.socket) -> None:
    """Fork a kernel per request until the pool goes away."""
    # a kernel's exit wakes select() at once (through the wakeup pipe), so its status
    # goes out while the pool may still be asking
    global _WAKE
    wake_r, wake_w = _WAKE = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    sock.send(json.dumps({"ready": os.getpid(), "modules": len(sys.modules)}).encode())
    while True:
        readable, _, _ = select.select([sock.fileno(), wake_r], [], [], 5.0)
        if wake_r in readable:
            with contextlib.suppress(OSError):
                os.read(wake_r, 4096)
        _reap(sock)
        if sock.fileno() not in readable:
            continue
        try:
            data, fds, _flags, _addr = socket.recv_fds(sock, _MAX_REQUEST, 3)
        except OSError:
            return
        if not data:
            return  # the pool closed its end
        request: Any = None
        try:
            request = json.loads(data)
            if len(fds) != 3:
                raise ValueError(f"expected 3 descriptors, got {len(fds)}")
            pid = os.fork()
            if pid == 0:  # pragma: no cover - the child becomes a kernel
                _child(request, fds, sock)
            pidfd = os.pidfd_open(pid)  # before any reaping: it names this very child
            reply = {"pid": pid, "req": request.get("req")}
            try:
                socket.send_fds(sock, [json.dumps(reply).encode()], [pidfd])
            finally:
                os.close(pidfd)
        except Exception as exc:
            req = request.get("req") if isinstance(request, dict) else None
            sock.send(json.dumps({"error": f"{type(exc).__name__}: {exc}", "req": req}).encode())
        finally:
            for fd in fds:
                os.close(fd)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    sock = socket.socket(fileno=int(argv[0]))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # ^C to the engine's group is the engine's
    prepare()
    serve(sock)


if __name__ == "__main__":
    main()
