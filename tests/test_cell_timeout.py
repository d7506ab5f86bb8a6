"""A cell that runs too long is interrupted, or its kernel killed if it ignores that."""

from __future__ import annotations

from pathlib import Path

from durabook import Status
from durabook.engine import Engine

from .conftest import outputs_text, write_nb


def test_a_timed_out_cell_is_interrupted_and_the_run_resumable(home: Path, tmp_path: Path):
    nb = write_nb(
        tmp_path / "slow.ipynb",
        [
            "x = 1",
            "import os, time\nif not os.path.exists('fast.flag'):\n    time.sleep(60)\nx += 1",
            "print(x)",
        ],
    )
    with Engine() as eng:
        iid, _ = eng.create(nb)
        res = eng.execute(iid, timeout=1.0)
        assert res.status == Status.FAILED and res.failed_cell == 1
        assert res.error is not None and res.error.ename == "CellTimeoutError"
        assert res.error.evalue == "cell 1 timed out after 1 s"
        assert "KeyboardInterrupt" in outputs_text(res.output or "")[1]

        (tmp_path / "fast.flag").touch()
        done = eng.resume(iid)
        assert done.status == Status.COMPLETED
        assert outputs_text(done.output or "")[2] == "2\n"


def test_a_cell_ignoring_the_interrupt_loses_its_kernel(home: Path, tmp_path: Path):
    nb = write_nb(
        tmp_path / "stubborn.ipynb",
        [
            "import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\ntime.sleep(60)",
        ],
    )
    with Engine() as eng:
        iid, _ = eng.create(nb)
        res = eng.execute(iid, timeout=0.5)
    assert res.status == Status.FAILED and res.failed_cell == 0
    assert res.error is not None and res.error.ename == "CellTimeoutError"
    assert "ignored the interrupt, so the kernel was killed" in res.error.evalue


def test_a_timed_out_cell_that_awaits_is_interrupted_too(home: Path, tmp_path: Path):
    # a cell waiting in the event loop (top-level await) is cancelled, not its kernel
    nb = write_nb(
        tmp_path / "awaits.ipynb",
        ["x = 1", "import asyncio\nawait asyncio.sleep(60)", "print(x)"],
    )
    with Engine() as eng:
        iid, _ = eng.create(nb)
        res = eng.execute(iid, timeout=1.0)
    assert res.status == Status.FAILED and res.failed_cell == 1
    assert res.error is not None and res.error.ename == "CellTimeoutError", res.error
    assert res.error.evalue == "cell 1 timed out after 1 s"
    assert "CancelledError: interrupted (SIGINT)" in outputs_text(res.output or "")[1]
