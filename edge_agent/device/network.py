"""How the agent knows the network is back: one probe at a time per target.

The agent does not ping anything of its own. The work itself is the probe: a
command whose action needs the network and that fails to connect (refused, reset,
DNS, unreachable) marks its *target* down (the host of an ``http.request``, else
the action's name) and is parked without using up an attempt. While a target is
down, the commands for it do not run; only one of them at a time tries again, at
most every ``PROBE_INTERVAL`` seconds. The first success (of a probe, or of any
command for that target) marks it up and releases every parked command at once, so
work resumes within ``PROBE_INTERVAL`` of the network's return.

Slow failures (a resolver that times out) therefore hold at most one worker per
target, and commands that do not need the network are never held up. A half-open
link (connects, then times out) is not "down": timeouts are retried under the
command's retry policy and use up attempts, so nothing stays parked forever;
parked commands also end at their deadline (or after a day without one).

Only the probe's outcome marks a target that is down up again. A command that began
before the target was marked down and ends well afterwards (a long request finishing
while the daemon drains at a stop) says nothing about the target now: its outcome does
not release the parked work, nor log that the target is back.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["IDLE_WAIT", "PROBE_INTERVAL", "NetworkGate", "target_of"]

PROBE_INTERVAL = 4.0  # seconds between two tries of a target that is down
IDLE_WAIT = 30.0  # a command that is not the probe looks again after this long at the latest


def target_of(action: str, args: Mapping[str, Any]) -> str:
    """What a command needs to reach: ``http:<host:port>`` for web requests, else the action."""
    if action == "http.request" and isinstance(args.get("url"), str):
        from urllib.parse import urlsplit

        try:
            parts = urlsplit(args["url"])
            return f"http:{parts.hostname}:{parts.port or (443 if parts.scheme == 'https' else 80)}"
        except ValueError:
            return action
    return action


class NetworkGate:
    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self._lock = threading.Lock()
        self._down: dict[str, float] = {}  # target -> since (monotonic)
        self._probing: dict[str, float] = {}  # target -> when the probe in flight started
        self._prober: dict[str, int] = {}  # target -> the thread running that probe
        self._last_probe: dict[str, float] = {}

    def may_try(self, target: str) -> float | None:
        """None if a command for ``target`` may run now (it becomes the probe if the target
        is down), else how many seconds it should wait before it asks again."""
        now = self.clock()
        with self._lock:
            if target not in self._down:
                return None
            started = self._probing.get(target)
            if started is not None and now - started < 300:  # a probe stuck for 5 min no longer blocks
                return IDLE_WAIT  # released sooner if the probe succeeds
            wait = self._last_probe.get(target, 0.0) + PROBE_INTERVAL - now
            if wait > 0:
                return wait
            self._probing[target] = now
            self._prober[target] = threading.get_ident()  # a command runs in the thread that began it
            self._last_probe[target] = now
            return None

    def failed(self, target: str) -> None:
        with self._lock:
            self._down.setdefault(target, self.clock())
            self._probing.pop(target, None)
            self._last_probe[target] = self.clock()

    def succeeded(self, target: str) -> bool:
        """A command for ``target`` got an answer (called in the thread that ran it). Marks the
        target up and returns True if it was down, the caller then releasing parked work; but
        while it is down only the probe's answer counts: any other command began before the
        target was marked down, so its answer is older news (False, nothing changes)."""
        with self._lock:
            if target in self._down and self._prober.get(target) != threading.get_ident():
                return False
            self._probing.pop(target, None)
            self._prober.pop(target, None)
            return self._down.pop(target, None) is not None
