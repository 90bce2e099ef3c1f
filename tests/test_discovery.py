"""Home Assistant MQTT discovery: payloads checked against Home Assistant's schemas, and against a real broker and daemon.

The schema checks mirror Home Assistant's MQTT platform schemas (``homeassistant/components/mqtt``:
``config.py`` MQTT_RO_SCHEMA / MQTT_RW_SCHEMA, ``schemas.py`` device and origin info, and the
per-platform schemas): what each platform requires, what a device and an origin block need, which
topics may carry wildcards. Templates are rendered with Jinja2's sandbox, as Home Assistant does,
so "what Home Assistant sends" and "what Home Assistant reads" are computed, not assumed.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from edge_agent.config import parse_settings
from edge_agent.contract import Topics
from edge_agent.device.discovery import META_KEY, announce, discovery_messages, discovery_payloads
from edge_agent.device.outbox import Outbox
from edge_agent.device.store import Store
from edge_agent.errors import StorageError
from tests.configs import ISTANBUL, LAMP_DIM_DOOR, agent_config

jinja2_sandbox = pytest.importorskip("jinja2.sandbox", reason="jinja2 renders Home Assistant's templates in these tests")
ENV = jinja2_sandbox.ImmutableSandboxedEnvironment()

# --------------------------------------------------------------------------- Home Assistant's rules

# Keys Home Assistant requires per platform (vol.Required in its schemas).
HA_REQUIRED = {
    "switch": {"command_topic"},          # MQTT_RW_SCHEMA
    "light": {"command_topic"},           # MQTT_RW_SCHEMA (basic schema)
    "button": {"command_topic"},
    "binary_sensor": {"state_topic"},     # MQTT_RO_SCHEMA
    "sensor": {"state_topic"},            # MQTT_RO_SCHEMA
}
# Keys this agent's entities need on top, so that Home Assistant shows the real state (not
# optimistic guesses) and gets brightness both ways.
AGENT_REQUIRED = {
    "switch": {"state_topic", "payload_on", "payload_off"},
    "light": {"state_topic", "payload_on", "payload_off", "brightness_command_topic", "brightness_state_topic",
              "brightness_command_template", "brightness_value_template", "state_value_template"},
    "button": {"payload_press"},
    "binary_sensor": {"payload_on", "payload_off"},
    "sensor": {"value_template"},
}
EVERY_ENTITY = {"unique_id", "name", "device", "origin", "availability_topic", "payload_available",
                "payload_not_available", "qos", "default_entity_id"}
PUBLISH_TOPICS = {"command_topic", "brightness_command_topic"}
SUBSCRIBE_TOPICS = {"state_topic", "brightness_state_topic", "availability_topic", "json_attributes_topic"}
TEMPLATES = {"value_template", "state_value_template", "brightness_value_template", "brightness_command_template",
             "json_attributes_template"}
DISCOVERY_TOPIC = re.compile(r"^(?P<prefix>.+)/(?P<component>[a-z_]+)/(?P<node>[a-zA-Z0-9_-]+)/(?P<object>[a-zA-Z0-9_-]+)/config$")


def ha_problems(topic: str, doc: dict[str, Any]) -> list[str]:
    """What Home Assistant (or this agent) would find wrong with one discovery message."""
    m = DISCOVERY_TOPIC.match(topic)
    if m is None:
        return [f"{topic}: not <prefix>/<component>/<node_id>/<object_id>/config"]
    component = m["component"]
    problems = []
    if component not in HA_REQUIRED:
        return [f"{topic}: unexpected component {component!r}"]
    for key in sorted(HA_REQUIRED[component] | AGENT_REQUIRED[component] | EVERY_ENTITY):
        if key not in doc:
            problems.append(f"{topic}: missing {key}")
    for key in PUBLISH_TOPICS & doc.keys():
        t = doc[key]
        if not isinstance(t, str) or not t or any(c in t for c in "+#\0"):
            problems.append(f"{topic}: {key} {t!r} is not a valid publish topic")
    for key in SUBSCRIBE_TOPICS & doc.keys():
        t = doc[key]
        levels = t.split("/") if isinstance(t, str) else []
        if (not isinstance(t, str) or not t or "\0" in t
                or any(("+" in lv and lv != "+") or ("#" in lv and lv != "#") for lv in levels)
                or "#" in levels[:-1]):
            problems.append(f"{topic}: {key} {t!r} is not a valid subscribe topic")
    for key in TEMPLATES & doc.keys():
        try:
            ENV.from_string(doc[key])
        except Exception as exc:
            problems.append(f"{topic}: {key} does not compile: {exc}")
    device = doc.get("device") or {}
    ids = device.get("identifiers") or []
    if not (isinstance(ids, list) and ids and all(isinstance(i, str) and i for i in ids)) and not device.get("connections"):
        problems.append(f"{topic}: device needs identifiers or connections")
    for key in ("name", "manufacturer", "model", "sw_version"):
        if not isinstance(device.get(key), str):
            problems.append(f"{topic}: device {key} is not a string")
    origin = doc.get("origin") or {}
    if not isinstance(origin.get("name"), str) or not origin["name"]:
        problems.append(f"{topic}: origin needs a name")
    if "availability" in doc and "availability_topic" in doc:
        problems.append(f"{topic}: availability and availability_topic are exclusive")
    if doc.get("qos") != 1:
        problems.append(f"{topic}: qos must be 1 (the contract: QoS 1 both ways)")
    if not isinstance(doc.get("unique_id"), str) or not doc["unique_id"]:
        problems.append(f"{topic}: unique_id must be a non-empty string")
    eid = doc.get("default_entity_id", "")
    if not re.fullmatch(rf"{component}\.[a-z0-9_]+", str(eid)):
        problems.append(f"{topic}: default_entity_id {eid!r} is not {component}.<object_id>")
    category = doc.get("entity_category")
    allowed = {None, "diagnostic"} if component in ("sensor", "binary_sensor") else {None, "config", "diagnostic"}
    if category not in allowed:
        problems.append(f"{topic}: entity_category {category!r} not allowed for {component}")
    if component == "light":
        if not isinstance(doc.get("brightness_scale", 255), int) or doc.get("brightness_scale", 255) < 1:
            problems.append(f"{topic}: brightness_scale must be a whole number >= 1")
        if doc.get("on_command_type", "last") not in ("first", "last", "brightness"):
            problems.append(f"{topic}: on_command_type must be first, last or brightness")
    if component == "sensor":
        if doc.get("state_class") not in (None, "measurement", "total", "total_increasing"):
            problems.append(f"{topic}: bad state_class")
        if doc.get("device_class") == "timestamp" and ("unit_of_measurement" in doc or "state_class" in doc):
            problems.append(f"{topic}: a timestamp sensor takes neither unit nor state_class")
    return problems


# --------------------------------------------------------------------------- Home Assistant's side, simulated

def render_value(template: str | None, payload: bytes | str) -> str:
    """A value template as HA renders it on an incoming message (``value``, ``value_json``)."""
    text = payload.decode() if isinstance(payload, bytes) else payload
    if template is None:
        return text
    variables: dict[str, Any] = {"value": text}
    try:
        variables["value_json"] = json.loads(text)
    except ValueError:
        pass
    return ENV.from_string(template).render(variables).strip()


def ha_brightness_command(doc: dict[str, Any], brightness: int) -> str:
    """What HA's basic light publishes on brightness_command_topic for a brightness 1..255."""
    scale = doc.get("brightness_scale", 255)
    device_value = max(min(round(brightness / 255 * scale), scale), 1)
    template = doc.get("brightness_command_template")
    return ENV.from_string(template).render(value=device_value) if template else str(device_value)


