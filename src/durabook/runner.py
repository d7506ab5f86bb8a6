"""The runner: executes a run's cells on one kernel and reports each finished cell.

It sends one ``execute_request`` that calls the in-kernel driver
(:func:`durabook_kernel.drive`). The driver journals each finished cell (its
outputs and checkpoint manifest, fsynced) before it starts the next, then
publishes a small ``durabook_step`` message; on that message the runner reads
the new journal records and hands each finished cell to ``on_step`` (which
copies it into the store). Before returning, it reads the journal once more,
so a cell the kernel finished just before dying is not lost. A kernel that
dies (SIGKILL, OOM) is noticed within a quarter of a second and reported as
``DeadKernelError`` at the cell it was running (the journal's last ``start``).
"""

from __future__ import annotations

import json
import logging
import queue
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from durabook_kernel import STEP_MSG
from durabook_kernel.driver import PLAN_KEY
from durabook_kernel.journal import JournalReader

from .kernel_messages import (
    BadKernelMessage,
    check_record,
    check_step_message,
    check_suspension,
)
from .kernels.pool import KernelProcess
from .models import ErrorInfo

log = logging.getLogger("durabook.runner")

__all__ = ["CellPlan", "CellResult", "RunOutcome", "Runner"]

KILL_GRACE = 5.0  # seconds a timed-out cell gets to honour the interrupt


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
    outputs: list[dict[str, Any]]  # nbformat outputs ([] when they are in a blob)
    content: dict[str, Any]  # the journal record
    rid: str | None = None  # the record's identity: <journal file>:<sequence>


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
    interrupted: CellPlan | None = None  # started, never finished: a kill's attempt
    interrupted_rid: str | None = None
    executed: int = 0
    restored: dict[str, Any] = field(default_factory=dict)


_LIVE_OUTPUT = ("stream", "display_data", "execute_result", "error")
LIVE_OUTPUT_CHARS = 16_384  # per message: a live view shows text, never megabytes


def _live_output(kind: str, content: dict[str, Any]) -> dict[str, Any]:
    """A running cell's output message as nbformat-like text for live views."""
    if kind == "stream":
        text = str(content.get("text", ""))[:LIVE_OUTPUT_CHARS]
        return {"output_type": "stream", "name": content.get("name"), "text": text}
    if kind == "error":
        return {
            "output_type": "error",
            "ename": str(content.get("ename", ""))[:200],
            "evalue": str(content.get("evalue", ""))[:LIVE_OUTPUT_CHARS],
        }
    data = content.get("data") or {}
    plain = data.get("text/plain") if isinstance(data, dict) else None
    text = str(plain)[:LIVE_OUTPUT_CHARS] if plain is not None else ""
    kinds = sorted(data)[:10] if isinstance(data, dict) else []
    return {"output_type": kind, "data": {"text/plain": text}, "mimetypes": kinds}


