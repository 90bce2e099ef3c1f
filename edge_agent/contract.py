"""What travels on the broker, in one place: the topics and the documents on them.

The device daemon writes these, the operator's programs (``edge-agent fleet``, ``edge-agent
monitor``) and the CLI read them; all of them import this module, and it imports none of
them. Topics (P = ``[mqtt] topic_prefix``, which may hold several levels; D = a device id,
one level):

    P/D/cmd/<action>              a command {"id", "args", "ttl"}; replies on P/D/reply
    P/group/<group>/cmd/<action>  the same, for every member of the group
    P/D/reply                     the reply to a command: ``accepted``, then the final one (:func:`reply_document`)
    P/D/status                    ``online`` / ``offline`` (retained; the last will says ``offline``)
    P/D/state                     the state document (retained; :func:`check_state`)
    P/D/events                    an event, or a JSON array of events in seq order (:func:`event_document`)
    P/D/gpio/<name>               a GPIO state (retained); P/D/gpio/<name>/set takes ON / OFF / TOGGLE / 0..1
    P/all/schedule                a schedule document for every device (retained; :func:`schedule_topic`)
    P/group/<group>/schedule      the same, for the members of the group
    P/D/schedule                  the same, for one device

A topic is built by the functions below (:class:`Topics` for one device) and read by
:meth:`Topics.route` (the device: what it obeys) or :func:`heard` (the operator's side: what a
device said). ``agent.history`` pages through a device's events (:func:`history_page`).

The boundary: a device is not trusted by the operator's programs. Whatever it publishes (on
its own topics, which the broker's ACL allows) is checked and bounded here before anything
else reads it, so a bad message can only be dropped, never break what is shown of the others:

- **Fields with a meaning** (``seq``, ``ts``, ``attempt``, ``runtime``, ``next_try``,
  ``planned``, the state's ``last_seq``) must be finite numbers in range; an event or
  state that breaks one is dropped as a whole (:class:`Rejected`, with the reason).
- **Free-form data** (``args``, ``result``, ``error`` and unknown extras) is kept, with
  numbers that are not finite turned into ``null`` and anything whose JSON is longer than
  its bound replaced by ``{"truncated": true, "bytes": N, "head": "..."}`` (truncated
  and saying so). Text is cut to its length and made valid UTF-8.

So one checked event is at most ~``EVENT_MAX`` bytes of JSON, whatever the device sent.

Arguments typed by a person (``edge-agent send``, ``edge-agent fleet send``, the monitor's
form) are read by one parser: :func:`parse_pairs`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any, NamedTuple, Protocol

from edge_agent.errors import InvalidCommand

__all__ = [
    "ANY", "COUNT_MAX", "DEPTH_MAX", "DEVICE_LEAVES", "ERROR_MAX", "EVENT_FIELDS", "EVENT_MAX", "EXTRAS_MAX",
    "FIELD_MAX", "FINAL", "HISTORY_ACTION", "KINDS", "MAX_DEPTH", "MAX_HISTORY", "SEQ_MAX", "STATE_MAX", "TS_MAX",
    "CommandRow", "Heard", "Rejected", "Topics", "bounded", "check_reply", "check_state", "clean_event", "clean_state",
    "command_reply", "command_topic", "depth", "device_topic", "discovery_object_id", "discovery_topic", "error_document", "event_document", "gpio_set_topic", "gpio_topic",
    "group_command_topic", "heard", "history_page", "loads", "number", "parse_args_text", "parse_pairs", "rejection_document", "schedule_of",
    "reply_document", "reply_status", "SCHEDULE_SCOPES", "schedule_source", "schedule_topic", "show", "sync_topic", "text",
]

# --------------------------------------------------------------------------- topics

ANY = "+"  # a topic level that matches every device (for subscriptions)
DEVICE_LEAVES = frozenset({"status", "state", "events", "reply"})  # P/D/<leaf>: what a device publishes


def device_topic(prefix: str, device: str, leaf: str) -> str:
    """``P/D/<leaf>``: status, state, events or reply (``device`` may be :data:`ANY`)."""
    return f"{prefix}/{device}/{leaf}"


def command_topic(prefix: str, device: str, action: str) -> str:
    """``P/D/cmd/<action>``: a command to one device."""
    return f"{prefix}/{device}/cmd/{action}"


def group_command_topic(prefix: str, group: str, action: str) -> str:
    """``P/group/<group>/cmd/<action>``: one command to every member of ``group``."""
    return f"{prefix}/group/{group}/cmd/{action}"


def gpio_topic(prefix: str, device: str, name: str) -> str:
    """``P/D/gpio/<name>``: the retained state of one GPIO device (``name`` may be :data:`ANY`)."""
    return f"{prefix}/{device}/gpio/{name}"


def gpio_set_topic(prefix: str, device: str, name: str) -> str:
    """``P/D/gpio/<name>/set``: where a GPIO device takes ON / OFF / TOGGLE / 0..1 (``name`` may be :data:`ANY`)."""
    return f"{gpio_topic(prefix, device, name)}/set"


def discovery_topic(discovery_prefix: str, component: str, node: str, object_id: str) -> str:
    """``<discovery prefix>/<component>/<node>/<object>/config``: a Home Assistant discovery message (retained)."""
    return f"{discovery_prefix}/{component}/{node}/{object_id}/config"


def discovery_object_id(topic: str) -> str | None:
    """The ``<object>`` of a :func:`discovery_topic`; None for another topic."""
    return topic.split("/")[-2] if topic.endswith("/config") else None


SCHEDULE_SCOPES = ("all", "group", "device")


def schedule_topic(prefix: str, scope: str, name: str = "") -> str:
    """Where a schedule document is retained: ``P/all/schedule`` (scope "all"), ``P/group/<name>/schedule``
    (scope "group", ``name`` the group) or ``P/<name>/schedule`` (scope "device", ``name`` the device id)."""
    if scope == "all":
        return f"{prefix}/all/schedule"
    if scope == "group":
        return f"{prefix}/group/{name}/schedule"
    if scope == "device":
        return f"{prefix}/{name}/schedule"
    raise ValueError(f"a schedule scope is one of {', '.join(SCHEDULE_SCOPES)}, not {scope!r}")


def schedule_of(prefix: str, topic: str) -> tuple[str, str] | None:
    """(scope, name) of a schedule document's topic (the inverse of :func:`schedule_topic`); None for another topic."""
    rest = _levels(prefix, topic)
    if rest is None or rest[-1:] != ["schedule"]:
        return None
    if rest == ["all", "schedule"]:
        return "all", ""
    if len(rest) == 3 and rest[0] == "group" and rest[1]:
        return "group", rest[1]
    if len(rest) == 2 and rest[0] and rest[0] != "group":
        return "device", rest[0]
    return None


