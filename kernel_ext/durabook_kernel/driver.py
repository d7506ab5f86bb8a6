"""The in-kernel driver: one ``execute_request`` runs all of a run's cells.

Why not one request per cell, as nbclient does: ipykernel spends about 3 ms on
every request (threads, status messages, the reply) before the cell's own
work; running the cells from inside the kernel with ``run_cell_async`` keeps
IPython's full semantics (magics, display, top-level await, execution counts,
cell ids for events) at a fraction of that. Around each cell the driver fires
the events IPython and ipykernel fire around a request (``pre_execute`` and
``pre_run_cell`` inside ``run_cell_async``; then ``post_execute`` and
``post_run_cell``, which matplotlib's inline backend needs to show figures).

After each cell the driver records the cell's outputs (see
:mod:`durabook_kernel.capture`) and its checkpoint manifest in the step
journal, fsynced, before the next cell starts (see
:mod:`durabook_kernel.journal`), then publishes a small ``durabook_step`` IOPub
message so the runner reads the record at once. Payloads over 2 KiB are
written (and fsynced) to the blob store before the record naming them.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
import traceback
from typing import Any

from . import primitives
from .blobs import BlobStore
from .capture import OutputCapture
from .journal import JournalWriter
from .meter import CellMeter

__all__ = ["OUTPUTS_INLINE_LIMIT", "PLAN_KEY", "STEP_MSG", "drive"]

STEP_MSG = "durabook_step"
PLAN_KEY = "durabook_plan"  # the execute_request's metadata field with the run's plan
OUTPUTS_INLINE_LIMIT = 64 * 1024  # bytes of JSON: larger outputs go to a blob


def _publish(shell: Any, content: dict[str, Any]) -> None:
    kernel = getattr(shell, "kernel", None)
    if kernel is None:  # plain IPython (tests): nobody listens
        return
    kernel.session.send(
        kernel.iopub_socket,
        STEP_MSG,
        content,
        parent=kernel.get_parent("shell"),
        ident=STEP_MSG.encode(),
    )


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        # ipykernel's flush hops to the IO thread; skip it when nothing is buffered
        if getattr(stream, "_flush_pending", True) or getattr(stream, "_buffer", None):
            stream.flush()


def _error_info(shell: Any, result: Any) -> dict[str, Any]:
    exc = result.error_in_exec or result.error_before_exec
    tb = getattr(shell, "_last_traceback", None) or traceback.format_exception(exc)
    return {"ename": type(exc).__name__, "evalue": str(exc), "traceback": list(tb)}


def _exc_info(exc: BaseException, ename: str | None = None, prefix: str = "") -> dict[str, Any]:
    return {
        "ename": ename or type(exc).__name__,
        "evalue": prefix + str(exc),
        "traceback": traceback.format_exception(exc),
    }


def _clean_exit(result: Any) -> bool:
    exc = result.error_in_exec
    return isinstance(exc, SystemExit) and exc.code in (None, 0)


async def _run_source(shell: Any, source: str, cell_id: str | None, silent: bool) -> Any:
    """One cell, with the events ipykernel's ``do_execute`` fires around a request."""
    shell._last_traceback = None
    preprocessing_exc = None
    try:
        transformed = shell.transform_cell(source)
    except Exception:
        transformed = source
        preprocessing_exc = sys.exc_info()
    result = None
    try:
        result = await shell.run_cell_async(
            source,
            store_history=not silent,
            silent=silent,
            transformed_cell=transformed,
            preprocessing_exc_tuple=preprocessing_exc,
            cell_id=cell_id,
        )
    finally:
        shell.events.trigger("post_execute")
        if not silent:
            shell.events.trigger("post_run_cell", result)
    return result


def _storage_error(exc: BaseException, what: str, blobs: BlobStore) -> dict[str, Any]:
    """ENOSPC / EDQUOT are the user's to fix (free space, then resume): say so plainly."""
    import errno

    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        home = blobs.root.parent
        return {
            "ename": "StorageFull",
            "evalue": f"no space left on the disk of {home} to save {what}: free some space, "
            "then resume the instance (its committed cells are kept)",
            "traceback": [],
        }
    return _exc_info(exc, "CheckpointError", f"could not save {what}: ")


def _outputs_field(outputs: list[dict[str, Any]], blobs: BlobStore) -> dict[str, Any]:
    text = json.dumps(outputs, default=str)
    if len(text) <= OUTPUTS_INLINE_LIMIT:
        return {"outputs": outputs}
    return {"outputs_blob": blobs.put(text.encode())}  # fsynced before the record


