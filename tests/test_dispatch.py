"""Dispatch: queued instances run within limits, by priority, fairly between tenants;
events and timers wake instances at once; `durabook run` goes through the queue."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from durabook.api.models import CreateRequest, EventRequest, WaitRequest
from durabook.dispatcher import Limits
from durabook.engine import Engine
from durabook.models import Status
from durabook.serve import Served, start
from durabook.store import Store

from .conftest import cli, write_nb

TINY = ["x = 1"]


class Tracker:
    """Listens to status changes: how many run at once, overall and per tenant, and
    in which order instances started and completed."""

    def __init__(self, eng: Engine) -> None:
        self.eng = eng
        self.lock = threading.Lock()
        self.running: set[str] = set()
        self.peak = 0
        self.started: list[str] = []
        self.completed: list[str] = []
        self.peak_by_tenant: dict[str | None, int] = {}
        eng.listeners.append(self.on_status)

    def on_status(self, iid: str, status: Status) -> None:
        with self.lock:
            if status == Status.RUNNING:
                self.running.add(iid)
                self.started.append(iid)
                self.peak = max(self.peak, len(self.running))
                tenant = self.eng.store.instance_row(iid)["tenant"]
                now = sum(
                    1 for i in self.running if self.eng.store.instance_row(i)["tenant"] == tenant
                )
                self.peak_by_tenant[tenant] = max(self.peak_by_tenant.get(tenant, 0), now)
            else:
                self.running.discard(iid)
                if status == Status.COMPLETED:
                    self.completed.append(iid)


@pytest.fixture
def eng(tmp_path: Path) -> Iterator[Engine]:
    e = Engine(tmp_path / "home")
    yield e
    e.close()


def _serve(eng: Engine, **limits: int) -> Served:
    return start(eng, Limits(**limits), schedules=False)


def _until(cond, timeout: float = 120.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def _status(eng: Engine, iid: str) -> str:
    return str(eng.store.instance_row(iid)["status"])


def test_never_more_than_the_concurrency_at_once(eng: Engine, tmp_path: Path):
    nb = write_nb(tmp_path / "slow.ipynb", ["import time\ntime.sleep(0.3)"])
    ids = [eng.create(nb)[0] for _ in range(8)]
    track = Tracker(eng)
    served = _serve(eng, concurrency=2)  # 8 queued when it starts: 2 kernels, not 8
    try:
        _until(lambda: all(_status(eng, i) == "completed" for i in ids))
    finally:
        served.close()
    assert track.peak == 2
    assert sorted(track.completed) == sorted(ids)


def test_limits_per_tenant_and_per_workflow(eng: Engine, tmp_path: Path):
    slow = write_nb(tmp_path / "slow.ipynb", ["import time\ntime.sleep(0.4)"])
    other = write_nb(tmp_path / "other.ipynb", ["import time\ntime.sleep(0.4)"])
    a = [eng.create(slow, tenant="a")[0] for _ in range(3)]
    b = [eng.create(other, tenant="b")[0] for _ in range(2)]
    w = [eng.create(other, tenant="c", workflow="etl")[0] for _ in range(2)]
    track = Tracker(eng)
    served = _serve(eng, concurrency=3, per_tenant=1)
    served.dispatcher.set_workflow_limit("etl", 1)
    try:
        _until(lambda: all(_status(eng, i) == "completed" for i in a + b + w))
    finally:
        served.close()
    assert track.peak_by_tenant == {"a": 1, "b": 1, "c": 1}
    assert track.peak >= 2  # the tenants did run beside each other


def test_higher_priority_first(eng: Engine, tmp_path: Path):
    nb = write_nb(tmp_path / "t.ipynb", TINY)
    low = [eng.create(nb, priority=0)[0] for _ in range(4)]
    high = eng.create(nb, priority=5)[0]  # queued last
    track = Tracker(eng)
    served = _serve(eng, concurrency=1)
    try:
        _until(lambda: all(_status(eng, i) == "completed" for i in [*low, high]))
    finally:
        served.close()
    assert track.started[0] == high
    assert track.started[1:] == low  # the rest in the order they were queued


def _clone_queued(eng: Engine, template: str, tenant: str, n: int) -> None:
    """``n`` more queued instances like ``template`` (same notebook version), in bulk:
    creating 10,000 one by one would only time the test's own loop."""

    def insert(c):  # type: ignore[no-untyped-def]
        c.execute(
            "INSERT INTO instances SELECT "
            "? || '-' || CAST(i AS VARCHAR) AS id, notebook, version, status, parameters, "
            "created_at, updated_at, owner_pid, owner_start, owner_host, failed_cell, error, "
            "replace(output, ?, ? || '-' || CAST(i AS VARCHAR)), cwd, wake_at, waiting_for, "
            "suspension, resolutions, options, journal, priority, ?, workflow, schedule, "
            "webhook, queued_seq + i FROM instances, range(?) t(i) WHERE id = ?",
            [template, template, template, tenant, n, template],
        )

    eng.writer.call(insert)


