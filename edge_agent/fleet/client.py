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
- :class:`edge_agent.fleet.stream.EventStream`: the live events of the fleet in ``seq`` order
  per device, each exactly once; a jump in ``seq`` is filled with ``agent.history``.

A device is not trusted: what it publishes (status, state, replies, events, history pages)
is checked and bounded here, at the boundary, with the contract's rules
(:mod:`edge_agent.contract`), before anything else reads it. A malformed message
is dropped or reported as that device's problem; it cannot break the listing or the
sending for the others, and paging a device's history is bounded in pages and in events.
"""

from __future__ import annotations

import collections
import json
import logging
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

from edge_agent.broker import OPERATOR_MAX_BACKOFF, Backoff, connect, make_client
from edge_agent.config import MqttSettings
from edge_agent.contract import (
    ANY,
    FINAL,
    HISTORY_ACTION,
    MAX_HISTORY,
    Rejected,
    check_reply,
    check_state,
    clean_event,
    command_topic,
    device_topic,
    group_command_topic,
    heard,
    loads,
    show,
    sync_topic,
    text,
)
from edge_agent.errors import BrokerUnreachable, EdgeAgentError, InvalidCommand

__all__ = ["FINAL", "DeviceError", "DeviceInfo", "FleetClient", "SendResult", "connection_settings", "history", "ls",
           "is_version", "reported_schedules", "request", "send", "snapshot"]

log = logging.getLogger("edge_agent.fleet")

STATE_BYTES = 256 * 1024  # a status/state message longer than this is not parsed (a real state is ~1 KB)
REPLY_BYTES = 16 * 1024 * 1024  # nor a reply: an agent.history page of 1,000 events with their args and results
HISTORY_COUNT = 100_000  # events fleet.history() returns (and keeps in memory) at most
HISTORY_PAGES = 1000  # agent.history pages it asks one device for, at most (1,000,000 events)


class DeviceError(EdgeAgentError, RuntimeError):
    """A device answered with something the fleet tools cannot use (it breaks the protocol)."""

    kind = "device"


class FleetClient:
    """One broker connection (MQTT 5, clean start) with handlers called for every message, on
    its network thread; lost, it is made again (:class:`edge_agent.broker.Backoff`, up to 10 s)."""

    def __init__(self, mqtt: MqttSettings, *, client_id: str | None = None, timeout: float = 10.0):
        self.cfg = mqtt
        self.prefix: str = mqtt.topic_prefix
        self.timeout = timeout
        self.client_id = client_id or f"edge-fleet-{socket.gethostname()[:20]}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self._handlers: list[Callable[[Any], None]] = []
        self._connected = threading.Event()
        self._refused: str | None = None
        self._subacks: dict[int, threading.Event] = {}
        self._early_subacks: set[int] = set()  # SUBACKs that came before subscribe() recorded their mid
        self._subs: dict[str, int] = {}  # every subscription, made again after a reconnect (clean start)
        self._on_reconnect: list[Callable[[], None]] = []
        self._lock = threading.Lock()
        self._backoff = Backoff(OPERATOR_MAX_BACKOFF)
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None
        c = make_client(mqtt, self.client_id)
        c.on_connect = self._on_connect
        c.on_message = self._on_message
        c.on_subscribe = self._on_subscribe
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
            connect(self._client, self.cfg, keepalive=30)
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise BrokerUnreachable(f"cannot reach the MQTT broker at {where}: {exc}") from exc
        self._closing.clear()
        self._thread = threading.Thread(target=self._network_loop, name="fleet-mqtt", daemon=True)
        self._thread.start()
        if not self._connected.wait(self.timeout) or self._refused:
            self.close()
            why = self._refused or f"no answer within {self.timeout:g}s"
            raise BrokerUnreachable(f"the MQTT broker at {where} refused the connection: {why}")

    def close(self) -> None:
        try:
            self._client.disconnect()  # written by the network thread, which then ends
        finally:
            self._closing.set()
            thread, self._thread = self._thread, None
            if thread is not None and thread is not threading.current_thread():
                thread.join(self.timeout)

    def _network_loop(self) -> None:
        """paho's loop, and its socket's writes flushed, pass after pass; a lost connection is
        made again after a :class:`~edge_agent.broker.Backoff` delay, until :meth:`close`."""
        import paho.mqtt.client as paho

        client = self._client
        while True:
            rc = paho.MQTT_ERR_SUCCESS
            while rc == paho.MQTT_ERR_SUCCESS:
                try:
                    rc = client.loop(timeout=1.0)
                    client.flush()
                except Exception:  # a bug in a callback must not end the connection for good
                    log.exception("fleet: unexpected error in the MQTT loop; connecting again")
                    break
            while True:
                if self._backoff.wait(self._closing):
                    return
                try:
                    client.reconnect()
                    break
                except Exception as exc:  # refused, unreachable, TLS: try again later
                    log.debug("fleet: cannot reach the broker at %s:%s: %s", self.cfg.host, self.cfg.port, exc)

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if reason_code.is_failure:
            self._refused = str(reason_code)
            self._connected.set()
            return
        self._backoff.connected()
        if self._connected.is_set() and self._subs:
            # Connected again (a long follow outlived a broker restart): a clean
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
            except Exception:  # one handler's bug must not stop the others (nor the network thread)
                log.exception("fleet: handling a message on %s", msg.topic[:200])

    # ----------------------------------------------------------------- use

    def on_reconnect(self, handler: Callable[[], None]) -> Callable[[], None]:
        """Call ``handler()`` (on the network thread) after each automatic reconnect; returns the remover."""
        self._on_reconnect.append(handler)
        return lambda: self._on_reconnect.remove(handler)

    def on_message(self, handler: Callable[[Any], None]) -> Callable[[], None]:
        """Call ``handler(msg)`` for every message (on the network thread); returns the remover."""
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
                "schedules": reported_schedules(s)[0], "problem": self.problem}


VERSION_MAX = 2**63 - 1  # a schedule document's version, at most
ERROR_CHARS = 2000  # characters of a device's rejection message kept


def is_version(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= VERSION_MAX


def reported_schedules(state: dict[str, Any] | None) -> tuple[dict[str, dict[str, Any]], str | None]:
    """A device's ``state["schedules"]`` checked: ({source: {"version": int|None, "cleared": bool, "rejected":
    None|{"version", "error"}}}, a problem in words or None). Malformed entries are left out."""
    raw = (state or {}).get("schedules")
    if raw is None:
        return {}, None
    if not isinstance(raw, dict):
        return {}, f"schedules is {show(raw)}, not an object"
    out: dict[str, dict[str, Any]] = {}
    bad: list[str] = []
    for source, entry in raw.items():
        if not isinstance(entry, dict) or not (entry.get("version") is None or is_version(entry.get("version"))):
            bad.append(str(source))
            continue
        rej = entry.get("rejected")
        if rej is not None and not (isinstance(rej, dict) and is_version(rej.get("version"))):
            bad.append(str(source))
            continue
        out[str(source)] = {"version": entry.get("version"), "cleared": entry.get("cleared") is True,
                            "rejected": None if rej is None else {
                                "version": rej["version"], "error": text(rej.get("error"), ERROR_CHARS) or "no reason given"}}
    problem = f"schedules of {show(bad)} ignored: malformed" if bad else None
    return out, problem


class _Snapshot:
    """Collects retained status and state; keeps following them afterwards (live changes)
    until :meth:`close`."""

    def __init__(self, client: FleetClient):
        self.prefix = client.prefix
        self.devices: dict[str, DeviceInfo] = {}
        self.cond = threading.Condition()
        self.synced = False
        self.marker = sync_topic(self.prefix, uuid.uuid4().hex)
        self._client = client
        self._remove: Callable[[], None] | None = client.on_message(self.handle)

    def close(self) -> None:
        """Stop following: a long-lived client calling send() or ls() again and again must not
        pile up handlers (each message would go through every one) or subscriptions."""
        if self._remove is not None:
            self._remove()
            self._remove = None
            self._client.unsubscribe([self.marker])

    def rows(self) -> list[dict[str, Any]]:
        """One row per device heard so far, sorted by name (what ``fleet ls`` shows)."""
        with self.cond:
            return [self.devices[d].row() for d in sorted(self.devices)]

    def handle(self, msg: Any) -> None:
        if msg.topic == self.marker:
            with self.cond:
                self.synced = True
                self.cond.notify_all()
            return
        where = heard(self.prefix, msg.topic)
        if where is None or where.leaf not in ("status", "state"):
            return
        with self.cond:
            info = self.devices.setdefault(where.device, DeviceInfo(where.device))
            info.problems.pop(where.leaf, None)
            if where.leaf == "status":
                word = msg.payload[:STATE_BYTES].decode("utf-8", "replace").strip()
                info.status = word if word in ("online", "offline") else None
                if word and info.status is None:
                    info.problems["status"] = f"status {show(word)} ignored: not online/offline"
            else:
                info.state = None
                if msg.payload:  # an empty retained message clears it
                    try:
                        info.state = check_state(loads(msg.payload, STATE_BYTES))
                    except Rejected as exc:
                        info.problems["state"] = f"state ignored: {exc}"
            self.cond.notify_all()

    def topics(self) -> list[str]:
        return [device_topic(self.prefix, ANY, "status"), device_topic(self.prefix, ANY, "state"), self.marker]

    def wait_synced(self, client: FleetClient, timeout: float) -> None:
        # The marker is subscribed at QoS 0, as the retained snapshot is (snapshot()): the broker
        # delivers it after them, in one ordered stream. It is published at QoS 1, so that
        # it is not lost on its way to the broker.
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
    return snap.rows()


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
        where = heard(prefix, msg.topic)
        if where is None or where.leaf != "reply":
            return
        device = where.device
        try:
            doc = check_reply(loads(msg.payload, REPLY_BYTES))
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
        reply_topics = [device_topic(prefix, d, "reply") for d in ([ANY] if group or everyone else named)]
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
            client.publish(group_command_topic(prefix, group, action), payload)
        else:
            for d in expected:
                client.publish(command_topic(prefix, d, action), payload)

        def waiting_for() -> list[str]:
            with snap.cond:
                known = dict(snap.devices)
            return [d for d in expected if d not in replies and (wait_offline or (d in known and known[d].online))]

        end = began + timeout
        # Both conditions are notified by the network thread: wake on either (a reply, a status change).
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
    topic = device_topic(prefix, device, "reply")

    def on_reply(msg: Any) -> None:
        if msg.topic != topic or not box.empty():  # the first final reply is the answer; repeats are not kept
            return
        try:
            doc = check_reply(loads(msg.payload, REPLY_BYTES))
        except Rejected as exc:
            log.debug("fleet: a reply on %s ignored: %s", topic[:200], exc)
            return
        if doc.get("id") == cid and doc.get("status") in FINAL:
            box.put(doc)

    remove = client.on_message(on_reply)
    try:
        if not subscribed:
            client.subscribe([topic])
        client.publish(command_topic(prefix, device, action), {"id": cid, "args": args or {}})
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
    client.subscribe([device_topic(client.prefix, device, "reply")])
    filters = {k: v for k, v in (filters or {}).items() if v is not None}
    pages = 0
    invalid = 0

    def page(start: int, limit: int) -> dict[str, Any]:
        nonlocal pages, invalid
        if pages >= HISTORY_PAGES:
            raise DeviceError(f"{device}: stopped after {HISTORY_PAGES} pages of agent.history "
                              f"({HISTORY_PAGES * 1000} events); narrow it with --after, --since or --until")
        pages += 1
        doc = request(client, device, HISTORY_ACTION, {"after": start, "limit": limit, **filters},
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
        last_doc = page(start, MAX_HISTORY if after is None else min(MAX_HISTORY, max(1, count - len(kept))))
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
        raise broken(f"more, next, last, oldest are {show([more, nxt, last, result.get('oldest')])}")
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
