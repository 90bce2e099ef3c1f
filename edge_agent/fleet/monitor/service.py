"""The monitor's composition root: settings, the parts wired together, uvicorn, a clean stop."""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import signal
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from edge_agent.fleet.monitor.auth import Auth
from edge_agent.fleet.monitor.hub import Hub
from edge_agent.fleet.monitor.ingest import Inbox, Ingest
from edge_agent.fleet.monitor.link import Link
from edge_agent.fleet.monitor.store import MonitorStore
from edge_agent.memory import limit_malloc_arenas, release_memory

__all__ = ["Monitor", "MonitorSettings", "default_db_path", "run_monitor"]

log = logging.getLogger("edge_agent.fleet.monitor")

CONNECTIONS_MAX = 400  # HTTP connections and requests at once (uvicorn's limit_concurrency)


def default_db_path() -> str:
    if os.geteuid() == 0:
        return "/var/lib/edge-agent/monitor.db"
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return str(Path(base) / "edge-agent" / "monitor.db")


@dataclass(frozen=True)
class MonitorSettings:
    """What ``edge-agent monitor`` runs with; ``mqtt`` and ``location`` come from the edge-agent config file."""

    mqtt: Any
    location: Any
    host: str = "127.0.0.1"
    port: int = 5555
    db_path: str = ""
    keep: float = 30 * 86400.0
    max_tasks: int = 1_000_000
    password_file: str | None = None
    open_local: bool = True
    log_level: str = "info"
    max_db_bytes: int = 1 << 30  # the store's used pages at most (oldest rows go beyond)
    allowed_hosts: tuple[str, ...] = ()  # Host names served besides localhost and addresses; "*": any


def raise_open_files() -> None:
    """The soft limit of open files up to the hard one: every browser, stream and socket is a file descriptor."""
    import resource

    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        want = hard if hard != resource.RLIM_INFINITY else 65536
        if soft != resource.RLIM_INFINITY and soft < want:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, 65536), hard))
    except (ValueError, OSError):
        pass


class OncePerMinute(logging.Filter):
    """Lets a flood's log line through once a minute, without its traceback, with how many were held back.

    Under a flood of connections the event loop's ``accept()`` fails for want of file
    descriptors and uvicorn refuses requests past its limit; each would log a line (with a
    traceback), thousands a second."""

    def __init__(self, *prefixes: str, every: float = 60.0):
        super().__init__()
        self.prefixes = prefixes
        self.every = every
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        msg = str(record.msg)
        prefix = next((p for p in self.prefixes if msg.startswith(p)), None)
        if prefix is None:
            return True
        now = time.monotonic()
        if now - self._last.get(prefix, -1e9) < self.every:
            self._held[prefix] = self._held.get(prefix, 0) + 1
            return False
        self._last[prefix] = now
        held = self._held.pop(prefix, 0)
        more = f"; {held} more since the last" if held else ""
        record.msg, record.args, record.exc_info, record.exc_text = (
            f"{msg.splitlines()[0]} (one such line a minute at most{more})", None, None, None)
        return True


class Monitor:
    """Store, ingest, link, hub and auth; :meth:`app` is the web app over them."""

    def __init__(self, settings: MonitorSettings):
        self.settings = settings
        self.store = MonitorStore(settings.db_path or default_db_path(), keep=settings.keep, max_tasks=settings.max_tasks,
                                  max_events=settings.max_tasks * 5, max_gpio=settings.max_tasks,
                                  max_bytes=settings.max_db_bytes)
        salt = self.store.meta("session_salt")
        if salt is None:
            salt = secrets.token_hex(16)
            self.store.set_meta("session_salt", salt)
        self.auth = Auth.from_file(settings.password_file, salt, open_local=settings.open_local)
        self.hub = Hub()
        # The link puts what it hears in the inbox; the ingest stores it and asks the link for what is missing.
        inbox = Inbox()
        self.link = Link(settings.mqtt, inbox, keep=settings.keep)
        self.ingest = Ingest(self.store, self.hub, inbox, self.link, release_memory=release_memory)
        loc = settings.location
        self.tz = loc.tz
        self.latitude, self.longitude = loc.latitude, loc.longitude

    def rejected(self) -> int:
        """Device messages dropped at the boundary: unread by the link (too large) or failing the checks."""
        return self.ingest.rejected + self.link.dropped

    def app(self) -> Any:
        from edge_agent.fleet.monitor.web import create_app

        return create_app(self)

    def start(self) -> None:
        self.ingest.start()
        self.link.start()

    def stop(self) -> None:
        self.hub.close()
        self.link.stop()
        self.ingest.stop()
        self.store.close()


def run_monitor(settings: MonitorSettings) -> int:
    """Run until SIGINT/SIGTERM (uvicorn's handlers); returns the exit status."""
    import uvicorn

    limit_malloc_arenas()  # before any thread starts
    raise_open_files()
    logging.getLogger("asyncio").addFilter(OncePerMinute("socket.accept() out of system resource"))
    logging.getLogger("uvicorn.error").addFilter(OncePerMinute("Exceeded concurrency limit"))
    if settings.host not in ("", "0.0.0.0", "::") and "*" not in settings.allowed_hosts:
        settings = replace(settings, allowed_hosts=(*settings.allowed_hosts, settings.host))  # the name it listens on
    monitor = Monitor(settings)
    # limit_concurrency: past that many connections and requests, uvicorn answers 503 and closes at once
    # (the live streams have their own, lower cap in the hub): a flood of clients cannot hold the open files.
    config = uvicorn.Config(monitor.app(), host=settings.host, port=settings.port, log_level=settings.log_level,
                            access_log=False, timeout_graceful_shutdown=2, lifespan="off", server_header=False,
                            log_config=None, limit_concurrency=CONNECTIONS_MAX)
    hub = monitor.hub

    class _Server(uvicorn.Server):
        # uvicorn re-raises SIGTERM/SIGINT after its own stop, which would kill the process before
        # the store is closed: our handlers only set the flag, and run_monitor returns normally.
        @contextlib.contextmanager
        def capture_signals(self) -> Any:
            yield

        async def shutdown(self, sockets: Any = None) -> None:
            hub.close()  # ends the live streams first, else the graceful stop waits for them
            await super().shutdown(sockets)

    server = _Server(config)

    def on_signal(signum: int, frame: Any) -> None:
        server.should_exit = True

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    monitor.start()
    log.info("monitor on http://%s:%s/ (store %s)", settings.host, settings.port, monitor.store.path)
    try:
        server.run()
    finally:
        monitor.stop()
    return 0
