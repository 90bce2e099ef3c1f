"""Live updates fanned out to the browsers' server-sent-event streams.

The ingest thread publishes; each stream owns a bounded asyncio queue on the web
server's loop. A stream that falls ``QUEUE_MAX`` messages or ``QUEUE_BYTES`` behind is
closed rather than left to grow (the browser's EventSource reconnects by itself and reloads its data),
so a slow or stalled browser cannot make the monitor's memory grow.

Streams are capped: at most ``STREAMS_MAX`` at once and ``STREAMS_PER_CLIENT`` per client
address (:meth:`Hub.admit`); the web app refuses the rest with 503, so open streams can
never use up the process's file descriptors (a page or a script opening streams without
end would otherwise make the monitor unreachable). A refusal is logged once until a
stream is admitted again.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import AsyncIterator
from typing import Any

__all__ = ["Hub"]

log = logging.getLogger("edge_agent.monitor.hub")

QUEUE_MAX = 1000
QUEUE_BYTES = 1 << 20  # (a message is one string shared by every stream: this bounds them all together too)
STREAMS_MAX = 100  # live streams at once
STREAMS_PER_CLIENT = 20  # ... from one client address (behind a proxy on this machine, every browser is 127.0.0.1)
_CLOSE = object()


class _Stream:
    def __init__(self, loop: asyncio.AbstractEventLoop, device: str | None):
        self.loop = loop
        self.device = device
        self.queue: asyncio.Queue[Any] = asyncio.Queue(QUEUE_MAX)
        self.bytes = 0  # of the messages queued

    def offer(self, item: Any) -> None:
        """On the loop: queue ``item``, or close a stream that fell too far behind."""
        if self.queue.full() or self.bytes + len(item) > QUEUE_BYTES:
            while not self.queue.empty():
                self.queue.get_nowait()
            self.bytes = 0
            self.queue.put_nowait(_CLOSE)
        else:
            self.bytes += len(item)
            self.queue.put_nowait(item)


class Hub:
    """Publish from any thread; subscribe from the web server's event loop."""

    def __init__(self, streams_max: int = STREAMS_MAX, per_client: int = STREAMS_PER_CLIENT) -> None:
        self._streams: set[_Stream] = set()
        self._lock = threading.Lock()
        self.streams_max = streams_max
        self.per_client = per_client
        self._clients: dict[str, int] = {}  # address -> streams admitted
        self.count = 0
        self.refused = 0
        self._refusing = False

    def admit(self, client: str) -> str:
        """Take a place for a stream of ``client``: "" if admitted (give it back with :meth:`leave`), else why not."""
        with self._lock:
            if self.count >= self.streams_max:
                why = f"too many live streams ({self.streams_max})"
            elif self._clients.get(client, 0) >= self.per_client:
                why = f"too many live streams from {client} ({self.per_client})"
            else:
                self.count += 1
                self._clients[client] = self._clients.get(client, 0) + 1
                self._refusing = False
                return ""
            self.refused += 1
            first, self._refusing = not self._refusing, True
        if first:
            log.warning("live stream refused: %s (logged once until one is admitted again)", why)
        return why

    def leave(self, client: str) -> None:
        with self._lock:
            self.count -= 1
            n = self._clients.get(client, 0) - 1
            if n > 0:
                self._clients[client] = n
            else:
                self._clients.pop(client, None)

    @property
    def listening(self) -> bool:
        return bool(self._streams)

    def publish(self, message: dict[str, Any]) -> None:
        """Send ``message`` (with a ``device`` key) to every stream that wants that device."""
        data = json.dumps(message, separators=(",", ":"), default=str)
        device = message.get("device")
        with self._lock:
            streams = list(self._streams)
        for s in streams:
            if s.device is None or s.device == device:
                try:
                    s.loop.call_soon_threadsafe(s.offer, data)
                except RuntimeError:  # the loop is closed: the server is stopping
                    pass

    def close(self) -> None:
        """End every stream (the server is stopping)."""
        with self._lock:
            streams = list(self._streams)
        for s in streams:
            try:
                s.loop.call_soon_threadsafe(s.queue.put_nowait, _CLOSE)
            except (RuntimeError, asyncio.QueueFull):
                pass

    async def stream(self, device: str | None, heartbeat: float = 15.0) -> AsyncIterator[str]:
        """Server-sent-event text: one ``data:`` line per message, a comment as heartbeat."""
        s = _Stream(asyncio.get_running_loop(), device)
        with self._lock:
            self._streams.add(s)
        try:
            yield "retry: 1000\n\n"
            while True:
                try:
                    item = await asyncio.wait_for(s.queue.get(), heartbeat)
                except TimeoutError:
                    yield ": keep-alive\n\n"
                    continue
                if item is _CLOSE:
                    return
                s.bytes -= len(item)
                yield f"data: {item}\n\n"
        finally:
            with self._lock:
                self._streams.discard(s)
