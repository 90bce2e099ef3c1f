"""Solar events (dawn, sunrise, noon, sunset, dusk and the deeper twilights) for a place.

Definitions (the contract's): sunrise and sunset are when the centre of the Sun is
0.833° below a sea-level horizon (34' standard refraction plus 16' semi-diameter, the
USNO/NOAA convention); dawn/dusk are the civil (-6°), nautical (-12°) and astronomical
(-18°) twilights of the centre, with no refraction added; noon is the transit.

How: the Sun's position is astral's (``astral.sun.elevation`` without refraction, and
the equation of time its hour angle comes from: NOAA's formulas). Each event is then
*solved* for its own instant inside its solar cycle, by a search for the crossing of
that elevation function (astral's own ``sunrise()``/``dusk()`` estimate the instant
from the declination at one moment of the date, and add refraction to every
threshold). Measured against PyEphem (``tests/test_solar_ephem.py``): within about
4 s up to 48° of latitude, the error of astral's equation of time; grazing events, where
the Sun barely crosses the altitude, magnify its few arcseconds of declination error
(18 s at 56°, 40 s at Oslo, 85 s up to 70°: see the README's known limitations).

Time is cut into *solar cycles*: cycle ``k`` runs from the lower culmination
(antitransit, local solar midnight) before its transit to the one after it. A cycle
holds at most one of each rising event (between the antitransit and the transit),
one transit, and at most one of each setting event (after the transit). That is what
makes polar day and night, and events that cross local midnight, well defined: a
cycle either has the event or says why not (``never_rises``: the Sun stays below
that altitude; ``never_sets``: it stays above), and the stream of real events is the
cycles' events in order, whatever the time zone.

Instants are rounded to the whole second: they identify firings (job, planned
instant), so recomputing one must give exactly the same value. astral reads its
datetimes to the whole second, so the search runs on whole seconds too.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from functools import lru_cache
from typing import NamedTuple

from edge_agent.durations import parse_duration

__all__ = [
    "SOLAR_EVENTS",
    "SolarDay",
    "SolarOccurrence",
    "SolarPause",
    "next_solar",
    "parse_solar_expr",
    "solar_event_of_day",
    "solar_events",
    "solar_pause",
    "sun_report",
]

SOLAR_EVENTS: tuple[str, ...] = (
    "dawn",
    "sunrise",
    "noon",
    "sunset",
    "dusk",
    "dawn_nautical",
    "dusk_nautical",
    "dawn_astronomical",
    "dusk_astronomical",
)

# Altitude of the Sun's centre (degrees) and direction of each crossing event.
_ALTITUDE = {
    "sunrise": -0.833,
    "sunset": -0.833,
    "dawn": -6.0,
    "dusk": -6.0,
    "dawn_nautical": -12.0,
    "dusk_nautical": -12.0,
    "dawn_astronomical": -18.0,
    "dusk_astronomical": -18.0,
}
_RISING = frozenset({"dawn", "sunrise", "dawn_nautical", "dawn_astronomical"})

#: reasons an event is absent from a cycle, or from a local day
NEVER_RISES = "never_rises"  # the Sun stays below the event's altitude all cycle
NEVER_SETS = "never_sets"  # the Sun stays above it
PREVIOUS_DAY = "previous_day"  # this day's event happened, before local midnight
NEXT_DAY = "next_day"  # this day's event happens after the next local midnight

_DAY_S = 86400
# astral's elevation is geocentric; the contract's altitudes (and PyEphem's) are those
# seen from the Earth's surface, lower by the Sun's horizontal parallax x cos(alt).
# Solving for geocentric altitude + parallax keeps the whole -0.833° (about 0.5 s at the
# equator, several seconds on grazing days).
_PARALLAX_DEG = 8.794 / 3600.0
# How many cycles next_solar() looks ahead: a year and a bit covers the longest
# polar night or day anywhere (astral takes latitudes beyond ±89.8° as ±89.8°).
_SEARCH_CYCLES = 372


class _Astral(NamedTuple):
    observer: Callable[[float, float], object]
    elevation: Callable[..., float]
    equation_of_time: Callable[[datetime], float]  # minutes


@lru_cache(maxsize=1)
def _astral() -> _Astral:
    """astral, imported on first use: parsing a config or ``edge-agent --help`` never needs it."""
    from astral import Observer
    from astral.julian import julianday, julianday_to_juliancentury
    from astral.sun import elevation, eq_of_time

    def equation_of_time(instant: datetime) -> float:
        # The one elevation() uses for the hour angle (not in astral.sun.__all__, but the
        # transit must be where *that* hour angle is zero, or noon and the crossings disagree).
        return float(eq_of_time(julianday_to_juliancentury(julianday(instant))))

    return _Astral(Observer, elevation, equation_of_time)


def _utc(ts: int) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


# Small: what it saves is the culminations' elevations, shared by the eight crossing
# events of a cycle (a search's own points are not asked for again).
@lru_cache(maxsize=1024)
def _elevation(ts: int, latitude: float, longitude: float) -> float:
    """astral's geometric (no refraction) elevation of the Sun's centre, degrees, at unix second ``ts``.

    Given in UTC: astral converts an aware datetime to UTC for the Sun's position and
    uses its own offset for the hour angle, so any zone gives the same angle.
    """
    return _astral().elevation(_observer(latitude, longitude), _utc(ts), with_refraction=False)


@lru_cache(maxsize=64)
def _observer(latitude: float, longitude: float) -> object:
    return _astral().observer(latitude, longitude)


@lru_cache(maxsize=8192)
def _culmination(k: int, longitude: float, lower: bool) -> float:
    """Unix time of cycle ``k``'s transit, or of the antitransit that begins cycle ``k``.

    Cycle ``k``'s transit is the one nearest 12:00 local mean time of unix day ``k``:
    where astral's hour angle, UTC time of day + longitude + equation of time, is zero.
    """
    equation_of_time = _astral().equation_of_time
    mean = k * _DAY_S + (0 if lower else _DAY_S // 2) - longitude * 240.0
    ts = mean
    for _ in range(4):
        # The equation of time changes by at most ~30 s a day, so this converges to a
        # millisecond in two or three rounds.
        step = mean - equation_of_time(_utc(math.floor(ts))) * 60.0 - ts
        ts += step
        if abs(step) < 1e-3:
            break
    return ts


class _Crossing(NamedTuple):
    ts: int | None  # unix seconds when the event happens in this cycle
    nominal: int  # ts, or when the Sun comes closest to the altitude
    reason: str | None  # NEVER_RISES / NEVER_SETS when ts is None


@lru_cache(maxsize=16384)
def _cycle_event(event: str, k: int, latitude: float, longitude: float) -> _Crossing:
    """``event`` in solar cycle ``k`` (pure, hence cached: it identifies firings)."""
    transit = _culmination(k, longitude, lower=False)
    if event == "noon":
        return _Crossing(round(transit), round(transit), None)
    rising = event in _RISING
    low = _culmination(k if rising else k + 1, longitude, lower=True)
    target = _ALTITUDE[event] + _PARALLAX_DEG * math.cos(math.radians(_ALTITUDE[event]))

    def above(ts: int) -> float:
        return _elevation(ts, latitude, longitude) - target

    high_s, low_s = round(transit), round(low)
    at_high, at_low = above(high_s), above(low_s)
    if at_high <= 0.0:
        return _Crossing(None, high_s, NEVER_RISES)
    if at_low >= 0.0:
        # Within a degree of the poles the declination's drift outruns the daily swing,
        # and the Sun can cross beyond the lower culmination, before the neighbouring
        # transit (rising: after the previous one; setting: before the next one).
        beyond = round(_culmination(k - 1 if rising else k + 1, longitude, lower=False))
        at_beyond = above(beyond)
        if at_beyond < 0.0:
            ts = _solve_crossing(above, beyond, low_s, at_beyond, at_low, (beyond + low_s) // 2)
            return _Crossing(ts, ts, None)
        return _Crossing(None, low_s, NEVER_SETS)
    # First guess: the exact crossing for a Sun of fixed declination. Then sin(alt) is
    # a + b cos(hour angle), and the ends are at hour angles 180° (low) and 0 (transit).
    sin_low, sin_high = (math.sin(math.radians(value + target)) for value in (at_low, at_high))
    cos_h = (2.0 * math.sin(math.radians(target)) - sin_high - sin_low) / (sin_high - sin_low)
    fraction = 1.0 - math.acos(max(-1.0, min(1.0, cos_h))) / math.pi  # of the way from low to transit
    ts = _solve_crossing(above, low_s, high_s, at_low, at_high, low_s + round(fraction * (high_s - low_s)))
    return _Crossing(ts, ts, None)


def _solve_crossing(f: Callable[[int], float], below: int, above: int, f_below: float, f_above: float,
                    guess: int) -> int:
    """The whole second nearest to where ``f`` (elevation minus the target, along whole
    seconds) crosses zero between ``below`` (f < 0) and ``above`` (f >= 0), either order.

    Secant steps from ``guess`` kept inside a shrinking bracket, and bisection when a
    step leaves it or the secant dawdles, so grazing events (where the elevation barely
    crosses the target) still converge.
    """
    x, last = guess, None
    for rounds in range(80):
        if abs(above - below) <= 1:
            break
        if rounds >= 12 or not min(below, above) < x < max(below, above):
            x = (below + above) // 2
        value = f(x)
        if value < 0.0:
            below, f_below = x, value
        else:
            above, f_above = x, value
        if last is not None and value != last[1]:
            step = x - value * (x - last[0]) / (value - last[1])  # secant through the last two
        else:
            step = below + (above - below) * f_below / (f_below - f_above)  # false position
        last = (x, value)
        x = round(step)
        if x in (below, above):
            # The root lies within a second of that end: test the next second inwards.
            x += 1 if (x == below) == (above > below) else -1
    # Adjacent seconds on either side of the crossing: the nearer, by interpolation.
    return above if f_below / (f_below - f_above) >= 0.5 else below


def parse_solar_expr(text: str) -> tuple[str, float]:
    """``"sunset-15m"`` -> ``("sunset", -900.0)``; ``"dusk"`` -> ``("dusk", 0.0)``.

    Raises ValueError naming the problem (unknown event, bad offset).
    """
    body = text.strip().replace(" ", "").lower()
    cut = next((i for i, char in enumerate(body) if char in "+-"), len(body))
    event, offset = body[:cut], body[cut:]
    if event not in SOLAR_EVENTS:
        raise ValueError(f"unknown solar event {event!r} in {text!r}; expected one of {', '.join(SOLAR_EVENTS)}")
    try:
        return event, parse_duration(offset, signed=True) if offset else 0.0
    except ValueError as exc:
        raise ValueError(f"bad offset in {text!r}: {exc}") from None


def _check_place(latitude: float, longitude: float) -> None:
    if not -90.0 <= latitude <= 90.0:
        raise ValueError(f"latitude must be between -90 and 90, got {latitude}")
    if not -180.0 <= longitude <= 180.0:
        raise ValueError(f"longitude must be between -180 and 180, got {longitude}")


def _check_event(event: str) -> None:
    if event not in SOLAR_EVENTS:
        raise ValueError(f"unknown solar event {event!r}; expected one of {', '.join(SOLAR_EVENTS)}")


def _aware_ts(instant: datetime, name: str) -> float:
    if instant.tzinfo is None or instant.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware, got {instant!r}")
    return instant.timestamp()


def _first_cycle(ts: float, longitude: float) -> int:
    """The cycle before the one around ``ts``: no earlier cycle has an event after ``ts``."""
    return math.floor((ts + longitude * 240.0) / _DAY_S) - 1


def next_solar(
    event: str,
    after: datetime,
    latitude: float,
    longitude: float,
    tz: tzinfo | None = None,
    offset_s: float = 0.0,
) -> datetime | None:
    """The first instant of ``event`` + ``offset_s`` strictly after ``after``, in UTC.

    Days on which the event does not happen (polar day or night) are skipped; None
    only if it does not happen within about a year. ``tz`` is accepted for symmetry
    with the other functions: the stream of real events does not depend on it.
    """
    _check_event(event)
    _check_place(latitude, longitude)
    target = _aware_ts(after, "after")
    offset = timedelta(seconds=offset_s)
    k = _first_cycle(target - offset_s, longitude)
    for _ in range(_SEARCH_CYCLES):
        crossing = _cycle_event(event, k, float(latitude), float(longitude))
        if crossing.ts is not None:
            instant = _utc(crossing.ts) + offset
            if instant > after:
                return instant
        k += 1
    return None


@dataclass(frozen=True)
class SolarPause:
    """The event does not happen in the coming cycle(s): why, and when it returns."""

    event: str
    reason: str  # NEVER_RISES or NEVER_SETS
    resumes: datetime | None  # the next real instant (with the offset), UTC; None: not within a year


def solar_pause(
    event: str, now: datetime, latitude: float, longitude: float, offset_s: float = 0.0
) -> SolarPause | None:
    """Whether the next cycle's ``event`` (+ offset) after ``now`` is missing, and until when.

    None when the event comes as usual. This is what a job shows as its reason for
    waiting (polar day: "no sunset until 2026-07-23").
    """
    _check_event(event)
    _check_place(latitude, longitude)
    target = _aware_ts(now, "now") - offset_s
    k = _first_cycle(target, longitude)
    for _ in range(4):
        crossing = _cycle_event(event, k, float(latitude), float(longitude))
        if crossing.nominal > target:
            if crossing.reason is None:
                return None
            resumes = next_solar(event, now, latitude, longitude, offset_s=offset_s)
            return SolarPause(event, crossing.reason, resumes)
        k += 1
    return None  # unreachable: every cycle's nominal instant lies inside it


def _day_bounds(day: date, tz: tzinfo) -> tuple[float, float]:
    """Unix times of the first instant of local ``day`` and of the next day."""
    # fold=0 at a midnight that does not exist (DST at 00:00) gives the pre-transition
    # offset, i.e. the transition instant itself: the first instant of that date.
    start = datetime.combine(day, time(0), tz).timestamp()
    end = datetime.combine(day + timedelta(days=1), time(0), tz).timestamp()
    return start, end


def _cycle_of_day(day: date, longitude: float, tz: tzinfo) -> int:
    """The cycle whose transit falls in local ``day`` (the one nearest its middle)."""
    start, end = _day_bounds(day, tz)
    return round(((start + end) / 2.0 + longitude * 240.0) / _DAY_S - 0.5)


@dataclass(frozen=True)
class SolarOccurrence:
    """``event`` of the solar day that belongs to a local date (its noon is on that date).

    ``instant`` may fall just before or after that date when the event crosses local
    midnight (a sunset at 00:20 belongs to the evening before). ``nominal`` is the
    instant, or, when the event does not happen, when the Sun comes closest to its
    altitude: the transit if it stays below, the lower culmination if it stays above.
    """

    event: str
    instant: datetime | None
    nominal: datetime
    reason: str | None


def solar_event_of_day(event: str, day: date, latitude: float, longitude: float, tz: tzinfo) -> SolarOccurrence:
    """``event`` of the solar day of local date ``day`` (see :class:`SolarOccurrence`)."""
    _check_event(event)
    _check_place(latitude, longitude)
    crossing = _cycle_event(event, _cycle_of_day(day, longitude, tz), float(latitude), float(longitude))
    instant = None if crossing.ts is None else _utc(crossing.ts)
    return SolarOccurrence(event, instant, _utc(crossing.nominal), crossing.reason)


@dataclass(frozen=True)
class SolarDay:
    """Every solar event inside one local civil day.

    ``events`` maps each event to the instants inside the day (local time), normally
    one; none when it does not happen that day, two on the rare day an event that
    crosses local midnight catches up with itself. ``missing`` says why for the events
    with none: ``never_rises`` / ``never_sets`` (polar night or day for that altitude),
    ``previous_day`` / ``next_day`` (this solar day's event fell on the neighbouring
    date, across local midnight).
    """

    day: date
    latitude: float
    longitude: float
    tz: tzinfo
    events: dict[str, tuple[datetime, ...]]
    missing: dict[str, str]

    def first(self, event: str) -> datetime | None:
        """The first instant of ``event`` on this day, or None."""
        instants = self.events[event]
        return instants[0] if instants else None


def solar_events(day: date, latitude: float, longitude: float, tz: tzinfo) -> SolarDay:
    """All solar events of local date ``day`` at a place, in ``tz``."""
    _check_place(latitude, longitude)
    lat, lon = float(latitude), float(longitude)
    start, end = _day_bounds(day, tz)
    own = _cycle_of_day(day, lon, tz)
    events: dict[str, tuple[datetime, ...]] = {}
    missing: dict[str, str] = {}
    for event in SOLAR_EVENTS:
        # A local day overlaps its own cycle and, across midnight, the neighbours'.
        found = []
        for k in (own - 1, own, own + 1):
            crossing = _cycle_event(event, k, lat, lon)
            if crossing.ts is not None and start <= crossing.ts < end:
                found.append(_utc(crossing.ts).astimezone(tz))
        events[event] = tuple(found)
        if not found:
            crossing = _cycle_event(event, own, lat, lon)
            if crossing.reason is not None:
                missing[event] = crossing.reason
            else:
                assert crossing.ts is not None
                missing[event] = PREVIOUS_DAY if crossing.ts < start else NEXT_DAY
    return SolarDay(day, lat, lon, tz, events, missing)


def _zone_name(tz: tzinfo) -> str:
    return str(getattr(tz, "key", None) or tz)


def sun_report(day: date, latitude: float, longitude: float, tz: tzinfo) -> dict[str, object]:
    """The ``edge-agent sun --json`` document for local date ``day``.

    ``events`` holds the first instant of each event inside the day (ISO-8601 with
    the UTC offset, to the second) or null; ``missing`` the reason for each null;
    ``additional`` (an extension of the contract) any further instants of an event on
    the same day, which only happens when an event crossing midnight catches up.
    """
    solar_day = solar_events(day, latitude, longitude, tz)
    return {
        "date": day.isoformat(),
        "timezone": _zone_name(tz),
        "latitude": solar_day.latitude,
        "longitude": solar_day.longitude,
        "events": {
            event: (None if not found else found[0].isoformat(timespec="seconds"))
            for event, found in solar_day.events.items()
        },
        "missing": dict(solar_day.missing),
        "additional": {
            event: [instant.isoformat(timespec="seconds") for instant in found[1:]]
            for event, found in solar_day.events.items()
            if len(found) > 1
        },
    }
