"""What checkpointing costs as the namespace, the objects and the notebook grow.

Four measurements, each made in this one process against a baseline where one exists.
durabook runs are ``Engine(home).run(path)`` on a kernel taken from a warm pool (kernel
start stays out of the timed window); the baselines are plain nbclient (and papermill
in section 4) on the same notebooks.

1. ``namespace``: per-cell cost with 100 and with 10,000 small variables in the
   namespace. A setup cell makes ``v0 .. v{N-1}``, each a one-int list ``[i]``
   (through ``globals()``, so the cell's source names none of them), then trivial
   cells each append to one of them (``v7.append(7)``), rotating over the names.
   Per-cell cost is ``(fastest run with --long touching cells - fastest run with
   --short) / (long - short)``, the setup cell cancelling.
   Target: cost(10,000 vars) <= 1.2 x cost(100 vars). After the runs the store is
   read back: every cell of the last long run of each size committed, and the saved
   value of *every* variable (decoded from the store the way a resume decodes it) is
   what the notebook left, appends included.
2. ``big_objects``: a 512 MiB numpy float64 array and a 512 MiB DataFrame (8 float64
   columns), one notebook each: imports (seeding Python's and numpy's global random
   state, so every run saves the same bytes); create (random data, incompressible);
   change one value (``a[123456] = 1.0`` / ``df.iloc[4_000_000, 3] = 1.0``); touch
   without changing (``a.sum()`` / ``df.shape``). Bytes: durabook runs the prefixes of
   the notebook (imports only, then one more cell each time), each on a fresh home; a
   cell's bytes are what its prefix run left in ``blobs/`` minus what the previous
   prefix left (the notebook's own JSON, which the engine keeps there too, excluded).
   Seconds: durabook, from the previous cell's commit to this cell's commit in the
   full run (``Progress.committed``); nbclient, each ``execute_cell`` of one plain run.
   Targets: the change writes at most 5% of the object's size; the touch writes 0
   bytes. Checked: every cell committed, the saved object (decoded from the store)
   equals the expected one, changed value included, and the create cell wrote at
   least half the object's size (else the bytes are not where this looks for them).
3. ``long_notebook``: per-cell cost of trivial cells (``x17 = 17``) on a 1,000-cell
   notebook against a 110-cell one, both by the difference method against a 10-cell
   notebook: ``(T(n) - T(10)) / (n - 10)``, fastest runs. Target: within 1.2x.
4. ``default_overhead``: ``cell_overhead.py``'s measurement, by its own functions:
   trivial cells, 10 and 110, papermill, nbclient and durabook. Targets: durabook <= 2
   ms per cell, papermill >= 20x durabook.

Sections 1 and 3 keep the warm pool from starting its next kernel during a timed run
(it refills between runs), so a kernel start does not compete for the CPU with the
run; section 4 keeps ``cell_overhead.py``'s method unchanged.

Prints one JSON object on stdout (``--json-out PATH`` also writes it); exits 0 when
every target passes, 1 otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cell_overhead as co
import nbclient
import nbformat

from durabook.engine import Engine, Progress

NAMESPACE_RATIO_MAX = 1.2
LONG_RATIO_MAX = 1.2
CHANGE_FRACTION_MAX = 0.05
TOUCH_BYTES_MAX = 0
CREATE_FRACTION_MIN = 0.5  # sanity: random data cannot be stored in much less
MiB = 1 << 20


# -- shared helpers --------------------------------------------------------------------
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


# -- 1. namespace size -------------------------------------------------------------------
def namespace_sources(nvars: int, touches: int) -> tuple[list[str], dict[str, Any]]:
    """The notebook's cells, and the value every variable must end with."""
    setup = f"for _k in range({nvars}):\n    globals()[f'v{{_k}}'] = [_k]\ndel _k"
    expected: dict[str, Any] = {f"v{i}": [i] for i in range(nvars)}
    sources = [setup]
    for c in range(touches):
        name = f"v{c % nvars}"
        sources.append(f"{name}.append({c})")
        expected[name].append(c)
    return sources, expected


def verify_namespace(
    engine: Engine, iid: str, cells: int, expected: dict[str, Any]
) -> dict[str, Any]:
    done, total = committed(engine, iid)
    ns = saved_state(engine, iid)
    wrong = [n for n, v in expected.items() if n not in ns or ns[n] != v]
    return {
        "instance": iid,
        "committed_cells": done,
        "code_cells": total,
        "variables_checked": len(expected),
        "variables_wrong": len(wrong),
        "wrong_examples": {n: repr(ns.get(n, "<missing>"))[:80] for n in wrong[:5]},
        "ok": done == total == cells and not wrong,
    }


