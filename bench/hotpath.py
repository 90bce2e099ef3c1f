"""Hot path: the CPU a command costs on one thread, without thread hand-overs, beside plain Huey.

The throughput rows time whole bursts through several threads and processes on a shared
machine: a slow spell or a different interleaving moves them by ±10 %. This section
measures the two steps every queued command takes, each on one thread with nothing else
running, as thread CPU time (``time.thread_time``), in a process of its own
(``python -m bench.hotpath``) so that the daemon's start-up (``gc.freeze``, its lock,
its threads) stays out of the bench's process:

- **ingest**: what the network thread does with MQTT commands: each payload checked
  (``Ingress.check``), then stored 20 to a transaction (``Ingress.commit``: the journal
  row, Huey's message, the ``received`` event and the ``accepted`` reply);
- **worker**: what a worker does per command: take the message and claim its command
  (with the ``started`` event), run the no-op task, and record the outcome in the next
  take (``succeeded`` event and final reply), as ``Workers`` does;
- baseline, in the same process, alternating: plain ``SqliteHuey`` (defaults, a file of
  its own): enqueue a no-op task call (the caller's work) and ``dequeue()`` +
  ``execute()`` it (a consumer worker's work, without its polling).

Not included on either side: the publisher and the broker's acks (ours), the consumer's
polling and scheduler (Huey's). The daemon's agent runs on mock pins with MQTT pointed at
a closed port (the link is built; nothing is sent). Median of rounds.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .harness import PY, ROOT, BenchError, Row, cmd_topic, write_daemon_config
from .lab import Context, Lab

FIGURES = ("CPU per command on one thread: ingest (MQTT) / enqueue", "CPU per command on one thread: worker / dequeue + execute")
BATCH = 20  # MQTT commands stored per transaction in the ingest step


def run(ctx: Context, lab: Lab) -> list[Row]:
    n, rounds = ctx.n(2000, 200), ctx.n(5, 2)
    ctx.say(f"hotpath: {rounds} rounds of {n} commands, ingest and worker steps on one thread, beside plain Huey")
    workdir = ctx.workdir / "hotpath"
    workdir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([PY, "-m", "bench.hotpath", str(workdir), str(n), str(rounds)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise BenchError(f"bench.hotpath failed: {proc.stderr.strip()[-800:]}")
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    med = {k: statistics.median(v) for k, v in got.items()}
    note = f"n={n} x {rounds} rounds, median; thread CPU; per round: " + "; ".join(
        f"{k} {', '.join(f'{x:.0f}' for x in v)}" for k, v in got.items())
    return [
        Row("hotpath", FIGURES[0], med["ingest"], med["enqueue"], "us", "plain Huey: a task call enqueued",
            note=note),
        Row("hotpath", FIGURES[1], med["worker"], med["consume"], "us", "plain Huey: dequeue() + execute()",
            note="the worker step includes the started and succeeded events and the final reply"),
    ]


# --------------------------------------------------------------------------- the child process


def _agent(workdir: Path) -> Any:
    from edge_agent.config import load_settings
    from edge_agent.device.agent import Agent

    # The benchmarked daemon's config (mock pins, bench_tasks, 4 workers), MQTT at a closed port.
    agent = Agent(load_settings(str(write_daemon_config(workdir, mqtt_port=1))))
    agent.start()
    assert agent.workers is not None and agent.queue is not None
    agent.workers.stop(5.0)  # the steps below run on this thread alone
    for storage, _, _ in agent.queue.lanes:
        storage.stopping = False
    return agent


def _ingest(agent: Any, n: int, tag: str) -> float:
    link = agent.link
    t0 = time.thread_time()
    for first in range(0, n, BATCH):
        checked = [link.ingress.check(cmd_topic("noop"), b'{"id":"%s-%d","args":{"i":%d}}' % (tag.encode(), i, i))
                   for i in range(first, min(n, first + BATCH))]
        with agent.store.transaction() as cur:
            for c in checked:
                link.ingress.commit(cur, c)
    return (time.thread_time() - t0) / n * 1e6


def _work(agent: Any, n: int) -> float:
    workers, storage = agent.workers, agent.queue.storage
    t0 = time.thread_time()
    pending = None
    for _ in range(n):
        recorded: list[Any] = []

        def first(cur: Any, p: Any = pending, out: list[Any] = recorded) -> None:
            p.record(cur)
            out.append(p)

        got = storage.take(workers._claim, first if pending is not None else None)
        if recorded:
            pending = None
            workers._after(recorded[0])
        assert got is not None, "a message was queued for every command"
        pending = workers.runner.complete(got[1], defer=True)
    if pending is not None:
        with agent.store.transaction() as cur:
            pending.record(cur)
    return (time.thread_time() - t0) / n * 1e6


def _huey(workdir: Path) -> tuple[Any, Any]:
    from huey import SqliteHuey

    huey = SqliteHuey("bench-hotpath", filename=str(workdir / "huey.db"))

    @huey.task()
    def noop(i: int = 0, port: int = 0) -> None:
        return None

    return huey, noop


def _huey_rounds(huey: Any, noop: Any, n: int) -> tuple[float, float]:
    t0 = time.thread_time()
    for i in range(n):
        noop(i=i)
    enqueue = (time.thread_time() - t0) / n * 1e6
    t0 = time.thread_time()
    for _ in range(n):
        task = huey.dequeue()
        assert task is not None, "a task was enqueued for every call"
        huey.execute(task)
    return enqueue, (time.thread_time() - t0) / n * 1e6


def _clear(agent: Any) -> None:
    # What the publisher would have delivered and pruning forgotten: each round starts alike.
    with agent.store.transaction() as cur:
        cur.execute("delete from outbox")
        cur.execute("delete from events where seq < (select max(seq) from events)")


def child(workdir: Path, n: int, rounds: int) -> dict[str, list[float]]:
    agent = _agent(workdir)
    huey, noop = _huey(workdir)
    out: dict[str, list[float]] = {"ingest": [], "worker": [], "enqueue": [], "consume": []}
    warm = min(n, 200)  # a warm-up of both
    _huey_rounds(huey, noop, warm)
    _ingest(agent, warm, "warm")
    _work(agent, warm)
    for r in range(rounds):
        out["ingest"].append(_ingest(agent, n, f"r{r}"))
        out["worker"].append(_work(agent, n))
        _clear(agent)
        enqueue, consume = _huey_rounds(huey, noop, n)
        out["enqueue"].append(enqueue)
        out["consume"].append(consume)
    return out


if __name__ == "__main__":
    folder, count, rounds_ = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    result = child(folder, count, rounds_)
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    os._exit(0)  # (the agent's threads and lock: nothing to stop cleanly for a measurement)
