"""edge-agent: a durable task runner for Raspberry Pi-class devices.

    from edge_agent import task

    @task(retries=3, retry_delay="10s")
    def water(zone: str, minutes: float) -> dict: ...

    water.delay(zone="front", minutes=5)
"""

from __future__ import annotations

__version__ = "0.1.0"

from typing import TYPE_CHECKING, Any

from edge_agent.errors import (
    EdgeAgentError,
    NetworkUnavailable,
    PermanentError,
    RetryableError,
)

if TYPE_CHECKING:
    from edge_agent.device.tasks import Pending, task


def __getattr__(name: str) -> Any:
    # `task` and `Pending` pull in argument checking (inspect, typing): loaded on first
    # use so that `edge-agent --help` does not pay for them.
    if name in ("task", "Pending"):
        from edge_agent.device import tasks

        return getattr(tasks, name)
    raise AttributeError(f"module 'edge_agent' has no attribute {name!r}")

__all__ = [
    "EdgeAgentError",
    "NetworkUnavailable",
    "Pending",
    "PermanentError",
    "RetryableError",
    "__version__",
    "task",
]