def test_fair_between_tenants(eng: Engine, tmp_path: Path):
    """After tenant a queued 10,000 instances, tenant b's one instance is the next to
    start, and completes before more than N+1 of a's do. (Completion order depends on
    how long runs take too: each cell here takes 1.5 s, so a kernel's start-up jitter
    on a loaded machine does not decide it.)"""
    nb = write_nb(tmp_path / "t.ipynb", ["import time\ntime.sleep(1.5)"])
    first = eng.create(nb, tenant="a")[0]
    _clone_queued(eng, first, "a", 9_999)
    assert eng.store.count_by_status()["queued"] == 10_000
    n = 2
    track = Tracker(eng)
    served = _serve(eng, concurrency=n)
    try:
        _until(lambda: len(track.completed) >= 2)  # a's instances stream through
        with track.lock:
            before, started_before = len(track.completed), len(track.started)
        b = served.service.create(CreateRequest(notebook=str(nb), tenant="b")).id
        res = served.service.wait(WaitRequest(id=b, timeout=120))
        with track.lock:
            a_done_meanwhile = track.completed[before : track.completed.index(b)]
            started_after = track.started[started_before:]
    finally:
        served.close(wait=60)
    assert res.status == Status.COMPLETED
    # b took the first slot that freed: only a's picked before it was submitted (at most
    # one per slot, still claiming their run) can show up as started before it
    assert b in started_after[: n + 1], started_after[: n + 2]
    assert len(a_done_meanwhile) <= n + 1, a_done_meanwhile


def test_an_event_wakes_its_instance_at_once(eng: Engine, tmp_path: Path):
    nb = write_nb(tmp_path / "w.ipynb", ["import durabook\nv = durabook.wait_for_event('go')"])
    served = _serve(eng, concurrency=2)
    try:
        iid = served.service.create(CreateRequest(notebook=str(nb))).id
        assert served.service.wait(WaitRequest(id=iid, timeout=60)).status == Status.WAITING
        t0 = time.monotonic()
        reply = served.service.send_event(EventRequest(id=iid, name="go", data={"k": 1}))
        assert reply.delivered and reply.resumed_by_engine
        _until(lambda: _status(eng, iid) != "queued", timeout=30)
        woke = time.monotonic() - t0
        res = served.service.wait(WaitRequest(id=iid, timeout=60))
    finally:
        served.close()
    assert res.status == Status.COMPLETED
    assert woke < 1.0, f"took {woke:.2f} s to leave the queue"  # no timer tick in between


