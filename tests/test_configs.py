"""The tests' config builder: what it writes loads with the agent's own loader, and overrides land."""

from __future__ import annotations

import tomllib
from datetime import UTC, datetime
from pathlib import Path

import pytest

from edge_agent.config import load_settings
from edge_agent.errors import ConfigError
from tests.configs import ISTANBUL, LAMP, LAMP_DIM_DOOR, TASKS, agent_config, to_toml


def test_the_defaults_load(tmp_path: Path):
    """With no arguments: device 'dev', the database in the folder, a trusted clock, mock pins, no MQTT, no tasks."""
    path = agent_config(tmp_path)
    assert path == tmp_path / "config.toml"
    s = load_settings(str(path))
    assert s.device_id == "dev" and s.groups == ()
    assert s.db_path == str(tmp_path / "agent.db")
    assert s.clock_trust == "always" and s.pin_factory == "mock"
    assert s.mqtt is None and dict(s.devices) == {} and s.task_modules == ()
    assert s.jobs == () and s.windows == ()


def test_mqtt_is_local_with_discovery_off_unless_asked(tmp_path: Path):
    """``mqtt_port`` gives a broker on 127.0.0.1 under ``prefix`` with discovery off; ``mqtt=`` adds and changes keys."""
    s = load_settings(str(agent_config(tmp_path, mqtt_port=18830, prefix="t1")))
    assert s.mqtt is not None
    assert (s.mqtt.host, s.mqtt.port, s.mqtt.topic_prefix, s.mqtt.discovery) == ("127.0.0.1", 18830, "t1", False)
    ca = tmp_path / "ca.pem"
    ca.write_text("not checked here\n")
    s = load_settings(str(agent_config(tmp_path, mqtt_port=1, mqtt={"discovery": True, "discovery_prefix": "ha",
                                                                     "keepalive": "5s", "tls": {"ca_file": str(ca)}})))
    assert s.mqtt is not None
    assert (s.mqtt.discovery, s.mqtt.discovery_prefix, s.mqtt.keepalive) == (True, "ha", 5.0)
    assert s.mqtt.tls is not None and s.mqtt.tls.ca_file == str(ca)


def test_every_table_can_be_given(tmp_path: Path):
    """Groups, location, devices, tasks, queue, log, storage, jobs (with inline args) and windows all land."""
    path = agent_config(
        tmp_path, device="porch", groups=["garden"], tasks="qa_tasks", name="other.toml",
        location=ISTANBUL,
        devices={**LAMP_DIM_DOOR, "pump": {"kind": "output", "pin": 22, "initial": "on"}},
        queue={"workers": 1, "drain_timeout": "1s"}, log={"level": "debug"}, storage={"sync": "full"},
        jobs=[{"name": "tick", "every": "1s", "action": "agent.ping", "missed": "skip"},
              {"name": "set", "cron": "0 1 * * *", "action": "gpio.set", "args": {"device": "lamp", "value": "on"}}],
        windows=[{"device": "pump", "from": "06:00", "until": "07:00"}],
    )
    assert path.name == "other.toml"
    s = load_settings(str(path))
    assert s.device_id == "porch" and s.groups == ("garden",)
    assert s.location.latitude == 41.0082 and s.location.timezone == "Europe/Istanbul"
    assert sorted(s.devices) == ["dim", "door", "lamp", "pump"] and s.devices["pump"].initial == "on"
    assert s.task_modules == ("qa_tasks",) and s.task_paths == (str(TASKS),)
    assert (s.workers, s.drain_timeout, s.log_level) == (1, 1.0, "debug")
    assert s.sync == "full" and s.db_path == str(tmp_path / "agent.db")  # merged: the default path stays
    assert [j.name for j in s.jobs] == ["tick", "set"] and dict(s.jobs[1].args) == {"device": "lamp", "value": "on"}
    assert s.windows[0].device == "pump"


def test_none_removes_a_key_or_a_table(tmp_path: Path):
    """``gpio=None`` leaves out [gpio]; ``clock={"trust": None}`` leaves out one key."""
    s = load_settings(str(agent_config(tmp_path, gpio=None, clock={"trust": None})))
    assert s.pin_factory is None and s.clock_trust == "sync"


def test_unknown_keys_are_written_for_error_cases(tmp_path: Path):
    """A key the agent does not know is written as given, so a test of the error needs no hand-written TOML."""
    path = agent_config(tmp_path, devices={**LAMP, "valve2": {"kind": "output", "pin": "not a pin", "bogus": 1}})
    with pytest.raises(ConfigError, match=r"devices\.valve2\.bogus: unknown key"):
        load_settings(str(path))


def test_to_toml_round_trips_awkward_values():
    """Strings with quotes, backslashes and control characters, odd keys, floats, dates and nesting read back unchanged."""
    doc = {
        "top": 1,
        "t": {"s": 'a "q" \\ \n\t\x01\x7f é', "odd key": True, "f": 0.1, "big": 1e300, "neg": -2,
              "when": datetime(2026, 6, 1, 20, 0, tzinfo=UTC), "list": [1, "two", [3.5]],
              "inline": {"x": {"y": []}}, "empty": {}},
        "arr": [{"a": 1, "sub": {"b": "c"}}, {"a": 2}],
        "nested": {"inner": {"deep": "yes"}},
    }
    assert tomllib.loads(to_toml(doc)) == doc
