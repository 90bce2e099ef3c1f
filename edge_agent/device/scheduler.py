"""The daemon's scheduler thread: turns jobs and windows into commands at the right instants.

The rules live in :mod:`edge_agent.schedule` (pure, clock-injected); this module only
runs them: it waits until the clock is trusted, asks the planner what is due, queues
each firing as a command whose id is ``job:<name>:<planned unix time>`` (so a repeat
after a crash is a no-op) and records ``last_planned`` in the same transaction, then
sleeps until the next instant (at most a minute, to notice clock steps).

A reload (SIGHUP, a fleet schedule document) keeps what a job has fired when its trigger is
unchanged; a job whose trigger changed, or that is new to the running schedule, is planned from
the first tick after the change: no instant before it is caught up, whatever its ``missed``
policy (the planned instants up to then are recorded as settled, :meth:`Firings.settle`).

Windows: at start-up, when the clock becomes trusted, after a clock step and at every
boundary, each window's device is put in the state the window says for *now*
(the window's value inside, off outside), through the queue like any command.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from edge_agent.device import systemd
from edge_agent.device.commands import NewCommand
from edge_agent.device.store import DiskFull, Store
from edge_agent.errors import ConfigError
from edge_agent.schedule.planner import Job, Planner
from edge_agent.schedule.triggers import job_trigger
from edge_agent.schedule.windows import Window, window_state

__all__ = ["FAKE_TIME", "Firings", "Scheduler", "claim_clock", "fake_start", "reading_clock", "scheduler_clock"]

log = logging.getLogger("edge_agent.scheduler")

MAX_SLEEP = 60.0  # seconds: how long a clock step can go unnoticed
CLOCK_STEP = 30.0  # seconds of disagreement between wall and monotonic time that count as a step
ON_TIME = 60.0
WARN_AFTER = 5.0  # seconds after start-up: when the schedule warnings are looked for


FAKE_TIME = "EDGE_AGENT_FAKE_TIME"
_FAKE_META = "fake_clock"  # {"start": fake unix time, "real": unix time it was at} while a fake run is the db's


def fake_start(environ: Mapping[str, str] | None = None) -> float | None:
    """The instant ``EDGE_AGENT_FAKE_TIME`` starts the schedule clock at, or None (real time).

    Raises ConfigError when it is not ISO-8601 with a UTC offset."""
    env = os.environ if environ is None else environ
    fake = env.get(FAKE_TIME)
    if not fake:
        return None
    try:
        start = datetime.fromisoformat(fake)
    except ValueError:
        raise ConfigError(f"{FAKE_TIME}={fake!r} is not ISO-8601 (like 2026-06-01T20:00:00+03:00)") from None
    if start.tzinfo is None:
        raise ConfigError(f"{FAKE_TIME} needs a UTC offset, like 2026-06-01T20:00:00+03:00")
    return start.timestamp()


def scheduler_clock(environ: Mapping[str, str] | None = None) -> Callable[[], float]:
    """The wall clock for schedules. Tests and demos set ``EDGE_AGENT_FAKE_TIME`` (ISO-8601
    with an offset) to start the daemon's schedule clock at that instant; it then runs at
    real speed, and counts as synchronised (it is the clock the user asked for)."""
    start = fake_start(environ)
    if start is None:
        return time.time
    mono = time.monotonic()
    return lambda: start + (time.monotonic() - mono)


def reading_clock(store: Any, environ: Mapping[str, str] | None = None) -> Callable[[], float]:
    """The schedule clock that ``jobs``, ``status`` and ``agent.jobs`` read: the fake clock of
    the latest fake-clock daemon on ``store`` if there was one, else ``EDGE_AGENT_FAKE_TIME``
    if set, else real time."""
    meta = None
    if store is not None:
        try:
            meta = store.get_meta(_FAKE_META)
        except Exception:  # an older or unreadable database: as if none
            meta = None
    if not meta:
        return scheduler_clock(environ)
    doc = json.loads(meta)
    return lambda: float(doc["start"]) + (time.time() - float(doc["real"]))


def claim_clock(store: Store, clock: Callable[[], float], environ: Mapping[str, str] | None = None) -> None:
    """Keep fake-clock and real runs on separate databases (called at daemon start).

    A fake run records firings at fake instants: a real run on the same file would skip
    real firings the fake one already "fired", or hold every job until the fake time. So a
    database is a fake-clock one from its first fake run on, and a real run refuses it
    (ConfigError: exit 2, saying what to do); a fake run refuses a database whose
    schedule a real run has used."""
    fake = fake_start(environ) is not None
    marked = store.get_meta(_FAKE_META) is not None
    if not fake:
        if marked:
            raise ConfigError(f"{store.path} was written by a run with {FAKE_TIME} set: its firings are at fake "
                              f"times and would hold or skip real ones. Delete it (and its -wal and -shm files) "
                              f"or set another [storage] path")
        return
    if not marked and Firings(store).any():
        raise ConfigError(f"{FAKE_TIME} is set, but {store.path} holds a real run's schedule: fake firings "
                          f"would be recorded there. Use another [storage] path for fake-clock runs")
    log.warning("schedule clock is FAKE (%s=%s): jobs and windows run on it, as if synchronised",
                FAKE_TIME, os.environ.get(FAKE_TIME) if environ is None else environ.get(FAKE_TIME))
    with store.transaction() as cur:
        store.set_meta(cur, _FAKE_META, json.dumps({"start": clock(), "real": time.time()}))


class Firings:
    """The ``firings`` table, per job: when it was first seen (it never fires for instants
    before), the last planned instant handled and when that fired; and ``paused_jobs``, the
    jobs paused by ``job.pause`` and since when. The only code on both."""

    def __init__(self, store: Store):
        self.store = store

    def any(self) -> bool:
        """Whether a schedule ever ran on this database."""
        return bool(self.store.query("select 1 from firings limit 1"))

    def load(self, names: list[str], now_ts: float) -> dict[str, tuple[float, float | None]]:
        """(first seen, last planned) per job; those of ``names`` not seen before are first seen at ``now_ts``."""
        rows = {job: (since, planned) for job, since, planned in self.store.query("select job, since, planned from firings")}
        missing = [n for n in names if n not in rows]
        if missing:
            with self.store.transaction() as cur:
                cur.executemany("insert into firings (job, since) values (?, ?) on conflict (job) do nothing",
                                [(n, now_ts) for n in missing])
            for n in missing:
                rows[n] = (now_ts, None)
        return rows

    def record(self, cur: sqlite3.Cursor, job: str, planned: float | None, fired: float | None) -> None:
        """In the transaction that queued the firings: the last planned instant handled, and when."""
        cur.execute("update firings set planned = ?, fired = ? where job = ?", (planned, fired, job))

    def settle(self, names: list[str], now_ts: float) -> None:
        """Jobs changed by a reload: every planned instant up to ``now_ts`` counts as handled (none
        is caught up); when each last fired is kept. A job never seen is first seen at its first tick."""
        with self.store.transaction() as cur:
            cur.executemany("update firings set planned = max(coalesce(planned, ?1), ?1) where job = ?2",
                            [(now_ts, n) for n in names])

    def skipped(self, cur: sqlite3.Cursor, job: str, planned: float | None) -> None:
        """In the transaction that reported a paused job's instants: handled, when it last fired kept."""
        cur.execute("update firings set planned = ? where job = ?", (planned, job))

    def last_fired(self) -> dict[str, float | None]:
        """When each job last fired (None: the last decision fired nothing)."""
        return {job: fired for job, fired in self.store.query("select job, fired from firings")}

    def pause(self, job: str, now_ts: float) -> bool:
        """Pause ``job`` (its firings are skipped until resumed); whether it was not paused already."""
        with self.store.transaction() as cur:
            cur.execute("insert into paused_jobs (job, since) values (?, ?) on conflict (job) do nothing", (job, now_ts))
            return cur.rowcount > 0

    def resume(self, job: str) -> bool:
        """Resume ``job``; whether it was paused."""
        with self.store.transaction() as cur:
            cur.execute("delete from paused_jobs where job = ?", (job,))
            return cur.rowcount > 0

    def is_paused(self, cur: sqlite3.Cursor, job: str) -> bool:
        """In the transaction that would queue its firings: whether ``job`` is paused."""
        return cur.execute("select 1 from paused_jobs where job = ?", (job,)).fetchone() is not None

    def paused(self) -> dict[str, float]:
        """The paused jobs and since when (also those no longer in the config: a job added again stays paused)."""
        return {job: since for job, since in self.store.query("select job, since from paused_jobs")}


