"""Recovery: start-up with a backlog, and replies published again after a crash.

- READY with 0, 10,000 and 100,000 queued commands (quick: 0, 1,000, 10,000), median of
  three starts each, in two kinds of backlog: commands other processes wrote while the
  daemon was down (adopted after READY) and commands in the daemon's own queue when it
  was SIGKILLed (Huey's messages in place). The baseline is the empty queue, measured in
  the same run; the goal: 100,000 within 2x of it.
- Replies published again after one SIGKILL in a flow of ~1,000 replies/s (500 commands/s,
  each with its ``accepted`` and ``succeeded`` reply), median and worst of three crashes,
  beside the bound the README states (the broker's in-flight window + 64).
"""

from __future__ import annotations

import collections
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

from .harness import PREFIX, REPLY_TOPIC, BenchError, Broker, Daemon, MqttClient, Row, median, wait_until, write_daemon_config
from .lab import Context, Lab

FIGURES = ("READY with 100,000 queued by other processes", "READY with 100,000 in the daemon's own queue",
           "replies published again after a crash")
GOAL_RATIO = 2.0


def _fill(db: Path, n: int, prefix: str, *, own_queue: bool) -> None:
    """``n`` no-op commands, as other processes write them (to be adopted) or as the daemon's own
    queue holds them (journal rows and Huey messages, as a SIGKILL leaves them)."""
    from edge_agent.device.commands import NewCommand
    from edge_agent.device.journal import Journal
    from edge_agent.device.store import Store
    from edge_agent.device.taskqueue import TaskQueue

    store = Store(str(db))
    try:
        journal = Journal(store)
        # The daemon's own queue writes the messages as the daemon does; nothing runs here.
        queue = TaskQueue(store, journal, workers=1)
        with store.transaction() as cur:
            for i in range(n):
                new = NewCommand(action="noop", args={"i": i}, id=f"{prefix}-{i}", source="api")
                if own_queue:
                    queue.submit(new, cur)
                else:
                    journal.add(cur, new, enqueued=False)
        store.flush()
    finally:
        store.close()


def ready_with_backlog(ctx: Context, n: int, *, own_queue: bool, runs: int) -> list[float]:
    """Seconds from spawn to READY with ``n`` commands waiting (a fresh backlog before each start)."""
    kind = "own" if own_queue else "adopt"
    config = write_daemon_config(ctx.workdir / f"ready-{kind}-{n}", mqtt_port=None)
    daemon = Daemon(config)
    daemon.start()  # creates the database
    daemon.stop()
    out = []
    for r in range(runs):
        if n:
            _fill(daemon.db, n, f"r{r}", own_queue=own_queue)
        try:
            out.append(daemon.start(timeout=120))
            daemon.wait_idle(120 + n / 200, poll=0.25)  # the backlog drains after READY
        finally:
            daemon.stop()
    return out


