"""The engine: the one process that writes a home's store, and runs instances.

Create is cheap (validate, store the version by hash, insert ``queued``);
execute takes a kernel, restores the last committed state, runs the remaining
cells and commits each finished cell through the group-commit writer.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
import nbformat
from nbformat import NotebookNode

from .blobs import BlobStore
from .checkpoints import committed_prefix
from .errors import BadInput, InvalidState, UnknownInstance, storage_full
from .execution import Executor
from .home import prepare_home, resolve_home, tighten
from .kernels.limits import Limits, check_limits, resolve_limits
from .kernels.pool import KernelPool, check_env, kernel_environment, pool_setting
from .kernels.sandbox import sandbox_default
from .kernels.watchdog import Watchdog
from .lifecycle import Lifecycle
from .models import (
    ErrorInfo,
    InstanceStatus,
    RunResult,
    Status,
)
from .notebook import (
    coerce_parameters,
    inject_parameters,
    load_notebook,
    parse_notebook,
    strip_injected,
    version_hash,
)
from .progress import Hub, Progress
from .recovery import Recovery
from .sessions import INTERACTIVE, Sessions
from .steps import check_step_options, step_options
from .store import Store
from .suspensions import Suspensions
from .writer import Writer

__all__ = ["Engine", "Progress", "resolve_home"]

OUTPUTS_INLINE_LIMIT = 64 * 1024
IN_PROCESS_RETRY_MAX = 5.0  # seconds: longer retry delays suspend the instance
_ID_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


def _proc_start(pid: int) -> int | None:
    """Start time of a process in clock ticks: tells a live owner from a reused pid."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
        fields = stat.rsplit(b")", 1)[1].split()
        if fields[0] in (b"Z", b"X"):
            return None  # a zombie has exited; only its parent has not reaped it yet
        return int(fields[19])
    except (OSError, ValueError, IndexError):
        return None


def _new_id() -> str:
    return uuid.uuid4().hex[:12]


class _Exists(Exception):
    """The id was taken between the check and the insert (a racing create)."""


def _insert_new(c: Any, row: dict[str, Any], if_exists: str) -> None:
    """Insert unless the id exists: checked in the writer's transaction, so two creates
    with one id (a schedule's fire retried, a client asking twice) make one instance."""
    if c.execute("SELECT 1 FROM instances WHERE id = ?", [row["id"]]).fetchone():
        if if_exists == "error":
            raise BadInput(f"instance {row['id']} already exists", instance=row["id"])
        raise _Exists()
    Store.insert_instance(c, row)


def check_instance_id(instance_id: str) -> str:
    if not instance_id or len(instance_id) > 64 or not set(instance_id) <= _ID_CHARS:
        raise BadInput(
            f"invalid instance id {instance_id!r}: use 1 to 64 letters, digits, '-', '_' or '.'"
        )
    return instance_id


