"""Real processes in tests: `durabook run` started in the background, its kernels, pids.

Kills in the tests are real SIGKILLs of real processes; these helpers find them
through /proc.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path


def start_run(notebook: Path, *args: str) -> tuple[subprocess.Popen[str], str]:
    """`durabook run NOTEBOOK -q ARGS` in the background, and the id it prints first."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "durabook", "run", str(notebook), "-q", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    return proc, proc.stdout.readline().strip()


def children(pid: int) -> list[int]:
    """Child process ids of ``pid``, from /proc/*/stat (ppid is the 4th field)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # gone meanwhile
            continue
        fields = text[text.rindex(")") + 2 :].split()
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [p.decode(errors="replace") for p in raw.split(b"\0") if p]


def kernels_of(runner_pid: int) -> list[int]:
    """The kernel processes of a `durabook run` process: its ipykernel children, and
    the children of its kernel zygote (forked kernels)."""
    found = []
    for p in children(runner_pid):
        argv = cmdline(p)
        if "ipykernel_launcher" in argv:
            found.append(p)
        elif "durabook_kernel.zygote" in argv:
            found.extend(children(p))
    return found


def kernel_of(runner_pid: int, timeout: float = 30) -> int:
    """The kernel of a `durabook run` process, once it has one."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = kernels_of(runner_pid)
        if found:
            return found[0]
        time.sleep(0.01)
    raise AssertionError(f"no kernel under pid {runner_pid}")


def pid_gone(pid: int, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        try:  # a zombie child of ours still answers kill(0)
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return True
        except ChildProcessError:
            pass
        state = Path(f"/proc/{pid}/stat")
        try:  # a zombie (not our child: nobody here reaps it) counts as gone
            if state.read_text().rsplit(")", 1)[1].split()[0] == "Z":
                return True
        except (OSError, IndexError):
            return True
        time.sleep(0.05)
    return False


def stop_engine(home: Path) -> None:
    """End the engine a kernel run by hand started in the background for ``home``
    (it would otherwise idle for ten minutes after the test, with its warm kernels)."""
    import signal

    from durabook_kernel import wire

    sock = wire.connect(home)
    if sock is not None:
        pid = wire.call(sock, "ping")["pid"]
        sock.close()
        os.kill(pid, signal.SIGTERM)
