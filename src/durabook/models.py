"""Typed records that cross boundaries: instances, cells, checkpoints, run results.

Adapters (the DuckDB store, the kernel client, the CLI) convert to and from these.
"""

from __future__ import annotations

from datetime import datetime
from enum import Enum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "Attempt",
    "CellState",
    "CellStatus",
    "ErrorInfo",
    "InstanceStatus",
    "InstanceSummary",
    "RunResult",
    "Status",
    "StepRecord",
    "UnserializableVar",
    "VarRef",
]


class Status(str, Enum):
    QUEUED = "queued"
    RUNNING = "running"
    SLEEPING = "sleeping"
    WAITING = "waiting"
    PAUSED = "paused"
    COMPLETED = "completed"
    FAILED = "failed"
    TERMINATED = "terminated"

    @property
    def suspended(self) -> bool:
        return self in (Status.SLEEPING, Status.WAITING, Status.PAUSED)

    @property
    def final(self) -> bool:
        return self in (Status.COMPLETED, Status.TERMINATED)


class CellStatus(str, Enum):
    PENDING = "pending"
    RUNNING = "running"
    COMMITTED = "committed"
    FAILED = "failed"


class ErrorInfo(BaseModel):
    ename: str
    evalue: str
    traceback: list[str] = Field(default_factory=list)
    retry_in_s: float | None = None  # set when a %%step retry follows this failure


class VarRef(BaseModel):
    """Where one saved variable lives: inline bytes (base64) or a blob digest."""

    model_config = ConfigDict(extra="allow")
    kind: str  # pickle | cloudpickle | parquet | npy | module | alias
    type: str = ""
    blob: str | None = None
    inline: str | None = None
    module: str | None = None
    target: str | None = None
    size: int = 0


class UnserializableVar(BaseModel):
    type: str
    error: str


class StepRecord(BaseModel):
    """One finished attempt of one cell, as the runner hands it to the store."""

    instance_id: str
    index: int
    cell_id: str
    source_hash: str
    status: CellStatus
    attempt: int
    started_at: datetime
    duration_ms: float
    cpu_s: float | None = None  # the kernel's CPU time (and its children's) for the cell
    peak_rss_bytes: int | None = None  # the kernel's peak resident memory during the cell
    execution_count: int | None = None
    outputs: list[dict[str, Any]] = Field(default_factory=list)
    vars: dict[str, VarRef] = Field(default_factory=dict)
    deleted: list[str] = Field(default_factory=list)
    unserializable: dict[str, UnserializableVar] = Field(default_factory=dict)
    replay: bool = False
    error: ErrorInfo | None = None


class Attempt(BaseModel):
    """One recorded attempt of a cell (a %%step retry makes several)."""

    attempt: int
    status: CellStatus
    started_at: datetime | None = None
    duration_ms: float | None = None
    cpu_s: float | None = None
    peak_rss_bytes: int | None = None
    error: ErrorInfo | None = None  # with retry_in_s when a retry followed


class CellState(BaseModel):
    index: int
    cell_id: str
    status: CellStatus
    attempts: int = 0
    started_at: datetime | None = None
    duration_ms: float | None = None
    cpu_s: float | None = None  # the latest attempt's CPU seconds, where metered
    peak_rss_bytes: int | None = None  # the latest attempt's peak memory, where metered
    name: str | None = None  # the %%step name
    error: ErrorInfo | None = None  # the latest attempt's, when it failed
    unserializable: dict[str, UnserializableVar] = Field(default_factory=dict)
    history: list[Attempt] = Field(default_factory=list)  # every attempt, oldest first


class InstanceStatus(BaseModel):
    """What ``durabook status ID --json`` prints."""

    id: str
    status: Status
    notebook: str
    version: str
    created_at: datetime
    updated_at: datetime
    failed_cell: int | None = None
    error: ErrorInfo | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)
    output: str | None = None
    wake_at: datetime | None = None  # sleeping: when it wakes; waiting: when it times out
    waiting_for: str | None = None  # waiting: the event's name
    priority: int = 0
    tenant: str | None = None
    workflow: str | None = None  # dispatch limits per workflow (default: the notebook)
    schedule: str | None = None  # the schedule that fired it
    workdir: str | None = None  # the kernel's working folder
    sandbox: bool = False  # a private folder and, with bubblewrap, namespaces
    limits: dict[str, Any] = Field(default_factory=dict)  # what the run asked for
    cells: list[CellState] = Field(default_factory=list)


class InstanceSummary(BaseModel):
    id: str
    status: Status
    notebook: str
    created_at: datetime
    updated_at: datetime
    failed_cell: int | None = None
    priority: int = 0
    tenant: str | None = None
    workflow: str | None = None
    schedule: str | None = None


class RunResult(BaseModel):
    """What ``durabook run --json`` / ``resume --json`` print."""

    id: str
    status: Status
    failed_cell: int | None = None
    output: str | None = None
    error: ErrorInfo | None = None

    @property
    def exit_code(self) -> int:
        if self.status == Status.COMPLETED:
            return 0
        if self.status.suspended:
            return 3
        return 1
