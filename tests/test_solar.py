"""Solar events: accuracy against PyEphem, polar day and night, midnight crossings, the sun report."""

from __future__ import annotations

import itertools
import re
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import ephem
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.schedule import solar
from edge_agent.schedule.solar import (
    SOLAR_EVENTS,
    next_solar,
    parse_solar_expr,
    solar_event_of_day,
    solar_events,
    solar_pause,
    sun_report,
)

# name: (latitude, longitude, time zone); both hemispheres, the tropics, beyond the
# polar circles, and both sides of the date line (Apia UTC+13, Kiritimati UTC+14).
PLACES = {
    "london": (51.5074, -0.1278, "Europe/London"),
    "istanbul": (41.0082, 28.9784, "Europe/Istanbul"),
    "sydney": (-33.8688, 151.2093, "Australia/Sydney"),
    "singapore": (1.3521, 103.8198, "Asia/Singapore"),
    "quito": (-0.1807, -78.4678, "America/Guayaquil"),
    "oslo": (59.9139, 10.7522, "Europe/Oslo"),
    "ushuaia": (-54.8019, -68.3030, "America/Argentina/Ushuaia"),
    "tromso": (69.6492, 18.9553, "Europe/Oslo"),
    "apia": (-13.8333, -171.7667, "Pacific/Apia"),
    "kiritimati": (1.8721, -157.4278, "Pacific/Kiritimati"),
}

_HORIZON = {
    "sunrise": "-0:50",
    "sunset": "-0:50",
    "dawn": "-6",
    "dusk": "-6",
    "dawn_nautical": "-12",
    "dusk_nautical": "-12",
    "dawn_astronomical": "-18",
    "dusk_astronomical": "-18",
}
_RISING = {"dawn", "sunrise", "dawn_nautical", "dawn_astronomical"}


def _local_day(day: date, tz: ZoneInfo) -> tuple[datetime, datetime]:
    return datetime.combine(day, time(0), tz), datetime.combine(day + timedelta(days=1), time(0), tz)


def ephem_events(event: str, lat: float, lon: float, start: datetime, end: datetime) -> list[datetime] | str:
    """Every ``event`` in [start, end) by PyEphem (no refraction, centre of the Sun, sea level),
    or ``never_sets``/``never_rises`` when ephem says the Sun does not cross that altitude."""
    observer = ephem.Observer()
    observer.lat, observer.lon = str(lat), str(lon)
    observer.pressure, observer.elevation = 0, 0
    sun = ephem.Sun()
    found: list[datetime] = []
    moment = start
    while True:
        observer.date = ephem.Date(moment.astimezone(UTC).replace(tzinfo=None))
        try:
            if event == "noon":
                hit = observer.next_transit(sun)
            else:
                observer.horizon = _HORIZON[event]
                finder = observer.next_rising if event in _RISING else observer.next_setting
                hit = finder(sun, use_center=True)
        except ephem.AlwaysUpError:
            return found or "never_sets"
        except ephem.NeverUpError:
            return found or "never_rises"
        instant = hit.datetime().replace(tzinfo=UTC)
        if instant >= end:
            return found
        found.append(instant)
        moment = instant + timedelta(seconds=1)


def _tolerance(latitude: float) -> float:
    """The contract's accuracy: 15 s up to 60° of latitude, 90 s up to 70°."""
    return 15.0 if abs(latitude) <= 60.0 else 90.0


@pytest.mark.parametrize("place", sorted(PLACES))
def test_every_fifth_day_of_2026_matches_ephem(place: str) -> None:
    """Every event on every 5th local day of 2026 exists exactly when PyEphem finds it that day,
    and lies within 15 s (90 s beyond 60°) of it."""
    lat, lon, zone = PLACES[place]
    tz = ZoneInfo(zone)
    worst = 0.0
    for n in range(0, 365, 5):
        day = date(2026, 1, 1) + timedelta(days=n)
        start, end = _local_day(day, tz)
        computed = solar_events(day, lat, lon, tz)
        for event in SOLAR_EVENTS:
            reference = ephem_events(event, lat, lon, start, end)
            mine = computed.events[event]
            if isinstance(reference, str):
                # ephem only searches about a day ahead: an event that slipped past
                # midnight makes it raise too, where we say next_day.
                assert mine == ()
                assert computed.missing[event] in (reference, "next_day"), (day, event)
                continue
            assert len(mine) == len(reference), (place, day, event, mine, reference)
            for ours, theirs in zip(mine, reference, strict=True):
                worst = max(worst, abs((ours - theirs).total_seconds()))
    assert worst <= _tolerance(lat), f"{place}: {worst:.1f} s"


