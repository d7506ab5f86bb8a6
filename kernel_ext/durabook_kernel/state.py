"""What a cell changed, written as a checkpoint manifest; and a namespace restored.

The tracker keeps, per user variable, the ``id()`` of the object last seen and
the digest of its last saved payload. After a cell:

- new, rebound and deleted names always count as changed;
- a name bound to the same immutable object is unchanged without encoding it;
- any other value is encoded and compared by digest (content addressing), so a
  list mutated in place is caught and an untouched one is not written again;
- large values (over 256 KiB, or containers of over 10,000 items) bound to the same
  object are re-encoded only when the cell's source names them (or an alias of
  them). A function that mutates a large global without the cell naming it is
  the one case this misses; name the variable in the cell to have it saved.

Names that share one object are saved once and restored as one object.
Names starting with an underscore, and IPython's own (``In``, ``Out``, ...), are
not state. Python's and numpy's global random generators are saved too, so draws
after a resume continue the same sequence.
"""

from __future__ import annotations

import base64
import pickle
import random
import re
import sys
import types
from dataclasses import dataclass
from typing import Any

from .blobs import BlobStore, digest
from .serialize import Unserializable, decode, encode, is_immutable, is_large

__all__ = ["StateTracker"]

INLINE_LIMIT = 2048
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_IPYTHON_NAMES = {"In", "Out", "exit", "quit", "get_ipython", "open"}
RANDOM_KEY = "__random__"
NP_RANDOM_KEY = "__numpy_random__"


@dataclass
class _Known:
    oid: int
    digest: str | None  # None: unserializable
    stable: bool = False  # same object => same value (immutable, module, def, unsaveable)


