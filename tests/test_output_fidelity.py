"""Output fidelity: a notebook's outputs under durabook are what Jupyter (papermill) shows,
also after a SIGKILL of the kernel or of the runner at a random cell and a resume.

Every notebook in notebooks/gallery/ is run once with papermill's default engine (the
reference, in process, kernel ``python3``) and then with the ``durabook`` CLI three ways:
straight through (``durabook run NB --output OUT``); killed at a cell k and resumed, the
kill hitting the kernel (a child of the `durabook run` process running
``ipykernel_launcher``, found through /proc); and the same with the kill hitting the
`durabook run` process itself (the instance then shows ``failed`` with ``RunnerDied``).

Where the kill lands: k is drawn by a seeded ``random.Random`` (seed printed; set
``DURABOOK_FIDELITY_SEED`` to replay a run) from the code cells after a notebook's set-up
cell (its first code cell not tagged ``parameters``, where the notebooks set process-level
state: styles, display options, warning filters, cwd...), so that every draw resumes with
that state to restore. Every kernel of this module, papermill's included, starts from a
private ``IPYTHONDIR`` whose startup file does nothing unless the profile holds a gate
file; the run to be killed gets a profile that does, and its kernel holds at cell k, either
before the cell's code ("start") or right after its first write to stdout ("mid": the
resumed run must not keep that partial output). The test waits for the hold and for
``durabook status ID --json`` to show cell k ``running`` (every cell before it committed),
then sends the SIGKILL; the resume runs without the gate.

Comparison rules, cell by cell (tests/fidelity.py implements them):

- the cells line up: same count, type, source and tags (injected-parameters included);
- streams: per stream name, the text of all its chunks joined. Where a stream is cut into
  messages, and how stdout, stderr and displays interleave, depends on flush timing;
- ``execute_result`` and ``display_data``: per cell the multiset of (output type, sorted
  mime types, content of the text-like mime types: text/plain, text/html, text/markdown,
  text/latex, application/json, application/javascript). Images and other binary mime types
  count by presence, type and number only: their bytes embed dates and renderer details.
  The order of rich outputs within a cell is not compared;
- errors: the list of (ename, evalue); tracebacks differ in colouring and frames;
- all compared text is normalised first: memory addresses (``0x7f…``), the temporary file a
  kernel compiles a cell to (``/tmp/ipykernel_123/456.py``, named by warnings), durations (a
  number with a unit ns/µs/ms/s/min), and random ids in HTML (uuids, pandas Styler ids
  ``T_xxxxx``, scikit-learn's ``sk-container-id-N`` counters) are replaced by placeholders;
- a cell tagged ``nondeterministic`` is compared by kinds only: its stream names, its
  (output type, mime types) multiset and its error names.

Execution counts and cell metadata (timings, papermill's and durabook's own) are not
compared.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbformat
import papermill
import pytest

from .conftest import cli, cli_json
from .fidelity import differences, write_ipython_dir
from .processes import kernels_of, pid_gone

GALLERY = Path(__file__).resolve().parent.parent / "notebooks" / "gallery"
NOTEBOOKS = sorted(p.name for p in GALLERY.glob("*.ipynb"))
# parameters for two notebooks, so that injection is compared too (int and float values)
PARAMETERS: dict[str, dict[str, Any]] = {
    "signals_numpy_matplotlib.ipynb": {"n_samples": 300},
    "digits_sklearn.ipynb": {"C": 2.0},
}
SEED = int(os.environ.get("DURABOOK_FIDELITY_SEED") or random.SystemRandom().randrange(10**6))


def test_gallery_is_not_empty():
    assert len(NOTEBOOKS) >= 3, NOTEBOOKS


@pytest.fixture(scope="module")
def ipython_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One IPYTHONDIR for every kernel here, so papermill's and durabook's kernels read the
    same (empty but for the gate) profile, whatever the machine's ~/.ipython holds."""
    path = write_ipython_dir(tmp_path_factory.mktemp("ipython"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("IPYTHONDIR", str(path))
        yield path


@pytest.fixture(scope="module")
def reference(ipython_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """papermill's output notebook of a gallery notebook, run once per module."""
    cache: dict[str, Any] = {}

    def get(name: str) -> Any:
        if name not in cache:
            work = tmp_path_factory.mktemp("papermill")
            src = shutil.copy(GALLERY / name, work / name)
            out = work / f"out-{name}"
            papermill.execute_notebook(
                str(src),
                str(out),
                parameters=PARAMETERS.get(name, {}),
                kernel_name="python3",
                cwd=str(work),  # durabook's kernels start in the notebook's folder
                progress_bar=False,
            )
            cache[name] = nbformat.read(out, as_version=4)
        return cache[name]

    return get


@pytest.fixture(autouse=True)
def _private_tmpdir(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A TMPDIR of this test's own for every process it starts: what a killed run leaves
    there (local_helpers.ipynb's project, deleted by its last cell) goes with it. Short,
    unlike tmp_path, because durabook puts its kernels' ipc sockets in TMPDIR too."""
    path = tempfile.mkdtemp(prefix="fidelity-")
    monkeypatch.setenv("TMPDIR", path)
    yield
    shutil.rmtree(path, ignore_errors=True)


def _copy(name: str, tmp_path: Path) -> Path:
    """A private copy: the kernel's cwd is the notebook's folder, kept out of the repo."""
    work = tmp_path / "work"
    work.mkdir()
    return Path(shutil.copy(GALLERY / name, work / name))


def _param_args(name: str) -> list[str]:
    args = []
    for key, value in PARAMETERS.get(name, {}).items():
        args += ["-p", key, str(value)]
    return args


def _assert_same(ref: Any, out: Path, context: str, iid: str | None = None) -> None:
    assert out.exists(), f"{context}: durabook wrote no output notebook"
    found = differences(ref, nbformat.read(out, as_version=4))
    if found and iid:  # how durabook's run ended explains missing outputs
        _, st = cli_json("status", iid)
        if st["error"]:
            err = st["error"]
            found.append(
                f"durabook ended {st['status']} at cell {st['failed_cell']}: "
                f"{err['ename']}: {err['evalue']}"
            )
    assert not found, f"{context}: outputs differ from papermill's:\n  " + "\n  ".join(found)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_run_matches_papermill(name: str, reference: Any, home: Path, tmp_path: Path):
    ref = reference(name)
    nb, out = _copy(name, tmp_path), tmp_path / "out.ipynb"
    proc = cli("run", str(nb), "--output", str(out), "--json", "-q", *_param_args(name))
    iid = json.loads(proc.stdout)["id"] if proc.stdout.strip() else None
    _assert_same(ref, out, f"{name}, durabook run", iid)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["status"] == "completed"


def _pick(name: str, ref: Any, variant: str) -> tuple[str, str]:
    """Cell k (by id) and where in it to hold the kernel; seeded per notebook and variant."""
    source = nbformat.read(GALLERY / name, as_version=4)
    code = [c for c in source.cells if c.cell_type == "code"]
    setup = next(i for i, c in enumerate(code) if "parameters" not in c.metadata.get("tags", []))
    rng = random.Random(f"{SEED}:{name}:{variant}")
    cell = rng.choice(code[setup + 1 :])
    ref_cell = next(c for c in ref.cells if c.get("id") == cell.id)
    prints = any(o.output_type == "stream" and o.name == "stdout" for o in ref_cell.outputs)
    # %%writefile says "Writing" or "Overwriting" by whether the file exists: run again
    # after its write, it rightly says the other, so such a cell is only held at its start
    writes = cell.source.startswith("%%writefile")
    modes = ["start", "mid"] if prints and not writes else ["start"]
    return cell.id, rng.choice(modes)


def _wait_for_hold(proc: subprocess.Popen[str], flag: Path, timeout: float = 90) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if flag.exists():
            return json.loads(flag.read_text())
        if proc.poll() is not None:
            raise AssertionError(
                f"the run ended (exit {proc.returncode}) before reaching the gate: "
                + (proc.stderr.read() if proc.stderr else "")
            )
        time.sleep(0.05)
    raise AssertionError("the kernel never reached the gate")


def _wait_until_running(iid: str, cell_id: str, timeout: float = 60) -> dict:
    """Poll `durabook status` until the held cell has started (or been committed)."""
    deadline = time.monotonic() + timeout
    st: Any = None
    while time.monotonic() < deadline:
        code, st = cli_json("status", iid)
        assert code == 0, st
        cell = next(c for c in st["cells"] if c["cell_id"] == cell_id)
        if cell["status"] in ("running", "committed"):
            return cell
        time.sleep(0.1)
    raise AssertionError(f"cell {cell_id} never showed running: {st}")


def _kill_and_resume(name: str, ref: Any, target: str, tmp_path: Path) -> None:
    variant = f"{target}-sigkill"
    cell_id, mode = _pick(name, ref, variant)
    context = f"{name}, {variant} at cell {cell_id} ({mode}), seed {SEED}"
    print(context)
    nb, out, flag = _copy(name, tmp_path), tmp_path / "out.ipynb", tmp_path / "held.json"
    # this run's kernel only: the resume below starts its kernel from the module's profile
    gated = write_ipython_dir(
        tmp_path / "ipython", {"cell": cell_id, "mode": mode, "flag": str(flag)}
    )
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "durabook",
            "run",
            str(nb),
            "--output",
            str(out),
            "-q",
            *_param_args(name),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "IPYTHONDIR": str(gated)},
    )
    try:
        assert proc.stdout is not None
        iid = proc.stdout.readline().strip()
        assert iid, proc.stderr.read() if proc.stderr else ""
        held = _wait_for_hold(proc, flag)
        if (held["cell_id"], held["where"]) != (cell_id, mode):  # "mid" in a silent cell
            context += f", held at the {held['where']} of {held['cell_id']}"
        cell = _wait_until_running(iid, held["cell_id"])
        print(f"held {held}")
        # the kernel to kill is the runner's ipykernel child that the gate holds
        kernel = held["pid"]
        assert kernel in kernels_of(proc.pid), f"{context}: {kernel} is no kernel of the run"
        if target == "kernel":
            os.kill(kernel, signal.SIGKILL)
            _, err = proc.communicate(timeout=60)
            assert proc.returncode == 1, f"{context}: {err}"
            _, st = cli_json("status", iid)
            assert st["status"] == "failed", f"{context}: {st}"
            assert st["error"]["ename"] == "DeadKernelError", f"{context}: {st['error']}"
        else:
            proc.send_signal(signal.SIGKILL)
            proc.communicate(timeout=30)
            assert pid_gone(kernel), f"{context}: the kernel outlived its runner"
            _, st = cli_json("status", iid)
            assert st["status"] == "failed", f"{context}: {st}"
            assert st["error"]["ename"] == "RunnerDied", f"{context}: {st['error']}"
        assert st["failed_cell"] == cell["index"], f"{context}: {st}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    res = cli("resume", iid, "--json", "-q")
    _assert_same(ref, out, context, iid)
    assert res.returncode == 0, f"{context}: {res.stderr}"
    assert json.loads(res.stdout)["status"] == "completed"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_resume_after_kernel_sigkill_matches_papermill(
    name: str, reference: Any, home: Path, tmp_path: Path
):
    _kill_and_resume(name, reference(name), "kernel", tmp_path)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_resume_after_runner_sigkill_matches_papermill(
    name: str, reference: Any, home: Path, tmp_path: Path
):
    _kill_and_resume(name, reference(name), "runner", tmp_path)
