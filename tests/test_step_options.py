"""%%step options: retries from the state before the cell, backoff, per-cell timeouts."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest

from durabook import Client, Status
from durabook.engine import Engine

from .conftest import KERNELSPEC, cli, cli_json, outputs_text, write_nb


def _flaky(counter: Path, succeed_on: int) -> str:
    """Cell body: counts its attempts in a file, fails until attempt ``succeed_on``."""
    return (
        f"import os\nn = int(open({str(counter)!r}).read()) + 1 if os.path.exists("
        f"{str(counter)!r}) else 1\nopen({str(counter)!r}, 'w').write(str(n))\n"
        "items.append(n)\n"
        f"assert n >= {succeed_on}, f'attempt {{n}} failed'"
    )


def test_retries_restart_from_the_state_before_the_cell(home: Path, tmp_path: Path):
    counter = tmp_path / "count"
    nb = write_nb(
        tmp_path / "retry.ipynb",
        [
            "items = []",
            "%%step --retries 3 --backoff exponential --delay 0.1s --name charge\n"
            + _flaky(counter, 3),
            "print(items)",
        ],
    )
    res = Client().run(nb)
    assert res.status == Status.COMPLETED
    assert outputs_text(res.output or "")[2] == "[3]\n"  # not [1, 2, 3]: state restored
    st = Client().status(res.id)
    assert st.cells[1].attempts == 3 and st.cells[1].status.value == "committed"
    with Engine() as eng:
        rows = [r for r in eng.store.steps(res.id) if r["idx"] == 1]
    errors = [json.loads(r["error"]) for r in rows if r["error"]]
    assert [e["evalue"] for e in errors] == ["attempt 1 failed", "attempt 2 failed"]
    assert [e["retry_in_s"] for e in errors] == [0.1, 0.2]  # exponential backoff


def test_retries_exhausted_fail_with_the_last_error(home: Path, tmp_path: Path):
    nb = write_nb(
        tmp_path / "nope.ipynb",
        [
            "items = []",
            "%%step --retries 2 --delay 0\n" + _flaky(tmp_path / "c", 99),
        ],
    )
    res = Client().run(nb)
    assert res.status == Status.FAILED and res.failed_cell == 1
    assert res.error is not None and res.error.evalue == "attempt 3 failed"
    assert res.error.retry_in_s is None
    st = Client().status(res.id)
    assert st.cells[1].attempts == 3 and st.cells[1].error is not None


def test_options_in_cell_metadata_and_per_cell_timeout(home: Path, tmp_path: Path):
    counter = tmp_path / "count"
    slow = (
        f"import os, time\nn = int(open({str(counter)!r}).read()) + 1 if os.path.exists("
        f"{str(counter)!r}) else 1\nopen({str(counter)!r}, 'w').write(str(n))\n"
        "if n == 1:\n    time.sleep(60)\nprint('attempt', n)"
    )
    cell = nbformat.v4.new_code_cell(
        slow, metadata={"durabook": {"step": {"retries": 1, "delay": "0.1s", "timeout": "1s"}}}
    )
    path = tmp_path / "meta.ipynb"
    nbformat.write(
        nbformat.v4.new_notebook(cells=[cell], metadata={"kernelspec": KERNELSPEC}), path
    )
    res = Client().run(path)
    assert res.status == Status.COMPLETED
    assert outputs_text(res.output or "")[0] == "attempt 2\n"
    st = Client().status(res.id)
    assert st.cells[0].attempts == 2


def test_a_long_retry_delay_sleeps_durably(home: Path, tmp_path: Path):
    nb = write_nb(
        tmp_path / "later.ipynb",
        ["items = []", "%%step --retries 1 --delay 1h\n" + _flaky(tmp_path / "c", 2)],
    )
    code, res = cli_json("run", str(nb), "-q")
    assert code == 3 and res["status"] == "sleeping"
    code, st = cli_json("status", res["id"])
    assert st["wake_at"] is not None and st["error"]["retry_in_s"] == 3600.0


@pytest.mark.parametrize(
    ("magic", "message"),
    [
        ("%%step --retries many", "argument --retries: invalid int value"),
        ("%%step --backoff sideways", "invalid %%step option backoff"),
        ("%%step --delay soon", "not a duration: 'soon'"),
        ("%%step --timeout=-3s", "a duration cannot be negative"),
        ("%%step --colour red", "unrecognized arguments: --colour red"),
    ],
)
def test_invalid_step_options_are_bad_input(home: Path, tmp_path: Path, magic: str, message: str):
    nb = write_nb(tmp_path / "bad.ipynb", ["x = 1", magic + "\nx += 1"])
    proc = cli("run", str(nb))
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: cell 1: invalid %%step option")
    assert message in proc.stderr and len(proc.stderr.splitlines()) == 1
    assert Client().list() == []
