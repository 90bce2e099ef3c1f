"""MQTT 5 with a fallback to 3.1.1, against a broker from before MQTT 5.

mosquitto 2 speaks both versions, so the old broker is a TCP front for the real one that
does what mosquitto 1.4 and many embedded brokers do with a protocol level 5 CONNECT: it
answers CONNACK "unacceptable protocol version" (in the 3.1.1 form) and closes. A 3.1.1
CONNECT is passed through to the real mosquitto, byte for byte, in both directions.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import uuid
from typing import Any

import pytest

from bench.harness import wait_until
from tests.configs import LAMP, agent_config


def _read(conn: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


def _read_packet(conn: socket.socket) -> bytes:
    """One whole MQTT packet: fixed header, remaining length (varint), body."""
    head = _read(conn, 1)
    length, shift = 0, 0
    while True:
        b = _read(conn, 1)
        head += b
        length |= (b[0] & 0x7F) << shift
        shift += 7
        if not b[0] & 0x80:
            break
    return head + _read(conn, length)


class OldBroker:
    """Refuses MQTT 5 as an old broker does; forwards MQTT 3.1.1 to ``upstream``."""

    def __init__(self, upstream: int):
        self.upstream = upstream
        self.levels: list[int] = []  # the protocol level of every CONNECT seen
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self._conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            self._conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            connect = _read_packet(conn)
        except (ConnectionError, OSError):
            conn.close()
            return
        assert connect[0] >> 4 == 1, "the first packet must be CONNECT"
        body = connect[connect.index(b"MQTT") + 4:]  # after the protocol name comes its level
        self.levels.append(body[0])
        if body[0] != 4:
            conn.sendall(b"\x20\x02\x00\x01")  # CONNACK, return code 1: unacceptable protocol version
            conn.close()
            return
        up = socket.create_connection(("127.0.0.1", self.upstream))
        self._conns.append(up)
        for s in (conn, up):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        up.sendall(connect)
        threading.Thread(target=self._pipe, args=(up, conn), daemon=True).start()
        self._pipe(conn, up)

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.server.close()
        for c in self._conns:
            with contextlib.suppress(OSError):
                c.close()


@pytest.fixture
def old_broker(broker: Any):
    b = OldBroker(broker.port)
    yield b
    b.close()


def _status(listener: Any, base: str) -> str | None:
    with listener.cond:
        values = [m.payload.decode() for m in listener.messages if m.topic == f"{base}/status"]
    return values[-1] if values else None


@pytest.mark.slow
def test_an_old_broker_gets_mqtt_311_with_a_session_that_keeps_commands(broker, old_broker, daemon_factory,
                                                                        listener_factory, tmp_path):
    """The agent offers MQTT 5, is refused, falls back to 3.1.1 and then works as with MQTT 5:
    commands get replies, `online`/`offline` are said, and commands sent while it is stopped
    wait in its persistent session (clean_session false) and run when it is back."""
    prefix = f"v311{uuid.uuid4().hex[:6]}"
    base = f"{prefix}/old"
    listener = listener_factory(broker.port, [f"{base}/#"], protocol=4)
    d = daemon_factory(agent_config(tmp_path, device="old", mqtt_port=old_broker.port, prefix=prefix, devices=LAMP))
    d.start()
    listener.wait_for(lambda m: m.topic == f"{base}/status" and m.payload == b"online", timeout=20)
    assert 5 in old_broker.levels and old_broker.levels[-1] == 4, old_broker.levels
    log = d.log.read_text()
    assert "falling back to 3.1.1" in log and "MQTT 3.1.1" in log, log[-2000:]

    listener.publish(f"{base}/cmd/gpio.set", {"id": "on-1", "args": {"device": "lamp", "value": "on"}})
    listener.wait_for(lambda m: m.topic == f"{base}/reply" and b'"on-1"' in m.payload and b"succeeded" in m.payload)
    listener.wait_for(lambda m: m.topic == f"{base}/gpio/lamp" and m.payload == b"ON")

    assert d.terminate() == 0
    wait_until(lambda: _status(listener, base) == "offline", 10, message="status not offline after the stop")
    listener.publish(f"{base}/cmd/agent.ping", {"id": "while-down"})  # kept by the broker for the agent's session
    d.start()
    listener.wait_for(lambda m: m.topic == f"{base}/reply" and b'"while-down"' in m.payload
                      and b"succeeded" in m.payload, timeout=20)
    assert listener.replies("on-1")[0]["status"] == "accepted"
    assert d.terminate() == 0
