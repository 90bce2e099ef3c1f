"""Solar events (dawn, sunrise, noon, sunset, dusk and the deeper twilights) for a place.

Definitions (the contract's): sunrise and sunset are when the centre of the Sun is
0.833° below a sea-level horizon (34' standard refraction plus 16' semi-diameter, the
USNO/NOAA convention); dawn/dusk are the civil (-6°), nautical (-12°) and astronomical
(-18°) twilights of the centre, with no refraction added; noon is the transit.

How: the Sun's position comes from Meeus' low-precision solar theory (the one behind
NOAA's calculator and astral) plus the main lunar and planetary perturbations it
leaves out, which brings it from ~35" to ~3" of the VSOP87 longitude; each event is
then *solved* for its own instant (rather than estimated from the declination at
noon), with ΔT and the Sun's parallax included. Measured against PyEphem over 2026:
within about 2 s up to 60° of latitude and 10 s up to 70°, grazing days included
(there the Sun barely crosses the altitude and any error is magnified).

Time is cut into *solar cycles*: cycle ``k`` runs from the lower culmination
(antitransit, local solar midnight) before its transit to the one after it. A cycle
holds at most one of each rising event (between the antitransit and the transit),
one transit, and at most one of each setting event (after the transit). That is what
makes polar day and night, and events that cross local midnight, well defined: a
cycle either has the event or says why not (``never_rises``: the Sun stays below
that altitude; ``never_sets``: it stays above), and the stream of real events is the
cycles' events in order, whatever the time zone.

Instants are rounded to the whole second: they identify firings (job, planned
instant), so recomputing one must give exactly the same value.
"""

from __future__ import annotations

import math
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

_DAY_S = 86400.0
_UNIX_JD = 2440587.5
_J2000 = 2451545.0
# TT - UT1 is about 69 s around 2026 and drifts by well under a second a year; it
# shifts the Sun's position by ~0.0008°, far below the 15 s budget, but costs nothing.
_DELTA_T_S = 69.2
# The Sun's horizontal parallax: the topocentric altitude is lower by this x cos(alt).
_PARALLAX_DEG = 8.794 / 3600.0
_OMEGA = 2.0 * math.pi / _DAY_S  # hour angle rate relative to the Sun, rad/s
# How many cycles next_solar() looks ahead: a year and a bit covers the longest
# polar night or day anywhere but within a degree or so of the poles.
_SEARCH_CYCLES = 372

# The lunar and planetary perturbations of the Sun's longitude that the low-precision
# theory leaves out (it is otherwise off by up to 35"): (amplitude ", phase at J2000 °,
# rate °/Julian century), each adding amplitude * sin(phase + rate * T). The first is
# the Moon (the Earth's wobble about the Earth-Moon barycentre), then Venus, Jupiter,
# Mars and Saturn, their arguments built from the planets' mean longitudes. Amplitudes
# and phases are a least-squares fit to VSOP87 (as computed by PyEphem) over 1990-2050,
# together with a constant and a drift; what remains is under 3" (about 0.2 s of time).
_PERTURBATION_CONSTANT = -8.40  # arcseconds
_PERTURBATION_DRIFT = -1.00  # arcseconds per Julian century
_PERTURBATIONS = (
    (6.48, 297.68, 445267.1115),  # D, the Moon's mean elongation
    (4.87, 81.39, 22518.4428),  # Venus - Earth
    (5.49, 343.04, 45036.8856),  # 2 (Venus - Earth)
    (0.69, 65.93, 67555.3284),  # 3 (Venus - Earth)
    (2.46, 154.02, 9037.5127),  # 2 Venus - 3 Earth
    (2.39, 248.42, 31555.9555),  # 3 Venus - 4 Earth
    (0.94, 232.18, -4443.4174),  # 3 Venus - 5 Earth
    (7.26, 246.63, 32964.4672),  # Earth - Jupiter
    (2.71, 132.22, 65928.9344),  # 2 (Earth - Jupiter)
    (2.58, 205.37, 3034.9057),  # Jupiter
    (1.62, 156.93, 29929.5615),  # Earth - 2 Jupiter
    (2.06, 32.97, 33718.1472),  # 2 (Earth - Mars)
    (1.28, 111.95, 31436.9215),  # 3 Earth - 4 Mars
    (1.66, 250.03, -2281.2257),  # Earth - 2 Mars
    (0.40, 8.94, 14577.8479),  # 2 Earth - 3 Mars
    (0.44, 235.56, 34777.2591),  # Earth - Saturn
    (1.32, 21.17, 71998.1006),  # 2 x the Sun's mean anomaly (the equation of centre's remainder)
    (0.16, 238.24, -3868.2720),  # 2 x the Moon's node (nutation)
)


class _Position(NamedTuple):
    declination: float  # radians
    greenwich_hour_angle: float  # radians, GAST - right ascension


