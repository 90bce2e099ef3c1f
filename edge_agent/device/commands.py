"""Command values and their validation: what may enter the journal.

A command is an action name, JSON arguments checked against the action's
parameters, an id (given or generated) and optional timing (``ttl``, ``not_before``).
Nothing here runs anything; a payload from the network is parsed as JSON, never
unpickled, and only names of registered actions are accepted.
"""

from __future__ import annotations

import collections.abc as cabc
import json
import math
import re
import types
import typing
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from edge_agent.contract import MAX_DEPTH, command_reply, depth
from edge_agent.errors import InvalidArguments, InvalidCommand

__all__ = [
    "Command",
    "NewCommand",
    "Param",
    "params_from_signature",
    "parse_payload",
    "validate_args",
]

TERMINAL = ("succeeded", "failed", "expired", "revoked")  # revoked: agent.revoke cancelled it before it ran
_EMPTY = object()  # stands for inspect.Parameter.empty (hints default to Any, so it never reaches the checks)
_ID = re.compile(r"^[\x21-\x7e]{1,128}$")  # printable ASCII, no spaces
#: id prefixes of the commands the daemon queues itself: a job's firing is ``job:<name>:<planned
#: unix time>``, a window's ``window:<key>:<device>:<time>``. Ids are what makes a firing happen
#: once, so a command from outside holding one would turn that firing into a no-op.
RESERVED_ID_SUFFIX = "/off"
RESERVED_ID_PREFIXES = ("job:", "window:")


@dataclass(frozen=True)
class Param:
    """One argument of an action: its name, accepted type and whether it may be left out."""

    name: str
    annotation: Any = Any
    required: bool = True
    default: Any = None


@dataclass(frozen=True)
class NewCommand:
    """A validated command, ready to be written to the journal."""

    action: str
    args: Mapping[str, Any]
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    source: str = "api"
    not_before: float | None = None
    deadline: float | None = None
    reply_to: str | None = None
    correlation: bytes | None = None


@dataclass(frozen=True)
class Command:
    """A row of the journal."""

    seq: int
    id: str
    action: str
    args: Mapping[str, Any]
    source: str
    state: str
    attempts: int
    created: float
    not_before: float | None
    deadline: float | None
    started: float | None
    finished: float | None
    next_attempt: float | None
    result: Any
    error_type: str | None
    error_message: str | None
    reply_to: str | None
    correlation: bytes | None
    parked: bool
    max_attempts: int | None = None
    #: ``result`` as the JSON text the journal stored, when this row came from recording it
    #: (replies and events are made from it instead of encoding the result again)
    result_json: str | None = field(default=None, compare=False, repr=False)
    #: ``args`` as the JSON text stored in the journal (the ``received`` event is made from it)
    args_json: str | None = field(default=None, compare=False, repr=False)

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL

    @property
    def phase(self) -> str:
        """The state in words a person wants: ``parked`` and ``retrying`` are kinds of ``queued``."""
        if self.state == "queued" and self.parked:
            return "parked"
        if self.state == "queued" and self.next_attempt is not None:
            return "retrying"
        return self.state

    def outcome(self) -> dict[str, Any]:
        """The reply document of the contract (``P/D/reply``)."""
        return command_reply(self)


