"""Kernels: started with durabook's extension, handed out once, then thrown away.

Each kernel is a child process that dies with its parent, so a killed runner
never leaves a kernel executing cells nobody will commit: the kernel holds the
read end of a pipe whose write end only the runner has, and exits when it reads
end-of-file. (``PR_SET_PDEATHSIG`` is not used: it fires when the *thread* that
started the child ends, and pool threads end right after starting a kernel.)
:class:`KernelPool` keeps ``size`` kernels warm in the background so a run takes
one in milliseconds; with ``size=0`` a kernel is started on demand.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import logging
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from pathlib import Path
from queue import Empty
from typing import Any

import zmq
from jupyter_client import BlockingKernelClient
from jupyter_client.connect import write_connection_file

from durabook_kernel.zygote import KERNEL_ARGS

from ..errors import BadInput, KernelDied
from .zygote import ForkedChild, Zygote

__all__ = [
    "ENV_ALLOW",
    "KernelPool",
    "KernelProcess",
    "check_env",
    "close_thread_loop",
    "kernel_environment",
    "pool_setting",
]

PARENT_FD_ENV = "DURABOOK_PARENT_FD"
log = logging.getLogger(__name__)

# What a kernel needs to find its interpreter, libraries, locale and home: never the
# engine's whole environment (tokens, passwords). A run adds what it declares
# (`durabook run --env NAME`), an operator what every kernel may see
# (DURABOOK_KERNEL_ENV="NAME,NAME").
ENV_ALLOW = frozenset(
    {
        "PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TZ", "TERM",
        "TMPDIR", "TEMP", "TMP", "PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "CONDA_PREFIX",
        "CONDA_DEFAULT_ENV", "JUPYTER_PATH", "JUPYTER_CONFIG_DIR", "JUPYTER_DATA_DIR",
        "JUPYTER_RUNTIME_DIR", "IPYTHONDIR", "MPLBACKEND", "MPLCONFIGDIR", "XDG_CACHE_HOME",
        "XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_RUNTIME_DIR", "SSL_CERT_FILE", "SSL_CERT_DIR",
        "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_MAX_THREADS",
        "DURABOOK_HOME",
        # the network and libraries a notebook works with under papermill too
        "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy",
        "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "LD_LIBRARY_PATH", "CUDA_VISIBLE_DEVICES",
        "CUDA_HOME",
    }
)  # fmt: skip
ENV_ALLOW_PREFIXES = ("LC_",)
OPERATOR_ENV = "DURABOOK_KERNEL_ENV"


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def check_env(env: dict[str, str]) -> dict[str, str]:
    """Variables a run declares for its kernel: names as POSIX shells allow, string values."""
    if not isinstance(env, dict):
        raise BadInput("env must map variable names to string values")
    for name, value in env.items():
        if not isinstance(name, str) or not _ENV_NAME.fullmatch(name):
            raise BadInput(f"invalid environment variable name {name!r}")
        if not isinstance(value, str) or "\0" in value:
            raise BadInput(f"the value of {name} must be a string without NUL bytes")
    if sum(len(k) + len(v) for k, v in env.items()) > 1 << 20:
        raise BadInput("the declared environment is over 1 MiB")
    return dict(env)


def kernel_environment(source: dict[str, str] | None = None) -> dict[str, str]:
    """The scrubbed environment kernels start with (from ``source``, default os.environ)."""
    source = dict(os.environ if source is None else source)
    allowed = set(ENV_ALLOW)
    allowed.update(n.strip() for n in source.get(OPERATOR_ENV, "").split(",") if n.strip())
    return {k: v for k, v in source.items() if k in allowed or k.startswith(ENV_ALLOW_PREFIXES)}


def pool_setting(name: str, default: int) -> int:
    """An operator's whole-number setting from the environment (bad values: BadInput)."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise BadInput(f"{name}={raw!r}: expected a whole number, 0 or more")
    return value


