"""Live updates fanned out to the browsers' server-sent-event streams.

The ingest thread publishes; each stream owns a bounded asyncio queue on the web
server's loop. A stream that falls ``QUEUE_MAX`` messages behind is closed rather than
left to grow (the browser's EventSource reconnects by itself and reloads its data),
so a slow or stalled browser cannot make the monitor's memory grow.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator
from typing import Any

__all__ = ["Hub"]

QUEUE_MAX = 1000
_CLOSE = object()


class _Stream:
    def __init__(self, loop: asyncio.AbstractEventLoop, device: str | None):
        self.loop = loop
        self.device = device
        self.queue: asyncio.Queue[Any] = asyncio.Queue(QUEUE_MAX)

    def offer(self, item: Any) -> None:
        """On the loop: queue ``item``, or close a stream that fell too far behind."""
        if self.queue.full():
            while not self.queue.empty():
                self.queue.get_nowait()
            self.queue.put_nowait(_CLOSE)
        else:
            self.queue.put_nowait(item)


class Hub:
    """Publish from any thread; subscribe from the web server's event loop."""

    def __init__(self) -> None:
        self._streams: set[_Stream] = set()
        self._lock = threading.Lock()

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
                yield f"data: {item}\n\n"
        finally:
            with self._lock:
                self._streams.discard(s)
