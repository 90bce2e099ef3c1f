"""Config parsing: defaults, paths, groups, devices, and errors that name the file, the key and the problem."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from edge_agent.config import DEFAULT_DB_PATH, check_tls_files, config_path, load_settings, parse_settings
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
    assert "heartbeat" in [j.name for j in s.jobs]
    assert s.windows[0].device == "porch_light" and s.windows[0].start == "sunset-15m"


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


# --------------------------------------------------------------------------- typos, numbers


LAMP_TABLE = {"lamp": {"kind": "output", "pin": 17}}
PLACE = {"latitude": 41.0, "longitude": 29.0, "timezone": "Europe/Istanbul"}


@pytest.mark.parametrize(("raw", "key", "hint"), [
    ({"devices": {"a": {"knd": "output", "pin": 17}}}, "devices.a.knd", "kind"),
    ({"devices": {"a": {"kind": "output", "pn": 17}}}, "devices.a.pn", "pin"),
    ({"location": {"latitud": 41.0, "longitude": 29.0}}, "location.latitud", "latitude"),
    ({"jobs": [{"nme": "a", "every": "1h", "action": "agent.ping"}]}, "jobs[0].nme", "name"),
    ({"jobs": [{"name": "a", "evrey": "1h", "action": "agent.ping"}]}, "jobs[0].evrey", "every"),
    ({"jobs": [{"name": "a", "every": "1h", "actoin": "agent.ping"}]}, "jobs[0].actoin", "action"),
    ({"devices": LAMP_TABLE, "windows": [{"devise": "lamp", "from": "18:00", "until": "23:00"}]}, "windows[0].devise",
     "device"),
    ({"devices": LAMP_TABLE, "windows": [{"device": "lamp", "form": "18:00", "until": "23:00"}]}, "windows[0].form", "from"),
    ({"mqtt": {"hots": "broker"}}, "mqtt.hots", "host"),
    ({"mqtt": {"tls": {"ca_fiel": "/x"}}}, "mqtt.tls.ca_fiel", "ca_file"),
    ({"mqtt": {"username": "u", "pasword_file": "/x"}}, "mqtt.pasword_file", "password_file"),
    ({"queue": {"worker": 2}}, "queue.worker", "workers"),
    ({"events": {"max_row": 2000}}, "events.max_row", "max_rows"),
    ({"storage": {"pth": "a.db"}}, "storage.pth", "path"),
    ({"mqt": {"host": "x"}}, "mqt", "mqtt"),
])
def test_a_typo_is_named_before_what_it_hides(raw, key, hint):
    """A misspelt key is reported as unknown, with a did-you-mean, not as the key it leaves missing
    (`knd` is not "kind: is required", `latitud` is not "latitude and longitude go together")."""
    assert _error(raw) == f"/etc/edge-agent/config.toml: {key}: unknown key (did you mean {hint!r}?)"


def _job(**keys) -> dict:
    return {"jobs": [{"name": "j", "action": "agent.ping", **keys}], "location": PLACE}


NAN, INF = float("nan"), float("inf")
OUT_OF_RANGE = [
    (_job(solar="sunset", offset=NAN), "jobs[0].offset", "from -12h to 12h, got nan"),
    (_job(solar="sunset", offset="13h"), "jobs[0].offset", "from -12h to 12h"),
    (_job(solar="sunset+13h"), "jobs[0].solar", "from -12h to 12h"),
    (_job(every=2**63), "jobs[0].every", "from 1s to 366d, got 9223372036854775808"),
    (_job(every=INF), "jobs[0].every", "got inf"),
    (_job(every=NAN), "jobs[0].every", "got nan"),
    (_job(every="0.5s"), "jobs[0].every", "from 1s"),
    (_job(every="9" * 400 + "d"), "jobs[0].every", "to 366d"),
    (_job(every="1h", grace=INF), "jobs[0].grace", "from 0s to 30d"),
    ({"mqtt": {"keepalive": 70000}}, "mqtt.keepalive", "from 5s to 18h12m15s (65535 s"),
    ({"mqtt": {"keepalive": "4s"}}, "mqtt.keepalive", "from 5s"),
    ({"mqtt": {"keepalive": NAN}}, "mqtt.keepalive", "got nan"),
    ({"mqtt": {"session_expiry": "50000d"}}, "mqtt.session_expiry", "(4294967295 s, MQTT's limit)"),
    ({"mqtt": {"session_expiry": INF}}, "mqtt.session_expiry", "got inf"),
    ({"mqtt": {"state_interval": 0}}, "mqtt.state_interval", "from 1s to 1d"),
    ({"mqtt": {"max_payload": 10**30}}, "mqtt.max_payload", "from 256 to 16777216"),
    ({"queue": {"drain_timeout": INF}}, "queue.drain_timeout", "from 0s to 1h, got inf"),
    ({"queue": {"task_timeout": 0}}, "queue.task_timeout", "from 1s to 7d"),
    ({"storage": {"keep": NAN}}, "storage.keep", "got nan"),
    ({"events": {"keep": "99999d"}}, "events.keep", "from 1h to 3650d"),
    ({"events": {"outbox_max": -1}}, "events.outbox_max", "from 10"),
    ({"location": {"latitude": NAN, "longitude": 0}}, "location.latitude", "got nan"),
    ({"location": {"latitude": 0, "longitude": 10**400}}, "location.longitude", "from -180 to 180"),
    ({"devices": {"d": {"kind": "pwm", "pin": 18, "frequency": INF}}}, "devices.d.frequency", "got inf"),
    ({"devices": {"d": {"kind": "pwm", "pin": 18, "initial": NAN}}}, "devices.d.initial", "got nan"),
    ({"devices": {"d": {"kind": "input", "pin": 27, "bounce_time": INF}}}, "devices.d.bounce_time", "from 0s to 1m"),
    ({"devices": {"d": {"kind": "pwm", "pin": 18}}, "windows": [{"device": "d", "from": "18:00", "until": "19:00",
                                                                  "value": NAN}]}, "windows[0].value", "got nan"),
]


@pytest.mark.parametrize(("raw", "key", "words"), OUT_OF_RANGE)
def test_every_number_is_finite_and_in_its_documented_range(raw, key, words):
    """nan, infinities and numbers past a key's range (every = 2**63, keepalive beyond MQTT's 16 bits,
    drain_timeout = inf) are config errors naming the key and the range, not a daemon that breaks later."""
    message = _error(raw)
    assert message.startswith(f"/etc/edge-agent/config.toml: {key}: "), message
    assert words in message, message


def test_the_ends_of_each_range_are_accepted():
    """The documented bounds themselves are valid."""
    s = parse_settings({"location": PLACE, "mqtt": {"keepalive": 65535, "session_expiry": 0xFFFFFFFF, "state_interval": "1d"},
                        "queue": {"drain_timeout": 0, "task_timeout": "7d"}, "storage": {"keep": "3650d"},
                        "events": {"keep": "1h"},
                        "jobs": [{"name": "a", "action": "agent.ping", "solar": "sunset", "offset": "-12h", "grace": "30d"},
                                 {"name": "b", "action": "agent.ping", "every": "366d"},
                                 {"name": "c", "action": "agent.ping", "every": 1, "grace": 0}]})
    assert (s.mqtt.keepalive, s.mqtt.session_expiry, s.drain_timeout) == (65535.0, 4294967295.0, 0.0)
    assert s.jobs[0].offset == -12 * 3600 and s.jobs[0].grace == 30 * 86400 and s.jobs[2].value == "1s"


def test_the_monitor_sample_config_is_valid():
    """config/monitor.toml, as shipped, is a config the monitor can run with: a broker and a place."""
    s = load_settings(str(ROOT / "config" / "monitor.toml"))
    assert s.mqtt is not None and (s.mqtt.host, s.mqtt.port, s.mqtt.topic_prefix) == ("127.0.0.1", 1883, "edge")
    assert s.location.latitude is not None and s.location.timezone == "Europe/Istanbul"


def _openssl(*args: str, cwd: Path) -> None:
    import subprocess

    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _tls_error(raw: dict) -> str:
    with pytest.raises(ConfigError) as info:
        check_tls_files(parse_settings(raw, path="/etc/edge-agent/config.toml"))
    return str(info.value)


def test_tls_files_are_loaded_as_the_link_loads_them(tmp_path: Path):
    """A ca_file that holds no certificate, and a cert_file whose key does not match (or is encrypted), fail
    `check` and `run` at their key: before, the config passed and the daemon's MQTT thread died at its first connect."""
    import shutil

    check_tls_files(parse_settings({"mqtt": {}}))
    junk = tmp_path / "junk.pem"
    junk.write_text("garbage\n")
    message = _tls_error({"mqtt": {"tls": {"ca_file": str(junk)}}})
    assert message.startswith("/etc/edge-agent/config.toml: mqtt.tls.ca_file: ") and "holds no usable certificate" in message
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    for name in ("a", "b"):
        _openssl("req", "-x509", *ec, "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2", "-subj", f"/CN={name}",
                 cwd=tmp_path)
    _openssl("ec", "-in", "a.key", "-aes256", "-passout", "pass:secret", "-out", "a-encrypted.key", cwd=tmp_path)

    def tls(key: str) -> dict:
        return {"mqtt": {"tls": {"ca_file": str(tmp_path / "b.pem"), "cert_file": str(tmp_path / "a.pem"),
                                 "key_file": str(tmp_path / key)}}}

    check_tls_files(parse_settings(tls("a.key")))
    for key in ("b.key", "a-encrypted.key"):
        message = _tls_error(tls(key))
        assert "mqtt.tls.cert_file: " in message and "is not a certificate and its unencrypted private key" in message