def ha_brightness_state(doc: dict[str, Any], payload: bytes | str) -> int | None:
    """HA's light brightness (0..255) after a message on brightness_state_topic; None when ignored."""
    text = render_value(doc.get("brightness_value_template"), payload)
    if not text:
        return None
    value = float(text)
    if value == 0:
        return None  # HA ignores a zero brightness: the on/off state comes from state_topic
    return min(round(value / doc.get("brightness_scale", 255) * 255), 255)


def ingress_accepts(payload: str, kind: str) -> bool:
    """The agent's reading of a set payload (ingress._handle_set + gpio.normalize_value)."""
    from edge_agent.config import DeviceSpec
    from edge_agent.device.actions.gpio import normalize_value, set_payload_value
    from edge_agent.errors import EdgeAgentError

    try:
        normalize_value("gpio.set", DeviceSpec("d", kind, 1), set_payload_value(payload))
    except EdgeAgentError:
        return False
    return True


# --------------------------------------------------------------------------- unit tests

RAW: dict[str, Any] = {
    "device": {"id": "porch", "groups": ["garden"]},
    "location": {"latitude": 41.0082, "longitude": 28.9784, "timezone": "Europe/Istanbul"},
    "mqtt": {"topic_prefix": "site/edge", "discovery_prefix": "hass"},
    "gpio": {"pin_factory": "mock"},
    "devices": {
        "porch_light": {"kind": "output", "pin": 17},
        "dimmer": {"kind": "pwm", "pin": 18},
        "door": {"kind": "input", "pin": 27},
    },
}


