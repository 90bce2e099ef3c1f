"""GPIO devices on gpiozero's MockFactory, and outputs made safe when the real daemon stops."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from edge_agent.config import DeviceSpec, parse_settings
from edge_agent.device.actions import Runtime, build_registry
from edge_agent.device.hardware import Hardware, check_pins
from edge_agent.errors import ConfigError, HardwareError, InvalidArguments
from tests.configs import LAMP, agent_config
from tests.conftest import free_port

SPECS = {
    "lamp": DeviceSpec("lamp", "output", 17, True, "off"),
    "relay": DeviceSpec("relay", "output", 22, False, "on"),  # active low, on at rest
    "dim": DeviceSpec("dim", "pwm", 18, True, 0.25),
    "door": DeviceSpec("door", "input", 27, True, "off"),
    "button": DeviceSpec("button", "input", 5, True, "off", pull_up=True),
}


@pytest.fixture
def hw():
    changes: list[tuple[str, object]] = []
    hardware = Hardware(SPECS, "mock", on_change=lambda name, value: changes.append((name, value)))
    hardware.open()
    hardware.changes = changes  # type: ignore[attr-defined]
    yield hardware
    hardware.close()


def _pin(hw: Hardware, name: str):
    return hw.factory.pin(SPECS[name].pin)


def test_outputs_start_in_their_initial_state(hw):
    """At open, each output is at its configured initial state, on the pin as well as logically."""
    assert hw.states() == {"lamp": "off", "relay": "on", "dim": 0.25, "door": "off", "button": "off"}
    assert _pin(hw, "lamp").state == 0
    assert _pin(hw, "relay").state == 0  # active low: "on" drives the pin low
    assert _pin(hw, "dim").state == pytest.approx(0.25)
    assert hw.changes == []


def test_set_drives_the_pins_and_reports_changes(hw):
    """on/off/toggle drive outputs (active_high honoured), levels drive PWM; each change is reported once."""
    assert hw.set("lamp", "on") == ("on", True)
    assert _pin(hw, "lamp").state == 1
    assert hw.set("lamp", "on") == ("on", True)  # no change, no report
    assert hw.set("relay", "off") == ("off", True)
    assert _pin(hw, "relay").state == 1
    assert hw.set("lamp", "toggle") == ("off", True)
    assert hw.set("dim", 0.7) == (0.7, True)
    assert _pin(hw, "dim").state == pytest.approx(0.7)
    assert hw.set("dim", "on") == (1.0, True)
    assert hw.set("dim", "toggle") == (0.0, True)
    assert hw.set("dim", "toggle") == (1.0, True)
    assert hw.changes == [("lamp", "on"), ("relay", "off"), ("lamp", "off"), ("dim", 0.7), ("dim", 1.0), ("dim", 0.0),
                          ("dim", 1.0)]


def test_an_older_command_does_not_undo_a_newer_one(hw):
    """A write carrying an older journal seq than the last applied one is skipped (the newer command decided)."""
    assert hw.set("lamp", "on", seq=10) == ("on", True)
    assert hw.set("lamp", "off", seq=7) == ("on", False)
    assert _pin(hw, "lamp").state == 1
    assert hw.set("lamp", "off", seq=11) == ("off", True)
    assert hw.set("dim", 0.5, seq=3) == (0.5, True)  # seqs are per device


def test_inputs_report_their_changes(hw):
    """Driving an input pin reports on/off; a pull-up input is active when pulled low."""
    _pin(hw, "door").drive_high()
    _pin(hw, "door").drive_low()
    _pin(hw, "button").drive_low()
    assert hw.changes == [("door", "on"), ("door", "off"), ("button", "on")]
    assert hw.read("button") == "on" and hw.read("door") == "off"


def test_close_returns_outputs_to_initial_before_releasing_pins():
    """close() puts every output back to its initial state, then releases the pins."""
    changes: list[tuple[str, object]] = []
    hardware = Hardware(SPECS, "mock", on_change=lambda name, value: changes.append((name, value)))
    hardware.open()
    hardware.set("lamp", "on")
    hardware.set("relay", "off")
    hardware.set("dim", 0.9)
    at_release: dict[str, float] = {}
    devices = list(hardware._devices.items())
    for name, dev in devices:
        def closing(name=name, dev=dev, original=dev.close):
            at_release[name] = dev.pin.state
            original()
        dev.close = closing
    changes.clear()
    hardware.close()
    for _, dev in devices:
        del dev.close  # gpiozero closes again on garbage collection: not through the spy
    assert sorted(changes) == [("dim", 0.25), ("lamp", "off"), ("relay", "on")]
    assert at_release["lamp"] == 0 and at_release["relay"] == 0 and at_release["dim"] == pytest.approx(0.25)
    with pytest.raises(HardwareError, match="not open"):
        hardware.read("lamp")


def test_a_bad_pin_fails_naming_the_device():
    """A pin name gpiozero does not know is a config error naming the device's pin key."""
    hardware = Hardware({"x": DeviceSpec("x", "output", "NOPE99", True, "off")}, "mock")
    with pytest.raises(ConfigError, match=r"devices\.x\.pin: NOPE99 is not a valid pin name"):
        hardware.open()


