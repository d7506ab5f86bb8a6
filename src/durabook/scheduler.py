"""Cron schedules: a notebook run as a new instance at every fire of a cron expression.

A schedule lives in the store (table ``schedules``); the serving engine's
:class:`Scheduler` fires it. Each fire creates one instance whose id is derived
from the schedule and the fire time (``NAME.YYYYMMDDTHHMMZ``, UTC), and the fire
is recorded (``last_fire``) only after the instance exists: a fire retried after
a crash re-creates the same id, which the engine's create dedupes in the writer's
transaction. So every fire makes at most one instance. A fire whose notebook is
gone or no longer takes the parameters is logged and skipped.

Time zones: fire times are wall-clock times of the schedule's zone (croniter),
stored and reported as UTC instants. On a DST change:

* a wall-clock time that does not exist (clocks go forward) fires at the first
  instant after the gap: ``30 2 * * *`` in Europe/Paris fires at 03:00 CEST on
  2026-03-29 (once, even when the gap swallows several fire times);
* a wall-clock time that happens twice (clocks go back) fires once, at its first
  occurrence: ``30 2 * * *`` fires at 02:30 CEST on 2026-10-25, not again at 02:30
  CET. So an expression fires at most once per local day and time; one that fires
  every few minutes has no fires in the second pass of the repeated hour (use the
  zone UTC, the default, for fires at exact intervals).

Missed fires (the engine was down) are handled once, when the scheduler starts,
by the schedule's ``catch_up``: ``none`` skips them, ``one`` runs the latest,
``all`` runs each (the latest 1000 at most; the earlier ones are logged as
skipped). While the engine runs, a fire found late (a suspended machine) runs the
latest due fire, and every due fire with ``catch_up`` ``all``.

Overlap: ``skip`` makes no instance while an earlier one of the schedule is
unfinished (queued, running, sleeping, waiting or paused); ``queue`` runs them
one after another (workflow ``schedule:NAME`` limited to one at a time);
``allow`` runs them side by side.

A paused schedule does not fire, and the fires it missed while paused are
skipped, not caught up on unpause. Removing a schedule leaves its instances.
"""

from __future__ import annotations

import builtins
import itertools
import json
import logging
import threading
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadDateError, CroniterError, croniter

from .api.models import ScheduleInfo, ScheduleSpec
from .errors import BadInput, UnknownSchedule, storage_full
from .models import Status

if TYPE_CHECKING:
    from .dispatcher import Dispatcher
    from .engine import Engine

__all__ = ["Scheduler", "fire_id", "fire_times", "latest_fire", "parse_cron", "zone"]

log = logging.getLogger("durabook.scheduler")

CATCH_UP_MAX = 1000  # missed fires run by catch_up "all"; earlier ones are skipped
MAX_NAP = 60.0  # seconds: woken at least this often (a changed wall clock is noticed)
RETRY_AFTER = timedelta(seconds=30)  # a schedule whose fire failed unexpectedly
_UNFINISHED = str(  # an earlier run in these blocks a fire of overlap "skip"; as SQL
    tuple(
        s.value
        for s in (Status.QUEUED, Status.RUNNING, Status.SLEEPING, Status.WAITING, Status.PAUSED)
    )
)
_COLS = (
    "name, notebook, cron, tz, parameters, overlap, catch_up, tenant, priority, webhook, "
    "paused, created_at, last_fire"
)
UTC = timezone.utc


def _utc(dt: datetime) -> datetime:
    """Aware UTC: the store's timestamps are naive UTC."""
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def _naive(dt: datetime) -> datetime:
    return _utc(dt).replace(tzinfo=None)


def _now() -> datetime:
    return datetime.now(UTC)


# -- cron arithmetic ------------------------------------------------------------------------


def parse_cron(expr: str) -> str:
    """A 5-field cron expression, normalised (single spaces); BadInput if croniter refuses."""
    fields = expr.split()
    if len(fields) != 5:
        raise BadInput(
            f"invalid cron expression {expr[:80]!r}: use 5 fields (minute hour day month "
            "weekday), e.g. '0 6 * * 1-5'"
        )
    cron = " ".join(fields)
    if not croniter.is_valid(cron):
        raise BadInput(f"invalid cron expression {cron[:80]!r}")
    try:
        croniter(cron, datetime(2000, 1, 1, tzinfo=UTC)).get_next(datetime)
    except CroniterBadDateError:  # e.g. '0 0 30 2 *': valid fields, no such date
        raise BadInput(f"the cron expression {cron!r} never fires") from None
    except (CroniterError, ValueError) as exc:
        raise BadInput(f"invalid cron expression {cron!r}: {exc}") from None
    return cron


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise BadInput(
            f"unknown time zone {name[:80]!r}: use an IANA name such as 'Europe/Paris' or 'UTC'"
        ) from None


