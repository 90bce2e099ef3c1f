"""One daemon per database: an flock on ``<db>.lock``, and a way for the CLI to see who holds it."""

from __future__ import annotations

import fcntl
import os

from .errors import AlreadyRunning, StorageError

__all__ = ["InstanceLock", "daemon_running"]


class InstanceLock:
    """An flock on ``<db>.lock``: one daemon per database."""

    def __init__(self, db_path: str):
        self.path = db_path + ".lock"
        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o660)
        except OSError as exc:
            raise StorageError(f"{self.path}: cannot create the lock file: {exc.strerror}") from exc
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.read(self.fd, 32).decode(errors="replace").strip() or "?"
            os.close(self.fd)
            raise AlreadyRunning(f"another edge-agent (pid {other}) is already running on {db_path}") from None
        os.ftruncate(self.fd, 0)
        os.write(self.fd, str(os.getpid()).encode())

    def release(self) -> None:
        os.close(self.fd)


def daemon_running(db_path: str) -> int | None:
    """The pid of the daemon holding ``db_path``'s lock, or None."""
    try:
        fd = os.open(db_path + ".lock", os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        text = os.read(fd, 32).decode(errors="replace").strip()
        return int(text) if text.isdigit() else -1
    finally:
        os.close(fd)
    return None
