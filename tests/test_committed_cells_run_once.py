"""A committed cell never runs again for its instance, across failures and resumes."""

from __future__ import annotations

from pathlib import Path

import pytest

from durabook import Client, Status
from durabook.errors import InvalidState

from .conftest import outputs_text, write_nb


def test_side_effect_runs_exactly_once_across_failure_and_resumes(home: Path, tmp_path: Path):
    log = tmp_path / "appends.txt"
    flag = tmp_path / "fixed.flag"
    nb = write_nb(
        tmp_path / "wf.ipynb",
        [
            "n = 1",
            f"with open({str(log)!r}, 'a') as fh:\n    fh.write('ran\\n')\nn += 1",
            f"import os\nassert os.path.exists({str(flag)!r}), 'input not ready'",
            "print('done', n)",
        ],
    )
    client = Client()
    first = client.run(nb)
    assert first.status == Status.FAILED and first.failed_cell == 2
    assert first.error and first.error.ename == "AssertionError"

    again = client.resume(first.id)  # still broken: fails again at the same cell
    assert again.status == Status.FAILED and again.failed_cell == 2

    flag.touch()
    done = client.resume(first.id)
    assert done.status == Status.COMPLETED and done.failed_cell is None
    assert log.read_text() == "ran\n"
    assert outputs_text(done.output)[3] == "done 2\n"

    st = client.status(first.id)
    assert [c.status.value for c in st.cells] == ["committed"] * 4
    assert [c.attempts for c in st.cells] == [1, 1, 3, 1]


def test_resume_of_completed_instance_is_refused(home: Path, tmp_path: Path):
    nb = write_nb(tmp_path / "ok.ipynb", ["x = 1"])
    client = Client()
    res = client.run(nb)
    assert res.status == Status.COMPLETED
    with pytest.raises(InvalidState, match="completed"):
        client.resume(res.id)


def test_an_instance_from_a_store_without_journal_names_resumes_after_its_commits(
    home: Path, tmp_path: Path
):
    # stores made before instances named their journal have NULL there, with steps:
    # such an instance is not mistaken for one that never ran
    from durabook.engine import Engine

    log = tmp_path / "appends.txt"
    flag = tmp_path / "fixed.flag"
    nb = write_nb(
        tmp_path / "old.ipynb",
        [
            f"with open({str(log)!r}, 'a') as fh:\n    fh.write('ran\\n')",
            f"import os\nassert os.path.exists({str(flag)!r})",
        ],
    )
    first = Client().run(nb)
    assert first.failed_cell == 1
    with Engine(home) as eng:  # as an older durabook left it
        eng.writer.call(lambda c: c.execute("UPDATE instances SET journal = NULL"))
        row = eng.store.instance_row(first.id)
        assert row is not None and row["journal"] is None
    flag.touch()
    assert Client().resume(first.id).status == Status.COMPLETED
    assert log.read_text() == "ran\n"
