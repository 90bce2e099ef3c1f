"""The connection to the broker, made one way by every program: the paho client and the reconnect policy.

- :func:`make_client`: paho's client (callback API 2) on the buffered socket of
  :mod:`edge_agent.mqttsock`, MQTT 5 or 3.1.1, TLS, username and the password from its file
  (kept out of the logs), an optional last will, and TCP_NODELAY on the socket (with Nagle on,
  a round trip takes ~88 ms, not ~1 ms). Only the thread that runs the client's loop writes to
  the socket: a publish from another thread is queued and wakes that loop, and the owner
  calls ``client.flush()`` after each pass.
- :func:`connect`: the CONNECT, with a clean session or a persistent one.
- :class:`Backoff`: the one reconnect policy, capped exponential backoff with full jitter.
  After a broker restart every client is disconnected at the same instant; drawn this way their
  attempts spread over a window about as long as the outage so far, instead of arriving
  together. The daemon waits up to :data:`DEVICE_MAX_BACKOFF`, ``edge-agent fleet`` and
  ``edge-agent monitor`` up to :data:`OPERATOR_MAX_BACKOFF`.
"""

from __future__ import annotations

import random
import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:  # paho is imported when a client is made: `edge-agent --help` and the CLI stay fast
    import paho.mqtt.client as mqtt

    from edge_agent.config import MqttSettings
    from edge_agent.mqttsock import BufferedClient

__all__ = ["BACKOFF_BASE", "DEVICE_MAX_BACKOFF", "OPERATOR_MAX_BACKOFF", "STABLE_AFTER", "Backoff", "Will", "connect",
           "make_client", "reconnect_delay"]

BACKOFF_BASE = 1.0  # seconds: the ceiling of the first reconnect delay
DEVICE_MAX_BACKOFF = 60.0  # seconds: the daemon's ceiling never grows beyond this
OPERATOR_MAX_BACKOFF = 10.0  # seconds: the fleet client's and the monitor's (a person waits on them)
STABLE_AFTER = 10.0  # seconds a connection must last before the backoff starts again from the base


def reconnect_delay(failures: int, rng: random.Random, cap: float = DEVICE_MAX_BACKOFF,
                    base: float = BACKOFF_BASE) -> float:
    """Seconds to wait before reconnect attempt ``failures + 1`` (0 after the link was lost):
    full jitter, uniform in [0, min(cap, base x 2^failures)]."""
    ceiling = min(cap, base * 2.0 ** min(failures, 16))
    return rng.uniform(0.0, ceiling)


class Backoff:
    """One link's reconnect delays (:func:`reconnect_delay`). A connection that held for
    ``stable_after`` seconds starts them again from the base; one the broker accepts and drops
    at once (a session taken over, an ACL) keeps them growing."""

    def __init__(self, cap: float, *, base: float = BACKOFF_BASE, stable_after: float = STABLE_AFTER,
                 rng: random.Random | None = None, clock: Callable[[], float] = time.monotonic):
        self.cap = cap
        self.base = base
        self.stable_after = stable_after
        self.rng = rng or random.Random()
        self.clock = clock
        self.failures = 0  # attempts since the link last held
        self._connected_at: float | None = None

    def connected(self) -> None:
        """The broker accepted the connection (CONNACK)."""
        self._connected_at = self.clock()

    def delay(self) -> float:
        """Seconds to wait before the next attempt (after a failed one, or a lost connection)."""
        if self._connected_at is not None and self.clock() - self._connected_at >= self.stable_after:
            self.failures = 0
        self._connected_at = None
        delay = reconnect_delay(self.failures, self.rng, self.cap, self.base)
        self.failures += 1
        return delay

    def wait(self, stop: threading.Event) -> bool:
        """Wait :meth:`delay` seconds, or until ``stop`` is set (then True)."""
        return stop.wait(self.delay())


class Will(NamedTuple):
    """The last will: what the broker publishes when the connection is lost without a DISCONNECT."""

    topic: str
    payload: str
    qos: int = 1
    retain: bool = True


def _nodelay(client: Any, userdata: Any, sock: Any) -> None:
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError):
        pass  # TLS-wrapped or non-TCP sockets: nothing to tune


def make_client(cfg: MqttSettings, client_id: str, *, protocol: int = 5, persistent: bool = False,
                manual_ack: bool = False, will: Will | None = None,
                cls: type[BufferedClient] | None = None) -> BufferedClient:
    """A paho client for the broker of ``cfg`` (not connected: see :func:`connect`).

    ``protocol``: 5 or 4 (MQTT 3.1.1); ``persistent``: a 3.1.1 session the broker keeps (an MQTT 5
    session is made persistent by :func:`connect`); ``manual_ack``: messages are acknowledged by
    the owner (``client.ack``); ``cls``: a subclass of :class:`~edge_agent.mqttsock.BufferedClient`."""
    import paho.mqtt.client as mqtt

    from edge_agent.mqttsock import BufferedClient

    kwargs: dict[str, Any] = {"callback_api_version": mqtt.CallbackAPIVersion.VERSION2, "client_id": client_id,
                              "protocol": mqtt.MQTTv5 if protocol == 5 else mqtt.MQTTv311, "manual_ack": manual_ack}
    if protocol != 5:
        kwargs["clean_session"] = not persistent
    client = (cls or BufferedClient)(**kwargs)
    if will is not None:
        client.will_set(will.topic, will.payload, qos=will.qos, retain=will.retain)
    if cfg.username:
        from edge_agent.logs import add_secret

        password = cfg.password()
        if password:
            add_secret(password)
        client.username_pw_set(cfg.username, password)
    if cfg.tls is not None:
        tls = cfg.tls
        client.tls_set(ca_certs=tls.ca_file, certfile=tls.cert_file, keyfile=tls.key_file,
                       cert_reqs=ssl.CERT_NONE if tls.insecure else ssl.CERT_REQUIRED)
        client.tls_insecure_set(tls.insecure)
    client.on_socket_open = _nodelay
    # Only the loop's thread may write to the socket: otherwise paho writes from the publishing
    # thread too, and two threads sending at once can reorder packets (the buffered socket has no lock).
    client.on_socket_register_write = lambda c, u, sock: None
    return client


def connect(client: mqtt.Client, cfg: MqttSettings, *, keepalive: int, protocol: int = 5,
            session_expiry: float | None = None) -> None:
    """Open the connection and send CONNECT (the CONNACK comes through the client's loop).

    MQTT 5: a clean start, or with ``session_expiry`` the session the broker kept for us, kept
    that many seconds after we leave. Raises what the socket or TLS raises."""
    if protocol != 5:
        client.connect(cfg.host, cfg.port, keepalive=keepalive)
        return
    if session_expiry is None:
        client.connect(cfg.host, cfg.port, keepalive=keepalive, clean_start=True)
        return
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = int(session_expiry)
    client.connect(cfg.host, cfg.port, keepalive=keepalive, clean_start=False, properties=props)
