"""Crash recovery reads a run's own journal, once, for the cells it was made for.

- a process the kernel forked, outliving it, does not hold recovery off (the lock
  is not inherited), so a committed cell never runs again;
- what an older version of the notebook journaled is never filed under an edited
  cell (`resume --notebook` after a crash);
- two recoveries at once copy each record once;
- a journal another kernel planted under an instance's name is never read.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import nbformat

from durabook.engine import Engine

from .conftest import cli, cli_json, outputs_text, write_nb

KILL_RUNNER_ONCE = """\
import os, pathlib, signal
if not pathlib.Path({mark!r}).exists():
    pathlib.Path({mark!r}).touch()
    os.kill(os.getppid(), signal.SIGKILL)
"""


def test_a_forked_child_outliving_the_kernel_does_not_make_a_cell_run_again(
    home: Path, tmp_path: Path
):
    log, pidfile, mark = tmp_path / "side.log", tmp_path / "child.pid", tmp_path / "killed"
    nb = write_nb(
        tmp_path / "fork.ipynb",
        [
            "import os, time\npid = os.fork()\nif pid == 0:\n    time.sleep(30)\n    os._exit(0)\n"
            f"open({str(pidfile)!r}, 'w').write(str(pid))",
            f"with open({str(log)!r}, 'a') as f:\n    f.write('charged\\n')",
            KILL_RUNNER_ONCE.format(mark=str(mark)),
            "print('done')",
        ],
    )
    try:
        proc = cli("run", str(nb), "-q")
        assert proc.returncode == -signal.SIGKILL
        iid = proc.stdout.split()[0]
        started = time.monotonic()
        code, res = cli_json("resume", iid, "-q")
        assert code == 0 and res["status"] == "completed"
        assert time.monotonic() - started < 8  # no wait on a lock the child does not hold
        assert log.read_text() == "charged\n"
    finally:
        if pidfile.exists():
            os.kill(int(pidfile.read_text()), signal.SIGKILL)


def test_resume_with_an_edited_notebook_after_a_crash_runs_the_edited_cell(
    home: Path, tmp_path: Path
):
    mark = tmp_path / "killed"
    v1 = write_nb(
        tmp_path / "v1.ipynb",
        [
            "x = 1",
            "total = 100\nprint('v1 ran, total', total)",
            KILL_RUNNER_ONCE.format(mark=str(mark)),
            "print('end', total)",
        ],
    )
    proc = cli("run", str(v1), "-q")
    assert proc.returncode == -signal.SIGKILL
    iid = proc.stdout.split()[0]
    nb = nbformat.read(v1, as_version=4)
    nb.cells[1].source = "total = 200\nprint('v2 ran, total', total)"
    v2 = tmp_path / "v2.ipynb"
    nbformat.write(nb, v2)
    code, res = cli_json("resume", iid, "--notebook", str(v2), "-q")
    assert code == 0, res
    texts = outputs_text(res["output"])
    assert texts[1] == "v2 ran, total 200\n" and texts[3] == "end 200\n"


def test_two_recoveries_at_once_copy_each_record_once(home: Path, tmp_path: Path):
    mark = tmp_path / "killed"
    nb = write_nb(
        tmp_path / "r.ipynb",
        ["a = 1", "b = 2", "c = 3", KILL_RUNNER_ONCE.format(mark=str(mark)), "d = 4"],
    )
    proc = cli("run", str(nb), "-q")
    iid = proc.stdout.split()[0]
    (journal,) = (home / "journal").glob(f"{iid}.*.jnl")
    kept = journal.read_bytes()
    with Engine() as eng:  # opening it recovers the orphan once
        journal.write_bytes(kept)  # as if a second recovery had started from the same file
        threads = [
            threading.Thread(target=eng.recovery.recover_journals, args=(iid,)) for _ in range(4)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        rids = [r["rid"] for r in eng.store.steps(iid) if r["rid"]]
        assert len(rids) == len(set(rids)) and len(rids) >= 3
        # (the kernel may finish a cell or two while its dead runner's pipe reaches it)
        assert all(c.attempts <= 1 for c in eng.status(iid).cells)


def test_a_journal_planted_under_an_instances_name_is_never_read(home: Path, tmp_path: Path):
    flag, pwned = tmp_path / "flag", tmp_path / "pwned"
    nb = write_nb(
        tmp_path / "victim.ipynb",
        ["x = 1", f"import os\nassert os.path.exists({str(flag)!r})\ny = 2", "print(x, y)"],
    )
    code, res = cli_json("run", str(nb), "-q")
    assert code == 1 and res["failed_cell"] == 1
    iid = res["id"]
    # another kernel (same user, no sandbox) writes a forged "committed" record for
    # cell 1, whose state would run code when loaded
    import base64
    import pickle
    import zlib

    class Evil:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (open, (str(pwned), "w"))

    with Engine() as eng:
        row = eng.store.steps(iid)[-1]
    payload = pickle.dumps(Evil())
    record = {
        "t": "cell",
        "index": 1,
        "id": row["cell_id"],
        "hash": row["source_hash"],
        "status": "ok",
        "execution_count": 2,
        "started_at": time.time(),
        "duration_ms": 1,
        "outputs": [],
        "manifest": {
            "vars": {
                "y": {
                    "kind": "pickle",
                    "type": "int",
                    "digest": "0" * 64,
                    "inline": base64.b64encode(payload).decode(),
                }
            },
            "deleted": [],
            "unserializable": {},
        },
    }
    data = json.dumps(record).encode()
    planted = home / "journal" / f"{iid}.aaaaaaaaaaaa.jnl"
    planted.write_bytes(b"%08x %08x " % (len(data), zlib.crc32(data)) + data + b"\n")
    neighbour = home / "journal" / f"{iid}0.bbbbbbbbbbbb.jnl"  # not this instance's name
    neighbour.write_bytes(b"")

    flag.touch()
    code, res = cli_json("resume", iid, "-q")
    assert code == 0 and outputs_text(res["output"])[2] == "1 2\n"
    assert not pwned.exists() and not planted.exists()
    assert neighbour.exists()
    st = json.loads(cli("status", iid, "--json").stdout)
    assert st["cells"][1]["attempts"] == 2  # it ran again: the forged record did not count
