"""Scale: a deep backlog, many schedules, a full outbox.

- Drain rate with 100,000 no-op commands queued (quick: 10,000) beside 1,000: the
  commands are written to the journal while the daemon is down (as the CLI would,
  e.g. after an outage), then the daemon starts and runs them all. The rate comes
  from the journal's own times: count / (last ``finished`` - first ``started``).
- Planning time for 1,000 jobs (solar, cron, every): one scheduler pass over them
  (:meth:`edge_agent.device.scheduler.Scheduler.tick`), cold (first sight) and warm.
- Outbox delivery: 10,000 replies (quick: 1,000) produced while the broker is down,
  then the broker comes back; timed until a subscriber (a persistent session, so
  nothing published before it reconnects is missed) got them all.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

from .harness import REPLY_TOPIC, BenchError, Broker, Daemon, MqttClient, Row, wait_port, wait_until, write_daemon_config
from .lab import Context, Lab

GOAL_OUTBOX_S = 3.0
FIGURES = ("drain rate, deep backlog", "planning 1,000 jobs (one scheduler pass)", "outbox delivered after the broker returns")


def queue_offline(db: Path, n: int, prefix: str, poke: bool = False, port: int = 0) -> None:
    """Write ``n`` no-op commands straight into the journal (one transaction), as other processes do."""
    from edge_agent.device.commands import NewCommand
    from edge_agent.device.journal import Journal
    from edge_agent.device.poke import poke as poke_daemon
    from edge_agent.device.store import Store

    store = Store(str(db))
    try:
        journal = Journal(store)
        with store.transaction() as cur:
            for i in range(n):
                journal.add(cur, NewCommand(action="noop", args={"i": i, "port": port}, id=f"{prefix}-{i}", source="api"),
                            enqueued=False)
        store.flush()
    finally:
        store.close()
    if poke:
        poke_daemon(str(db))


def drain(ctx: Context, n: int, name: str, port: int = 0) -> dict[str, Any]:
    """Queue ``n`` no-op commands while the daemon is down, start it, time the drain (offline config)."""
    config = write_daemon_config(ctx.workdir / name, mqtt_port=None)
    daemon = Daemon(config)
    daemon.start()  # creates the database
    daemon.stop()
    t = time.perf_counter()
    queue_offline(daemon.db, n, name, port=port)
    queued_s = time.perf_counter() - t
    try:
        ready = daemon.start(timeout=120)
        daemon.wait_idle(60 + n / 100, poll=0.25)
        first, last, count = daemon.query("select min(started), max(finished), count(*) from commands "
                                          "where action = 'noop' and state = 'succeeded'")[0]
        if count != n:
            raise BenchError(f"drain: {count} of {n} commands succeeded")
        finished = [r[0] for r in daemon.query("select finished from commands where action = 'noop' order by finished")]
    finally:
        daemon.stop()
    tenth = max(1, n // 10)
    return {"rate": n / (last - first), "ready_s": ready, "queue_s": queued_s,
            "first_tenth_rate": tenth / (finished[tenth - 1] - first),
            "last_tenth_rate": tenth / (finished[-1] - finished[-tenth - 1]) if n > tenth else None}


def planning(ctx: Context, jobs: int) -> dict[str, Any] | str:
    try:
        import edge_agent.schedule.triggers  # noqa: F401
        from edge_agent.config import load_settings
        from edge_agent.device.scheduler import Scheduler
        from edge_agent.device.store import Store
    except ImportError as exc:
        return f"n/a (schedule module missing: {exc})"
    folder = ctx.workdir / "planning"
    folder.mkdir(parents=True, exist_ok=True)
    lines = ['[location]', 'latitude = 52.52', 'longitude = 13.40', 'timezone = "Europe/Berlin"',
             '[clock]', 'trust = "always"', '[storage]', f'path = "{folder / "agent.db"}"']
    kinds = [('solar = "sunset"', 'offset = "-{m}m"'), ('solar = "sunrise"', 'offset = "{m}m"'),
             ('cron = "{m} 7 * * 1-5"', ''), ('cron = "*/15 * * * *"', ''), ('every = "{h}h{m}m"', '')]
    for i in range(jobs):
        trigger, extra = kinds[i % len(kinds)]
        m, h = i % 59 + 1, i % 5 + 1
        lines += ['[[jobs]]', f'name = "job{i}"', trigger.format(m=m, h=h), 'action = "agent.ping"', 'missed = "skip"']
        if extra:
            lines.append(extra.format(m=m))
    path = folder / "config.toml"
    path.write_text("\n".join(lines) + "\n")
    t = time.perf_counter()
    settings = load_settings(str(path))
    parse_s = time.perf_counter() - t
    store = Store(settings.db_path)
    fired: list[Any] = []
    try:
        t = time.perf_counter()
        scheduler = Scheduler(settings, store, submit=lambda cmd, cur=None: fired.append(cmd))
        build_s = time.perf_counter() - t
        now = time.time()
        t = time.perf_counter()
        scheduler.tick(now)
        cold_s = time.perf_counter() - t
        t = time.perf_counter()
        scheduler.tick(now + 1.0)
        warm_s = time.perf_counter() - t
    finally:
        store.close()
    return {"cold_s": cold_s, "warm_s": warm_s, "parse_s": parse_s, "build_s": build_s}


def outbox_delivery(ctx: Context, n: int) -> dict[str, Any]:
    folder = ctx.workdir / "outbox"
    broker = Broker(folder / "broker")
    broker.start()
    daemon = Daemon(write_daemon_config(folder / "edge", mqtt_port=broker.port))
    subscriber: MqttClient | None = None
    prefix = f"ob{time.monotonic_ns()}"
    got: dict[str, float] = {}
    lock = threading.Lock()
    all_in = threading.Event()

    def on_reply(c: Any, u: Any, msg: Any) -> None:
        doc = json.loads(msg.payload)
        cid = str(doc.get("id", ""))
        if cid.startswith(prefix) and doc["status"] == "succeeded":
            with lock:
                got.setdefault(cid, time.time())
                if len(got) >= n:
                    all_in.set()

    try:
        daemon.start()
        subscriber = MqttClient(broker.port, client_id=f"bench-outbox-{os.getpid()}", on_message=on_reply,
                                subscribe=[REPLY_TOPIC], persistent=True)
        broker.stop(check_saved=True)  # the subscriber's session (and subscription) must survive
        t_down = time.time()
        queue_offline(daemon.db, n, prefix, poke=True)
        def waiting() -> int:
            return int(daemon.query("select count(*) from outbox where topic = ?", (REPLY_TOPIC,))[0][0])

        def all_waiting() -> bool:
            if waiting() >= n and daemon.open_count() == 0:
                return True
            daemon.check_alive()
            return False

        wait_until(all_waiting, 60 + n / 50, interval=0.1, message=lambda: f"outbox: only {waiting()} of {n} replies waiting")
        filled = time.time()
        broker.start()  # same port and persistence: the subscriber's session is back
        wait_port(broker.port)
        t_up = time.time()
        if not all_in.wait(120):
            left = daemon.query("select count(*) from outbox")[0][0]
            link = daemon.query("select value from meta where key = 'mqtt'")
            raise BenchError(f"outbox: {len(got)} of {n} replies arrived in 120 s; {left} rows still in the outbox; "
                             f"link {link[0][0] if link else '?'}; daemon log:\n{daemon.log.read_text()[-1500:]}")
        times = sorted(got.values())
    finally:
        if subscriber is not None:
            subscriber.close()
        daemon.stop()
        broker.stop()
    return {"total_s": times[-1] - t_up, "reconnect_s": times[0] - t_up, "delivery_s": times[-1] - times[0],
            "outage_s": t_up - t_down, "fill_s": filled - t_down}


def run(ctx: Context, lab: Lab) -> list[Row]:
    big, small = ctx.n(100_000, 10_000), 1_000
    outbox_n = ctx.n(10_000, 1_000)
    ctx.say(f"scale: drain {small:,} and {big:,} queued commands")
    # The small drain lasts a quarter of a second: the median of three keeps one noisy run
    # from deciding the ratio.
    smalls = sorted((drain(ctx, small, f"drain-small-{i}") for i in range(3)), key=lambda r: r["rate"])
    s = smalls[1]
    b = drain(ctx, big, "drain-big")
    ratio = b["rate"] / s["rate"]
    rows = [Row("scale", "drain rate, deep backlog", b["rate"], s["rate"], "/s", f"{small:,} queued", better="higher",
                goal="flat (>= 0.8x)", met=ratio >= 0.8,
                note=(f"{big:,} queued (small: median of 3); first tenth {b['first_tenth_rate']:.0f}/s, last tenth {b['last_tenth_rate']:.0f}/s; "
                      f"READY in {b['ready_s']:.2f} s with the backlog ({s['ready_s']:.2f} s with {small:,})"),
                extra={"big": b, "small": s})]
    ctx.say("scale: planning 1,000 jobs")
    p = planning(ctx, 1000)
    if isinstance(p, str):
        rows.append(Row("scale", "planning 1,000 jobs (one scheduler pass)", None, None, "ms", note=p))
    else:
        rows.append(Row("scale", "planning 1,000 jobs (one scheduler pass)", p["warm_s"] * 1000, None, "ms",
                        note=(f"warm pass; cold (first) pass {p['cold_s'] * 1000:.0f} ms, config parse "
                              f"{p['parse_s'] * 1000:.0f} ms, triggers built in {p['build_s'] * 1000:.0f} ms"), extra=p))
    ctx.say(f"scale: {outbox_n:,} replies waiting in the outbox while the broker is down, then delivered")
    o = outbox_delivery(ctx, outbox_n)
    rows.append(Row("scale", "outbox delivered after the broker returns", o["total_s"], None, "s",
                    goal=f"< {GOAL_OUTBOX_S:g} s", met=o["total_s"] < GOAL_OUTBOX_S,
                    note=(f"{outbox_n:,} replies; reconnect {o['reconnect_s']:.2f} s + sending {o['delivery_s']:.2f} s "
                          f"({outbox_n / max(o['delivery_s'], 1e-9):.0f} msg/s); broker down {o['outage_s']:.0f} s"),
                    extra=o))
    return rows
