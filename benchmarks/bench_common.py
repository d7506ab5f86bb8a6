"""What the checkpoint benchmarks share: notebooks, timed runs on a quiet pool, the store
read back, and the shape of a target in the JSON report."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cell_overhead as co
import nbformat

from durabook.engine import Engine

MiB = 1 << 20


# -- helpers --------------------------------------------------------------------
def write_notebook(path: Path, sources: list[str]) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nb.cells = [nbformat.v4.new_code_cell(s) for s in sources]
    nbformat.write(nb, path)
    return path


@contextlib.contextmanager
def quiet_pool(engine: Engine, refill: bool = True) -> Iterator[None]:
    """A warm kernel ready, and no refill started while the caller times a run (it
    starts after, unless ``refill`` is false)."""
    pool = engine.pool
    pool.size = 1
    pool.fill()
    if not pool.wait_ready():
        raise RuntimeError("no warm kernel within 60 s")
    pool.size = 0  # acquire() refills up to size: nothing while we time
    try:
        yield
    finally:
        pool.size = 1
        if refill:
            pool.fill()


def timed_run(bench: co.Bench, executor: str, path: Path) -> float:
    fn = bench.runners()[executor]
    if executor != "durabook":
        return co.timed(bench, executor, fn, path)
    with quiet_pool(bench.engine):
        start = time.perf_counter()
        fn(path)
        return time.perf_counter() - start


Samples = dict[str, dict[str, list[float]]]


def sample(bench: co.Bench, paths: list[Path], rounds: dict[str, int]) -> Samples:
    """Seconds per run of each (executor, notebook): one uncounted warm-up per executor
    on the first notebook, then rounds over all notebooks, executors interleaved (their
    order flipped every round); an executor stops after its number of rounds."""
    for e in rounds:
        timed_run(bench, e, paths[0])
    out: Samples = {e: {p.stem: [] for p in paths} for e in rounds}
    for r in range(max(rounds.values())):
        execs = [e for e in rounds if r < rounds[e]]
        if r % 2:
            execs.reverse()
        for p in paths:
            for e in execs:
                out[e][p.stem].append(timed_run(bench, e, p))
    return out


def per_cell_ms(samples: dict[str, list[float]], short: str, long: str, cells: int) -> float:
    return (min(samples[long]) - min(samples[short])) / cells * 1e3


def committed(engine: Engine, instance_id: str) -> tuple[int, int]:
    """(committed cells, code cells) of an instance, read back from the store."""
    cells = engine.status(instance_id).cells
    return sum(1 for c in cells if c.status.value == "committed"), len(cells)


def saved_state(engine: Engine, instance_id: str) -> dict[str, Any]:
    """The instance's saved variables, decoded from the store as a resume would: the
    engine's restore plan (newest ref per name), loaded by the kernel's own tracker."""
    from durabook_kernel.blobs import BlobStore
    from durabook_kernel.state import StateTracker

    plan = engine.session_restore_plan(instance_id)
    if plan.get("replay"):
        raise RuntimeError(f"unexpected replay cells in the restore plan: {plan['replay']}")
    ns: dict[str, Any] = {}
    tracker = StateTracker(ns)
    tracker.blobs = BlobStore(plan["blobs"])
    tracker.restore(plan["restore"])
    return ns


def rounded(v: float | None, nd: int = 3) -> float | None:
    return None if v is None else round(v, nd)


def target(value: float | None, limit: float, op: str, **extra: Any) -> dict[str, Any]:
    ok = value is not None and (value <= limit if op == "<=" else value >= limit)
    return {"value": rounded(value, 4), "op": op, "limit": limit, "pass": ok, **extra}


def check(ok: bool, **detail: Any) -> dict[str, Any]:
    return {"value": ok, "op": "==", "limit": True, "pass": ok, **detail}


def ratio(a: float, b: float) -> float | None:
    return a / b if a > 0 and b > 0 else None
