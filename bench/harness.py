"""What every benchmark uses: the processes under test, clocks on them, and statistics.

- :class:`Broker`: a mosquitto of our own on a free port (``set_tcp_nodelay true``).
- :class:`Daemon`: the real ``edge-agent run`` as a child process; start-up waits for
  READY on a ``NOTIFY_SOCKET`` of ours, as systemd would.
- :class:`HueyConsumer`: the baseline, plain SqliteHuey's own ``huey_consumer``.
- :class:`Submitter`: another process that queues with ``.delay()`` on request.
- :class:`Marks`: the UDP socket that tasks report their start time to.
- :func:`proc_snapshot`: RSS, CPU ticks, context switches and I/O counters of a pid.

Storage lives in a temporary folder on the real disk (never /dev/shm): wear and
fsync costs are part of what is measured.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = Path(__file__).resolve().parent
USER_TASKS = BENCH_DIR / "usertasks"
PY = sys.executable
BIN = Path(PY).parent
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PREFIX = "bench"
DEVICE = "bench"
T = TypeVar("T")


class BenchError(RuntimeError):
    """A benchmark could not run (a process died, a reply never came)."""


# --------------------------------------------------------------------------- waiting


class WaitTimeout(AssertionError):
    """A condition waited for with :func:`wait_until` did not come true in time (in a test: a failure)."""


def wait_until(predicate: Callable[[], T | None], timeout: float = 10.0, interval: float = 0.02,
               message: str | Callable[[], str] = "condition") -> T:
    """Call ``predicate`` every ``interval`` seconds until it returns something true, and return that.

    When it is still false at ``timeout`` seconds (it is asked once more at the end), raise
    :class:`WaitTimeout` with ``message`` (a callable is called then, so it can describe what it
    found). The one polling loop of the tests and the benchmarks: what cannot be waited for on an
    event (a row in another process's database, a line in a log, a port) is waited for here.
    """
    end = time.monotonic() + timeout
    while True:
        got = predicate()
        if got:
            return got
        left = end - time.monotonic()
        if left <= 0:
            text = message() if callable(message) else message
            raise WaitTimeout(f"{text} (waited {timeout:g} s)")
        time.sleep(min(interval, left))


# --------------------------------------------------------------------------- statistics


def percentile(values: Sequence[float], p: float) -> float:
    """The ``p``-th percentile (0-100) with linear interpolation between ranks."""
    if not values:
        return math.nan
    s = sorted(values)
    k = (len(s) - 1) * p / 100.0
    lo, hi = math.floor(k), math.ceil(k)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def median(values: Sequence[float]) -> float:
    return percentile(values, 50)


# --------------------------------------------------------------------------- rows


@dataclass
class Row:
    """One line of the results table.

    ``better`` says which way is good ("lower" or "higher"); ``met`` is the goal's
    verdict (None: no goal, or not measurable in this run).
    """

    section: str
    figure: str
    value: float | None
    baseline: float | None = None
    unit: str = ""
    baseline_name: str = ""
    goal: str = ""
    met: bool | None = None
    note: str = ""
    better: str = "lower"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        if self.value is None or self.baseline is None or self.baseline == 0:
            return None
        if isinstance(self.value, float) and math.isnan(self.value):
            return None
        return self.value / self.baseline

    def to_json(self) -> dict[str, Any]:
        def clean(x: Any) -> Any:
            return None if isinstance(x, float) and (math.isnan(x) or math.isinf(x)) else x

        return {"section": self.section, "figure": self.figure, "value": clean(self.value),
                "baseline": clean(self.baseline), "baseline_name": self.baseline_name, "unit": self.unit,
                "ratio": clean(self.ratio), "goal": self.goal, "met": self.met, "note": self.note,
                "extra": self.extra}


# --------------------------------------------------------------------------- ports, files


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def listens(port: int) -> bool:
    """Whether something accepts a TCP connection on ``127.0.0.1:port``."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def wait_port(port: int, timeout: float = 10.0) -> None:
    wait_until(lambda: listens(port), timeout, interval=0.01, message=f"nothing listens on port {port}")


def db_files_size(db_path: str | Path) -> int:
    """Bytes in the database and its WAL (what grows on the SD card)."""
    total = 0
    for suffix in ("", "-wal"):
        try:
            total += os.stat(f"{db_path}{suffix}").st_size
        except FileNotFoundError:
            pass
    return total


# --------------------------------------------------------------------------- /proc


def read_io(pid: int) -> dict[str, int]:
    out = {}
    with open(f"/proc/{pid}/io") as f:
        for line in f:
            key, _, value = line.partition(":")
            out[key.strip()] = int(value)
    return out


def proc_snapshot(pid: int) -> dict[str, float]:
    """RSS (kB), CPU (s, user+system), context switches of all threads, I/O counters."""
    with open(f"/proc/{pid}/status") as f:
        rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime (fields 14 and 15)
    switches = 0
    threads = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                for line in f:
                    if line.startswith(("voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:")):
                        switches += int(line.split()[1])
            threads += 1
        except FileNotFoundError:
            pass  # a thread that just ended
    io = read_io(pid)
    return {"rss_kb": rss, "cpu_s": cpu, "switches": switches, "threads": threads,
            "write_bytes": io["write_bytes"], "syscw": io["syscw"], "wchar": io["wchar"],
            "t": time.monotonic()}


# --------------------------------------------------------------------------- broker


class Broker:
    """A mosquitto process on a free port (the shipped config's limits, anonymous, loopback)."""

    def __init__(self, workdir: Path, port: int | None = None):
        self.port = port or free_port()
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.conf = workdir / "mosquitto.conf"
        self.conf.write_text(textwrap.dedent(f"""\
            listener {self.port} 127.0.0.1
            allow_anonymous true
            set_tcp_nodelay true
            max_queued_messages 100000
            max_queued_bytes 0
            max_inflight_messages 100
            persistence true
            persistence_location {workdir}/
            autosave_interval 300
            """) + ("user root\n" if os.geteuid() == 0 else ""))
        # As root, mosquitto drops to the user `mosquitto`, which cannot write this folder: the
        # sessions would be lost on every restart and the outbox benchmark would time the wrong thing.
        self.proc: subprocess.Popen[bytes] | None = None

    @staticmethod
    def available() -> bool:
        return os.path.exists(MOSQUITTO)

    def start(self) -> None:
        with open(self.workdir / "mosquitto.log", "ab") as log:
            self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=log)
        wait_port(self.port)

    def stop(self, *, check_saved: bool = False) -> None:
        """Stop with SIGTERM (mosquitto saves its sessions); ``check_saved`` fails if it could not."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
            self.proc = None
            if check_saved and not (self.workdir / "mosquitto.db").exists():
                log = (self.workdir / "mosquitto.log").read_text(errors="replace")[-1500:]
                raise BenchError(f"the broker did not save its sessions on stop; its log:\n{log}")


# --------------------------------------------------------------------------- the daemon


def write_daemon_config(workdir: Path, *, mqtt_port: int | None, workers: int = 4, name: str = "config.toml",
                        events: bool = True) -> Path:
    """A config on mock pins with the bench tasks, storage in ``workdir``, logging at warning
    (``events``: task events on, the default, or ``[events] enabled = false``)."""
    workdir.mkdir(parents=True, exist_ok=True)
    mqtt = textwrap.dedent(f"""\
        [mqtt]
        host = "127.0.0.1"
        port = {mqtt_port}
        topic_prefix = "{PREFIX}"
        discovery = false
        """) if mqtt_port else ""
    text = textwrap.dedent(f"""\
        [device]
        id = "{DEVICE}"

        [storage]
        path = "{workdir / 'agent.db'}"

        [clock]
        trust = "always"

        [gpio]
        pin_factory = "mock"

        [devices.lamp]
        kind = "output"
        pin = 17

        [tasks]
        modules = ["bench_tasks"]
        paths = ["{USER_TASKS}"]

        [queue]
        workers = {workers}

        [log]
        level = "warning"
        """) + "\n" + mqtt + ("" if events else "\n[events]\nenabled = false\n")
    path = workdir / name
    path.write_text(text)
    return path


def fleet_agent_config(folder: Path, device: str, port: int, *, prefix: str = "edge", groups: Sequence[str] = (),
                       workers: int | None = None) -> Path:
    """A fleet member's config: its own id and database, one mock lamp, MQTT on ``port``, logging at warning."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "config.toml"
    path.write_text(textwrap.dedent(f"""\
        [device]
        id = "{device}"
        groups = {json.dumps(list(groups))}
        [storage]
        path = "{folder}/agent.db"
        [clock]
        trust = "always"
        [mqtt]
        host = "127.0.0.1"
        port = {port}
        topic_prefix = "{prefix}"
        discovery = false
        [gpio]
        pin_factory = "mock"
        [devices.lamp]
        kind = "output"
        pin = 17
        [log]
        level = "warning"
        """) + (f"[queue]\nworkers = {workers}\n" if workers else ""))
    return path