async def drive(plan_json: str | None = None) -> None:
    """Restore state, then run cells, journaling and announcing each finished cell.

    The plan is ``plan_json``, or else the ``durabook_plan`` metadata of the request
    that runs this (how the runner sends it)."""
    from . import extension_for

    shell = _get_ipython()
    ext = extension_for(shell)
    plan = json.loads(plan_json) if plan_json is not None else _request_plan(shell)
    tracker = ext.tracker
    blobs = BlobStore(plan["blobs"])
    tracker.blobs = blobs
    tracker.scan_all = bool(plan.get("scan_all"))
    ext.batch = True
    if plan.get("env"):
        os.environ.update(plan["env"])  # what the run declared (the kernel started scrubbed)
    if plan.get("cwd"):
        os.chdir(plan["cwd"])
    if plan.get("execution_count"):
        shell.execution_count = int(plan["execution_count"])  # counts go on after a resume
    # ipykernel turns SIGINT into a loop callback while an async request runs, which
    # cannot fire while a cell's synchronous code holds the loop: make an interrupt
    # (a timeout, or the user's) raise KeyboardInterrupt in the cell, as it does
    # for ordinary requests; a cell that awaits is cancelled where it waits
    saved_sigint = signal.signal(signal.SIGINT, _interrupt_handler())
    ctx = primitives._RunContext(plan.get("resolutions") or {})
    primitives._context = ctx
    # a suspension is not an error to show: end the cell quietly
    shell.set_custom_exc((primitives.Suspend,), lambda *a, **k: None)
    kernel = getattr(shell, "kernel", None)
    capture: OutputCapture | None = None
    if kernel is not None:
        parent = kernel.get_parent("shell") or {}
        capture = OutputCapture(kernel, (parent.get("header") or {}).get("msg_id"))
        capture.install()
    journal = JournalWriter(plan["journal"])
    try:
        problems = await _restore(shell, tracker, plan)
        if problems is None:
            return
        if capture is not None:
            capture.drop()  # what replayed cells printed is no cell's output
        if problems:  # shown in the first resumed cell's output: never lost silently
            print(
                "durabook: after the resume, could not re-apply: " + "; ".join(problems),
                file=sys.stderr,
            )
        stop_file = plan.get("stop_file")
        for cell in plan["cells"]:
            if stop_file and os.path.exists(stop_file):  # `durabook pause`: stop between cells
                _publish(shell, {"phase": "paused", "index": cell["index"]})
                return
            ok = await _run_one(shell, tracker, blobs, ctx, capture, journal, cell)
            _uncancel()  # an interrupt that cancelled the cell is spent with it
            if not ok:
                return
    except BaseException as exc:  # KeyboardInterrupt between cells, or our own failure
        _flush()
        _publish(shell, {"phase": "abort", "error": _exc_info(exc)})
    finally:
        journal.close()
        if capture is not None:
            capture.uninstall()
        shell.set_custom_exc((), None)
        primitives._context = None
        signal.signal(signal.SIGINT, saved_sigint)
        ext.batch = False


