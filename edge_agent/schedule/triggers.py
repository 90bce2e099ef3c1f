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
from datetime import UTC, datetime, timedelta, tzinfo

from edge_agent.durations import format_duration, parse_duration
from edge_agent.schedule.cron import CronExpr, wall_to_instant
from edge_agent.schedule.solar import SOLAR_EVENTS, next_solar, parse_solar_expr, solar_pause

__all__ = [
    "AtTrigger",
    "CronTrigger",
    "EveryTrigger",
    "SolarTrigger",
    "Trigger",
    "build_trigger",
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
    anchor: datetime | None = None,
) -> Trigger:
    """The trigger for a job's config: ``kind`` is the key (solar, cron, every, at).

    ``solar`` takes an event name, optionally with its offset (``"sunset-15m"``; not
    both that and ``offset_s``) and needs the location; ``cron`` runs in ``tz``;
    ``every`` takes a duration and fires on the grid ``anchor + k * interval``
    (default anchor: local midnight of 2000-01-01 in ``tz``, so ``every 15m`` fires at
    :00, :15, ...); ``at`` takes ISO-8601, local time of ``tz`` when it has no offset.
    Raises ValueError with a message fit for a config error.
    """
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
    if kind == "cron":
        return CronTrigger(CronExpr.parse(value), tz)
    if kind == "every":
        interval = parse_duration(value)
        if interval <= 0:
            raise ValueError(f"every needs a positive interval, got {value!r}")
        start = anchor if anchor is not None else wall_to_instant(datetime(2000, 1, 1), tz)
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
