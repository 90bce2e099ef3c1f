"""Throughput: no-op commands per second, end to end, beside plain SqliteHuey.

- MQTT: N QoS 1 commands with ids published as fast as paho sends them; the clock
  stops at the last final (``succeeded``) reply, so journal, queue, worker and the
  outbox (``accepted`` + ``succeeded`` replies) are all inside.
- ``.delay()``: N calls in another process; the clock stops when the last command
  is finished in the journal.
- Baseline: the same N no-op task calls into plain SqliteHuey from another process
  with ``huey_consumer`` (same worker count) draining at the same time; the clock
  stops at the last task's start.
- The three above run in alternating rounds (``ROUNDS``, each in another order) and each
  rate is all its commands over all its time: the machine's slow spells fall on all three.
- Drain: N no-op commands queued while the runner is stopped, then started; the
  rate from the first task's start to the last one's end, edge-agent (offline
  config) beside plain Huey. This is the queue engine alone, without the callers.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

from .harness import (
    DEVICE,
    PREFIX,
    REPLY_TOPIC,
    BenchError,
    HueyConsumer,
    MqttClient,
    Row,
    Submitter,
    cmd_topic,
    proc_snapshot,
    wait_until,
)
from .lab import Context, Lab
from .scale import drain

DEVICE_TOPIC = f"{PREFIX}/{DEVICE}"

ROUNDS = 3  # alternating rounds of the three throughput runs (see run())
GOAL_MQTT = 1000.0
GOAL_VS_HUEY = 1.2  # MQTT and .delay() commands/s, at least this many times plain Huey's
GOAL_MESSAGES = 2.5  # MQTT messages the daemon publishes per command in a burst, at most
BURST = 1000
FINAL = ("succeeded", "failed", "expired", "rejected")
FIGURES = ("MQTT commands/s with replies", ".delay() commands/s, end to end", "drain of queued commands/s",
           "MQTT messages published per command, burst of 1,000")


def _cpu(lab: Lab) -> float:
    """The daemon's CPU time so far (s, user + system, all threads)."""
    return proc_snapshot(lab.daemon().pid)["cpu_s"]


def mqtt_rate(lab: Lab, n: int) -> dict[str, Any]:
    lab.daemon()
    cpu0 = _cpu(lab)
    port = lab.broker().port
    run_id = f"tp{time.monotonic_ns()}"
    done = threading.Event()
    state = {"final": 0, "bad": 0, "last": 0.0}

    def on_reply(c: Any, u: Any, msg: Any) -> None:
        doc = json.loads(msg.payload)
        if not str(doc.get("id", "")).startswith(run_id) or doc["status"] not in FINAL:
            return
        state["final"] += 1
        if doc["status"] != "succeeded":
            state["bad"] += 1
        if state["final"] >= n:
            state["last"] = time.perf_counter()
            done.set()

    listener = MqttClient(port, on_message=on_reply, subscribe=[REPLY_TOPIC])
    publisher = MqttClient(port, inflight=100)
    try:
        topic = cmd_topic("noop")
        t0 = time.perf_counter()
        for i in range(n):
            publisher.publish(topic, json.dumps({"id": f"{run_id}-{i}", "args": {"i": i}}))
        published = time.perf_counter()
        if not done.wait(60 + n / 100):
            daemon = lab.daemon()
            states = dict(daemon.query("select state, count(*) from commands where id like ? group by 1", (f"{run_id}-%",)))
            waiting = daemon.query("select count(*) from outbox")[0][0]
            raise BenchError(f"MQTT throughput: {state['final']} of {n} final replies; the journal says {states}, "
                             f"{waiting} message(s) wait in the outbox")
    finally:
        publisher.close()
        listener.close()
    if state["bad"]:
        raise BenchError(f"MQTT throughput: {state['bad']} command(s) did not succeed")
    return {"rate": n / (state["last"] - t0), "publish_s": published - t0, "total_s": state["last"] - t0,
            "cpu_us": (_cpu(lab) - cpu0) / n * 1e6}


