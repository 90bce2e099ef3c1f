"""The MQTT link: one paho client, its connection loop and the outbox publisher.

- Persistent session (clean_start off, session expiry): the broker keeps commands
  sent while the agent restarts, and redelivers the unacknowledged ones.
- Manual acks: a command is PUBACKed only after it is committed to the database,
  in arrival order (paho calls ``on_message`` in order on the network thread).
- TCP_NODELAY on the socket: with Nagle on, a round trip takes ~88 ms, not ~1 ms.
- Subscriptions are made in ``on_connect``: paho reconnects but does not resubscribe.
- Our own reconnect loop: capped exponential backoff with full jitter (:class:`edge_agent.broker.Backoff`:
  up to 1 s, 2 s, 4 s ... 60 s), so a fleet does not come back in lockstep after a broker restart.
- Last will ``offline`` (retained), ``offline`` on a clean stop. On connect, ``online`` goes
  out only after the current states (the GPIO states waiting in the outbox, then ``state``):
  Home Assistant marks the entities available with what the broker holds at that moment,
  so after a crash it must not be the pre-crash state.
- ``state`` is republished when the queue depth, the outbox depth or the last failure
  change (looked at 0.25 s after a change, at most once a second; nothing when idle), and
  every ``state_interval``.
- MQTT 5 first; a broker that refuses it gets MQTT 3.1.1 ("auto").
- Retained schedule documents (``P/all/schedule``, ``P/group/<g>/schedule``, ``P/D/schedule``)
  are handed to ``on_schedule`` (source, payload), the daemon's: it checks and applies them
  on its main loop. They come again at every connect (subscribing sends what is retained).
- Everything published goes through :class:`Outbox` (SQLite), except the link's own
  ``online`` marker and the periodic refresh of ``state`` (both are remade on connect).
"""

from __future__ import annotations

import collections
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from edge_agent import __version__
from edge_agent.broker import DEVICE_MAX_BACKOFF, Backoff, Will, connect, make_client
from edge_agent.config import Settings
from edge_agent.contract import Topics
from edge_agent.device.actions.registry import Registry
from edge_agent.device.commands import Command, NewCommand
from edge_agent.device.events import EventLog, EventPublisher
from edge_agent.device.ingress import Checked, Ingress
from edge_agent.device.journal import Journal
from edge_agent.device.outbox import LAZY_WAIT, Outbox
from edge_agent.device.store import Store
from edge_agent.errors import StorageError

__all__ = ["Daemon", "Intake", "MqttLink"]

log = logging.getLogger("edge_agent.mqtt")

WINDOW = 500  # messages handed to paho and not yet acknowledged, at most (the broker may allow fewer)
WINDOW_V311 = 100  # MQTT 3.1.1 brokers do not say how many they take; mosquitto's default is 20 (QoS 1 is acked at once)
STATE_MIN_INTERVAL = 1.0  # seconds between two `state` messages caused by changes
STATE_SETTLE = 0.25  # seconds after a change before `state` is looked at (a toggle's outbox row is gone by then)
# Acknowledged outbox rows are deleted together, without an fsync of their own, once REMOVE_BATCH
# of them are waiting or REMOVE_EVERY seconds after the last deletion: what a crash can publish
# again is the messages in flight (the window) plus fewer than REMOVE_BATCH acknowledged ones.
REMOVE_EVERY = 0.05
REMOVE_BATCH = 64
HOLD_LOOK = 0.25  # seconds between looks at the store while commands wait for disk space


