"""Triggers: solar, cron, every and at, their descriptions, waiting reasons and the config factory."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.schedule import triggers
from edge_agent.schedule.cron import CronExpr
from edge_agent.schedule.solar import next_solar, solar_events
from edge_agent.schedule.triggers import (
    AtTrigger,
    CronTrigger,
    EveryTrigger,
    SolarTrigger,
    build_trigger,
    next_firings,
)

OSLO = ZoneInfo("Europe/Oslo")
TROMSO = (69.6492, 18.9553)
ISTANBUL = ZoneInfo("Europe/Istanbul")


def test_solar_trigger_describes_itself_with_its_offset() -> None:
    """The description reads like the config: event, then a signed offset if any."""
    assert SolarTrigger("sunset", -900, 41.0, 29.0, ISTANBUL).describe() == "sunset-15m"
    assert SolarTrigger("sunrise", 5400, 41.0, 29.0, ISTANBUL).describe() == "sunrise+1h30m"
    assert SolarTrigger("noon", 0, 41.0, 29.0, ISTANBUL).describe() == "noon"


def test_solar_trigger_fires_at_the_event_plus_offset() -> None:
    """sunset-15m in Istanbul on 2026-06-01 is 15 minutes before that day's sunset."""
    trigger = SolarTrigger("sunset", -900, 41.0082, 28.9784, ISTANBUL)
    day = solar_events(datetime(2026, 6, 1).date(), 41.0082, 28.9784, ISTANBUL)
    sunset = day.first("sunset")
    assert sunset is not None
    assert trigger.next_after(datetime(2026, 6, 1, 6, tzinfo=UTC)) == sunset - timedelta(minutes=15)
    assert trigger.waiting_reason(datetime(2026, 6, 1, 6, tzinfo=UTC)) is None


def test_polar_day_waiting_reason_names_the_date_of_the_next_sunset() -> None:
    """During Tromsø's midnight sun a sunset job says it waits, and until which local date;
    its next firing is that first sunset (minus the offset)."""
    trigger = SolarTrigger("sunset", -900, *TROMSO, OSLO)
    now = datetime(2026, 6, 1, 12, tzinfo=UTC)
    assert trigger.waiting_reason(now) == "no sunset until 2026-07-26"
    first = trigger.next_after(now)
    assert first is not None
    sunset = first + timedelta(minutes=15)
    assert sunset.astimezone(OSLO).date().isoformat() == "2026-07-26"
    assert solar_events(sunset.astimezone(OSLO).date(), *TROMSO, OSLO).events["sunset"] == (sunset,)
    # Once the sun sets again the job fires every day and no longer waits.
    assert trigger.waiting_reason(datetime(2026, 8, 10, tzinfo=UTC)) is None


def test_polar_night_waiting_reason_names_the_return_of_the_sun() -> None:
    """In Tromsø's polar night a sunrise job waits until mid January."""
    trigger = SolarTrigger("sunrise", 0, *TROMSO, OSLO)
    reason = trigger.waiting_reason(datetime(2026, 12, 10, tzinfo=UTC))
    assert reason is not None and reason.startswith("no sunrise until 2027-01-1")
    nxt = trigger.next_after(datetime(2026, 12, 10, tzinfo=UTC))
    assert nxt is not None and reason == f"no sunrise until {nxt.astimezone(OSLO).date().isoformat()}"


def test_cron_trigger_runs_in_its_zone() -> None:
    """cron '0 23 * * *' in Istanbul is 20:00 UTC and describes itself with its expression."""
    trigger = CronTrigger(CronExpr.parse("0 23 * * *"), ISTANBUL)
    assert trigger.describe() == "cron 0 23 * * *"
    assert trigger.next_after(datetime(2026, 1, 1, tzinfo=UTC)) == datetime(2026, 1, 1, 20, tzinfo=UTC)
    assert trigger.waiting_reason(datetime(2026, 1, 1, tzinfo=UTC)) is None


@settings(max_examples=200, deadline=None)
@given(
    interval_us=st.integers(1, 10**11),
    after_us=st.integers(-(10**12), 10**15),
)
def test_every_fires_exactly_on_the_anchor_grid(interval_us: int, after_us: int) -> None:
    """The next firing is anchor + k * interval for the smallest k >= 0 that is after `after`."""
    anchor = datetime(2026, 1, 1, 0, 0, 0, 123456, tzinfo=UTC)
    trigger = EveryTrigger(interval_us / 1e6, anchor)
    after = anchor + timedelta(microseconds=after_us)
    nxt = trigger.next_after(after)
    assert nxt is not None and nxt > after and nxt >= anchor
    step = timedelta(microseconds=round(interval_us / 1e6 * 1e6))
    assert (nxt - anchor) % step == timedelta(0)
    assert nxt - step <= after or nxt == anchor


