"""Tasks for the full-disk test: each run leaves a line in ``$EDGE_AGENT_TEST_FILE`` (on another disk).

With ``wait_for``, the task holds after its line until that file exists, so a test can
fill the disk while it runs and let it end when nothing can be recorded.
"""

from __future__ import annotations

import os
import time

from edge_agent import PermanentError, task


def _mark(tag: str, wait_for: str) -> None:
    fd = os.open(os.environ["EDGE_AGENT_TEST_FILE"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (tag + "\n").encode())
    finally:
        os.close(fd)
    end = time.monotonic() + 60
    while wait_for and not os.path.exists(wait_for) and time.monotonic() < end:
        time.sleep(0.02)


@task
def disk_mark(tag: str, wait_for: str = "") -> dict:
    """Leave ``tag`` in the runs file; succeed."""
    _mark(tag, wait_for)
    return {"tag": tag}


@task
def disk_mark_fail(tag: str, wait_for: str = "") -> None:
    """Leave ``tag`` in the runs file; fail permanently."""
    _mark(tag, wait_for)
    raise PermanentError(f"{tag} fails on purpose")