class StateTracker:
    def __init__(self, user_ns: dict[str, Any], hidden: set[str] | None = None) -> None:
        self.user_ns = user_ns
        self.hidden = set(hidden or ()) | _IPYTHON_NAMES
        self.known: dict[str, _Known] = {}
        self.blobs: BlobStore | None = None
        self._random_digest: str | None = None
        self._np_random_digest: str | None = None

    # -- which names are state ---------------------------------------------------
    def user_names(self) -> list[str]:
        hidden = self.hidden
        return [n for n in self.user_ns if n[0] != "_" and n not in hidden]

    def reset_baseline(self) -> None:
        """Treat everything currently in the namespace as already saved (nothing)."""
        self.known.clear()

    # -- checkpoint ---------------------------------------------------------------
    def checkpoint(self, source: str) -> dict[str, Any]:
        """Encode what changed since the last checkpoint; write large payloads to blobs."""
        ns = self.user_ns
        mentioned = set(_IDENT.findall(source))
        known = self.known
        hidden = self.hidden
        groups: dict[int, list[str]] = {}
        for name, obj in ns.items():
            if name[0] == "_" or name in hidden:
                continue
            k = known.get(name)
            if k is not None and k.stable and k.oid == id(obj):
                continue  # the common case, O(1): an unchanged number, string, def, module
            groups.setdefault(id(obj), []).append(name)

        changed: dict[str, dict[str, Any]] = {}
        unserializable: dict[str, dict[str, str]] = {}
        for oid, names in groups.items():
            fresh = [n for n in names if (k := known.get(n)) is None or k.oid != oid]
            if not fresh:
                if known[names[0]].digest is None:
                    continue  # same unserializable object as before: reported once
                obj = ns[names[0]]
                if is_immutable(obj) or isinstance(obj, (types.FunctionType, type)):
                    continue
                if is_large(obj) and not mentioned.intersection(names):
                    continue
            obj = ns[names[0]]
            try:
                enc = encode(obj)
            except Unserializable as exc:
                for n in fresh:
                    unserializable[n] = {"type": exc.type_name, "error": exc.reason}
                    known[n] = _Known(oid, None, stable=True)
                continue
            ref = self._store(enc)
            key = ref["digest"]
            stable = is_immutable(obj) or isinstance(obj, (types.FunctionType, type))
            primary: str | None = None
            for n in names:
                k = known.get(n)
                if k is not None and k.oid == oid and k.digest == key:
                    continue
                known[n] = _Known(oid, key, stable)
                if primary is None:
                    primary = n
                    changed[n] = ref
                else:
                    changed[n] = {**ref, "target": primary}
        deleted = [n for n in known if n not in ns or n[0] == "_" or n in self.hidden]
        for n in deleted:
            del known[n]
        self._checkpoint_random(changed)
        return {"vars": changed, "deleted": deleted, "unserializable": unserializable}

    def _store(self, enc: Any) -> dict[str, Any]:
        ref: dict[str, Any] = {"kind": enc.kind, "type": enc.type_name}
        if enc.kind == "module":
            ref["module"] = enc.module
            ref["digest"] = "module:" + (enc.module or "")
            return ref
        data = enc.payload
        key = digest(data)
        ref["digest"] = key
        ref["size"] = len(data)
        if len(data) <= INLINE_LIMIT:
            ref["inline"] = base64.b64encode(data).decode("ascii")
        else:
            if self.blobs is None:
                raise RuntimeError("durabook: no blob store configured for this kernel")
            self.blobs.put(data, key)
        return ref

    def _checkpoint_random(self, changed: dict[str, dict[str, Any]]) -> None:
        data = pickle.dumps(random.getstate(), protocol=5)
        key = digest(data)
        if key != self._random_digest:
            self._random_digest = key
            changed[RANDOM_KEY] = self._store_raw("pickle", "random.state", data)
        np = sys.modules.get("numpy")
        if np is not None and hasattr(np, "random"):
            data = pickle.dumps(np.random.get_state(), protocol=5)
            key = digest(data)
            if key != self._np_random_digest:
                self._np_random_digest = key
                changed[NP_RANDOM_KEY] = self._store_raw("pickle", "numpy.random.state", data)

    def _store_raw(self, kind: str, tname: str, data: bytes) -> dict[str, Any]:
        from .serialize import Encoded

        return self._store(Encoded(kind, tname, data))

    # -- restore --------------------------------------------------------------------
    def load_ref(self, ref: dict[str, Any]) -> Any:
        if ref["kind"] == "module":
            return decode("module", b"", ref.get("module"), self.user_ns)
        if ref.get("inline") is not None:
            data = base64.b64decode(ref["inline"])
        else:
            if self.blobs is None:
                raise RuntimeError("durabook: no blob store configured for this kernel")
            data = self.blobs.get(ref["digest"])
        return decode(ref["kind"], data, ref.get("module"), self.user_ns)

    def restore(self, refs: dict[str, dict[str, Any]]) -> dict[str, Any]:
        """Load saved variables into the namespace, in an order that lets pickles
        find the notebook's classes: modules, then notebook definitions, then data."""
        order = {"module": 0, "cloudpickle": 1}
        loaded: dict[str, Any] = {}
        by_digest: dict[tuple[str, str], Any] = {}
        for name, ref in sorted(refs.items(), key=lambda kv: order.get(kv[1]["kind"], 2)):
            if name in (RANDOM_KEY, NP_RANDOM_KEY):
                continue
            share = (ref.get("group", name), ref["digest"])
            if share in by_digest:
                obj = by_digest[share]
            else:
                obj = self.load_ref(ref)
                by_digest[share] = obj
            self.user_ns[name] = obj
            loaded[name] = obj
        if RANDOM_KEY in refs:
            random.setstate(self.load_ref(refs[RANDOM_KEY]))
            self._random_digest = refs[RANDOM_KEY]["digest"]
        if NP_RANDOM_KEY in refs:
            import numpy as np

            np.random.set_state(self.load_ref(refs[NP_RANDOM_KEY]))
            self._np_random_digest = refs[NP_RANDOM_KEY]["digest"]
        return loaded

    def finish_restore(
        self, refs: dict[str, dict[str, Any]], loaded: dict[str, Any], rebuilt: list[str]
    ) -> list[str]:
        """After replayed cells ran: put back the saved values they re-assigned, remember
        what is saved. Returns the names the replays should have rebuilt but did not."""
        for name, obj in loaded.items():
            if name not in rebuilt:
                self.user_ns[name] = obj
        self.mark_restored(refs, rebuilt)
        return [n for n in rebuilt if n not in self.user_ns]

    def mark_restored(self, refs: dict[str, dict[str, Any]], rebuilt: list[str]) -> None:
        """Remember restored values as saved, so the next checkpoint writes only changes."""
        self.known.clear()
        for name, ref in refs.items():
            if name in self.user_ns:
                obj = self.user_ns[name]
                stable = is_immutable(obj) or isinstance(obj, (types.FunctionType, type))
                self.known[name] = _Known(id(obj), ref["digest"], stable)
        for name in rebuilt:
            if name in self.user_ns:
                self.known[name] = _Known(id(self.user_ns[name]), None, stable=True)
