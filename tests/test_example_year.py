"""The example config does what its comments say on every day of a year, from Istanbul
to Tromso; the porch-light pair of jobs it used to ship is caught by `edge-agent check`."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

import pytest

from edge_agent.config import LocationSettings, load_settings
from edge_agent.device.scheduler import build_jobs, build_windows
from edge_agent.schedule.conflicts import order_changes
from edge_agent.schedule.cron import wall_to_instant
from edge_agent.schedule.solar import solar_event_of_day
from edge_agent.schedule.windows import window_state
from tests.configs import agent_config

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "config" / "example.toml"
PLACES = {
    "istanbul": (41.0082, 28.9784, "Europe/Istanbul"),
    "oslo": (59.9139, 10.7522, "Europe/Oslo"),
    "anchorage": (61.2181, -149.9003, "America/Anchorage"),
    "tromso": (69.6492, 18.9553, "Europe/Oslo"),
}
YEAR = 2026


def _settings_at(place: str) -> Any:
    lat, lon, zone = PLACES[place]
    return dataclasses.replace(load_settings(str(EXAMPLE)), location=LocationSettings(lat, lon, zone))


def _timeline(settings: Any, device: str, first: datetime, last: datetime) -> list[tuple[datetime, Any]]:
    """Every (instant, value) the daemon would give ``device`` through the year: window
    boundaries and job firings, in time order (start-up applies the window at ``first``)."""
    loc = settings.location
    changes: list[tuple[datetime, Any]] = []
    for spec, window in build_windows(settings):
        if spec.device != device:
            continue
        now = first
        while now < last:
            active, boundary = window_state(window, now, loc.latitude, loc.longitude, loc.tz)
            changes.append((now, spec.value if active else "off"))
            if boundary is None:
                break
            now = boundary
    for spec, job in build_jobs(settings):
        if spec.action != "gpio.set" or spec.args.get("device") != device:
            continue
        instant = job.trigger.next_after(first)
        while instant is not None and instant < last:
            changes.append((instant, spec.args["value"]))
            instant = job.trigger.next_after(instant)
    return sorted(changes, key=lambda change: change[0])


def _on_spans(changes: list[tuple[datetime, Any]], last: datetime) -> list[tuple[datetime, datetime]]:
    spans, opened = [], None
    for instant, value in changes:
        on = value not in ("off", 0, 0.0)
        if on and opened is None:
            opened = instant
        elif not on and opened is not None:
            spans.append((opened, instant))
            opened = None
    if opened is not None:
        spans.append((opened, last))
    return spans


@pytest.mark.parametrize("place", sorted(PLACES))
def test_the_porch_light_is_on_from_sunset_15m_until_23_00_and_never_otherwise(place: str) -> None:
    """Each day of the year the porch light is on exactly from sunset-15m to 23:00, and off
    all day when sunset-15m comes after 23:00 (the field report: 23.5 h on at >= 61 N)."""
    settings = _settings_at(place)
    loc = settings.location
    tz = loc.tz
    first = datetime(YEAR, 1, 1, tzinfo=tz).astimezone(UTC)
    last = datetime(YEAR + 1, 1, 1, tzinfo=tz).astimezone(UTC)
    spans = _on_spans(_timeline(settings, "porch_light", first, last), last)
    expected = []
    day = date(YEAR, 1, 1)
    while day.year == YEAR:
        sunset = solar_event_of_day("sunset", day, loc.latitude, loc.longitude, tz)
        begin = (sunset.instant if sunset.instant is not None else sunset.nominal) - timedelta(minutes=15)
        end = wall_to_instant(datetime.combine(day, time(23)), tz)
        if begin < end:
            expected.append((max(begin, first), end))
        day += timedelta(days=1)
    assert spans == expected
    assert all(end - begin < timedelta(hours=16) for begin, end in spans)


@pytest.mark.parametrize("place", sorted(PLACES))
def test_the_fountain_only_runs_from_a_sunset_between_16_and_22_until_22_30(place: str) -> None:
    """The bounded fountain-on never fires after fountain-off: each run starts at a sunset
    between 16:00 and 22:00 and ends at 22:30 the same evening."""
    settings = _settings_at(place)
    tz = settings.location.tz
    first = datetime(YEAR, 1, 1, tzinfo=tz).astimezone(UTC)
    last = datetime(YEAR + 1, 1, 1, tzinfo=tz).astimezone(UTC)
    spans = _on_spans(_timeline(settings, "fountain", first, last), last)
    assert spans, "the fountain never ran"
    for begin, end in spans:
        start_local, end_local = begin.astimezone(tz), end.astimezone(tz)
        assert time(16) <= start_local.time() <= time(22), start_local
        assert end_local.date() == start_local.date() and end_local.time() == time(22, 30), (start_local, end_local)


def test_check_warns_about_the_old_porch_jobs_and_not_about_the_example(tmp_path: Path) -> None:
    """`edge-agent check` warns when an 'on' job fires after its 'off' job on some days of
    the year (the README's old porch-on/porch-off pair at Anchorage), and not for the
    example as shipped."""
    lat, lon, zone = PLACES["anchorage"]
    path = agent_config(tmp_path, location={"latitude": lat, "longitude": lon, "timezone": zone},
                        devices={"porch_light": {"kind": "output", "pin": 17}},
                        jobs=[{"name": "porch-on", "solar": "sunset", "offset": "-15m", "action": "gpio.set",
                               "args": {"device": "porch_light", "value": "on"}},
                              {"name": "porch-off", "cron": "0 23 * * *", "action": "gpio.set",
                               "args": {"device": "porch_light", "value": "off"}}])
    warnings = order_changes(load_settings(str(path)), datetime(YEAR, 1, 1, tzinfo=UTC))
    assert len(warnings) == 1 and "'porch-on' fires after 'porch-off'" in warnings[0], warnings
    days = int(warnings[0].split(" on ")[2].split(" of ")[0])
    assert 30 <= days <= 70, warnings  # the field report counted 48 days at Anchorage in 2026
    cli = subprocess.run([sys.executable, "-m", "edge_agent", "check", "--config", str(path)],
                         capture_output=True, text=True, timeout=60)
    assert cli.returncode == 0 and "warning: jobs 'porch-on' and 'porch-off'" in cli.stderr, cli.stderr
    for place in PLACES:
        assert order_changes(_settings_at(place), datetime(YEAR, 1, 1, tzinfo=UTC)) == [], place


def test_check_warns_about_a_window_that_is_never_on(tmp_path: Path) -> None:
    """'sunset until 13:00' ends the day it starts (13:00 is after noon), so it is never on:
    `check` says so and how to write an overnight window; 'sunset until 12:00' runs overnight."""
    path = agent_config(tmp_path, location={"latitude": 41.0082, "longitude": 28.9784, "timezone": "Europe/Istanbul"},
                        devices={"porch_light": {"kind": "output", "pin": 17}, "pump": {"kind": "output", "pin": 22}},
                        windows=[{"device": "porch_light", "from": "sunset", "until": "13:00"},
                                 {"device": "pump", "from": "sunset", "until": "12:00"}])
    cli = subprocess.run([sys.executable, "-m", "edge_agent", "check", "--config", str(path)],
                         capture_output=True, text=True, timeout=60)
    assert cli.returncode == 0, cli.stderr
    assert "window 'porch_light' from sunset until 13:00 is off on every day of the next year" in cli.stderr, cli.stderr
    assert "'pump'" not in cli.stderr
