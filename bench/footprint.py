"""Footprint at idle: RSS, CPU, wake-ups and bytes written over a quiet minute.

Measured from /proc on the process itself: RSS is ``VmRSS``; CPU is the utime +
stime delta; wake-ups are the voluntary + involuntary context switches of all its
threads; bytes written are ``write_bytes`` from /proc/PID/io (what reached the page
cache for a file on disk; ``wchar`` would also count socket writes), and the growth
of the database and its WAL. The daemon and the plain Huey consumer are measured side
by side, both idle after the earlier benchmarks' work; a fresh daemon without MQTT
shows the floor of the local part alone.
"""

from __future__ import annotations

import time
from pathlib import Path

from .harness import CLK_TCK, Daemon, Row, db_files_size, proc_snapshot, write_daemon_config
from .lab import Context, Lab

GOAL_RSS_MB = 40.0
GOAL_CPU_PCT = 0.1
FIGURES = ("idle RSS", "idle CPU", "idle wake-ups", "idle bytes written")


def _measure(pids: dict[str, int], files: dict[str, Path], seconds: float) -> dict[str, dict[str, float]]:
    first = {name: proc_snapshot(pid) for name, pid in pids.items()}
    sizes = {name: db_files_size(path) for name, path in files.items()}
    time.sleep(seconds)
    out = {}
    for name, pid in pids.items():
        last = proc_snapshot(pid)
        span = last["t"] - first[name]["t"]
        out[name] = {
            "rss_mb": last["rss_kb"] / 1024.0,
            "cpu_pct": 100.0 * (last["cpu_s"] - first[name]["cpu_s"]) / span,
            "wakeups_per_s": (last["switches"] - first[name]["switches"]) / span,
            "write_bytes": last["write_bytes"] - first[name]["write_bytes"],
            "write_syscalls": last["syscw"] - first[name]["syscw"],
            "db_growth": db_files_size(files[name]) - sizes[name],
            "threads": last["threads"],
            "seconds": span,
        }
    return out


def run(ctx: Context, lab: Lab) -> list[Row]:
    seconds = 5.0 if ctx.quick else 60.0
    daemon = lab.daemon()
    huey = lab.huey()
    daemon.wait_idle(60)
    offline = lab.adopt(Daemon(write_daemon_config(ctx.workdir / "offline", mqtt_port=None, workers=lab.workers)))
    offline.start()
    time.sleep(2.0)  # let the outbox, the WAL and the consumers settle after the previous benchmarks
    ctx.say(f"footprint: {seconds:.0f} s idle, daemon, plain Huey consumer and an offline daemon side by side")
    m = _measure({"edge": daemon.pid, "huey": huey.pid, "offline": offline.pid},
                 {"edge": daemon.db, "huey": huey.db, "offline": offline.db}, seconds)
    e, h, o = m["edge"], m["huey"], m["offline"]
    base = f"huey_consumer idle, {lab.workers} thread workers"
    offline_note = (f"offline daemon: {o['rss_mb']:.1f} MB, {o['cpu_pct']:.3f} %, {o['wakeups_per_s']:.2f} wake-ups/s, "
                    f"{o['write_bytes']:.0f} B")
    written = e["write_bytes"] + e["db_growth"]
    return [
        Row("footprint", "idle RSS", e["rss_mb"], h["rss_mb"], "MB", base, goal=f"< {GOAL_RSS_MB:g} MB",
            met=e["rss_mb"] < GOAL_RSS_MB, note=f"after the earlier benchmarks; {e['threads']} threads", extra=m),
        Row("footprint", "idle CPU", e["cpu_pct"], h["cpu_pct"], "% of a core", base, goal=f"< {GOAL_CPU_PCT:g} %",
            met=e["cpu_pct"] < GOAL_CPU_PCT, note=f"over {seconds:.0f} s; CPU tick {1000 / CLK_TCK:.0f} ms"),
        Row("footprint", "idle wake-ups", e["wakeups_per_s"], h["wakeups_per_s"], "/s", base, note=offline_note),
        Row("footprint", "idle bytes written", e["write_bytes"], h["write_bytes"], "B", base, goal="0",
            met=written == 0, note=f"write_bytes; db+WAL grew {e['db_growth']} B; {e['write_syscalls']} write syscalls "
                                   f"(sockets included)"),
    ]
