"""Parameters the papermill way, typed by the notebook's parameters cell."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

from durabook import Client, Status
from durabook.errors import InvalidParameter

from .conftest import cli, outputs_text, write_nb

PARAMS = (
    "rows = 100\nratio: float = 0.5\nname = 'x'\nverbose = False\ntags = []\nopts = {}\n"
    "anything = None"
)


@pytest.fixture
def nb(tmp_path: Path) -> Path:
    return write_nb(
        tmp_path / "params.ipynb",
        [
            (PARAMS, ["parameters"]),
            "print(repr((rows, ratio, name, verbose, tags, opts, anything)))",
        ],
    )


def test_cli_values_are_typed_by_the_parameters_cell(home: Path, nb: Path):
    proc = cli(
        "run",
        str(nb),
        "-q",
        "-p",
        "rows",
        "1000",
        "-p",
        "ratio",
        "2",
        "-p",
        "name",
        "12",
        "-p",
        "verbose",
        "true",
        "-p",
        "tags",
        '["a", "b"]',
        "-p",
        "opts",
        '{"k": 1}',
        "-p",
        "anything",
        "3.5",
    )
    assert proc.returncode == 0, proc.stderr
    iid = proc.stdout.splitlines()[0]
    st = Client().status(iid)
    assert st.parameters == {
        "rows": 1000,
        "ratio": 2.0,
        "name": "12",
        "verbose": True,
        "tags": ["a", "b"],
        "opts": {"k": 1},
        "anything": 3.5,
    }
    out = nbformat.read(st.output or "", as_version=4)
    injected = out.cells[1]
    assert injected.metadata.tags == ["injected-parameters"]
    assert "rows = 1000" in injected.source
    assert outputs_text(st.output or "")[2] == (
        "(1000, 2.0, '12', True, ['a', 'b'], {'k': 1}, 3.5)\n"
    )


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("rows", "many", "parameter 'rows' expects int, got 'many'"),
        ("verbose", "maybe", "parameter 'verbose' expects bool"),
        ("tags", '{"a": 1}', "parameter 'tags' expects list"),
        ("colour", "red", "unknown parameter 'colour'; the parameters cell declares: anything,"),
    ],
)
def test_bad_parameters_exit_2_and_store_nothing(
    home: Path, nb: Path, name: str, value: str, message: str
):
    proc = cli("run", str(nb), "-p", name, value)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.startswith("error: " + message)
    assert len(proc.stderr.strip().splitlines()) == 1
    assert Client().list() == []


def test_python_values_are_checked_not_converted(home: Path, nb: Path):
    client = Client()
    with pytest.raises(InvalidParameter, match="expects int, got '5'"):
        client.run(nb, {"rows": "5"})
    with pytest.raises(InvalidParameter, match="expects int, got True"):
        client.run(nb, {"rows": True})
    res = client.run(nb, {"rows": 5, "ratio": 1})  # an int is a fine float
    assert res.status == Status.COMPLETED
    assert client.status(res.id).parameters == {"rows": 5, "ratio": 1.0}


def test_a_notebook_without_parameters_cell_takes_none(home: Path, tmp_path: Path):
    plain = write_nb(tmp_path / "plain.ipynb", ["x = 1"])
    proc = cli("run", str(plain), "-p", "x", "2")
    assert proc.returncode == 2
    assert "no cell tagged 'parameters'" in proc.stderr