def schedule_source(scope: str, name: str = "") -> str:
    """The source name of a schedule document, as state, reports and the CLI say it:
    "all", "group:<group>" or "device" (the config file is "config")."""
    return f"group:{name}" if scope == "group" else scope


def sync_topic(prefix: str, token: str) -> str:
    """``P/_fleet/<token>/sync``: a marker of the fleet client's own (see :func:`edge_agent.fleet.client.snapshot`)."""
    return f"{prefix}/_fleet/{token}/sync"


def _levels(prefix: str, topic: str) -> list[str] | None:
    """The levels of ``topic`` below ``prefix``; None when it is not under it."""
    head = prefix + "/"
    return topic[len(head):].split("/") if topic.startswith(head) else None


class Heard(NamedTuple):
    """A topic a device publishes on, read: ``P/D/<leaf>``, or ``P/D/gpio/<name>`` (leaf ``gpio``)."""

    device: str
    leaf: str
    name: str = ""


def heard(prefix: str, topic: str) -> Heard | None:
    """What a message on ``topic`` is, on the operator's side: ``P/D/status`` -> Heard(D, "status"),
    ``P/D/gpio/lamp`` -> Heard(D, "gpio", "lamp"); None for any other topic (or an empty device id)."""
    rest = _levels(prefix, topic)
    if rest is None or len(rest) < 2 or not rest[0]:
        return None
    if len(rest) == 2 and rest[1] in DEVICE_LEAVES:
        return Heard(rest[0], rest[1])
    if len(rest) == 3 and rest[1] == "gpio":
        return Heard(rest[0], "gpio", rest[2])
    return None


