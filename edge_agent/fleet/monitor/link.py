"""The monitor's broker link: a paho client that hears the fleet and asks devices for what it missed.

Subscribes to ``P/+/status``, ``P/+/state``, ``P/+/events``, ``P/+/reply`` and
``P/+/gpio/+``; what it hears goes to the ingest thread through its :class:`~.ingest.Inbox`.
The session is clean on purpose: what happened while the monitor was away is fetched from
the devices with ``agent.history`` (the device keeps its events for days; a broker session
would keep only what fits its queue), once per device on every connection (when its
retained ``status`` or ``state`` arrives) and whenever the ingest thread finds a gap in a
device's ``seq`` (:meth:`Link.request_history`). One history request per device is in
flight at a time; one unanswered for ``REQUEST_TIMEOUT`` may be sent again
(:class:`edge_agent.fleet.stream.HistoryRequests`).

Commands (the web page's send and revoke, the history and jobs requests) are published
on ``P/D/cmd/<action>``; their replies come back on ``P/D/reply`` like anyone's.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import socket
import threading
import time
import uuid
from typing import Any

from edge_agent.broker import OPERATOR_MAX_BACKOFF, Backoff, connect, make_client
from edge_agent.config import MqttSettings
from edge_agent.contract import ANY, HISTORY_ACTION, Heard, command_topic, device_topic, gpio_topic, heard, schedule_of
from edge_agent.fleet.monitor.ingest import Inbox
from edge_agent.fleet.monitor.store import INTERNAL_PREFIX
from edge_agent.fleet.schedules import RetainedDoc, all_topics, read_desired
from edge_agent.fleet.stream import HistoryRequests, lacks_history
from edge_agent.mqttsock import UnwokenClient

__all__ = ["Link"]

log = logging.getLogger("edge_agent.monitor.link")

REQUEST_TIMEOUT = 30.0
READ_BURST = 1000  # packets read from the buffer before the acks are written
MAX_PAYLOAD = 1 << 20  # bytes of a message; larger ones are dropped unread (the broker may bound them lower)
MAX_DEVICE_ID = 200  # characters of a device id (a topic level); messages of longer ones are dropped
_PENDING_MAX = 10_000


class Link:
    """Owns the paho client; puts what it hears in ``inbox``. ``mqtt_settings``: the monitor's broker."""

    def __init__(self, mqtt_settings: MqttSettings, inbox: Inbox, *, keep: float = 30 * 86400.0,
                 client_id: str | None = None):
        self.cfg = mqtt_settings
        self.prefix = mqtt_settings.topic_prefix
        self.inbox = inbox
        self.keep = keep
        self.client_id = client_id or f"edge-monitor-{socket.gethostname()}-{os.getpid()}"
        self.connected = threading.Event()
        self.connects = 0
        self.dropped = 0  # messages dropped unread (too large, a device id too long): rejected at the boundary
        self._lock = threading.Lock()
        self._desired: dict[str, RetainedDoc] = {}  # schedule topic -> its retained document (the broker holds them)
        self._synced: set[str] = set()
        self._run_id = uuid.uuid4().hex[:8]
        self._counter = itertools.count(1)
        self.history = HistoryRequests(lambda device, doc: self._publish(device, HISTORY_ACTION, doc),
                                       lambda: self._request_id("history"), timeout=REQUEST_TIMEOUT)
        self._jobs: dict[str, str] = {}  # agent.jobs request id -> device
        self._dropped_logged = -1e9
        self._backoff = Backoff(OPERATOR_MAX_BACKOFF)
        self._client: Any = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._network_loop, name="monitor-mqtt", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        client = self._client
        if client is not None:
            try:
                client.disconnect()
            except Exception:
                pass
        if self._thread is not None:
            try:
                self._wake_w.send(b"w")
            except BlockingIOError:
                pass
            self._thread.join(timeout)
            self._thread = None
        self._wake_r.close()
        self._wake_w.close()

    def _make_client(self) -> Any:
        client = make_client(self.cfg, self.client_id, cls=UnwokenClient)
        client.max_queued_messages_set(0)
        client.max_inflight_messages_set(100)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        return client

    def _network_loop(self) -> None:
        """Connect; then read every packet that has arrived, write, flush, per pass; reconnect
        after a :class:`~edge_agent.broker.Backoff` delay (up to 10 s).

        Not paho's ``loop()``: it reads one packet per ``select()``, and under a stream of
        events that select (and the GIL hand-over around it) cost more than the packet.
        """
        import select

        import paho.mqtt.client as mqtt

        while not self._stop.is_set():
            client = self._client = self._make_client()
            try:
                connect(client, self.cfg, keepalive=int(self.cfg.keepalive))
            except Exception as exc:  # refused, unreachable, TLS: try again later
                log.warning("cannot connect to %s:%s: %s", self.cfg.host, self.cfg.port, exc)
                self._backoff.wait(self._stop)
                continue
            sock = client.socket()
            rc = mqtt.MQTT_ERR_SUCCESS
            while not self._stop.is_set() and rc == mqtt.MQTT_ERR_SUCCESS:
                try:
                    readable: list[Any] = []
                    if not sock.pending():
                        wlist = [sock] if client.want_write() else []
                        readable, _, _ = select.select([sock, self._wake_r], wlist, [], 1.0)
                        if self._wake_r in readable:
                            try:
                                self._wake_r.recv(4096)
                            except BlockingIOError:
                                pass
                    if sock.pending() or sock in readable:
                        # paho's loop_read() reads one packet whatever max_packets says: read on
                        # while whole packets wait in the buffer, then send their PUBACKs at once.
                        rc = client.loop_read()
                        n = 1
                        while rc == mqtt.MQTT_ERR_SUCCESS and sock.pending() and n < READ_BURST:
                            rc = client.loop_read()
                            n += 1
                    if rc == mqtt.MQTT_ERR_SUCCESS and client.want_write():
                        rc = client.loop_write()
                    if rc == mqtt.MQTT_ERR_SUCCESS:
                        rc = client.loop_misc()
                    client.flush()
                except Exception:  # a bug in a callback must not end the link: log it, reconnect
                    log.exception("unexpected error in the MQTT loop; reconnecting")
                    break
            self.connected.clear()
            try:
                client.disconnect()
                client.loop_write()
                client.flush()
            except Exception:
                pass
            if not self._stop.is_set():
                self._backoff.wait(self._stop)

    # ------------------------------------------------------------------ sending

    def send(self, device: str, action: str, args: dict[str, Any], command_id: str | None = None) -> str:
        """Publish a command to ``device``; returns its id. Raises ConnectionError while the broker is away."""
        command_id = command_id or f"web-{uuid.uuid4().hex[:12]}"
        self._publish(device, action, {"id": command_id, "args": args})
        return command_id

    def _publish(self, device: str, action: str, doc: dict[str, Any]) -> None:
        client = self._client
        if client is None or not self.connected.is_set():
            raise ConnectionError("the monitor is not connected to the broker")
        info = client.publish(command_topic(self.prefix, device, action), json.dumps(doc), qos=1)
        if info.rc != 0:
            raise ConnectionError(f"publish failed (paho rc {info.rc})")
        if threading.current_thread() is not self._thread:
            try:
                self._wake_w.send(b"w")
            except BlockingIOError:  # a wake is already pending
                pass

    def _request_id(self, kind: str) -> str:
        return f"{INTERNAL_PREFIX}{kind}:{self._run_id}:{next(self._counter)}"

    def request_history(self, device: str, after: int) -> None:
        """Ask ``device`` for its events after seq ``after`` (unless a request is in flight); from
        the start of the monitor's retention when it has none of them yet."""
        since = {"since": round(time.time() - self.keep, 3)} if after == 0 else {}
        self.history.ask(device, after, **since)

    def request_jobs(self, device: str) -> None:
        request_id = self._request_id("jobs")
        with self._lock:
            if len(self._jobs) >= _PENDING_MAX:
                self._jobs.clear()
            self._jobs[request_id] = device
        try:
            self._publish(device, "agent.jobs", {"id": request_id})
        except ConnectionError:
            pass

    # ------------------------------------------------------------------ paho callbacks (its thread)

    def _on_connect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any = None) -> None:
        if rc.is_failure:
            log.warning("broker refused the monitor: %s", rc)
            return
        self._backoff.connected()
        p = self.prefix
        with self._lock:
            self._synced.clear()
        self.history.clear()
        client.subscribe([(device_topic(p, ANY, leaf), 1) for leaf in ("status", "state", "events", "reply")]
                         + [(gpio_topic(p, ANY, ANY), 1)] + [(topic, 1) for topic in all_topics(p)])
        self.connects += 1
        self.connected.set()
        log.info("connected to %s:%s", self.cfg.host, self.cfg.port)

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any = None) -> None:
        self.connected.clear()
        log.info("disconnected from the broker: %s", rc)

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        where = heard(self.prefix, msg.topic)
        if where is None:
            if schedule_of(self.prefix, msg.topic) is not None and len(msg.topic) <= 2 * MAX_DEVICE_ID:
                self._desired_document(msg.topic, msg.payload)
            return
        device = where.device
        if len(msg.payload) > MAX_PAYLOAD or len(device) > MAX_DEVICE_ID:
            self._dropped(device, f"{len(msg.payload)} bytes on {where.leaf}, more than {MAX_PAYLOAD}"
                          if len(device) <= MAX_DEVICE_ID else f"device id of {len(device)} characters, more than {MAX_DEVICE_ID}")
            return
        try:
            self._dispatch(where, msg.payload)
        except Exception:
            log.exception("could not handle a message on %s", msg.topic[:300])

    def _desired_document(self, topic: str, payload: bytes) -> None:
        """A retained schedule document (fleet schedules): only its version is kept, for the drift shown."""
        doc = read_desired(payload[:MAX_PAYLOAD]) if len(payload) <= MAX_PAYLOAD else RetainedDoc(None, problem="too large")
        with self._lock:
            if doc is None:
                self._desired.pop(topic, None)
            elif topic in self._desired or len(self._desired) < _PENDING_MAX:  # (bounded: one per device and group)
                self._desired[topic] = doc

    def desired(self) -> dict[str, RetainedDoc]:
        """The retained schedule documents heard, by topic (see :func:`edge_agent.fleet.schedules.device_rows`)."""
        with self._lock:
            return dict(self._desired)

    def _dropped(self, device: str, why: str) -> None:
        now = time.monotonic()
        if now - self._dropped_logged > 60:  # once a minute at most: a flood must not flood the log
            self._dropped_logged = now
            log.warning("%s: a message dropped: %s", device[:MAX_DEVICE_ID], why)
        self.dropped += 1

    def _dispatch(self, where: Heard, payload: bytes) -> None:
        put, device, kind = self.inbox.put, where.device, where.leaf
        if kind == "gpio":
            put("gpio", device, where.name, payload.decode("utf-8", "replace").strip()[:50])
            return
        if kind == "events":  # parsed in the ingest thread: raw bytes are smaller while they wait
            put("events", device, payload)
            return
        if kind == "status":
            text = payload.decode("utf-8", "replace").strip()
            if text not in ("online", "offline"):
                return
            put("status", device, text == "online")
            if text == "online":
                self._sync(device)
            else:
                with self._lock:
                    self._synced.discard(device)
            return
        try:
            doc = json.loads(payload)
        except (ValueError, RecursionError):
            return
        if kind == "state" and isinstance(doc, dict):
            put("state", device, doc, size=len(payload))
            self._sync(device)
        elif kind == "reply" and isinstance(doc, dict):
            self._reply(device, doc, len(payload))

    def _sync(self, device: str) -> None:
        with self._lock:
            if device in self._synced:
                return
            self._synced.add(device)
        self.inbox.put("sync", device)

    def _reply(self, device: str, doc: dict[str, Any], size: int) -> None:
        command_id = doc.get("id")
        if not (isinstance(command_id, str) and command_id.startswith(INTERNAL_PREFIX)):
            self.inbox.put("reply", device, doc, size=size)
            return
        after = self.history.answered(device, doc)
        if after is not None:
            if doc.get("status") == "succeeded":
                self.inbox.put("history", device, after, doc.get("result"), size=size)
            elif lacks_history(doc):
                self.inbox.put("nohistory", device)
            return
        if doc.get("status") == "accepted":
            return
        with self._lock:
            asked = self._jobs.pop(command_id, None)
        if asked is not None and doc.get("status") == "succeeded" and isinstance(doc.get("result"), dict):
            self.inbox.put("jobs", device, doc["result"], size=size)