def test_every_does_not_drift_over_a_hundred_thousand_firings() -> None:
    """Firing number 100000 of 'every 7.3s' is exactly 730000 s after the anchor."""
    anchor = datetime(2026, 3, 1, tzinfo=UTC)
    trigger = EveryTrigger(7.3, anchor)
    instant = anchor
    for _ in range(100_000):
        nxt = trigger.next_after(instant)
        assert nxt is not None
        instant = nxt
    assert instant - anchor == timedelta(seconds=730_000)
    assert trigger.describe() == "every 7.3s"
    assert EveryTrigger(5400, anchor).describe() == "every 1h30m"


def test_every_keeps_absolute_time_across_dst() -> None:
    """'every 1d' keeps its UTC time: local midnight in winter is 01:00 in summer."""
    trigger = build_trigger("every", "1d", tz=OSLO)
    winter = trigger.next_after(datetime(2026, 1, 10, 12, tzinfo=UTC))
    summer = trigger.next_after(datetime(2026, 7, 10, 12, tzinfo=UTC))
    assert winter is not None and summer is not None
    assert winter.astimezone(OSLO).hour == 0 and summer.astimezone(OSLO).hour == 1


def test_every_default_anchor_is_aligned_to_the_local_clock() -> None:
    """'every 15m' without an anchor fires on the quarter hours of the local clock."""
    trigger = build_trigger("every", "15m", tz=ZoneInfo("Asia/Kolkata"))  # UTC+05:30
    fired = next_firings(trigger, datetime(2026, 5, 5, 10, 7, tzinfo=UTC), 4)
    assert [f.astimezone(ZoneInfo("Asia/Kolkata")).minute for f in fired] == [45, 0, 15, 30]


def test_at_fires_once() -> None:
    """An at trigger fires at its instant and never again."""
    instant = datetime(2026, 12, 1, 7, 0, tzinfo=ZoneInfo("Europe/Paris"))
    trigger = AtTrigger(instant)
    assert trigger.next_after(datetime(2026, 1, 1, tzinfo=UTC)) == datetime(2026, 12, 1, 6, 0, tzinfo=UTC)
    assert trigger.next_after(instant) is None
    assert trigger.describe() == "at 2026-12-01T07:00:00+01:00"
    assert trigger.waiting_reason(instant) == "2026-12-01T07:00:00+01:00 has passed"
    assert next_firings(trigger, datetime(2026, 1, 1, tzinfo=UTC), 5) == [instant]


def test_build_trigger_reads_at_times_with_and_without_offset() -> None:
    """'at' without an offset is local time of the zone; a time in the spring gap is the gap's end."""
    paris = ZoneInfo("Europe/Paris")
    local = build_trigger("at", "2026-12-01T07:00", tz=paris)
    assert local.describe() == "at 2026-12-01T07:00:00+01:00"
    explicit = build_trigger("at", "2026-12-01T07:00:00Z", tz=paris)
    assert explicit.next_after(datetime(2026, 1, 1, tzinfo=UTC)) == datetime(2026, 12, 1, 7, tzinfo=UTC)
    gap = build_trigger("at", "2026-03-29T02:30", tz=paris)
    assert gap.next_after(datetime(2026, 1, 1, tzinfo=UTC)) == datetime(2026, 3, 29, 1, 0, tzinfo=UTC)


def test_build_trigger_accepts_an_inline_solar_offset() -> None:
    """solar = "sunset-15m" equals solar = "sunset" with offset -900 s."""
    inline = build_trigger("solar", "sunset-15m", tz=ISTANBUL, latitude=41.0, longitude=29.0)
    separate = build_trigger("solar", "sunset", offset_s=-900, tz=ISTANBUL, latitude=41.0, longitude=29.0)
    assert inline == separate
    after = datetime(2026, 2, 2, tzinfo=UTC)
    assert inline.next_after(after) == next_solar("sunset", after, 41.0, 29.0, offset_s=-900)


@pytest.mark.parametrize(
    ("kind", "value", "extra", "message"),
    [
        ("solar", "sunsett", {}, "unknown solar event 'sunsett'"),
        ("solar", "sunset", {"latitude": None}, "need the \\[location\\] latitude and longitude"),
        ("solar", "sunset", {"latitude": 95.0}, "latitude must be between -90 and 90"),
        ("solar", "sunset-15m", {"offset_s": -600.0}, "offset is given twice"),
        ("cron", "0 25 * * *", {}, "bad hour field"),
        ("cron", "0 23 * * *", {"offset_s": 60.0}, "offset only applies to solar"),
        ("every", "0s", {}, "positive interval"),
        ("every", "soon", {}, "expected a duration"),
        ("at", "next tuesday", {}, "ISO-8601"),
        ("weekly", "x", {}, "unknown trigger kind 'weekly'"),
    ],
)
def test_build_trigger_refuses_bad_values_with_a_clear_message(kind: str, value: str, extra: dict[str, object],
                                                                message: str) -> None:
    """Bad config values raise ValueError saying what is wrong."""
    kwargs: dict[str, object] = {"tz": ISTANBUL, "latitude": 41.0, "longitude": 29.0, **extra}
    with pytest.raises(ValueError, match=message):
        build_trigger(kind, value, **kwargs)  # type: ignore[arg-type]


