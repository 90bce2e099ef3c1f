"""The monitor's broker link: a paho client that hears the fleet and asks devices for what it missed.

Subscribes to ``P/+/status``, ``P/+/state``, ``P/+/events``, ``P/+/reply`` and
``P/+/gpio/+``. The session is clean on purpose: what happened while the monitor was
away is fetched from the devices with ``agent.history`` (the device keeps its events
for days; a broker session would keep only what fits its queue), once per device on
every connection (when its retained ``status`` or ``state`` arrives) and whenever the
ingest thread finds a gap in a device's ``seq``. One history request per device is in
flight at a time; one unanswered for ``REQUEST_TIMEOUT`` may be sent again.

Commands (the web page's send and revoke, the history and jobs requests) are published
on ``P/D/cmd/<action>``; their replies come back on ``P/D/reply`` like anyone's.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import socket
import ssl
import threading
import time
import uuid
from typing import Any

from edge_agent.fleet.monitor.ingest import Ingest
from edge_agent.fleet.monitor.store import INTERNAL_PREFIX
from edge_agent.mqttsock import BufferedClient

__all__ = ["Link"]

log = logging.getLogger("edge_agent.monitor.link")

HISTORY_LIMIT = 1000
REQUEST_TIMEOUT = 30.0
READ_BURST = 1000  # packets read from the buffer before the acks are written
MAX_PAYLOAD = 1 << 20  # bytes of a message; larger ones are dropped unread (the broker may bound them lower)
MAX_DEVICE_ID = 200  # characters of a device id (a topic level); messages of longer ones are dropped
_PENDING_MAX = 10_000


class _LinkClient(BufferedClient):
    """paho on the buffered socket, without its wake-up byte per queued packet (see :meth:`Link._network_loop`)."""

    def _packet_queue(self, *args: Any, **kwargs: Any) -> Any:
        # paho writes a byte to its own socket pair for every packet queued (a PUBACK per event),
        # to wake a select() of loop(); ours wakes on Link._wake, only for other threads' publishes.
        pair, self._sockpairW = self._sockpairW, None
        try:
            return super()._packet_queue(*args, **kwargs)
        finally:
            self._sockpairW = pair


class Link:
    """Owns the paho client. ``mqtt`` is the edge-agent ``MqttSettings`` of the monitor's broker."""

    def __init__(self, mqtt_settings: Any, ingest: Ingest, *, keep: float = 30 * 86400.0, client_id: str | None = None):
        self.cfg = mqtt_settings
        self.prefix = mqtt_settings.topic_prefix
        self.ingest = ingest
        self.keep = keep
        self.client_id = client_id or f"edge-monitor-{socket.gethostname()}-{os.getpid()}"
        self.connected = threading.Event()
        self.connects = 0
        self._lock = threading.Lock()
        self._synced: set[str] = set()
        self._inflight: dict[str, tuple[str, float]] = {}  # device -> (request id, sent at)
        self._pending: dict[str, tuple[str, str, int]] = {}  # request id -> (kind, device, after)
        self._counter = itertools.count(1)
        self._dropped_logged = -1e9
        self._run_id = uuid.uuid4().hex[:8]
        self._client: Any = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        ingest.request_history = self.request_history
        ingest.request_jobs = self.request_jobs

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
        import paho.mqtt.client as mqtt

        client = _LinkClient(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id,
                             protocol=mqtt.MQTTv5)
        client.max_queued_messages_set(0)
        client.max_inflight_messages_set(100)
        if self.cfg.username:
            client.username_pw_set(self.cfg.username, self.cfg.password())
        if self.cfg.tls is not None:
            tls = self.cfg.tls
            client.tls_set(ca_certs=tls.ca_file, certfile=tls.cert_file, keyfile=tls.key_file,
                           cert_reqs=ssl.CERT_NONE if tls.insecure else ssl.CERT_REQUIRED)
            client.tls_insecure_set(tls.insecure)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_socket_open = self._on_socket_open
        # Only this thread writes to the socket; a publish from another thread wakes it (self._wake).
        client.on_socket_register_write = lambda c, u, sock: None
        return client

    def _on_socket_open(self, client: Any, userdata: Any, sock: Any) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # (a TCP socket: this link sets no other transport)

    def _network_loop(self) -> None:
        """Connect; then read every packet that has arrived, write, flush, per pass; reconnect with a backoff up to 10 s.

        Not paho's ``loop()``: it reads one packet per ``select()``, and under a stream of
        events that select (and the GIL hand-over around it) cost more than the packet.
        """
        import select

        import paho.mqtt.client as mqtt

        delay = 0.5
        while not self._stop.is_set():
            client = self._client = self._make_client()
            try:
                client.connect(self.cfg.host, self.cfg.port, keepalive=int(self.cfg.keepalive), clean_start=True)
            except Exception as exc:  # refused, unreachable, TLS: try again later
                log.warning("cannot connect to %s:%s: %s", self.cfg.host, self.cfg.port, exc)
                self._stop.wait(delay)
                delay = min(10.0, delay * 2)
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
                if rc == mqtt.MQTT_ERR_SUCCESS:
                    delay = 0.5
            self.connected.clear()
            try:
                client.disconnect()
                client.loop_write()
                client.flush()
            except Exception:
                pass
            if not self._stop.is_set():
                self._stop.wait(delay)

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
        info = client.publish(f"{self.prefix}/{device}/cmd/{action}", json.dumps(doc), qos=1)
        if info.rc != 0:
            raise ConnectionError(f"publish failed (paho rc {info.rc})")
        if threading.current_thread() is not self._thread:
            try:
                self._wake_w.send(b"w")
            except BlockingIOError:  # a wake is already pending
                pass

    def request_history(self, device: str, after: int) -> None:
        """Ask ``device`` for its events after seq ``after`` (unless a request is in flight)."""
        now = time.monotonic()
        with self._lock:
            inflight = self._inflight.get(device)
            if inflight is not None and now - inflight[1] < REQUEST_TIMEOUT:
                return
            request_id = f"{INTERNAL_PREFIX}history:{self._run_id}:{next(self._counter)}"
            self._inflight[device] = (request_id, now)
            self._remember(request_id, ("history", device, after))
        args: dict[str, Any] = {"after": after, "limit": HISTORY_LIMIT}
        if after == 0:
            args["since"] = round(time.time() - self.keep, 3)
        try:
            self._publish(device, "agent.history", {"id": request_id, "args": args})
        except ConnectionError:
            with self._lock:
                self._inflight.pop(device, None)

    def request_jobs(self, device: str) -> None:
        request_id = f"{INTERNAL_PREFIX}jobs:{self._run_id}:{next(self._counter)}"
        with self._lock:
            self._remember(request_id, ("jobs", device, 0))
        try:
            self._publish(device, "agent.jobs", {"id": request_id})
        except ConnectionError:
            pass

    def _remember(self, request_id: str, what: tuple[str, str, int]) -> None:
        if len(self._pending) >= _PENDING_MAX:
            self._pending.clear()
        self._pending[request_id] = what

    # ------------------------------------------------------------------ paho callbacks (its thread)

    def _on_connect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any = None) -> None:
        if rc.is_failure:
            log.warning("broker refused the monitor: %s", rc)
            return
        p = self.prefix
        with self._lock:
            self._synced.clear()
            self._inflight.clear()
        client.subscribe([(f"{p}/+/status", 1), (f"{p}/+/state", 1), (f"{p}/+/events", 1), (f"{p}/+/reply", 1),
                          (f"{p}/+/gpio/+", 1)])
        self.connects += 1
        self.connected.set()
        log.info("connected to %s:%s", self.cfg.host, self.cfg.port)

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any = None) -> None:
        self.connected.clear()
        log.info("disconnected from the broker: %s", rc)

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        parts = msg.topic.split("/")
        n = len(self.prefix.split("/"))
        if len(parts) < n + 2:
            return
        device, kind = parts[n], parts[n + 1]
        if len(msg.payload) > MAX_PAYLOAD or len(device) > MAX_DEVICE_ID:
            self._dropped(device, f"{len(msg.payload)} bytes on {kind}, more than {MAX_PAYLOAD}" if len(device) <= MAX_DEVICE_ID
                          else f"device id of {len(device)} characters, more than {MAX_DEVICE_ID}")
            return
        try:
            self._dispatch(device, kind, parts[n + 2:], msg.payload)
        except Exception:
            log.exception("could not handle a message on %s", msg.topic[:300])

    def _dropped(self, device: str, why: str) -> None:
        now = time.monotonic()
        if now - self._dropped_logged > 60:  # once a minute at most: a flood must not flood the log
            self._dropped_logged = now
            log.warning("%s: a message dropped: %s", device[:MAX_DEVICE_ID], why)
        self.ingest.rejected += 1

    def _dispatch(self, device: str, kind: str, rest: list[str], payload: bytes) -> None:
        put = self.ingest.put
        if kind == "gpio":
            if len(rest) == 1:
                put("gpio", device, rest[0], payload.decode("utf-8", "replace").strip()[:50])
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
        self.ingest.put("sync", device)

    def _reply(self, device: str, doc: dict[str, Any], size: int) -> None:
        command_id = doc.get("id")
        if not (isinstance(command_id, str) and command_id.startswith(INTERNAL_PREFIX)):
            self.ingest.put("reply", device, doc, size=size)
            return
        status = doc.get("status")
        if status == "accepted":
            return
        with self._lock:
            what = self._pending.pop(command_id, None)
            if what is not None and what[0] == "history" and self._inflight.get(device, ("",))[0] == command_id:
                del self._inflight[device]
        if what is None:
            return
        kind, _, after = what
        if kind == "history":
            if status == "succeeded":
                self.ingest.put("history", device, after, doc.get("result"), size=size)
            elif status == "rejected" and (doc.get("error") or {}).get("type") in ("unknown_action", "unknown"):
                self.ingest.put("nohistory", device)
        elif kind == "jobs" and status == "succeeded" and isinstance(doc.get("result"), dict):
            self.ingest.put("jobs", device, doc["result"], size=size)
