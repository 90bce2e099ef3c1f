"""Home Assistant MQTT discovery: the device and its GPIO appear in Home Assistant by themselves.

One Home Assistant device per agent (``identifiers: ["edge-agent-<id>"]``) with:

    output device   switch         state P/D/gpio/<dev> (ON/OFF), command P/D/gpio/<dev>/set
    pwm device      light          brightness 0..255 in HA <-> level 0..1 on the same topics
    input device    binary_sensor  state P/D/gpio/<dev> (ON/OFF)
    the agent       sensor         queue depth, outbox depth, next sunset, last error (from P/D/state)
                    button         agent.ping (P/D/cmd/agent.ping)

Every entity is available while P/D/status says ``online`` (the link's last will says
``offline``). Config messages are retained, go through the durable outbox, and are
re-sent whenever Home Assistant announces itself on ``[mqtt] ha_status_topic``
(``homeassistant/status``, whatever the discovery prefix). The topics announced, and
the GPIO state topics of the configured devices, are remembered in the database: a
topic no longer in use (a device left the config, changed kind, or a prefix changed)
is cleared with an empty retained message, which makes Home Assistant remove the
entity, and leaves no retained state of a device that is gone on the broker.

Discovery topics: ``<discovery prefix>/<component>/edge-agent-<device id>/<object>/config``.
"""

from __future__ import annotations

import json
import logging
import re
from functools import lru_cache
from typing import Any

from edge_agent import __version__
from edge_agent.config import DeviceSpec, Settings
from edge_agent.contract import Topics, discovery_object_id, discovery_topic
from edge_agent.errors import StorageError

__all__ = ["META_KEY", "announce", "discovery_messages", "discovery_payloads", "node_id"]

log = logging.getLogger("edge_agent.discovery")

META_KEY = "discovery"  # meta row: JSON list of the discovery and GPIO state topics in use last time

# Home Assistant renders these with Jinja2. ``value`` is the payload as text and
# ``value_json`` the payload parsed as JSON (the state document, or a number for a level).
#
# Brightness: Home Assistant's brightness is 0..255 (brightness_scale 255); the agent's
# level is 0..1 on the *same* set topic that takes ON/OFF, so HA's number is divided by
# 255 on the way out (``0.502``) and the published level multiplied by 255 on the way in.
# ``on_command_type: brightness`` makes HA turn the light on by sending only a brightness
# (never ``ON``, which the agent would take as full power and which would clobber the
# level HA sends with it); ``OFF`` still goes to command_topic.
BRIGHTNESS_COMMAND_TEMPLATE = "{{ (value / 255) | round(4) }}"
BRIGHTNESS_VALUE_TEMPLATE = "{{ (value | float(0) * 255) | round(0) }}"
LEVEL_STATE_TEMPLATE = "{{ 'ON' if value | float(0) > 0 else 'OFF' }}"
# ``None`` is Home Assistant's "unknown" for a sensor.
NEXT_SUNSET_TEMPLATE = "{{ value_json.next_sunset | default(None, true) }}"
# last_error is null or {"action", "type", "message", "at"}; the state is "<action>: <message>"
# (HA keeps at most 255 characters), "none" when nothing has failed; the whole object
# becomes the sensor's attributes.
LAST_ERROR_TEMPLATE = (
    "{% set e = value_json.last_error | default(None, true) %}"
    "{% if e is mapping %}{{ ((e.action ~ ': ' if e.action else '') ~ (e.message or e.type or 'failed'))[:255] }}"
    "{% elif e %}{{ (e ~ '')[:255] }}{% else %}none{% endif %}"
)
LAST_ERROR_ATTRIBUTES_TEMPLATE = (
    "{% set e = value_json.last_error | default(None, true) %}{{ (e if e is mapping else {}) | tojson }}"
)


def node_id(settings: Settings) -> str:
    """The discovery node id of this agent (also its Home Assistant device identifier)."""
    return f"edge-agent-{settings.device_id}"


