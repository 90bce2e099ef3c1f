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

This module is the one place that relies on paho's private parts: ``Client._create_socket()``
(made on every connect), ``Client._sock``, ``Client._packet_queue()`` and
``Client._sockpairW`` (its wake-up socket). ``tests/test_mqttsock_hooks.py`` fails when a
paho release changes them; ``pyproject.toml`` holds paho below its next major version.
"""

from __future__ import annotations

import ssl
from typing import Any

import paho.mqtt.client as mqtt

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
    """paho's client on a :class:`BufferedSocket`; the owner calls :meth:`flush` after each ``loop()``."""

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
        pair, self._sockpairW = self._sockpairW, None
        try:
            return super()._packet_queue(*args, **kwargs)
        finally:
            self._sockpairW = pair