def messages_per_command(lab: Lab, n: int) -> dict[str, Any]:
    """A burst of ``n`` no-op commands over MQTT: every message the daemon publishes (replies,
    events, state: anything under its topics but its own command topics) until the last final
    reply and the events of every command are in, per command."""
    lab.daemon()
    port = lab.broker().port
    run_id = f"mp{time.monotonic_ns()}"
    counts: dict[str, int] = {}
    state = {"final": 0, "events": 0}
    done = threading.Event()
    want_events = 3 * n if lab.events else 0

    def on_message(c: Any, u: Any, msg: Any) -> None:
        leaf = msg.topic[len(DEVICE_TOPIC) + 1:].split("/")[0]
        if leaf == "cmd":
            return
        counts[leaf] = counts.get(leaf, 0) + 1
        if leaf == "reply":
            doc = json.loads(msg.payload)
            if str(doc.get("id", "")).startswith(run_id) and doc["status"] in FINAL:
                state["final"] += 1
        elif leaf == "events":
            doc = json.loads(msg.payload)
            state["events"] += sum(1 for e in (doc if isinstance(doc, list) else [doc])
                                   if str(e.get("id", "")).startswith(run_id))
        if state["final"] >= n and state["events"] >= want_events:
            done.set()

    daemon = lab.daemon()
    daemon.wait_idle(60)
    _wait_published(daemon)  # what earlier runs left to publish is not counted here
    listener = MqttClient(port, on_message=on_message, subscribe=[f"{DEVICE_TOPIC}/#"])
    publisher = MqttClient(port, inflight=100)
    try:
        topic = cmd_topic("noop")
        for i in range(n):
            publisher.publish(topic, json.dumps({"id": f"{run_id}-{i}", "args": {"i": i}}))
        if not done.wait(60 + n / 100):
            raise BenchError(f"messages per command: {state['final']} of {n} final replies, {state['events']} of "
                             f"{want_events} events")
    finally:
        publisher.close()
        listener.close()
    return {"per_command": sum(counts.values()) / n, "by_topic": {k: v / n for k, v in counts.items()}}


def _wait_published(daemon: Any, timeout: float = 30.0) -> None:
    """Until the outbox is empty and every event is acknowledged (the position, written within 1 s)."""
    def where() -> tuple[int, int, int]:
        """Messages in the outbox, the events acknowledged, the last event."""
        left, = daemon.query("select count(*) from outbox")[0]
        sent = daemon.query("select value from meta where key = 'events_sent'")
        last = daemon.query("select coalesce(max(seq), 0) from events")[0][0]
        return int(left), int(sent[0][0]) if sent else 0, int(last)

    def published() -> bool:
        left, sent, last = where()
        return not left and sent >= last

    wait_until(published, timeout, interval=0.05, message=lambda: "messages per command: {} message(s) still in the outbox, "
               "events sent up to {} of {}".format(*where()))


def delay_rate(lab: Lab, n: int) -> dict[str, Any]:
    daemon = lab.daemon()
    sub = lab.edge_submitter()
    daemon.wait_idle(60)
    before = daemon.query("select coalesce(max(seq), 0) from commands")[0][0]
    cpu0 = _cpu(lab)
    r = sub.call(op="noop", system="edge", n=n)
    daemon.wait_idle(60 + n / 50)
    cpu = _cpu(lab) - cpu0
    count, last = daemon.query("select count(*), max(finished) from commands where seq > ? and action = 'noop'",
                               (before,))[0]
    if count != n:
        raise BenchError(f".delay() throughput: {count} of {n} commands found")
    return {"rate": n / (last - r["start"]), "submit_rate": n / (r["end"] - r["start"]), "total_s": last - r["start"],
            "cpu_us": cpu / n * 1e6}


def huey_rate(lab: Lab, n: int) -> dict[str, Any]:
    lab.huey()
    sub = lab.huey_submitter()
    marks = lab.marks()
    marks.take()
    r = sub.call(op="noop", system="huey", n=n, port=marks.port)
    got = marks.wait(n, 60 + n / 50)
    last = max(t1 for _, _, t1, _ in got)
    return {"rate": n / (last - r["start"]), "submit_rate": n / (r["end"] - r["start"]), "total_s": last - r["start"]}


def huey_drain(ctx: Context, lab: Lab, n: int) -> dict[str, Any]:
    consumer = HueyConsumer(ctx.workdir / "huey-drain", workers=lab.workers)
    sub = Submitter(huey_db=consumer.db)
    marks = lab.marks()
    try:
        sub.call(op="noop", system="huey", n=n, port=marks.port)
        marks.take()
        consumer.start()
        got = marks.wait(n, 60 + n / 50)
    finally:
        consumer.stop()
        sub.close()
    starts = [t1 for _, _, t1, _ in got]
    return {"rate": n / (max(starts) - min(starts))}


