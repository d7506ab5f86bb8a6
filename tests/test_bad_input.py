"""Bad input: one clear line, exit status 2, and nothing changed in the store."""

from __future__ import annotations

import hashlib
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from durabook import Client, Status
from durabook.errors import InvalidNotebook
from durabook.notebook import parse_notebook

from .conftest import cli, write_nb


def _store_digest(home: Path) -> str:
    """What the store holds, as seen through the API (the file itself may be rewritten)."""
    client = Client()
    items = client.list()
    parts = [i.model_dump_json() for i in items]
    parts += [client.status(i.id).model_dump_json() for i in items]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


@pytest.fixture
def seeded(home: Path, tmp_path: Path) -> str:
    ok = write_nb(tmp_path / "ok.ipynb", ["x = 1"])
    return Client().run(ok).id


def _bad_files(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    not_json = tmp_path / "not_json.ipynb"
    not_json.write_text("{ this is not json")
    not_nb = tmp_path / "not_nb.ipynb"
    not_nb.write_text('{"hello": "world"}')
    invalid = tmp_path / "invalid.ipynb"
    invalid.write_text(
        '{"cells": [{"cell_type": "code"}], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}'
    )
    return {
        "missing": (tmp_path / "nope.ipynb", "error: no such notebook:"),
        "folder": (tmp_path, "is a folder, not a notebook"),
        "not json": (not_json, "is not a notebook: invalid JSON at line 1"),
        "not a notebook": (not_nb, "is not a notebook: no 'cells' or 'nbformat'"),
        "invalid nbformat": (invalid, "is not a valid notebook:"),
    }


@pytest.mark.parametrize(
    "case", ["missing", "folder", "not json", "not a notebook", "invalid nbformat"]
)
def test_bad_notebooks(seeded: str, home: Path, tmp_path: Path, case: str):
    before = _store_digest(home)
    path, message = _bad_files(tmp_path)[case]
    proc = cli("run", str(path))
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert _store_digest(home) == before


@pytest.mark.parametrize(
    "args",
    [
        ("status", "nosuchid"),
        ("resume", "nosuchid"),
        ("status", "no such/id"),
    ],
)
def test_unknown_instance(seeded: str, home: Path, args: tuple[str, ...]):
    before = _store_digest(home)
    proc = cli(*args)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: unknown instance")
    assert _store_digest(home) == before


def test_resume_of_a_completed_instance(seeded: str, home: Path):
    before = _store_digest(home)
    proc = cli("resume", seeded)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: instance {seeded} is completed; nothing to resume"
    assert _store_digest(home) == before
    assert Client().status(seeded).status == Status.COMPLETED


def test_resume_with_a_bad_edited_notebook_changes_nothing(home: Path, tmp_path: Path):
    nb = write_nb(tmp_path / "f.ipynb", ["1/0"])
    iid = Client().run(nb).id
    before = _store_digest(home)
    bad = tmp_path / "bad.ipynb"
    bad.write_text("nope")
    proc = cli("resume", iid, "--notebook", str(bad))
    assert proc.returncode == 2 and "invalid JSON" in proc.stderr
    assert _store_digest(home) == before


@pytest.mark.parametrize(
    "args,message",
    [
        (("list", "--status", "sleepy"), "error: unknown status 'sleepy'"),
        (("run",), "error: the following arguments are required: notebook"),
        (("frobnicate",), "error: argument command: invalid choice"),
        (("run", "x.ipynb", "--id", "bad id!"), "error: invalid instance id 'bad id!'"),
    ],
)
def test_bad_arguments(
    seeded: str, home: Path, tmp_path: Path, args: tuple[str, ...], message: str
):
    write_nb(tmp_path / "x.ipynb", ["x = 1"])
    proc = cli(*args)
    assert proc.returncode == 2
    assert proc.stderr.startswith(message)


def _nested_notebook(path: Path, depth: int) -> Path:
    """A valid notebook but for a cell whose metadata nests ``depth`` lists deep."""
    nb = write_nb(path, ["x = 1"])
    text = nb.read_text()
    deep = "[" * depth + "]" * depth
    nb.write_text(text.replace('"metadata": {}', f'"metadata": {{"deep": {deep}}}', 1))
    return nb


@pytest.mark.parametrize("depth", [100_000, 500])
def test_a_deeply_nested_notebook_is_one_line(seeded: str, home: Path, tmp_path: Path, depth):
    """100000 levels break json.loads itself; 500 break nbformat's validation."""
    before = _store_digest(home)
    nb = _nested_notebook(tmp_path / "deep.ipynb", depth)
    proc = cli("run", str(nb))
    assert proc.returncode == 2
    assert proc.stderr == (
        f"error: {nb} is not a notebook durabook accepts: JSON nested over 100 levels deep\n"
    )
    assert _store_digest(home) == before


def test_an_oversized_notebook_is_refused_before_it_is_read(home: Path, tmp_path: Path):
    big = tmp_path / "big.ipynb"
    with big.open("wb") as fh:  # sparse: 200 MiB that take no disk and are never read
        fh.truncate(200 * 1024 * 1024)
    proc = cli("run", str(big))
    assert proc.returncode == 2
    assert proc.stderr == (
        f"error: {big} is {200 * 1024 * 1024} bytes, over the limit of {64 * 1024 * 1024} "
        "bytes (set DURABOOK_MAX_NOTEBOOK_BYTES to raise it)\n"
    )


def test_the_size_limit_is_configurable(home: Path, tmp_path: Path):
    nb = write_nb(tmp_path / "ok.ipynb", ["x = 1"])
    size = nb.stat().st_size
    proc = cli("run", str(nb), env={"DURABOOK_MAX_NOTEBOOK_BYTES": str(size - 1)})
    assert proc.returncode == 2
    assert f"is {size} bytes, over the limit of {size - 1} bytes" in proc.stderr
    assert cli("run", str(nb), "-q", env={"DURABOOK_MAX_NOTEBOOK_BYTES": str(size)}).returncode == 0
    proc = cli("run", str(nb), env={"DURABOOK_MAX_NOTEBOOK_BYTES": "lots"})
    assert proc.returncode == 2
    assert proc.stderr == (
        "error: DURABOOK_MAX_NOTEBOOK_BYTES must be a positive number of bytes, got 'lots'\n"
    )


def test_parse_notebook_applies_the_same_limits(monkeypatch: pytest.MonkeyPatch):
    good = nbformat.writes(new_notebook(cells=[new_code_cell("x = 1")]))
    assert parse_notebook(good).cells[0].source == "x = 1"
    for depth in (100_000, 500):
        deep = good.replace('"metadata": {}', f'"metadata": {{"d": {"[" * depth + "]" * depth}}}')
        with pytest.raises(InvalidNotebook, match="nested over 100 levels deep"):
            parse_notebook(deep, "deep")
    monkeypatch.setenv("DURABOOK_MAX_NOTEBOOK_BYTES", "100")
    with pytest.raises(InvalidNotebook, match=r"^big is \d+ bytes, over the limit of 100 bytes"):
        parse_notebook(good, "big")
    monkeypatch.setenv("DURABOOK_MAX_NOTEBOOK_BYTES", "40")
    with pytest.raises(InvalidNotebook, match="is 60 bytes, over the limit of 40"):
        parse_notebook("é" * 30, "accents")  # counted in UTF-8 bytes, not characters