def fire_times(cron: str, tz: str, start: datetime, backward: bool = False) -> Iterator[datetime]:
    """Fire times (aware UTC) strictly after ``start`` (strictly before, ``backward``),
    in order, under this module's DST rules. Endless: the caller stops.

    croniter walks wall-clock times (naive: plain calendar arithmetic, no DST); each is
    mapped to its instant by :func:`_instant`, which never goes back in time as the
    wall clock goes forward. (croniter's own aware walk skips or repeats fires around
    DST changes that are not whole hours, e.g. Australia/Lord_Howe.)"""
    zi, start = zone(tz), _utc(start)
    wall = start.astimezone(zi).replace(tzinfo=None)
    if backward:  # start in a repeated hour's second pass: later wall times fired earlier
        wall += max(timedelta(0), _offset(start - timedelta(days=1), zi) - _offset(start, zi))
    it = croniter(cron, wall)
    last = start
    for _ in range(10**6):  # bounded: a croniter that stopped advancing must not hang us
        try:
            local = it.get_prev(datetime) if backward else it.get_next(datetime)
        except CroniterBadDateError:
            return
        at = _instant(local, zi)
        if (at < last) if backward else (at > last):
            last = at  # else: a time a gap collapsed onto one given already, or a skip
            yield at


def _offset(at: datetime, zi: ZoneInfo) -> timedelta:
    return at.astimezone(zi).utcoffset() or timedelta(0)


def _instant(wall: datetime, zi: ZoneInfo) -> datetime:
    """When a wall-clock time fires: its first occurrence if it happens twice; the end
    of the gap if it does not happen (clocks go forward)."""
    for _ in range(2 * 24 * 60 + 1):
        at = wall.replace(tzinfo=zi, fold=0).astimezone(UTC)  # fold 0: the earlier one
        if at.astimezone(zi).replace(tzinfo=None) == wall:
            return at
        wall += timedelta(minutes=1)  # in a gap: the first minute after it
    return at


def latest_fire(cron: str, tz: str, now: datetime) -> datetime | None:
    """The last fire time at or before ``now``."""
    back = fire_times(cron, tz, _utc(now) + timedelta(minutes=1), backward=True)
    return next((t for t in back if t <= _utc(now)), None)


def fire_id(name: str, fire: datetime) -> str:
    """The instance a fire creates: the same id however often the fire is processed."""
    return f"{name}.{_utc(fire):%Y%m%dT%H%MZ}"


# -- the scheduler --------------------------------------------------------------------------