class Topics:
    """The topic names of one device, and what it obeys (:meth:`route`)."""

    def __init__(self, prefix: str, device_id: str, groups: tuple[str, ...] = (), ha_status: str = "homeassistant/status"):
        self.prefix, self.device = prefix, device_id
        self.base = f"{prefix}/{device_id}"
        self.reply = device_topic(prefix, device_id, "reply")
        self.status = device_topic(prefix, device_id, "status")
        self.state = device_topic(prefix, device_id, "state")
        self.events = device_topic(prefix, device_id, "events")
        self.groups = groups
        self.ha_status = ha_status  # Home Assistant's birth topic ([mqtt] ha_status_topic), not under discovery_prefix
        self.subscriptions = [command_topic(prefix, device_id, ANY), gpio_set_topic(prefix, device_id, ANY),
                              *(group_command_topic(prefix, g, ANY) for g in groups)]
        #: the retained schedule documents this device obeys: all, its groups, its own
        self.schedules = [schedule_topic(prefix, "all"), *(schedule_topic(prefix, "group", g) for g in groups),
                          schedule_topic(prefix, "device", device_id)]
        self.subscriptions += self.schedules

    def gpio(self, device: str) -> str:
        return gpio_topic(self.prefix, self.device, device)

    def gpio_set(self, device: str) -> str:
        return gpio_set_topic(self.prefix, self.device, device)

    def command(self, action: str) -> str:
        return command_topic(self.prefix, self.device, action)

    def route(self, topic: str) -> tuple[str, str] | None:
        """(kind, name): ("cmd", action), ("group", action), ("set", device), ("ha_status", ""),
        ("schedule", source) with source "all", "group:<g>" or "device", or None."""
        if topic == self.ha_status:
            return "ha_status", ""
        rest = _levels(self.prefix, topic)
        if rest is None:
            return None
        if len(rest) == 3 and rest[0] == self.device and rest[1] == "cmd":
            return "cmd", rest[2]
        if len(rest) == 4 and rest[0] == "group" and rest[1] in self.groups and rest[2] == "cmd":
            return "group", rest[3]
        if len(rest) == 4 and rest[0] == self.device and rest[1] == "gpio" and rest[3] == "set":
            return "set", rest[2]
        if rest == ["all", "schedule"]:
            return "schedule", schedule_source("all")
        if len(rest) == 3 and rest[0] == "group" and rest[1] in self.groups and rest[2] == "schedule":
            return "schedule", schedule_source("group", rest[1])
        if rest == [self.device, "schedule"]:
            return "schedule", schedule_source("device")
        return None


# --------------------------------------------------------------------------- the boundary: checks and bounds

SEQ_MAX = 2**63 - 1  # SQLite's integer
TS_MAX = 1e11  # seconds since 1970 (year 5138): beyond is not a time
COUNT_MAX = 10**9  # attempts, queue depths
FIELD_MAX = 8 * 1024  # bytes of JSON per free-form field (args, result, an unknown extra)
ERROR_MAX = 2000  # characters of an error message
EXTRAS_MAX = 20  # unknown keys kept per event
EVENT_MAX = 32 * 1024  # what one checked event's JSON comes to at most (the fields above, summed with margin)
STATE_MAX = 16 * 1024  # bytes of a device's state document (JSON); a larger one is dropped
HEAD = 200  # characters of a truncated field that are kept
DEPTH_MAX = 64  # nesting a device may send; deeper is cut (a 1 KB message can nest 500 deep)


class Rejected(ValueError):
    """A message that fails the checks: dropped (and logged by the caller), with the reason."""


def text(value: Any, limit: int) -> str | None:
    """``value`` as text of at most ``limit`` characters, valid UTF-8 (lone surrogates replaced)."""
    if value is None:
        return None
    s = (value if isinstance(value, str) else str(value))[:limit]
    return s if s.isascii() else s.encode("utf-8", "replace").decode("utf-8")


def show(value: Any) -> str:
    """``repr(value)`` cut to 40 characters, for messages about bad values."""
    return text(repr(value), 40) or ""


def _finite_float(literal: str) -> float | None:
    value = float(literal)
    return value if math.isfinite(value) else None


def loads(payload: bytes, limit: int) -> Any:
    """A message's JSON document, with NaN, Infinity and 1e999 as null (what is printed as JSON
    stays JSON); :class:`Rejected` when it is longer than ``limit`` bytes or not JSON."""
    if len(payload) > limit:
        raise Rejected(f"{len(payload)} bytes (at most {limit})")
    try:
        return json.loads(payload, parse_constant=lambda _: None, parse_float=_finite_float)
    except (ValueError, RecursionError) as exc:  # RecursionError: "[[[[..." nested beyond Python's stack
        raise Rejected(f"not JSON: {text(str(exc), 100)}") from None


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


