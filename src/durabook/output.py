"""The output notebook: recorded outputs of every cell, whichever run made them."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nbformat
from nbformat import NotebookNode

from .notebook import source_hash

__all__ = ["build_output", "write_notebook"]


def build_output(
    nb: NotebookNode,
    latest: dict[int, dict[str, Any]],
    attempts: dict[int, int],
    meta: dict[str, Any],
    load_blob: Callable[[str], bytes],
) -> NotebookNode:
    out = nbformat.from_dict(json.loads(json.dumps(nb)))
    out.metadata["durabook"] = meta
    for index, cell in enumerate(out.cells):
        if cell.cell_type != "code":
            continue
        cell.outputs = []
        cell.execution_count = None
        row = latest.get(index)
        if (
            row is None
            or row["cell_id"] != cell.get("id")
            or (row["source_hash"] != source_hash(cell.source))
        ):
            cell.metadata["durabook"] = {"status": "pending"}
            continue
        if row["outputs_blob"]:
            outputs = json.loads(load_blob(row["outputs_blob"]))
        else:
            outputs = json.loads(row["outputs"] or "[]")
        cell.outputs = outputs
        cell.execution_count = row["execution_count"]
        started = row["started_at"]
        cell.metadata["durabook"] = {
            "status": row["status"],
            "attempts": attempts.get(index, 1),
            "started_at": started.isoformat() + "Z" if started else None,
            "duration_ms": round(row["duration_ms"] or 0.0, 3),
        }
    return out


def write_notebook(nb: NotebookNode, path: str | os.PathLike[str]) -> None:
    """Atomically: a reader never sees half a notebook."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            # built from a validated version and recorded outputs: no second validation
            json.dump(nb, fh, sort_keys=True, indent=1, ensure_ascii=False)
            fh.write("\n")
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
