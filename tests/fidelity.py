"""Helpers of test_output_fidelity.py: what of an output notebook is compared, a gate that
holds a kernel at a chosen cell, and the processes of a `durabook run`.

The comparison rules are stated in test_output_fidelity.py's docstring; this module
implements them (``cell_summary``) and reports differences readably (``differences``).
"""

from __future__ import annotations

import difflib
import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

NONDETERMINISTIC_TAG = "nondeterministic"

# text-like mime types: compared by content, after normalisation
TEXT_MIMES = {
    "text/plain",
    "text/html",
    "text/markdown",
    "text/latex",
    "application/json",
    "application/javascript",
}

_NORMALISE = [
    # memory addresses in default reprs: <Foo at 0x7f3a...>
    (re.compile(r"\b0x[0-9a-fA-F]+"), "0x…"),
    # the file a kernel compiles a cell to, named in warnings and tracebacks
    (re.compile(r"(?:/[^\s:'\"]*)?/ipykernel_\d+/\d+\.py"), "<cell>"),
    (re.compile(r"<ipython-input-\d+-[0-9a-f]+>"), "<cell>"),
    # durations (%time, %%timeit, "took 0.3 s")
    (
        re.compile(r"\b\d+(?:\.\d+)?\s?(?:ns|[µμu]s|ms|s|sec|seconds?|min|minutes?)\b"),
        "<duration>",
    ),
    # random ids in HTML: uuids, pandas Styler table ids, scikit-learn's per-process counters
    (re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"), "<uuid>"),
    (re.compile(r"\bT_[0-9a-f]{5}"), "T_<uuid>"),
    (re.compile(r"\bsk-(container|estimator)-id-\d+"), r"sk-\1-id-<n>"),
]


def normalise(text: str) -> str:
    for pattern, repl in _NORMALISE:
        text = pattern.sub(repl, text)
    return text


def _text(value: Any) -> str:
    if isinstance(value, list):  # nbformat allows multiline strings as lists
        return "".join(value)
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True)  # application/json holds objects


def cell_summary(cell: dict[str, Any]) -> dict[str, Any]:
    """What of a code cell's outputs is compared (see the test module's docstring)."""
    kinds_only = NONDETERMINISTIC_TAG in cell.get("metadata", {}).get("tags", [])
    streams: dict[str, str] = {}
    rich: Counter[tuple[Any, ...]] = Counter()
    errors: list[tuple[str, str]] = []
    for out in cell.get("outputs", []):
        kind = out["output_type"]
        if kind == "stream":
            # all chunks of one stream joined: chunking and the interleaving of stdout,
            # stderr and displays depend on flush timing, not on the executor
            streams[out["name"]] = streams.get(out["name"], "") + _text(out["text"])
        elif kind == "error":
            errors.append((out["ename"], "" if kinds_only else normalise(out["evalue"])))
        else:
            data = out.get("data", {})
            mimes = tuple(sorted(data))
            content: tuple[Any, ...] = ()
            if not kinds_only:
                # images (and any other binary mime) by presence only: their bytes vary
                content = tuple((m, normalise(_text(data[m]))) for m in mimes if m in TEXT_MIMES)
            rich[(kind, mimes, content)] += 1
    return {
        "streams": sorted(streams) if kinds_only else {k: normalise(v) for k, v in streams.items()},
        "rich": rich,
        "errors": errors,
    }


