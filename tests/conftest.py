"""Shared fixtures: a private DURABOOK_HOME, notebook builders, and the CLI as a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

KERNELSPEC = {"name": "python3", "language": "python", "display_name": "Python 3"}


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    h = tmp_path / "home"
    monkeypatch.setenv("DURABOOK_HOME", str(h))
    monkeypatch.chdir(tmp_path)
    return h


Cell = str | tuple[str, Sequence[str]]


def write_nb(path: Path, cells: Sequence[Cell], markdown_first: bool = False) -> Path:
    """A notebook whose code cells are ``cells``; a tuple gives (source, tags)."""
    out = []
    if markdown_first:
        out.append(new_markdown_cell("# a workflow"))
    for i, c in enumerate(cells):
        src, tags = (c, ()) if isinstance(c, str) else c
        cell = new_code_cell(src, metadata={"tags": list(tags)} if tags else {})
        cell.id = f"c{i}"
        out.append(cell)
    nbformat.write(new_notebook(cells=out, metadata={"kernelspec": KERNELSPEC}), path)
    return path


def cli(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    return subprocess.run(
        [sys.executable, "-m", "durabook", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=full_env,
        timeout=timeout,
    )


def cli_json(*args: str, **kw: Any) -> tuple[int, Any]:
    proc = cli(*args, "--json", **kw)
    return proc.returncode, json.loads(proc.stdout) if proc.stdout.strip() else None


def outputs_text(nb_path: str | Path) -> list[str]:
    """Per cell, all stream and text/plain output joined (markdown cells give '')."""
    nb = nbformat.read(nb_path, as_version=4)
    texts = []
    for cell in nb.cells:
        parts = []
        for o in cell.get("outputs", []):
            if o.output_type == "stream":
                parts.append(o.text)
            elif "data" in o:
                parts.append(o.data.get("text/plain", ""))
            elif o.output_type == "error":
                parts.append(f"{o.ename}: {o.evalue}")
        texts.append("".join(parts))
    return texts
