"""The planner: never early, never twice, missed-firing policies, clock steps and restarts."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.schedule import planner as planner_module
from edge_agent.schedule.cron import CronExpr
from edge_agent.schedule.planner import Decision, Job, Planner
from edge_agent.schedule.solar import solar_events
from edge_agent.schedule.triggers import CronTrigger, EveryTrigger, SolarTrigger

T0 = datetime(2026, 3, 1, tzinfo=UTC)
HOURLY = EveryTrigger(3600, T0)
DAILY_8 = CronTrigger(CronExpr.parse("0 8 * * *"), UTC)


class Daemon:
    """A stand-in for the real scheduler loop: asks the planner, 'enqueues' firings keyed by
    (job, planned) and persists last_planned, exactly as the caller contract says."""

    def __init__(self, job: Job, since: datetime, planner: Planner | None = None) -> None:
        self.job, self.since = job, since
        self.planner = planner or Planner()
        self.last_planned: datetime | None = None
        self.queue: list[tuple[str, datetime, datetime]] = []  # (job, planned, enqueued at)
        self.keys: set[tuple[str, datetime]] = set()

    def tick(self, now: datetime, *, persist: bool = True) -> Decision:
        decision = self.planner.due(self.job, last_planned=self.last_planned, now=now, since=self.since)
        for planned in decision.fire:
            key = (self.job.name, planned)
            if key not in self.keys:  # the unique constraint of the real queue
                self.keys.add(key)
                self.queue.append((self.job.name, planned, now))
        if persist:
            self.last_planned = decision.last_planned
        return decision

    @property
    def fired(self) -> list[datetime]:
        return [planned for _, planned, _ in self.queue]


def test_on_time_operation_fires_each_instant_once_never_early() -> None:
    """Woken at every planned instant (plus a little lag) and in between, an hourly job fires
    each instant exactly once, never before it."""
    daemon = Daemon(Job("hourly", HOURLY), since=T0)
    now = T0
    for hour in range(1, 49):
        planned = T0 + timedelta(hours=hour)
        daemon.tick(planned - timedelta(seconds=1))
        assert planned not in daemon.fired  # one second early: not yet
        daemon.tick(planned + timedelta(milliseconds=300))
        daemon.tick(planned + timedelta(minutes=20))
        now = planned
    assert daemon.fired == [T0 + timedelta(hours=h) for h in range(0, 49)]
    assert all(enqueued >= planned for _, planned, enqueued in daemon.queue)
    assert daemon.last_planned == now


def test_a_new_job_never_fires_for_instants_before_it_was_first_seen() -> None:
    """A job first seen at 12:30 skips 12:00 and fires at 13:00; one first seen exactly at an
    instant fires for it."""
    since = T0 + timedelta(hours=12, minutes=30)
    daemon = Daemon(Job("new", HOURLY, missed="all"), since=since)
    daemon.tick(since)
    daemon.tick(since + timedelta(minutes=31))
    assert daemon.fired == [T0 + timedelta(hours=13)]
    exact = Daemon(Job("exact", HOURLY), since=T0 + timedelta(hours=5))
    exact.tick(T0 + timedelta(hours=5))
    assert exact.fired == [T0 + timedelta(hours=5)]


def test_since_is_required_without_history() -> None:
    """A job with no last_planned needs `since`, or the planner cannot know what is new."""
    with pytest.raises(ValueError, match="pass since"):
        Planner().due(Job("x", HOURLY), last_planned=None, now=T0)


def _down(job: Job, down_from: datetime, back_at: datetime) -> Daemon:
    daemon = Daemon(job, since=T0)
    daemon.tick(down_from)
    daemon.queue.clear()
    daemon.tick(back_at)
    return daemon


def test_after_downtime_skip_runs_none_of_the_missed_firings() -> None:
    """missed = skip: back after three days, nothing runs until the next planned instant."""
    day1 = T0 + timedelta(hours=7)
    daemon = _down(Job("d", DAILY_8, missed="skip"), day1, day1 + timedelta(days=3, hours=2, minutes=30))
    assert daemon.fired == []
    # Settled past day 4's 08:00 (a marker, not necessarily a planned instant) and
    # before the next one.
    assert daemon.last_planned is not None
    assert day1 + timedelta(days=3, hours=1) <= daemon.last_planned < day1 + timedelta(days=4, hours=1)
    daemon.tick(day1 + timedelta(days=4, hours=1, seconds=5))
    assert daemon.fired == [day1 + timedelta(days=4, hours=1)]


def test_after_downtime_once_runs_only_the_latest_within_grace() -> None:
    """missed = once: back 1.5 h after the last 08:00 runs that one only; 3 h after, none (grace 2 h)."""
    day1 = T0 + timedelta(hours=7)
    within = _down(Job("d", DAILY_8, missed="once"), day1, day1 + timedelta(days=3, hours=2, minutes=30))
    assert within.fired == [day1 + timedelta(days=3, hours=1)]
    late = _down(Job("d", DAILY_8, missed="once"), day1, day1 + timedelta(days=3, hours=4))
    assert late.fired == []
    decision = late.tick(day1 + timedelta(days=3, hours=4, minutes=1))
    assert decision.fire == () and not decision.changed  # settled: nothing more to do


def test_after_downtime_all_runs_every_missed_firing_within_grace_oldest_first() -> None:
    """missed = all: an hourly job down for 5 h runs the two instants of the last 2 h, in order."""
    back = T0 + timedelta(hours=10, minutes=30)
    daemon = _down(Job("h", HOURLY, missed="all"), T0 + timedelta(hours=5, minutes=30), back)
    assert daemon.fired == [T0 + timedelta(hours=9), T0 + timedelta(hours=10)]


def test_catch_up_is_bounded() -> None:
    """missed = all with a long grace runs at most max_catch_up firings: the most recent ones."""
    every_minute = EveryTrigger(60, T0)
    job = Job("m", every_minute, missed="all", grace_s=7 * 86400, max_catch_up=100)
    back = T0 + timedelta(days=3)
    daemon = _down(job, T0 + timedelta(seconds=30), back)
    assert len(daemon.fired) == 100
    assert daemon.fired[-1] == back and daemon.fired[0] == back - timedelta(minutes=99)
    decision = daemon.planner.due(job, last_planned=T0, now=back, since=T0)
    assert decision.missed >= len(decision.skipped) > 4000


def test_a_month_of_downtime_is_decided_without_walking_the_month() -> None:
    """A per-second job back after 30 days is decided at once (the walk starts at the grace window)."""
    job = Job("s", EveryTrigger(1, T0), missed="once")
    decision = Planner().due(job, last_planned=T0, now=T0 + timedelta(days=30), since=T0)
    assert decision.fire == (T0 + timedelta(days=30),)
    assert decision.dropped_before == T0 + timedelta(days=30, hours=-2)


@pytest.mark.parametrize(
    ("missed", "expected_hours"),
    [("skip", []), ("once", [12]), ("all", [11, 12])],
)
def test_a_clock_step_forward_is_handled_like_downtime(missed: str, expected_hours: list[int]) -> None:
    """The clock jumps from 10:00:30 to 12:10: 11:00 and 12:00 went by unseen; the policy decides."""
    daemon = Daemon(Job("h", HOURLY, missed=missed), since=T0)
    daemon.tick(T0 + timedelta(hours=10, seconds=30))
    daemon.queue.clear()
    daemon.tick(T0 + timedelta(hours=12, minutes=10))
    assert daemon.fired == [T0 + timedelta(hours=h) for h in expected_hours]


@pytest.mark.parametrize("missed", ["skip", "once", "all"])
def test_a_clock_step_back_never_fires_an_instant_again(missed: str) -> None:
    """After 12:00 fired, the clock steps back 2 h: 11:00 and 12:00 do not fire again; 13:00 does, once."""
    daemon = Daemon(Job("h", HOURLY, missed=missed), since=T0 + timedelta(hours=11, minutes=59))
    daemon.tick(T0 + timedelta(hours=12, seconds=1))
    assert daemon.fired == [T0 + timedelta(hours=12)]
    stepped = T0 + timedelta(hours=10, seconds=1)
    for minutes in range(0, 3 * 60 + 1, 5):
        daemon.tick(stepped + timedelta(minutes=minutes))
    assert daemon.fired == [T0 + timedelta(hours=12), T0 + timedelta(hours=13)]
    assert daemon.last_planned == T0 + timedelta(hours=13)


def test_a_restart_resumes_from_the_persisted_state_without_double_firing() -> None:
    """Calling again with the persisted last_planned, at the same or a later time, fires nothing twice."""
    daemon = Daemon(Job("h", HOURLY, missed="all"), since=T0)
    for hour in range(4):
        daemon.tick(T0 + timedelta(hours=hour, seconds=2))
    before = list(daemon.fired)
    restarted = Daemon(daemon.job, since=T0)
    restarted.last_planned = daemon.last_planned
    restarted.keys = set(daemon.keys)
    restarted.tick(T0 + timedelta(hours=3, seconds=40))
    assert restarted.fired == []
    assert before == [T0 + timedelta(hours=h) for h in range(4)]


@pytest.mark.parametrize("missed", ["skip", "once", "all"])
def test_a_crash_between_enqueue_and_persist_repeats_only_keys_already_queued(missed: str) -> None:
    """If last_planned was not persisted, the next call returns the same planned instant again,
    which the (job, planned) unique key absorbs: each instant is queued once."""
    daemon = Daemon(Job("h", HOURLY, missed=missed), since=T0)
    daemon.tick(T0 + timedelta(seconds=1))
    daemon.tick(T0 + timedelta(hours=1, seconds=1))
    first = daemon.tick(T0 + timedelta(hours=2, seconds=1), persist=False)  # crash before persisting
    again = daemon.tick(T0 + timedelta(hours=2, seconds=20))  # restarted
    assert first.fire == again.fire == (T0 + timedelta(hours=2),)
    assert daemon.fired == [T0, T0 + timedelta(hours=1), T0 + timedelta(hours=2)]


def test_idle_decisions_change_nothing() -> None:
    """Between instants the decision is empty and unchanged, so the caller writes nothing."""
    decision = Planner().due(Job("h", HOURLY), last_planned=T0, now=T0 + timedelta(minutes=30), since=T0)
    assert decision == Decision((), T0) and not decision.changed and decision.missed == 0


def test_job_values_are_validated() -> None:
    """Unknown policies, negative grace and a zero catch-up bound are refused."""
    with pytest.raises(ValueError, match="missed must be one of skip, once, all"):
        Job("x", HOURLY, missed="sometimes")
    with pytest.raises(ValueError, match="grace"):
        Job("x", HOURLY, grace_s=-1)
    with pytest.raises(ValueError, match="max_catch_up"):
        Job("x", HOURLY, max_catch_up=0)
    assert Job("x", HOURLY).missed == "once" and Job("x", HOURLY).grace_s == 7200


_STEPS = st.lists(
    st.one_of(
        st.integers(1, 900).map(lambda s: timedelta(seconds=s)),  # normal progress
        st.sampled_from([timedelta(hours=2), timedelta(hours=-2), timedelta(hours=7), timedelta(minutes=-1)]),
    ),
    min_size=1,
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(steps=_STEPS, missed=st.sampled_from(["skip", "once", "all"]), interval=st.sampled_from([60, 600, 3600]))
def test_whatever_the_clock_does_no_firing_is_early_or_repeated(steps: list[timedelta], missed: str,
                                                                interval: int) -> None:
    """Under any sequence of ticks, clock steps of ±2 h and restarts, every firing is at or after
    its planned instant, after `since`, and no planned instant is returned twice."""
    daemon = Daemon(Job("j", EveryTrigger(interval, T0), missed=missed), since=T0 + timedelta(seconds=17))
    returned: list[datetime] = []
    now = T0
    for step in steps:
        now += step
        decision = daemon.tick(now)
        assert all(planned <= now for planned in decision.fire)
        assert list(decision.fire) == sorted(decision.fire)
        returned.extend(decision.fire)
    assert len(returned) == len(set(returned))
    assert all(planned >= daemon.since for planned in returned)


@pytest.mark.parametrize(
    ("place", "lat", "lon", "zone"),
    [
        ("tromso", 69.6492, 18.9553, "Europe/Oslo"),
        ("sydney", -33.8688, 151.2093, "Australia/Sydney"),
        ("apia", -13.8333, -171.7667, "Pacific/Apia"),
    ],
)
def test_a_solar_job_through_the_planner_fires_once_per_real_event_for_a_year(place: str, lat: float, lon: float,
                                                                              zone: str) -> None:
    """A daemon that sleeps until the job's next instant (as the scheduler's loop does) fires
    'sunset-15m' exactly at every sunset-15m of 2026 (none on days without a sunset, two on the
    day two fall in one date), once each."""
    tz = ZoneInfo(zone)
    trigger = SolarTrigger("sunset", -900, lat, lon, tz)
    start = datetime.combine(date(2026, 1, 1), time(0), tz)
    end = datetime.combine(date(2027, 1, 1), time(0), tz)
    daemon = Daemon(Job("porch-on", trigger), since=start)
    now = start
    while True:
        last = daemon.last_planned
        wake = trigger.next_after(max(now, last) if last else now)
        if wake is None or wake >= end:
            break
        now = wake + timedelta(milliseconds=250)  # the daemon's wake-up lag
        daemon.tick(now)
    expected = [
        instant - timedelta(minutes=15)
        for n in range(365)
        for instant in solar_events(date(2026, 1, 1) + timedelta(days=n), lat, lon, tz).events["sunset"]
        if instant - timedelta(minutes=15) >= start
    ]
    assert daemon.fired == [e for e in expected if e < end]
    assert len(daemon.fired) == len(set(daemon.fired))
    if place == "tromso":
        assert len(daemon.fired) < 365 - 50  # about two months of midnight sun


def test_exported_names() -> None:
    """The module exports exactly its public API."""
    assert set(planner_module.__all__) == {"MISSED_POLICIES", "Decision", "Job", "Planner"}


def test_a_bounded_job_is_not_caught_up_outside_its_hours() -> None:
    """A 'sunset, not after 22:00' firing missed in a power cut runs when the device is
    back within its hours, but not when it is back at 22:05 (missed = "once", grace 2 h)."""
    from edge_agent.schedule.triggers import build_trigger

    tz = ZoneInfo("Europe/Istanbul")
    trigger = build_trigger("solar", "sunset", tz=tz, latitude=41.0082, longitude=28.9784, not_before="16:00", not_after="22:00")
    job = Job("fountain-on", trigger, "once", 7200.0)
    since = datetime(2026, 6, 1, 12, tzinfo=tz)
    sunset = trigger.next_after(since)
    assert sunset is not None and sunset.astimezone(tz).hour == 20
    back_inside = Planner().due(job, last_planned=None, now=sunset + timedelta(minutes=50), since=since)
    assert back_inside.fire == (sunset,)
    back_outside = Planner().due(job, last_planned=None, now=datetime(2026, 6, 1, 22, 5, tzinfo=tz), since=since)
    assert back_outside.fire == () and back_outside.skipped == (sunset,)
    assert back_outside.last_planned == sunset  # settled: it never runs later either
