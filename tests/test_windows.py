"""Desired-state windows: parsing, state at any instant, midnight, DST and polar days."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from edge_agent.schedule import windows
from edge_agent.schedule.solar import solar_events
from edge_agent.schedule.windows import ClockTime, SolarTime, Window, parse_time_expr, window_state

ISTANBUL = (41.0082, 28.9784, ZoneInfo("Europe/Istanbul"))
TROMSO = (69.6492, 18.9553, ZoneInfo("Europe/Oslo"))
NEW_YORK = ZoneInfo("America/New_York")


def local(text: str, tz: ZoneInfo) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=tz)


def test_parse_time_expr_reads_clock_and_solar_times() -> None:
    """'23:00' is a wall time, 'sunset-15m' a solar event with a signed offset."""
    assert parse_time_expr("23:00") == ClockTime(23, 0)
    assert parse_time_expr(" 7:05 ") == ClockTime(7, 5)
    assert parse_time_expr("06:30:15") == ClockTime(6, 30, 15)
    assert parse_time_expr("sunset-15m") == SolarTime("sunset", -900.0)
    assert parse_time_expr("dusk") == SolarTime("dusk", 0.0)
    assert str(parse_time_expr("sunrise+1h30m")) == "sunrise+1h30m" and str(ClockTime(6, 5)) == "06:05"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("24:00", "not a time of day"),
        ("12:60", "not a time of day"),
        ("12h", "local time like '23:00'"),
        ("sunsett", "unknown solar event 'sunsett'"),
        ("sunset+13h", "more than 12h"),
        ("", "unknown solar event ''"),
    ],
)
def test_parse_time_expr_refuses_bad_text(text: str, message: str) -> None:
    """Bad expressions raise ValueError saying what is wrong."""
    with pytest.raises(ValueError, match=message):
        parse_time_expr(text)


def test_a_window_needs_two_different_boundaries() -> None:
    """from and until may be text; identical ones are refused."""
    window = Window("porch_light", "sunset-15m", "23:00")
    assert window.start == SolarTime("sunset", -900.0) and window.until == ClockTime(23, 0)
    assert window.describe() == "sunset-15m until 23:00"
    with pytest.raises(ValueError, match="from and until are the same"):
        Window("x", "22:00", "22:00")


@pytest.mark.parametrize(
    ("start", "until", "crosses"),
    [
        ("22:00", "06:00", True),
        ("06:00", "22:00", False),
        ("sunset-15m", "23:00", False),
        ("dusk", "dawn", True),
        ("sunrise", "sunset", False),
        ("sunset", "01:00", True),
        ("sunset+7h", "02:00", True),
        ("06:00", "sunrise", False),
        ("sunset", "18:00", False),
        ("20:00", "sunset+1h", False),
        ("22:00", "sunrise", True),
        ("dusk", "noon", True),
        ("sunset", "12:00", True),
        ("sunset", "13:00", False),
    ],
)
def test_crossing_midnight_is_decided_by_what_is_written(start: str, until: str, crosses: bool) -> None:
    """Two clock times cross midnight when `until` is not after `from`; with a solar time,
    when `from` is in the afternoon and `until` in the morning (equinox times)."""
    assert Window("d", start, until).crosses_midnight is crosses


def test_the_issue_example_on_a_winter_evening() -> None:
    """'sunset-15m until 23:00' in Istanbul: at 20:00 on, until 23:00; at 23:30 off, until the
    next day's sunset-15m; at noon off until today's."""
    lat, lon, tz = ISTANBUL
    window = Window("porch_light", "sunset-15m", "23:00")
    assert window_state(window, local("2026-01-15T20:00", tz), lat, lon, tz) == (True, local("2026-01-15T23:00", tz))
    tomorrow = solar_events(date(2026, 1, 16), lat, lon, tz).first("sunset")
    assert tomorrow is not None
    assert window_state(window, local("2026-01-15T23:30", tz), lat, lon, tz) == (False, tomorrow - timedelta(minutes=15))
    today = solar_events(date(2026, 1, 15), lat, lon, tz).first("sunset")
    assert today is not None
    assert window_state(window, local("2026-01-15T12:00", tz), lat, lon, tz) == (False, today - timedelta(minutes=15))
    # Exactly at the boundaries: [start, end).
    assert window_state(window, today - timedelta(minutes=15), lat, lon, tz)[0] is True
    assert window_state(window, local("2026-01-15T23:00", tz), lat, lon, tz)[0] is False


def test_a_window_across_midnight() -> None:
    """'22:00 until 06:00' is on at 23:00 and at 03:00 until 06:00, off at 07:00 until 22:00."""
    tz = ZoneInfo("Europe/London")
    window = Window("heater", "22:00", "06:00")
    assert window_state(window, local("2026-02-10T23:00", tz), None, None, tz) == (True, local("2026-02-11T06:00", tz))
    assert window_state(window, local("2026-02-11T03:00", tz), None, None, tz) == (True, local("2026-02-11T06:00", tz))
    assert window_state(window, local("2026-02-11T07:00", tz), None, None, tz) == (False, local("2026-02-11T22:00", tz))


def test_windows_follow_the_wall_clock_through_dst() -> None:
    """On New York's fall-back night '22:00 until 06:00' lasts 9 real hours; on spring-forward
    a boundary inside the gap moves to the gap's end (03:00 EDT)."""
    window = Window("heater", "22:00", "06:00")
    active, end = window_state(window, local("2026-10-31T23:00", NEW_YORK), None, None, NEW_YORK)
    assert active and end == datetime(2026, 11, 1, 11, 0, tzinfo=UTC)  # 06:00 EST
    gap = Window("pump", "01:30", "02:30")
    active, end = window_state(gap, local("2026-03-08T01:45", NEW_YORK), None, None, NEW_YORK)
    assert active and end == datetime(2026, 3, 8, 7, 0, tzinfo=UTC)  # 03:00 EDT
    assert end.astimezone(NEW_YORK).strftime("%H:%M%z") == "03:00-0400"