def check_id(value: Any, *, reserved_ok: bool = False) -> str:
    """A command id from outside the daemon: 1 to 128 printable ASCII characters, not in the
    scheduler's namespaces (``reserved_ok`` for ids that only name a command, as agent.revoke's)."""
    if not isinstance(value, str) or not _ID.match(value):
        raise InvalidCommand(f"id must be 1 to 128 printable characters without spaces, got {_short(value)}")
    if not reserved_ok and value.startswith(RESERVED_ID_PREFIXES):
        raise InvalidCommand(f"id {_short(value)} is reserved: ids starting with "
                             f"{' or '.join(RESERVED_ID_PREFIXES)} are the scheduler's (job firings, windows)")
    if not reserved_ok and value.endswith(RESERVED_ID_SUFFIX):
        # gpio.pulse queues its "off" as <id>/off: taken first from outside, that off would never run
        raise InvalidCommand(f"id {_short(value)} is reserved: ids ending in {RESERVED_ID_SUFFIX} are gpio.pulse's "
                             f"follow-up commands")
    return value


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def parse_payload(payload: bytes, *, max_size: int) -> tuple[str | None, dict[str, Any], float | None]:
    """Decode a command payload ``{"id", "args", "ttl"}``: returns (id, args, ttl).

    Raises :class:`InvalidCommand`; the exception's ``command_id`` is set when the id
    could be read, so the sender still gets a ``rejected`` reply.
    """
    if len(payload) > max_size:
        raise InvalidCommand(f"payload of {len(payload)} bytes is over the limit of {max_size}")
    if not payload.strip():
        return None, {}, None
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidCommand("payload is not UTF-8 text") from None
    try:
        if text.startswith("\ufeff"):
            raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)  # (as json.loads)
        doc = _DECODER.decode(text)  # (json.loads with these options, without a decoder made per call)
    except RecursionError:
        raise InvalidCommand("payload is nested too deeply") from None
    except ValueError as exc:
        error = InvalidCommand(f"payload is not valid JSON: {exc}")
        error.command_id = _id_despite_numbers(text)  # type: ignore[attr-defined]
        raise error from None
    if not isinstance(doc, dict):
        raise InvalidCommand(f"payload must be a JSON object like {{\"id\": ..., \"args\": {{...}}}}, got {type(doc).__name__}")
    command_id = None
    if "id" in doc:
        command_id = check_id(doc["id"], reserved_ok=True)
    try:
        if command_id is not None:
            check_id(command_id)  # a reserved id is refused with a reply naming it
        unknown = set(doc) - {"id", "args", "ttl"}
        if unknown:
            raise InvalidCommand(f"unknown field(s) {', '.join(sorted(map(str, unknown)))}; a command has id, args and ttl")
        args = doc.get("args", {})
        if args is None:
            args = {}
        if not isinstance(args, dict):
            raise InvalidArguments(f"args must be a JSON object, got {type(args).__name__}")
        if depth(args) > MAX_DEPTH:
            raise InvalidArguments(f"args are nested deeper than {MAX_DEPTH} levels")
        if not _encodable(args):
            raise InvalidArguments("args hold a string with an unpaired surrogate (\\ud800-\\udfff): not text")
        ttl = doc.get("ttl")
        if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not 0 < ttl < 10**9):
            raise InvalidCommand(f"ttl must be a positive number of seconds, got {_short(ttl)}")
    except InvalidCommand as exc:
        exc.command_id = command_id  # type: ignore[attr-defined]
        raise
    return command_id, args, float(ttl) if ttl is not None else None


def _id_despite_numbers(text: str) -> str | None:
    """The id of a payload refused for its numbers (1e999, 5000-digit integers), if it has one."""
    try:
        doc = json.loads(text, parse_float=lambda s: 0.0, parse_int=lambda s: 0, parse_constant=lambda s: 0)
    except (ValueError, RecursionError):
        return None
    if isinstance(doc, dict) and isinstance(doc.get("id"), str) and _ID.match(doc["id"]):
        return str(doc["id"])
    return None