def test_timers_fire_when_due_without_polling(eng: Engine, tmp_path: Path):
    nb = write_nb(tmp_path / "s.ipynb", ["import durabook\ndurabook.sleep(2)", "y = 2"])
    served = _serve(eng, concurrency=2)
    try:
        iid = served.service.create(CreateRequest(notebook=str(nb))).id
        assert served.service.wait(WaitRequest(id=iid, timeout=60)).status == Status.SLEEPING
        wake_at = eng.store.instance_row(iid)["wake_at"]
        assert len(served.timers) == 1
        _until(lambda: _status(eng, iid) == "completed", timeout=60)
        steps = eng.store.steps(iid)
    finally:
        served.close()
    # the resumed cell started after the wake time, and soon after it
    resumed = [s for s in steps if s["idx"] == 0][-1]["started_at"]
    assert 0 <= (resumed - wake_at).total_seconds() < 3


def test_a_paused_queued_instance_is_skipped_and_taken_again_on_unpause(
    eng: Engine, tmp_path: Path
):
    nb = write_nb(tmp_path / "t.ipynb", TINY)
    iid = eng.create(nb)[0]
    eng.pause(iid)
    served = _serve(eng, concurrency=1)
    try:
        time.sleep(0.5)
        assert _status(eng, iid) == "paused"
        served.service.unpause(type("R", (), {"id": iid})())  # type: ignore[arg-type]
        assert served.service.wait(WaitRequest(id=iid, timeout=60)).status == Status.COMPLETED
    finally:
        served.close()