def number(doc: dict[str, Any], key: str, lo: float, hi: float, *, integer: bool = False) -> Any:
    """``doc[key]`` when it is a finite number in [lo, hi] (an int with ``integer``), None when absent;
    else :class:`Rejected`."""
    value = doc.get(key)
    if value is None:
        return None
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if not ok or isinstance(value, bool) or not (isinstance(value, int) or math.isfinite(value)) or not lo <= value <= hi:
        raise Rejected(f"{key} is {show(value)}, not {'an integer' if integer else 'a number'} in [{lo:g}, {hi:g}]")
    return value


def error_document(kind: Any, message: Any) -> dict[str, Any]:
    """The ``error`` of a reply or an event: ``{"type", "message"}``."""
    return {"type": kind, "message": message}


def _clean_error(error: Any) -> dict[str, Any] | None:
    """An ``error`` from a device as ``{type, message}`` of bounded text (a bare value becomes the message)."""
    if isinstance(error, dict):
        return error_document(text(error.get("type"), 200), text(error.get("message"), ERROR_MAX))
    if error is not None:
        return error_document("?", text(error, ERROR_MAX))
    return None


# --------------------------------------------------------------------------- replies

#: reply statuses that end a command (``accepted`` is only the first of two replies)
FINAL = frozenset({"succeeded", "failed", "rejected", "expired", "revoked"})


class CommandRow(Protocol):
    """What a reply is made of: a command as the device's journal holds it."""

    @property
    def id(self) -> str: ...
    @property
    def action(self) -> str: ...
    @property
    def state(self) -> str: ...
    @property
    def result(self) -> Any: ...
    @property
    def error_type(self) -> str | None: ...
    @property
    def error_message(self) -> str | None: ...
    @property
    def attempts(self) -> int: ...
    @property
    def finished(self) -> float | None: ...
    @property
    def created(self) -> float: ...


def reply_status(state: str) -> str:
    """A journal state as a reply says it: queued and running are ``accepted``."""
    return "accepted" if state in ("queued", "running") else state


def reply_document(command_id: str | None, action: str, status: str, *, result: Any = None,
                   error: dict[str, Any] | None = None, attempt: int = 0, ts: float,
                   duplicate: bool = False) -> dict[str, Any]:
    """The reply on ``P/D/reply`` (or the command's MQTT 5 response topic)::

        {"id", "action", "status", "result", "error": {"type", "message"} | null, "attempt", "ts"[, "duplicate": true]}

    ``status`` is ``accepted`` or one of :data:`FINAL`; ``duplicate``: the stored outcome of a
    command id seen before, sent again."""
    doc: dict[str, Any] = {"id": command_id, "action": action, "status": status, "result": result, "error": error,
                           "attempt": attempt, "ts": ts}
    if duplicate:
        doc["duplicate"] = True
    return doc


def command_reply(cmd: CommandRow, *, duplicate: bool = False, status: str | None = None) -> dict[str, Any]:
    """The reply about ``cmd`` (a journal row): its outcome, or ``status`` (``accepted``)."""
    return reply_document(cmd.id, cmd.action, reply_status(cmd.state) if status is None else status, result=cmd.result,
                          error=error_document(cmd.error_type, cmd.error_message) if cmd.error_type else None,
                          attempt=cmd.attempts, ts=round(cmd.finished or cmd.created, 3), duplicate=duplicate)


_quote = json.encoder.encode_basestring_ascii  # a str as json.dumps writes it
_REPLY = '{"id":%s,"action":%s,"status":%s,"result":%s,"error":%s,"attempt":%d,"ts":%r%s}'


def command_reply_json(cmd: CommandRow, *, duplicate: bool = False, status: str | None = None) -> str:
    """``json.dumps(command_reply(cmd, ...), separators=(",", ":"), default=str)``, the same text,
    made without the dict and from the row's stored result text when it has one (a reply is
    written for every command: twice per command from MQTT). Rows the template cannot write
    as json.dumps would (a result without its text, odd types) go through json.dumps."""
    result = getattr(cmd, "result_json", None)
    ts = round(cmd.finished or cmd.created, 3)
    if (result is None and cmd.result is not None) or not isinstance(cmd.id, str) or not isinstance(cmd.action, str) \
            or type(cmd.attempts) is not int or type(ts) is not float or not math.isfinite(ts):
        return json.dumps(command_reply(cmd, duplicate=duplicate, status=status), separators=(",", ":"), default=str)
    error = "null" if not cmd.error_type else json.dumps(error_document(cmd.error_type, cmd.error_message),
                                                         separators=(",", ":"), default=str)
    return _REPLY % (_quote(cmd.id), _quote(cmd.action), _quote(reply_status(cmd.state) if status is None else status),
                     "null" if result is None else result, error, cmd.attempts, ts,
                     ',"duplicate":true' if duplicate else "")


