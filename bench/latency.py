"""Latency: MQTT command -> ``succeeded`` reply for ``gpio.set``, beside a bare MQTT round trip.

The baseline is two paho clients on the same broker, TCP_NODELAY on both, QoS 1
both ways: a requester publishes, a responder echoes on another topic. That is the
floor any MQTT-driven agent stands on. Samples are sequential (one command in
flight), after a warm-up.
"""

from __future__ import annotations

import json
import threading
import time
from functools import partial
from typing import Any

from .harness import REPLY_TOPIC, BenchError, MqttClient, Row, cmd_topic, percentile
from .lab import Context, Lab

GOAL_FACTOR = 4.0
FIGURES = ("MQTT gpio.set -> succeeded, p50", "MQTT gpio.set -> succeeded, p99")


def bare_round_trips(port: int, n: int, warmup: int) -> list[float]:
    """Seconds per request/reply between two plain paho clients."""
    got = threading.Event()

    def echo(c: Any, u: Any, msg: Any) -> None:
        c.publish("bench/rtt/rep", msg.payload, qos=1)

    def on_reply(c: Any, u: Any, msg: Any) -> None:
        got.set()

    responder = MqttClient(port, on_message=echo, subscribe=["bench/rtt/req"])
    requester = MqttClient(port, on_message=on_reply, subscribe=["bench/rtt/rep"])
    out = []
    try:
        for i in range(warmup + n):
            got.clear()
            t0 = time.perf_counter()
            requester.publish("bench/rtt/req", b"%d" % i)
            if not got.wait(5):
                raise BenchError("bare MQTT round trip: no reply in 5 s")
            if i >= warmup:
                out.append(time.perf_counter() - t0)
    finally:
        requester.close()
        responder.close()
    return out


def _final(seen: dict[str, dict[str, float]], cid: str) -> bool:
    return "succeeded" in seen.get(cid, {}) or "failed" in seen.get(cid, {})


def command_round_trips(port: int, n: int, warmup: int) -> tuple[list[float], list[float]]:
    """Seconds from publishing ``gpio.set`` to its ``accepted`` and its ``succeeded`` reply."""
    cond = threading.Condition()
    seen: dict[str, dict[str, float]] = {}

    def on_reply(c: Any, u: Any, msg: Any) -> None:
        now = time.perf_counter()
        doc = json.loads(msg.payload)
        with cond:
            seen.setdefault(doc.get("id") or "", {})[doc["status"]] = now
            cond.notify_all()

    client = MqttClient(port, on_message=on_reply, subscribe=[REPLY_TOPIC])
    accepted, succeeded = [], []
    try:
        for i in range(warmup + n):
            cid = f"lat-{time.monotonic_ns()}-{i}"
            payload = json.dumps({"id": cid, "args": {"device": "lamp", "value": "on" if i % 2 else "off"}})
            t0 = time.perf_counter()
            client.publish(cmd_topic("gpio.set"), payload)
            with cond:
                ok = cond.wait_for(partial(_final, seen, cid), 5)
                times = seen.pop(cid, {})
            if not ok or "succeeded" not in times:
                raise BenchError(f"gpio.set over MQTT: no succeeded reply for {cid} in 5 s ({times})")
            if i >= warmup:
                succeeded.append(times["succeeded"] - t0)
                if "accepted" in times:
                    accepted.append(times["accepted"] - t0)
    finally:
        client.close()
    return accepted, succeeded


def run(ctx: Context, lab: Lab) -> list[Row]:
    n, warmup = ctx.n(1000, 50), ctx.n(100, 10)
    port = lab.broker().port
    lab.daemon()
    ctx.say(f"latency: {n} bare MQTT round trips, {n} gpio.set commands")
    bare = bare_round_trips(port, n, warmup)
    accepted, edge = command_round_trips(port, n, warmup)
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
