"""Widgets: RunMonitor and ScheduleView against a real `durabook serve`, real kernels.

A RunMonitor follows runs cell by cell until they settle, never shows a failed run as
completed, stops polling when done, and leaves text/plain and text/html behind in a
saved notebook; a ScheduleView lists schedules with their next fire times.
"""

from __future__ import annotations

import copy
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import nbformat
import pytest
from nbclient import NotebookClient
from nbformat.v4 import new_code_cell, new_notebook

from durabook.api.models import NameRequest, ScheduleSpec
from durabook.client import Client
from durabook.widgets import RunMonitor, ScheduleView

from .conftest import KERNELSPEC, write_nb

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A `durabook serve` on a fresh home: its path."""
    home = tmp_path_factory.mktemp("widgets") / "home"
    args = ["--home", str(home), "serve", "--concurrency", "2", "--warm", "1"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "durabook", *args],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        first = proc.stderr.readline()
        assert "durabook engine for" in first, first
        threading.Thread(target=proc.stderr.read, daemon=True).start()  # never let it block
        yield home
    finally:
        proc.terminate()
        proc.wait(30)


def _until(cond: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_failed_run_is_followed_cell_by_cell_and_never_shown_completed(
    served: Path, tmp_path: Path
):
    nb = write_nb(
        tmp_path / "fails.ipynb", ["x = 1", "import time\ntime.sleep(0.3)\n1 / 0", "y = 2"]
    )
    with Client(served) as client:
        ref = client.create(nb)
        mon = RunMonitor(ref.id, client=client, interval=0.1)
        thread = mon._thread
        seen: list[list[dict[str, Any]]] = [mon.snapshot()]
        mon.observe(lambda change: seen.append(copy.deepcopy(change["new"])), names="runs")
        assert thread is not None and mon.polling
        assert mon.wait(60)
    (run,) = mon.runs
    assert run["id"] == ref.id and run["status"] == "failed"
    assert [c["status"] for c in run["cells"]] == ["committed", "failed", "pending"]
    assert run["committed"] == 1 and run["total"] == 3 and run["current"] == 1
    assert run["error"] == {"cell": 1, "ename": "ZeroDivisionError", "evalue": "division by zero"}
    assert run["cells"][1]["attempts"] == 1 and run["cells"][1]["duration_s"] >= 0.3
    # every state it went through was a real one, in order; none of them said completed
    statuses = [s[0]["status"] for s in seen]
    assert set(statuses) <= {"queued", "running", "failed"}, statuses
    assert statuses[0] in ("queued", "running") and statuses[-1] == "failed"
    first_failed = statuses.index("failed")
    assert all(s == "failed" for s in statuses[first_failed:])
    # the fallbacks a saved notebook shows
    data, _ = mon._repr_mimebundle_()
    assert WIDGET_VIEW in data  # the live view, with the fallbacks beside it
    text, page = data["text/plain"], data["text/html"]
    assert text == repr(mon) == mon.to_text()
    assert text.splitlines()[0] == (
        f"run {ref.id}  failed  1/3 cells  cell 1: ZeroDivisionError: division by zero  "
        "(fails.ipynb)"
    )
    assert text.splitlines()[1] == "  ✓✗·"
    assert ref.id in page and "failed" in page and "ZeroDivisionError: division by zero" in page
    assert 'title="cell 1: failed, 1 attempt' in page and "<script" not in page
    for rendering in (text, page):
        assert "completed" not in rendering.lower()
    # polling has stopped on its own
    thread.join(5)
    assert not thread.is_alive() and not mon.polling and not mon.live
    mon.close()


def test_a_list_of_ids_and_queries(served: Path, tmp_path: Path):
    ok = write_nb(tmp_path / "ok.ipynb", ["a = 1", "b = a + 1"])
    bad = write_nb(tmp_path / "bad.ipynb", ["raise ValueError('nope')"])
    with Client(served) as client:
        a = client.create(ok, tenant="wt").id
        b = client.create(bad, tenant="wt").id
        both = RunMonitor([a, b], client=client, interval=0.1)
        by_tenant = RunMonitor({"tenant": "wt"}, client=client, interval=0.1)
        by_notebook = RunMonitor({"notebook": str(ok)}, client=client, interval=0.1)
        for mon in (both, by_tenant, by_notebook):
            assert mon.wait(60)
        only_failed = RunMonitor({"status": "failed", "tenant": "wt"}, client=client)
        ghost = RunMonitor("no-such-run", client=client)
        with pytest.raises(ValueError):  # what `durabook list` does not filter on
            RunMonitor({"colour": "red"}, client=client)
    assert [(r["id"], r["status"]) for r in both.runs] == [(a, "completed"), (b, "failed")]
    assert {r["id"]: r["status"] for r in by_tenant.runs} == {a: "completed", b: "failed"}
    assert [r["id"] for r in by_notebook.runs] == [a]
    assert [r["id"] for r in only_failed.runs] == [b] and not only_failed.polling
    assert ghost.runs[0]["status"] == "unknown" and not ghost.polling
    lines = both.to_text().splitlines()
    assert lines[0] == "2 runs: 1 completed, 1 failed"
    assert lines[1].startswith(f"run {a}  completed  2/2 cells  2 cells in ")
    assert lines[3].startswith(f"run {b}  failed  0/1 cells  cell 0: ValueError: nope")
    page = both.to_html()
    assert page.count("<tr>") == 2 and a in page and b in page
    for mon in (both, by_tenant, by_notebook, only_failed, ghost):
        mon.close()


def test_a_notebook_that_submits_a_run_saves_readable_fallbacks(served: Path, tmp_path: Path):
    """The monitor made in a notebook that submits the run with Client.create: its output
    keeps text/html and text/plain, updated to the final state once the run settled."""
    target = write_nb(tmp_path / "target.ipynb", ["import time\ntime.sleep(0.3)", "z = 3"])
    iid = "widget-demo-1"
    cells = [
        "from durabook import Client\n"
        "from durabook.widgets import RunMonitor\n"
        f"client = Client({str(served)!r})\n"
        f"ref = client.create({str(target)!r}, id={iid!r})\n"
        "mon = RunMonitor(ref.id, client=client, interval=0.1)\n"
        "mon",
        "assert mon.wait(60)\nprint(mon.runs[0]['status'], mon.polling)",
    ]
    nb = new_notebook(cells=[new_code_cell(c) for c in cells], metadata={"kernelspec": KERNELSPEC})
    NotebookClient(
        nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    nbformat.write(nb, tmp_path / "out.ipynb")
    saved = nbformat.read(tmp_path / "out.ipynb", as_version=4)
    assert saved.cells[1].outputs[0]["text"] == "completed False\n"
    (out,) = saved.cells[0].outputs
    assert out.output_type == "display_data"
    text, page = out.data["text/plain"], out.data["text/html"]
    assert text.startswith(f"run {iid}  completed  2/2 cells") and "(target.ipynb)" in text
    assert iid in page and "completed" in page and "<script" not in page
    assert WIDGET_VIEW not in out.data  # settled: the static rendering replaced the live view


def test_schedule_view_lists_schedules_with_their_next_fires(served: Path, tmp_path: Path):
    nb = write_nb(tmp_path / "nightly.ipynb", ["x = 1"])
    spec = ScheduleSpec(name="nightly-w", notebook=str(nb), cron="30 2 * * *", tz="Europe/Paris")
    with Client(served) as client:
        with client.engine() as svc:
            info = svc.schedule_add(spec)
        view = ScheduleView(client=client, interval=0.1)
        try:
            assert len(info.next_fires) == 3 and view.polling
            (row,) = [s for s in view.schedules if s["name"] == "nightly-w"]
            assert row["next_fires"] == [f.isoformat() for f in info.next_fires]
            paris = [
                f"{f.astimezone(ZoneInfo('Europe/Paris')):%Y-%m-%d %H:%M}" for f in info.next_fires
            ]
            assert all(p.endswith(" 02:30") for p in paris)
            text, page = view.to_text(), view.to_html()
            assert "nightly-w  30 2 * * *  Europe/Paris  active  nightly.ipynb" in text
            assert f"  next: {', '.join(paris)}" in text
            assert all(p in page for p in paris) and "nightly-w" in page and "<th" in page
            # live: a paused schedule shows as paused at the next poll
            with client.engine() as svc:
                svc.schedule_pause(NameRequest(name="nightly-w"))
            _until(lambda: any(s["paused"] for s in view.schedules if s["name"] == "nightly-w"))
            assert "nightly-w  30 2 * * *  Europe/Paris  paused" in view.to_text()
        finally:
            view.close()
    assert not view.polling


def test_the_widget_script_parses_and_durabook_imports_no_anywidget(tmp_path: Path):
    from durabook import widgets

    if shutil.which("node"):
        (tmp_path / "w.mjs").write_text(widgets._ESM)
        check = subprocess.run(["node", "--check", str(tmp_path / "w.mjs")], capture_output=True)
        assert check.returncode == 0, check.stderr
    probe = "import sys, durabook, durabook.client; print('anywidget' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert out.stdout.strip() == "False", out.stderr