def rejection_document(command_id: str | None, action: str, kind: str, message: str, *, ts: float) -> dict[str, Any]:
    """The reply to a command refused before it was queued (``status`` ``rejected``, attempt 0)."""
    return reply_document(command_id, action, "rejected", error=error_document(kind, message), ts=ts)


def check_reply(doc: Any) -> dict[str, Any]:
    """A reply as the fleet tools read it: a JSON object whose id, action and status are short text
    and whose error is ``{type, message}``; its result is kept whole (the message's size bounds it)."""
    if not isinstance(doc, dict):
        raise Rejected(f"a reply is a JSON object, not {type(doc).__name__}")
    out = dict(doc)
    for key, limit in (("id", 200), ("action", 200), ("status", 50)):
        if out.get(key) is not None:
            out[key] = text(out[key], limit)
    if out.get("error") is not None:
        out["error"] = _clean_error(out["error"])
    return out


# --------------------------------------------------------------------------- events

#: event kinds and the extras each carries (besides seq, device, event, id, action, ts)
KINDS: dict[str, tuple[str, ...]] = {
    "received": ("source", "args"),
    "started": ("attempt",),
    "retried": ("attempt", "error", "next_try"),
    "succeeded": ("attempt", "runtime", "result"),
    "failed": ("attempt", "error"),
    "expired": ("error",),
    "revoked": (),
    "fired": ("job", "planned"),
    "skipped": ("job", "planned"),
}

EVENT_FIELDS = ("seq", "device", "event", "id", "action", "ts")  # every event's, in this order; then its extras
HISTORY_ACTION = "agent.history"
MAX_HISTORY = 1000  # events per agent.history page, at most

_KNOWN = frozenset({*EVENT_FIELDS, "source", "args", "attempt", "error", "next_try", "runtime", "result", "job", "planned"})


def event_document(seq: int, device: str, kind: str, command_id: str | None, action: str | None, ts: float,
                   extras: dict[str, Any] | None = None) -> dict[str, Any]:
    """One event on ``P/D/events``::

        {"seq", "device", "event": <a kind of KINDS>, "id", "action", "ts", ...the kind's extras}

    ``seq`` counts the device's events from 1 and only grows: a jump is events missed, to be
    fetched with ``agent.history``."""
    doc: dict[str, Any] = {"seq": seq, "device": device, "event": kind, "id": command_id, "action": action, "ts": ts}
    if extras:
        doc.update(extras)
    return doc


def history_page(device: str, events: list[dict[str, Any]], *, next_seq: int, more: bool, oldest: int | None,
                 last: int) -> dict[str, Any]:
    """What ``agent.history`` returns (the ``result`` of its reply)::

        {"device", "events": [event, ...] (seq ascending), "next": the last seq of the page (or the
         ``after`` asked for), "more": whether events matching follow, "oldest": the oldest seq kept
         (null when none), "last": the newest seq written}

    Ask again with ``after = next`` while ``more``. Below the first event of a page asked without
    filters, the device keeps nothing any more (pruned by age or by count)."""
    return {"device": device, "events": events, "next": next_seq, "more": more, "oldest": oldest, "last": last}


def clean_event(ev: Any, small: bool = False) -> dict[str, Any]:
    """The event checked and bounded, only JSON-safe values. Raises :class:`Rejected`.

    ``small``: the message it came in had at most FIELD_MAX bytes, so no field of it can be
    longer (the fields are not measured: most events are small, and measuring costs)."""
    if not isinstance(ev, dict):
        raise Rejected(f"an event is a JSON object, not {type(ev).__name__}")
    seq = number(ev, "seq", 1, SEQ_MAX, integer=True)
    if seq is None:
        raise Rejected("the event has no seq")
    out: dict[str, Any] = {"seq": seq, "event": text(ev.get("event"), 50) or "?"}
    for key, limit in (("device", 200), ("id", 500), ("action", 200), ("source", 100), ("job", 200)):
        if ev.get(key) is not None:
            out[key] = text(ev[key], limit)
    for key, lo, hi, integer in (("ts", 0, TS_MAX, False), ("attempt", 0, COUNT_MAX, True), ("runtime", 0, TS_MAX, False),
                                 ("next_try", 0, TS_MAX, False), ("planned", 0, TS_MAX, False)):
        value = number(ev, key, lo, hi, integer=integer)
        if value is not None:
            out[key] = value
    error = _clean_error(ev.get("error"))
    if error is not None:
        out["error"] = error
    for key in ("args", "result"):
        if key in ev:
            out[key] = _finite(ev[key]) if small else bounded(ev[key])
    extras = [k for k in ev if k not in _KNOWN and isinstance(k, str)][:EXTRAS_MAX]
    for key in extras:
        out[text(key, 50) or "?"] = bounded(ev[key], 256)
    return out


