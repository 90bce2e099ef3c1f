"""A task that never returns, to wedge a worker."""

import time

from edge_agent import task


@task
def hang(seconds: float = 3600.0) -> None:
    time.sleep(seconds)
