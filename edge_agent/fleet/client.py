"""The operator's side of MQTT: see every device, command many, collect their replies, follow their events.

Runs anywhere that reaches the broker (a laptop, a server, a device) and keeps no state
of its own: what it knows comes from the devices' retained ``status`` and ``state``
messages, their replies and their event streams (``P/D/events``).

- :func:`snapshot`: every device on the broker, from retained messages. MQTT has no
  "end of retained messages" marker, so a message to a topic of our own is published
  after subscribing: the broker delivers it after the retained ones.
- :func:`send`: one command per device (or one group command); returns as soon as every
  expected device has a final reply, telling apart succeeded, failed, offline (the
  command waits in its broker session: devices keep persistent sessions) and online but
  no answer.
- :func:`request` / :func:`history`: one device's reply to one command; its events, paged
  with ``agent.history``.
- :class:`EventStream`: the live events of the fleet in ``seq`` order per device, each
  exactly once; a jump in ``seq`` is filled with ``agent.history``.

A device is not trusted: what it publishes (status, state, replies, events, history pages)
is checked and bounded here, at the boundary, with the monitor's rules
(:mod:`edge_agent.fleet.monitor.validate`), before anything else reads it. A malformed message
is dropped or reported as that device's problem; it cannot break the listing or the
sending for the others, and paging a device's history is bounded in pages and in events.
"""

from __future__ import annotations

import collections
import json
import logging
import math
import os
import queue
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeGuard

from edge_agent.errors import BrokerUnreachable, EdgeAgentError, InvalidCommand
from edge_agent.fleet.monitor.validate import ERROR_MAX, TS_MAX, Rejected, clean_event, clean_state, text
from edge_agent.fleet.monitor.validate import show as _show

__all__ = ["FINAL", "DeviceError", "DeviceInfo", "EventStream", "FleetClient", "SendResult", "connection_settings",
           "history", "ls", "request", "send", "snapshot"]

log = logging.getLogger("edge_agent.fleet")

#: reply statuses that end a command (``accepted`` is only the first of two replies)
FINAL = frozenset({"succeeded", "failed", "rejected", "expired", "revoked"})

STATE_BYTES = 256 * 1024  # a status/state message longer than this is not parsed (a real state is ~1 KB)
REPLY_BYTES = 16 * 1024 * 1024  # nor a reply: an agent.history page of 1,000 events with their args and results
HISTORY_COUNT = 100_000  # events fleet.history() returns (and keeps in memory) at most
HISTORY_PAGES = 1000  # agent.history pages it asks one device for, at most (1,000,000 events)
BATCH_EVENTS_MAX = 1000  # events in one message (an agent sends at most 500): a longer array is dropped whole
STREAM_BUFFER = 10_000  # events EventStream holds per device beyond a gap while it is being filled


class DeviceError(EdgeAgentError, RuntimeError):
    """A device answered with something the fleet tools cannot use (it breaks the protocol)."""

    kind = "device"


def _clean_or_none(event: Any, topic: str) -> dict[str, Any] | None:
    """One event of a message, checked (:func:`clean_event`); None, logged, when it is bad."""
    try:
        return clean_event(event)
    except Rejected as exc:
        log.debug("fleet events: an event on %s ignored: %s", topic[:200], exc)
        return None


def _json(payload: bytes, limit: int) -> Any:
    """A message's JSON document; :class:`Rejected` when it is too long or not JSON."""
    if len(payload) > limit:
        raise Rejected(f"{len(payload)} bytes (at most {limit})")
    try:  # NaN, Infinity and 1e999 become null: what we print as JSON stays JSON
        return json.loads(payload, parse_constant=lambda _: None, parse_float=_finite_float)
    except (ValueError, RecursionError) as exc:  # RecursionError: "[[[[..." nested beyond Python's stack
        raise Rejected(f"not JSON: {text(str(exc), 100)}") from None


def _finite_float(literal: str) -> float | None:
    value = float(literal)
    return value if math.isfinite(value) else None


def _checked_reply(doc: Any) -> dict[str, Any]:
    """A reply: a JSON object whose id, action and status are short text and whose error is
    ``{type, message}``; its result is kept whole (the message's size bounds it)."""
    if not isinstance(doc, dict):
        raise Rejected(f"a reply is a JSON object, not {type(doc).__name__}")
    out = dict(doc)
    for key, limit in (("id", 200), ("action", 200), ("status", 50)):
        if out.get(key) is not None:
            out[key] = text(out[key], limit)
    err = out.get("error")
    if isinstance(err, dict):
        out["error"] = {"type": text(err.get("type"), 200), "message": text(err.get("message"), ERROR_MAX)}
    elif err is not None:
        out["error"] = {"type": "?", "message": text(err, ERROR_MAX)}
    return out