def repeats_after_crash(ctx: Context, commands: int, rate: float) -> dict[str, Any]:
    """Publish ``commands`` agent.ping at ``rate``/s, SIGKILL the daemon halfway, restart; count repeats."""
    folder = ctx.workdir / f"repeats-{time.monotonic_ns()}"
    broker = Broker(folder / "broker")
    broker.start()
    daemon = Daemon(write_daemon_config(folder / "edge", mqtt_port=broker.port))
    payloads: list[bytes] = []
    lock = threading.Lock()

    def on_reply(c: Any, u: Any, msg: Any) -> None:
        with lock:
            payloads.append(bytes(msg.payload))

    client: MqttClient | None = None
    try:
        daemon.start()
        client = MqttClient(broker.port, client_id=f"bench-rep-{os.getpid()}", on_message=on_reply,
                            subscribe=[REPLY_TOPIC], persistent=True)
        if not client.subscribed.wait(10):
            raise BenchError("repeats: the subscriber did not subscribe")
        ping = f"{PREFIX}/bench/cmd/agent.ping"
        # READY comes before the agent's subscription exists (it works offline): ping until it answers.
        attempts = iter(range(1 << 30))

        def answered() -> bool:
            with lock:
                if any(b'"warm' in p for p in payloads):
                    return True
            client.client.publish(ping, json.dumps({"id": f"warm{next(attempts)}"}), qos=1)
            return False

        wait_until(answered, 20, interval=0.05, message="repeats: the agent never answered")
        time.sleep(0.3)  # the last pings' replies
        with lock:
            payloads.clear()
        t0 = time.monotonic()
        killed_at = None
        for i in range(commands):
            pause = t0 + i / rate - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            client.client.publish(ping, json.dumps({"id": f"c{i}"}), qos=1)
            if killed_at is None and i >= commands // 2:
                daemon.proc.kill()  # type: ignore[union-attr]
                daemon.proc.wait(10)  # type: ignore[union-attr]
                with lock:
                    killed_at = len(payloads)
                daemon.start()
        def finals() -> int:
            with lock:
                docs = [json.loads(p) for p in payloads]
            return len({d["id"] for d in docs if d["status"] == "succeeded" and not d["id"].startswith("warm")})

        wait_until(lambda: finals() >= commands, 60, interval=0.05,
                   message=lambda: f"repeats: {finals()} of {commands} final replies")
        time.sleep(0.5)
    finally:
        if client is not None:
            client.close()
        daemon.stop()
        broker.stop()
    with lock:
        copies = collections.Counter(p for p in payloads if b'"warm' not in p)
    by_reply: dict[tuple[str, str], set[bytes]] = collections.defaultdict(set)
    for p in copies:
        doc = json.loads(p)
        by_reply[(doc["id"], doc["status"])].add(p)
    inflight = next(int(line.split()[1]) for line in broker.conf.read_text().splitlines()
                    if line.startswith("max_inflight_messages"))
    from edge_agent.device.mqtt import WINDOW

    return {"repeats": sum(n - 1 for n in copies.values()), "replies": len(payloads), "killed_at": killed_at,
            "differing": sum(1 for v in by_reply.values() if len(v) > 1), "bound": min(WINDOW, inflight) - 4 + 64}


def run(ctx: Context, lab: Lab) -> list[Row]:
    sizes = (0, ctx.n(10_000, 1_000), ctx.n(100_000, 10_000))
    runs = ctx.n(3, 1)
    rows = []
    for own in (False, True):
        what = "in the daemon's own queue" if own else "queued by other processes"
        ctx.say(f"recovery: READY with {', '.join(f'{n:,}' for n in sizes)} commands {what}, median of {runs}")
        ready = {n: ready_with_backlog(ctx, n, own_queue=own, runs=runs) for n in sizes}
        empty, big = median(ready[0]) * 1000, median(ready[sizes[-1]]) * 1000
        rows.append(Row("recovery", FIGURES[int(own)], big, empty, "ms", "READY, empty queue",
                        goal=f"<= {GOAL_RATIO:g}x empty", met=big <= GOAL_RATIO * empty,
                        note=f"median of {runs}; {sizes[-1]:,} queued; {sizes[1]:,} queued: "
                             f"{median(ready[sizes[1]]) * 1000:.0f} ms; "
                             f"the backlog drains after READY",
                        extra={str(n): v for n, v in ready.items()}))
    crashes = ctx.n(3, 1)
    ctx.say(f"recovery: replies published again after a SIGKILL at ~1,000 replies/s, x{crashes}")
    results = [repeats_after_crash(ctx, ctx.n(1000, 400), 500.0) for _ in range(crashes)]
    counts = sorted(r["repeats"] for r in results)
    # The broker's Receive Maximum (mosquitto's max_inflight_messages) sets the window.
    bound = results[0]["bound"]
    rows.append(Row("recovery", "replies published again after a crash", float(median(counts)), bound, "messages",
                    "the stated bound (window + 64)", goal="<= window + 64, identical",
                    met=counts[-1] <= bound and not any(r["differing"] for r in results),
                    note=f"median of {crashes} SIGKILLs at ~1,000 replies/s; worst {counts[-1]}; "
                         f"repeats that differ from their first copy: {sum(r['differing'] for r in results)}",
                    extra={"runs": results}))
    return rows
