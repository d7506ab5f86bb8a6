"""The command line and Python API contract that scripts and other tools rely on."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from durabook import Client, InstanceStatus, RunResult, Status
from durabook.engine import Engine

from .conftest import cli, cli_json, outputs_text, write_nb


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


def test_the_replay_tag_added_on_resume_rebuilds_unsaveable_state(home: Path, tmp_path: Path):
    """What the UnrestorableState message advises works: tag the cell, resume --notebook."""
    counts, data, flag = tmp_path / "counts", tmp_path / "data.txt", tmp_path / "flag"
    counts.mkdir()
    data.write_text("hello")

    def counted(name: str, body: str) -> str:
        return f"with open({str(counts / name)!r}, 'a') as _f:\n    _f.write('.')\n{body}"

    cells: list[Any] = [
        counted("c0", "x = 1"),
        counted("c1", f"fh = open({str(data)!r})"),  # an open file: cannot be saved
        f"import os\nassert os.path.exists({str(flag)!r}), 'no flag yet'\nprint(fh.read(), x)",
    ]
    nb = write_nb(tmp_path / "wf.ipynb", cells)
    code, res = cli_json("run", str(nb), "-q")
    assert code == 1 and res["failed_cell"] == 2
    flag.touch()

    proc = cli("resume", res["id"], "-q")
    assert proc.returncode == 1
    assert "UnrestorableState: cannot restore 'fh'" in proc.stderr
    assert "tag 'durabook-replay'" in proc.stderr

    cells[1] = (cells[1], ["durabook-replay"])  # the only change: a tag
    edited = write_nb(tmp_path / "edited.ipynb", cells)
    code, res = cli_json("resume", res["id"], "--notebook", str(edited), "-q")
    assert code == 0, res
    assert outputs_text(res["output"])[2] == "hello 1\n"
    assert (counts / "c0").read_text() == "."  # committed before the change: not run again
    assert (counts / "c1").read_text() == ".."  # replayed once, to reopen the file


def _closed_stdout(*args: str) -> tuple[int, str]:
    """Run the CLI with nobody reading its stdout (`durabook ... | head -0`)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "durabook", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    proc.stdout.close()  # before the child writes: its first write meets a closed pipe
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err


def test_a_closed_stdout_gives_no_traceback(home: Path, tmp_path: Path):
    nb = write_nb(tmp_path / "ok.ipynb", ["x = 1"])
    iid = Client().run(nb).id
    for args in (("list",), ("status", iid), ("list", "--json"), ("status", iid, "--json")):
        code, err = _closed_stdout(*args)
        assert err == "", args
        assert code == 141, args  # 128 + SIGPIPE, as `yes | head -1` reports
    code, err = _closed_stdout("run", str(nb), "-q")  # the id cannot be printed: runs anyway
    assert "Traceback" not in err and "completed" in err
    assert code == 0
    assert [i.status for i in Client().list()] == [Status.COMPLETED, Status.COMPLETED]


def test_list_piped_into_head(home: Path, tmp_path: Path):
    nb = write_nb(tmp_path / "ok.ipynb", ["x = 1"])
    with Engine() as eng:  # more lines than a pipe holds: `list` blocks, then head exits
        for _ in range(1000):
            eng.create(nb)
    proc = subprocess.run(
        [
            "bash",
            "-c",
            'set -o pipefail; "$0" -m durabook list --limit 5000 | head -1',
            sys.executable,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.stderr == ""
    assert len(proc.stdout.splitlines()) == 1 and "queued" in proc.stdout
    assert proc.returncode == 141


def test_commands_that_talk_to_an_engine_import_nothing_heavy(home: Path, tmp_path: Path):
    """`submit`, `status`, `list`, `send-event` with an engine serving load neither the
    store (DuckDB) nor kernels' or notebooks' code: what keeps them at about 0.2 s."""
    nb = write_nb(tmp_path / "t.ipynb", ["import durabook\ndurabook.wait_for_event('go')"])
    serve = subprocess.Popen(
        [sys.executable, "-m", "durabook", "serve", "--concurrency", "1", "--warm", "0"],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert serve.stderr is not None and "durabook engine" in serve.stderr.readline()
        probe = (
            "import sys, durabook.cli as c\n"
            "code = c.main(sys.argv[1:])\n"
            "heavy = ('duckdb', 'nbformat', 'jupyter_client', 'tornado', 'IPython', 'zmq')\n"
            "print('LOADED', sorted(m for m in heavy if m in sys.modules), code)\n"
        )
        sub = subprocess.run(
            [sys.executable, "-c", probe, "submit", str(nb)], capture_output=True, text=True
        )
        iid = sub.stdout.split()[0]
        for args in (["status", iid], ["list"], ["send-event", iid, "later"]):
            out = subprocess.run(
                [sys.executable, "-c", probe, *args], capture_output=True, text=True
            )
            assert "LOADED [] 0" in out.stdout, (args, out.stdout, out.stderr)
        assert "LOADED [] 0" in sub.stdout, sub.stdout
    finally:
        serve.terminate()
        serve.wait(30)
