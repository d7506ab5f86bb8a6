"""The ``durabook`` command line.

Exit statuses: 0 completed, 1 failed, 2 bad input (one line on stderr, nothing
stored), 3 suspended (sleeping, waiting, paused).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, NoReturn

from .engine import Progress
from .errors import DurabookError
from .models import InstanceStatus, RunResult

__all__ = ["main"]


class _BarProgress(Progress):
    """A tqdm bar on stderr that advances when a cell's checkpoint is committed."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.bar: Any = None

    def start(self, instance_id: str, total: int, done: int) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm

        self.bar = tqdm(
            total=total,
            initial=done,
            desc=instance_id,
            unit="cell",
            file=sys.stderr,
            leave=False,
            dynamic_ncols=True,
        )

    def committed(self, index: int) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class _ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, exit 2, like every bad input
        sys.stderr.write(f"error: {message}\n")
        sys.exit(2)


def _parser() -> argparse.ArgumentParser:
    p = _ArgumentParser(prog="durabook", description="Durable notebooks: every cell a step.")
    p.add_argument("--home", help="state folder (default $DURABOOK_HOME or ./.durabook)")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_ArgumentParser)

    run = sub.add_parser("run", help="run a notebook as a new durable instance")
    run.add_argument("notebook")
    run.add_argument(
        "-p",
        "--parameter",
        nargs=2,
        action="append",
        default=[],
        metavar=("NAME", "VALUE"),
        help="parameter, typed by the parameters cell",
    )
    run.add_argument("--id", help="instance id (default: generated)")
    run.add_argument(
        "--if-exists",
        choices=["return", "error"],
        default="return",
        help="when --id names an existing instance (default: return it)",
    )
    run.add_argument("--output", help="output notebook (default $DURABOOK_HOME/outputs/ID.ipynb)")
    run.add_argument("--json", action="store_true", help="print one JSON object")
    run.add_argument("-q", "--quiet", action="store_true", help="no progress bar")

    res = sub.add_parser("resume", help="continue an instance at its first uncommitted cell")
    res.add_argument("id")
    res.add_argument("--notebook", help="an edited notebook: resume at its first changed cell")
    res.add_argument("--json", action="store_true")
    res.add_argument("-q", "--quiet", action="store_true")

    st = sub.add_parser("status", help="an instance's status and cells")
    st.add_argument("id")
    st.add_argument("--json", action="store_true")

    ev = sub.add_parser("send-event", help="send an event to an instance (wait_for_event)")
    ev.add_argument("id")
    ev.add_argument("name")
    ev.add_argument("--data", help="the event's payload, as JSON")
    ev.add_argument("--json", action="store_true")
    ev.add_argument("-q", "--quiet", action="store_true")

    for name, text in (
        ("pause", "stop after the current cell, or stay put if suspended"),
        ("unpause", "continue a paused instance"),
        ("terminate", "end an instance for good (its kernel is killed)"),
    ):
        lc = sub.add_parser(name, help=text)
        lc.add_argument("id")
        lc.add_argument("--json", action="store_true")
        lc.add_argument("-q", "--quiet", action="store_true")

    rs = sub.add_parser("restart", help="drop checkpoints from a cell on and run from there")
    rs.add_argument("id")
    rs.add_argument("--from-cell", type=int, help="first cell to run again (default: 0)")
    rs.add_argument("--json", action="store_true")
    rs.add_argument("-q", "--quiet", action="store_true")

    sv = sub.add_parser("serve", help="run the engine of a home in the foreground")
    sv.add_argument(
        "--idle-timeout",
        type=float,
        default=0.0,
        help="exit after this many idle seconds (default: run until stopped)",
    )

    ls = sub.add_parser("list", help="instances, newest first")
    ls.add_argument("--status")
    ls.add_argument("--limit", type=int)
    ls.add_argument("--json", action="store_true")
    return p


def _print_result(res: RunResult, as_json: bool, id_printed: bool) -> None:
    if as_json:
        print(
            json.dumps(
                {
                    "id": res.id,
                    "status": res.status.value,
                    "failed_cell": res.failed_cell,
                    "output": res.output,
                }
            )
        )
        return
    if not id_printed:
        print(res.id, flush=True)
    msg = f"{res.id}: {res.status.value}"
    if res.failed_cell is not None:
        msg += f" at cell {res.failed_cell}"
    if res.error is not None:
        msg += f": {res.error.ename}: {res.error.evalue}"
    if res.output:
        msg += f"\n  output: {res.output}"
    print(msg, file=sys.stderr)


