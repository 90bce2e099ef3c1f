"""A paho client whose socket reads and writes in bulk: fewer system calls per packet.

paho reads each packet in two or three ``recv()`` calls (type byte, length, body)
and writes each packet with its own ``send()``. Under load those calls were a
quarter of the network thread's time, and that thread carries every command and
reply. :class:`BufferedSocket` reads what the kernel holds in one call and serves
paho's small reads from it, and gathers paho's writes until the link calls
:meth:`BufferedSocket.flush` after each pass of the loop (or 64 KiB piled up).

Only the network thread touches the socket (:func:`edge_agent.broker.make_client` sees to
it), so the buffers need no lock. paho sees a normal socket: ``pending()`` tells its loop
that buffered bytes wait (as for TLS), and ``want_write()`` stays true while ours hold
unsent bytes, so a full kernel buffer is waited for, not forgotten.

It also decodes the two packets that come by the thousand in a fast path of its own: a
PUBACK whose reason is below 0x80 ("success", or "no matching subscribers" for a reply
nobody listens to) without properties, and a PUBLISH at QoS 0 or 1 without MQTT 5
properties. paho builds a ``Properties`` object (a table of 27 names) and a reason code
for each of them; with a command's two replies and its own PUBLISH that was a fifth of the
daemon's CPU time per command. Here such a PUBACK reaches ``on_publish`` with a reason code
made once per client and value, and one empty ``Properties`` made once per client (read
them, do not change them); such a PUBLISH reaches ``on_message`` with one empty
``Properties`` likewise. Anything else (a failure reason, 0x80 and above; properties;
PUBCOMP; QoS 2; a malformed packet) goes to paho's own code, as before. Unlike paho, these
two paths do not write a debug line to paho's logger (the agent does not enable it).

This module is the one place that relies on paho's private parts: ``Client._create_socket()``
(made on every connect), ``Client._sock``, ``Client._packet_queue()``,
``Client._sockpairW`` (its wake-up socket), and for the fast paths ``Client._in_packet``,
``Client._protocol``, ``Client._manual_ack``, ``Client._out_message_mutex``,
``Client._out_messages``, ``_handle_publish()``, ``_handle_pubackcomp()``,
``_do_on_publish()``, ``_handle_on_message()`` and ``_send_puback()``.
``tests/test_mqttsock_hooks.py`` fails when a paho release changes them (and checks the fast
paths against paho's own decoding); ``pyproject.toml`` holds paho below its next major version.
"""

from __future__ import annotations

import contextlib
import ssl
import threading
from collections.abc import Iterator
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

__all__ = ["BufferedClient", "BufferedSocket", "UnwokenClient"]

READ_SIZE = 65536
WRITE_SIZE = 65536
_LATER = (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError)


