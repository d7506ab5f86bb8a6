"""After any kill, only the cell that was executing at the kill runs again.

A cell's successor starts only once the cell's checkpoint is durable (the step
journal), so a SIGKILL of the kernel, the runner or the engine at a random
moment re-runs at most the one cell it interrupted; every cell that finished
before is committed and never runs again. Each cell appends its index to a
log file as its last act, so the log counts executions exactly.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from .conftest import cli, write_nb
from .processes import kernel_of, start_run

CELLS = 8


def _notebook(tmp_path: Path, first: dict[int, str] | None = None) -> tuple[Path, Path]:
    """``first``: code put at the top of some cells."""
    log = tmp_path / "ran.log"
    cells = ["import time, os\nLOG = " + repr(str(log))]
    for i in range(1, CELLS):
        # work first, then the record of having run: a kill inside the sleep re-runs it
        top = (first or {}).get(i, "")
        cells.append(top + f"time.sleep(0.12)\nwith open(LOG, 'a') as f:\n    f.write('{i}\\n')")
    return write_nb(tmp_path / "steps.ipynb", cells), log


def _wait_lines(log: Path, n: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.exists() and len(log.read_text().splitlines()) >= n:
            return
        time.sleep(0.005)
    raise AssertionError(f"{log} never reached {n} lines")


def _run_to_completion(iid: str) -> None:
    for _ in range(5):
        proc = cli("resume", iid, "--json", "-q")
        if proc.returncode == 0:
            return
        st = json.loads(cli("status", iid, "--json").stdout)
        assert st["status"] == "failed", proc.stderr
    raise AssertionError(f"{iid} did not complete")


def _check_log(log: Path, kills: int) -> Counter[str]:
    counts = Counter(log.read_text().split())
    assert set(counts) == {str(i) for i in range(1, CELLS)}, counts
    again = sum(n - 1 for n in counts.values())
    assert again <= kills, f"more cells ran again than kills: {counts}"
    return counts


@pytest.mark.parametrize("victim", ["runner", "kernel"])
def test_a_kill_at_a_random_moment_reruns_at_most_one_cell(victim: str, home: Path, tmp_path: Path):
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    print(f"seed {seed}")
    for trial in range(3):
        work = tmp_path / f"t{trial}"
        work.mkdir()
        nb, log = _notebook(work)
        proc, iid = start_run(nb)
        _wait_lines(log, rng.randrange(1, CELLS - 2))
        time.sleep(rng.uniform(0, 0.15))  # anywhere inside a cell or between two
        target = proc.pid if victim == "runner" else kernel_of(proc.pid)
        os.kill(target, signal.SIGKILL)
        proc.communicate(timeout=60)
        _run_to_completion(iid)
        _check_log(log, kills=1)


def test_an_engine_kill_reruns_at_most_one_cell(home: Path, tmp_path: Path):
    """`durabook serve` runs the instance; it is SIGKILLed; a new serve finishes it."""
    nb, log = _notebook(tmp_path)
    serve = subprocess.Popen(
        [sys.executable, "-m", "durabook", "serve"],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert serve.stderr is not None
        serve.stderr.readline()  # "durabook engine for ..." once it listens
        run, iid = start_run(nb)
        _wait_lines(log, 3)
        time.sleep(0.05)
        serve.send_signal(signal.SIGKILL)
        serve.wait(timeout=30)
        run.communicate(timeout=60)
    finally:
        if serve.poll() is None:
            serve.kill()
    # a new engine resumes what the dead one was running
    again = subprocess.Popen(
        [sys.executable, "-m", "durabook", "serve", "--idle-timeout", "1"],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            st = json.loads(cli("status", iid, "--json").stdout)
            if st["status"] == "completed":
                break
            time.sleep(0.2)
    finally:
        again.terminate()
        _, err = again.communicate(timeout=30)
    assert st["status"] == "completed", (st["error"], st["cells"], err)
    _check_log(log, kills=1)


def test_the_cell_right_before_a_kill_is_not_run_again(home: Path, tmp_path: Path):
    """The tightest case: cell 4 kills its runner the moment it starts, while cell 3's
    checkpoint is at its freshest. Cell 3 is committed (journaled before cell 4 began)."""
    mark = tmp_path / "killed"
    kill = (
        f"import os, signal, pathlib\nif not pathlib.Path({str(mark)!r}).exists():\n"
        f"    pathlib.Path({str(mark)!r}).touch()\n    os.kill(os.getppid(), signal.SIGKILL)\n"
    )
    nb, log = _notebook(tmp_path, {4: kill})
    proc = cli("run", str(nb), "-q")
    assert proc.returncode == -signal.SIGKILL
    iid = proc.stdout.split()[0]
    _run_to_completion(iid)
    counts = _check_log(log, kills=1)
    assert counts == {str(i): 1 for i in range(1, CELLS)}  # cell 4 died before its log line
    st = json.loads(cli("status", iid, "--json").stdout)
    assert [c["attempts"] for c in st["cells"]] == [1, 1, 1, 1, 2, 1, 1, 1]
