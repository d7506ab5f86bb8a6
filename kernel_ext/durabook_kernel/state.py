"""What a cell changed, written as a checkpoint manifest; and a namespace restored.

A checkpoint costs what the cell changed, not what the namespace holds. After
a cell the tracker looks only at the names the cell could have touched (its
*reach*), not at every variable:

1. the names the cell's source mentions (any identifier, also inside strings);
2. the globals named by the code of notebook-defined functions, classes and
   instances of notebook classes that (1) reaches, followed transitively, and
   the names bound to objects held in those functions' closures and defaults;
3. names added to the namespace behind the cell's back (``exec``, star imports,
   ``globals()[...]``, magics): a dictionary keeps insertion order, so new keys
   are the last ``len(ns) - len_before`` ones, read in O(new);
4. every name, in a cell that uses ``globals``/``locals``/``vars``/``exec``/
   ``eval``/``__dict__``/``__main__``/``import *``/``sys.modules``/``setattr``/
   ``delattr``, or a magic that can rebind names (``%run``, ``%reset``,
   ``%store``, ...); and in every cell with ``scan_all`` (the run option
   ``--scan-all``).

For each of those names: a new, rebound or deleted name counts as changed; a
name bound to the same immutable object is unchanged; any other value is
encoded and compared by digest (content addressing), so a list mutated in place
is caught and an untouched one is not written again. Large values are stored
in pieces (see :mod:`durabook_kernel.serialize`), so changing one value of a
512 MB array rewrites one 2 MiB piece.

Not detected (documented in the README): an in-place change to a value the
cell cannot reach by name (1-2), e.g. through a reference held inside another
container or a library object (``d = {"k": lst}``; a cell ``d["k"].append(1)``
saves ``d`` but not ``lst``), or by a callback a library calls later.

Names that share one object are saved once and restored as one object. Names
starting with an underscore, and IPython's own (``In``, ``Out``, ...), are not
state. Python's and numpy's global random generators are saved too, so draws
after a resume continue the same sequence, and so is the process-level state
of :mod:`durabook_kernel.process`.
"""

from __future__ import annotations

import base64
import json
import pickle
import random
import re
import sys
import types
from dataclasses import dataclass
from itertools import islice
from typing import Any

from .blobs import BlobStore, digest
from .serialize import CHUNK, Unserializable, decode, decode_pieces, encode, is_immutable, slices

__all__ = ["PROCESS_KEY", "RANDOM_KEY", "StateTracker"]

INLINE_LIMIT = 2048
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_IPYTHON_NAMES = {"In", "Out", "exit", "quit", "get_ipython", "open"}
RANDOM_KEY = "__random__"
NP_RANDOM_KEY = "__numpy_random__"
PROCESS_KEY = "__process__"
SPECIAL_KEYS = (RANDOM_KEY, NP_RANDOM_KEY, PROCESS_KEY)
# a cell with any of these may bind or mutate names it does not mention: scan all
_DYNAMIC = re.compile(
    r"\b(globals|locals|vars|exec|eval|__dict__|__main__|setattr|delattr|sys\.modules)\b"
    r"|import\s+\*"
    r"|^\s*%{1,2}(run|reset|reset_selective|xdel|store|load|pylab|macro|rerun|recall|"
    r"autoreload|aimport|edit|paste|cpaste|alias|sx|sc)\b",
    re.M,
)
# names that, in the code of a function a cell reaches, make the cell dynamic too
_DYNAMIC_NAMES = frozenset({"globals", "locals", "vars", "exec", "eval", "setattr", "delattr"})
_DEFINITIONS = (types.FunctionType, type)
_METHODS = (types.MethodType, types.BuiltinMethodType)
_SMALL = 256  # a container this small is looked into for the functions it holds


@dataclass
class _Known:
    oid: int
    digest: str | None  # None: unserializable
    stable: bool = False  # same object => same value (immutable, module, unsaveable)
    # a stable value is held, so its id cannot be reused by another object while known
    # (a float rebound in a loop may land at the address of the one it replaced)
    held: Any = None
    mark: Any = None  # a definition's attributes, defaults and methods, cheaply compared


def _is_stable(obj: Any) -> bool:
    return is_immutable(obj)


