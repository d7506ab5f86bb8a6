"""What kernels send the engine is checked against typed models before it is used."""

from __future__ import annotations

from pathlib import Path

import pytest

from durabook.client import Client
from durabook.kernel_messages import (
    BadKernelMessage,
    check_record,
    check_step_message,
    check_suspension,
)

from .conftest import write_nb

GOOD_CELL = {
    "t": "cell",
    "index": 2,
    "id": "c2",
    "hash": "h",
    "status": "ok",
    "started_at": 1.0,
    "duration_ms": 3.5,
    "execution_count": 3,
    "outputs": [],
    "manifest": {"vars": {"x": {"kind": "pickle", "inline": "AA=="}}, "deleted": []},
    "newer_field": 1,  # a newer kernel's addition passes through
}


def test_good_records_pass_through_unchanged():
    assert check_record(GOOD_CELL) == GOOD_CELL
    assert check_record({"t": "start", "index": 0, "at": 1.0})["t"] == "start"
    rec = {"t": "suspend", "index": 1, "request": {"kind": "sleep", "key": "1:0", "until": 9.0}}
    assert check_record(rec) == rec
    assert check_step_message({"phase": "restored", "vars": 2})["phase"] == "restored"


@pytest.mark.parametrize(
    "bad",
    [
        {"t": "cell", "index": -1, "status": "ok"},
        {"t": "cell", "index": 0, "status": "done"},
        {"t": "cell", "index": 0, "status": "ok", "outputs_blob": "../../etc/passwd"},
        {"t": "cell", "index": 0, "status": "ok", "manifest": {"vars": {"x": 5}}},
        {"t": "cell", "index": 0, "status": "error", "error": {"ename": 1}},
        {"t": "explode", "index": 0},
        {"index": 0},
        "not a record",
    ],
)
def test_bad_records_are_refused(bad: object):
    with pytest.raises(BadKernelMessage):
        check_record(bad)


def test_a_wait_must_name_its_event():
    with pytest.raises(BadKernelMessage):
        check_suspension({"kind": "wait", "key": "0:0"})
    with pytest.raises(BadKernelMessage):
        check_step_message({"phase": "teleport"})


def test_a_kernel_that_sends_a_bad_step_message_fails_the_run_clearly(home: Path, tmp_path: Path):
    nb = write_nb(
        tmp_path / "forge.ipynb",
        [
            "x = 1",
            "ip = get_ipython()\n"
            "k = ip.kernel\n"
            "k.session.send(k.iopub_socket, 'durabook_step', {'phase': 'cell', 'index': -3},\n"
            "               parent=k.get_parent('shell'))",
            "print('never')",
        ],
    )
    res = Client().run(nb)
    assert res.status.value == "failed"
    assert res.error is not None and res.error.ename == "BadKernelMessage"
    st = Client().status(res.id)
    assert st.cells[0].status.value == "committed"
    assert st.cells[2].status.value == "pending"
