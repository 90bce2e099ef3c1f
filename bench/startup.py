"""Start-up: ``edge-agent --help``, ``edge-agent send``, and the daemon's start.

Wall time of the real console script in a fresh process, median of several runs
after one warm-up (so the page cache is warm, as on a device in use). Baselines:
the interpreter itself (``python -c pass``) for ``--help``; queueing one plain Huey
task from a fresh process for ``send``; and, for the daemon, ``huey_consumer``'s
spawn to its first queued task's start, beside the same figure for edge-agent.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from .harness import BIN, PY, ROOT, Daemon, HueyConsumer, Marks, Row, median, write_daemon_config
from .lab import Context, Lab

GOAL_MS = 150.0
FIGURES = ("edge-agent --help", "edge-agent send (daemon running)", "daemon spawn -> READY",
           "spawn -> first queued command starts")


def wall_times(cmd: Sequence[str], n: int, env: dict[str, str] | None = None, cwd: Path = ROOT) -> list[float]:
    """Seconds per run of ``cmd`` (must exit 0), after one warm-up run."""
    out = []
    for i in range(n + 1):
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        took = time.perf_counter() - t0
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr.decode()[-500:]}")
        if i:
            out.append(took)
    return out


def _first_task_edge(ctx: Context, marks: Marks, runs: int) -> tuple[list[float], list[float]]:
    """Per fresh start: (spawn -> READY, spawn -> a command queued while it was down starts)."""
    config = write_daemon_config(ctx.workdir / "startup-edge", mqtt_port=None)
    ready, first = [], []
    env = dict(os.environ)
    for i in range(runs):
        subprocess.run([str(BIN / "edge-agent"), "send", "mark", "t0=0", f"port={marks.port}", f"tag=s{i}",
                        "--config", str(config)], env=env, check=True, capture_output=True)
        d = Daemon(config)
        try:
            ready.append(d.start())
            (_, _, t1, _), = marks.wait(1, 30)
            first.append(t1 - d.spawned_at)
        finally:
            d.stop()
    return ready, first


def _first_task_huey(ctx: Context, marks: Marks, runs: int) -> list[float]:
    out = []
    for i in range(runs):
        consumer = HueyConsumer(ctx.workdir / "startup-huey", workers=4)
        enqueue = f"from bench import huey_app; huey_app.mark(0.0, {marks.port}, 's{i}')"
        subprocess.run([PY, "-c", enqueue], env=consumer.env(), cwd=ROOT, check=True)
        consumer.start()
        try:
            (_, _, t1, _), = marks.wait(1, 60)
            out.append(t1 - consumer.spawned_at)
        finally:
            consumer.stop()
    return out


def run(ctx: Context, lab: Lab) -> list[Row]:
    n = ctx.n(10, 3)
    runs = ctx.n(5, 2)
    daemon = lab.daemon()
    ctx.say(f"start-up: --help and send x{n}, daemon start x{runs}, beside python -c pass, a Huey enqueue, huey_consumer")
    ms = 1000.0
    edge_help = median(wall_times([str(BIN / "edge-agent"), "--help"], n)) * ms
    python_floor = median(wall_times([PY, "-c", "pass"], n)) * ms
    send = median(wall_times([str(BIN / "edge-agent"), "send", "noop", "--config", str(daemon.config)], n)) * ms
    huey = lab.huey()
    huey_send = median(wall_times([PY, "-c", "from bench import huey_app; huey_app.noop()"], n, env=huey.env())) * ms
    marks = Marks()
    try:
        ready, first_edge = _first_task_edge(ctx, marks, runs)
        first_huey = _first_task_huey(ctx, marks, runs)
    finally:
        marks.close()
    return [
        Row("start-up", "edge-agent --help", edge_help, python_floor, "ms", "python -c pass", goal=f"< {GOAL_MS:g} ms",
            met=edge_help < GOAL_MS, note=f"median of {n}"),
        Row("start-up", "edge-agent send (daemon running)", send, huey_send, "ms", "fresh python: one Huey task call",
            goal=f"< {GOAL_MS:g} ms", met=send < GOAL_MS, note=f"median of {n}; includes an fsync and the poke"),
        Row("start-up", "daemon spawn -> READY", median(ready) * ms, None, "ms",
            note=f"median of {runs}; offline config; max {max(ready) * ms:.0f} ms"),
        Row("start-up", "spawn -> first queued command starts", median(first_edge) * ms, median(first_huey) * ms, "ms",
            "huey_consumer spawn -> first task", note=f"median of {runs}; queued while stopped"),
    ]