def _checked_state(doc: Any) -> dict[str, Any]:
    """A retained ``state`` as :func:`ls` and :func:`send` read it; :class:`Rejected` (with the
    reason) when a field they use has the wrong type."""
    state = clean_state(doc)
    groups = state.get("groups")
    if groups is not None and not (isinstance(groups, list) and all(isinstance(g, str) for g in groups)):
        raise Rejected(f"groups is {_show(groups)}, not a list of names")
    if state.get("clock_synchronized") not in (True, False, None):
        raise Rejected(f"clock_synchronized is {_show(state['clock_synchronized'])}, not true/false")
    ts = state.get("ts")
    if ts is not None and (isinstance(ts, bool) or not isinstance(ts, (int, float)) or not 0 <= ts <= TS_MAX):
        raise Rejected(f"ts is {_show(ts)}, not a unix time")
    nxt = state.get("next_jobs")
    if nxt is not None and not (isinstance(nxt, list) and all(
            isinstance(j, dict) and isinstance(j.get("job"), str) and isinstance(j.get("at"), str) for j in nxt)):
        raise Rejected(f"next_jobs is {_show(nxt)}, not a list of {{job, at}}")
    if state.get("last_error") is not None and not isinstance(state["last_error"], dict):
        raise Rejected(f"last_error is {_show(state['last_error'])}, not an object")
    return state


class FleetClient:
    """One paho connection (MQTT 5, clean start) with handlers called for every message."""

    def __init__(self, mqtt: Any, *, client_id: str | None = None, timeout: float = 10.0):
        import paho.mqtt.client as paho

        self.cfg = mqtt
        self.prefix: str = mqtt.topic_prefix
        self.timeout = timeout
        self.client_id = client_id or f"edge-fleet-{socket.gethostname()[:20]}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self._handlers: list[Callable[[Any], None]] = []
        self._connected = threading.Event()
        self._refused: str | None = None
        self._subacks: dict[int, threading.Event] = {}
        self._early_subacks: set[int] = set()  # SUBACKs that came before subscribe() recorded their mid
        self._subs: dict[str, int] = {}  # every subscription, made again after paho reconnects (clean start)
        self._on_reconnect: list[Callable[[], None]] = []
        self._lock = threading.Lock()
        c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=paho.MQTTv5)
        if mqtt.username:
            c.username_pw_set(mqtt.username, mqtt.password())
        if mqtt.tls is not None:
            t = mqtt.tls
            c.tls_set(ca_certs=t.ca_file, certfile=t.cert_file, keyfile=t.key_file,
                      cert_reqs=ssl.CERT_NONE if t.insecure else ssl.CERT_REQUIRED)
            c.tls_insecure_set(t.insecure)
        c.on_socket_open = self._on_socket_open
        c.on_connect = self._on_connect
        c.on_message = self._on_message
        c.on_subscribe = self._on_subscribe
        c.reconnect_delay_set(1, 10)
        self._client = c

    # ----------------------------------------------------------------- connection

    def __enter__(self) -> FleetClient:
        self.connect()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def connect(self) -> None:
        where = f"{self.cfg.host}:{self.cfg.port}"
        try:
            self._client.connect(self.cfg.host, self.cfg.port, keepalive=30, clean_start=True)
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise BrokerUnreachable(f"cannot reach the MQTT broker at {where}: {exc}") from exc
        self._client.loop_start()
        if not self._connected.wait(self.timeout) or self._refused:
            self.close()
            why = self._refused or f"no answer within {self.timeout:g}s"
            raise BrokerUnreachable(f"the MQTT broker at {where} refused the connection: {why}")

    def close(self) -> None:
        try:
            self._client.disconnect()
        finally:
            self._client.loop_stop()

    def _on_socket_open(self, client: Any, userdata: Any, sock: Any) -> None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (OSError, AttributeError):
            pass

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if reason_code.is_failure:
            self._refused = str(reason_code)
        elif self._connected.is_set() and self._subs:
            # paho reconnected by itself (a long follow outlived a broker restart): a clean
            # session has no subscriptions, so they are made again.
            client.subscribe(list(self._subs.items()))
            for handler in list(self._on_reconnect):
                handler()
        self._connected.set()

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, reason_codes: Any, properties: Any) -> None:
        with self._lock:
            done = self._subacks.pop(mid, None)
            if done is None:
                self._early_subacks.add(mid)
        if done is not None:
            done.set()

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        for handler in list(self._handlers):
            try:
                handler(msg)
            except Exception:  # one handler's bug must not stop the others (nor paho's thread)
                log.exception("fleet: handling a message on %s", msg.topic[:200])

    # ----------------------------------------------------------------- use

    def on_reconnect(self, handler: Callable[[], None]) -> Callable[[], None]:
        """Call ``handler()`` (on paho's thread) after each automatic reconnect; returns the remover."""
        self._on_reconnect.append(handler)
        return lambda: self._on_reconnect.remove(handler)

    def on_message(self, handler: Callable[[Any], None]) -> Callable[[], None]:
        """Call ``handler(msg)`` for every message (on paho's thread); returns the remover."""
        self._handlers.append(handler)
        return lambda: self._handlers.remove(handler)

    def subscribe(self, topics: Iterable[str], qos: int = 1) -> None:
        """Subscribe and wait for the broker's SUBACK (so nothing published after is missed)."""
        subs = [(t, qos) for t in topics]
        if not subs:
            return
        done = threading.Event()
        self._subs.update(subs)
        rc, mid = self._client.subscribe(subs)
        with self._lock:
            if mid in self._early_subacks:
                self._early_subacks.discard(mid)
                done.set()
            elif mid is not None:  # (None: not connected, and rc says so below)
                self._subacks[mid] = done
        if rc != 0 or not done.wait(self.timeout):
            raise BrokerUnreachable(f"the broker did not confirm the subscription to {subs[0][0]} (rc {rc})")

    def unsubscribe(self, topics: Iterable[str]) -> None:
        """Drop subscriptions (not made again after a reconnect); does not wait for the broker."""
        topics = [t for t in topics if self._subs.pop(t, None) is not None]
        if topics:
            self._client.unsubscribe(topics)

    def publish(self, topic: str, payload: Any, qos: int = 1, retain: bool = False) -> None:
        data = payload if isinstance(payload, (bytes, str)) else json.dumps(payload, separators=(",", ":"))
        info = self._client.publish(topic, data, qos=qos, retain=retain)
        if info.rc != 0:
            raise BrokerUnreachable(f"could not publish on {topic} (paho rc {info.rc}): is the broker still there?")
        if qos:
            info.wait_for_publish(self.timeout)
            if not info.is_published():
                raise BrokerUnreachable(f"the broker did not acknowledge a message on {topic}")

    def publish_nowait(self, topic: str, payload: Any, qos: int = 1) -> None:
        self._client.publish(topic, json.dumps(payload, separators=(",", ":")), qos=qos)


