"""durabook.sleep / wait_for_event: instances suspend without a kernel and wake exactly once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from durabook import Client, Status
from durabook_kernel.primitives import parse_duration

from .conftest import cli, cli_json, outputs_text, write_nb


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def _poll(iid: str, want: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        code, st = cli_json("status", iid)
        if code == 0 and st["status"] == want:
            return st
        time.sleep(0.2)
    raise AssertionError(f"{iid} never became {want}: {st}")


def test_sleep_suspends_without_a_kernel_and_resumes_after(home: Path, tmp_path: Path):
    pid_file = tmp_path / "pid"
    nb = write_nb(
        tmp_path / "nap.ipynb",
        [
            f"import os, durabook\nopen({str(pid_file)!r}, 'w').write(str(os.getpid()))\nn = 1",
            "durabook.sleep('1s')\nn += 1",
            "print('woke', n)",
        ],
    )
    code, res = cli_json("run", str(nb), "-q")
    assert code == 3 and res["status"] == "sleeping"
    assert _gone(int(pid_file.read_text()))  # a sleeping instance holds no kernel
    code, st = cli_json("status", res["id"])
    assert st["wake_at"] and [c["status"] for c in st["cells"]] == [
        "committed",
        "pending",
        "pending",
    ]
    early = cli("resume", res["id"])
    if early.returncode == 2:  # not due yet: refused, and nothing changed
        assert "sleeps until" in early.stderr
        time.sleep(1.1)
    done = Client().resume(res["id"]) if early.returncode == 2 else Client().status(res["id"])
    assert done.status == Status.COMPLETED
    assert outputs_text(done.output or "")[2] == "woke 2\n"


def test_events_are_kept_until_awaited_and_delivered_once(home: Path, tmp_path: Path):
    nb = write_nb(
        tmp_path / "bill.ipynb",
        [
            "import durabook\nstage = 'draft'",
            "first = durabook.wait_for_event('approval')\nstage = 'approved'",
            "second = durabook.wait_for_event('approval')",
            "print(first, second, stage)",
        ],
    )
    client = Client()
    res = client.run(nb)
    assert res.status == Status.WAITING and res.exit_code == 3
    # two events: the first wakes the waiting cell, the second is kept for the next wait
    code, out = cli_json("send-event", res.id, "approval", "--data", '{"by": "ada"}', "-q")
    assert code == 3 and out["status"] == "waiting"
    code, out = cli_json("send-event", res.id, "approval", "--data", '"bob"', "-q")
    assert code == 0 and out["status"] == "completed"
    assert outputs_text(out["output"])[3] == "{'by': 'ada'} bob approved\n"


def test_an_event_payload_reaches_the_cell_as_sent(home: Path, tmp_path: Path):
    # a run's plan (with the payloads it resumes with) travels to the kernel as JSON
    # text: NaN and non-ASCII survive it
    nb = write_nb(
        tmp_path / "odd.ipynb",
        ["import durabook, math\ngot = durabook.wait_for_event('reading')", "print(got)"],
    )
    res = Client().run(nb)
    assert res.status == Status.WAITING
    data = '{"v": NaN, "who": "Zoë 東"}'
    code, out = cli_json("send-event", res.id, "reading", "--data", data, "-q")
    assert code == 0 and out["status"] == "completed", out
    assert outputs_text(out["output"])[1] == "{'v': nan, 'who': 'Zoë 東'}\n"


def test_an_event_sent_before_the_wait_is_not_lost(home: Path, tmp_path: Path):
    nb = write_nb(
        tmp_path / "early.ipynb",
        [
            "import durabook\ndurabook.sleep('1s')",
            "got = durabook.wait_for_event('go')\nprint(got)",
        ],
    )
    client = Client()
    res = client.run(nb)
    assert res.status == Status.SLEEPING
    code, out = cli_json("send-event", res.id, "go", "--data", "[1, 2]")
    assert code == 0 and out == {"id": res.id, "event": "go", "delivered": False}
    time.sleep(1.1)
    done = client.resume(res.id)  # sleeps no more, then finds the event waiting
    assert done.status == Status.COMPLETED
    assert outputs_text(done.output or "")[1] == "[1, 2]\n"


def test_wait_timeout_raises_event_timeout_in_the_resumed_cell(home: Path, tmp_path: Path):
    nb = write_nb(
        tmp_path / "late.ipynb",
        [
            "import durabook\ntry:\n    durabook.wait_for_event('reply', timeout='0.3s')\n"
            "    outcome = 'replied'\nexcept durabook.EventTimeout:\n    outcome = 'timed out'",
            "print(outcome)",
        ],
    )
    client = Client()
    res = client.run(nb)
    assert res.status == Status.WAITING
    time.sleep(0.4)
    done = client.resume(res.id)
    assert done.status == Status.COMPLETED
    assert outputs_text(done.output or "")[1] == "timed out\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("nosuch", "go"), "error: unknown instance 'nosuch'"),
        (("ID", "go", "--data", "{nope"), "error: event data is not JSON"),
        (("DONE", "go"), "is completed: it takes no events"),
    ],
)
def test_bad_events_exit_2_and_change_nothing(
    home: Path, tmp_path: Path, args: tuple[str, ...], message: str
):
    client = Client()
    waiting = client.run(
        write_nb(tmp_path / "w.ipynb", ["import durabook\ndurabook.wait_for_event('go')"])
    )
    done = client.run(write_nb(tmp_path / "d.ipynb", ["x = 1"]))
    args = tuple(waiting.id if a == "ID" else done.id if a == "DONE" else a for a in args)
    before = client.status(waiting.id)
    proc = cli("send-event", *args)
    assert proc.returncode == 2 and proc.stderr.startswith("error:") and message in proc.stderr
    assert client.status(waiting.id) == before


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        (600, 600.0),
        ("10m", 600.0),
        ("1h30m", 5400.0),
        ("2d", 172800.0),
        ("1.5s", 1.5),
        ("250ms", 0.25),
        ("45", 45.0),
    ],
)
def test_durations(text: object, seconds: float):
    assert parse_duration(text) == seconds  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [-1, "-5m", "soon", "", "10x", True])
def test_bad_durations(bad: object):
    with pytest.raises(ValueError):
        parse_duration(bad)  # type: ignore[arg-type]


def test_bad_sleep_fails_its_cell_clearly(home: Path, tmp_path: Path):
    res = Client().run(write_nb(tmp_path / "b.ipynb", ["import durabook\ndurabook.sleep('-3s')"]))
    assert res.status == Status.FAILED
    assert res.error is not None and res.error.ename == "ValueError"
    assert "cannot be negative" in res.error.evalue


def test_serve_fires_timers_and_survives_sigkill(home: Path, tmp_path: Path):
    sleeper = write_nb(
        tmp_path / "s.ipynb", ["import durabook\ndurabook.sleep('2s')", "print('slept')"]
    )
    waiter = write_nb(
        tmp_path / "w.ipynb",
        ["import durabook\nv = durabook.wait_for_event('go')", "print('got', v)"],
    )

    def start() -> subprocess.Popen[str]:
        p = subprocess.Popen(
            [sys.executable, "-m", "durabook", "serve"], stderr=subprocess.PIPE, text=True
        )
        assert p.stderr is not None and "durabook engine for" in p.stderr.readline()
        return p

    engine = start()
    try:
        code, s = cli_json("run", str(sleeper), "-q")
        assert code == 3 and s["status"] == "sleeping"
        code, w = cli_json("run", str(waiter), "-q")
        assert code == 3 and w["status"] == "waiting"
        engine.send_signal(signal.SIGKILL)  # the engine dies while they sleep and wait
        engine.wait(timeout=30)
        code, out = cli_json("send-event", w["id"], "go", "--data", "7")  # embedded: resumes
        assert code == 0 and out["status"] == "completed"
        engine = start()
        st = _poll(s["id"], "completed")  # the timer was not lost
        assert outputs_text(st["output"])[1] == "slept\n"
        assert outputs_text(out["output"])[1] == "got 7\n"
        code, _ = cli_json("send-event", w["id"], "go")  # delivered once: now finished
        assert code == 2
    finally:
        engine.send_signal(signal.SIGTERM)
        engine.wait(timeout=30)


def test_code_above_a_sleep_is_warned_about(home: Path, tmp_path: Path):
    nb = write_nb(
        tmp_path / "warn.ipynb",
        [
            "import durabook",
            "x = 1\ndurabook.sleep('1s')",
            "# a comment is fine above it\ndurabook.sleep('1s')",
        ],
    )
    client = Client()
    res = client.run(nb)
    time.sleep(1.1)
    res = client.resume(res.id)
    time.sleep(1.1)
    res = client.resume(res.id)
    assert res.status == Status.COMPLETED
    texts = outputs_text(res.output or "")
    assert "code above sleep() in this cell runs again" in texts[1]
    assert texts[2] == ""


def test_an_instance_running_when_the_engine_dies_resumes_from_its_last_commit(
    home: Path, tmp_path: Path
):
    log, gate, started = tmp_path / "log", tmp_path / "gate", tmp_path / "started"
    nb = write_nb(
        tmp_path / "r.ipynb",
        [
            f"with open({str(log)!r}, 'a') as fh:\n    fh.write('a\\n')",
            f"import os, time\nopen({str(started)!r}, 'w').close()\n"
            f"while not os.path.exists({str(gate)!r}):\n    time.sleep(0.05)",
            "print('done')",
        ],
    )
    engine = subprocess.Popen(
        [sys.executable, "-m", "durabook", "serve"], stderr=subprocess.PIPE, text=True
    )
    try:
        assert engine.stderr is not None and "durabook engine" in engine.stderr.readline()
        runner = subprocess.Popen(
            [sys.executable, "-m", "durabook", "run", str(nb), "-q"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert runner.stdout is not None
        iid = runner.stdout.readline().strip()
        deadline = time.monotonic() + 60
        while not started.exists():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(0.3)
        engine.send_signal(signal.SIGKILL)  # the run executes inside the engine
        engine.wait(timeout=30)
        runner.communicate(timeout=60)
        gate.touch()
        engine = subprocess.Popen(
            [sys.executable, "-m", "durabook", "serve"], stderr=subprocess.PIPE, text=True
        )
        assert engine.stderr is not None and "durabook engine" in engine.stderr.readline()
        st = _poll(iid, "completed")
        assert outputs_text(st["output"])[2] == "done\n"
        assert log.read_text() == "a\n"  # the committed cell did not run again
    finally:
        engine.send_signal(signal.SIGTERM)
        engine.wait(timeout=30)