def bench_namespace(work: Path, args: argparse.Namespace) -> tuple[dict[str, Any], dict]:
    bench = co.Bench(work)
    try:
        paths: dict[tuple[int, int], Path] = {}
        expected: dict[tuple[int, int], dict[str, Any]] = {}
        for nvars in args.vars:
            for n in (args.short, args.long):
                src, exp = namespace_sources(nvars, n)
                paths[nvars, n] = write_notebook(work / f"ns{nvars}_t{n}.ipynb", src)
                expected[nvars, n] = exp
        samples = sample(
            bench,
            list(paths.values()),
            {"durabook": args.durabook_repeats, "nbclient": args.repeats},
        )
        checks = {
            str(nvars): verify_namespace(
                bench.engine,
                bench.last_ids[f"ns{nvars}_t{args.long}"],
                1 + args.long,
                expected[nvars, args.long],
            )
            for nvars in args.vars
        }
    finally:
        bench.engine.close()
        shutil.rmtree(bench.home, ignore_errors=True)
    cells = args.long - args.short
    per_cell: dict[str, dict[str, float]] = {}
    for e in samples:
        per_cell[e] = {
            str(nv): per_cell_ms(samples[e], f"ns{nv}_t{args.short}", f"ns{nv}_t{args.long}", cells)
            for nv in args.vars
        }
    small, big = (str(v) for v in (min(args.vars), max(args.vars)))
    grow = ratio(per_cell["durabook"][big], per_cell["durabook"][small])
    result = {
        "method": f"(fastest run with {args.long} touching cells - fastest with {args.short}) "
        f"/ {cells}; same setup cell",
        "variables": args.vars,
        "per_cell_ms": {e: {k: round(v, 3) for k, v in d.items()} for e, d in per_cell.items()},
        "durabook_over_nbclient": {
            k: rounded(ratio(per_cell["durabook"][k], per_cell["nbclient"][k]), 2)
            for k in per_cell["durabook"]
        },
        f"durabook_{big}_over_{small}": rounded(grow, 3),
        "samples_s": {
            e: {k: [round(t, 4) for t in v] for k, v in d.items()} for e, d in samples.items()
        },
        "saved_state": checks,
    }
    targets = {
        f"namespace_{big}_over_{small}_vars": target(grow, NAMESPACE_RATIO_MAX, "<="),
        "namespace_saved_state_correct": check(all(c["ok"] for c in checks.values())),
    }
    return result, targets