def _device_of(prefix: str, topic: str, leaf: str) -> str | None:
    """``P/D/<leaf>`` -> D, else None."""
    head = prefix + "/"
    if not topic.startswith(head) or not topic.endswith("/" + leaf):
        return None
    middle = topic[len(head): -len(leaf) - 1]
    return middle if middle and "/" not in middle else None


# --------------------------------------------------------------------------- ls


@dataclass
class DeviceInfo:
    """What the broker's retained messages say about one device."""

    device: str
    status: str | None = None  # "online" / "offline" (retained, the last will) or None
    state: dict[str, Any] | None = None
    problems: dict[str, str] = field(default_factory=dict)  # "status"/"state": why it was ignored

    @property
    def problem(self) -> str | None:
        """What was wrong with its retained status or state (then ignored), in words."""
        return "; ".join(self.problems[k] for k in sorted(self.problems)) or None

    @property
    def online(self) -> bool:
        return self.status == "online"

    @property
    def groups(self) -> list[str]:
        return list((self.state or {}).get("groups") or [])

    def row(self) -> dict[str, Any]:
        s = self.state or {}
        nxt = s.get("next_jobs") or []
        return {"device": self.device, "status": self.status or "unknown", "online": self.online,
                "version": s.get("version"), "uptime_s": s.get("uptime_s"), "queue": s.get("queue"),
                "outbox": s.get("outbox"), "clock_synchronized": s.get("clock_synchronized"),
                "last_seen": s.get("ts"), "failures_24h": s.get("failures_24h"), "last_seq": s.get("last_seq"),
                "groups": self.groups, "next_job": nxt[0] if nxt else None, "last_error": s.get("last_error"),
                "problem": self.problem}


