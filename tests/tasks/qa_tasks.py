"""User tasks for the spine's tests: appends that leave evidence in a file, a typed task, a failing task.

The appends write ``line`` plus a newline to ``$EDGE_AGENT_TEST_FILE`` with one
``write`` on an ``O_APPEND`` descriptor (so a kill leaves a whole line or none) and
fsync it, then hold for ``hold_ms``: a kill during the hold finds the line written
but the outcome not yet recorded, which is what makes a re-run visible.
"""

from __future__ import annotations

import os
import time
from typing import Literal

from edge_agent import PermanentError, task


def _append(line: str, hold_ms: float) -> dict:
    fd = os.open(os.environ["EDGE_AGENT_TEST_FILE"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    if hold_ms > 0:
        time.sleep(min(hold_ms, 5000.0) / 1000.0)
    return {"line": line}


@task(idempotent=True)
def qa_append(line: str, hold_ms: float = 0.0) -> dict:
    """Append ``line``; declared idempotent, so a run cut short by a crash is run again."""
    return _append(line, hold_ms)


@task
def qa_append_once(line: str, hold_ms: float = 0.0) -> dict:
    """Append ``line``; not idempotent, so a run cut short by a crash ends ``interrupted``."""
    return _append(line, hold_ms)


@task
def qa_typed(count: int, ratio: float, mode: Literal["fast", "slow"] = "fast", tags: list[str] | None = None) -> dict:
    """Echo typed arguments back (for argument checking through the CLI)."""
    return {"count": count, "ratio": ratio, "mode": mode, "tags": tags}


@task
def qa_fail(reason: str = "on purpose") -> None:
    """Always fail, permanently."""
    raise PermanentError(reason)
