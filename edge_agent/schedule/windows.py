"""Desired-state windows: "on from sunset-15m until 23:00", evaluated for any instant.

A window is a pair of time expressions, each a local wall time (``"23:00"``) or a
solar event with an optional offset (``"sunset-15m"``, ``"dawn"``). Unlike a job it has
a state at every instant, so the daemon can restore it at start-up, after an outage
or when the clock becomes trusted, and re-apply it at each boundary.

How a window is laid on the calendar (each rule chosen so the common cases read
naturally and odd days stay sane):

* Every local date D has one occurrence, from ``from`` on D to ``until`` on D, or on
  D+1 when the window *crosses midnight*. Whether it does is fixed per window and
  depends only on what is written, never on the date:

  - two clock times cross midnight when ``until`` is not after ``from``
    ("22:00 until 06:00");
  - otherwise (at least one solar time) the window crosses midnight when ``from`` is
    at or after noon and ``until`` at or before noon, each read at its equinox time
    (dawn 05:30, sunrise 06:00, noon 12:00, sunset 18:00, dusk 18:30, nautical
    05:00/19:00, astronomical 04:30/19:30) plus its offset: "dusk until dawn",
    "sunset until 02:00", "22:00 until sunrise" and "dusk until noon" cross midnight;
    "sunset-15m until 23:00", "06:00 until sunrise" and "20:00 until sunset+1h" do not,
    nor does "sunset until 13:00", which is therefore never on (``edge-agent check``
    warns about a window that is off on every day of the coming year).

  On a day when the end does not come after the start, the window is off all day:
  "06:00 until sunrise" is off on summer days when the Sun rises before 06:00, and
  "sunset-15m until 23:00" is off when sunset-15m is after 23:00 (summer in the far
  north). A window is never on for a whole day because its end fell before its start.
* A solar boundary on D is the event of D's solar day (the one whose noon is on D), so
  a sunset at 00:20 belongs to the evening before, as people count it.
* When the event does not happen that day (polar day or night), the boundary is the
  moment the Sun comes closest to it: its highest point when it stays below the
  event's altitude, its lowest when it stays above. Hence, during the midnight sun,
  "sunset-15m until 23:00" is off (closest approach is around local midnight) and
  "dusk until dawn" is off; during polar night "dusk until dawn" is on all day and
  "sunset-15m until 23:00" is on from about noon.
* A wall time that does not exist (spring forward) means the first instant after the
  gap; one that occurs twice (fall back) means the first occurrence, as for cron.
* An occurrence covers [start, end); one whose end is not after its start is empty.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, tzinfo
from functools import lru_cache

from edge_agent.durations import format_duration
from edge_agent.schedule.cron import wall_to_instant
from edge_agent.schedule.solar import parse_solar_expr, solar_event_of_day

__all__ = ["ClockTime", "SolarTime", "TimeExpr", "Window", "parse_time_expr", "window_state"]

_CLOCK = re.compile(r"^(\d{1,2}):(\d{2})(?::(\d{2}))?$")
_NOON = 12 * 60
# Equinox-day local times (minutes) used only to decide whether a window crosses midnight.
_TYPICAL_MINUTES = {
    "dawn_astronomical": 270,
    "dawn_nautical": 300,
    "dawn": 330,
    "sunrise": 360,
    "noon": 720,
    "sunset": 1080,
    "dusk": 1110,
    "dusk_nautical": 1140,
    "dusk_astronomical": 1170,
}
# An offset that moves a boundary by more than half a day would make "the event of
# date D" meaningless; nobody means "sunset+20h".
_MAX_OFFSET_S = 12 * 3600
# How far ahead a window's next boundary is looked for: beyond a year it never changes.
_SEARCH_DAYS = 400


@dataclass(frozen=True)
class ClockTime:
    """A local wall time, ``HH:MM`` or ``HH:MM:SS``."""

    hour: int
    minute: int
    second: int = 0

    def __str__(self) -> str:
        return f"{self.hour:02d}:{self.minute:02d}" + (f":{self.second:02d}" if self.second else "")

    def _typical_minutes(self) -> float:
        return self.hour * 60 + self.minute + self.second / 60


@dataclass(frozen=True)
class SolarTime:
    """A solar event plus a signed offset in seconds, e.g. ``sunset-15m``."""

    event: str
    offset_s: float = 0.0

    def __str__(self) -> str:
        if not self.offset_s:
            return self.event
        return f"{self.event}{'+' if self.offset_s > 0 else ''}{format_duration(self.offset_s)}"

    def _typical_minutes(self) -> float:
        return _TYPICAL_MINUTES[self.event] + self.offset_s / 60


TimeExpr = ClockTime | SolarTime


def parse_time_expr(text: str) -> TimeExpr:
    """``"23:00"`` -> :class:`ClockTime`; ``"sunset-15m"`` -> :class:`SolarTime`.

    Raises ValueError naming the problem.
    """
    if not isinstance(text, str):
        raise ValueError(f"expected a local time like '23:00' or a solar time like 'sunset-15m', got {text!r}")
    body = text.strip()
    match = _CLOCK.match(body)
    if match:
        hour, minute, second = int(match[1]), int(match[2]), int(match[3] or 0)
        if hour > 23 or minute > 59 or second > 59:
            raise ValueError(f"{text!r} is not a time of day (00:00 to 23:59)")
        return ClockTime(hour, minute, second)
    if body[:1].isdigit():
        raise ValueError(f"expected a local time like '23:00', got {text!r}")
    try:
        event, offset = parse_solar_expr(body)
    except ValueError as exc:
        raise ValueError(f"expected a local time like '23:00' or a solar time like 'sunset-15m': {exc}") from None
    if abs(offset) > _MAX_OFFSET_S:
        raise ValueError(f"the offset in {text!r} is more than 12h")
    return SolarTime(event, offset)


@dataclass(frozen=True)
class Window:
    """``device`` is held in the window's state from ``start`` until ``until``.

    ``start``/``until`` may be given as text; they are parsed (ValueError if bad).
    """

    device: str
    start: TimeExpr
    until: TimeExpr

    def __init__(self, device: str, start: TimeExpr | str, until: TimeExpr | str) -> None:
        first = parse_time_expr(start) if isinstance(start, str) else start
        last = parse_time_expr(until) if isinstance(until, str) else until
        if first == last:
            raise ValueError(f"a window from {first} until {last} is empty: from and until are the same")
        object.__setattr__(self, "device", device)
        object.__setattr__(self, "start", first)
        object.__setattr__(self, "until", last)

    @property
    def crosses_midnight(self) -> bool:
        """Whether each occurrence ends on the next local date (see the module docstring)."""
        if isinstance(self.start, ClockTime) and isinstance(self.until, ClockTime):
            return self.until._typical_minutes() <= self.start._typical_minutes()
        return self.start._typical_minutes() >= _NOON and self.until._typical_minutes() <= _NOON

    def describe(self) -> str:
        """``"sunset-15m until 23:00"``."""
        return f"{self.start} until {self.until}"


def _resolve(expr: TimeExpr, day: date, latitude: float | None, longitude: float | None, tz: tzinfo) -> datetime:
    """The instant of ``expr`` on local date ``day``, in UTC."""
    if isinstance(expr, ClockTime):
        return wall_to_instant(datetime.combine(day, time(expr.hour, expr.minute, expr.second)), tz)
    if latitude is None or longitude is None:
        raise ValueError(f"the solar time {expr} needs a location (latitude and longitude)")
    occurrence = solar_event_of_day(expr.event, day, latitude, longitude, tz)
    instant = occurrence.instant if occurrence.instant is not None else occurrence.nominal
    return instant + timedelta(seconds=expr.offset_s)


@lru_cache(maxsize=4096)
def _occurrence(
    window: Window, day: date, latitude: float | None, longitude: float | None, tz: tzinfo
) -> tuple[datetime, datetime] | None:
    """Window day ``day``'s [start, end), or None when it is empty.

    Pure in its arguments, hence cached: the daemon asks about the same few days at
    every boundary."""
    start = _resolve(window.start, day, latitude, longitude, tz)
    until_day = day + timedelta(days=1) if window.crosses_midnight else day
    end = _resolve(window.until, until_day, latitude, longitude, tz)
    return (start, end) if start < end else None


def _days_from(first: date) -> Iterator[date]:
    for n in range(_SEARCH_DAYS):
        yield first + timedelta(days=n)


def window_state(
    window: Window, now: datetime, latitude: float | None, longitude: float | None, tz: tzinfo
) -> tuple[bool, datetime | None]:
    """(whether ``now`` is inside the window, when that changes next in UTC or None).

    None as the boundary means the state does not change within about a year.
    """
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError(f"now must be timezone-aware, got {now!r}")
    # An occurrence of date D starts no earlier than D 00:00 - 13 h (a -12 h offset and
    # an event slipping across midnight) and ends by D+2 13:00, so the ones that can
    # hold `now` belong to the three dates before today, today and tomorrow.
    first_day = now.astimezone(tz).date() - timedelta(days=3)
    days = [first_day + timedelta(days=n) for n in range(5)]
    spans = [_occurrence(window, day, latitude, longitude, tz) for day in days]
    containing = [span[1] for span in spans if span is not None and span[0] <= now < span[1]]
    if containing:
        # Active until the last overlapping occurrence ends with no later one begun
        # (polar night can chain them for weeks).
        end = max(containing)
        for day in _days_from(first_day):
            if datetime.combine(day, time(0), tz) - timedelta(days=1) > end:
                return True, end
            span = _occurrence(window, day, latitude, longitude, tz)
            if span is not None and span[0] <= end:
                end = max(end, span[1])
        return True, None
    upcoming: datetime | None = None
    for day in _days_from(first_day):
        if upcoming is not None and datetime.combine(day, time(0), tz) - timedelta(days=1) > upcoming:
            break
        span = _occurrence(window, day, latitude, longitude, tz)
        if span is not None and span[0] > now and (upcoming is None or span[0] < upcoming):
            upcoming = span[0]
    return False, upcoming
