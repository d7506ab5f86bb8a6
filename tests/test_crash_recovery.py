"""SIGKILL of the kernel or of the `durabook run` process: no commit lost, resume works."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from durabook import Client, Status

from .conftest import cli, cli_json, outputs_text, write_nb
from .processes import pid_gone, start_run


def _wait_for(path: Path, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().strip():
            return path.read_text().strip()
        time.sleep(0.05)
    raise AssertionError(f"{path} never appeared")


def _workflow(tmp_path: Path) -> Path:
    """Cell 1 appends to a log; cell 2 waits (kill target) unless released; cell 3 reports."""
    log, pid_file, release = tmp_path / "log.txt", tmp_path / "kernel.pid", tmp_path / "release"
    return write_nb(
        tmp_path / "crash.ipynb",
        [
            "import os, time\ntotal = 10",
            f"open({str(log)!r}, 'a').write('step1\\n')\ntotal += 5",
            f"open({str(pid_file)!r}, 'w').write(str(os.getpid()))\n"
            f"while not os.path.exists({str(release)!r}):\n    time.sleep(0.05)",
            "print('total', total)",
        ],
    )


def test_kernel_sigkill_fails_the_cell_and_resume_continues(home: Path, tmp_path: Path):
    nb = _workflow(tmp_path)
    proc = subprocess.Popen(
        [sys.executable, "-m", "durabook", "run", str(nb), "--json", "-q"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    kernel_pid = int(_wait_for(tmp_path / "kernel.pid"))
    os.kill(kernel_pid, signal.SIGKILL)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, err
    import json

    res = json.loads(out)
    assert res["status"] == "failed" and res["failed_cell"] == 2
    _, st = cli_json("status", res["id"])
    assert st["error"]["ename"] == "DeadKernelError"
    assert "cell 2" in st["error"]["evalue"] and "signal 9" in st["error"]["evalue"]
    assert st["cells"][2]["status"] == "failed" and st["cells"][2]["attempts"] == 1

    (tmp_path / "release").touch()
    done = Client().resume(res["id"])
    assert done.status == Status.COMPLETED
    assert outputs_text(done.output)[3] == "total 15\n"
    assert (tmp_path / "log.txt").read_text() == "step1\n"
    # the killed attempt counts: the cell ran twice in all
    assert Client().status(res["id"]).cells[2].attempts == 2


def _kill_runner_mid_run(tmp_path: Path) -> tuple[str, int]:
    """Start `durabook run`, wait until its kernel is in the waiting cell, SIGKILL the run."""
    proc, iid = start_run(_workflow(tmp_path))
    kernel_pid = int(_wait_for(tmp_path / "kernel.pid"))
    time.sleep(0.5)  # let the writer commit the cells before the waiting one
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    return iid, kernel_pid


def test_runner_sigkill_is_detected_and_resumed_from_last_commit(home: Path, tmp_path: Path):
    iid, kernel_pid = _kill_runner_mid_run(tmp_path)
    assert pid_gone(kernel_pid), "the kernel outlived its runner"

    # `list` notices the dead owner: the instance is not left running
    code, items = cli_json("list")
    assert code == 0
    mine = next(i for i in items if i["id"] == iid)
    assert mine["status"] == "failed" and mine["failed_cell"] == 2
    code, st = cli_json("status", iid)
    assert st["error"]["ename"] == "RunnerDied"
    # the cell the kill interrupted is a failed attempt: retry budgets see it
    assert [c["status"] for c in st["cells"]] == ["committed", "committed", "failed", "pending"]
    assert st["cells"][2]["attempts"] == 1 and st["cells"][2]["error"]["ename"] == "RunnerDied"

    (tmp_path / "release").touch()
    res = cli("resume", iid, "--json", "-q")
    assert res.returncode == 0, res.stderr
    st = Client().status(iid)
    assert st.status == Status.COMPLETED
    assert outputs_text(st.output or "")[3] == "total 15\n"
    assert (tmp_path / "log.txt").read_text() == "step1\n"


def test_resume_of_an_orphan_detects_the_dead_owner_itself(home: Path, tmp_path: Path):
    iid, _ = _kill_runner_mid_run(tmp_path)
    (tmp_path / "release").touch()
    code, res = cli_json("resume", iid, "-q")
    assert code == 0 and res["status"] == "completed"
    assert (tmp_path / "log.txt").read_text() == "step1\n"
