"""Fleet schedules (issue 24): the topics of schedule documents and their validation, which is the
config file's own (same code, same messages), with ``where`` in place of the file's path."""

from __future__ import annotations

from typing import Any

import pytest

from edge_agent.config import parse_schedule, parse_settings
from edge_agent.contract import Topics, schedule_source, schedule_topic
from edge_agent.errors import ConfigError

DEVICES = parse_settings({"devices": {"lamp": {"kind": "output", "pin": 17}, "dimmer": {"kind": "pwm", "pin": 18},
                                      "button": {"kind": "input", "pin": 27}}}).devices
WHERE = "schedule group:greenhouse v7"


def _error(doc: Any, devices: Any = DEVICES, **kw: Any) -> str:
    with pytest.raises(ConfigError) as info:
        parse_schedule(doc, where=WHERE, devices=devices, **kw)
    return str(info.value)


def _config_error(raw: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as info:
        parse_settings(raw, path=WHERE)
    return str(info.value)


# --------------------------------------------------------------------------- topics


def test_schedule_topics_and_sources():
    assert schedule_topic("edge", "all") == "edge/all/schedule"
    assert schedule_topic("site/a", "group", "greenhouse") == "site/a/group/greenhouse/schedule"
    assert schedule_topic("edge", "device", "pi-1") == "edge/pi-1/schedule"
    with pytest.raises(ValueError, match="scope"):
        schedule_topic("edge", "everyone")
    assert [schedule_source("all"), schedule_source("group", "g"), schedule_source("device")] == ["all", "group:g", "device"]


def test_a_device_subscribes_to_its_schedules_and_routes_them_to_their_source():
    """all, each of its groups, its own; another group's or device's document is not its."""
    t = Topics("site/a", "pi-1", ("greenhouse", "north"))
    assert set(t.schedules) == {"site/a/all/schedule", "site/a/group/greenhouse/schedule",
                                "site/a/group/north/schedule", "site/a/pi-1/schedule"}
    assert set(t.schedules) <= set(t.subscriptions)
    assert t.route("site/a/all/schedule") == ("schedule", "all")
    assert t.route("site/a/group/north/schedule") == ("schedule", "group:north")
    assert t.route("site/a/pi-1/schedule") == ("schedule", "device")
    for other in ("site/a/group/south/schedule", "site/a/pi-2/schedule", "site/b/all/schedule", "site/a/all/schedule/x"):
        assert t.route(other) is None
    assert t.route("site/a/pi-1/cmd/agent.ping") == ("cmd", "agent.ping")  # the others unchanged


# --------------------------------------------------------------------------- documents


def test_a_document_gives_jobs_and_windows_as_the_config_does():
    doc = {"version": 7, "set_at": 1733580000.5, "by": "ops",
           "jobs": [{"name": "water", "cron": "0 6 * * *", "action": "gpio.pulse", "args": {"device": "lamp", "seconds": 5},
                     "missed": "skip"}],
           "windows": [{"device": "dimmer", "from": "18:00", "until": "22:00", "value": 0.5}]}
    jobs, windows = parse_schedule(doc, where=WHERE, devices=DEVICES)
    config = parse_settings({"devices": {"lamp": {"kind": "output", "pin": 17}, "dimmer": {"kind": "pwm", "pin": 18}},
                             "jobs": doc["jobs"], "windows": doc["windows"]})
    assert jobs == config.jobs and windows == config.windows


def test_a_tombstone_has_no_jobs_or_windows():
    assert parse_schedule({"version": 9, "clear": True}, where=WHERE, devices=None) == ((), ())
    assert "holds no jobs and no windows" in _error({"version": 9, "clear": True, "jobs": []})


@pytest.mark.parametrize("version", [0, -1, 2**63, 1.5, "3", True, None])
def test_the_version_is_a_positive_integer(version):
    assert _error({"version": version, "jobs": []}).startswith(f"{WHERE}: version: ")


@pytest.mark.parametrize("doc, expected", [
    ({"jobs": []}, "version: is required"),
    ({"version": 1, "job": []}, "job: unknown key (did you mean 'jobs'?)"),
    ({"version": 1, "jobs": {"name": "x"}}, "jobs: expected [[jobs]] tables"),
    ({"version": 1, "by": 3}, "by: expected a string"),
    ({"version": 1, "clear": "yes"}, "clear: expected true or false"),
])
def test_document_keys(doc, expected):
    assert expected in _error(doc)


@pytest.mark.parametrize("job", [
    {"name": "w", "cron": "0 25 * * *", "action": "agent.ping"},           # bad cron
    {"name": "w", "cron": "0 6 * * *", "every": "1h", "action": "agent.ping"},  # two triggers
    {"name": "W", "cron": "0 6 * * *", "action": "agent.ping"},            # a bad name
    {"name": "w", "cron": "0 6 * * *"},                                    # no action
    {"name": "w", "cron": "0 6 * * *", "action": "agent.ping", "missed": "never"},
    {"name": "w", "cron": "0 6 * * *", "action": "agent.ping", "grace": "forever"},
    {"name": "w", "every": "1h", "action": "agent.ping", "anchor": "25:00"},
    {"name": "w", "cron": "0 6 * * *", "action": "agent.ping", "knd": 1},  # a typo
    {"name": "w", "solar": "sunset", "action": "agent.ping"},              # no [location] on this device
])
def test_a_bad_job_gives_the_config_files_message(job):
    """The message is the config file's, word for word, with ``where`` for the path."""
    assert _error({"version": 7, "jobs": [job]}, location=parse_settings({}).location) == _config_error({"jobs": [job]})


@pytest.mark.parametrize("window", [
    {"device": "porch", "from": "18:00", "until": "22:00"},
    {"device": "button", "from": "18:00", "until": "22:00"},
    {"device": "lamp", "from": "25:00", "until": "22:00"},
    {"device": "lamp", "from": "18:00"},
    {"device": "dimmer", "from": "18:00", "until": "22:00", "value": 2},
    {"device": "lamp", "from": "18:00", "until": "22:00", "value": "dim"},
])
def test_a_bad_window_gives_the_config_files_message(window):
    devices = {"lamp": {"kind": "output", "pin": 17}, "dimmer": {"kind": "pwm", "pin": 18},
               "button": {"kind": "input", "pin": 27}}
    assert _error({"version": 7, "windows": [window]}) == _config_error({"devices": devices, "windows": [window]})


def test_a_job_name_used_twice_in_one_document():
    job = {"name": "w", "cron": "0 6 * * *", "action": "agent.ping"}
    assert "job name 'w' is used twice" in _error({"version": 1, "jobs": [job, job]})


def test_the_operators_side_checks_what_it_can_without_the_devices():
    """devices=None: any device name, a value for an output or a PWM; location=None: solar is fine."""
    jobs, windows = parse_schedule({"version": 1, "jobs": [{"name": "dusk", "solar": "sunset-15m", "action": "gpio.on"}],
                                    "windows": [{"device": "anything", "from": "sunset", "until": "23:00", "value": 0.3}]},
                                   where=WHERE, devices=None)
    assert jobs[0].value == "sunset-15m" and windows[0].value == 0.3
    assert "windows[0].value" in _error({"version": 1, "windows": [{"device": "x", "from": "1:00", "until": "2:00",
                                                                    "value": "dim"}]}, devices=None)
    assert "windows[0].from" in _error({"version": 1, "windows": [{"device": "x", "from": "soon", "until": "2:00"}]},
                                       devices=None)


def test_a_document_that_is_not_an_object():
    assert _error([1, 2]) == f"{WHERE}: expected a table, got [1, 2]"


@pytest.mark.parametrize("device_id", ["all", "group"])
def test_device_ids_all_and_group_are_refused(device_id):
    """They would collide with P/all/schedule and P/group/<g>/...; other ids stay valid."""
    assert "reserved" in _config_error({"device": {"id": device_id}})
    assert parse_settings({"device": {"id": "allotment"}}).device_id == "allotment"