class Runner:
    def __init__(self, kernel: KernelProcess, load_blob: Callable[[str], bytes]) -> None:
        self.kernel = kernel
        self.load_blob = load_blob
        # told of the running cell's output as it comes (a live view); the recorded
        # outputs are the journal's, not these
        self.on_output: Callable[[int | None, dict[str, Any]], None] | None = None
        # told which cell runs now (None: none), for the watchdog's per-cell limits
        self.on_cell: Callable[[CellPlan | None], None] | None = None

    def run(
        self,
        cells: list[CellPlan],
        plan: dict[str, Any],
        on_step: Callable[[CellResult], None],
        timeout: float | None = None,
    ) -> RunOutcome:
        """Run ``cells``; ``timeout`` (seconds per cell) interrupts a cell that runs
        longer, and kills the kernel if the interrupt is ignored for ``KILL_GRACE``."""
        self.cells = cells
        self.on_step = on_step
        self.journal = JournalReader(plan["journal"])
        self.name = plan["journal"].rsplit("/", 1)[-1]
        self.position = 0
        # (index, rid) of the cell the journal last saw start and not finish
        self.started: tuple[int, str] | None = None
        self.outcome = RunOutcome(ok=True)
        self.interrupted_at: float | None = None
        self.timeout = timeout
        try:
            return self._run(plan)
        finally:
            self._read_journal()  # what the kernel finished but did not announce

    def _run(self, plan: dict[str, Any]) -> RunOutcome:
        kc = self.kernel.kc
        cells = self.cells
        outcome = self.outcome
        full_plan = {
            **plan,
            "cells": [
                {"index": c.index, "id": c.cell_id, "source": c.source, "hash": c.source_hash}
                for c in cells
            ],
        }
        # the plan rides in the request's metadata, not in the code: IPython tokenizes,
        # hashes (in pure Python) and compiles a cell's code, about 1 ms for a plan's.
        # As JSON text: Session's packer would refuse NaN (an event's payload may hold
        # one) and lone surrogates (a cell's source may)
        msg = kc.session.msg(
            "execute_request",
            {
                "code": "await __import__('durabook_kernel').drive()",
                "silent": True,
                "store_history": False,
                "user_expressions": {},
                "allow_stdin": False,
                "stop_on_error": True,
            },
            metadata={PLAN_KEY: json.dumps(full_plan)},
        )
        kc.shell_channel.send(msg)
        parent = msg["header"]["msg_id"]
        restored = False
        cell_started = time.monotonic()
        while True:
            position = self.position
            limit = cells[position].timeout or self.timeout if position < len(cells) else None
            if limit is not None and restored:
                now = time.monotonic()
                if self.interrupted_at is None and now - cell_started > limit:
                    self.interrupted_at = now
                    self.kernel.interrupt()
                elif self.interrupted_at is not None and now - self.interrupted_at > KILL_GRACE:
                    self.kernel.close()  # it ignored the interrupt: the kernel goes
                    self._read_journal()
                    dead = self._dead(restored)
                    if self.position < len(cells):
                        dead.error = self._timeout_error(cells[self.position], limit, killed=True)
                    return dead
            try:
                m = kc.iopub_channel.get_msg(timeout=0.1 if limit else 0.25)
            except queue.Empty:
                if not self.kernel.alive():
                    self._read_journal()
                    return self._dead(restored)
                continue
            if m["parent_header"].get("msg_id") != parent:
                continue
            kind = m["msg_type"]
            if kind == STEP_MSG:
                try:
                    content = check_step_message(m["content"])
                    if content.get("suspend") is not None:
                        check_suspension(content["suspend"])
                except BadKernelMessage as exc:
                    return self._refused(exc)
                phase = content.get("phase")
                cell_started = time.monotonic()
                if phase == "restored":
                    restored = True
                    outcome.restored = content
                    self._tell_cell()
                elif phase == "restore":
                    outcome.ok = False
                    outcome.restore_failed = True
                    outcome.error = ErrorInfo(**content["error"])
                elif phase == "cell":
                    self._read_journal()
                    if content.get("status") == "suspend":
                        outcome.suspended = content["suspend"]
                        if self.position < len(cells):
                            outcome.suspended_cell = cells[self.position]
                        continue
                    if content.get("error") and self._current_index() == content.get("index"):
                        # the driver could not journal the cell (a full disk): not committed
                        self._finish_cell({"status": "error", "error": content["error"]}, None)
                elif phase == "paused":
                    outcome.paused = True
                elif phase == "abort":
                    self._read_journal()
                    outcome.ok = False
                    outcome.error = ErrorInfo(**content["error"])
                    if self.position < len(cells):
                        cell = cells[self.position]
                        outcome.failed = cell
                        if self.started is not None and self.started[0] == cell.index:
                            # it had started: a failed attempt (an interrupt that lands
                            # between two cells fails none, and the next is not charged)
                            record = {"error": content["error"], "status": "error"}
                            self._finish_cell(record, self.started[1][: -len("killed")] + "abort")
            elif kind in _LIVE_OUTPUT and self.on_output is not None:
                index = self._current_index()  # None: the last cell's output, come late
                index = cells[-1].index if index is None and cells else index
                self.on_output(index, _live_output(kind, m["content"]))
            elif kind == "status" and m["content"].get("execution_state") == "idle":
                break
        self._read_journal()
        if (
            outcome.ok
            and self.position < len(cells)
            and not (outcome.stopped_early or outcome.suspended or outcome.paused)
        ):
            # the driver stopped without saying why: treat it as a failure, never as done
            outcome.ok = False
            outcome.failed = cells[self.position]
            outcome.error = ErrorInfo(
                ename="DriverError", evalue="the kernel stopped before running every cell"
            )
        return outcome

    def _tell_cell(self) -> None:
        if self.on_cell is not None:
            self.on_cell(self.cells[self.position] if self.position < len(self.cells) else None)

    def current(self) -> int | None:
        """The index of the cell running now (or next), None when all are done."""
        return self._current_index() if hasattr(self, "cells") else None

    def _current_index(self) -> int | None:
        return self.cells[self.position].index if self.position < len(self.cells) else None

    def _refused(self, exc: BadKernelMessage) -> RunOutcome:
        """The kernel said something no durabook kernel says: the run fails here."""
        outcome = self.outcome
        outcome.ok = False
        if self.position < len(self.cells):
            outcome.failed = self.cells[self.position]
        outcome.error = ErrorInfo(ename="BadKernelMessage", evalue=exc.message)
        return outcome

    def _read_journal(self) -> None:
        """Hand every finished cell the journal holds, in order, to ``on_step``."""
        for seq, raw in self.journal.read_new():
            try:
                record = check_record(raw)
            except BadKernelMessage as exc:  # never committed: the cell is not done
                log.warning("%s:%d: %s", self.name, seq, exc.message)
                continue
            kind = record.get("t")
            if kind == "start":
                self.started = (record.get("index", -1), f"{self.name}:{seq}:killed")
            elif kind == "cell" and record.get("index") == self._current_index():
                self._finish_cell(record, f"{self.name}:{seq}")

    def _finish_cell(self, record: dict[str, Any], rid: str | None) -> None:
        cell = self.cells[self.position]
        outcome = self.outcome
        if self.interrupted_at is not None and record.get("status") == "error":
            limit = cell.timeout or self.timeout or 0
            record["error"] = self._timeout_error(cell, limit).model_dump()
        self.interrupted_at = None
        ok = record.get("status") in ("ok", "exit")
        outputs = record.get("outputs")
        if outputs is None and record.get("outputs_blob"):
            outputs = json.loads(self.load_blob(record["outputs_blob"]))
        self.on_step(CellResult(cell, ok, outputs or [], record, rid))
        self.position += 1
        self.started = None
        outcome.executed = self.position
        self._tell_cell()
        if record.get("status") == "exit":
            outcome.stopped_early = True
        if not ok:
            outcome.ok = False
            outcome.failed = cell
            outcome.error = ErrorInfo(**record["error"])

    @staticmethod
    def _timeout_error(cell: CellPlan, timeout: float, killed: bool = False) -> ErrorInfo:
        how = "; it ignored the interrupt, so the kernel was killed" if killed else ""
        return ErrorInfo(
            ename="CellTimeoutError", evalue=f"cell {cell.index} timed out after {timeout:g} s{how}"
        )

    def _dead(self, restored: bool) -> RunOutcome:
        outcome = self.outcome
        code = self.kernel.proc.returncode
        how = f"signal {-code}" if code is not None and code < 0 else f"exit status {code}"
        limit_error = self.kernel.limit_error
        if limit_error is None and code == -signal.SIGXCPU:
            limit_error = ErrorInfo(
                ename="CpuLimitExceeded",
                evalue="the kernel used up the run's CPU seconds (--cpu-seconds) and was ended",
            )
        outcome.ok = False
        position = self.position
        if position < len(self.cells) and restored:
            cell = self.cells[position]
            outcome.failed = cell
            if self.started is not None and self.started[0] == cell.index:
                outcome.interrupted = cell
                outcome.interrupted_rid = self.started[1]
            outcome.error = limit_error or ErrorInfo(
                ename="DeadKernelError",
                evalue=f"the kernel died ({how}) while running cell {cell.index}",
            )
        else:
            outcome.restore_failed = not restored
            outcome.error = limit_error or ErrorInfo(
                ename="DeadKernelError",
                evalue=f"the kernel died ({how}) while restoring state",
            )
        return outcome