def _settings(raw: dict[str, Any] = RAW, **changes: Any) -> Any:
    doc = json.loads(json.dumps(raw))
    for key, value in changes.items():
        doc[key] = value
    return parse_settings(doc)


def _by_component(payloads: dict[str, dict[str, Any]]) -> dict[str, list[tuple[str, dict[str, Any]]]]:
    out: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for topic, doc in payloads.items():
        out.setdefault(topic.split("/")[-4], []).append((topic, doc))
    return out


def test_every_entity_has_what_home_assistant_requires():
    """Every platform's required fields, device and origin blocks, valid topics, unique ids."""
    payloads = discovery_payloads(_settings())
    problems = [p for topic, doc in payloads.items() for p in ha_problems(topic, doc)]
    assert problems == []
    comps = _by_component(payloads)
    assert {k: len(v) for k, v in comps.items()} == {"switch": 1, "light": 1, "binary_sensor": 1, "sensor": 4, "button": 1}
    unique = [doc["unique_id"] for doc in payloads.values()]
    assert len(set(unique)) == len(unique)
    entity_ids = [doc["default_entity_id"] for doc in payloads.values()]
    assert len(set(entity_ids)) == len(entity_ids)
    for topic, doc in payloads.items():
        assert topic.startswith("hass/") and "/edge-agent-porch/" in topic
        assert doc["device"]["identifiers"] == ["edge-agent-porch"]
        assert doc["device"]["manufacturer"] == "edge-agent" and doc["device"]["name"] == "porch"
        assert doc["origin"]["name"] == "edge-agent"
    # the JSON on the wire is the same documents
    assert {t: json.loads(p) for t, p in discovery_messages(_settings()).items()} == payloads


def test_the_checker_catches_what_home_assistant_rejects():
    """The schema check above is not vacuous: each broken variant is reported."""
    payloads = discovery_payloads(_settings())
    topic, good = next((t, d) for t, d in payloads.items() if "/switch/" in t)
    assert ha_problems(topic, good) == []
    broken = [
        {k: v for k, v in good.items() if k != "command_topic"},
        {**good, "command_topic": "edge/porch/gpio/+/set"},
        {**good, "state_topic": "edge/#/porch"},
        {**good, "device": {"name": "porch", "manufacturer": "x", "model": "y", "sw_version": "1"}},
        {**good, "origin": {"sw_version": "1"}},
        {**good, "qos": 0},
        {**good, "default_entity_id": "light.porch_porch_light"},
        {**good, "availability": [{"topic": "x"}]},
        {**good, "value_template": "{{ value_json.x "},
        {k: v for k, v in good.items() if k != "unique_id"},
    ]
    for doc in broken:
        assert ha_problems(topic, doc), doc
    assert ha_problems(topic.replace("/config", "/cfg"), good)
    sensor_topic, sensor = next((t, d) for t, d in payloads.items() if t.endswith("/next_sunset/config"))
    assert ha_problems(sensor_topic, {**sensor, "state_class": "measurement"})
    assert ha_problems(sensor_topic, {k: v for k, v in sensor.items() if k != "state_topic"})


