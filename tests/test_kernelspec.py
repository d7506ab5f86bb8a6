"""Only Python 3 notebooks run: another language's (or Python 2's) is refused up front."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from durabook import Client, Status
from durabook.engine import Engine
from durabook.errors import InvalidNotebook

from .conftest import cli, write_nb


def _nb(path: Path, marker: Path, metadata: dict[str, Any]) -> Path:
    """A notebook whose one cell is valid Python that leaves ``marker`` when it runs."""
    cell = new_code_cell(f"open({str(marker)!r}, 'w').write('ran')")
    cell.id = "c0"
    nbformat.write(new_notebook(cells=[cell], metadata=metadata), path)
    return path


REFUSED = {
    "R": (
        {"kernelspec": {"name": "ir", "language": "R", "display_name": "R"}},
        "uses the kernel 'ir' (R); durabook runs Python 3 notebooks",
    ),
    "julia": (
        {"kernelspec": {"name": "julia-1.9", "language": "julia", "display_name": "Julia 1.9"}},
        "uses the kernel 'julia-1.9' (julia); durabook runs Python 3 notebooks",
    ),
    "julia, no language": (
        {"kernelspec": {"name": "julia-1.9", "display_name": "Julia 1.9"}},
        "uses the kernel 'julia-1.9' (julia); durabook runs Python 3 notebooks",
    ),
    "python2 spec": (
        {"kernelspec": {"name": "python2", "language": "python", "display_name": "Python 2"}},
        "uses the kernel 'python2' (Python 2); durabook runs Python 3 notebooks",
    ),
    "python 2 language_info, no kernelspec": (
        {"language_info": {"name": "python", "version": "2.7.18"}},
        "was saved by Python 2.7.18 (language_info) and names no kernel; durabook runs "
        "Python 3 notebooks",
    ),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_other_kernels_are_refused_not_run_in_python(home: Path, tmp_path: Path, case: str):
    metadata, message = REFUSED[case]
    marker = tmp_path / "ran"
    nb = _nb(tmp_path / "other.ipynb", marker, metadata)
    proc = cli("run", str(nb))
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    assert proc.stderr == f"error: {nb} {message}\n"
    assert not marker.exists()  # never run in a Python kernel
    assert Client().list() == []


@pytest.mark.parametrize(
    "metadata",
    [
        {},
        {"kernelspec": {"name": "my-venv", "language": "python", "display_name": "venv"}},
        # as papermill's test_logging.ipynb: the kernelspec decides, not a stale language_info
        {
            "kernelspec": {"name": "python3", "language": "python", "display_name": "Python 3"},
            "language_info": {"name": "python", "version": "2.7.12"},
        },
    ],
    ids=["no kernelspec", "a venv's python kernel", "python3 saved by 2.7"],
)
def test_python_notebooks_run(home: Path, tmp_path: Path, metadata: dict[str, Any]):
    marker = tmp_path / "ran"
    proc = cli("run", str(_nb(tmp_path / "py.ipynb", marker, metadata)), "-q")
    assert proc.returncode == 0, proc.stderr
    assert marker.read_text() == "ran"


def test_resume_with_an_r_notebook_is_refused(home: Path, tmp_path: Path):
    nb = write_nb(tmp_path / "f.ipynb", ["1/0"])
    iid = Client().run(nb).id
    r_nb = _nb(tmp_path / "r.ipynb", tmp_path / "ran", REFUSED["R"][0])
    proc = cli("resume", iid, "--notebook", str(r_nb))
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"error: {r_nb} uses the kernel 'ir' (R)")
    assert len(proc.stderr.splitlines()) == 1
    assert not (tmp_path / "ran").exists()
    assert Client().status(iid).status == Status.FAILED


def test_a_notebook_handed_over_in_memory_is_checked_too(home: Path, tmp_path: Path):
    """papermill's engine passes a NotebookNode: parse_notebook applies the same check."""
    nb = nbformat.read(_nb(tmp_path / "r.ipynb", tmp_path / "ran", REFUSED["R"][0]), 4)
    with Engine() as eng, pytest.raises(InvalidNotebook, match=r"kernel 'ir' \(R\)"):
        eng.create(nb, source_path="r.ipynb")
