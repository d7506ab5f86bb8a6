"""One writer per home: other processes reach the engine that owns the store."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from durabook import Client, Status
from durabook_kernel.wire import socket_path

from .conftest import cli, cli_json, write_nb


def _wait_for(path: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def test_status_list_and_runs_while_another_process_runs(home: Path, tmp_path: Path):
    started, release = tmp_path / "started", tmp_path / "release"
    slow = write_nb(
        tmp_path / "slow.ipynb",
        [
            "x = 1",
            f"import os, time\nopen({str(started)!r}, 'w').close()\n"
            f"while not os.path.exists({str(release)!r}):\n    time.sleep(0.05)",
            "print('slow done')",
        ],
    )
    quick = write_nb(tmp_path / "quick.ipynb", ["y = 2", "print(y)"])
    owner = subprocess.Popen(
        [sys.executable, "-m", "durabook", "run", str(slow), "-q"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert owner.stdout is not None
        slow_id = owner.stdout.readline().strip()
        _wait_for(started)
        time.sleep(0.3)
        code, st = cli_json("status", slow_id)  # the store is locked: asked of the owner
        assert code == 0 and st["status"] == "running"
        assert [c["status"] for c in st["cells"]] == ["committed", "running", "pending"]
        code, items = cli_json("list", "--status", "running")
        assert [i["id"] for i in items] == [slow_id]
        code, res = cli_json("run", str(quick), "-q")  # executed by the owner's engine
        assert code == 0 and res["status"] == "completed"
        assert Client().status(res["id"]).status == Status.COMPLETED
    finally:
        release.touch()
        owner.communicate(timeout=60)
    assert owner.returncode == 0
    assert Client().status(slow_id).status == Status.COMPLETED


def test_serve_owns_the_home_and_a_second_serve_is_refused(home: Path, tmp_path: Path):
    server = subprocess.Popen(
        [sys.executable, "-m", "durabook", "serve"], stderr=subprocess.PIPE, text=True
    )
    try:
        assert server.stderr is not None
        assert "durabook engine for" in server.stderr.readline()
        nb = write_nb(tmp_path / "ok.ipynb", ["print('hi')"])
        code, res = cli_json("run", str(nb), "-q")
        assert code == 0 and res["status"] == "completed"
        second = cli("serve")
        assert second.returncode == 2
        assert "is in use by another durabook process (pid" in second.stderr
        code, items = cli_json("list")
        assert [i["id"] for i in items] == [res["id"]]
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
    assert server.returncode == 0
    assert json.loads(cli("list", "--json").stdout)[0]["id"] == res["id"]  # embedded again


def test_serve_exits_when_idle(home: Path):
    proc = subprocess.run(
        [sys.executable, "-m", "durabook", "serve", "--idle-timeout", "0.5"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0
    assert "durabook engine for" in proc.stderr
    assert not socket_path(home).exists()  # nothing left for clients to hang on
