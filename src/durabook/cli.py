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
from typing import TYPE_CHECKING, Any, NoReturn

from .display import BarProgress, print_result, print_status, stdout_to_devnull
from .errors import BadInput, DurabookError

if TYPE_CHECKING:
    pass

__all__ = ["main"]


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

    sb = sub.add_parser("submit", help="queue a notebook as a new instance and return at once")
    sb.add_argument("notebook")
    sb.add_argument(
        "-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE")
    )
    sb.add_argument("--id", help="instance id (default: generated)")
    sb.add_argument("--env", action="append", default=[], metavar="NAME[=VALUE]")
    sb.add_argument("--scan-all", action="store_true")
    sb.add_argument("--json", action="store_true", help="print one JSON object")
    for q in (run, sb):
        q.add_argument("--priority", type=int, default=0, help="higher runs first (default 0)")
        q.add_argument("--tenant", help="whose instance: dispatch is fair between tenants")
        q.add_argument("--workflow", help="limits per workflow apply (default: the notebook)")
        q.add_argument("--webhook", help="URL told (POST) when the instance ends or waits")
        q.add_argument("--memory", help="the kernel's memory limit, e.g. 512M or 2G")
        q.add_argument("--cpu-seconds", help="the kernel's CPU time limit, e.g. 600 or 10m")
        q.add_argument(
            "--sandbox",
            action="store_true",
            default=None,
            help="run in a private folder ($DURABOOK_HOME/work/ID) and, with bubblewrap, "
            "namespaces (the default for runs with a tenant)",
        )
        q.add_argument(
            "--network", action="store_true", help="a sandboxed kernel may use the network"
        )

    wt = sub.add_parser("wait", help="follow an instance until it is final or suspended")
    wt.add_argument("id")
    wt.add_argument("--timeout", type=float, help="give up after this many seconds (exit 5)")
    wt.add_argument("--json", action="store_true")
    wt.add_argument("-q", "--quiet", action="store_true")

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
    sv.add_argument(
        "--concurrency", type=int, help="instances executing at once (default: the cores)"
    )
    sv.add_argument(
        "--warm",
        type=int,
        default=4,
        help="kernels kept ready for the next runs, forked from a zygote (default 4)",
    )
    sv.add_argument("--per-tenant", type=int, help="at most this many of one tenant at once")
    sv.add_argument("--per-workflow", type=int, help="at most this many of one workflow at once")
    sv.add_argument("--host", default="127.0.0.1", help="HTTP address (default 127.0.0.1)")
    sv.add_argument("--port", type=int, help="serve the HTTP API on this port (0: any free)")
    sv.add_argument("--token", help="the HTTP API's token (default: generated and printed)")
    sv.add_argument("--no-auth", action="store_true", help="no token (loopback only)")
    sv.add_argument("--webhook", help="URL told (POST) of instances that complete, fail or wait")

    sub.add_parser("doctor", help="what this machine and home give durabook, one line each")

    tp = sub.add_parser("top", help="live table of running instances: cell, CPU, memory")
    tp.add_argument("--once", action="store_true", help="print one table and exit")
    tp.add_argument("--json", action="store_true", help="print the engine's reply, once")
    tp.add_argument("--interval", type=float, default=1.0, help="seconds between redraws")

    ls = sub.add_parser("list", help="instances, newest first")
    ls.add_argument("--status")
    ls.add_argument("--tenant")
    ls.add_argument("--limit", type=int, default=100)
    ls.add_argument("--json", action="store_true")

    from .schedule_cli import add_parser

    add_parser(sub)
    return p


_PARAM_FLAGS = ("-p", "--parameter")
_GLOBAL_VALUE_FLAGS = ("--home",)
_RUN_VALUE_FLAGS = (
    "--id",
    "--if-exists",
    "--output",
    "--env",
    "--priority",
    "--tenant",
    "--workflow",
    "--webhook",
    "--memory",
    "--cpu-seconds",
    "--cron",
    "--tz",
    "--overlap",
    "--catch-up",
)


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
    if i >= len(argv) or argv[i] not in ("run", "submit", "schedule"):
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


def main(argv: list[str] | None = None) -> int:
    try:
        code = _main(sys.argv[1:] if argv is None else list(argv))
        sys.stdout.flush()  # inside the try: a closed pipe shows here, not at exit
        return code
    except BrokenPipeError:
        stdout_to_devnull()
        return 128 + 13  # as a process killed by SIGPIPE (what `yes | head -1` reports)


def _skip_slow_format_checkers() -> None:
    """jsonschema (under nbformat) imports ``rfc3987_syntax`` when it is installed
    (jupyter_server brings it, through jupyter-events), and that builds a lark grammar
    at import: 0.8 s of every command that reads a notebook. Notebook validation uses
    no IRI formats, so this command's jsonschema goes without them."""
    if "jsonschema" not in sys.modules:
        sys.modules.setdefault("rfc3987_syntax", None)  # type: ignore[arg-type]


