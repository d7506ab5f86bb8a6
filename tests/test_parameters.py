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


def test_values_that_start_with_a_dash_are_taken_verbatim(home: Path, tmp_path: Path):
    nb = write_nb(
        tmp_path / "dash.ipynb",
        [
            ("d = '1m'\nn = 1\nratio = 0.5\nname = 'x'", ["parameters"]),
            "print(repr((d, n, ratio, name)))",
        ],
    )
    # papermill takes the two tokens after -p as they are; so does durabook
    proc = cli(
        "run",
        str(nb),
        "-q",
        "-p",
        "d",
        "-5m",
        "-p",
        "n",
        "-3",
        "--parameter",
        "ratio",
        "-1e-3",
        "-p",
        "name",
        "--json",
    )
    assert proc.returncode == 0, proc.stderr
    iid = proc.stdout.splitlines()[0]  # "--json" was a value, not the option
    st = Client().status(iid)
    assert st.parameters == {"d": "-5m", "n": -3, "ratio": -0.001, "name": "--json"}
    assert outputs_text(st.output or "")[2] == "('-5m', -3, -0.001, '--json')\n"


def test_a_missing_parameter_value_is_still_bad_input(home: Path, nb: Path):
    proc = cli("run", str(nb), "-p", "rows")
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: argument -p/--parameter: expected 2 arguments")


def test_nan_and_infinities_reach_the_cell_as_floats(home: Path, tmp_path: Path):
    nb = write_nb(
        tmp_path / "nan.ipynb",
        [
            (
                "ratio = 0.5\nlow = 0.0\nhigh = 1.0\ntags = []\nopts = {}\nanything = None",
                ["parameters"],
            ),
            "import math\n"
            "print(math.isnan(ratio), low == -math.inf, high == math.inf)\n"
            "print(math.isnan(tags[0]), tags[1:], math.isnan(opts['x']['y']), opts['z'])\n"
            "print(anything)",
        ],
    )
    proc = cli(
        "run",
        str(nb),
        "-q",
        "-p",
        "ratio",
        "nan",
        "-p",
        "low",
        "-inf",
        "-p",
        "high",
        "inf",
        "-p",
        "tags",
        "[NaN, Infinity, -Infinity]",
        "-p",
        "opts",
        '{"x": {"y": NaN}, "z": [1]}',
        "-p",
        "anything",
        "-Infinity",
    )
    assert proc.returncode == 0, proc.stderr
    out = outputs_text(Client().status(proc.stdout.split()[0]).output or "")
    assert out[2] == "True True True\nTrue [inf, -inf] True [1]\n-inf\n"


@pytest.mark.parametrize(
    "value",
    [
        float("nan"),
        float("inf"),
        -float("inf"),
        -0.0,
        1e308,
        [float("nan"), [float("inf")], {"k": -float("inf")}],
        {"a": (1, float("nan")), 2: (float("inf"),), "e": ()},
        "nan",
        None,
        True,
    ],
)
def test_injected_values_are_python_source_for_the_same_value(value: object):
    from durabook.notebook import python_source

    src = python_source(value)
    back = eval(src, {"__builtins__": {"float": float}})
    assert repr(back) == repr(value)
    assert type(back) is type(value)


def test_a_deeply_nested_parameter_is_bad_input(home: Path, nb: Path):
    deep = "[" * 50_000 + "]" * 50_000  # json.loads itself gives up (RecursionError)
    not_so = "[" * 500 + "]" * 500  # json.loads copes; rendering and storing would not
    for value in (deep, not_so):
        proc = cli("run", str(nb), "-p", "tags", value)
        assert proc.returncode == 2
        assert len(proc.stderr.splitlines()) == 1 and "Traceback" not in proc.stderr
        assert proc.stderr.startswith("error: parameter 'tags'")
    assert Client().list() == []