class _Snapshot:
    """Collects retained status and state; keeps following them afterwards (live changes)
    until :meth:`close`."""

    def __init__(self, client: FleetClient):
        self.prefix = client.prefix
        self.devices: dict[str, DeviceInfo] = {}
        self.cond = threading.Condition()
        self.synced = False
        self.marker = f"{self.prefix}/_fleet/{uuid.uuid4().hex}/sync"
        self._client = client
        self._remove: Callable[[], None] | None = client.on_message(self.handle)

    def close(self) -> None:
        """Stop following: a long-lived client calling send() or ls() again and again must not
        pile up handlers (each message would go through every one) or subscriptions."""
        if self._remove is not None:
            self._remove()
            self._remove = None
            self._client.unsubscribe([self.marker])

    def handle(self, msg: Any) -> None:
        if msg.topic == self.marker:
            with self.cond:
                self.synced = True
                self.cond.notify_all()
            return
        for leaf in ("status", "state"):
            device = _device_of(self.prefix, msg.topic, leaf)
            if device is None:
                continue
            with self.cond:
                info = self.devices.setdefault(device, DeviceInfo(device))
                info.problems.pop(leaf, None)
                if leaf == "status":
                    word = msg.payload[:STATE_BYTES].decode("utf-8", "replace").strip()
                    info.status = word if word in ("online", "offline") else None
                    if word and info.status is None:
                        info.problems["status"] = f"status {_show(word)} ignored: not online/offline"
                else:
                    info.state = None
                    if msg.payload:  # an empty retained message clears it
                        try:
                            info.state = _checked_state(_json(msg.payload, STATE_BYTES))
                        except Rejected as exc:
                            info.problems["state"] = f"state ignored: {exc}"
                self.cond.notify_all()
            return

    def topics(self) -> list[str]:
        return [f"{self.prefix}/+/status", f"{self.prefix}/+/state", self.marker]

    def wait_synced(self, client: FleetClient, timeout: float) -> None:
        # QoS 0 for the marker as for the retained snapshot: one ordered stream from the broker.
        client.publish(self.marker, b"", qos=1)
        end = time.monotonic() + timeout
        with self.cond:
            while not self.synced:
                left = end - time.monotonic()
                if left <= 0:
                    raise BrokerUnreachable("the broker did not return our sync message; the device list may be incomplete")
                self.cond.wait(left)


def snapshot(client: FleetClient, *, extra_topics: Iterable[str] = (), timeout: float = 10.0) -> _Snapshot:
    """Subscribe to every device's retained status and state (plus ``extra_topics``, in the
    same subscription) and return once the retained messages have all arrived."""
    snap = _Snapshot(client)
    try:
        client.subscribe(snap.topics(), qos=0)
        client.subscribe(list(extra_topics), qos=1)
        snap.wait_synced(client, timeout)
    except BaseException:
        snap.close()
        raise
    return snap


def ls(client: FleetClient, timeout: float = 10.0) -> list[dict[str, Any]]:
    """One row per device, sorted by name."""
    snap = snapshot(client, timeout=timeout)
    snap.close()
    with snap.cond:
        return [snap.devices[d].row() for d in sorted(snap.devices)]


# --------------------------------------------------------------------------- send


@dataclass
class SendResult:
    """The outcome of :func:`send`, device by device."""

    id: str
    action: str
    devices: dict[str, dict[str, Any]] = field(default_factory=dict)
    elapsed_s: float = 0.0

    @property
    def ok(self) -> bool:
        return bool(self.devices) and all(d["status"] == "succeeded" for d in self.devices.values())

    def not_succeeded(self) -> dict[str, str]:
        """{device: status} of every device that did not succeed (why the exit code is 1)."""
        return {d: v["status"] for d, v in sorted(self.devices.items()) if v["status"] != "succeeded"}

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for d in self.devices.values():
            out[d["status"]] = out.get(d["status"], 0) + 1
        return out

    def document(self) -> dict[str, Any]:
        return {"id": self.id, "action": self.action, "ok": self.ok, "elapsed_s": round(self.elapsed_s, 3),
                "counts": self.counts(), "devices": {k: self.devices[k] for k in sorted(self.devices)}}


def new_id() -> str:
    return f"fleet-{uuid.uuid4().hex[:16]}"


