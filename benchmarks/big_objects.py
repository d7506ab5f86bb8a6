"""Section 2 of checkpoint_cost.py: a 512 MiB array and a 512 MiB DataFrame, one value
changed, then touched unchanged: bytes written to the blob store and seconds per cell
(see checkpoint_cost.py's docstring for the method)."""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nbclient
import nbformat
from bench_common import (
    MiB,
    check,
    committed,
    quiet_pool,
    ratio,
    rounded,
    saved_state,
    target,
    write_notebook,
)

from durabook.engine import Engine, Progress

CHANGE_FRACTION_MAX = 0.05
TOUCH_BYTES_MAX = 0
CREATE_FRACTION_MIN = 0.5  # sanity: random data cannot be stored in much less


# -- big objects -------------------------------------------------------------------------
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
