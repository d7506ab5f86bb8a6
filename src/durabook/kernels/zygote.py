"""The pool's end of the zygote (see :mod:`durabook_kernel.zygote`).

:class:`Zygote` starts ``python -m durabook_kernel.zygote`` with one end of a
SOCK_SEQPACKET socket pair and asks it for kernels; :class:`ForkedChild` stands
for one forked kernel with the part of :class:`subprocess.Popen`'s interface the
pool uses (``pid``, ``poll``, ``returncode``, ``kill``, ``wait``), through a pidfd,
since the kernel is the zygote's child and not ours.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from queue import Empty, Queue
from typing import Any

from ..errors import KernelDied

__all__ = ["ForkedChild", "Zygote"]

_MAX_MESSAGE = 1 << 16


class ForkedChild:
    """A kernel the zygote forked: watched and signalled through its pidfd."""

    def __init__(self, pid: int, pidfd: int, zygote: Zygote) -> None:
        self.pid = pid
        self._pidfd = pidfd
        self._zygote = zygote
        self.returncode: int | None = None
        self._lock = threading.Lock()

    def _exited(self, timeout: float) -> bool:
        if self.returncode is not None:
            return True
        fd = self._pidfd
        if fd < 0:
            return True
        try:
            readable, _, _ = select.select([fd], [], [], timeout)
        except (OSError, ValueError):  # released meanwhile: the kernel is closed
            readable = [fd]
        if not readable:
            return False
        # the zygote reaps it and sends the status; when it cannot, say "killed"
        self.returncode = self._zygote.exit_status(self.pid, timeout=1.0)
        if self.returncode is None:
            self.returncode = -signal.SIGKILL
        return True

    def poll(self) -> int | None:
        self._exited(0)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int | None:
        if not self._exited(timeout if timeout is not None else 1e9):
            raise subprocess.TimeoutExpired("kernel", timeout or 0)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        with self._lock:  # never a signal through a descriptor number reused meanwhile
            if self.returncode is None and self._pidfd >= 0:
                with contextlib.suppress(ProcessLookupError, OSError):
                    signal.pidfd_send_signal(self._pidfd, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def release(self) -> None:
        with self._lock:
            fd, self._pidfd = self._pidfd, -1
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)


class Zygote:
    """A running zygote process and a reader for its replies and exit notices."""

    def __init__(self, env: dict[str, str], log: Path | None = None, timeout: float = 60.0):
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._sock = ours
        out: Any = subprocess.DEVNULL
        if log is not None:
            log.parent.mkdir(parents=True, exist_ok=True)
            out = open(log, "ab", opener=lambda p, f: os.open(p, f, 0o600))  # noqa: SIM115
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "durabook_kernel.zygote", str(theirs.fileno())],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                pass_fds=(theirs.fileno(),),
                start_new_session=True,  # ^C in the engine's terminal is the engine's
            )
        finally:
            theirs.close()
            if out is not subprocess.DEVNULL:
                out.close()
        self._replies: Queue[tuple[dict[str, Any], list[int]]] = Queue()
        self._exits: dict[int, int] = {}
        self._cond = threading.Condition()
        self._ask = threading.Lock()  # one request in flight
        self._seq = 0  # request ids: a late reply is never taken for the next one
        self.dead = False
        self.pid = self.proc.pid
        self._reader = threading.Thread(target=self._read, name="durabook-zygote", daemon=True)
        self._reader.start()
        try:
            hello, _ = self._replies.get(timeout=timeout)
        except Empty:
            self.close()
            raise KernelDied(f"the kernel zygote did not start within {timeout:.0f} s") from None
        if "ready" not in hello:
            self.close()
            raise KernelDied(f"the kernel zygote failed to start: {hello.get('error')}")
        self.modules = int(hello.get("modules", 0))

    def _read(self) -> None:
        while True:
            try:
                data, fds, _flags, _addr = socket.recv_fds(self._sock, _MAX_MESSAGE, 1)
            except OSError:
                data, fds = b"", []
            if not data:
                break
            msg = json.loads(data)
            if "exit" in msg:
                with self._cond:
                    self._exits[int(msg["exit"])] = int(msg["status"])
                    self._cond.notify_all()
            else:
                self._replies.put((msg, fds))
        self.dead = True
        self._replies.put(({"error": "the kernel zygote exited"}, []))
        with self._cond:
            self._cond.notify_all()

    def spawn(
        self,
        conn_file: str,
        env: dict[str, str],
        cwd: str | None,
        fds: tuple[int, int, int],
        timeout: float = 10.0,
    ) -> ForkedChild:
        """Fork a kernel; ``fds`` are its lifeline, readiness pipe and log (kept ours)."""
        with self._ask:
            if self.dead:
                raise KernelDied("the kernel zygote is not running")
            self._seq += 1
            req = self._seq
            request = json.dumps({"conn": conn_file, "env": env, "cwd": cwd, "req": req})
            deadline = time.monotonic() + timeout
            try:
                socket.send_fds(self._sock, [request.encode()], list(fds))
                while True:
                    msg, got = self._replies.get(timeout=max(deadline - time.monotonic(), 0))
                    if msg.get("req") == req or "req" not in msg:
                        break
                    for fd in got:  # a reply to a request given up on: its child is gone
                        os.close(fd)
            except (OSError, Empty) as exc:
                # a zygote that does not answer in time is replaced, never trusted again
                self.dead = True
                self.proc.kill()
                raise KernelDied(f"the kernel zygote did not answer: {exc!r}") from None
        if "pid" not in msg or not got:
            for fd in got:
                os.close(fd)
            raise KernelDied(f"the kernel zygote could not fork: {msg.get('error')}")
        return ForkedChild(int(msg["pid"]), got[0], self)

    def exit_status(self, pid: int, timeout: float) -> int | None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while pid not in self._exits and not self.dead:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            return self._exits.pop(pid, None)

    def alive(self) -> bool:
        return not self.dead and self.proc.poll() is None

    def close(self) -> None:
        """End the zygote (its kernels live on until their own lifelines close)."""
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
