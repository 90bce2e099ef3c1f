"""EventStream's bookkeeping, on a fake connection: events in seq order per device, each once; a
jump in seq asks agent.history for the gap; what a device no longer keeps is counted lost."""

from __future__ import annotations

import json
import threading
from typing import Any

from bench.harness import wait_until
from edge_agent.fleet.stream import EventStream


class Msg:
    def __init__(self, topic: str, doc: dict[str, Any]):
        self.topic, self.payload = topic, json.dumps(doc).encode()


class FakeClient:
    prefix = "edge"

    def __init__(self):
        self.handlers: list[Any] = []
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self.cond = threading.Condition()

    def on_message(self, handler):
        self.handlers.append(handler)
        return lambda: self.handlers.remove(handler)

    def on_reconnect(self, handler):
        return lambda: None

    def subscribe(self, topics, qos=1):
        pass

    def publish_nowait(self, topic, payload, qos=1):
        with self.cond:
            self.requests.append((topic, payload))
            self.cond.notify_all()

    def deliver(self, topic: str, doc: dict[str, Any]) -> None:
        for h in list(self.handlers):
            h(Msg(topic, doc))

    def wait_request(self, n: int) -> tuple[str, dict[str, Any]]:
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.requests) >= n, 5), self.requests
            return self.requests[n - 1]


def ev(seq: int, device: str = "porch") -> dict[str, Any]:
    return {"seq": seq, "device": device, "event": "started", "id": f"c{seq}", "action": "agent.ping", "ts": 0.0}


def test_a_jump_in_seq_is_filled_from_history_in_order_once():
    """Live 1, 2, 5, 6 (and 2 again): the stream asks for what came after 2, then gives 1..6 once each."""
    client = FakeClient()
    got: list[int] = []
    stream = EventStream(client, lambda d: got.append(d["seq"]))
    stream.start()
    try:
        for seq in (1, 2, 2, 5, 6):
            client.deliver("edge/porch/events", ev(seq))
        topic, req = client.wait_request(1)
        assert topic == "edge/porch/cmd/agent.history" and req["args"]["after"] == 2
        wait_until(lambda: got == [1, 2])
        client.deliver("edge/porch/reply", {"id": req["id"], "status": "succeeded", "result": {
            "device": "porch", "events": [ev(3), ev(4), ev(5)], "next": 5, "more": False, "oldest": 1, "last": 6}})
        wait_until(lambda: got == [1, 2, 3, 4, 5, 6])
        client.deliver("edge/porch/events", ev(4))  # late duplicate
        client.deliver("edge/porch/events", ev(7))
        wait_until(lambda: got[-1] == 7)
    finally:
        stream.stop()
    assert got == [1, 2, 3, 4, 5, 6, 7] and stream.lost == {} and stream.fills == 1


def test_pages_are_followed_and_what_is_no_longer_kept_is_lost():
    """A resumed stream pages through history while more is true; events pruned on the device are
    counted lost and the stream goes on after them."""
    client = FakeClient()
    got: list[int] = []
    stream = EventStream(client, lambda d: got.append(d["seq"]), positions={"porch": 10})
    stream.start()
    try:
        _, req = client.wait_request(1)
        assert req["args"]["after"] == 10
        # the device keeps only from 14 on: a page of two, more to come
        client.deliver("edge/porch/reply", {"id": req["id"], "status": "succeeded", "result": {
            "events": [ev(14), ev(15)], "next": 15, "more": True, "oldest": 14, "last": 17}})
        _, req2 = client.wait_request(2)
        assert req2["args"]["after"] == 15
        client.deliver("edge/porch/reply", {"id": req2["id"], "status": "succeeded", "result": {
            "events": [ev(16), ev(17)], "next": 17, "more": False, "oldest": 14, "last": 17}})
        wait_until(lambda: got == [14, 15, 16, 17])
    finally:
        stream.stop()
    assert stream.lost == {"porch": 3} and stream.last == {"porch": 17}


def test_a_gap_never_filled_keeps_the_buffer_bounded(monkeypatch):
    """Issue 22, 18: a device that jumps seq and never answers agent.history cannot make the
    stream hold its events without bound: beyond STREAM_BUFFER the gap is counted lost and the
    held events are given. Malformed events (a seq that is not a number, a ts that is not a
    time) are dropped at the boundary."""
    from edge_agent.fleet import stream as fleet

    monkeypatch.setattr(fleet, "STREAM_BUFFER", 50)
    client = FakeClient()
    got: list[int] = []
    stream = EventStream(client, lambda d: got.append(d["seq"]))
    stream.start()
    try:
        client.deliver("edge/porch/events", ev(1))
        client.deliver("edge/porch/events", {**ev(2), "seq": "2"})
        client.deliver("edge/porch/events", {**ev(2), "ts": "yesterday"})
        for seq in range(3, 103):
            client.deliver("edge/porch/events", ev(seq))
        wait_until(lambda: got[-1:] == [102])
        assert got == [1, *range(3, 103)] and stream.lost == {"porch": 1}
        assert stream._buffer["porch"] == {}
    finally:
        stream.stop()


def test_a_history_page_that_says_more_without_moving_on_is_not_asked_again():
    """`more` for ever with nothing new: one request, then the gap is counted lost (before, the
    stream asked again and again as fast as the device answered)."""
    client = FakeClient()
    got: list[int] = []
    stream = EventStream(client, lambda d: got.append(d["seq"]))
    stream.start()
    try:
        client.deliver("edge/porch/events", ev(1))
        client.deliver("edge/porch/events", ev(5))
        _, req = client.wait_request(1)
        assert req["args"]["after"] == 1
        client.deliver("edge/porch/reply", {"id": req["id"], "status": "succeeded", "result": {
            "device": "porch", "events": [], "next": 1, "more": True, "oldest": 1, "last": 5}})
        wait_until(lambda: got == [1, 5])
        assert stream.lost == {"porch": 3} and len(client.requests) == 1
    finally:
        stream.stop()