def send(client: FleetClient, action: str, args: dict[str, Any] | None = None, *, devices: Iterable[str] = (),
         group: str | None = None, everyone: bool = False, timeout: float = 30.0, wait_offline: bool = False,
         command_id: str | None = None, ttl: float | None = None) -> SendResult:
    """Send ``action`` to ``devices``, to the members of ``group`` (one group command) or to
    every device on the broker, and collect the replies.

    Expected devices: those named, or the members (from their retained ``state``) of the
    group, or all. Returns when each expected device has a final reply or is offline (with
    ``wait_offline``: only when each has a final reply), or after ``timeout`` seconds. A
    device that goes offline while we wait stops being waited for; one that comes back is
    waited for again. A group member we did not expect that answers is listed too.

    Each device ends with its final reply's status (succeeded, failed, rejected, expired,
    revoked) or one of: ``offline`` (its retained status says so: the command waits in its
    broker session), ``no_answer`` (no final reply within ``timeout``: online and silent, or
    without an online/offline status; the detail says which) and ``no_such_device`` (a named
    device with no retained status or state under this prefix: nothing will run it).
    """
    prefix = client.prefix
    cid = command_id or new_id()
    began = time.monotonic()
    named = list(dict.fromkeys(devices))
    replies: dict[str, dict[str, Any]] = {}
    first: dict[str, dict[str, Any]] = {}
    cond = threading.Condition()

    def on_reply(msg: Any) -> None:
        device = _device_of(prefix, msg.topic, "reply")
        if device is None:
            return
        try:
            doc = _checked_reply(_json(msg.payload, REPLY_BYTES))
        except Rejected as exc:
            log.debug("fleet: a reply on %s ignored: %s", msg.topic[:200], exc)
            return
        if doc.get("id") != cid:
            return
        with cond:
            first.setdefault(device, doc)
            if doc.get("status") in FINAL:
                replies.setdefault(device, doc)
            cond.notify_all()

    remove_reply = client.on_message(on_reply)
    snap: _Snapshot | None = None
    try:
        reply_topics = [f"{prefix}/+/reply"] if group or everyone else [f"{prefix}/{d}/reply" for d in named]
        snap = snapshot(client, extra_topics=reply_topics, timeout=client.timeout)
        with snap.cond:
            if group is not None:
                expected = [d for d, info in snap.devices.items() if group in info.groups]
            elif everyone:
                expected = list(snap.devices)
            else:
                expected = named
        payload: dict[str, Any] = {"id": cid, "args": args or {}}
        if ttl is not None:
            payload["ttl"] = ttl
        if group is not None:
            client.publish(f"{prefix}/group/{group}/cmd/{action}", payload)
        else:
            for d in expected:
                client.publish(f"{prefix}/{d}/cmd/{action}", payload)

        def waiting_for() -> list[str]:
            with snap.cond:
                known = dict(snap.devices)
            return [d for d in expected if d not in replies and (wait_offline or (d in known and known[d].online))]

        end = began + timeout
        # Both conditions are notified by paho's thread: wake on either (a reply, a status change).
        while True:
            with cond:
                if not waiting_for():
                    break
                left = end - time.monotonic()
                if left <= 0:
                    break
                cond.wait(min(left, 0.05))
        result = SendResult(cid, action, elapsed_s=time.monotonic() - began)
        with snap.cond:
            known = dict(snap.devices)
        with cond:
            for d in sorted(set(expected) | set(replies)):
                info = known.get(d)
                if d in replies:
                    doc = replies[d]
                    result.devices[d] = {"status": doc["status"], "reply": doc}
                elif info is None and d not in first:
                    result.devices[d] = {"status": "no_such_device", "reply": None,
                                         "detail": "no device of this name on this broker (no retained status or state "
                                                   "under this prefix): nothing will run the command"}
                elif info is not None and info.status == "offline":
                    result.devices[d] = {"status": "offline", "reply": first.get(d),
                                         "detail": "offline: the command waits in its broker session and runs when it is back"}
                else:
                    if d in first:
                        detail = f"accepted, but no final reply within {timeout:g}s"
                    elif info is not None and info.online:
                        detail = f"online, but no reply at all within {timeout:g}s"
                    else:
                        detail = "no reply, and no online/offline status to wait for"
                    if info is not None and info.problem:
                        detail += f" ({info.problem})"
                    result.devices[d] = {"status": "no_answer", "reply": first.get(d), "detail": detail}
    finally:
        remove_reply()
        if snap is not None:
            snap.close()
    return result


# --------------------------------------------------------------------------- one device


def request(client: FleetClient, device: str, action: str, args: dict[str, Any] | None = None, *,
            timeout: float = 10.0, subscribed: bool = False) -> dict[str, Any] | None:
    """Send one command to one device and return its final reply, or None after ``timeout``."""
    prefix = client.prefix
    cid = new_id()
    box: queue.Queue[dict[str, Any]] = queue.Queue()
    topic = f"{prefix}/{device}/reply"

    def on_reply(msg: Any) -> None:
        if msg.topic != topic or not box.empty():  # the first final reply is the answer; repeats are not kept
            return
        try:
            doc = _checked_reply(_json(msg.payload, REPLY_BYTES))
        except Rejected as exc:
            log.debug("fleet: a reply on %s ignored: %s", topic[:200], exc)
            return
        if doc.get("id") == cid and doc.get("status") in FINAL:
            box.put(doc)

    remove = client.on_message(on_reply)
    try:
        if not subscribed:
            client.subscribe([topic])
        client.publish(f"{prefix}/{device}/cmd/{action}", {"id": cid, "args": args or {}})
        try:
            return box.get(timeout=timeout)
        except queue.Empty:
            return None
    finally:
        remove()


