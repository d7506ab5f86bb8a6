"""The ``durabook`` command line.

Exit statuses: 0 completed, 1 failed, 2 bad input (one line on stderr, nothing
stored), 3 suspended (sleeping, waiting, paused), 4 the engine serving the command
went away (the instance continues from its last committed cell on resume), 141
stdout's reader went away (``durabook list | head -1``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import datetime
from typing import Any, NoReturn

from .engine import Progress
from .errors import BadInput, DurabookError
from .models import CellStatus, InstanceStatus, RunResult, Status

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
        help="parameter, typed by the parameters cell; the two tokens after -p are taken "
        "as they are, even '-5m'",
    )
    run.add_argument("--id", help="instance id (default: generated)")
    run.add_argument(
        "--if-exists",
        choices=["return", "error"],
        default="return",
        help="when --id names an existing instance (default: return it)",
    )
    run.add_argument("--output", help="output notebook (default $DURABOOK_HOME/outputs/ID.ipynb)")
    run.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME[=VALUE]",
        help="pass a variable to the kernel (its value here, or VALUE); kernels start with "
        "a scrubbed environment",
    )
    run.add_argument(
        "--scan-all",
        action="store_true",
        help="look at every variable after every cell, not only those a cell can reach",
    )
    run.add_argument("--json", action="store_true", help="print one JSON object")
    run.add_argument("-q", "--quiet", action="store_true", help="no progress bar")

    res = sub.add_parser("resume", help="continue an instance at its first uncommitted cell")
    res.add_argument("id")
    res.add_argument("--notebook", help="an edited notebook: resume at its first changed cell")
    res.add_argument("--now", action="store_true", help="wake a sleeping instance early")
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


_PARAM_FLAGS = ("-p", "--parameter")
_GLOBAL_VALUE_FLAGS = ("--home",)
_RUN_VALUE_FLAGS = ("--id", "--if-exists", "--output")


def _take_parameters(argv: list[str]) -> tuple[list[str], list[list[str]]]:
    """``run``'s ``-p NAME VALUE`` pairs, each the next two tokens verbatim.

    argparse takes a token that starts with '-' for an option, so ``-p d -5m`` (as
    papermill accepts it) would be an error. The pairs come out before parsing; what
    is left is parsed as usual (a ``-p`` short of two tokens stays, for argparse to
    report).
    """
    i = 0
    while i < len(argv):  # global options, then the command
        tok = argv[i]
        if tok in _GLOBAL_VALUE_FLAGS:
            i += 2
        elif tok.startswith("-"):
            i += 1
        else:
            break
    if i >= len(argv) or argv[i] != "run":
        return argv, []
    rest, params = argv[: i + 1], []
    i += 1
    while i < len(argv):
        tok = argv[i]
        if tok == "--":  # everything after it is positional
            rest += argv[i:]
            break
        if tok in _PARAM_FLAGS and i + 2 < len(argv):
            params.append([argv[i + 1], argv[i + 2]])
            i += 3
            continue
        if tok in _RUN_VALUE_FLAGS and i + 1 < len(argv):
            rest += argv[i : i + 2]
            i += 2
            continue
        rest.append(tok)
        i += 1
    return rest, params


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


def _when(dt: datetime) -> str:
    return f"{dt:%Y-%m-%d %H:%M:%S} UTC"


def _print_status(st: InstanceStatus) -> None:
    print(f"{st.id}  {st.status.value}  {st.notebook}")
    print(
        f"  version {st.version}  created {st.created_at:%Y-%m-%d %H:%M:%S}  "
        f"updated {st.updated_at:%Y-%m-%d %H:%M:%S}"
    )
    if st.status == Status.SLEEPING and st.wake_at is not None:
        print(f"  sleeping until {_when(st.wake_at)}")
    elif st.status == Status.WAITING and st.waiting_for is not None:
        timeout = f", times out at {_when(st.wake_at)}" if st.wake_at is not None else ""
        print(f"  waiting for the event {st.waiting_for!r}{timeout}")
    if st.error is not None:
        print(f"  failed at cell {st.failed_cell}: {st.error.ename}: {st.error.evalue}")
    for c in st.cells:
        dur = f"{c.duration_ms:9.1f} ms" if c.duration_ms is not None else " " * 12
        name = f"  step {c.name!r}" if c.name else ""
        extra = ""
        if c.unserializable:
            extra = "  unsaved: " + ", ".join(
                f"{k} ({v.type})" for k, v in c.unserializable.items()
            )
        print(f"  [{c.index:>3}] {c.status.value:<9} x{c.attempts} {dur}  {c.cell_id}{name}{extra}")
        if len(c.history) > 1:  # retried: every attempt's error, and the wait after it
            for a in c.history:
                if a.status != CellStatus.FAILED or a.error is None:
                    continue
                retry = ""
                if a.error.retry_in_s is not None:
                    retry = f" (retry in {a.error.retry_in_s:g} s)"
                print(f"        attempt {a.attempt}: {a.error.ename}: {a.error.evalue}{retry}")


def _stdout_to_devnull() -> None:
    """The reader of stdout went away (``durabook list | head -1``): the Python docs'
    recipe, so the interpreter's final flush does not raise BrokenPipeError again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def main(argv: list[str] | None = None) -> int:
    try:
        code = _main(sys.argv[1:] if argv is None else list(argv))
        sys.stdout.flush()  # inside the try: a closed pipe shows here, not at exit
        return code
    except BrokenPipeError:
        _stdout_to_devnull()
        return 128 + 13  # as a process killed by SIGPIPE (what `yes | head -1` reports)


