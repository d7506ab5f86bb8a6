"""Jupyter widgets that follow runs and schedules live: :class:`RunMonitor`, :class:`ScheduleView`.

anywidgets (no front-end build) fed by a daemon thread that polls the home's engine through
:class:`~durabook.client.Client`. What they draw is a synced ``view`` (rows of atoms: a text,
a chip, a bar, a square) that one small renderer draws; the same view becomes the
``text/html`` their outputs carry beside ``text/plain``, for wherever no live kernel draws
the widget (saved notebooks). A displayed RunMonitor whose runs all settled replaces its
output with that static rendering, so a saved notebook shows the final state.
"""

from __future__ import annotations

import copy
import html
import os
import threading
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

import anywidget
import traitlets

from .client import Client
from .errors import DurabookError, UnknownInstance
from .models import CellStatus, InstanceStatus, Status

__all__ = ["SETTLED", "RunMonitor", "ScheduleView", "run_snapshot"]

# where a run stays unless someone acts on it (cancel ends a run as terminated)
SETTLED = frozenset({Status.COMPLETED.value, Status.FAILED.value, Status.TERMINATED.value})

STATUS_COLORS = {
    "queued": "#757575", "running": "#1565c0", "sleeping": "#6a1b9a", "waiting": "#ef6c00",
    "paused": "#546e7a", "completed": "#2e7d32", "failed": "#c62828", "terminated": "#424242",
}  # fmt: skip
CELL_COLORS = {
    "pending": "#d0d0d0", "running": "#1e88e5", "committed": "#43a047", "failed": "#e53935",
}  # fmt: skip
CELL_MARKS = {"pending": "·", "running": "▶", "committed": "✓", "failed": "✗"}
GREY = "#9e9e9e"

_ESM = """
function h(tag, cls, text) {
  const e = document.createElement(tag);
  e.className = cls || "";
  if (text !== undefined && text !== null) e.textContent = String(text);
  return e;
}
function atom(a) {
  let e;
  if ("bar" in a) {
    e = h("span", "db-bar");
    const fill = e.appendChild(h("span", "db-fill"));
    fill.style.width = a.bar + "%";
    fill.style.backgroundColor = a.color;
  } else if ("chip" in a || "sq" in a) {
    e = h("span", "chip" in a ? "db-chip" : "db-sq", a.chip);
    e.style.backgroundColor = a.color;
  } else e = h(a.code ? "code" : "span", "", a.text);
  if (a.title) e.title = a.title;
  return e;
}
function render({ model, el }) {
  const draw = () => {
    const v = model.get("view"), root = h("div", "db-root"), rows = v.rows || [];
    const t = root.appendChild(h("table", "db-table"));
    if (v.heads && rows.length) t.insertRow().append(...v.heads.map((x) => h("th", "", x)));
    for (const row of rows) {
      const tr = t.insertRow();
      for (const atoms of row) {
        const td = tr.insertCell();
        atoms.forEach((a, i) => td.append(i && !("sq" in a) ? " " : "", atom(a)));
      }
    }
    if (!rows.length) root.append(h("div", "db-empty", v.empty));
    if (v.problem) root.append(h("div", "db-problem", v.problem));
    el.replaceChildren(root);
  };
  draw(), model.on("change:view", draw);
  return () => model.off("change:view", draw);
}
export default { render };
"""

_CSS = """
.db-root { font-family: var(--jp-ui-font-family, sans-serif);
  font-size: var(--jp-ui-font-size1, 13px); color: var(--jp-ui-font-color1, #212121); }
.db-table { border-collapse: collapse; }
.db-table td, .db-table th { padding: 2px 8px; text-align: left; vertical-align: middle;
  border-bottom: 1px solid var(--jp-border-color2, #e0e0e0); }
.db-table th, .db-empty { font-weight: 600; color: var(--jp-ui-font-color2, #616161); }
.db-root code { font-family: var(--jp-code-font-family, monospace); white-space: nowrap; }
.db-chip { color: #fff; border-radius: 8px; padding: 0 7px; font-size: 90%; }
.db-bar { display: inline-block; width: 120px; height: 8px; border-radius: 4px; overflow: hidden;
  vertical-align: middle; background: var(--jp-layout-color3, #e0e0e0); }
.db-fill { display: block; height: 100%; }
.db-sq { display: inline-block; width: 10px; height: 10px; margin: 1px; border-radius: 2px; }
.db-problem { color: var(--jp-error-color1, #c62828); margin-top: 4px; }
"""