def _main(argv: list[str]) -> int:
    _skip_slow_format_checkers()
    os.umask(0o077)  # what durabook creates (DuckDB's own files included) is the owner's alone
    argv, params = _take_parameters(argv)
    args = _parser().parse_args(argv)
    if args.command in ("run", "submit") or (args.command == "schedule" and params):
        args.parameter = params
    try:
        return _dispatch(args)
    except DurabookError as exc:
        print(exc.one_line(), file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _resume_here(svc: Any, args: argparse.Namespace) -> int:
    """Continue an instance and follow it (run here, or by the serving engine)."""
    from .api.models import ResumeRequest

    progress = BarProgress(not args.quiet)
    try:
        req = ResumeRequest(
            id=args.id,
            notebook=getattr(args, "notebook", None),
            now=bool(getattr(args, "now", False)),
        )
        res = svc.resume(req, progress)
    finally:
        progress.close()
    print_result(res, args.json, True)
    return int(res.exit_code)


def _follow(svc: Any, iid: str, args: argparse.Namespace) -> int:
    """Follow an instance the serving engine runs."""
    from .api.models import WaitRequest

    progress = BarProgress(not args.quiet)
    try:
        res = svc.wait(WaitRequest(id=iid), progress)
    finally:
        progress.close()
    print_result(res, args.json, True)
    return int(res.exit_code)


def _lifecycle(args: argparse.Namespace) -> int:
    from .api.models import IdRequest, RestartRequest
    from .models import Status
    from .remote import open_engine

    with open_engine(args.home, serve=True) as svc:
        if args.command == "restart":
            reply = svc.restart(RestartRequest(id=args.id, from_cell=args.from_cell))
        else:
            reply = getattr(svc, args.command)(IdRequest(id=args.id))
        if reply.status == Status.QUEUED and args.command in ("restart", "unpause"):
            if not reply.resumed_by_engine:
                return _resume_here(svc, args)  # nobody else would run it: run it now
            if args.command == "restart":
                return _follow(svc, args.id, args)
    if args.json:
        print(json.dumps({"id": args.id, "status": reply.status.value}))
    else:
        print(f"{args.id}: {reply.status.value}", file=sys.stderr)
    if args.command == "unpause" and reply.status.suspended:
        return 3  # still sleeping or waiting, as `run` and `resume` say it
    return 0


def _send_event(args: argparse.Namespace) -> int:
    from .api.models import EventRequest
    from .remote import open_engine

    data: Any = None
    if args.data is not None:
        try:
            data = json.loads(args.data)
        except json.JSONDecodeError as exc:
            raise BadInput(f"event data is not JSON: {exc.msg} at column {exc.colno}") from None
    with open_engine(args.home, serve=True) as svc:
        reply = svc.send_event(EventRequest(id=args.id, name=args.name, data=data))
        if reply.delivered and not reply.resumed_by_engine:
            # no engine keeps running here: resume the instance in the foreground
            return _resume_here(svc, args)
    what = "delivered; the engine resumes it" if reply.delivered else "kept until it waits for it"
    if args.json:
        print(json.dumps({"id": args.id, "event": args.name, "delivered": reply.delivered}))
    else:
        print(f"event {args.name!r} for {args.id}: {what}", file=sys.stderr)
    return 0


def _run_env(args: argparse.Namespace) -> dict[str, str]:
    """What the run's kernel gets beyond the allow-list: what ``--env`` names, only.

    A notebook may list the variables it needs (``metadata.durabook.env``); they are
    not passed on its say-so (a notebook from elsewhere could ask for your secrets),
    but each one not given with ``--env`` is named in a note."""
    env: dict[str, str] = {}
    for item in args.env:
        name, eq, value = item.partition("=")
        if not eq:
            if name not in os.environ:
                raise BadInput(f"--env {name}: no such variable here (use --env {name}=VALUE)")
            value = os.environ[name]
        env[name] = value
    for name in _declared_env(args.notebook):
        if name not in env:
            print(f"note: the notebook asks for {name}; pass it with --env {name}", file=sys.stderr)
    return env


def _declared_env(path: str) -> list[str]:
    """``metadata.durabook.env`` read with plain JSON (nbformat costs a command 0.1 s);
    a notebook that cannot be read is the engine's to report."""
    if not os.path.isfile(path):  # a pipe would block here
        return []
    try:
        with open(path, "rb") as fh:
            meta = json.loads(fh.read()).get("metadata", {})
        names = meta.get("durabook", {}).get("env", [])
    except (OSError, ValueError, AttributeError, RecursionError):
        return []
    return [n for n in names if isinstance(n, str)] if isinstance(names, list) else []


def _limits(args: argparse.Namespace) -> dict[str, str] | None:
    asked = {"memory": args.memory, "cpu_seconds": args.cpu_seconds}
    return {k: v for k, v in asked.items() if v is not None} or None


def _create_request(args: argparse.Namespace) -> Any:
    from pydantic import ValidationError

    from .api.models import CreateRequest
    from .kernels.limits import Limits

    try:
        return CreateRequest(
            notebook=str(os.path.abspath(args.notebook)),
            parameters=dict(args.parameter),
            id=args.id,
            output=getattr(args, "output", None),
            from_text=True,
            if_exists=getattr(args, "if_exists", "return"),
            env=_run_env(args) or None,
            scan_all=args.scan_all,
            priority=args.priority,
            tenant=args.tenant,
            workflow=args.workflow,
            webhook=args.webhook,
            limits=Limits.model_validate(asked) if (asked := _limits(args)) else None,
            sandbox=args.sandbox,
            network=args.network,
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise BadInput(f"{where}: {first['msg']}" if where else first["msg"]) from None


def _run(args: argparse.Namespace) -> int:
    from .remote import open_engine

    progress = BarProgress(not args.quiet)
    printed = False

    def created(iid: str) -> None:
        nonlocal printed
        if not args.json:
            try:
                print(iid, flush=True)
            except BrokenPipeError:
                stdout_to_devnull()  # nobody reads stdout: the run itself goes on
            printed = True

    req = _create_request(args)
    with open_engine(args.home, serve=True) as svc:
        try:
            res = svc.run(req, progress, created)
        finally:
            progress.close()
    print_result(res, args.json, printed)
    return int(res.exit_code)


def _submit(args: argparse.Namespace) -> int:
    from .remote import open_engine

    req = _create_request(args)
    with open_engine(args.home, serve=False) as svc:
        ref = svc.create(req)
        serving = svc.health().serving
    if not serving and ref.created:
        print(
            f"note: no engine serves this home: `durabook serve` runs {ref.id} "
            f"(or `durabook wait {ref.id}` runs it here)",
            file=sys.stderr,
        )
    if args.json:
        print(json.dumps(ref.model_dump(mode="json")))
    else:
        print(ref.id)
        if not ref.created:
            print(f"{ref.id}: exists already ({ref.status.value})", file=sys.stderr)
    return 0


def _wait(args: argparse.Namespace) -> int:
    from .api.models import WaitRequest
    from .errors import InvalidState
    from .remote import open_engine

    if args.timeout is not None and args.timeout <= 0:
        raise BadInput("--timeout must be a positive number of seconds")
    progress = BarProgress(not args.quiet)
    with open_engine(args.home, serve=True) as svc:
        try:
            res = svc.wait(WaitRequest(id=args.id, timeout=args.timeout), progress)
        except InvalidState as exc:
            if not exc.fields.get("timeout"):
                raise
            progress.close()
            print(exc.one_line(), file=sys.stderr)
            return 5
        finally:
            progress.close()
    print_result(res, args.json, True)
    return int(res.exit_code)


def _dispatch(args: argparse.Namespace) -> int:
    from .remote import open_engine

    if args.command == "doctor":
        from .doctor import main as doctor
        from .home import resolve_home

        return doctor(resolve_home(args.home))
    if args.command == "top":
        from .top import top_command

        return top_command(args)
    if args.command == "serve":
        from .serve_cli import serve_command

        return serve_command(args)
    if args.command == "schedule":
        from .schedule_cli import main as schedule_main

        return schedule_main(args)
    if args.command == "send-event":
        return _send_event(args)
    if args.command in ("pause", "unpause", "terminate", "restart"):
        return _lifecycle(args)
    if args.command == "run":
        return _run(args)
    if args.command == "submit":
        return _submit(args)
    if args.command == "wait":
        return _wait(args)
    if args.command == "resume":
        with open_engine(args.home, serve=True) as svc:
            return _resume_here(svc, args)
    from .api.models import IdRequest, ListRequest

    if args.command == "status":
        with open_engine(args.home) as svc:
            st = svc.status(IdRequest(id=args.id))
        if args.json:
            print(json.dumps(st.model_dump(mode="json")))
        else:
            print_status(st)
        return 0
    if args.command == "list":
        from pydantic import ValidationError

        try:
            query = ListRequest(status=args.status, tenant=args.tenant, limit=args.limit)
        except ValidationError as exc:
            from .models import Status

            if any(e["loc"] == ("status",) for e in exc.errors()):
                names = " ".join(s.value for s in Status)
                raise BadInput(f"unknown status {args.status!r}; one of: {names}") from None
            raise BadInput(f"bad list options: {exc.errors()[0]['msg']}") from None
        with open_engine(args.home) as svc:
            page = svc.list(query)
        items = page.items
        if page.next_cursor and not args.json:
            print(f"(the newest {len(items)}; --limit N shows more)", file=sys.stderr)
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
