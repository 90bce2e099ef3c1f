"""The boundary: what a device sends, checked and bounded before anything else sees it.

A device is not trusted: whatever it publishes (on its own topics, which the broker's ACL
allows) is checked here, in the ingest thread, before it reaches the store, so a bad
message can only be dropped, never roll back or corrupt another device's rows.

- **Fields with a meaning** (``seq``, ``ts``, ``attempt``, ``runtime``, ``next_try``,
  ``planned``, the state's ``last_seq``) must be finite numbers in range; an event or
  state that breaks one is dropped as a whole (:class:`Rejected`, with the reason).
- **Free-form data** (``args``, ``result``, ``error`` and unknown extras) is kept, with
  numbers that are not finite turned into ``null`` and anything whose JSON is longer than
  its bound replaced by ``{"truncated": true, "bytes": N, "head": "..."}`` (truncated
  and saying so). Text columns are cut to their length and made valid UTF-8.

So one stored event is at most ~``EVENT_MAX`` bytes of JSON, whatever the device sent.
"""

from __future__ import annotations

import json
import math
from typing import Any

__all__ = ["EVENT_MAX", "FIELD_MAX", "JOBS_MAX", "SEQ_MAX", "STATE_MAX", "Rejected", "bounded", "clean_event", "clean_reply",
           "clean_state", "show", "text"]

SEQ_MAX = 2**63 - 1  # SQLite's integer
TS_MAX = 1e11  # seconds since 1970 (year 5138): beyond is not a time
COUNT_MAX = 10**9  # attempts, queue depths
FIELD_MAX = 8 * 1024  # bytes of JSON per free-form field (args, result, an unknown extra)
ERROR_MAX = 2000  # characters of an error message
EXTRAS_MAX = 20  # unknown keys kept per event
EVENT_MAX = 32 * 1024  # what one stored event's JSON comes to at most (the fields above, summed with margin)
STATE_MAX = 16 * 1024  # bytes of a device's state document (JSON); a larger one is dropped
JOBS_MAX = 64 * 1024  # bytes of its plan (the agent.jobs answer)
HEAD = 200  # characters of a truncated field that are kept

_KNOWN = frozenset({"seq", "device", "event", "id", "action", "ts", "source", "args", "attempt", "error", "next_try",
                    "runtime", "result", "job", "planned"})


class Rejected(ValueError):
    """A message that fails the checks: dropped (and logged by the caller), with the reason."""


def text(value: Any, limit: int) -> str | None:
    """``value`` as text of at most ``limit`` characters, valid UTF-8 (lone surrogates replaced)."""
    if value is None:
        return None
    s = (value if isinstance(value, str) else str(value))[:limit]
    return s if s.isascii() else s.encode("utf-8", "replace").decode("utf-8")


DEPTH_MAX = 64  # nesting a device may send; deeper is cut (a 1 KB message can nest 500 deep)


