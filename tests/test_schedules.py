"""Cron schedules: validation, fire times (zones, DST), catch-up, overlap, no duplicate fire."""

from __future__ import annotations

import argparse
import itertools
import json
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from durabook import scheduler as scheduler_module
from durabook.api.models import ScheduleSpec
from durabook.engine import Engine
from durabook.errors import BadInput, UnknownSchedule
from durabook.models import Status
from durabook.schedule_cli import add_parser
from durabook.schedule_cli import main as schedule_main
from durabook.scheduler import Scheduler, fire_id, fire_times, latest_fire
from durabook.store import Store

from .conftest import write_nb

UTC = timezone.utc


def at(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


class FakeDispatcher:
    def __init__(self) -> None:
        self.limits: dict[str, int | None] = {}

    def set_workflow_limit(self, workflow: str, limit: int | None) -> None:
        self.limits[workflow] = limit


@pytest.fixture
def nb(tmp_path: Path) -> Path:
    return write_nb(tmp_path / "job.ipynb", [("n = 1", ["parameters"]), "m = n * 2\nprint(m)"])


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    eng = Engine(tmp_path / "home")
    yield eng
    eng.close()


@pytest.fixture
def clock() -> Clock:
    return Clock(at(2026, 1, 5, 10, 30))  # a Monday


def spec(nb: Path, name: str = "job", cron: str = "0 * * * *", **kw: Any) -> ScheduleSpec:
    return ScheduleSpec(name=name, notebook=str(nb), cron=cron, **kw)


def runs(eng: Engine, name: str) -> list[str]:
    rows = eng.store.cursor().execute(
        "SELECT id FROM instances WHERE schedule = ? ORDER BY id", [name]
    )
    return [r[0] for r in rows.fetchall()]


def stored(eng: Engine) -> list[tuple[Any, ...]]:
    return eng.store.cursor().execute("SELECT * FROM schedules ORDER BY name").fetchall()


def last_fire(eng: Engine, name: str) -> datetime | None:
    row = eng.store.cursor().execute("SELECT last_fire FROM schedules WHERE name = ?", [name])
    value = row.fetchone()[0]
    return None if value is None else value.replace(tzinfo=UTC)


# -- add, list, get, pause, unpause, remove ---------------------------------------------------


def test_add_list_get_pause_unpause_remove(engine: Engine, nb: Path, clock: Clock):
    s = Scheduler(engine, clock=clock)
    info = s.add(spec(nb, "daily", "0 6 * * *", parameters={"n": "7"}, from_text=True))
    assert info.notebook == str(nb.absolute()) and info.parameters == {"n": 7}
    assert info.next_fires == [at(2026, 1, 6, 6), at(2026, 1, 7, 6), at(2026, 1, 8, 6)]
    assert info.created_at == clock.now and info.last_fire is None and not info.paused
    s.add(spec(nb, "another", "*/15 * * * *", overlap="allow"))
    assert [i.name for i in s.list()] == ["another", "daily"]
    assert s.get("daily") == info

    clock.now = at(2026, 1, 6, 5)
    assert s.set_paused("daily", True).next_fires == []
    assert s.fire_due(at(2026, 1, 6, 6, 1)) == ["another.20260106T0600Z"]  # daily is paused
    clock.now = at(2026, 1, 6, 7)
    back = s.set_paused("daily", False)  # the 06:00 fire of the pause is skipped, not caught up
    assert back.last_fire == at(2026, 1, 6, 6) and back.next_fires[0] == at(2026, 1, 7, 6)
    assert s.fire_due(at(2026, 1, 6, 7, 10)) == ["another.20260106T0700Z"]
    assert s.fire_due(at(2026, 1, 7, 6)) == ["another.20260107T0600Z", "daily.20260107T0600Z"]
    assert engine.store.instance_row("daily.20260107T0600Z")["parameters"] == {"n": 7}

    gone = s.remove("daily")
    assert gone.name == "daily" and gone.last_fire == at(2026, 1, 7, 6)
    assert [i.name for i in s.list()] == ["another"]
    with pytest.raises(UnknownSchedule, match="unknown schedule 'daily'"):
        s.get("daily")
    for verb in (lambda: s.remove("daily"), lambda: s.set_paused("daily", True)):
        with pytest.raises(UnknownSchedule):
            verb()
    assert runs(engine, "daily") == ["daily.20260107T0600Z"]  # its runs stay


def test_next_three_fires_in_a_zone(engine: Engine, nb: Path, clock: Clock):
    s = Scheduler(engine, clock=clock)
    clock.now = at(2026, 1, 9, 12)  # a Friday: next weekday mornings, 06:00 CET = 05:00 UTC
    info = s.add(spec(nb, "weekdays", "0 6 * * 1-5", tz="Europe/Paris"))
    assert info.next_fires == [at(2026, 1, 12, 5), at(2026, 1, 13, 5), at(2026, 1, 14, 5)]
    assert all(f.utcoffset() == timedelta(0) for f in info.next_fires)
    clock.now = at(2026, 7, 3, 12)  # summer: 06:00 CEST = 04:00 UTC
    assert s.get("weekdays").next_fires == [at(2026, 7, 6, 4), at(2026, 7, 7, 4), at(2026, 7, 8, 4)]
    ny = s.add(spec(nb, "ny", "30 9 * * *", tz="America/New_York"))
    assert ny.next_fires[0] == at(2026, 7, 3, 13, 30)


# -- bad input ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"cron": "61 * * * *"}, "invalid cron expression"),
        ({"cron": "* * * *"}, "use 5 fields"),
        ({"cron": "0 0 * * * *"}, "use 5 fields"),
        ({"cron": "every day"}, "use 5 fields"),
        ({"cron": "0 0 30 2 *"}, "never fires"),
        ({"tz": "Mars/Olympus"}, "unknown time zone 'Mars/Olympus'"),
        ({"tz": "../etc/passwd"}, "unknown time zone"),
        ({"parameters": {"x": 1}}, "unknown parameter 'x'"),
        ({"parameters": {"n": "abc"}}, "parameter 'n' expects int"),
        ({"parameters": {"n": "abc"}, "from_text": True}, "parameter 'n' expects int"),
        ({"notebook": "missing.ipynb"}, "no such notebook"),
    ],
)
def test_bad_input_stores_nothing(
    engine: Engine, nb: Path, clock: Clock, change: dict[str, Any], message: str
):
    s = Scheduler(engine, clock=clock)
    fields = {"name": "job", "notebook": str(nb), "cron": "0 * * * *", **change}
    with pytest.raises(BadInput, match=message) as err:
        s.add(ScheduleSpec(**fields))
    assert "\n" not in err.value.one_line()
    assert stored(engine) == [] and s.list() == []


