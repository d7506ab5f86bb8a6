"""The command line and Python API contract that scripts and other tools rely on."""

from __future__ import annotations

import json
import time
from pathlib import Path

from durabook import Client, InstanceStatus, RunResult, Status

from .conftest import cli, cli_json, write_nb


def test_run_prints_the_id_first_and_json_on_request(home: Path, tmp_path: Path):
    nb = write_nb(tmp_path / "ok.ipynb", ["x = 1", "print(x)"])
    proc = cli("run", str(nb))
    assert proc.returncode == 0
    iid = proc.stdout.splitlines()[0]
    assert iid and " " not in iid
    assert "completed" in proc.stderr

    code, res = cli_json("run", str(nb), "--output", str(tmp_path / "out.ipynb"))
    assert code == 0
    assert set(res) == {"id", "status", "failed_cell", "output"}
    assert res["status"] == "completed" and res["failed_cell"] is None
    assert res["output"] == str(tmp_path / "out.ipynb") and Path(res["output"]).exists()


def test_status_json_shape(home: Path, tmp_path: Path):
    nb = write_nb(tmp_path / "f.ipynb", ["x = 1", "raise ValueError('boom')", "y = 2"])
    code, res = cli_json("run", str(nb))
    assert code == 1 and res["status"] == "failed" and res["failed_cell"] == 1
    code, st = cli_json("status", res["id"])
    assert code == 0
    for key in (
        "id",
        "status",
        "notebook",
        "version",
        "created_at",
        "updated_at",
        "failed_cell",
        "error",
        "cells",
    ):
        assert key in st
    assert st["error"]["ename"] == "ValueError" and st["error"]["evalue"] == "boom"
    assert any("boom" in line for line in st["error"]["traceback"])
    assert [c["status"] for c in st["cells"]] == ["committed", "failed", "pending"]
    for c in st["cells"]:
        assert {"index", "cell_id", "status", "attempts", "started_at", "duration_ms"} <= set(c)
    assert st["cells"][0]["attempts"] == 1 and st["cells"][2]["attempts"] == 0
    human = cli("status", res["id"])
    assert human.returncode == 0 and "failed at cell 1: ValueError: boom" in human.stdout


def test_list_newest_first_and_by_status(home: Path, tmp_path: Path):
    ok = write_nb(tmp_path / "ok.ipynb", ["x = 1"])
    bad = write_nb(tmp_path / "bad.ipynb", ["1/0"])
    client = Client()
    ids = []
    for nb in (ok, bad, ok):
        ids.append(client.run(nb).id)
        time.sleep(0.01)
    _, items = cli_json("list")
    assert [i["id"] for i in items] == ids[::-1]
    _, failed = cli_json("list", "--status", "failed")
    assert [i["id"] for i in failed] == [ids[1]]
    assert [i.id for i in client.list(status="completed")] == [ids[2], ids[0]]


def test_python_client_returns_models(home: Path, tmp_path: Path):
    nb = write_nb(tmp_path / "ok.ipynb", ["x = 1"])
    client = Client()
    res = client.run(nb, id="my-run-1")
    assert isinstance(res, RunResult) and res.id == "my-run-1"
    st = client.status("my-run-1")
    assert isinstance(st, InstanceStatus) and st.status == Status.COMPLETED
    assert json.loads(st.model_dump_json())["status"] == "completed"
    again = client.run(nb, id="my-run-1")  # the same id never makes a second instance
    assert again.id == "my-run-1" and len(client.list()) == 1


def test_home_defaults_to_dot_durabook_in_the_working_directory(tmp_path: Path, monkeypatch):
    monkeypatch.delenv("DURABOOK_HOME", raising=False)
    nb = write_nb(tmp_path / "ok.ipynb", ["x = 1"])
    proc = cli("run", str(nb), cwd=tmp_path)
    assert proc.returncode == 0
    assert (tmp_path / ".durabook" / "durabook.duckdb").exists()
    assert (tmp_path / ".durabook" / "blobs").is_dir()
