"""Typed settings, read once from a TOML file: the only module that reads the config.

Every error names the file, the key and the problem (:class:`ConfigError`), and
unknown keys are errors with a did-you-mean, so a typo fails at start-up, not at 3 a.m.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from edge_agent.durations import format_duration, parse_duration
from edge_agent.errors import ConfigError

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "DeviceSpec",
    "EventsSettings",
    "JobSpec",
    "MqttSettings",
    "Settings",
    "WindowSpec",
    "check_tls_files",
    "config_path",
    "load_settings",
    "parse_schedule",
    "parse_settings",
    "read_toml",
]

DEFAULT_CONFIG_PATH = "/etc/edge-agent/config.toml"
DEFAULT_DB_PATH = "/var/lib/edge-agent/agent.db"
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
_DEVICE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
TRIGGER_KINDS = ("solar", "cron", "every", "at")
EVERY_RANGE = (1.0, 366 * 86400.0)
OFFSET_RANGE = (-12 * 3600.0, 12 * 3600.0)  # a solar job's offset, as a window's

#: The keys each table may hold (a key the parser reads must be listed here, or it is refused
#: as unknown): unknown keys are reported first, with a did-you-mean.
_KEYS: dict[str, tuple[str, ...]] = {
    "": ("device", "location", "storage", "clock", "mqtt", "gpio", "devices", "tasks", "queue", "log", "events",
         "jobs", "windows"),
    "device": ("id", "groups"),
    "location": ("latitude", "longitude", "timezone"),
    "storage": ("path", "sync", "keep"),
    "clock": ("trust",),
    "mqtt": ("host", "port", "topic_prefix", "username", "password_file", "tls", "keepalive", "protocol", "client_id",
             "max_payload", "discovery", "discovery_prefix", "ha_status_topic", "state_interval", "session_expiry"),
    "mqtt.tls": ("ca_file", "cert_file", "key_file", "insecure"),
    "gpio": ("pin_factory",),
    "devices.*": ("kind", "pin", "active_high", "initial", "frequency", "pull_up", "bounce_time"),
    "tasks": ("modules", "paths"),
    "queue": ("workers", "network_workers", "drain_timeout", "task_timeout"),
    "log": ("level",),
    "events": ("keep", "max_rows", "outbox_max", "enabled"),
    "jobs": ("name", *TRIGGER_KINDS, "offset", "action", "args", "missed", "grace", "not_before", "not_after", "anchor"),
    "windows": ("device", "from", "until", "value"),
    "schedule": ("version", "jobs", "windows", "set_at", "by", "clear"),  # a schedule document (parse_schedule)
}

#: device ids that would collide with the topics of fleet schedules (P/all/schedule, P/group/<g>/...)
RESERVED_DEVICE_IDS = ("all", "group")
VERSION_MAX = 2**63 - 1  # a schedule document's version: SQLite's integer


@dataclass(frozen=True)
class LocationSettings:
    latitude: float | None = None
    longitude: float | None = None
    timezone: str = "UTC"

    @property
    def tz(self) -> Any:
        from zoneinfo import ZoneInfo

        return ZoneInfo(self.timezone)


@dataclass(frozen=True)
class TLSSettings:
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    insecure: bool = False


@dataclass(frozen=True)
class MqttSettings:
    host: str = "127.0.0.1"
    port: int = 1883
    topic_prefix: str = "edge"
    username: str | None = None
    password_file: str | None = None
    tls: TLSSettings | None = None
    keepalive: float = 30.0
    protocol: str = "auto"  # auto | 5 | 3.1.1
    client_id: str | None = None
    max_payload: int = 65536
    discovery: bool = True
    discovery_prefix: str = "homeassistant"
    ha_status_topic: str = "homeassistant/status"  # Home Assistant's birth topic
    state_interval: float = 300.0
    session_expiry: float = 86400.0

    def password(self) -> str | None:
        """The password, read from ``password_file`` (first line)."""
        if not self.password_file:
            return None
        with open(self.password_file, encoding="utf-8") as fh:
            return fh.readline().rstrip("\r\n")


@dataclass(frozen=True)
class DeviceSpec:
    name: str
    kind: str  # output | pwm | input
    pin: int | str
    active_high: bool = True
    initial: str | float = "off"
    frequency: float = 100.0
    pull_up: bool | None = None
    bounce_time: float | None = None


@dataclass(frozen=True)
class JobSpec:
    name: str
    kind: str  # solar | cron | every | at
    value: str
    offset: float
    action: str
    args: Mapping[str, Any]
    missed: str  # skip | once | all
    grace: float
    key: str  # where it stands in the file, for messages: "jobs[0]"
    not_before: str | None = None  # local wall time "HH:MM": firings earlier in the day are skipped
    not_after: str | None = None  # local wall time "HH:MM": firings later in the day are skipped
    anchor: str | None = None  # `every` only: the grid's origin, "HH:MM" or ISO-8601
    origin: str = "config"  # where it comes from: the file, or a schedule document's source ("all", "group:<g>", "device")
    version: int | None = None  # the schedule document's version (None: the file)


@dataclass(frozen=True)
class WindowSpec:
    device: str
    start: str
    until: str
    value: str | float
    key: str
    origin: str = "config"  # as JobSpec's
    version: int | None = None


@dataclass(frozen=True)
class EventsSettings:
    """``[events]``: how much task-event history a device keeps, and how many events may wait
    in the outbox while the broker is away (beyond that the oldest are dropped from the
    outbox, not from the history: consumers see the gap in ``seq`` and fetch it)."""

    keep: float = 7 * 86400.0
    max_rows: int = 100_000
    outbox_max: int = 10_000
    enabled: bool = True  # false: no events at all (a quarter fewer bytes written per command, measured)


@dataclass(frozen=True)
class Settings:
    path: str
    device_id: str
    groups: tuple[str, ...] = ()
    location: LocationSettings = field(default_factory=LocationSettings)
    db_path: str = DEFAULT_DB_PATH
    sync: str = "normal"  # normal | full
    keep: float = 7 * 86400.0
    clock_trust: str = "sync"  # sync | always
    mqtt: MqttSettings | None = None
    pin_factory: str | None = None
    devices: Mapping[str, DeviceSpec] = field(default_factory=dict)
    task_modules: tuple[str, ...] = ()
    task_paths: tuple[str, ...] = ()
    workers: int = 4
    network_workers: int = 2
    drain_timeout: float = 10.0
    task_timeout: float = 3600.0
    jobs: tuple[JobSpec, ...] = ()
    windows: tuple[WindowSpec, ...] = ()
    log_level: str = "info"
    events: EventsSettings = field(default_factory=EventsSettings)


def config_path(explicit: str | None = None, environ: Mapping[str, str] | None = None) -> str:
    """The config file to use: ``--config``, else ``$EDGE_AGENT_CONFIG``, else the default."""
    env = os.environ if environ is None else environ
    return explicit or env.get("EDGE_AGENT_CONFIG") or DEFAULT_CONFIG_PATH


def read_toml(path: str, what: str = "config file", missing: str = "no such file") -> dict[str, Any]:
    """The TOML file at ``path`` as a dict; raises :class:`ConfigError` naming the file and the problem."""
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(missing, path=path) from None
    except IsADirectoryError:
        raise ConfigError(f"is a directory, not a {what}", path=path) from None
    except PermissionError:
        raise ConfigError("permission denied", path=path) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}", path=path) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"not UTF-8 text: {exc}", path=path) from None


def load_settings(path: str) -> Settings:
    """Read and validate the config file at ``path``; raises :class:`ConfigError`."""
    raw = read_toml(path, missing="no such file (give --config PATH or set EDGE_AGENT_CONFIG)")
    return parse_settings(raw, path=path)


# --------------------------------------------------------------------------- helpers


class _Table:
    """One TOML table being read: tracks keys used so leftovers can be reported."""

    def __init__(self, raw: Any, key: str, path: str):
        if not isinstance(raw, dict):
            raise ConfigError(f"expected a table, got {_show(raw)}", path=path, key=key)
        self.raw, self.key, self.path = raw, key, path
        self.used: set[str] = set()
        self.schema: str | None = None

    def expect(self, schema: str) -> None:
        """Fail on a key that ``_KEYS[schema]`` does not list, before any other check: a typo is
        named as a typo (``knd``), not as the key it hides (``kind: is required``)."""
        self.schema = schema
        for name in self.raw:
            if name not in _KEYS[schema]:
                raise self.error(name, f"unknown key{_suggestion(name, _KEYS[schema])}")

    def error(self, name: str, message: str) -> ConfigError:
        return ConfigError(message, path=self.path, key=self._key(name))

    def _key(self, name: str) -> str:
        return f"{self.key}.{name}" if self.key else name

    def get(self, name: str, conv: Callable[[Any], Any], default: Any = None, *, required: bool = False) -> Any:
        self.used.add(name)
        if name not in self.raw:
            if required:
                raise self.error(name, "is required")
            return default
        try:
            return conv(self.raw[name])
        except ConfigError:
            raise
        except (ValueError, TypeError, OverflowError) as exc:
            raise self.error(name, str(exc)) from None

    def table(self, name: str) -> _Table | None:
        self.used.add(name)
        if name not in self.raw:
            return None
        return _Table(self.raw[name], self._key(name), self.path)

    def finish(self, allowed_extra: tuple[str, ...] = ()) -> None:
        known = self.used | set(allowed_extra)
        # A key read here but missing from _KEYS would be refused as unknown by expect().
        assert self.schema is None or known <= set(_KEYS[self.schema]), (
            f"config.py reads {sorted(known - set(_KEYS[self.schema]))} in a {self.schema!r} table: add them to _KEYS")
        for name in self.raw:
            if name not in known:  # a key of another device kind (an input's `initial`)
                raise self.error(name, f"unknown key{_suggestion(name, known)}")


def _suggestion(name: str, known: Any) -> str:
    hint = _close_matches(name, sorted(known), n=1)
    return f" (did you mean {hint[0]!r}?)" if hint else f" (known keys: {', '.join(sorted(known))})"


def _close_matches(word: str, options: Any, n: int = 1) -> list[str]:
    import difflib  # only when there is a mistake to explain

    return difflib.get_close_matches(word, options, n=n)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) < 60 else text[:57] + "..."


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {_show(value)}")
    return value


def _nonempty_str(value: Any) -> str:
    if not _str(value).strip():
        raise ValueError("must not be empty")
    return value


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {_show(value)}")
    return value


def _int_range(lo: int, hi: int) -> Callable[[Any], int]:
    def conv(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected a whole number from {lo} to {hi}, got {_show(value)}")
        if not lo <= value <= hi:
            raise ValueError(f"must be from {lo} to {hi}, got {_show(value)}")
        return value

    return conv


def _float_range(lo: float, hi: float) -> Callable[[Any], float]:
    def conv(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"expected a number from {lo} to {hi}, got {_show(value)}")
        if not lo <= value <= hi:  # false for nan; an integer too large for a float compares as it is
            raise ValueError(f"must be from {lo} to {hi}, got {_show(value)}")
        return float(value)

    return conv


def _choice(*options: str) -> Callable[[Any], str]:
    def conv(value: Any) -> str:
        if value not in options:
            hint = _close_matches(str(value), options, n=1)
            extra = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise ValueError(f"must be one of {', '.join(repr(o) for o in options)}, got {_show(value)}{extra}")
        return str(value)

    return conv


def _duration_range(lo: float, hi: float, why: str = "") -> Callable[[Any], float]:
    """A duration (``"15m"``, or seconds as a number) from ``lo`` to ``hi`` seconds: never nan or infinite."""
    def conv(value: Any) -> float:
        # A number is compared before it becomes a float: an integer too large for one is out of range too.
        seconds = value if isinstance(value, (int, float)) and not isinstance(value, bool) else parse_duration(value, signed=lo < 0)
        if not lo <= seconds <= hi:  # false for nan
            raise ValueError(f"must be from {format_duration(lo)} to {format_duration(hi)}{why}, got {_show(value)}")
        return float(seconds)

    return conv


def _every(value: Any) -> str:
    """An ``every`` interval: checked for its range here, parsed again by the trigger."""
    _duration_range(*EVERY_RANGE)(value)
    return _trigger_value(value)


def _solar(value: Any) -> str:
    """A solar event; an offset written into it (``"sunset-15m"``) is in the range of ``offset``."""
    from edge_agent.schedule.solar import parse_solar_expr

    text = _nonempty_str(value)
    _, offset = parse_solar_expr(text)
    if not OFFSET_RANGE[0] <= offset <= OFFSET_RANGE[1]:
        raise ValueError(f"the offset in {text!r} must be from -12h to 12h")
    return text


def _str_list(value: Any) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"expected a list of strings, got {_show(value)}")
    return tuple(value)


def _timezone(value: Any) -> str:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    name = _str(value)
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r} (use an IANA name such as 'Europe/Istanbul')") from None
    return name


def _system_timezone() -> str:
    env = os.environ.get("TZ", "").lstrip(":")
    if env and "/" in env:
        return env
    try:
        with open("/etc/timezone", encoding="utf-8") as fh:
            name = fh.read().strip()
            if name:
                return name
    except OSError:
        pass
    try:
        target = os.readlink("/etc/localtime")
        marker = "zoneinfo/"
        if marker in target:
            return target.split(marker, 1)[1]
    except OSError:
        pass
    return "UTC"


def _default_device_id() -> str:
    import socket

    name = re.sub(r"[^a-z0-9_-]", "-", socket.gethostname().lower().split(".")[0]).strip("-_")
    return name if name and _NAME.match(name) and name not in RESERVED_DEVICE_IDS else "edge"


# --------------------------------------------------------------------------- parsing


def parse_settings(raw: Mapping[str, Any], *, path: str = "<config>") -> Settings:
    """Validate a decoded TOML document; raises :class:`ConfigError`."""
    top = _Table(dict(raw), "", path)
    top.expect("")

    device_id, groups = _default_device_id(), ()
    if (t := top.table("device")) is not None:
        t.expect("device")
        device_id = t.get("id", _ident("device id"), device_id)
        if device_id in RESERVED_DEVICE_IDS:
            raise t.error("id", f"{device_id!r} is reserved (P/{device_id}/... are the topics of fleet schedules); "
                                "choose another device id")
        groups = t.get("groups", _ident_list, ())
        t.finish()

    location = LocationSettings(timezone=_system_timezone())
    if (t := top.table("location")) is not None:
        t.expect("location")
        lat = t.get("latitude", _float_range(-90, 90))
        lon = t.get("longitude", _float_range(-180, 180))
        if (lat is None) != (lon is None):
            raise t.error("latitude" if lat is None else "longitude", "latitude and longitude go together")
        location = LocationSettings(lat, lon, t.get("timezone", _timezone, location.timezone))
        t.finish()

    db_path, sync, keep = DEFAULT_DB_PATH, "normal", 7 * 86400.0
    if (t := top.table("storage")) is not None:
        t.expect("storage")
        db_path = t.get("path", _nonempty_str, db_path)
        sync = t.get("sync", _choice("normal", "full"), sync)
        keep = t.get("keep", _duration_range(86400, 3650 * 86400, " (command ids are remembered at least 1d)"), keep)
        t.finish()
    db_path = os.path.expanduser(db_path)
    if not os.path.isabs(db_path) and path != "<config>":
        db_path = os.path.join(os.path.dirname(os.path.realpath(path)), db_path)

    clock_trust = "sync"
    if (t := top.table("clock")) is not None:
        t.expect("clock")
        clock_trust = t.get("trust", _choice("sync", "always"), clock_trust)
        t.finish()

    mqtt = None
    if (t := top.table("mqtt")) is not None:
        t.expect("mqtt")
        mqtt = _parse_mqtt(t)

    pin_factory = None
    if (t := top.table("gpio")) is not None:
        t.expect("gpio")
        pin_factory = t.get("pin_factory", _choice("mock", "lgpio", "rpigpio", "pigpio", "native"))
        t.finish()

    devices: dict[str, DeviceSpec] = {}
    if (t := top.table("devices")) is not None:
        for name in t.raw:
            t.used.add(name)
            if not _DEVICE_NAME.match(name):
                raise t.error(name, "a device name uses letters, digits, '_' and '-'")
            sub = t.table(name)
            assert sub is not None
            devices[name] = _parse_device(name, sub)
        pins: dict[Any, str] = {}
        for spec in devices.values():
            same = _pin_identity(spec.pin)
            if same in pins:
                raise t.error(f"{spec.name}.pin", f"pin {spec.pin} is already used by device {pins[same]!r}")
            pins[same] = spec.name

    modules: tuple[str, ...] = ()
    paths: tuple[str, ...] = ()
    if (t := top.table("tasks")) is not None:
        t.expect("tasks")
        modules = t.get("modules", _str_list, ())
        paths = t.get("paths", _str_list, ())
        t.finish()
    if path != "<config>":
        base = os.path.dirname(os.path.abspath(path))
        paths = tuple(p if os.path.isabs(p) else os.path.normpath(os.path.join(base, p)) for p in paths)

    workers, network_workers, drain, task_timeout = 4, 2, 10.0, 3600.0
    if (t := top.table("queue")) is not None:
        t.expect("queue")
        workers = t.get("workers", _int_range(1, 64), workers)
        network_workers = t.get("network_workers", _int_range(0, 64), network_workers)
        drain = t.get("drain_timeout", _duration_range(0, 3600), drain)
        task_timeout = t.get("task_timeout", _duration_range(1, 7 * 86400), task_timeout)
        t.finish()

    log_level = "info"
    if (t := top.table("log")) is not None:
        t.expect("log")
        log_level = t.get("level", _choice("debug", "info", "warning", "error"), log_level)
        t.finish()

    events = EventsSettings()
    if (t := top.table("events")) is not None:
        t.expect("events")
        events = EventsSettings(keep=t.get("keep", _duration_range(3600, 3650 * 86400), events.keep),
                                max_rows=t.get("max_rows", _int_range(1000, 100_000_000), events.max_rows),
                                outbox_max=t.get("outbox_max", _int_range(10, 10_000_000), events.outbox_max),
                                enabled=t.get("enabled", _bool, True))
        t.finish()

    jobs = tuple(_parse_jobs(top))
    windows = tuple(_parse_windows(top, devices))
    top.finish()

    _check_triggers(jobs, windows, location, path)
    settings = Settings(
        path=path, device_id=device_id, groups=groups, location=location, db_path=db_path, sync=sync,
        keep=keep, clock_trust=clock_trust, mqtt=mqtt, pin_factory=pin_factory, devices=devices,
        task_modules=modules, task_paths=paths, workers=workers, network_workers=network_workers, drain_timeout=drain, task_timeout=task_timeout, jobs=jobs,
        windows=windows, log_level=log_level, events=events,
    )
    return settings


def parse_schedule(doc: Mapping[str, Any], *, where: str, devices: Mapping[str, DeviceSpec] | None,
                   location: LocationSettings | None = None) -> tuple[tuple[JobSpec, ...], tuple[WindowSpec, ...]]:
    """The jobs and windows of a schedule document (fleet schedules), checked by the code that
    checks ``[[jobs]]`` and ``[[windows]]`` in the config file, with its messages; ``where`` stands
    where the file's path would (``schedule group:greenhouse v3``). Raises :class:`ConfigError`.

    The document: ``{"version": 1.., "jobs": [...], "windows": [...]}`` (optional ``set_at``,
    ``by``), or a tombstone ``{"version", "clear": true}`` (no jobs, no windows).
    ``devices`` is the device's ``[devices]``; None (the operator's side) skips what only the
    device can check (the device a window names, and its kind). ``location`` is the device's
    ``[location]``; None skips the check that solar jobs and windows have one."""
    top = _Table(dict(doc) if isinstance(doc, Mapping) else doc, "", where)
    top.expect("schedule")
    top.get("version", _int_range(1, VERSION_MAX), required=True)
    top.get("set_at", _float_range(0, 1e11))
    top.get("by", _str)
    if top.get("clear", _bool, False):
        extra = next((k for k in ("jobs", "windows") if k in top.raw), None)
        if extra is not None:
            raise top.error(extra, "a document that clears (clear = true) holds no jobs and no windows")
    jobs = tuple(_parse_jobs(top))
    windows = tuple(_parse_windows(top, devices))
    top.finish()
    _check_triggers(jobs, windows, location, where)
    return jobs, windows


def _ident(what: str) -> Callable[[Any], str]:
    def conv(value: Any) -> str:
        if not isinstance(value, str) or not _NAME.match(value):
            raise ValueError(f"a {what} is lowercase letters, digits, '_' and '-', starting with a letter or digit; got {_show(value)}")
        return value

    return conv


def _ident_list(value: Any) -> tuple[str, ...]:
    return tuple(_ident("group name")(v) for v in _str_list(value))


def _parse_mqtt(t: _Table) -> MqttSettings:
    tls = None
    if "tls" in t.raw:
        sub = t.table("tls")
        assert sub is not None
        sub.expect("mqtt.tls")
        tls = TLSSettings(
            ca_file=sub.get("ca_file", _readable_file),
            cert_file=sub.get("cert_file", _readable_file),
            key_file=sub.get("key_file", _readable_file),
            insecure=sub.get("insecure", _bool, False),
        )
        sub.finish()
        if (tls.cert_file is None) != (tls.key_file is None):
            raise sub.error("cert_file", "cert_file and key_file go together")
    password_file = t.get("password_file", _readable_file)
    username = t.get("username", _nonempty_str)
    if password_file and not username:
        raise t.error("username", "is required when password_file is given")
    prefix = t.get("topic_prefix", _topic_part, "edge")
    settings = MqttSettings(
        host=t.get("host", _nonempty_str, "127.0.0.1"),
        port=t.get("port", _int_range(1, 65535), 8883 if tls else 1883),
        topic_prefix=prefix,
        username=username,
        password_file=password_file,
        tls=tls,
        keepalive=t.get("keepalive", _duration_range(5, 65535, " (65535 s, MQTT's limit)"), 30.0),
        protocol=t.get("protocol", _choice("auto", "5", "3.1.1"), "auto"),
        client_id=t.get("client_id", _nonempty_str),
        max_payload=t.get("max_payload", _int_range(256, 16 * 1024 * 1024), 65536),
        discovery=t.get("discovery", _bool, True),
        discovery_prefix=t.get("discovery_prefix", _topic_part, "homeassistant"),
        ha_status_topic=t.get("ha_status_topic", _topic_part, "homeassistant/status"),
        state_interval=t.get("state_interval", _duration_range(1, 86400), 300.0),
        session_expiry=t.get("session_expiry", _duration_range(0, 0xFFFFFFFF, " (4294967295 s, MQTT's limit)"), 86400.0),
    )
    t.finish()
    return settings


def check_tls_files(settings: Settings) -> None:
    """``[mqtt] tls`` files load as the MQTT link will load them, so a file that is not a certificate
    fails `check` and `run` at start, not the link's thread at its first connect. Not part of
    :func:`parse_settings`: ``send`` would pay for loading a CA bundle on every command."""
    tls = settings.mqtt.tls if settings.mqtt else None
    if tls is None:
        return
    import ssl

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if tls.ca_file:
        try:
            context.load_verify_locations(tls.ca_file)
        except (ssl.SSLError, ValueError) as exc:
            raise ConfigError(f"{tls.ca_file} holds no usable certificate ({exc})", path=settings.path,
                              key="mqtt.tls.ca_file") from None
    if tls.cert_file and tls.key_file:
        try:  # the callback answers a passphrase prompt: an encrypted key cannot be used unattended
            context.load_cert_chain(tls.cert_file, tls.key_file, password=lambda: b"")
        except (ssl.SSLError, ValueError) as exc:
            raise ConfigError(f"{tls.cert_file} with {tls.key_file} is not a certificate and its unencrypted "
                              f"private key ({exc})", path=settings.path, key="mqtt.tls.cert_file") from None


def _topic_part(value: Any) -> str:
    text = _nonempty_str(value)
    if any(c in text for c in "#+\0") or text.startswith("/") or text.endswith("/"):
        raise ValueError(f"not a usable topic prefix: {text!r} (no '#', '+', or leading/trailing '/')")
    return text


def _readable_file(value: Any) -> str:
    name = _nonempty_str(value)
    if not os.path.isfile(name):
        raise ValueError(f"no such file: {name}")
    if not os.access(name, os.R_OK):
        raise ValueError(f"cannot read {name} (permission denied)")
    return name


def _pin(value: Any) -> int | str:
    if isinstance(value, bool):
        raise ValueError(f"expected a GPIO number like 17 or a name like 'GPIO17' / 'BOARD11', got {value!r}")
    if isinstance(value, int):
        if not 0 <= value <= 53:
            raise ValueError(f"GPIO numbers run from 0 to 53, got {value}")
        return value
    if isinstance(value, str) and value.strip():
        return value.strip()
    raise ValueError(f"expected a GPIO number like 17 or a name like 'GPIO17' / 'BOARD11', got {_show(value)}")


def _pin_identity(pin: int | str) -> int | str:
    """The same GPIO however it is written: 17, "17", "GPIO17" and "BCM17" are one pin."""
    if isinstance(pin, str):
        m = re.fullmatch(r"(?:GPIO|BCM)?\s*(\d+)", pin.strip(), re.IGNORECASE)
        return int(m.group(1)) if m else pin.strip().upper()
    return pin


def _parse_device(name: str, t: _Table) -> DeviceSpec:
    t.expect("devices.*")
    kind = t.get("kind", _choice("output", "pwm", "input"), required=True)
    pin = t.get("pin", _pin, required=True)
    active_high = t.get("active_high", _bool, True)
    if kind == "input":
        if "active_high" in t.raw and t.raw.get("pull_up") is not None:
            raise t.error("active_high", "with pull_up set, the pull decides the active level (pull_up = true: active "
                                         "when low); leave out active_high, or set pull_up only for a floating input")
        spec = DeviceSpec(
            name, kind, pin, active_high, "off",
            pull_up=t.get("pull_up", _bool), bounce_time=t.get("bounce_time", _duration_range(0, 60)),
        )
    elif kind == "pwm":
        initial = t.get("initial", _level, 0.0)
        spec = DeviceSpec(name, kind, pin, active_high, initial, frequency=t.get("frequency", _float_range(1, 100000), 100.0))
    else:
        spec = DeviceSpec(name, kind, pin, active_high, t.get("initial", _choice("off", "on"), "off"))
    t.finish()
    return spec


def _level(value: Any) -> float:
    if value in ("on", "off"):
        return 1.0 if value == "on" else 0.0
    return _float_range(0.0, 1.0)(value)


def _array_of_tables(top: _Table, name: str) -> list[tuple[str, _Table]]:
    top.used.add(name)
    raw = top.raw.get(name, [])
    if not isinstance(raw, list):
        raise top.error(name, f"expected [[{name}]] tables, got {_show(raw)}")
    tables = [(f"{name}[{i}]", _Table(item, f"{name}[{i}]", top.path)) for i, item in enumerate(raw)]
    for _, t in tables:
        t.expect(name)
    return tables


def _parse_jobs(top: _Table) -> list[JobSpec]:
    jobs: list[JobSpec] = []
    seen: set[str] = set()
    for key, t in _array_of_tables(top, "jobs"):
        name = t.get("name", _ident("job name"), required=True)
        if name in seen:
            raise t.error("name", f"job name {name!r} is used twice")
        seen.add(name)
        kinds = [k for k in TRIGGER_KINDS if k in t.raw]
        if len(kinds) != 1:
            raise ConfigError(f"needs exactly one of {', '.join(TRIGGER_KINDS)}; found {len(kinds) or 'none'}", path=t.path, key=key)
        kind = kinds[0]
        value = t.get(kind, {"every": _every, "solar": _solar}.get(kind, _trigger_value))
        offset = t.get("offset", _duration_range(*OFFSET_RANGE), 0.0)
        if offset and kind != "solar":
            raise t.error("offset", "only solar jobs take an offset")
        if "anchor" in t.raw and kind != "every":
            raise t.error("anchor", "only every jobs take an anchor")
        args = t.get("args", _args_table, {})
        jobs.append(
            JobSpec(
                name=name, kind=kind, value=value, offset=offset,
                action=t.get("action", _nonempty_str, required=True), args=args,
                missed=t.get("missed", _choice("skip", "once", "all"), "once"),
                grace=t.get("grace", _duration_range(0, 30 * 86400), 7200.0), key=key,
                not_before=t.get("not_before", _nonempty_str, None), not_after=t.get("not_after", _nonempty_str, None),
                anchor=t.get("anchor", _trigger_value, None),
            )
        )
        t.finish()
    return jobs


def _trigger_value(value: Any) -> str:
    if isinstance(value, datetime):  # TOML datetimes for `at`
        return value.isoformat()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{value}s"
    return _nonempty_str(value)


def _args_table(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"expected a table of arguments, got {_show(value)}")
    return dict(value)


def _parse_windows(top: _Table, devices: Mapping[str, DeviceSpec] | None) -> list[WindowSpec]:
    """``devices`` None: the devices are not known here (a schedule document on the operator's
    side): any name, and a value that suits an output or a PWM output."""
    windows: list[WindowSpec] = []
    for key, t in _array_of_tables(top, "windows"):
        device = t.get("device", _nonempty_str, required=True)
        if devices is None:
            any_value: str | float = t.get("value", _on_off_or_level, "on")
            windows.append(WindowSpec(device, t.get("from", _nonempty_str, required=True),
                                      t.get("until", _nonempty_str, required=True), any_value, key))
            t.finish()
            continue
        spec = devices.get(device)
        if spec is None:
            raise t.error("device", f"no device {device!r} under [devices]{_did_you_mean(device, devices)}")
        if spec.kind == "input":
            raise t.error("device", f"{device!r} is an input; windows hold outputs")
        value: str | float = t.get("value", _level, 1.0) if spec.kind == "pwm" else t.get("value", _choice("on", "off"), "on")
        windows.append(WindowSpec(device, t.get("from", _nonempty_str, required=True), t.get("until", _nonempty_str, required=True), value, key))
        t.finish()
    return windows


def _on_off_or_level(value: Any) -> str | float:
    return value if value in ("on", "off") else _float_range(0.0, 1.0)(value)


def _did_you_mean(name: str, options: Mapping[str, Any] | list[str]) -> str:
    hint = _close_matches(name, list(options), n=1)
    return f" (did you mean {hint[0]!r}?)" if hint else ""


def _check_triggers(jobs: tuple[JobSpec, ...], windows: tuple[WindowSpec, ...], location: LocationSettings | None,
                    path: str) -> None:
    """Triggers and window expressions are parsed now so a bad one stops start-up (or refuses a
    schedule document). ``location`` None: whether solar ones have a place is not checked."""
    loc = location if location is not None else LocationSettings(0.0, 0.0)
    needs_location = [j for j in jobs if j.kind == "solar"]
    if needs_location and loc.latitude is None:
        raise ConfigError("solar jobs need [location] latitude and longitude", path=path, key=f"{needs_location[0].key}.solar")
    if not jobs and not windows:
        return
    from edge_agent.schedule.triggers import job_trigger
    from edge_agent.schedule.windows import parse_time_expr

    for job in jobs:
        try:
            job_trigger(job, loc)
        except ValueError as exc:
            field = next((k for k in ("not_before", "not_after", "anchor") if str(exc).startswith(k)), job.kind)
            raise ConfigError(str(exc), path=path, key=f"{job.key}.{field}") from None
    for window in windows:
        for name, text in (("from", window.start), ("until", window.until)):
            try:
                expr = parse_time_expr(text)
            except ValueError as exc:
                raise ConfigError(str(exc), path=path, key=f"{window.key}.{name}") from None
            if getattr(expr, "event", None) and loc.latitude is None:
                raise ConfigError("solar times need [location] latitude and longitude", path=path, key=f"{window.key}.{name}")