def _encodable(value: Any) -> bool:
    """No lone surrogates anywhere (JSON can carry them; UTF-8, SQLite and MQTT cannot)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return False
        return True
    if isinstance(value, dict):
        return all(_encodable(k) and _encodable(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_encodable(v) for v in value)
    return True


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:40]} is out of range")
    return value


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not allowed")


_DECODER = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite_float)


# --------------------------------------------------------------------------- argument checking


def params_from_signature(fn: Callable[..., Any]) -> tuple[Param, ...]:
    """The parameters of ``fn`` as :class:`Param` values, with resolved type hints."""
    import inspect  # only for user tasks: built-ins declare their parameters

    sig = inspect.signature(fn)
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # unresolvable forward references: fall back to no checking for those
        hints = {}
    params = []
    for p in sig.parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if p.kind is p.POSITIONAL_ONLY:
            raise TypeError(f"{fn.__qualname__}: positional-only parameter {p.name!r} cannot be given by name")
        required = p.default is p.empty
        params.append(Param(p.name, hints.get(p.name, Any), required, None if required else p.default))
    return tuple(params)


def validate_args(action: str, params: tuple[Param, ...], args: Mapping[str, Any], *, extra_ok: bool = False) -> dict[str, Any]:
    """``args`` checked against ``params``: names the first wrong, missing or unknown argument."""
    if not isinstance(args, Mapping):
        raise InvalidArguments(f"{action}: arguments must be a mapping of names to values")
    if not _encodable(dict(args)):
        raise InvalidArguments(f"{action}: an argument holds a string that is not valid text (an unpaired surrogate)")
    known = {p.name: p for p in params}
    out: dict[str, Any] = {}
    for name in args:
        if name not in known and not extra_ok:
            import difflib

            hint = difflib.get_close_matches(str(name), list(known), n=1)
            accepted = f"did you mean {hint[0]!r}?" if hint else (f"it takes {', '.join(known)}" if known else "it takes no arguments")
            raise InvalidArguments(f"{action}: unknown argument {name!r} ({accepted})")
    for p in params:
        if p.name not in args:
            if p.required:
                raise InvalidArguments(f"{action}: missing argument {p.name!r}{_type_hint(p.annotation)}")
            continue
        out[p.name] = _coerce(action, p.name, p.annotation, args[p.name])
    if extra_ok:
        out.update({k: v for k, v in args.items() if k not in known})
    return out


def _type_hint(annotation: Any) -> str:
    name = _type_name(annotation)
    return f" ({name})" if name != "any" else ""


def _type_name(annotation: Any) -> str:
    if annotation is Any or annotation is _EMPTY:
        return "any"
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(annotation))
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(annotation))
    if origin is not None:
        return getattr(origin, "__name__", str(origin))
    if annotation is type(None):
        return "null"
    return getattr(annotation, "__name__", str(annotation))


def _coerce(action: str, name: str, annotation: Any, value: Any) -> Any:
    ok, converted = _check(annotation, value)
    if not ok:
        raise InvalidArguments(f"{action}: argument {name!r} must be {_type_name(annotation)}, got {_short(value)}")
    return converted


def _check(annotation: Any, value: Any) -> tuple[bool, Any]:
    """Whether a JSON ``value`` fits ``annotation``; ints are accepted where floats are."""
    if annotation is Any or annotation is _EMPTY or annotation is object:
        return True, value
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(annotation):
            ok, converted = _check(option, value)
            if ok:
                return True, converted
        return False, value
    if origin is typing.Literal:
        # Compare types too: True == 1 and 1 == 1.0, but Literal[1] does not mean True.
        return any(type(value) is type(a) and value == a for a in typing.get_args(annotation)), value
    if annotation is type(None) or annotation is None:
        return value is None, value
    if annotation is bool:
        return isinstance(value, bool), value
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if annotation is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        try:
            ok = ok and math.isfinite(value)
        except OverflowError:  # an int beyond float's range (JSON allows any number of digits)
            ok = False
        return ok, float(value) if ok else value
    if annotation is str:
        return isinstance(value, str), value
    if annotation in (list, tuple) or origin in (list, tuple, typing.Sequence, cabc.Sequence):
        if not isinstance(value, list):
            return False, value
        inner = typing.get_args(annotation)
        if inner and origin is list:
            checked = [_check(inner[0], v) for v in value]
            return all(ok for ok, _ in checked), [v for _, v in checked]
        return True, value
    if annotation is dict or origin in (dict, typing.Mapping, cabc.Mapping):
        if not isinstance(value, dict):
            return False, value
        inner = typing.get_args(annotation)
        if len(inner) == 2:
            checked_map = {k: _check(inner[1], v) for k, v in value.items()}
            return all(ok for ok, _ in checked_map.values()), {k: v for k, (_, v) in checked_map.items()}
        return True, value
    # Unknown classes (user types): accept JSON as is; the task validates further.
    return True, value
