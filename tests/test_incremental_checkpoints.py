"""Only what a cell changed is written; unchanged large objects are not written again."""

from __future__ import annotations

import json
from pathlib import Path

from durabook import Client, Status
from durabook.engine import Engine

from .conftest import outputs_text, write_nb


def _saved_names(home: Path, iid: str) -> list[set[str]]:
    with Engine(home) as eng:
        rows = eng.store.steps(iid)
    out = []
    for row in rows:
        state = json.loads(row["state"] or "{}")
        out.append({n for n in state.get("vars", {}) if not n.startswith("__")})
    return out


def _blob_files(home: Path) -> set[Path]:
    return {p for p in (home / "blobs").rglob("*") if p.is_file()}


def test_each_cell_saves_only_what_it_changed(home: Path, tmp_path: Path):
    nb = write_nb(
        tmp_path / "inc.ipynb",
        [
            "import numpy as np\nbig = np.ones(500_000)\nsmall = [1, 2]",
            "small.append(3)",  # mutated in place: saved again
            "other = 5",  # big and small untouched: not saved
            "alias = small\nalias.append(4)",  # shared object: one payload, restored as one
            "del other",
            "import os\nassert os.path.exists('go.flag')\n"
            "print(small is alias, small, 'other' in dir())",
        ],
    )
    client = Client()
    first = client.run(nb)
    assert first.failed_cell == 5
    saved = _saved_names(home, first.id)
    assert saved[0] == {"np", "big", "small"}
    assert saved[1] == {"small"}
    assert saved[2] == {"other"}
    assert saved[3] == {"small", "alias"}
    assert saved[4] == set()

    (tmp_path / "go.flag").touch()
    before = _blob_files(home)
    res = client.resume(first.id)
    assert res.status == Status.COMPLETED
    assert outputs_text(res.output)[5] == "True [1, 2, 3, 4] False\n"
    # the 4 MB array (two 2 MiB pieces) was written once, by the first cell, never again
    big = [p for p in before if p.stat().st_size > 1_500_000]
    assert len(big) == 2
    assert _blob_files(home) == before


def test_identical_content_is_stored_once(home: Path, tmp_path: Path):
    nb = write_nb(
        tmp_path / "same.ipynb",
        [
            "import numpy as np\na = np.zeros(300_000)",
            "b = np.zeros(300_000)",  # another object, same bytes: same blob
        ],
    )
    res = Client().run(nb)
    assert res.status == Status.COMPLETED
    sizes = [p.stat().st_size for p in _blob_files(home) if p.stat().st_size > 2_000_000]
    assert len(sizes) == 1


def test_a_resumed_cell_draws_what_its_failed_attempt_drew(home: Path, tmp_path: Path):
    # no committed cell drew or seeded: the generator's state as the run started is
    # still saved, so the cell that failed after a draw (a random idempotency key, a
    # sample) draws the same again when it is resumed on a fresh kernel
    nb = write_nb(
        tmp_path / "r.ipynb",
        [
            "x = 1",
            "import os, random\nk = random.getrandbits(64)\n"
            "with open('draws.txt', 'a') as fh:\n    fh.write(f'{k}\\n')\n"
            "assert os.path.exists('go.flag')",
        ],
    )
    client = Client()
    first = client.run(nb)
    assert first.failed_cell == 1
    (tmp_path / "go.flag").touch()
    assert client.resume(first.id).status == Status.COMPLETED
    draws = (tmp_path / "draws.txt").read_text().split()
    assert len(draws) == 2 and draws[0] == draws[1]
