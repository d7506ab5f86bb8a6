"""Many processes on one home: the first opens the store, the others reach it, and a
process whose engine leaves or dies is told so (or asks the next owner) — never a
traceback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from durabook.api.models import CreateRequest, IdRequest, ListRequest
from durabook.api.service import Service
from durabook_kernel.wire import socket_path

from .conftest import cli_json, outputs_text, write_nb

PROCS = 8
ROUNDS = int(os.environ.get("DURABOOK_TEST_ROUNDS", "20"))


def _popen(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "durabook", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for(path: Path, proc: subprocess.Popen[str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


@pytest.mark.slow
def test_eight_runs_at_once_on_one_home_all_complete(home: Path, tmp_path: Path):
    """Every round starts 8 `durabook run` together on one home: one becomes the engine,
    the others its clients; late ones meet an owner that is leaving and must go on
    with the next one (or open the store themselves). The same notebook makes every
    run write the same version blob and the same state blob at the same moment."""
    nb = write_nb(
        tmp_path / "tagged.ipynb",
        [
            ("tag = 'none'", ["parameters"]),
            "shared = list(range(20_000))  # one blob, written by every run",
            "print(f'{tag} saw {len(shared)}')",
        ],
    )
    ids: set[str] = set()
    started = time.monotonic()
    for r in range(ROUNDS):
        procs = {}
        for p in range(PROCS):
            tag = f"round{r}-proc{p}"
            out = tmp_path / f"{tag}.ipynb"
            procs[tag, out] = _popen("run", str(nb), "-p", "tag", tag, "--output", str(out))
        for (tag, out), proc in procs.items():
            stdout, stderr = proc.communicate(timeout=240)
            assert proc.returncode == 0, f"{tag}: {stderr}"
            assert "Traceback" not in stderr, stderr
            iid = stdout.split()[0]
            ids.add(iid)
            assert [t for t in outputs_text(out) if t] == [f"{tag} saw 20000\n"]
    elapsed = time.monotonic() - started
    print(f"{ROUNDS} rounds of {PROCS} runs: {elapsed:.1f} s")
    assert len(ids) == ROUNDS * PROCS
    code, items = cli_json("list", "--limit", "10000")
    assert code == 0
    assert {i["id"] for i in items} == ids
    assert {i["status"] for i in items} == {"completed"}


def test_a_client_whose_engine_is_killed_exits_4_with_one_line(home: Path, tmp_path: Path):
    started = tmp_path / "started"
    nb = write_nb(
        tmp_path / "sleepy.ipynb",
        [
            "x = 1",
            f"open({str(started)!r}, 'w').close()\nimport time\ntime.sleep(30)",
            "print('never')",
        ],
    )
    server = _popen("serve")
    try:
        assert server.stderr is not None
        assert "durabook engine for" in server.stderr.readline()
        _wait_for(socket_path(home), server)
        run = _popen("run", str(nb), "-q")
        _wait_for(started, run)
        os.kill(server.pid, signal.SIGKILL)
        t0 = time.monotonic()
        stdout, stderr = run.communicate(timeout=60)
        waited = time.monotonic() - t0
    finally:
        if server.poll() is None:
            server.kill()
        server.wait()
    iid = stdout.strip()
    assert run.returncode == 4, stderr
    assert "Traceback" not in stderr
    assert stderr.splitlines() == [
        f"error: the engine of {home} (pid {server.pid}) went away while serving `run`; "
        f"the instance continues from its last committed cell with `durabook resume {iid}`"
    ]
    assert waited < 10  # told at once, not after the cell's 30 s
    code, st = cli_json("status", iid)  # and the instance is not left `running`
    assert code == 0 and st["status"] != "running"
    assert st["cells"][0]["status"] == "committed"


def test_reads_go_on_when_the_engine_dies_under_them(home: Path, tmp_path: Path):
    """A `status` whose engine is killed asks again: it opens the store itself."""
    nb = write_nb(tmp_path / "ok.ipynb", ["print('ok')"])
    code, res = cli_json("run", str(nb), "-q")
    assert code == 0
    server = _popen("serve")
    try:
        assert server.stderr is not None
        assert "durabook engine for" in server.stderr.readline()
        _wait_for(socket_path(home), server)
        code, st = cli_json("status", res["id"])
        assert code == 0 and st["status"] == "completed"
        os.kill(server.pid, signal.SIGKILL)
        server.wait()
        # the socket file is left behind by the dead engine: clients get past it
        code, st = cli_json("status", res["id"])
        assert code == 0 and st["status"] == "completed"
    finally:
        if server.poll() is None:
            server.kill()
        server.wait()


def test_a_request_refused_by_a_leaving_owner_goes_to_the_next_one(home: Path, tmp_path: Path):
    """In process: a client holding a connection to an owner that drains and closes
    (without ever taking the request) sends it again to whoever owns the home next."""
    from durabook.control import ControlServer
    from durabook.engine import Engine
    from durabook.remote import RemoteEngine, _connect

    nb = write_nb(tmp_path / "ok.ipynb", ["print('handed over')"])
    eng = Engine(home)
    server = ControlServer(Service(eng))
    sock = _connect(home)
    assert sock is not None
    remote = RemoteEngine(home, sock, serve=True)
    try:
        server.drain()  # nothing in flight: from now on requests are refused unseen
        server.close()
        eng.close()
        res = remote.run(
            CreateRequest(notebook=str(nb))
        )  # the owner is gone: this process opens the store itself
        assert res.status.value == "completed"
        assert res.output is not None and outputs_text(res.output)[0] == "handed over\n"
        # and, serving now, it answers other processes
        sock2 = _connect(home)
        assert sock2 is not None
        other = RemoteEngine(home, sock2)
        assert [i.id for i in other.list(ListRequest()).items] == [res.id]
        other.close()
        assert remote.status(IdRequest(id=res.id)).status.value == "completed"
    finally:
        remote.close()
    assert not socket_path(home).exists()
