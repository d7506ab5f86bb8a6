"""Notebooks as workflows: loading, validation, version hashes, parameters.

A notebook version is identified by the hash of its code cells (id and source)
and kernelspec only, never outputs or execution counts, so re-saving a notebook
after a run keeps its version.
"""

from __future__ import annotations

import ast
import copy
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nbformat
from nbformat import NotebookNode

from .errors import InvalidNotebook, InvalidParameter

__all__ = [
    "INJECTED_TAG",
    "Parameter",
    "coerce_parameters",
    "declared_parameters",
    "inject_parameters",
    "is_replay_cell",
    "load_notebook",
    "source_hash",
    "strip_injected",
    "version_hash",
]

INJECTED_TAG = "injected-parameters"
PARAMETERS_TAG = "parameters"
REPLAY_TAG = "durabook-replay"


def load_notebook(path: str | os.PathLike[str]) -> NotebookNode:
    """Read and validate a notebook; every problem is one clear InvalidNotebook."""
    p = Path(path)
    if not p.exists():
        raise InvalidNotebook(f"no such notebook: {p}", path=str(p))
    if p.is_dir():
        raise InvalidNotebook(f"{p} is a folder, not a notebook", path=str(p))
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidNotebook(f"cannot read {p}: {exc}", path=str(p)) from None
    return parse_notebook(text, str(p))


def parse_notebook(text: str, name: str = "<notebook>") -> NotebookNode:
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidNotebook(
            f"{name} is not a notebook: invalid JSON at line {exc.lineno} column {exc.colno}",
            path=name,
        ) from None
    if not isinstance(raw, dict) or "cells" not in raw or "nbformat" not in raw:
        raise InvalidNotebook(f"{name} is not a notebook: no 'cells' or 'nbformat'", path=name)
    try:
        nb = nbformat.reads(text, as_version=4)
        nbformat.validate(nb)
    except Exception as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InvalidNotebook(f"{name} is not a valid notebook: {msg}", path=name) from None
    ensure_cell_ids(nb)
    return nb


def ensure_cell_ids(nb: NotebookNode) -> None:
    """Older notebooks have no cell ids: give them stable ones by position."""
    seen: set[str] = set()
    for i, cell in enumerate(nb.cells):
        cid = cell.get("id")
        if not cid or cid in seen:
            cid = f"cell-{i}"
            while cid in seen:
                cid += "x"
            cell["id"] = cid
        seen.add(cid)
    nb.nbformat, nb.nbformat_minor = 4, max(nb.get("nbformat_minor", 5), 5)


def source_hash(source: str) -> str:
    return hashlib.sha256(source.encode("utf-8")).hexdigest()[:16]


def version_hash(nb: NotebookNode) -> str:
    spec = nb.metadata.get("kernelspec", {})
    payload = {
        "kernel": [spec.get("name", "python3"), spec.get("language", "python")],
        "cells": [[c.get("id"), c.source] for c in nb.cells if c.cell_type == "code"],
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:20]


def is_replay_cell(cell: NotebookNode) -> bool:
    """A cell re-run on resume to rebuild state that cannot be saved.

    Marked with the tag ``durabook-replay`` or a first line ``# durabook: replay``.
    """
    if REPLAY_TAG in cell.get("metadata", {}).get("tags", []):
        return True
    first = cell.source.lstrip().split("\n", 1)[0].replace(" ", "").lower()
    return first.startswith("#durabook:replay")


# -- parameters -------------------------------------------------------------------


@dataclass(frozen=True)
class Parameter:
    name: str
    type: str  # int float bool str list dict any
    default: Any = None


_TYPES = {int: "int", float: "float", bool: "bool", str: "str", list: "list", dict: "dict"}
_ANNOTATIONS = {"int", "float", "bool", "str", "list", "dict"}


def declared_parameters(nb: NotebookNode) -> dict[str, Parameter] | None:
    """The parameters cell's names and types, or None when there is no such cell."""
    for cell in nb.cells:
        if cell.cell_type == "code" and PARAMETERS_TAG in cell.metadata.get("tags", []):
            return parse_parameters(cell.source)
    return None


