"""Five-field cron expressions evaluated in a time zone, with explicit DST rules.

``minute hour day-of-month month day-of-week``: ``*``, values, ranges ``a-b``, lists
``a,b``, steps ``*/n`` / ``a-b/n`` / ``a/n``, names (``JAN``-``DEC``, ``SUN``-``SAT``,
any case), Sunday as 0 or 7, and the nicknames ``@yearly`` ``@annually`` ``@monthly``
``@weekly`` ``@daily`` ``@midnight`` ``@hourly``. As in Vixie cron, when both
day-of-month and day-of-week are restricted (neither starts with ``*``) a day matching
either one matches.

Daylight saving time (the rules cron users expect, which croniter and APScheduler
get wrong on fall-back):

* A job with a fixed hour (the hour field does not start with ``*``) follows the wall
  clock: a time that does not exist on spring-forward day fires once, at the first
  valid instant after the gap (02:30 -> 03:00 in New York); a time that occurs twice
  on fall-back day fires once, at its first occurrence.
* A job with a wildcard hour (``*/15 * * * *``, ``0 * * * *``) follows absolute time:
  it fires at every instant whose local time matches, so it fires in both passes of
  the repeated hour and skips the hour that does not exist.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo

__all__ = ["CronExpr", "wall_to_instant"]

_FIELDS = ("minute", "hour", "day-of-month", "month", "day-of-week")
_BOUNDS = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 7))
_MONTH_NAMES = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
_MONTHS = {name: i for i, name in enumerate(_MONTH_NAMES, 1)}
_DAYS = {name: i for i, name in enumerate(["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"])}
_NAMES: tuple[dict[str, int], ...] = ({}, {}, {}, _MONTHS, _DAYS)
_NICKNAMES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_ITEM = re.compile(r"^(?:(\*)|([0-9A-Za-z]+)(?:-([0-9A-Za-z]+))?)(?:/([0-9]+))?$")
_DAYS_IN_MONTH = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)  # February at most
# Local times of one DST shift can sit this far apart from the instants they name: a
# window wide enough for any real zone's backward step (Lord Howe 30 min, most 1 h).
_DST_MARGIN = timedelta(hours=3)
# A valid expression matches at least once in 28 years (the calendar repeats); the
# search gives up after that instead of looping.
_SEARCH_LIMIT = timedelta(days=366 * 28)


def _parse_value(text: str, field: int) -> int:
    names = _NAMES[field]
    if text.isdigit():
        value = int(text)
    elif text.upper() in names:
        value = names[text.upper()]
    else:
        raise ValueError(f"{text!r} is not a number{' or a name' if names else ''}")
    low, high = _BOUNDS[field]
    if not low <= value <= high:
        raise ValueError(f"{value} is out of range {low}-{high}")
    return value


def _parse_field(text: str, field: int) -> frozenset[int]:
    low, high = _BOUNDS[field]
    values: set[int] = set()
    for item in text.split(","):
        match = _ITEM.match(item)
        if not match:
            raise ValueError(f"cannot read {item!r}")
        star, first, last, step_text = match.groups()
        step = int(step_text) if step_text else 1
        if step == 0:
            raise ValueError(f"step 0 in {item!r}")
        if star:
            start, stop = low, high
        else:
            start = _parse_value(first, field)
            # "5/15" means 5, 20, 35, 50 (from the value to the end), as in Vixie cron.
            stop = _parse_value(last, field) if last else (high if step_text else start)
            if stop < start:
                raise ValueError(f"range {item!r} runs backwards")
        values.update(range(start, stop + 1, step))
    if field == 4 and 7 in values:  # Sunday is 0 or 7
        values.discard(7)
        values.add(0)
    return frozenset(values)


@dataclass(frozen=True)
class CronExpr:
    """A parsed cron expression; build one with :meth:`parse`."""

    text: str
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday
    any_day: bool  # day-of-month starts with "*"
    any_weekday: bool  # day-of-week starts with "*"
    wall_clock: bool  # fixed hour: DST handled on the wall clock (see the module docstring)

    @classmethod
    def parse(cls, text: str) -> CronExpr:
        """Parse ``text``; ValueError names the field that is wrong and why."""
        spec = text.strip()
        if spec.startswith("@"):
            if spec.lower() not in _NICKNAMES:
                raise ValueError(f"cron {text!r}: unknown nickname; expected one of {', '.join(_NICKNAMES)}")
            spec = _NICKNAMES[spec.lower()]
        parts = spec.split()
        if len(parts) != 5:
            raise ValueError(
                f"cron {text!r}: expected 5 fields (minute hour day-of-month month day-of-week), got {len(parts)}"
            )
        sets = []
        for index, part in enumerate(parts):
            try:
                sets.append(_parse_field(part, index))
            except ValueError as exc:
                raise ValueError(f"cron {text!r}: bad {_FIELDS[index]} field {part!r}: {exc}") from None
        minutes, hours, days, months, weekdays = sets
        any_day, any_weekday = parts[2].startswith("*"), parts[4].startswith("*")
        if not any_day and any_weekday and not any(day <= _DAYS_IN_MONTH[m - 1] for m in months for day in days):
            raise ValueError(f"cron {text!r}: bad day-of-month field {parts[2]!r}: no such day in the months given")
        return cls(text, minutes, hours, days, months, weekdays, any_day, any_weekday, not parts[1].startswith("*"))

    def __str__(self) -> str:
        return self.text

    def _day_matches(self, day: date) -> bool:
        if day.month not in self.months:
            return False
        in_month = day.day in self.days
        in_week = day.isoweekday() % 7 in self.weekdays
        if self.any_day or self.any_weekday:
            return in_month and in_week
        return in_month or in_week

    def next_after(self, after: datetime, tz: tzinfo) -> datetime:
        """The first firing strictly after ``after``, in UTC (``after`` must be aware)."""
        if after.tzinfo is None or after.utcoffset() is None:
            raise ValueError(f"after must be timezone-aware, got {after!r}")
        local_after = after.astimezone(tz).replace(tzinfo=None, fold=0)
        best: datetime | None = None
        for wall in _WallTimes(self, local_after - _DST_MARGIN):
            if best is not None and wall > best.astimezone(tz).replace(tzinfo=None) + _DST_MARGIN:
                break
            if wall - local_after > _SEARCH_LIMIT:
                raise ValueError(f"cron {self.text!r} never matches")
            for instant in self._instants(wall, tz):
                if instant > after and (best is None or instant < best):
                    best = instant
        assert best is not None  # the loop only ends on a match or by raising
        return best

    def _instants(self, wall: datetime, tz: tzinfo) -> list[datetime]:
        """The UTC instants at which local time ``wall`` makes this job fire."""
        first = wall.replace(tzinfo=tz, fold=0).astimezone(UTC)
        second = wall.replace(tzinfo=tz, fold=1).astimezone(UTC)
        exists = first.astimezone(tz).replace(tzinfo=None) == wall
        if not exists:  # in a spring-forward gap
            return [_gap_end(second, first, tz)] if self.wall_clock else []
        if self.wall_clock or first == second:
            return [first]
        return [first, second]  # ambiguous, wildcard hour: both passes


def wall_to_instant(wall: datetime, tz: tzinfo) -> datetime:
    """The UTC instant of naive local time ``wall`` in ``tz``, by the wall-clock rules:
    its first occurrence when the clocks repeat it, the first valid instant after the
    gap when they skip it (02:30 on spring-forward day in New York -> 03:00 EDT)."""
    first = wall.replace(tzinfo=tz, fold=0).astimezone(UTC)
    if first.astimezone(tz).replace(tzinfo=None) == wall.replace(fold=0):
        return first
    return _gap_end(wall.replace(tzinfo=tz, fold=1).astimezone(UTC), first, tz)


def _gap_end(before: datetime, after: datetime, tz: tzinfo) -> datetime:
    """The transition instant in (before, after]: the first valid local time after a gap.

    ``before`` and ``after`` are the two readings of a wall time inside the gap (with
    the offset in force after the gap, which gives the earlier instant, then with the
    one before it); the offset changes exactly once between them.
    """
    low, high = before, after
    offset = before.astimezone(tz).utcoffset()
    while high - low > timedelta(seconds=1):
        middle = low + (high - low) / 2
        if middle.astimezone(tz).utcoffset() == offset:
            low = middle
        else:
            high = middle
    # low < transition <= high < low + 1 s, and transitions fall on whole seconds.
    return high.replace(microsecond=0)


class _WallTimes:
    """Iterates the naive local times >= start (to the minute) that match the fields."""

    def __init__(self, expr: CronExpr, start: datetime) -> None:
        self._expr = expr
        self._next = start.replace(second=0, microsecond=0)
        if self._next < start:
            self._next += timedelta(minutes=1)

    def __iter__(self) -> _WallTimes:
        return self

    def __next__(self) -> datetime:
        expr, current = self._expr, self._next
        while True:
            if current.month not in expr.months:
                first_of_next = (current.replace(day=28) + timedelta(days=4)).replace(day=1)
                current = datetime.combine(first_of_next.date(), time(0))
                continue
            if not expr._day_matches(current.date()):
                current = datetime.combine(current.date() + timedelta(days=1), time(0))
                continue
            if current.hour not in expr.hours:
                later = [h for h in expr.hours if h > current.hour]
                if not later:
                    current = datetime.combine(current.date() + timedelta(days=1), time(0))
                    continue
                current = current.replace(hour=min(later), minute=0)
            if current.minute not in expr.minutes:
                later = [m for m in expr.minutes if m > current.minute]
                if not later:
                    current = current.replace(minute=0) + timedelta(hours=1)
                    continue
                current = current.replace(minute=min(later))
            self._next = current + timedelta(minutes=1)
            return current