@pytest.mark.parametrize("place", sorted(PLACES))
def test_a_year_of_firings_is_one_per_real_event_inside_its_local_day(place: str) -> None:
    """Following next_solar through 2026 gives strictly increasing instants that are exactly
    the events each local day reports: one on a day the event happens, none on a day it does not."""
    lat, lon, zone = PLACES[place]
    tz = ZoneInfo(zone)
    first_day, days = date(2026, 1, 1), 365
    start, _ = _local_day(first_day, tz)
    _, end = _local_day(first_day + timedelta(days=days - 1), tz)
    per_day = [solar_events(first_day + timedelta(days=n), lat, lon, tz) for n in range(days)]
    for event in SOLAR_EVENTS:
        firings: list[datetime] = []
        instant = next_solar(event, start - timedelta(microseconds=1), lat, lon, tz)
        while instant is not None and instant < end:
            firings.append(instant)
            instant = next_solar(event, instant, lat, lon, tz)
        assert all(a < b for a, b in itertools.pairwise(firings)), event
        expected = [instant for report in per_day for instant in report.events[event]]
        assert firings == expected, (place, event)
        for report in per_day:
            count = len(report.events[event])
            assert count <= 2
            assert (count == 0) == (event in report.missing), (report.day, event)
            for instant in report.events[event]:
                assert instant.astimezone(tz).date() == report.day


def test_ordinary_days_have_every_event_once_in_order() -> None:
    """At mid latitudes every event happens once a day, in the order dawn..dusk."""
    lat, lon, zone = PLACES["istanbul"]
    day = solar_events(date(2026, 3, 20), lat, lon, ZoneInfo(zone))
    assert day.missing == {}
    order = ["dawn_astronomical", "dawn_nautical", "dawn", "sunrise", "noon", "sunset", "dusk", "dusk_nautical",
             "dusk_astronomical"]
    instants = [day.first(event) for event in order]
    assert all(instant is not None for instant in instants)
    assert instants == sorted(instants)  # type: ignore[type-var]
    # Istanbul at the equinox: sunrise about 07:0x, sunset about 19:1x (UTC+3).
    sunrise, sunset = day.first("sunrise"), day.first("sunset")
    assert sunrise is not None and sunset is not None
    assert (sunrise.hour, sunset.hour) == (7, 19)


def test_midnight_sun_and_polar_night_report_why_events_are_missing() -> None:
    """Tromsø has no sunrise or sunset at midsummer (never_sets) or midwinter (never_rises),
    while noon always happens."""
    lat, lon, zone = PLACES["tromso"]
    tz = ZoneInfo(zone)
    summer = solar_events(date(2026, 6, 21), lat, lon, tz)
    assert summer.events["sunrise"] == () and summer.events["sunset"] == ()
    assert summer.missing["sunrise"] == summer.missing["sunset"] == "never_sets"
    assert summer.missing["dusk_astronomical"] == "never_sets"
    winter = solar_events(date(2026, 12, 21), lat, lon, tz)
    assert winter.missing["sunrise"] == winter.missing["sunset"] == "never_rises"
    assert winter.first("dawn") is not None  # civil twilight still happens at noon
    assert summer.first("noon") is not None and winter.first("noon") is not None