class Engine:
    """A home's engine: its store (and the writer, the only thing that writes it), blobs,
    kernel pool and recovery, and the collaborators that act on instances: the
    :class:`~durabook.execution.Executor` (runs, and which run here),
    :class:`~durabook.suspensions.Suspensions` (sleeps, waits, events),
    :class:`~durabook.lifecycle.Lifecycle` and :class:`~durabook.sessions.Sessions`.
    Status changes are told to ``listeners`` (a service's dispatcher, timers, webhooks).
    """

    def __init__(
        self, home: str | os.PathLike[str] | None = None, pool_size: int | None = None
    ) -> None:
        self.home = resolve_home(home)
        prepare_home(self.home)  # 0700, ours alone: see durabook.home
        self.store = Store(self.home / "durabook.duckdb")
        tighten(self.store.path)  # DuckDB made it with the umask: the owner's alone
        self.writer = Writer(self.store)
        self.blobs = BlobStore(self.home / "blobs")
        env = kernel_environment()
        env["DURABOOK_HOME"] = str(self.home)  # a cell's own durabook.Client() finds this home
        self.watchdog = Watchdog()  # memory, CPU, processes, disk of running kernels
        self.pool = KernelPool(
            pool_setting("DURABOOK_POOL_SIZE", 0) if pool_size is None else pool_size,
            log_dir=self.home / "logs",
            env=env,
            refill=pool_setting("DURABOOK_POOL_REFILL", 0) or None,
            idle_s=pool_setting("DURABOOK_POOL_IDLE", 300),
            zygote=None if pool_setting("DURABOOK_ZYGOTE", 1) else False,
        )
        self._me = (os.getpid(), _proc_start(os.getpid()), socket.gethostname())
        self.serving = False  # True in `durabook serve`: its dispatcher runs what is queued
        self.hub = Hub()  # run events, for followers (`durabook wait`, HTTP streams)
        # told of every status an instance is given here: dispatcher, timers, webhooks
        self.listeners: list[Callable[[str, Status], None]] = []
        self.created_hooks: list[Callable[[dict[str, Any]], None]] = []  # the new row
        self._versions: set[str] = set()  # version hashes known to be stored
        self._notebooks: dict[tuple[str, int, int, int], NotebookNode] = {}
        self.executor = Executor(self)
        self.suspensions = Suspensions(self)
        self.lifecycle = Lifecycle(self)
        self.sessions = Sessions(self)
        self.recovery = Recovery(
            self.home,
            self.store,
            self.writer,
            self.blobs,
            self.executed_notebook,
            self.executor.running_here,
        )
        self.recover_orphans()

    # -- the collaborators' verbs, as the engine's ----------------------------------
    def execute(
        self, instance_id: str, progress: Progress | None = None, timeout: float | None = None
    ) -> RunResult:
        return self.executor.execute(instance_id, progress, timeout)

    def pause(self, instance_id: str) -> Status:
        return self.lifecycle.pause(instance_id)

    def unpause(self, instance_id: str) -> Status:
        return self.lifecycle.unpause(instance_id)

    def terminate(self, instance_id: str) -> Status:
        return self.lifecycle.terminate(instance_id)

    def restart(self, instance_id: str, from_cell: int | None = None) -> None:
        self.lifecycle.restart(instance_id, from_cell)

    def send_event(self, instance_id: str, name: str, data: str | None = None) -> bool:
        return self.suspensions.send_event(instance_id, name, data)

    def wake_now(self, instance_id: str) -> None:
        self.suspensions.wake_now(instance_id)

    def open_session(self, notebook: str, pid: int, cwd: str | None = None) -> str:
        return self.sessions.open_session(notebook, pid, cwd)

    def commit_interactive(self, instance_id: str, step: dict[str, Any]) -> None:
        self.sessions.commit_interactive(instance_id, step)

    def end_session(self, instance_id: str, status: Status = Status.COMPLETED) -> None:
        self.sessions.end_session(instance_id, status)

    def session_restore_plan(self, instance_id: str) -> dict[str, Any]:
        return self.sessions.session_restore_plan(instance_id)

    def close(self) -> None:
        self.watchdog.close()
        self.pool.close()
        self.writer.close()
        self.store.close()

    def __enter__(self) -> Engine:
        return self

    def changed(self, instance_id: str, status: Status) -> None:
        """An instance was given ``status`` (written already): tell who listens."""
        self.hub.publish(instance_id, {"event": "status", "status": status.value})
        for listener in self.listeners:
            try:
                listener(instance_id, status)
            except Exception:  # a listener's bug must not fail the write that was made
                import logging

                logging.getLogger("durabook.engine").exception("status listener failed")

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- create -------------------------------------------------------------------
    def create(
        self,
        notebook: str | os.PathLike[str] | NotebookNode,
        parameters: dict[str, Any] | None = None,
        instance_id: str | None = None,
        output: str | os.PathLike[str] | None = None,
        from_text: bool = False,
        if_exists: str = "return",
        source_path: str | None = None,
        cwd: str | None = None,
        env: dict[str, str] | None = None,
        scan_all: bool = False,
        priority: int = 0,
        tenant: str | None = None,
        workflow: str | None = None,
        schedule: str | None = None,
        webhook: str | None = None,
        cell_timeout: float | None = None,
        limits: Limits | dict[str, Any] | None = None,
        sandbox: bool | None = None,
        network: bool = False,
    ) -> tuple[str, bool]:
        """Validate and insert a ``queued`` instance. Returns (id, created).

        ``notebook`` may be a path or a notebook already in memory (papermill's
        engine passes one with its parameters injected: they are kept as they are).
        ``env``: variables the run's kernel gets beyond the allow-list (kernels start
        with a scrubbed environment); kept with the instance, so a resume has them too.
        ``scan_all``: look at every variable after every cell (see README).
        ``limits``: the run's own (see :mod:`durabook.kernels.limits`), checked against
        the operator's maximums. ``sandbox``: run in a private folder and, with
        bubblewrap, namespaces (None: when the run has a tenant or DURABOOK_SANDBOX=1);
        ``network``: a sandboxed kernel may use the network.
        """
        options: dict[str, Any] = {"env": check_env(env or {}), "scan_all": bool(scan_all)}
        if cell_timeout is not None:
            options["cell_timeout"] = float(cell_timeout)
        asked = check_limits(limits)
        resolve_limits(asked)  # more than the operator allows: bad input, now
        if asked is not None and asked.model_dump(exclude_none=True):
            options["limits"] = asked.model_dump(exclude_none=True)
        if tenant is not None and sandbox is False:
            raise BadInput("a run with a tenant is always sandboxed (leave out sandbox=false)")
        sandboxed = sandbox if sandbox is not None else (tenant is not None or sandbox_default())
        if sandboxed:
            options["sandbox"] = True
            options["network"] = bool(network)
        submitted = isinstance(notebook, NotebookNode) and source_path is None
        if isinstance(notebook, NotebookNode):
            nb = parse_notebook(nbformat.writes(notebook), source_path or "<notebook>")
            path = Path(source_path or "notebook.ipynb").absolute()
        else:
            nb = self._load(notebook)
            path = Path(notebook).absolute()
            if sandboxed:  # read from this folder by the engine: the kernel may read it too
                options["notebook_dir"] = str(path.parent)
        params = coerce_parameters(nb, parameters or {}, from_text=from_text)
        check_step_options(inject_parameters(nb, params))
        if instance_id is not None:
            check_instance_id(instance_id)
            if self.store.instance_row(instance_id) is not None:
                if if_exists == "error":
                    raise BadInput(f"instance {instance_id} already exists", instance=instance_id)
                return instance_id, False
        iid = instance_id or _new_id()
        if sandboxed:
            cwd = str(self.home / "work" / iid)  # its own folder; the notebook's is read-only
        if submitted and cwd is None:
            cwd = str(self.home / "work" / iid)  # a notebook with no folder of its own
        out = (
            str(Path(output).absolute()) if output else str(self.home / "outputs" / f"{iid}.ipynb")
        )
        try:
            vhash = self._put_version(nb, path)
            row: dict[str, Any] = {
                "id": iid,
                "notebook": str(path),
                "version": vhash,
                "status": Status.QUEUED.value,
                "parameters": params,
                "output": out,
                "cwd": cwd or str(path.parent),
                "options": options,
                "priority": priority,
                "tenant": tenant,
                "workflow": workflow,
                "schedule": schedule,
                "webhook": webhook,
                "queued_seq": time.time_ns(),
            }
            if instance_id is None:
                self._insert_generated(row)  # one multi-row INSERT with its neighbours
                iid = row["id"]
            else:
                self.writer.call(lambda c: _insert_new(c, row, if_exists))
        except _Exists:
            return iid, False
        except Exception as exc:
            full = storage_full(exc, self.home)
            if full is not None:
                raise full from None
            raise
        for hook in self.created_hooks:
            hook(row)
        self.changed(iid, Status.QUEUED)
        return iid, True

    def _load(self, notebook: str | os.PathLike[str]) -> NotebookNode:
        """The notebook at a path, parsed and validated once per content: a schedule or a
        program submitting one notebook many times pays for it once. Keyed by the file's
        identity, size and modification time; callers never change what they get."""
        path = Path(notebook).absolute()
        try:
            st = path.stat()
        except OSError:
            st = None
        if st is None or not stat.S_ISREG(st.st_mode):
            return strip_injected(load_notebook(path))  # it says what is wrong
        key = (str(path), st.st_ino, st.st_size, st.st_mtime_ns)
        nb = self._notebooks.get(key)
        if nb is None:
            nb = strip_injected(load_notebook(path))
            if len(self._notebooks) >= 64:
                self._notebooks.pop(next(iter(self._notebooks)))
            self._notebooks[key] = nb
        return nb

    def _insert_generated(self, row: dict[str, Any]) -> None:
        """Insert under a generated id; on the rare clash (48 random bits), a new one."""
        for attempt in range(3):
            try:
                self.writer.submit_instance(row).result()
                return
            except duckdb.ConstraintException:
                if attempt == 2:
                    raise
                row["id"] = _new_id()
                if row["output"].endswith(".ipynb") and Path(row["output"]).parent == (
                    self.home / "outputs"
                ):
                    row["output"] = str(self.home / "outputs" / f"{row['id']}.ipynb")

    def _put_version(self, nb: NotebookNode, path: str | os.PathLike[str]) -> str:
        vhash = version_hash(nb)
        if vhash in self._versions:
            return vhash  # versions are content-addressed and never change
        try:
            self.store.version_blob(vhash)
            self._versions.add(vhash)
            return vhash  # known content: a scheduled notebook's runs share one version
        except KeyError:
            pass
        clean = json.loads(json.dumps(nb))
        for cell in clean["cells"]:
            if cell["cell_type"] == "code":
                cell["outputs"], cell["execution_count"] = [], None
        blob = self.blobs.put(json.dumps(clean, sort_keys=True, indent=1).encode())
        self.writer.call(lambda c: Store.insert_version(c, vhash, str(path), blob))
        self._versions.add(vhash)
        return vhash

    def load_version(self, vhash: str) -> NotebookNode:
        return nbformat.reads(self.blobs.get(self.store.version_blob(vhash)).decode(), as_version=4)

    def _instance(self, instance_id: str) -> dict[str, Any]:
        row = self.store.instance_row(instance_id)
        if row is None:
            raise UnknownInstance(f"unknown instance {instance_id!r}", instance=instance_id)
        return row

    def executed_notebook(self, inst: dict[str, Any]) -> NotebookNode:
        if inst["version"] == INTERACTIVE:
            return self.sessions.notebook(inst["id"])
        return inject_parameters(self.load_version(inst["version"]), inst["parameters"])

    # -- run / resume ------------------------------------------------------------
    def run(
        self,
        notebook: str | os.PathLike[str],
        parameters: dict[str, Any] | None = None,
        instance_id: str | None = None,
        output: str | os.PathLike[str] | None = None,
        from_text: bool = False,
        progress: Progress | None = None,
        on_created: Callable[[str], None] | None = None,
        if_exists: str = "return",
        env: dict[str, str] | None = None,
        scan_all: bool = False,
        limits: Limits | dict[str, Any] | None = None,
        sandbox: bool | None = None,
        network: bool = False,
    ) -> RunResult:
        iid, created = self.create(
            notebook,
            parameters,
            instance_id,
            output,
            from_text,
            if_exists=if_exists,
            env=env,
            scan_all=scan_all,
            limits=limits,
            sandbox=sandbox,
            network=network,
        )
        if on_created:
            on_created(iid)
        inst = self._instance(iid)
        if not created and Status(inst["status"]) != Status.QUEUED:
            return self._result(inst)
        return self.execute(iid, progress)

    def resume(
        self,
        instance_id: str,
        notebook: str | os.PathLike[str] | None = None,
        progress: Progress | None = None,
        now: bool = False,
    ) -> RunResult:
        """Continue an instance here; ``now`` wakes a sleeper before its time."""
        self.prepare_resume(instance_id, notebook, now)
        return self.execute(instance_id, progress)

    def prepare_resume(
        self, instance_id: str, notebook: str | os.PathLike[str] | None = None, now: bool = False
    ) -> None:
        """Check an instance can continue (switching to an edited ``notebook``): what
        ``resume`` does before it executes, and a dispatcher's ``resume`` before it queues."""
        inst = self._instance(instance_id)
        status = Status(inst["status"])
        if now:
            self.wake_now(instance_id)
            inst = self._instance(instance_id)
            status = Status(inst["status"])
        if status.final:
            raise InvalidState(
                f"instance {instance_id} is {status.value}; nothing to resume",
                instance=instance_id,
                status=status.value,
            )
        if status == Status.PAUSED:
            raise InvalidState(
                f"instance {instance_id} is paused: `durabook unpause {instance_id}` continues it",
                instance=instance_id,
                status=status.value,
            )
        if status in (Status.SLEEPING, Status.WAITING):
            self.suspensions.wake_if_due(inst)  # due already? then it is queued now
            inst = self._instance(instance_id)
            status = Status(inst["status"])
            if status == Status.SLEEPING:
                raise InvalidState(
                    f"instance {instance_id} sleeps until {inst['wake_at']:%Y-%m-%d %H:%M:%S} "
                    f"UTC; `durabook serve` resumes it then (`durabook resume {instance_id} "
                    "--now` wakes it early)",
                    instance=instance_id,
                    status=status.value,
                )
            if status == Status.WAITING:
                raise InvalidState(
                    f"instance {instance_id} waits for the event {inst['waiting_for']!r}: "
                    f"`durabook send-event {instance_id} {inst['waiting_for']}` resumes it",
                    instance=instance_id,
                    status=status.value,
                )
        if status == Status.RUNNING:
            raise InvalidState(
                f"instance {instance_id} is running (pid {inst['owner_pid']}); wait for it or "
                "stop that process first",
                instance=instance_id,
                status=status.value,
            )
        if notebook is not None:
            # what the last run journaled belongs to the old version: in the store first
            self.executor._recover_or_refuse(instance_id)
            self._switch_version(inst, notebook)

    def requeue(self, instance_id: str) -> None:
        """Back in the queue (a failed instance resumed under a dispatcher)."""
        self.writer.call(lambda c: Store.requeue(c, instance_id))
        self.changed(instance_id, Status.QUEUED)

    def _switch_version(self, inst: dict[str, Any], notebook: str | os.PathLike[str]) -> None:
        """Resume with an edited notebook: keep checkpoints up to the first changed cell."""
        new = strip_injected(load_notebook(notebook))
        check_step_options(inject_parameters(new, inst["parameters"]))
        old_exec = self.executed_notebook(inst)
        new_exec = inject_parameters(new, inst["parameters"])
        latest, _ = self.store.latest_steps(inst["id"])
        old_code = [(i, c) for i, c in enumerate(old_exec.cells) if c.cell_type == "code"]
        new_code = [(i, c) for i, c in enumerate(new_exec.cells) if c.cell_type == "code"]
        keep = 0
        for (oi, oc), (ni, nc) in zip(old_code, new_code):
            if oi != ni or oc.get("id") != nc.get("id") or oc.source != nc.source:
                break
            keep += 1
        keep = min(keep, committed_prefix(old_code, latest))
        first_changed = new_code[keep][0] if keep < len(new_code) else len(new_exec.cells)
        vhash = self._put_version(new, notebook)
        iid = inst["id"]

        def apply(c: Any) -> None:
            Store.drop_steps(c, iid, first_changed)
            Store.update_instance(c, iid, version=vhash, notebook=str(Path(notebook).absolute()))

        self.writer.call(apply)

    def _result(self, inst: dict[str, Any]) -> RunResult:
        return RunResult(
            id=inst["id"],
            status=Status(inst["status"]),
            failed_cell=inst["failed_cell"],
            output=inst["output"],
            error=ErrorInfo(**inst["error"]) if inst["error"] else None,
        )

    # -- crash recovery ------------------------------------------------------------
    def owner_alive(self, inst: dict[str, Any]) -> bool:
        pid, start, host = inst["owner_pid"], inst["owner_start"], inst["owner_host"]
        if pid is None:
            return False
        if host and host != self._me[2]:
            return True  # another machine's process: not ours to judge
        if pid == self._me[0]:
            return self.executor.running_here(inst["id"])
        now = _proc_start(pid)
        return now is not None and (start is None or now == start)

    def recover_orphans(self) -> list[str]:
        """Instances left ``running`` by a process that died become ``failed`` at the
        first uncommitted cell, ready for ``durabook resume``."""
        found = []
        for inst in self.store.running_instances():
            if self.owner_alive(inst):
                continue
            if inst["version"] == INTERACTIVE:  # its kernel went away: the session is over
                self.end_session(inst["id"], Status.TERMINATED)
                found.append(inst["id"])
                continue
            # the cells its kernel journaled are committed: copy them in first
            recovered = self.recovery.recover_journals(inst["id"])
            if not recovered.complete:
                continue  # its kernel still lives: judged when it has gone
            suspension = recovered.suspension
            nb = self.executed_notebook(inst)
            if suspension is not None:  # it was suspending when its process died
                status, fields = self.suspensions.fields(suspension)
                self.executor._finish(inst, nb, status, None, None, **fields)
                found.append(inst["id"])
                continue
            code = [(i, c) for i, c in enumerate(nb.cells) if c.cell_type == "code"]
            latest, _ = self.store.latest_steps(inst["id"])
            done = committed_prefix(code, latest)
            failed = code[done][0] if done < len(code) else None
            if self.serving:  # `durabook serve` continues it from its last committed cell
                self.requeue(inst["id"])
                found.append(inst["id"])
                continue
            err = ErrorInfo(
                ename="RunnerDied",
                evalue=f"the process running this instance (pid {inst['owner_pid']}) died; "
                f"`durabook resume {inst['id']}` continues at cell {failed}",
            )
            self.executor._finish(inst, nb, Status.FAILED, failed, err)
            found.append(inst["id"])
        return found

    # -- queries --------------------------------------------------------------------
    def status(self, instance_id: str) -> InstanceStatus:
        inst = self._instance(instance_id)
        if inst["status"] == Status.RUNNING.value and not self.owner_alive(inst):
            self.recover_orphans()  # its process died since: say so, not "running"
            inst = self._instance(instance_id)
        nb = self.executed_notebook(inst)
        code = [(i, c.get("id")) for i, c in enumerate(nb.cells) if c.cell_type == "code"]
        names: dict[int, str] = {}
        for i, c in enumerate(nb.cells):
            if c.cell_type != "code":
                continue
            try:
                opts = step_options(c, i)
            except BadInput:
                continue  # checked at create; a session's cells never were: no name, no error
            if opts is not None and opts.name:
                names[i] = opts.name
        return self.store.status(instance_id, code, names)