def test_topics_are_the_ones_the_agent_publishes_and_obeys():
    """Command topics route to what the agent obeys; state topics are what it publishes."""
    s = _settings()
    topics = Topics(s.mqtt.topic_prefix, s.device_id, s.groups, s.mqtt.ha_status_topic)
    published = {topics.state, topics.status, *(topics.gpio(name) for name in s.devices)}
    for topic, doc in discovery_payloads(s).items():
        component, obj = topic.split("/")[-4], topic.split("/")[-2]
        assert doc["availability_topic"] == topics.status
        for key in SUBSCRIBE_TOPICS & doc.keys():
            assert doc[key] in published, (topic, key, doc[key])
        for key in PUBLISH_TOPICS & doc.keys():
            route = topics.route(doc[key])
            if component == "button":
                assert route == ("cmd", "agent.ping")
            else:
                assert route == ("set", obj.removeprefix("gpio_")), (topic, key, doc[key])
        if obj.startswith("gpio_"):
            name = obj.removeprefix("gpio_")
            assert doc["state_topic"] == topics.gpio(name)
            kind = s.devices[name].kind
            assert component == {"output": "switch", "pwm": "light", "input": "binary_sensor"}[kind]


def test_switch_payloads_are_what_ingress_takes():
    [(_, doc)] = _by_component(discovery_payloads(_settings()))["switch"]
    assert ingress_accepts(doc["payload_on"], "output") and ingress_accepts(doc["payload_off"], "output")
    # what the agent publishes on the state topic (MqttLink.gpio_changed: "on".upper())
    assert doc.get("state_on", doc["payload_on"]) == "ON" and doc.get("state_off", doc["payload_off"]) == "OFF"


def test_light_brightness_round_trips_every_level():
    """Every HA brightness 1..255 becomes a 0..1 level the agent accepts, and reads back as the same brightness."""
    [(_, doc)] = _by_component(discovery_payloads(_settings()))["light"]
    assert doc["brightness_command_topic"] == doc["command_topic"]
    assert doc["on_command_type"] == "brightness"  # turning on sends only the level, never "ON" (= full power)
    assert ingress_accepts(doc["payload_off"], "pwm")
    for brightness in range(1, 256):
        sent = ha_brightness_command(doc, brightness)
        assert ingress_accepts(sent, "pwm"), sent
        level = float(sent)
        assert 0 < level <= 1
        # the agent stores the level rounded to 4 places (Hardware.read) and publishes it with :g
        published = f"{round(level, 4):g}"
        assert render_value(doc["state_value_template"], published) == doc["payload_on"]
        assert ha_brightness_state(doc, published) == brightness, (brightness, sent, published)
    assert ha_brightness_command(doc, 255) in ("1", "1.0")
    assert render_value(doc["state_value_template"], "0") == doc["payload_off"]
    assert ha_brightness_state(doc, "0") is None
    # the agent may also report a plain ON/OFF-style level after `gpio.set on/off`
    assert render_value(doc["state_value_template"], "1") == "ON"


def test_binary_sensor_reads_the_input_state():
    [(_, doc)] = _by_component(discovery_payloads(_settings()))["binary_sensor"]
    assert (doc["payload_on"], doc["payload_off"]) == ("ON", "OFF")
    assert "command_topic" not in doc


def test_sensor_templates_read_the_state_document():
    sensors = {t.split("/")[-2]: d for t, d in _by_component(discovery_payloads(_settings()))["sensor"]}
    state = {"device": "porch", "version": "0.1.0", "uptime_s": 12.5, "queue": 3, "outbox": 7, "outbox_oldest_s": 1.5,
             "clock_synchronized": True, "next_jobs": [{"job": "porch-on", "at": "2025-06-01T20:21:00+03:00"}]}
    assert render_value(sensors["queue"]["value_template"], json.dumps(state)) == "3"
    assert render_value(sensors["outbox"]["value_template"], json.dumps(state)) == "7"
    sunset = sensors["next_sunset"]
    assert sunset["device_class"] == "timestamp"
    # until the state carries next_sunset (or when there is none): "None", which HA shows as unknown
    assert render_value(sunset["value_template"], json.dumps(state)) == "None"
    assert render_value(sunset["value_template"], json.dumps({**state, "next_sunset": None})) == "None"
    at = "2025-06-01T20:36:12+03:00"
    rendered = render_value(sunset["value_template"], json.dumps({**state, "next_sunset": at}))
    assert datetime.fromisoformat(rendered).utcoffset() is not None and rendered == at
    err = sensors["last_error"]
    assert render_value(err["value_template"], json.dumps(state)) == "none"
    assert render_value(err["value_template"], json.dumps({**state, "last_error": None})) == "none"
    e = {"id": "c9", "action": "http.request", "type": "network", "message": "connection refused", "at": "2025-06-01T20:00:00+03:00"}
    assert render_value(err["value_template"], json.dumps({**state, "last_error": e})) == "http.request: connection refused"
    assert json.loads(render_value(err["json_attributes_template"], json.dumps({**state, "last_error": e}))) == e
    assert json.loads(render_value(err["json_attributes_template"], json.dumps(state))) == {}
    long = {**e, "message": "x" * 1000}
    assert len(render_value(err["value_template"], json.dumps({**state, "last_error": long}))) == 255  # HA's state limit
    assert render_value(err["value_template"], json.dumps({**state, "last_error": "plain text"})) == "plain text"
    # the state document's own shape (MqttLink.state_document): an expired command has no message
    expired = {"action": "agent.ping", "type": "expired", "message": None, "at": 1780000000.5}
    assert render_value(err["value_template"], json.dumps({**state, "last_error": expired})) == "agent.ping: expired"


