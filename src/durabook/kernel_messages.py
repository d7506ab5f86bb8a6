"""What kernels tell the engine, as typed records validated where they are received.

A run's kernel writes journal records (``start``, ``cell``, ``suspend``; see
:mod:`durabook_kernel.driver`) and announces phases on iopub (``durabook_step``);
an interactive kernel sends each cell it ran over the control socket. The kernel
side stays free of pydantic (a kernel pays only for what it uses); the engine
checks every record against these models before acting on it, and a record that
does not fit is refused (a run then fails with ``BadKernelMessage``, recovery skips
the record), never half-read into the store.

The checked dict is what flows on: models allow extra fields, so a newer kernel's
additions pass through, but every field the engine reads has a checked type.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from .errors import DurabookError
from .models import UnserializableVar, VarRef

__all__ = [
    "BadKernelMessage",
    "CellRecord",
    "KernelError",
    "Manifest",
    "StartRecord",
    "StepMessage",
    "SuspendRecord",
    "Suspension",
    "check_record",
    "check_step_message",
    "check_suspension",
]

_DIGEST = r"^[0-9a-f]{64}$"


class BadKernelMessage(DurabookError):
    """A kernel sent a record that is not what a durabook kernel sends."""


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class KernelError(_Open):
    ename: str
    evalue: str
    traceback: list[str] = Field(default_factory=list)


class Manifest(_Open):
    """What a cell changed: saved variables (by reference), deleted and unsaved names."""

    vars: dict[str, VarRef] = Field(default_factory=dict)
    deleted: list[str] = Field(default_factory=list)
    unserializable: dict[str, UnserializableVar] = Field(default_factory=dict)


class Suspension(_Open):
    """A cell's request to suspend: sleep until a time, or wait for an event."""

    kind: Literal["sleep", "wait"]
    key: str = Field(min_length=1, max_length=200)
    until: float | None = None  # epoch seconds: a sleep's end, a wait's timeout
    event: str | None = Field(default=None, min_length=1, max_length=200)


class _Keyed(_Open):
    index: int = Field(ge=0)
    id: str | None = None
    hash: str | None = None


class StartRecord(_Keyed):
    t: Literal["start"]
    at: float | None = None


class SuspendRecord(_Keyed):
    t: Literal["suspend"]
    request: Suspension


class CellRecord(_Keyed):
    t: Literal["cell"]
    status: Literal["ok", "error", "exit"]
    started_at: float | None = None
    duration_ms: float | None = None
    cpu_s: float | None = Field(default=None, ge=0)
    peak_rss_bytes: int | None = Field(default=None, ge=0)
    execution_count: int | None = None
    outputs: list[dict[str, Any]] | None = None
    outputs_blob: str | None = Field(default=None, pattern=_DIGEST)
    manifest: Manifest | None = None
    error: KernelError | None = None


_Record = Annotated[StartRecord | SuspendRecord | CellRecord, Field(discriminator="t")]
_RECORD: TypeAdapter[Any] = TypeAdapter(_Record)


class StepMessage(_Open):
    """A ``durabook_step`` message's content on iopub."""

    phase: Literal["restored", "restore", "cell", "paused", "abort"]
    index: int | None = Field(default=None, ge=0)
    status: str | None = None
    suspend: Suspension | None = None
    error: KernelError | None = None


def _short(exc: ValidationError) -> str:
    e = exc.errors()[0]
    where = ".".join(str(p) for p in e["loc"]) or "record"
    return f"{where}: {e['msg']}"


def _fits(validate: Callable[[Any], Any], value: Any, what: str) -> Any:
    try:
        return validate(value)
    except ValidationError as exc:
        raise BadKernelMessage(f"{what} does not fit: {_short(exc)}") from None


def check_record(record: Any) -> dict[str, Any]:
    """A journal record, checked (records of unknown kinds are refused too)."""
    _fits(_RECORD.validate_python, record, "a journal record")
    return dict(record)


def check_step_message(content: Any) -> dict[str, Any]:
    _fits(StepMessage.model_validate, content, "a durabook_step message")
    return dict(content)


def check_suspension(request: Any) -> dict[str, Any]:
    req = _fits(Suspension.model_validate, request, "a suspension request")
    if req.kind == "wait" and req.event is None:
        raise BadKernelMessage("a wait must name its event")
    return dict(request)
