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
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import deque
from pathlib import Path
from typing import Any

from jupyter_client import BlockingKernelClient
from jupyter_client.connect import write_connection_file

from .errors import KernelDied

__all__ = [
    "ENV_ALLOW",
    "KernelPool",
    "KernelProcess",
    "close_thread_loop",
    "kernel_environment",
]

PARENT_FD_ENV = "DURABOOK_PARENT_FD"

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


def kernel_environment(source: dict[str, str] | None = None) -> dict[str, str]:
    """The scrubbed environment kernels start with (from ``source``, default os.environ)."""
    source = dict(os.environ if source is None else source)
    allowed = set(ENV_ALLOW)
    allowed.update(n.strip() for n in source.get(OPERATOR_ENV, "").split(",") if n.strip())
    return {k: v for k, v in source.items() if k in allowed or k.startswith(ENV_ALLOW_PREFIXES)}


class KernelProcess:
    """One ipykernel child process and a blocking client connected to it."""

    def __init__(
        self,
        proc: subprocess.Popen[bytes],
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

    @property
    def pid(self) -> int:
        return self.proc.pid

    @classmethod
    def start(
        cls,
        log_dir: Path | None = None,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
        timeout: float = 60.0,
    ) -> KernelProcess:
        # ipc sockets in a short private folder: paths over ~100 bytes do not bind
        folder = tempfile.mkdtemp(prefix="dbk-")
        conn_file = os.path.join(folder, "kernel.json")
        write_connection_file(conn_file, transport="ipc", ip=os.path.join(folder, "k"))
        cmd = [
            sys.executable,
            "-m",
            "ipykernel_launcher",
            "-f",
            conn_file,
            "--ext=durabook_kernel",
            "--HistoryManager.enabled=False",
            "--IPKernelApp.log_level=ERROR",
        ]
        kenv = kernel_environment() if env is None else dict(env)
        kenv.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")
        kenv.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")
        # the lifeline: not inheritable (PEP 446), so only this kernel gets the read end
        read_end, lifeline = os.pipe()
        kenv[PARENT_FD_ENV] = str(read_end)
        log: Path | None = None
        out: Any = subprocess.DEVNULL
        if log_dir is not None:
            log_dir.mkdir(parents=True, exist_ok=True)
            log = log_dir / f"kernel-{uuid.uuid4().hex[:8]}.log"
            out = open(log, "ab", opener=lambda p, f: os.open(p, f, 0o600))  # noqa: SIM115
        try:
            proc = subprocess.Popen(
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
            raise
        finally:
            os.close(read_end)
            if out is not subprocess.DEVNULL:
                out.close()
        kc = BlockingKernelClient(connection_file=conn_file)
        kc.load_connection_file()
        kc.start_channels()
        self = cls(proc, kc, folder, log, lifeline)
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                self.close()
                raise KernelDied(
                    f"the kernel exited at start (status {proc.returncode})"
                    + (f"; see {log}" if log else "")
                )
            try:
                kc.wait_for_ready(timeout=1.0)
                break
            except RuntimeError:
                if time.monotonic() > deadline:
                    self.close()
                    raise KernelDied(f"the kernel did not answer within {timeout:.0f} s") from None
        return self

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL only: safe from any thread (the runner's thread notices and closes)."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGKILL)

    def interrupt(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGINT)

    def close(self) -> None:
        """Kill the kernel: a kernel serves one run and is never reused. Idempotent (and
        it must be: closing the lifeline fd twice could close whatever reused it)."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        if self.proc.poll() is None:  # kill first: a reader blocked on its sockets wakes up
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
        with contextlib.suppress(Exception):
            self.kc.stop_channels()
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
        with contextlib.suppress(Exception):
            self.proc.wait(timeout=10)
        with contextlib.suppress(OSError):
            os.close(self.lifeline)
        shutil.rmtree(self.folder, ignore_errors=True)


class KernelPool:
    """Warm kernels for runs. ``acquire()`` never returns a kernel twice."""

    def __init__(
        self, size: int = 0, log_dir: Path | None = None, env: dict[str, str] | None = None
    ) -> None:
        self.size = size
        self.log_dir = log_dir
        self.env = env  # None: kernel_environment() at each start
        self._ready: deque[KernelProcess] = deque()
        self._lock = threading.Lock()
        self._starting = 0
        self._closed = False
        self.fill()

    def fill(self) -> None:
        with self._lock:
            missing = self.size - len(self._ready) - self._starting
            self._starting += max(missing, 0)
        for _ in range(max(missing, 0)):
            threading.Thread(target=self._start_one, daemon=True, name="durabook-pool").start()

    def _start_one(self) -> None:
        try:
            k = KernelProcess.start(self.log_dir, env=self.env)
        except Exception:
            k = None
        with self._lock:
            self._starting -= 1
            if k is not None and not self._closed:
                self._ready.append(k)
                k = None
        if k is not None:
            k.close()

    def wait_ready(self, timeout: float = 60.0) -> bool:
        """Block until ``size`` kernels are warm (benchmarks time runs, not starts)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if len(self._ready) >= self.size:
                    return True
            time.sleep(0.01)
        return False

    def acquire(self) -> KernelProcess:
        with self._lock:
            k = self._ready.popleft() if self._ready else None
        self.fill()
        while k is not None and not k.alive():
            k.close()
            with self._lock:
                k = self._ready.popleft() if self._ready else None
        return k if k is not None else KernelProcess.start(self.log_dir, env=self.env)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            ready, self._ready = list(self._ready), deque()
        for k in ready:
            k.close()


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