class Daemon(Protocol):
    """What the link asks of the daemon that runs it: for ``state``, and to announce discovery
    (with the config of the moment: parts of it change on reload)."""

    @property
    def started_monotonic(self) -> float: ...

    def clock_trusted(self) -> bool: ...

    def next_jobs(self, count: int) -> list[dict[str, str]]: ...

    def next_solar(self, event: str) -> str | None: ...

    def announce_discovery(self) -> None: ...

    def schedule_state(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class Intake:
    """Where the commands the link takes go: checked against ``registry``, then queued with
    ``submit`` (the daemon's TaskQueue) in the transaction that stores the message."""

    registry: Registry
    submit: Callable[[NewCommand, sqlite3.Cursor], tuple[Command, bool]]


class MqttLink:
    """The daemon's MQTT link. Its replies (:meth:`accepted`, :meth:`finished`) are written from
    construction on; commands are taken from :meth:`start` on, into the :class:`Intake` it is
    given then (the queue, which reports to the link, exists only after it)."""

    def __init__(self, settings: Settings, store: Store, outbox: Outbox, journal: Journal, daemon: Daemon, *,
                 events: EventLog | None = None, on_schedule: Callable[[str, bytes], None] | None = None):
        assert settings.mqtt is not None, "the link needs [mqtt]"
        self.settings = settings
        self.cfg = settings.mqtt
        self.store = store
        self.outbox = outbox
        self.journal = journal
        self.daemon = daemon
        self.on_schedule = on_schedule  # (source, payload) of a retained schedule document, on the network thread
        self.topics = Topics(self.cfg.topic_prefix, settings.device_id, settings.groups, self.cfg.ha_status_topic)
        self._intake: Intake | None = None  # from start() on
        self.ingress = Ingress(store, outbox, self.topics, max_payload=self.cfg.max_payload,
                               registry=self._registry, submit=self._submit)
        self.events = events
        self.event_publisher = self._event_publisher(events)  # task events go out from their own table
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
        self._held = False  # the disk is full: _batch waits, unacknowledged, until the store has space
        # paho's loop wakes for socket traffic and for our publishes; the timeout only has to
        # keep the keepalive pings on time (fewer idle wake-ups than paho's 1 s).
        self._loop_timeout = max(1.0, min(10.0, self.cfg.keepalive / 3))
        self._backoff = Backoff(DEVICE_MAX_BACKOFF)  # the reconnect delays (README: up to 60 s, full jitter)
        self._window = WINDOW
        self._window_full = False  # the publisher's last pass left rows for want of room in the window
        self._last_error: str | None = None
        # The queue or the last failure may have changed: a flag the publisher looks at (nobody waits on it).
        self._state_dirty = False
        self._online_due = False  # connected: `online` goes out after the current states (publisher)
        self._offline_said = False
        self._status_lock = threading.Lock()  # `online` (publisher) never after `offline` (stop)
        store.on_full.append(self._full_changed)
        self._unqueued_states: dict[str, Any] = {}  # GPIO states a full disk kept out of the outbox
        store.on_full.append(self._queue_held_states)

    # ----------------------------------------------------------------- hooks for the agent

    def accepted(self, cur: sqlite3.Cursor, cmd: Command) -> None:
        self.ingress.accepted(cur, cmd)  # (a lazy message: it leaves with the final reply of a quick command)
        self._state_dirty = True

    def finished(self, cur: sqlite3.Cursor, cmd: Command) -> None:
        self.ingress.finished(cur, cmd)
        self._state_dirty = True
        self.store.after_commit(self.outbox.wake)

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> None:
        """Queue a message in the outbox (the ``mqtt.publish`` action)."""
        with self.store.transaction() as cur:
            self.outbox.put(cur, topic, payload, qos=qos, retain=retain)

    def gpio_changed(self, device: str, value: Any) -> None:
        payload = value.upper() if isinstance(value, str) else f"{value:g}"
        try:
            with self.store.transaction() as cur:
                self.outbox.put(cur, self.topics.gpio(device), payload, retain=True, coalesce=True, lazy=True)
        except StorageError as exc:
            # Kept and queued when the disk has space again (Home Assistant would show the old state).
            self._unqueued_states[device] = value
            log.error("could not queue the state of %s: %s", device, exc)

    def state_changed(self) -> None:
        """Something ``state`` says may have changed (the schedules applied): looked at soon."""
        self._state_dirty = True
        self.outbox.wake()

    def _full_changed(self, full: bool) -> None:
        """Told by the store when the disk becomes full or writable: the state to publish may have changed."""
        self._state_dirty = True
        self.outbox.wake()

    def _queue_held_states(self, full: bool) -> None:
        """Told by the store when a full disk has space again: queue the states that could not be."""
        if not full:
            held, self._unqueued_states = self._unqueued_states, {}
            for device, value in held.items():
                self.gpio_changed(device, value)

    def _registry(self) -> Registry:
        assert self._intake is not None, "commands are taken only once the link is started"
        return self._intake.registry

    def _submit(self, new: NewCommand, cur: sqlite3.Cursor) -> tuple[Command, bool]:
        assert self._intake is not None, "commands are taken only once the link is started"
        return self._intake.submit(new, cur)

    def alive(self) -> bool:
        return all(t.is_alive() for t in self._threads)

    # ----------------------------------------------------------------- lifecycle

    def start(self, intake: Intake, hardware_states: dict[str, Any]) -> None:
        """Queue the outputs' states, then connect and take commands into ``intake``."""
        self._intake = intake
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
        events = self.event_publisher
        try:
            target = self.outbox.last_seq()
            events_target = events.log.last_seq() if events is not None else 0
        except StorageError as exc:  # say offline and leave all the same
            log.error("outbox: %s", exc)
            target = events_target = 0
        self.outbox.wake()
        while self.connected.is_set() and time.monotonic() < deliver_by and (
                self._delivered_upto < target or (events is not None and events.acked_upto < events_target)):
            time.sleep(0.01)
        with self._status_lock:
            self._offline_said = True
            info = None
            if client is not None and self.connected.is_set():
                try:
                    info = client.publish(self.topics.status, "offline", qos=1, retain=True)
                except Exception as exc:
                    log.debug("could not say offline: %s", exc)
        try:
            if info is not None:
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
        client = make_client(self.cfg, self.cfg.client_id or f"edge-agent-{self.settings.device_id}",
                             protocol=self._protocol, persistent=True, manual_ack=True,
                             will=Will(self.topics.status, "offline"))
        # No limit in paho (its bookkeeping of a limit walks every message on every ack): the
        # publisher keeps at most the broker's Receive Maximum unacknowledged (self._window).
        client.max_inflight_messages_set(0)
        client.max_queued_messages_set(0)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        return client

    def _connect(self, client: Any) -> None:
        connect(client, self.cfg, keepalive=int(self.cfg.keepalive), protocol=self._protocol,
                session_expiry=self.cfg.session_expiry)

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
            self._batch = []  # the broker sends again what was not acknowledged
            while not self._stop.is_set():
                try:
                    rc = client.loop(timeout=HOLD_LOOK if self._held else self._loop_timeout)
                    if client.want_write():
                        # What the publisher queued while select() waited: paho's loop writes it
                        # only on its next pass (the socket was not in select's write set).
                        client.loop_write()
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
        self._backoff.wait(self._stop)

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
        self._backoff.connected()
        self._last_error = None
        receive_max = getattr(properties, "ReceiveMaximum", None) if self._protocol == 5 else None
        # A few of the broker's slots stay free for the link's own `online` and `state`.
        self._window = max(1, min(WINDOW, receive_max or 65535) - 4) if self._protocol == 5 else WINDOW_V311
        subs = [(t, 1) for t in self.topics.subscriptions]
        if self.cfg.discovery:
            subs.append((self.topics.ha_status, 1))
        client.subscribe(subs)
        self._online_due = True  # the publisher says it, after the current states
        self._session_up = True
        self._write_link_meta(True)
        log.info("MQTT: connected to %s:%s (MQTT %s, session %s)", self.cfg.host, self.cfg.port,
                 "5" if self._protocol == 5 else "3.1.1", "resumed" if flags.session_present else "new")
        # Also with discovery off: announce() then clears what an earlier config announced.
        self.daemon.announce_discovery()

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
            if self._held and msg.qos == 0:
                return  # a full disk: QoS 0 has no redelivery to wait for and no in-flight bound
            self._batch.append(msg)

    def _store_batch(self, client: Any) -> None:
        if self._held and self.store.full:
            return  # what arrives waits unacknowledged; the broker sends no more than its in-flight limit
        batch, self._batch = self._batch, []
        if not batch:
            self._held = False
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
                if self.store.full:  # kept, and stored as soon as the store has space again
                    if not self._held:
                        log.warning("MQTT: the disk is full: taking no commands until there is space (%d wait "
                                    "unacknowledged, the broker keeps the rest)", len(batch))
                    self._held = True
                    self._batch = batch + self._batch
                    return
                log.error("MQTT: could not store %d command(s) (%s); they are not acknowledged and will come again",
                          len(batch), exc)
                self._ingress_broken = True
                client.disconnect()
                return
            self.store.flush_soon()
        if self._held:
            self._held = False
            log.warning("MQTT: taking commands again (%d stored)", len(batch))
        for msg in batch:
            if msg.qos > 0:
                client.ack(msg.mid, msg.qos)

    def _check(self, msg: Any) -> Checked | None:
        route = self.topics.route(msg.topic)
        if route is not None and route[0] == "ha_status":
            if msg.payload.strip().lower() == b"online":
                self.daemon.announce_discovery()
            return None
        if route is not None and route[0] == "schedule":
            if self.on_schedule is not None:
                self.on_schedule(route[1], bytes(msg.payload))
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
        # Called with paho's own lock held: only record the mid, the publisher does the rest,
        # lazily (an ack is settled within LAZY_WAIT, or by a pass that comes sooner). Woken on
        # the first ack of a run only: the publisher looks at the deque under the condition's
        # lock before it sleeps, so an ack appended without a wake-up is seen.
        refused = str(reason_code) if getattr(reason_code, "is_failure", False) else None
        first = not self._acked
        self._acked.append((mid, refused))
        if first:
            if self._window_full:
                self.outbox.wake()  # rows wait for room in the broker's window: refill it now
            else:
                self.outbox.wake_lazy()

    # ----------------------------------------------------------------- publisher thread

    def _publish_loop(self) -> None:
        inflight: dict[int, tuple[int, str]] = {}
        last_seq = 0
        early: set[int] = set()  # outbox rows sent ahead of their turn: the GPIO states before `online`
        last_state = 0.0
        shown: Any = None  # what the last `state` said of the queue, the outbox and the failures
        changed_at: float | None = None  # when those may have changed, not looked at since
        events = self.event_publisher  # task events go out from their own table, beside the outbox
        done: list[int] = []
        last_remove = 0.0
        while not self._stop.is_set():
            with self.outbox.cond:
                generation = self.outbox.generation
                self.outbox.due = None  # this pass takes what the lazy wakes were for
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
            # Rows sent early (GPIO states before `online`) may stand above rows not sent yet: last_seq caps it.
            self._delivered_upto = min(last_seq, min(seq for seq, _ in inflight.values()) - 1) if inflight else last_seq
            if self._state_dirty:
                self._state_dirty = False
                changed_at = changed_at or time.monotonic()
            try:
                # Acknowledged rows are deleted in batches (REMOVE_BATCH, REMOVE_EVERY): a command's
                # `accepted` and final replies then leave the WAL in one commit, not two.
                leftover = self.outbox.unremoved and not self.store.full  # delivered while the disk was full
                if (done or leftover) and (len(done) >= REMOVE_BATCH or time.monotonic() - last_remove >= REMOVE_EVERY):
                    self.outbox.remove(done)
                    done = []
                    last_remove = time.monotonic()
                    changed_at = changed_at or last_remove
                if events is not None and not self.store.full:  # nothing can be written meanwhile
                    events.save(now=time.monotonic())
                client = self._client
                window = self._window
                busy = len(inflight) + (events.inflight if events is not None else 0)
                up = client is not None and self.connected.is_set()
                if up and self._online_due and self._states_first(client, inflight, early, last_seq, window - busy):
                    last_state, changed_at = time.monotonic(), None
                    shown = self._publish_state()
                    with self._status_lock:
                        if self._online_due and not self._offline_said:
                            client.publish(self.topics.status, "online", qos=1, retain=True)
                        self._online_due = False
                now = time.monotonic()
                if up and not self._online_due:
                    if now - last_state >= self.cfg.state_interval:
                        last_state, changed_at = now, None
                        shown = self._publish_state()
                    elif changed_at is not None and now >= max(last_state + STATE_MIN_INTERVAL, changed_at + STATE_SETTLE):
                        changed_at = None
                        if self._state_key() != shown:
                            last_state = now
                            shown = self._publish_state()
                busy = len(inflight) + (events.inflight if events is not None else 0)
                # The events' slots stay theirs: a burst of replies filling the window would hold
                # them back until the outbox bound drops them.
                spare = events.IN_FLIGHT - events.inflight if events is not None and window > events.IN_FLIGHT else 0
                room = max(0, window - busy - spare)
                self._window_full = up and busy >= window
                if up and busy < window:
                    # (one wake-up of the network thread for the whole pass, not one per message)
                    with client.publishing():
                        rows = self.outbox.pending(last_seq, room)
                        self._window_full = len(rows) >= room
                        for m in rows:
                            last_seq = m.seq
                            if m.seq in early:
                                early.discard(m.seq)
                                continue
                            info = client.publish(m.topic, m.payload, qos=m.qos, retain=m.retain,
                                                  properties=self._props(m.props))
                            inflight[info.mid] = (m.seq, m.topic)
                            changed_at = changed_at or now
                        if early and len(rows) < room:
                            # Every row left was returned: the early ones not among them are delivered.
                            last_seq = max(last_seq, *early)
                            early.clear()
                        if events is not None:
                            events.publish(client, window - len(inflight) - events.inflight)

            except StorageError as exc:
                log.error("outbox: %s", exc)
                self._stop.wait(1.0)
            except Exception:
                log.exception("outbox: unexpected error")
                self._stop.wait(1.0)
            # While disconnected, paho keeps the unacknowledged messages and resends them itself.
            timeout = self.cfg.state_interval
            if self.connected.is_set():
                timeout = max(0.05, last_state + self.cfg.state_interval - time.monotonic())
            if changed_at is not None and self.connected.is_set():
                check = max(last_state + STATE_MIN_INTERVAL, changed_at + STATE_SETTLE)
                timeout = min(timeout, max(0.0, check - time.monotonic()))
            if done or (events is not None and events.dirty and not self.store.full):
                timeout = min(timeout, REMOVE_EVERY)
            if events is not None and events.due is not None:
                timeout = min(timeout, max(0.0, events.due - time.monotonic()))
            until = time.monotonic() + timeout
            with self.outbox.cond:
                while generation == self.outbox.generation and not self._stop.is_set():
                    # An ack that came in while this pass ran may not have woken anyone (see
                    # _on_publish): look at the deque under the lock before sleeping.
                    if self._acked and self.outbox.due is None:
                        self.outbox.due = time.monotonic() + LAZY_WAIT
                    left = until - time.monotonic()
                    if self.outbox.due is not None:
                        left = min(left, self.outbox.due - time.monotonic())
                    if left <= 0:
                        break
                    self.outbox.cond.wait(timeout=left)  # (a lazy wake only moves `due` closer)

    def _states_first(self, client: Any, inflight: dict[int, tuple[int, str]], early: set[int], last_seq: int,
                      room: int) -> bool:
        """Send the GPIO states waiting in the outbox ahead of their turn (the rows are skipped
        when their turn comes); True once all of them are sent, within ``room`` unacknowledged."""
        topics = [self.topics.gpio(name) for name in self.settings.devices]
        if not topics:
            return True
        rows = [m for m in self.outbox.pending_on(topics, last_seq) if m.seq not in early]
        for m in rows[:max(0, room)]:
            info = client.publish(m.topic, m.payload, qos=m.qos, retain=m.retain)
            inflight[info.mid] = (m.seq, m.topic)
            early.add(m.seq)
        return len(rows) <= max(0, room)

    def _event_publisher(self, events: EventLog | None) -> EventPublisher | None:
        if events is None:
            return None
        try:
            return EventPublisher(events, self.topics.events)
        except StorageError as exc:  # replies still go out; events wait in their table for the next start
            log.error("events: cannot read the publishing position: %s", exc)
            return None

    def _props(self, props: dict[str, Any] | None) -> Any:
        if not props or self._protocol != 5:
            return None
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        p = Properties(PacketTypes.PUBLISH)
        if "correlation" in props:
            p.CorrelationData = bytes.fromhex(props["correlation"])
        return p

    def _publish_state(self) -> Any:
        """Publish ``state``; returns its :meth:`_state_key`."""
        changing = self._changing()
        doc = self.state_document(changing)
        client = self._client
        if client is not None:
            client.publish(self.topics.state, json.dumps(doc, separators=(",", ":"), default=str), qos=1, retain=True)
        return _key_of(changing)

    def _state_key(self) -> Any:
        """What a change republishes ``state`` for: queue depth, outbox depth, failures, the schedules
        applied, the jobs paused (``next_jobs`` leaves them out; not its instants: a job firing every
        second would republish ``state`` every second)."""
        return _key_of(self._changing())

    def _changing(self) -> dict[str, Any]:
        depth, oldest = self.outbox.depth()
        doc: dict[str, Any] = {
            "queue": self.journal.depth(),
            "outbox": depth,
            "outbox_oldest_s": round(oldest, 1) if oldest is not None else None,
            "last_error": None,
            "disk_full": self.store.full,
            "failures_24h": self.journal.failures_since(time.time() - 86400),
            "schedules": self.daemon.schedule_state(),
            "paused_jobs": self._paused_jobs(),  # (in the key only: a pause changes next_jobs)
        }
        for failed in self.journal.recent_failures(1):
            doc["last_error"] = {"action": failed.action, "type": failed.error_type, "message": failed.error_message,
                                 "at": failed.finished}
        return doc

    def _paused_jobs(self) -> list[str]:
        from edge_agent.device.scheduler import Firings

        return sorted(Firings(self.store).paused())

    def state_document(self, changing: dict[str, Any] | None = None) -> dict[str, Any]:
        daemon = self.daemon
        changing = changing if changing is not None else self._changing()
        return {
            "device": self.settings.device_id,
            "version": __version__,
            "uptime_s": round(time.monotonic() - daemon.started_monotonic, 1),
            "queue": changing["queue"],
            "outbox": changing["outbox"],
            "outbox_oldest_s": changing["outbox_oldest_s"],
            "clock_synchronized": daemon.clock_trusted(),
            "next_jobs": daemon.next_jobs(5),
            "next_sunset": daemon.next_solar("sunset"),
            "last_error": changing["last_error"],
            "groups": list(self.settings.groups),
            "failures_24h": changing["failures_24h"],
            "disk_full": changing["disk_full"],
            "last_seq": self.events.last_seq() if self.events is not None else 0,
            "schedules": changing["schedules"],
            "ts": round(time.time(), 3),
        }


def _key_of(doc: dict[str, Any]) -> Any:
    return (doc["queue"], doc["outbox"], doc["failures_24h"], json.dumps(doc["last_error"], sort_keys=True, default=str),
            doc["disk_full"], json.dumps(doc["schedules"], sort_keys=True), tuple(doc.get("paused_jobs") or ()))