def _slug(text: str) -> str:
    """A piece of a Home Assistant entity id: lowercase letters, digits and '_'."""
    return re.sub(r"_+", "_", re.sub(r"[^a-z0-9_]", "_", text.lower())).strip("_") or "x"


def _pretty(name: str) -> str:
    words = re.sub(r"[_-]+", " ", name).strip()
    return words[:1].upper() + words[1:] if words else name


@lru_cache(maxsize=1)
def _board_model() -> str | None:
    """The board's model as the device tree names it ("Raspberry Pi 4 Model B Rev 1.4"), if any."""
    for path in ("/proc/device-tree/model", "/sys/firmware/devicetree/base/model"):
        try:
            with open(path, "rb") as fh:
                text = fh.read(200).rstrip(b"\0").decode("utf-8", "replace").strip()
        except OSError:
            continue
        if text:
            return text
    return None


def discovery_payloads(settings: Settings) -> dict[str, dict[str, Any]]:
    """Discovery topic -> config document (not yet JSON) for every entity of this agent.

    Empty when MQTT is not configured.
    """
    mqtt = settings.mqtt
    if mqtt is None:
        return {}
    topics = Topics(mqtt.topic_prefix, settings.device_id, settings.groups, mqtt.ha_status_topic)
    node = node_id(settings)
    device: dict[str, Any] = {
        "identifiers": [node],
        "name": settings.device_id,
        "manufacturer": "edge-agent",
        "model": _board_model() or "edge-agent",
        "sw_version": __version__,
    }
    common: dict[str, Any] = {
        "availability_topic": topics.status,
        "payload_available": "online",
        "payload_not_available": "offline",
        "qos": 1,  # the contract is QoS 1 both ways: commands from HA are acknowledged only once stored
        "device": device,
        "origin": {"name": "edge-agent", "sw_version": __version__},
    }
    out: dict[str, dict[str, Any]] = {}

    def add(component: str, object_id: str, doc: dict[str, Any]) -> None:
        # GPIO entities are switch/light/binary_sensor and the agent's own are sensor/button,
        # so "<domain>.<device id>_<name>" cannot collide between the two.
        short = object_id.removeprefix("gpio_")
        doc = {
            **doc,
            "unique_id": f"{node}_{object_id}",
            "default_entity_id": f"{component}.{_slug(settings.device_id)}_{_slug(short)}",
            **common,
        }
        out[discovery_topic(mqtt.discovery_prefix, component, node, object_id)] = doc

    for name, spec in settings.devices.items():
        add(*_gpio_entity(topics, name, spec))

    state = topics.state
    add("sensor", "queue", {
        "name": "Queue depth", "state_topic": state, "value_template": "{{ value_json.queue }}",
        "state_class": "measurement", "icon": "mdi:format-list-numbered", "entity_category": "diagnostic",
    })
    add("sensor", "outbox", {
        "name": "Outbox depth", "state_topic": state, "value_template": "{{ value_json.outbox }}",
        "state_class": "measurement", "icon": "mdi:tray-arrow-up", "entity_category": "diagnostic",
    })
    if settings.location.latitude is not None:
        add("sensor", "next_sunset", {
            "name": "Next sunset", "state_topic": state, "value_template": NEXT_SUNSET_TEMPLATE,
            "device_class": "timestamp", "icon": "mdi:weather-sunset-down",
        })
    add("sensor", "last_error", {
        "name": "Last error", "state_topic": state, "value_template": LAST_ERROR_TEMPLATE,
        "json_attributes_topic": state, "json_attributes_template": LAST_ERROR_ATTRIBUTES_TEMPLATE,
        "icon": "mdi:alert-circle-outline", "entity_category": "diagnostic",
    })
    add("button", "ping", {
        "name": "Ping", "command_topic": topics.command("agent.ping"), "payload_press": "{}",
        "icon": "mdi:lan-pending", "entity_category": "diagnostic",
    })
    return out


