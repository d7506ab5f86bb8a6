"""What a kernel may use: memory, CPU seconds, open files, processes, disk.

A run asks for its own limits (``durabook run --memory 512M --cpu-seconds 600``,
the HTTP create body's ``limits``); one cell may ask for its own memory and CPU
(``%%step --memory 2G --cpu-seconds 60`` or cell metadata). Whatever is asked is
checked against the operator's maximums; what is not asked takes the operator's
defaults. Both come from the environment of the engine:

    DURABOOK_LIMITS="memory=4G,processes=256"        # defaults
    DURABOOK_MAX_LIMITS="memory=16G,cpu_seconds=1h"  # nobody may ask for more

How they hold: open files, processes and the largest file a kernel may write are
rlimits set on the kernel when it is handed to the run (``prlimit``; a kernel
cannot raise them). Memory and CPU are watched by the engine
(:mod:`durabook.kernels.watchdog`) over the kernel and every process it started,
and a kernel over either is ended; its cell fails with ``MemoryLimitExceeded`` or
``CpuLimitExceeded`` naming the limit, resumable like any failure. (``RLIMIT_AS``
is not used: it limits address space, which threads and numerical libraries
reserve by the gigabyte without using it, so it fails healthy notebooks.)
"""

from __future__ import annotations

import contextlib
import os
import re
import resource
import time
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from durabook_kernel.primitives import parse_duration

from ..errors import BadInput

__all__ = [
    "ByteSize",
    "Limits",
    "Seconds",
    "apply_rlimits",
    "check_limits",
    "format_bytes",
    "operator_limits",
    "parse_bytes",
    "resolve_limits",
]

_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*$", re.IGNORECASE)
DEFAULT_PROCESSES = 256
DEFAULT_OPEN_FILES = 4096


def parse_bytes(value: Any) -> int:
    """``512M``, ``2G``, ``1.5GiB``, ``1048576`` -> bytes (binary units)."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 512M or 2G")
    if isinstance(value, (int, float)):
        n = int(value)
    else:
        m = _SIZE.match(str(value))
        if not m:
            raise ValueError(f"{value!r} is not a size: use a number with K, M, G or T")
        n = int(float(m.group(1)) * _UNITS[m.group(2).lower()])
    if n <= 0:
        raise ValueError("a size must be more than 0")
    return n


def format_bytes(n: int) -> str:
    for unit, size in (("T", 1 << 40), ("G", 1 << 30), ("M", 1 << 20)):
        if n >= size and n % size == 0:
            return f"{n // size}{unit}"
    if n >= 1 << 20:
        return f"{n / (1 << 20):.0f}M"
    return f"{n // 1024}K" if n % 1024 == 0 else f"{n}B"


# a size ("512M", "2G", bytes) and a duration ("10m", seconds), as fields: also %%step's
ByteSize = Annotated[int | None, BeforeValidator(lambda v: None if v is None else parse_bytes(v))]
Seconds = Annotated[
    float | None, BeforeValidator(lambda v: None if v is None else parse_duration(v))
]


class Limits(BaseModel):
    """Limits of one kernel (or, for ``memory`` and ``cpu_seconds``, of one cell).
    None: not limited (or, in a request, "the default")."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # bytes resident, children included
    memory: ByteSize = Field(default=None, description="bytes of resident memory")
    cpu_seconds: Seconds = Field(default=None, gt=0, description="CPU seconds")
    open_files: int | None = Field(default=None, ge=16, le=1 << 20)
    processes: int | None = Field(default=None, ge=1, le=1 << 16)
    # bytes: the largest file a kernel may write, and all a sandbox's folder may hold
    disk: ByteSize = Field(default=None, description="bytes: largest file, sandbox folder")

    def merged(self, over: Limits | None) -> Limits:
        """These limits with ``over``'s set fields in their place."""
        if over is None:
            return self
        return self.model_copy(update=over.model_dump(exclude_none=True))

    def describe(self) -> str:
        parts = []
        if self.memory:
            parts.append(f"memory {format_bytes(self.memory)}")
        if self.cpu_seconds:
            parts.append(f"cpu {self.cpu_seconds:g} s")
        if self.processes:
            parts.append(f"processes {self.processes}")
        if self.open_files:
            parts.append(f"files {self.open_files}")
        if self.disk:
            parts.append(f"disk {format_bytes(self.disk)}")
        return ", ".join(parts) or "none"


