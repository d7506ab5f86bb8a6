"""The DuckDB store: one file per home, written by one process (the engine).

Reads go through cursors of the same connection; writes go through
:class:`durabook.writer.Writer`, which batches them (group commit).
"""

from __future__ import annotations

import builtins
import contextlib
import json
import re
import threading
import time
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import duckdb

from .errors import EngineBusy
from .migrations import MIGRATIONS
from .models import (
    Attempt,
    CellState,
    CellStatus,
    ErrorInfo,
    InstanceStatus,
    InstanceSummary,
    Status,
    StepRecord,
    UnserializableVar,
)

__all__ = ["STEP_NAMES", "Store", "utcnow"]

_LOCK_PID = re.compile(r"PID (\d+)")

_INSTANCE_COLS = (
    "id, notebook, version, status, parameters, created_at, updated_at, owner_pid, "
    "owner_start, owner_host, failed_cell, error, output, cwd, wake_at, waiting_for, "
    "suspension, resolutions, options, journal, priority, tenant, workflow, schedule, webhook, "
    "queued_seq"
)
_STEP_COLS = (
    "instance_id, idx, seq, cell_id, source_hash, status, attempt, started_at, duration_ms, "
    "execution_count, outputs, outputs_blob, state, error, replay, cpu_s, peak_rss_bytes, "
    "source, rid"  # rid last: insert_new_steps reads it there
)


_INSTANCE_NAMES = [c.strip() for c in _INSTANCE_COLS.split(",")]
STEP_NAMES = [c.strip() for c in _STEP_COLS.split(",")]


def _instance_dict(row: Sequence[Any]) -> dict[str, Any]:
    """An ``instances`` row (its columns in ``_INSTANCE_COLS`` order), JSON decoded."""
    out = dict(zip(_INSTANCE_NAMES, row))
    out["parameters"] = json.loads(out["parameters"] or "{}")
    out["error"] = json.loads(out["error"]) if out["error"] else None
    out["suspension"] = json.loads(out["suspension"]) if out["suspension"] else None
    out["resolutions"] = json.loads(out["resolutions"]) if out["resolutions"] else {}
    out["options"] = json.loads(out["options"]) if out["options"] else {}
    return out


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def _aware(dt: datetime) -> datetime:
    return dt.replace(tzinfo=timezone.utc) if dt.tzinfo is None else dt


