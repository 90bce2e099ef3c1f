"""The fleet: many real agents on one mosquitto, commanded and watched with :mod:`edge_agent.fleet.client`.

- Group commands: 100 real agent processes (``edge-agent run``, each its own config and
  database, mock pins; quick: 5) in groups of their first 10, first 50 and all 100. A group
  ``agent.ping`` and a group ``gpio.set`` to each group, repeated: time from the call of
  :func:`edge_agent.fleet.client.send` (what ``edge-agent fleet send`` does: read the retained
  states, publish one group command, collect the replies) until every final reply is in,
  p50 and p99. Baseline, in the same run: the same call for one device.
- ``fleet ls`` of 1,000 devices whose retained ``status`` and ``state`` are published
  directly: ``edge-agent fleet ls --json`` as a process, spawn to exit. Baseline: a bare
  paho script reading the same 2,000 retained messages, also as a process.
- Events consumed per second: 100 simulated devices publish task events (QoS 1) as fast as
  one paho client can; the consumer is an :class:`edge_agent.fleet.stream.EventStream` (in order,
  each once, gaps filled) in a process of its own. Baseline: a bare paho subscriber counting
  the same kind of stream.
- Fleet schedules: ``edge-agent fleet schedule set --all`` (:func:`edge_agent.fleet.schedules.set_schedule`)
  of a one-job document changed each run, from the call until every device reports the new
  version applied in its retained state, p50 and p99. Baseline, in the same run: the group
  ``agent.ping`` to all of them.
- Reconnects: the broker stopped for 20 s (quick: 3 s) under the 100 agents and started
  again; when each agent is back (the ``ts`` of its first ``state`` after the restart, read
  through a persistent session), and the replies to a group ``agent.ping`` published into
  their broker sessions before they were back: nothing may be lost.

Run alone: ``python -m bench.fleet [--quick]`` (or ``python -m bench --only fleet``).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .harness import (
    PY,
    ROOT,
    BenchError,
    Broker,
    Daemon,
    MqttClient,
    Row,
    WaitTimeout,
    fleet_agent_config,
    median,
    percentile,
    wait_until,
)
from .lab import Context, Lab

FIGURES = ("group agent.ping, 100 devices, p99", "group gpio.set, 100 devices, p99",
           "fleet schedule set --all, 100 devices, p99", "fleet ls, 1,000 devices",
           "events consumed", "reconnect after a broker restart")
SECTION = "fleet"
PREFIX = "fb"
GOAL_COLLECT_S = 1.0
GOAL_LS_S = 1.0
GOAL_SCHEDULE_S = 2.0


def _settings(port: int, prefix: str = PREFIX) -> Any:
    from edge_agent.config import MqttSettings

    return MqttSettings(host="127.0.0.1", port=port, topic_prefix=prefix)


def _sizes(total: int) -> list[int]:
    return sorted({max(1, total // 10), max(1, total // 2), total})


def _groups_of(i: int, total: int) -> list[str]:
    return [f"n{n}" for n in _sizes(total) if i < n]


# --------------------------------------------------------------------------- group commands


def time_sends(client: Any, action: str, args_of: Any, runs: int, *, group: str | None = None,
               device: str | None = None, expect: int = 1) -> list[float]:
    """Seconds for each of ``runs`` calls of fleet.send, each checked: ``expect`` succeeded replies."""
    from edge_agent.fleet import client as fleet

    out = []
    for r in range(runs):
        res = fleet.send(client, action, args_of(r), group=group, devices=[device] if device else (), timeout=30)
        counts = res.counts()
        if counts != {"succeeded": expect}:
            raise BenchError(f"{action} to {group or device}: {counts}, expected {expect} succeeded")
        out.append(res.elapsed_s)
    return out


def group_commands(ctx: Context, port: int, total: int, runs: int) -> dict[str, Any]:
    from edge_agent.fleet import client as fleet

    def lamp(r: int) -> dict[str, Any]:
        return {"device": "lamp", "value": "on" if r % 2 else "off"}

    out: dict[str, Any] = {}
    with fleet.FleetClient(_settings(port), timeout=30) as client:
        # READY does not wait for the broker (an agent works offline): wait until all are connected.
        def online() -> int:
            return sum(1 for r in fleet.ls(client) if r["online"])

        wait_until(lambda: online() == total, 60, interval=0.5, message=lambda: f"fleet ls sees {online()} of {total} agents online")
        time_sends(client, "agent.ping", lambda r: {}, 3, group=f"n{total}", expect=total)  # warm-up
        out["single_ping"] = time_sends(client, "agent.ping", lambda r: {}, runs, device="a000")
        out["single_gpio"] = time_sends(client, "gpio.set", lamp, runs, device="a000")
        rt = []
        for _ in range(runs):  # the bare command round trip: one publish, one final reply
            t = time.perf_counter()
            if (fleet.request(client, "a000", "agent.ping", timeout=10) or {}).get("status") != "succeeded":
                raise BenchError("agent.ping to a000 got no succeeded reply")
            rt.append(time.perf_counter() - t)
        out["request"] = rt
        for n in _sizes(total):
            out[f"ping{n}"] = time_sends(client, "agent.ping", lambda r: {}, runs, group=f"n{n}", expect=n)
            out[f"gpio{n}"] = time_sends(client, "gpio.set", lamp, runs, group=f"n{n}", expect=n)
            ctx.say(f"fleet: group of {n}: ping p50 {median(out[f'ping{n}']) * 1000:.0f} ms, "
                    f"gpio.set p50 {median(out[f'gpio{n}']) * 1000:.0f} ms")
    return out


def schedule_sets(ctx: Context, port: int, total: int, runs: int) -> list[float]:
    """Seconds from set_schedule(--all) to every device's report of the new version, per run."""
    from edge_agent.fleet import client as fleet
    from edge_agent.fleet import schedules

    took = []
    with fleet.FleetClient(_settings(port), timeout=30) as client:
        for r in range(runs):
            # Runs apart by more than the second a device keeps between two state documents: each
            # set is timed on its own, not behind the previous one's report (sets are rare).
            time.sleep(1.2)
            doc = {"jobs": [{"name": "bench-job", "cron": f"{r % 60} 3 * * *", "action": "gpio.set",
                             "args": {"device": "lamp", "value": "off"}}], "windows": []}
            t = time.perf_counter()
            result = schedules.set_schedule(client, doc, everyone=True, timeout=60)
            took.append(time.perf_counter() - t)
            if not result.ok:
                raise BenchError(f"fleet schedule set --all: not applied everywhere: {result.counts()}")
        schedules.clear(client, everyone=True, timeout=60)
    ctx.say(f"fleet: schedule set --all to {total}: p50 {median(took) * 1000:.0f} ms, p99 {percentile(took, 99) * 1000:.0f} ms")
    return took


