"""Resume with an edited notebook keeps the checkpoints before the first changed cell."""

from __future__ import annotations

from pathlib import Path

import nbformat

from durabook import Client, Status

from .conftest import cli_json, outputs_text, write_nb


def test_fixing_the_failed_cell_resumes_there(home: Path, tmp_path: Path):
    log = tmp_path / "log.txt"
    cells = [
        f"open({str(log)!r}, 'a').write('load\\n')\nrows = [3, 1, 2]\nprint('loaded')",
        "total = sum(rows) / 0",  # the bug
        "print('total', total)",
    ]
    nb = write_nb(tmp_path / "wf.ipynb", cells, markdown_first=True)
    first = Client().run(nb)
    assert first.status == Status.FAILED and first.failed_cell == 2

    cells[1] = "total = sum(rows)"
    edited = write_nb(tmp_path / "wf_fixed.ipynb", cells, markdown_first=True)
    code, res = cli_json("resume", first.id, "--notebook", str(edited), "-q")
    assert code == 0 and res["status"] == "completed"
    assert log.read_text() == "load\n"  # cell 1 kept its checkpoint: not run again
    texts = outputs_text(res["output"])
    assert texts[1] == "loaded\n"  # the earlier cell's recorded output
    assert texts[3] == "total 6\n"

    out = nbformat.read(res["output"], as_version=4)
    assert out.metadata.durabook.instance_id == first.id
    assert out.cells[1].metadata.durabook.status == "committed"
    assert out.cells[2].metadata.durabook.attempts == 1  # a new cell: the old attempt dropped
    st = Client().status(first.id)
    assert [c.status.value for c in st.cells] == ["committed"] * 3


def test_an_edit_before_the_failure_reruns_from_the_edit(home: Path, tmp_path: Path):
    log = tmp_path / "log.txt"
    cells = [
        f"open({str(log)!r}, 'a').write('a\\n')\nx = 1",
        f"open({str(log)!r}, 'a').write('b\\n')\ny = x + 1",
        "z = y / 0",
    ]
    nb = write_nb(tmp_path / "wf.ipynb", cells)
    first = Client().run(nb)
    assert first.failed_cell == 2
    cells[1] = f"open({str(log)!r}, 'a').write('b2\\n')\ny = x + 10"
    cells[2] = "z = y * 2\nprint(z)"
    res = Client().resume(first.id, notebook=write_nb(tmp_path / "wf2.ipynb", cells))
    assert res.status == Status.COMPLETED
    assert log.read_text() == "a\nb\nb2\n"
    assert outputs_text(res.output)[2] == "22\n"


def test_edit_keeps_the_instance_parameters(home: Path, tmp_path: Path):
    cells = [("n = 1", ["parameters"]), "m = n * 2", "assert m > 100, m", "print(m)"]
    nb = write_nb(tmp_path / "p.ipynb", cells)
    first = Client().run(nb, {"n": 7})
    assert first.status == Status.FAILED and first.failed_cell == 3  # injected cell is 1
    cells[2] = "assert m == 14"
    res = Client().resume(first.id, notebook=write_nb(tmp_path / "p2.ipynb", cells))
    assert res.status == Status.COMPLETED
    assert outputs_text(res.output)[4] == "14\n"