def _print_status(st: InstanceStatus) -> None:
    print(f"{st.id}  {st.status.value}  {st.notebook}")
    print(
        f"  version {st.version}  created {st.created_at:%Y-%m-%d %H:%M:%S}  "
        f"updated {st.updated_at:%Y-%m-%d %H:%M:%S}"
    )
    if st.error is not None:
        print(f"  failed at cell {st.failed_cell}: {st.error.ename}: {st.error.evalue}")
    for c in st.cells:
        dur = f"{c.duration_ms:9.1f} ms" if c.duration_ms is not None else " " * 12
        extra = ""
        if c.unserializable:
            extra = "  unsaved: " + ", ".join(
                f"{k} ({v.type})" for k, v in c.unserializable.items()
            )
        print(f"  [{c.index:>3}] {c.status.value:<9} x{c.attempts} {dur}  {c.cell_id}{extra}")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _dispatch(args)
    except DurabookError as exc:
        print(exc.one_line(), file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _serve(args: argparse.Namespace) -> int:
    import os
    import signal
    import threading

    from .engine import Engine
    from .serve import serve

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *a: stop.set())
    signal.signal(signal.SIGINT, lambda *a: stop.set())
    with Engine(args.home) as eng:
        print(f"durabook engine for {eng.home} (pid {os.getpid()})", file=sys.stderr, flush=True)
        serve(eng, stop, args.idle_timeout)
    return 0


def _resume_here(eng: Any, args: argparse.Namespace) -> int:
    progress = _BarProgress(not args.quiet)
    try:
        res = eng.resume(args.id, getattr(args, "notebook", None), progress=progress)
    finally:
        progress.close()
    _print_result(res, args.json, False)
    return res.exit_code


def _lifecycle(args: argparse.Namespace) -> int:
    from .control import RemoteEngine, open_engine

    with open_engine(args.home, serve=True) as eng:
        if args.command == "restart":
            eng.restart(args.id, args.from_cell)
            if isinstance(eng, RemoteEngine) or not eng.wakes_instances:
                return _resume_here(eng, args)
            return 0
        if isinstance(eng, RemoteEngine):
            answer = eng.lifecycle(args.command, args.id)
            status, resumed = answer["status"], answer["resumed_by_engine"]
        else:
            status, resumed = getattr(eng, args.command)(args.id).value, False
        if args.command == "unpause" and status == "queued" and not resumed:
            return _resume_here(eng, args)  # nobody else would run it: run it now
    if args.json:
        print(json.dumps({"id": args.id, "status": status}))
    else:
        print(f"{args.id}: {status}", file=sys.stderr)
    return 0


def _send_event(args: argparse.Namespace) -> int:
    from .control import RemoteEngine, open_engine

    with open_engine(args.home, serve=True) as eng:
        if isinstance(eng, RemoteEngine):
            answer = eng.send_event(args.id, args.name, args.data)
            delivered, resumed = answer["delivered"], answer["resumed_by_engine"]
        else:
            delivered, resumed = eng.send_event(args.id, args.name, args.data), False
        if delivered and not resumed:
            # no engine keeps running here: resume the instance in the foreground
            return _resume_here(eng, args)
    what = "delivered; the engine resumes it" if delivered else "kept until it waits for it"
    if args.json:
        print(json.dumps({"id": args.id, "event": args.name, "delivered": delivered}))
    else:
        print(f"event {args.name!r} for {args.id}: {what}", file=sys.stderr)
    return 0


def _dispatch(args: argparse.Namespace) -> int:
    from .control import open_engine

    if args.command == "serve":
        return _serve(args)
    if args.command == "send-event":
        return _send_event(args)
    if args.command in ("pause", "unpause", "terminate", "restart"):
        return _lifecycle(args)
    if args.command == "run":
        params = dict(args.parameter)
        progress = _BarProgress(not args.quiet)
        printed = False

        def created(iid: str) -> None:
            nonlocal printed
            if not args.json:
                print(iid, flush=True)
                printed = True

        with open_engine(args.home, serve=True) as eng:
            try:
                res = eng.run(
                    args.notebook,
                    params,
                    args.id,
                    args.output,
                    from_text=True,
                    progress=progress,
                    on_created=created,
                    if_exists=args.if_exists,
                )
            finally:
                progress.close()
        _print_result(res, args.json, printed)
        return res.exit_code
    if args.command == "resume":
        with open_engine(args.home, serve=True) as eng:
            return _resume_here(eng, args)
    if args.command == "status":
        with open_engine(args.home) as eng:
            st = eng.status(args.id)
        if args.json:
            print(json.dumps(st.model_dump(mode="json")))
        else:
            _print_status(st)
        return 0
    if args.command == "list":
        with open_engine(args.home) as eng:
            items = eng.list(args.status, args.limit)
        if args.json:
            print(json.dumps([i.model_dump(mode="json") for i in items]))
        else:
            for i in items:
                cell = f" (cell {i.failed_cell})" if i.failed_cell is not None else ""
                print(
                    f"{i.id}  {i.status.value:<10}{cell}  {i.created_at:%Y-%m-%d %H:%M:%S}  "
                    f"{i.notebook}"
                )
        return 0
    raise AssertionError(args.command)


if __name__ == "__main__":
    sys.exit(main())
