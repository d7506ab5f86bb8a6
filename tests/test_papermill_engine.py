"""The papermill engine ``durabook``: registered, and as good as papermill's default engine.

Every notebook papermill ships for its own tests is run twice, with papermill's default
engine (nbclient) and with ``engine_name="durabook"``, on real kernels; the two runs must
end the same way (same exception, or none) and give the same output notebook.
"""

from __future__ import annotations

import importlib.metadata
import importlib.resources
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import nbformat
import papermill
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook
from papermill.engines import papermill_engines
from papermill.exceptions import PapermillExecutionError

from durabook.papermill_engine import DurabookEngine

PM_NOTEBOOKS = Path(str(importlib.resources.files("papermill.tests").joinpath("notebooks")))
KERNELSPEC = {"name": "python3", "language": "python", "display_name": "Python 3"}

# How papermill's own tests (papermill/tests/test_execute.py, test_autosave.py) call the
# notebooks they execute; kernel_name="python3" is passed to all, as test_execute.py does.
CALLS: dict[str, dict[str, Any]] = {
    "blank-vscode.ipynb": {"parameters": {"var": "It works"}},
    "nb_version_4.4.ipynb": {"parameters": {"var": "It works"}},
    "no_parameters.ipynb": {"parameters": {"msg": "Hello"}},
    "simple_execute.ipynb": {"parameters": {"msg": "Hello"}},
    "report_mode_test.ipynb": {"parameters": {"a": 0}, "report_mode": True},
    "test_autosave.ipynb": {"autosave_cell_every": 1},
    # only inspected by papermill's tests (test_inspect.py): run with parameters of our own
    "complex_parameters.ipynb": {"parameters": {"msg": "Hello", "a": 3.5}},
    # sleep(60) "until interrupted": papermill's tests only prepare it (prepare_only=True never
    # reaches an engine); a 2 s execution_timeout interrupts it, as papermill's CLI option would
    "keyboard_interrupt.ipynb": {"execution_timeout": 2},
}
CWD_CHECK = "read_check.ipynb"  # TestCWD: must run in a cwd that holds check.txt

SKIP = {
    "binder.ipynb": "a %%bash cell runs papermill on paths relative to site-packages "
    "(writes into the installed papermill package); no papermill test executes it",
    "notimplemented_translator.ipynb": "R kernel (non-Python): no R kernel, no R translator",
}


def _pm_notebooks() -> list[Any]:
    """Top-level notebooks only: s3/ and gcs/ hold fixtures of papermill's cloud I/O tests."""
    params = []
    for path in sorted(PM_NOTEBOOKS.glob("*.ipynb")):
        marks = [pytest.mark.skip(reason=SKIP[path.name])] if path.name in SKIP else []
        params.append(pytest.param(path, id=path.stem, marks=marks))
    return params


@pytest.fixture
def durabook_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "durabook-home"
    monkeypatch.setenv("DURABOOK_HOME", str(home))
    monkeypatch.chdir(tmp_path)
    return home


def _execute(
    path: Path, out: Path, engine: str | None, **kwargs: Any
) -> tuple[BaseException | None, nbformat.NotebookNode | None]:
    """Run one notebook through papermill; return (exception raised, output notebook)."""
    error: BaseException | None = None
    try:
        papermill.execute_notebook(
            str(path),
            str(out),
            engine_name=engine,
            kernel_name="python3",
            progress_bar=False,
            **kwargs,
        )
    except Exception as exc:
        error = exc
    return error, nbformat.read(out, as_version=4) if out.exists() else None


def _error_summary(error: BaseException | None) -> Any:
    if error is None:
        return None
    if isinstance(error, PapermillExecutionError):
        return (type(error), error.cell_index, error.exec_count, error.ename, error.evalue)
    return (type(error), str(error))


def _output_summary(output: dict[str, Any]) -> tuple[Any, ...]:
    kind = output["output_type"]
    if kind == "stream":
        return (kind, output["name"], output["text"])
    if kind == "error":  # tracebacks differ in ANSI colouring and frames: compare the error
        return (kind, output["ename"], output["evalue"])
    data = output.get("data", {})
    return (kind, sorted(data), data.get("text/plain"))


