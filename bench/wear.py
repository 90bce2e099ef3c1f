"""Wear: bytes written to disk and fsyncs per command, beside plain Huey per task.

Commands trickle in one at a time, each after the previous one ran and a gap of
``GAP`` seconds, as on a device, so no batching (of commits, or of the daemon's
deferred WAL flush) flatters either side. Counted on every process that writes:
the daemon (and, for ``.delay()``, the calling process), against Huey's consumer
plus its calling process.

- With strace (``strace -f -y`` attached to each process): fsync/fdatasync calls,
  and the bytes handed to ``pwrite64``/``write`` on the database files (SQLite's
  own writes, before the page cache).
- Always: ``write_bytes`` from /proc/PID/io, what reached the page cache for files
  on disk (rewrites of a still-dirty page are not counted again).
"""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from .harness import REPLY_TOPIC, BenchError, Daemon, MqttClient, Row, cmd_topic, read_io, wait_until
from .lab import Context, Lab

_CALL = re.compile(r"^(\d+)\s+(\w+)\((\d+)(?:<([^>]*)>)?.*?(?:\)\s+=\s+(-?\d+)|<unfinished \.\.\.>)")
_RESUMED = re.compile(r"^(\d+)\s+<\.\.\. (\w+) resumed>.*\)\s+=\s+(-?\d+)")
SYNCS = ("fsync", "fdatasync")
WRITES = ("pwrite64", "write", "pwritev", "writev")
GAP = 0.1  # seconds between commands: longer than the daemon's flush_soon delay (50 ms)
FIGURES = tuple(f"{what} per command ({how})" for how in ("MQTT", ".delay()") for what in ("bytes written", "fsyncs"))


class Strace:
    """``strace -f -y`` attached to some pids; :meth:`stop` parses what they did to disk."""

    def __init__(self, strace: str, pids: list[int], out: Path):
        self.out = out
        args = [strace, "-f", "-y", "-qq", "-s", "0", "-e", "signal=none",
                "-e", f"trace={','.join(SYNCS + WRITES)}", "-o", str(out)]
        for pid in pids:
            args += ["-p", str(pid)]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(0.5)  # attaching to every thread takes a moment
        if self.proc.poll() is not None:
            raise BenchError(f"strace failed: {self.proc.stderr.read().decode()[-500:] if self.proc.stderr else ''}")

    def stop(self) -> dict[str, Any]:
        self.proc.send_signal(2)
        self.proc.wait(30)
        return parse_strace(self.out.read_text())


def strace_problem(strace: str | None) -> str | None:
    """Why strace cannot attach to our child processes here (None if it can).

    Attaching needs ptrace rights: CI runners with ``kernel.yama.ptrace_scope`` >= 1
    and no CAP_SYS_PTRACE refuse it, and then the wear rows fall back to /proc.
    """
    if strace is None:
        return "strace is not installed"
    child = subprocess.Popen(["sleep", "5"])
    try:
        probe = subprocess.run([strace, "-qq", "-e", "trace=none", "-p", str(child.pid), "-o", "/dev/null"],
                               capture_output=True, text=True, timeout=1.0)
        return f"strace cannot attach: {probe.stderr.strip()[:200] or f'exit {probe.returncode}'}"
    except subprocess.TimeoutExpired:
        return None  # still attached after a second: it works
    finally:
        child.kill()
        child.wait()


def _is_db(path: str | None) -> bool:
    return path is not None and ".db" in path and not path.endswith("-shm")


def parse_strace(text: str) -> dict[str, Any]:
    """Counts of sync calls (all, and on database files) and bytes written to database files."""
    pending: dict[str, tuple[str, str | None]] = {}
    syncs = 0
    db_bytes = 0
    db_writes = 0
    calls: Counter[str] = Counter()
    by_file: Counter[str] = Counter()
    for line in text.splitlines():
        m = _CALL.match(line)
        if m:
            pid, name, _fd, path, ret = m.groups()
            if ret is None:
                pending[pid] = (name, path)
                continue
        else:
            r = _RESUMED.match(line)
            if not r or r.group(1) not in pending:
                continue
            pid, name, ret = r.groups()
            name, path = pending.pop(pid)
        calls[name] += 1
        if name in SYNCS:
            syncs += 1
            by_file[f"{name} {Path(path).name if path else '?'}"] += 1
        elif path is not None and _is_db(path) and int(ret) > 0:
            db_bytes += int(ret)
            db_writes += 1
            by_file[f"{name} {Path(path).name}"] += 1
    return {"syncs": syncs, "db_bytes": db_bytes, "db_writes": db_writes, "calls": dict(calls), "by_file": dict(by_file)}