def _main(argv: list[str]) -> int:
    os.umask(0o077)  # what durabook creates (DuckDB's own files included) is the owner's alone
    argv, params = _take_parameters(argv)
    args = _parser().parse_args(argv)
    if args.command == "run":
        args.parameter = params
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
    with _open_for_serve(args.home, Engine) as eng:
        print(f"durabook engine for {eng.home} (pid {os.getpid()})", file=sys.stderr, flush=True)
        serve(eng, stop, args.idle_timeout)
    return 0


def _open_for_serve(home: str | None, engine: Any, wait: float = 60.0) -> Any:
    """The home's store, for `serve`. A short-lived command (`status`, `list`, a
    `run`) may hold it for a moment: wait for it. Another `serve` holds it for good:
    refuse at once."""
    import time

    from durabook_kernel import wire

    from .engine import resolve_home
    from .errors import EngineBusy

    deadline = time.monotonic() + wait
    said = False
    while True:
        try:
            return engine(home)
        except EngineBusy as busy:
            sock = wire.connect(resolve_home(home))
            owner: dict[str, Any] = {}
            if sock is not None:
                try:
                    owner = wire.call(sock, "ping") or {}
                except (OSError, RuntimeError, ValueError):
                    owner = {}
                finally:
                    sock.close()
            if owner.get("serving") or time.monotonic() > deadline:
                raise busy from None
            if not said:
                pid = owner.get("pid") or busy.fields.get("pid")
                print(f"waiting for pid {pid} to finish with the store", file=sys.stderr)
                said = True
            time.sleep(0.1)


def _resume_here(eng: Any, args: argparse.Namespace) -> int:
    progress = _BarProgress(not args.quiet)
    try:
        res = eng.resume(
            args.id,
            getattr(args, "notebook", None),
            progress=progress,
            now=bool(getattr(args, "now", False)),
        )
    finally:
        progress.close()
    _print_result(res, args.json, False)
    return res.exit_code


def _lifecycle(args: argparse.Namespace) -> int:
    from .remote import RemoteEngine, open_engine

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
    if args.command == "unpause" and Status(status).suspended:
        return 3  # still sleeping or waiting, as `run` and `resume` say it
    return 0


def _send_event(args: argparse.Namespace) -> int:
    from .remote import RemoteEngine, open_engine

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


def _run_env(args: argparse.Namespace) -> dict[str, str]:
    """What the run's kernel gets beyond the allow-list: what ``--env`` names, only.

    A notebook may list the variables it needs (``metadata.durabook.env``); they are
    not passed on its say-so (a notebook from elsewhere could ask for your secrets),
    but each one not given with ``--env`` is named in a note."""
    from .notebook import declared_env, load_notebook

    env: dict[str, str] = {}
    for item in args.env:
        name, eq, value = item.partition("=")
        if not eq:
            if name not in os.environ:
                raise BadInput(f"--env {name}: no such variable here (use --env {name}=VALUE)")
            value = os.environ[name]
        env[name] = value
    for name in declared_env(load_notebook(args.notebook)):
        if name not in env:
            print(f"note: the notebook asks for {name}; pass it with --env {name}", file=sys.stderr)
    return env


def _dispatch(args: argparse.Namespace) -> int:
    from .remote import open_engine

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
                try:
                    print(iid, flush=True)
                except BrokenPipeError:
                    _stdout_to_devnull()  # nobody reads stdout: the run itself goes on
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
                    env=_run_env(args),
                    scan_all=args.scan_all,
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
