"""Notebooks as workflows: loading, validation, version hashes, parameters.

A notebook version is identified by the hash of its code cells (id, source, tags
and ``metadata.durabook``) and kernelspec only, never outputs, execution counts or
other metadata, so re-saving a notebook after a run keeps its version.
"""

from __future__ import annotations

import ast
import copy
import hashlib
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nbformat
from nbformat import NotebookNode

from .errors import InvalidNotebook, InvalidParameter

__all__ = [
    "INJECTED_TAG",
    "Parameter",
    "check_kernel",
    "coerce_parameters",
    "declared_env",
    "declared_parameters",
    "inject_parameters",
    "is_replay_cell",
    "load_notebook",
    "max_notebook_bytes",
    "parse_notebook",
    "python_source",
    "source_hash",
    "strip_injected",
    "version_hash",
]

INJECTED_TAG = "injected-parameters"
PARAMETERS_TAG = "parameters"
REPLAY_TAG = "durabook-replay"


MAX_NOTEBOOK_BYTES = 64 * 1024 * 1024
MAX_NOTEBOOK_ENV = "DURABOOK_MAX_NOTEBOOK_BYTES"
# Far deeper than any real notebook, far shallower than the recursion limit of the
# json, nbformat and pydantic code that walks it later.
MAX_DEPTH = 100


def max_notebook_bytes() -> int:
    """The largest notebook durabook reads: $DURABOOK_MAX_NOTEBOOK_BYTES, or 64 MiB."""
    raw = os.environ.get(MAX_NOTEBOOK_ENV, "").strip()
    if not raw:
        return MAX_NOTEBOOK_BYTES
    try:
        value = int(raw.replace("_", ""))
    except ValueError:
        value = -1
    if value <= 0:
        raise InvalidNotebook(f"{MAX_NOTEBOOK_ENV} must be a positive number of bytes, got {raw!r}")
    return value


def _too_big(name: str, size: int, limit: int) -> InvalidNotebook:
    return InvalidNotebook(
        f"{name} is {size} bytes, over the limit of {limit} bytes (set {MAX_NOTEBOOK_ENV} "
        "to raise it)",
        path=name,
    )


def load_notebook(path: str | os.PathLike[str]) -> NotebookNode:
    """Read and validate a notebook; every problem is one clear InvalidNotebook."""
    p = Path(path)
    if not p.exists():
        raise InvalidNotebook(f"no such notebook: {p}", path=str(p))
    if p.is_dir():
        raise InvalidNotebook(f"{p} is a folder, not a notebook", path=str(p))
    if not p.is_file():  # a pipe would block the reader forever, a device never end
        raise InvalidNotebook(f"{p} is not a regular file", path=str(p))
    limit = max_notebook_bytes()
    try:
        size = p.stat().st_size
        if size > limit:  # before reading: a huge file never reaches memory
            raise _too_big(str(p), size, limit)
        with p.open("rb") as fh:
            data = fh.read(limit + 1)  # the file may have grown since stat()
        if len(data) > limit:
            raise _too_big(str(p), len(data), limit)
        text = data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidNotebook(f"cannot read {p}: {exc}", path=str(p)) from None
    return parse_notebook(text, str(p))


def _depth_over(value: Any, limit: int) -> bool:
    """Whether JSON ``value`` nests deeper than ``limit``; iterative, so never recursion."""
    stack = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        if isinstance(v, dict):
            children: Any = v.values()
        elif isinstance(v, list):
            children = v
        else:
            continue
        if depth > limit:
            return True
        stack.extend((c, depth + 1) for c in children if isinstance(c, (dict, list)))
    return False


def parse_notebook(text: str, name: str = "<notebook>") -> NotebookNode:
    limit = max_notebook_bytes()
    # a character is at most 4 bytes: count bytes exactly only when it could matter
    size = len(text) if len(text) <= limit // 4 else len(text.encode("utf-8", "surrogatepass"))
    if size > limit:
        raise _too_big(name, size, limit)
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidNotebook(
            f"{name} is not a notebook: invalid JSON at line {exc.lineno} column {exc.colno}",
            path=name,
        ) from None
    except RecursionError:
        raw = None  # nested past the interpreter's limit: reported just below
    if raw is None or _depth_over(raw, MAX_DEPTH):
        raise InvalidNotebook(
            f"{name} is not a notebook durabook accepts: JSON nested over {MAX_DEPTH} levels deep",
            path=name,
        )
    if not isinstance(raw, dict) or "cells" not in raw or "nbformat" not in raw:
        raise InvalidNotebook(f"{name} is not a notebook: no 'cells' or 'nbformat'", path=name)
    try:
        nb = nbformat.reads(text, as_version=4)
        nbformat.validate(nb)
    except Exception as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InvalidNotebook(f"{name} is not a valid notebook: {msg}", path=name) from None
    check_kernel(nb, name)
    ensure_cell_ids(nb)
    return nb


# Kernels that name no language: well-known names of other languages' kernels.
_OTHER_KERNELS = {
    "ir": "R",
    "julia": "julia",
    "ijavascript": "javascript",
    "javascript": "javascript",
    "bash": "bash",
    "xcpp": "C++",
    "gophernotes": "go",
    "evcxr": "rust",
    "rust": "rust",
    "scala": "scala",
    "ruby": "ruby",
    "sas": "sas",
    "sql": "sql",
    "ocaml-jupyter": "ocaml",
    "haskell": "haskell",
    "octave": "octave",
    "matlab": "matlab",
    "powershell": "powershell",
    "java": "java",
    "kotlin": "kotlin",
    "csharp": "C#",
    "fsharp": "F#",
}
_PYTHON_LANGUAGES = {"python", "python3", "ipython", "ipython3"}