def _outputs_summary(outputs: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """Outputs as compared; consecutive same-name stream outputs are joined, since where a
    stream is cut into messages depends on the kernel's flush timing, not on the engine."""
    merged: list[dict[str, Any]] = []
    for out in outputs:
        last = merged[-1] if merged else None
        if (
            out["output_type"] == "stream"
            and last is not None
            and last["output_type"] == "stream"
            and last["name"] == out["name"]
        ):
            merged[-1] = {**last, "text": last["text"] + out["text"]}
        else:
            merged.append(out)
    return [_output_summary(o) for o in merged]


def _cell_summary(cell: dict[str, Any]) -> dict[str, Any]:
    """What of a cell is deterministic: no timings, no traceback text."""
    meta = cell.get("metadata", {})
    pm = meta.get("papermill", {})
    summary = {
        "cell_type": cell["cell_type"],
        "source": cell["source"],
        "tags": meta.get("tags", []),
        "source_hidden": meta.get("jupyter", {}).get("source_hidden"),
        "papermill.status": pm.get("status"),
        "papermill.exception": pm.get("exception"),
        "papermill.started": pm.get("start_time") is not None,
    }
    if cell["cell_type"] == "code":
        summary["execution_count"] = cell.get("execution_count")
        summary["outputs"] = _outputs_summary(cell.get("outputs", []))
    return summary


@pytest.mark.parametrize("notebook", _pm_notebooks())
def test_durabook_engine_matches_default_engine_on_papermill_notebooks(
    notebook: Path, durabook_home: Path, tmp_path: Path
):
    kwargs = dict(CALLS.get(notebook.name, {}))
    if notebook.name == CWD_CHECK:
        workdir = tmp_path / "workdir"
        workdir.mkdir()
        (workdir / "check.txt").write_text("exists")
        kwargs["cwd"] = str(workdir)

    default_error, default_nb = _execute(notebook, tmp_path / "default.ipynb", None, **kwargs)
    durabook_error, durabook_nb = _execute(
        notebook, tmp_path / "durabook.ipynb", "durabook", **kwargs
    )

    assert _error_summary(durabook_error) == _error_summary(default_error)
    assert default_nb is not None, f"default engine wrote no output ({default_error!r})"
    assert durabook_nb is not None, f"durabook engine wrote no output ({durabook_error!r})"

    assert len(durabook_nb.cells) == len(default_nb.cells)
    for index, (dur, ref) in enumerate(zip(durabook_nb.cells, default_nb.cells)):
        assert _cell_summary(dur) == _cell_summary(ref), f"cell {index} differs"

    ref_pm, dur_pm = default_nb.metadata.papermill, durabook_nb.metadata.papermill
    assert dur_pm.get("parameters") == ref_pm.get("parameters")
    assert dur_pm.get("exception") == ref_pm.get("exception")
    assert durabook_nb.metadata.get("durabook", {}).get("instance_id")
    assert "durabook" not in default_nb.metadata


def test_durabook_engine_is_registered_with_papermill():
    entry_points = {ep.name: ep for ep in importlib.metadata.entry_points(group="papermill.engine")}
    assert "durabook" in entry_points
    assert entry_points["durabook"].value == "durabook.papermill_engine:DurabookEngine"
    assert entry_points["durabook"].load() is DurabookEngine
    assert papermill_engines.get_engine("durabook") is DurabookEngine


def test_papermill_cli_with_durabook_engine_injects_parameters(durabook_home: Path, tmp_path: Path):
    source = tmp_path / "greet.ipynb"
    cells = [
        new_markdown_cell("# greet"),
        new_code_cell("greeting = 'default'\ntimes = 1", metadata={"tags": ["parameters"]}),
        new_code_cell("print(greeting * times)"),
        new_code_cell("len(greeting) * times"),
    ]
    nbformat.write(new_notebook(cells=cells, metadata={"kernelspec": KERNELSPEC}), source)
    output = tmp_path / "greet-out.ipynb"

    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "papermill",
            str(source),
            str(output),
            "--engine",
            "durabook",
            "-p",
            "greeting",
            "hi-durabook ",
            "-p",
            "times",
            "2",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "DURABOOK_HOME": str(durabook_home)},
        timeout=120,
    )

    assert proc.returncode == 0, proc.stderr
    nb = nbformat.read(output, as_version=4)
    assert nb.metadata.papermill.parameters == {"greeting": "hi-durabook ", "times": 2}
    injected = nb.cells[2]
    assert injected.metadata.tags == ["injected-parameters"]
    assert 'greeting = "hi-durabook "' in injected.source
    assert [o.text for o in nb.cells[3].outputs if o.output_type == "stream"] == [
        "hi-durabook hi-durabook \n"
    ]
    assert nb.cells[4].outputs[0].data["text/plain"] == "24"
    assert all(c.metadata.papermill.status == "completed" for c in nb.cells)
    iid = nb.metadata.durabook.instance_id
    assert iid
    assert iid in proc.stderr  # papermill's log names the instance to resume
    assert (durabook_home / "durabook.duckdb").exists()


def test_papermill_runs_through_a_serving_engine(durabook_home: Path, tmp_path: Path):
    """With `durabook serve` owning the home, papermill's run goes through its engine
    (its queue and limits): outputs, errors and the instance as without one."""
    source = tmp_path / "p.ipynb"
    cells = [
        new_code_cell("n = 1", metadata={"tags": ["parameters"]}),
        new_code_cell("print(n * 3)"),
        new_code_cell("raise ValueError(n)"),
    ]
    nbformat.write(new_notebook(cells=cells, metadata={"kernelspec": KERNELSPEC}), source)
    serve = subprocess.Popen(
        [sys.executable, "-m", "durabook", "serve", "--concurrency", "1"],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert serve.stderr is not None and "durabook engine" in serve.stderr.readline()
        out = tmp_path / "p-out.ipynb"
        with pytest.raises(PapermillExecutionError):
            papermill.execute_notebook(
                str(source), str(out), parameters={"n": 7}, engine_name="durabook"
            )
        nb = nbformat.read(out, as_version=4)
        printed = next(c for c in nb.cells if c.source == "print(n * 3)")
        assert printed.outputs[0]["text"] == "21\n"
        iid = nb.metadata["durabook"]["instance_id"]
        st = subprocess.run(
            [sys.executable, "-m", "durabook", "status", iid, "--json"],
            capture_output=True,
            text=True,
        )
        assert '"status": "failed"' in st.stdout
    finally:
        serve.terminate()
        serve.wait(30)
