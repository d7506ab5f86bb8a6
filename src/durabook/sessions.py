"""Interactive sessions: the engine's side of ``%load_ext durabook.kernel``.

A kernel run by hand is one instance (version ``interactive``, owned by the
kernel's pid). Each cell it runs is committed before the kernel's next cell
starts; the cells' sources are kept on the step rows, since there is no stored
notebook. ``%durabook restore ID`` asks for :meth:`Sessions.session_restore_plan`.
"""

from __future__ import annotations

import json
import socket
import time
from typing import TYPE_CHECKING, Any

import nbformat
from nbformat import NotebookNode

from .checkpoints import restore_plan, step_record
from .errors import InvalidState
from .models import CellStatus, Status
from .notebook import source_hash
from .store import Store

if TYPE_CHECKING:
    from .engine import Engine

__all__ = ["INTERACTIVE", "Sessions"]

INTERACTIVE = "interactive"  # the version of a session checkpointed by %load_ext


class Sessions:
    """Interactive kernels' instances, for the engine."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def open_session(self, notebook: str, pid: int, cwd: str | None = None) -> str:
        from .engine import _new_id, _proc_start  # engine imports this module

        iid = _new_id()
        row: dict[str, Any] = {
            "id": iid,
            "notebook": notebook,
            "version": INTERACTIVE,
            "status": Status.RUNNING.value,
            "parameters": {},
            "output": None,
            "cwd": cwd,
        }

        def apply(c: Any) -> None:
            Store.insert_instance(c, row)
            Store.update_instance(
                c, iid, owner_pid=pid, owner_start=_proc_start(pid), owner_host=socket.gethostname()
            )

        self.engine.writer.call(apply)
        return iid

    def commit_interactive(self, instance_id: str, step: dict[str, Any]) -> None:
        """One cell run by hand: committed before the kernel's next cell starts."""
        inst = self.engine._instance(instance_id)
        if inst["version"] != INTERACTIVE or Status(inst["status"]) != Status.RUNNING:
            raise InvalidState(f"instance {instance_id} is not an open interactive session")
        index = int(step["index"])
        rec = step_record(
            instance_id,
            index,
            step.get("cell_id") or f"session-{index}",
            source_hash(step["source"]),
            step["status"] == "ok",
            1,
            step,
        )
        row = Store.step_row(
            rec, time.time_ns(), json.dumps(step.get("outputs") or []), None, step["source"]
        )
        self.engine.writer.submit_steps([row]).result()

    def end_session(self, instance_id: str, status: Status = Status.COMPLETED) -> None:
        self.engine.writer.call(
            lambda c: Store.update_instance(
                c, instance_id, status=status, owner_pid=None, owner_start=None
            )
        )

    def session_restore_plan(self, instance_id: str) -> dict[str, Any]:
        """The state after a session's last successful cell, for ``%durabook restore``."""
        inst = self.engine._instance(instance_id)
        nb = self.engine.executed_notebook(inst)
        code = [(i, c) for i, c in enumerate(nb.cells) if c.cell_type == "code"]
        latest, _ = self.engine.store.latest_steps(instance_id)
        ok = [(i, c) for i, c in code if latest[i]["status"] == CellStatus.COMMITTED.value]
        plan = restore_plan(ok, latest, len(ok), strict=False)
        return {**plan.to_plan(), "blobs": str(self.engine.blobs.root)}

    def notebook(self, instance_id: str) -> NotebookNode:
        latest, _ = self.engine.store.latest_steps(instance_id)
        cells = []
        for index in range(max(latest, default=-1) + 1):
            row = latest.get(index)
            cell = nbformat.v4.new_code_cell(row["source"] or "" if row else "")
            cell.id = row["cell_id"] if row and row["cell_id"] else f"session-{index}"
            cells.append(cell)
        return nbformat.v4.new_notebook(cells=cells)
