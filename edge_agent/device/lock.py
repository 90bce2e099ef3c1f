"""One daemon per database: an flock on the database file itself and on ``<db>.lock`` beside
its resolved path, and a way for the CLI to see who holds it.

A database is one file whatever the path that reaches it: a symlink (to the file or to a
folder above it), a relative path, ``..`` or a second hard link. So the lock is taken on
what the path resolves to: ``<realpath>.lock`` holds the pid (what ``status`` shows), and
an flock on the database file's own inode (device, inode) catches the paths that
resolve apart, hard links. SQLite uses POSIX (fcntl) locks, which are independent of
flock on Linux, so neither disturbs the other.
"""

from __future__ import annotations

import fcntl
import os

from edge_agent.errors import AlreadyRunning, StorageError

__all__ = ["InstanceLock", "daemon_running", "lock_path"]


def lock_path(db_path: str) -> str:
    """``<db>.lock`` beside the file ``db_path`` resolves to (symlinks followed)."""
    return os.path.realpath(db_path) + ".lock"


class InstanceLock:
    """Held while a daemon runs on a database: one daemon per database file."""

    def __init__(self, db_path: str):
        self.path = lock_path(db_path)
        self.db_fd: int | None = None
        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o660)
        except OSError as exc:
            raise StorageError(f"{self.path}: cannot create the lock file: {exc.strerror}") from exc
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.read(self.fd, 32).decode(errors="replace").strip() or "?"
            os.close(self.fd)
            raise AlreadyRunning(f"another edge-agent (pid {other}) is already running on {db_path}"
                                 f"{_resolved_note(db_path)}") from None
        try:
            self._lock_database(db_path)
        except BaseException:
            os.close(self.fd)
            raise
        os.ftruncate(self.fd, 0)
        os.write(self.fd, str(os.getpid()).encode())

    def _lock_database(self, db_path: str) -> None:
        # The database file is created here when it is new (an empty file is an empty SQLite
        # database), so a hard link made to it later still meets this lock. Read-only: flock
        # needs no write access, and a read-only database is the store's to report.
        real = os.path.realpath(db_path)
        try:
            fd = os.open(real, os.O_RDONLY | os.O_CREAT, 0o660)
        except OSError as exc:
            raise StorageError(f"{real}: cannot open the database file: {exc.strerror}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            st = os.stat(real)
            raise AlreadyRunning(f"another edge-agent is already running on {db_path} (the same file as another "
                                 f"path: device {st.st_dev}, inode {st.st_ino})") from None
        self.db_fd = fd

    def release(self) -> None:
        if self.db_fd is not None:
            os.close(self.db_fd)
            self.db_fd = None
        os.close(self.fd)


def _resolved_note(db_path: str) -> str:
    real = os.path.realpath(db_path)
    return f" (that is {real})" if real != os.path.abspath(db_path) else ""


def daemon_running(db_path: str) -> int | None:
    """The pid of the daemon holding ``db_path``'s lock, or None."""
    try:
        fd = os.open(lock_path(db_path), os.O_RDONLY)
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
