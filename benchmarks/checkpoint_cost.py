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
   trivial cells, 10 and 110, papermill, nbclient and durabook. Target: durabook <= 2
   ms per cell (the papermill ratio is reported).

Every section keeps the warm pool from starting its next kernel during a timed run
(it refills between runs), so a kernel start does not compete for the CPU with the
run. Section 2 lives in ``big_objects.py``, the helpers in ``bench_common.py``.

Prints one JSON object on stdout (``--json-out PATH`` also writes it); exits 0 when
every target passes, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import cell_overhead as co
from bench_common import (
    check,
    committed,
    per_cell_ms,
    ratio,
    rounded,
    sample,
    saved_state,
    target,
    write_notebook,
)
from big_objects import bench_big

from durabook.engine import Engine

NAMESPACE_RATIO_MAX = 1.2
LONG_RATIO_MAX = 1.2


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