class _Probe:
    """Counters on some pids around a stretch of work: /proc io always, strace when present."""

    def __init__(self, ctx: Context, pids: list[int], name: str):
        self.pids = pids
        self.io = {pid: read_io(pid) for pid in pids}
        self.strace = Strace(ctx.strace, pids, ctx.workdir / f"strace-{name}.txt") if ctx.strace else None

    def stop(self, n: int) -> dict[str, Any]:
        written = sum(read_io(pid)["write_bytes"] - self.io[pid]["write_bytes"] for pid in self.pids)
        out: dict[str, Any] = {"n": n, "write_bytes": written / n}
        if self.strace is not None:
            s = self.strace.stop()
            out.update({"fsyncs": s["syncs"] / n, "db_bytes": s["db_bytes"] / n, "db_writes": s["db_writes"] / n,
                        "by_file": {k: round(v / n, 3) for k, v in s["by_file"].items()}})
        return out


def _wait_outbox_empty(daemon: Daemon, timeout: float = 30.0) -> None:
    wait_until(lambda: not daemon.query("select count(*) from outbox")[0][0], timeout, message="the outbox did not empty")


def edge_mqtt(ctx: Context, lab: Lab, n: int) -> dict[str, Any]:
    daemon = lab.daemon()
    done = threading.Event()
    want: dict[str, str] = {}

    def on_reply(c: Any, u: Any, msg: Any) -> None:
        doc = json.loads(msg.payload)
        if doc.get("id") == want.get("id") and doc["status"] in ("succeeded", "failed"):
            done.set()

    client = MqttClient(lab.broker().port, on_message=on_reply, subscribe=[REPLY_TOPIC])
    try:
        daemon.wait_idle(60)
        _wait_outbox_empty(daemon)
        probe = _Probe(ctx, [daemon.pid], "edge-mqtt")
        for i in range(n):
            time.sleep(GAP)
            done.clear()
            want["id"] = f"wear-{time.monotonic_ns()}-{i}"
            client.publish(cmd_topic("noop"), json.dumps({"id": want["id"], "args": {"i": i}}))
            if not done.wait(30):
                raise BenchError("wear: no reply over MQTT")
        daemon.wait_idle(30)
        _wait_outbox_empty(daemon)
        time.sleep(0.2)
        return probe.stop(n)
    finally:
        client.close()


def edge_delay(ctx: Context, lab: Lab, n: int) -> dict[str, Any]:
    daemon = lab.daemon()
    sub = lab.edge_submitter()
    marks = lab.marks()
    daemon.wait_idle(60)
    _wait_outbox_empty(daemon)
    marks.take()
    probe = _Probe(ctx, [daemon.pid, sub.pid], "edge-delay")
    for i in range(n):
        time.sleep(GAP)
        sub.call(op="mark", system="edge", port=marks.port, tag=str(i))
        marks.wait(1, 30)
    daemon.wait_idle(30)
    _wait_outbox_empty(daemon)
    time.sleep(0.2)
    return probe.stop(n)


def huey_tasks(ctx: Context, lab: Lab, n: int) -> dict[str, Any]:
    huey = lab.huey()
    sub = lab.huey_submitter()
    marks = lab.marks()
    marks.take()
    probe = _Probe(ctx, [huey.pid, sub.pid], "huey")
    for i in range(n):
        time.sleep(GAP)
        sub.call(op="mark", system="huey", port=marks.port, tag=str(i))
        marks.wait(1, 60)
    time.sleep(0.2)
    return probe.stop(n)


def run(ctx: Context, lab: Lab) -> list[Row]:
    n = ctx.n(150, 10)
    how = "strace + /proc/PID/io" if ctx.strace else "/proc/PID/io only (no strace: fsyncs not counted)"
    ctx.say(f"wear: {n} commands one at a time, {GAP * 1000:.0f} ms apart, via MQTT, via .delay(), and {n} plain Huey tasks ({how})")
    mqtt = edge_mqtt(ctx, lab, n)
    delay = edge_delay(ctx, lab, n)
    huey = huey_tasks(ctx, lab, n)
    base = "plain SqliteHuey per task (caller + consumer)"
    rows = []
    key, what = ("db_bytes", "SQLite bytes written") if ctx.strace else ("write_bytes", "write_bytes")
    for label, e in (("MQTT", mqtt), (".delay()", delay)):
        rows.append(Row("wear", f"bytes written per command ({label})", e[key], huey[key], "B", base,
                        goal="<= Huey", met=e[key] <= huey[key],
                        note=f"{what}; page cache write_bytes {e['write_bytes']:.0f} B (Huey {huey['write_bytes']:.0f} B)",
                        extra={"edge": e, "huey": huey}))
        if ctx.strace:
            rows.append(Row("wear", f"fsyncs per command ({label})", e["fsyncs"], huey["fsyncs"], "", base,
                            goal="<= Huey", met=e["fsyncs"] <= huey["fsyncs"],
                            note=f"{e['db_writes']:.1f} db write calls/command (Huey {huey['db_writes']:.1f})"))
        else:
            rows.append(Row("wear", f"fsyncs per command ({label})", None, None, "", base,
                            note=f"n/a: {ctx.strace_problem}"))
    return rows