# --------------------------------------------------------------------------- fleet ls

BARE_LS = """\
import sys, threading, paho.mqtt.client as mqtt
port, prefix, want = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
done, seen = threading.Event(), set()
def on_message(c, u, m):
    seen.add(m.topic)
    if len(seen) >= want:
        done.set()
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
c.on_connect = lambda c, u, f, rc, p: c.subscribe([(prefix + "/+/status", 1), (prefix + "/+/state", 1)])
c.on_message = on_message
c.connect("127.0.0.1", port)
c.loop_start()
ok = done.wait(30)
c.disconnect()
print(len(seen))
sys.exit(0 if ok else 1)
"""


def fleet_ls(ctx: Context, port: int, devices: int, runs: int) -> dict[str, Any]:
    from edge_agent.fleet import client as fleet

    from .simfleet import SimFleet

    prefix = "fbls"
    sim = SimFleet(port, [f"d{i:04d}" for i in range(devices)], prefix=prefix)
    try:
        sim.online_all()
        sim.flush()
    finally:
        sim.close()
    cli, bare, lib = [], [], []
    for _ in range(runs):
        t = time.perf_counter()
        p = subprocess.run([PY, "-m", "edge_agent", "fleet", "ls", "--json", "--host", "127.0.0.1", "--port", str(port),
                            "--prefix", prefix], capture_output=True, text=True, timeout=60, cwd=ROOT)
        cli.append(time.perf_counter() - t)
        if p.returncode != 0:
            raise BenchError(f"fleet ls failed: {p.stderr[-500:]}")
        listed = json.loads(p.stdout)["devices"]
        if len(listed) != devices or not all(r["online"] for r in listed):
            raise BenchError(f"fleet ls listed {len(listed)} devices, expected {devices} online")
        t = time.perf_counter()
        p = subprocess.run([PY, "-c", BARE_LS, str(port), prefix, str(2 * devices)], capture_output=True, text=True,
                           timeout=60)
        bare.append(time.perf_counter() - t)
        if p.returncode != 0:
            raise BenchError(f"bare retained read failed: {p.stdout} {p.stderr[-500:]}")
        with fleet.FleetClient(_settings(port, prefix), timeout=30) as client:
            t = time.perf_counter()
            n = len(fleet.ls(client, timeout=30))
            lib.append(time.perf_counter() - t)
        if n != devices:
            raise BenchError(f"fleet.ls() listed {n} devices, expected {devices}")
    return {"cli": cli, "bare": bare, "lib": lib, "devices": devices}


