"""What Home Assistant (and `fleet ls`) see of a device, against the real broker and daemon:
the current states before ``online`` after a crash, a ``state`` document that follows the
queue and the failures, HA's own birth topic, and no retained state left by a removed device."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from bench.harness import wait_until
from edge_agent.config import parse_settings
from edge_agent.errors import ConfigError
from tests.configs import LAMP, LAMP_DIM_DOOR, agent_config


def _final(listener: Any, topic: str, cid: str, timeout: float = 10.0) -> dict[str, Any]:
    msgs = listener.wait_for(lambda m: m.topic == topic and json.loads(m.payload).get("id") == cid
                             and json.loads(m.payload)["status"] != "accepted", timeout=timeout)
    return json.loads(msgs[0].payload)


def _live(listener: Any) -> list[Any]:
    """The messages published while the listener was subscribed (not the broker's retained copies)."""
    with listener.cond:
        return [m for m in listener.messages if not m.retain]


@pytest.mark.slow
def test_after_a_kill_the_current_states_go_out_before_online(broker, daemon_factory, listener_factory, tmp_path):
    """kill -9 with the lamp on: the restarted agent (lamp back at its initial off) publishes
    the lamp's OFF and its `state` before `online`, so HA never shows the pre-crash ON as live."""
    p = f"hs{uuid.uuid4().hex[:6]}"
    d = daemon_factory(agent_config(tmp_path, device="dev", mqtt_port=broker.port, prefix=p, devices=LAMP))
    watch = listener_factory(broker.port, [f"{p}/dev/#"])
    d.start()
    watch.wait_for(lambda m: m.topic == f"{p}/dev/status" and m.payload == b"online")
    watch.publish(f"{p}/dev/cmd/gpio.set", {"id": "on1", "args": {"device": "lamp", "value": "on"}})
    assert _final(watch, f"{p}/dev/reply", "on1")["status"] == "succeeded"
    watch.wait_for(lambda m: m.topic == f"{p}/dev/gpio/lamp" and m.payload == b"ON")
    d.kill()
    watch.wait_for(lambda m: m.topic == f"{p}/dev/status" and m.payload == b"offline")  # the last will

    ha = listener_factory(broker.port, [f"{p}/dev/status", f"{p}/dev/gpio/+", f"{p}/dev/state"])
    ha.wait_for(lambda m: m.topic == f"{p}/dev/gpio/lamp" and m.retain and m.payload == b"ON")
    d.start()
    ha.wait_for(lambda m: m.topic == f"{p}/dev/status" and m.payload == b"online" and not m.retain)
    seen = [(m.topic.removeprefix(f"{p}/dev/"), m.payload) for m in _live(ha)]
    online = seen.index(("status", b"online"))
    print("live messages after the restart:", [(t, v[:40]) for t, v in seen])
    assert ("gpio/lamp", b"OFF") in seen[:online], seen
    assert "state" in [t for t, _ in seen[:online]], seen
    assert ("gpio/lamp", b"ON") not in seen, seen
    assert d.terminate() == 0


@pytest.mark.slow
def test_state_follows_a_failing_command_and_idle_stays_silent(broker, daemon_factory, listener_factory, tmp_path):
    """With nothing happening no `state` is published; after a command fails, `state` shows
    queue 0 and the failure within ~2 s (it was: queue 1, no error, until the 5-minute refresh)."""
    p = f"hs{uuid.uuid4().hex[:6]}"
    d = daemon_factory(agent_config(tmp_path, device="dev", mqtt_port=broker.port, prefix=p, devices=LAMP,
                                    tasks="qa_tasks"))
    listener = listener_factory(broker.port, [f"{p}/dev/state", f"{p}/dev/reply"])
    d.start()
    listener.wait_for(lambda m: m.topic == f"{p}/dev/state" and json.loads(m.payload)["outbox"] == 0, timeout=5)
    with listener.cond:
        states = sum(1 for m in listener.messages if m.topic.endswith("/state"))
    # Idle: no state message for a while (the periodic refresh is 5 minutes away).
    with pytest.raises(AssertionError):
        listener.wait_for(lambda m: m.topic.endswith("/state"), count=states + 1, timeout=2.5)

    listener.publish(f"{p}/dev/cmd/qa_fail", {"id": "f1", "args": {"reason": "boom"}})
    assert _final(listener, f"{p}/dev/reply", "f1")["status"] == "failed"

    def shows_the_failure(m: Any) -> bool:
        doc = json.loads(m.payload) if m.topic.endswith("/state") else {}
        return doc.get("queue") == 0 and doc.get("outbox") == 0 and (doc.get("last_error") or {}).get("message") == "boom"

    listener.wait_for(shows_the_failure, timeout=3)
    assert d.terminate() == 0


@pytest.mark.slow
def test_state_follows_the_outbox_drain_and_a_gpio_toggle_alone_republishes_none(broker, daemon_factory,
                                                                                listener_factory, tmp_path):
    """The `state` sent at connect counts the outbox not yet delivered; once it drains, `state`
    says 0 (it was: stale until the 5-minute refresh). A GPIO change passes through the outbox
    and is gone before `state` is looked at: no `state` message for it."""
    p = f"hs{uuid.uuid4().hex[:6]}"
    d = daemon_factory(agent_config(tmp_path, device="dev", mqtt_port=broker.port, prefix=p, devices=LAMP))
    listener = listener_factory(broker.port, [f"{p}/dev/state", f"{p}/dev/gpio/+"])
    d.start()
    listener.wait_for(lambda m: m.topic == f"{p}/dev/state" and json.loads(m.payload)["outbox"] == 0, timeout=5)
    with listener.cond:
        states = sum(1 for m in listener.messages if m.topic.endswith("/state"))
    listener.publish(f"{p}/dev/gpio/lamp/set", "ON")  # HA-style: no reply, only the state
    listener.wait_for(lambda m: m.topic == f"{p}/dev/gpio/lamp" and m.payload == b"ON")
    with pytest.raises(AssertionError):
        listener.wait_for(lambda m: m.topic.endswith("/state"), count=states + 1, timeout=2.5)
    assert d.terminate() == 0


def test_ha_status_topic_is_its_own_setting():
    """Default `homeassistant/status` whatever the discovery prefix; a topic with a wildcard is refused."""
    raw: dict[str, Any] = {"device": {"id": "d"}, "mqtt": {"discovery_prefix": "site/ha"}}
    assert parse_settings(raw).mqtt.ha_status_topic == "homeassistant/status"
    raw["mqtt"]["ha_status_topic"] = "site/ha/birth"
    assert parse_settings(raw).mqtt.ha_status_topic == "site/ha/birth"
    for bad in ("ha/#", "ha/+/status", "", "/ha"):
        raw["mqtt"]["ha_status_topic"] = bad
        with pytest.raises(ConfigError, match="ha_status_topic"):
            parse_settings(raw)


def _config(folder: Path, port: int, tag: str, devices: dict[str, Any]) -> Path:
    return agent_config(folder, device="dev", mqtt_port=port, prefix=f"hs{tag}", devices=devices,
                        mqtt={"discovery": True, "discovery_prefix": f"hd{tag}", "ha_status_topic": f"hb{tag}/status"})


def _configs(listener: Any, dp: str) -> int:
    with listener.cond:
        return sum(1 for m in listener.messages if m.topic.startswith(f"{dp}/") and m.topic.endswith("/config"))


@pytest.mark.slow
def test_birth_on_ha_status_topic_and_a_removed_devices_state_cleared(broker, daemon_factory, listener_factory,
                                                                      tmp_path):
    """HA's birth on `ha_status_topic` (not `<discovery prefix>/status`) re-announces; a device
    removed from the config leaves neither its entity nor its retained GPIO state."""
    tag = uuid.uuid4().hex[:6]
    p, dp, birth = f"hs{tag}", f"hd{tag}", f"hb{tag}/status"
    d = daemon_factory(_config(tmp_path, broker.port, tag, LAMP_DIM_DOOR))
    listener = listener_factory(broker.port, [f"{p}/#", f"{dp}/#"])
    d.start()
    listener.wait_for(lambda m: m.topic == f"{p}/dev/status" and m.payload == b"online")
    listener.wait_for(lambda m: m.topic.startswith(f"{dp}/") and m.topic.endswith("/config"), count=7)
    listener.wait_for(lambda m: m.topic == f"{p}/dev/gpio/dim" and m.payload == b"0")

    before = _configs(listener, dp)
    listener.publish(f"{dp}/status", "online")  # not HA's birth topic here: nothing happens
    listener.publish(f"{p}/dev/cmd/agent.ping", {"id": "sync"})
    _final(listener, f"{p}/dev/reply", "sync")  # an announcement would have been queued before this reply
    assert _configs(listener, dp) == before
    listener.publish(birth, "online")
    listener.wait_for(lambda m: m.topic.startswith(f"{dp}/") and m.topic.endswith("/config"), count=before + 7)

    assert d.terminate() == 0
    _config(tmp_path, broker.port, tag, LAMP)  # dim and door leave the config
    d.start()
    for gone in ("dim", "door"):
        listener.wait_for(lambda m, g=gone: m.topic == f"{p}/dev/gpio/{g}" and m.payload == b"" and not m.retain)
    fresh = listener_factory(broker.port, [f"{p}/dev/gpio/+", f"{p}/dev/reply"])
    fresh.publish(f"{p}/dev/cmd/agent.ping", {"id": "sync2"})
    _final(fresh, f"{p}/dev/reply", "sync2")  # comes after the retained messages, on the same connection
    with fresh.cond:
        assert sorted(m.topic for m in fresh.messages if m.retain) == [f"{p}/dev/gpio/lamp"]
    assert d.terminate() == 0


@pytest.mark.slow
def test_states_before_online_ahead_of_a_backlog_and_nothing_twice(own_broker, daemon_factory, listener_factory,
                                                                   tmp_path):
    """A backlog of replies made while the broker was away waits in the outbox across a stop:
    at the next start the lamp's state goes out ahead of it, before `online`; then every reply,
    and none of them (nor the lamp's state) twice."""
    p, n = f"hs{uuid.uuid4().hex[:6]}", 250  # more than the broker's in-flight window (100)
    own_broker.stop()
    d = daemon_factory(agent_config(tmp_path, device="dev", mqtt_port=own_broker.port, prefix=p, devices=LAMP,
                                    tasks="chaos_tasks"))
    d.start()
    users = [f"u{i:03d}" for i in range(n)]
    assert d.cli("send", "chaos_fanout", "--args", json.dumps({"users": users, "fail_first": [],
                                                                "state_dir": str(tmp_path)}), "--id", "fan").returncode == 0
    assert d.cli("send", "gpio.set", "device=lamp", "value=on", "--wait").returncode == 0
    def status() -> dict[str, Any]:
        return json.loads(d.cli("status", "--json").stdout)  # type: ignore[no-any-return]

    def drained_into_the_outbox() -> bool:
        doc = status()
        return doc["queue"]["queued"] + doc["queue"]["running"] == 0 and doc["outbox"]["depth"] >= n + 2

    wait_until(drained_into_the_outbox, 60, interval=0.2, message=lambda: str(status()["queue"]))
    assert d.terminate() == 0  # the lamp goes off; the outbox waits for the next start

    own_broker.start()
    listener = listener_factory(own_broker.port, [f"{p}/dev/#"])
    d.start()
    listener.wait_for(lambda m: m.topic == f"{p}/dev/reply", count=n + 2, timeout=60)
    seen = [(m.topic.removeprefix(f"{p}/dev/"), m.payload) for m in _live(listener)]
    online = seen.index(("status", b"online"))
    assert [v for t, v in seen if t == "gpio/lamp"] == [b"OFF"], seen[:10]
    assert seen.index(("gpio/lamp", b"OFF")) < online and "state" in [t for t, _ in seen[:online]]
    replies = [json.loads(v)["id"] for t, v in seen if t == "reply"]
    assert len(replies) == len(set(replies)) == n + 2
    assert seen.index(("status", b"online")) < min(i for i, (t, _) in enumerate(seen) if t == "reply")
    assert d.terminate() == 0