class Daemon:
    """``edge-agent run`` as a child process, READY detected through ``NOTIFY_SOCKET``."""

    def __init__(self, config: Path, *, wrap: Sequence[str] = ()):
        self.config = config
        self.workdir = config.parent
        self.db = self.workdir / "agent.db"
        self.wrap = list(wrap)
        self.proc: subprocess.Popen[bytes] | None = None
        self.ready_s: float | None = None
        self.spawned_at = 0.0  # time.time() at spawn
        self.log = self.workdir / "daemon.log"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def env(self) -> dict[str, str]:
        return dict(os.environ, EDGE_AGENT_CONFIG=str(self.config))

    def start(self, timeout: float = 30.0) -> float:
        """Start and wait for READY; returns seconds from spawn to READY."""
        sock_path = str(self.workdir / f"notify-{time.monotonic_ns()}.sock")
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(sock_path)
        env = self.env()
        env["NOTIFY_SOCKET"] = sock_path
        try:
            with open(self.log, "ab") as log:
                t0 = time.monotonic()
                self.spawned_at = time.time()
                self.proc = subprocess.Popen([*self.wrap, PY, "-m", "edge_agent", "run", "--config", str(self.config)],
                                             env=env, stdout=subprocess.DEVNULL, stderr=log, cwd=self.workdir)
            notify.settimeout(timeout)
            while True:
                try:
                    msg = notify.recv(4096).decode()
                except TimeoutError:
                    raise BenchError(f"daemon not READY in {timeout}s; log:\n{self.log.read_text()[-2000:]}") from None
                if "READY=1" in msg:
                    self.ready_s = time.monotonic() - t0
                    return self.ready_s
        finally:
            notify.close()
            os.unlink(sock_path)

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def check_alive(self) -> None:
        if not self.alive():
            raise BenchError(f"the daemon exited; log:\n{self.log.read_text()[-2000:]}")

    # -- reading its database (WAL: a reader never blocks the daemon's writer)

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        import sqlite3

        conn = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=10)
        try:
            return conn.execute(sql, params).fetchall()
        finally:
            conn.close()

    def open_count(self) -> int:
        return int(self.query("select count(*) from commands where state in ('queued', 'running')")[0][0])

    def wait_idle(self, timeout: float, poll: float = 0.05) -> None:
        """Until no command is queued or running."""

        def idle() -> bool:
            if not self.open_count():
                return True
            self.check_alive()
            return False

        wait_until(idle, timeout, interval=poll, message=lambda: f"daemon still has {self.open_count()} open command(s)")