def _kernel_language(name: str) -> str | None:
    """The language a kernel name says, when the kernelspec gives none."""
    low = name.lower()
    for prefix, language in _OTHER_KERNELS.items():
        if low == prefix or re.match(rf"{re.escape(prefix)}[-_.\d]", low):
            return language
    return None  # python3, a venv's name, ...: durabook's own Python kernel runs it


def check_kernel(nb: NotebookNode, name: str = "<notebook>") -> None:
    """Refuse notebooks for another language or Python 2: durabook runs Python 3 cells
    in its own kernel, so running them would only fail, cell by cell.

    The kernelspec decides, as it does for Jupyter. ``language_info`` only records the
    kernel that last saved the notebook (papermill's own test notebooks pair a python3
    kernelspec with a stale language_info 2.7.12 and run fine on Python 3), so its
    version counts only when there is no kernelspec. No kernelspec at all is Python.
    """
    meta = nb.get("metadata", {})
    spec = meta.get("kernelspec") or {}
    info = meta.get("language_info") or {}
    kname = str(spec.get("name") or "")
    language = str(spec.get("language") or "") or _kernel_language(kname) or "python"
    refuse = "{} uses the kernel {!r} ({}); durabook runs Python 3 notebooks"
    if language.lower() == "python2" or kname.lower().startswith("python2"):
        raise InvalidNotebook(refuse.format(name, kname, "Python 2"), path=name, kernel=kname)
    if language.lower() not in _PYTHON_LANGUAGES:
        raise InvalidNotebook(refuse.format(name, kname, language), path=name, kernel=kname)
    version = str(info.get("version") or "")
    if not spec and str(info.get("name") or "python").lower() == "python" and version[:2] == "2.":
        raise InvalidNotebook(
            f"{name} was saved by Python {version} (language_info) and names no kernel; "
            "durabook runs Python 3 notebooks",
            path=name,
        )


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
    """Tags and ``metadata.durabook`` count: they change how a cell runs (replay,
    step options), and a resume with an edited notebook must see them."""
    spec = nb.metadata.get("kernelspec", {})
    payload = {
        "kernel": [spec.get("name", "python3"), spec.get("language", "python")],
        "cells": [
            [
                c.get("id"),
                c.source,
                c.get("metadata", {}).get("tags", []),
                c.get("metadata", {}).get("durabook"),
            ]
            for c in nb.cells
            if c.cell_type == "code"
        ],
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:20]


def declared_env(nb: NotebookNode) -> list[str]:
    """Environment variables the notebook asks for (``metadata.durabook.env``)."""
    names = nb.metadata.get("durabook", {}).get("env", [])
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise InvalidNotebook("metadata durabook.env must be a list of variable names")
    return list(names)


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


def _short(value: Any) -> str:
    """A value for a one-line message: a huge or deeply nested one is cut."""
    try:
        text = repr(value)
    except RecursionError:
        return type(value).__name__
    return text if len(text) <= 200 else text[:200] + "..."


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
        except (ValueError, TypeError, json.JSONDecodeError, RecursionError):
            raise InvalidParameter(
                f"parameter {name!r} expects {p.type}, got {_short(value)}", parameter=name
            ) from None
        if _depth_over(out[name], MAX_DEPTH):  # it is rendered, stored and sent recursively
            raise InvalidParameter(
                f"parameter {name!r} is nested over {MAX_DEPTH} levels deep", parameter=name
            )
    return out


def _is_injected(cell: NotebookNode) -> bool:
    return INJECTED_TAG in cell.get("metadata", {}).get("tags", [])


def strip_injected(nb: NotebookNode) -> NotebookNode:
    if not any(_is_injected(c) for c in nb.cells):
        return nb
    nb = copy.copy(nb)
    nb.cells = [c for c in nb.cells if not _is_injected(c)]
    return nb


def python_source(value: Any) -> str:
    """Python source that evaluates to ``value``: ``repr`` but for floats that have no
    literal (``nan``, ``inf``), also inside lists and dicts (JSON allows NaN, Infinity)."""
    if isinstance(value, float) and not math.isfinite(value):
        return f"float({repr(value)!r})"  # float('nan'), float('inf'), float('-inf')
    if isinstance(value, list):
        return "[" + ", ".join(python_source(v) for v in value) + "]"
    if isinstance(value, tuple):
        inner = ", ".join(python_source(v) for v in value)
        return f"({inner},)" if len(value) == 1 else f"({inner})"
    if type(value) is dict:  # a subclass (defaultdict, ...) has no literal either way
        return (
            "{"
            + ", ".join(f"{python_source(k)}: {python_source(v)}" for k, v in value.items())
            + "}"
        )
    return repr(value)


def inject_parameters(nb: NotebookNode, params: dict[str, Any]) -> NotebookNode:
    """Papermill's way: a cell tagged ``injected-parameters`` after the parameters cell.

    With no parameters the notebook is returned as it is (papermill's engine
    hands over notebooks whose parameters papermill injected already).
    """
    if not params:
        return nb
    nb = copy.copy(strip_injected(nb))
    nb.cells = list(nb.cells)
    lines = ["# Parameters"] + [f"{k} = {python_source(v)}" for k, v in params.items()]
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