def _combined(runs: list[dict[str, Any]], n: int) -> dict[str, Any]:
    """Rounds of ``n`` commands each as one run: all the commands over all the time, each
    figure of the rounds kept (``rounds``)."""
    total = sum(r["total_s"] for r in runs)
    out: dict[str, Any] = {"rate": n * len(runs) / total, "total_s": total, "rounds": runs}
    for key in ("publish_s", "cpu_us", "submit_rate"):  # (means of a round's figures)
        if key in runs[0]:
            out[key] = sum(r[key] for r in runs) / len(runs)
    return out


def run(ctx: Context, lab: Lab) -> list[Row]:
    n = ctx.n(5000, 300)
    rounds = ctx.n(ROUNDS, 1)
    ctx.say(f"throughput: {rounds} rounds of {n} no-op commands through MQTT, through .delay(), and into plain Huey")
    lab.daemon()
    lab.huey()
    # The three take turns, round by round, each round in another order: a machine that slows
    # down for a while (these are shared) then slows all three alike, not the one that ran then.
    measure = {"mqtt": mqtt_rate, "delay": delay_rate, "huey": huey_rate}
    order = list(measure)
    got: dict[str, list[dict[str, Any]]] = {k: [] for k in measure}
    for r in range(rounds):
        for kind in order[r % 3:] + order[:r % 3]:
            got[kind].append(measure[kind](lab, n))
    mqtt, delay, huey = (_combined(got[k], n) for k in order)
    per_round = "; per round (x Huey): MQTT " + ", ".join(
        f"{m['rate'] / h['rate']:.2f}" for m, h in zip(got["mqtt"], got["huey"], strict=True)) + ", .delay() " + ", ".join(
        f"{d['rate'] / h['rate']:.2f}" for d, h in zip(got["delay"], got["huey"], strict=True))
    ctx.say(f"throughput: drain of {n} queued no-op commands, edge-agent and plain Huey")
    marks = lab.marks()
    edge_drain = drain(ctx, n, "drain-throughput", port=marks.port)  # the same datagram per task as Huey's
    time.sleep(0.2)
    marks.take()
    plain_drain = huey_drain(ctx, lab, n)
    burst = ctx.n(BURST, 200)
    ctx.say(f"throughput: MQTT messages the daemon publishes for a burst of {burst} commands")
    msgs = messages_per_command(lab, burst)
    base = f"plain SqliteHuey, {lab.workers} thread workers"
    return [
        Row("throughput", "MQTT commands/s with replies", mqtt["rate"], huey["rate"], "/s", base, better="higher",
            goal=f">= {GOAL_VS_HUEY:g}x Huey and >= {GOAL_MQTT:,.0f}/s",
            met=mqtt["rate"] >= max(GOAL_VS_HUEY * huey["rate"], GOAL_MQTT),
            note=f"n={rounds}x{n}; publishing took {mqtt['publish_s']:.2f} s a round; daemon CPU {mqtt['cpu_us']:.0f} "
                 f"us/command{per_round}",
            extra=mqtt),
        Row("throughput", ".delay() commands/s, end to end", delay["rate"], huey["rate"], "/s", base, better="higher",
            goal=f">= {GOAL_VS_HUEY:g}x Huey", met=delay["rate"] >= GOAL_VS_HUEY * huey["rate"],
            note=f"n={rounds}x{n}; the caller queued {delay['submit_rate']:.0f}/s (Huey's {huey['submit_rate']:.0f}/s); "
                 f"daemon CPU {delay['cpu_us']:.0f} us/command",
            extra={"edge": delay, "huey": huey}),
        Row("throughput", "drain of queued commands/s", edge_drain["rate"], plain_drain["rate"], "/s", base,
            better="higher", goal=">= Huey", met=edge_drain["rate"] >= plain_drain["rate"],
            note=f"n={n} queued while stopped; edge-agent offline config", extra={"edge": edge_drain, "huey": plain_drain}),
        Row("throughput", "MQTT messages published per command, burst of 1,000", msgs["per_command"], None, "",
            goal=f"<= {GOAL_MESSAGES:g}", met=msgs["per_command"] <= GOAL_MESSAGES,
            note=f"n={burst}; " + ", ".join(f"{k} {v:.3f}" for k, v in sorted(msgs["by_topic"].items())), extra=msgs),
    ]