def test_an_event_crossing_local_midnight_gives_a_day_without_and_a_day_with_two() -> None:
    """In Tromsø sunsets drift across local midnight: 2026-05-16 has none (its sunset is
    after midnight), and at the end of the midnight sun 2026-07-27 has two."""
    lat, lon, zone = PLACES["tromso"]
    tz = ZoneInfo(zone)
    may = solar_events(date(2026, 5, 16), lat, lon, tz)
    assert may.events["sunset"] == ()
    assert may.missing["sunset"] == "next_day"
    following = solar_events(date(2026, 5, 17), lat, lon, tz).events["sunset"]
    assert len(following) == 1 and following[0].hour == 0
    july = solar_events(date(2026, 7, 27), lat, lon, tz).events["sunset"]
    assert len(july) == 2
    assert july[0].hour == 0 and july[1].hour == 23
    report = sun_report(date(2026, 7, 27), lat, lon, tz)
    assert report["events"]["sunset"] == july[0].isoformat(timespec="seconds")  # type: ignore[index]
    assert report["additional"] == {"sunset": [july[1].isoformat(timespec="seconds")]}


def test_a_sunset_after_midnight_belongs_to_the_evening_before() -> None:
    """solar_event_of_day gives the event of the solar day whose noon is on that date."""
    lat, lon, zone = PLACES["tromso"]
    tz = ZoneInfo(zone)
    evening = solar_event_of_day("sunset", date(2026, 5, 16), lat, lon, tz)
    assert evening.instant is not None
    assert evening.instant.astimezone(tz).date() == date(2026, 5, 17)
    assert evening.reason is None and evening.nominal == evening.instant


def test_a_missing_event_is_placed_where_the_sun_comes_closest() -> None:
    """A sunset that does not happen (midnight sun) is nominally at the lowest point of the Sun,
    around local solar midnight; one that does not happen in polar night at its highest, noon."""
    lat, lon, zone = PLACES["tromso"]
    tz = ZoneInfo(zone)
    summer = solar_event_of_day("sunset", date(2026, 6, 21), lat, lon, tz)
    assert summer.instant is None and summer.reason == "never_sets"
    # Solar midnight in Tromsø is about 00:4x CEST (18.96° E, UTC+2).
    assert summer.nominal.astimezone(tz).strftime("%Y-%m-%d %H") == "2026-06-22 00"
    winter = solar_event_of_day("sunset", date(2026, 12, 21), lat, lon, tz)
    noon = solar_event_of_day("noon", date(2026, 12, 21), lat, lon, tz)
    assert winter.reason == "never_rises" and winter.nominal == noon.instant


def test_next_solar_waits_through_the_midnight_sun_without_raising() -> None:
    """During the midnight sun the next sunset is the first one after it, weeks later."""
    lat, lon, _ = PLACES["tromso"]
    after = datetime(2026, 6, 1, tzinfo=UTC)
    first = next_solar("sunset", after, lat, lon)
    assert first is not None
    assert datetime(2026, 7, 25, tzinfo=UTC) < first < datetime(2026, 7, 26, 12, tzinfo=UTC)
    assert next_solar("sunrise", datetime(2026, 12, 1, tzinfo=UTC), lat, lon) > datetime(2027, 1, 10, tzinfo=UTC)  # type: ignore[operator]


def test_next_solar_even_at_the_pole_finds_the_yearly_sunset() -> None:
    """At the North Pole the Sun sets once a year, in late September."""
    sunset = next_solar("sunset", datetime(2026, 4, 1, tzinfo=UTC), 90.0, 0.0)
    assert sunset is not None and (sunset.month, 20 <= sunset.day <= 30) == (9, True)


def test_next_solar_is_strictly_after_and_applies_the_offset() -> None:
    """Asking from an event's own instant gives the next day's; the offset shifts every instant."""
    lat, lon, _ = PLACES["london"]
    after = datetime(2026, 3, 1, tzinfo=UTC)
    sunset = next_solar("sunset", after, lat, lon)
    assert sunset is not None
    following = next_solar("sunset", sunset, lat, lon)
    assert following is not None and timedelta(hours=23) < following - sunset < timedelta(hours=25)
    assert next_solar("sunset", after, lat, lon, offset_s=-900) == sunset - timedelta(minutes=15)
    # The offset event itself must be strictly after `after`: from sunset-15m's own
    # instant the answer is tomorrow's.
    early = sunset - timedelta(minutes=15)
    tomorrow = next_solar("sunset", early, lat, lon, offset_s=-900)
    assert tomorrow is not None and tomorrow > early + timedelta(hours=23)
    assert sunset.microsecond == 0 and sunset.tzinfo is UTC


