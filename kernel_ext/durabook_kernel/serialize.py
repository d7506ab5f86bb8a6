"""How one Python value becomes bytes and back.

Choice per value (first that works):
- modules: recorded by name and re-imported;
- pandas DataFrames: Parquet through pyarrow (not pickle: half the memory, typed);
- numpy arrays of plain dtypes: the ``.npy`` format, no pickle;
- functions and classes defined in the notebook: cloudpickle (by value), then
  re-bound to the kernel's live globals on load;
- closed files (what ``with open(...) as f`` leaves): a closed file again;
- anything else: pickle, then cloudpickle.
What fails all of them is *unserializable* and reported by name and type.
"""

from __future__ import annotations

import io
import pickle
import sys
import types
from dataclasses import dataclass
from typing import Any

__all__ = ["Encoded", "Unserializable", "decode", "encode", "is_immutable", "is_large"]

_IMMUTABLE = (int, float, complex, str, bytes, bool, type(None), range, frozenset)
_LARGE_BYTES = 256 << 10
_LARGE_LEN = 10_000


class Unserializable(Exception):
    def __init__(self, type_name: str, reason: str) -> None:
        super().__init__(reason)
        self.type_name = type_name
        self.reason = reason


@dataclass
class Encoded:
    kind: str
    type_name: str
    payload: bytes = b""
    module: str | None = None


def type_name(obj: Any) -> str:
    cls = type(obj)
    mod = cls.__module__
    return cls.__qualname__ if mod in ("builtins", "__main__") else f"{mod}.{cls.__qualname__}"


def is_immutable(obj: Any) -> bool:
    if isinstance(obj, _IMMUTABLE):
        return True
    if type(obj) is tuple:
        return len(obj) < 64 and all(isinstance(x, _IMMUTABLE) for x in obj)
    return isinstance(obj, types.ModuleType)


def is_large(obj: Any) -> bool:
    """Large enough that re-encoding it after every cell would cost real time."""
    nbytes = getattr(obj, "nbytes", None)
    if isinstance(nbytes, int) and nbytes > _LARGE_BYTES:
        return True
    if _is_dataframe(obj) or _is_pandas(obj, "Series"):
        try:
            return int(obj.memory_usage(deep=False).sum()) > _LARGE_BYTES
        except Exception:
            return False
    if isinstance(obj, (list, dict, set, tuple)):
        return len(obj) > _LARGE_LEN
    return False


def _is_pandas(obj: Any, name: str) -> bool:
    if "pandas" not in sys.modules:
        return False
    cls = type(obj)
    return cls.__name__ == name and cls.__module__.startswith("pandas")


def _is_dataframe(obj: Any) -> bool:
    return _is_pandas(obj, "DataFrame")


def _is_ndarray(obj: Any) -> bool:
    return (
        "numpy" in sys.modules
        and type(obj).__name__ == "ndarray"
        and (type(obj).__module__ == "numpy")
    )


def _defined_in_notebook(obj: Any) -> bool:
    return isinstance(obj, (types.FunctionType, type)) and getattr(obj, "__module__", None) == (
        "__main__"
    )


def encode(obj: Any) -> Encoded:
    tname = type_name(obj)
    if isinstance(obj, types.ModuleType):
        name = obj.__name__
        if name != "__main__" and sys.modules.get(name) is obj:
            return Encoded("module", tname, module=name)
        raise Unserializable(tname, f"module {name!r} cannot be re-imported by name")
    if isinstance(obj, io.IOBase) and obj.closed:
        # what `with open(...) as fh:` leaves behind holds no state: keep a closed file
        binary = not isinstance(obj, io.TextIOBase)
        return Encoded("closed_file", tname, b"b" if binary else b"t")
    if _is_dataframe(obj):
        try:
            buf = io.BytesIO()
            obj.to_parquet(buf, engine="pyarrow")
            return Encoded("parquet", tname, buf.getvalue())
        except Exception:
            pass  # e.g. non-string column names: pickle below
    if _is_ndarray(obj) and not obj.dtype.hasobject:
        import numpy as np

        buf = io.BytesIO()
        np.save(buf, obj, allow_pickle=False)
        return Encoded("npy", tname, buf.getvalue())
    if not _defined_in_notebook(obj):
        try:
            return Encoded("pickle", tname, pickle.dumps(obj, protocol=5))
        except Exception:
            pass
    try:
        return Encoded("cloudpickle", tname, _cloudpickle_dumps(obj))
    except Exception as exc:
        raise Unserializable(tname, f"{type(exc).__name__}: {exc}") from None


def _cloudpickle_dumps(obj: Any) -> bytes:
    import cloudpickle

    class _Pickler(cloudpickle.Pickler):
        def reducer_override(self, o: Any) -> Any:
            # cloudpickle would save an open file's *contents* and give back a
            # StringIO: a silent change of meaning. An open file is unserializable.
            if isinstance(o, io.IOBase) and not o.closed:
                raise TypeError(f"cannot save an open file ({type(o).__name__})")
            return super().reducer_override(o)

    buf = io.BytesIO()
    _Pickler(buf, protocol=5).dump(obj)
    return buf.getvalue()


def decode(kind: str, payload: bytes, module: str | None, user_ns: dict[str, Any]) -> Any:
    if kind == "module":
        import importlib

        return importlib.import_module(module or "")
    if kind == "closed_file":
        import os

        fh = open(os.devnull, "rb" if payload == b"b" else "r")  # noqa: SIM115
        fh.close()
        return fh
    if kind == "parquet":
        import pandas as pd

        return pd.read_parquet(io.BytesIO(payload), engine="pyarrow")
    if kind == "npy":
        import numpy as np

        return np.load(io.BytesIO(payload), allow_pickle=False)
    if kind == "pickle":
        return pickle.loads(payload)
    if kind == "cloudpickle":
        import cloudpickle

        return rebind_globals(cloudpickle.loads(payload), user_ns)
    raise ValueError(f"unknown payload kind {kind!r}")


def rebind_globals(obj: Any, user_ns: dict[str, Any]) -> Any:
    """Make a notebook function (or a class's methods) see the live namespace.

    cloudpickle gives a loaded function a private copy of the globals it used;
    in a notebook those must be the kernel's globals, as they were before.
    """
    if isinstance(obj, types.FunctionType) and obj.__module__ == "__main__":
        fn = types.FunctionType(
            obj.__code__, user_ns, obj.__name__, obj.__defaults__, obj.__closure__
        )
        fn.__kwdefaults__ = obj.__kwdefaults__
        fn.__dict__.update(obj.__dict__)
        fn.__qualname__ = obj.__qualname__
        fn.__annotations__ = obj.__annotations__
        fn.__doc__ = obj.__doc__
        return fn
    if isinstance(obj, type) and obj.__module__ == "__main__":
        for attr, value in list(vars(obj).items()):
            inner = value
            wrapper = None
            if isinstance(value, (staticmethod, classmethod)):
                wrapper, inner = type(value), value.__func__
            if isinstance(inner, types.FunctionType) and inner.__module__ == "__main__":
                new = rebind_globals(inner, user_ns)
                setattr(obj, attr, wrapper(new) if wrapper else new)
    return obj
