"""The MQTT link against a real mosquitto: round trips, groups, HA-style set, MQTT 5 correlation."""

from __future__ import annotations

import json
import uuid

import pytest

from tests.configs import LAMP_DIM_DOOR, agent_config
from tests.conftest import ROOT


@pytest.fixture
def agent(broker, daemon_factory, listener_factory, tmp_path):
    prefix = f"t{uuid.uuid4().hex[:6]}"
    d = daemon_factory(agent_config(tmp_path, device="dev1", groups=["garden"], mqtt_port=broker.port, prefix=prefix,
                                    devices=LAMP_DIM_DOOR, tasks="example_tasks", task_paths=[ROOT / "config"]))
    listener = listener_factory(broker.port, [f"{prefix}/#"])
    d.start()
    listener.wait_for(lambda m: m.topic == f"{prefix}/dev1/status" and m.payload == b"online")
    return d, listener, prefix


def _final(listener, cid, timeout=10.0):
    msgs = listener.wait_for(lambda m: m.topic.endswith("/reply") and json.loads(m.payload).get("id") == cid
                             and json.loads(m.payload)["status"] not in ("accepted",), timeout=timeout)
    return json.loads(msgs[0].payload)


def test_gpio_set_round_trip(agent):
    """A gpio.set command is accepted, succeeds, and the retained device state follows."""
    _, listener, p = agent
    listener.publish(f"{p}/dev1/cmd/gpio.set", {"id": "c1", "args": {"device": "lamp", "value": "on"}})
    reply = _final(listener, "c1")
    assert reply["status"] == "succeeded" and reply["result"] == {"device": "lamp", "value": "on"}
    statuses = [r["status"] for r in listener.replies("c1")]
    assert statuses == ["accepted", "succeeded"]
    listener.wait_for(lambda m: m.topic == f"{p}/dev1/gpio/lamp" and m.payload == b"ON")


def test_each_builtin_and_user_task(agent):
    """gpio.read, gpio.pulse, agent.ping and a user task all answer over MQTT."""
    _, listener, p = agent
    listener.publish(f"{p}/dev1/cmd/agent.ping", {"id": "p1"})
    assert _final(listener, "p1")["result"]["device"] == "dev1"
    listener.publish(f"{p}/dev1/cmd/gpio.read", {"id": "r1", "args": {"device": "door"}})
    assert _final(listener, "r1")["result"] == {"device": "door", "value": "off"}
    listener.publish(f"{p}/dev1/cmd/water", {"id": "w1", "args": {"zone": "a", "minutes": 2}})
    assert _final(listener, "w1")["result"] == {"zone": "a", "minutes": 2.0}
    listener.publish(f"{p}/dev1/cmd/gpio.pulse", {"id": "u1", "args": {"device": "lamp", "seconds": 0.3}})
    assert _final(listener, "u1")["status"] == "succeeded"
    listener.wait_for(lambda m: m.topic == f"{p}/dev1/gpio/lamp" and m.payload == b"OFF", timeout=5)
    assert _final(listener, "u1/off")["result"]["value"] == "off"


def test_group_and_ha_set(agent):
    """A group command is obeyed; a Home Assistant style set drives the output."""
    _, listener, p = agent
    listener.publish(f"{p}/group/garden/cmd/gpio.set", {"id": "g1", "args": {"device": "dim", "value": 0.5}})
    assert _final(listener, "g1")["result"] == {"device": "dim", "value": 0.5}
    listener.publish(f"{p}/dev1/gpio/lamp/set", "ON")
    listener.wait_for(lambda m: m.topic == f"{p}/dev1/gpio/lamp" and m.payload == b"ON")


def test_rejections_and_duplicates(agent):
    """Bad input is rejected with a reason; a repeated id gets the stored outcome marked duplicate."""
    _, listener, p = agent
    listener.publish(f"{p}/dev1/cmd/nope", {"id": "x1"})
    r = _final(listener, "x1")
    assert r["status"] == "rejected" and r["error"]["type"] == "unknown_action"
    listener.publish(f"{p}/dev1/cmd/gpio.set", {"id": "x2", "args": {"device": "lamp", "value": 7}})
    r = _final(listener, "x2")
    assert r["status"] == "rejected" and "value" in r["error"]["message"]
    listener.publish(f"{p}/dev1/cmd/gpio.set", b'{"id": "x3", "args": ')
    listener.publish(f"{p}/dev1/cmd/agent.ping", {"id": "dup"})
    first = _final(listener, "dup")
    listener.publish(f"{p}/dev1/cmd/agent.ping", {"id": "dup"})
    listener.wait_for(lambda m: m.topic.endswith("/reply") and json.loads(m.payload).get("duplicate"))
    again = next(r for r in listener.replies("dup") if r.get("duplicate"))
    assert again["status"] == "succeeded" and again["result"] == first["result"]


def test_mqtt5_response_topic_and_correlation(agent):
    """MQTT 5 ResponseTopic and CorrelationData are honoured on the reply."""
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    _, listener, p = agent
    props = Properties(PacketTypes.PUBLISH)
    props.ResponseTopic = f"{p}/answers/me"
    props.CorrelationData = b"\x01\x02corr"
    listener.publish(f"{p}/dev1/cmd/agent.ping", {"id": "m5"}, properties=props)
    msgs = listener.wait_for(lambda m: m.topic == f"{p}/answers/me" and json.loads(m.payload)["status"] == "succeeded")
    assert msgs[0].properties.CorrelationData == b"\x01\x02corr"
