"""The operator's programs outlive a broker restart: the fleet client connects again by the one reconnect
policy (edge_agent/broker.py), subscribes again, and an event stream asks the devices for what it missed."""

from __future__ import annotations

import json
import threading
from typing import Any

from bench.harness import wait_until
from edge_agent.config import MqttSettings
from edge_agent.fleet.client import FleetClient
from edge_agent.fleet.stream import EventStream


def _event(seq: int) -> dict[str, Any]:
    return {"seq": seq, "device": "porch", "event": "started", "id": f"c{seq}", "action": "agent.ping", "ts": 1.0}


def test_a_follow_outlives_a_broker_restart(own_broker: Any, monkeypatch: Any) -> None:
    """Events 1-2, the broker restarts, event 4 (3 never reached the follower): the client is back within the
    policy's delays, its subscriptions too, and the stream fills 3 from the device's history."""
    # The stream asks for what it missed as soon as it is back, maybe before the simulated device has
    # subscribed again: that request is lost, and asked again after HISTORY_TIMEOUT.
    monkeypatch.setattr(EventStream, "HISTORY_TIMEOUT", 1.0)
    cfg = MqttSettings(host="127.0.0.1", port=own_broker.port)
    device = FleetClient(cfg, client_id="sim-porch")  # plays the device: publishes events, answers agent.history
    got: list[int] = []
    kept: list[dict[str, Any]] = []  # the device's events table

    def emit(seq: int, publish: bool = True) -> None:
        kept.append(_event(seq))
        if publish:
            device.publish("edge/porch/events", _event(seq))
    reconnects, device_back = threading.Event(), threading.Event()

    def answer(msg: Any) -> None:
        if msg.topic == "edge/porch/cmd/agent.history":
            doc = json.loads(msg.payload)
            after = doc["args"]["after"]
            events = [ev for ev in list(kept) if ev["seq"] > after]
            device.publish_nowait("edge/porch/reply", {"id": doc["id"], "status": "succeeded", "result": {
                "device": "porch", "events": events, "next": events[-1]["seq"] if events else after, "more": False,
                "oldest": 1, "last": len(kept)}})

    with device, FleetClient(cfg, client_id="follower") as follower:
        device.on_message(answer)
        device.on_reconnect(device_back.set)
        device.subscribe(["edge/porch/cmd/+"])
        follower.on_reconnect(reconnects.set)
        stream = EventStream(follower, lambda doc: got.append(doc["seq"]), devices=["porch"])
        stream.start()
        try:
            for seq in (1, 2):
                emit(seq)
            wait_until(lambda: got == [1, 2], 10)
            own_broker.stop()
            emit(3, publish=False)  # while the broker is away: never heard live
            own_broker.start()
            assert reconnects.wait(20), "the follower did not connect again"
            assert device_back.wait(20), "the device did not connect again"
            device.subscribe(["edge/porch/cmd/+"])  # (waits for the SUBACK of the subscription made again)
            emit(4)
            wait_until(lambda: got == [1, 2, 3, 4], 20, message=lambda: f"got {got}")
        finally:
            stream.stop()
    assert stream.lost == {} and stream.fills >= 1
