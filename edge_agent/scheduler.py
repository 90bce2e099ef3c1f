"""The daemon's scheduler thread: turns jobs and windows into commands at the right instants.

The rules live in :mod:`edge_agent.schedule` (pure, clock-injected); this module only
runs them: it waits until the clock is trusted, asks the planner what is due, queues
each firing as a command whose id is ``job:<name>:<planned unix time>`` (so a repeat
after a crash is a no-op) and records ``last_planned`` in the same transaction, then
sleeps until the next instant (at most a minute, to notice clock steps).

Windows: at start-up, when the clock becomes trusted, after a clock step and at every
boundary, each window's device is put in the state the window says for *now*
(the window's value inside, off outside), through the queue like any command.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from . import systemd
from .commands import NewCommand
from .schedule.planner import Job, Planner
from .schedule.triggers import Trigger, build_trigger
from .schedule.windows import Window, window_state
from .store import Store

__all__ = ["Scheduler", "scheduler_clock"]

log = logging.getLogger(__name__)

MAX_SLEEP = 60.0  # seconds: how long a clock step can go unnoticed
CLOCK_STEP = 30.0  # seconds of disagreement between wall and monotonic time that count as a step
ON_TIME = 60.0


def scheduler_clock(environ: dict[str, str] | None = None) -> Callable[[], float]:
    """The wall clock for schedules. Tests (only) set ``EDGE_AGENT_FAKE_TIME`` (ISO-8601)
    to start the daemon's schedule clock at that instant; it then runs at real speed."""
    env = os.environ if environ is None else environ
    fake = env.get("EDGE_AGENT_FAKE_TIME")
    if not fake:
        return time.time
    start = datetime.fromisoformat(fake)
    if start.tzinfo is None:
        raise ValueError("EDGE_AGENT_FAKE_TIME needs a UTC offset")
    base, mono = start.timestamp(), time.monotonic()
    log.warning("schedule clock is FAKE (EDGE_AGENT_FAKE_TIME=%s): for tests only", fake)
    return lambda: base + (time.monotonic() - mono)


def build_jobs(settings: Any) -> list[tuple[Any, Job]]:
    loc = settings.location
    out = []
    for spec in settings.jobs:
        trigger: Trigger = build_trigger(spec.kind, spec.value, tz=loc.tz, offset_s=spec.offset,
                                         latitude=loc.latitude, longitude=loc.longitude)
        out.append((spec, Job(spec.name, trigger, spec.missed, spec.grace)))
    return out


def build_windows(settings: Any) -> list[tuple[Any, Window]]:
    return [(spec, Window(spec.device, spec.start, spec.until)) for spec in settings.windows]


