"""Executing an instance: claim it, run its uncommitted cells on one kernel, commit, finish.

One pass takes a kernel, restores the last committed state, runs the cells
(see :mod:`durabook.runner`) and copies each finished cell's journal record
into the store; it ends in a recorded state (completed, failed, suspended,
paused, terminated), and the claim on the instance is released in ``finally``
whatever happens, so no failure of ours leaves it claimed by a live engine.
Short ``%%step`` retries and events that arrived before a wait loop here.

The :class:`Executor` is the engine's collaborator for this: it owns the state of
the runs under way here (claimed instances, their kernels, those being
terminated) and uses the engine's store, writer, pool and recovery.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .blobs import BlobStore
from .checkpoints import committed_prefix, restore_plan
from .errors import EngineBusy, InvalidState, UnrestorableState, storage_full
from .kernels.limits import Limits, apply_rlimits, resolve_limits
from .kernels.pool import KernelProcess, kernel_environment
from .kernels.sandbox import Sandbox, bwrap_path
from .kernels.watchdog import kernel_cpu, process_table
from .models import ErrorInfo, RunResult, Status
from .notebook import source_hash
from .output import build_output, write_notebook
from .progress import CellEvent
from .runner import CellPlan, CellResult, Runner
from .sessions import INTERACTIVE
from .steps import cell_body, step_options
from .store import STEP_NAMES, Store, utcnow
from .writer import StepStream

if TYPE_CHECKING:
    from nbformat import NotebookNode

    from .engine import Engine
    from .progress import Progress

__all__ = ["IN_PROCESS_RETRY_MAX", "Executor"]

IN_PROCESS_RETRY_MAX = 5.0  # seconds: longer retry delays suspend the instance


class Executor:
    """Runs instances for the engine, and knows which run here now (its own state: the
    instances claimed, their kernels, and those being terminated)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._lock = threading.Lock()
        self._active: set[str] = set()
        self._kernels: dict[str, KernelProcess] = {}
        self._terminating: set[str] = set()

    def _kernel(
        self, sandbox: Sandbox | None, journal: Path, inst: dict[str, Any], limits: Limits
    ) -> KernelProcess:
        """A kernel for this run, with the run's rlimits: from the warm pool, or, for a
        sandboxed run, started inside its sandbox (its folders are known only now)."""
        pool = self.engine.pool
        if sandbox is None:
            kernel = pool.acquire()
        else:
            bwrap = bwrap_path()
            # only a folder the engine itself read the notebook from (never a path a
            # client named for a notebook it sent)
            shown = (inst["options"] or {}).get("notebook_dir")
            notebook_dir = Path(shown) if shown else None
            env = dict(pool.env if pool.env is not None else kernel_environment())
            env.pop("DURABOOK_HOME", None)  # hidden from it: a sandbox never reaches the engine
            kernel = KernelProcess.start(
                pool.log_dir,
                env=env,
                cwd=str(sandbox.workdir),
                wrap=(lambda folder: sandbox.command(bwrap, folder, journal, notebook_dir))
                if bwrap
                else None,
            )
            kernel.sandbox = sandbox
        try:
            if sandbox is None:  # a pool's kernel has started nothing yet
                apply_rlimits(kernel.pid, limits, kernel_cpu(kernel.pid))
            else:  # every process from bubblewrap down to python
                table = process_table()
                kids: dict[int, list[int]] = {}
                for pid, (ppid, _, _) in table.items():
                    kids.setdefault(ppid, []).append(pid)
                todo = [kernel.pid]
                while todo:
                    pid = todo.pop()
                    apply_rlimits(pid, limits, table[pid][1] if pid in table else 0.0)
                    todo.extend(kids.get(pid, ()))
        except BaseException:
            kernel.close()
            raise
        return kernel

    def running_here(self, instance_id: str) -> bool:
        with self._lock:
            return instance_id in self._active

    def terminating(self, instance_id: str) -> KernelProcess | None:
        """Mark a run here as being terminated; its kernel (None while it starts)."""
        with self._lock:
            self._terminating.add(instance_id)
            return self._kernels.get(instance_id)

    def stop_file(self, instance_id: str) -> Path:
        """Touched to pause a run: its driver stops after the current cell."""
        sandbox = Sandbox(self.engine.home, instance_id)
        if sandbox.share.is_dir():  # the one place of the home its kernel sees
            return sandbox.pause_file
        return self.engine.home / "run" / f"{instance_id}.pause"

    def execute(
        self,
        instance_id: str,
        progress: Progress | None = None,
        timeout: float | None = None,
        queued_only: bool = False,
    ) -> RunResult:
        """Run an instance's uncommitted cells; ``timeout`` is seconds per cell.
        ``queued_only``: run it only if it is queued (the dispatcher's take: it may have
        been paused, terminated or resumed in the foreground since it was queued).

        In-process retries (short %%step delays) and events that arrived before a
        wait loop here; every pass claims the instance and releases it in ``finally``,
        so no failure of ours leaves it claimed by a live engine.
        """
        progress = progress or _progress()
        while True:
            inst = self._recover_or_refuse(instance_id)
            status = Status(inst["status"])
            if status == Status.TERMINATED or (queued_only and status != Status.QUEUED):
                return self.engine._result(inst)  # terminated meanwhile: nothing resumes it
            only = Status.QUEUED if queued_only else None
            queued_only = False  # a retry here runs whatever it is now
            # steps come only from runs, which claim first (an update) and name their
            # journal in the row (interactive sessions aside); a row never updated since
            # its insert, with no journal, has none to read (rows of stores older than
            # the journal column have no journal, but were updated by their runs)
            fresh = (
                inst["journal"] is None
                and inst["version"] != INTERACTIVE
                and inst["created_at"] == inst["updated_at"]
            )
            journal = self.engine.recovery.new_journal(instance_id)
            inst = self._claim(instance_id, journal.name, inst, only)
            try:
                if Status(inst["status"]) != Status.RUNNING:  # terminated (or paused) meanwhile
                    return self.engine._result(inst)
                result, again = self._execute_once(inst, progress, timeout, journal, fresh)
            finally:
                with self._lock:
                    self._active.discard(instance_id)
                    self._kernels.pop(instance_id, None)
                    self._terminating.discard(instance_id)
            if again is None:
                return result
            time.sleep(again)

    def _recover_or_refuse(self, instance_id: str) -> dict[str, Any]:
        """Copy in what the last run journaled; refuse while its kernel still lives.
        Returns the instance's row (recovery's own read of it, when it made one)."""
        recovered = self.engine.recovery.recover_journals(instance_id)
        if not recovered.complete:
            raise EngineBusy(
                f"the kernel of instance {instance_id}'s last run is still alive (it holds "
                "its journal); try again when it has exited",
                instance=instance_id,
            )
        return recovered.row or self.engine._instance(instance_id)

    def _execute_once(
        self,
        inst: dict[str, Any],
        progress: Progress,
        timeout: float | None,
        journal: Path,
        fresh: bool = False,
    ) -> tuple[RunResult, float | None]:
        """One kernel's worth of a run. Returns the result, and the seconds to wait
        before running again in this process (None: the run is over for now).
        ``fresh``: it never ran, so it has no steps to read."""
        iid = inst["id"]
        if timeout is None:  # the run's own (papermill's --execution-timeout)
            timeout = (inst["options"] or {}).get("cell_timeout")
        nb = self.engine.executed_notebook(inst)
        code = [(i, c) for i, c in enumerate(nb.cells) if c.cell_type == "code"]
        latest, attempts = ({}, {}) if fresh else self.engine.store.latest_steps(iid)
        done = committed_prefix(code, latest)
        try:
            plan = restore_plan(code, latest, done)
        except UnrestorableState as exc:
            failed = code[done][0] if done < len(code) else None
            err = ErrorInfo(ename="UnrestorableState", evalue=exc.message)
            return self._finish(inst, nb, Status.FAILED, failed, err), None
        todo = []
        for i, c in code[done:]:
            opts = step_options(c, i)
            body = cell_body(c.source)
            todo.append(
                CellPlan(
                    i,
                    c.get("id"),
                    body,
                    source_hash(c.source),
                    opts.timeout if opts else None,
                    opts,
                )
            )
        counts = [
            r["execution_count"] or 0
            for i, r in latest.items()
            if i < (todo[0].index if todo else 1 << 30)
        ]
        progress.start(iid, len(code), done)
        futures: list[Future[Any]] = []
        rows: list[tuple[Any, ...]] = []  # the step rows this run commits, in order
        stream = StepStream(self.engine.writer)
        outcome = None
        kernel = None
        runner: Runner | None = None
        try:
            options = inst["options"] or {}
            limits = resolve_limits(Limits(**options.get("limits", {})))
            sandbox = None
            if options.get("sandbox"):
                sandbox = Sandbox(self.engine.home, iid, network=bool(options.get("network")))
                sandbox.prepare()
            stop = self.stop_file(iid)
            stop.unlink(missing_ok=True)
            work = Path(inst["cwd"] or ".")
            if work.parent == self.engine.home / "work":  # a submitted notebook's own folder
                work.mkdir(mode=0o700, parents=True, exist_ok=True)
            kernel = self._kernel(sandbox, journal, inst, limits)
            with self._lock:
                self._kernels[iid] = kernel
                terminating = iid in self._terminating
            if terminating:  # `terminate` came while the kernel was starting
                kernel.kill()
            watchdog = self.engine.watchdog
            folders = [sandbox.workdir, sandbox.share] if sandbox else []
            watchdog.watch(kernel, iid, limits, folders)
            load_blob: Callable[[str], bytes] = self.engine.blobs.get
            if sandbox is not None:  # its own share only: never another instance's blobs
                load_blob = BlobStore(sandbox.blobs).get
            runner = Runner(kernel, load_blob)
            runner.on_output = progress.output
            runner.on_cell = lambda cell: watchdog.cell_started(
                kernel, cell.index if cell else None, cell.options if cell else None
            )
            imported: set[str] = set()

            def on_step(res: CellResult) -> None:
                if sandbox is not None:  # its checkpoints into the home's store, checked
                    sandbox.import_blobs(self.engine.blobs, imported)
                progress.executed(CellEvent.from_result(res))
                futures.append(self._commit_step(iid, res, attempts, progress, stream, rows))

            outcome = runner.run(
                todo,
                {
                    **plan.to_plan(),
                    "blobs": str(sandbox.blobs if sandbox else self.engine.blobs.root),
                    "journal": str(journal),
                    # a sandbox's folder is the one its kernel can see, whatever the row says
                    "cwd": str(sandbox.workdir) if sandbox else inst["cwd"],
                    "resolutions": inst["resolutions"],
                    "stop_file": str(stop),
                    "execution_count": max(counts, default=0) + 1,
                    "env": options.get("env") or {},
                    "scan_all": bool(options.get("scan_all")),
                },
                on_step,
                timeout=timeout,
            )
            if outcome.interrupted is not None and outcome.error is not None:
                # a killed attempt is an attempt: retry budgets and `status` count it
                futures.append(
                    self._commit_interrupted(
                        iid,
                        outcome.interrupted,
                        outcome.error,
                        attempts,
                        outcome.interrupted_rid,
                        stream,
                        rows,
                    )
                )
        except BaseException as exc:
            with self._lock:
                terminating = iid in self._terminating
            if not (terminating and isinstance(exc, Exception)):
                for f in futures:
                    f.exception()
                full = storage_full(exc, self.engine.home)
                err = ErrorInfo(ename=type(exc).__name__, evalue=str(exc))
                if full is not None:
                    err = ErrorInfo(ename="StorageFull", evalue=full.message)
                at = runner.current() if runner is not None else None
                if at is None and todo:
                    at = todo[0].index
                self._finish(inst, nb, Status.FAILED, at, err)
                if full is not None:
                    raise full from exc
                raise
            # `durabook terminate` closed the kernel under the runner: recorded below
        finally:
            if kernel is not None:
                self.engine.watchdog.unwatch(kernel)
                kernel.close()
        for f in futures:
            try:
                f.result()  # every step copied into the store before the instance is done
            except Exception as exc:
                # the store could not take a step: the journal keeps it (copied in by the
                # next resume); the instance is recorded failed here if the store lets us
                full = storage_full(exc, self.engine.home)
                err = ErrorInfo(ename=type(exc).__name__, evalue=str(exc))
                if full is not None:
                    err = ErrorInfo(ename="StorageFull", evalue=full.message)
                at = runner.current() if runner is not None else None
                with contextlib.suppress(Exception):
                    self._finish(inst, nb, Status.FAILED, at, err)
                if full is not None:
                    raise full from exc
                raise
        self.engine.recovery.done_with(journal)
        # every step of this run is in the store now: the output needs no read of them
        for row in rows:
            latest[row[1]] = dict(zip(STEP_NAMES, row))
        known = (latest, attempts)
        with self._lock:
            terminated = iid in self._terminating
        if terminated or outcome is None:
            return self._finish(inst, nb, Status.TERMINATED, None, None, known), None
        if outcome.paused:
            return self._finish(inst, nb, Status.PAUSED, None, None, known), None
        if outcome.suspended is not None:
            status, fields = self.engine.suspensions.fields(outcome.suspended)
            res = self._finish(inst, nb, status, None, None, known, **fields)
            if self.engine.suspensions.deliver_pending(iid, outcome.suspended):
                return res, 0.0  # it had already arrived: go on at once
            return res, None
        if outcome.ok:
            return self._finish(inst, nb, Status.COMPLETED, None, None, known), None
        failed = outcome.failed.index if outcome.failed else (todo[0].index if todo else None)
        error = outcome.error
        if failed is not None and error is not None and error.retry_in_s is None:
            error = self._retry_delay(failed, error, todo, attempts)
        delay = error.retry_in_s if error else None
        if delay is None:
            return self._finish(inst, nb, Status.FAILED, failed, error, known), None
        if delay > IN_PROCESS_RETRY_MAX:
            # a %%step retry far off: sleep durably, holding no process
            request = {
                "kind": "sleep",
                "key": f"retry:{failed}:{time.time_ns()}",
                "until": time.time() + delay,
                "retry_of": failed,
            }
            status, fields = self.engine.suspensions.fields(request)
            return self._finish(inst, nb, status, failed, error, known, **fields), None
        return self._finish(inst, nb, Status.QUEUED, failed, error, known), delay

    @staticmethod
    def _retry_delay(
        failed: int, error: ErrorInfo, todo: list[CellPlan], attempts: dict[int, int]
    ) -> ErrorInfo:
        """A failure the runner saw outside a step record (a killed attempt): retry it
        as %%step says, like any failed attempt."""
        opts = next((c.options for c in todo if c.index == failed), None)
        if opts is not None and attempts.get(failed, 0) <= opts.retries:
            return error.model_copy(update={"retry_in_s": opts.delay_before(attempts[failed])})
        return error

    def _claim(
        self, instance_id: str, journal: str, seen: dict[str, Any], only: Status | None = None
    ) -> dict[str, Any]:
        """Mark it running here; its row as claimed (not running: terminated, or not
        ``only`` any more). ``seen``: its row as last read. When the row is still that
        one, the claim is one UPDATE and no read (it is that row with the claim's
        columns)."""
        pid, start, host = self.engine._me
        with self._lock:
            if instance_id in self._active:
                raise InvalidState(f"instance {instance_id} is already running here")
            self._active.add(instance_id)
        fields: dict[str, Any] = {
            "updated_at": utcnow(),
            "status": Status.RUNNING,
            "owner_pid": pid,
            "owner_start": start,
            "owner_host": host,
            "failed_cell": None,
            "error": None,
            "journal": journal,  # recovery reads this file and no other
        }

        def claim(c: Any) -> dict[str, Any] | None:
            if Store.update_instance(c, instance_id, seen, **fields):
                return {**seen, **fields, "status": Status.RUNNING.value}
            # changed meanwhile: claimed as before (never a terminated one), and read back;
            # the dispatcher's take only while it is still queued (a pause came first)
            now = c.execute("SELECT status FROM instances WHERE id = ?", [instance_id]).fetchone()
            if only is None or (now is not None and now[0] == only.value):
                Store.update_instance(c, instance_id, **fields)
            return None

        try:
            row = self.engine.writer.call(claim) or self.engine._instance(instance_id)
        except BaseException:
            with self._lock:
                self._active.discard(instance_id)
            raise
        if Status(row["status"]) == Status.RUNNING:
            self.engine.changed(instance_id, Status.RUNNING)
        return row

    def _commit_step(
        self,
        instance_id: str,
        res: CellResult,
        attempts: dict[int, int],
        progress: Progress,
        stream: StepStream,
        rows: list[tuple[Any, ...]],
    ) -> Future[Any]:
        c = res.content
        index = res.cell.index
        attempts[index] = attempts.get(index, 0) + 1
        opts = res.cell.options
        if not res.ok and c.get("error") and opts is not None and attempts[index] <= opts.retries:
            c["error"]["retry_in_s"] = opts.delay_before(attempts[index])
        row = self.engine.recovery.step_row(
            instance_id,
            index,
            res.cell.cell_id,
            res.cell.source_hash,
            res.ok,
            attempts[index],
            c,
            res.rid,
        )
        rows.append(row)
        fut = stream.submit(row)
        if res.ok:

            def done(f: Future[Any]) -> None:
                if f.exception() is None:
                    progress.committed(index)

            fut.add_done_callback(done)
        return fut

    def _commit_interrupted(
        self,
        instance_id: str,
        cell: CellPlan,
        error: ErrorInfo,
        attempts: dict[int, int],
        rid: str | None,
        stream: StepStream,
        rows: list[tuple[Any, ...]],
    ) -> Future[Any]:
        attempts[cell.index] = attempts.get(cell.index, 0) + 1
        content = {"status": "error", "error": error.model_dump(), "started_at": time.time()}
        row = self.engine.recovery.step_row(
            instance_id,
            cell.index,
            cell.cell_id,
            cell.source_hash,
            False,
            attempts[cell.index],
            content,
            rid,
        )
        rows.append(row)
        return stream.submit(row)

    def _finish(
        self,
        inst: dict[str, Any],
        nb: NotebookNode,
        status: Status,
        failed_cell: int | None,
        error: ErrorInfo | None,
        known: tuple[dict[int, dict[str, Any]], dict[int, int]] | None = None,
        **fields: Any,
    ) -> RunResult:
        """Record the run's end and write its output notebook. ``known``: the latest
        step rows and attempts when the caller knows them to be the store's."""
        iid = inst["id"]
        try:
            output = self._write_output(inst, nb, status, failed_cell, known)
            self.engine.writer.call(
                lambda c: Store.update_instance(
                    c,
                    iid,
                    status=status,
                    failed_cell=failed_cell,
                    error=error.model_dump() if error else None,
                    owner_pid=None,
                    owner_start=None,
                    **fields,
                )
            )
        finally:
            with self._lock:
                self._active.discard(iid)
        self.engine.changed(iid, status)
        return RunResult(id=iid, status=status, failed_cell=failed_cell, output=output, error=error)

    def _write_output(
        self,
        inst: dict[str, Any],
        nb: NotebookNode,
        status: Status,
        failed_cell: int | None,
        known: tuple[dict[int, dict[str, Any]], dict[int, int]] | None = None,
    ) -> str | None:
        latest, attempts = known or self.engine.store.latest_steps(inst["id"])
        meta = {
            "instance_id": inst["id"],
            "version": inst["version"],
            "status": status.value,
            "parameters": inst["parameters"],
            "failed_cell": failed_cell,
        }
        try:
            out_nb = build_output(nb, latest, attempts, meta, self.engine.blobs.get)
            write_notebook(out_nb, inst["output"])
        except (OSError, ValueError):  # a full disk, a lost blob: the run's state is still kept
            return None
        return str(inst["output"])


def _progress() -> Progress:
    from .progress import Progress

    return Progress()