def test_duplicate_name_is_bad_input(engine: Engine, nb: Path, clock: Clock):
    s = Scheduler(engine, clock=clock)
    s.add(spec(nb, "job", "0 6 * * *"))
    before = stored(engine)
    with pytest.raises(BadInput, match="a schedule named 'job' exists already"):
        s.add(spec(nb, "job", "0 7 * * *"))
    assert stored(engine) == before


def test_schedule_names_leave_room_for_the_fire_time():
    with pytest.raises(ValidationError, match="at most 49 characters"):
        ScheduleSpec(name="x" * 50, notebook="a.ipynb", cron="* * * * *")
    with pytest.raises(ValidationError, match="invalid schedule name"):
        ScheduleSpec(name="no spaces", notebook="a.ipynb", cron="* * * * *")
    name = "x" * 49
    assert len(fire_id(name, at(2026, 12, 31, 23, 59))) == 64


# -- firing: deterministic ids, crash between create and last_fire ---------------------------


def test_a_fire_processed_twice_makes_one_instance(
    engine: Engine, nb: Path, clock: Clock, monkeypatch: pytest.MonkeyPatch
):
    s = Scheduler(engine, clock=clock)
    s.add(spec(nb, "hourly", overlap="allow"))
    assert s.fire_due(at(2026, 1, 5, 10, 59)) == []

    def crash(name: str, fire: datetime) -> None:
        raise RuntimeError("engine killed before last_fire was written")

    monkeypatch.setattr(s, "_advance", crash)
    assert s.fire_due(at(2026, 1, 5, 11, 0, 5)) == ["hourly.20260105T1100Z"]
    assert last_fire(engine, "hourly") is None  # the fire is not recorded
    monkeypatch.undo()

    again = Scheduler(engine, clock=clock)  # the next engine processes the same fire
    assert again.catch_up(at(2026, 1, 5, 11, 0, 30)) == []  # the id exists: deduped
    assert last_fire(engine, "hourly") == at(2026, 1, 5, 11)
    assert again.fire_due(at(2026, 1, 5, 11, 30)) == []
    assert runs(engine, "hourly") == ["hourly.20260105T1100Z"]
    assert engine.store.instance_row("hourly.20260105T1100Z")["status"] == "queued"


