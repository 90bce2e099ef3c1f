"""The MQTT link: one paho client, its connection loop and the outbox publisher.

- Persistent session (clean_start off, session expiry): the broker keeps commands
  sent while the agent restarts, and redelivers the unacknowledged ones.
- Manual acks: a command is PUBACKed only after it is committed to the database,
  in arrival order (paho calls ``on_message`` in order on the network thread).
- TCP_NODELAY on the socket: with Nagle on, a round trip takes ~88 ms, not ~1 ms.
- Subscriptions are made in ``on_connect``: paho reconnects but does not resubscribe.
- Our own reconnect loop: capped exponential backoff with full jitter (:func:`reconnect_delay`:
  up to 1 s, 2 s, 4 s ... 60 s), so a fleet does not come back in lockstep after a broker restart.
- Last will ``offline`` (retained), ``online`` on connect, ``offline`` on a clean stop.
- MQTT 5 first; a broker that refuses it gets MQTT 3.1.1 ("auto").
- Everything published goes through :class:`Outbox` (SQLite), except the link's own
  ``online`` marker and the periodic refresh of ``state`` (both are remade on connect).
"""

from __future__ import annotations

import collections
import json
import logging
import random
import socket
import ssl
import threading
import time
from typing import Any

from . import __version__
from .errors import StorageError
from .ingress import Checked, Ingress, Topics
from .outbox import Outbox
from .store import Store

__all__ = ["MqttLink", "reconnect_delay"]

log = logging.getLogger(__name__)

WINDOW = 500  # messages handed to paho and not yet acknowledged, at most (the broker may allow fewer)
WINDOW_V311 = 100  # MQTT 3.1.1 brokers do not say how many they take; mosquitto's default is 20 (QoS 1 is acked at once)
BACKOFF_BASE = 1.0  # seconds: the ceiling of the first reconnect delay
MAX_BACKOFF = 60.0  # seconds: the ceiling never grows beyond this
STABLE_AFTER = 10.0  # seconds a connection must last before the backoff starts again from the base
STATE_MIN_INTERVAL = 1.0  # seconds between two `state` messages caused by changes
# Acknowledged outbox rows are deleted together, without an fsync of their own, once REMOVE_BATCH
# of them are waiting or REMOVE_EVERY seconds after the last deletion: what a crash can publish
# again is the messages in flight (the window) plus fewer than REMOVE_BATCH acknowledged ones.
REMOVE_EVERY = 0.05
REMOVE_BATCH = 64


def reconnect_delay(failures: int, rng: random.Random) -> float:
    """Seconds to wait before reconnect attempt ``failures + 1`` (0 after the link was lost):
    full jitter, uniform in [0, min(60 s, 1 s x 2^failures)]. After a broker restart every
    device is disconnected at the same instant; drawn this way their attempts spread out
    over a window about as long as the outage so far, instead of arriving together."""
    ceiling = min(MAX_BACKOFF, BACKOFF_BASE * 2.0 ** min(failures, 16))
    return rng.uniform(0.0, ceiling)