class KernelProcess:
    """One ipykernel child process and a blocking client connected to it."""

    def __init__(
        self,
        proc: Any,  # subprocess.Popen, or a ForkedChild of the zygote
        kc: BlockingKernelClient,
        folder: str,
        log: Path | None,
        lifeline: int,
    ) -> None:
        self.proc = proc
        self.lifeline = lifeline  # write end of the pipe the kernel watches
        self._closed = False
        self._close_lock = threading.Lock()
        self.kc = kc
        self.folder = folder
        self.log = log
        # set by the watchdog before it kills a kernel over a limit: the cell's error
        self.limit_error: Any = None
        self.sandbox: Any = None  # the Sandbox it runs in, if any

    @property
    def pid(self) -> int:
        return self.proc.pid

    @staticmethod
    def _prepare(
        log_dir: Path | None, env: dict[str, str] | None
    ) -> tuple[str, str, dict[str, str], Path | None]:
        # ipc sockets in a short private folder: paths over ~100 bytes do not bind
        folder = tempfile.mkdtemp(prefix="dbk-")
        conn_file = os.path.join(folder, "kernel.json")
        write_connection_file(conn_file, transport="ipc", ip=os.path.join(folder, "k"))
        kenv = kernel_environment() if env is None else dict(env)
        kenv.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")
        kenv.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")
        log: Path | None = None
        if log_dir is not None:
            log_dir.mkdir(parents=True, exist_ok=True)
            log = log_dir / f"kernel-{uuid.uuid4().hex[:8]}.log"
        return folder, conn_file, kenv, log

    @staticmethod
    def _open_log(log: Path | None) -> int:
        if log is None:
            return os.open(os.devnull, os.O_WRONLY)
        return os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

    @classmethod
    def start(
        cls,
        log_dir: Path | None = None,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
        timeout: float = 60.0,
        wrap: Callable[[str], list[str]] | None = None,
    ) -> KernelProcess:
        """A cold kernel: a new interpreter. ``wrap(folder)`` gives what goes before it
        (the sandbox), told the kernel's connection folder."""
        folder, conn_file, kenv, log = cls._prepare(log_dir, env)
        cmd = [*(wrap(folder) if wrap else []), sys.executable, "-m", "ipykernel_launcher"]
        cmd += ["-f", conn_file]
        cmd += KERNEL_ARGS
        # the lifeline: not inheritable (PEP 446), so only this kernel gets the read end
        read_end, lifeline = os.pipe()
        kenv[PARENT_FD_ENV] = str(read_end)
        out = cls._open_log(log)
        try:
            proc: Any = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=kenv,
                cwd=cwd,
                start_new_session=True,
                pass_fds=(read_end,),
            )
        except BaseException:
            os.close(lifeline)
            shutil.rmtree(folder, ignore_errors=True)
            raise
        finally:
            os.close(read_end)
            os.close(out)
        return cls._connect(proc, conn_file, folder, log, lifeline, timeout)

    @classmethod
    def fork(
        cls,
        zygote: Zygote,
        log_dir: Path | None = None,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
        timeout: float = 60.0,
    ) -> KernelProcess:
        """A kernel forked from the zygote: ready in tens of milliseconds."""
        folder, conn_file, kenv, log = cls._prepare(log_dir, env)
        read_end, lifeline = os.pipe()
        ready_r, ready_w = os.pipe()
        out = cls._open_log(log)
        try:
            proc: Any = zygote.spawn(conn_file, kenv, cwd, (read_end, ready_w, out))
        except BaseException:
            os.close(lifeline)
            os.close(ready_r)
            shutil.rmtree(folder, ignore_errors=True)
            raise
        finally:
            for fd in (read_end, ready_w, out):
                os.close(fd)
        try:
            # the child writes one byte once its kernel is initialized; EOF means it died
            readable, _, _ = select.select([ready_r], [], [], timeout)
            said = os.read(ready_r, 1) if readable else b""
        finally:
            os.close(ready_r)
        if said != b"1":
            proc.kill()
            with contextlib.suppress(OSError):
                os.close(lifeline)
            shutil.rmtree(folder, ignore_errors=True)
            proc.release()
            why = "did not start in time" if not readable else "exited at start"
            raise KernelDied(f"the forked kernel {why}" + (f"; see {log}" if log else ""))
        return cls._connect(proc, conn_file, folder, log, lifeline, timeout)

    @classmethod
    def _connect(
        cls, proc: Any, conn_file: str, folder: str, log: Path | None, lifeline: int, timeout: float
    ) -> KernelProcess:
        # one zmq context for every kernel client of this process: a context of its own
        # per kernel costs two native threads started and joined per run
        kc = BlockingKernelClient(connection_file=conn_file, context=zmq.Context.instance())
        kc.load_connection_file()
        # no heartbeat: the kernel is our child (or the zygote's, through a pidfd), and its
        # liveness is its process's; a heartbeat thread per kernel only costs a join. No
        # stdin or control channel either: a run allows no input, and is interrupted with
        # a signal (each channel is a socket made, connected and closed per run)
        kc.start_channels(hb=False, stdin=False, control=False)
        self = cls(proc, kc, folder, log, lifeline)
        deadline = time.monotonic() + timeout
        while not self._answers():
            if proc.poll() is not None:
                self.close()
                raise KernelDied(
                    f"the kernel exited at start (status {proc.returncode})"
                    + (f"; see {log}" if log else "")
                )
            if time.monotonic() > deadline:
                self.close()
                raise KernelDied(f"the kernel did not answer within {timeout:.0f} s")
        return self

    def _answers(self) -> bool:
        """The kernel is up and our IOPub subscription is live, so no output of the run's
        first cell is lost. ipykernel 7 greets each new IOPub subscriber
        (``iopub_welcome``): that greeting says both at the cost of one message. Without
        one soon, a kernel_info round trip and its idle status on IOPub say it (as
        jupyter_client's wait_for_ready does, with 0.2 s sleeps)."""
        end = time.monotonic() + (0.2 if _kernels_greet() else 0.0)
        while (left := end - time.monotonic()) > 0:
            try:
                msg = self.kc.iopub_channel.get_msg(timeout=left)
            except Empty:
                break
            if msg["msg_type"] == "iopub_welcome":
                return True
        msg_id = self.kc.kernel_info()
        end = time.monotonic() + 1.0
        while True:  # a late reply to an earlier try is passed over, never taken for this
            try:
                reply = self.kc.shell_channel.get_msg(timeout=max(end - time.monotonic(), 0))
            except Empty:
                return False
            if reply["parent_header"].get("msg_id") == msg_id:
                break
        # a status published before our subscription took is lost: ask again soon
        end = time.monotonic() + 0.1
        while (left := end - time.monotonic()) > 0:
            try:
                msg = self.kc.iopub_channel.get_msg(timeout=left)
            except Empty:
                return False
            if msg["msg_type"] == "iopub_welcome" or (
                msg["parent_header"].get("msg_id") == msg_id
                and msg["msg_type"] == "status"
                and msg["content"].get("execution_state") == "idle"
            ):
                return True
        return False

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL only: safe from any thread (the runner's thread notices and closes)."""
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGKILL)

    def interrupt(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGINT)

    def close(self) -> None:
        """Kill the kernel: a kernel serves one run and is never reused. Idempotent (and
        it must be: closing the lifeline fd twice could close whatever reused it)."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        if self.proc.poll() is None:  # kill first: a reader blocked on its sockets wakes up
            # and the processes it started: it leads its own session (and process group)
            with contextlib.suppress(OSError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
        with contextlib.suppress(Exception):
            _stop_channels(self.kc)
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
        with contextlib.suppress(Exception):
            self.proc.wait(timeout=10)
        with contextlib.suppress(OSError):
            os.close(self.lifeline)
        if isinstance(self.proc, ForkedChild):
            self.proc.release()
        shutil.rmtree(self.folder, ignore_errors=True)


@functools.cache
def _kernels_greet() -> bool:
    """Whether kernels greet IOPub subscribers: ipykernel 7 does (``iopub_welcome``,
    JEP 65), 6 does not. Kernels run the engine's interpreter, so its ipykernel is theirs."""
    try:
        return int(importlib.metadata.version("ipykernel").split(".")[0]) >= 7
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return False


