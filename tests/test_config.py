"""Config parsing: defaults, paths, groups, devices, and errors that name the file, the key and the problem."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from edge_agent.config import DEFAULT_DB_PATH, config_path, load_settings, parse_settings
from edge_agent.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def _write(tmp_path: Path, text: str, name: str = "config.toml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def _error(raw: dict, path: str = "/etc/edge-agent/config.toml") -> str:
    with pytest.raises(ConfigError) as info:
        parse_settings(raw, path=path)
    return str(info.value)


# --------------------------------------------------------------------------- defaults and paths


def test_empty_config_gets_the_documented_defaults():
    """An empty file is a valid config: default database, sync clock trust, no MQTT, no devices, 4 workers."""
    s = parse_settings({}, path="/etc/edge-agent/config.toml")
    assert s.db_path == DEFAULT_DB_PATH
    assert s.clock_trust == "sync"
    assert s.mqtt is None
    assert dict(s.devices) == {}
    assert s.groups == ()
    assert s.jobs == () and s.windows == ()
    assert s.workers == 4 and s.network_workers == 2
    assert s.keep >= 7 * 86400
    assert s.device_id  # the hostname, made a valid id
    assert s.sync == "normal"


def test_relative_storage_path_is_resolved_against_the_config_file(tmp_path: Path):
    """`[storage] path = "agent.db"` means the file beside the config, wherever the process runs."""
    (tmp_path / "etc").mkdir()
    path = _write(tmp_path / "etc", '[storage]\npath = "data/agent.db"\n')
    before = os.getcwd()
    os.chdir("/")
    try:
        s = load_settings(path)
    finally:
        os.chdir(before)
    assert s.db_path == str(tmp_path / "etc" / "data" / "agent.db")


def test_home_relative_storage_path_is_expanded():
    """`~/agent.db` is in the user's home, not in a folder named '~' beside the config."""
    s = parse_settings({"storage": {"path": "~/agent.db"}}, path="/etc/edge-agent/config.toml")
    assert s.db_path == os.path.expanduser("~/agent.db")


def test_task_paths_are_resolved_against_the_config_file(tmp_path: Path):
    """`[tasks] paths` relative entries are relative to the config file's folder."""
    path = _write(tmp_path, '[tasks]\nmodules = ["m"]\npaths = [".", "lib", "/abs"]\n')
    s = load_settings(path)
    assert s.task_paths == (str(tmp_path), str(tmp_path / "lib"), "/abs")
    assert s.task_modules == ("m",)


def test_config_path_prefers_flag_then_environment_then_default():
    """--config wins over $EDGE_AGENT_CONFIG, which wins over /etc/edge-agent/config.toml."""
    assert config_path("/a.toml", {"EDGE_AGENT_CONFIG": "/b.toml"}) == "/a.toml"
    assert config_path(None, {"EDGE_AGENT_CONFIG": "/b.toml"}) == "/b.toml"
    assert config_path(None, {}) == "/etc/edge-agent/config.toml"


def test_the_example_config_is_valid():
    """config/example.toml, as shipped, parses (it must run as it is on mock pins)."""
    s = load_settings(str(ROOT / "config" / "example.toml"))
    assert s.device_id == "porch" and s.groups == ("garden",)
    assert s.devices["porch_light"].kind == "output"
    assert s.devices["fountain"].kind == "pwm"
    assert s.devices["gate_sensor"].pull_up is True
    assert [j.name for j in s.jobs] == ["porch-on", "porch-off", "heartbeat"]
    assert s.jobs[0].offset == -15 * 60
    assert s.windows[0].device == "porch_light"


# --------------------------------------------------------------------------- device, groups


def test_device_id_and_groups():
    """[device] id and groups are read; groups must be valid names."""
    s = parse_settings({"device": {"id": "porch-1", "groups": ["garden", "all_lights"]}})
    assert s.device_id == "porch-1" and s.groups == ("garden", "all_lights")
    assert "device.groups" in _error({"device": {"groups": ["Garden!"]}})
    assert "expected a list of strings" in _error({"device": {"groups": "garden"}})
    assert "device.id" in _error({"device": {"id": "Porch"}})


# --------------------------------------------------------------------------- devices


