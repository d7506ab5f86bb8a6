"""The runner: executes a run's cells on one kernel and reports each finished cell.

It sends one ``execute_request`` that calls the in-kernel driver
(:func:`durabook_kernel.drive`), then reads IOPub: every output message goes
to the current cell, every ``durabook_step`` message closes that cell and is
handed to ``on_step`` (which commits it). A kernel that dies (SIGKILL, OOM) is
noticed within a quarter of a second and reported as ``DeadKernelError`` at the
cell it was running.
"""

from __future__ import annotations

import json
import queue
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import nbformat

from durabook_kernel import STEP_MSG

from .models import ErrorInfo
from .pool import KernelProcess

__all__ = ["CellPlan", "CellResult", "Outputs", "RunOutcome", "Runner"]

KILL_GRACE = 5.0  # seconds a timed-out cell gets to honour the interrupt

_OUTPUT_TYPES = {"stream", "display_data", "execute_result", "error"}


@dataclass
class CellPlan:
    index: int
    cell_id: str
    source: str  # what the kernel runs (without a %%step line)
    source_hash: str  # of the cell as written
    timeout: float | None = None  # %%step --timeout, else the run's
    options: Any = None  # StepOptions


@dataclass
class CellResult:
    cell: CellPlan
    ok: bool
    outputs: list[dict[str, Any]]
    content: dict[str, Any]


@dataclass
class RunOutcome:
    ok: bool
    failed: CellPlan | None = None
    error: ErrorInfo | None = None
    restore_failed: bool = False
    stopped_early: bool = False  # a cell called sys.exit(0): done, later cells skipped
    paused: bool = False  # `durabook pause`: stopped between cells
    suspended: dict[str, Any] | None = None  # durabook.sleep / wait_for_event request
    suspended_cell: CellPlan | None = None
    executed: int = 0
    restored: dict[str, Any] = field(default_factory=dict)


class Outputs:
    """nbformat outputs of one cell, built from IOPub messages as nbclient does."""

    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []
        self._clear_on_next = False

    def add(self, msg: dict[str, Any]) -> None:
        kind = msg["msg_type"]
        content = msg["content"]
        if kind == "clear_output":
            if content.get("wait"):
                self._clear_on_next = True
            else:
                self.items.clear()
            return
        if kind == "update_display_data":
            did = content.get("transient", {}).get("display_id")
            for out in self.items:
                if did and out.get("_display_id") == did:
                    out["data"] = content.get("data", {})
                    out["metadata"] = content.get("metadata", {})
            return
        if kind not in _OUTPUT_TYPES:
            return
        if self._clear_on_next:
            self.items.clear()
            self._clear_on_next = False
        out = dict(nbformat.v4.output_from_msg(msg))
        last = self.items[-1] if self.items else None
        if (
            kind == "stream"
            and last is not None
            and last.get("output_type") == "stream"
            and last.get("name") == out["name"]
        ):
            last["text"] += out["text"]
            return
        did = content.get("transient", {}).get("display_id")
        if did:
            out["_display_id"] = did
        self.items.append(out)

    def take(self) -> list[dict[str, Any]]:
        items = [{k: v for k, v in o.items() if k != "_display_id"} for o in self.items]
        self.items = []
        self._clear_on_next = False
        return items


