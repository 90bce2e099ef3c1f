"""Solar events against PyEphem: every event, place-dates from -70° to 70° in all seasons, DST days.

The reference is PyEphem alone (its own Sun, its own rising/setting search), arranged in
the same solar cycles as ``schedule/solar.py`` so that "missing, and why" can be compared
exactly, not only the instants.

How PyEphem is made to use the same definitions:

* ``pressure = 0`` turns its refraction off, so its altitude is the geometric one, seen
  from the Earth's surface (topocentric: it includes the Sun's 8.8" parallax, which
  ``solar.py`` adds to astral's geocentric elevation).
* ``use_center=True`` puts the Sun's centre, not its upper limb, at ``horizon``.
* so ``horizon = -0.833°`` *is* the contract's sunrise/sunset: the upper limb on a
  sea-level horizon under the standard 34' of refraction, with a 16' semi-diameter,
  is the centre at -(34' + 16') = -50' ≈ -0.833° with no refraction. Not ``-0:50``
  (-0.8333°): the 1.2" between them alone moves a grazing event by seconds. Not the
  upper limb without ``use_center`` either: ephem would use the day's true
  semi-diameter (15.7'-16.3'), not the convention's fixed 16'.
* twilights: ``horizon`` -6°, -12°, -18° with ``use_center=True``, no refraction.
* noon: ``next_transit`` (the meridian crossing, hour angle 0).

PyEphem's rising/setting search raises ``AlwaysUpError``/``NeverUpError`` when the Sun is
circumpolar *at the instant the search starts* (by that instant's declination), which near
the end of a midnight sun is wrong for the evening. So existence is decided here from
PyEphem's altitude at its own culminations (the Sun rises to -6° in a cycle iff it is
below -6° at the antitransit and above at the transit), and each search starts at the
culmination before its event.
"""

from __future__ import annotations

import math
from datetime import UTC, date, datetime, time, timedelta, timezone, tzinfo
from zoneinfo import ZoneInfo

import ephem
import pytest

from edge_agent.schedule.solar import SOLAR_EVENTS, solar_events

_THRESHOLD = {
    "sunrise": -0.833,
    "sunset": -0.833,
    "dawn": -6.0,
    "dusk": -6.0,
    "dawn_nautical": -12.0,
    "dusk_nautical": -12.0,
    "dawn_astronomical": -18.0,
    "dusk_astronomical": -18.0,
}
_RISING = {"dawn", "sunrise", "dawn_nautical", "dawn_astronomical"}


def tolerance(latitude: float) -> float:
    """The issue's accuracy: 15 s up to 60° of latitude, 90 s from there to 70°."""
    return 15.0 if abs(latitude) <= 60.0 else 90.0


def _ephem_date(instant: datetime) -> ephem.Date:
    return ephem.Date(instant.astimezone(UTC).replace(tzinfo=None))


def _utc(when: float) -> datetime:
    return ephem.Date(when).datetime().replace(tzinfo=UTC)


class EphemDay:
    """PyEphem's events of one local civil day, with our cycle rules, and why one is missing."""

    def __init__(self, day: date, latitude: float, longitude: float, tz: tzinfo) -> None:
        self.observer = ephem.Observer()
        self.observer.lat, self.observer.lon = ephem.degrees(str(latitude)), ephem.degrees(str(longitude))
        self.observer.pressure, self.observer.elevation = 0, 0
        self.sun = ephem.Sun()
        start = datetime.combine(day, time(0), tz)
        end = datetime.combine(day + timedelta(days=1), time(0), tz)
        self.start, self.end = _ephem_date(start), _ephem_date(end)
        # Culminations from well before to well after the day: (is transit, ephem date).
        marks: list[tuple[bool, float]] = []
        for transit in (True, False):
            self.observer.date = self.start - 2.0
            while self.observer.date < self.end + 2.0:
                found = self.observer.next_transit(self.sun) if transit else self.observer.next_antitransit(self.sun)
                marks.append((transit, float(found)))
                self.observer.date = found + ephem.minute
        marks.sort(key=lambda mark: mark[1])
        while marks[0][0]:
            marks.pop(0)  # begin at an antitransit
        # cycles: (antitransit, transit, next antitransit)
        self.cycles = [(marks[i][1], marks[i + 1][1], marks[i + 2][1]) for i in range(0, len(marks) - 2, 2)]
        assert all(not marks[i][0] and marks[i + 1][0] for i in range(0, len(marks) - 1, 2))
        middle = (self.start + self.end) / 2.0
        self.own = min(range(len(self.cycles)), key=lambda i: abs(self.cycles[i][1] - middle))

    def altitude(self, when: float) -> float:
        self.observer.date = when
        self.sun.compute(self.observer)
        return math.degrees(float(self.sun.alt))

    def cycle_event(self, event: str, index: int) -> float | str:
        """``event`` in cycle ``index``: an ephem date, or why it does not happen."""
        low, transit, next_low = self.cycles[index]
        if event == "noon":
            return transit
        rising = event in _RISING
        culmination = low if rising else next_low
        threshold = _THRESHOLD[event]
        if self.altitude(transit) <= threshold:
            return "never_rises"
        if self.altitude(culmination) >= threshold:
            return "never_sets"
        self.observer.horizon = ephem.degrees(str(threshold))
        first, last = (low, transit) if rising else (transit, next_low)
        search = self.observer.next_rising if rising else self.observer.next_setting
        for part in (0.0, 0.25, 0.5, 0.75):  # see the module docstring: ephem may refuse at `first`
            self.observer.date = first + part * (last - first)
            try:
                found = float(search(self.sun, use_center=True))
            except (ephem.AlwaysUpError, ephem.NeverUpError):
                continue
            assert first < found < last, (event, _utc(found), _utc(first), _utc(last))
            return found
        pytest.fail(f"ephem finds no {event} between {_utc(first)} and {_utc(last)} though the altitudes say it happens")

    def events(self, event: str) -> tuple[list[datetime], str | None]:
        """The instants of ``event`` inside the day (UTC), and the reason when there are none."""
        found = []
        for index in range(len(self.cycles)):
            when = self.cycle_event(event, index)
            if not isinstance(when, str) and self.start <= when < self.end:
                found.append(_utc(when))
        if found:
            return found, None
        own = self.cycle_event(event, self.own)
        if isinstance(own, str):
            return found, own
        return found, "previous_day" if own < self.start else "next_day"