def test_devices_of_each_kind_with_their_options():
    """Outputs, PWM outputs and inputs read kind, pin, active_high, initial, frequency, pull_up, bounce_time."""
    s = parse_settings({"devices": {
        "lamp": {"kind": "output", "pin": 17, "active_high": False, "initial": "on"},
        "dim": {"kind": "pwm", "pin": "GPIO18", "initial": 0.25, "frequency": 500},
        "door": {"kind": "input", "pin": 27, "pull_up": True, "bounce_time": "1s"},
    }})
    lamp, dim, door = s.devices["lamp"], s.devices["dim"], s.devices["door"]
    assert (lamp.kind, lamp.pin, lamp.active_high, lamp.initial) == ("output", 17, False, "on")
    assert (dim.kind, dim.pin, dim.initial, dim.frequency) == ("pwm", "GPIO18", 0.25, 500.0)
    assert (door.kind, door.pull_up, door.bounce_time) == ("input", True, 1.0)
    assert parse_settings({"devices": {"d": {"kind": "pwm", "pin": 4, "initial": "on"}}}).devices["d"].initial == 1.0


@pytest.mark.parametrize(("devices", "key", "words"), [
    ({"a": {"kind": "output", "pin": 17}, "b": {"kind": "input", "pin": 17}}, "devices.b.pin", "already used by device 'a'"),
    ({"a": {"kind": "output", "pin": 17}, "b": {"kind": "output", "pin": "GPIO17"}}, "devices.b.pin", "already used"),
    ({"a": {"kind": "output", "pin": "BCM4"}, "b": {"kind": "output", "pin": 4}}, "devices.b.pin", "already used"),
    ({"a": {"kind": "ouptut", "pin": 17}}, "devices.a.kind", "did you mean 'output'"),
    ({"a": {"pin": 17}}, "devices.a.kind", "is required"),
    ({"a": {"kind": "output"}}, "devices.a.pin", "is required"),
    ({"a": {"kind": "output", "pin": 99}}, "devices.a.pin", "0 to 53"),
    ({"a": {"kind": "output", "pin": True}}, "devices.a.pin", "GPIO number"),
    ({"a": {"kind": "pwm", "pin": 4, "initial": 2}}, "devices.a.initial", "0.0 to 1.0"),
    ({"a": {"kind": "input", "pin": 4, "initial": "on"}}, "devices.a.initial", "unknown key"),
    ({"a": 5}, "devices.a", "expected a table"),
    ({"a b": {"kind": "output", "pin": 4}}, "devices.a b", "letters, digits"),
])
def test_device_errors_name_the_key(devices, key, words):
    """A wrong device names its key: pins used twice (however spelled), kinds, ranges, unknown keys."""
    message = _error({"devices": devices})
    assert message.startswith(f"/etc/edge-agent/config.toml: {key}: ")
    assert words in message


# --------------------------------------------------------------------------- errors in general


