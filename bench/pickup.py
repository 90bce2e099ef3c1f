"""Idle pickup: from queueing a command to the task starting, while the runner is idle.

- From another process: ``mark.delay(t0=time.time())`` in a helper process (as the
  CLI or a user script would queue), beside the same call to a plain SqliteHuey task
  with ``huey_consumer`` running. The task reports ``time.time()`` at its start.
  Each runner is idle a random 200-500 ms before each sample, so Huey's polling
  backoff is in the state it would be in on a quiet device; the runners take turns.
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


def _one(lab: Lab, system: str, op: str, tag: str) -> float:
    """Queue one ``op`` (mark, or chain: a task that queues a mark) from the helper; seconds to the mark's start."""
    marks = lab.marks()
    sub = lab.edge_submitter() if system == "edge" else lab.huey_submitter()
    sub.call(op=op, system=system, port=marks.port, tag=tag)
    (_, t0, t1, _), = marks.wait(1, 30)
    return t1 - t0


def _one_mqtt(lab: Lab, client: MqttClient) -> float:
    marks = lab.marks()
    payload = json.dumps({"id": f"pick-{time.monotonic_ns()}", "args": {"t0": time.time(), "port": marks.port}})
    client.publish(cmd_topic("mark"), payload)
    (_, t0, t1, _), = marks.wait(1, 30)
    return t1 - t0


def idle_samples(lab: Lab, n: int, rng: random.Random) -> dict[str, list[float]]:
    """Huey, edge-agent from another process, edge-agent over MQTT, in turn.

    The gaps are drawn so that each runner sits idle 200-500 ms between its samples;
    taking turns spreads the machine's noise over all three alike.
    """
    out: dict[str, list[float]] = {"huey": [], "edge": [], "mqtt": []}
    client = MqttClient(lab.broker().port)
    try:
        for i in range(n + 1):  # the first round warms up
            got = {"huey": _one(lab, "huey", "mark", str(i))}
            time.sleep(rng.uniform(0.1, 0.25))
            got["edge"] = _one(lab, "edge", "mark", str(i))
            time.sleep(rng.uniform(0.05, 0.1))
            got["mqtt"] = _one_mqtt(lab, client)
            time.sleep(rng.uniform(0.05, 0.15))
            if i:
                for k, v in got.items():
                    out[k].append(v)
    finally:
        client.close()
    return out


def chain_samples(lab: Lab, n: int, rng: random.Random) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"huey": [], "edge": []}
    for i in range(n):
        for system in ("huey", "edge"):
            time.sleep(rng.uniform(0.05, 0.1))
            out[system].append(_one(lab, system, "chain", str(i)))
    return out


def run(ctx: Context, lab: Lab) -> list[Row]:
    n = ctx.n(150, 10)
    rng = random.Random(7)
    lab.daemon()
    lab.huey()
    ctx.say(f"idle pickup: {n} rounds of plain Huey, edge-agent .delay() and MQTT, each idle 200-500 ms before")
    idle = idle_samples(lab, n, rng)
    ctx.say(f"idle pickup: {n} in-process fan-outs each")
    chain = chain_samples(lab, n, rng)
    edge, huey, mqtt = idle["edge"], idle["huey"], idle["mqtt"]
    edge_chain, huey_chain = chain["edge"], chain["huey"]
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