# --------------------------------------------------------------------------- plain Huey


class HueyConsumer:
    """``huey_consumer bench.huey_app.huey`` (thread workers, warnings only), on its own file."""

    def __init__(self, workdir: Path, workers: int = 4):
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        self.db = workdir / "huey.db"
        self.workers = workers
        self.proc: subprocess.Popen[bytes] | None = None
        self.spawned_at = 0.0  # time.time() at spawn

    def env(self) -> dict[str, str]:
        return dict(os.environ, BENCH_HUEY_DB=str(self.db))

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> None:
        with open(self.workdir / "consumer.log", "ab") as log:
            self.spawned_at = time.time()
            self.proc = subprocess.Popen([str(BIN / "huey_consumer"), "bench.huey_app.huey", "-w", str(self.workers),
                                          "-k", "thread", "-q"], env=self.env(), cwd=ROOT,
                                         stdout=subprocess.DEVNULL, stderr=log)

    def stop(self, *, check_saved: bool = False) -> None:
        """Stop with SIGTERM (mosquitto saves its sessions); ``check_saved`` fails if it could not."""
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGINT)  # graceful for Huey
                try:
                    self.proc.wait(15)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(5)
            self.proc = None

    def pending(self) -> int:
        import sqlite3

        if not self.db.exists():
            return 0
        conn = sqlite3.connect(str(self.db), timeout=10)
        try:
            return int(conn.execute("select count(*) from task").fetchone()[0])
        finally:
            conn.close()