def build_jobs(settings: Any) -> list[tuple[Any, Job]]:
    return [(spec, Job(spec.name, job_trigger(spec, settings.location), spec.missed, spec.grace)) for spec in settings.jobs]


def build_windows(settings: Any) -> list[tuple[Any, Window]]:
    return [(spec, Window(spec.device, spec.start, spec.until)) for spec in settings.windows]


def _instants(spec: Any) -> tuple[Any, ...]:
    """What decides a job's planned instants: when it is unchanged, so is what it has fired."""
    return (spec.kind, spec.value, spec.offset, spec.anchor, spec.not_before, spec.not_after)


class Scheduler:
    def __init__(self, settings: Any, store: Store, *, submit: Callable[..., Any],
                 clock: Callable[[], float] | None = None, trusted: Callable[[], bool] | None = None,
                 on_fired: Callable[..., None] | None = None, on_skipped: Callable[..., None] | None = None,
                 live: bool = False):
        self.store = store
        self.firings = Firings(store)
        self.submit = submit
        # (cur, job name, planned unix time, command) in the transaction that queued a firing
        self.on_fired = on_fired
        # (cur, job name, planned unix time, action) in the transaction that recorded a paused job's instant
        self.on_skipped = on_skipped
        self.clock = clock or scheduler_clock()
        self.fake = fake_start() is not None
        self._trusted_fn = trusted
        self.planner = Planner(on_time_s=ON_TIME)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._window_boundary: dict[int, float | None] = {}
        self.last_beat = self._started = time.monotonic()
        self.trusted = False
        self._unsettled: set[str] = set()  # jobs changed by a reload, settled at the next tick
        self._configure(settings)
        if live:  # made by a reload (the first jobs): a change, not a start after downtime
            self._unsettled = {spec.name for spec, _ in self.jobs}

    def _configure(self, settings: Any) -> None:
        with self._lock:
            self.settings = settings
            self.jobs = build_jobs(settings)
            self.windows = build_windows(settings)
            self._window_boundary = {}
            self._windows_applied = False
            self._orders_checked = False
            self._broken: set[str] = set()  # jobs whose trigger raised (logged once)

    # ----------------------------------------------------------------- lifecycle

    def start(self) -> None:
        self._started = time.monotonic()
        self._thread = threading.Thread(target=self._loop, name="scheduler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(2.0)

    def reload(self, settings: Any) -> None:
        with self._lock:
            before = {spec.name: _instants(spec) for spec, _ in self.jobs}
        self._configure(settings)
        with self._lock:
            self._unsettled |= {spec.name for spec, _ in self.jobs if before.get(spec.name) != _instants(spec)}
        self._wake.set()

    def alive(self) -> bool:
        """The thread runs and its loop came round recently (it wakes at least every minute)."""
        fresh = time.monotonic() - self.last_beat < 2 * MAX_SLEEP + 30
        return self._thread is not None and self._thread.is_alive() and fresh

    def clock_trusted(self) -> bool:
        if self.settings.clock_trust == "always" or self.fake:
            return True
        if self._trusted_fn is not None:
            return self._trusted_fn()
        return systemd.clock_synchronized()

    # ----------------------------------------------------------------- loop

    def _loop(self) -> None:
        offset = self.clock() - time.monotonic()
        while not self._stop.is_set():
            self.last_beat = time.monotonic()
            if not self.clock_trusted():
                if self.trusted or not hasattr(self, "_said_holding"):
                    log.warning("the system clock is not synchronised: time-based jobs and windows are held")
                    self._said_holding = True
                self.trusted = False
                self._wait(5.0)
                continue
            if not self.trusted:
                self.trusted = True
                self._windows_applied = False
                log.info("the clock is trusted: schedules run")
            now_ts = self.clock()
            new_offset = now_ts - time.monotonic()
            if abs(new_offset - offset) > CLOCK_STEP:
                log.warning("the clock stepped by %+.0fs; schedules follow their missed policy", new_offset - offset)
                self._windows_applied = False
            offset = new_offset
            try:
                next_ts = self.tick(now_ts)
            except DiskFull:
                # The store logs the full disk once; firings wait (their planned instants are
                # kept, so the missed policy decides when space returns).
                self.store.wait_after_full(1.0, fallback=0.0)  # (then this loop's own wait, 1 s)
                next_ts = now_ts + 1.0
            except Exception:
                log.exception("scheduler: unexpected error; trying again in 10s")
                next_ts = now_ts + 10.0
            delay = MAX_SLEEP if next_ts is None else min(MAX_SLEEP, max(0.0, next_ts - self.clock()))
            if not self._orders_checked:
                # A year of firings is walked once, a little after start-up (READY and the
                # first windows come first: on a Pi this costs a second of CPU).
                wait = WARN_AFTER - (time.monotonic() - self._started)
                if wait <= 0:
                    self._orders_checked = True
                    self._warn_schedule(now_ts)
                else:
                    delay = min(delay, wait)
            self._wait(delay)

    def _warn_schedule(self, now_ts: float) -> None:
        """Log what `edge-agent check` warns about (on/off jobs whose order changes, empty windows)."""
        from edge_agent.schedule.conflicts import schedule_warnings

        try:
            for warning in schedule_warnings(self.settings, datetime.fromtimestamp(now_ts, UTC)):
                log.warning("%s", warning)
        except Exception:
            log.exception("scheduler: could not check the order of on/off jobs")

    def _wait(self, seconds: float) -> None:
        self._wake.wait(seconds)
        self._wake.clear()

    def tick(self, now_ts: float) -> float | None:
        """Queue what is due at ``now_ts``; returns when to look again (unix time) or None."""
        now = datetime.fromtimestamp(now_ts, UTC)
        with self._lock:
            jobs, windows = list(self.jobs), list(self.windows)
            unsettled = sorted(self._unsettled)
        if unsettled:
            self.firings.settle(unsettled, now_ts)
            with self._lock:
                self._unsettled -= set(unsettled)
        state = self._load_state(now_ts, [spec.name for spec, _ in jobs])
        next_ts: float | None = None
        for spec, job in jobs:
            since, last = state[spec.name]
            try:
                decision = self.planner.due(job, last_planned=last, now=now, since=since)
                if decision.fire or decision.changed:
                    self._fire(spec, decision.fire, decision.last_planned, now_ts)
                    if decision.missed:
                        log.info("job %s: %d firing(s) missed while down or by a clock step (policy %s)",
                                 spec.name, decision.missed, job.missed)
                    last = decision.last_planned
                nxt = job.trigger.next_after(max(now, last) if last else now)
            except (ValueError, OverflowError) as exc:  # a trigger that cannot answer stops only its own job
                if spec.name not in self._broken:
                    self._broken.add(spec.name)
                    log.error("job %s stopped: %s", spec.name, exc)
                continue
            if nxt is not None:
                next_ts = nxt.timestamp() if next_ts is None else min(next_ts, nxt.timestamp())
        for i, (spec, window) in enumerate(windows):
            boundary = self._apply_window(i, spec, window, now, now_ts)
            if boundary is not None:
                next_ts = boundary if next_ts is None else min(next_ts, boundary)
        self._windows_applied = True
        return next_ts

    def _load_state(self, now_ts: float, names: list[str]) -> dict[str, tuple[datetime, datetime | None]]:
        rows = self.firings.load(names, now_ts)
        out = {}
        for n in names:
            since, planned = rows[n]
            out[n] = (datetime.fromtimestamp(since, UTC), datetime.fromtimestamp(planned, UTC) if planned is not None else None)
        return out

    def _fire(self, spec: Any, instants: tuple[datetime, ...], last: datetime | None, now_ts: float) -> None:
        # Deadlines are on the runner's clock (real time), not the schedule clock.
        grace = spec.grace if spec.missed != "skip" else ON_TIME
        with self.store.transaction() as cur:
            paused = bool(instants) and self.firings.is_paused(cur, spec.name)
            for planned in instants:
                ts = planned.timestamp()
                if paused:
                    # Handled (recorded below) but not queued: a resume does not catch it up.
                    if self.on_skipped is not None:
                        self.on_skipped(cur, spec.name, ts, spec.action)
                    log.info("job %s skipped for %s: paused", spec.name,
                             planned.astimezone(self.settings.location.tz).isoformat())
                    continue
                cmd = NewCommand(action=spec.action, args=dict(spec.args), id=f"job:{spec.name}:{ts:.0f}",
                                 source="schedule", deadline=time.time() + max(ts + grace - now_ts, ON_TIME))
                queued = self.submit(cmd, cur)
                if self.on_fired is not None and queued is not None and queued[1]:
                    self.on_fired(cur, spec.name, ts, queued[0])
                log.info("job %s fired for %s", spec.name, planned.astimezone(self.settings.location.tz).isoformat())
            if paused:
                self.firings.skipped(cur, spec.name, last.timestamp() if last else None)
            else:
                self.firings.record(cur, spec.name, last.timestamp() if last else None, now_ts if instants else None)

    def _apply_window(self, i: int, spec: Any, window: Window, now: datetime, now_ts: float) -> float | None:
        loc = self.settings.location
        active, boundary = window_state(window, now, loc.latitude, loc.longitude, loc.tz)
        boundary_ts = boundary.timestamp() if boundary is not None else None
        known = self._window_boundary.get(i, "unset")
        crossed = known != "unset" and known is not None and now_ts >= known  # type: ignore[operator]
        if not self._windows_applied or crossed or known == "unset":
            value = spec.value if active else ("off" if isinstance(spec.value, str) else 0.0)
            cmd = NewCommand(action="gpio.set", args={"device": spec.device, "value": value},
                             id=f"window:{spec.key}:{spec.device}:{now_ts:.3f}", source="window",
                             deadline=time.time() + ON_TIME)
            self.submit(cmd)
            log.info("window %s: %s is %s now (%s until %s)", spec.key, spec.device, value, spec.start, spec.until)
        self._window_boundary[i] = boundary_ts
        return boundary_ts

    # ----------------------------------------------------------------- reporting

    def next_firings(self, count: int = 5) -> list[dict[str, str]]:
        """The next ``count`` firings, soonest first; a paused job has none (its instants are skipped)."""
        now = datetime.fromtimestamp(self.clock(), UTC)
        out: list[tuple[datetime, str]] = []
        with self._lock:
            jobs = list(self.jobs)
        paused = self.firings.paused()
        for spec, job in jobs:
            if spec.name in paused:
                continue
            nxt = job.trigger.next_after(now)
            if nxt is not None:
                out.append((nxt, spec.name))
        out.sort()
        tz = self.settings.location.tz
        return [{"job": name, "at": at.astimezone(tz).isoformat(timespec="seconds")} for at, name in out[:count]]
