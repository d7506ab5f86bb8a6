"""Requests and replies of the engine's verbs: one model per verb, whichever door.

The unix socket, HTTP and the in-process service validate requests with these
models and return replies of these types, so a verb returns the same type
whichever path served it. The OpenAPI document is generated from them.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from ..kernels.limits import Limits
from ..models import InstanceStatus, InstanceSummary, RunResult, Status

__all__ = [
    "CreateRequest",
    "CronPreview",
    "CronPreviewRequest",
    "EventReply",
    "EventRequest",
    "Health",
    "IdRequest",
    "InstancePage",
    "InstanceRef",
    "KernelUsage",
    "LifecycleReply",
    "ListRequest",
    "NameRequest",
    "RestartRequest",
    "ResumeRequest",
    "ScheduleInfo",
    "ScheduleRunsRequest",
    "ScheduleSpec",
    "TopReply",
    "WaitRequest",
]

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
NAME_RULE = "1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit"


def check_name(value: str | None, what: str) -> str | None:
    if value is not None and not _NAME.fullmatch(value):
        raise ValueError(f"invalid {what} {value[:80]!r}: use {NAME_RULE}")
    return value


def check_url(value: str | None) -> str | None:
    if value is None:
        return None
    if len(value) > 2000 or not re.match(r"https?://[^\s/@]+(/|$)", value):
        raise ValueError(
            "a webhook must be an http:// or https:// URL of at most 2000 characters, "
            "with no user:password@"
        )
    return value


def validation_summary(exc: ValidationError, root: str = "body") -> str:
    """A pydantic error as one line: where and what, for the first few problems."""
    parts = []
    for e in exc.errors()[:5]:
        where = ".".join(str(p) for p in e["loc"]) or root
        parts.append(f"{where}: {e['msg']}")
    return "; ".join(parts)


class Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class IdRequest(Request):
    id: str = Field(min_length=1, max_length=64)


class CreateRequest(Request):
    """A new instance: ``notebook`` (a path the engine can read) or ``notebook_json``."""

    notebook: str | None = Field(default=None, max_length=4096)
    notebook_json: dict[str, Any] | None = None
    parameters: dict[str, Any] | None = None
    id: str | None = Field(default=None, min_length=1, max_length=64)
    priority: int = Field(default=0, ge=-1000, le=1000)
    tenant: str | None = None
    workflow: str | None = None
    webhook: str | None = None
    output: str | None = Field(default=None, max_length=4096)
    env: dict[str, str] | None = None
    scan_all: bool = False
    from_text: bool = False  # parameters given as text (the CLI's -p NAME VALUE)
    if_exists: Literal["return", "error"] = "return"
    cwd: str | None = Field(default=None, max_length=4096)
    source_path: str | None = Field(default=None, max_length=4096)  # notebook_json's origin
    cell_timeout: float | None = Field(default=None, gt=0)  # seconds per cell
    limits: Limits | None = None  # the kernel's own, within the operator's maximums
    sandbox: bool | None = None  # None: when the run has a tenant, or DURABOOK_SANDBOX=1
    network: bool = False  # a sandboxed kernel may use the network

    @field_validator("tenant")
    @classmethod
    def _tenant(cls, v: str | None) -> str | None:
        return check_name(v, "tenant")

    @field_validator("workflow")
    @classmethod
    def _workflow(cls, v: str | None) -> str | None:
        if v is not None and not 0 < len(v) <= 256:
            raise ValueError("a workflow name has 1 to 256 characters")
        return v

    @field_validator("webhook")
    @classmethod
    def _webhook(cls, v: str | None) -> str | None:
        return check_url(v)

    @model_validator(mode="after")
    def _one_notebook(self) -> CreateRequest:
        if (self.notebook is None) == (self.notebook_json is None):
            raise ValueError("give exactly one of notebook (a path) and notebook_json")
        return self


class InstanceRef(BaseModel):
    """What create answers: the instance, queued (or the existing one, ``created`` false)."""

    id: str
    status: Status
    created: bool = True


class ListRequest(Request):
    status: Status | None = None
    tenant: str | None = Field(default=None, max_length=64)
    workflow: str | None = Field(default=None, max_length=256)
    schedule: str | None = Field(default=None, max_length=64)
    notebook: str | None = Field(default=None, max_length=4096)  # the path, as stored
    limit: int = Field(default=100, ge=1, le=10_000)
    cursor: str | None = Field(default=None, max_length=200)


class InstancePage(BaseModel):
    items: list[InstanceSummary]
    next_cursor: str | None = None


class ResumeRequest(IdRequest):
    notebook: str | None = Field(default=None, max_length=4096)
    now: bool = False


class RestartRequest(IdRequest):
    from_cell: int | None = Field(default=None, ge=0)


class WaitRequest(IdRequest):
    timeout: float | None = Field(default=None, gt=0)


class EventRequest(IdRequest):
    name: str = Field(min_length=1, max_length=200)
    data: Any = None  # any JSON value


class EventReply(BaseModel):
    id: str
    event: str
    delivered: bool  # it woke the instance (else kept until the instance waits for it)
    status: Status
    resumed_by_engine: bool = False  # a running engine resumes the woken instance


class LifecycleReply(BaseModel):
    id: str
    status: Status
    resumed_by_engine: bool = False  # a queued instance is taken by a running engine


class Health(BaseModel):
    ok: bool = True
    version: str
    pid: int
    home: str
    serving: bool  # `durabook serve`: queued instances, timers and schedules are run
    queued: int = 0
    running: int = 0
    concurrency: int = 0


class KernelUsage(BaseModel):
    """One running instance's kernel as the engine's watchdog last saw it."""

    id: str
    notebook: str | None = None
    tenant: str | None = None
    pid: int
    cell: int | None = None  # the cell running now
    cpu_s: float = 0.0  # the kernel and its processes, since they started
    rss_bytes: int = 0  # resident memory of the kernel and its processes
    processes: int = 0
    disk_bytes: int | None = None  # a sandboxed run's folder, when it has a disk limit
    sandbox: bool = False


class TopReply(BaseModel):
    """What ``durabook top`` shows: running kernels, and the warm pool."""

    kernels: list[KernelUsage] = Field(default_factory=list)
    pool_size: int = 0
    pool_ready: int = 0
    kernels_started: int = 0


# -- schedules --------------------------------------------------------------------------


class NameRequest(Request):
    name: str = Field(min_length=1, max_length=64)


SCHEDULE_NAME_MAX = 49  # a fire's instance id adds ".YYYYMMDDTHHMMZ" (15 characters)


class ScheduleSpec(Request):
    name: str
    notebook: str = Field(min_length=1, max_length=4096)
    cron: str = Field(min_length=1, max_length=200)
    tz: str = Field(default="UTC", min_length=1, max_length=64)
    parameters: dict[str, Any] = Field(default_factory=dict)
    from_text: bool = False
    overlap: Literal["skip", "queue", "allow"] = "skip"
    catch_up: Literal["none", "one", "all"] = "one"
    tenant: str | None = None
    priority: int = Field(default=0, ge=-1000, le=1000)
    webhook: str | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if len(v) > SCHEDULE_NAME_MAX:  # its runs are NAME.YYYYMMDDTHHMMZ: 64 at most
            raise ValueError(
                f"a schedule name has at most {SCHEDULE_NAME_MAX} characters (got {len(v)})"
            )
        check_name(v, "schedule name")
        return v

    @field_validator("tenant")
    @classmethod
    def _tenant(cls, v: str | None) -> str | None:
        return check_name(v, "tenant")

    @field_validator("webhook")
    @classmethod
    def _webhook(cls, v: str | None) -> str | None:
        return check_url(v)


class ScheduleInfo(BaseModel):
    name: str
    notebook: str
    cron: str
    tz: str
    parameters: dict[str, Any] = Field(default_factory=dict)
    overlap: str
    catch_up: str
    tenant: str | None = None
    priority: int = 0
    webhook: str | None = None
    paused: bool = False
    created_at: datetime
    last_fire: datetime | None = None
    next_fires: list[datetime] = Field(default_factory=list)  # the next three, UTC


class ScheduleRunsRequest(NameRequest):
    limit: int = Field(default=100, ge=1, le=10_000)


class CronPreviewRequest(Request):
    """What a schedule form shows before anything is stored."""

    cron: str = Field(min_length=1, max_length=200)
    tz: str = Field(default="UTC", min_length=1, max_length=64)
    count: int = Field(default=5, ge=1, le=50)


class CronPreview(BaseModel):
    cron: str
    tz: str
    next_fires: list[datetime]  # UTC, under the scheduler's DST rules


# replies that are core records, re-exported for the adapters
__all__ += ["InstanceStatus", "InstanceSummary", "RunResult"]