class MqttLink:
    def __init__(self, settings: Any, store: Store, *, agent: Any):
        self.settings = settings
        self.cfg = settings.mqtt
        self.store = store
        self.agent = agent
        self.outbox = Outbox(store)
        self.topics = Topics(self.cfg.topic_prefix, settings.device_id, settings.groups, self.cfg.discovery_prefix)
        self.ingress = Ingress(store, self.outbox, self.topics, max_payload=self.cfg.max_payload,
                               registry=lambda: agent.registry, submit=lambda new, cur: agent.queue.submit(new, cur))
        self.reporter = self.ingress
        self.connected = threading.Event()
        self._stop = threading.Event()
        self._acked: collections.deque[tuple[int, str | None]] = collections.deque()  # (mid, refused because)
        self._protocol = 5 if self.cfg.protocol in ("auto", "5") else 4
        self._client: Any = None
        self._threads: list[threading.Thread] = []
        self._ingress_broken = False
        self._ingress_paused = False  # stopping: new commands stay with the broker, unacknowledged
        self._delivered_upto = 0  # every outbox row up to this seq is acknowledged (publisher thread)
        self._session_up = False
        self._batch: list[Any] = []
        # paho's loop wakes for socket traffic and for our publishes; the timeout only has to
        # keep the keepalive pings on time (fewer idle wake-ups than paho's 1 s).
        self._loop_timeout = max(1.0, min(10.0, self.cfg.keepalive / 3))
        self._failures = 0  # reconnect attempts since the link last held (reconnect_delay)
        self._connected_at: float | None = None
        self._window = WINDOW
        self._last_error: str | None = None
        self._state_dirty = threading.Event()
        self.rng = random.Random()

    # ----------------------------------------------------------------- hooks for the agent

    def accepted(self, cur: Any, cmd: Any) -> None:
        self.ingress.accepted(cur, cmd)
        self._state_dirty.set()

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> None:
        """Queue a message in the outbox (the ``mqtt.publish`` action)."""
        with self.store.transaction() as cur:
            self.outbox.put(cur, topic, payload, qos=qos, retain=retain)

    def gpio_changed(self, device: str, value: Any) -> None:
        payload = value.upper() if isinstance(value, str) else f"{value:g}"
        try:
            with self.store.transaction() as cur:
                self.outbox.put(cur, self.topics.gpio(device), payload, retain=True, coalesce=True)
        except StorageError as exc:
            log.error("could not queue the state of %s: %s", device, exc)

    def alive(self) -> bool:
        return all(t.is_alive() for t in self._threads)

    # ----------------------------------------------------------------- lifecycle

    def start(self, hardware_states: dict[str, Any]) -> None:
        for name, value in hardware_states.items():
            self.gpio_changed(name, value)
        for target, name in ((self._network_loop, "mqtt-net"), (self._publish_loop, "mqtt-out")):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)

    def pause_ingress(self) -> None:
        """Take no more commands: the broker keeps them for the next start (they are not
        acknowledged), instead of the agent accepting commands it will not run now."""
        self._ingress_paused = True

    def stop(self, timeout: float = 3.0) -> None:
        """Deliver what the outbox holds (the drained commands' replies, the outputs' safe
        states), say ``offline`` (retained) and leave, within about ``timeout`` seconds;
        what is not delivered by then waits in the outbox for the next start."""
        began = time.monotonic()
        deliver_by, offline_by, end = began + timeout / 2, began + timeout * 5 / 6, began + timeout
        client = self._client
        events = getattr(self, "event_publisher", None)
        try:
            target = int(self.store.query("select coalesce(max(seq), 0) from outbox")[0][0])
            events_target = events.log.last_seq() if events is not None else 0
        except StorageError as exc:  # say offline and leave all the same
            log.error("outbox: %s", exc)
            target = events_target = 0
        self.outbox.wake()
        while self.connected.is_set() and time.monotonic() < deliver_by and (
                self._delivered_upto < target or (events is not None and events.acked_upto < events_target)):
            time.sleep(0.01)
        if client is not None and self.connected.is_set():
            try:
                info = client.publish(self.topics.status, "offline", qos=1, retain=True)
                info.wait_for_publish(timeout=max(0.1, offline_by - time.monotonic()))
            except Exception as exc:
                log.debug("could not say offline: %s", exc)
        self._stop.set()
        self.outbox.wake()
        self._write_link_meta(False)
        if client is not None:
            try:
                client.disconnect()
            except Exception:
                pass
        for t in self._threads:
            t.join(timeout=max(0.1, end - time.monotonic()))
        if events is not None and not any(t.is_alive() for t in self._threads):
            try:
                events.save(now=time.monotonic(), force=True)  # the events acknowledged last
            except StorageError as exc:
                log.error("could not record the events published: %s", exc)

    # ----------------------------------------------------------------- connection

    def _make_client(self) -> Any:
        import paho.mqtt.client as mqtt

        from .mqttsock import BufferedClient

        proto = mqtt.MQTTv5 if self._protocol == 5 else mqtt.MQTTv311
        client_id = self.cfg.client_id or f"edge-agent-{self.settings.device_id}"
        kwargs: dict[str, Any] = {"callback_api_version": mqtt.CallbackAPIVersion.VERSION2, "client_id": client_id,
                                  "protocol": proto, "manual_ack": True}
        if proto == mqtt.MQTTv311:
            kwargs["clean_session"] = False
        client = BufferedClient(**kwargs)
        # No limit in paho (its bookkeeping of a limit walks every message on every ack): the
        # publisher keeps at most the broker's Receive Maximum unacknowledged (self._window).
        client.max_inflight_messages_set(0)
        client.max_queued_messages_set(0)
        client.will_set(self.topics.status, "offline", qos=1, retain=True)
        if self.cfg.username:
            from .logs import add_secret

            password = self.cfg.password()
            if password:
                add_secret(password)
            client.username_pw_set(self.cfg.username, password)
        if self.cfg.tls is not None:
            tls = self.cfg.tls
            client.tls_set(ca_certs=tls.ca_file, certfile=tls.cert_file, keyfile=tls.key_file,
                           cert_reqs=ssl.CERT_NONE if tls.insecure else ssl.CERT_REQUIRED)
            client.tls_insecure_set(tls.insecure)
        client.on_socket_open = self._on_socket_open
        # Only the network thread may write to the socket: otherwise paho writes from the
        # publishing thread too, and two threads sending at once can reorder packets.
        client.on_socket_register_write = lambda c, u, sock: None
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        return client

    def _connect(self, client: Any) -> None:
        if self._protocol == 5:
            from paho.mqtt.packettypes import PacketTypes
            from paho.mqtt.properties import Properties

            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = int(self.cfg.session_expiry)
            client.connect(self.cfg.host, self.cfg.port, keepalive=int(self.cfg.keepalive), clean_start=False,
                           properties=props)
        else:
            client.connect(self.cfg.host, self.cfg.port, keepalive=int(self.cfg.keepalive))

    def _network_loop(self) -> None:
        import paho.mqtt.client as mqtt

        while not self._stop.is_set():
            if self._client is None:
                self._client = self._make_client()
            client = self._client
            try:
                self._connect(client)
            except Exception as exc:  # any failure to connect (OSError, TLS, bad host) means: try again later
                self._note_down(f"cannot connect to {self.cfg.host}:{self.cfg.port}: {exc}")
                self._wait_backoff()
                continue
            self._ingress_broken = False
            while not self._stop.is_set():
                try:
                    rc = client.loop(timeout=self._loop_timeout)
                    client.flush()
                    self._store_batch(client)
                    if self._session_up and not self.connected.is_set():
                        # Only now, after the pass that handled CONNACK: paho has queued its
                        # resends of unacknowledged messages, so new ones cannot overtake them.
                        self.connected.set()
                        self.outbox.wake()
                except Exception:  # a bug in a callback must not end the link: log it, reconnect
                    log.exception("MQTT: unexpected error in the network loop; reconnecting")
                    try:
                        client.disconnect()
                    except Exception:
                        pass
                    break
                if rc != mqtt.MQTT_ERR_SUCCESS:
                    break
            self._session_up = False
            self.connected.clear()
            if not self._stop.is_set():
                self._wait_backoff()

    def _wait_backoff(self) -> None:
        # A connection that held for a while starts the backoff again; one the broker accepts
        # and drops at once (a session taken over, an ACL) keeps growing it.
        if self._connected_at is not None and time.monotonic() - self._connected_at >= STABLE_AFTER:
            self._failures = 0
        self._connected_at = None
        delay = reconnect_delay(self._failures, self.rng)
        self._failures += 1
        self._stop.wait(delay)

    def _note_down(self, why: str) -> None:
        if why != self._last_error:
            log.warning("MQTT: %s", why)
        self._last_error = why
        self._write_link_meta(False)

    def _write_link_meta(self, connected: bool) -> None:
        try:
            with self.store.transaction() as cur:
                self.store.set_meta(cur, "mqtt", json.dumps({"connected": connected, "since": time.time(),
                                                            "broker": f"{self.cfg.host}:{self.cfg.port}",
                                                            "last_error": self._last_error}))
        except StorageError as exc:
            log.error("could not record the MQTT link state: %s", exc)

    # ----------------------------------------------------------------- paho callbacks (network thread)

    def _on_socket_open(self, client: Any, userdata: Any, sock: Any) -> None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (OSError, AttributeError):
            pass  # TLS-wrapped or non-TCP sockets: nothing to tune

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if reason_code.is_failure:
            value = getattr(reason_code, "value", None)
            if self.cfg.protocol == "auto" and self._protocol == 5 and value in (1, 132):
                log.warning("MQTT: the broker refuses MQTT 5; falling back to 3.1.1")
                self._protocol = 4
                self._client = None
            self._note_down(f"the broker refused the connection: {reason_code}")
            client.disconnect()
            return
        self._connected_at = time.monotonic()
        self._last_error = None
        receive_max = getattr(properties, "ReceiveMaximum", None) if self._protocol == 5 else None
        # A few of the broker's slots stay free for the link's own `online` and `state`.
        self._window = max(1, min(WINDOW, receive_max or 65535) - 4) if self._protocol == 5 else WINDOW_V311
        subs = [(t, 1) for t in self.topics.subscriptions]
        if self.cfg.discovery:
            subs.append((self.topics.ha_status, 1))
        client.subscribe(subs)
        client.publish(self.topics.status, "online", qos=1, retain=True)
        self._session_up = True
        self._state_dirty.set()
        self._write_link_meta(True)
        log.info("MQTT: connected to %s:%s (MQTT %s, session %s)", self.cfg.host, self.cfg.port,
                 "5" if self._protocol == 5 else "3.1.1", "resumed" if flags.session_present else "new")
        # Also with discovery off: announce() then clears what an earlier config announced.
        announce = getattr(self.agent, "announce_discovery", None)
        if announce is not None:
            announce()

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        # paho may call this more than once for one outage.
        if self.connected.is_set() and not self._stop.is_set():
            self._note_down(f"disconnected: {reason_code}")
        self._session_up = False
        self.connected.clear()

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        # Collected here, stored after this pass of the network loop: one transaction (and one
        # lock round) for everything that arrived together, then the acks, in arrival order.
        if not self._ingress_broken and not self._ingress_paused:
            self._batch.append(msg)

    def _store_batch(self, client: Any) -> None:
        batch, self._batch = self._batch, []
        if not batch:
            return
        # Parsed and checked first, outside the database lock; then stored in one transaction.
        checked = []
        for msg in batch:
            try:
                checked.append(self._check(msg))
            except Exception:
                log.exception("MQTT: unexpected error checking a message on %s", msg.topic[:200])
                checked.append(None)
        if any(c is not None for c in checked):
            try:
                with self.store.transaction() as cur:
                    for msg, c in zip(batch, checked, strict=True):
                        if c is None:
                            continue
                        cur.execute("savepoint message")
                        try:
                            self.ingress.commit(cur, c)
                        except StorageError:
                            raise
                        except Exception:
                            log.exception("MQTT: unexpected error storing a message on %s", msg.topic[:200])
                            cur.execute("rollback to message")
                        cur.execute("release message")
            except StorageError as exc:
                log.error("MQTT: could not store %d command(s) (%s); they are not acknowledged and will come again",
                          len(batch), exc)
                self._ingress_broken = True
                client.disconnect()
                return
            self.store.flush_soon()
        for msg in batch:
            if msg.qos > 0:
                client.ack(msg.mid, msg.qos)

    def _check(self, msg: Any) -> Checked | None:
        route = self.topics.route(msg.topic)
        if route is not None and route[0] == "ha_status":
            if msg.payload.strip().lower() == b"online":
                announce = getattr(self.agent, "announce_discovery", None)
                if announce is not None:
                    announce()
            return None
        response_topic, correlation = None, None
        props = getattr(msg, "properties", None)
        if props is not None:
            response_topic = getattr(props, "ResponseTopic", None)
            correlation = getattr(props, "CorrelationData", None)
            if response_topic is not None and (any(c in response_topic for c in "#+") or not response_topic):
                response_topic = None
        return self.ingress.check(msg.topic, msg.payload, response_topic=response_topic, correlation=correlation,
                                  redelivered=bool(getattr(msg, "dup", False)))

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason_code: Any, properties: Any) -> None:
        # Called with paho's own lock held: only record the mid, the publisher does the rest.
        # Woken on the first ack of a run only: the publisher checks the deque under the
        # condition's lock before it sleeps, so an ack appended without a wake-up is seen.
        refused = str(reason_code) if getattr(reason_code, "is_failure", False) else None
        first = not self._acked
        self._acked.append((mid, refused))
        if first:
            with self.outbox.cond:
                self.outbox.generation += 1
                self.outbox.cond.notify_all()

    # ----------------------------------------------------------------- publisher thread

    def _publish_loop(self) -> None:
        inflight: dict[int, tuple[int, str]] = {}
        last_seq = 0
        last_state = 0.0
        events = self._event_publisher()  # task events go out from their own table, beside the outbox
        done: list[int] = []
        last_remove = 0.0
        while not self._stop.is_set():
            generation = self.outbox.generation
            while self._acked:
                mid, refused = self._acked.popleft()
                sent = inflight.pop(mid, None)
                if sent is not None:
                    done.append(sent[0])
                elif events is not None and events.acked(mid):
                    sent = (0, events.topic)
                if refused is not None:
                    # Final: the broker will not take it (an ACL, a bad topic); sending again would not help.
                    log.error("MQTT: the broker refused a message on %s: %s (check the broker's ACL for this device)",
                              (sent[1] if sent else "?")[:200], refused)
            self._delivered_upto = min(seq for seq, _ in inflight.values()) - 1 if inflight else last_seq
            try:
                # Acknowledged rows are deleted in batches (REMOVE_BATCH, REMOVE_EVERY): a command's
                # `accepted` and final replies then leave the WAL in one commit, not two.
                if done and (len(done) >= REMOVE_BATCH or time.monotonic() - last_remove >= REMOVE_EVERY):
                    self.outbox.remove(done)
                    done = []
                    last_remove = time.monotonic()
                if events is not None:
                    events.save(now=time.monotonic())
                since = time.monotonic() - last_state
                if (self._state_dirty.is_set() and since >= STATE_MIN_INTERVAL) or since > self.cfg.state_interval:
                    if self.connected.is_set():
                        self._state_dirty.clear()
                        last_state = time.monotonic()
                        self._publish_state()
                client = self._client
                window = self._window
                busy = len(inflight) + (events.inflight if events is not None else 0)
                # The events' slots stay theirs: a burst of replies filling the window would hold
                # them back until the outbox bound drops them.
                spare = events.IN_FLIGHT - events.inflight if events is not None and window > events.IN_FLIGHT else 0
                if client is not None and self.connected.is_set() and busy < window:
                    for m in self.outbox.pending(last_seq, max(0, window - busy - spare)):
                        info = client.publish(m.topic, m.payload, qos=m.qos, retain=m.retain,
                                              properties=self._props(m.props))
                        inflight[info.mid] = (m.seq, m.topic)
                        last_seq = m.seq
                    if events is not None:
                        events.publish(client, window - len(inflight) - events.inflight)

            except StorageError as exc:
                log.error("outbox: %s", exc)
                self._stop.wait(1.0)
            except Exception:
                log.exception("outbox: unexpected error")
                self._stop.wait(1.0)
            # While disconnected, paho keeps the unacknowledged messages and resends them itself.
            timeout = STATE_MIN_INTERVAL if self._state_dirty.is_set() and self.connected.is_set() else self.cfg.state_interval
            if done or (events is not None and events.dirty):
                timeout = min(timeout, REMOVE_EVERY)
            if events is not None and events.due is not None:
                timeout = min(timeout, max(0.0, events.due - time.monotonic()))
            with self.outbox.cond:
                # An ack that came in while this pass ran may not have woken anyone (see
                # _on_publish): look at the deque under the lock before sleeping.
                if generation == self.outbox.generation and not self._acked and not self._stop.is_set():
                    self.outbox.cond.wait(timeout=timeout)

    def _event_publisher(self) -> Any:
        log_ = getattr(self.agent, "events", None)
        if log_ is None:
            return None
        from .events import EventPublisher

        try:
            self.event_publisher = EventPublisher(log_, self.topics.events)
        except StorageError as exc:  # replies still go out; events wait in their table for the next start
            log.error("events: cannot read the publishing position: %s", exc)
            return None
        return self.event_publisher

    def _props(self, props: dict[str, Any] | None) -> Any:
        if not props or self._protocol != 5:
            return None
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        p = Properties(PacketTypes.PUBLISH)
        if "correlation" in props:
            p.CorrelationData = bytes.fromhex(props["correlation"])
        return p

    def _publish_state(self) -> None:
        doc = self.state_document()
        client = self._client
        if client is not None:
            client.publish(self.topics.state, json.dumps(doc, separators=(",", ":"), default=str), qos=1, retain=True)

    def state_document(self) -> dict[str, Any]:
        agent = self.agent
        depth, oldest = self.outbox.depth()
        doc: dict[str, Any] = {
            "device": self.settings.device_id,
            "version": __version__,
            "uptime_s": round(time.monotonic() - agent.started_monotonic, 1),
            "queue": agent.queue.depth() if agent.queue else 0,
            "outbox": depth,
            "outbox_oldest_s": round(oldest, 1) if oldest is not None else None,
            "clock_synchronized": agent.clock_trusted() if hasattr(agent, "clock_trusted") else None,
            "next_jobs": agent.scheduler.next_firings(5) if getattr(agent, "scheduler", None) else [],
            "next_sunset": agent.next_solar("sunset") if hasattr(agent, "next_solar") else None,
            "last_error": None,
            "groups": list(self.settings.groups),
            "failures_24h": int(self.store.query(
                "select count(*) from commands where state in ('failed', 'expired') and finished > ?",
                (time.time() - 86400,))[0][0]),
            "last_seq": agent.events.last_seq() if getattr(agent, "events", None) is not None else 0,
            "ts": round(time.time(), 3),
        }
        rows = self.store.query("select action, error_type, error_message, finished from commands "
                                "where state in ('failed', 'expired') order by finished desc limit 1")
        if rows:
            action, kind, message, finished = rows[0]
            doc["last_error"] = {"action": action, "type": kind, "message": message, "at": finished}
        return doc
