"""``durabook schedule ...``: cron schedules from the command line.

:func:`add_parser` adds the ``schedule`` command and its sub-commands to the main
parser; :func:`main` runs one and returns the exit status (0, or 2 for bad input
with one line on stderr). The home's engine is reached with
:func:`durabook.remote.open_engine`, so a running ``durabook serve`` takes the
change at once (and fires the schedule); without one, the schedule is stored and
fires once ``durabook serve`` runs for the home.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ValidationError

from .api.models import (
    InstancePage,
    NameRequest,
    ScheduleInfo,
    ScheduleRunsRequest,
    ScheduleSpec,
)
from .errors import BadInput, DurabookError

__all__ = ["add_parser", "main"]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``schedule`` (add, list, show, pause, unpause, remove, runs) to ``subparsers``."""
    sch = subparsers.add_parser("schedule", help="run a notebook on a cron schedule")
    sub = sch.add_subparsers(dest="schedule_command", required=True, metavar="COMMAND")

    add = sub.add_parser("add", help="a new schedule: NOTEBOOK runs at every fire of --cron")
    add.add_argument("name", help="1 to 49 letters, digits, '.', '_' or '-'")
    add.add_argument("notebook")
    add.add_argument("--cron", required=True, help="5 fields, e.g. '0 6 * * 1-5'")
    add.add_argument("--tz", default="UTC", help="IANA time zone of --cron (default: UTC)")
    add.add_argument(
        "-p",
        "--parameter",
        nargs=2,
        action="append",
        default=[],
        metavar=("NAME", "VALUE"),
        help="parameter of every run, typed by the parameters cell",
    )
    add.add_argument(
        "--overlap",
        choices=["skip", "queue", "allow"],
        default="skip",
        help="a fire while an earlier run is unfinished: skip it (default), queue it, or run both",
    )
    add.add_argument(
        "--catch-up",
        choices=["none", "one", "all"],
        default="one",
        help="fires missed while no engine ran: none, the latest (default), or all",
    )
    add.add_argument("--tenant")
    add.add_argument("--priority", type=int, default=0)
    add.add_argument("--webhook", help="URL told of each run's end")
    add.add_argument("--json", action="store_true", help="print one JSON object")

    ls = sub.add_parser("list", help="the schedules and their next fires")
    ls.add_argument("--json", action="store_true")

    for verb, text in (
        ("show", "one schedule and its next fires"),
        ("pause", "stop firing (missed fires are skipped, not caught up)"),
        ("unpause", "fire again from the next fire time"),
        ("remove", "delete a schedule (its runs stay)"),
    ):
        p = sub.add_parser(verb, help=text)
        p.add_argument("name")
        p.add_argument("--json", action="store_true")

    runs = sub.add_parser("runs", help="the instances a schedule created, newest first")
    runs.add_argument("name")
    runs.add_argument("--limit", type=int, default=20)
    runs.add_argument("--json", action="store_true")
    return sch


def _request(model: type[BaseModel], **fields: Any) -> Any:
    """The request model, or one line of bad input (no pydantic report)."""
    try:
        return model(**fields)
    except ValidationError as exc:
        err = exc.errors()[0]
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        where = ".".join(str(p) for p in err.get("loc", ()))
        raise BadInput(f"{where.replace('_', '-')}: {msg}" if where else msg) from None


def _when(at: datetime, tz: str) -> str:
    local = at.astimezone(ZoneInfo(tz))
    if tz == "UTC":
        return f"{local:%Y-%m-%d %H:%M} UTC"
    return f"{local:%Y-%m-%d %H:%M %Z} ({at:%H:%M} UTC)"


def _print_info(info: ScheduleInfo, state: str | None = None) -> None:
    print(f"{info.name}: {state or ('paused' if info.paused else 'active')}")
    print(f"  cron    {info.cron}  ({info.tz})")
    print(f"  runs    {info.notebook}")
    if info.parameters:
        print("  with    " + " ".join(f"{k}={v!r}" for k, v in info.parameters.items()))
    opts = f"overlap {info.overlap}, catch-up {info.catch_up}, priority {info.priority}"
    if info.tenant:
        opts += f", tenant {info.tenant}"
    print(f"  policy  {opts}")
    if info.last_fire is not None:
        print(f"  last    {_when(info.last_fire, info.tz)}")
    for i, at in enumerate(info.next_fires):
        print(f"  {'next' if i == 0 else '':<7} {_when(at, info.tz)}")


