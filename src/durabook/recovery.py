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

import contextlib
import json
import logging
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from durabook_kernel.journal import JournalReader, wait_unlocked

from .checkpoints import step_record
from .notebook import source_hash
from .steps import step_options
from .store import Store

if TYPE_CHECKING:
    from nbformat import NotebookNode

    from .blobs import BlobStore
    from .writer import Writer

__all__ = ["OUTPUTS_INLINE_LIMIT", "Recovery"]

log = logging.getLogger("durabook.recovery")

OUTPUTS_INLINE_LIMIT = 64 * 1024
LOCK_WAIT = 10.0  # seconds to wait for a dying kernel to let go of its journal


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
        self.folder = home / "journal"
        self.store = store
        self.writer = writer
        self.blobs = blobs
        self.notebook_of = notebook_of
        self.is_active = is_active

    def new_journal(self, instance_id: str) -> Path:
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        return self.folder / f"{instance_id}.{uuid.uuid4().hex[:12]}.jnl"

    def done_with(self, journal: Path) -> None:
        """Every record of the journal is in the store: it is not needed any more."""
        journal.unlink(missing_ok=True)

    def journals(self, instance_id: str) -> list[Path]:
        if not self.folder.exists():
            return []
        paths = list(self.folder.glob(f"{instance_id}.*.jnl"))
        with contextlib.suppress(OSError):
            paths.sort(key=lambda p: p.stat().st_mtime_ns)
        return paths

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

    def recover_journals(self, instance_id: str) -> dict[str, Any] | None:
        """Copy the records a crashed run journaled into the store, then drop its journals.

        Returns the suspension request when the run's last act was to suspend
        (``sleep`` / ``wait_for_event``), so the caller can put it to sleep
        instead of calling it failed.
        """
        paths = self.journals(instance_id)
        if not paths or self.is_active(instance_id):
            return None
        inst = self.store.instance_row(instance_id)
        if inst is None:
            return None
        nb = self.notebook_of(inst)
        cells = {i: c for i, c in enumerate(nb.cells) if c.cell_type == "code"}
        known = self.store.step_rids(instance_id)
        _, attempts = self.store.latest_steps(instance_id)
        rows: list[tuple[Any, ...]] = []
        suspension: dict[str, Any] | None = None
        for path in paths:
            if not wait_unlocked(str(path), LOCK_WAIT):
                log.warning("%s: its kernel still holds %s; recovered later", instance_id, path)
                return None
            started: tuple[int, dict[str, Any]] | None = None
            for seq, rec in JournalReader(str(path)).read_new():
                index = rec.get("index")
                if index not in cells:
                    continue
                kind = rec.get("t")
                if kind == "start":
                    started, suspension = (seq, rec), None
                    continue
                started = None
                if kind == "suspend":
                    suspension = rec.get("request")
                    continue
                if kind != "cell" or f"{path.name}:{seq}" in known:
                    continue
                suspension = None
                rows.append(
                    self._row(instance_id, cells[index], index, rec, attempts, f"{path.name}:{seq}")
                )
            if started is not None and f"{path.name}:{started[0]}:killed" not in known:
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
        if rows:
            self.writer.submit_steps(rows).result()
        for path in paths:
            self.done_with(path)
        return suspension

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
