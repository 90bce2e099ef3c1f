"""Waking the daemon from another process: one datagram to an abstract UNIX socket.

The CLI and ``.delay()`` in other processes write a command to the database, then
poke. The daemon blocks on the socket with no timeout, so it costs nothing while
idle and picks the command up within milliseconds. The address is derived from the
database's real path, so two agents on one machine do not wake each other.
"""

from __future__ import annotations

import os
import socket
import zlib

__all__ = ["PokeListener", "poke", "poke_address"]


def poke_address(db_path: str) -> str:
    digest = f"{zlib.crc32(os.path.realpath(db_path).encode()):08x}"
    return f"\0edge-agent/{digest}"


_sender: socket.socket | None = None
_addresses: dict[str, str] = {}


def poke(db_path: str) -> bool:
    """Wake the daemon that owns ``db_path``; False if none is listening (that is fine)."""
    global _sender
    address = _addresses.get(db_path)
    if address is None:
        address = _addresses[db_path] = poke_address(db_path)
    try:
        if _sender is None:  # one socket per process: a loop of .delay() calls reuses it
            _sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            _sender.setblocking(False)
        _sender.sendto(b"!", address)
        return True
    except OSError:
        return False


class PokeListener:
    """The daemon's end: :meth:`wait` blocks until poked or closed."""

    def __init__(self, db_path: str):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(poke_address(db_path))

    def wait(self) -> bool:
        """Block for the next poke; drains any that piled up. False once closed."""
        try:
            data = self.sock.recv(64)
        except OSError:
            return False
        if not data:
            return False
        self.sock.setblocking(False)
        try:
            while self.sock.recv(64):
                pass
        except OSError:
            pass
        finally:
            self.sock.setblocking(True)
        return True

    def close(self) -> None:
        # shutdown() wakes a thread blocked in recv(); close() alone would not.
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
                s.sendto(b"", self.sock.getsockname())
        except OSError:
            pass
        self.sock.close()