# --------------------------------------------------------------------------- events


def consume(kind: str, port: int, prefix: str, count: int) -> dict[str, Any]:
    """In a process of its own: take ``count`` events, print when the first and the last came."""
    from edge_agent.fleet import client as fleet

    got = 0
    first = last = 0.0
    done = threading.Event()

    def take(*_: Any) -> None:
        nonlocal got, first, last
        now = time.time()
        if not got:
            first = now
        got += 1
        last = now
        if got >= count:
            done.set()

    info: dict[str, Any] = {}
    if kind == "stream":
        client = fleet.FleetClient(_settings(port, prefix), timeout=30)
        client.connect()
        from edge_agent.fleet.stream import EventStream

        stream = EventStream(client, take)
        stream.start()
        print("ready", flush=True)
        ok = done.wait(300)
        stream.stop()
        info = {"fills": stream.fills, "lost": sum(stream.lost.values())}
        client.close()
    else:
        mc = MqttClient(port, on_message=take, subscribe=[f"{prefix}/+/events"], inflight=1000)
        print("ready", flush=True)
        ok = done.wait(300)
        mc.close()
    return {"ok": ok, "count": got, "first": first, "last": last, **info}


def events_rate(ctx: Context, port: int, events: int) -> dict[str, Any]:
    from .simfleet import SimFleet

    prefix = "fbev"
    sim = SimFleet(port, [f"e{i:03d}" for i in range(100)], prefix=prefix, keep_events=False)
    out: dict[str, Any] = {}
    try:
        for kind in ("raw", "stream"):
            proc = subprocess.Popen([PY, "-m", "bench.fleet", "consume", kind, str(port), prefix, str(events)],
                                    stdout=subprocess.PIPE, text=True, cwd=ROOT)
            assert proc.stdout is not None
            if proc.stdout.readline().strip() != "ready":
                raise BenchError(f"the {kind} events consumer did not start")
            sim.collect = []
            for i in range(events):
                sim.emit(f"e{i % 100:03d}", "succeeded", f"c{i}", "gpio.set", attempt=1, runtime=0.001)
            t0 = time.time()
            sim.publish_collected()
            sim.flush(120)
            published = time.time() - t0
            stdout, _ = proc.communicate(timeout=300)
            doc = json.loads(stdout.strip().splitlines()[-1])
            if not doc["ok"] or doc["count"] != events:
                raise BenchError(f"the {kind} consumer took {doc['count']} of {events} events")
            doc["rate"] = events / (doc["last"] - t0)
            doc["publish_rate"] = events / published
            doc["lag_s"] = doc["last"] - (t0 + published)
            out[kind] = doc
    finally:
        sim.close()
    return out


# --------------------------------------------------------------------------- reconnects