class Scheduler:
    """The schedules of one home's engine.

    ``dispatcher``: set under ``durabook serve`` (``queue`` overlap limits its
    workflow). ``clock``: the current time, aware UTC (tests inject one).
    """

    def __init__(
        self,
        engine: Engine,
        dispatcher: Dispatcher | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.engine = engine
        self.dispatcher = dispatcher
        self.clock = clock or _now
        self._mutex = threading.RLock()  # one change at a time: add, pause, remove, fire
        self._cv = threading.Condition()  # guards _next and _stopping; wakes the thread
        self._next: dict[str, datetime] = {}  # next fire of each unpaused schedule
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.fired = 0

    # -- reads --------------------------------------------------------------------------
    def _rows(self, where: str = "", args: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        sql = f"SELECT {_COLS} FROM schedules {where} ORDER BY name"
        cols = [c.strip() for c in _COLS.split(",")]
        out = []
        for r in self.engine.store.cursor().execute(sql, list(args)).fetchall():
            row = dict(zip(cols, r))
            row["parameters"] = json.loads(row["parameters"] or "{}")
            row["created_at"] = _utc(row["created_at"])
            row["last_fire"] = _utc(row["last_fire"]) if row["last_fire"] else None
            out.append(row)
        return out

    def _row(self, name: str) -> dict[str, Any]:
        rows = self._rows("WHERE name = ?", (name,))
        if not rows:
            raise UnknownSchedule(f"unknown schedule {name!r}", schedule=name)
        return rows[0]

    def _info(self, row: dict[str, Any], now: datetime | None = None) -> ScheduleInfo:
        upcoming: list[datetime] = []
        if not row["paused"]:
            base = max(_base(row), now or self.clock())
            upcoming = list(itertools.islice(fire_times(row["cron"], row["tz"], base), 3))
        return ScheduleInfo(**row, next_fires=upcoming)

    def list(self) -> list[ScheduleInfo]:
        now = self.clock()
        return [self._info(r, now) for r in self._rows()]

    def get(self, name: str) -> ScheduleInfo:
        return self._info(self._row(name))

    # -- changes --------------------------------------------------------------------------
    def add(self, spec: ScheduleSpec) -> ScheduleInfo:
        """Validate everything, then store; nothing is stored when a check fails."""
        from .notebook import coerce_parameters, inject_parameters, load_notebook, strip_injected
        from .steps import check_step_options

        cron = parse_cron(spec.cron)
        zone(spec.tz)
        path = Path(spec.notebook).expanduser().absolute()
        nb = strip_injected(load_notebook(path))
        params = coerce_parameters(nb, spec.parameters, from_text=spec.from_text)
        check_step_options(inject_parameters(nb, params))
        now = self.clock()
        values = [
            spec.name, str(path), cron, spec.tz, json.dumps(params), spec.overlap,
            spec.catch_up, spec.tenant, spec.priority, spec.webhook, False, _naive(now), None,
        ]  # fmt: skip

        def insert(c: Any) -> None:  # checked in the writer's transaction: no racing add
            if c.execute("SELECT 1 FROM schedules WHERE name = ?", [spec.name]).fetchone():
                raise BadInput(f"a schedule named {spec.name!r} exists already", schedule=spec.name)
            c.execute(f"INSERT INTO schedules ({_COLS}) VALUES ({', '.join('?' * 13)})", values)

        with self._mutex:
            try:
                self.engine.writer.call(insert)
            except Exception as exc:  # a full disk says so, naming the home
                full = storage_full(exc, self.engine.home)
                if full is not None:
                    raise full from None
                raise
            row = self._row(spec.name)
            if spec.overlap == "queue" and self.dispatcher is not None:
                self.dispatcher.set_workflow_limit(_workflow(spec.name), 1)
            self._refresh(row)
        log.info("schedule %s added: %r in %s", spec.name, cron, spec.tz)
        return self._info(row, now)

    def set_paused(self, name: str, paused: bool) -> ScheduleInfo:
        """Pause or unpause. Unpausing skips the fires missed while paused."""
        with self._mutex:
            row = self._row(name)
            if bool(row["paused"]) != paused:
                now = self.clock()
                missed = None
                if not paused:  # the fires of the pause are skipped, not caught up
                    missed = latest_fire(row["cron"], row["tz"], now)
                    if missed is not None and missed <= _base(row):
                        missed = None

                def update(c: Any) -> None:
                    c.execute("UPDATE schedules SET paused = ? WHERE name = ?", [paused, name])
                    if missed is not None:
                        _set_last_fire(c, name, missed)

                self.engine.writer.call(update)
                row = self._row(name)
                self._refresh(row)
                log.info("schedule %s %s", name, "paused" if paused else "unpaused")
            return self._info(row)

    def remove(self, name: str) -> ScheduleInfo:
        """Delete the schedule (its instances stay); returns it as it was."""
        with self._mutex:
            info = self._info(self._row(name))
            self.engine.writer.call(
                lambda c: c.execute("DELETE FROM schedules WHERE name = ?", [name])
            )
            with self._cv:
                self._next.pop(name, None)
                self._cv.notify_all()
        log.info("schedule %s removed", name)
        return info

    # -- firing ----------------------------------------------------------------------------
    def fire_due(self, now: datetime | None = None) -> builtins.list[str]:
        """Fire every unpaused schedule with a fire time in (last fire, ``now``].

        The latest due fire runs; earlier ones too with ``catch_up`` ``all``.
        Returns the ids of the instances created."""
        return self._process(now, at_start=False)

    def catch_up(self, now: datetime | None = None) -> builtins.list[str]:
        """The fires missed while no engine ran, by each schedule's ``catch_up``."""
        return self._process(now, at_start=True)

    def _process(self, now: datetime | None, at_start: bool) -> builtins.list[str]:
        now = _utc(now or self.clock())
        created: builtins.list[str] = []
        with self._mutex:
            for row in self._rows("WHERE NOT paused"):
                with self._cv:
                    known = self._next.get(row["name"])
                if known is not None and known > now and not at_start:
                    continue  # not due: no cron arithmetic
                try:
                    self._fire(row, now, at_start, created)
                    self._refresh(self._row(row["name"]))
                except Exception:
                    log.exception("schedule %s: fire failed; retrying later", row["name"])
                    with self._cv:
                        self._next[row["name"]] = now + RETRY_AFTER
        return created

    def _fire(
        self, row: dict[str, Any], now: datetime, at_start: bool, out: builtins.list[str]
    ) -> None:
        name, base = row["name"], _base(row)
        latest = latest_fire(row["cron"], row["tz"], now)
        if latest is None or latest <= base:
            return
        policy = row["catch_up"]
        if not at_start and policy == "none":
            policy = "one"  # the fire of now (found late) is not a missed one
        fires: builtins.list[datetime] = []
        if policy == "one":
            fires = [latest]
        elif policy == "all":
            back = fire_times(row["cron"], row["tz"], latest, backward=True)
            missed = itertools.takewhile(lambda t: t > base, back)
            fires = [latest, *itertools.islice(missed, CATCH_UP_MAX)]
            if len(fires) > CATCH_UP_MAX:
                first = next(fire_times(row["cron"], row["tz"], base))
                log.warning(
                    "schedule %s: over %d missed fires; skipped those from %s to %s",
                    name, CATCH_UP_MAX, f"{first:%Y-%m-%d %H:%M}Z", f"{fires[-1]:%Y-%m-%d %H:%M}Z",
                )  # fmt: skip
                fires = fires[:CATCH_UP_MAX]
            fires.reverse()
        elif at_start:
            log.info("schedule %s: missed fires up to %s skipped (catch-up none)", name, latest)
        for fire in fires:
            iid = self._create(row, fire)
            if iid is not None:
                out.append(iid)
        self._advance(name, latest)

    def _create(self, row: dict[str, Any], fire: datetime) -> str | None:
        """One fire's instance (None: skipped, or made already by an earlier try)."""
        name = row["name"]
        if row["overlap"] == "skip":
            busy = self._unfinished(name)
            if busy is not None:
                log.info("schedule %s: fire %s skipped: %s is unfinished", name, fire, busy)
                return None
        try:
            iid, created = self.engine.create(
                row["notebook"],
                row["parameters"],
                fire_id(name, fire),
                from_text=False,
                priority=row["priority"] or 0,
                tenant=row["tenant"],
                workflow=_workflow(name) if row["overlap"] == "queue" else None,
                schedule=name,
                webhook=row["webhook"],
                if_exists="return",
            )
        except BadInput as exc:  # the notebook went away or changed: this fire is lost
            log.error("schedule %s: fire %s not run: %s", name, fire, exc.message)
            return None
        if created:
            self.fired += 1
            log.info("schedule %s: fired %s", name, iid)
        return iid if created else None

    def _unfinished(self, name: str) -> str | None:
        sql = f"SELECT id FROM instances WHERE schedule = ? AND status IN {_UNFINISHED} LIMIT 1"
        hit = self.engine.store.cursor().execute(sql, [name]).fetchone()
        return None if hit is None else str(hit[0])

    def _advance(self, name: str, fire: datetime) -> None:
        """Record the fire, after its instances exist (a crash before this re-fires it)."""
        self.engine.writer.call(lambda c: _set_last_fire(c, name, fire))

    def _refresh(self, row: dict[str, Any]) -> None:
        """Keep the thread's view of ``row``'s next fire, and wake it to look."""
        nxt = None  # at or before now: due (missed while no engine ran, say)
        if not row["paused"]:
            nxt = next(fire_times(row["cron"], row["tz"], _base(row)), None)
        with self._cv:
            if nxt is None:
                self._next.pop(row["name"], None)
            else:
                self._next[row["name"]] = nxt
            self._cv.notify_all()

    # -- the thread ------------------------------------------------------------------------
    def limit_workflows(self) -> None:
        """``queue`` schedules run one at a time: tell the dispatcher, before it takes
        any of their instances left queued by a previous engine."""
        if self.dispatcher is not None:
            for row in self._rows():
                if row["overlap"] == "queue":
                    self.dispatcher.set_workflow_limit(_workflow(row["name"]), 1)

    def start(self) -> None:
        """Limit ``queue`` schedules' workflows, catch up once, then fire on time."""
        self.limit_workflows()
        self.catch_up(self.clock())
        self._thread = threading.Thread(target=self._loop, name="durabook-cron", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._stopping:
                    now = self.clock()
                    wake = min(self._next.values(), default=None)
                    if wake is not None and wake <= now:
                        break
                    nap = MAX_NAP
                    if wake is not None:
                        nap = min(nap, (wake - now).total_seconds())
                    self._cv.wait(max(nap, 0.001))
                if self._stopping:
                    return
            try:
                self.fire_due(now)
            except Exception:  # the store is gone or broken: try again in a while
                log.exception("firing schedules failed")
                with self._cv:
                    self._cv.wait(RETRY_AFTER.total_seconds())

    def close(self) -> None:
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
        if self._thread is not None and self._thread.is_alive():
            self._thread.join(5)


def _base(row: dict[str, Any]) -> datetime:
    """Fires after this are still to be processed."""
    return row["last_fire"] or row["created_at"]


def _workflow(name: str) -> str:
    return f"schedule:{name}"


def _set_last_fire(c: Any, name: str, fire: datetime) -> None:
    c.execute(
        "UPDATE schedules SET last_fire = ? WHERE name = ? AND (last_fire IS NULL OR "
        "last_fire < ?)",
        [_naive(fire), name, _naive(fire)],
    )