# the static HTML's inline copy of those classes (a saved notebook has no widget CSS)
_TD = "padding:2px 8px;text-align:left;vertical-align:middle;border-bottom:1px solid #e0e0e0"
_CHIP = "color:#fff;border-radius:8px;padding:0 7px;font-size:90%;background-color:"
_BAR = "display:inline-block;width:120px;height:8px;border-radius:4px;overflow:hidden;"
_BAR += "vertical-align:middle;background-color:#e0e0e0"
_FILL = "display:block;height:100%;width:{:.0f}%;background-color:{}"
_SQ = "display:inline-block;width:10px;height:10px;margin:1px;border-radius:2px;background-color:"


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _atom_html(a: Mapping[str, Any]) -> str:
    title = f' title="{_e(a["title"])}"' if a.get("title") else ""
    if "bar" in a:
        fill = _FILL.format(float(a["bar"]), _e(a["color"]))
        return f'<span style="{_BAR}"{title}><span style="{fill}"></span></span>'
    if "chip" in a:
        return f'<span style="{_CHIP}{_e(a["color"])}"{title}>{_e(a["chip"])}</span>'
    if "sq" in a:
        return f'<span style="{_SQ}{_e(a["color"])}"{title}></span>'
    if a.get("code"):
        return f'<code style="white-space:nowrap"{title}>{_e(a["text"])}</code>'
    return f"<span{title}>{_e(a['text'])}</span>"


def _td(atoms: Sequence[Mapping[str, Any]]) -> str:
    parts = ((" " if i and "sq" not in a else "") + _atom_html(a) for i, a in enumerate(atoms))
    return f'<td style="{_TD}">{"".join(parts)}</td>'


def view_html(view: Mapping[str, Any]) -> str:
    """A view (what the widget draws) as self-contained HTML: inline styles, no script."""
    rows = ["".join(f'<th style="{_TD}">{_e(x)}</th>' for x in view.get("heads") or ())]
    rows += ["".join(_td(atoms) for atoms in row) for row in view.get("rows") or ()]
    body = f"<div>{_e(view.get('empty', ''))}</div>"
    if view.get("rows"):
        body = '<table style="border-collapse:collapse">'
        body += "".join(f"<tr>{r}</tr>" for r in rows if r) + "</table>"
    if view.get("problem"):
        body += f'<div style="color:#c62828">{_e(view["problem"])}</div>'
    return (
        f'<div class="durabook-widget" style="font-family:sans-serif;font-size:13px">{body}</div>'
    )


def _text(text: str, title: str | None = None, code: bool = False) -> dict[str, Any]:
    return {"text": text, "title": title, "code": code}


def _seconds(s: float | None) -> str:
    if s is None:
        return "-"
    if s < 10:
        return f"{s:.2f} s"
    return f"{s:.1f} s" if s < 120 else f"{int(s // 60)} min {s % 60:.0f} s"


def _when(dt: datetime | None, tz: str = "UTC", label: bool = True) -> str:
    if dt is None:
        return "-"
    try:
        from zoneinfo import ZoneInfo

        return f"{dt.astimezone(ZoneInfo(tz)):%Y-%m-%d %H:%M}" + (f" {tz}" if label else "")
    except Exception:  # an unknown zone: say it in UTC
        return f"{dt.astimezone(timezone.utc):%Y-%m-%d %H:%M} UTC"


