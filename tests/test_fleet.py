"""A fleet of 20 real agent processes (each its own config and database, mock pins) on one real
mosquitto, seen and commanded with ``edge-agent fleet``: ls, group send with 20 final replies,
SIGKILLed agents reported offline whose session command runs when they are back, an events
consumer that fills a gap by seq with agent.history, and history/events from the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.harness import wait_until
from edge_agent.config import MqttSettings
from edge_agent.fleet.client import FleetClient
from edge_agent.fleet.stream import EventStream
from tests.configs import LAMP, agent_config
from tests.conftest import ROOT, Broker, Daemon, Listener, agents_on_their_broker, fleet_cli, start_all

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

N = 20
KILLED = ("f03", "f11", "f17")


class Fleet:
    def __init__(self, broker: Broker, prefix: str, daemons: dict[str, Daemon]):
        self.broker, self.prefix, self.daemons = broker, prefix, daemons

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return fleet_cli(self.broker.port, self.prefix, *args, timeout=timeout)

    def ls(self) -> dict[str, dict[str, Any]]:
        out = self.cli("ls", "--json")
        assert out.returncode == 0, out.stderr
        return {r["device"]: r for r in json.loads(out.stdout)["devices"]}

    def wait_ls(self, pred, timeout: float = 90) -> dict[str, dict[str, Any]]:
        def matching() -> dict[str, dict[str, Any]] | None:
            rows = self.ls()
            return rows if pred(rows) else None

        return wait_until(matching, timeout, interval=0.5, message=lambda: f"fleet ls never matched; last: {json.dumps(self.ls())[:3000]}")


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    def config(folder: Path, name: str, port: int, prefix: str) -> Path:
        groups = ["all20", "even" if int(name[1:]) % 2 == 0 else "odd"]
        return agent_config(folder, device=name, groups=groups, mqtt_port=port, prefix=prefix, devices=LAMP,
                            queue={"workers": 2, "network_workers": 0})

    with agents_on_their_broker(tmp_path_factory.mktemp("fleet"), "fl", [f"f{i:02d}" for i in range(N)],
                                config) as (broker, prefix, daemons):
        yield Fleet(broker, prefix, daemons)


def _all_up(rows: dict[str, dict[str, Any]]) -> bool:
    return len(rows) == N and all(r["online"] and r["version"] for r in rows.values())


def test_ls_shows_every_device_with_its_state(fleet):
    """fleet ls lists all 20 from retained status and state: online, version, uptime, queue and
    outbox depth, clock, groups, last seen, failures, event seq."""
    rows = fleet.wait_ls(_all_up)
    assert sorted(rows) == [f"f{i:02d}" for i in range(N)]
    for name, r in rows.items():
        assert r["status"] == "online" and r["queue"] == 0 and r["outbox"] is not None
        assert r["clock_synchronized"] is True and r["failures_24h"] == 0 and r["uptime_s"] >= 0
        assert r["groups"] == ["all20", "even" if int(name[1:]) % 2 == 0 else "odd"]
        assert abs(r["last_seen"] - time.time()) < 600 and isinstance(r["last_seq"], int)
    text = fleet.cli("ls")
    assert text.returncode == 0 and f"{N} device(s), {N} online" in text.stdout


def test_group_send_collects_every_final_reply(fleet):
    """fleet send --group: one group command, 20 final replies device by device, exit 0, and it
    returns when the last reply is in, long before its timeout."""
    fleet.wait_ls(_all_up)
    began = time.monotonic()
    out = fleet.cli("send", "agent.ping", "--group", "all20", "--timeout", "100", "--json")
    took = time.monotonic() - began
    assert out.returncode == 0, out.stdout + out.stderr
    doc = json.loads(out.stdout)
    assert doc["counts"] == {"succeeded": N} and len(doc["devices"]) == N
    assert {d: v["reply"]["result"]["device"] for d, v in doc["devices"].items()} == {d: d for d in doc["devices"]}
    assert took < 50, f"fleet send took {took:.1f}s with a 100 s timeout"
    half = fleet.cli("send", "gpio.set", "device=lamp", "value=on", "--group", "even")
    assert half.returncode == 0, half.stdout + half.stderr
    rows = [line.split() for line in half.stdout.splitlines() if line.startswith("f")]
    assert [r[0] for r in rows] == [f"f{i:02d}" for i in range(0, N, 2)] and {r[1] for r in rows} == {"succeeded"}
    assert half.stdout.splitlines()[-1].startswith("gpio.set fleet-") and f"{N // 2} succeeded" in half.stdout
    bad = fleet.cli("send", "gpio.set", "device=nope", "value=on", "-d", "f01", "-d", "f02", "--json")
    assert bad.returncode == 1
    assert {v["status"] for v in json.loads(bad.stdout)["devices"].values()} == {"rejected"}


def test_a_long_lived_client_does_not_pile_up_handlers_or_subscriptions(fleet):
    """One FleetClient used for many sends and listings (a script, the monitor): each call's
    handlers and its sync-marker subscription go when it returns, so the tenth send costs what
    the first did (before, every message went through every earlier call's handlers)."""
    from edge_agent.fleet import client as fleetlib

    fleet.wait_ls(_all_up)
    mqtt = MqttSettings(host="127.0.0.1", port=fleet.broker.port, topic_prefix=fleet.prefix)
    with FleetClient(mqtt) as client:
        for i in range(6):
            res = fleetlib.send(client, "agent.ping", group="all20", timeout=60)
            assert res.counts() == {"succeeded": N}, res.counts()
            assert len(fleetlib.ls(client)) == N
            assert client._handlers == [], f"after call {i + 1}: {len(client._handlers)} handlers left"
            assert not [t for t in client._subs if "/_fleet/" in t], client._subs
        # one that fails (no device answers in time) cleans up as well
        res = fleetlib.send(client, "agent.ping", devices=["nobody-here"], timeout=0.5)
        assert res.devices["nobody-here"]["status"] == "no_such_device" and client._handlers == []


def test_killed_agents_are_offline_and_run_their_session_command_when_back(fleet):
    """Three agents SIGKILLed: fleet send reports them offline (and the others succeeded) without
    waiting for them; a `send --wait-offline` still waiting gets their replies once they start
    again, and the earlier command, left in their broker sessions, ran too (fleet history)."""
    fleet.wait_ls(_all_up)
    for name in KILLED:
        fleet.daemons[name].kill()
    fleet.wait_ls(lambda rows: all(rows[k]["status"] == "offline" for k in KILLED), timeout=60)

    first = f"fleet-first-{uuid.uuid4().hex[:6]}"
    began = time.monotonic()
    out = fleet.cli("send", "gpio.set", "device=lamp", "value=off", "--group", "all20", "--id", first,
                    "--timeout", "100", "--json")
    took = time.monotonic() - began
    assert out.returncode == 1, out.stdout + out.stderr
    doc = json.loads(out.stdout)
    assert doc["counts"] == {"succeeded": N - len(KILLED), "offline": len(KILLED)}
    assert {d for d, v in doc["devices"].items() if v["status"] == "offline"} == set(KILLED)
    assert "broker session" in doc["devices"][KILLED[0]]["detail"]
    assert took < 50, f"did not return when only offline devices were left ({took:.1f}s)"

    second = f"fleet-second-{uuid.uuid4().hex[:6]}"
    watcher = Listener(fleet.broker.port, [f"{fleet.prefix}/+/reply"])
    try:
        waiting = subprocess.Popen(
            [sys.executable, "-m", "edge_agent", "fleet", "send", "agent.ping", "--group", "all20", "--id", second,
             "--wait-offline", "--timeout", "240", "--json", "--host", "127.0.0.1", "--port", str(fleet.broker.port),
             "--prefix", fleet.prefix], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
        # The command is out once the online ones answered it; only then do the others come back.
        watcher.wait_for(lambda m: json.loads(m.payload).get("id") == second
                         and json.loads(m.payload)["status"] == "succeeded", count=N - len(KILLED), timeout=120)
        assert waiting.poll() is None, "send --wait-offline returned before the offline devices answered"
        start_all([fleet.daemons[k] for k in KILLED])
        stdout, stderr = waiting.communicate(timeout=240)
    finally:
        watcher.close()
    assert waiting.returncode == 0, stdout + stderr
    doc = json.loads(stdout)
    assert doc["counts"] == {"succeeded": N}
    for name in KILLED:
        hist = fleet.cli("history", name, "--id", first, "--json")
        assert hist.returncode == 0, hist.stderr
        kinds = [e["event"] for e in json.loads(hist.stdout)["events"]]
        assert kinds == ["received", "started", "succeeded"], (name, kinds)


def test_events_consumer_fills_the_gap_by_seq_with_agent_history(fleet):
    """A consumer stopped during 200 commands resumes from its positions, sees the jump in seq and
    fills it with agent.history: every event of the device exactly once, in seq order."""
    fleet.wait_ls(_all_up)
    device = "f05"
    seen: list[dict[str, Any]] = []
    cond = threading.Condition()

    def collect(doc: dict[str, Any]) -> None:
        with cond:
            seen.append(doc)
            cond.notify_all()

    def wait_for_id(cid: str, timeout: float = 120) -> None:
        end = time.monotonic() + timeout
        with cond:
            while not any(e["id"] == cid and e["event"] == "succeeded" for e in seen):
                left = end - time.monotonic()
                assert left > 0, f"no succeeded event for {cid}; got {len(seen)} events"
                cond.wait(left)

    mqtt = MqttSettings(host="127.0.0.1", port=fleet.broker.port, topic_prefix=fleet.prefix)
    sender = Listener(fleet.broker.port, [f"{fleet.prefix}/{device}/reply"])
    try:
        with FleetClient(mqtt) as client:
            stream = EventStream(client, collect, devices=[device])
            stream.start()
            sender.publish(f"{fleet.prefix}/{device}/cmd/agent.ping", {"id": "gap-before"})
            wait_for_id("gap-before")
            stream.stop()
        positions = dict(stream.last)
        with cond:
            before = len(seen)
        ids = [f"gap-{i:03d}" for i in range(200)]
        for cid in ids:
            sender.client.publish(f"{fleet.prefix}/{device}/cmd/agent.ping", json.dumps({"id": cid}), qos=1)
        sender.wait_for(lambda m: json.loads(m.payload)["status"] == "succeeded"
                        and json.loads(m.payload)["id"].startswith("gap-") and json.loads(m.payload)["id"] != "gap-before",
                        count=200, timeout=120)
        with cond:
            assert len(seen) == before, "the stopped consumer got events"
        with FleetClient(mqtt) as client:
            resumed = EventStream(client, collect, devices=[device], positions=positions)
            resumed.start()
            wait_for_id(ids[-1])
            sender.publish(f"{fleet.prefix}/{device}/cmd/agent.ping", {"id": "gap-after"})
            wait_for_id("gap-after")
            resumed.stop()
    finally:
        sender.close()
    assert resumed.fills >= 1 and resumed.lost == {}
    seqs = [e["seq"] for e in seen]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "not every seq exactly once, in order"
    for cid in ids:
        assert [e["event"] for e in seen if e["id"] == cid] == ["received", "started", "succeeded"], cid
    assert all(e["device"] == device for e in seen)


def test_history_and_events_from_the_cli(fleet):
    """fleet history filters by kind and pages; fleet events prints the latest events as JSON lines."""
    fleet.wait_ls(_all_up)
    for _ in range(5):
        assert fleet.cli("send", "agent.ping", "-d", "f05", "-d", "f06").returncode == 0
    out = fleet.cli("history", "f05", "--event", "succeeded", "-n", "5", "--json")
    assert out.returncode == 0, out.stderr
    evs = json.loads(out.stdout)["events"]
    assert len(evs) == 5 and {e["event"] for e in evs} == {"succeeded"}
    assert [e["seq"] for e in evs] == sorted(e["seq"] for e in evs)
    first = fleet.cli("history", "f05", "--after", "0", "-n", "3", "--json")
    assert [e["seq"] for e in json.loads(first.stdout)["events"]] == [1, 2, 3]
    text = fleet.cli("history", "f05", "-n", "3")
    assert text.returncode == 0 and len(text.stdout.strip().splitlines()) == 3
    lines = fleet.cli("events", "-d", "f05", "-d", "f06", "-n", "4", "--json")
    assert lines.returncode == 0, lines.stderr
    docs = [json.loads(line) for line in lines.stdout.splitlines()]
    assert len(docs) == 8 and {d["device"] for d in docs} == {"f05", "f06"}
    bad = fleet.cli("history", "f05", "--event", "exploded")
    assert bad.returncode == 2 and "--event must be one of" in bad.stderr


def test_events_follow_prints_the_live_stream_and_saves_its_position(fleet, tmp_path):
    """fleet events --follow prints each new event as a JSON line; --resume keeps the positions,
    so a second run starts after them (the events missed meanwhile come from agent.history)."""
    import signal

    fleet.wait_ls(_all_up)
    positions = tmp_path / "positions.json"

    class Follow:
        def __init__(self):
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "edge_agent", "fleet", "events", "--follow", "-d", "f07", "-n", "0", "--json",
                 "--resume", str(positions), "--host", "127.0.0.1", "--port", str(fleet.broker.port),
                 "--prefix", fleet.prefix], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
            self.docs: list[dict[str, Any]] = []
            self.cond = threading.Condition()
            self.reader = threading.Thread(target=self._read, daemon=True)
            self.reader.start()

        def _read(self):
            for line in self.proc.stdout:
                with self.cond:
                    self.docs.append(json.loads(line))
                    self.cond.notify_all()

        def succeeded(self, cids):
            with self.cond:
                return {d["id"] for d in self.docs if d["event"] == "succeeded"} & set(cids)

        def stop(self, signum: int = signal.SIGTERM) -> int:
            self.proc.send_signal(signum)
            rc = self.proc.wait(20)
            self.reader.join(10)  # the stream's output, to its end
            self.proc.stdout.close()
            self.proc.stderr.close()
            return rc

    first = Follow()
    try:
        sent = []
        end = time.monotonic() + 60
        while not first.succeeded(sent):  # the stream is live: it sees what comes after it subscribed
            assert time.monotonic() < end, "fleet events --follow printed nothing"
            sent.append(f"follow-{len(sent)}")
            assert fleet.cli("send", "agent.ping", "-d", "f07", "--id", sent[-1]).returncode == 0
            with first.cond:
                first.cond.wait(1.0)
        seen = next(iter(first.succeeded(sent)))
        with first.cond:
            assert [e["event"] for e in first.docs if e["id"] == seen] == ["received", "started", "succeeded"]
    finally:
        assert first.stop() == 0
    saved = json.loads(positions.read_text())
    assert saved["f07"] == max(d["seq"] for d in first.docs)
    assert fleet.cli("send", "agent.ping", "-d", "f07", "--id", "follow-later").returncode == 0  # nobody follows
    second = Follow()
    try:
        end = time.monotonic() + 60
        while not second.succeeded(["follow-later"]):
            assert time.monotonic() < end, "the resumed stream did not catch up"
            with second.cond:
                second.cond.wait(1.0)
    finally:
        # Ctrl-C, unless this run ignores SIGINT (started in the background by a shell: so would the child)
        second.stop(signal.SIGINT if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN else signal.SIGTERM)
    with second.cond:
        assert second.docs[0]["seq"] == saved["f07"] + 1
        assert [e["event"] for e in second.docs if e["id"] == "follow-later"] == ["received", "started", "succeeded"]
