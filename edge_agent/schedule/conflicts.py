"""Schedules that do not do what they seem to: on/off job pairs whose order changes
during the year, and windows that are never on.

"porch-on at sunset-15m" and "porch-off at 23:00" work until sunset-15m comes after
23:00 (summer above ~60°): then off fires first, on after it, and the light stays on
until 23:00 the next day. ``edge-agent check`` looks a year ahead for such pairs and
warns; a bounded job (``not_before``/``not_after``) or a ``[[windows]]`` table fixes it.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import date, datetime, timedelta
from typing import Any

from edge_agent.schedule.triggers import Trigger, job_trigger
from edge_agent.schedule.windows import Window, window_state

__all__ = ["empty_windows", "order_changes", "schedule_warnings"]

# A job that fires more often than this (every minute...) is not a daily on/off pair, and
# is not walked through a year: that would cost seconds of CPU on a Pi.
_MIN_GAP = timedelta(hours=3)
_MAX_FIRINGS = 3000


def _switches_on(value: Any) -> bool | None:
    """True/False for a gpio.set value that turns an output on/off; None if unclear."""
    if isinstance(value, str):
        return {"on": True, "off": False, "true": True, "false": False}.get(value.strip().lower())
    if isinstance(value, bool | int | float):
        return bool(value)
    return None


def _last_per_day(trigger: Trigger, start: datetime, end: datetime, tz: Any) -> dict[date, datetime] | None:
    last: dict[date, datetime] = {}
    instant: datetime | None = start
    previous: datetime | None = None
    for _ in range(_MAX_FIRINGS):
        instant = trigger.next_after(instant)  # type: ignore[arg-type]
        if instant is None or instant >= end:
            return last
        if previous is not None and instant - previous < _MIN_GAP and len(last) < 2:
            return None  # fires several times an hour: not an on/off pair
        previous = instant
        local = instant.astimezone(tz)
        last[local.date()] = local
    return None


def order_changes(settings: Any, start: datetime, days: int = 366) -> list[str]:
    """One warning per (on job, off job) pair for a device whose order on a day is not
    the same on every day from ``start`` for ``days`` days (both firing that day)."""
    loc = settings.location
    end = start + timedelta(days=days)
    by_device: dict[str, dict[bool, list[Any]]] = defaultdict(lambda: {True: [], False: []})
    for spec in settings.jobs:
        if spec.action != "gpio.set" or not isinstance(spec.args.get("device"), str):
            continue
        on = _switches_on(spec.args.get("value"))
        if on is not None:
            by_device[spec.args["device"]][on].append(spec)
    warnings = []
    walked: dict[str, dict[date, datetime] | None] = {}

    def days_of(job: Any) -> dict[date, datetime] | None:
        if job.name not in walked:
            walked[job.name] = _last_per_day(job_trigger(job, loc), start, end, loc.tz)
        return walked[job.name]

    for device, sides in sorted(by_device.items()):
        for on_job in sides[True]:
            on_days = days_of(on_job)
            for off_job in sides[False]:
                off_days = days_of(off_job)
                if on_days is None or off_days is None:
                    continue
                both = sorted(set(on_days) & set(off_days))
                on_last = [d for d in both if on_days[d] > off_days[d]]
                if not on_last or len(on_last) == len(both):
                    continue
                odd = on_last if len(on_last) <= len(both) / 2 else [d for d in both if d not in on_last]
                first, second, result = ((on_job, off_job, f"{device} stays on until {off_job.name}'s next firing")
                                         if odd is on_last else (off_job, on_job, f"{device} stays off until {on_job.name}'s next firing"))
                warnings.append(
                    f"jobs {on_job.name!r} and {off_job.name!r} switch {device!r} on and off, but on {len(odd)} of "
                    f"{len(both)} days of the next year (first {odd[0].isoformat()}) {first.name!r} fires after "
                    f"{second.name!r}, so {result}. Bound {on_job.name!r} with not_before/not_after, or hold "
                    f"{device!r} with a [[windows]] table instead of two jobs."
                )
    return warnings


def empty_windows(settings: Any, start: datetime) -> list[str]:
    """One warning per window that is off on every day of the year from ``start``."""
    loc = settings.location
    warnings = []
    for spec in settings.windows:
        window = Window(spec.device, spec.start, spec.until)
        active, boundary = window_state(window, start, loc.latitude, loc.longitude, loc.tz)
        if not active and boundary is None:
            warnings.append(
                f"window {spec.device!r} from {spec.start} until {spec.until} is off on every day of the next year: it "
                f"ends on the day it starts unless from is at or after 12:00 and until at or before 12:00 (by equinox "
                f"times), and that end comes before the start. For an overnight window, end it by 12:00.")
    return warnings


def schedule_warnings(settings: Any, start: datetime) -> list[str]:
    """What ``edge-agent check`` warns about, and the daemon logs once after start-up."""
    return order_changes(settings, start) + empty_windows(settings, start)