def history(client: FleetClient, device: str, *, after: int | None = None, count: int = 100,
            filters: dict[str, Any] | None = None, timeout: float = 10.0) -> dict[str, Any]:
    """``device``'s events, through ``agent.history``: after ``after`` (paged until ``count``
    events), or, without ``after``, the latest ``count`` (of those matching ``filters``).

    Bounded whatever the device answers: at most ``count`` (<= HISTORY_COUNT) events are kept,
    at most HISTORY_PAGES pages are asked for, and a page that breaks the protocol (a ``more``
    that does not move on, events out of order) ends it with :class:`DeviceError`. Events
    that fail the checks are left out and counted in ``invalid``.
    """
    if not 1 <= count <= HISTORY_COUNT:
        raise InvalidCommand(f"the number of events must be 1 to {HISTORY_COUNT}, got {count}")
    client.subscribe([f"{client.prefix}/{device}/reply"])
    filters = {k: v for k, v in (filters or {}).items() if v is not None}
    pages = 0
    invalid = 0

    def page(start: int, limit: int) -> dict[str, Any]:
        nonlocal pages, invalid
        if pages >= HISTORY_PAGES:
            raise DeviceError(f"{device}: stopped after {HISTORY_PAGES} pages of agent.history "
                              f"({HISTORY_PAGES * 1000} events); narrow it with --after, --since or --until")
        pages += 1
        doc = request(client, device, "agent.history", {"after": start, "limit": limit, **filters},
                      timeout=timeout, subscribed=True)
        if doc is None:
            raise BrokerUnreachable(f"{device} did not answer agent.history within {timeout:g}s (is it online?)")
        if doc["status"] != "succeeded":
            err = doc.get("error") or {}
            raise DeviceError(f"{device}: agent.history {doc['status']}: {err.get('type')}: {err.get('message')}")
        result, bad = _history_page(device, doc.get("result"), start, limit)
        invalid += bad
        return result

    kept: collections.deque[dict[str, Any]] = collections.deque(maxlen=count)
    if after is None and not filters:
        head = page(0, 1)
        start = max(0, head["last"] - count)
    else:
        start = after or 0
    last_doc: dict[str, Any] = {}
    while True:
        last_doc = page(start, 1000 if after is None else min(1000, max(1, count - len(kept))))
        kept.extend(last_doc["events"])
        start = last_doc["next"]
        if not last_doc["more"] or (after is not None and len(kept) >= count):
            break
    return {"device": device, "events": list(kept), "oldest": last_doc.get("oldest"), "last": last_doc.get("last"),
            "invalid": invalid}


def _history_page(device: str, result: Any, start: int, limit: int) -> tuple[dict[str, Any], int]:
    """One ``agent.history`` result checked against the protocol: (the page with its events
    checked, how many events were left out as malformed). Raises :class:`DeviceError`."""
    def broken(why: str) -> DeviceError:
        return DeviceError(f"{device}: agent.history answered a page that breaks the protocol: {why}")

    if not isinstance(result, dict) or not isinstance(result.get("events"), list):
        raise broken("no list of events")
    more, nxt, last = result.get("more"), result.get("next"), result.get("last")
    if not isinstance(more, bool) or not _is_seq(nxt) or not _is_seq(last) or \
            not (result.get("oldest") is None or _is_seq(result["oldest"])):
        raise broken(f"more, next, last, oldest are {_show([more, nxt, last, result.get('oldest')])}")
    raw = result["events"]
    if len(raw) > limit or (more and (len(raw) < limit or nxt <= start)):
        raise broken(f"{len(raw)} events for a limit of {limit}, more {more}, next {nxt} after {start}")
    events, bad, previous = [], 0, start
    for ev in raw:
        try:
            ev = clean_event(ev)
        except Rejected:
            bad += 1
            continue
        if not previous < ev["seq"] <= nxt:
            raise broken(f"event seq {ev['seq']} is not in ({previous}, {nxt}]")
        previous = ev["seq"]
        events.append(ev)
    return {"events": events, "next": nxt, "more": more, "last": last, "oldest": result.get("oldest")}, bad


