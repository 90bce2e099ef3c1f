"""Shared fixtures: a real mosquitto per test session, and the real daemon as a process."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

from bench.harness import free_port, wait_port  # shared with the benchmarks (and bench.harness.wait_until)

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
ROOT = Path(__file__).resolve().parent.parent

# Property tests (hypothesis). The "ci" profile, the default: no deadline and no too-slow health
# check (a loaded machine must not fail a test on time), and a failure prints the blob that replays
# it (@reproduce_failure). The example counts are each test's own: those in the fast subset stay
# under a second; the big ones (400, 1,500) are in tests marked slow. EDGE_AGENT_HYPOTHESIS_PROFILE
# picks another profile (hypothesis' own "default" included); pytest's --hypothesis-seed=N fixes the seed.
settings.register_profile("ci", deadline=None, print_blob=True, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("EDGE_AGENT_HYPOTHESIS_PROFILE", "ci"))


class Broker:
    """A mosquitto process on a free port that a test may stop and start again."""

    def __init__(self, workdir: Path, extra: str = ""):
        self.port = free_port()
        self.workdir = workdir
        self.conf = workdir / "mosquitto.conf"
        self.conf.write_text(textwrap.dedent(f"""\
            listener {self.port} 127.0.0.1
            allow_anonymous true
            persistence true
            persistence_location {workdir}/
            autosave_interval 1
            set_tcp_nodelay true
            max_queued_messages 100000
            max_inflight_messages 100
            """) + ("user root\n" if os.geteuid() == 0 else "") + extra)
        # (as root, mosquitto would drop to user mosquitto, who cannot save into pytest's 0700 folders)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        if not os.path.exists(MOSQUITTO):
            pytest.skip("mosquitto is not installed")
        with open(self.workdir / "mosquitto.log", "ab") as log:
            self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=log)
        wait_port(self.port)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(10)
            self.proc = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    b = Broker(tmp_path_factory.mktemp("broker"))
    b.start()
    yield b
    b.stop()


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[Broker]:
    """A broker of the test's own, for tests that stop and restart it."""
    (tmp_path / "broker").mkdir()
    b = Broker(tmp_path / "broker")
    b.start()
    yield b
    b.stop()


def write_config(path: Path, body: str) -> Path:
    path.write_text(textwrap.dedent(body))
    return path


class Daemon:
    """The real ``edge-agent run`` as a child process."""

    def __init__(self, config: Path, env: dict[str, str] | None = None):
        self.config = config
        # PYTHONFAULTHANDLER: a daemon that will not stop is sent SIGABRT and dumps every thread's stack to its log.
        self.env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONFAULTHANDLER="1", **(env or {}))
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = config.parent / "daemon.log"

    def start(self, wait_ready: bool = True) -> None:
        notify = None
        if wait_ready:
            sock_path = str(self.config.parent / f"notify-{time.monotonic_ns()}.sock")
            notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            notify.bind(sock_path)
            self.env["NOTIFY_SOCKET"] = sock_path
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "edge_agent", "run", "--config", str(self.config)],
                                         env=self.env, stdout=subprocess.DEVNULL, stderr=log, cwd=ROOT)
        if notify is not None:
            notify.settimeout(20)
            try:
                while True:
                    msg = notify.recv(4096).decode()
                    if "READY=1" in msg:
                        break
            except TimeoutError:
                raise AssertionError(f"daemon not ready in 20 s; log:\n{self.log.read_text()[-3000:]}") from None
            finally:
                notify.close()

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)
        self.proc = None

    def terminate(self, timeout: float = 20) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGABRT)  # faulthandler writes the threads' stacks to the log
            self.proc.wait(10)
            self.proc = None
            raise AssertionError(f"daemon did not stop within {timeout:.0f} s of SIGTERM; "
                                 f"log (with stacks):\n{self.log.read_text()[-12000:]}") from None
        self.proc = None
        return rc

    def cli(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "edge_agent", *args, "--config", str(self.config)],
                              capture_output=True, text=True, timeout=timeout, env=self.env, cwd=ROOT)


