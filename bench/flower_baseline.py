"""Flower beside the monitor: its tasks page with the same number of tasks, where it can run here.

Needs ``celery`` and ``flower`` importable by ``FLOWER_PYTHON`` (default: this
interpreter; they are not project dependencies, e.g. a venv of their own with
``pip install flower redis packaging``: kombu 5.7's Redis transport imports
``packaging`` without requiring it) and a Redis on 127.0.0.1:6379 (database 15; only
this run's keys are deleted afterwards). A solo Celery worker with events on runs N
no-op tasks; Flower, started first with ``--max_tasks`` 2 N (it drops the least
recently used tasks beyond that), hears their events; the tasks are queued once Flower
has heard the worker, and the figures are taken only once Flower holds all N as
``SUCCESS`` (its datatable's ``recordsTotal``/``recordsFiltered``), else it fails.
Timed like the monitor's pages: the tasks page (HTML, a template whose rows the page
then loads) and the table data it loads (``/tasks/datatable``, first 15 rows of the
``SUCCESS`` tasks, searched by state, newest first), sequential requests on one
connection.

Cost on 2 cores (Flower 2.2, Celery 5.7): 100,000 tasks are queued in ~75 s and held by
Flower ~140 s after the first; 300 table requests then take ~70 s (~0.23 s each): about
3.6 min in all, Flower's RSS ~500 MB.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import textwrap
import time
from pathlib import Path
from typing import Any

from .harness import WaitTimeout, free_port, percentile, wait_port, wait_until

__all__ = ["flower_problem", "measure_flower"]

REDIS = ("127.0.0.1", 6379)
QUEUE = "edgebench"


def _python() -> str:
    import sys

    return os.environ.get("FLOWER_PYTHON") or sys.executable


def flower_problem() -> str:
    """Why Flower cannot run here, or ''."""
    try:
        with socket.create_connection(REDIS, timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            if not s.recv(16).startswith(b"+PONG"):
                return "n/a: Redis on 127.0.0.1:6379 does not answer PING"
    except OSError:
        return "n/a: no Redis on 127.0.0.1:6379 (apt-get install redis-server)"
    # kombu's Redis transport imports redis and packaging (kombu 5.7 does not require the latter)
    probe = subprocess.run([_python(), "-c", "import celery, flower, kombu.transport.redis"], capture_output=True)
    if probe.returncode != 0:
        why = (probe.stderr.decode(errors="replace").strip().splitlines() or ["?"])[-1][:120]
        return ("n/a: celery/flower/kombu's Redis transport not importable by $FLOWER_PYTHON "
                f"(a venv with `pip install flower redis packaging`): {why}")
    return ""


def _app(folder: Path) -> None:
    (folder / "fbapp.py").write_text(textwrap.dedent(f"""\
        from celery import Celery

        app = Celery("fbapp", broker="redis://127.0.0.1:6379/15")
        app.conf.task_default_queue = "{QUEUE}"
        app.conf.worker_send_task_events = True
        app.conf.task_send_sent_event = False
        app.conf.broker_connection_retry_on_startup = True

        @app.task
        def noop(i):
            return i
        """))


def _get(port: int, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def _cleanup(py: str, folder: Path) -> None:
    code = ("import redis; r = redis.Redis(db=15)\n"
            f"keys = [k for k in r.scan_iter() if k.startswith((b'{QUEUE}', b'_kombu', b'unacked', b'celery'))]\n"
            "r.delete(*keys) if keys else None")
    subprocess.run([py, "-c", code], cwd=folder, capture_output=True)


def _datatable(port: int, search: str, length: int, sort: str = "received") -> dict[str, Any]:
    status, body = _get(port, _table_query(search, length, sort))
    if status != 200:
        raise RuntimeError(f"Flower /tasks/datatable: HTTP {status}: {body[:200]!r}")
    return dict(json.loads(body))


def _table_query(search: str, length: int, sort: str = "received") -> str:
    """What the tasks page's table asks for: first ``length`` rows, newest first, ``search`` as typed."""
    from urllib.parse import quote

    return (f"/tasks/datatable?draw=1&start=0&length={length}&search%5Bvalue%5D={quote(search)}"
            f"&order%5B0%5D%5Bcolumn%5D=0&columns%5B0%5D%5Bdata%5D={sort}&order%5B0%5D%5Bdir%5D=desc")


def _worker_heard(port: int) -> bool:
    """Flower has an event from the worker (online or a heartbeat): its event receiver is subscribed."""
    status, body = _get(port, "/metrics")
    return status == 200 and any(line.startswith(b"flower_worker_online{") and line.endswith(b" 1.0")
                                 for line in body.splitlines())