def test_run_with_an_engine_serving_goes_through_its_queue(home: Path, tmp_path: Path):
    """`durabook run` under `serve --concurrency 1` waits its turn behind a running
    instance, then prints and exits as it always did."""
    import subprocess
    import sys

    slow = write_nb(tmp_path / "slow.ipynb", ["import time\ntime.sleep(3)"])
    quick = write_nb(tmp_path / "quick.ipynb", TINY)
    serve = subprocess.Popen(
        [sys.executable, "-m", "durabook", "serve", "--concurrency", "1", "--warm", "0"],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert "durabook engine for" in (serve.stderr.readline() if serve.stderr else "")
        slow_id = cli("submit", str(slow)).stdout.strip()
        time.sleep(0.5)
        t0 = time.monotonic()
        proc = cli("run", str(quick), "-q", "--json")
        took = time.monotonic() - t0
        assert proc.returncode == 0, proc.stderr
        import json

        out = json.loads(proc.stdout)
        assert out["status"] == "completed"
        waited = cli("wait", slow_id, "--json")
        assert waited.returncode == 0 and json.loads(waited.stdout)["status"] == "completed"
        assert took > 1.5, "it did not wait for the slot held by the slow instance"
        store_home = home
    finally:
        serve.terminate()
        serve.wait(30)
    with Engine(store_home) as e:
        rows = {i.id: i for i in e.store.list(limit=10)[0]}
    assert rows[out["id"]].updated_at >= rows[slow_id].updated_at


def test_wait_times_out_with_exit_5_and_runs_queued_instances_without_an_engine(
    home: Path, tmp_path: Path
):
    nb = write_nb(tmp_path / "t.ipynb", ["print('ran')"])
    sub = cli("submit", str(nb))
    assert sub.returncode == 0 and "no engine serves this home" in sub.stderr
    iid = sub.stdout.strip()
    # nobody serves the home: `wait` runs it here rather than wait forever
    done = cli("wait", iid)
    assert done.returncode == 0, done.stderr
    sleeper = write_nb(tmp_path / "s.ipynb", ["import durabook\ndurabook.sleep(600)"])
    sid = cli("submit", str(sleeper)).stdout.strip()
    assert cli("wait", sid).returncode == 3  # suspended: as `run` says it
    assert cli("wait", "nosuch").returncode == 2


def test_store_orders_the_queue_by_time_queued(eng: Engine, tmp_path: Path):
    nb = write_nb(tmp_path / "t.ipynb", TINY)
    ids = [eng.create(nb)[0] for _ in range(3)]
    eng.writer.call(lambda c: Store.requeue(c, ids[0]))  # re-queued: back of the line
    assert [q[0] for q in eng.store.queued()] == [ids[1], ids[2], ids[0]]


def test_a_followed_run_tells_each_cell_once(eng: Engine, tmp_path: Path):
    """`run` under a dispatcher follows the instance: one start, every cell executed and
    committed once, in order (the run may start before the follower knows its id)."""
    from durabook.progress import CellEvent, Progress

    class Record(Progress):
        def __init__(self) -> None:
            self.events: list[tuple[str, int]] = []

        def start(self, instance_id: str, total: int, done: int) -> None:
            self.events.append(("start", total))

        def executed(self, event: CellEvent) -> None:
            self.events.append(("executed", event.index))

        def committed(self, index: int) -> None:
            self.events.append(("committed", index))

    nb = write_nb(tmp_path / "t.ipynb", ["a = 1", "b = 2", "print(a + b)"])
    served = _serve(eng, concurrency=2)
    try:
        rec = Record()
        res = served.service.run(CreateRequest(notebook=str(nb)), rec)
    finally:
        served.close()
    assert res.status == Status.COMPLETED
    assert rec.events[0] == ("start", 3)
    assert [e for e in rec.events if e[0] == "executed"] == [("executed", i) for i in range(3)]
    assert [e for e in rec.events if e[0] == "committed"] == [("committed", i) for i in range(3)]


def test_an_instance_queued_again_as_its_run_ends_is_taken_again(eng: Engine, tmp_path: Path):
    # the event comes while the run that began the wait still holds its slot (sent from
    # the WAITING notice itself, on the run's own thread): the queue must not drop it
    nb = write_nb(tmp_path / "w.ipynb", ["import durabook\nv = durabook.wait_for_event('go')"])
    sent: list[bool] = []

    def on_status(iid: str, status: Status) -> None:
        if status == Status.WAITING and not sent:
            sent.append(eng.send_event(iid, "go", '"now"'))

    eng.listeners.append(on_status)
    served = _serve(eng, concurrency=1)
    try:
        iid = served.service.create(CreateRequest(notebook=str(nb))).id
        _until(lambda: _status(eng, iid) == "completed", timeout=60)
    finally:
        served.close()
    assert sent == [True]


def test_an_instance_whose_last_kernel_still_holds_its_journal_is_taken_again(
    eng: Engine, tmp_path: Path
):
    # the dispatcher took it, but recovery refused to run it while another process
    # held its last journal (EngineBusy, before any claim): it must not be dropped
    nb = write_nb(tmp_path / "t.ipynb", TINY)
    iid = eng.create(nb)[0]
    name = f"{iid}.held.jnl"
    eng.writer.call(lambda c: Store.update_instance(c, iid, journal=name))
    path = eng.home / "journal" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys, time\n"
            "fd = os.open(sys.argv[1], os.O_WRONLY)\n"
            "fcntl.lockf(fd, fcntl.LOCK_EX)\n"
            "print('held', flush=True)\n"
            "time.sleep(4)",
            str(path),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    served = _serve(eng, concurrency=1)
    try:
        _until(lambda: _status(eng, iid) == "completed", timeout=60)
    finally:
        served.close()
        holder.kill()
        holder.wait()


def test_a_pause_between_recovery_and_claim_keeps_the_dispatchers_take_from_running(
    eng: Engine, tmp_path: Path
):
    nb = write_nb(tmp_path / "t.ipynb", TINY)
    iid = eng.create(nb)[0]
    recover = eng.executor._recover_or_refuse

    def recover_then_pause(instance_id: str):  # type: ignore[no-untyped-def]
        row = recover(instance_id)  # as read: queued
        eng.pause(instance_id)  # lands before the claim
        return row

    eng.executor._recover_or_refuse = recover_then_pause  # type: ignore[method-assign]
    res = eng.executor.execute(iid, queued_only=True)
    assert res.status == Status.PAUSED
    assert _status(eng, iid) == "paused"
    assert eng.store.steps(iid) == []