# --------------------------------------------------------------------------- the state document


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
    number(doc, "last_seq", 0, SEQ_MAX, integer=True)
    for key in ("uptime_s", "queue", "outbox", "failures_24h"):
        number(doc, key, 0, TS_MAX)
    out = json.loads(dumped)
    for key, limit in (("device", 200), ("version", 100)):
        if key in out:
            out[key] = text(out[key], limit)
    return out


def check_state(doc: Any) -> dict[str, Any]:
    """A retained ``state`` as the fleet tools read it (:func:`clean_state`, and the fields they use
    of the right type); :class:`Rejected` (with the reason) when one is not."""
    state = clean_state(doc)
    groups = state.get("groups")
    if groups is not None and not (isinstance(groups, list) and all(isinstance(g, str) for g in groups)):
        raise Rejected(f"groups is {show(groups)}, not a list of names")
    if state.get("clock_synchronized") not in (True, False, None):
        raise Rejected(f"clock_synchronized is {show(state['clock_synchronized'])}, not true/false")
    ts = state.get("ts")
    if ts is not None and (isinstance(ts, bool) or not isinstance(ts, (int, float)) or not 0 <= ts <= TS_MAX):
        raise Rejected(f"ts is {show(ts)}, not a unix time")
    nxt = state.get("next_jobs")
    if nxt is not None and not (isinstance(nxt, list) and all(
            isinstance(j, dict) and isinstance(j.get("job"), str) and isinstance(j.get("at"), str) for j in nxt)):
        raise Rejected(f"next_jobs is {show(nxt)}, not a list of {{job, at}}")
    if state.get("last_error") is not None and not isinstance(state["last_error"], dict):
        raise Rejected(f"last_error is {show(state['last_error'])}, not an object")
    return state


# --------------------------------------------------------------------------- arguments typed by a person

MAX_DEPTH = 32  # levels of nesting a command's args may have


def depth(value: Any, level: int = 0) -> int:
    """How deep ``value`` nests (counting stops past :data:`MAX_DEPTH`)."""
    if level > MAX_DEPTH:
        return level
    if isinstance(value, dict):
        return max((depth(v, level + 1) for v in value.values()), default=level + 1)
    if isinstance(value, list):
        return max((depth(v, level + 1) for v in value), default=level + 1)
    return level


def parse_pairs(pairs: Sequence[str], args_json: str | None, *, name: str = "--args") -> dict[str, Any]:
    """``key=value`` words (values read as JSON when they parse, else as text) over an optional JSON
    object ``args_json`` (``name`` says where it came from in the errors). Raises :class:`InvalidCommand`:
    a word without ``=`` or without a key, JSON that is not an object, nesting deeper than :data:`MAX_DEPTH`."""
    out: dict[str, Any] = {}
    if args_json is not None:
        try:
            doc = json.loads(args_json)
        except RecursionError:
            raise InvalidCommand(f"{name} is nested too deeply") from None
        except ValueError as exc:
            raise InvalidCommand(f"{name} is not valid JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise InvalidCommand(f"{name} must be a JSON object, got {type(doc).__name__}")
        out.update(doc)
    for word in pairs:
        key, sep, raw = word.partition("=")
        if not sep or not key.strip():
            raise InvalidCommand(f"expected key=value, got {word!r}")
        try:
            value = json.loads(raw)
        except (ValueError, RecursionError):
            value = raw
        out[key.strip()] = value
    if depth(out) > MAX_DEPTH:
        raise InvalidCommand(f"arguments are nested deeper than {MAX_DEPTH} levels")
    return out


def parse_args_text(line: str) -> dict[str, Any]:
    """One line of arguments (the monitor's form): a JSON object, or ``key=value`` words
    separated by spaces; read by :func:`parse_pairs`."""
    line = line.strip()
    if line.startswith("{"):
        return parse_pairs((), line, name="args")
    return parse_pairs(line.split(), None)