def test_gpio_actions_validate_and_drive_the_hardware(hw):
    """gpio.set/read check device names and values before queueing, and drive the configured devices."""
    settings = parse_settings({"devices": {name: {"kind": s.kind, "pin": s.pin} for name, s in SPECS.items()}})
    registry = build_registry(settings, Runtime(hardware=hw))
    with pytest.raises(InvalidArguments, match="did you mean 'lamp'"):
        registry.validate("gpio.set", {"device": "lamb", "value": "on"})
    with pytest.raises(InvalidArguments, match="is an input"):
        registry.validate("gpio.set", {"device": "door", "value": "on"})
    with pytest.raises(InvalidArguments, match=r"0\.0 to 1\.0"):
        registry.validate("gpio.set", {"device": "dim", "value": 1.5})
    with pytest.raises(InvalidArguments, match="'on', 'off' or 'toggle'"):
        registry.validate("gpio.set", {"device": "lamp", "value": 1})
    action, clean = registry.validate("gpio.set", {"device": "lamp", "value": "ON"})
    assert clean == {"device": "lamp", "value": "on"}
    action, clean = registry.validate("gpio.set", {"device": "dim", "value": "toggle"})
    assert action.fn(**clean, command=_Cmd(seq=1)) == {"device": "dim", "value": 0.0}  # it was at 0.25
    read, args = registry.validate("gpio.read", {"device": "door"})
    assert read.fn(**args) == {"device": "door", "value": "off"}
    idempotent = registry.get("gpio.set").idempotent
    assert callable(idempotent)
    assert not idempotent({"device": "lamp", "value": "toggle"})
    assert idempotent({"device": "lamp", "value": "on"})


class _Cmd:
    def __init__(self, seq: int, id: str = "c"):
        self.seq, self.id = seq, id


# --------------------------------------------------------------------------- the real daemon


def test_sigterm_puts_outputs_in_their_safe_state(daemon_factory, tmp_path: Path):
    """On SIGTERM the daemon exits 0 after setting every output back to its initial state.

    Mock pins die with the process, so the evidence is what the daemon recorded: its log
    lines, and the retained GPIO state it queued for MQTT (the broker is unreachable on
    purpose, so the messages stay in the outbox): OFF, written after the command that
    switched the lamp on.
    """
    d = daemon_factory(agent_config(tmp_path, device="hw", mqtt_port=free_port(), prefix="qa",
                                    devices={**LAMP, "dim": {"kind": "pwm", "pin": 18, "initial": 0.2}}))
    d.start()
    r = d.cli("send", "gpio.set", "device=lamp", "value=on", "--id", "lamp-on", "--wait", "10")
    assert r.returncode == 0, r.stderr
    assert d.cli("send", "gpio.set", "device=dim", "value=0.9", "--wait", "10").returncode == 0
    assert d.terminate() == 0
    log = d.log.read_text()
    assert "lamp is off, its safe state" in log
    assert "dim is 0.2, its safe state" in log
    assert log.rstrip().endswith("stopped")
    with sqlite3.connect(tmp_path / "agent.db") as conn:
        rows = conn.execute("select seq, topic, payload from outbox order by seq").fetchall()
    reply_seq = next(seq for seq, topic, payload in rows if topic == "qa/hw/reply" and json.loads(payload)["id"] == "lamp-on")
    state = [(seq, bytes(payload)) for seq, topic, payload in rows if topic == "qa/hw/gpio/lamp"]
    assert len(state) == 1 and state[0][1] == b"OFF" and state[0][0] > reply_seq
    assert [bytes(p) for _, t, p in rows if t == "qa/hw/gpio/dim"] == [b"0.2"]