class Store:
    """The tables of one home. ``conn`` belongs to the writer thread once it starts."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._local = threading.local()
        self._gen = 0  # bumped by reopen(): cursors of an older connection are dropped
        self._version_blobs: dict[str, str] = {}
        self.conn = self._connect()
        self.migrate()

    def _connect(self) -> duckdb.DuckDBPyConnection:
        try:
            return duckdb.connect(str(self.path))
        except duckdb.IOException as exc:
            m = _LOCK_PID.search(str(exc))
            if m is None and "lock" not in str(exc).lower() and not self._being_made(exc):
                raise
            owner = f" (pid {m.group(1)})" if m else ""
            raise EngineBusy(
                f"the store {self.path} is in use by another durabook process{owner}",
                path=str(self.path),
                pid=int(m.group(1)) if m else None,
            ) from None

    def _being_made(self, exc: Exception) -> bool:
        """Another process is creating the store this very moment: DuckDB has made the
        file but not yet written its header (seen with 8 processes starting at once on a
        new home). A file that stays invalid is refused as it is."""
        if "not a valid DuckDB database file" not in str(exc):
            return False
        try:
            return time.time() - self.path.stat().st_mtime < 5.0
        except OSError:
            return True  # gone again: its maker gave up; the next try decides

    def reopen(self) -> None:
        """After a fatal DuckDB error (a checkpoint that hit a full disk invalidates the
        database until it is opened again): the committed data is intact on disk."""
        with contextlib.suppress(Exception):
            self.conn.close()
        self.conn = self._connect()
        self._gen += 1

    def migrate(self) -> None:
        c = self.conn
        c.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations "
            "(version INTEGER PRIMARY KEY, name VARCHAR, applied_at TIMESTAMP)"
        )
        done = {r[0] for r in c.execute("SELECT version FROM schema_migrations").fetchall()}
        for version, name, sql in MIGRATIONS:
            if version in done:
                continue
            c.execute("BEGIN")
            try:
                c.execute(sql)
                c.execute(
                    "INSERT INTO schema_migrations VALUES (?, ?, ?)", [version, name, utcnow()]
                )
                c.execute("COMMIT")
            except Exception:
                c.execute("ROLLBACK")
                raise

    def cursor(self) -> duckdb.DuckDBPyConnection:
        """A cursor for the calling thread (DuckDB connections are not thread-safe)."""
        cur = getattr(self._local, "cur", None)
        if cur is None or getattr(self._local, "gen", -1) != self._gen:
            cur = self._local.cur = self.conn.cursor()
            self._local.gen = self._gen
        return cur

    def close(self) -> None:
        self.conn.close()

    # -- writes (called on the writer thread, inside its transaction) ---------------
    @staticmethod
    def insert_version(c: Any, vhash: str, path: str, blob: str) -> None:
        c.execute(
            "INSERT INTO versions VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
            [vhash, utcnow(), path, blob],
        )

    @staticmethod
    def insert_instance(c: Any, row: dict[str, Any]) -> None:
        Store.insert_instances(c, [row])

    @staticmethod
    def insert_instances(c: Any, rows: Sequence[dict[str, Any]]) -> None:
        """New instances in one statement (a statement costs ~0.5 ms, a row far less)."""
        if not rows:
            return
        now = utcnow()
        ph = (
            "(?, ?, ?, ?, ?, ?, ?, NULL, NULL, NULL, NULL, NULL, ?, ?, NULL, NULL, NULL, NULL, ?, "
            "NULL, ?, ?, ?, ?, ?, ?)"
        )
        for start in range(0, len(rows), 200):
            chunk = rows[start : start + 200]
            args: list[Any] = []
            for row in chunk:
                args += [
                    row["id"],
                    row["notebook"],
                    row["version"],
                    row["status"],
                    json.dumps(row.get("parameters") or {}),
                    now,
                    now,
                    row.get("output"),
                    row.get("cwd"),
                    json.dumps(row.get("options") or {}),
                    int(row.get("priority") or 0),
                    row.get("tenant"),
                    row.get("workflow"),
                    row.get("schedule"),
                    row.get("webhook"),
                    int(row.get("queued_seq") or 0),
                ]
            c.execute(
                f"INSERT INTO instances ({_INSTANCE_COLS}) VALUES " + ", ".join([ph] * len(chunk)),
                args,
            )

    @staticmethod
    def update_instance(
        c: Any, instance_id: str, seen: dict[str, Any] | None = None, **fields: Any
    ) -> bool:
        """Set ``fields`` (``updated_at``: now unless given). ``seen``: only if the row
        is still as read there (same status, same ``updated_at``, which every update
        sets). True when a row was written."""
        fields.setdefault("updated_at", utcnow())
        for key in ("error", "suspension", "resolutions", "options"):
            if key in fields and fields[key] is not None and not isinstance(fields[key], str):
                fields[key] = json.dumps(fields[key])
        if "status" in fields and isinstance(fields["status"], Status):
            fields["status"] = fields["status"].value
        sets = ", ".join(f"{k} = ?" for k in fields)
        where = "id = ?"
        args = [*fields.values(), instance_id]
        if seen is not None:
            where += " AND status = ? AND updated_at = ?"
            args += [seen["status"], seen["updated_at"]]
        elif "status" in fields and fields["status"] != Status.TERMINATED.value:
            # terminated is final: no later write (a run winding down, a timer, an
            # event, a retry) may bring a terminated instance back
            where += " AND status <> 'terminated'"
        row = c.execute(f"UPDATE instances SET {sets} WHERE {where}", args).fetchone()
        return bool(row and row[0])

    @staticmethod
    def requeue(c: Any, instance_id: str, **fields: Any) -> None:
        """Queue an instance again, no longer suspended (woken, or restarted)."""
        Store.update_instance(
            c,
            instance_id,
            status=Status.QUEUED,
            queued_seq=time.time_ns(),  # back of the queue, by the time it was queued
            wake_at=None,
            waiting_for=None,
            suspension=None,
            **fields,
        )

    @staticmethod
    def insert_steps(c: Any, rows: Sequence[tuple[Any, ...]]) -> None:
        """One multi-row INSERT: a statement costs ~0.5 ms in DuckDB, a row far less."""
        if not rows:
            return
        width = len(rows[0])
        ph = "(" + ", ".join(["?"] * width) + ")"
        for start in range(0, len(rows), 200):
            chunk = rows[start : start + 200]
            c.execute(
                f"INSERT INTO steps ({_STEP_COLS}) VALUES " + ", ".join([ph] * len(chunk)),
                [v for r in chunk for v in r],
            )

    @staticmethod
    def drop_steps(c: Any, instance_id: str, from_index: int) -> None:
        c.execute(
            "UPDATE steps SET dropped = true WHERE instance_id = ? AND idx >= ? AND NOT dropped",
            [instance_id, from_index],
        )

    @staticmethod
    def step_row(
        step: StepRecord,
        seq: int,
        outputs: str | None,
        outputs_blob: str | None,
        source: str | None = None,
        rid: str | None = None,
    ) -> tuple[Any, ...]:
        state = None
        if step.vars or step.deleted or step.unserializable:
            state = json.dumps(
                {
                    "vars": {k: v.model_dump(exclude_none=True) for k, v in step.vars.items()},
                    "deleted": step.deleted,
                    "unserializable": {k: v.model_dump() for k, v in step.unserializable.items()},
                }
            )
        return (
            step.instance_id,
            step.index,
            seq,
            step.cell_id,
            step.source_hash,
            step.status.value,
            step.attempt,
            step.started_at,
            step.duration_ms,
            step.execution_count,
            outputs,
            outputs_blob,
            state,
            step.error.model_dump_json() if step.error else None,
            step.replay,
            step.cpu_s,
            step.peak_rss_bytes,
            source,
            rid,
        )

    # -- reads ------------------------------------------------------------------------
    def instance_row(self, instance_id: str) -> dict[str, Any] | None:
        cur = self.cursor()
        row = cur.execute(
            f"SELECT {_INSTANCE_COLS} FROM instances WHERE id = ?", [instance_id]
        ).fetchone()
        return _instance_dict(row) if row is not None else None

    @staticmethod
    def step_rids(c: Any, instance_id: str) -> set[str]:
        """Journal records of an instance already copied into the store."""
        rows = c.execute(
            "SELECT rid FROM steps WHERE instance_id = ? AND rid IS NOT NULL", [instance_id]
        ).fetchall()
        return {r[0] for r in rows}

    @staticmethod
    def insert_new_steps(c: Any, instance_id: str, rows: Sequence[tuple[Any, ...]]) -> int:
        """Insert the rows whose journal record is not in the store yet (in the writer's
        transaction: two recoveries of one instance never copy a record twice)."""
        known = Store.step_rids(c, instance_id)
        fresh = [r for r in rows if r[-1] is None or r[-1] not in known]
        Store.insert_steps(c, fresh)
        return len(fresh)

    def version_blob(self, vhash: str) -> str:
        """The blob of a notebook version (a version's row never changes: kept here)."""
        blob = self._version_blobs.get(vhash)
        if blob is not None:
            return blob
        row = self.cursor().execute("SELECT blob FROM versions WHERE hash = ?", [vhash]).fetchone()
        if row is None:
            raise KeyError(vhash)
        if len(self._version_blobs) >= 4096:
            self._version_blobs.clear()
        blob = self._version_blobs[vhash] = str(row[0])
        return blob

    def instances_with_status(self, *statuses: str) -> list[dict[str, Any]]:
        marks = ", ".join("?" * len(statuses))
        rows = (
            self.cursor()
            .execute(
                f"SELECT id FROM instances WHERE status IN ({marks}) ORDER BY created_at", statuses
            )
            .fetchall()
        )
        return [r for r in (self.instance_row(i) for (i,) in rows) if r is not None]

    def running_instances(self) -> list[dict[str, Any]]:
        return self.instances_with_status("running")

    def pending_event(self, instance_id: str, name: str) -> tuple[int, str | None] | None:
        row = (
            self.cursor()
            .execute(
                "SELECT seq, data FROM events WHERE instance_id = ? AND name = ? "
                "AND delivered_at IS NULL ORDER BY seq LIMIT 1",
                [instance_id, name],
            )
            .fetchone()
        )
        return (int(row[0]), row[1]) if row else None

    def steps(self, instance_id: str) -> list[dict[str, Any]]:
        """Live (not dropped) step rows of an instance, oldest first."""
        cur = self.cursor()
        res = cur.execute(
            f"SELECT {_STEP_COLS} FROM steps WHERE instance_id = ? AND NOT dropped "
            "ORDER BY idx, seq",
            [instance_id],
        )
        cols = STEP_NAMES
        return [dict(zip(cols, r)) for r in res.fetchall()]

    def latest_steps(self, instance_id: str) -> tuple[dict[int, dict[str, Any]], dict[int, int]]:
        """The newest live row per cell index, and the number of attempts per index."""
        latest: dict[int, dict[str, Any]] = {}
        attempts: dict[int, int] = {}
        for row in self.steps(instance_id):
            latest[row["idx"]] = row
            attempts[row["idx"]] = attempts.get(row["idx"], 0) + 1
        return latest, attempts

    def status(
        self,
        instance_id: str,
        code_cells: Iterable[tuple[int, str]],
        names: dict[int, str] | None = None,
    ) -> InstanceStatus:
        """``names``: cell index to %%step name, for the cells that have one."""
        inst = self.instance_row(instance_id)
        assert inst is not None
        names = names or {}
        rows_by_index: dict[int, list[dict[str, Any]]] = {}
        for r in self.steps(instance_id):
            rows_by_index.setdefault(r["idx"], []).append(r)
        cells: list[CellState] = []
        running = inst["status"] == Status.RUNNING.value
        first_open = True
        for index, cell_id in code_cells:
            rows = rows_by_index.get(index, [])
            row = rows[-1] if rows else None
            history = [
                Attempt(
                    attempt=r["attempt"],
                    status=CellStatus(r["status"]),
                    started_at=_aware(r["started_at"]) if r["started_at"] else None,
                    duration_ms=r["duration_ms"],
                    cpu_s=r["cpu_s"],
                    peak_rss_bytes=r["peak_rss_bytes"],
                    error=ErrorInfo(**json.loads(r["error"])) if r["error"] else None,
                )
                for r in rows
            ]
            if row is None or row["cell_id"] != cell_id:
                status = CellStatus.PENDING
                if running and first_open:
                    status = CellStatus.RUNNING
                    first_open = False
                cells.append(
                    CellState(
                        index=index,
                        cell_id=cell_id,
                        status=status,
                        attempts=len(rows),
                        name=names.get(index),
                        history=history,
                    )
                )
                continue
            status = CellStatus(row["status"])
            if status != CellStatus.COMMITTED:
                first_open = False
            unser = {}
            if row["state"]:
                unser = {
                    k: UnserializableVar(**v)
                    for k, v in json.loads(row["state"]).get("unserializable", {}).items()
                }
            latest = history[-1]
            cells.append(
                CellState(
                    index=index,
                    cell_id=cell_id,
                    status=status,
                    attempts=len(rows),
                    started_at=latest.started_at,
                    error=latest.error,
                    duration_ms=latest.duration_ms,
                    cpu_s=latest.cpu_s,
                    peak_rss_bytes=latest.peak_rss_bytes,
                    name=names.get(index),
                    unserializable=unser,
                    history=history,
                )
            )
        options = inst["options"] or {}
        return InstanceStatus(
            id=inst["id"],
            status=Status(inst["status"]),
            notebook=inst["notebook"],
            version=inst["version"],
            created_at=_aware(inst["created_at"]),
            updated_at=_aware(inst["updated_at"]),
            failed_cell=inst["failed_cell"],
            error=ErrorInfo(**inst["error"]) if inst["error"] else None,
            parameters=inst["parameters"],
            wake_at=_aware(inst["wake_at"]) if inst["wake_at"] else None,
            waiting_for=inst["waiting_for"],
            output=inst["output"],
            priority=inst["priority"] or 0,
            tenant=inst["tenant"],
            workflow=inst["workflow"],
            schedule=inst["schedule"],
            workdir=inst["cwd"],
            sandbox=bool(options.get("sandbox")),
            limits=options.get("limits") or {},
            cells=cells,
        )

    def list(
        self,
        status: str | None = None,
        limit: int | None = None,
        tenant: str | None = None,
        workflow: str | None = None,
        schedule: str | None = None,
        cursor: str | None = None,
        notebook: str | None = None,
    ) -> tuple[list[InstanceSummary], str | None]:
        """Newest first; ``cursor`` (from the previous page) continues after its last item."""
        sql = (
            "SELECT id, status, notebook, created_at, updated_at, failed_cell, priority, tenant, "
            "workflow, schedule FROM instances"
        )
        where: list[str] = []
        args: list[Any] = []
        for col, value in (
            ("status", status),
            ("tenant", tenant),
            ("workflow", workflow),
            ("schedule", schedule),
            ("notebook", notebook),
        ):
            if value is not None:
                where.append(f"{col} = ?")
                args.append(value)
        if cursor:
            at, iid = _read_cursor(cursor)
            where.append("(created_at < ? OR (created_at = ? AND id < ?))")
            args += [at, at, iid]
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at DESC, id DESC"
        if limit:
            sql += f" LIMIT {int(limit) + 1}"
        rows = self.cursor().execute(sql, args).fetchall()
        more = bool(limit) and len(rows) > int(limit or 0)
        rows = rows[: int(limit)] if limit else rows
        items = [
            InstanceSummary(
                id=r[0],
                status=Status(r[1]),
                notebook=r[2],
                created_at=_aware(r[3]),
                updated_at=_aware(r[4]),
                failed_cell=r[5],
                priority=r[6] or 0,
                tenant=r[7],
                workflow=r[8],
                schedule=r[9],
            )
            for r in rows
        ]
        nxt = _make_cursor(rows[-1][3], rows[-1][0]) if more and rows else None
        return items, nxt

    def queued(self) -> builtins.list[tuple[str, str | None, str | None, str, int, int]]:
        """What a dispatcher takes: (id, tenant, workflow, notebook, priority, queue order)."""
        return [
            (r[0], r[1], r[2], r[3], int(r[4] or 0), int(r[5] or 0))
            for r in self.cursor()
            .execute(
                "SELECT id, tenant, workflow, notebook, priority, queued_seq FROM instances "
                "WHERE status = 'queued' AND version <> 'interactive' ORDER BY queued_seq, "
                "created_at"
            )
            .fetchall()
        ]

    def timers(self) -> builtins.list[tuple[str, datetime]]:
        """Suspended instances with a time to wake (a sleep's end, a wait's timeout)."""
        return [
            (r[0], r[1])
            for r in self.cursor()
            .execute(
                "SELECT id, wake_at FROM instances WHERE status IN ('sleeping', 'waiting') "
                "AND wake_at IS NOT NULL"
            )
            .fetchall()
        ]

    def count_by_status(self) -> dict[str, int]:
        rows = self.cursor().execute("SELECT status, count(*) FROM instances GROUP BY status")
        return {r[0]: int(r[1]) for r in rows.fetchall()}


def _make_cursor(at: datetime, iid: str) -> str:
    import base64

    return base64.urlsafe_b64encode(f"{at.isoformat()}|{iid}".encode()).decode()


def _read_cursor(cursor: str) -> tuple[datetime, str]:
    import base64

    from .errors import BadInput

    try:
        at, _, iid = base64.urlsafe_b64decode(cursor.encode()).decode().partition("|")
        return datetime.fromisoformat(at), iid
    except (ValueError, UnicodeError):
        raise BadInput(f"invalid cursor {cursor[:80]!r}: pass next_cursor of a page") from None
