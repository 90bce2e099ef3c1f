"""When a job fires: solar, cron, every and at triggers behind one small interface.

A trigger answers "the next firing strictly after instant T" (aware datetimes, UTC
out), so the daemon computes the next instant and waits for it instead of sleeping
and checking. The instants are deterministic (whole seconds for solar, exact grid
points for intervals): the planner identifies each firing by (job, planned instant).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, timezone, tzinfo
from typing import Any

from edge_agent.durations import format_duration, parse_duration
from edge_agent.schedule.cron import CronExpr, wall_to_instant
from edge_agent.schedule.solar import SOLAR_EVENTS, next_solar, parse_solar_expr, solar_pause

__all__ = [
    "AtTrigger",
    "BoundedTrigger",
    "CronTrigger",
    "EveryTrigger",
    "SolarTrigger",
    "Trigger",
    "build_trigger",
    "default_every_anchor",
    "job_trigger",
    "next_firings",
]

_MICROSECOND = timedelta(microseconds=1)


def _require_aware(instant: datetime, name: str) -> None:
    if instant.tzinfo is None or instant.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware, got {instant!r}")


class Trigger(ABC):
    """The instants at which a job fires."""

    @abstractmethod
    def next_after(self, after: datetime) -> datetime | None:
        """The first firing strictly after ``after`` (aware), in UTC; None if there is none."""

    @abstractmethod
    def describe(self) -> str:
        """How the trigger reads in the config and in ``edge-agent jobs``."""

    def waiting_reason(self, now: datetime) -> str | None:
        """Why the job is not firing on its usual rhythm after ``now``, or None."""
        return None


@dataclass(frozen=True)
class SolarTrigger(Trigger):
    """A solar event plus a signed offset, e.g. ``sunset`` and -900 s."""

    event: str
    offset_s: float
    latitude: float
    longitude: float
    tz: tzinfo

    def __post_init__(self) -> None:
        if self.event not in SOLAR_EVENTS:
            raise ValueError(f"unknown solar event {self.event!r}; expected one of {', '.join(SOLAR_EVENTS)}")
        if not -90.0 <= self.latitude <= 90.0:
            raise ValueError(f"latitude must be between -90 and 90, got {self.latitude}")
        if not -180.0 <= self.longitude <= 180.0:
            raise ValueError(f"longitude must be between -180 and 180, got {self.longitude}")

    def next_after(self, after: datetime) -> datetime | None:
        return next_solar(self.event, after, self.latitude, self.longitude, self.tz, self.offset_s)

    def describe(self) -> str:
        if not self.offset_s:
            return self.event
        return f"{self.event}{'+' if self.offset_s > 0 else ''}{format_duration(self.offset_s)}"

    def waiting_reason(self, now: datetime) -> str | None:
        """E.g. ``"no sunset until 2026-07-23"`` during the midnight sun (local date)."""
        pause = solar_pause(self.event, now, self.latitude, self.longitude, self.offset_s)
        if pause is None:
            return None
        if pause.resumes is None:
            return f"no {self.event} within a year at this latitude"
        event_day = (pause.resumes - timedelta(seconds=self.offset_s)).astimezone(self.tz).date()
        return f"no {self.event} until {event_day.isoformat()}"


@dataclass(frozen=True)
class CronTrigger(Trigger):
    """A five-field cron expression in a time zone (see :mod:`.cron` for DST)."""

    expr: CronExpr
    tz: tzinfo

    def next_after(self, after: datetime) -> datetime | None:
        return self.expr.next_after(after, self.tz)

    def describe(self) -> str:
        return f"cron {self.expr.text}"


@dataclass(frozen=True)
class EveryTrigger(Trigger):
    """Every ``interval_s`` seconds: exactly at ``anchor + k * interval`` for k >= 0.

    Computed from the anchor, never from the previous run, so it cannot drift. The
    interval is absolute time: ``every 1d`` keeps its UTC time across DST.
    """

    interval_s: float
    anchor: datetime

    def __post_init__(self) -> None:
        if not self.interval_s > 0 or not math.isfinite(self.interval_s):
            raise ValueError(f"an interval must be positive, got {self.interval_s!r}")
        if round(self.interval_s * 1e6) < 1:
            raise ValueError(f"an interval must be at least a microsecond, got {self.interval_s!r}")
        _require_aware(self.anchor, "anchor")

    def next_after(self, after: datetime) -> datetime | None:
        _require_aware(after, "after")
        # Integer microseconds keep anchor + k * interval exact for any k.
        step = round(self.interval_s * 1e6)
        elapsed = (after - self.anchor) // _MICROSECOND
        k = max(0, elapsed // step + 1)
        return (self.anchor + timedelta(microseconds=k * step)).astimezone(UTC)

    def describe(self) -> str:
        if self.interval_s != int(self.interval_s):  # format_duration speaks whole seconds
            return f"every {self.interval_s:g}s"
        return f"every {format_duration(self.interval_s)}"


@dataclass(frozen=True)
class AtTrigger(Trigger):
    """Once, at ``instant``."""

    instant: datetime

    def __post_init__(self) -> None:
        _require_aware(self.instant, "instant")

    def next_after(self, after: datetime) -> datetime | None:
        _require_aware(after, "after")
        return self.instant.astimezone(UTC) if self.instant > after else None

    def describe(self) -> str:
        return f"at {self.instant.isoformat(timespec='seconds')}"

    def waiting_reason(self, now: datetime) -> str | None:
        return None if self.instant > now else f"{self.instant.isoformat(timespec='seconds')} has passed"


@dataclass(frozen=True)
class BoundedTrigger(Trigger):
    """Another trigger's firings whose local wall time is within [not_before, not_after].

    Either bound may be None (no bound that side). When ``not_before`` is later than
    ``not_after`` the allowed part of the day wraps midnight (``22:00``..``02:00``).
    A firing outside is skipped, never moved: "sunset-15m, not after 23:00" does not
    fire on the summer days when sunset-15m is after 23:00.
    """

    inner: Trigger
    not_before: time | None
    not_after: time | None
    tz: tzinfo

    def allows(self, instant: datetime) -> bool:
        wall = instant.astimezone(self.tz).time().replace(tzinfo=None)
        low, high = self.not_before, self.not_after
        if low is not None and high is not None and low > high:
            return wall >= low or wall <= high
        return (low is None or wall >= low) and (high is None or wall <= high)

    def _next_allowed_start(self, instant: datetime) -> datetime:
        """The first instant at or after ``instant`` (which is outside the bounds) that is inside."""
        local = instant.astimezone(self.tz)
        day: date = local.date()
        if self.not_before is None:  # only an upper bound: allowed again from midnight
            return wall_to_instant(datetime.combine(day + timedelta(days=1), time(0)), self.tz)
        if local.time().replace(tzinfo=None) >= self.not_before:
            day += timedelta(days=1)
        return wall_to_instant(datetime.combine(day, self.not_before), self.tz)

    def next_after(self, after: datetime) -> datetime | None:
        instant = self.inner.next_after(after)
        # Each pass moves to the next allowed part of a day: ~2 passes a day skipped.
        for _ in range(2000):
            if instant is None or self.allows(instant):
                return instant
            resume = self._next_allowed_start(instant)
            if resume <= instant:  # a repeated wall time at fall-back: just move on
                resume = instant + _MICROSECOND
            instant = self.inner.next_after(resume - _MICROSECOND)
        return None

    def describe(self) -> str:
        low = self.not_before.isoformat(timespec="minutes") if self.not_before else None
        high = self.not_after.isoformat(timespec="minutes") if self.not_after else None
        if low and high:
            bound = f"only {low}-{high}"
        else:
            bound = f"not before {low}" if low else f"not after {high}"
        return f"{self.inner.describe()}, {bound}"

    def waiting_reason(self, now: datetime) -> str | None:
        return self.inner.waiting_reason(now)


def default_every_anchor(tz: tzinfo, now: datetime | None = None, wall: time = time(0)) -> datetime:
    """The origin of an ``every`` grid: ``wall`` (default midnight) on 2000-01-01 at the
    zone's *standard* UTC offset in force today (its offset less any summer time).

    Today's standard offset, not the one the zone had in 2000: Istanbul (+02 then, +03
    now) and Sao Paulo (summer time then, none now) would otherwise fire an hour off
    all year. In summer time the grid stays put in UTC, so a daily job at midnight
    standard time fires at 01:00 summer time.
    """
    moment = (now or datetime.now(UTC)).astimezone(tz)
    standard = (moment.utcoffset() or timedelta(0)) - (moment.dst() or timedelta(0))
    return datetime.combine(date(2000, 1, 1), wall, timezone(standard))


def _parse_anchor(text: str, tz: tzinfo) -> datetime:
    """``"HH:MM"`` (a wall time, standard offset) or ISO-8601 (local to ``tz`` without an offset)."""
    text = text.strip()
    try:
        if len(text) <= 8 and ":" in text and "T" not in text and "-" not in text:
            return default_every_anchor(tz, wall=time.fromisoformat(text))
        instant = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"anchor must be a time like '03:00' or an ISO-8601 date-time, got {text!r}") from None
    return instant if instant.tzinfo is not None else wall_to_instant(instant, tz)


def _parse_wall_time(text: str, what: str) -> time:
    """``"23:00"`` -> time(23, 0); ValueError naming ``what`` otherwise."""
    try:
        if not isinstance(text, str) or ":" not in text:
            raise ValueError
        return time.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"{what} must be a local time like '23:00', got {text!r}") from None


def next_firings(trigger: Trigger, after: datetime, count: int) -> list[datetime]:
    """Up to ``count`` successive firings strictly after ``after`` (for ``edge-agent jobs``)."""
    firings: list[datetime] = []
    while len(firings) < count:
        instant = trigger.next_after(firings[-1] if firings else after)
        if instant is None:
            break
        firings.append(instant)
    return firings


def build_trigger(
    kind: str,
    value: str,
    *,
    tz: tzinfo,
    offset_s: float = 0.0,
    latitude: float | None = None,
    longitude: float | None = None,
    anchor: datetime | str | None = None,
    not_before: str | None = None,
    not_after: str | None = None,
) -> Trigger:
    """The trigger for a job's config: ``kind`` is the key (solar, cron, every, at).

    ``solar`` takes an event name, optionally with its offset (``"sunset-15m"``; not
    both that and ``offset_s``) and needs the location; ``cron`` runs in ``tz``;
    ``every`` takes a duration and fires on the grid ``anchor + k * interval``
    (default anchor: :func:`default_every_anchor`, midnight standard time, so ``every
    15m`` fires at :00, :15, ... and ``every 6h`` at 00, 06, 12, 18 standard time, an hour
    later on the wall clock in summer time; ``anchor`` may be
    ``"HH:MM"`` or ISO-8601); ``at`` takes ISO-8601, local time of ``tz`` when it has no
    offset. ``not_before``/``not_after`` (``"HH:MM"``) skip firings outside those local
    times (:class:`BoundedTrigger`). Raises ValueError with a message fit for a config error.
    """
    trigger = _build(kind, value, tz=tz, offset_s=offset_s, latitude=latitude, longitude=longitude, anchor=anchor)
    if not_before is None and not_after is None:
        return trigger
    low = _parse_wall_time(not_before, "not_before") if not_before is not None else None
    high = _parse_wall_time(not_after, "not_after") if not_after is not None else None
    if low is not None and low == high:
        raise ValueError(f"not_before and not_after are both {not_before!r}: that allows one instant a day")
    return BoundedTrigger(trigger, low, high, tz)


def job_trigger(job: Any, location: Any) -> Trigger:
    """The trigger of a ``[[jobs]]`` entry (config.JobSpec) at a ``[location]``: the one
    place that turns a job's keys into a trigger, for the daemon, ``check`` and ``jobs``."""
    return build_trigger(job.kind, job.value, tz=location.tz, offset_s=job.offset, latitude=location.latitude,
                         longitude=location.longitude, anchor=job.anchor, not_before=job.not_before,
                         not_after=job.not_after)


