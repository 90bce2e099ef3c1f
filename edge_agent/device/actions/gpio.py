"""``gpio.set``, ``gpio.pulse`` and ``gpio.read``: the configured devices, by name."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from edge_agent.config import DeviceSpec
from edge_agent.device.actions.registry import Action, Runtime, bad_args
from edge_agent.device.commands import Command, NewCommand, Param

if TYPE_CHECKING:
    from edge_agent.device.hardware import Hardware

__all__ = ["gpio_actions", "normalize_value", "set_payload_value"]

MAX_PULSE = 86400.0


def set_payload_value(text: str) -> Any:
    """The value a Home Assistant style ``P/D/gpio/<name>/set`` payload stands for: ``on``, ``off``,
    ``toggle`` (any case) or a number; anything else as it is (``gpio.set`` then refuses it)."""
    word = text.strip()
    if word.lower() in ("on", "off", "toggle"):
        return word.lower()
    try:
        return float(word)
    except ValueError:
        return word.lower()


def normalize_value(action: str, spec: DeviceSpec, value: Any) -> str | float:
    """``on``/``off``/``toggle`` (any case), or a level 0.0-1.0 for PWM outputs."""
    if isinstance(value, str):
        word = value.strip().lower()
        if word in ("on", "off", "toggle"):
            return word
        if spec.kind == "pwm":
            try:
                value = float(word)
            except ValueError:
                pass
    if spec.kind == "pwm" and isinstance(value, (int, float)) and not isinstance(value, bool):
        if 0.0 <= value <= 1.0:
            return float(value)
        raise bad_args(action, f"value for PWM device {spec.name!r} must be from 0.0 to 1.0, got {value}")
    allowed = "'on', 'off', 'toggle' or a level from 0.0 to 1.0" if spec.kind == "pwm" else "'on', 'off' or 'toggle'"
    raise bad_args(action, f"value must be {allowed}, got {value!r}")


def gpio_actions(devices: Mapping[str, DeviceSpec], runtime: Runtime | None) -> list[Action]:
    def device_of(action: str, args: dict[str, Any], *, output: bool) -> DeviceSpec:
        name = args["device"]
        spec = devices.get(name)
        if spec is None:
            import difflib

            hint = difflib.get_close_matches(name, list(devices), n=1)
            known = f"did you mean {hint[0]!r}?" if hint else (f"devices: {', '.join(devices)}" if devices else "no devices are configured")
            raise bad_args(action, f"no device {name!r} ({known})")
        if output and spec.kind == "input":
            raise bad_args(action, f"{name!r} is an input; it cannot be set")
        return spec

    def check_set(args: dict[str, Any]) -> None:
        spec = device_of("gpio.set", args, output=True)
        args["value"] = normalize_value("gpio.set", spec, args["value"])

    def check_pulse(args: dict[str, Any]) -> None:
        device_of("gpio.pulse", args, output=True)
        if not 0 < args["seconds"] <= MAX_PULSE:
            raise bad_args("gpio.pulse", f"seconds must be more than 0 and at most {MAX_PULSE:g}, got {args['seconds']}")

    def check_read(args: dict[str, Any]) -> None:
        device_of("gpio.read", args, output=False)

    def gpio_set(device: str, value: str | float, *, command: Command) -> dict[str, Any]:
        hw = _hardware(runtime)
        now, applied = hw.set(device, value, seq=command.seq)
        out: dict[str, Any] = {"device": device, "value": now}
        if not applied:
            out["superseded"] = True
        return out

    def gpio_pulse(device: str, seconds: float, *, command: Command) -> dict[str, Any]:
        hw = _hardware(runtime)
        assert runtime is not None and runtime.submit is not None  # (the daemon's runtime has both)
        # The "off" is a command of its own, durable in the journal with its own start
        # time: it happens even if the agent restarts in between.
        off_at = time.time() + seconds
        runtime.submit(NewCommand(action="gpio.set", args={"device": device, "value": "off"},
                                  id=_follow_up_id(command.id, "off"), source="pulse", not_before=off_at))
        now, _ = hw.set(device, "on", seq=command.seq)
        return {"device": device, "value": now, "off_at": round(off_at, 3)}

    def gpio_read(device: str) -> dict[str, Any]:
        return {"device": device, "value": _hardware(runtime).read(device)}

    return [
        Action("gpio.set", gpio_set, (Param("device", str), Param("value", str | float)),
               idempotent=lambda args: args.get("value") != "toggle", check=check_set, wants_command=True),
        Action("gpio.pulse", gpio_pulse, (Param("device", str), Param("seconds", float)),
               idempotent=True, check=check_pulse, wants_command=True),
        Action("gpio.read", gpio_read, (Param("device", str),), idempotent=True, check=check_read),
    ]


def _follow_up_id(command_id: str, suffix: str) -> str:
    """``<id>/<suffix>``, kept within the 128 characters of an id and distinct from ``command_id``."""
    plain = f"{command_id}/{suffix}"
    if len(plain) <= 128:
        return plain
    import zlib

    return f"{command_id[:100]}~{zlib.crc32(command_id.encode()):08x}/{suffix}"

def _hardware(runtime: Runtime | None) -> Hardware:
    if runtime is None or runtime.hardware is None:
        raise RuntimeError("GPIO is only driven by the daemon")
    return runtime.hardware
