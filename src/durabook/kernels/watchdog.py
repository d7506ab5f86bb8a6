"""The engine's eye on running kernels: memory, CPU, processes and disk.

One thread per engine reads ``/proc`` ten times a second while kernels run. A
kernel's processes are the kernel and everything below it by parent (a kernel is
its children's subreaper, so a grandchild whose parent exits stays below it). Per
kernel it sums resident memory and CPU time, counts processes, and for a sandboxed
run with a disk limit measures its working folder every 0.3 s. A kernel over a limit is
frozen (SIGSTOP, so a fork bomb cannot outrun the kill), then killed with all its
processes, and :attr:`KernelProcess.limit_error` says which limit, for the runner
to report as the cell's error. The same samples feed ``durabook top``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..models import ErrorInfo
from .limits import Limits, format_bytes

if TYPE_CHECKING:
    from .pool import KernelProcess

__all__ = ["Sample", "Watchdog", "kernel_cpu", "process_table"]

_TICK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")
INTERVAL = 0.1
DISK_EVERY = 0.3


def process_table() -> dict[int, tuple[int, float, int]]:
    """pid -> (parent pid, CPU seconds, resident bytes) of every process we can read.
    CPU counts the children each has waited for too, so short-lived workers count."""
    table: dict[int, tuple[int, float, int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as fh:
                raw = fh.read()
        except OSError:
            continue
        # the name (field 2) may hold spaces and parentheses: split after the last ')'
        rest = raw[raw.rfind(b")") + 2 :].split()
        try:
            ppid = int(rest[1])
            # utime + stime + cutime + cstime
            cpu = (int(rest[11]) + int(rest[12]) + int(rest[13]) + int(rest[14])) / _TICK
            rss = int(rest[21]) * _PAGE
        except (IndexError, ValueError):
            continue
        table[int(name)] = (ppid, cpu, rss)
    return table


def kernel_cpu(pid: int) -> float:
    """CPU seconds one process has used (0.0 when it cannot be read)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            rest = fh.read().rsplit(b")", 1)[1].split()
        return (int(rest[11]) + int(rest[12])) / _TICK  # utime + stime
    except (OSError, IndexError, ValueError):
        return 0.0