def test_a_fire_whose_notebook_went_away_is_skipped(engine: Engine, nb: Path, clock: Clock):
    s = Scheduler(engine, clock=clock)
    s.add(spec(nb, "hourly", overlap="allow"))
    nb.unlink()
    assert s.fire_due(at(2026, 1, 5, 11)) == []  # logged; the next fire tries again
    assert last_fire(engine, "hourly") == at(2026, 1, 5, 11)
    write_nb(nb, [("n = 1", ["parameters"]), "m = n"])
    assert s.fire_due(at(2026, 1, 5, 12)) == ["hourly.20260105T1200Z"]


# -- catch-up after a downtime ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ("none", []),
        ("one", ["1500"]),
        ("all", ["1100", "1200", "1300", "1400", "1500"]),
    ],
)
def test_catch_up_after_downtime(
    engine: Engine, nb: Path, clock: Clock, policy: str, expected: list[str]
):
    Scheduler(engine, clock=clock).add(spec(nb, "hourly", overlap="allow", catch_up=policy))
    clock.now = at(2026, 1, 5, 15, 30)  # the engine was down from 10:30 to 15:30
    s = Scheduler(engine, clock=clock)
    s.start()
    try:
        assert runs(engine, "hourly") == [f"hourly.20260105T{t}Z" for t in expected]
        assert last_fire(engine, "hourly") == at(2026, 1, 5, 15)
        assert s.catch_up(clock.now) == []  # applied once
        assert s.fire_due(at(2026, 1, 5, 15, 59)) == []
        assert s.fire_due(at(2026, 1, 5, 16)) == ["hourly.20260105T1600Z"]  # on time: runs
    finally:
        s.close()


