"""The monitor (``edge-agent monitor``) under a fleet: 100 devices, 100,000 tasks, a million events.

A few real agents (``edge-agent run``, commands over MQTT) and simulated devices
(:mod:`bench.simfleet`: one paho client publishing state and task events as the fleet
interface says) feed one monitor process on its own SQLite file. Measured:

- events ingested per second: the simulated fleet publishes task events (QoS 1, one
  per message) as fast as it can; the rate is events stored (the monitor's
  ``edge_monitor_events_ingested_total``) over the time from the first publish to the
  last one stored. The publisher shares the 2 cores with the broker and the monitor;
- the fleet page and a filtered tasks page (one device, one status, the last 24 h)
  with 100,000 tasks in the store: p50 and p99 over sequential requests on one
  keep-alive connection;
- the monitor's RSS after a million events;
- start-up with that full store: spawn to the first fleet page served.

Run alone: ``python -m bench.monitor [--quick]`` (or ``python -m bench --only monitor``).

Baseline, where it can run (:mod:`bench.flower_baseline`: ``celery`` and ``flower``
importable by ``$FLOWER_PYTHON``, Redis on 127.0.0.1:6379; not in quick runs): Flower
with the same number of tasks, run through a solo Celery worker with events on, its
tasks page and the table data that page loads, timed the same way.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

from .flower_baseline import flower_problem, measure_flower
from .harness import (
    PY,
    ROOT,
    Broker,
    Daemon,
    Row,
    fleet_agent_config,
    free_port,
    percentile,
    proc_snapshot,
    wait_port,
    wait_until,
)
from .lab import Context, Lab

FIGURES = ("events ingested", "fleet page (100 devices), p99", "tasks page (filtered), p99", "RSS after the events",
           "start-up with a full store")
REAL_AGENTS = 3
DEVICES = 100
SECTION = "monitor"


class MonitorProcess:
    def __init__(self, workdir: Path, broker_port: int):
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        self.port = free_port()
        self.config = workdir / "monitor.toml"
        self.config.write_text(textwrap.dedent(f"""\
            [device]
            id = "monitor"
            [location]
            latitude = 41.0082
            longitude = 28.9784
            timezone = "Europe/Istanbul"
            [mqtt]
            host = "127.0.0.1"
            port = {broker_port}
            topic_prefix = "edge"
            [log]
            level = "warning"
            """))
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> float:
        """Spawn and wait for the fleet page; returns the seconds that took."""
        t0 = time.perf_counter()
        with open(self.workdir / "monitor.log", "ab") as log:
            self.proc = subprocess.Popen([PY, "-m", "edge_agent", "monitor", "--config", str(self.config), "--listen",
                                          f"127.0.0.1:{self.port}", "--db", str(self.workdir / "monitor.db")],
                                         stdout=subprocess.DEVNULL, stderr=log, cwd=ROOT)
        wait_port(self.port, 30)

        def serves() -> float | None:
            try:
                status, _ = self.get("/")
            except OSError:
                status = 0
            return time.perf_counter() - t0 if status == 200 else None

        return wait_until(serves, 60, interval=0.01, message="the monitor does not serve its page")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(30)
            self.proc = None

    def get(self, path: str) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request("GET", path)
            r = conn.getresponse()
            return r.status, r.read()
        finally:
            conn.close()

    def metric(self, name: str) -> float:
        _, body = self.get("/metrics")
        for line in body.decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        return 0.0

    def ingested(self) -> int:
        return int(json.loads(self.get("/api/health")[1])["ingested"])

    def wait_ingested(self, count: int, timeout: float) -> float:
        """Until the monitor stored ``count`` events; returns ``time.perf_counter()`` then."""
        return wait_until(lambda: time.perf_counter() if self.ingested() >= count else None, timeout, interval=0.05,
                          message=lambda: f"the monitor stored {self.ingested()} of {count} events")


def timed_gets(mon: MonitorProcess, path: str, n: int) -> list[float]:
    conn = http.client.HTTPConnection("127.0.0.1", mon.port, timeout=30)
    out = []
    try:
        for _ in range(n):
            t0 = time.perf_counter()
            conn.request("GET", path)
            r = conn.getresponse()
            r.read()
            out.append(time.perf_counter() - t0)
            if r.status != 200:
                raise RuntimeError(f"GET {path}: {r.status}")
    finally:
        conn.close()
    return out


def prepare_tasks(fleet: Any, devices: list[str], tasks: int, start: int = 0) -> int:
    """Serialize ``tasks`` tasks' events into ``fleet.collect`` (published by ``fleet.publish_collected()``).

    Round-robin over ``devices``, 3 events each; every 10th fails once first (5). Built
    beforehand so that the timed publishing is only paho's, not our JSON. Returns events.
    """
    fleet.collect = []
    events = 0
    now = time.time()
    for i in range(start, start + tasks):
        device = devices[i % len(devices)]
        failing = i % 10 == 0
        fleet.task(device, f"t{i}", "gpio.set" if i % 3 else "upload", {"device": "lamp", "value": "on"},
                   fail_attempts=1 if failing else 0, retries=1, result={"device": "lamp", "value": "on"}, ts=now)
        events += 5 if failing else 3
    return events


def run(ctx: Context, lab: Lab) -> list[Row]:
    from .simfleet import SimFleet

    tasks = int(os.environ.get("BENCH_MONITOR_TASKS", 0)) or ctx.n(100_000, 3_000)
    total_events = int(os.environ.get("BENCH_MONITOR_EVENTS", 0)) or ctx.n(1_000_000, 20_000)
    requests = ctx.n(300, 30)
    work = ctx.workdir / "monitor"
    broker = Broker(work / "broker")
    broker.start()
    agents: list[Daemon] = []
    mon = MonitorProcess(work / "mon", broker.port)
    fleet = None
    try:
        for i in range(REAL_AGENTS):
            d = Daemon(fleet_agent_config(work / f"agent{i}", f"agent{i}", broker.port))
            d.start()
            agents.append(d)
        mon.start()
        sims = [f"sim-{i:03d}" for i in range(DEVICES - REAL_AGENTS)]
        fleet = SimFleet(broker.port, sims, keep_events=False)
        fleet.online_all()
        # the real agents: commands over MQTT, their own events
        import paho.mqtt.client as mqtt

        cmd = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        cmd.connect("127.0.0.1", broker.port)
        cmd.loop_start()
        per_agent = ctx.n(200, 20)
        for k in range(per_agent):
            for i in range(REAL_AGENTS):
                cmd.publish(f"edge/agent{i}/cmd/gpio.set", json.dumps({"id": f"real-{k}", "args": {
                    "device": "lamp", "value": "on" if k % 2 else "off"}}), qos=1)
        time.sleep(1.0)
        devices_seen = len(json.loads(mon.get("/api/devices")[1])["devices"])
        ctx.say(f"monitor: {devices_seen} devices; publishing {tasks} tasks from the simulated fleet")
        before = mon.ingested()
        events = prepare_tasks(fleet, sims, tasks)
        cpu0 = proc_snapshot(mon.proc.pid)["cpu_s"] if mon.proc else 0.0
        t0 = time.perf_counter()
        fleet.publish_collected()
        published = time.perf_counter() - t0
        t1 = mon.wait_ingested(int(before + events), 600)
        rate = events / (t1 - t0)
        monitor_cpu = (proc_snapshot(mon.proc.pid)["cpu_s"] if mon.proc else 0.0) - cpu0
        ctx.say(f"monitor: {events} events stored in {t1 - t0:.1f} s (published in {published:.1f} s)")
        # pages with the store at `tasks` tasks
        busiest = sims[42 % len(sims)]
        fleet_t = timed_gets(mon, "/", requests)
        tasks_t = timed_gets(mon, f"/tasks?device={busiest}&status=succeeded&since=24h", requests)
        api_t = timed_gets(mon, "/api/tasks?action=upload&status=failed", requests)
        # on to a million events
        sent = before + events
        i = tasks
        while sent < total_events:
            n = min(50_000, int((total_events - sent) / 3) + 1)
            sent += prepare_tasks(fleet, sims, n, start=i)
            fleet.publish_collected()
            i += n
        mon.wait_ingested(int(sent), 900)
        time.sleep(1.0)
        rss_mb = proc_snapshot(mon.proc.pid)["rss_kb"] / 1024 if mon.proc else float("nan")
        stored = mon.metric("edge_monitor_events_stored")
        ctx.say(f"monitor: {sent:.0f} events, {stored:.0f} stored, RSS {rss_mb:.1f} MB")
        mon.stop()
        db_mb = sum(f.stat().st_size for f in (work / "mon").glob("monitor.db*")) / 1e6
        startups = []
        for _ in range(ctx.n(3, 1)):
            startups.append(mon.start())
            mon.stop()
        cmd.loop_stop()
        cmd.disconnect()
    finally:
        if fleet is not None:
            fleet.close()
        if mon.proc is not None:
            mon.stop()
        for d in agents:
            d.stop()
        broker.stop()
    ms = 1000.0
    flower: dict[str, Any] = {}
    problem = "n/a in quick runs" if ctx.quick else flower_problem()
    if not problem:
        ctx.say(f"monitor: Flower beside it, {tasks:,} tasks through Celery")
        try:
            flower = measure_flower(work / "flower", tasks, requests, ctx.say)
        except Exception as exc:  # Flower is a baseline: its failure must not hide our figures
            problem = f"n/a: Flower failed: {type(exc).__name__}: {str(exc)[:150]}"
    flower_note = (f"; Flower ({flower['tasks']:,} tasks): tasks page p99 {flower['html_p99_ms']:.1f} ms, its table data "
                   f"(15 SUCCESS rows) p99 {flower['data_p99_ms']:.1f} ms p50 {flower['data_p50_ms']:.1f} ms, RSS "
                   f"{flower['rss_mb']:.0f} MB" if flower else f"; Flower: {problem}")
    return [
        Row(SECTION, "events ingested", rate, unit="/s", goal="≥ 5,000/s", met=rate >= 5000, better="higher",
            note=f"{events:,} events of {tasks:,} tasks from {DEVICES - REAL_AGENTS} simulated devices, one QoS 1 message each; "
                 f"the publisher, on the same cores, sent {events / published:,.0f}/s; the monitor used {monitor_cpu:.1f} CPU-s "
                 f"({events / monitor_cpu if monitor_cpu else 0:,.0f} events per CPU-second)",
            extra={"publish_rate": events / published, "monitor_cpu_s": monitor_cpu}),
        Row(SECTION, "fleet page (100 devices), p99", percentile(fleet_t, 99) * ms, unit="ms", goal="< 100 ms",
            met=percentile(fleet_t, 99) * ms < 100, note=f"p50 {percentile(fleet_t, 50) * ms:.1f} ms, {requests} requests, "
                                                          f"{devices_seen} devices", extra={"p50_ms": percentile(fleet_t, 50) * ms}),
        Row(SECTION, "tasks page (filtered), p99", percentile(tasks_t, 99) * ms, unit="ms", goal="< 100 ms",
            baseline=flower.get("data_p99_ms"), baseline_name="Flower /tasks/datatable" if flower else "",
            met=percentile(tasks_t, 99) * ms < 100,
            note=f"p50 {percentile(tasks_t, 50) * ms:.1f} ms; device+status+24 h over {tasks:,} tasks; "
                 f"/api/tasks action+status p99 {percentile(api_t, 99) * ms:.1f} ms" + flower_note,
            extra={"p50_ms": percentile(tasks_t, 50) * ms, "api_p99_ms": percentile(api_t, 99) * ms, "flower": flower}),
        Row(SECTION, "RSS after the events", rss_mb, unit="MB", goal="< 100 MB", met=rss_mb < 100,
            note=f"after {sent:,.0f} events ({stored:,.0f} stored, store {db_mb:.0f} MB on disk)"),
        Row(SECTION, "start-up with a full store", min(startups), unit="s", goal="< 2 s", met=max(startups) < 2,
            note=f"spawn to the fleet page served, best of {len(startups)} (worst {max(startups):.2f} s)"),
    ]


def main(argv: list[str] | None = None) -> int:
    import argparse
    import tempfile

    from .lab import Context, Lab
    from .report import table

    p = argparse.ArgumentParser(prog="python -m bench.monitor", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a small form (its numbers are not results)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-monitor-", dir=os.environ.get("TMPDIR")) as tmp:
        t_start = time.monotonic()
        ctx = Context(quick=args.quick, workdir=Path(tmp), strace=None,
                      say=lambda text: print(f"[{time.monotonic() - t_start:6.1f}s] {text}", file=sys.stderr, flush=True))
        lab = Lab(ctx)
        try:
            rows = run(ctx, lab)
        finally:
            lab.close()
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