def compare(day: date, latitude: float, longitude: float, tz: tzinfo) -> dict[str, float]:
    """Assert that every event of the day exists exactly when ephem's does, for the same reason
    when it does not; return the absolute difference in seconds for each event that exists."""
    ours = solar_events(day, latitude, longitude, tz)
    reference = EphemDay(day, latitude, longitude, tz)
    errors: dict[str, float] = {}
    for event in SOLAR_EVENTS:
        theirs, reason = reference.events(event)
        mine = ours.events[event]
        where = (day.isoformat(), latitude, longitude, event, mine, theirs)
        assert len(mine) == len(theirs), where
        assert ours.missing.get(event) == reason, (*where, ours.missing.get(event), reason)
        for a, b in zip(mine, theirs, strict=True):
            errors[event] = max(errors.get(event, 0.0), abs((a - b).total_seconds()))
    return errors


def _grid() -> list[tuple[float, float, str, date]]:
    """Latitudes from -70° to 70° (the polar circles and 60° included), each at its own
    longitude and four dates a quarter of a year apart, staggered from one latitude to the
    next so that together they cover the year. Fixed UTC offsets near the longitude."""
    latitudes = (-70.0, -66.5, -64.0, -60.0, -55.0, -50.0, -40.0, -30.0, -20.0, -10.0, 0.0,
                 10.0, 20.0, 30.0, 40.0, 50.0, 55.0, 60.0, 64.0, 66.5, 70.0)
    cases = []
    for i, latitude in enumerate(latitudes):
        longitude = round((i * 83.7) % 360.0 - 180.0, 1)
        hours = round(longitude / 15.0)
        for quarter in range(4):
            day = date(2026, 1, 1) + timedelta(days=(i * 17 + quarter * 91) % 365)
            cases.append((latitude, longitude, f"UTC{hours:+03d}:00", day))
    return cases


# Named zones on their DST days (23- and 25-hour days; Santiago changes at midnight), and
# Tromsø's polar day and night, a sunset after midnight and a day with two sunsets.
NAMED = [
    (59.9139, 10.7522, "Europe/Oslo", date(2026, 3, 29)),
    (59.9139, 10.7522, "Europe/Oslo", date(2026, 10, 25)),
    (51.5074, -0.1278, "Europe/London", date(2026, 3, 29)),
    (51.5074, -0.1278, "Europe/London", date(2026, 10, 25)),
    (61.2181, -149.9003, "America/Anchorage", date(2026, 3, 8)),
    (61.2181, -149.9003, "America/Anchorage", date(2026, 11, 1)),
    (-33.8688, 151.2093, "Australia/Sydney", date(2026, 4, 5)),
    (-33.8688, 151.2093, "Australia/Sydney", date(2026, 10, 4)),
    (-33.4489, -70.6693, "America/Santiago", date(2026, 4, 5)),
    (-33.4489, -70.6693, "America/Santiago", date(2026, 9, 6)),
    (69.6492, 18.9553, "Europe/Oslo", date(2026, 5, 16)),
    (69.6492, 18.9553, "Europe/Oslo", date(2026, 6, 21)),
    (69.6492, 18.9553, "Europe/Oslo", date(2026, 7, 27)),
    (69.6492, 18.9553, "Europe/Oslo", date(2026, 12, 21)),
]
PLACE_DATES = _grid() + NAMED