def test_midnight_sun_keeps_a_sunset_window_off_until_sunsets_come_before_23_00() -> None:
    """In Tromsø's midnight sun 'sunset-15m until 23:00' is off; it first turns on on the first
    evening whose sunset-15m is before 23:00 (early August), not on the late sunsets after midnight."""
    lat, lon, tz = TROMSO
    window = Window("porch_light", "sunset-15m", "23:00")
    active, boundary = window_state(window, local("2026-06-21T22:30", tz), lat, lon, tz)
    assert active is False and boundary is not None
    day = boundary.astimezone(tz).date()
    sunset = solar_events(day, lat, lon, tz).first("sunset")
    assert sunset is not None and boundary == sunset - timedelta(minutes=15)
    assert boundary.astimezone(tz).hour == 22
    assert date(2026, 7, 28) <= day <= date(2026, 8, 5)
    # The evening before, sunset-15m was at or after 23:00: that occurrence was empty.
    before = solar_events(day - timedelta(days=1), lat, lon, tz).first("sunset")
    assert before is None or (before - timedelta(minutes=15)).astimezone(tz).hour >= 23 or \
        (before - timedelta(minutes=15)).astimezone(tz).date() > day - timedelta(days=1)


def test_polar_night_treats_missing_sunsets_as_dark_all_day() -> None:
    """In Tromsø's polar night the sun never rises: 'sunset-15m until 23:00' is on from about noon."""
    lat, lon, tz = TROMSO
    window = Window("porch_light", "sunset-15m", "23:00")
    assert window_state(window, local("2026-12-21T13:00", tz), lat, lon, tz) == (True, local("2026-12-21T23:00", tz))
    active, start = window_state(window, local("2026-12-21T09:00", tz), lat, lon, tz)
    assert active is False and start is not None and 11 <= start.astimezone(tz).hour <= 12


def test_dusk_until_dawn_is_off_through_the_midnight_sun() -> None:
    """The sun never goes 6° below the horizon at midsummer in Tromsø: no dusk, the window stays off."""
    lat, lon, tz = TROMSO
    active, boundary = window_state(Window("lamp", "dusk", "dawn"), local("2026-06-21T23:59", tz), lat, lon, tz)
    assert active is False and boundary is not None and boundary.astimezone(tz).month == 8


def test_solar_windows_need_a_location() -> None:
    """A solar boundary without latitude and longitude is a ValueError, a clock one is fine."""
    with pytest.raises(ValueError, match="needs a location"):
        window_state(Window("x", "sunset", "23:00"), datetime(2026, 1, 1, tzinfo=UTC), None, None, UTC)
    with pytest.raises(ValueError, match="timezone-aware"):
        window_state(Window("x", "22:00", "23:00"), datetime(2026, 1, 1), None, None, UTC)


@pytest.mark.parametrize(
    ("start", "until", "place"),
    [
        ("sunset-15m", "23:00", "istanbul"),
        ("22:00", "06:00", "new_york"),
        ("dusk", "dawn", "tromso"),
        ("sunset-15m", "23:00", "tromso"),
        ("sunrise+30m", "sunset", "new_york"),
    ],
)
def test_a_year_of_states_and_boundaries_agree(start: str, until: str, place: str) -> None:
    """Sampled through 2026, the state holds until the reported boundary and flips exactly there."""
    lat, lon, tz = {
        "istanbul": ISTANBUL,
        "tromso": TROMSO,
        "new_york": (40.7128, -74.0060, NEW_YORK),
    }[place]
    window = Window("d", start, until)
    now = datetime(2026, 1, 1, tzinfo=UTC)
    flips = 0
    while now.year == 2026:
        active, boundary = window_state(window, now, lat, lon, tz)
        assert boundary is not None and boundary > now
        assert window_state(window, boundary - timedelta(microseconds=1), lat, lon, tz)[0] is active
        assert window_state(window, boundary, lat, lon, tz)[0] is not active
        flips += 1
        now += timedelta(hours=7, minutes=13)
    assert flips > 1000


def test_exported_names() -> None:
    """The module exports exactly its public API."""
    assert set(windows.__all__) == {"ClockTime", "SolarTime", "TimeExpr", "Window", "parse_time_expr", "window_state"}
