"""edge-agent: a durable task runner for Raspberry Pi-class devices.

    from edge_agent import task

    @task(retries=3, retry_delay="10s")
    def water(zone: str, minutes: float) -> dict: ...

    water.delay(zone="front", minutes=5)
"""

from __future__ import annotations

__version__ = "0.1.0"

from .errors import (
    EdgeAgentError,
    NetworkUnavailable,
    PermanentError,
    RetryableError,
)
from .tasks import Pending, task

__all__ = [
    "EdgeAgentError",
    "NetworkUnavailable",
    "Pending",
    "PermanentError",
    "RetryableError",
    "__version__",
    "task",
]