async def _run_one(
    shell: Any,
    tracker: Any,
    blobs: BlobStore,
    ctx: Any,
    capture: OutputCapture | None,
    journal: JournalWriter,
    cell: dict[str, Any],
) -> bool:
    """Run, journal and announce one cell; False when the run stops after it."""
    index = cell["index"]
    # every record names the cell by index, id and the hash of its source, so recovery
    # never files a record under a cell of another notebook version
    key = {"index": index, "id": cell.get("id"), "hash": cell.get("hash")}
    started = time.time()
    journal.append({"t": "start", **key, "at": started}, durable=False)
    meter = CellMeter()
    meter.start()
    t0 = time.perf_counter()
    ctx.start_cell(index, cell["source"])
    result = await _run_source(shell, cell["source"], cell.get("id"), silent=False)
    _flush()
    usage = meter.stop()  # the cell's own cost, before the checkpoint's
    outputs = capture.take() if capture is not None else []
    if isinstance(result.error_in_exec, primitives.Suspend):
        # the cell runs again from its top on resume: its outputs so far are not kept
        request = result.error_in_exec.request
        journal.append({"t": "suspend", **key, "request": request})
        _publish(shell, {"phase": "cell", "index": index, "status": "suspend", "suspend": request})
        return False
    record: dict[str, Any] = {
        "t": "cell",
        **key,
        "execution_count": result.execution_count,
        "started_at": started,
        **usage,
    }
    exit_ok = _clean_exit(result)
    if result.success or exit_ok:
        try:
            record["manifest"] = tracker.checkpoint(cell["source"])
            record["status"] = "exit" if exit_ok else "ok"
        except Exception as exc:  # a full disk, or a bug of ours: fail the cell loudly
            record["status"] = "error"
            record["error"] = _storage_error(exc, "the cell's state", blobs)
    else:
        record["status"] = "error"
        record["error"] = _error_info(shell, result)
    record["duration_ms"] = (time.perf_counter() - t0) * 1000.0
    try:
        record.update(_outputs_field(outputs, blobs))
        journal.append(record)
    except Exception as exc:
        # the record could not be made durable: the cell is not committed. Say why
        # in a short record (it may still fit), then stop the run here.
        err = _storage_error(exc, "the cell's checkpoint", blobs)
        short = {k: v for k, v in record.items() if k not in ("manifest", "outputs")}
        short.update(status="error", error=err, outputs=[])
        with contextlib.suppress(Exception):
            journal.append(short)
        _publish(shell, {"phase": "cell", "index": index, "status": "error", "error": err})
        return False
    _publish(shell, {"phase": "cell", "index": index, "status": record["status"]})
    return record["status"] == "ok"  # a failure, or sys.exit(0): papermill's clean stop


async def _restore(shell: Any, tracker: Any, plan: dict[str, Any]) -> list[str] | None:
    """The saved state back in the namespace; None when it cannot be (reported)."""
    refs: dict[str, dict[str, Any]] = plan.get("restore") or {}
    replay: list[dict[str, Any]] = plan.get("replay") or []
    if not refs and not replay:
        tracker.reset_baseline()
        _publish(shell, {"phase": "restored", "vars": 0, "replayed": []})
        return []
    t0 = time.perf_counter()
    from .restore import restore_namespace

    report = await restore_namespace(shell, tracker, refs, replay, strict=True)
    if report.error is not None:
        _publish(shell, {"phase": "restore", "status": "error", "error": report.error})
        return None
    _publish(
        shell,
        {
            "phase": "restored",
            "vars": len(report.loaded),
            "replayed": [c["index"] for c in replay],
            "problems": report.problems,
            "duration_ms": (time.perf_counter() - t0) * 1000.0,
        },
    )
    return report.problems


def _interrupt_handler() -> Any:
    """SIGINT during a run: KeyboardInterrupt in the code that runs, or, when the main
    thread waits in the event loop (a cell awaiting), a cancel of the run's task. A
    KeyboardInterrupt raised there would escape the loop and end the kernel."""
    import asyncio

    task = asyncio.current_task()
    loop = asyncio.get_running_loop()

    def handler(signum: int, frame: Any) -> None:
        if task is not None and _waiting_in_loop(frame):
            loop.call_soon_threadsafe(task.cancel, "interrupted (SIGINT)")
            return
        raise KeyboardInterrupt

    return handler


def _waiting_in_loop(frame: Any) -> bool:
    """Whether ``frame`` is the event loop's select(), called by the loop itself."""
    names = []
    for _ in range(3):
        if frame is None:
            return False
        names.append((os.path.basename(frame.f_code.co_filename), frame.f_code.co_name))
        frame = frame.f_back
    return names[0][0] == "selectors.py" and ("base_events.py", "_run_once") in names[1:]


def _uncancel() -> None:
    import asyncio

    task = asyncio.current_task()
    uncancel = getattr(task, "uncancel", None)  # Python 3.11+: cancelling() counts
    while uncancel is not None and task is not None and task.cancelling():
        uncancel()


def _request_plan(shell: Any) -> dict[str, Any]:
    kernel = getattr(shell, "kernel", None)
    parent = kernel.get_parent("shell") if kernel is not None else None
    plan = ((parent or {}).get("metadata") or {}).get(PLAN_KEY)
    if isinstance(plan, str):  # JSON text, as the runner sends it
        plan = json.loads(plan)
    if not isinstance(plan, dict):
        raise ValueError(f"drive() needs a plan: the request has no {PLAN_KEY} metadata")
    return plan


def _get_ipython() -> Any:
    from IPython import get_ipython

    shell = get_ipython()
    if shell is None:
        raise RuntimeError("durabook's driver runs inside an IPython kernel")
    return shell
