"""Bad input: one clear line, exit status 2, and nothing changed in the store."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from durabook import Client, Status

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
