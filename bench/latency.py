"""Latency: MQTT command -> ``succeeded`` reply for ``gpio.set``, beside a bare MQTT round trip.

The baseline is two paho clients on the same broker, TCP_NODELAY on both, QoS 1
both ways: a requester publishes, a responder echoes on another topic. That is the
floor any MQTT-driven agent stands on. One request in flight at a time, after a
warm-up; bare and command samples alternate.
"""

from __future__ import annotations

import json
import threading
import time
from functools import partial
from typing import Any

from .harness import REPLY_TOPIC, BenchError, MqttClient, Row, cmd_topic, percentile
from .lab import Context, Lab

GOAL_FACTOR = 3.0
FIGURES = ("MQTT gpio.set -> succeeded, p50", "MQTT gpio.set -> succeeded, p99")


class _Waiter:
    """Receive times of replies by key, for a requester that waits for one at a time."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.seen: dict[str, dict[str, float]] = {}

    def note(self, key: str, status: str) -> None:
        now = time.perf_counter()
        with self.cond:
            self.seen.setdefault(key, {})[status] = now
            self.cond.notify_all()

    def wait(self, key: str, status: str, timeout: float = 5.0) -> dict[str, float]:
        with self.cond:
            if not self.cond.wait_for(partial(self._has, key, status), timeout):
                raise BenchError(f"no {status!r} reply for {key} in {timeout} s ({self.seen.get(key)})")
            return self.seen.pop(key)

    def _has(self, key: str, status: str) -> bool:
        got = self.seen.get(key, {})
        return status in got or "failed" in got


def round_trips(port: int, n: int, warmup: int) -> tuple[list[float], list[float], list[float]]:
    """Seconds per bare request/reply and per ``gpio.set`` to ``accepted`` and to ``succeeded``.

    The two kinds alternate, sample by sample, so that the machine's noise falls on both alike.
    """
    waiter = _Waiter()

    def echo(c: Any, u: Any, msg: Any) -> None:
        c.publish("bench/rtt/rep", msg.payload, qos=1)

    def on_message(c: Any, u: Any, msg: Any) -> None:
        if msg.topic == "bench/rtt/rep":
            waiter.note(msg.payload.decode(), "echo")
        else:
            doc = json.loads(msg.payload)
            waiter.note(str(doc.get("id")), doc["status"])

    responder = MqttClient(port, on_message=echo, subscribe=["bench/rtt/req"])
    requester = MqttClient(port, on_message=on_message, subscribe=["bench/rtt/rep", REPLY_TOPIC])
    bare, accepted, succeeded = [], [], []
    try:
        for i in range(warmup + n):
            key = f"rtt-{time.monotonic_ns()}"
            t0 = time.perf_counter()
            requester.publish("bench/rtt/req", key)
            echo_at = waiter.wait(key, "echo")["echo"]
            cid = f"lat-{time.monotonic_ns()}-{i}"
            payload = json.dumps({"id": cid, "args": {"device": "lamp", "value": "on" if i % 2 else "off"}})
            t1 = time.perf_counter()
            requester.publish(cmd_topic("gpio.set"), payload)
            times = waiter.wait(cid, "succeeded")
            if "succeeded" not in times:
                raise BenchError(f"gpio.set over MQTT failed: {times}")
            if i >= warmup:
                bare.append(echo_at - t0)
                succeeded.append(times["succeeded"] - t1)
                if "accepted" in times:
                    accepted.append(times["accepted"] - t1)
    finally:
        requester.close()
        responder.close()
    return bare, accepted, succeeded


def run(ctx: Context, lab: Lab) -> list[Row]:
    n, warmup = ctx.n(2000, 50), ctx.n(100, 10)
    port = lab.broker().port
    lab.daemon()
    ctx.say(f"latency: {n} bare MQTT round trips and {n} gpio.set commands, alternating")
    bare, accepted, edge = round_trips(port, n, warmup)
    ms = 1000.0
    b50, b99 = percentile(bare, 50) * ms, percentile(bare, 99) * ms
    e50, e99 = percentile(edge, 50) * ms, percentile(edge, 99) * ms
    a50 = percentile(accepted, 50) * ms if accepted else None
    base = "bare MQTT req/reply (2 paho clients)"
    return [
        Row("latency", "MQTT gpio.set -> succeeded, p50", e50, b50, "ms", base,
            note=f"n={n}; 'accepted' reply p50 {a50:.2f} ms" if a50 is not None else f"n={n}"),
        Row("latency", "MQTT gpio.set -> succeeded, p99", e99, b99, "ms", base,
            goal=f"<= {GOAL_FACTOR:g}x bare", met=e99 <= GOAL_FACTOR * b99, note=f"n={n}"),
    ]
