"""`durabook status`: step names, every attempt of a retried cell, and what a suspended
instance waits for."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_notebook

from .conftest import KERNELSPEC, cli, cli_json, write_nb


def _flaky(counter: Path, succeed_on: int) -> str:
    """Cell body: counts its attempts in a file and fails until attempt ``succeed_on``."""
    c = str(counter)
    return (
        f"import os\nn = int(open({c!r}).read()) + 1 if os.path.exists({c!r}) else 1\n"
        f"open({c!r}, 'w').write(str(n))\nassert n >= {succeed_on}, f'attempt {{n}} failed'"
    )


def test_status_names_steps_and_lists_every_attempt(home: Path, tmp_path: Path):
    cells = [
        new_code_cell("x = 1"),
        new_code_cell(
            "%%step --retries 3 --backoff exponential --delay 0.1s --name charge\n"
            + _flaky(tmp_path / "c1", 3)
        ),
        new_code_cell("y = 2", metadata={"durabook": {"step": {"name": "receipt"}}}),
    ]
    for i, c in enumerate(cells):
        c.id = f"c{i}"
    nb = tmp_path / "named.ipynb"
    nbformat.write(new_notebook(cells=cells, metadata={"kernelspec": KERNELSPEC}), nb)
    code, res = cli_json("run", str(nb), "-q")
    assert code == 0, res
    code, st = cli_json("status", res["id"])
    assert code == 0
    assert [c["name"] for c in st["cells"]] == [None, "charge", "receipt"]

    charge = st["cells"][1]
    assert charge["status"] == "committed" and charge["attempts"] == 3
    history = charge["history"]
    assert [a["attempt"] for a in history] == [1, 2, 3]
    assert [a["status"] for a in history] == ["failed", "failed", "committed"]
    assert [a["error"]["evalue"] if a["error"] else None for a in history] == [
        "attempt 1 failed",
        "attempt 2 failed",
        None,
    ]
    assert [a["error"]["retry_in_s"] for a in history[:2]] == [0.1, 0.2]
    for a in history:
        assert a["started_at"] and a["duration_ms"] is not None
    assert charge["started_at"] == history[-1]["started_at"]
    assert [len(c["history"]) for c in st["cells"]] == [1, 3, 1]

    human = cli("status", res["id"]).stdout.splitlines()
    line = next(x for x in human if x.startswith("  [  1]"))
    assert "committed x3" in line and "c1  step 'charge'" in line
    assert any(
        x.strip() == "attempt 1: AssertionError: attempt 1 failed (retry in 0.1 s)" for x in human
    )
    assert any(
        x.strip() == "attempt 2: AssertionError: attempt 2 failed (retry in 0.2 s)" for x in human
    )
    assert "step 'receipt'" in next(x for x in human if x.startswith("  [  2]"))


def _utc(text: str) -> str:
    return f"{datetime.fromisoformat(text):%Y-%m-%d %H:%M:%S} UTC"


def test_status_shows_when_a_sleeper_wakes(home: Path, tmp_path: Path):
    nb = write_nb(tmp_path / "nap.ipynb", ["import durabook", "durabook.sleep('1h')", "x = 1"])
    code, res = cli_json("run", str(nb), "-q")
    assert code == 3 and res["status"] == "sleeping"
    _, st = cli_json("status", res["id"])
    assert st["wake_at"]
    human = cli("status", res["id"]).stdout
    assert f"  sleeping until {_utc(st['wake_at'])}\n" in human


def test_status_shows_the_event_a_waiter_waits_for(home: Path, tmp_path: Path):
    nb = write_nb(
        tmp_path / "wait.ipynb",
        ["import durabook", "ok = durabook.wait_for_event('approval', timeout='1d')"],
    )
    code, res = cli_json("run", str(nb), "-q")
    assert code == 3 and res["status"] == "waiting"
    _, st = cli_json("status", res["id"])
    assert st["waiting_for"] == "approval" and st["wake_at"]
    human = cli("status", res["id"]).stdout
    assert f"  waiting for the event 'approval', times out at {_utc(st['wake_at'])}\n" in human
