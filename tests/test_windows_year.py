"""Windows over a year of days, latitudes -70..70 and zones with DST and odd offsets.

The expected on-time of each local date is built here from the rule the README states,
written out per case (same day, or until the next day), not from the window code:
walking the window's own boundaries through the year must give the same intervals.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta, tzinfo
from zoneinfo import ZoneInfo

import pytest

from edge_agent.schedule.cron import wall_to_instant
from edge_agent.schedule.solar import solar_event_of_day
from edge_agent.schedule.windows import Window, parse_time_expr, window_state

# (latitude, longitude, zone): DST north and south, half- and quarter-hour offsets
PLACES = {
    "istanbul": (41.0082, 28.9784, "Europe/Istanbul"),
    "new_york": (40.7128, -74.0060, "America/New_York"),
    "oslo": (59.9139, 10.7522, "Europe/Oslo"),
    "anchorage": (61.2181, -149.9003, "America/Anchorage"),
    "tromso": (69.6492, 18.9553, "Europe/Oslo"),
    "sao_paulo": (-23.5505, -46.6333, "America/Sao_Paulo"),
    "adelaide": (-34.9285, 138.6007, "Australia/Adelaide"),
    "kathmandu": (27.7172, 85.3240, "Asia/Kathmandu"),
    "st_johns": (47.5615, -52.7126, "America/St_Johns"),
    "chatham": (-43.95, -176.55, "Pacific/Chatham"),
    "antarctic": (-70.0, 2.0, "Antarctica/Troll"),
    "arctic": (70.0, 25.0, "Europe/Oslo"),
    "equator": (0.0, 36.8, "Africa/Nairobi"),
}

# (from, until, whether the end is on the next date): the README's rule spelled out
CASES = [
    ("06:00", "sunrise", False),  # the field report: ran until tomorrow's sunrise
    ("sunset", "18:00", False),
    ("20:00", "sunset+1h", False),
    ("sunset-15m", "23:00", False),
    ("22:00", "06:00", True),
    ("dusk", "dawn", True),
    ("sunset", "02:00", True),
    ("22:00", "sunrise", True),
]


def _at(text: str, day: date, lat: float, lon: float, tz: tzinfo) -> datetime:
    expr = parse_time_expr(text)
    if hasattr(expr, "hour"):
        return wall_to_instant(datetime.combine(day, time(expr.hour, expr.minute, expr.second)), tz)
    occurrence = solar_event_of_day(expr.event, day, lat, lon, tz)  # type: ignore[union-attr]
    instant = occurrence.instant if occurrence.instant is not None else occurrence.nominal
    return instant + timedelta(seconds=expr.offset_s)  # type: ignore[union-attr]


def _expected(start: str, until: str, next_day: bool, lat: float, lon: float, tz: tzinfo, year: int) -> list[tuple[datetime, datetime]]:
    spans = []
    day = date(year, 1, 1) - timedelta(days=2)
    while day <= date(year, 12, 31) + timedelta(days=1):
        begin = _at(start, day, lat, lon, tz)
        end = _at(until, day + timedelta(days=1) if next_day else day, lat, lon, tz)
        if begin < end:
            spans.append((begin, end))
        day += timedelta(days=1)
    merged: list[tuple[datetime, datetime]] = []
    for begin, end in sorted(spans):
        if merged and begin <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((begin, end))
    return merged


def _walked(window: Window, lat: float, lon: float, tz: tzinfo, first: datetime, last: datetime) -> list[tuple[datetime, datetime]]:
    spans: list[tuple[datetime, datetime]] = []
    now = first
    opened: datetime | None = None
    while now < last:
        active, boundary = window_state(window, now, lat, lon, tz)
        if active and opened is None:
            opened = now
        if not active and opened is not None:
            spans.append((opened, now))
            opened = None
        if boundary is None:
            break
        now = boundary
    if opened is not None:
        spans.append((opened, now))
    return spans


def _clip(spans: list[tuple[datetime, datetime]], first: datetime, last: datetime) -> list[tuple[datetime, datetime]]:
    out = []
    for begin, end in spans:
        begin, end = max(begin, first), min(end, last)
        if begin < end:
            out.append((begin, end))
    return out


# Two places in the fast subset; the whole grid (-70..70, odd offsets) with the slow tests.
FAST = {"istanbul", "tromso"}


@pytest.mark.parametrize("place", [p if p in FAST else pytest.param(p, marks=pytest.mark.slow) for p in sorted(PLACES)])
@pytest.mark.parametrize(("start", "until", "next_day"), CASES)
def test_a_year_of_days_is_on_exactly_between_each_days_two_instants(place: str, start: str, until: str, next_day: bool) -> None:
    """Through 2026, a window is on from `from` to `until` of each date (the next date's
    `until` only for windows that cross midnight), and off on days when the end comes first."""
    lat, lon, zone = PLACES[place]
    tz = ZoneInfo(zone)
    window = Window("d", start, until)
    assert window.crosses_midnight is next_day
    first, last = datetime(2026, 1, 1, tzinfo=tz).astimezone(UTC), datetime(2027, 1, 1, tzinfo=tz).astimezone(UTC)
    expected = _clip(_expected(start, until, next_day, lat, lon, tz, 2026), first, last)
    walked = _clip(_walked(window, lat, lon, tz, first, last), first, last)
    assert walked == expected


@pytest.mark.slow
@pytest.mark.parametrize("place", ["istanbul", "new_york", "oslo"])
def test_a_mixed_window_is_never_on_for_most_of_a_day(place: str) -> None:
    """The field report's numbers: '06:00 until sunrise' was on 23.5 h a day; now at most
    the gap between 06:00 and sunrise (a few hours), and off on days the Sun is up first."""
    lat, lon, zone = PLACES[place]
    tz = ZoneInfo(zone)
    window = Window("d", "06:00", "sunrise")
    day = date(2026, 1, 1)
    off_days = 0
    while day.year == 2026:
        noon = wall_to_instant(datetime.combine(day, time(12)), tz)
        hours = 0
        for quarter in range(96):
            instant = noon - timedelta(hours=12) + timedelta(minutes=15 * quarter)
            hours += window_state(window, instant, lat, lon, tz)[0]
        assert hours / 4 <= 4.5, (day, hours / 4)
        off_days += hours == 0
        day += timedelta(days=1)
    assert off_days > 60  # summer: the Sun rises before 06:00


def test_the_field_reports_istanbul_query() -> None:
    """At 2026-01-15 12:00 in Istanbul, '06:00 until sunrise' is off until 06:00 tomorrow."""
    lat, lon, zone = PLACES["istanbul"]
    tz = ZoneInfo(zone)
    active, boundary = window_state(Window("d", "06:00", "sunrise"), datetime(2026, 1, 15, 12, tzinfo=tz), lat, lon, tz)
    assert not active and boundary == datetime(2026, 1, 16, 6, tzinfo=tz)
