"""One exception base with a stable code and structured fields.

The CLI maps :attr:`DurabookError.exit_code` to its exit status and prints
:meth:`DurabookError.one_line`; the HTTP API (later) maps codes to 4xx bodies.
"""

from __future__ import annotations

from enum import Enum
from typing import Any

__all__ = [
    "BadInput",
    "CellExecutionFailed",
    "DurabookError",
    "EngineBusy",
    "EngineLost",
    "ErrorCode",
    "InvalidNotebook",
    "InvalidParameter",
    "InvalidState",
    "KernelDied",
    "StorageFull",
    "UnknownInstance",
    "UnknownSchedule",
    "UnrestorableState",
    "UnsafePath",
    "storage_full",
]


class ErrorCode(str, Enum):
    INVALID_NOTEBOOK = "invalid_notebook"
    INVALID_PARAMETER = "invalid_parameter"
    UNKNOWN_INSTANCE = "unknown_instance"
    UNKNOWN_SCHEDULE = "unknown_schedule"
    INVALID_STATE = "invalid_state"
    BAD_INPUT = "bad_input"
    ENGINE_BUSY = "engine_busy"
    KERNEL_DIED = "kernel_died"
    UNRESTORABLE_STATE = "unrestorable_state"
    CELL_FAILED = "cell_failed"
    STORAGE_FULL = "storage_full"
    ENGINE_LOST = "engine_lost"
    UNSAFE_PATH = "unsafe_path"
    INTERNAL = "internal"


class DurabookError(Exception):
    """Base of every error durabook raises on purpose.

    ``code`` is stable (scripts may match on it); ``fields`` carries the
    structured details (instance id, cell index, parameter name, ...).
    """

    code: ErrorCode = ErrorCode.INTERNAL
    exit_code: int = 1

    def __init__(self, message: str, **fields: Any) -> None:
        super().__init__(message)
        self.message = message
        self.fields = fields

    def one_line(self) -> str:
        return "error: " + " ".join(self.message.split())

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code.value, "message": self.message, **self.fields}


class BadInput(DurabookError):
    """Input the user can fix; nothing was stored. Exit status 2."""

    code = ErrorCode.BAD_INPUT
    exit_code = 2


class InvalidNotebook(BadInput):
    code = ErrorCode.INVALID_NOTEBOOK


class InvalidParameter(BadInput):
    code = ErrorCode.INVALID_PARAMETER


class UnknownInstance(BadInput):
    code = ErrorCode.UNKNOWN_INSTANCE


class UnknownSchedule(BadInput):
    code = ErrorCode.UNKNOWN_SCHEDULE


class InvalidState(BadInput):
    """The instance exists but cannot do what was asked (e.g. resume a completed run)."""

    code = ErrorCode.INVALID_STATE


class EngineBusy(BadInput):
    """Another process owns this home's store and could not be reached."""

    code = ErrorCode.ENGINE_BUSY


class KernelDied(DurabookError):
    code = ErrorCode.KERNEL_DIED


class UnrestorableState(DurabookError):
    """A variable needed on resume could not be saved and its cell is not marked replay."""

    code = ErrorCode.UNRESTORABLE_STATE


class CellExecutionFailed(DurabookError):
    code = ErrorCode.CELL_FAILED


class StorageFull(DurabookError):
    """The home's disk is full (or over quota). The instance stays resumable."""

    code = ErrorCode.STORAGE_FULL


class EngineLost(DurabookError):
    """The engine serving this request went away (killed, crashed). Exit status 4."""

    code = ErrorCode.ENGINE_LOST
    exit_code = 4


class UnsafePath(DurabookError):
    """A folder or socket durabook must trust is owned or writable by someone else."""

    code = ErrorCode.UNSAFE_PATH
    exit_code = 2


_FULL_MARKERS = ("no space left on device", "disk quota exceeded", "disk full")


def storage_full(exc: BaseException, home: Any) -> StorageFull | None:
    """A StorageFull naming the home when ``exc`` is a full disk (OSError or DuckDB's)."""
    import errno

    full = isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)
    full = full or any(m in str(exc).lower() for m in _FULL_MARKERS)
    if not full:
        return None
    return StorageFull(
        f"no space left on the disk of {home}: free some space, then resume the instance "
        "(its committed cells are kept)",
        home=str(home),
    )