def test_next_firings_lists_successive_instants() -> None:
    """next_firings gives `count` strictly increasing firings."""
    trigger = build_trigger("cron", "*/10 * * * *", tz=ISTANBUL)
    fired = next_firings(trigger, datetime(2026, 1, 1, 0, 5, tzinfo=UTC), 3)
    assert fired == [datetime(2026, 1, 1, 0, m, tzinfo=UTC) for m in (10, 20, 30)]


def test_exported_names() -> None:
    """The module exports exactly its public API."""
    assert set(triggers.__all__) == {
        "AtTrigger", "BoundedTrigger", "CronTrigger", "EveryTrigger", "SolarTrigger", "Trigger", "build_trigger",
        "default_every_anchor", "job_trigger", "next_firings",
    }


@pytest.mark.parametrize("zone", ["Europe/Istanbul", "America/Sao_Paulo", "Asia/Kathmandu", "Australia/Adelaide"])
def test_every_fires_on_the_local_clock_in_zones_whose_offset_changed_since_2000(zone: str) -> None:
    """'every 1d' fires at midnight and 'every 6h' at 00/06/12/18 local standard time all
    year, also where the offset of 2000-01-01 is not today's (Istanbul +02 then, +03 now;
    Sao Paulo had summer time then)."""
    tz = ZoneInfo(zone)
    daily = build_trigger("every", "1d", tz=tz)
    six = build_trigger("every", "6h", tz=tz)
    day = datetime(2026, 1, 3, 12, tzinfo=UTC)
    for _ in range(0, 365, 9):
        fired = daily.next_after(day)
        assert fired is not None
        local_fired = fired.astimezone(tz)
        summer = bool(local_fired.dst())
        assert (local_fired.hour, local_fired.minute) == ((1, 0) if summer else (0, 0)), local_fired
        hours = sorted({f.astimezone(tz).hour - (1 if f.astimezone(tz).dst() else 0) for f in next_firings(six, day, 4)})
        assert hours == [0, 6, 12, 18]
        day += timedelta(days=9)


def test_every_takes_an_anchor() -> None:
    """anchor = '03:00' moves the grid: 'every 6h' at 03/09/15/21; an ISO anchor is an instant."""
    tz = ZoneInfo("Europe/Istanbul")
    six = build_trigger("every", "6h", tz=tz, anchor="03:00")
    assert [f.astimezone(tz).hour for f in next_firings(six, datetime(2026, 5, 5, 0, 30, tzinfo=tz), 4)] == [3, 9, 15, 21]
    iso = build_trigger("every", "90m", tz=tz, anchor="2026-05-05T00:10")
    assert next_firings(iso, datetime(2026, 5, 5, 0, 30, tzinfo=tz), 1) == [datetime(2026, 5, 5, 1, 40, tzinfo=tz)]
    with pytest.raises(ValueError, match="anchor must be"):
        build_trigger("every", "1h", tz=tz, anchor="soon")
    with pytest.raises(ValueError, match="anchor only applies to every"):
        build_trigger("cron", "* * * * *", tz=tz, anchor="03:00")


def test_bounded_triggers_skip_firings_outside_their_hours() -> None:
    """'sunset-15m, not after 23:00' in Tromso does not fire on the late-sunset days and
    fires as usual on the others; a wrapped range (22:00..02:00) keeps the night only."""
    tz = ZoneInfo("Europe/Oslo")
    plain = build_trigger("solar", "sunset-15m", tz=tz, latitude=69.6492, longitude=18.9553)
    bounded = build_trigger("solar", "sunset-15m", tz=tz, latitude=69.6492, longitude=18.9553,
                            not_before="12:00", not_after="23:00")
    start = datetime(2026, 1, 1, tzinfo=tz)
    every_plain = next_firings(plain, start, 400)
    every_bounded = next_firings(bounded, start, 400)
    inside = [f for f in every_plain if time(12) <= f.astimezone(tz).time() <= time(23)]
    assert every_bounded[: len(inside) - 1] == inside[: len(inside) - 1]
    assert len(inside) < len(every_plain)  # there are late sunsets to skip
    assert all(time(12) <= f.astimezone(tz).time() <= time(23) for f in every_bounded)
    assert "only 12:00-23:00" in bounded.describe()
    night = build_trigger("cron", "0 * * * *", tz=tz, not_before="22:00", not_after="02:00")
    hours = [f.astimezone(tz).hour for f in next_firings(night, datetime(2026, 3, 20, 12, tzinfo=tz), 10)]
    assert hours == [22, 23, 0, 1, 2, 22, 23, 0, 1, 2]
    with pytest.raises(ValueError, match="not_after must be a local time"):
        build_trigger("cron", "0 * * * *", tz=tz, not_after="late")