def _one_line(text: str, limit: int = 200) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def run_snapshot(st: InstanceStatus) -> dict[str, Any]:
    """One run as the widgets show it, JSON-able; ``detail`` is the wording every view uses."""
    cells = []
    for c in st.cells:
        dur = c.duration_ms / 1000 if c.duration_ms is not None else None
        cell: dict[str, Any] = {"index": c.index, "status": c.status.value, "attempts": c.attempts}
        cell["duration_s"] = round(dur, 4) if dur is not None else None
        for extra in ("cpu_s", "peak_rss_bytes"):  # resource figures, where the engine has them
            if getattr(c, extra, None) is not None:
                cell[extra] = getattr(c, extra)
        title = f"cell {c.index}{f' ({c.name})' if c.name else ''}: {c.status.value}"
        title += f", {c.attempts} attempt{'s' if c.attempts != 1 else ''}, {_seconds(dur)}"
        if c.error is not None:
            cell["error"] = f"{c.error.ename}: {_one_line(c.error.evalue)}"
            title += f"\n{cell['error']}"
        cell["title"] = title
        cells.append(cell)
    running = next((c.index for c in st.cells if c.status == CellStatus.RUNNING), None)
    todo = next((c.index for c in st.cells if c.status != CellStatus.COMMITTED), None)
    error = None
    if st.status == Status.FAILED:
        current = st.failed_cell if st.failed_cell is not None else todo
        err = st.error or next((c.error for c in st.cells if c.index == current), None)
        detail = f"failed at cell {current}"
        if err is not None:
            error = {"cell": current, "ename": err.ename, "evalue": _one_line(err.evalue)}
            detail = f"cell {current}: {err.ename}: {error['evalue']}"
    elif st.status == Status.COMPLETED:
        current = None
        detail = f"{len(st.cells)} cells in {_seconds(sum(c['duration_s'] or 0 for c in cells))}"
    else:
        current = running if running is not None else todo
        where = f"cell {current}" if current is not None else "the end"
        detail = {
            Status.QUEUED: f"queued for {where}",
            Status.RUNNING: f"{where} running",
            Status.PAUSED: f"paused before {where}",
            Status.TERMINATED: f"terminated before {where}",
            Status.SLEEPING: f"sleeping until {_when(st.wake_at)}",
            Status.WAITING: f"waiting for the event {st.waiting_for!r}"
            + (f" until {_when(st.wake_at)}" if st.wake_at else ""),
        }.get(st.status, st.status.value)
        retry = next((c.error for c in st.cells if c.index == current and c.error), None)
        if st.status == Status.RUNNING and retry is not None:  # a %%step retry is coming
            detail = f"{where} retrying after {retry.ename}: {_one_line(retry.evalue)}"
    committed = sum(1 for c in st.cells if c.status == CellStatus.COMMITTED)
    return {
        "id": st.id, "status": st.status.value, "notebook": os.path.basename(st.notebook),
        "notebook_path": st.notebook, "tenant": st.tenant, "committed": committed,
        "total": len(st.cells), "current": current, "detail": detail, "error": error,
        "cells": cells, "updated_at": st.updated_at.isoformat(),
    }  # fmt: skip