def _build(
    kind: str,
    value: str,
    *,
    tz: tzinfo,
    offset_s: float,
    latitude: float | None,
    longitude: float | None,
    anchor: datetime | str | None,
) -> Trigger:
    if not isinstance(value, str):
        raise ValueError(f"{kind} must be a string, got {value!r}")
    if kind == "solar":
        if latitude is None or longitude is None:
            raise ValueError("solar triggers need the [location] latitude and longitude")
        event, inline_offset = parse_solar_expr(value)
        if inline_offset and offset_s:
            raise ValueError(f"the offset is given twice: in {value!r} and as offset")
        return SolarTrigger(event, inline_offset or offset_s, float(latitude), float(longitude), tz)
    if offset_s:
        raise ValueError(f"offset only applies to solar triggers, not to {kind}")
    if anchor is not None and kind != "every":
        raise ValueError(f"anchor only applies to every, not to {kind}")
    if kind == "cron":
        return CronTrigger(CronExpr.parse(value), tz)
    if kind == "every":
        interval = parse_duration(value)
        if interval <= 0:
            raise ValueError(f"every needs a positive interval, got {value!r}")
        if isinstance(anchor, str):
            start = _parse_anchor(anchor, tz)
        else:
            start = anchor if anchor is not None else default_every_anchor(tz)
        return EveryTrigger(interval, start)
    if kind == "at":
        try:
            instant = datetime.fromisoformat(value.strip())
        except ValueError:
            raise ValueError(f"at needs an ISO-8601 time like '2026-12-01T07:00' or with an offset, got {value!r}") from None
        if instant.tzinfo is None:
            instant = wall_to_instant(instant, tz).astimezone(tz)
        return AtTrigger(instant)
    raise ValueError(f"unknown trigger kind {kind!r}; expected solar, cron, every or at")