class BufferedSocket:
    def __init__(self, sock: Any):
        self._sock = sock
        self._rbuf = b""
        self._rpos = 0
        self._wbuf = bytearray()
        self._error: OSError | None = None

    def recv(self, n: int) -> bytes:
        if self._rpos >= len(self._rbuf):
            if self._error is not None:
                raise self._error  # after what was already read (a last PUBACK, a reason to close)
            data = self._sock.recv(READ_SIZE)  # BlockingIOError / SSLWantRead* go to paho as they are
            if len(data) <= n:
                return data  # b"" at EOF
            self._rbuf, self._rpos = data, 0
        chunk = self._rbuf[self._rpos:self._rpos + n]
        self._rpos += len(chunk)
        return chunk

    def pending(self) -> int:
        inner = getattr(self._sock, "pending", None)
        return len(self._rbuf) - self._rpos + (inner() if inner is not None else 0)

    def send(self, data: bytes | bytearray | memoryview) -> int:
        if self._error is not None:
            raise self._error
        self._wbuf += data
        if len(self._wbuf) >= WRITE_SIZE:
            self.flush()
        return len(data)

    def flush(self) -> None:
        """Send what paho wrote; what the kernel cannot take now stays for the next pass.
        A broken connection is reported to paho by its next read or write."""
        while self._wbuf and self._error is None:
            try:
                sent = self._sock.send(self._wbuf)
            except _LATER:
                return
            except OSError as exc:
                self._error = exc
                return
            del self._wbuf[:sent]

    def close(self) -> None:
        # paho closes right after writing DISCONNECT: that (and any acks before it) goes out
        # first, so a clean stop is not taken for a lost connection (no last will).
        try:
            self.flush()
        finally:
            self._sock.close()

    @property
    def unsent(self) -> int:
        return len(self._wbuf)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class BufferedClient(mqtt.Client):
    """paho's client on a :class:`BufferedSocket`; the owner calls :meth:`flush` after each
    ``loop()``. Success PUBACKs and plain PUBLISHes are decoded in a fast path (see the module)."""

    def __init__(self, *args: Any, **kwargs: Any):
        self._quiet = threading.local()  # (before paho's __init__: it sets _sockpairW)
        self._loop_ident: int | None = None  # the thread that runs loop()
        super().__init__(*args, **kwargs)
        self._puback_ok = ReasonCode(PacketTypes.PUBACK)  # "Success": shared by every success PUBACK
        self._puback_reasons: dict[int, ReasonCode] = {0: self._puback_ok}  # and the other non-failures, made once
        self._puback_props = Properties(PacketTypes.PUBACK)  # empty: shared, read-only
        self._publish_props = Properties(PacketTypes.PUBLISH)  # empty: shared, read-only

    # paho writes a wake-up byte to its socket pair for every packet queued, so that a loop
    # waiting in select() writes it. A packet queued by the loop's own thread (the link's
    # acks) needs none: the next loop() finds it waiting (want_write) and writes it; the byte
    # only cost a system call and one more pass of the loop. Other threads' packets (the
    # publisher's) still wake it: the socket pair is hidden from the loop's thread alone.

    @property
    def _sockpairW(self) -> Any:
        return None if getattr(self._quiet, "on", False) else self.__dict__.get("_sockpair_w")

    @_sockpairW.setter
    def _sockpairW(self, value: Any) -> None:
        self.__dict__["_sockpair_w"] = value

    def loop(self, timeout: float = 1.0) -> Any:
        self._loop_ident = threading.get_ident()
        return super().loop(timeout)

    def _packet_queue(self, *args: Any, **kwargs: Any) -> Any:
        quiet = self._quiet
        if getattr(quiet, "on", False):  # inside publishing(): one byte at its end
            quiet.queued = True
            return super()._packet_queue(*args, **kwargs)
        if self._loop_ident != threading.get_ident():
            return super()._packet_queue(*args, **kwargs)
        quiet.on = True
        try:
            return super()._packet_queue(*args, **kwargs)
        finally:
            quiet.on = False

    @contextlib.contextmanager
    def publishing(self) -> Iterator[None]:
        """Publish several messages from another thread with one wake-up of the loop, at the end
        (not one per message: under load the link's publisher hands over dozens per pass)."""
        quiet = self._quiet
        quiet.on, quiet.queued = True, False
        try:
            yield
        finally:
            quiet.on = False
            pair = self.__dict__.get("_sockpair_w")
            if quiet.queued and pair is not None:
                with contextlib.suppress(BlockingIOError):  # (full: the loop has bytes to wake it)
                    pair.send(b"0")

    def _handle_pubackcomp(self, cmd: Any) -> Any:
        packet = self._in_packet["packet"]
        size = len(packet)
        # A PUBACK is the packet id, then (MQTT 5) an optional reason code and an optional
        # properties length: 2 bytes, or a reason below 0x80 (0x00 success, 0x10 "no matching
        # subscribers": a reply nobody listens to) and then nothing or an empty properties length.
        if cmd != "PUBACK" or not (size == 2 or (self._protocol == mqtt.MQTTv5 and (
                size == 3 or (size == 4 and packet[3] == 0)) and packet[2] < 0x80)):
            return super()._handle_pubackcomp(cmd)
        reason = self._puback_ok if size == 2 else self._puback_reasons.get(packet[2])
        if reason is None:
            reason = self._puback_reasons[packet[2]] = ReasonCode(PacketTypes.PUBACK, identifier=packet[2])
        mid = packet[0] << 8 | packet[1]
        with self._out_message_mutex:
            if mid in self._out_messages:
                return self._do_on_publish(mid, reason, self._puback_props)
        return mqtt.MQTT_ERR_SUCCESS

    def _handle_publish(self) -> Any:
        header = self._in_packet["command"]
        packet = self._in_packet["packet"]
        qos = (header & 0x06) >> 1
        size = len(packet)
        if qos > 1 or size < 2:
            return super()._handle_publish()
        end = 2 + (packet[0] << 8 | packet[1])
        pos = end + 2 if qos else end
        v5 = self._protocol == mqtt.MQTTv5
        # (an empty topic, a packet too short, or MQTT 5 properties: paho's own code)
        if end == 2 or pos + v5 > size or (v5 and packet[pos] != 0):
            return super()._handle_publish()
        message = mqtt.MQTTMessage(mid=packet[end] << 8 | packet[end + 1] if qos else 0, topic=bytes(packet[2:end]))
        message.dup = bool(header & 0x08)
        message.qos = qos
        message.retain = bool(header & 0x01)
        message.properties = self._publish_props if v5 else None
        message.payload = bytes(packet[pos + v5:])
        message.timestamp = mqtt.time_func()
        self._handle_on_message(message)
        if qos == 1 and not self._manual_ack:
            return self._send_puback(message.mid)
        return mqtt.MQTT_ERR_SUCCESS

    def _create_socket(self, *args: Any, **kwargs: Any) -> Any:
        return BufferedSocket(super()._create_socket(*args, **kwargs))

    def want_write(self) -> bool:
        sock = self._sock
        return super().want_write() or (isinstance(sock, BufferedSocket) and sock.unsent > 0)

    def flush(self) -> None:
        sock = self._sock
        if isinstance(sock, BufferedSocket):
            sock.flush()


class UnwokenClient(BufferedClient):
    """:class:`BufferedClient` without paho's wake-up byte per queued packet, for a loop that
    has its own wake-up (the monitor's link: it wakes only for other threads' publishes)."""

    def _packet_queue(self, *args: Any, **kwargs: Any) -> Any:
        # paho writes a byte to its own socket pair for every packet queued (a PUBACK per event),
        # to wake a select() of loop(); the owner of this client does not wait in loop().
        self._quiet.on = True
        try:
            return mqtt.Client._packet_queue(self, *args, **kwargs)
        finally:
            self._quiet.on = False
