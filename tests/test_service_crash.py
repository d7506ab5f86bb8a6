"""SIGKILL of `durabook serve` under load: hundreds queued, several running, a schedule
catching up. After a restart no acknowledged submission is lost, no instance runs twice
at once, and no schedule fire is duplicated or lost beyond the catch-up policy."""

from __future__ import annotations

import itertools
import os
import random
import signal
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import duckdb

from durabook.api.models import CreateRequest
from durabook.remote import open_engine
from durabook.store import utcnow

from .conftest import cli, write_nb
from .processes import pid_gone

SUBMITTED = 150
MISSED_FIRES = 12


def _serve(home: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "durabook", "--home", str(home), "serve", "--concurrency", "2"],
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    line = proc.stderr.readline()
    assert "durabook engine for" in line, line
    return proc


def _sql(home: Path, query: str, args: list[object] | None = None) -> list[tuple[object, ...]]:
    """The store read (or written) directly, while no engine runs."""
    con = duckdb.connect(str(home / "durabook.duckdb"))
    try:
        return con.execute(query, args or []).fetchall()
    finally:
        con.close()


def test_kill_9_under_load_loses_and_duplicates_nothing(home: Path, tmp_path: Path):
    log = tmp_path / "log"
    log.mkdir()
    nb = write_nb(
        tmp_path / "w.ipynb",
        [
            ("tag = 'x'", ["parameters"]),
            "import os, time\n"
            "t0 = time.time()\n"
            "time.sleep(0.05)\n"
            f"with open(os.path.join({str(log)!r}, tag), 'a') as fh:\n"
            "    fh.write(f'{t0} {time.time()}\\n')",
        ],
    )
    # a schedule that has missed fires (its last fire set back while no engine runs)
    assert (
        cli(
            "schedule",
            "add",
            "every",
            str(nb),
            "--cron",
            "* * * * *",
            "--catch-up",
            "all",
            "--overlap",
            "queue",
            "-p",
            "tag",
            "sched",
        ).returncode
        == 0
    )
    back = utcnow().replace(second=0, microsecond=0) - timedelta(minutes=MISSED_FIRES)
    _sql(
        home,
        "UPDATE schedules SET last_fire = ?, created_at = ? WHERE name = 'every'",
        [back, back],
    )

    serve = _serve(home)
    acked: list[str] = []
    stop = threading.Event()

    def submit() -> None:
        with open_engine(home) as svc:
            for i in range(SUBMITTED):
                if stop.is_set():
                    return
                try:
                    ref = svc.create(
                        CreateRequest(notebook=str(nb), parameters={"tag": f"s{i}"}, id=f"s{i}")
                    )
                except Exception:  # the engine died under it: this one was not acknowledged
                    return
                acked.append(ref.id)

    t = threading.Thread(target=submit)
    t.start()
    # kill when some are done, several running, most still queued
    deadline = time.monotonic() + 60
    while len(list(log.iterdir())) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(random.uniform(0.0, 0.3))
    os.kill(serve.pid, signal.SIGKILL)
    serve.wait()
    stop.set()
    t.join(30)
    assert len(acked) >= 3

    # the kernels of the killed engine go with it (their lifeline closed)
    for _ in range(100):
        if not any(
            "ipykernel_launcher" in p.read_text(errors="replace")
            for p in Path("/proc").glob("[0-9]*/cmdline")
            if _readable(p) and str(home) in _env_of(p)
        ):
            break
        time.sleep(0.1)

    serve = _serve(home)  # restart: catch up, recover, run the rest
    try:
        with open_engine(home) as svc:
            for iid in [*acked]:
                assert svc.status(_id(iid)).id == iid  # acknowledged: still there
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            left = cli("list", "--status", "queued", "--json", "--limit", "10000").stdout
            running = cli("list", "--status", "running", "--json").stdout
            if left.strip() == "[]" and running.strip() == "[]":
                break
            time.sleep(0.5)
    finally:
        serve.terminate()
        serve.wait(60)
    assert pid_gone(serve.pid)

    rows = _sql(home, "SELECT id, status, schedule FROM instances")
    by_id = {r[0]: r for r in rows}
    assert set(acked) <= set(by_id)
    assert {by_id[i][1] for i in acked} == {"completed"}
    fires = sorted(r[0] for r in rows if r[2] == "every")
    # every minute since the last recorded fire, once each (catch-up all), none twice
    assert len(fires) == len(set(fires))
    assert MISSED_FIRES <= len(fires) <= MISSED_FIRES + 5, fires
    # no instance ran its cell twice at once (a run after a crash may repeat the cell
    # the kill interrupted, never beside another run of it)
    for f in log.iterdir():
        spans = sorted(tuple(map(float, line.split())) for line in f.read_text().splitlines())
        for (_, end), (start, _) in itertools.pairwise(spans):
            assert start >= end, f"{f.name} ran twice at once: {spans}"


def _readable(p: Path) -> bool:
    return os.access(p, os.R_OK)


def _env_of(cmdline: Path) -> str:
    try:
        return (cmdline.parent / "environ").read_bytes().decode(errors="replace")
    except OSError:
        return ""


def _id(iid: str):  # type: ignore[no-untyped-def]
    from durabook.api.models import IdRequest

    return IdRequest(id=iid)