def parse_parameters(source: str) -> dict[str, Parameter]:
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return {}
    out: dict[str, Parameter] = {}
    for node in tree.body:
        target: ast.expr | None = None
        value: ast.expr | None = None
        annotation = None
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
        elif isinstance(node, ast.AnnAssign):
            target, value = node.target, node.value
            if isinstance(node.annotation, ast.Name) and node.annotation.id in _ANNOTATIONS:
                annotation = node.annotation.id
        if not isinstance(target, ast.Name):
            continue
        default: Any = None
        kind = "any"
        if value is not None:
            try:
                default = ast.literal_eval(value)
                kind = _TYPES.get(type(default), "any")
            except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
                default = None
        out[target.id] = Parameter(target.id, annotation or kind, default)
    return out


_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def _coerce_text(p: Parameter, text: str) -> Any:
    """A command-line string into the declared type."""
    t = p.type
    if t == "str":
        return text
    if t == "int":
        return int(text.replace("_", ""))
    if t == "float":
        return float(text)
    if t == "bool":
        low = text.strip().lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise ValueError(text)
    if t in ("list", "dict"):
        value = json.loads(text)
        if not isinstance(value, list if t == "list" else dict):
            raise ValueError(text)
        return value
    # undeclared type: papermill's inference
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low == "none":
        return None
    return text


def _check_value(p: Parameter, value: Any) -> Any:
    t = p.type
    if t == "any" or (value is None and p.default is None):
        return value
    if t == "float" and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    expected = {v: k for k, v in _TYPES.items()}[t]
    if expected is int and isinstance(value, bool):
        raise TypeError
    if not isinstance(value, expected):
        raise TypeError
    return value


def coerce_parameters(
    nb: NotebookNode, values: dict[str, Any], from_text: bool = False
) -> dict[str, Any]:
    """Check names against the parameters cell and convert values to its types."""
    if not values:
        return {}
    declared = declared_parameters(nb)
    if declared is None:
        names = ", ".join(sorted(values))
        raise InvalidParameter(
            f"the notebook has no cell tagged 'parameters', so it takes none (got {names})",
            parameter=sorted(values)[0],
        )
    out: dict[str, Any] = {}
    for name, value in values.items():
        p = declared.get(name)
        if p is None:
            known = ", ".join(sorted(declared)) or "none"
            raise InvalidParameter(
                f"unknown parameter {name!r}; the parameters cell declares: {known}",
                parameter=name,
            )
        try:
            if from_text and isinstance(value, str):
                out[name] = _coerce_text(p, value)
            else:
                out[name] = _check_value(p, value)
        except (ValueError, TypeError, json.JSONDecodeError):
            raise InvalidParameter(
                f"parameter {name!r} expects {p.type}, got {value!r}", parameter=name
            ) from None
    return out


def _is_injected(cell: NotebookNode) -> bool:
    return INJECTED_TAG in cell.get("metadata", {}).get("tags", [])


def strip_injected(nb: NotebookNode) -> NotebookNode:
    if not any(_is_injected(c) for c in nb.cells):
        return nb
    nb = copy.copy(nb)
    nb.cells = [c for c in nb.cells if not _is_injected(c)]
    return nb


def inject_parameters(nb: NotebookNode, params: dict[str, Any]) -> NotebookNode:
    """Papermill's way: a cell tagged ``injected-parameters`` after the parameters cell.

    With no parameters the notebook is returned as it is (papermill's engine
    hands over notebooks whose parameters papermill injected already).
    """
    if not params:
        return nb
    nb = copy.copy(strip_injected(nb))
    nb.cells = list(nb.cells)
    lines = ["# Parameters"] + [f"{k} = {v!r}" for k, v in params.items()]
    cell = nbformat.v4.new_code_cell("\n".join(lines) + "\n")
    cell.id = INJECTED_TAG
    cell.metadata["tags"] = [INJECTED_TAG]
    at = 0
    for i, c in enumerate(nb.cells):
        if PARAMETERS_TAG in c.metadata.get("tags", []):
            at = i + 1
            break
    nb.cells.insert(at, cell)
    return nb