def _gpio_entity(topics: Topics, name: str, spec: DeviceSpec) -> tuple[str, str, dict[str, Any]]:
    state = topics.gpio(name)
    command = topics.gpio_set(name)
    object_id = f"gpio_{name}"
    label = _pretty(name)
    if spec.kind == "input":
        return "binary_sensor", object_id, {
            "name": label, "state_topic": state, "payload_on": "ON", "payload_off": "OFF",
        }
    if spec.kind == "pwm":
        return "light", object_id, {
            "name": label,
            "command_topic": command, "payload_on": "ON", "payload_off": "OFF",
            "state_topic": state, "state_value_template": LEVEL_STATE_TEMPLATE,
            "brightness_command_topic": command, "brightness_command_template": BRIGHTNESS_COMMAND_TEMPLATE,
            "brightness_state_topic": state, "brightness_value_template": BRIGHTNESS_VALUE_TEMPLATE,
            "brightness_scale": 255, "on_command_type": "brightness",
        }
    return "switch", object_id, {
        "name": label, "state_topic": state, "command_topic": command,
        "payload_on": "ON", "payload_off": "OFF", "state_on": "ON", "state_off": "OFF",
    }


def discovery_messages(settings: Settings) -> dict[str, str]:
    """Discovery topic -> JSON payload (to be published retained)."""
    return {topic: json.dumps(doc, separators=(",", ":"), sort_keys=True)
            for topic, doc in discovery_payloads(settings).items()}


def announce(settings: Settings, store: Any, outbox: Any) -> bool:
    """Queue every discovery message (retained, coalesced) and clear the topics no longer in use
    (discovery configs, and the retained GPIO states of devices no longer configured).

    One transaction: the new set of topics is remembered only together with the
    messages that announce it. Never raises (it runs on the MQTT network thread):
    a failure is logged and the next connect or Home Assistant birth tries again.
    Returns whether the messages were queued.
    """
    try:
        messages = discovery_messages(settings) if settings.mqtt is not None and settings.mqtt.discovery else {}
        in_use = set(messages) | set(_state_topics(settings))  # the link publishes the states itself
        with store.transaction() as cur:
            row = cur.execute("select value from meta where key = ?", (META_KEY,)).fetchone()
            before = _topic_list(row[0] if row else None)
            gone = [t for t in before if t not in in_use]
            for topic in gone:
                outbox.put(cur, topic, b"", qos=1, retain=True, coalesce=True)
            for topic, payload in messages.items():
                outbox.put(cur, topic, payload, qos=1, retain=True, coalesce=True)
            store.set_meta(cur, META_KEY, json.dumps(sorted(in_use)))
    except StorageError as exc:
        log.error("Home Assistant discovery: could not queue the announcements: %s", exc)
        return False
    except Exception:
        log.exception("Home Assistant discovery: unexpected error")
        return False
    if gone:
        log.info("Home Assistant discovery: announced %d entities, removed %d (%s)", len(messages), len(gone),
                 ", ".join(discovery_object_id(t) or t for t in gone)[:300])
    else:
        log.info("Home Assistant discovery: announced %d entities", len(messages))
    return True


def _state_topics(settings: Settings) -> list[str]:
    """The retained GPIO state topics of the configured devices (``P/D/gpio/<dev>``)."""
    mqtt = settings.mqtt
    if mqtt is None:
        return []
    topics = Topics(mqtt.topic_prefix, settings.device_id, settings.groups, mqtt.ha_status_topic)
    return [topics.gpio(name) for name in settings.devices]


def _topic_list(text: str | None) -> list[str]:
    if not text:
        return []
    try:
        value = json.loads(text)
    except ValueError:
        return []
    return [t for t in value if isinstance(t, str)] if isinstance(value, list) else []
