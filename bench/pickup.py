"""Idle pickup: from queueing a command to the task starting, while the runner is idle.

- From another process: ``mark.delay(t0=time.time())`` in a helper process (as the
  CLI or a user script would queue), beside the same call to a plain SqliteHuey task
  with ``huey_consumer`` running. The task reports ``time.time()`` at its start.
  Samples are spaced by a random 200-500 ms of idleness, so Huey's polling backoff
  is in the state it would be in on a quiet device.
- In the daemon: a task that queues another with ``.delay()`` (fan-out), beside the
  same in Huey's consumer; and an MQTT command to its task's start.
"""

from __future__ import annotations

import json
import random
import time

from .harness import MqttClient, Row, cmd_topic, percentile
from .lab import Context, Lab

GOAL_MS = 100.0
FIGURES = tuple(f"{label}, {p}" for label in ("other process .delay() -> start", "in-daemon .delay() -> start",
                                                 "MQTT publish -> task start") for p in ("p50", "p99"))


def _idle_samples(ctx: Context, lab: Lab, system: str, n: int, rng: random.Random) -> list[float]:
    marks = lab.marks()
    sub = lab.edge_submitter() if system == "edge" else lab.huey_submitter()
    sub.call(op="mark", system=system, port=marks.port, tag="warm")
    marks.wait(1, 30)
    out = []
    for i in range(n):
        time.sleep(rng.uniform(0.2, 0.5))
        sub.call(op="mark", system=system, port=marks.port, tag=str(i))
        (_, t0, t1, _), = marks.wait(1, 30)
        out.append(t1 - t0)
    return out


def _chain_samples(lab: Lab, system: str, n: int, rng: random.Random) -> list[float]:
    marks = lab.marks()
    sub = lab.edge_submitter() if system == "edge" else lab.huey_submitter()
    out = []
    for i in range(n):
        time.sleep(rng.uniform(0.05, 0.1))
        sub.call(op="chain", system=system, port=marks.port, tag=str(i))
        (_, t0, t1, _), = marks.wait(1, 30)
        out.append(t1 - t0)
    return out


def _mqtt_samples(lab: Lab, n: int, rng: random.Random) -> list[float]:
    marks = lab.marks()
    client = MqttClient(lab.broker().port)
    out = []
    try:
        for i in range(n + 1):
            time.sleep(rng.uniform(0.2, 0.5))
            payload = json.dumps({"id": f"pick-{time.monotonic_ns()}", "args": {"t0": time.time(), "port": marks.port}})
            client.publish(cmd_topic("mark"), payload)
            (_, t0, t1, _), = marks.wait(1, 30)
            if i:
                out.append(t1 - t0)
    finally:
        client.close()
    return out


def run(ctx: Context, lab: Lab) -> list[Row]:
    n = ctx.n(100, 10)
    rng = random.Random(7)
    lab.daemon()
    lab.huey()
    ctx.say(f"idle pickup: {n} samples each from another process (edge-agent, then plain Huey), 200-500 ms apart")
    edge = _idle_samples(ctx, lab, "edge", n, rng)
    huey = _idle_samples(ctx, lab, "huey", n, rng)
    ctx.say(f"idle pickup: {n} in-process fan-outs each, {n} MQTT commands")
    edge_chain = _chain_samples(lab, "edge", n, rng)
    huey_chain = _chain_samples(lab, "huey", n, rng)
    mqtt = _mqtt_samples(lab, n, rng)
    ms = 1000.0
    base = "plain SqliteHuey + huey_consumer"
    rows = []
    for label, e, h, goal in (("other process .delay() -> start", edge, huey, True),
                              ("in-daemon .delay() -> start", edge_chain, huey_chain, False)):
        rows.append(Row("idle pickup", f"{label}, p50", percentile(e, 50) * ms, percentile(h, 50) * ms, "ms", base,
                        note=f"n={n}"))
        e99 = percentile(e, 99) * ms
        rows.append(Row("idle pickup", f"{label}, p99", e99, percentile(h, 99) * ms, "ms", base,
                        goal=f"< {GOAL_MS:g} ms" if goal else "", met=(e99 < GOAL_MS) if goal else None,
                        note=f"n={n}; max {max(e) * ms:.1f} ms (Huey max {max(h) * ms:.1f} ms)"))
    rows.append(Row("idle pickup", "MQTT publish -> task start, p50", percentile(mqtt, 50) * ms, None, "ms",
                    note=f"n={n}; includes the broker hop"))
    m99 = percentile(mqtt, 99) * ms
    rows.append(Row("idle pickup", "MQTT publish -> task start, p99", m99, None, "ms", goal=f"< {GOAL_MS:g} ms",
                    met=m99 < GOAL_MS, note=f"n={n}"))
    return rows