class _Polling(anywidget.AnyWidget):
    """A widget refreshed by a daemon thread until it is ``settled`` or closed."""

    _esm = _ESM
    _css = _CSS
    view = traitlets.Dict().tag(sync=True)  # what the front end draws
    problem = traitlets.Unicode("").tag(sync=True)  # why the last refresh failed, if it did
    live = traitlets.Bool(False).tag(sync=True)  # a thread is polling

    def __init__(
        self,
        home: str | os.PathLike[str] | None = None,
        interval: float = 5.0,
        client: Client | None = None,
    ) -> None:
        super().__init__()
        self.client = client if client is not None else Client(home)
        self._own_client = client is None
        self.interval = interval
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self._display_id = f"durabook-{uuid.uuid4().hex}"
        self._displayed = False
        self.refresh()

    def _fetch(self, full: bool) -> None:
        raise NotImplementedError

    def _view(self) -> dict[str, Any]:
        raise NotImplementedError

    def to_text(self) -> str:
        raise NotImplementedError

    def settled(self) -> bool:
        return False

    @property
    def polling(self) -> bool:
        """A thread follows the engine (it stops once everything settled, or on close)."""
        return self._thread is not None

    def refresh(self) -> None:
        """Ask the engine now (settled runs too) and poll again if something moves."""
        with self._lock:
            self._poll(full=True)
            if self.settled() or self.interval <= 0 or self._stop.is_set():
                self._done.set()
            elif self._thread is None:
                self._done.clear()
                self._thread = threading.Thread(target=self._run, name=self._display_id)
                self._thread.daemon = True
                self.live = True
                self._thread.start()

    def _poll(self, full: bool) -> None:
        try:
            self._fetch(full)
        except Exception as exc:  # the engine restarting, a lost socket: try again later
            msg = exc.message if isinstance(exc, DurabookError) else str(exc)
            self.problem = f"cannot reach the engine: {type(exc).__name__}: {_one_line(msg)}"
        else:
            self.problem = ""
        self.view = {**self._view(), "problem": self.problem}

    def _run(self) -> None:
        me = threading.current_thread()
        try:
            while not self._stop.wait(self.interval):
                with self._lock:
                    self._poll(full=False)
                    if self.settled():
                        self._finish(me)
                        break
        finally:
            with self._lock:
                self._finish(me)
            self.client.close()  # this thread's connection to the engine
        if not self._stop.is_set() and self._thread is None and self.settled():
            self._show_static()

    def _finish(self, me: threading.Thread) -> None:
        if self._thread is me:
            self._thread = None
            self.live = False
            self._done.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until polling ends (or ``timeout``); True if every watched run settled."""
        done = self._done.wait(timeout) and self.settled()
        if done:
            self._show_static()  # from this thread too: a later cell's output is listened to
        return done

    def close(self) -> None:
        """Stop polling and close the widget; a displayed one keeps its static rendering."""
        if not hasattr(self, "_stop"):  # its __init__ failed (a bad query): nothing started
            return super().close()
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(max(5.0, self.interval * 2))
        self._show_static()
        if self._own_client:
            self.client.close()
        super().close()

    def to_html(self) -> str:
        """The current state as self-contained HTML (inline styles, no script)."""
        return view_html(self.view)

    def __repr__(self) -> str:
        return self.to_text()

    def _repr_mimebundle_(self, **kwargs: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        data: dict[str, Any] = {}
        metadata: dict[str, Any] = {}
        if getattr(self, "comm", None) is not None:  # the live view, while the widget is open
            got = super()._repr_mimebundle_(**kwargs)
            if got:
                data, metadata = dict(got[0]), dict(got[1])
        data["text/plain"] = self.to_text()
        data["text/html"] = self.to_html()
        return data, metadata

    def _ipython_display_(self) -> None:
        """Displayed under a display id, so the output can become static once settled."""
        from IPython.display import display

        data, metadata = type(self)._repr_mimebundle_(self)  # ipywidgets' close() nulls self's
        if self.settled() and not self.polling:
            data = {k: v for k, v in data.items() if k.startswith("text/")}
        display(data, metadata=metadata, raw=True, display_id=self._display_id)
        self._displayed = True

    def _show_static(self) -> None:
        """Replace the displayed outputs with the text and HTML of the current state."""
        if not self._displayed:
            return
        try:
            from IPython.display import update_display

            data = {"text/plain": self.to_text(), "text/html": self.to_html()}
            update_display(data, raw=True, display_id=self._display_id)
        except Exception:  # no kernel any more: nothing to update
            pass


class RunMonitor(_Polling):
    """Live cell-by-cell state of runs: ``RunMonitor(id)``, ``RunMonitor([id, ...])`` or
    ``RunMonitor({"status": "running", "tenant": ...})`` (the filters of ``durabook list``:
    status, tenant, workflow, schedule, notebook, limit).

    ``runs`` holds one dict per run (see :func:`run_snapshot`). A daemon thread asks the
    engine every ``interval`` seconds until every run is completed, failed or terminated
    (a query: until it matched runs and all of them settled), or until :meth:`close`.
    """

    runs = traitlets.List(traitlets.Dict()).tag(sync=True)

    def __init__(
        self,
        target: str | Sequence[str] | Mapping[str, Any],
        *,
        home: str | os.PathLike[str] | None = None,
        interval: float = 0.5,
        client: Client | None = None,
    ) -> None:
        self._ids: list[str] = []
        self._query: Any = None
        self._final: dict[str, dict[str, Any]] = {}  # settled runs are not asked again
        if isinstance(target, str):
            self._ids = [target]
        elif isinstance(target, Mapping):
            from .api.models import ListRequest

            query = {"limit": 20, **target}
            if query.get("notebook"):  # stored as an absolute path
                query["notebook"] = os.path.abspath(os.fspath(query["notebook"]))
            self._query = ListRequest.model_validate(query)
        else:
            self._ids = list(dict.fromkeys(target))
        super().__init__(home, interval, client)

    def _fetch(self, full: bool) -> None:
        if self._query is not None:
            with self.client.engine() as svc:
                found = [i.id for i in svc.list(self._query).items]
            self._ids = list(dict.fromkeys([*self._ids, *found]))
        runs = []
        for iid in self._ids:
            run = None if full else self._final.get(iid)
            if run is None:
                try:
                    run = run_snapshot(self.client.status(iid))
                except UnknownInstance as exc:
                    run = {"id": iid, "status": "unknown", "notebook": "", "notebook_path": "",
                           "committed": 0, "total": 0, "current": None, "cells": [],
                           "detail": _one_line(exc.message), "error": None}  # fmt: skip
                if run["status"] in SETTLED or run["status"] == "unknown":
                    self._final[iid] = run
                else:
                    self._final.pop(iid, None)
            runs.append(run)
        self.runs = runs

    def settled(self) -> bool:
        return bool(self._ids) and all(i in self._final for i in self._ids)

    def snapshot(self) -> list[dict[str, Any]]:
        """The runs as last seen (a copy)."""
        return copy.deepcopy(list(self.runs))

    def _view(self) -> dict[str, Any]:
        rows = []
        for r in self.runs:
            color = STATUS_COLORS.get(r["status"], GREY)
            progress = f"{r['committed']}/{r['total']}"
            pct = 100 * r["committed"] / r["total"] if r["total"] else 0
            bar = {"bar": pct, "color": color, "title": f"{progress} cells committed"}
            squares = [
                {"sq": 1, "color": CELL_COLORS.get(c["status"], GREY), "title": c["title"]}
                for c in r["cells"]
            ]
            rows.append([
                [_text(r["id"], r["notebook_path"], code=True)],
                [{"chip": r["status"], "color": color}], [_text(r["notebook"])],
                [bar, _text(progress)], [_text(r["detail"])], squares,
            ])  # fmt: skip
        return {"heads": [], "rows": rows, "empty": "no runs yet…" if self.live else "no runs"}

    def to_text(self) -> str:
        runs = list(self.runs)
        lines = []
        if len(runs) != 1:
            counts: dict[str, int] = {}
            for r in runs:
                counts[r["status"]] = counts.get(r["status"], 0) + 1
            tally = ", ".join(f"{n} {s}" for s, n in counts.items())
            lines.append(f"{len(runs)} runs" + (f": {tally}" if tally else ""))
        for r in runs:
            where = f"  ({r['notebook']})" if r["notebook"] else ""
            head = f"run {r['id']}  {r['status']}  {r['committed']}/{r['total']} cells"
            lines.append(f"{head}  {r['detail']}{where}")
            if r["cells"]:
                lines.append("  " + "".join(CELL_MARKS.get(c["status"], "?") for c in r["cells"]))
        return "\n".join(lines + ([self.problem] if self.problem else []))


class ScheduleView(_Polling):
    """The home's schedules with their next fire times (in each schedule's zone),
    refreshed every ``interval`` seconds until :meth:`close` (``interval=0``: once)."""

    schedules = traitlets.List(traitlets.Dict()).tag(sync=True)

    def _fetch(self, full: bool) -> None:
        self.schedules = [
            {"name": s.name, "notebook": os.path.basename(s.notebook), "notebook_path": s.notebook,
             "cron": s.cron, "tz": s.tz, "paused": s.paused,
             "last_fire": s.last_fire.isoformat() if s.last_fire else None,
             "next_fires": [f.isoformat() for f in s.next_fires],  # UTC
             "next": [_when(f, s.tz, label=False) for f in s.next_fires]}  # in its zone
            for s in self.client.schedules()
        ]  # fmt: skip

    def _view(self) -> dict[str, Any]:
        rows = [
            [[_text(s["name"], code=True)], [_text(s["notebook"], s["notebook_path"])],
             [_text(s["cron"], code=True)], [_text(s["tz"])],
             [{"chip": "paused" if s["paused"] else "active",
               "color": STATUS_COLORS["paused" if s["paused"] else "running"]}],
             [_text(", ".join(s["next"]) or "-")]]
            for s in self.schedules
        ]  # fmt: skip
        heads = ["schedule", "notebook", "cron", "zone", "state", "next runs"]
        return {"heads": heads, "rows": rows, "empty": "no schedules"}

    def to_text(self) -> str:
        n = len(self.schedules)
        lines = [f"{n} schedule{'s' if n != 1 else ''}"]
        for s in self.schedules:
            state = "paused" if s["paused"] else "active"
            lines.append(f"{s['name']}  {s['cron']}  {s['tz']}  {state}  {s['notebook']}")
            lines.append(f"  next: {', '.join(s['next']) or '-'}")
        return "\n".join(lines + ([self.problem] if self.problem else []))