def measure_flower(folder: Path, tasks: int, requests: int, say: Any, deadline: float = 600.0) -> dict[str, Any]:
    """Run N tasks through Celery with Flower listening; time its pages. Returns figures in ms.

    Raises if Flower does not hold all N tasks as SUCCESS within ``deadline`` seconds of the
    first one queued: figures over fewer tasks than claimed would flatter it.
    """
    folder.mkdir(parents=True, exist_ok=True)
    _app(folder)
    py = _python()
    env = dict(os.environ, PYTHONPATH=str(folder))
    _cleanup(py, folder)
    port = free_port()
    # Flower keeps at most --max_tasks tasks (the least recently used go first): twice N, so none is dropped
    max_tasks = 2 * tasks
    procs: list[subprocess.Popen[bytes]] = []
    log = open(folder / "flower.log", "ab")  # noqa: SIM115 (closed below)
    try:
        procs.append(subprocess.Popen([py, "-m", "celery", "-A", "fbapp", "flower", f"--port={port}", "--address=127.0.0.1",
                                       f"--max_tasks={max_tasks}"], cwd=folder, env=env, stdout=log, stderr=log))
        wait_port(port, 60)
        procs.append(subprocess.Popen([py, "-m", "celery", "-A", "fbapp", "worker", "-E", "--pool=solo", "-Q", QUEUE,
                                       "--without-gossip", "--without-mingle", "--loglevel=WARNING"],
                                      cwd=folder, env=env, stdout=log, stderr=log))
        # events go over Redis pub/sub, lost while nobody listens: feed only once Flower hears the worker
        def heard() -> bool:
            if _worker_heard(port):
                return True
            if any(p.poll() is not None for p in procs):
                raise RuntimeError(f"Flower heard no event from the worker in 60 s (see {folder / 'flower.log'})")
            return False

        wait_until(heard, 60, interval=0.5, message=f"Flower heard no event from the worker (see {folder / 'flower.log'})")
        t0 = time.monotonic()
        subprocess.run([py, "-c", f"from fbapp import noop\nfor i in range({tasks}): noop.delay(i)"], cwd=folder, env=env,
                       check=True)
        feed_s = time.monotonic() - t0
        say(f"flower: {tasks:,} tasks queued in {feed_s:.0f} s (--max_tasks={max_tasks:,}); waiting for the worker and Flower")
        seen = done = 0
        next_say = time.monotonic() + 30

        def all_done() -> bool:
            nonlocal seen, done, next_say
            page = _datatable(port, "state:SUCCESS", 1)
            seen, done = page["recordsTotal"], page["recordsFiltered"]
            if done < tasks and time.monotonic() > next_say:
                say(f"flower: {done:,} of {tasks:,} tasks SUCCESS after {time.monotonic() - t0:.0f} s")
                next_say += 30
            return bool(done >= tasks)

        with contextlib.suppress(WaitTimeout):  # said below, with the counts
            wait_until(all_done, t0 + deadline - time.monotonic(), interval=1)
        took = time.monotonic() - t0
        if done < tasks:
            raise RuntimeError(f"Flower held {seen:,} tasks, {done:,} SUCCESS, of {tasks:,} after {took:.0f} s")
        say(f"flower: all {seen:,} tasks held, SUCCESS, {took:.0f} s after the first was queued")
        html_t: list[float] = []
        data_t: list[float] = []
        rows = min(15, tasks)
        page_query = _table_query("state:SUCCESS", 15)
        for path, out in (("/tasks", html_t), (page_query, data_t)):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            for _ in range(requests):
                t = time.perf_counter()
                conn.request("GET", path)
                r = conn.getresponse()
                body = r.read()
                out.append(time.perf_counter() - t)
                if r.status != 200:
                    raise RuntimeError(f"Flower GET {path}: HTTP {r.status}")
            conn.close()
            if out is data_t and len(json.loads(body)["data"]) != rows:
                raise RuntimeError(f"Flower /tasks/datatable gave {len(json.loads(body)['data'])} rows, not {rows}")
        from .harness import proc_snapshot

        rss = proc_snapshot(procs[0].pid)["rss_kb"] / 1024
        return {"tasks": seen, "max_tasks": max_tasks, "feed_s": feed_s, "ingest_s": took,
                "html_p99_ms": percentile(html_t, 99) * 1000, "html_p50_ms": percentile(html_t, 50) * 1000,
                "data_p99_ms": percentile(data_t, 99) * 1000, "data_p50_ms": percentile(data_t, 50) * 1000, "rss_mb": rss}
    finally:
        for p in reversed(procs):
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        log.close()
        _cleanup(py, folder)
