"""Step journals on the engine's side: where they live, their rows, and crash recovery.

A run's kernel journals each finished cell before it starts the next (see
:mod:`durabook_kernel.journal`): that record is what makes the cell committed.
The runner hands records to the engine as they come; this module turns a
record into a step row, and after a crash (of the kernel, the runner or the
engine) copies into the store every record it missed, each exactly once (a
row names its record: ``<journal file>:<sequence>``). A ``start`` with nothing
after it was a cell a kill interrupted: it is recorded as a failed attempt.
Once a run's records are all in the store, its journal is deleted.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from durabook_kernel.journal import JournalReader, wait_unlocked

from .checkpoints import step_record
from .kernel_messages import BadKernelMessage, check_record, check_suspension
from .kernels.sandbox import Sandbox
from .notebook import source_hash
from .steps import step_options
from .store import Store

if TYPE_CHECKING:
    from nbformat import NotebookNode

    from .blobs import BlobStore
    from .writer import Writer

__all__ = ["OUTPUTS_INLINE_LIMIT", "Recovered", "Recovery"]

log = logging.getLogger("durabook.recovery")

OUTPUTS_INLINE_LIMIT = 64 * 1024
LOCK_WAIT = 3.0  # seconds to wait for a dying kernel to let go of its journal


class Recovered(NamedTuple):
    complete: bool  # False: the run's kernel still holds its journal
    suspension: dict[str, Any] | None  # the run ended by suspending
    row: dict[str, Any] | None = None  # the instance's row as recovery read it (None: not read)


def _same_cell(rec: dict[str, Any], cell: Any) -> bool:
    """A record counts for the cell it was made for: same id and same source."""
    if rec.get("hash") is None:
        return True  # a record of a version of durabook that did not write hashes
    return rec.get("id") == cell.get("id") and rec["hash"] == source_hash(cell.source)


class Recovery:
    def __init__(
        self,
        home: Path,
        store: Store,
        writer: Writer,
        blobs: BlobStore,
        notebook_of: Callable[[dict[str, Any]], NotebookNode],
        is_active: Callable[[str], bool],
    ) -> None:
        self.home = home
        self.folder = home / "journal"
        self.store = store
        self.writer = writer
        self.blobs = blobs
        self.notebook_of = notebook_of
        self.is_active = is_active
        self._lock = threading.Lock()

    def new_journal(self, instance_id: str) -> Path:
        """A fresh journal for one pass of a run (its name goes into the instance's row
        when the run is claimed: recovery reads that file and no other)."""
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        return self.folder / f"{instance_id}.{uuid.uuid4().hex}.jnl"

    def done_with(self, journal: Path) -> None:
        """Every record of the journal is in the store: it is not needed any more."""
        journal.unlink(missing_ok=True)

    def _strays(self, instance_id: str, expected: str | None) -> list[Path]:
        if not self.folder.exists():
            return []
        return [p for p in self.folder.glob(f"{instance_id}.*.jnl") if p.name != expected]

    def step_row(
        self,
        instance_id: str,
        index: int,
        cell_id: str,
        src_hash: str,
        ok: bool,
        attempt: int,
        record: dict[str, Any],
        rid: str | None,
    ) -> tuple[Any, ...]:
        step = step_record(instance_id, index, cell_id, src_hash, ok, attempt, record)
        blob = record.get("outputs_blob")
        text: str | None = None
        if blob is None:
            text = json.dumps(record.get("outputs") or [])
            if len(text) > OUTPUTS_INLINE_LIMIT:
                blob = self.blobs.put(text.encode())  # fsynced before the row naming it
                text = None
        return Store.step_row(step, time.time_ns(), text, blob, rid=rid)

    def recover_journals(self, instance_id: str) -> Recovered:
        """Copy the records a crashed run journaled into the store, then drop its journal.

        Only the journal the engine named in the instance's row when it claimed the
        run is read (a file another kernel planted under the instance's name is
        removed, never read), and a record counts only for the cell of the same id and
        source it was made for. ``complete`` is False when the run's kernel still holds
        its journal (it is alive): then nothing may run or be marked failed yet.
        ``suspension`` is the request of a run whose last act was to suspend, so the
        caller can put it to sleep instead of calling it failed.
        """
        if self.is_active(instance_id):
            return Recovered(True, None)
        with self._lock:  # one recovery at a time: two never read the same journal
            inst = self.store.instance_row(instance_id)
            if inst is None:
                return Recovered(True, None)
            expected = inst.get("journal")
            for stray in self._strays(instance_id, expected):
                log.warning("%s: ignoring %s, which this engine did not make", instance_id, stray)
                stray.unlink(missing_ok=True)
            path = self.folder / expected if expected else None
            if path is None or not path.exists():
                return Recovered(True, None, inst)
            if not wait_unlocked(str(path), LOCK_WAIT):
                log.warning("%s: its kernel still holds %s", instance_id, path)
                return Recovered(False, None, inst)
            share = Sandbox(self.home, instance_id)
            if share.blobs.is_dir():  # a sandboxed kernel wrote its checkpoints there
                try:
                    share.import_blobs(self.blobs, set())
                except Exception:  # never a reason to leave the home unopenable
                    log.exception("%s: its blob share could not be imported", instance_id)
            rows, suspension = self._rows(inst, path)
            if rows:
                self.writer.call(lambda c: Store.insert_new_steps(c, instance_id, rows))
            self.done_with(path)
            return Recovered(True, suspension, inst)  # copying steps in left the row as it was

    def _rows(
        self, inst: dict[str, Any], path: Path
    ) -> tuple[list[tuple[Any, ...]], dict[str, Any] | None]:
        instance_id = inst["id"]
        nb = self.notebook_of(inst)
        cells = {i: c for i, c in enumerate(nb.cells) if c.cell_type == "code"}
        _, attempts = self.store.latest_steps(instance_id)
        rows: list[tuple[Any, ...]] = []
        suspension: dict[str, Any] | None = None
        started: tuple[int, dict[str, Any]] | None = None
        for seq, raw in JournalReader(str(path)).read_new():
            try:
                rec = check_record(raw)
                if rec.get("t") == "suspend":
                    check_suspension(rec["request"])
            except BadKernelMessage as exc:  # not a record of ours: never in the store
                log.warning("%s: %s:%d: %s", instance_id, path.name, seq, exc.message)
                continue
            cell = cells.get(rec.get("index"))  # type: ignore[arg-type]
            if cell is None or not _same_cell(rec, cell):
                continue  # made for another version of the notebook: not this cell's
            kind = rec.get("t")
            if kind == "start":
                started, suspension = (seq, rec), None
                continue
            started = None
            if kind == "suspend":
                suspension = rec.get("request")
                continue
            if kind != "cell":
                continue
            suspension = None
            rows.append(
                self._row(instance_id, cell, rec["index"], rec, attempts, f"{path.name}:{seq}")
            )
        if started is not None:
            seq, rec = started
            interrupted = {
                "status": "error",
                "started_at": rec.get("at"),
                "error": {
                    "ename": "RunnerDied",
                    "evalue": f"the process running cell {rec['index']} was killed",
                },
            }
            rows.append(
                self._row(
                    instance_id,
                    cells[rec["index"]],
                    rec["index"],
                    interrupted,
                    attempts,
                    f"{path.name}:{seq}:killed",
                )
            )
        return rows, suspension

    def _row(
        self,
        instance_id: str,
        cell: Any,
        index: int,
        rec: dict[str, Any],
        attempts: dict[int, int],
        rid: str,
    ) -> tuple[Any, ...]:
        attempts[index] = attempts.get(index, 0) + 1
        ok = rec.get("status") in ("ok", "exit")
        try:
            opts = step_options(cell, index)
        except Exception:
            opts = None
        if not ok and rec.get("error") and opts is not None and attempts[index] <= opts.retries:
            rec["error"]["retry_in_s"] = opts.delay_before(attempts[index])
        return self.step_row(
            instance_id,
            index,
            cell.get("id"),
            source_hash(cell.source),
            ok,
            attempts[index],
            rec,
            rid,
        )