def _finite(value: Any, depth: int = 0) -> Any:
    """A copy of a parsed JSON value with non-finite numbers as None (JSON has none; json.loads
    accepts them) and anything nested deeper than :data:`DEPTH_MAX` as a truncation marker."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict | list) and depth >= DEPTH_MAX:
        return {"truncated": True, "bytes": None, "head": "", "why": f"nested deeper than {DEPTH_MAX}"}
    if isinstance(value, dict):
        return {k: _finite(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v, depth + 1) for v in value]
    return value


def bounded(value: Any, limit: int = FIELD_MAX) -> Any:
    """``value`` with non-finite numbers as null, or a marker saying it was truncated when its JSON exceeds ``limit``."""
    if value is None or isinstance(value, (bool, int)):
        return value if not isinstance(value, int) or abs(value) <= SEQ_MAX else None
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str) and len(value) <= limit // 4:
        return text(value, limit)
    try:
        dumped = json.dumps(value, separators=(",", ":"), default=str)
    except (ValueError, RecursionError):
        return {"truncated": True, "bytes": None, "head": ""}
    if len(dumped) > limit:
        return {"truncated": True, "bytes": len(dumped), "head": dumped[:HEAD]}
    return _finite(value)


def _number(doc: dict[str, Any], key: str, lo: float, hi: float, *, integer: bool = False) -> Any:
    value = doc.get(key)
    if value is None:
        return None
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if not ok or isinstance(value, bool) or not (isinstance(value, int) or math.isfinite(value)) or not lo <= value <= hi:
        raise Rejected(f"{key} is {show(value)}, not {'an integer' if integer else 'a number'} in [{lo:g}, {hi:g}]")
    return value


def show(value: Any) -> str:
    """``repr(value)`` cut to 40 characters, for messages about bad values."""
    return text(repr(value), 40) or ""


def clean_event(ev: Any, small: bool = False) -> dict[str, Any]:
    """The event as it is stored: checked, bounded, only JSON-safe values. Raises :class:`Rejected`.

    ``small``: the message it came in had at most FIELD_MAX bytes, so no field of it can be
    longer (the fields are not measured: most events are small, and measuring costs)."""
    if not isinstance(ev, dict):
        raise Rejected(f"an event is a JSON object, not {type(ev).__name__}")
    seq = _number(ev, "seq", 1, SEQ_MAX, integer=True)
    if seq is None:
        raise Rejected("the event has no seq")
    out: dict[str, Any] = {"seq": seq, "event": text(ev.get("event"), 50) or "?"}
    for key, limit in (("device", 200), ("id", 500), ("action", 200), ("source", 100), ("job", 200)):
        if ev.get(key) is not None:
            out[key] = text(ev[key], limit)
    for key, lo, hi, integer in (("ts", 0, TS_MAX, False), ("attempt", 0, COUNT_MAX, True), ("runtime", 0, TS_MAX, False),
                                 ("next_try", 0, TS_MAX, False), ("planned", 0, TS_MAX, False)):
        value = _number(ev, key, lo, hi, integer=integer)
        if value is not None:
            out[key] = value
    error = ev.get("error")
    if isinstance(error, dict):
        out["error"] = {"type": text(error.get("type"), 200), "message": text(error.get("message"), ERROR_MAX)}
    elif error is not None:
        out["error"] = {"type": "?", "message": text(error, ERROR_MAX)}
    for key in ("args", "result"):
        if key in ev:
            out[key] = _finite(ev[key]) if small else bounded(ev[key])
    extras = [k for k in ev if k not in _KNOWN and isinstance(k, str)][:EXTRAS_MAX]
    for key in extras:
        out[text(key, 50) or "?"] = bounded(ev[key], 256)
    return out


def clean_state(doc: Any, limit: int = STATE_MAX) -> dict[str, Any]:
    """A device's retained state: a JSON object of at most ``limit`` bytes, finite numbers throughout."""
    if not isinstance(doc, dict):
        raise Rejected("the state is not a JSON object")
    try:
        dumped = json.dumps(doc, separators=(",", ":"), allow_nan=False, default=str)
    except ValueError as exc:
        raise Rejected(f"the state holds a number that is not finite ({exc})") from None
    except RecursionError:
        raise Rejected("the state is nested too deep") from None
    if len(dumped) > limit:
        raise Rejected(f"the state is {len(dumped)} bytes (at most {limit})")
    _number(doc, "last_seq", 0, SEQ_MAX, integer=True)
    for key in ("uptime_s", "queue", "outbox", "failures_24h"):
        _number(doc, key, 0, TS_MAX)
    out = json.loads(dumped)
    for key, limit in (("device", 200), ("version", 100)):
        if key in out:
            out[key] = text(out[key], limit)
    return out


def clean_reply(doc: Any) -> dict[str, Any]:
    """A reply to a command (not the monitor's own): bounded like an event's fields."""
    if not isinstance(doc, dict):
        raise Rejected("a reply is a JSON object")
    out: dict[str, Any] = {}
    for key, limit in (("id", 500), ("action", 200), ("status", 50)):
        if doc.get(key) is not None:
            out[key] = text(doc[key], limit)
    for key, lo, hi in (("ts", 0, TS_MAX), ("attempt", 0, COUNT_MAX)):
        value = _number(doc, key, lo, hi, integer=key == "attempt")
        if value is not None:
            out[key] = value
    if doc.get("duplicate"):
        out["duplicate"] = True
    error = doc.get("error")
    if isinstance(error, dict):
        out["error"] = {"type": text(error.get("type"), 200), "message": text(error.get("message"), ERROR_MAX)}
    if "result" in doc:
        out["result"] = bounded(doc["result"])
    return out