def _from_setting(name: str) -> Limits:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return Limits()
    fields: dict[str, Any] = {}
    for part in raw.split(","):
        key, sep, value = part.partition("=")
        if not sep:
            raise BadInput(f"{name}: {part!r} is not NAME=VALUE")
        fields[key.strip().replace("-", "_")] = value.strip()
    try:
        return Limits(**fields)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise BadInput(f"{name}: {'.'.join(map(str, err['loc']))}: {err['msg']}") from None


def operator_limits() -> tuple[Limits, Limits]:
    """(defaults, maximums) from DURABOOK_LIMITS and DURABOOK_MAX_LIMITS."""
    maximum = _from_setting("DURABOOK_MAX_LIMITS")
    defaults = Limits(processes=DEFAULT_PROCESSES, open_files=DEFAULT_OPEN_FILES)
    defaults = defaults.merged(_from_setting("DURABOOK_LIMITS"))
    # a default above the maximum would refuse every run that asks for nothing
    capped = {
        k: v
        for k, v in maximum.model_dump(exclude_none=True).items()
        if getattr(defaults, k) is None or getattr(defaults, k) > v
    }
    return defaults.model_copy(update=capped), maximum


def resolve_limits(asked: Limits | None, what: str = "the run") -> Limits:
    """The operator's defaults with ``asked`` in their place; more than the operator's
    maximum is bad input naming both."""
    defaults, maximum = operator_limits()
    if asked is not None:
        for key, value in asked.model_dump(exclude_none=True).items():
            top = getattr(maximum, key)
            if top is not None and value > top:
                shown = format_bytes if key in ("memory", "disk") else (lambda v: f"{v:g}")
                raise BadInput(
                    f"{what} asks for {key.replace('_', '-')} {shown(value)}, over the "
                    f"operator's maximum of {shown(top)} (DURABOOK_MAX_LIMITS)"
                )
    return defaults.merged(asked)


def check_limits(limits: Limits | dict[str, Any] | None) -> Limits | None:
    if limits is None or isinstance(limits, Limits):
        return limits
    try:
        return Limits(**limits)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "limits"
        raise BadInput(f"invalid limit {where}: {err['msg']}") from None
    except TypeError:
        raise BadInput("limits must map names to values") from None


_counted: tuple[float, int, int] = (0.0, -1, 0)  # (when, uid, count): one scan a second


def user_processes(uid: int) -> int:
    global _counted
    when, who, count = _counted
    if who == uid and time.monotonic() - when < 1.0:
        return count
    n = 0
    for name in os.listdir("/proc"):
        if name.isdigit():
            with contextlib.suppress(OSError):
                n += os.stat(f"/proc/{name}").st_uid == uid
    _counted = (time.monotonic(), uid, n)
    return n


def apply_rlimits(pid: int, limits: Limits, cpu_used: float = 0.0) -> None:
    """Set the kernel's rlimits (soft = hard: the kernel cannot raise them back).

    CPU is the kernel's whole budget here; SIGXCPU ends it when spent (the watchdog
    usually ends it first, with a clearer error). Linux counts RLIMIT_NPROC over all
    the user's processes, so the kernel may start ``processes`` more than the user
    runs now (a desktop session runs hundreds); the watchdog counts the kernel's
    own exactly, and covers root, whom the rlimit exempts."""
    pairs = []
    if limits.open_files:
        pairs.append((resource.RLIMIT_NOFILE, limits.open_files))
    if limits.processes:
        pairs.append((resource.RLIMIT_NPROC, user_processes(os.getuid()) + limits.processes))
    if limits.disk:
        pairs.append((resource.RLIMIT_FSIZE, limits.disk))
    if limits.cpu_seconds:
        # whole seconds, counted from what starting the kernel already used
        pairs.append((resource.RLIMIT_CPU, int(cpu_used + limits.cpu_seconds) + 2))
    for which, value in pairs:
        try:
            resource.prlimit(pid, which, (value, value))
        except ValueError:
            # above this process's own hard limit: the lower one holds
            _, hard = resource.prlimit(pid, which)
            resource.prlimit(pid, which, (hard, hard))
