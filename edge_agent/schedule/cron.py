"""Five-field cron expressions evaluated in a time zone, with explicit DST rules.

``minute hour day-of-month month day-of-week``: ``*``, values, ranges ``a-b``, lists
``a,b``, steps ``*/n`` / ``a-b/n`` / ``a/n``, names (``JAN``-``DEC``, ``SUN``-``SAT``,
any case), Sunday as 0 or 7, and the nicknames ``@yearly`` ``@annually`` ``@monthly``
``@weekly`` ``@daily`` ``@midnight`` ``@hourly``. As in Vixie cron, when both
day-of-month and day-of-week are restricted (neither starts with ``*``) a day matching
either one matches.

Also, spelled as in cronsim, croniter and Quartz (they may stand in a list with plain
values, e.g. ``1,L``):

* day-of-month ``L``: the last day of the month; ``LW``: its last weekday (Mon-Fri);
  ``15W``: the weekday nearest the 15th, within the month (Saturday the 15th -> Friday
  the 14th, Sunday -> Monday 16th; ``1W`` on a Saturday -> Monday the 3rd); a month
  without that day has none;
* day-of-week ``5L``: the last Friday of the month; ``5#3``: its third Friday (``#1`` to
  ``#5``; a month without a fifth Friday has none). Sunday is 0 or 7, names work too
  (``FRI#3``, ``SUNL``).

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
from typing import Any

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


_MONTH_DAY_SPECIAL = re.compile(r"^(?:(L)|(LW)|([0-9]{1,2})W)$", re.IGNORECASE)
_WEEKDAY_SPECIAL = re.compile(r"^([0-9A-Za-z]+?)(?:(L)|#([0-9]+))$", re.IGNORECASE)


def _parse_special(item: str, field: int) -> tuple[Any, ...] | None:
    """``L``, ``LW``, ``15W`` (day-of-month) or ``5L``, ``5#3`` (day-of-week) as a tuple; None otherwise."""
    if field == 2:
        match = _MONTH_DAY_SPECIAL.match(item)
        if not match:
            return None
        if match[1]:
            return ("L",)
        if match[2]:
            return ("LW",)
        return ("W", _parse_value(match[3], field))
    if field == 4:
        match = _WEEKDAY_SPECIAL.match(item)
        if not match:
            return None
        weekday = _parse_value(match[1], field) % 7
        if match[2]:
            return ("L", weekday)
        nth = int(match[3])
        if not 1 <= nth <= 5:
            raise ValueError(f"#{nth} in {item!r}: a month has a first to a fifth of each weekday (#1 to #5)")
        return ("#", weekday, nth)
    return None


def _special_matches(special: tuple[Any, ...], day: date) -> bool:
    """Whether ``day`` is the day a ``L``/``LW``/``W``/``L``/``#`` item names in its month."""
    last = (day.replace(day=28) + timedelta(days=4)).replace(day=1) - timedelta(days=1)
    kind = special[0]
    if len(special) == 1 and kind == "L":
        return day == last
    if kind == "LW":
        return day == last - timedelta(days=max(0, last.weekday() - 4))
    if kind == "W":
        if special[1] > last.day:
            return False
        target = day.replace(day=special[1])
        if target.weekday() == 5:  # Saturday: Friday before, or Monday after when that is the 1st
            target += timedelta(days=-1 if target.day > 1 else 2)
        elif target.weekday() == 6:  # Sunday: Monday after, or Friday before at the month's end
            target += timedelta(days=1 if target.day < last.day else -2)
        return day == target
    weekday = special[1]
    if day.isoweekday() % 7 != weekday:
        return False
    if kind == "L":
        return day + timedelta(days=7) > last
    return (day.day - 1) // 7 + 1 == special[2]


def _parse_field(text: str, field: int) -> frozenset[int]:
    return _parse_field_items(text, field)[0]


def _parse_field_items(text: str, field: int) -> tuple[frozenset[int], frozenset[tuple[Any, ...]]]:
    """A field's plain values and its special items (see the module docstring)."""
    low, high = _BOUNDS[field]
    values: set[int] = set()
    specials: set[tuple[Any, ...]] = set()
    for item in text.split(","):
        special = _parse_special(item, field)
        if special is not None:
            specials.add(special)
            continue
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
    return frozenset(values), frozenset(specials)


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
    day_specials: frozenset[tuple[Any, ...]] = frozenset()  # L, LW, nW
    weekday_specials: frozenset[tuple[Any, ...]] = frozenset()  # dL, d#n

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
        sets, specials = [], []
        for index, part in enumerate(parts):
            try:
                values, extra = _parse_field_items(part, index)
            except ValueError as exc:
                raise ValueError(f"cron {text!r}: bad {_FIELDS[index]} field {part!r}: {exc}") from None
            sets.append(values)
            specials.append(extra)
        minutes, hours, days, months, weekdays = sets
        any_day, any_weekday = parts[2].startswith("*"), parts[4].startswith("*")
        longest = max(_DAYS_IN_MONTH[m - 1] for m in months)
        possible = (any(day <= longest for day in days)
                    or any(item[0] in ("L", "LW") or item[1] <= longest for item in specials[2]))
        if not any_day and any_weekday and not possible:
            raise ValueError(f"cron {text!r}: bad day-of-month field {parts[2]!r}: no such day in the months given")
        return cls(text, minutes, hours, days, months, weekdays, any_day, any_weekday, not parts[1].startswith("*"),
                   specials[2], specials[4])

    def __str__(self) -> str:
        return self.text

    def _day_matches(self, day: date) -> bool:
        if day.month not in self.months:
            return False
        in_month = day.day in self.days or any(_special_matches(item, day) for item in self.day_specials)
        in_week = day.isoweekday() % 7 in self.weekdays or any(_special_matches(item, day) for item in self.weekday_specials)
        if self.any_day or self.any_weekday:
            return in_month and in_week
        return in_month or in_week

    def next_after(self, after: datetime, tz: tzinfo) -> datetime:
        """The first firing strictly after ``after``, in UTC (``after`` must be aware)."""
        if after.tzinfo is None or after.utcoffset() is None:
            raise ValueError(f"after must be timezone-aware, got {after!r}")
        local_after = after.astimezone(tz).replace(tzinfo=None, fold=0)
        quick = self._next_without_transition(after, local_after, tz)
        if quick is not None:
            return quick
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

    def _next_without_transition(self, after: datetime, local_after: datetime, tz: tzinfo) -> datetime | None:
        """The next firing when the UTC offset is the same from ``after`` - 3 h to + 3 h and
        the firing is inside that span; None otherwise (then the general search decides).

        No zone changes its offset twice within 6 hours, so equal offsets at both ends
        mean no change in between: local time and instants then run in step, and the
        first matching wall time after ``local_after`` is the answer. This keeps a
        frequent job (``* * * * *``) from walking 6 hours of minutes for every firing."""
        low, high = after - _DST_MARGIN, after + _DST_MARGIN
        offset = low.astimezone(tz).utcoffset()
        if offset is None or high.astimezone(tz).utcoffset() != offset:
            return None
        wall = next(_WallTimes(self, local_after + timedelta(microseconds=1)))
        instant = (wall - offset).replace(tzinfo=UTC)
        return instant if after < instant <= high else None

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
        self._give_up = start + _SEARCH_LIMIT

    def __iter__(self) -> _WallTimes:
        return self

    def __next__(self) -> datetime:
        expr, current = self._expr, self._next
        while True:
            if current > self._give_up:  # e.g. "0 0 * 2 1#5 ..." that no calendar within 28 years has
                raise ValueError(f"cron {expr.text!r} never matches")
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
