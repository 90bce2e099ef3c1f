"""User tasks for the MQTT no-loss and fuzz tests (not idempotent on purpose: a kill
while one runs must end it ``failed`` with ``interrupted``, never run it twice)."""

import time

from edge_agent import task


@task
def mqtt_work(n: int, ms: float = 0.0) -> dict:
    """Pretend to work for ``ms`` milliseconds; returns ``n``."""
    if ms > 0:
        time.sleep(min(ms, 5000.0) / 1000.0)
    return {"n": n}