def reconnects(ctx: Context, broker: Broker, devices: list[str], outage: float) -> dict[str, Any]:
    """Stop the broker for ``outage`` s and start it again; when was each device back, and did a group
    command queued in their sessions meanwhile reach every one?"""
    back: dict[str, float] = {}
    replies: dict[str, str] = {}
    cid = f"reconnect-{time.time_ns()}"
    restart = [0.0]
    lock = threading.Lock()

    def on_message(c: Any, u: Any, msg: Any) -> None:
        if msg.retain:
            return
        device = msg.topic.split("/")[1]
        try:
            doc = json.loads(msg.payload)
        except ValueError:
            return
        with lock:
            if msg.topic.endswith("/state") and restart[0] and doc.get("ts", 0) >= restart[0]:
                back.setdefault(device, doc["ts"])
            elif msg.topic.endswith("/reply") and doc.get("id") == cid and doc.get("status") == "succeeded":
                replies.setdefault(device, doc["status"])

    watcher = MqttClient(broker.port, client_id="fb-watch", on_message=on_message, persistent=True, inflight=1000,
                         subscribe=[f"{PREFIX}/+/state", f"{PREFIX}/+/reply"])
    try:
        broker.stop(check_saved=True)
        time.sleep(outage)
        restart[0] = time.time()
        broker.start()
        sender = MqttClient(broker.port)
        sender.publish(f"{PREFIX}/group/n{len(devices)}/cmd/agent.ping", json.dumps({"id": cid, "args": {}})
                       ).wait_for_publish(10)
        sender.close()
        def all_back() -> bool:
            with lock:
                return len(back) == len(devices) and len(replies) == len(devices)

        with contextlib.suppress(WaitTimeout):  # (those not back are counted below)
            wait_until(all_back, 180, interval=0.2)
    finally:
        watcher.close()
    with lock:
        instants = sorted(t - restart[0] for t in back.values())
        return {"outage_s": outage, "back": len(back), "replies": len(replies), "devices": len(devices),
                "first_s": instants[0] if instants else None, "last_s": instants[-1] if instants else None,
                "spread_s": instants[-1] - instants[0] if instants else None,
                "per_second_max": max(collections.Counter(int(t) for t in instants).values(), default=0)}


# --------------------------------------------------------------------------- the section


