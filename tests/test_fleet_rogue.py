"""The fleet tools do not trust a device (issue 22, 18; issue 21, 14): one real agent and rogue
"devices" (real paho clients publishing on their own topics to a real mosquitto) that publish
malformed state, claim a group and never answer, or page agent.history forever. Whatever a
rogue does, `edge-agent fleet` lists and commands the others, names the rogue, and returns."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from bench.harness import wait_until
from edge_agent.config import DEFAULT_CONFIG_PATH, MqttSettings
from edge_agent.fleet import client as fleetlib
from tests.configs import LAMP, agent_config
from tests.conftest import ROOT, Broker, Daemon, fleet_cli

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
PAGES = 1000  # fleet.HISTORY_PAGES, as the README says


class Rogue:
    """A paho client that acts as device ``name``: retained status/state of its choosing, and
    ``answer(action, doc) -> reply or None`` for the commands sent to it (None: silence)."""

    def __init__(self, port: int, prefix: str, name: str, *, groups: tuple[str, ...] = (),
                 answer: Callable[[str, dict[str, Any]], dict[str, Any] | None] | None = None):
        import paho.mqtt.client as paho

        self.prefix, self.name, self.answer = prefix, name, answer
        self.received: list[str] = []
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"rogue-{name}", protocol=paho.MQTTv5)
        ready = threading.Event()
        topics = [f"{prefix}/{name}/cmd/+", *(f"{prefix}/group/{g}/cmd/+" for g in groups)]
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe([(t, 1) for t in topics])
        self.client.on_subscribe = lambda *a: ready.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert ready.wait(10), "rogue did not subscribe"

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        self.received.append(msg.topic)
        if self.answer is None:
            return
        doc = json.loads(msg.payload)
        reply = self.answer(msg.topic.rsplit("/", 1)[-1], doc)
        if reply is not None:
            client.publish(f"{self.prefix}/{self.name}/reply", json.dumps(reply), qos=1)

    def retain(self, leaf: str, payload: str | bytes) -> None:
        self.client.publish(f"{self.prefix}/{self.name}/{leaf}", payload, qos=1, retain=True).wait_for_publish(10)

    def close(self) -> None:
        for leaf in ("status", "state"):  # retained messages cleared: the next test starts clean
            self.retain(leaf, b"")
        self.client.loop_stop()
        self.client.disconnect()


class Setup:
    def __init__(self, broker: Broker, prefix: str):
        self.broker, self.prefix = broker, prefix
        self.rogues: list[Rogue] = []

    def rogue(self, name: str, **kw: Any) -> Rogue:
        r = Rogue(self.broker.port, self.prefix, name, **kw)
        self.rogues.append(r)
        return r

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return fleet_cli(self.broker.port, self.prefix, *args, timeout=timeout)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    """One real agent, "good", in group g, on its own broker."""
    root = tmp_path_factory.mktemp("rogue")
    (root / "broker").mkdir()
    broker = Broker(root / "broker")
    broker.start()
    prefix = f"rg{uuid.uuid4().hex[:6]}"
    (root / "good").mkdir()
    good = Daemon(agent_config(root / "good", device="good", groups=["g"], mqtt_port=broker.port, prefix=prefix,
                               devices=LAMP))
    try:
        good.start()
        setup = Setup(broker, prefix)
        def good_is_listed() -> bool:  # the agent's retained state is on the broker
            out = setup.cli("ls", "--json")
            return out.returncode == 0 and any(r["device"] == "good" and r["online"] and r["groups"] == ["g"]
                                               for r in json.loads(out.stdout)["devices"])

        wait_until(good_is_listed, 30, interval=0.2, message=lambda: str(setup.cli("ls", "--json")))
        yield setup
    finally:
        if good.proc is not None:
            good.kill()
        broker.stop()


@pytest.fixture
def rogues(world: Setup) -> Iterator[Setup]:
    yield world
    for r in world.rogues:
        r.close()
    world.rogues.clear()


def _no_traceback(out: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in out.stderr, out.stderr


def test_a_malformed_state_breaks_only_its_own_row(rogues):
    """`groups: 7` in one retained state crashed `fleet ls` and `fleet send --group` with a
    traceback. Now the state is ignored, the device's row says why, the others are listed and
    commanded as ever."""
    seven = rogues.rogue("seven")
    seven.retain("status", "online")
    seven.retain("state", json.dumps({"groups": 7}))
    for name, state in (("clock", {"clock_synchronized": "yes", "groups": ["g"]}),
                        ("jobs", {"next_jobs": 5}), ("queue", {"queue": "many"}),
                        ("deep", "[" * 100_000), ("huge", json.dumps({"version": "x" * 300_000}))):
        r = rogues.rogue(name)
        r.retain("status", "online")
        r.retain("state", state if isinstance(state, str) else json.dumps(state))
    rogues.rogue("babble").retain("status", "hacked\x1b[2J")

    out = rogues.cli("ls")
    _no_traceback(out)
    assert out.returncode == 0, out.stderr
    assert "good " in out.stdout and "8 device(s)" in out.stdout and "\x1b" not in out.stdout + out.stderr
    problems = {line.split(":")[1].strip() for line in out.stderr.splitlines()}
    assert problems == {"seven", "clock", "jobs", "queue", "deep", "huge", "babble"}, out.stderr
    assert "groups is 7, not a list of names" in out.stderr

    doc = rogues.cli("ls", "--json")
    assert doc.returncode == 0, doc.stderr
    rows = {r["device"]: r for r in json.loads(doc.stdout)["devices"]}
    assert rows["good"]["problem"] is None and rows["good"]["groups"] == ["g"] and rows["good"]["version"]
    assert rows["seven"]["groups"] == [] and rows["seven"]["online"] and "groups is 7" in rows["seven"]["problem"]
    assert rows["babble"]["status"] == "unknown" and "not online/offline" in rows["babble"]["problem"]

    sent = rogues.cli("send", "agent.ping", "--group", "g", "--timeout", "20", "--json")
    _no_traceback(sent)
    assert sent.returncode == 0, sent.stdout + sent.stderr
    assert json.loads(sent.stdout)["counts"] == {"succeeded": 1}


def test_a_silent_group_member_is_named_and_the_exit_code_says_so(rogues):
    """A rogue that claims the group and never answers costs the send its timeout; the report
    says per device who did not answer and why (online and silent; no online/offline status to
    wait for), one stderr line names them, exit 1. The real member succeeded."""
    mute = rogues.rogue("mute", groups=("g",))
    mute.retain("status", "online")
    mute.retain("state", json.dumps({"groups": ["g"]}))
    rogues.rogue("stateonly").retain("state", json.dumps({"groups": ["g"]}))

    began = time.monotonic()
    out = rogues.cli("send", "agent.ping", "--group", "g", "--timeout", "3")
    took = time.monotonic() - began
    _no_traceback(out)
    assert out.returncode == 1, out.stdout + out.stderr
    lines = {line.split()[0]: line for line in out.stdout.splitlines()[:-1]}
    assert lines["good"].split()[1] == "succeeded"
    assert lines["mute"].split()[1] == "no_answer" and "online, but no reply at all within 3s" in lines["mute"]
    assert lines["stateonly"].split()[1] == "no_answer" and "no online/offline status" in lines["stateonly"]
    assert out.stderr.strip() == "edge-agent: not every device succeeded: mute no_answer, stateonly no_answer"
    assert mute.received == [f"{rogues.prefix}/group/g/cmd/agent.ping"]  # it was sent the command
    assert 2.5 < took < 30

    doc = rogues.cli("send", "agent.ping", "--group", "g", "--timeout", "2", "--json")
    assert doc.returncode == 1
    devices = json.loads(doc.stdout)["devices"]
    assert {d: v["status"] for d, v in devices.items()} == {"good": "succeeded", "mute": "no_answer",
                                                            "stateonly": "no_answer"}


def _pager(*, advance: bool) -> Callable[[str, dict[str, Any]], dict[str, Any] | None]:
    """agent.history answered with full pages and ``more`` for ever (``advance``: a well-formed
    page after the one asked for; else the same ``next`` again)."""
    def answer(action: str, doc: dict[str, Any]) -> dict[str, Any]:
        args = doc.get("args") or {}
        after, limit = args.get("after", 0), args.get("limit", 100)
        events = [{"seq": after + i + 1, "event": "started", "ts": 1} for i in range(limit if advance else 0)]
        return {"id": doc["id"], "action": action, "status": "succeeded", "attempt": 1, "ts": 1.0,
                "result": {"device": "pager", "events": events, "next": after + len(events), "more": True,
                           "oldest": 1, "last": 10**12}}
    return answer


def test_history_from_a_device_that_pages_forever_is_bounded(rogues, monkeypatch):
    """A device answering agent.history with `more` for ever made `fleet history` never return
    while its memory grew ~45 MB/s. Now: at most HISTORY_PAGES pages, at most -n events kept,
    and a page that does not move on ends it at once; one stderr line, exit 1."""
    pager = rogues.rogue("pager", answer=_pager(advance=True))
    pager.retain("status", "online")
    stuck = rogues.rogue("stuck", answer=_pager(advance=False))
    stuck.retain("status", "online")

    out = rogues.cli("history", "stuck", "-n", "5", timeout=60)
    _no_traceback(out)
    assert out.returncode == 1 and "breaks the protocol" in out.stderr, out.stderr
    assert len(stuck.received) == 1  # its first page says "more" without moving on

    # In process, with a small page bound: the pages asked for stop at the bound, -n events kept.
    monkeypatch.setattr(fleetlib, "HISTORY_PAGES", 30)
    with fleetlib.FleetClient(MqttSettings(host="127.0.0.1", port=rogues.broker.port,
                                           topic_prefix=rogues.prefix)) as client:
        before = len(pager.received)
        with pytest.raises(fleetlib.DeviceError, match="stopped after 30 pages"):
            fleetlib.history(client, "pager", count=50)
        assert len(pager.received) - before == 30
        got = fleetlib.history(client, "pager", after=0, count=2500)  # --after: stops at -n
        assert [e["seq"] for e in got["events"]] == list(range(1, 2501)) and len(pager.received) - before == 33

    # The CLI with the real bound returns, and its memory stays small.
    monkeypatch.undo()
    assert fleetlib.HISTORY_PAGES == PAGES
    before = len(pager.received)
    began = time.monotonic()
    out = rogues.cli("history", "pager", "-n", "50", timeout=280)
    took = time.monotonic() - began
    _no_traceback(out)
    assert out.returncode == 1, out.stdout + out.stderr
    assert out.stderr.strip() == (f"edge-agent: pager: stopped after {PAGES} pages of agent.history "
                                  f"({PAGES * 1000} events); narrow it with --after, --since or --until")
    assert len(pager.received) - before == PAGES
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    assert rss < 300_000, f"a child process grew to {rss} KiB"  # KiB on Linux
    print(f"{PAGES} pages in {took:.1f}s, max RSS of children {rss} KiB")


def test_flags_alone_and_a_device_that_does_not_exist(rogues):
    """Issue 21, 14: `fleet ls --port N` without --host read the default config file (and failed
    when there is none), though the README says flags alone are enough; `fleet send --device
    ghost` said `unknown`, a status the README does not list. Now the flags alone are used when
    there is no config file, and the ghost is `no_such_device`."""
    if os.path.exists(DEFAULT_CONFIG_PATH):
        pytest.skip(f"{DEFAULT_CONFIG_PATH} exists on this machine")
    env = {k: v for k, v in os.environ.items() if k != "EDGE_AGENT_CONFIG"}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "edge_agent", "fleet", *args, "--port", str(rogues.broker.port),
                               "--prefix", rogues.prefix], capture_output=True, text=True, timeout=60, env=env, cwd=ROOT)

    ls = run("ls", "--json")
    assert ls.returncode == 0, ls.stderr
    assert [r["device"] for r in json.loads(ls.stdout)["devices"]] == ["good"]
    out = run("send", "agent.ping", "-d", "ghost", "-d", "good", "--timeout", "20")
    _no_traceback(out)
    assert out.returncode == 1
    ghost = next(line for line in out.stdout.splitlines() if line.startswith("ghost"))
    assert ghost.split()[1] == "no_such_device" and "nothing will run the command" in ghost
    assert out.stderr.strip() == "edge-agent: not every device succeeded: ghost no_such_device"
    nothing = subprocess.run([sys.executable, "-m", "edge_agent", "fleet", "ls"], capture_output=True, text=True,
                             timeout=60, env=env, cwd=ROOT)
    assert nothing.returncode == 2 and "Traceback" not in nothing.stderr  # no flag, no file: say what to give
