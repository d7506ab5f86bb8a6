"""What one cell cost the kernel: CPU seconds and peak resident memory.

CPU is the kernel process's user and system time (its threads included) plus that
of the children it waited for, across the cell. The peak is the kernel's high-water
mark of resident memory (``VmHWM``), reset before each cell through
``/proc/self/clear_refs``; where that cannot be written the peak is the process's
since it started, so a cell is never shown lighter than it was.
"""

from __future__ import annotations

import resource

__all__ = ["CellMeter"]

_CLEAR_REFS = "/proc/self/clear_refs"
_STATUS = "/proc/self/status"


def _cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _reset_peak() -> None:
    try:
        with open(_CLEAR_REFS, "w") as fh:
            fh.write("5")  # resets VmHWM to the current resident size (Linux 4.0+)
    except OSError:
        pass


def _peak_bytes() -> int:
    try:
        with open(_STATUS, "rb") as fh:
            for line in fh:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux


class CellMeter:
    """``start()`` before a cell, ``stop()`` after it: ``{"cpu_s", "peak_rss_bytes"}``."""

    def __init__(self) -> None:
        self._cpu0 = 0.0

    def start(self) -> None:
        _reset_peak()
        self._cpu0 = _cpu_seconds()

    def stop(self) -> dict[str, float | int]:
        return {"cpu_s": max(0.0, _cpu_seconds() - self._cpu0), "peak_rss_bytes": _peak_bytes()}