def test_catch_up_all_is_capped(
    engine: Engine, nb: Path, clock: Clock, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(scheduler_module, "CATCH_UP_MAX", 3)
    Scheduler(engine, clock=clock).add(spec(nb, "hourly", overlap="allow", catch_up="all"))
    s = Scheduler(engine, clock=clock)
    created = s.catch_up(at(2026, 1, 5, 18, 30))
    assert created == [f"hourly.20260105T{h}00Z" for h in (16, 17, 18)]  # the latest three
    assert last_fire(engine, "hourly") == at(2026, 1, 5, 18)


def test_a_fire_found_late_runs_the_latest(engine: Engine, nb: Path, clock: Clock):
    """While running, a machine that slept through fires runs the latest one (catch-up none)."""
    s = Scheduler(engine, clock=clock)
    s.add(spec(nb, "hourly", overlap="allow", catch_up="none"))
    assert s.fire_due(at(2026, 1, 5, 13, 20)) == ["hourly.20260105T1300Z"]


# -- overlap ---------------------------------------------------------------------------------


def _finish(eng: Engine, iid: str) -> None:
    eng.writer.call(lambda c: Store.update_instance(c, iid, status=Status.COMPLETED))


def test_overlap_skip(engine: Engine, nb: Path, clock: Clock):
    s = Scheduler(engine, clock=clock)
    s.add(spec(nb, "hourly", overlap="skip"))
    assert s.fire_due(at(2026, 1, 5, 11)) == ["hourly.20260105T1100Z"]
    assert s.fire_due(at(2026, 1, 5, 12)) == []  # 11:00 is still queued: skipped
    assert last_fire(engine, "hourly") == at(2026, 1, 5, 12)  # ... and not tried again
    _finish(engine, "hourly.20260105T1100Z")
    assert s.fire_due(at(2026, 1, 5, 13)) == ["hourly.20260105T1300Z"]


def test_overlap_allow_and_queue(engine: Engine, nb: Path, clock: Clock):
    dispatcher = FakeDispatcher()
    s = Scheduler(engine, dispatcher, clock=clock)  # type: ignore[arg-type]
    s.add(spec(nb, "both", overlap="allow"))
    s.add(spec(nb, "serial", overlap="queue"))
    assert dispatcher.limits == {"schedule:serial": 1}
    s.fire_due(at(2026, 1, 5, 11))
    s.fire_due(at(2026, 1, 5, 12))
    assert runs(engine, "both") == ["both.20260105T1100Z", "both.20260105T1200Z"]
    assert runs(engine, "serial") == ["serial.20260105T1100Z", "serial.20260105T1200Z"]
    rows = [engine.store.instance_row(i) for i in runs(engine, "serial") + runs(engine, "both")]
    assert [r["workflow"] for r in rows] == ["schedule:serial"] * 2 + [None] * 2

    restarted = FakeDispatcher()  # a new engine limits every queue schedule at start
    s2 = Scheduler(engine, restarted, clock=clock)  # type: ignore[arg-type]
    s2.start()
    s2.close()
    assert restarted.limits == {"schedule:serial": 1}


# -- time zones and DST ------------------------------------------------------------------------


def _take(cron: str, tz: str, start: datetime, n: int) -> list[datetime]:
    it = fire_times(cron, tz, start)
    return [next(it) for _ in range(n)]


def test_dst_spring_forward_fires_once_after_the_gap():
    # 2026-03-29, Europe/Paris: 02:00 CET -> 03:00 CEST; 02:30 does not exist that day
    fires = _take("30 2 * * *", "Europe/Paris", at(2026, 3, 27, 12), 4)
    assert fires == [
        at(2026, 3, 28, 1, 30),  # 02:30 CET
        at(2026, 3, 29, 1, 0),  # 03:00 CEST, right after the gap
        at(2026, 3, 30, 0, 30),  # 02:30 CEST
        at(2026, 3, 31, 0, 30),
    ]
    # fire times that the gap collapses onto one instant fire once
    assert _take("0,30 2-3 * * *", "Europe/Paris", at(2026, 3, 28, 23), 2) == [
        at(2026, 3, 29, 1, 0),
        at(2026, 3, 29, 1, 30),
    ]


def test_dst_fall_back_fires_a_repeated_time_once():
    # 2026-10-25, Europe/Paris: 03:00 CEST -> 02:00 CET; 02:30 happens twice
    fires = _take("30 2 * * *", "Europe/Paris", at(2026, 10, 23, 12), 3)
    assert fires == [at(2026, 10, 24, 0, 30), at(2026, 10, 25, 0, 30), at(2026, 10, 26, 1, 30)]
    # an every-30-minutes expression fires in the first pass of the repeated hour only
    every = _take("*/30 * * * *", "Europe/Paris", at(2026, 10, 24, 23), 6)
    assert every == [
        at(2026, 10, 24, 23, 30),  # 01:30 CEST
        at(2026, 10, 25, 0, 0),  # 02:00 CEST
        at(2026, 10, 25, 0, 30),  # 02:30 CEST; then 02:00 and 02:30 CET are skipped
        at(2026, 10, 25, 2, 0),  # 03:00 CET
        at(2026, 10, 25, 2, 30),
        at(2026, 10, 25, 3, 0),
    ]


@pytest.mark.parametrize(
    ("created", "until", "expected"),
    [
        (at(2026, 3, 28, 12), at(2026, 3, 30, 12), ["20260329T0100Z", "20260330T0030Z"]),
        (at(2026, 10, 24, 12), at(2026, 10, 26, 12), ["20261025T0030Z", "20261026T0130Z"]),
    ],
)
def test_dst_through_the_scheduler(
    engine: Engine, nb: Path, created: datetime, until: datetime, expected: list[str]
):
    clock = Clock(created)
    s = Scheduler(engine, clock=clock)
    s.add(spec(nb, "night", "30 2 * * *", tz="Europe/Paris", overlap="allow"))
    made = []
    now = created
    while now <= until:  # the engine's thread, every 10 minutes across the change
        made += s.fire_due(now)
        now += timedelta(minutes=10)
    assert made == [f"night.{t}" for t in expected]  # one per local day, no duplicate
    assert runs(engine, "night") == made


ZONES = ["Europe/Paris", "America/New_York", "Australia/Lord_Howe", "Asia/Kolkata", "UTC"]
CRONS = ["30 2 * * *", "*/20 * * * *", "0 1-3 * * *", "15 */2 * * 0", "45 0 1 * *"]


def _transitions(tz: str, year: int) -> list[datetime]:
    """The instants (UTC, to the hour) just before the zone's offset changes in ``year``."""
    zi, t, out = ZoneInfo(tz), at(year, 1, 1), []
    while t.year == year:
        if (t + timedelta(hours=1)).astimezone(zi).utcoffset() != t.astimezone(zi).utcoffset():
            out.append(t)
        t += timedelta(hours=1)
    return out


def _check_fires(cron: str, tz: str, start: datetime, n: int) -> list[datetime]:
    """Increasing, on whole minutes, one per wall time, and backward agrees."""
    fires = _take(cron, tz, start, n)
    assert fires == sorted(set(fires)) and fires[0] > start
    assert all(f.second == 0 and f.microsecond == 0 for f in fires)
    walls = [f.astimezone(ZoneInfo(tz)).replace(tzinfo=None) for f in fires]
    assert len(set(walls)) == len(walls)  # a repeated wall time fires once
    it = fire_times(cron, tz, fires[-1] + timedelta(seconds=1), backward=True)
    assert [next(it) for _ in range(n)] == fires[::-1]
    assert latest_fire(cron, tz, fires[2]) == fires[2]
    assert latest_fire(cron, tz, fires[2] - timedelta(microseconds=1)) == fires[1]
    probe = fires[0]  # from anywhere, in a repeated hour's second pass too
    while probe < min(fires[-1], fires[0] + timedelta(hours=6)):
        assert latest_fire(cron, tz, probe) == max(f for f in fires if f <= probe), probe
        probe += timedelta(minutes=7)
    return fires


@pytest.mark.parametrize("tz", ["Europe/Paris", "America/New_York", "Australia/Lord_Howe"])
def test_fire_times_across_every_dst_change(tz: str):
    changes = _transitions(tz, 2026)
    assert len(changes) == 2
    for change in changes:
        for cron in [*CRONS, "*/5 * * * *"]:
            n = 80 if cron.startswith("*/") else 12  # every few minutes: 4 hours or more
            _check_fires(cron, tz, change - timedelta(hours=3), n)


@settings(max_examples=40, deadline=None)
@given(
    tz=st.sampled_from(ZONES),
    cron=st.sampled_from(CRONS),
    start=st.datetimes(datetime(2025, 1, 1), datetime(2027, 12, 31)),
)
def test_fire_times_are_increasing_and_backward_agrees(tz: str, cron: str, start: datetime):
    _check_fires(cron, tz, start.replace(tzinfo=UTC), 6)


# -- the thread: sleeps until the next fire, woken by an add -------------------------------


def test_the_thread_wakes_on_add_and_fires_on_time(engine: Engine, nb: Path):
    real = datetime.now(UTC)
    minute = real.replace(second=0, microsecond=0) + timedelta(minutes=1)
    offset = minute + timedelta(minutes=1) - timedelta(seconds=1.5) - real
    s = Scheduler(engine, clock=lambda: datetime.now(UTC) + offset)  # 1.5 s before a minute
    s.start()  # nothing scheduled: it sleeps its longest nap
    try:
        s.add(spec(nb, "minutely", "* * * * *", overlap="allow"))
        deadline = time.monotonic() + 10
        while not runs(engine, "minutely"):
            assert time.monotonic() < deadline, "the thread did not fire"
            time.sleep(0.05)
        (iid,) = runs(engine, "minutely")
        assert iid == fire_id("minutely", minute + timedelta(minutes=1))
    finally:
        s.close()
    assert s._thread is not None and not s._thread.is_alive()


# -- end to end: the served engine fires and the instance runs -------------------------------


def test_served_engine_runs_a_fired_instance(engine: Engine, nb: Path):
    from durabook.api.models import NameRequest, ScheduleRunsRequest
    from durabook.dispatcher import Limits
    from durabook.serve import start

    served = start(engine, Limits(concurrency=1))
    try:
        svc = served.service
        # yearly: its real fire is far off, so only the fire asked for below runs
        svc.schedule_add(spec(nb, "yearly", "0 0 1 1 *", parameters={"n": 5}))
        assert served.dispatcher.limits.concurrency == 1
        new_year = datetime(datetime.now(UTC).year + 1, 1, 1, tzinfo=UTC)
        (iid,) = served.scheduler.fire_due(new_year)
        deadline = time.monotonic() + 60
        while (status := engine.store.instance_row(iid)["status"]) != "completed":
            assert status in ("queued", "running"), engine.store.instance_row(iid)["error"]
            assert time.monotonic() < deadline, f"{iid} still {status}"
            time.sleep(0.1)
        assert engine.store.instance_row(iid)["parameters"] == {"n": 5}
        outputs = [c["outputs"] or "" for c in engine.store.latest_steps(iid)[0].values()]
        assert any("10" in o for o in outputs)  # m = n * 2 ran in a kernel, with n = 5
        page = svc.schedule_runs(ScheduleRunsRequest(name="yearly"))
        assert [(i.id, i.status, i.schedule) for i in page.items] == [
            (iid, Status.COMPLETED, "yearly")
        ]
        assert svc.schedule_get(NameRequest(name="yearly")).last_fire == new_year
    finally:
        served.close()


# -- the command line ------------------------------------------------------------------------


def _parse(home: Path, *argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="durabook")
    p.add_argument("--home")
    add_parser(p.add_subparsers(dest="command"))
    return p.parse_args(["--home", str(home), *argv])


def test_schedule_cli(tmp_path: Path, nb: Path, capsys: pytest.CaptureFixture[str]):
    home = tmp_path / "clihome"

    def run(*argv: str) -> tuple[int, str, str]:
        code = schedule_main(_parse(home, *argv))
        out, err = capsys.readouterr()
        return code, out, err

    code, out, _ = run(
        "schedule", "add", "nightly", str(nb), "--cron", "0 6 * * 1-5", "--tz", "Europe/Paris",
        "-p", "n", "3", "--overlap", "queue", "--json",
    )  # fmt: skip
    assert code == 0
    info = json.loads(out)
    assert info["name"] == "nightly" and info["parameters"] == {"n": 3}
    assert len(info["next_fires"]) == 3 and info["overlap"] == "queue"
    code, out, _ = run("schedule", "list")
    assert code == 0 and out.startswith("nightly  0 6 * * 1-5  Europe/Paris")
    code, out, _ = run("schedule", "show", "nightly")
    assert code == 0 and out.startswith("nightly: active\n  cron    0 6 * * 1-5  (Europe/Paris)")
    assert "CET (05:00 UTC)" in out or "CEST (04:00 UTC)" in out
    code, out, _ = run("schedule", "pause", "nightly")
    assert code == 0 and out.startswith("nightly: paused")
    code, out, _ = run("schedule", "list", "--json")
    assert [(s["name"], s["paused"]) for s in json.loads(out)] == [("nightly", True)]
    code, out, _ = run("schedule", "runs", "nightly", "--json")
    assert code == 0 and json.loads(out)["items"] == []
    code, out, _ = run("schedule", "remove", "nightly")
    assert code == 0 and out.startswith("nightly: removed")

    for argv, message in [
        (("add", "x", str(nb), "--cron", "61 * * * *"), "error: invalid cron expression"),
        (("add", "x", str(nb), "--cron", "* * * * *", "--tz", "Nowhere"), "error: unknown time"),
        (("add", "x", str(nb), "--cron", "* * * * *", "-p", "n", "abc"), "error: parameter 'n'"),
        (("add", "x" * 50, str(nb), "--cron", "* * * * *"), "error: name: a schedule name"),
        (("add", "x", str(nb), "--cron", "* * * * *", "--priority", "5000"), "error: priority"),
        (("pause", "nope"), "error: unknown schedule 'nope'"),
        (("runs", "nope"), "error: unknown schedule 'nope'"),
    ]:
        code, out, err = run("schedule", *argv)
        assert (code, out) == (2, ""), argv
        assert err.startswith(message) and err.count("\n") == 1, err
    code, out, _ = run("schedule", "list", "--json")
    assert json.loads(out) == []  # nothing stored


def test_schedule_through_durabook_cli(tmp_path: Path, nb: Path, capsys: pytest.CaptureFixture):
    from durabook import cli

    sub = next(a for a in cli._parser()._actions if isinstance(a, argparse._SubParsersAction))
    if "schedule" not in sub.choices:
        pytest.skip("`durabook schedule` is not wired into durabook.cli yet")
    home = str(tmp_path / "home2")
    assert cli.main(["--home", home, "schedule", "add", "a", str(nb), "--cron", "bad"]) == 2
    _, err = capsys.readouterr()
    assert err.startswith("error: invalid cron expression") and err.count("\n") == 1
    argv = ["--home", home, "schedule", "add", "a", str(nb), "--cron", "0 6 * * *"]
    assert cli.main([*argv, "-p", "n", "-5", "--json"]) == 0  # a value starting with '-'
    assert json.loads(capsys.readouterr()[0])["parameters"] == {"n": -5}
    assert cli.main(argv) == 2
    assert "exists already" in capsys.readouterr()[1]


def test_a_full_disk_at_add_is_storage_full(
    engine: Engine, nb: Path, clock: Clock, monkeypatch: pytest.MonkeyPatch
):
    """The store's write failing for space (a narrow stand-in for the disk: the real
    full disk is tested on a tmpfs in test_no_stuck_or_lying_states) names the home."""
    import errno

    from durabook.errors import StorageFull

    s = Scheduler(engine, clock=clock)

    def full(fn: Any) -> Any:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(engine.writer, "call", full)
    with pytest.raises(StorageFull, match="no space left"):
        s.add(spec(nb, "daily", "0 6 * * *"))


def test_queued_runs_of_a_queue_schedule_never_start_together_after_a_restart(
    home: Path, tmp_path: Path
) -> None:
    """Runs a killed engine left queued start one at a time under the next engine: the
    schedule's limit is known before the dispatcher takes anything."""
    from durabook.api.models import CreateRequest
    from durabook.api.service import Service
    from durabook.dispatcher import Limits
    from durabook.serve import start

    spans = tmp_path / "spans"
    nb = write_nb(
        tmp_path / "span.ipynb",
        [
            "import time\nt0 = time.time()\ntime.sleep(0.3)\n"
            f"open({str(spans)!r}, 'a').write(f'{{t0}} {{time.time()}}\\n')"
        ],
    )
    eng = Engine(home)
    try:
        svc = Service(eng)
        svc.schedule_add(
            ScheduleSpec(name="q", notebook=str(nb), cron="0 0 1 1 *", overlap="queue")
        )
        for i in range(3):  # what a killed engine's dispatcher had not taken yet
            svc.create(CreateRequest(notebook=str(nb), id=f"q{i}", workflow="schedule:q"))
        served = start(eng, Limits(concurrency=3))
        try:
            deadline = time.monotonic() + 90
            while len(spans.read_text().splitlines() if spans.exists() else []) < 3:
                assert time.monotonic() < deadline, "the queued runs did not complete"
                time.sleep(0.1)
        finally:
            served.close()
    finally:
        eng.close()
    runs = sorted(tuple(map(float, line.split())) for line in spans.read_text().splitlines())
    for (_, end), (begin, _) in itertools.pairwise(runs):
        assert begin >= end, f"two runs of a queue schedule at once: {runs}"