def test_instants_do_not_depend_on_where_the_search_starts() -> None:
    """The same event is the same whole-second instant whatever `after` led to it (firing keys)."""
    lat, lon, _ = PLACES["sydney"]
    target = next_solar("dusk", datetime(2026, 8, 1, tzinfo=UTC), lat, lon)
    assert target is not None
    for hours in (1, 5, 13, 22):
        assert next_solar("dusk", target - timedelta(hours=hours), lat, lon) == target


def test_near_the_date_line_each_local_day_has_its_own_noon() -> None:
    """In Apia (UTC+13) and Kiritimati (UTC+14) noon is reported inside the asked local date
    (astral, asked without the zone, answers for the UTC date: a day off)."""
    for place in ("apia", "kiritimati"):
        lat, lon, zone = PLACES[place]
        tz = ZoneInfo(zone)
        for day in (date(2026, 1, 1), date(2026, 6, 30), date(2026, 12, 31)):
            noon = solar_events(day, lat, lon, tz).first("noon")
            assert noon is not None and noon.date() == day and 11 <= noon.hour <= 13


def test_solar_pause_says_until_when_an_event_stops() -> None:
    """Midsummer in Tromsø pauses sunset (never_sets) until late July; a normal day does not."""
    lat, lon, _ = PLACES["tromso"]
    pause = solar_pause("sunset", datetime(2026, 6, 21, tzinfo=UTC), lat, lon)
    assert pause is not None and pause.reason == "never_sets"
    assert pause.resumes == next_solar("sunset", datetime(2026, 6, 21, tzinfo=UTC), lat, lon)
    assert solar_pause("sunset", datetime(2026, 3, 21, tzinfo=UTC), lat, lon) is None
    winter = solar_pause("sunrise", datetime(2026, 12, 21, tzinfo=UTC), lat, lon)
    assert winter is not None and winter.reason == "never_rises"


# (place, local date): ordinary days, both solstices, polar day and night, midnight crossings.
REPORT_CASES = [
    ("london", "2026-03-29"), ("london", "2026-06-21"), ("london", "2026-12-21"),
    ("istanbul", "2026-01-15"), ("istanbul", "2026-07-15"),
    ("sydney", "2026-04-05"), ("sydney", "2026-10-04"), ("sydney", "2026-12-21"),
    ("singapore", "2026-02-11"), ("singapore", "2026-09-23"),
    ("quito", "2026-06-21"), ("quito", "2026-12-21"),
    ("oslo", "2026-06-21"), ("oslo", "2026-12-21"), ("oslo", "2026-08-07"),
    ("ushuaia", "2026-06-21"), ("ushuaia", "2026-12-21"),
    ("tromso", "2026-01-10"), ("tromso", "2026-03-20"), ("tromso", "2026-05-16"),
    ("tromso", "2026-06-21"), ("tromso", "2026-07-27"), ("tromso", "2026-12-21"),
    ("apia", "2026-01-01"), ("apia", "2026-07-01"),
    ("kiritimati", "2026-04-01"), ("kiritimati", "2026-10-01"),
]
_ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d$")