def run(ctx: Context, lab: Lab) -> list[Row]:
    total = ctx.n(100, 5)
    runs = ctx.n(20, 3)
    work = ctx.workdir / "fleet"
    broker = Broker(work / "broker")
    broker.start()
    agents = [Daemon(fleet_agent_config(work / f"a{i:03d}", f"a{i:03d}", broker.port, prefix=PREFIX,
                                       groups=_groups_of(i, total), workers=1))
              for i in range(total)]
    try:
        t = time.monotonic()
        with ThreadPoolExecutor(max_workers=8) as pool:
            for f in [pool.submit(d.start, 120.0) for d in agents]:
                f.result()
        ctx.say(f"fleet: {total} agents READY in {time.monotonic() - t:.1f} s")
        sends = group_commands(ctx, broker.port, total, runs)
        sets = schedule_sets(ctx, broker.port, total, runs)
        ls = fleet_ls(ctx, broker.port, ctx.n(1000, 100), ctx.n(5, 2))
        ctx.say(f"fleet: ls median {median(ls['cli']):.2f} s (bare {median(ls['bare']):.2f} s)")
        ev = events_rate(ctx, broker.port, ctx.n(50_000, 2_000))
        ctx.say(f"fleet: events {ev['stream']['rate']:,.0f}/s (bare paho {ev['raw']['rate']:,.0f}/s)")
        rc = reconnects(ctx, broker, [d.config.parent.name for d in agents], ctx.n(20.0, 3.0))
        ctx.say(f"fleet: reconnect {rc}")
        for d in agents:
            d.check_alive()
    finally:
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(lambda d: d.stop(), agents))
        broker.stop()
    ms = 1000.0
    rows = []
    single = {"ping": sends["single_ping"], "gpio": sends["single_gpio"]}
    for key, action in (("ping", "agent.ping"), ("gpio", "gpio.set")):
        s = sends[f"{key}{total}"]
        p99 = percentile(s, 99)
        others = ", ".join(f"{n} device{'s' if n > 1 else ''} p50 {median(sends[f'{key}{n}']) * ms:.0f} / p99 "
                           f"{percentile(sends[f'{key}{n}'], 99) * ms:.0f} ms" for n in _sizes(total)[:-1])
        rows.append(Row(SECTION, f"group {action}, 100 devices, p99", p99 * ms, unit="ms",
                        baseline=percentile(single[key], 99) * ms, baseline_name="the same call for one device, p99",
                        goal="< 1,000 ms", met=None if ctx.quick else p99 < GOAL_COLLECT_S,
                        note=f"{total} devices: p50 {median(s) * ms:.0f} ms over {len(s)} runs, every reply collected; {others}; "
                             f"one device p50 {median(single[key]) * ms:.0f} ms"
                             + (f"; bare command round trip (fleet.request) p50 {median(sends['request']) * ms:.1f} ms"
                                if key == "ping" else ""),
                        extra={"p50_ms": median(s) * ms, **{f"{n}": sends[f"{key}{n}"] for n in _sizes(total)}}))
    ping_all = sends[f"ping{total}"]
    rows.append(Row(SECTION, "fleet schedule set --all, 100 devices, p99", percentile(sets, 99) * ms, unit="ms",
                    baseline=percentile(ping_all, 99) * ms, baseline_name="group agent.ping to the same devices, p99",
                    goal="< 2,000 ms", met=None if ctx.quick else percentile(sets, 99) < GOAL_SCHEDULE_S,
                    note=f"{total} devices: a one-job document changed each run, published retained with a new version, "
                         f"until every device's state reports it applied (runs 1.2 s apart: a device publishes its state at most once a second); p50 {median(sets) * ms:.0f} ms over {len(sets)} "
                         f"runs (group agent.ping p50 {median(ping_all) * ms:.0f} ms)", extra={"runs": sets}))
    rows.append(Row(SECTION, "fleet ls, 1,000 devices", median(ls["cli"]), unit="s", baseline=median(ls["bare"]),
                    baseline_name="bare paho script reading the same retained messages",
                    goal="< 1 s", met=None if ctx.quick else median(ls["cli"]) < GOAL_LS_S,
                    note=f"{ls['devices']:,} devices: `edge-agent fleet ls --json`, spawn to exit, median of {len(ls['cli'])} (worst "
                         f"{max(ls['cli']):.2f} s); in-process fleet.ls() {median(ls['lib']) * ms:.0f} ms",
                    extra={"cli": ls["cli"], "bare": ls["bare"], "lib": ls["lib"]}))
    s, r = ev["stream"], ev["raw"]
    rows.append(Row(SECTION, "events consumed", s["rate"], unit="/s", baseline=r["rate"], baseline_name="bare paho subscriber",
                    better="higher",
                    note=f"{s['count']:,} events of 100 devices, QoS 1, by an EventStream in its own process (in order, "
                         f"each once; {s['fills']} fills, {s['lost']} lost); the publisher sent {s['publish_rate']:,.0f}/s "
                         f"({r['publish_rate']:,.0f}/s for the baseline); last event {s['lag_s']:.2f} s after the last "
                         f"publish ({r['lag_s']:.2f} s)", extra={"stream": s, "raw": r}))
    ok = (rc["back"] == rc["devices"] and rc["replies"] == rc["devices"] and rc["spread_s"] is not None
          and rc["spread_s"] >= 10 and rc["last_s"] <= 90)
    rows.append(Row(SECTION, "reconnect after a broker restart", rc["spread_s"], unit="s",
                    goal="spread ≥ 10 s, all back ≤ 90 s, nothing lost", met=None if ctx.quick else ok, better="higher",
                    note=f"{rc['back']} of {rc['devices']} agents back after a {rc['outage_s']:g} s outage, from "
                         f"{rc['first_s'] or 0:.1f} s to {rc['last_s'] or 0:.1f} s after the restart (at most "
                         f"{rc['per_second_max']} in one second); a group agent.ping queued in their sessions: "
                         f"{rc['replies']} of {rc['devices']} replies", extra=rc))
    return rows


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["consume"]:
        kind, port, prefix, count = argv[1], int(argv[2]), argv[3], int(argv[4])
        print(json.dumps(consume(kind, port, prefix, count)), flush=True)
        return 0
    p = argparse.ArgumentParser(prog="python -m bench.fleet")
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    from .__main__ import main as bench_main

    return bench_main(["--only", "fleet"] + (["--quick"] if args.quick else []))


if __name__ == "__main__":
    sys.exit(main())
