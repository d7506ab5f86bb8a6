"""The engine's verbs, implemented once over the in-process engine.

:class:`Service` is what every door calls: the CLI and :class:`durabook.Client`
(directly when they opened the home's store themselves, else through
:class:`durabook.remote.RemoteEngine`, which has the same methods), the unix
socket server, HTTP, and the papermill engine. Each verb takes its request model
and returns its reply model (see :mod:`.models`); :data:`VERBS` names them for the
adapters.

Run and resume differ by how the engine lives. Embedded (a ``durabook run`` that
opened the store itself) they execute in the caller's thread, as always. Under
``durabook serve`` (a :class:`~durabook.dispatcher.Dispatcher` is attached) they
queue the instance and follow it to a final or suspended state, so the
dispatcher's limits hold whoever asks.
"""

from __future__ import annotations

import builtins
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from ..errors import InvalidState
from ..models import InstanceStatus, RunResult, Status
from ..progress import CellEvent, Progress
from .models import (
    CreateRequest,
    CronPreview,
    CronPreviewRequest,
    EventReply,
    EventRequest,
    Health,
    IdRequest,
    InstancePage,
    InstanceRef,
    KernelUsage,
    LifecycleReply,
    ListRequest,
    NameRequest,
    RestartRequest,
    ResumeRequest,
    ScheduleInfo,
    ScheduleRunsRequest,
    ScheduleSpec,
    TopReply,
    WaitRequest,
)

if TYPE_CHECKING:
    from pydantic import BaseModel

    from ..dispatcher import Dispatcher
    from ..engine import Engine
    from ..scheduler import Scheduler

__all__ = ["VERBS", "Service", "Verb"]

FOLLOW_RECHECK = 1.0  # seconds: a follower re-reads the status at least this often


def _progress_event(progress: Progress, event: dict[str, Any]) -> None:
    kind = event.get("event")
    if kind == "start":
        progress.start(event["id"], event["total"], event["done"])
    elif kind == "committed":
        progress.committed(event["index"])
    elif kind == "executed":
        progress.executed(CellEvent.from_dict(event))