def _definition_mark(obj: Any) -> Any:
    """What can change in a notebook function or class while it stays the same object:
    its attributes, defaults, and (a class) its data attributes and which functions it
    has. None when it cannot be told cheaply: then it is encoded and compared."""
    try:
        if isinstance(obj, types.FunctionType):
            if not obj.__dict__ and obj.__kwdefaults__ is None:
                return ("f", obj.__code__, obj.__defaults__ and pickle.dumps(obj.__defaults__))
            return pickle.dumps((obj.__dict__, obj.__defaults__, obj.__kwdefaults__), protocol=5)
        data = {}
        methods = []
        for k, v in vars(obj).items():
            if isinstance(v, (types.FunctionType, staticmethod, classmethod, property, type)):
                methods.append((k, id(v)))
            elif k not in ("__dict__", "__weakref__", "__module__", "__qualname__", "__doc__"):
                data[k] = v
        return (tuple(methods), pickle.dumps(data, protocol=5))
    except Exception:
        return None


class StateTracker:
    def __init__(self, user_ns: dict[str, Any], hidden: set[str] | None = None) -> None:
        self.user_ns = user_ns
        self.hidden = set(hidden or ()) | _IPYTHON_NAMES
        self.known: dict[str, _Known] = {}
        self.by_oid: dict[int, set[str]] = {}  # aliases among known names
        self.blobs: BlobStore | None = None
        self.scan_all = False
        self.process: Any = None  # a ProcessState, set by the extension
        self._len = -1  # len(user_ns) after the last checkpoint; -1: scan everything next
        self._code_names: dict[types.CodeType, frozenset[str]] = {}
        self._dynamic_code = False
        # per global random generator: the digest last saved, and a cheap mark of its state
        self._gen_digests: dict[str, str] = {}
        self._gen_marks: dict[str, Any] = {}
        self._process_snapshot: Any = None
        self._pending_process: Any = None  # loaded by restore(), applied by restore_process()
        self._early_problems: list[str] = []

    # -- which names are state ---------------------------------------------------
    def is_state(self, name: str) -> bool:
        return bool(name) and name[0] != "_" and name not in self.hidden

    def user_names(self) -> list[str]:
        return [n for n in self.user_ns if self.is_state(n)]

    def reset_baseline(self) -> None:
        """Treat everything currently in the namespace as already saved (nothing)."""
        self.known.clear()
        self.by_oid.clear()
        self._len = len(self.user_ns)

    # -- reach: the names a cell could have touched ---------------------------------
    def reach(self, source: str) -> set[str] | None:
        """The names to look at after ``source`` ran, or None for all of them."""
        ns = self.user_ns
        if self.scan_all or self._len < 0 or _DYNAMIC.search(source):
            return None
        names = set(_IDENT.findall(source))
        grown = len(ns) - self._len
        if grown > 0:
            names.update(islice(reversed(ns.keys()), grown))
        out: set[str] = set()
        stack = [n for n in names if n in ns or n in self.known]
        self._dynamic_code = False
        while stack:
            name = stack.pop()
            if name in out:
                continue
            out.add(name)
            obj = ns.get(name)
            if obj is not None and not is_immutable(obj):
                stack.extend(n for n in self._referenced(obj) if n not in out)
            if self._dynamic_code:
                return None  # a function it reaches uses globals() or exec: look at all
        return out

    def _referenced(self, obj: Any) -> set[str]:
        """Globals and aliases a notebook function, class or instance can reach."""
        found: set[str] = set()
        seen: set[int] = set()
        todo = [obj]
        if type(obj) in (list, tuple, set, frozenset, dict) and len(obj) <= _SMALL:
            # functions kept in a small container (a list of callbacks) are reached too
            values = obj.values() if isinstance(obj, dict) else obj
            todo = [v for v in values if callable(v) or type(v).__module__ == "__main__"]
        while todo:
            o = todo.pop()
            if id(o) in seen:
                continue
            seen.add(id(o))
            if isinstance(o, types.MethodType):
                todo += [o.__func__, o.__self__]
                found |= self.by_oid.get(id(o.__self__), set())
            elif isinstance(o, types.BuiltinMethodType):
                owner = getattr(o, "__self__", None)  # `push = stack.append`: push reaches stack
                if owner is not None and not isinstance(owner, types.ModuleType):
                    found |= self.by_oid.get(id(owner), set())
            elif isinstance(o, types.FunctionType):
                if o.__globals__ is not self.user_ns:
                    continue  # a library's function: its globals are not ours
                code_names = self._names_of(o.__code__)
                if code_names & _DYNAMIC_NAMES:
                    self._dynamic_code = True
                found |= code_names
                held = [c.cell_contents for c in o.__closure__ or () if _filled(c)]
                held += list(o.__defaults__ or ()) + list((o.__kwdefaults__ or {}).values())
                for value in held:
                    found |= self.by_oid.get(id(value), set())
                    if isinstance(value, (types.FunctionType, type)):
                        todo.append(value)
            elif isinstance(o, type):
                if o.__module__ != "__main__":
                    continue
                for value in vars(o).values():
                    if isinstance(value, (staticmethod, classmethod)):
                        value = value.__func__
                    elif isinstance(value, property):
                        todo += [f for f in (value.fget, value.fset, value.fdel) if f]
                        continue
                    if isinstance(value, (types.FunctionType, type)):
                        todo.append(value)
                todo += [b for b in o.__bases__ if b.__module__ == "__main__"]
            elif type(o).__module__ == "__main__":
                todo.append(type(o))  # an instance of a notebook class: its methods
            elif type(o).__name__ == "partial":
                todo += [getattr(o, "func", None), *getattr(o, "args", ())]
        return found

    def _names_of(self, code: types.CodeType) -> frozenset[str]:
        names = self._code_names.get(code)
        if names is None:
            acc = set(code.co_names)
            for const in code.co_consts:
                if isinstance(const, types.CodeType):
                    acc |= self._names_of(const)
            names = self._code_names[code] = frozenset(acc)
        return names

    # -- checkpoint ---------------------------------------------------------------
    def checkpoint(self, source: str, full: bool = False) -> dict[str, Any]:
        """Encode what changed since the last checkpoint; write large payloads to blobs."""
        ns = self.user_ns
        reach = None if full else self.reach(source)
        candidates = set(self.user_names()) | set(self.known) if reach is None else reach
        known = self.known
        groups: dict[int, list[str]] = {}
        deleted: list[str] = []
        for name in candidates:
            if name not in ns or not self.is_state(name):
                if name in known:
                    deleted.append(name)
                continue
            obj = ns[name]
            k = known.get(name)
            if k is not None and k.stable and k.held is obj:
                continue  # the common case, O(1): an unchanged number, string, module
            groups.setdefault(id(obj), []).append(name)
        for name in deleted:
            self._forget(name)

        changed: dict[str, dict[str, Any]] = {}
        unserializable: dict[str, dict[str, str]] = {}
        # bound methods last: one is saved as its owner's attribute once the owner is known
        order = sorted(groups.items(), key=lambda kv: isinstance(ns[kv[1][0]], _METHODS))
        for oid, names in order:
            # names outside the reach bound to the same object change with it
            aliases = {n for n in self.by_oid.get(oid, ()) if n in ns and id(ns[n]) == oid}
            names = sorted(set(names) | aliases)
            fresh = [n for n in names if (k := known.get(n)) is None or k.oid != oid]
            obj = ns[names[0]]
            first = known.get(names[0])
            if not fresh and first is not None and first.digest is None:
                continue  # same unserializable object as before: reported once
            if not fresh and _is_stable(obj):
                continue
            mark = _definition_mark(obj) if isinstance(obj, _DEFINITIONS) else None
            if not fresh and mark is not None and first is not None and first.mark == mark:
                continue  # a function or class whose attributes did not change
            try:
                enc = self._bound_method(obj) or encode(obj)
            except Unserializable as exc:
                for n in fresh:
                    unserializable[n] = {"type": exc.type_name, "error": exc.reason}
                    self._remember(n, obj, None, True)
                continue
            ref = self._store(enc)
            key = ref["digest"]
            stable = _is_stable(obj) or enc.kind == "bound"
            # a name already saved with this very value leads, so that a later alias
            # (`b = a` in another cell) is restored as the same object
            kept = [n for n in names if (k := known.get(n)) and k.oid == oid and k.digest == key]
            primary: str | None = kept[0] if kept else None
            for n in names:
                if n in kept:
                    known[n].mark = mark
                    continue
                self._remember(n, obj, key, stable, mark)
                if primary is None:
                    primary = n
                    changed[n] = ref
                else:
                    changed[n] = {**ref, "target": primary}
        self._checkpoint_random(changed)
        self._checkpoint_process(changed)
        self._len = len(ns)
        return {"vars": changed, "deleted": deleted, "unserializable": unserializable}

    def _bound_method(self, obj: Any) -> Any:
        """``push = stack.append``: saved as `stack`'s attribute, so that after a restore
        ``push`` still appends to the restored ``stack`` (not to a copy of its own)."""
        owner = getattr(obj, "__self__", None)
        if not isinstance(obj, _METHODS) or owner is None:
            return None
        if isinstance(owner, (types.ModuleType, type)):
            return None
        names = sorted(n for n in self.by_oid.get(id(owner), ()) if self.user_ns.get(n) is owner)
        if not names:
            return None
        from .serialize import Encoded, type_name

        spec = json.dumps({"self": names[0], "attr": obj.__name__}).encode()
        return Encoded("bound", type_name(obj), spec)

    def _remember(
        self, name: str, obj: Any, key: str | None, stable: bool, mark: Any = None
    ) -> None:
        oid = id(obj)
        old = self.known.get(name)
        if old is not None and old.oid != oid:
            self._unalias(name, old.oid)
        self.known[name] = _Known(oid, key, stable, obj if stable else None, mark)
        self.by_oid.setdefault(oid, set()).add(name)

    def _forget(self, name: str) -> None:
        old = self.known.pop(name, None)
        if old is not None:
            self._unalias(name, old.oid)

    def _unalias(self, name: str, oid: int) -> None:
        names = self.by_oid.get(oid)
        if names is not None:
            names.discard(name)
            if not names:
                del self.by_oid[oid]

    def _store(self, enc: Any) -> dict[str, Any]:
        ref: dict[str, Any] = {"kind": enc.kind, "type": enc.type_name}
        if enc.kind == "module":
            ref["module"] = enc.module
            ref["digest"] = "module:" + (enc.module or "")
            return ref
        if enc.pieces is None and len(enc.payload) <= CHUNK:
            data = enc.payload
            key = digest(data)
            ref["digest"] = key
            ref["size"] = len(data)
            if len(data) <= INLINE_LIMIT:
                ref["inline"] = base64.b64encode(data).decode("ascii")
            else:
                self._blobs().put(data, key)
            return ref
        # a large value: one blob per piece; only pieces not stored yet are written
        pieces = enc.pieces if enc.pieces is not None else slices(enc.payload)
        blobs = self._blobs()
        chunks: list[str] = []
        size = 0
        for piece in pieces:
            key = digest(piece)
            blobs.put(piece, key)
            chunks.append(key)
            size += len(memoryview(piece).cast("B"))
        if enc.module is not None:
            ref["module"] = enc.module
        ref.update(chunks=chunks, size=size, meta=enc.meta or {})
        ref["digest"] = digest(json.dumps([enc.kind, enc.meta, chunks]).encode())
        return ref

    def _blobs(self) -> BlobStore:
        if self.blobs is None:
            raise RuntimeError("durabook: no blob store configured for this kernel")
        return self.blobs

    def _checkpoint_random(self, changed: dict[str, dict[str, Any]]) -> None:
        for key, tname, get, mark_of in _generators():
            state = get()
            mark = mark_of(state)
            if mark == self._gen_marks.get(key):
                continue  # the common case: no draw since the last cell
            self._gen_marks[key] = mark
            data = pickle.dumps(state, protocol=5)
            if digest(data) != self._gen_digests.get(key):
                changed[key] = self._store_raw("pickle", tname, data)
                self._gen_digests[key] = changed[key]["digest"]

    def _checkpoint_process(self, changed: dict[str, dict[str, Any]]) -> None:
        if self.process is None:
            return
        snap = self.process.capture()
        if snap == self._process_snapshot:
            return
        self._process_snapshot = snap
        try:
            data = pickle.dumps(snap, protocol=5)
        except Exception:
            import cloudpickle  # e.g. a warnings filter naming a notebook-defined category

            data = cloudpickle.dumps(snap, protocol=5)
        changed[PROCESS_KEY] = self._store_raw("cloudpickle", "process.state", data)

    def _store_raw(self, kind: str, tname: str, data: bytes) -> dict[str, Any]:
        from .serialize import Encoded

        return self._store(Encoded(kind, tname, data))

    # -- restore --------------------------------------------------------------------
    def load_ref(self, ref: dict[str, Any]) -> Any:
        if ref["kind"] == "bound":  # the attribute of a restored variable (loaded before)
            spec = json.loads(base64.b64decode(ref["inline"]))
            return getattr(self.user_ns[spec["self"]], spec["attr"])
        if ref["kind"] == "module":
            return decode("module", b"", ref.get("module"), self.user_ns)
        if ref.get("chunks") is not None:
            return decode_pieces(
                ref["kind"],
                ref.get("meta") or {},
                ref["chunks"],
                int(ref.get("size") or 0),
                self._blobs(),
                ref.get("module"),
                self.user_ns,
            )
        if ref.get("inline") is not None:
            data = base64.b64decode(ref["inline"])
        else:
            data = self._blobs().get(ref["digest"])
        return decode(ref["kind"], data, ref.get("module"), self.user_ns)

    def restore(
        self, refs: dict[str, dict[str, Any]], failed: dict[str, str] | None = None
    ) -> dict[str, Any]:
        """Load saved variables into the namespace, in an order that lets pickles
        find the notebook's classes: modules, then notebook definitions, then data.

        With ``failed`` (a dict), a variable that cannot be loaded is recorded
        there with the reason and the others still load; without it, the first
        failure raises.
        """
        order = {"module": 0, "cloudpickle": 1, "bound": 3}
        loaded: dict[str, Any] = {}
        self._pending_process = None
        if PROCESS_KEY in refs and self.process is not None:
            # the working directory and sys.path first: saved modules import from there
            self._pending_process = self.load_ref(refs[PROCESS_KEY])
            self._early_problems = self.process.apply_early(self._pending_process)
        by_digest: dict[tuple[str, str], Any] = {}
        for name, ref in sorted(refs.items(), key=lambda kv: order.get(kv[1]["kind"], 2)):
            if name in SPECIAL_KEYS:
                continue
            share = (ref.get("group", name), ref["digest"])
            try:
                if share in by_digest:
                    obj = by_digest[share]
                else:
                    obj = self.load_ref(ref)
                    by_digest[share] = obj
            except Exception as exc:
                if failed is None:
                    raise
                failed[name] = f"{type(exc).__name__}: {exc}"
                continue
            self.user_ns[name] = obj
            loaded[name] = obj
        if RANDOM_KEY in refs:
            random.setstate(self.load_ref(refs[RANDOM_KEY]))
        if NP_RANDOM_KEY in refs:
            import numpy as np

            np.random.set_state(self.load_ref(refs[NP_RANDOM_KEY]))
        for key, _tname, get, mark_of in _generators():
            if key in refs:
                self._gen_digests[key] = refs[key]["digest"]
                self._gen_marks[key] = mark_of(get())
        return loaded

    def restore_process(self, refs: dict[str, dict[str, Any]]) -> list[str]:
        """Re-apply the saved process-level state; what could not be, one line each."""
        if PROCESS_KEY not in refs or self.process is None:
            return []
        snap = self._pending_process
        if snap is None:
            snap = self.load_ref(refs[PROCESS_KEY])
            self._early_problems = self.process.apply_early(snap)
        problems: list[str] = self._early_problems + self.process.apply(snap)
        self._pending_process = None
        self._process_snapshot = self.process.capture()
        return problems

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
        self.by_oid.clear()
        for name, ref in refs.items():
            if name in SPECIAL_KEYS or name not in self.user_ns:
                continue
            obj = self.user_ns[name]
            stable = _is_stable(obj) or ref["kind"] == "bound"
            mark = _definition_mark(obj) if isinstance(obj, _DEFINITIONS) else None
            self._remember(name, obj, ref["digest"], stable, mark)
            blobs = self.blobs
            if blobs is not None:
                for key in ref.get("chunks") or ():
                    blobs.trust(key)  # read and verified just now: no need to write again
        for name in rebuilt:
            if name in self.user_ns:
                self._remember(name, self.user_ns[name], None, True)
        self._len = len(self.user_ns)


def _np_mark(state: Any) -> tuple[Any, ...]:
    """numpy's legacy generator state, cheaply comparable: (key words hashed, the rest)."""
    return (hash(state[1].tobytes()), *state[2:])


def _generators() -> list[tuple[str, str, Any, Any]]:
    """The global random generators draws after a resume must continue: (key, type
    name, get state, mark of a state). A hash of a state (625 words) costs about a
    microsecond; pickling and hashing it every cell cost fifty times that."""
    gens: list[tuple[str, str, Any, Any]] = [(RANDOM_KEY, "random.state", random.getstate, hash)]
    np = sys.modules.get("numpy")
    if np is not None and hasattr(np, "random"):
        gens.append(
            (
                NP_RANDOM_KEY,
                "numpy.random.state",
                lambda: np.random.get_state(legacy=True),
                _np_mark,
            )
        )
    return gens


def _filled(cell: Any) -> bool:
    try:
        cell.cell_contents  # noqa: B018 - an empty closure cell raises
        return True
    except ValueError:
        return False