def _pss(pid: int, rss: int) -> int:
    """Proportional set size (shared pages split between their sharers). A process
    that exited since the table was read (or a zombie: no Pss line) holds nothing;
    one we may not look into counts its whole RSS."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as fh:
            for line in fh:
                if line.startswith(b"Pss:"):
                    return int(line.split()[1]) * 1024
    except PermissionError:
        return rss
    except (OSError, ValueError, IndexError):
        return 0
    return 0


def _descendants(root: int, kids: dict[int, list[int]]) -> list[int]:
    out, todo = [root], [root]
    while todo:
        for child in kids.get(todo.pop(), ()):
            out.append(child)
            todo.append(child)
    return out


def _folder_bytes(folder: Path, stop_at: int) -> int:
    total = 0
    todo = [str(folder)]
    while todo:
        try:
            entries = os.scandir(todo.pop())
        except OSError:
            continue
        with entries:
            for e in entries:
                try:
                    if e.is_dir(follow_symlinks=False):
                        todo.append(e.path)
                    else:
                        total += e.stat(follow_symlinks=False).st_blocks * 512
                except OSError:
                    continue
                if total > stop_at:
                    return total
    return total


@dataclass
class Sample:
    """What a watched kernel uses now (``durabook top``)."""

    instance_id: str
    pid: int
    cell: int | None = None
    cpu_s: float = 0.0
    rss_bytes: int = 0
    processes: int = 0
    disk_bytes: int | None = None


@dataclass
class _Watched:
    kernel: KernelProcess
    instance_id: str
    limits: Limits
    folders: list[Path]  # a sandboxed run's working folder and share: its disk
    cell: int | None = None
    cell_limits: Limits | None = None  # a %%step cell's own memory / cpu
    cell_cpu0: float | None = None  # the kernel's CPU when the cell started
    run_cpu0: float | None = None  # the kernel's CPU when the run took it
    sample: Sample = field(init=False)
    disk_at: float = 0.0
    most_processes: int = 0

    def __post_init__(self) -> None:
        self.sample = Sample(self.instance_id, self.kernel.pid)


class Watchdog:
    def __init__(self, interval: float = INTERVAL) -> None:
        self.interval = interval
        self._watched: dict[int, _Watched] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False

    def watch(
        self, kernel: KernelProcess, instance_id: str, limits: Limits, folders: list[Path]
    ) -> None:
        with self._lock:
            self._watched[id(kernel)] = _Watched(kernel, instance_id, limits, folders)
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(
                    target=self._loop, daemon=True, name="durabook-watchdog"
                )
                self._thread.start()
        self._wake.set()

    def cell_started(self, kernel: KernelProcess, cell: int | None, limits: Any) -> None:
        """The runner saw ``cell`` start; ``limits`` are its own (or None)."""
        with self._lock:
            w = self._watched.get(id(kernel))
            if w is None:
                return
            w.cell = cell
            w.sample.cell = cell
            w.cell_limits = limits
            w.cell_cpu0 = None  # taken at the next sample

    def unwatch(self, kernel: KernelProcess) -> None:
        """The run is over: stop watching, and end what the kernel started and left
        running (a worker, a server), while it is still below the kernel. Then the
        kernel itself is closed."""
        with self._lock:
            w = self._watched.pop(id(kernel), None)
        if w is None or w.most_processes <= 1:
            return  # it never had more than itself: no scan needed
        table = process_table()
        kids: dict[int, list[int]] = {}
        for pid, (ppid, _, _) in table.items():
            kids.setdefault(ppid, []).append(pid)
        rest = _descendants(kernel.pid, kids)[1:]
        if rest:
            kill_tree(rest)

    def samples(self) -> list[Sample]:
        with self._lock:
            return [w.sample for w in self._watched.values()]

    def close(self) -> None:
        self._closed = True
        self._wake.set()

    def _loop(self) -> None:
        while not self._closed:
            with self._lock:
                watched = list(self._watched.values())
            if not watched:
                self._wake.wait(1.0)
                self._wake.clear()
                continue
            with contextlib.suppress(Exception):  # a vanished process: next tick
                self.check(watched)
            time.sleep(self.interval)

    def check(self, watched: list[_Watched]) -> None:
        table = process_table()
        kids: dict[int, list[int]] = {}
        for pid, (ppid, _, _) in table.items():
            kids.setdefault(ppid, []).append(pid)
        now = time.monotonic()
        for w in watched:
            if w.kernel.limit_error is not None or w.kernel.pid not in table:
                continue
            pids = _descendants(w.kernel.pid, kids)
            cpu = sum(table[p][1] for p in pids if p in table)
            if len(pids) == 1:
                rss = table[pids[0]][2]
            else:  # forked workers share pages: count each page once between them
                rss = sum(_pss(p, table[p][2]) for p in pids if p in table)
            s = w.sample
            s.cpu_s, s.rss_bytes, s.processes = cpu, rss, len(pids)
            w.most_processes = max(w.most_processes, len(pids))
            if w.cell_cpu0 is None:
                w.cell_cpu0 = cpu
            if w.run_cpu0 is None:
                w.run_cpu0 = cpu
            error = self._over(w, cpu, rss, len(pids))
            if error is None and w.folders and w.limits.disk and now >= w.disk_at:
                w.disk_at = now + DISK_EVERY
                s.disk_bytes = 0
                for folder in w.folders:
                    s.disk_bytes += _folder_bytes(folder, w.limits.disk - s.disk_bytes)
                if s.disk_bytes > w.limits.disk:
                    error = ErrorInfo(
                        ename="DiskLimitExceeded",
                        evalue=f"the run's working folder and blob share passed its disk "
                        f"limit of {format_bytes(w.limits.disk)}; the kernel was ended",
                    )
            if error is not None:
                w.kernel.limit_error = error
                kill_tree(pids)

    @staticmethod
    def _over(w: _Watched, cpu: float, rss: int, processes: int) -> ErrorInfo | None:
        memory = (w.cell_limits.memory if w.cell_limits else None) or w.limits.memory
        where = f"cell {w.cell}" if w.cell is not None else "the kernel"
        if memory and rss > memory:
            return ErrorInfo(
                ename="MemoryLimitExceeded",
                evalue=f"{where} used {format_bytes(rss)} of memory, over its limit of "
                f"{format_bytes(memory)}; the kernel was ended",
            )
        cell_cpu = w.cell_limits.cpu_seconds if w.cell_limits else None
        if cell_cpu and w.cell_cpu0 is not None and cpu - w.cell_cpu0 > cell_cpu:
            return ErrorInfo(
                ename="CpuLimitExceeded",
                evalue=f"{where} used more than its limit of {cell_cpu:g} CPU seconds; "
                "the kernel was ended",
            )
        run_cpu = w.limits.cpu_seconds
        if run_cpu and w.run_cpu0 is not None and cpu - w.run_cpu0 > run_cpu:
            return ErrorInfo(
                ename="CpuLimitExceeded",
                evalue=f"{where}: the run used more than its limit of {run_cpu:g} CPU "
                "seconds; the kernel was ended",
            )
        if w.limits.processes and processes > w.limits.processes + 1:  # +1: the kernel
            return ErrorInfo(
                ename="ProcessLimitExceeded",
                evalue=f"{where} started more than its limit of {w.limits.processes} "
                "processes; the kernel was ended",
            )
        return None


def kill_tree(pids: list[int]) -> None:
    """Freeze, then kill, ``pids`` and whatever they forked meanwhile."""
    for _ in range(20):
        for p in pids:
            with contextlib.suppress(OSError):
                os.kill(p, signal.SIGSTOP)
        table = process_table()
        kids: dict[int, list[int]] = {}
        for pid, (ppid, _, _) in table.items():
            kids.setdefault(ppid, []).append(pid)
        more = {c for p in pids for c in _descendants(p, kids)} - set(pids)
        pids = [*pids, *more]
        if not more:
            break
    for p in pids:
        with contextlib.suppress(OSError):
            os.kill(p, signal.SIGKILL)
