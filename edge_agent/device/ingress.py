"""MQTT ingress and replies: topics in, commands into the journal, replies into the outbox.

Topics (P = topic prefix, D = device id), as in the contract (:mod:`edge_agent.contract`):

    P/D/cmd/<action>              {"id", "args", "ttl"}  -> a command; replies on P/D/reply
    P/group/<group>/cmd/<action>  the same, for every member of the group
    P/D/gpio/<device>/set         ON / OFF / TOGGLE / 0..1 (Home Assistant style)

A payload is JSON, never unpickled; only registered actions run. Bad input gets a
``rejected`` reply wherever an id can be read, and always a log line.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from edge_agent.contract import Topics, command_reply_json, rejection_document
from edge_agent.device.actions import Registry
from edge_agent.device.actions.gpio import set_payload_value
from edge_agent.device.commands import Command, NewCommand, parse_payload
from edge_agent.device.outbox import Outbox
from edge_agent.device.store import Store
from edge_agent.errors import EdgeAgentError, InvalidArguments, InvalidCommand

__all__ = ["Checked", "Ingress"]

log = logging.getLogger("edge_agent.ingress")


@dataclass(frozen=True)
class Checked:
    """A message after :meth:`Ingress.check`: a command to queue, or a rejection to reply."""

    new: NewCommand | None
    reply: dict[str, Any] | None = None
    response_topic: str | None = None
    correlation: bytes | None = None
    redelivered: bool = False  # the broker's resend of a message we did not acknowledge (DUP set)


class Ingress:
    """Turns MQTT messages into commands; writes the replies of the contract."""

    def __init__(self, store: Store, outbox: Outbox, topics: Topics, *, max_payload: int,
                 registry: Callable[[], Registry], submit: Callable[..., tuple[Command, bool]],
                 clock: Callable[[], float] = time.time):
        self.store = store
        self.outbox = outbox
        self.topics = topics
        self.max_payload = max_payload
        self.registry = registry
        self.submit = submit
        self.clock = clock

    # ----------------------------------------------------------------- in

    def check(self, topic: str, payload: bytes, *, response_topic: str | None = None,
              correlation: bytes | None = None, redelivered: bool = False) -> Checked | None:
        """Parse and validate a message, without the database (so not under its lock): what
        :meth:`commit` stores, or None if there is nothing to store (a log line says why)."""
        route = self.topics.route(topic)
        if route is None:
            log.warning("ignored a message on %r: not a topic this agent obeys", topic[:200])
            return None
        kind, name = route
        if kind == "set":
            return self._check_set(name, payload)
        command_id: str | None = None
        try:
            command_id, args, ttl = parse_payload(payload, max_size=self.max_payload)
            _, clean = self.registry().validate(name, args)
        except InvalidCommand as exc:
            command_id = command_id or getattr(exc, "command_id", None)
            return self._rejection(command_id, name, exc, topic, response_topic, correlation)
        except (ValueError, TypeError, LookupError) as exc:  # a check that failed in an unplanned way: still bad input
            log.exception("the check of %s raised %s; rejecting the command", name[:80], type(exc).__name__)
            return self._rejection(command_id, name, InvalidArguments(f"{name}: {exc}"), topic, response_topic,
                                   correlation)
        fields: dict[str, Any] = {"action": name, "args": clean, "source": "group" if kind == "group" else "mqtt",
                                  "reply_to": response_topic, "correlation": correlation}
        if command_id is not None:
            fields["id"] = command_id
        if ttl is not None:
            fields["deadline"] = self.clock() + ttl
        return Checked(NewCommand(**fields), response_topic=response_topic, correlation=correlation,
                       redelivered=redelivered)

    def commit(self, cur: sqlite3.Cursor, checked: Checked) -> None:
        """Store what :meth:`check` found, in the caller's transaction."""
        if checked.reply is not None:
            self._put_reply(cur, checked.reply, checked.response_topic, checked.correlation)
            return
        assert checked.new is not None
        row, created = self.submit(checked.new, cur)
        if not created and not checked.redelivered:
            # A repeat by the sender gets the stored outcome. The broker's redelivery of a command
            # that was stored before a crash cut off its PUBACK gets nothing: its replies are in
            # the outbox already, and one more would not be a byte-identical repeat.
            self._reply(cur, row, duplicate=True, response_topic=checked.response_topic,
                        correlation=checked.correlation)

    def _check_set(self, device: str, payload: bytes) -> Checked | None:
        text = payload.decode("utf-8", errors="replace").strip()
        try:
            _, clean = self.registry().validate("gpio.set", {"device": device, "value": set_payload_value(text)})
        except InvalidCommand as exc:
            log.warning("rejected %s/gpio/%s/set %r: %s", self.topics.base, device[:80], text[:40], exc)
            return None
        return Checked(NewCommand(action="gpio.set", args=clean, source="ha"))

    def _rejection(self, command_id: str | None, action: str, exc: EdgeAgentError, topic: str,
                   response_topic: str | None, correlation: bytes | None) -> Checked | None:
        text = str(exc) if len(str(exc)) <= 500 else str(exc)[:499] + "…"
        log.warning("rejected a command on %s (id %s): %s", topic[:200], command_id or "unreadable", text)
        if command_id is None and response_topic is None:
            return None
        doc = rejection_document(command_id, action[:200],
                                 exc.kind if not isinstance(exc, InvalidArguments) else "invalid_arguments", text,
                                 ts=round(self.clock(), 3))
        return Checked(None, reply=doc, response_topic=response_topic, correlation=correlation)

    # ----------------------------------------------------------------- out

    def accepted(self, cur: sqlite3.Cursor, cmd: Command) -> None:
        """Called in the transaction that queued ``cmd``: commands from MQTT hear ``accepted``."""
        if cmd.source in ("mqtt", "group"):
            self._reply(cur, cmd, status="accepted", lazy=True)  # (see outbox.LAZY_WAIT)

    def finished(self, cur: sqlite3.Cursor, cmd: Command) -> None:
        """Called in the transaction that records an outcome: every command's outcome is published."""
        self._reply(cur, cmd)

    def _reply(self, cur: sqlite3.Cursor, cmd: Command, *, duplicate: bool = False, status: str | None = None,
               response_topic: str | None = None, correlation: bytes | None = None, lazy: bool = False) -> None:
        text = command_reply_json(cmd, duplicate=duplicate, status=status)
        self._put_reply(cur, text, response_topic or cmd.reply_to, correlation if response_topic else cmd.correlation,
                        lazy=lazy)

    def _put_reply(self, cur: sqlite3.Cursor, doc: dict[str, Any] | str, response_topic: str | None,
                   correlation: bytes | None, *, lazy: bool = False) -> None:
        import json

        props = {"correlation": correlation.hex()} if correlation is not None else None
        text = doc if isinstance(doc, str) else json.dumps(doc, separators=(",", ":"), default=str)
        self.outbox.put(cur, response_topic or self.topics.reply, text, qos=1, props=props, lazy=lazy)
