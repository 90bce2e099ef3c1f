"""The monitor under one device that floods it with 1 MB events: memory, database and responses stay bounded.

One real mosquitto, the real ``edge-agent monitor`` process (``--max-db-mb``, default
here 32) and one device's paho client that publishes, on its own ``events`` topic, QoS 1,
as fast as the broker takes them: events of ~1 MB (a 1 MB ``args``), and between them
events just under the monitor's field bounds (7 KB ``args`` and ``result``: what fills the
database fastest). Before the flood a second, well-behaved device publishes ``--good``
tasks (received, started, succeeded); after it, they must all still be held (the size
bound prunes the heaviest device's rows first). Measured every second: the monitor's RSS,
its database's files; at the end, the peak RSS (VmHWM), the size of
``/api/tasks?limit=500``, how long the fleet page took during the flood, and how many of
the good device's tasks are held.

Run: ``python -m bench.monitor_flood [--seconds 60] [--max-db-mb 32] [--good 200]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from .harness import Broker, WaitTimeout, db_files_size, free_port, proc_snapshot, wait_port, wait_until

ROOT = Path(__file__).resolve().parent.parent


def _get(url: str, timeout: float = 30) -> tuple[int, bytes, float]:
    t0 = time.perf_counter()
    with urllib.request.urlopen(url, timeout=timeout) as r:
        body = r.read()
        return r.status, body, time.perf_counter() - t0


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def used_mib(db: Path) -> float:
    """MiB of a SQLite file's pages in use (free pages, reused by new rows, not counted)."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        (pages,), = con.execute("pragma page_count").fetchall()
        (free,), = con.execute("pragma freelist_count").fetchall()
        (size,), = con.execute("pragma page_size").fetchall()
    finally:
        con.close()
    return (pages - free) * size / (1 << 20)


def _publish_good(client: Any, tasks: int) -> int:
    """The well-behaved device's tasks, each as three events on its own topic; returns its last seq."""
    seq, last = 0, None
    for i in range(tasks):
        for kind, extra in (("received", {"source": "mqtt", "args": {"device": "lamp", "value": "on"}}),
                            ("started", {"attempt": 1}),
                            ("succeeded", {"attempt": 1, "runtime": 0.002, "result": {"value": "on"}})):
            seq += 1
            doc = {"seq": seq, "device": "good", "event": kind, "id": f"g{i:03d}", "action": "gpio.set",
                   "ts": round(time.time(), 3), **extra}
            last = client.publish("edge/good/events", json.dumps(doc), qos=1)
    if last is not None:
        last.wait_for_publish(60)
    return seq


def _good_seq(url: str) -> int:
    devices = json.loads(_get(url + "/api/devices")[1])["devices"]
    return next((d["seq"] or 0 for d in devices if d["device"] == "good"), 0)


