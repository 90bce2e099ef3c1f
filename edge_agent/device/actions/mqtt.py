"""``mqtt.publish``: a message to any topic, through the durable outbox."""

from __future__ import annotations

import json
from typing import Any

from edge_agent.device.actions.registry import Action, Runtime, bad_args
from edge_agent.device.commands import Param

__all__ = ["mqtt_actions"]


def mqtt_actions(settings: Any, runtime: Runtime | None) -> list[Action]:
    def check(args: dict[str, Any]) -> None:
        if settings.mqtt is None:
            raise bad_args("mqtt.publish", "MQTT is not configured (no [mqtt] table in the config)")
        topic = args["topic"]
        if not topic or any(c in topic for c in "#+\0") or len(topic.encode()) > 65535:
            raise bad_args("mqtt.publish", f"topic must be a non-empty topic name without wildcards, got {topic[:80]!r}")
        if args.get("qos", 1) not in (0, 1, 2):
            raise bad_args("mqtt.publish", f"qos must be 0, 1 or 2, got {args['qos']!r}")

    def publish(topic: str, payload: Any = "", qos: int = 1, retain: bool = False) -> dict[str, Any]:
        if runtime is None or runtime.publish is None:
            raise RuntimeError("MQTT is not configured")
        data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
        runtime.publish(topic, data.encode(), qos=qos, retain=retain)
        return {"topic": topic, "queued": True}

    params = (Param("topic", str), Param("payload", Any, False, ""), Param("qos", int, False, 1),
              Param("retain", bool, False, False))
    return [Action("mqtt.publish", publish, params, idempotent=True, check=check)]
