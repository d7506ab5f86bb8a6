"""The in-kernel driver: one ``execute_request`` runs all of a run's cells.

Why not one request per cell, as nbclient does: ipykernel spends about 3 ms on
every request (threads, status messages, the reply) before the cell's own
work; running the cells from inside the kernel with ``run_cell_async`` keeps
IPython's full semantics (magics, display, top-level await, execution counts,
cell ids for events) at a fraction of that. After each cell the driver flushes
the cell's streams and publishes one ``durabook_step`` IOPub message carrying
the checkpoint manifest (or the error); the runner attributes every output
between two step messages to the cell in between and commits the manifest.

Payloads over 2 KiB are written (and fsynced) to the blob store here, before
the manifest naming them leaves the kernel.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import traceback
from typing import Any

from . import primitives
from .blobs import BlobStore

__all__ = ["STEP_MSG", "drive"]

STEP_MSG = "durabook_step"


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


def _clean_exit(result: Any) -> bool:
    exc = result.error_in_exec
    return isinstance(exc, SystemExit) and exc.code in (None, 0)


async def _run_source(shell: Any, source: str, cell_id: str | None, silent: bool) -> Any:
    shell._last_traceback = None
    preprocessing_exc = None
    try:
        transformed = shell.transform_cell(source)
    except Exception:
        transformed = source
        preprocessing_exc = sys.exc_info()
    return await shell.run_cell_async(
        source,
        store_history=not silent,
        silent=silent,
        transformed_cell=transformed,
        preprocessing_exc_tuple=preprocessing_exc,
        cell_id=cell_id,
    )


async def drive(plan_json: str) -> None:
    """Restore state, then run cells, publishing one step message per cell."""
    from . import extension_for

    shell = _get_ipython()
    ext = extension_for(shell)
    plan = json.loads(plan_json)
    tracker = ext.tracker
    tracker.blobs = BlobStore(plan["blobs"])
    ext.batch = True
    if plan.get("cwd"):
        os.chdir(plan["cwd"])
    # ipykernel turns SIGINT into a loop callback while an async request runs, which
    # cannot fire while a cell's synchronous code holds the loop: make an interrupt
    # (a timeout, or the user's) raise KeyboardInterrupt in the cell, as it does
    # for ordinary requests
    saved_sigint = signal.signal(signal.SIGINT, signal.default_int_handler)
    ctx = primitives._RunContext(plan.get("resolutions") or {})
    primitives._context = ctx
    # a suspension is not an error to show: end the cell quietly
    shell.set_custom_exc((primitives.Suspend,), lambda *a, **k: None)
    try:
        if not await _restore(shell, tracker, plan):
            return
        stop_file = plan.get("stop_file")
        for cell in plan["cells"]:
            if stop_file and os.path.exists(stop_file):  # `durabook pause`: stop between cells
                _publish(shell, {"phase": "paused", "index": cell["index"]})
                return
            started = time.time()
            t0 = time.perf_counter()
            ctx.start_cell(cell["index"], cell["source"])
            result = await _run_source(shell, cell["source"], cell.get("id"), silent=False)
            _flush()
            if isinstance(result.error_in_exec, primitives.Suspend):
                _publish(
                    shell,
                    {
                        "phase": "cell",
                        "index": cell["index"],
                        "status": "suspend",
                        "suspend": result.error_in_exec.request,
                        "started_at": started,
                    },
                )
                return
            content: dict[str, Any] = {
                "phase": "cell",
                "index": cell["index"],
                "execution_count": result.execution_count,
                "started_at": started,
            }
            exit_ok = _clean_exit(result)
            if result.success or exit_ok:
                try:
                    content["manifest"] = tracker.checkpoint(cell["source"])
                    content["status"] = "exit" if exit_ok else "ok"
                except Exception as exc:  # a bug of ours or a full disk: fail the cell loudly
                    content["status"] = "error"
                    content["error"] = {
                        "ename": "CheckpointError",
                        "evalue": f"could not save the cell's state: {exc!r}",
                        "traceback": traceback.format_exception(exc),
                    }
            else:
                content["status"] = "error"
                content["error"] = _error_info(shell, result)
            content["duration_ms"] = (time.perf_counter() - t0) * 1000.0
            _publish(shell, content)
            if content["status"] != "ok":
                return  # a failure, or sys.exit(0): papermill's clean early stop
    except BaseException as exc:  # KeyboardInterrupt between cells, or our own failure
        _flush()
        _publish(
            shell,
            {
                "phase": "abort",
                "error": {
                    "ename": type(exc).__name__,
                    "evalue": str(exc),
                    "traceback": traceback.format_exception(exc),
                },
            },
        )
    finally:
        shell.set_custom_exc((), None)
        primitives._context = None
        signal.signal(signal.SIGINT, saved_sigint)
        ext.batch = False


async def _restore(shell: Any, tracker: Any, plan: dict[str, Any]) -> bool:
    refs: dict[str, dict[str, Any]] = plan.get("restore") or {}
    replay: list[dict[str, Any]] = plan.get("replay") or []
    if not refs and not replay:
        tracker.reset_baseline()
        _publish(shell, {"phase": "restored", "vars": 0, "replayed": []})
        return True
    t0 = time.perf_counter()
    try:
        loaded = tracker.restore(refs)
    except Exception as exc:
        _publish(
            shell,
            {
                "phase": "restore",
                "status": "error",
                "error": {
                    "ename": "RestoreError",
                    "evalue": f"could not load saved state: {exc!r}",
                    "traceback": traceback.format_exception(exc),
                },
            },
        )
        return False
    rebuilt: list[str] = []
    for cell in replay:
        result = await _run_source(shell, cell["source"], cell.get("id"), silent=True)
        _flush()
        if not result.success:
            err = _error_info(shell, result)
            err["evalue"] = (
                f"replaying cell {cell['index']} to rebuild state failed: " + err["evalue"]
            )
            _publish(
                shell, {"phase": "restore", "status": "error", "index": cell["index"], "error": err}
            )
            return False
        rebuilt.extend(cell.get("names", []))
    # a replayed cell may also have re-assigned saved variables: the saved ones win
    missing = tracker.finish_restore(refs, loaded, rebuilt)
    if missing:
        _publish(
            shell,
            {
                "phase": "restore",
                "status": "error",
                "error": {
                    "ename": "RestoreError",
                    "evalue": f"replayed cells did not rebuild {', '.join(missing)}",
                    "traceback": [],
                },
            },
        )
        return False
    _publish(
        shell,
        {
            "phase": "restored",
            "vars": len(loaded),
            "replayed": [c["index"] for c in replay],
            "duration_ms": (time.perf_counter() - t0) * 1000.0,
        },
    )
    return True


def _get_ipython() -> Any:
    from IPython import get_ipython

    shell = get_ipython()
    if shell is None:
        raise RuntimeError("durabook's driver runs inside an IPython kernel")
    return shell