def test_no_sunset_sensor_without_a_location():
    raw = {k: v for k, v in RAW.items() if k != "location"}
    objects = {t.split("/")[-2] for t in discovery_payloads(parse_settings(raw))}
    assert "next_sunset" not in objects and {"queue", "outbox", "last_error", "ping"} <= objects


def test_button_payload_is_a_command_the_agent_accepts():
    from edge_agent.device.commands import parse_payload

    [(_, doc)] = _by_component(discovery_payloads(_settings()))["button"]
    assert doc["command_topic"].endswith("/cmd/agent.ping")
    assert parse_payload(doc["payload_press"].encode(), max_size=65536) == (None, {}, None)


def test_nothing_without_mqtt():
    raw = {k: v for k, v in RAW.items() if k != "mqtt"}
    assert discovery_messages(parse_settings(raw)) == {}


def _pending(store: Store) -> list[tuple[str, bytes, bool]]:
    return [(m.topic, m.payload, m.retain) for m in Outbox(store).pending(0, 10000)]


def _states(settings: Any) -> set[str]:
    topics = Topics(settings.mqtt.topic_prefix, settings.device_id, settings.groups, settings.mqtt.ha_status_topic)
    return {topics.gpio(name) for name in settings.devices}


def test_announce_queues_retained_and_clears_what_left_the_config(tmp_path: Path):
    """Discovery configs no longer announced, and the retained GPIO states of devices no longer
    configured, are cleared (empty retained); the configured devices' states are left to the link."""
    store = Store(str(tmp_path / "agent.db"))
    outbox = Outbox(store)
    s1 = _settings()
    assert announce(s1, store, outbox)
    first = _pending(store)
    assert {t for t, _, _ in first} == set(discovery_messages(s1)) and all(r for _, _, r in first)
    # announcing again replaces the unsent rows instead of piling up (coalesce)
    assert announce(s1, store, outbox)
    assert len(_pending(store)) == len(first)
    assert json.loads(store.get_meta(META_KEY)) == sorted(set(discovery_messages(s1)) | _states(s1))
    # the door leaves, the dimmer becomes a plain output: both old topics are cleared
    devices = {"porch_light": {"kind": "output", "pin": 17}, "dimmer": {"kind": "output", "pin": 18}}
    s2 = _settings(devices=devices)
    assert announce(s2, store, outbox)
    rows = {t: p for t, p, r in _pending(store) if r}
    gone = set(discovery_messages(s1)) - set(discovery_messages(s2))
    assert gone == {"hass/binary_sensor/edge-agent-porch/gpio_door/config", "hass/light/edge-agent-porch/gpio_dimmer/config"}
    assert all(rows[t] == b"" for t in gone)
    assert "hass/switch/edge-agent-porch/gpio_dimmer/config" in rows
    assert rows["site/edge/porch/gpio/door"] == b""  # the door's retained state goes too
    assert not {"site/edge/porch/gpio/porch_light", "site/edge/porch/gpio/dimmer"} & rows.keys()
    assert json.loads(store.get_meta(META_KEY)) == sorted(set(discovery_messages(s2)) | _states(s2))
    # a changed discovery prefix moves everything: the old topics are all cleared
    s3 = _settings(mqtt={"topic_prefix": "site/edge", "discovery_prefix": "ha2"}, devices=devices)
    assert announce(s3, store, outbox)
    rows = {t: p for t, p, r in _pending(store)}
    assert all(rows[t] == b"" for t in discovery_messages(s2))
    assert all(rows[t] for t in discovery_messages(s3))
    # with discovery off the configs are cleared, and a device that leaves still loses its state
    s4 = _settings(mqtt={"topic_prefix": "site/edge", "discovery": False}, devices={"dimmer": devices["dimmer"]})
    assert announce(s4, store, outbox)
    rows = {t: p for t, p, r in _pending(store)}
    assert all(rows[t] == b"" for t in discovery_messages(s3))
    assert rows["site/edge/porch/gpio/porch_light"] == b"" and "site/edge/porch/gpio/dimmer" not in rows
    assert json.loads(store.get_meta(META_KEY)) == ["site/edge/porch/gpio/dimmer"]
    store.close()