# --------------------------------------------------------------------------- check_pins (`check` and `run`)


@pytest.mark.parametrize(("devices", "key", "words"), [
    ({"lamp": {"kind": "output", "pin": "banana"}}, "devices.lamp.pin", "banana is not a valid pin name on a Raspberry Pi 3B"),
    ({"lamp": {"kind": "output", "pin": 40}}, "devices.lamp.pin", "40 is not a valid pin name"),  # no GPIO40 on a 3B
    ({"lamp": {"kind": "output", "pin": "BOARD1"}}, "devices.lamp.pin", "BOARD1 is not a GPIO pin"),  # 3V3 power
    ({"lamp": {"kind": "output", "pin": 17}, "door": {"kind": "input", "pin": "BOARD11"}}, "devices.door.pin",
     "pin BOARD11 is GPIO17, already used by device 'lamp'"),
    ({"lamp": {"kind": "output", "pin": "J8:12"}, "dim": {"kind": "pwm", "pin": "GPIO18"}}, "devices.dim.pin",
     "already used by device 'lamp'"),
])
def test_check_pins_reads_pins_as_gpiozero_does(devices, key, words):
    """Pins are parsed by gpiozero's board (the mock one with mock pins): a name it does not know and two devices
    on one pin however each is written are config errors naming the device's pin key."""
    settings = parse_settings({"gpio": {"pin_factory": "mock"}, "devices": devices}, path="/etc/edge-agent/config.toml")
    with pytest.raises(ConfigError) as info:
        check_pins(settings)
    assert str(info.value).startswith(f"/etc/edge-agent/config.toml: {key}: "), info.value
    assert words in str(info.value)


def test_check_pins_accepts_every_way_of_naming_a_gpio():
    """17, "GPIO4", "BCM5", "BOARD12", "J8:13" and "WPI3" are six valid pins; no devices, nothing to check."""
    settings = parse_settings({"gpio": {"pin_factory": "mock"}, "devices": {
        "a": {"kind": "output", "pin": 17}, "b": {"kind": "output", "pin": "GPIO4"}, "c": {"kind": "output", "pin": "BCM5"},
        "d": {"kind": "input", "pin": "BOARD12"}, "e": {"kind": "pwm", "pin": "J8:13"}, "f": {"kind": "output", "pin": "WPI3"}}})
    assert check_pins(settings) is None
    assert check_pins(parse_settings({})) is None


def test_check_pins_off_a_pi_checks_against_a_pi_and_says_so():
    """A config for real pins checked on a machine that is not a Pi is checked against a Pi 3B's header, with a note."""
    from edge_agent.device.hardware import _is_raspberry_pi

    if _is_raspberry_pi():
        pytest.skip("this machine is a Raspberry Pi")
    good = parse_settings({"gpio": {"pin_factory": "lgpio"}, "devices": {"lamp": {"kind": "output", "pin": "BOARD11"}}})
    assert "pins were checked as a Pi 3B's" in check_pins(good)
    bad = parse_settings({"gpio": {"pin_factory": "lgpio"}, "devices": {"lamp": {"kind": "output", "pin": "banana"}}})
    with pytest.raises(ConfigError, match=r"devices\.lamp\.pin: banana is not a valid pin name"):
        check_pins(bad)


def test_a_pin_factory_whose_library_is_missing_says_what_to_install():
    """`pin_factory = "pigpio"` without the pigpio module is a config error (exit 2 from `run`) naming the packages."""
    import importlib.util

    if importlib.util.find_spec("pigpio") is not None:
        pytest.skip("pigpio is installed here")
    hardware = Hardware({"lamp": SPECS["lamp"]}, "pigpio")
    with pytest.raises(ConfigError, match=r"pin_factory = 'pigpio' needs the pigpio module.*apt install python3-pigpio"):
        hardware.open()