class Runner:
    def __init__(self, kernel: KernelProcess) -> None:
        self.kernel = kernel

    def run(
        self,
        cells: list[CellPlan],
        plan: dict[str, Any],
        on_step: Callable[[CellResult], None],
        timeout: float | None = None,
    ) -> RunOutcome:
        """Run ``cells``; ``timeout`` (seconds per cell) interrupts a cell that runs
        longer, and kills the kernel if the interrupt is ignored for ``KILL_GRACE``."""
        kc = self.kernel.kc
        full_plan = {
            **plan,
            "cells": [{"index": c.index, "id": c.cell_id, "source": c.source} for c in cells],
        }
        code = "await __import__('durabook_kernel').drive(" + repr(json.dumps(full_plan)) + ")"
        msg = kc.session.msg(
            "execute_request",
            {
                "code": code,
                "silent": True,
                "store_history": False,
                "user_expressions": {},
                "allow_stdin": False,
                "stop_on_error": True,
            },
        )
        kc.shell_channel.send(msg)
        parent = msg["header"]["msg_id"]
        outputs = Outputs()
        restored = False
        position = 0
        outcome = RunOutcome(ok=True)
        cell_started = time.monotonic()
        interrupted_at: float | None = None
        while True:
            limit = cells[position].timeout or timeout if position < len(cells) else None
            if limit is not None and restored:
                now = time.monotonic()
                if interrupted_at is None and now - cell_started > limit:
                    interrupted_at = now
                    self.kernel.interrupt()
                elif interrupted_at is not None and now - interrupted_at > KILL_GRACE:
                    self.kernel.close()  # it ignored the interrupt: the kernel goes
                    dead = self._dead(cells, position, restored, outcome)
                    dead.error = self._timeout_error(cells[position], limit, killed=True)
                    return dead
            try:
                m = kc.iopub_channel.get_msg(timeout=0.1 if limit else 0.25)
            except queue.Empty:
                if not self.kernel.alive():
                    return self._dead(cells, position, restored, outcome)
                continue
            if m["parent_header"].get("msg_id") != parent:
                continue
            kind = m["msg_type"]
            if kind == STEP_MSG:
                content = m["content"]
                phase = content.get("phase")
                cell_started = time.monotonic()
                if phase == "restored":
                    restored = True
                    outcome.restored = content
                    outputs.take()  # what replayed cells printed is not a cell's output
                elif phase == "restore":
                    outcome.ok = False
                    outcome.restore_failed = True
                    outcome.error = ErrorInfo(**content["error"])
                elif phase == "cell":
                    cell = cells[position]
                    if content.get("status") == "suspend":
                        outputs.take()  # the cell runs again from its top on resume
                        outcome.suspended = content["suspend"]
                        outcome.suspended_cell = cell
                        continue
                    if interrupted_at is not None and content.get("status") == "error":
                        limit = cell.timeout or timeout or 0
                        content["error"] = self._timeout_error(cell, limit).model_dump()
                    interrupted_at = None
                    ok = content.get("status") in ("ok", "exit")
                    on_step(CellResult(cell, ok, outputs.take(), content))
                    position += 1
                    outcome.executed = position
                    if content.get("status") == "exit":
                        outcome.stopped_early = True
                    if not ok:
                        outcome.ok = False
                        outcome.failed = cell
                        outcome.error = ErrorInfo(**content["error"])
                elif phase == "paused":
                    outcome.paused = True
                elif phase == "abort":
                    outcome.ok = False
                    outcome.error = ErrorInfo(**content["error"])
                    if position < len(cells):
                        outcome.failed = cells[position]
                        on_step(
                            CellResult(
                                cells[position],
                                False,
                                outputs.take(),
                                {"error": content["error"], "status": "error"},
                            )
                        )
            elif kind == "status":
                if m["content"].get("execution_state") == "idle":
                    break
            elif restored:
                outputs.add(m)
        if (
            outcome.ok
            and position < len(cells)
            and not (outcome.stopped_early or outcome.suspended or outcome.paused)
        ):
            # the driver stopped without saying why: treat it as a failure, never as done
            outcome.ok = False
            outcome.failed = cells[position]
            outcome.error = ErrorInfo(
                ename="DriverError", evalue="the kernel stopped before running every cell"
            )
        return outcome

    @staticmethod
    def _timeout_error(cell: CellPlan, timeout: float, killed: bool = False) -> ErrorInfo:
        how = "; it ignored the interrupt, so the kernel was killed" if killed else ""
        return ErrorInfo(
            ename="CellTimeoutError", evalue=f"cell {cell.index} timed out after {timeout:g} s{how}"
        )

    def _dead(
        self, cells: list[CellPlan], position: int, restored: bool, outcome: RunOutcome
    ) -> RunOutcome:
        code = self.kernel.proc.returncode
        how = f"signal {-code}" if code is not None and code < 0 else f"exit status {code}"
        outcome.ok = False
        if position < len(cells) and restored:
            cell = cells[position]
            outcome.failed = cell
            outcome.error = ErrorInfo(
                ename="DeadKernelError",
                evalue=f"the kernel died ({how}) while running cell {cell.index}",
            )
        else:
            outcome.restore_failed = not restored
            outcome.error = ErrorInfo(
                ename="DeadKernelError",
                evalue=f"the kernel died ({how}) while restoring state",
            )
        return outcome