@pytest.mark.parametrize(("place", "day"), REPORT_CASES)
def test_sun_report_matches_ephem(place: str, day: str) -> None:
    """The `sun --json` document has every event of the local date, each within the contract's
    tolerance of PyEphem, with null and a reason exactly where ephem finds none that day."""
    lat, lon, zone = PLACES[place]
    tz = ZoneInfo(zone)
    local_date = date.fromisoformat(day)
    report = sun_report(local_date, lat, lon, tz)
    assert set(report) == {"date", "timezone", "latitude", "longitude", "events", "missing", "additional"}
    assert (report["date"], report["timezone"], report["latitude"], report["longitude"]) == (day, zone, lat, lon)
    events, missing = report["events"], report["missing"]
    assert isinstance(events, dict) and isinstance(missing, dict)
    assert list(events) == list(SOLAR_EVENTS)
    start, end = _local_day(local_date, tz)
    for event, text in events.items():
        reference = ephem_events(event, lat, lon, start, end)
        if text is None:
            assert reference == [] or isinstance(reference, str), (event, reference)
            assert missing[event] in ("never_rises", "never_sets", "previous_day", "next_day")
            if isinstance(reference, str) and missing[event].startswith("never"):
                assert missing[event] == reference
            continue
        assert event not in missing
        assert _ISO.match(text), text
        instant = datetime.fromisoformat(text)
        assert instant.utcoffset() == instant.astimezone(tz).utcoffset()
        assert isinstance(reference, list) and reference, (event, text)
        assert abs((instant - reference[0]).total_seconds()) <= _tolerance(lat), (event, text, reference[0])


def test_sun_report_is_json_serialisable() -> None:
    """The report is plain data: json.dumps accepts it as is."""
    import json

    lat, lon, zone = PLACES["tromso"]
    text = json.dumps(sun_report(date(2026, 6, 21), lat, lon, ZoneInfo(zone)))
    assert '"sunset": null' in text and '"never_sets"' in text


def test_parse_solar_expr_reads_event_and_signed_offset() -> None:
    """'sunset-15m' is sunset 900 s early; bad events and offsets are refused with the reason."""
    assert parse_solar_expr("sunset-15m") == ("sunset", -900.0)
    assert parse_solar_expr(" Sunrise + 1h30m ") == ("sunrise", 5400.0)
    assert parse_solar_expr("dusk_nautical") == ("dusk_nautical", 0.0)
    with pytest.raises(ValueError, match="unknown solar event 'sunsett'"):
        parse_solar_expr("sunsett")
    with pytest.raises(ValueError, match="bad offset"):
        parse_solar_expr("sunset-15x")


def test_bad_arguments_are_refused() -> None:
    """Unknown events, latitudes beyond ±90 and naive datetimes raise ValueError."""
    aware = datetime(2026, 1, 1, tzinfo=UTC)
    with pytest.raises(ValueError, match="unknown solar event"):
        next_solar("twilight", aware, 0, 0)
    with pytest.raises(ValueError, match="latitude"):
        next_solar("sunset", aware, 91, 0)
    with pytest.raises(ValueError, match="longitude"):
        solar_events(date(2026, 1, 1), 0, 181, ZoneInfo("UTC"))
    with pytest.raises(ValueError, match="timezone-aware"):
        next_solar("sunset", datetime(2026, 1, 1), 0, 0)


def test_exported_names() -> None:
    """The module exports exactly its public API."""
    assert set(solar.__all__) == {
        "SOLAR_EVENTS", "SolarDay", "SolarOccurrence", "SolarPause", "next_solar", "parse_solar_expr",
        "solar_event_of_day", "solar_events", "solar_pause", "sun_report",
    }


@settings(max_examples=60, deadline=None)
@given(
    lat=st.floats(-85.0, 85.0),
    lon=st.floats(-180.0, 180.0),
    seconds=st.integers(0, 2 * 365 * 86400),
    event=st.sampled_from(SOLAR_EVENTS),
)
def test_next_solar_anywhere_is_an_event_of_its_own_day_and_the_first_after(lat: float, lon: float, seconds: int,
                                                                            event: str) -> None:
    """Anywhere and anytime, next_solar never raises, is strictly after `after`, is reported by
    its (UTC) day, and no event of that kind lies between `after` and it."""
    after = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=seconds, microseconds=seconds % 999)
    nxt = next_solar(event, after, lat, lon)
    assert nxt is not None and nxt > after
    utc = ZoneInfo("UTC")
    day_events = solar_events(nxt.date(), lat, lon, utc).events[event]
    assert nxt in day_events
    earlier_same_day = [e for e in day_events if e < nxt]
    assert all(e <= after for e in earlier_same_day)
    previous_day = solar_events(nxt.date() - timedelta(days=1), lat, lon, utc).events[event]
    assert all(e <= after for e in previous_day)