class Service:
    """Every verb of one home's engine. ``dispatcher``: set under ``durabook serve``."""

    def __init__(
        self,
        engine: Engine,
        dispatcher: Dispatcher | None = None,
        scheduler: Scheduler | None = None,
    ) -> None:
        self.engine = engine
        self.dispatcher = dispatcher
        self.scheduler = scheduler
        # who hosts it: "serve", "jupyter" (JupyterLab's server extension) or "cli";
        # on_handoff: set by a host that gives the home up to a `durabook serve`
        self.host = "serve" if dispatcher is not None else "cli"
        self.on_handoff: Callable[[], None] | None = None

    @property
    def home(self) -> Any:
        return self.engine.home

    @property
    def serving(self) -> bool:
        return self.dispatcher is not None

    def close(self) -> None:
        """Nothing of its own: the engine's owner closes the engine."""

    # -- create, run, follow ---------------------------------------------------------
    def create(
        self, req: CreateRequest, on_created: Callable[[str], None] | None = None
    ) -> InstanceRef:
        """Validate, store the version, insert ``queued``, return at once."""
        notebook: Any = req.notebook
        if req.notebook_json is not None:
            import nbformat

            # checked once, by Engine.create (size, depth, nbformat's schema)
            notebook = nbformat.from_dict(req.notebook_json)
        iid, created = self.engine.create(
            notebook,
            req.parameters,
            req.id,
            req.output,
            from_text=req.from_text,
            if_exists=req.if_exists,
            cwd=req.cwd,
            env=req.env,
            scan_all=req.scan_all,
            priority=req.priority,
            tenant=req.tenant,
            workflow=req.workflow,
            webhook=req.webhook,
            source_path=req.source_path,
            cell_timeout=req.cell_timeout,
            limits=req.limits,
            sandbox=req.sandbox,
            network=req.network,
        )
        if on_created:
            on_created(iid)
        if created:
            return InstanceRef(id=iid, status=Status.QUEUED, created=True)
        row = self.engine._instance(iid)
        return InstanceRef(id=iid, status=Status(row["status"]), created=False)

    def run(
        self,
        req: CreateRequest,
        progress: Progress | None = None,
        on_created: Callable[[str], None] | None = None,
    ) -> RunResult:
        """Create and run to a final or suspended state (``durabook run``)."""
        if self.dispatcher is None:
            ref = self.create(req, on_created)
            inst = self.engine._instance(ref.id)
            if not ref.created and Status(inst["status"]) != Status.QUEUED:
                return self.engine._result(inst)
            return self.engine.execute(ref.id, progress)
        hub = self.engine.hub
        with hub.subscribe(None) as early:  # the run may start before we know its id
            ref = self.create(req, on_created)
            sub = hub.subscribe(ref.id)  # from now on, only its own events
        with sub:
            backlog = [e for e in early.drain() if e.get("id") == ref.id]
            return self._follow(ref.id, progress, None, sub, backlog)

    def resume(self, req: ResumeRequest, progress: Progress | None = None) -> RunResult:
        if self.dispatcher is None:
            return self.engine.resume(req.id, req.notebook, progress=progress, now=req.now)
        eng = self.engine
        with eng.hub.subscribe(req.id) as sub:
            eng.prepare_resume(req.id, req.notebook, req.now)
            if eng._instance(req.id)["status"] == Status.FAILED.value:  # else woken: queued
                eng.requeue(req.id)
            return self._follow(req.id, progress, None, sub)

    def wait(self, req: WaitRequest, progress: Progress | None = None) -> RunResult:
        """Follow an instance until it is final or suspended (``durabook wait``)."""
        inst = self.engine._instance(req.id)  # unknown: say so at once
        if self.dispatcher is None and inst["status"] == Status.QUEUED.value:
            # nobody else runs queued instances (no `durabook serve`): run it here
            return self.engine.execute(req.id, progress)
        with self.engine.hub.subscribe(req.id) as sub:
            return self._follow(req.id, progress, req.timeout, sub)

    def _follow(
        self,
        iid: str,
        progress: Progress | None,
        timeout: float | None,
        sub: Any,
        backlog: builtins.list[dict[str, Any]] | None = None,
    ) -> RunResult:
        eng = self.engine
        backlog = backlog or []
        seen = {id(e) for e in backlog}  # published to both subscriptions: the same object
        for event in backlog:
            if progress is not None:
                _progress_event(progress, event)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            inst = eng._instance(iid)
            status = Status(inst["status"])
            settled = status not in (Status.QUEUED, Status.RUNNING)
            if status == Status.RUNNING and not eng.owner_alive(inst):
                eng.recover_orphans()  # its runner died: failed now, say so
                continue
            if settled and not (self.dispatcher and self.dispatcher.is_running(iid)):
                return eng._result(inst)
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise InvalidState(
                    f"instance {iid} is still {status.value} after {timeout:g} s",
                    instance=iid,
                    status=status.value,
                    timeout=True,
                )
            nap = FOLLOW_RECHECK if left is None else min(FOLLOW_RECHECK, left)
            end = time.monotonic() + nap
            while (rest := end - time.monotonic()) > 0:
                event = sub.get(rest)
                if event is None:
                    break
                if event.get("id") != iid or id(event) in seen:
                    continue
                if progress is not None:
                    _progress_event(progress, event)
                if event.get("event") in ("status", "done"):
                    break

    # -- reads -------------------------------------------------------------------------
    def status(self, req: IdRequest) -> InstanceStatus:
        return self.engine.status(req.id)

    def list(self, req: ListRequest) -> InstancePage:
        self.engine.recover_orphans()
        items, nxt = self.engine.store.list(
            req.status.value if req.status else None,
            req.limit,
            tenant=req.tenant,
            workflow=req.workflow,
            schedule=req.schedule,
            cursor=req.cursor,
            notebook=req.notebook,
        )
        return InstancePage(items=items, next_cursor=nxt)

    def notebook(self, req: IdRequest) -> dict[str, Any]:
        """The output notebook as it stands: recorded outputs of every committed cell."""
        from ..output import build_output

        eng = self.engine
        inst = eng._instance(req.id)
        latest, attempts = eng.store.latest_steps(req.id)
        meta = {
            "instance_id": req.id,
            "version": inst["version"],
            "status": inst["status"],
            "parameters": inst["parameters"],
            "failed_cell": inst["failed_cell"],
        }
        nb = build_output(eng.executed_notebook(inst), latest, attempts, meta, eng.blobs.get)
        return dict(nb)

    def health(self, req: Any = None) -> Health:
        from .. import __version__

        queued = running = 0
        if self.dispatcher is not None:
            queued, running = self.dispatcher.counts()
        return Health(
            version=__version__,
            pid=os.getpid(),
            home=str(self.engine.home),
            serving=self.serving,
            queued=queued,
            running=running,
            concurrency=self.dispatcher.limits.concurrency if self.dispatcher else 0,
        )

    def top(self, req: Any = None) -> TopReply:
        eng = self.engine
        rows = []
        for s in eng.watchdog.samples():
            inst = eng.store.instance_row(s.instance_id) or {}
            rows.append(
                KernelUsage(
                    id=s.instance_id,
                    notebook=inst.get("notebook"),
                    tenant=inst.get("tenant"),
                    pid=s.pid,
                    cell=s.cell,
                    cpu_s=round(s.cpu_s, 2),
                    rss_bytes=s.rss_bytes,
                    processes=s.processes,
                    disk_bytes=s.disk_bytes,
                    sandbox=bool((inst.get("options") or {}).get("sandbox")),
                )
            )
        return TopReply(
            kernels=rows,
            pool_size=eng.pool.size,
            pool_ready=eng.pool.ready(),
            kernels_started=eng.pool.started,
        )

    # -- events and lifecycle -----------------------------------------------------------
    def send_event(self, req: EventRequest) -> EventReply:
        data = None if req.data is None else json.dumps(req.data)
        delivered = self.engine.send_event(req.id, req.name, data)
        status = Status(self.engine._instance(req.id)["status"])
        return EventReply(
            id=req.id,
            event=req.name,
            delivered=delivered,
            status=status,
            resumed_by_engine=delivered and self.serving,
        )

    def _lifecycle(self, op: str, iid: str) -> LifecycleReply:
        status = getattr(self.engine, op)(iid)
        return LifecycleReply(
            id=iid, status=status, resumed_by_engine=status == Status.QUEUED and self.serving
        )

    def pause(self, req: IdRequest) -> LifecycleReply:
        return self._lifecycle("pause", req.id)

    def unpause(self, req: IdRequest) -> LifecycleReply:
        return self._lifecycle("unpause", req.id)

    def terminate(self, req: IdRequest) -> LifecycleReply:
        return self._lifecycle("terminate", req.id)

    def cancel(self, req: IdRequest) -> LifecycleReply:
        """End an instance that has not started yet (queued, or paused before it ran)."""
        inst = self.engine._instance(req.id)
        if (
            inst["status"] not in (Status.QUEUED.value, Status.PAUSED.value)
            or (self.engine.store.latest_steps(req.id)[0])
        ):
            raise InvalidState(
                f"instance {req.id} has started ({inst['status']}): terminate ends it",
                instance=req.id,
                status=inst["status"],
            )
        return self._lifecycle("terminate", req.id)

    def restart(self, req: RestartRequest) -> LifecycleReply:
        self.engine.restart(req.id, req.from_cell)
        return LifecycleReply(id=req.id, status=Status.QUEUED, resumed_by_engine=self.serving)

    # -- schedules ---------------------------------------------------------------------
    def _schedules(self) -> Scheduler:
        if self.scheduler is None:
            from ..scheduler import Scheduler

            self.scheduler = Scheduler(self.engine)
        return self.scheduler

    def schedule_add(self, req: ScheduleSpec) -> ScheduleInfo:
        return self._schedules().add(req)

    def schedule_list(self, req: Any = None) -> builtins.list[ScheduleInfo]:
        return self._schedules().list()

    def schedule_get(self, req: NameRequest) -> ScheduleInfo:
        return self._schedules().get(req.name)

    def schedule_pause(self, req: NameRequest) -> ScheduleInfo:
        return self._schedules().set_paused(req.name, True)

    def schedule_unpause(self, req: NameRequest) -> ScheduleInfo:
        return self._schedules().set_paused(req.name, False)

    def schedule_remove(self, req: NameRequest) -> ScheduleInfo:
        return self._schedules().remove(req.name)

    def schedule_preview(self, req: CronPreviewRequest) -> CronPreview:
        """The next fire times of a cron expression in a zone (nothing is stored)."""
        from itertools import islice

        from ..scheduler import fire_times, parse_cron

        cron = parse_cron(req.cron)
        fires = list(islice(fire_times(cron, req.tz, datetime.now(timezone.utc)), req.count))
        return CronPreview(cron=cron, tz=req.tz, next_fires=fires)

    def schedule_runs(self, req: ScheduleRunsRequest) -> InstancePage:
        self._schedules().get(req.name)  # unknown: say so
        return self.list(ListRequest(schedule=req.name, limit=req.limit))

    # -- interactive kernels (the extension's own calls) ------------------------------
    def open_session(self, notebook: str, pid: int, cwd: str | None = None) -> str:
        return self.engine.open_session(notebook, pid, cwd)

    def checkpoint(self, iid: str, step: dict[str, Any]) -> None:
        self.engine.commit_interactive(iid, step)

    def end_session(self, iid: str) -> None:
        self.engine.end_session(iid)

    def restore_plan(self, iid: str) -> dict[str, Any]:
        return self.engine.session_restore_plan(iid)