def test_announce_never_raises(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    class Broken:
        def transaction(self) -> Any:
            raise StorageError("disk I/O error")

    assert announce(_settings(), Broken(), None) is False
    assert "disk I/O error" in caplog.text


# --------------------------------------------------------------------------- against a real broker and daemon

def _config(folder: Path, port: int, tag: str, *, door: bool = True) -> Path:
    """The daemon's config: an output, a PWM output and (unless told) an input, discovery under ha<tag>,
    Home Assistant's birth on hb<tag>/status."""
    devices = {name: spec for name, spec in LAMP_DIM_DOOR.items() if door or name != "door"}
    return agent_config(folder, device="ha1", mqtt_port=port, prefix=f"t{tag}", devices=devices, location=ISTANBUL,
                        mqtt={"discovery": True, "discovery_prefix": f"ha{tag}", "ha_status_topic": f"hb{tag}/status"})


def _retained_configs(listener_factory: Any, port: int, dp: str, count: int) -> dict[str, Any]:
    """The discovery messages the broker holds, as a fresh subscriber (Home Assistant) receives them."""
    fresh = listener_factory(port, [f"{dp}/+/+/+/config"])
    # Only the messages the broker kept count: a message with the retain flag set on
    # delivery to a new subscriber is one the broker held (live ones arrive without it).
    fresh.wait_for(lambda m: m.retain and m.payload != b"", count=count, timeout=15)
    time.sleep(0.3)  # not synchronisation: retained messages arrive together, a pause in which any more would
    with fresh.cond:
        msgs = {m.topic: m for m in fresh.messages if m.retain}
    return {t: json.loads(m.payload) for t, m in msgs.items() if m.payload}


@pytest.mark.slow
def test_discovery_against_a_real_broker(broker, daemon_factory, listener_factory, tmp_path):
    """Captured from the broker: every entity valid for HA, and its topics really obeyed and published."""
    tag = uuid.uuid4().hex[:6]
    p, dp = f"t{tag}", f"ha{tag}"
    d = daemon_factory(_config(tmp_path, broker.port, tag))
    listener = listener_factory(broker.port, [f"{p}/#", f"{dp}/#"])
    d.start()
    listener.wait_for(lambda m: m.topic == f"{p}/ha1/status" and m.payload == b"online")

    listener.wait_for(lambda m: m.topic.startswith(f"{dp}/") and m.topic.endswith("/config"), count=8)
    configs = _retained_configs(listener_factory, broker.port, dp, count=8)
    assert len(configs) == 8
    problems = [pr for topic, doc in configs.items() for pr in ha_problems(topic, doc)]
    assert problems == []
    comps = _by_component(configs)
    assert {k: len(v) for k, v in comps.items()} == {"switch": 1, "light": 1, "binary_sensor": 1, "sensor": 4, "button": 1}

    def last_on(topic: str, pred: Any = lambda m: True, timeout: float = 10) -> Any:
        return listener.wait_for(lambda m: m.topic == topic and pred(m), timeout=timeout)[-1]

    # availability: the status topic says what payload_available says
    for doc in configs.values():
        assert last_on(doc["availability_topic"]).payload.decode() == doc["payload_available"]

    # switch: HA's ON/OFF on command_topic drive the output; state_topic follows
    (_, sw), = comps["switch"]
    for payload, state in ((sw["payload_on"], sw["state_on"]), (sw["payload_off"], sw["state_off"])):
        listener.publish(sw["command_topic"], payload)
        last_on(sw["state_topic"], lambda m, s=state: m.payload.decode() == s)

    # light: HA turning it on at brightness 128 sends a level; the state reads back as ON at 128; OFF turns it off
    (_, light), = comps["light"]
    listener.publish(light["brightness_command_topic"], ha_brightness_command(light, 128))
    msg = last_on(light["brightness_state_topic"], lambda m: ha_brightness_state(light, m.payload) == 128)
    assert render_value(light["state_value_template"], msg.payload) == light["payload_on"]
    listener.publish(light["command_topic"], light["payload_off"])
    msg = last_on(light["state_topic"], lambda m: render_value(light["state_value_template"], m.payload) == light["payload_off"])

    # binary sensor: the input's retained state is one of its payloads
    (_, door), = comps["binary_sensor"]
    assert last_on(door["state_topic"]).payload.decode() in (door["payload_on"], door["payload_off"])

    # sensors: the agent's state document renders to numbers, a timestamp (or unknown) and a text
    sensors = {t.split("/")[-2]: doc for t, doc in comps["sensor"]}
    state = last_on(sensors["queue"]["state_topic"])
    assert int(render_value(sensors["queue"]["value_template"], state.payload)) >= 0
    assert int(render_value(sensors["outbox"]["value_template"], state.payload)) >= 0
    sunset = render_value(sensors["next_sunset"]["value_template"], state.payload)
    assert sunset == "None" or datetime.fromisoformat(sunset).utcoffset() is not None
    assert render_value(sensors["last_error"]["value_template"], state.payload)
    assert datetime.fromisoformat(json.loads(state.payload)["next_sunset"]).utcoffset() is not None

    # last error: a command that expires shows up on the sensor (after the next state message)
    listener.publish(f"{p}/ha1/cmd/agent.ping", {"id": "too-late", "ttl": 1e-6})
    listener.wait_for(lambda m: m.topic == f"{p}/ha1/reply" and json.loads(m.payload).get("id") == "too-late"
                      and json.loads(m.payload)["status"] == "expired")
    listener.publish(f"{p}/ha1/cmd/agent.ping", {"id": "nudge"})  # an accepted command refreshes the state
    err = sensors["last_error"]
    msg = last_on(err["state_topic"], lambda m: render_value(err["value_template"], m.payload).startswith("agent.ping: "))
    attrs = json.loads(render_value(err["json_attributes_template"], msg.payload))
    assert attrs["action"] == "agent.ping" and attrs["type"]

    # button: pressing it runs agent.ping
    (_, button), = comps["button"]
    listener.publish(button["command_topic"], button["payload_press"])
    listener.wait_for(lambda m: m.topic == f"{p}/ha1/reply" and json.loads(m.payload).get("action") == "agent.ping"
                      and json.loads(m.payload)["status"] == "succeeded")

    # Home Assistant's birth message makes the agent announce everything again
    def config_msgs() -> int:
        with listener.cond:
            return sum(1 for m in listener.messages if m.topic.startswith(f"{dp}/") and m.topic.endswith("/config"))

    before = config_msgs()
    listener.publish(f"hb{tag}/status", "online")
    listener.wait_for(lambda m: m.topic.startswith(f"{dp}/") and m.topic.endswith("/config"), count=before + 8)

    # the door leaves the config: after a restart its entity is removed (empty retained payload)
    assert d.terminate() == 0
    door_topic = f"{dp}/binary_sensor/edge-agent-ha1/gpio_door/config"
    _config(tmp_path, broker.port, tag, door=False)
    d.start()
    listener.wait_for(lambda m: m.topic == door_topic and m.payload == b"")
    configs = _retained_configs(listener_factory, broker.port, dp, count=7)
    assert door_topic not in configs and len(configs) == 7
    assert [pr for topic, doc in configs.items() for pr in ha_problems(topic, doc)] == []
    assert d.terminate() == 0