def _zone(name: str) -> tzinfo:
    if name.startswith("UTC") and ":" in name:
        return timezone(timedelta(hours=int(name[3:6])))
    return ZoneInfo(name)


def test_the_place_dates_span_the_latitudes_and_seasons() -> None:
    """At least 30 place-dates, from -70° to 70°, in every quarter of the year in each hemisphere."""
    assert len(PLACE_DATES) >= 30
    latitudes = [case[0] for case in PLACE_DATES]
    assert min(latitudes) == -70.0 and max(latitudes) == 70.0
    for north in (True, False):
        quarters = {(case[3].month - 1) // 3 for case in PLACE_DATES if (case[0] > 0) == north}
        assert quarters == {0, 1, 2, 3}


@pytest.mark.parametrize(("latitude", "longitude", "zone", "day"), PLACE_DATES,
                         ids=[f"{c[0]:+.1f},{c[1]:+.1f},{c[3]}" for c in PLACE_DATES])
def test_every_event_matches_ephem(latitude: float, longitude: float, zone: str, day: date) -> None:
    """Each event of the local day exists exactly when PyEphem's does (else the same reason),
    within 15 s of it up to 60° of latitude and 90 s up to 70°."""
    errors = compare(day, latitude, longitude, _zone(zone))
    assert "noon" in errors  # every local day has its transit
    worst = max(errors.values())
    assert worst <= tolerance(latitude), {event: round(e, 1) for event, e in errors.items()}


# Grazing events: the Sun's lowest point falls just below the twilight's altitude, the
# altitude curve is nearly flat there, and astral's error in declination (8" and 4" on
# these days) moves the crossing by far more than elsewhere. These are the worst found by
# a sweep of every day of 2026 at every other degree of latitude and at the places above
# (see the README's known limitations).
GRAZING = [
    # (latitude, longitude, zone, local date, event, the error measured when this was written, s)
    (59.9139, 10.7522, "Europe/Oslo", date(2026, 5, 12), "dusk_nautical", 39.6),
    (56.0, 108.8, "UTC+07:00", date(2026, 5, 31), "dusk_nautical", 17.7),
]


@pytest.mark.parametrize(("latitude", "longitude", "zone", "day", "event", "measured"), GRAZING)
def test_grazing_events_are_within_a_minute(latitude: float, longitude: float, zone: str, day: date, event: str,
                                            measured: float) -> None:
    """Where the Sun barely reaches a twilight's altitude the event still exists exactly when
    ephem's does and lies within a minute of it (the error this engine is known to have)."""
    assert compare(day, latitude, longitude, _zone(zone))[event] <= 60.0


@pytest.mark.xfail(strict=True, raises=AssertionError,
                   reason="astral's Sun is a few arcseconds off; on grazing days near 60° that is 15-40 s")
@pytest.mark.parametrize(("latitude", "longitude", "zone", "day", "event", "measured"), GRAZING)
def test_grazing_events_meet_the_15_s_bound(latitude: float, longitude: float, zone: str, day: date, event: str,
                                            measured: float) -> None:
    """The issue's bound on grazing days up to 60°: not met by astral (this fails, and is expected to)."""
    assert compare(day, latitude, longitude, _zone(zone))[event] <= tolerance(latitude)


# Where the Sun's highest or lowest point is within a few arcseconds of the altitude, the
# event exists for one Sun and not the other: at 68°S the Sun's highest point on 2026-06-08
# is 1.6" above -0.833° for PyEphem and 1.4" below for astral (no sunrise); at 68°N on
# 2026-05-25 its lowest is 0.7" below for PyEphem and 2.9" above for astral (so astral's
# midnight sun starts a day earlier). The sweep found only these 2 (3 days) in ~25,000 place-days.
EXISTENCE_FLIPS = [
    (-68.0, 163.6, "UTC+11:00", date(2026, 6, 8)),
    (68.0, -163.6, "UTC-11:00", date(2026, 5, 25)),
]


@pytest.mark.xfail(strict=True, raises=AssertionError,
                   reason="a Sun within ~3\" of the altitude at its highest or lowest: astral and ephem disagree")
@pytest.mark.parametrize(("latitude", "longitude", "zone", "day"), EXISTENCE_FLIPS)
def test_events_at_a_hair_from_the_altitude_exist_as_for_ephem(latitude: float, longitude: float, zone: str,
                                                               day: date) -> None:
    """The same events exist on these days as for PyEphem: not so for astral (expected to fail)."""
    compare(day, latitude, longitude, _zone(zone))
