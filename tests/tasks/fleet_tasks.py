"""User tasks for the events and fleet tests (``[tasks] modules = ["fleet_tasks"]``)."""

from __future__ import annotations

import os
import time

from edge_agent import task
from edge_agent.errors import PermanentError, RetryableError


@task(retries=3, retry_delay="1h", max_delay="1h")
def flaky() -> None:
    """Always fails in a way worth another attempt, an hour later: a command that waits to retry."""
    raise RetryableError("the far end is busy")


@task()
def broken() -> None:
    raise PermanentError("this cannot work")


@task()
def hold(path: str, timeout: float = 60.0) -> str:
    """Runs until ``path`` exists (or ``timeout`` s): a command that is running while a test looks."""
    end = time.monotonic() + timeout
    while not os.path.exists(path) and time.monotonic() < end:
        time.sleep(0.02)
    return "released"
