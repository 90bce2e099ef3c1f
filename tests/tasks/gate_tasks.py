"""User tasks for tests/test_network_gate.py: one network action whose calls either fail at
once (the target refuses) or wait for their answer until a file exists (a request in flight)."""

from __future__ import annotations

import os
import time
from typing import Any

from edge_agent import task
from edge_agent.errors import NetworkUnavailable, RetryableError


@task(needs_network=True)
def gate_fetch(answer: str = "", started: str = "", down: bool = False, timeout: float = 30.0) -> dict[str, Any]:
    """``down``: refused at once. Else touch ``started``, then answer once the file ``answer`` exists."""
    if down:
        raise NetworkUnavailable("connection refused (test)")
    if started:
        open(started, "w").close()
    end = time.monotonic() + timeout
    while not os.path.exists(answer):
        if time.monotonic() > end:
            raise RetryableError(f"no answer within {timeout}s")
        time.sleep(0.02)
    return {"answered": True}
