"""The JupyterLab face, driven in Debian's Chromium by Playwright against a real
`jupyter lab`: run a notebook durably, see it fail in the Runs panel and the run
view, open it at the failed cell, edit that cell, resume from it, see it completed
(the cells before it ran once); schedule a notebook every minute and see its run;
pause, unpause, send an event to and terminate runs from the panel.

Screenshots go to tests/artifacts/ (``$DURABOOK_TEST_ARTIFACTS``)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import write_nb
from .lab import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, Lab, start_lab

sync_api = pytest.importorskip("playwright.sync_api")
if not Path(CHROMIUM).exists():  # .ci/run installs it (apt-get install chromium)
    pytest.skip(f"no Chromium at {CHROMIUM}", allow_module_level=True)

pytestmark = pytest.mark.timeout(420)
T = 60_000  # ms: generous for a loaded 2-core machine
NB = ".jp-NotebookPanel:visible"  # the notebook in front (others stay open in their tabs)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    root = tmp_path_factory.mktemp("ui") / "root"
    root.mkdir()
    write_nb(
        root / "wf.ipynb",
        [
            ("n = 3", ["parameters"]),
            "open('ran.log', 'a').write('c1\\n'); x = n * 2",
            "y = x / 0",
            "print('y', y)",
        ],
    )
    write_nb(root / "tick.ipynb", ["import datetime; print(datetime.datetime.now())"])
    write_nb(
        root / "approval.ipynb",
        ["import durabook", "data = durabook.wait_for_event('approval')", "print('got', data)"],
    )
    lab = start_lab(root)
    yield lab
    lab.stop()


@pytest.fixture(scope="module")
def page(lab: Lab) -> Iterator[Any]:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1280, "height": 760})
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        yield page
        context.close()
        browser.close()
    assert not [e for e in errors if "durabook" in e.lower()], errors


def _open(page: Any, lab: Lab, path: str) -> None:
    page.goto(f"{lab.url}/lab/tree/{path}?token={lab.token}")
    page.locator(f"{NB} .jp-durabook-run-button").wait_for(timeout=T)
    page.locator(f"{NB} .jp-Notebook .jp-Cell").first.wait_for(timeout=T)
    current = ".lm-DockPanel-tabBar .lm-TabBar-tab.lm-mod-current .lm-TabBar-tabLabel"
    page.locator(current, has_text=path).first.wait_for(timeout=T)


def _sidebar(page: Any, tab: str) -> None:
    side = page.locator('.jp-SideBar .lm-TabBar-tab[data-id="durabook-sidebar"]')
    if "lm-mod-current" not in (side.get_attribute("class") or ""):
        side.click()
    page.locator(".jp-durabook-sidebar .lm-TabBar-tab", has_text=tab).click()


def _shot(page: Any, name: str) -> Path:
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path))
    return path


def test_schedule_form_previews_and_adds(page: Any, lab: Lab) -> None:
    _open(page, lab, "tick.ipynb")
    # looking makes no home: a folder never used with durabook stays as it was
    _sidebar(page, "Runs")
    note = page.locator('.jp-durabook-engine[data-mode="idle"]')
    assert "starts with the first durable run" in note.inner_text(timeout=T)
    page.wait_for_timeout(2500)  # a poll of the panel and of the notebook's badges
    assert not lab.home.exists()
    page.locator(f"{NB} .jp-durabook-schedule-button").click()
    form = page.locator(".jp-durabook-schedule-form")
    form.wait_for(timeout=T)
    form.locator("input[name=name]").fill("tick-every-minute")
    form.locator("input[name=cron]").fill("* * * * *")
    form.locator("input[name=tz]").fill("Europe/Paris")
    page.wait_for_selector(".jp-durabook-next-fires li >> nth=4", timeout=T)
    assert "every minute" in form.locator(".jp-durabook-cron-text").inner_text().lower()
    _shot(page, "schedule-form")
    page.click(".jp-Dialog .jp-mod-accept")
    info = _wait(lambda: _ok(lab.api("GET", "/schedules/tick-every-minute")), "schedule")
    assert info["cron"] == "* * * * *" and info["tz"] == "Europe/Paris"
    assert info["notebook"] == str(lab.root / "tick.ipynb")


def test_run_fail_edit_resume(page: Any, lab: Lab) -> None:
    _open(page, lab, "wf.ipynb")
    page.locator(f"{NB} .jp-durabook-run-button").click()
    dialog = page.locator(".jp-durabook-params")
    dialog.wait_for(timeout=T)
    assert dialog.locator("input[name=n]").get_attribute("data-kind") == "int"
    dialog.locator("input[name=n]").fill("4")
    page.click(".jp-Dialog .jp-mod-accept")

    # the Runs panel shows it failed, never completed
    _sidebar(page, "Runs")
    row = page.locator(".jp-durabook-run", has_text="wf.ipynb").first
    row.locator(".jp-durabook-chip-failed").wait_for(timeout=T)
    assert row.locator(".jp-durabook-chip").inner_text() == "failed"
    assert "inside JupyterLab" in page.locator(".jp-durabook-engine").inner_text()
    iid = row.get_attribute("data-id")
    assert iid
    status = lab.api("GET", f"/instances/{iid}").json()
    assert status["status"] == "failed" and status["parameters"] == {"n": 4}
    _shot(page, "runs-panel")

    # the run view: timeline, the failed cell's error
    row.click()
    view = page.locator(".jp-durabook-runview").last
    view.locator(".jp-durabook-traceback").wait_for(timeout=T)
    assert "ZeroDivisionError" in view.locator(".jp-durabook-traceback").inner_text()
    assert view.locator(".jp-durabook-cell-failed").count() == 1
    assert view.locator(".jp-durabook-cell-committed").count() >= 2
    assert view.locator(".jp-durabook-cell-pending").count() == 1
    heads = view.locator(".jp-durabook-timeline thead").inner_text()
    assert "CPU" in heads and "memory" in heads  # metered cells
    assert "MB" in view.locator(".jp-durabook-cell-committed").first.inner_text()
    _shot(page, "run-view")

    # visual resume: open it at the failed cell, edit the cell, resume from it
    view.locator(".jp-durabook-open-failed").click()
    failed = page.locator(f"{NB} .jp-durabook-failed-cell")
    failed.wait_for(timeout=T)
    assert "y = x / 0" in failed.locator(".cm-content").inner_text()
    failed.locator(".cm-content").click()
    page.keyboard.press("Control+A")
    page.keyboard.type("y = x / 2")
    _shot(page, "failed-cell-edited")
    failed.locator(".jp-durabook-resume").click()
    badges = page.locator(f"{NB} .jp-durabook-badge")

    def states() -> list[str | None]:
        return [badges.nth(i).get_attribute("data-status") for i in range(badges.count())]

    _wait(lambda: states() == ["committed"] * 4 or None, "four committed badges")
    # the toolbar's run status (it may sit in the toolbar's overflow menu)
    bar = page.locator(f'{NB} .jp-durabook-runbar [data-status="completed"]')
    bar.wait_for(state="attached", timeout=T)
    assert page.locator(f"{NB} .jp-durabook-failed-cell").count() == 0
    _shot(page, "cell-badges")

    # through the API: completed, the cells before the edited one ran once
    body = lab.api("GET", f"/instances/{iid}").json()
    assert body["status"] == "completed"
    assert (lab.root / "ran.log").read_text() == "c1\n"
    by_id = {c["cell_id"]: c for c in body["cells"]}
    assert by_id["c1"]["attempts"] == 1
    out = lab.api("GET", f"/instances/{iid}/notebook").json()
    texts = [
        "".join(o.get("text", ""))
        for c in out["cells"]
        if c["cell_type"] == "code"
        for o in c.get("outputs", [])
    ]
    assert "y 4.0\n" in texts
    saved = json.loads((lab.root / "wf.ipynb").read_text())
    assert "".join(saved["cells"][2]["source"]) == "y = x / 2"


def test_run_view_shows_the_running_cells_output_live(page: Any, lab: Lab) -> None:
    nb = write_nb(
        lab.root / "live.ipynb",
        ["print('tick 1', flush=True); import time; time.sleep(6)", "print('tick 2')"],
    )
    iid = lab.api("POST", "/instances", json={"notebook": str(nb)}).json()["id"]
    lab.wait_status(iid, {"running"})
    _sidebar(page, "Runs")
    page.locator(f'.jp-durabook-run[data-id="{iid}"]').click(timeout=T)
    view = page.locator(f"#durabook-run-{iid} .jp-durabook-live")
    _wait(lambda: "tick 1" in view.inner_text(timeout=T) or None, "live output", timeout=30)
    assert lab.api("GET", f"/instances/{iid}").json()["status"] == "running"
    assert (
        "(running)" in page.locator(f"#durabook-run-{iid} .jp-durabook-live-section").inner_text()
    )
    _shot(page, "run-view-live")
    lab.wait_status(iid, {"completed"})
    _wait(lambda: "tick 2" in view.inner_text(timeout=T) or None, "the last cell's output")


def test_pause_unpause_event_terminate_from_the_panel(page: Any, lab: Lab) -> None:
    nb = str(lab.root / "approval.ipynb")
    first = lab.api("POST", "/instances", json={"notebook": nb}).json()["id"]
    second = lab.api("POST", "/instances", json={"notebook": nb}).json()["id"]
    for iid in (first, second):
        lab.wait_status(iid, {"waiting"})
    _open(page, lab, "approval.ipynb")
    _sidebar(page, "Runs")

    def act(iid: str, action: str) -> None:
        row = page.locator(f'.jp-durabook-run[data-id="{iid}"]')
        row.locator(f'[data-action="{action}"]').click(timeout=T)

    act(first, "pause")
    assert lab.wait_status(first, {"paused"})["status"] == "paused"
    page.locator(f'.jp-durabook-run[data-id="{first}"] .jp-durabook-chip-paused').wait_for(
        timeout=T
    )
    act(first, "unpause")
    lab.wait_status(first, {"waiting"})
    page.locator(f'.jp-durabook-run[data-id="{first}"] [data-action="event"]').wait_for(timeout=T)
    act(first, "event")
    page.locator(".jp-durabook-event-name").fill("approval")
    page.locator(".jp-durabook-event-data").fill('{"ok": true}')
    page.click(".jp-Dialog .jp-mod-accept")
    assert lab.wait_status(first, {"completed"})["status"] == "completed"

    act(second, "terminate")
    page.click(".jp-Dialog .jp-mod-warn")
    assert lab.wait_status(second, {"terminated"})["status"] == "terminated"
    page.locator(f'.jp-durabook-run[data-id="{second}"] .jp-durabook-chip-terminated').wait_for(
        timeout=T
    )
    page.locator(".jp-durabook-filter-status").select_option("terminated")
    page.wait_for_function(
        "() => [...document.querySelectorAll('.jp-durabook-run')].every("
        "r => r.querySelector('.jp-durabook-chip-terminated'))",
        timeout=T,
    )
    page.locator(".jp-durabook-filter-status").select_option("")


def test_run_monitor_widget_is_live_in_a_notebook(page: Any, lab: Lab) -> None:
    """RunMonitor in a JupyterLab kernel follows a waiting run to completed."""
    nb = str(lab.root / "approval.ipynb")
    iid = lab.api("POST", "/instances", json={"notebook": nb}).json()["id"]
    lab.wait_status(iid, {"waiting"})
    write_nb(
        lab.root / "monitor.ipynb",
        [f"from durabook.widgets import RunMonitor\nmonitor = RunMonitor({iid!r})\nmonitor"],
    )
    _open(page, lab, "monitor.ipynb")
    # the kernel is up before the cell is run
    page.locator(f'{NB} .jp-Notebook-ExecutionIndicator[data-status="idle"]').wait_for(timeout=T)
    page.locator(f"{NB} .jp-Cell .cm-content").first.click()
    page.locator(f'{NB} [data-command="notebook:run-cell-and-select-next"]').click()
    widget = page.locator(f"{NB} .jp-Cell-outputArea .db-root")
    try:
        widget.wait_for(timeout=T)
    except Exception:
        _shot(page, "run-monitor-widget-missing")
        raise
    _wait(lambda: "waiting" in widget.inner_text() or None, "the widget showing waiting")
    assert iid in widget.inner_text()
    _shot(page, "run-monitor-widget")
    lab.api("POST", f"/instances/{iid}/events/approval", json={"ok": True})
    # settled: the live view is replaced by its static rendering (what a saved notebook keeps)
    output = page.locator(f"{NB} .jp-Cell-outputArea").first
    _wait(lambda: "completed" in output.inner_text() or None, "the widget showing completed")
    assert "waiting" not in output.inner_text()


def test_scheduled_run_appears(page: Any, lab: Lab) -> None:
    """The schedule added through the form fires (within a minute of being added)."""
    runs = _wait(
        lambda: lab.api("GET", "/schedules/tick-every-minute/runs").json()["items"] or None,
        "a scheduled run",
        timeout=90,
    )
    iid = runs[0]["id"]
    assert iid.startswith("tick-every-minute.")
    lab.wait_status(iid, {"completed"})
    _sidebar(page, "Schedules")
    card = page.locator('.jp-durabook-schedule[data-name="tick-every-minute"]')
    card.wait_for(timeout=T)
    assert "next (Europe/Paris):" in card.locator(".jp-durabook-next").inner_text()
    card.locator('[data-action="runs"]').click()
    page.locator(f'.jp-durabook-schedule-runs li[data-id="{iid}"]').wait_for(timeout=T)
    _shot(page, "schedules")
    page.locator(
        '.jp-durabook-schedule[data-name="tick-every-minute"] [data-action="pause"]'
    ).click()
    _wait(
        lambda: lab.api("GET", "/schedules/tick-every-minute").json()["paused"] or None,
        "paused schedule",
    )
    page.locator(
        '.jp-durabook-schedule[data-name="tick-every-minute"] [data-action="remove"]'
    ).click()
    page.click(".jp-Dialog .jp-mod-warn")
    _wait(
        lambda: lab.api("GET", "/schedules/tick-every-minute").status_code == 404 or None,
        "removed schedule",
    )


def _ok(r: Any) -> Any:
    return r.json() if r.ok else None


def _wait(fn: Any, what: str, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = fn()
        except (KeyError, ValueError):
            value = None
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"no {what} within {timeout} s")