@pytest.fixture
def daemon_factory(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    made: list[Daemon] = []

    def make(config: str | Path, env: dict[str, str] | None = None, name: str = "config.toml") -> Daemon:
        """A daemon on ``config``: a file already written (tests.configs.agent_config), or TOML text to write."""
        path = config if isinstance(config, Path) else write_config(tmp_path / name, config)
        d = Daemon(path, env)
        made.append(d)
        return d

    yield make
    for d in made:
        if d.proc is not None:
            d.proc.kill()
            d.proc.wait(10)


class _Event:
    """One event of a batched ``P/D/events`` message, as if it had come alone."""

    def __init__(self, msg: Any, doc: Any):
        self.topic, self.qos, self.retain, self.batched = msg.topic, msg.qos, msg.retain, True
        self.payload = json.dumps(doc, separators=(",", ":")).encode()


def _one_per_event(msg: Any) -> list[Any]:
    """A message of events that holds several (a JSON array) counts as one message per event."""
    if msg.topic.endswith("/events") and msg.payload[:1] == b"[":
        return [_Event(msg, doc) for doc in json.loads(msg.payload)]
    return [msg]


class Listener:
    """A paho client that records every message on some topics (a batch of events: one per event)."""

    def __init__(self, port: int, topics: list[str], protocol: int = 5):
        import paho.mqtt.client as mqtt

        self.messages: list[Any] = []
        self.cond = threading.Condition()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5 if protocol == 5 else mqtt.MQTTv311)
        self.client.on_socket_open = lambda c, u, s: s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        ready = threading.Event()

        def on_connect(c: Any, u: Any, f: Any, rc: Any, p: Any) -> None:
            c.subscribe([(t, 1) for t in topics])

        def on_subscribe(*a: Any) -> None:
            ready.set()

        def on_message(c: Any, u: Any, msg: Any) -> None:
            with self.cond:
                self.messages.extend(_one_per_event(msg))
                self.cond.notify_all()

        self.client.on_connect = on_connect
        self.client.on_subscribe = on_subscribe
        self.client.on_message = on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert ready.wait(10), "listener did not subscribe"

    def wait_for(self, pred: Callable[[Any], bool], timeout: float = 10.0, count: int = 1) -> list[Any]:
        end = time.monotonic() + timeout
        with self.cond:
            while True:
                found = [m for m in self.messages if pred(m)]
                if len(found) >= count:
                    return found
                left = end - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"expected {count} matching message(s), got {len(found)}: "
                                         f"{[(m.topic, m.payload[:200]) for m in self.messages[-10:]]}")
                self.cond.wait(left)

    def replies(self, command_id: str) -> list[dict[str, Any]]:
        with self.cond:
            out = []
            for m in self.messages:
                if m.topic.endswith("/reply"):
                    doc = json.loads(m.payload)
                    if doc.get("id") == command_id:
                        out.append(doc)
            return out

    def publish(self, topic: str, payload: Any, qos: int = 1, **kw: Any) -> None:
        data = payload if isinstance(payload, (bytes, str)) else json.dumps(payload)
        self.client.publish(topic, data, qos=qos, **kw).wait_for_publish(10)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def listener_factory() -> Iterator[Callable[..., Listener]]:
    made: list[Listener] = []

    def make(port: int, topics: list[str], protocol: int = 5) -> Listener:
        listener = Listener(port, topics, protocol)
        made.append(listener)
        return listener

    yield make
    for listener in made:
        listener.close()


def fleet_cli(port: int, prefix: str, *args: str, timeout: float = 120,
              extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    """``edge-agent fleet ARGS`` against the broker on ``port`` (no config file), as a process."""
    cmd = [sys.executable, "-m", "edge_agent", "fleet", *args, "--host", "127.0.0.1", "--port", str(port),
           "--prefix", prefix, *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def start_all(daemons: list[Daemon], workers: int = 20) -> None:
    """Start daemons in parallel, each waited for until READY."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=workers) as pool:
        for f in [pool.submit(d.start) for d in daemons]:
            f.result()


@contextlib.contextmanager
def agents_on_their_broker(root: Path, tag: str, names: list[str],
                           config: Callable[[Path, str, int, str], Path]) -> Iterator[tuple[Broker, str, dict[str, Daemon]]]:
    """A mosquitto of its own under ``root`` and one real agent per name, started in parallel:
    ``config(folder, name, broker_port, prefix)`` writes each agent's config (a topic prefix
    ``tag`` + 6 random hex digits, shared by all); every agent is killed and the broker stopped
    at the end."""
    import uuid

    (root / "broker").mkdir()
    broker = Broker(root / "broker")
    broker.start()
    prefix = f"{tag}{uuid.uuid4().hex[:6]}"
    daemons = {}
    for name in names:
        (root / name).mkdir()
        daemons[name] = Daemon(config(root / name, name, broker.port, prefix))
    try:
        start_all(list(daemons.values()))
        yield broker, prefix, daemons
    finally:
        for d in daemons.values():
            if d.proc is not None:
                d.proc.kill()
                d.proc.wait(10)
        broker.stop()


@contextlib.contextmanager
def small_tmpfs(folder: Path, size: str) -> Iterator[Path]:
    """A real tmpfs of ``size`` (e.g. "2m") mounted at ``folder/disk``, unmounted after; the test
    is skipped, saying why, where it cannot be mounted (not root, no mount)."""
    mnt = folder / "disk"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mnt
    finally:
        if subprocess.run(["umount", str(mnt)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def fill_disk(path: Path) -> None:
    """Write ``path`` until the file system is full (down to the last byte)."""
    fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
    try:
        block = b"\0" * 4096
        while True:
            try:
                os.write(fd, block)
            except OSError:
                if len(block) == 1:
                    return
                block = block[: len(block) // 2]
    finally:
        os.close(fd)