def run(seconds: float, max_db_mb: int, work: Path, good_tasks: int = 200) -> dict[str, Any]:
    import paho.mqtt.client as mqtt

    broker = Broker(work / "broker")
    broker.start()
    cfg = work / "monitor.toml"
    cfg.write_text(textwrap.dedent(f"""\
        [device]
        id = "monitor"
        [mqtt]
        host = "127.0.0.1"
        port = {broker.port}
        """))
    port = free_port()
    db = work / "monitor.db"
    log = open(work / "monitor.log", "ab")  # noqa: SIM115 (closed below)
    mon = subprocess.Popen([sys.executable, "-m", "edge_agent", "monitor", "--config", str(cfg), "--listen",
                            f"127.0.0.1:{port}", "--db", str(db), "--max-db-mb", str(max_db_mb)], stderr=log, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    samples: list[tuple[float, float, float]] = []  # (t, rss MB, db files MB)
    page_times: list[float] = []
    stop = threading.Event()
    try:
        wait_port(port, 20)
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="flood", protocol=mqtt.MQTTv5)
        client.max_inflight_messages_set(100)
        client.max_queued_messages_set(0)
        client.connect("127.0.0.1", broker.port)
        client.loop_start()
        good_seq, last = _publish_good(client, good_tasks), None
        with contextlib.suppress(WaitTimeout):  # (what the monitor did not store shows in the figures)
            wait_until(lambda: _good_seq(url) >= good_seq, 60, interval=0.2)

        def watch() -> None:
            t0 = time.monotonic()
            while not stop.wait(1.0):
                samples.append((time.monotonic() - t0, proc_snapshot(mon.pid)["rss_kb"] / 1024, db_files_size(db) / 1e6))
                try:
                    page_times.append(_get(url + "/", timeout=30)[2])
                except OSError:
                    page_times.append(float("inf"))

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        big, mid = "x" * 1_000_000, "y" * 7000
        seq, sent_bytes = 0, 0
        t0 = time.monotonic()
        while time.monotonic() - t0 < seconds:
            seq += 1
            extra = {"args": {"blob": big}} if seq % 2 else {"args": {"text": mid}, "result": {"text": mid}}
            payload = json.dumps({"seq": seq, "device": "flood", "event": "received" if seq % 2 else "succeeded",
                                  "id": f"f{seq}", "action": "flood", "ts": round(time.time(), 3), **extra})
            last = client.publish("edge/flood/events", payload, qos=1)
            sent_bytes += len(payload)
            if seq % 50 == 0:
                last.wait_for_publish(60)  # as fast as the broker acknowledges
        published_s = time.monotonic() - t0
        if last is not None:
            last.wait_for_publish(60)
        health: dict[str, Any] = {}

        def drained() -> bool:
            health.update(json.loads(_get(url + "/api/health")[1]))
            return bool(health["ingested"] + health["rejected"] >= seq + good_seq and health["backlog"] == 0)

        with contextlib.suppress(WaitTimeout):  # (what is not drained shows in the figures)
            wait_until(drained, 120, interval=0.5)
        drained_s = time.monotonic() - t0
        stop.set()
        watcher.join(5)
        _, body, took = _get(url + "/api/tasks?limit=500")
        tasks = json.loads(body)
        good = json.loads(_get(url + "/api/tasks?device=good&limit=500")[1])["tasks"]
        good_held = sum(1 for t in good if t["status"] == "succeeded")
        result = {
            "seconds": round(published_s, 1), "events_published": seq, "mb_published": round(sent_bytes / 1e6, 1),
            "publish_rate_mb_s": round(sent_bytes / 1e6 / published_s, 1), "events_stored": health.get("ingested"),
            "rejected": health.get("rejected"), "all_stored_after_s": round(drained_s, 1),
            "rss_peak_mb": round(_peak_rss_mb(mon.pid), 1), "rss_max_sampled_mb": round(max(s[1] for s in samples), 1),
            "rss_end_mb": round(proc_snapshot(mon.pid)["rss_kb"] / 1024, 1),
            "db_files_max_mb": round(max(s[2] for s in samples), 1), "db_files_end_mb": round(db_files_size(db) / 1e6, 1),
            "db_used_end_mib": round(used_mib(db), 1), "max_db_mb": max_db_mb,
            "api_tasks_500_bytes": len(body), "api_tasks_500_rows": len(tasks["tasks"]), "api_tasks_500_s": round(took, 3),
            "fleet_page_max_s": round(max(page_times), 3) if page_times else None,
            "good_device_tasks": good_tasks, "good_device_tasks_held": good_held,
        }
        client.disconnect()
        client.loop_stop()
        return result
    finally:
        stop.set()
        mon.terminate()
        try:
            mon.wait(15)
        except subprocess.TimeoutExpired:
            mon.kill()
        log.close()
        broker.stop()


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench.monitor_flood", description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--max-db-mb", type=int, default=32)
    p.add_argument("--good", type=int, default=200, help="tasks of the well-behaved device (at most 500)")
    args = p.parse_args()
    if not 0 <= args.good <= 500:
        p.error("--good must be between 0 and 500")
    with tempfile.TemporaryDirectory(prefix="bench-flood-", dir=os.environ.get("TMPDIR")) as tmp:
        result = run(args.seconds, args.max_db_mb, Path(tmp), args.good)
    print(json.dumps(result, indent=2))
    ok = (result["rss_peak_mb"] < 100 and result["db_files_max_mb"] < 2 * result["max_db_mb"] + 20
          and result["good_device_tasks_held"] == result["good_device_tasks"])
    print("within bounds" if ok else "OUT OF BOUNDS")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
