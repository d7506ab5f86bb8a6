"""Narrow units of the kernel extension's state tracking, without a kernel."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from durabook_kernel.blobs import BlobStore
from durabook_kernel.serialize import decode, encode
from durabook_kernel.state import StateTracker


def _tracker(tmp_path: Path) -> tuple[StateTracker, dict[str, Any]]:
    ns: dict[str, Any] = {"In": [], "_": None}
    t = StateTracker(ns, {"In"})
    t.blobs = BlobStore(tmp_path / "blobs")
    return t, ns


def _names(manifest: dict[str, Any]) -> set[str]:
    return {n for n in manifest["vars"] if not n.startswith("__")}


def test_only_changes_are_reported(tmp_path: Path):
    t, ns = _tracker(tmp_path)
    ns.update(a=1, b=[1], c="x", _private=3)
    assert _names(t.checkpoint("a = 1")) == {"a", "b", "c"}
    assert _names(t.checkpoint("")) == set()
    ns["b"].append(2)
    assert _names(t.checkpoint("b.append(2)")) == {"b"}
    ns["a"] = 2
    del ns["c"]
    m = t.checkpoint("a = 2\ndel c")
    assert _names(m) == {"a"} and m["deleted"] == ["c"]


def test_large_objects_not_named_by_the_cell_are_not_reencoded(tmp_path: Path):
    t, ns = _tracker(tmp_path)
    ns["big"] = list(range(100_000))
    assert _names(t.checkpoint("big = ...")) == {"big"}
    ns["big"].append(1)
    assert _names(t.checkpoint("other = 1")) == set()  # documented blind spot
    assert _names(t.checkpoint("big")) == {"big"}


def test_unserializable_reported_once_with_type(tmp_path: Path):
    t, ns = _tracker(tmp_path)
    ns["lock"] = threading.Lock()
    m = t.checkpoint("")
    assert m["unserializable"]["lock"]["type"].endswith("lock")
    assert t.checkpoint("")["unserializable"] == {}


def test_restore_round_trip_keeps_aliases_and_rebinds_functions(tmp_path: Path):
    t, ns = _tracker(tmp_path)
    shared = [1, 2]
    ns.update(x=shared, y=shared, z=10)
    m = t.checkpoint("")
    assert m["vars"]["y"].get("target") == "x"
    refs = {}
    for name, ref in m["vars"].items():
        if ref.get("target"):
            ref = {**ref, "group": "g"}
            refs[ref["target"]] = {**m["vars"][ref["target"]], "group": "g"}
        refs.setdefault(name, ref)
    fresh: dict[str, Any] = {}
    t2 = StateTracker(fresh)
    t2.blobs = t.blobs
    t2.restore(refs)
    assert fresh["x"] == [1, 2] and fresh["x"] is fresh["y"] and fresh["z"] == 10


def test_encode_kinds():
    import numpy as np

    assert encode(np.arange(3)).kind == "npy"
    assert encode(np.array([object()], dtype=object)).kind in ("pickle", "cloudpickle")
    assert encode(threading).kind == "module"
    assert encode({"a": 1}).kind == "pickle"
    fn = eval("lambda v: v + 1")
    enc = encode(fn)
    assert enc.kind == "cloudpickle"
    assert decode(enc.kind, enc.payload, None, {})(1) == 2
