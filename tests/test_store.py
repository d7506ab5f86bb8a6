"""The DuckDB store: migrations, one writer per home, group commit (and a run's steps
written together while one of its INSERTs is under way), blobs before rows."""

from __future__ import annotations

import threading
from datetime import datetime
from pathlib import Path

import duckdb
import pytest

from durabook.blobs import BlobStore, digest
from durabook.engine import Engine
from durabook.errors import EngineBusy
from durabook.migrations import MIGRATIONS
from durabook.models import CellStatus, StepRecord
from durabook.store import Store
from durabook.writer import StepStream


def test_migrations_are_applied_once_in_order(tmp_path: Path):
    store = Store(tmp_path / "s.duckdb")
    store.close()
    store = Store(tmp_path / "s.duckdb")  # reopening applies nothing twice
    rows = store.cursor().execute("SELECT version FROM schema_migrations ORDER BY 1").fetchall()
    assert [r[0] for r in rows] == [m[0] for m in MIGRATIONS]
    tables = {r[0] for r in store.cursor().execute("SHOW TABLES").fetchall()}
    assert {"instances", "versions", "steps", "schema_migrations"} <= tables
    store.close()


def test_a_second_writer_on_the_same_home_is_refused_clearly(tmp_path: Path):
    # DuckDB locks the file per process, so the second writer must be another process
    import subprocess
    import sys

    with Engine(tmp_path / "h"):
        proc = subprocess.run(
            [
                sys.executable,
                "-c",
                f"from durabook.engine import Engine\nEngine({str(tmp_path / 'h')!r})",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert proc.returncode != 0
    assert "is in use by another durabook process (pid" in proc.stderr
    assert EngineBusy.exit_code == 2


def _step(k: int) -> StepRecord:
    return StepRecord(
        instance_id="i",
        index=k,
        cell_id="c",
        source_hash="h",
        status=CellStatus.COMMITTED,
        attempt=1,
        started_at=datetime(2026, 1, 1),
        duration_ms=1.0,
    )


def test_group_commit_batches_concurrent_writes(tmp_path: Path):
    with Engine(tmp_path / "h") as eng:
        start = eng.writer.batches
        barrier = threading.Barrier(8)
        rows = [Store.step_row(_step(k), k, "[]", None) for k in range(400)]
        errors: list[BaseException] = []

        def write(part: int) -> None:
            barrier.wait()
            try:
                for r in rows[part::8]:
                    eng.writer.submit_steps([r]).result()
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=write, args=(p,)) for p in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        batches = eng.writer.batches - start
        n = eng.store.cursor().execute("SELECT count(*) FROM steps").fetchone()
        assert n == (400,)
        assert batches < 400  # several writers shared commits


def test_a_runs_steps_written_meanwhile_go_together_in_one_insert(tmp_path: Path):
    with Engine(tmp_path / "h") as eng:
        sizes: list[int] = []  # the rows of each submission to the (real) writer
        submit_steps = eng.writer.submit_steps
        eng.writer.submit_steps = lambda rows: sizes.append(len(rows)) or submit_steps(rows)  # type: ignore[method-assign]
        stream = StepStream(eng.writer)
        hold = threading.Event()
        blocker = eng.writer.submit(lambda c: hold.wait(30))  # the writer is busy
        rows = [Store.step_row(_step(k), k, "[]", None) for k in range(5)]
        futs = [stream.submit(r) for r in rows]  # the first goes; four wait for it
        assert sizes == [1] and not any(f.done() for f in futs)
        hold.set()
        blocker.result()
        for f in futs:
            f.result(timeout=30)
        assert sizes == [1, 4]  # the four as one multi-row INSERT
        assert [s["idx"] for s in eng.store.steps("i")] == [0, 1, 2, 3, 4]
        # a row the store refuses fails its own future, and the stream goes on
        bad = stream.submit((None,) * len(rows[0]))
        with pytest.raises(duckdb.Error):
            bad.result(timeout=30)
        stream.submit(Store.step_row(_step(5), 5, "[]", None)).result(timeout=30)
        assert len(eng.store.steps("i")) == 6


def test_a_failing_write_does_not_sink_its_batch(tmp_path: Path):
    with Engine(tmp_path / "h") as eng:

        def bad(c: duckdb.DuckDBPyConnection) -> None:
            c.execute("INSERT INTO no_such_table VALUES (1)")

        futs = [eng.writer.submit(lambda c: c.execute("SELECT 1")), eng.writer.submit(bad)]
        futs[0].result()
        with pytest.raises(duckdb.Error):
            futs[1].result()


def test_blobs_are_content_addressed_and_atomic(tmp_path: Path):
    blobs = BlobStore(tmp_path / "b")
    key = blobs.put(b"hello")
    assert key == digest(b"hello")
    assert blobs.put(b"hello") == key
    assert blobs.get(key) == b"hello"
    files = [p for p in (tmp_path / "b").rglob("*") if p.is_file()]
    assert [p.name for p in files] == [key]  # no temporary file left behind


def test_a_store_file_being_made_by_another_process_is_busy_not_broken(tmp_path: Path) -> None:
    """Opened between its creation and its header (many processes starting on a new
    home): busy, so the opener waits; the same file still invalid later is an error."""
    import os
    import time

    path = tmp_path / "durabook.duckdb"
    path.write_bytes(b"\0" * 100)  # what a reader may see before DuckDB wrote a header
    with pytest.raises(EngineBusy):
        Store(path)
    old = time.time() - 60
    os.utime(path, (old, old))
    with pytest.raises(duckdb.IOException, match="not a valid DuckDB database file"):
        Store(path)


def test_a_write_after_the_writer_closed_fails_at_once(tmp_path: Path):
    # a run still finishing as the engine closes must get an error, not wait forever
    eng = Engine(tmp_path / "h")
    stream = StepStream(eng.writer)
    eng.close()
    with pytest.raises(RuntimeError, match="closed"):
        eng.writer.submit(lambda c: None).result(timeout=5)
    with pytest.raises(RuntimeError, match="closed"):
        stream.submit(Store.step_row(_step(0), 0, "[]", None)).result(timeout=5)
