"""Whatever goes wrong, an instance ends in a recorded final or resumable state.

A full disk, a terminate at any moment, events kept while paused, sleeps too
short to suspend, sleepers due or woken early: none leaves an instance
`running` under a live engine, resumes a terminated one, or loses an event.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

from durabook import Client, Status
from durabook.engine import Engine

from .conftest import cli, cli_json, outputs_text, write_nb


def _status(iid: str) -> dict:
    return json.loads(cli("status", iid, "--json").stdout)


# -- a full disk ------------------------------------------------------------------


@pytest.fixture
def tiny_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A home on a real 12 MB tmpfs (mounting needs root)."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=12m,mode=0700", "tmpfs", str(mnt)], check=True
    )
    home = mnt / "home"
    monkeypatch.setenv("DURABOOK_HOME", str(home))
    monkeypatch.chdir(tmp_path)
    try:
        yield mnt, home
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_full_disk_fails_the_cell_clearly_and_resume_works_once_space_is_freed(
    tiny_home: tuple[Path, Path], tmp_path: Path
):
    mnt, home = tiny_home
    nb = write_nb(
        tmp_path / "big.ipynb",
        [
            "import os\nsmall = [1, 2, 3]",
            "big = os.urandom(40 << 20)  # 40 MB of noise: its checkpoint cannot fit",
            "print(len(big), small)",
        ],
    )
    proc = cli("run", str(nb), "--json", "-q")
    assert proc.returncode == 1, proc.stderr
    res = json.loads(proc.stdout)
    assert res["status"] == "failed" and res["failed_cell"] == 1
    st = _status(res["id"])
    assert st["error"]["ename"] == "StorageFull", st["error"]
    assert str(home) in st["error"]["evalue"]
    assert "Traceback" not in proc.stderr
    # nothing half-written is left behind
    leftovers = [p for p in home.rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == []

    subprocess.run(["mount", "-o", "remount,size=200m", str(mnt)], check=True)
    proc = cli("resume", res["id"], "--json", "-q")
    assert proc.returncode == 0, proc.stderr
    assert outputs_text(json.loads(proc.stdout)["output"])[2] == f"{40 << 20} [1, 2, 3]\n"


def test_an_exception_in_the_engine_never_leaves_an_instance_running(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    nb = write_nb(tmp_path / "ok.ipynb", ["x = 1", "x + 1"])
    with Engine() as eng:
        iid, _ = eng.create(nb)

        def broken() -> None:
            raise RuntimeError("the pool broke")

        monkeypatch.setattr(eng.pool, "acquire", broken)
        with pytest.raises(RuntimeError):
            eng.execute(iid)
        st = eng.status(iid)
        assert st.status == Status.FAILED and st.error and "the pool broke" in st.error.evalue
        monkeypatch.undo()
        assert eng.resume(iid).status == Status.COMPLETED  # its id was released


# -- terminate ---------------------------------------------------------------------


def test_terminate_while_the_kernel_is_starting_is_final(home: Path, tmp_path: Path):
    marker = tmp_path / "ran"
    nb = write_nb(tmp_path / "t.ipynb", [f"open({str(marker)!r}, 'w').close()"])
    with Engine() as eng:
        iid, _ = eng.create(nb)
        result: list[object] = []
        t = threading.Thread(target=lambda: result.append(eng.execute(iid)))
        t.start()
        deadline = time.monotonic() + 10
        while eng.store.instance_row(iid)["status"] != "running":  # type: ignore[index]
            assert time.monotonic() < deadline
            time.sleep(0.005)
        assert eng.terminate(iid) == Status.TERMINATED
        # written at once, before the run has wound down
        assert eng.store.instance_row(iid)["status"] == "terminated"  # type: ignore[index]
        t.join(60)
        assert eng.status(iid).status == Status.TERMINATED
    assert not marker.exists(), "a cell ran after terminate"


def test_nothing_resumes_a_terminated_instance(home: Path, tmp_path: Path):
    nb = write_nb(tmp_path / "s.ipynb", ["import durabook\ndurabook.sleep('2s')", "done = 1"])
    code, res = cli_json("run", str(nb), "-q")
    assert code == 3 and res["status"] == "sleeping"
    assert cli("terminate", res["id"]).returncode == 0
    time.sleep(2.2)  # its timer is due now
    with Engine() as eng:
        assert eng.store.timers() == []  # terminate dropped its timer: nothing fires it
        assert not eng.suspensions.wake_if_due(eng._instance(res["id"]))
        assert eng.status(res["id"]).status == Status.TERMINATED
    proc = cli("resume", res["id"])
    assert proc.returncode == 2 and "terminated" in proc.stderr


# -- unpause, sleeps ------------------------------------------------------------------


def test_unpause_delivers_an_event_kept_while_paused(home: Path, tmp_path: Path):
    nb = write_nb(
        tmp_path / "w.ipynb",
        ["import durabook\nanswer = durabook.wait_for_event('go')", "print(answer)"],
    )
    code, res = cli_json("run", str(nb), "-q")
    assert code == 3 and res["status"] == "waiting"
    iid = res["id"]
    assert cli("pause", iid).returncode == 0
    assert cli("send-event", iid, "go", "--data", '{"n": 7}').returncode == 0
    assert _status(iid)["status"] == "paused"  # kept, not delivered, while paused
    proc = cli("unpause", iid, "--json", "-q")
    assert proc.returncode == 0, proc.stderr
    st = _status(iid)
    assert st["status"] == "completed"
    assert outputs_text(st["output"])[1] == "{'n': 7}\n"


def test_unpause_of_a_sleeper_not_yet_due_exits_3(home: Path, tmp_path: Path):
    nb = write_nb(tmp_path / "s.ipynb", ["import durabook\ndurabook.sleep('1h')", "x = 1"])
    code, res = cli_json("run", str(nb), "-q")
    assert code == 3
    assert cli("pause", res["id"]).returncode == 0
    proc = cli("unpause", res["id"])
    assert proc.returncode == 3 and "sleeping" in proc.stderr


def test_short_sleeps_complete_in_the_process(home: Path, tmp_path: Path):
    nb = write_nb(
        tmp_path / "z.ipynb",
        [
            "import durabook, os\npid = os.getpid()\ndurabook.sleep('0s')\ndurabook.sleep(0.3)",
            "import durabook\ndurabook.sleep('500ms')\nsame = os.getpid() == pid",
            "print(same)",
        ],
    )
    code, res = cli_json("run", str(nb), "-q")
    assert code == 0 and res["status"] == "completed"
    assert outputs_text(res["output"])[2] == "True\n"  # one kernel: never suspended


def test_a_due_sleeper_is_resumed_by_resume_without_serve(home: Path, tmp_path: Path):
    nb = write_nb(tmp_path / "s.ipynb", ["import durabook\ndurabook.sleep('2s')", "print('up')"])
    code, res = cli_json("run", str(nb), "-q")
    assert code == 3
    proc = cli("resume", res["id"])
    assert proc.returncode == 2 and "--now" in proc.stderr  # not due yet: says how
    time.sleep(2.1)
    code, done = cli_json("resume", res["id"], "-q")
    assert code == 0 and outputs_text(done["output"])[1] == "up\n"


def test_resume_now_wakes_a_sleeper_early(home: Path, tmp_path: Path):
    nb = write_nb(tmp_path / "s.ipynb", ["import durabook\ndurabook.sleep('1d')", "print('up')"])
    code, res = cli_json("run", str(nb), "-q")
    assert code == 3
    started = time.monotonic()
    code, done = cli_json("resume", res["id"], "--now", "-q")
    assert code == 0 and done["status"] == "completed"
    assert time.monotonic() - started < 60
    assert Client().status(res["id"]).status == Status.COMPLETED


def test_a_failing_commit_is_recorded_and_resume_recovers_the_journaled_cells(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    from concurrent.futures import Future

    log = tmp_path / "ran.log"
    nb = write_nb(
        tmp_path / "c.ipynb",
        [f"with open({str(log)!r}, 'a') as f:\n    f.write('{i}\\n')" for i in range(3)],
    )
    with Engine() as eng:
        iid, _ = eng.create(nb)

        def broken(rows: object) -> Future[object]:
            fut: Future[object] = Future()
            fut.set_exception(OSError("I/O error writing the store"))
            return fut

        monkeypatch.setattr(eng.writer, "submit_steps", broken)
        with pytest.raises(OSError):
            eng.execute(iid)
        monkeypatch.undo()
        st = eng.status(iid)
        assert st.status == Status.FAILED and st.error and "I/O error" in st.error.evalue
        # the cells were journaled before the store failed: resume copies them in and
        # runs none of them again
        assert eng.resume(iid).status == Status.COMPLETED
        assert [c.status.value for c in eng.status(iid).cells] == ["committed"] * 3
    assert log.read_text() == "0\n1\n2\n"