def _stop_channels(kc: Any) -> None:
    """Close the channels this client made. (``stop_channels`` asks every channel whether
    it is alive, and asking makes, and connects, each one not made yet.)"""
    names = (
        "_shell_channel",
        "_iopub_channel",
        "_stdin_channel",
        "_hb_channel",
        "_control_channel",
    )
    if not all(hasattr(kc, n) for n in names):  # a jupyter_client this does not know
        kc.stop_channels()
        return
    for name in names:
        channel = getattr(kc, name)
        if channel is not None and channel.is_alive():
            channel.stop()


class KernelPool:
    """Warm kernels for runs. ``acquire()`` never returns a kernel twice.

    ``size`` kernels are kept ready; up to ``refill`` start at once. Kernels are forked
    from a zygote (``zygote=True``, the default when ``size`` > 0), else started cold.
    After ``idle_s`` seconds without an ``acquire()`` the pool lets its ready kernels
    go (and the zygote with them), and fills again at the next ``acquire()``.
    """

    def __init__(
        self,
        size: int = 0,
        log_dir: Path | None = None,
        env: dict[str, str] | None = None,
        *,
        refill: int | None = None,
        idle_s: float | None = 300.0,
        zygote: bool | None = None,
    ) -> None:
        self.size = size
        self.log_dir = log_dir
        self.env = env  # None: kernel_environment() at each start
        self.refill = max(1, refill or os.cpu_count() or 1)
        self.idle_s = idle_s
        self.use_zygote = size > 0 if zygote is None else zygote
        self._zygote: Zygote | None = None
        self._zygote_lock = threading.Lock()
        self._ready: deque[KernelProcess] = deque()
        self._lock = threading.Lock()
        self._workers = 0
        self._closed = False
        self._idle = False
        self.last_acquire = time.monotonic()
        self.started = 0  # kernels started, for benchmarks and `top`
        self.fill()
        if size > 0 and idle_s:
            threading.Thread(
                target=self._shrink_when_idle, daemon=True, name="durabook-pool-idle"
            ).start()

    # -- starting kernels -----------------------------------------------------------
    def zygote(self) -> Zygote | None:
        """The running zygote, started on first use (None: cold starts only)."""
        if not self.use_zygote:
            return None
        with self._zygote_lock:
            z = self._zygote
            if z is not None and z.alive():
                return z
            if z is not None:
                z.close()
            self._zygote = None
            if self._closed or self._idle:  # idle: a late worker starts no new zygote
                return None
            env = kernel_environment() if self.env is None else dict(self.env)
            log_file = self.log_dir / "zygote.log" if self.log_dir is not None else None
            try:
                self._zygote = Zygote(env, log_file)
            except (KernelDied, OSError) as exc:
                log.warning("no kernel zygote (%s): kernels start cold", exc)
                self.use_zygote = False  # said once; cold starts still work
                return None
            return self._zygote

    def start_kernel(self) -> KernelProcess:
        z = self.zygote()
        if z is not None:
            try:
                k = KernelProcess.fork(z, self.log_dir, env=self.env)
                self.started += 1
                return k
            except KernelDied:
                if z.alive():
                    raise
        k = KernelProcess.start(self.log_dir, env=self.env)
        self.started += 1
        return k

    def fill(self) -> None:
        with self._lock:
            if self._closed:
                return
            wanted = max(self.size - len(self._ready) - self._workers, 0)
            spawn = min(self.refill - self._workers, wanted)
            self._workers += max(spawn, 0)
        for _ in range(max(spawn, 0)):
            threading.Thread(target=self._worker, daemon=True, name="durabook-pool").start()

    def _worker(self) -> None:
        failures = 0
        while True:
            with self._lock:
                if self._closed or self._idle or len(self._ready) + self._workers > self.size:
                    self._workers -= 1
                    return
            try:
                k: KernelProcess | None = self.start_kernel()
                failures = 0
            except Exception:
                k = None
                failures += 1
                if failures >= 3:  # a broken setup: do not spin; acquire() tells why
                    with self._lock:
                        self._workers -= 1
                    return
            with self._lock:
                if k is not None and not self._closed and not self._idle:
                    self._ready.append(k)
                    k = None
            if k is not None:  # closed, or gone idle while it started: not kept
                k.close()

    def _shrink_when_idle(self) -> None:
        assert self.idle_s
        while True:
            time.sleep(min(self.idle_s / 4, 5.0))
            with self._lock:
                if self._closed:
                    return
                if self._idle or time.monotonic() - self.last_acquire < self.idle_s:
                    continue
                self._idle = True
            self._let_go()

    def _let_go(self) -> None:
        """Close the ready kernels and the zygote (idle, or closing)."""
        with self._lock:
            ready, self._ready = list(self._ready), deque()
        for k in ready:
            k.close()
        with self._zygote_lock:
            z, self._zygote = self._zygote, None
        if z is not None:
            z.close()

    def ready(self) -> int:
        with self._lock:
            return len(self._ready)

    def wait_ready(self, timeout: float = 60.0) -> bool:
        """Block until ``size`` kernels are warm (benchmarks time runs, not starts)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if len(self._ready) >= self.size:
                    return True
            time.sleep(0.005)
        return False

    def acquire(self) -> KernelProcess:
        self.last_acquire = time.monotonic()
        with self._lock:
            self._idle = False
            k = self._ready.popleft() if self._ready else None
        self.fill()
        while k is not None and not k.alive():
            k.close()
            with self._lock:
                k = self._ready.popleft() if self._ready else None
        return k if k is not None else self.start_kernel()

    def close(self) -> None:
        with self._lock:
            self._closed = True
        self._let_go()


def close_thread_loop() -> None:
    """Close the event loop jupyter_client's blocking calls left in this thread (a run's
    kernel client makes one per thread). Left to the garbage collector, it is finalized
    at the process's exit after its sockets and prints a traceback ("Invalid file
    descriptor: -1") on the user's terminal. Call it as a thread that drove kernels
    ends (ControlServer.close waits for its threads, so this never races the exit)."""
    import asyncio
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            loop = asyncio.get_event_loop_policy().get_event_loop()
        except RuntimeError:
            return  # none was made here
    if not loop.is_running() and not loop.is_closed():
        loop.close()
