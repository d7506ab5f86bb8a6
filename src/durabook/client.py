"""``durabook.Client``: the Python API, the same verbs as the command line.

Every method goes through the engine interface (:mod:`durabook.api.service`):
the home's store opened in this process when nobody owns it, else the engine
that owns it (``durabook serve``, a running ``durabook run``) over its socket.
Replies are the same types either way.
"""

from __future__ import annotations

import builtins
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from .home import resolve_home

if TYPE_CHECKING:
    from nbformat import NotebookNode

    from .api.models import InstancePage, InstanceRef, ScheduleInfo
    from .api.service import Service
    from .models import InstanceStatus, InstanceSummary, RunResult
    from .progress import Progress
    from .remote import RemoteEngine

__all__ = ["Client"]


class Client:
    """Runs and inspects instances of one home (``$DURABOOK_HOME`` or ``./.durabook``)."""

    def __init__(self, home: str | os.PathLike[str] | None = None) -> None:
        self.home = resolve_home(home)
        self._tls = threading.local()  # a connection per thread to a serving engine

    def close(self) -> None:
        """Close this thread's connection to the engine (others close when collected)."""
        remote = getattr(self._tls, "remote", None)
        self._tls.remote = None
        if remote is not None:
            remote.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def engine(self) -> Iterator[Service | RemoteEngine]:
        """The home's engine for one call. A connection to a running engine is kept for
        the next calls of this thread (opening one costs more than a create); a store
        opened here is closed after the call, so other processes can have it."""
        from .errors import EngineBusy, EngineLost
        from .remote import RemoteEngine, _connect, open_engine

        remote: RemoteEngine | None = getattr(self._tls, "remote", None)
        if remote is None:
            sock = _connect(self.home)
            if sock is not None:
                remote = self._tls.remote = RemoteEngine(self.home, sock, serve=True)
        if remote is not None:
            try:
                yield remote
            except (EngineLost, EngineBusy, OSError, KeyboardInterrupt):
                self.close()  # a lost engine, a broken connection: start afresh next time
                raise
            if remote._local is not None:  # the owner left and this process took the store
                self.close()
            return
        with open_engine(self.home, serve=True) as svc:
            yield svc

    def create(
        self,
        notebook: str | os.PathLike[str] | None = None,
        parameters: dict[str, Any] | None = None,
        *,
        notebook_json: dict[str, Any] | NotebookNode | None = None,
        id: str | None = None,
        priority: int = 0,
        tenant: str | None = None,
        workflow: str | None = None,
        webhook: str | None = None,
        env: dict[str, str] | None = None,
        limits: dict[str, Any] | None = None,
        sandbox: bool | None = None,
        network: bool = False,
    ) -> InstanceRef:
        """Queue a notebook (a path, or ``notebook_json``) as a new instance and return
        at once; ``durabook serve`` runs it (``wait`` follows it). ``limits``: e.g.
        ``{"memory": "512M", "cpu_seconds": 600}``; ``sandbox``: a private folder and
        namespaces (default: when ``tenant`` is given)."""
        from .api.models import CreateRequest
        from .kernels.limits import Limits

        req = CreateRequest(
            notebook=str(os.path.abspath(notebook)) if notebook is not None else None,
            notebook_json=dict(notebook_json) if notebook_json is not None else None,
            parameters=parameters,
            id=id,
            priority=priority,
            tenant=tenant,
            workflow=workflow,
            webhook=webhook,
            env=env,
            limits=Limits.model_validate(limits) if limits is not None else None,
            sandbox=sandbox,
            network=network,
        )
        with self.engine() as svc:
            return svc.create(req)

    def run(
        self,
        notebook: str | os.PathLike[str],
        parameters: dict[str, Any] | None = None,
        *,
        id: str | None = None,
        output: str | os.PathLike[str] | None = None,
        progress: Progress | None = None,
        env: dict[str, str] | None = None,
        scan_all: bool = False,
        priority: int = 0,
        tenant: str | None = None,
        limits: dict[str, Any] | None = None,
        sandbox: bool | None = None,
        network: bool = False,
    ) -> RunResult:
        """Run a notebook as a new instance to a final or suspended state. ``env``:
        variables its kernel gets beyond the scrubbed allow-list; ``scan_all``: look at
        every variable after every cell."""
        from .api.models import CreateRequest
        from .kernels.limits import Limits

        req = CreateRequest(
            notebook=str(os.path.abspath(notebook)),
            parameters=parameters,
            id=id,
            output=str(os.path.abspath(output)) if output else None,
            env=env,
            scan_all=scan_all,
            priority=priority,
            tenant=tenant,
            limits=Limits.model_validate(limits) if limits is not None else None,
            sandbox=sandbox,
            network=network,
        )
        with self.engine() as svc:
            return svc.run(req, progress)

    def wait(
        self, id: str, timeout: float | None = None, progress: Progress | None = None
    ) -> RunResult:
        """Follow an instance until it is final or suspended."""
        from .api.models import WaitRequest

        with self.engine() as svc:
            return svc.wait(WaitRequest(id=id, timeout=timeout), progress)

    def resume(
        self,
        id: str,
        *,
        notebook: str | os.PathLike[str] | None = None,
        progress: Progress | None = None,
        now: bool = False,
    ) -> RunResult:
        """Continue at the first uncommitted cell (of ``notebook`` when it was edited);
        ``now`` wakes a sleeping instance before its time."""
        from .api.models import ResumeRequest

        nb = str(os.path.abspath(notebook)) if notebook else None
        with self.engine() as svc:
            return svc.resume(ResumeRequest(id=id, notebook=nb, now=now), progress)

    def status(self, id: str) -> InstanceStatus:
        from .api.models import IdRequest

        with self.engine() as svc:
            return svc.status(IdRequest(id=id))

    def list(
        self,
        status: str | None = None,
        limit: int | None = 100,
        *,
        tenant: str | None = None,
        workflow: str | None = None,
        schedule: str | None = None,
    ) -> list[InstanceSummary]:
        return self.page(status, limit, tenant=tenant, workflow=workflow, schedule=schedule).items

    def page(
        self,
        status: str | None = None,
        limit: int | None = 100,
        *,
        tenant: str | None = None,
        workflow: str | None = None,
        schedule: str | None = None,
        cursor: str | None = None,
    ) -> InstancePage:
        """One page of instances, newest first; pass ``next_cursor`` for the next."""
        from .api.models import ListRequest

        query = ListRequest.model_validate(
            {
                "status": status,
                "limit": limit or 10_000,
                "tenant": tenant,
                "workflow": workflow,
                "schedule": schedule,
                "cursor": cursor,
            }
        )
        with self.engine() as svc:
            return svc.list(query)

    # -- events and lifecycle -------------------------------------------------------------
    def send_event(self, id: str, name: str, data: Any = None) -> InstanceStatus:
        """Send an event (``data``: anything JSON can hold). Without an engine running for
        this home, a waiting instance it wakes is resumed here, in the foreground."""
        from .api.models import EventRequest, IdRequest, ResumeRequest

        with self.engine() as svc:
            reply = svc.send_event(EventRequest(id=id, name=name, data=data))
            if reply.delivered and not reply.resumed_by_engine:
                svc.resume(ResumeRequest(id=id))
            return svc.status(IdRequest(id=id))

    def _lifecycle(self, op: str, id: str) -> InstanceStatus:
        from .api.models import IdRequest, ResumeRequest
        from .models import Status

        with self.engine() as svc:
            reply = getattr(svc, op)(IdRequest(id=id))
            if reply.status == Status.QUEUED and op == "unpause" and not reply.resumed_by_engine:
                svc.resume(ResumeRequest(id=id))
            return svc.status(IdRequest(id=id))

    def pause(self, id: str) -> InstanceStatus:
        """A running instance stops after its current cell; a suspended one stays put."""
        return self._lifecycle("pause", id)

    def unpause(self, id: str) -> InstanceStatus:
        return self._lifecycle("unpause", id)

    def terminate(self, id: str) -> InstanceStatus:
        return self._lifecycle("terminate", id)

    def cancel(self, id: str) -> InstanceStatus:
        """End an instance that has not started yet."""
        return self._lifecycle("cancel", id)

    def restart(self, id: str, from_cell: int | None = None) -> RunResult:
        """Drop the checkpoints of cells ``from_cell`` on (all by default) and run again."""
        from .api.models import RestartRequest, ResumeRequest, WaitRequest

        with self.engine() as svc:
            reply = svc.restart(RestartRequest(id=id, from_cell=from_cell))
            if reply.resumed_by_engine:
                return svc.wait(WaitRequest(id=id))
            return svc.resume(ResumeRequest(id=id))

    # -- schedules ------------------------------------------------------------------------
    def schedules(self) -> builtins.list[ScheduleInfo]:
        with self.engine() as svc:
            return svc.schedule_list()
