"""State that cannot be saved is reported by name and type; resume replays or refuses."""

from __future__ import annotations

from pathlib import Path

from durabook import Client, Status

from .conftest import cli_json, outputs_text, write_nb


def test_unsaveable_values_are_reported_in_status(home: Path, tmp_path: Path):
    nb = write_nb(
        tmp_path / "u.ipynb",
        [
            "import threading, socket\n"
            "fh = open(__import__('os').devnull)\n"
            "gen = (i for i in range(3))\n"
            "lock = threading.Lock()\n"
            "sock = socket.socket()",
            "with open(__import__('os').devnull) as closed:\n    pass\nok = 1",
        ],
    )
    res = Client().run(nb)
    assert res.status == Status.COMPLETED
    code, st = cli_json("status", res.id)
    assert code == 0
    unsaved = st["cells"][0]["unserializable"]
    assert set(unsaved) == {"fh", "gen", "lock", "sock"}
    assert unsaved["fh"]["type"] == "_io.TextIOWrapper"
    assert unsaved["gen"]["type"] == "generator"
    assert unsaved["sock"]["type"] == "socket.socket"
    assert "lock" in unsaved["lock"]["type"]
    assert st["cells"][1]["unserializable"] == {}  # a closed file holds no state


def test_resume_refuses_naming_the_variable_and_the_cell(home: Path, tmp_path: Path):
    nb = write_nb(
        tmp_path / "r.ipynb",
        [
            "x = 1",
            "fh = open(__import__('os').devnull)",
            "import os\nassert os.path.exists('go.flag')",
        ],
    )
    client = Client()
    first = client.run(nb)
    assert first.failed_cell == 2
    (tmp_path / "go.flag").touch()
    res = client.resume(first.id)
    assert res.status == Status.FAILED
    assert res.error is not None and res.error.ename == "UnrestorableState"
    assert "'fh'" in res.error.evalue and "cell 1" in res.error.evalue
    assert "_io.TextIOWrapper" in res.error.evalue


def test_replay_cells_rebuild_state_on_resume(home: Path, tmp_path: Path):
    log = tmp_path / "connects.log"
    nb = write_nb(
        tmp_path / "replay.ipynb",
        [
            "rows = [1, 2, 3]",
            # marked by a first-line comment: re-run on resume to rebuild the connection
            f"# durabook: replay\nimport sqlite3\nopen({str(log)!r}, 'a').write('connect\\n')\n"
            "conn = sqlite3.connect(':memory:')\nconn.execute('create table t (v)')\n"
            "total = 0",
            "conn.executemany('insert into t values (?)', [(r,) for r in rows])\ntotal = 6",
            ("events = iter(range(5))", ["durabook-replay"]),  # marked by a tag
            "import os\nassert os.path.exists('go.flag')\n"
            "print(conn.execute('select count(*) from t').fetchone()[0], total, next(events))",
        ],
    )
    client = Client()
    first = client.run(nb)
    assert first.failed_cell == 4
    (tmp_path / "go.flag").touch()
    res = client.resume(first.id)
    assert res.status == Status.COMPLETED, res.error
    # the replayed cell made a new, empty table; `total` keeps its saved value, not 0
    assert outputs_text(res.output)[4] == "0 6 0\n"
    assert log.read_text() == "connect\nconnect\n"
