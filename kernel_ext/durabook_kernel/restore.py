"""A namespace brought back: saved variables, replayed cells, then process state.

Shared by the driver (a resumed run: strict, the first failure stops the
resume with a clear error) and ``%durabook restore`` (lenient: everything that
can be restored is, and what cannot is listed with the reason).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["RestoreReport", "restore_namespace", "restore_now"]


@dataclass
class RestoreReport:
    loaded: dict[str, Any] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)  # name -> why (lenient mode)
    problems: list[str] = field(default_factory=list)  # process state not re-applied
    error: dict[str, Any] | None = None  # strict mode: why the resume cannot go on


def _error(evalue: str, exc: BaseException | None = None) -> dict[str, Any]:
    import traceback

    return {
        "ename": "RestoreError",
        "evalue": evalue,
        "traceback": traceback.format_exception(exc) if exc is not None else [],
    }


async def restore_namespace(
    shell: Any,
    tracker: Any,
    refs: dict[str, dict[str, Any]],
    replay: list[dict[str, Any]],
    strict: bool,
    run: Any = None,
) -> RestoreReport:
    """``run(shell, source, cell_id, silent)``: how replayed cells run (awaited)."""
    from .driver import _error_info, _flush, _run_source

    run = run or _run_source
    report = RestoreReport()
    failed: dict[str, str] | None = None if strict else report.failed
    try:
        report.loaded = tracker.restore(refs, failed)
    except Exception as exc:
        report.error = _error(f"could not load saved state: {exc!r}", exc)
        return report
    rebuilt: list[str] = []
    for cell in replay:
        result = await run(shell, cell["source"], cell.get("id"), True)
        _flush()
        if not result.success:
            err = _error_info(shell, result)
            why = f"replaying cell {cell['index']} to rebuild state failed: {err['evalue']}"
            if strict:
                report.error = {**err, "evalue": why}
                return report
            for name in cell.get("names", []):
                report.failed[name] = f"{err['ename']}: {why}"
            continue
        rebuilt.extend(cell.get("names", []))
    # a replayed cell may also have re-assigned saved variables: the saved ones win
    missing = tracker.finish_restore(refs, report.loaded, rebuilt)
    if missing:
        if strict:
            report.error = _error(f"replayed cells did not rebuild {', '.join(missing)}")
            return report
        for name in missing:
            report.failed[name] = "the replayed cell did not rebuild it"
    try:
        report.problems = tracker.restore_process(refs)
    except Exception as exc:
        report.problems = [f"process state: {type(exc).__name__}: {exc}"]
    return report


def restore_now(
    shell: Any,
    tracker: Any,
    refs: dict[str, dict[str, Any]],
    replay: list[dict[str, Any]],
) -> RestoreReport:
    """The lenient restore, from synchronous code (a line magic): replays run with
    ``shell.run_cell``, so the coroutine finishes without an event loop."""

    async def run_cell(shell: Any, source: str, cell_id: Any, silent: bool) -> Any:
        return shell.run_cell(source, silent=silent)

    coro = restore_namespace(shell, tracker, refs, replay, strict=False, run=run_cell)
    try:
        coro.send(None)
    except StopIteration as done:
        report: RestoreReport = done.value
        return report
    coro.close()
    raise RuntimeError("durabook: the restore tried to wait for an event loop")
