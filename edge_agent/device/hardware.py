"""GPIO devices from the config, through gpiozero; only the daemon opens them.

Outputs are ``on``/``off``, PWM outputs a level from 0.0 to 1.0, inputs report every
change. Every output goes to its ``initial`` state at start and back to it on every
stop (:meth:`Hardware.close`), because gpiozero's own cleanup runs at interpreter
exit, not on SIGTERM. gpiozero errors are re-raised as :class:`HardwareError`.

Writes carry the journal sequence number of the command that asked for them: a
command queued earlier that happens to run later (several workers) does not undo a
newer one, so the last command queued decides the state.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Mapping
from typing import Any

from edge_agent.config import DeviceSpec
from edge_agent.errors import ConfigError, HardwareError

__all__ = ["Hardware", "check_pins", "choose_pin_factory"]

log = logging.getLogger("edge_agent.hardware")
Value = str | float


def _is_raspberry_pi() -> bool:
    try:
        with open("/proc/device-tree/model", "rb") as fh:
            return b"Raspberry Pi" in fh.read()
    except OSError:
        return False


def choose_pin_factory(configured: str | None) -> str | None:
    """The pin factory to use: the config's, else gpiozero's own choice on a Pi, else mock pins."""
    if configured:
        return configured
    if os.environ.get("GPIOZERO_PIN_FACTORY"):
        return None
    return None if _is_raspberry_pi() else "mock"


def check_pins(settings: Any, *, strict: bool = True) -> str | None:
    """Every device's pin is a GPIO of the board its pins will be on, and no two devices share one.

    The names are read as gpiozero reads them (``17``, ``"GPIO17"``, ``"BCM17"``, ``"BOARD11"``,
    ``"J8:11"``), so ``17`` and ``"BOARD11"`` are found to be the same pin. The board is the mock
    factory's with mock pins, else this machine's; no pin is opened. Raises :class:`ConfigError`
    naming the device's key; returns a note when the board could not be known (not a Pi here).
    ``strict=False`` (``run``): on a board that could only be guessed, a pin it does not have
    is a note too (the pins may be a remote Pi's, through pigpio), not an error.
    """
    if not settings.devices:
        return None  # gpiozero is slow to import on a Pi: not without devices
    from gpiozero import PinInvalidPin, PinUnknownPi
    from gpiozero.pins.local import get_pi_revision
    from gpiozero.pins.mock import MockFactory
    from gpiozero.pins.pi import PiBoardInfo

    note = None
    if (choose_pin_factory(settings.pin_factory) or os.environ.get("GPIOZERO_PIN_FACTORY")) == "mock":
        board = _mock_board(MockFactory)
    else:
        try:
            board = PiBoardInfo.from_revision(get_pi_revision())
        except (PinUnknownPi, OSError, ValueError):  # not a Pi: a device's config checked on a laptop
            board = _mock_board(MockFactory)
            note = f"no Raspberry Pi board found here: pins were checked as a Pi {board.model}'s"
    used: dict[str, str] = {}
    for spec in settings.devices.values():
        try:
            gpio = board.to_gpio(spec.pin)
        except PinInvalidPin as exc:
            if note is not None and not strict:
                note += f"; {exc} there"
                continue
            raise ConfigError(f"{exc} on a Raspberry Pi {board.model} (a GPIO number like 17, or a name like "
                              f"'GPIO17', 'BOARD11' or 'J8:11')", path=settings.path, key=f"devices.{spec.name}.pin") from None
        if gpio in used:
            raise ConfigError(f"pin {spec.pin} is {gpio}, already used by device {used[gpio]!r}",
                              path=settings.path, key=f"devices.{spec.name}.pin")
        used[gpio] = spec.name
    return note


def _mock_board(factory_class: Any) -> Any:
    """The board gpiozero's mock pins pretend to be ($GPIOZERO_MOCK_REVISION, else a Pi 3B)."""
    factory = factory_class()
    try:
        return factory.board_info
    finally:
        factory.close()


def _make_factory(name: str | None) -> Any:
    if name is None:
        return None
    try:
        if name == "mock":
            from gpiozero.pins.mock import MockFactory, MockPWMPin

            return MockFactory(pin_class=MockPWMPin)
        if name == "lgpio":
            from gpiozero.pins.lgpio import LGPIOFactory

            return LGPIOFactory()
        if name == "rpigpio":
            from gpiozero.pins.rpigpio import RPiGPIOFactory

            return RPiGPIOFactory()
        if name == "pigpio":
            from gpiozero.pins.pigpio import PiGPIOFactory

            return PiGPIOFactory()
        from gpiozero.pins.native import NativeFactory

        return NativeFactory()
    except ImportError as exc:  # an optional part that is not installed: say what to install
        deb, pip = _FACTORY_PACKAGES.get(name, ("", ""))
        raise ConfigError(f"[gpio] pin_factory = {name!r} needs the {exc.name or name} module, which is not installed "
                          f"(Raspberry Pi OS: sudo apt install {deb}; a venv without system packages: pip install {pip})"
                          ) from exc
    except Exception as exc:
        raise HardwareError(f"pin factory {name!r} cannot start: {exc}") from exc


#: the Debian and PyPI packages of each pin factory's library
_FACTORY_PACKAGES = {"lgpio": ("python3-lgpio", "lgpio"), "rpigpio": ("python3-rpi.gpio", "RPi.GPIO"),
                     "pigpio": ("python3-pigpio", "pigpio")}


class Hardware:
    """The configured GPIO devices. ``on_change(name, value)`` is called for every change."""

    def __init__(self, specs: Mapping[str, DeviceSpec], pin_factory: str | None,
                 on_change: Callable[[str, Value], None] | None = None):
        self.specs = dict(specs)
        self.factory_name = choose_pin_factory(pin_factory)
        self.on_change = on_change or (lambda name, value: None)
        self._lock = threading.Lock()
        self._devices: dict[str, Any] = {}
        self._last_seq: dict[str, int] = {}
        self.factory: Any = None

    def open(self) -> None:
        if not self.specs:
            return
        self.factory = _make_factory(self.factory_name)
        try:
            import gpiozero
        except ImportError as exc:  # pragma: no cover - gpiozero is a dependency
            raise HardwareError(f"gpiozero is not installed: {exc}") from exc
        for spec in self.specs.values():
            try:
                self._devices[spec.name] = self._open_one(gpiozero, spec)
            except HardwareError:
                self.close()
                raise
            except gpiozero.PinInvalidPin as exc:  # check_pins() missed it (another board than the one checked)
                self.close()
                raise ConfigError(f"{exc}", key=f"devices.{spec.name}.pin") from exc
            except Exception as exc:
                self.close()
                raise HardwareError(f"device {spec.name!r} (pin {spec.pin}): {type(exc).__name__}: {exc}") from exc
        log.info("GPIO ready: %d devices on %s pins", len(self._devices), self.factory_name or "gpiozero's default")

    def _open_one(self, gpiozero: Any, spec: DeviceSpec) -> Any:
        if spec.kind == "output":
            return gpiozero.DigitalOutputDevice(spec.pin, active_high=spec.active_high,
                                                initial_value=spec.initial == "on", pin_factory=self.factory)
        if spec.kind == "pwm":
            return gpiozero.PWMOutputDevice(spec.pin, active_high=spec.active_high, initial_value=float(spec.initial),
                                            frequency=int(spec.frequency), pin_factory=self.factory)
        if spec.pull_up is None:
            dev = gpiozero.DigitalInputDevice(spec.pin, pull_up=None, active_state=spec.active_high,
                                              bounce_time=spec.bounce_time, pin_factory=self.factory)
        else:
            dev = gpiozero.DigitalInputDevice(spec.pin, pull_up=spec.pull_up, bounce_time=spec.bounce_time,
                                              pin_factory=self.factory)
        name = spec.name
        dev.when_activated = lambda: self.on_change(name, "on")
        dev.when_deactivated = lambda: self.on_change(name, "off")
        return dev

    def device(self, name: str) -> Any:
        try:
            return self._devices[name]
        except KeyError:
            raise HardwareError(f"device {name!r} is not open") from None

    def read(self, name: str) -> Value:
        dev = self.device(name)
        if self.specs[name].kind == "pwm":
            return round(float(dev.value), 4)
        return "on" if dev.value else "off"

    def set(self, name: str, value: Value, seq: int | None = None) -> tuple[Value, bool]:
        """Drive an output; returns (the value now, whether this write was applied).

        A write whose ``seq`` is older than the last applied one for that device is
        skipped (the newer command already decided).
        """
        spec = self.specs[name]
        with self._lock:
            if seq is not None:
                if seq < self._last_seq.get(name, -1):
                    return self.read(name), False
                self._last_seq[name] = seq
            dev = self.device(name)
            before = self.read(name)
            try:
                if spec.kind == "pwm":
                    if value == "toggle":
                        level = 0.0 if float(dev.value) > 0 else 1.0
                    else:
                        level = 1.0 if value == "on" else 0.0 if value == "off" else float(value)
                    dev.value = level
                elif value == "toggle":
                    dev.toggle()
                elif value == "on":
                    dev.on()
                else:
                    dev.off()
            except Exception as exc:
                raise HardwareError(f"device {name!r}: {type(exc).__name__}: {exc}") from exc
            after = self.read(name)
        if after != before:
            self.on_change(name, after)
        return after, True

    def safe_state(self) -> None:
        """Put every output in its configured ``initial`` state."""
        for name, spec in self.specs.items():
            if spec.kind == "input" or name not in self._devices:
                continue
            try:
                value, _ = self.set(name, spec.initial)
            except HardwareError as exc:
                log.error("could not make %s safe: %s", name, exc)
            else:
                log.info("%s is %s, its safe state", name, value)

    def states(self) -> dict[str, Value]:
        return {name: self.read(name) for name in self._devices}

    def close(self) -> None:
        """Outputs to their safe state, then release every pin."""
        self.safe_state()
        for name, dev in list(self._devices.items()):
            try:
                dev.close()
            except Exception as exc:  # closing must go on for the other pins
                log.warning("closing %s: %s", name, exc)
        self._devices.clear()
        if self.factory is not None:
            try:
                self.factory.close()
            except Exception as exc:
                log.warning("closing the pin factory: %s", exc)
            self.factory = None