def _short(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[:limit] + f"… ({len(text)} chars)"


def _describe_rich(item: tuple[Any, ...]) -> str:
    kind, mimes, content = item
    plain = dict(content).get("text/plain")
    return f"{kind} {list(mimes)}" + (f" {_short(plain, 120)!r}" if plain is not None else "")


def _diff(ref: str, dur: str, lines: int = 16) -> str:
    diff = list(
        difflib.unified_diff(
            ref.splitlines(), dur.splitlines(), "papermill", "durabook", lineterm="", n=1
        )
    )
    more = [f"... ({len(diff) - lines} more diff lines)"] if len(diff) > lines else []
    return "\n      ".join(diff[:lines] + more)


def _cell_differences(ref: dict[str, Any], dur: dict[str, Any]) -> list[str]:
    out: list[str] = []
    a, b = cell_summary(ref), cell_summary(dur)
    if a["streams"] != b["streams"]:
        if isinstance(a["streams"], dict):
            for name in sorted(set(a["streams"]) | set(b["streams"])):
                x, y = a["streams"].get(name, ""), b["streams"].get(name, "")
                if x != y:
                    out.append(f"{name} differs:\n      " + _diff(x, y))
        else:
            out.append(f"streams differ: papermill {a['streams']}, durabook {b['streams']}")
    if a["rich"] != b["rich"]:
        extra = list((b["rich"] - a["rich"]).elements())
        for item in (a["rich"] - b["rich"]).elements():
            # an output of the same kind and mime types on both sides: show how it differs
            partner = next((e for e in extra if e[:2] == item[:2]), None)
            if partner is None:
                out.append(f"missing in durabook: {_describe_rich(item)}")
                continue
            extra.remove(partner)
            mine, theirs = dict(partner[2]), dict(item[2])
            # text/plain says it best; other mime types only when it is the same
            shown = [m for m in theirs if m == "text/plain" and mine[m] != theirs[m]] or [
                m for m in theirs if mine[m] != theirs[m]
            ]
            for mime in shown:
                out.append(f"{item[0]} {mime} differs:\n      " + _diff(theirs[mime], mine[mime]))
        out.extend(f"extra in durabook: {_describe_rich(item)}" for item in extra)
    if a["errors"] != b["errors"]:
        out.append(f"errors differ: papermill {a['errors']}, durabook {b['errors']}")
    return out


def differences(ref_nb: Any, dur_nb: Any) -> list[str]:
    """Every difference between papermill's output notebook and durabook's, readably."""
    if len(ref_nb.cells) != len(dur_nb.cells):
        return [f"cell count: papermill {len(ref_nb.cells)}, durabook {len(dur_nb.cells)}"]
    found: list[str] = []
    for index, (ref, dur) in enumerate(zip(ref_nb.cells, dur_nb.cells)):
        where = f"cell {index} ({ref.get('id')})"
        if (ref.cell_type, ref.source) != (dur.cell_type, dur.source):
            found.append(f"{where}: type or source differs: {dur.cell_type} {dur.source[:80]!r}")
            continue
        ref_tags = ref.get("metadata", {}).get("tags", [])
        dur_tags = dur.get("metadata", {}).get("tags", [])
        if ref_tags != dur_tags:
            found.append(f"{where}: tags differ: papermill {ref_tags}, durabook {dur_tags}")
        if ref.cell_type == "code":
            found.extend(f"{where}: {d}" for d in _cell_differences(ref, dur))
    return found


# -- the gate -----------------------------------------------------------------------------
GATE_FILE = "fidelity_gate.json"  # in the profile folder: {"cell", "mode", "flag"}

# An IPython startup file that holds the kernel at one cell when the profile folder holds
# GATE_FILE ("start": before the cell's code; "mid": right after its first write to stdout),
# and does nothing otherwise. It uses IPython's pre_run_cell event, which fires for every
# cell a kernel runs (nbclient's or durabook's), so the notebook under test stays as it is;
# it is found through the profile, not the environment, which durabook scrubs for kernels.
GATE_STARTUP = """\
def _fidelity_gate():
    import json
    import os
    import sys
    import time

    shell = get_ipython()
    path = os.path.join(shell.profile_dir.location, "fidelity_gate.json")
    if not os.path.exists(path):
        return
    with open(path) as fh:
        gate = json.load(fh)
    state = {"armed": False}

    def hold(where, cell_id):
        sys.stdout.flush()
        sys.stderr.flush()
        with open(gate["flag"] + ".tmp", "w") as fh:
            json.dump({"pid": os.getpid(), "cell_id": cell_id, "where": where}, fh)
        os.replace(gate["flag"] + ".tmp", gate["flag"])
        deadline = time.monotonic() + 120  # the test kills us long before
        while time.monotonic() < deadline:
            time.sleep(0.05)

    def pre_run_cell(info):
        cell_id = getattr(info, "cell_id", None)
        if state["armed"]:  # "mid", and the cell printed nothing: hold at the next one
            hold("start", cell_id)
        if cell_id != gate["cell"]:
            return
        if gate["mode"] == "start":
            hold("start", cell_id)
            return
        state["armed"] = True
        stream = sys.stdout
        write = stream.write

        def first_write(text):
            n = write(text)
            state["armed"] = False
            hold("mid", cell_id)
            return n

        stream.write = first_write

    shell.events.register("pre_run_cell", pre_run_cell)


_fidelity_gate()
del _fidelity_gate
"""


def write_ipython_dir(path: Path, gate: dict[str, str] | None = None) -> Path:
    """An IPYTHONDIR with the gate's startup file, armed with ``gate`` if given."""
    profile = path / "profile_default"
    (profile / "startup").mkdir(parents=True, exist_ok=True)
    (profile / "startup" / "00-fidelity-gate.py").write_text(GATE_STARTUP)
    if gate is not None:
        (profile / GATE_FILE).write_text(json.dumps(gate))
    return path