@dataclass(frozen=True)
class Verb:
    """One verb as the adapters see it: its request model, and whether asking again
    is safe (a read)."""

    request: type[BaseModel] | None
    reply: Any  # the reply's type, for the client side (a pydantic TypeAdapter takes it)
    read_only: bool = False
    streams: bool = False  # sends progress events before its reply


VERBS: dict[str, Verb] = {
    "create": Verb(CreateRequest, InstanceRef),
    "run": Verb(CreateRequest, RunResult, streams=True),
    "resume": Verb(ResumeRequest, RunResult, streams=True),
    "wait": Verb(WaitRequest, RunResult, read_only=True, streams=True),
    "status": Verb(IdRequest, InstanceStatus, read_only=True),
    "list": Verb(ListRequest, InstancePage, read_only=True),
    "notebook": Verb(IdRequest, dict[str, Any], read_only=True),
    "health": Verb(None, Health, read_only=True),
    "top": Verb(None, TopReply, read_only=True),
    "send_event": Verb(EventRequest, EventReply),
    "pause": Verb(IdRequest, LifecycleReply),
    "unpause": Verb(IdRequest, LifecycleReply),
    "terminate": Verb(IdRequest, LifecycleReply),
    "cancel": Verb(IdRequest, LifecycleReply),
    "restart": Verb(RestartRequest, LifecycleReply),
    "schedule_add": Verb(ScheduleSpec, ScheduleInfo),
    "schedule_list": Verb(None, list[ScheduleInfo], read_only=True),
    "schedule_get": Verb(NameRequest, ScheduleInfo, read_only=True),
    "schedule_pause": Verb(NameRequest, ScheduleInfo),
    "schedule_unpause": Verb(NameRequest, ScheduleInfo),
    "schedule_remove": Verb(NameRequest, ScheduleInfo),
    "schedule_runs": Verb(ScheduleRunsRequest, InstancePage, read_only=True),
    "schedule_preview": Verb(CronPreviewRequest, CronPreview, read_only=True),
}
