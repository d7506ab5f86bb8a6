"""Instance lifecycle: pause, unpause, terminate, restart.

- ``pause``: a running instance stops after its current cell (the driver checks
  a stop file between cells); a queued, sleeping or waiting one stays put, its
  timer and awaited event kept (events sent meanwhile are kept too).
- ``unpause``: back to queued, sleeping or waiting, as it was.
- ``terminate``: final; a running instance's kernel is killed.
- ``restart``: checkpoints from cell N on are dropped and a new attempt runs
  from there (from the start without N).
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

from .errors import BadInput, InvalidState
from .models import Status
from .store import Store

if TYPE_CHECKING:
    from .engine import Engine

__all__ = ["Lifecycle"]


class Lifecycle:
    """Pause, unpause, terminate and restart, for the engine."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def _set(self, instance_id: str, **fields: Any) -> None:
        self.engine.writer.call(lambda c: Store.update_instance(c, instance_id, **fields))
        if "status" in fields:
            self.engine.changed(instance_id, fields["status"])

    def pause(self, instance_id: str) -> Status:
        inst = self.engine._instance(instance_id)
        status = Status(inst["status"])
        if status == Status.PAUSED:
            return status
        if status == Status.RUNNING and self.engine.executor.running_here(instance_id):
            path = self.engine.executor.stop_file(instance_id)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
            return status  # it becomes paused when its current cell ends
        if status not in (Status.QUEUED, Status.SLEEPING, Status.WAITING):
            raise InvalidState(
                f"instance {instance_id} is {status.value}: only queued, "
                "running, sleeping or waiting instances pause",
                instance=instance_id,
                status=status.value,
            )
        self._set(instance_id, status=Status.PAUSED)
        return Status.PAUSED

    def unpause(self, instance_id: str) -> Status:
        inst = self.engine._instance(instance_id)
        if Status(inst["status"]) != Status.PAUSED:
            raise InvalidState(
                f"instance {instance_id} is {inst['status']}, not paused",
                instance=instance_id,
                status=inst["status"],
            )
        req = inst["suspension"]
        status = Status.QUEUED
        if req:
            status = Status.SLEEPING if req.get("kind") == "sleep" else Status.WAITING
        self._set(instance_id, status=status)
        suspensions = self.engine.suspensions
        if status != Status.QUEUED and suspensions.wake_if_due(self.engine._instance(instance_id)):
            status = Status.QUEUED  # an event kept while paused, or a timer that came due
        return status

    def terminate(self, instance_id: str) -> Status:
        inst = self.engine._instance(instance_id)
        status = Status(inst["status"])
        if status.final:
            raise InvalidState(
                f"instance {instance_id} is already {status.value}",
                instance=instance_id,
                status=status.value,
            )
        executor = self.engine.executor
        if status == Status.RUNNING and executor.running_here(instance_id):
            kernel = executor.terminating(instance_id)
            # written now, whatever the run is doing (a kernel still starting included);
            # the run winding down cannot overwrite it (see Store.update_instance)
            self._set(instance_id, status=Status.TERMINATED, wake_at=None, waiting_for=None)
            if kernel is not None:
                kernel.kill()  # the runner sees it die; execute() finishes the record
            return Status.TERMINATED
        self._set(
            instance_id,
            status=Status.TERMINATED,
            wake_at=None,
            waiting_for=None,
            owner_pid=None,
            owner_start=None,
        )
        return Status.TERMINATED

    def restart(self, instance_id: str, from_cell: int | None = None) -> None:
        """Drop the checkpoints of cells ``from_cell`` on and queue the instance again."""
        inst = self.engine._instance(instance_id)
        status = Status(inst["status"])
        if status in (Status.RUNNING, Status.TERMINATED):
            raise InvalidState(
                f"instance {instance_id} is {status.value}; it cannot restart",
                instance=instance_id,
                status=status.value,
            )
        nb = self.engine.executed_notebook(inst)
        start = 0 if from_cell is None else from_cell
        if not 0 <= start < len(nb.cells):
            raise BadInput(
                f"--from-cell {from_cell} is not a cell of instance {instance_id} "
                f"(0 to {len(nb.cells) - 1})"
            )
        kept = {k: v for k, v in inst["resolutions"].items() if int(k.split(":")[0]) < start}

        def apply(c: Any) -> None:
            Store.drop_steps(c, instance_id, start)
            Store.requeue(c, instance_id, failed_cell=None, error=None, resolutions=kept)

        self.engine.writer.call(apply)
        with contextlib.suppress(FileNotFoundError):
            self.engine.executor.stop_file(instance_id).unlink()
        self.engine.changed(instance_id, Status.QUEUED)