def _is_seq(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63


# --------------------------------------------------------------------------- events


class EventStream:
    """Every event of the selected devices, once each and in ``seq`` order per device.

    ``positions`` ({device: last seq seen}) resumes where an earlier stream stopped: those
    devices are asked for what came after at once. A jump in ``seq`` (the consumer was
    away, or the device's outbox dropped events while the broker was unreachable) is
    filled with ``agent.history``; events that the device no longer keeps are counted in
    ``lost``. ``on_event(doc)`` is called from the stream's own thread.
    """

    HISTORY_TIMEOUT = 10.0

    def __init__(self, client: FleetClient, on_event: Callable[[dict[str, Any]], None], *,
                 devices: Iterable[str] = (), positions: dict[str, int] | None = None):
        self.client = client
        self.prefix = client.prefix
        self.on_event = on_event
        self.devices = list(devices)
        self.last: dict[str, int] = dict(positions or {})
        self.lost: dict[str, int] = {}
        self.fills = 0  # agent.history requests made to fill gaps
        self._buffer: dict[str, dict[int, dict[str, Any]]] = {}
        self._filling: dict[str, tuple[str, float]] = {}  # device -> (request id, deadline)
        self._inbox: queue.Queue[tuple[str, str, Any]] = queue.Queue()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._remove: Callable[[], None] | None = None

    def start(self) -> None:
        self._stop.clear()
        removers = [self.client.on_message(self._on_message), self.client.on_reconnect(self._catch_up)]

        def remove() -> None:
            for r in removers:
                r()

        self._remove = remove
        if self.devices:
            topics = [f"{self.prefix}/{d}/{leaf}" for d in self.devices for leaf in ("events", "reply")]
        else:
            topics = [f"{self.prefix}/+/events", f"{self.prefix}/+/reply"]
        self.client.subscribe(topics)
        self._thread = threading.Thread(target=self._loop, name="fleet-events", daemon=True)
        self._thread.start()
        self._catch_up()

    def _catch_up(self) -> None:
        """Ask every device we know for what came after our last: at a resumed start, and after
        a reconnect (what was published while we were away came to nobody)."""
        for device in list(self.last):
            self._inbox.put(("catch_up", device, None))

    def stop(self) -> None:
        self._stop.set()
        if self._remove is not None:
            self._remove()
            self._remove = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def _on_message(self, msg: Any) -> None:
        for leaf in ("events", "reply"):
            device = _device_of(self.prefix, msg.topic, leaf)
            if device is not None and (not self.devices or device in self.devices):
                try:
                    doc = _json(msg.payload, REPLY_BYTES)
                    docs: list[dict[str, Any] | None]
                    if leaf == "reply":
                        docs = [_checked_reply(doc)]
                    else:  # events come one per message (an object) or batched (an array of them, in seq order)
                        if isinstance(doc, list) and len(doc) > BATCH_EVENTS_MAX:
                            raise Rejected(f"{len(doc)} events in one message (at most {BATCH_EVENTS_MAX})")
                        docs = [_clean_or_none(one, msg.topic) for one in (doc if isinstance(doc, list) else [doc])]
                except Rejected as exc:
                    log.debug("fleet events: a message on %s ignored: %s", msg.topic[:200], exc)
                    return
                for one in docs:
                    if one is not None:  # a bad event of a batch is dropped alone
                        self._inbox.put((leaf, device, one))
                return

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                kind, device, doc = self._inbox.get(timeout=0.5)
            except queue.Empty:
                self._check_timeouts()
                continue
            try:
                if kind == "events":
                    self._event(device, doc)
                elif kind == "reply":
                    self._reply(device, doc)
                elif device not in self._filling:
                    self._fill(device)
            except Exception:
                log.exception("fleet events: handling a message from %s", device)
            self._check_timeouts()

    def _event(self, device: str, doc: dict[str, Any]) -> None:
        seq = doc.get("seq")
        if not isinstance(seq, int):
            return
        if device not in self.last:
            self.last[device] = seq - 1  # the first event seen of a device: the stream starts here
        if seq <= self.last[device]:
            return  # seen already (an outbox resend after a crash, or it came with a fill)
        buf = self._buffer.setdefault(device, {})
        buf.setdefault(seq, doc)
        if len(buf) > STREAM_BUFFER:
            # A gap that is not being filled while events keep coming (a device that jumps
            # seq on purpose, or cannot answer agent.history): memory stays bounded; the gap is lost.
            self._lose(device, min(buf) - 1)
        self._drain(device)

    def _drain(self, device: str) -> None:
        buf = self._buffer.get(device, {})
        while self.last[device] + 1 in buf:
            self.last[device] += 1
            self.on_event(buf.pop(self.last[device]))
        if buf and device not in self._filling:
            self._fill(device)

    def _fill(self, device: str) -> None:
        cid = new_id()
        self._filling[device] = (cid, time.monotonic() + self.HISTORY_TIMEOUT)
        self.fills += 1
        self.client.publish_nowait(f"{self.prefix}/{device}/cmd/agent.history",
                                   {"id": cid, "args": {"after": self.last.get(device, 0), "limit": 1000}})

    def _reply(self, device: str, doc: dict[str, Any]) -> None:
        pending = self._filling.get(device)
        if pending is None or doc.get("id") != pending[0] or doc.get("status") not in FINAL:
            return
        del self._filling[device]
        if doc["status"] != "succeeded":
            log.warning("fleet events: %s answered agent.history with %s: %s", device, doc["status"], doc.get("error"))
            return
        result = doc.get("result")
        raw = result.get("events") if isinstance(result, dict) else None
        if not isinstance(raw, list):
            log.warning("fleet events: %s answered agent.history without a list of events", device)
            return
        assert isinstance(result, dict)  # (raw came from it)
        buf = self._buffer.setdefault(device, {})
        last = self.last.setdefault(device, 0)
        page = []
        for ev in raw[:1000]:
            try:
                page.append(clean_event(ev))
            except Rejected:
                continue
        page.sort(key=lambda ev: ev["seq"])
        # The page holds every kept event after our last, ascending: below its first one the
        # device keeps nothing any more (pruned by age or beyond max_rows).
        if page and page[0]["seq"] > last + 1:
            self._lose(device, page[0]["seq"] - 1)
        for ev in page:
            if ev["seq"] > self.last[device] and len(buf) < STREAM_BUFFER:
                buf.setdefault(ev["seq"], ev)
        if result.get("more") is True and page and page[-1]["seq"] > last:  # "more" only counts when it moves on
            self._drain(device)  # asks for the next page when a gap is left
            if device not in self._filling:
                self._fill(device)
            return
        # The device gave all it keeps after our last: a gap left before the first buffered event
        # is events it no longer keeps (pruned by age or beyond max_rows).
        if buf and self.last[device] + 1 not in buf:
            self._lose(device, min(buf) - 1)
        self._drain(device)

    def _lose(self, device: str, upto: int) -> None:
        self.lost[device] = self.lost.get(device, 0) + (upto - self.last[device])
        self.last[device] = upto

    def _check_timeouts(self) -> None:
        now = time.monotonic()
        for device, (_, deadline) in list(self._filling.items()):
            if now > deadline:
                del self._filling[device]
                self._fill(device)


# --------------------------------------------------------------------------- settings


def connection_settings(*, config: str | None = None, host: str | None = None, port: int | None = None,
                        prefix: str | None = None, username: str | None = None, password_file: str | None = None,
                        ca_file: str | None = None, cert_file: str | None = None, key_file: str | None = None,
                        insecure: bool = False) -> Any:
    """The broker to use: the ``[mqtt]`` table of a config (``config``, ``$EDGE_AGENT_CONFIG``
    or the default file) with the flags given laid over it; the flags alone (host 127.0.0.1
    unless given) with ``host`` and no ``config``, or when there is no config file to read
    (no ``config``, no ``$EDGE_AGENT_CONFIG``, no default file) and some flag is given."""
    import dataclasses

    from edge_agent.config import MqttSettings, TLSSettings, config_path, load_settings
    from edge_agent.errors import ConfigError

    flags = insecure or any(v is not None for v in (host, port, prefix, username, password_file, ca_file, cert_file,
                                                   key_file))
    no_file = config is None and not os.environ.get("EDGE_AGENT_CONFIG") and not os.path.exists(config_path(None))
    if config is None and (host is not None or (flags and no_file)):
        base = MqttSettings()
    else:
        settings = load_settings(config_path(config))
        if settings.mqtt is None:
            raise ConfigError("no [mqtt] table: give the broker with --host (and --port, --prefix)", path=settings.path)
        base = settings.mqtt
    tls = base.tls
    if ca_file or cert_file or key_file or insecure:
        tls = TLSSettings(ca_file=ca_file or (tls.ca_file if tls else None),
                          cert_file=cert_file or (tls.cert_file if tls else None),
                          key_file=key_file or (tls.key_file if tls else None), insecure=insecure)
        for name, value in (("--ca-file", tls.ca_file), ("--cert-file", tls.cert_file), ("--key-file", tls.key_file)):
            if value is not None and not os.path.isfile(value):
                raise ConfigError(f"{name}: no such file: {value}")
    if password_file is not None and not os.path.isfile(password_file):
        raise ConfigError(f"--password-file: no such file: {password_file}")
    changes: dict[str, Any] = {"tls": tls}
    for name, value in (("host", host), ("topic_prefix", prefix), ("username", username),
                        ("password_file", password_file)):
        if value is not None:
            changes[name] = value
    if port is not None:
        changes["port"] = port
    elif tls is not None and base.tls is None and base.port == 1883:
        changes["port"] = 8883
    if (changes.get("password_file") or base.password_file) and not (changes.get("username") or base.username):
        raise ConfigError("--password-file needs --username")
    return dataclasses.replace(base, **changes)
