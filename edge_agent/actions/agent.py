"""``agent.ping``: proof of life, with the version and uptime."""

from __future__ import annotations

import time
from typing import Any

from .. import __version__
from . import Action, Runtime

__all__ = ["agent_actions"]


def agent_actions(device_id: str, runtime: Runtime | None) -> list[Action]:
    def ping() -> dict[str, Any]:
        started = runtime.started_monotonic if runtime else time.monotonic()
        return {"device": device_id, "version": __version__, "uptime_s": round(time.monotonic() - started, 3)}

    return [Action("agent.ping", ping, (), idempotent=True)]