@pytest.mark.parametrize(("raw", "key", "words"), [
    ({"devcie": {"id": "x"}}, "devcie", "unknown key (did you mean 'device'?)"),
    ({"device": {"idd": "x"}}, "device.idd", "did you mean 'id'?"),
    ({"storage": {"path": 5}}, "storage.path", "expected a string, got 5"),
    ({"storage": {"keep": "1h"}}, "storage.keep", "at least 1d"),
    ({"storage": {"sync": "fast"}}, "storage.sync", "must be one of"),
    ({"clock": {"trust": "alway"}}, "clock.trust", "did you mean 'always'?"),
    ({"location": {"latitude": 10}}, "location.longitude", "go together"),
    ({"location": {"latitude": 100, "longitude": 0}}, "location.latitude", "from -90 to 90"),
    ({"location": {"timezone": "Mars/Base"}}, "location.timezone", "unknown time zone"),
    ({"mqtt": {"port": "1883"}}, "mqtt.port", "whole number"),
    ({"mqtt": {"username": "u", "password_file": "/nonexistent/secret"}}, "mqtt.password_file", "no such file"),
    ({"mqtt": {"topic_prefix": "a/#"}}, "mqtt.topic_prefix", "topic prefix"),
    ({"queue": {"workers": 0}}, "queue.workers", "from 1 to 64"),
    ({"queue": {"network_workers": -1}}, "queue.network_workers", "from 0 to 64"),
    ({"gpio": {"pin_factory": "mok"}}, "gpio.pin_factory", "did you mean 'mock'?"),
    ({"tasks": {"modules": "my_tasks"}}, "tasks.modules", "list of strings"),
    ({"jobs": {"name": "a"}}, "jobs", "[[jobs]]"),
    ({"jobs": [{"name": "a", "action": "agent.ping"}]}, "jobs[0]", "needs exactly one of solar, cron, every, at; found none"),
    ({"jobs": [{"name": "a", "action": "agent.ping", "cron": "0 1 * * *", "every": "1h"}]}, "jobs[0]", "found 2"),
    ({"jobs": [{"name": "a", "action": "agent.ping", "every": "10x"}]}, "jobs[0].every", "duration"),
    ({"jobs": [{"name": "a", "action": "agent.ping", "cron": "61 * * * *"}]}, "jobs[0].cron", "61"),
    ({"jobs": [{"name": "a", "action": "agent.ping", "cron": "0 1 * * *", "offset": "5m"}]}, "jobs[0].offset", "only solar"),
    ({"jobs": [{"name": "a", "action": "agent.ping", "solar": "sunset"}]}, "jobs[0].solar", "[location]"),
    ({"jobs": [{"name": "a", "action": "agent.ping", "every": "1h"}, {"name": "a", "action": "agent.ping", "every": "2h"}]},
     "jobs[1].name", "used twice"),
    ({"jobs": [{"name": "a", "every": "1h"}]}, "jobs[0].action", "is required"),
    ({"jobs": [{"name": "a", "every": "1h", "action": "agent.ping", "misssed": "once"}]}, "jobs[0].misssed",
     "did you mean 'missed'?"),
])
def test_errors_name_file_key_and_problem(raw, key, words):
    """Every config error reads '<file>: <key>: <problem>', with a did-you-mean for near misses."""
    message = _error(raw)
    assert message.startswith(f"/etc/edge-agent/config.toml: {key}: "), message
    assert words in message


def test_window_on_a_missing_device_is_an_error():
    """A window naming a device that is not configured fails, suggesting the near name."""
    raw = {"devices": {"porch_light": {"kind": "output", "pin": 17}},
           "windows": [{"device": "porch_ligth", "from": "18:00", "until": "23:00"}]}
    message = _error(raw)
    assert "windows[0].device" in message and "no device 'porch_ligth'" in message
    assert "did you mean 'porch_light'?" in message


def test_window_rules():
    """Windows hold outputs only, with valid times; solar times need a location."""
    out = {"lamp": {"kind": "output", "pin": 17}, "door": {"kind": "input", "pin": 27}}
    assert "is an input" in _error({"devices": out, "windows": [{"device": "door", "from": "18:00", "until": "19:00"}]})
    assert "windows[0].from" in _error({"devices": out, "windows": [{"device": "lamp", "from": "25:00", "until": "19:00"}]})
    assert "[location]" in _error({"devices": out, "windows": [{"device": "lamp", "from": "sunset", "until": "23:00"}]})
    assert "windows[0].until" in _error({"devices": out, "windows": [{"device": "lamp", "from": "18:00"}]})
    ok = parse_settings({"devices": out, "windows": [{"device": "lamp", "from": "18:00", "until": "23:00"}]})
    assert ok.windows[0].value == "on"


@pytest.mark.parametrize(("text", "words"), [
    ("[device\nid = 'x'\n", "not valid TOML"),
    ("a = \n", "not valid TOML"),
    ("[device]\nid = 'a'\n[device]\nid = 'b'\n", "not valid TOML"),
])
def test_broken_toml_names_the_file_and_the_line(tmp_path: Path, text, words):
    """A file that is not TOML fails with the file name and the parser's line and column."""
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert str(info.value).startswith(f"{path}: {words}")
    assert "line" in str(info.value)


def test_unreadable_config_files(tmp_path: Path):
    """A missing file, a folder, and bytes that are not UTF-8 each fail with the path and the reason."""
    with pytest.raises(ConfigError, match="no such file"):
        load_settings(str(tmp_path / "nope.toml"))
    with pytest.raises(ConfigError, match="is a directory"):
        load_settings(str(tmp_path))
    binary = tmp_path / "bin.toml"
    binary.write_bytes(b"\xff\xfe[device]\n")
    with pytest.raises(ConfigError, match=r"not UTF-8|not valid TOML"):
        load_settings(str(binary))
