"""Queueing commands from outside the daemon (the CLI, ``.delay()`` in other processes).

Such a process writes the command to the journal and pokes the daemon; it never
touches GPIO or Huey. The daemon adopts the row into its queue within milliseconds,
or at its next start if it is down.
"""

from __future__ import annotations

import threading

from edge_agent.config import Settings, config_path, load_settings
from edge_agent.device.commands import Command, NewCommand, check_id
from edge_agent.device.journal import Journal
from edge_agent.device.poke import poke
from edge_agent.device.store import Store

__all__ = ["LocalClient", "open_local"]

_clients: dict[str, LocalClient] = {}
_lock = threading.Lock()


class LocalClient:
    def __init__(self, settings: Settings, *, create: bool = True):
        self.settings = settings
        self.store = Store(settings.db_path, sync=settings.sync, create=create)
        self.journal = Journal(self.store)

    def submit(self, cmd: NewCommand) -> tuple[Command, bool]:
        """Write ``cmd`` (or find it by id) and wake the daemon."""
        check_id(cmd.id)  # an id of the scheduler's (job:...) would turn a firing into a no-op
        with self.store.transaction() as cur:
            row, created = self.journal.add(cur, cmd, enqueued=False)
        if created:
            poke(self.settings.db_path)
        return row, created

    def close(self) -> None:
        self.store.close()


def open_local(path: str | None) -> LocalClient:
    """A cached client for the config at ``path`` (``--config``, ``$EDGE_AGENT_CONFIG`` or default)."""
    resolved = config_path(path)
    with _lock:
        client = _clients.get(resolved)
        if client is None:
            client = _clients[resolved] = LocalClient(load_settings(resolved))
        return client