def _sun_position(ts: float) -> _Position:
    """Apparent declination and Greenwich hour angle of the Sun at unix time ``ts``."""
    jd_ut = ts / _DAY_S + _UNIX_JD
    t = (jd_ut + _DELTA_T_S / _DAY_S - _J2000) / 36525.0  # Julian centuries of TT
    mean_long = 280.46646 + t * (36000.76983 + 0.0003032 * t)
    anomaly = math.radians(357.52911 + t * (35999.05029 - 0.0001537 * t))
    centre = (
        math.sin(anomaly) * (1.914602 - t * (0.004817 + 0.000014 * t))
        + math.sin(2 * anomaly) * (0.019993 - 0.000101 * t)
        + math.sin(3 * anomaly) * 0.000289
    )
    node = math.radians(125.04 - 1934.136 * t)
    nutation_long = -0.00478 * math.sin(node)  # degrees, the main term of Δψ
    perturbation = _PERTURBATION_CONSTANT + _PERTURBATION_DRIFT * t
    for amplitude, phase, rate in _PERTURBATIONS:
        perturbation += amplitude * math.sin(math.radians(phase + rate * t))
    apparent_long = math.radians(mean_long + centre - 0.00569 + nutation_long + perturbation / 3600.0)
    mean_obliquity = 23.0 + (26.0 + (21.448 - t * (46.815 + t * (0.00059 - t * 0.001813))) / 60.0) / 60.0
    obliquity = math.radians(mean_obliquity + 0.00256 * math.cos(node))
    sin_long = math.sin(apparent_long)
    right_ascension = math.atan2(math.cos(obliquity) * sin_long, math.cos(apparent_long))
    declination = math.asin(math.sin(obliquity) * sin_long)
    d = jd_ut - _J2000
    tu = d / 36525.0
    mean_sidereal = 280.46061837 + 360.98564736629 * d + 0.000387933 * tu * tu - tu * tu * tu / 38710000.0
    # Apparent sidereal time adds the equation of the equinoxes (Δψ cos ε), matching
    # the nutation already in the apparent longitude.
    apparent_sidereal = math.radians(mean_sidereal % 360.0 + nutation_long * math.cos(obliquity))
    return _Position(declination, apparent_sidereal - right_ascension)


def _wrap(angle: float) -> float:
    """``angle`` reduced to [-pi, pi)."""
    return (angle + math.pi) % (2.0 * math.pi) - math.pi


def _local_hour_angle(ts: float, longitude_rad: float) -> float:
    return _wrap(_sun_position(ts).greenwich_hour_angle + longitude_rad)


@lru_cache(maxsize=8192)
def _culmination(k: int, longitude: float, lower: bool) -> float:
    """Unix time of cycle ``k``'s transit, or of the antitransit that begins cycle ``k``.

    Cycle ``k``'s transit is the one nearest 12:00 local mean time of unix day ``k``.
    """
    lon = math.radians(longitude)
    ts = (k + (0.0 if lower else 0.5)) * _DAY_S - longitude * 240.0
    target = math.pi if lower else 0.0
    for _ in range(8):
        # The hour angle grows by ~2π a day relative to the Sun; Newton on that rate
        # converges to milliseconds in two or three steps.
        step = _wrap(_local_hour_angle(ts, lon) - target) / _OMEGA
        ts -= step
        if abs(step) < 1e-3:
            break
    return ts


def _sin_altitude(ts: float, sin_lat: float, cos_lat: float, lon: float) -> tuple[float, float]:
    """(sin of the Sun's geocentric altitude, its time derivative per second)."""
    pos = _sun_position(ts)
    hour = pos.greenwich_hour_angle + lon
    cos_dec = math.cos(pos.declination)
    value = sin_lat * math.sin(pos.declination) + cos_lat * cos_dec * math.cos(hour)
    return value, -cos_lat * cos_dec * math.sin(hour) * _OMEGA


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
    phi = math.radians(latitude)
    sin_lat, cos_lat, lon = math.sin(phi), math.cos(phi), math.radians(longitude)
    # Geocentric altitude at which the topocentric centre is at the event's altitude.
    altitude = _ALTITUDE[event] + _PARALLAX_DEG * math.cos(math.radians(_ALTITUDE[event]))
    target = math.sin(math.radians(altitude))
    at_high = _sin_altitude(transit, sin_lat, cos_lat, lon)[0] - target
    at_low = _sin_altitude(low, sin_lat, cos_lat, lon)[0] - target
    if at_high <= 0.0:
        return _Crossing(None, round(transit), NEVER_RISES)
    if at_low >= 0.0:
        # Within a degree of the poles the declination's drift outruns the daily swing,
        # and the Sun can cross beyond the lower culmination, before the neighbouring
        # transit (rising: after the previous one; setting: before the next one).
        beyond = _culmination(k - 1 if rising else k + 1, longitude, lower=False)
        if _sin_altitude(beyond, sin_lat, cos_lat, lon)[0] - target < 0.0:
            ts = _solve_crossing(beyond, low, target, sin_lat, cos_lat, lon)
            return _Crossing(round(ts), round(ts), None)
        return _Crossing(None, round(low), NEVER_SETS)
    ts = _solve_crossing(low, transit, target, sin_lat, cos_lat, lon)
    return _Crossing(round(ts), round(ts), None)


def _solve_crossing(low: float, high: float, target: float, sin_lat: float, cos_lat: float, lon: float) -> float:
    """The instant between ``low`` (altitude below target) and ``high`` (above) where
    the altitude equals ``target``: Newton's method kept inside a shrinking bracket,
    so grazing events (a nearly flat altitude curve) still converge."""
    below, above = low, high  # altitude < target at `below`, > target at `above`
    # First guess: the hour angle of the crossing with the transit's declination.
    pos = _sun_position(high)
    denominator = cos_lat * math.cos(pos.declination)
    if denominator > 1e-9:
        cos_h = (target - sin_lat * math.sin(pos.declination)) / denominator
        ts = high + math.copysign(math.acos(max(-1.0, min(1.0, cos_h))), low - high) / _OMEGA
    else:
        ts = (low + high) / 2.0
    for _ in range(100):
        if not min(below, above) < ts < max(below, above):
            ts = (below + above) / 2.0
        value, slope = _sin_altitude(ts, sin_lat, cos_lat, lon)
        value -= target
        if value < 0.0:
            below = ts
        else:
            above = ts
        if abs(above - below) < 0.01:
            break
        step = value / slope if slope else math.inf
        if abs(step) < 1e-3:
            ts -= step
            break
        ts -= step
    return ts


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


def _utc(ts: int) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


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
