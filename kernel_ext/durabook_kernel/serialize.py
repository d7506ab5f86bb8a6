"""How one Python value becomes bytes and back.

Choice per value (first that works):
- modules: recorded by name and re-imported;
- pandas DataFrames: Arrow IPC through pyarrow (not pickle: typed, no copy of
  numeric columns); large ones as one piece per record batch of a stable number
  of rows, so changing one value rewrites one piece (about 2 MiB), not the frame;
- numpy arrays of plain dtypes: the ``.npy`` format, no pickle; large ones as
  their raw buffer in fixed 2 MiB pieces, with dtype and shape beside them;
- functions and classes defined in the notebook: cloudpickle (by value), then
  re-bound to the kernel's live globals on load;
- closed files (what ``with open(...) as f`` leaves): a closed file again;
- anything else: pickle, then cloudpickle.
What fails all of them is *unserializable* and reported by name and type.
"""

from __future__ import annotations

import contextlib
import io
import pickle
import sys
import types
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

__all__ = [
    "CHUNK",
    "Encoded",
    "Unserializable",
    "decode",
    "decode_pieces",
    "encode",
    "is_immutable",
    "is_large",
    "slices",
]

_IMMUTABLE = (int, float, complex, str, bytes, bool, type(None), range, frozenset)
_LARGE_BYTES = 256 << 10
_LARGE_LEN = 10_000
CHUNK = 2 << 20  # bytes per piece of a large value: one changed value rewrites about this much


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
    # a large value: buffers stored as separate blobs, and what rebuilds the value
    pieces: Iterable[Any] | None = None
    meta: dict[str, Any] | None = None


def slices(data: Any, size: int = CHUNK) -> Iterator[memoryview]:
    view = memoryview(data).cast("B")
    for start in range(0, len(view), size):
        yield view[start : start + size]


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
            return _encode_frame(obj, tname)
        except Exception:
            pass  # e.g. non-string column names, mixed object columns: pickle below
    if _is_ndarray(obj) and not obj.dtype.hasobject:
        if obj.nbytes > CHUNK:
            return _encode_large_array(obj, tname)
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


def _encode_frame(df: Any, tname: str) -> Encoded:
    import pyarrow as pa

    # a RangeIndex is kept as metadata (True would write it out as a column of int64)
    table = pa.Table.from_pandas(df, preserve_index=None)
    freq = getattr(df.index, "freqstr", None)
    if freq and not _is_pandas(df.index, "PeriodIndex"):  # Arrow keeps no index frequency
        table = table.replace_schema_metadata({**table.schema.metadata, _FREQ: freq.encode()})
    if table.nbytes <= CHUNK:
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        return Encoded("arrow", tname, sink.getvalue().to_pybytes())
    # pieces of a power-of-two number of rows: a value that changes size (a longer
    # string) does not move the boundaries of every piece after it
    per_row = max(1, table.nbytes // max(1, table.num_rows))
    rows = 1 << max(0, (CHUNK // per_row).bit_length() - 1)

    def pieces() -> Iterator[Any]:
        # each piece a whole IPC stream (schema and dictionaries with its batch): a
        # categorical column's dictionary is not in a bare record batch
        batches = table.to_batches(max_chunksize=rows) or [None]
        for batch in batches:
            sink = pa.BufferOutputStream()
            with pa.ipc.new_stream(sink, table.schema) as writer:
                if batch is not None:
                    writer.write_batch(batch)
            yield sink.getvalue()

    return Encoded("arrow_streams", tname, pieces=pieces(), meta={"rows": rows})


def _encode_large_array(a: Any, tname: str) -> Encoded:
    import numpy as np

    fortran = bool(a.flags.f_contiguous and not a.flags.c_contiguous)
    if not (a.flags.c_contiguous or fortran):
        a = np.ascontiguousarray(a)
    # a view in memory order, as bytes (no copy; memoryview refuses datetime64 and
    # other dtypes with no buffer format)
    flat = a.ravel(order="K").view(np.uint8)
    meta = {
        "descr": np.lib.format.dtype_to_descr(a.dtype),
        "shape": list(a.shape),
        "fortran": fortran,
        "chunk": CHUNK,
    }
    return Encoded("ndarray", tname, pieces=slices(flat), meta=meta)


def decode_pieces(
    kind: str,
    meta: dict[str, Any],
    digests: list[str],
    size: int,
    blobs: Any,
    module: str | None,
    user_ns: dict[str, Any],
) -> Any:
    """A large value from its pieces (each read from the blob store and verified)."""
    if kind == "ndarray":
        import numpy as np

        dtype = np.lib.format.descr_to_dtype(meta["descr"])
        out = np.empty(meta["shape"], dtype=dtype, order="F" if meta.get("fortran") else "C")
        view = out.ravel(order="K").view(np.uint8).data
        step = int(meta.get("chunk", CHUNK))
        for i, key in enumerate(digests):
            blobs.get_into(key, view[i * step : min((i + 1) * step, len(view))])
        return out
    if kind == "arrow_streams":
        import pyarrow as pa

        _arrow_pandas_types()
        tables = [pa.ipc.open_stream(pa.py_buffer(blobs.get(k))).read_all() for k in digests]
        return _to_pandas(pa.concat_tables(tables))
    payload = bytearray(size)
    view = memoryview(payload)
    pos = 0
    for key in digests:
        data = blobs.get(key)
        view[pos : pos + len(data)] = data
        pos += len(data)
    return decode(kind, bytes(payload), module, user_ns)


_FREQ = b"durabook.index_freq"


def _to_pandas(table: Any) -> Any:
    df = table.to_pandas()
    freq = (table.schema.metadata or {}).get(_FREQ)
    if freq:
        with contextlib.suppress(Exception):  # a frequency that no longer fits: left unset
            df.index = type(df.index)(df.index, freq=freq.decode())
    return df


def _arrow_pandas_types() -> None:
    """Register pandas' Arrow extension types (period, interval) before ``to_pandas``:
    pandas does so lazily, and without them a PeriodIndex comes back as integers."""
    import contextlib

    with contextlib.suppress(ImportError):
        import pandas.core.arrays.arrow.extension_types  # noqa: F401


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
    if kind == "arrow":
        import pyarrow as pa

        _arrow_pandas_types()
        return _to_pandas(pa.ipc.open_stream(pa.py_buffer(payload)).read_all())
    if kind == "parquet":  # checkpoints written before Arrow IPC
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


def rebind_globals(obj: Any, user_ns: dict[str, Any], depth: int = 2) -> Any:
    """Make a notebook function (or a class's methods) see the live namespace.

    cloudpickle gives a loaded function a private copy of the globals it used;
    in a notebook those must be the kernel's globals, as they were before. Functions
    kept in small containers (a list of callbacks) are re-bound too.
    """
    if depth > 0 and type(obj) in (list, tuple, dict) and len(obj) <= 256:
        if isinstance(obj, dict):
            for k, v in list(obj.items()):
                obj[k] = rebind_globals(v, user_ns, depth - 1)
            return obj
        items = [rebind_globals(v, user_ns, depth - 1) for v in obj]
        if isinstance(obj, list):
            obj[:] = items
            return obj
        return tuple(items)
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
