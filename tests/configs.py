"""One builder for the agent configs the tests write, so a new config key is added in one place.

``agent_config(folder, device="porch", mqtt_port=broker.port, devices=LAMP)`` writes
``folder/config.toml`` with what every test wants (the database in ``folder``, a clock
trusted at once, mock pins, MQTT discovery off) and returns its path. Any table may be
given as a keyword; it is merged over the defaults key by key, and ``None`` removes a
key or a whole table: ``queue={"workers": 1}``, ``mqtt={"discovery": True}``,
``gpio=None``. Arrays of tables (``jobs=[...]``, ``windows=[...]``) are lists of dicts.

The file is written by a small TOML serializer of plain values, so a test can also
write keys the agent does not know (an error case) without writing TOML by hand.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from datetime import date, datetime, time
from pathlib import Path
from typing import Any

__all__ = ["ISTANBUL", "LAMP", "LAMP_DIM_DOOR", "TASKS", "agent_config", "to_toml"]

TASKS = Path(__file__).resolve().parent / "tasks"

LAMP: dict[str, dict[str, Any]] = {"lamp": {"kind": "output", "pin": 17}}
LAMP_DIM_DOOR: dict[str, dict[str, Any]] = {
    **LAMP,
    "dim": {"kind": "pwm", "pin": 18},
    "door": {"kind": "input", "pin": 27},
}
#: a [location] with sunrise and sunset, for solar jobs and windows
ISTANBUL: dict[str, Any] = {"latitude": 41.0082, "longitude": 28.9784, "timezone": "Europe/Istanbul"}


def agent_config(
    folder: Path,
    *,
    device: str = "dev",
    groups: Sequence[str] = (),
    mqtt_port: int | None = None,
    prefix: str = "edge",
    tasks: str | Sequence[str] | None = None,
    task_paths: Sequence[str | Path] = (TASKS,),
    name: str = "config.toml",
    **tables: Any,
) -> Path:
    """Write ``folder/name`` and return its path.

    ``mqtt_port`` adds ``[mqtt]`` on 127.0.0.1 with ``prefix`` as its topic prefix;
    ``tasks`` names the task module(s), found in ``task_paths`` (tests/tasks unless told).
    Every other keyword is a top-level table or array of tables, merged over the defaults.
    """
    doc: dict[str, Any] = {"device": {"id": device}}
    if groups:
        doc["device"]["groups"] = list(groups)
    doc["storage"] = {"path": str(folder / "agent.db")}
    doc["clock"] = {"trust": "always"}
    if mqtt_port is not None:
        doc["mqtt"] = {"host": "127.0.0.1", "port": mqtt_port, "topic_prefix": prefix, "discovery": False}
    doc["gpio"] = {"pin_factory": "mock"}
    if tasks is not None:
        modules = [tasks] if isinstance(tasks, str) else list(tasks)
        doc["tasks"] = {"modules": modules, "paths": [str(p) for p in task_paths]}
    path = folder / name
    path.write_text(to_toml(_merge(doc, tables)))
    return path


def _merge(base: Mapping[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``changes`` laid over it: tables merge key by key, ``None`` deletes, anything else replaces."""
    out = dict(base)
    for key, value in changes.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


# --------------------------------------------------------------------------- TOML


def to_toml(doc: Mapping[str, Any]) -> str:
    """A TOML document for ``doc``: dicts become tables, lists of dicts arrays of tables."""
    lines: list[str] = []
    _table(lines, (), doc)
    return "\n".join(lines) + "\n"


def _is_table_array(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and bool(value) and all(isinstance(v, Mapping) for v in value)


def _table(lines: list[str], path: tuple[str, ...], table: Mapping[str, Any]) -> None:
    # Plain keys must come before any sub-table header, or TOML would file them under it.
    for key, value in table.items():
        if not isinstance(value, Mapping) and not _is_table_array(value):
            lines.append(f"{_key(key)} = {_value(value)}")
    for key, value in table.items():
        if isinstance(value, Mapping):
            lines.append(f"[{'.'.join(_key(k) for k in (*path, key))}]")
            _table(lines, (*path, key), value)
        elif _is_table_array(value):
            for item in value:
                lines.append(f"[[{'.'.join(_key(k) for k in (*path, key))}]]")
                _table_array_item(lines, item)


def _table_array_item(lines: list[str], item: Mapping[str, Any]) -> None:
    """One ``[[name]]`` element: its tables (a job's ``args``) are written inline, which reads better."""
    for key, value in item.items():
        lines.append(f"{_key(key)} = {_value(value)}")


_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _key(key: str) -> str:
    return key if _BARE_KEY.match(key) else _string(key)


def _string(text: str) -> str:
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, (str, Path)):
        return _string(str(value))
    if isinstance(value, (datetime, date, time)):
        return value.isoformat()
    if isinstance(value, Mapping):
        return ("{ " + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items()) + " }") if value else "{}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    raise TypeError(f"no TOML for {type(value).__name__}: {value!r}")
