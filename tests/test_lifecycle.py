"""pause, unpause, terminate, restart and idempotent run --id."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from durabook import Client, Status

from .conftest import cli, cli_json, outputs_text, write_nb


def _wait_for(path: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def _gated(tmp_path: Path) -> Path:
    """Cell 1 runs until a file appears; every cell logs that it ran."""
    log, gate = tmp_path / "log.txt", tmp_path / "gate"
    started = tmp_path / "started"

    def mark(n: int) -> str:
        return f"with open({str(log)!r}, 'a') as fh:\n    fh.write('{n}\\n')\n"

    return write_nb(
        tmp_path / "gated.ipynb",
        [
            "import os, time\n" + mark(0),
            f"open({str(started)!r}, 'w').write(str(os.getpid()))\n"
            f"while not os.path.exists({str(gate)!r}):\n    time.sleep(0.05)\n" + mark(1),
            mark(2),
        ],
    )


def _run_in_background(nb: Path) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "durabook", "run", str(nb), "-q"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    return proc, proc.stdout.readline().strip()


def test_pause_stops_a_running_instance_after_its_cell_and_unpause_continues(
    home: Path, tmp_path: Path
):
    nb = _gated(tmp_path)
    proc, iid = _run_in_background(nb)
    _wait_for(tmp_path / "started")
    kernel_pid = int((tmp_path / "started").read_text())
    code, out = cli_json("pause", iid)  # asked of the process running it
    assert code == 0 and out["status"] == "running"
    (tmp_path / "gate").touch()
    proc.communicate(timeout=60)
    assert proc.returncode == 3  # the run ended suspended: paused
    st = Client().status(iid)
    assert st.status == Status.PAUSED
    assert [c.status.value for c in st.cells] == ["committed", "committed", "pending"]
    assert (tmp_path / "log.txt").read_text() == "0\n1\n"
    time.sleep(0.2)
    assert not Path(f"/proc/{kernel_pid}").exists() or (
        "Z" in Path(f"/proc/{kernel_pid}/stat").read_text().split(")")[1][:3]
    )

    assert cli("resume", iid).returncode == 2  # paused: unpause, not resume
    code, out = cli_json("unpause", iid, "-q")
    assert code == 0 and out["status"] == "completed"
    assert (tmp_path / "log.txt").read_text() == "0\n1\n2\n"


def test_a_paused_sleeper_stays_put_past_its_wake_time(home: Path, tmp_path: Path):
    nb = write_nb(tmp_path / "nap.ipynb", ["import durabook\ndurabook.sleep('1s')", "x = 1"])
    res = Client().run(nb)
    assert res.status == Status.SLEEPING
    code, out = cli_json("pause", res.id)
    assert code == 0 and out["status"] == "paused"
    time.sleep(1.1)
    assert cli("resume", res.id).returncode == 2
    assert Client().status(res.id).status == Status.PAUSED
    # unpaused past its wake time, it is due: it wakes and runs to the end here
    code, out = cli_json("unpause", res.id, "-q")
    assert code == 0 and out["status"] == "completed"


def test_terminate_kills_the_kernel_and_is_final(home: Path, tmp_path: Path):
    nb = _gated(tmp_path)
    proc, iid = _run_in_background(nb)
    _wait_for(tmp_path / "started")
    code, out = cli_json("terminate", iid)
    assert code == 0 and out["status"] == "terminated"
    proc.communicate(timeout=60)
    assert Client().status(iid).status == Status.TERMINATED
    assert (tmp_path / "log.txt").read_text() == "0\n"
    for args in (
        ("terminate", iid),
        ("resume", iid),
        ("send-event", iid, "x"),
        ("restart", iid),
        ("pause", iid),
    ):
        proc2 = cli(*args)
        assert proc2.returncode == 2, args
        assert proc2.stderr.startswith("error:") and len(proc2.stderr.splitlines()) == 1


def test_restart_from_a_cell_drops_later_checkpoints(home: Path, tmp_path: Path):
    log = tmp_path / "log.txt"
    nb = write_nb(
        tmp_path / "r.ipynb",
        [
            f"open({str(log)!r}, 'a').write('a\\n')\nx = 1",
            f"open({str(log)!r}, 'a').write('b\\n')\ny = x + 1",
            "print(x, y)",
        ],
    )
    client = Client()
    iid = client.run(nb).id
    code, out = cli_json("restart", iid, "--from-cell", "1", "-q")
    assert code == 0 and out["status"] == "completed"
    assert log.read_text() == "a\nb\nb\n"
    assert outputs_text(out["output"])[2] == "1 2\n"
    assert [c.attempts for c in client.status(iid).cells] == [1, 1, 1]
    code, _ = cli_json("restart", iid, "-q")  # from the start
    assert code == 0 and log.read_text() == "a\nb\nb\na\nb\n"
    bad = cli("restart", iid, "--from-cell", "9")
    assert bad.returncode == 2 and "is not a cell of instance" in bad.stderr


def test_run_with_the_same_id_never_makes_two_instances(home: Path, tmp_path: Path):
    nb = write_nb(tmp_path / "ok.ipynb", ["x = 1"])
    first = cli("run", str(nb), "--id", "nightly-2026-11-24", "-q")
    again = cli("run", str(nb), "--id", "nightly-2026-11-24", "-q")
    assert first.returncode == again.returncode == 0
    assert first.stdout.splitlines()[0] == again.stdout.splitlines()[0] == "nightly-2026-11-24"
    assert len(Client().list()) == 1
    err = cli("run", str(nb), "--id", "nightly-2026-11-24", "--if-exists", "error")
    assert err.returncode == 2 and "already exists" in err.stderr
    assert os.path.exists(home / "durabook.duckdb")


def test_python_client_lifecycle(home: Path, tmp_path: Path):
    client = Client()
    waiting = client.run(
        write_nb(
            tmp_path / "w.ipynb",
            ["import durabook\ngot = durabook.wait_for_event('go')", "print(got)"],
        )
    )
    assert client.pause(waiting.id).status == Status.PAUSED
    assert client.send_event(waiting.id, "go", {"n": 1}).status == Status.PAUSED  # kept
    st = client.unpause(waiting.id)
    assert st.status == Status.COMPLETED  # the event kept while paused is delivered at once
    assert outputs_text(client.status(waiting.id).output or "")[1] == "{'n': 1}\n"

    sleeper = client.run(write_nb(tmp_path / "s.ipynb", ["import durabook\ndurabook.sleep('1d')"]))
    assert client.terminate(sleeper.id).status == Status.TERMINATED
    again = client.restart(client.run(write_nb(tmp_path / "o.ipynb", ["x = 1"])).id)
    assert again.status == Status.COMPLETED