# -- 2. big objects -------------------------------------------------------------------------
def big_sources(kind: str, nbytes: int) -> tuple[list[str], dict[str, Any]]:
    """Cells: imports (global random states seeded, so every prefix run saves the same
    bytes), create, change one value, touch without changing."""
    imports = "import random\nimport numpy as np\n"
    seed = "random.seed(0)\nnp.random.seed(0)"
    if kind == "array":
        n = nbytes // 8
        return [
            imports + seed,
            f"a = np.random.default_rng(0).random({n})",
            "a[123456] = 1.0",
            "a.sum()",
        ], {"name": "a", "n": n, "at": 123456}
    rows = nbytes // 64
    row = min(4_000_000, rows // 2)
    return [
        imports + "import pandas as pd\n" + seed,
        "_rng = np.random.default_rng(0)\n"
        f"df = pd.DataFrame({{f'c{{j}}': _rng.random({rows}) for j in range(8)}})\n"
        "del _rng",
        f"df.iloc[{row}, 3] = 1.0",
        "df.shape",
    ], {"name": "df", "rows": rows, "at": row}


def expected_big(kind: str, spec: dict[str, Any]) -> Any:
    import numpy as np

    if kind == "array":
        a = np.random.default_rng(0).random(spec["n"])
        a[spec["at"]] = 1.0
        return a
    import pandas as pd

    rng = np.random.default_rng(0)
    df = pd.DataFrame({f"c{j}": rng.random(spec["rows"]) for j in range(8)})
    df.iloc[spec["at"], 3] = 1.0
    return df


def _is_notebook_json(path: Path, size: int) -> bool:
    if size > 16 * MiB:
        return False
    data = path.read_bytes()
    if not data.startswith(b"{"):
        return False
    try:
        doc = json.loads(data)
    except ValueError:
        return False
    return isinstance(doc, dict) and "cells" in doc and "nbformat" in doc


def blob_files(root: Path) -> tuple[dict[str, int], int]:
    """Size of every file under the blob store, by path; and the bytes of the notebook
    versions the engine also keeps there (left out)."""
    files: dict[str, int] = {}
    notebooks = 0
    if root.exists():
        for p in root.rglob("*"):
            if not p.is_file():
                continue
            size = p.stat().st_size
            if _is_notebook_json(p, size):
                notebooks += size
            else:
                files[str(p.relative_to(root))] = size
    return files, notebooks


class CommitClock(Progress):
    """When each cell's commit returned, as the engine reports it."""

    def __init__(self) -> None:
        self.at: dict[int, float] = {}

    def committed(self, index: int) -> None:
        self.at[index] = time.perf_counter()


def durabook_prefix_run(
    work: Path, sources: list[str], k: int, verify: Callable[[Engine, str], dict[str, Any]] | None
) -> dict[str, Any]:
    """Run the first ``k`` cells on a fresh home: blob store contents after the run, and
    the seconds from the run's start (or the previous cell's commit) to each commit."""
    home = Path(tempfile.mkdtemp(prefix="durabook-bench-big-"))
    path = write_notebook(work / f"big_prefix{k}.ipynb", sources[:k])
    engine = Engine(home, pool_size=1)
    try:
        clock = CommitClock()
        with quiet_pool(engine, refill=False):
            start = time.perf_counter()
            res = engine.run(path, output=work / f"big_prefix{k}.out.ipynb", progress=clock)
            seconds = time.perf_counter() - start
        if res.status.value != "completed":
            raise RuntimeError(f"durabook run {res.id} did not complete: {res!r}")
        if sorted(clock.at) != list(range(k)):
            raise RuntimeError(f"commits reported for cells {sorted(clock.at)}, not 0..{k - 1}")
        marks = [start] + [clock.at[i] for i in range(k)]
        files, notebooks = blob_files(engine.blobs.root)
        out: dict[str, Any] = {
            "seconds": seconds,
            "cell_s": [b - a for a, b in itertools.pairwise(marks)],
            "files": files,
            "bytes": sum(files.values()),
            "notebook_bytes": notebooks,
            "kernel_ms": [c.duration_ms for c in engine.status(res.id).cells],
            "manifest_bytes": manifest_bytes(engine, res.id),
        }
        if verify is not None:
            out["verify"] = verify(engine, res.id)
        return out
    finally:
        engine.close()
        shutil.rmtree(home, ignore_errors=True)


def manifest_bytes(engine: Engine, iid: str) -> list[int] | None:
    """Size of each cell's state row (what the checkpoint put in DuckDB, inline payloads
    included); None when the store's layout does not allow reading it."""
    try:
        latest, _ = engine.store.latest_steps(iid)
        return [len(row["state"] or "") for _, row in sorted(latest.items())]
    except Exception:
        return None


def nbclient_cell_seconds(path: Path) -> list[float]:
    """Wall time of each ``execute_cell`` in one plain nbclient run of the notebook."""
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(nb, kernel_name="python3")
    times = []
    with client.setup_kernel():
        for i, cell in enumerate(nb.cells):
            start = time.perf_counter()
            client.execute_cell(cell, i)
            times.append(time.perf_counter() - start)
    return times


def bench_big(work: Path, args: argparse.Namespace) -> tuple[dict[str, Any], dict]:
    nbytes = args.big_mb * MiB
    result: dict[str, Any] = {
        "method": "bytes: durabook runs the notebook's prefixes (imports; +create; +change; "
        "+touch), each on a fresh home; a cell's bytes = the blob store after its prefix run "
        "minus after the previous one. seconds: durabook, from the previous cell's commit to "
        "this cell's (full notebook, fastest of --big-repeats); nbclient, each execute_cell "
        "of one run (fastest)",
        "object_bytes": nbytes,
    }
    targets: dict[str, Any] = {}
    cell_names = ["create", "change_one_value", "touch_unchanged"]
    for kind in ("array", "dataframe"):
        sources, spec = big_sources(kind, nbytes)

        def verify(engine: Engine, iid: str, kind: str = kind, spec: dict = spec) -> dict:
            done, total = committed(engine, iid)
            got = saved_state(engine, iid).get(spec["name"])
            want = expected_big(kind, spec)
            if kind == "array":
                changed = got is not None and float(got[spec["at"]]) == 1.0
                equal = got is not None and got.shape == want.shape and bool((got == want).all())
            else:
                changed = got is not None and float(got.iloc[spec["at"], 3]) == 1.0
                equal = got is not None and bool(got.equals(want))
            return {
                "instance": iid,
                "committed_cells": done,
                "code_cells": total,
                "changed_value_saved": changed,
                "saved_equals_expected": equal,
            }

        runs: list[list[dict[str, Any]]] = [[] for _ in sources]
        nb_times: list[list[float]] = []
        full = write_notebook(work / f"big_{kind}.ipynb", sources)
        for r in range(args.big_repeats):
            for k in range(1, len(sources) + 1):
                last = r == args.big_repeats - 1 and k == len(sources)
                runs[k - 1].append(durabook_prefix_run(work, sources, k, verify if last else None))
            nb_times.append(nbclient_cell_seconds(full))
        first = [rs[0] for rs in runs]  # bytes: the same in every repeat (reported)
        by_bytes = [sorted({x["bytes"] for x in rs}) for rs in runs]
        cells: dict[str, Any] = {}
        for i, name in enumerate(cell_names, start=1):
            before, after = first[i - 1]["files"], first[i]["files"]
            dura_s = min(x["cell_s"][i] for x in runs[-1])
            nbc_s = min(t[i] for t in nb_times)
            kernel_ms = min((x["kernel_ms"][i] or 0.0) for x in runs[-1])
            mb = first[-1]["manifest_bytes"]
            written = first[i]["bytes"] - first[i - 1]["bytes"]
            cells[name] = {
                "source": sources[i],
                "blob_bytes_written": written,
                "fraction_of_object": round(written / nbytes, 6),
                "new_blob_files": len(set(after) - set(before)),
                "resized_blob_files": sum(
                    1 for f in before if f in after and after[f] != before[f]
                ),
                "durabook_s": round(dura_s, 4),
                "nbclient_s": round(nbc_s, 4),
                "durabook_over_nbclient": rounded(ratio(dura_s, nbc_s), 1),
                "durabook_kernel_reported_s": round(kernel_ms / 1e3, 4),
                "manifest_bytes": mb[i] if mb and len(mb) > i else None,
            }
        verified = runs[-1][-1]["verify"]
        create_ok = cells["create"]["blob_bytes_written"] >= CREATE_FRACTION_MIN * nbytes
        result[kind] = {
            "cells": cells,
            "prefix_runs": [
                {
                    "cells": k + 1,
                    "seconds": [round(x["seconds"], 3) for x in rs],
                    "blob_bytes": by_bytes[k],
                    "blob_files": len(first[k]["files"]),
                    "notebook_bytes_excluded": first[k]["notebook_bytes"],
                }
                for k, rs in enumerate(runs)
            ],
            "blob_bytes_deterministic": all(len(b) == 1 for b in by_bytes),
            "saved_state": verified,
        }
        targets[f"{kind}_change_one_value_fraction"] = target(
            cells["change_one_value"]["fraction_of_object"], CHANGE_FRACTION_MAX, "<="
        )
        targets[f"{kind}_touch_unchanged_bytes"] = target(
            cells["touch_unchanged"]["blob_bytes_written"], TOUCH_BYTES_MAX, "<="
        )
        targets[f"{kind}_saved_state_correct"] = check(
            verified["committed_cells"] == verified["code_cells"] == len(sources)
            and verified["changed_value_saved"]
            and verified["saved_equals_expected"]
            and create_ok,
            create_wrote_at_least_half=create_ok,
        )
    return result, targets


# -- 3. long notebooks ----------------------------------------------------------------------
def bench_long(work: Path, args: argparse.Namespace) -> tuple[dict[str, Any], dict]:
    bench = co.Bench(work)
    lengths = (args.short, args.long, args.long_notebook)
    try:
        paths = [co.make_notebook(work / f"long{n}.ipynb", n) for n in lengths]
        samples = sample(
            bench, paths, {"durabook": args.durabook_repeats, "nbclient": args.repeats}
        )
        done, total = committed(bench.engine, bench.last_ids[f"long{args.long_notebook}"])
    finally:
        bench.engine.close()
        shutil.rmtree(bench.home, ignore_errors=True)
    base = f"long{args.short}"
    per_cell = {
        e: {str(n): per_cell_ms(s, base, f"long{n}", n - args.short) for n in lengths[1:]}
        for e, s in samples.items()
    }
    grow = ratio(
        per_cell["durabook"][str(args.long_notebook)], per_cell["durabook"][str(args.long)]
    )
    result = {
        "method": f"(fastest run of n cells - fastest of {args.short}) / (n - {args.short}); "
        "trivial cells x17 = 17",
        "per_cell_ms": {e: {k: round(v, 3) for k, v in d.items()} for e, d in per_cell.items()},
        f"durabook_{args.long_notebook}_over_{args.long}": rounded(grow, 3),
        "durabook_over_nbclient": {
            k: rounded(ratio(per_cell["durabook"][k], per_cell["nbclient"][k]), 2)
            for k in per_cell["durabook"]
        },
        "samples_s": {
            e: {k: [round(t, 4) for t in v] for k, v in d.items()} for e, d in samples.items()
        },
        "committed_cells": done,
        "code_cells": total,
    }
    targets = {
        f"long_{args.long_notebook}_over_{args.long}_cells": target(grow, LONG_RATIO_MAX, "<="),
        "long_all_committed": check(done == total == args.long_notebook),
    }
    return result, targets


# -- 4. default overhead (cell_overhead.py) ----------------------------------------------
def bench_default(work: Path, args: argparse.Namespace) -> tuple[dict[str, Any], dict]:
    bench = co.Bench(work)
    try:
        paths = {n: co.make_notebook(work / f"cells{n}.ipynb", n) for n in (args.short, args.long)}
        samples = co.measure(bench, paths, args.repeats)
        done = bench.committed_cells(f"cells{args.long}")
    finally:
        bench.engine.close()
        shutil.rmtree(bench.home, ignore_errors=True)
    rep = co.report(samples, args.short, args.long, done)
    dura = rep["per_cell_ms"]["durabook"]
    result = {
        "method": "cell_overhead.py: (fastest long run - fastest short run) / (long - short)",
        "cells": rep["cells"],
        "per_cell_ms": rep["per_cell_ms"],
        "ratios": rep["ratios"],
        "runs_s": rep["runs_s"],
        "samples_s": rep["samples_s"],
        "committed_cells": done,
    }
    targets = {
        "default_per_cell_ms": target(
            dura if dura > 0 else None, co.DURABOOK_PER_CELL_MS_MAX, "<="
        ),
        "default_all_committed": check(done == args.long),
    }
    return result, targets


SECTIONS = {
    "namespace": bench_namespace,
    "big_objects": bench_big,
    "long_notebook": bench_long,
    "default_overhead": bench_default,
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="64 MiB objects, fewest repeats")
    ap.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated subset")
    ap.add_argument("--short", type=int, default=10, help="cells in the short notebooks")
    ap.add_argument("--long", type=int, default=110, help="cells in the long notebooks")
    ap.add_argument("--long-notebook", type=int, default=1000, help="cells of section 3's")
    ap.add_argument("--vars", type=int, nargs=2, default=[100, 10_000], help="namespace sizes")
    ap.add_argument("--big-mb", type=int, help="object size in MiB (512; --quick: 64)")
    ap.add_argument("--big-repeats", type=int, default=1, help="prefix-run rounds, section 2")
    ap.add_argument("--repeats", type=int, help="timed runs per baseline notebook (3; quick: 1)")
    ap.add_argument("--durabook-repeats", type=int, help="timed durabook runs (7; quick: 3)")
    ap.add_argument("--json-out", type=Path, help="also write the JSON report to this file")
    args = ap.parse_args(argv)
    args.big_mb = args.big_mb or (64 if args.quick else 512)
    args.repeats = args.repeats or (1 if args.quick else 3)
    args.durabook_repeats = args.durabook_repeats or (3 if args.quick else 7)
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        ap.error(f"unknown sections {sorted(unknown)}; choose from {list(SECTIONS)}")
    if not 0 < args.short < args.long < args.long_notebook:
        ap.error("need 0 < --short < --long < --long-notebook")
    if min(args.repeats, args.durabook_repeats, args.big_repeats) < 1 or args.big_mb < 1:
        ap.error("repeats and --big-mb must be >= 1")
    if min(args.vars) < 2 or args.vars[0] == args.vars[1]:
        ap.error("--vars needs two different sizes >= 2")
    args.vars = sorted(args.vars)

    report: dict[str, Any] = {
        "benchmark": "checkpoint_cost",
        "quick": args.quick,
        "python": platform.python_version(),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "loadavg_start": [round(x, 2) for x in os.getloadavg()],
        },
    }
    targets: dict[str, Any] = {}
    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="durabook-bench-"))
    try:
        for name in sections:
            t0 = time.perf_counter()
            result, tg = SECTIONS[name](work, args)
            result["elapsed_s"] = round(time.perf_counter() - t0, 1)
            report[name] = result
            targets.update(tg)
            print(f"checkpoint_cost: {name} done in {result['elapsed_s']} s", file=sys.stderr)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    report["elapsed_s"] = round(time.perf_counter() - started, 1)
    report["targets"] = targets
    report["failed"] = [k for k, v in targets.items() if not v["pass"]]
    report["pass"] = bool(targets) and not report["failed"]
    text = json.dumps(report, indent=2)
    print(text)
    if args.json_out:
        args.json_out.write_text(text + "\n")
    return 0 if report["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