def _print_table(items: list[ScheduleInfo]) -> None:
    if not items:
        print("no schedules", file=sys.stderr)
        return
    width = max(len(i.name) for i in items)
    cron_w = max(len(i.cron) for i in items)
    for i in items:
        if i.paused:
            fires = "paused"
        else:
            fires = ", ".join(
                f"{a.astimezone(ZoneInfo(i.tz)):%Y-%m-%d %H:%M}" for a in i.next_fires
            )
        print(f"{i.name:<{width}}  {i.cron:<{cron_w}}  {i.tz:<14}  {fires}")


def _print_runs(page: InstancePage) -> None:
    if not page.items:
        print("no runs yet", file=sys.stderr)
    for i in page.items:
        cell = f" (cell {i.failed_cell})" if i.failed_cell is not None else ""
        print(f"{i.id}  {i.status.value:<10}{cell}  {i.created_at:%Y-%m-%d %H:%M:%S}")


def _spec(args: argparse.Namespace) -> ScheduleSpec:
    params: dict[str, Any] = {}
    for name, value in args.parameter or []:
        params[name] = value
    return _request(
        ScheduleSpec,
        name=args.name,
        # the engine may run elsewhere (another cwd): send the path as meant here
        notebook=str(Path(args.notebook).expanduser().absolute()),
        cron=args.cron,
        tz=args.tz,
        parameters=params,
        from_text=True,
        overlap=args.overlap,
        catch_up=args.catch_up,
        tenant=args.tenant,
        priority=args.priority,
        webhook=args.webhook,
    )


def _note_if_not_served(svc: Any) -> None:
    try:
        serving = bool(svc.health().serving)
    except Exception:  # an older engine without health: say nothing
        return
    if not serving:
        print(
            "note: schedules fire while `durabook serve` runs for this home",
            file=sys.stderr,
        )


def _run(args: argparse.Namespace) -> int:
    from .remote import open_engine

    cmd = args.schedule_command
    # validate before reaching the engine: bad input never waits for a busy store
    req: Any = None
    if cmd == "add":
        req = _spec(args)
    elif cmd in ("show", "pause", "unpause", "remove"):
        req = _request(NameRequest, name=args.name)
    elif cmd == "runs":
        req = _request(ScheduleRunsRequest, name=args.name, limit=args.limit)
    with open_engine(getattr(args, "home", None), serve=True) as svc:
        if cmd == "list":
            items: list[ScheduleInfo] = svc.schedule_list()
            if args.json:
                print(json.dumps([i.model_dump(mode="json") for i in items]))
            else:
                _print_table(items)
            return 0
        if cmd == "runs":
            page: InstancePage = svc.schedule_runs(req)
            if args.json:
                print(json.dumps(page.model_dump(mode="json")))
            else:
                _print_runs(page)
            return 0
        verbs: dict[str, Callable[[Any], ScheduleInfo]] = {
            "add": svc.schedule_add,
            "show": svc.schedule_get,
            "pause": svc.schedule_pause,
            "unpause": svc.schedule_unpause,
            "remove": svc.schedule_remove,
        }
        info = verbs[cmd](req)
        if cmd in ("add", "unpause") and not args.json:
            _note_if_not_served(svc)
    if args.json:
        print(json.dumps(info.model_dump(mode="json")))
    else:
        _print_info(info, "removed" if cmd == "remove" else None)
    return 0


def main(args: argparse.Namespace) -> int:
    """Run ``durabook schedule ...`` (parsed by :func:`add_parser`'s parser)."""
    try:
        return _run(args)
    except DurabookError as exc:
        print(exc.one_line(), file=sys.stderr)
        return exc.exit_code