class Scheduler:
    def __init__(self, settings: Any, store: Store, *, submit: Callable[..., Any],
                 clock: Callable[[], float] | None = None, trusted: Callable[[], bool] | None = None,
                 on_fired: Callable[..., None] | None = None):
        self.store = store
        self.submit = submit
        # (cur, job name, planned unix time, command) in the transaction that queued a firing
        self.on_fired = on_fired
        self.clock = clock or scheduler_clock()
        self._trusted_fn = trusted
        self.planner = Planner(on_time_s=ON_TIME)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._window_boundary: dict[int, float | None] = {}
        self.last_beat = time.monotonic()
        self.trusted = False
        self._configure(settings)

    def _configure(self, settings: Any) -> None:
        with self._lock:
            self.settings = settings
            self.jobs = build_jobs(settings)
            self.windows = build_windows(settings)
            self._window_boundary = {}
            self._windows_applied = False

    # ----------------------------------------------------------------- lifecycle

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="scheduler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(2.0)

    def reload(self, settings: Any) -> None:
        self._configure(settings)
        self._wake.set()

    def alive(self) -> bool:
        """The thread runs and its loop came round recently (it wakes at least every minute)."""
        fresh = time.monotonic() - self.last_beat < 2 * MAX_SLEEP + 30
        return self._thread is not None and self._thread.is_alive() and fresh

    def clock_trusted(self) -> bool:
        if self.settings.clock_trust == "always":
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
            except Exception:
                log.exception("scheduler: unexpected error; trying again in 10s")
                next_ts = now_ts + 10.0
            delay = MAX_SLEEP if next_ts is None else min(MAX_SLEEP, max(0.0, next_ts - self.clock()))
            self._wait(delay)

    def _wait(self, seconds: float) -> None:
        self._wake.wait(seconds)
        self._wake.clear()

    def tick(self, now_ts: float) -> float | None:
        """Queue what is due at ``now_ts``; returns when to look again (unix time) or None."""
        now = datetime.fromtimestamp(now_ts, UTC)
        with self._lock:
            jobs, windows = list(self.jobs), list(self.windows)
        state = self._load_state(now_ts, [spec.name for spec, _ in jobs])
        next_ts: float | None = None
        for spec, job in jobs:
            since, last = state[spec.name]
            decision = self.planner.due(job, last_planned=last, now=now, since=since)
            if decision.fire or decision.changed:
                self._fire(spec, decision.fire, decision.last_planned, now_ts)
                if decision.missed:
                    log.info("job %s: %d firing(s) missed while down or by a clock step (policy %s)",
                             spec.name, decision.missed, job.missed)
                last = decision.last_planned
            nxt = job.trigger.next_after(max(now, last) if last else now)
            if nxt is not None:
                next_ts = nxt.timestamp() if next_ts is None else min(next_ts, nxt.timestamp())
        for i, (spec, window) in enumerate(windows):
            boundary = self._apply_window(i, spec, window, now, now_ts)
            if boundary is not None:
                next_ts = boundary if next_ts is None else min(next_ts, boundary)
        self._windows_applied = True
        return next_ts

    def _load_state(self, now_ts: float, names: list[str]) -> dict[str, tuple[datetime, datetime | None]]:
        rows = {job: (since, planned) for job, since, planned in self.store.query("select job, since, planned from firings")}
        missing = [n for n in names if n not in rows]
        if missing:
            with self.store.transaction() as cur:
                cur.executemany("insert into firings (job, since) values (?, ?) on conflict (job) do nothing",
                                [(n, now_ts) for n in missing])
            for n in missing:
                rows[n] = (now_ts, None)
        out = {}
        for n in names:
            since, planned = rows[n]
            out[n] = (datetime.fromtimestamp(since, UTC), datetime.fromtimestamp(planned, UTC) if planned is not None else None)
        return out

    def _fire(self, spec: Any, instants: tuple[datetime, ...], last: datetime | None, now_ts: float) -> None:
        # Deadlines are on the runner's clock (real time), not the schedule clock.
        grace = spec.grace if spec.missed != "skip" else ON_TIME
        with self.store.transaction() as cur:
            for planned in instants:
                ts = planned.timestamp()
                cmd = NewCommand(action=spec.action, args=dict(spec.args), id=f"job:{spec.name}:{ts:.0f}",
                                 source="schedule", deadline=time.time() + max(ts + grace - now_ts, ON_TIME))
                queued = self.submit(cmd, cur)
                if self.on_fired is not None and queued is not None and queued[1]:
                    self.on_fired(cur, spec.name, ts, queued[0])
                log.info("job %s fired for %s", spec.name, planned.astimezone(self.settings.location.tz).isoformat())
            cur.execute("update firings set planned = ?, fired = ? where job = ?",
                        (last.timestamp() if last else None, now_ts if instants else None, spec.name))

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
        now = datetime.fromtimestamp(self.clock(), UTC)
        out: list[tuple[datetime, str]] = []
        with self._lock:
            jobs = list(self.jobs)
        for spec, job in jobs:
            nxt = job.trigger.next_after(now)
            if nxt is not None:
                out.append((nxt, spec.name))
        out.sort()
        tz = self.settings.location.tz
        return [{"job": name, "at": at.astimezone(tz).isoformat(timespec="seconds")} for at, name in out[:count]]
