"""Example user tasks: each @task function becomes an action under its own name."""

from edge_agent import task


@task(retries=3, retry_delay="10s")
def water(zone: str, minutes: float = 5.0) -> dict:
    """Pretend to water a zone (a real one would drive a valve through gpio.pulse)."""
    if minutes <= 0 or minutes > 60:
        raise ValueError("minutes must be in (0, 60]")
    return {"zone": zone, "minutes": minutes}