# --------------------------------------------------------------------------- helpers in other processes


class Submitter:
    """A process that queues with ``.delay()`` (edge-agent) or a Huey task call (baseline)."""

    def __init__(self, *, edge_config: Path | None = None, huey_db: Path | None = None, wrap: Sequence[str] = ()):
        env = dict(os.environ)
        if edge_config is not None:
            env["EDGE_AGENT_CONFIG"] = str(edge_config)
        if huey_db is not None:
            env["BENCH_HUEY_DB"] = str(huey_db)
        self.proc = subprocess.Popen([*wrap, PY, "-m", "bench.submitter"], cwd=ROOT, env=env, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=1)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def call(self, **req: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise BenchError(f"submitter died (exit {self.proc.poll()})")
        reply: dict[str, Any] = json.loads(line)
        if "error" in reply:
            raise BenchError(f"submitter: {reply['error']}")
        return reply

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            try:
                self.proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
                self.proc.stdin.close()
            except BrokenPipeError:
                pass
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


class Marks:
    """Collects the datagrams tasks send when they start: (tag, t0, t_start)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.items: list[tuple[str, float, float, float]] = []  # tag, t0, t_start, t_received
        self.cond = threading.Condition()
        self._thread = threading.Thread(target=self._read, name="marks", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while True:
            try:
                data = self.sock.recv(512)
            except OSError:
                return
            if not data:
                return
            tag, t0, t1 = data.decode().split(" ")
            with self.cond:
                self.items.append((tag, float(t0), float(t1), time.time()))
                self.cond.notify_all()

    def take(self) -> list[tuple[str, float, float, float]]:
        with self.cond:
            out, self.items = self.items, []
            return out

    def wait(self, count: int, timeout: float) -> list[tuple[str, float, float, float]]:
        """Until ``count`` marks arrived; returns them (and forgets them)."""
        end = time.monotonic() + timeout
        with self.cond:
            while len(self.items) < count:
                left = end - time.monotonic()
                if left <= 0:
                    raise BenchError(f"expected {count} task start(s), got {len(self.items)} in {timeout}s")
                self.cond.wait(left)
            out, self.items = self.items[:count], self.items[count:]
            return out

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


# --------------------------------------------------------------------------- MQTT clients


class MqttClient:
    """A paho client with TCP_NODELAY, started loop, and a callback per message."""

    def __init__(self, port: int, *, client_id: str = "", on_message: Any = None, subscribe: Iterable[str] = (),
                 persistent: bool = False, inflight: int = 100):
        import paho.mqtt.client as mqtt
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        self.client.max_inflight_messages_set(inflight)
        self.client.max_queued_messages_set(0)
        self.client.on_socket_open = _nodelay
        topics = list(subscribe)
        self.subscribed = threading.Event()
        self.connected = threading.Event()

        def on_connect(c: Any, u: Any, flags: Any, rc: Any, props: Any) -> None:
            self.connected.set()
            if topics:
                c.subscribe([(t, 1) for t in topics])
            else:
                self.subscribed.set()

        def on_subscribe(*a: Any) -> None:
            self.subscribed.set()

        def on_disconnect(*a: Any) -> None:
            self.connected.clear()

        self.client.on_connect = on_connect
        self.client.on_subscribe = on_subscribe
        self.client.on_disconnect = on_disconnect
        if on_message is not None:
            self.client.on_message = on_message
        props = None
        if persistent:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = 3600
        # Back within 0.2 s of the broker's return, so the outbox benchmark times the agent, not us.
        # (paho's hint says int; it only ever sleeps that long.)
        self.client.reconnect_delay_set(0.05, 0.2)  # type: ignore[arg-type]
        self.client.connect("127.0.0.1", port, clean_start=not persistent, properties=props)
        self.client.loop_start()
        if not self.subscribed.wait(10):
            raise BenchError("MQTT client did not connect and subscribe")

    def publish(self, topic: str, payload: bytes | str, qos: int = 1) -> Any:
        return self.client.publish(topic, payload, qos=qos)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _nodelay(client: Any, userdata: Any, sock: Any) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def cmd_topic(action: str) -> str:
    return f"{PREFIX}/{DEVICE}/cmd/{action}"


REPLY_TOPIC = f"{PREFIX}/{DEVICE}/reply"
