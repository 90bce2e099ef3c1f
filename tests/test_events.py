"""Task events: the log's seq, bounds and history query on a real SQLite file; then the real
daemon's events over MQTT (received, started, retried, succeeded, failed, revoked, fired),
agent.history / agent.status / agent.jobs / agent.revoke, and the state document."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.harness import wait_until
from edge_agent.config import parse_settings
from edge_agent.device.actions import Runtime, build_registry
from edge_agent.device.events import EventLog
from edge_agent.device.store import Store
from edge_agent.errors import InvalidArguments
from tests.configs import LAMP, agent_config
from tests.conftest import ROOT


class Clock:
    def __init__(self, t: float = 1_765_000_000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def store(tmp_path):
    s = Store(str(tmp_path / "agent.db"))
    yield s
    s.close()


def _emit(log: EventLog, n: int, *, action: str = "gpio.set", kind: str = "received") -> list[dict]:
    out = []
    with log.store.transaction() as cur:
        for i in range(n):
            out.append(log.emit(cur, kind, f"c{i}", action, source="mqtt", args={}))
    return out


def test_seq_starts_at_one_grows_and_never_comes_back(tmp_path):
    """seq is 1, 2, 3 ...; after a reopen and after pruning everything old it continues, never reused."""
    path = str(tmp_path / "agent.db")
    clock = Clock()
    store = Store(path)
    log = EventLog(store, "porch", keep=3600, clock=clock)
    assert [e["seq"] for e in _emit(log, 5)] == [1, 2, 3, 4, 5]
    store.close()
    store = Store(path)
    log = EventLog(store, "porch", keep=3600, clock=clock)
    assert _emit(log, 1)[0]["seq"] == 6
    clock.t += 7200
    assert log.prune() == 5  # all but the newest
    assert _emit(log, 1)[0]["seq"] == 7
    assert [e["seq"] for e in log.history()["events"]] == [6, 7]
    store.close()


def test_history_filters_and_pages(store):
    """agent.history's query: after a seq, by action, kind, id and time, paged with next/more."""
    clock = Clock()
    log = EventLog(store, "porch", clock=clock)
    _emit(log, 10, action="gpio.set")
    clock.t += 100
    _emit(log, 5, action="agent.ping", kind="started")
    page = log.history(after=0, limit=4)
    assert [e["seq"] for e in page["events"]] == [1, 2, 3, 4] and page["more"] and page["next"] == 4
    page = log.history(after=page["next"], limit=100)
    assert [e["seq"] for e in page["events"]] == list(range(5, 16)) and not page["more"] and page["next"] == 15
    assert (page["oldest"], page["last"]) == (1, 15)
    assert [e["seq"] for e in log.history(action="agent.ping")["events"]] == [11, 12, 13, 14, 15]
    assert [e["seq"] for e in log.history(event="started", after=12)["events"]] == [13, 14, 15]
    assert [e["id"] for e in log.history(command_id="c3")["events"]] == ["c3", "c3"]
    assert len(log.history(since=clock.t - 1)["events"]) == 5
    assert len(log.history(until=clock.t - 1)["events"]) == 10
    empty = log.history(after=15)
    assert empty["events"] == [] and empty["next"] == 15 and not empty["more"]
    assert page["events"][0]["device"] == "porch" and page["events"][0]["ts"] == round(clock.t - 100, 3)


def test_at_most_outbox_max_unsent_events_are_published_the_newest(store):
    """Events wait for the broker in their own table: of those unsent, only the newest outbox_max
    are published when it is back (the older stay in the history, for agent.history)."""
    log = EventLog(store, "porch", outbox_max=40)
    _emit(log, 500)
    assert [seq for seq, _ in log.unsent(0, 1000)] == list(range(461, 501))
    assert [seq for seq, _ in log.unsent(480, 1000)] == list(range(481, 501))
    assert [seq for seq, _ in log.unsent(470, 5)] == [471, 472, 473, 474, 475]
    assert json.loads(log.unsent(499, 10)[0][1])["seq"] == 500
    assert log.history(after=0, limit=1000)["events"][0]["seq"] == 1
    assert store.query("select count(*) from outbox")[0][0] == 0  # no copy in the outbox


class _Paho:
    """Records what an EventPublisher hands over: (mid, topic, [seqs]) per message."""

    def __init__(self):
        self.sent, self.mid, self.payloads = [], 0, []

    def publish(self, topic, payload, qos):
        self.mid += 1
        doc = json.loads(payload)
        self.payloads.append(doc)
        self.sent.append((self.mid, topic, [e["seq"] for e in (doc if isinstance(doc, list) else [doc])]))

        class Info:
            mid = self.mid
        return Info()


def test_the_publish_position_is_remembered(store):
    """EventPublisher hands events to the client in order, counts acks, and saves its position."""
    from edge_agent.device.events import EventPublisher

    log = EventLog(store, "porch")
    _emit(log, 4)
    pub = EventPublisher(log, "edge/porch/events", linger=0.0)
    paho = _Paho()
    pub.publish(paho, 4)  # what is ready goes in one message; the next waits for its ack
    assert [s for _, _, s in paho.sent] == [[1, 2, 3, 4]] and pub.inflight == 1
    _emit(log, 6)
    pub.publish(paho, 4)
    assert len(paho.sent) == 1
    assert not pub.acked(99) and pub.acked(1) and pub.acked_upto == 4 and pub.dirty
    pub.publish(paho, 4)
    assert [s for _, _, s in paho.sent] == [[1, 2, 3, 4], list(range(5, 11))]
    pub.save(now=100.0)
    assert store.get_meta("events_sent") == "4" and not pub.dirty
    again = EventPublisher(log, "edge/porch/events", linger=0.0)
    again.publish(paho, 100)
    assert paho.sent[2][2] == list(range(5, 11))  # 5 to 10 again: at least once


def test_the_first_event_after_a_pause_waits_for_the_next_ones(store):
    """With linger, an event waits that long (from when the publisher first saw it) for the
    ones after it: a command's three events leave in one message, not three."""
    from edge_agent.device.events import EventPublisher

    clock = Clock(100.0)
    log = EventLog(store, "porch")
    pub = EventPublisher(log, "edge/porch/events", linger=0.01, clock=clock)
    paho = _Paho()
    pub.publish(paho, 10)
    assert pub.due is None and not paho.sent  # nothing to publish: nothing waits
    _emit(log, 1)
    pub.publish(paho, 10)
    assert not paho.sent and pub.due == 100.01
    _emit(log, 2)
    clock.t = 100.005
    pub.publish(paho, 10)
    assert not paho.sent
    clock.t = 100.011
    pub.publish(paho, 10)
    assert [s for _, _, s in paho.sent] == [[1, 2, 3]] and pub.due is None


def test_a_batch_is_an_array_of_the_events_a_single_one_an_object(store):
    """One event ready: the object, as agent.history gives it; several: an array of those objects
    in seq order, at most BATCH_MAX events or about BATCH_BYTES per message."""
    from edge_agent.device.events import EventPublisher

    log = EventLog(store, "porch")
    _emit(log, 1)
    pub = EventPublisher(log, "edge/porch/events", linger=0.0)
    paho = _Paho()
    pub.publish(paho, 10)
    assert paho.payloads[0] == log.history()["events"][0]
    pub.acked(1)
    _emit(log, EventPublisher.BATCH_MAX + 10)
    pub.publish(paho, 10)
    batch = paho.payloads[1]
    assert isinstance(batch, list) and batch == log.history(after=1, limit=len(batch))["events"]
    assert 1 < len(batch) <= EventPublisher.BATCH_MAX and len(json.dumps(batch, separators=(",", ":"))) <= EventPublisher.BATCH_BYTES


def test_a_disabled_log_writes_nothing(store):
    """[events] enabled = false: no rows, an empty history (for SD cards that must be spared)."""
    log = EventLog(store, "porch", enabled=False)
    assert _emit(log, 5) == [{}] * 5
    assert store.query("select count(*) from events")[0][0] == 0
    assert log.history()["events"] == [] and log.last_seq() == 0


def test_rows_are_bounded_by_max_rows(store):
    """The table keeps at most max_rows rows, the newest; seq goes on."""
    log = EventLog(store, "porch", max_rows=1000)
    for _ in range(6):
        _emit(log, 500)
        assert store.query("select count(*) from events")[0][0] <= 1000
    h = log.history(after=0, limit=1)
    assert h["last"] == 3000 and h["oldest"] > 2000 and h["events"][0]["seq"] == h["oldest"]


@pytest.mark.parametrize(("args", "words"), [
    ({"limit": "x"}, "'limit' must be int"),
    ({"limit": 0}, "limit must be 1 to 1000"),
    ({"limit": 5000}, "limit must be 1 to 1000"),
    ({"after": -1}, "after must be a seq"),
    ({"after": 1.5}, "'after' must be int"),
    ({"event": "exploded"}, "event must be one of"),
    ({"since": 10, "until": 5}, "is after until"),
    ({"bogus": 1}, "unknown argument 'bogus'"),
])
def test_agent_history_rejects_bad_input_clearly(args, words):
    """agent.history names the wrong argument and why, before anything is queued."""
    registry = build_registry(parse_settings({"device": {"id": "porch"}}), Runtime())
    with pytest.raises(InvalidArguments, match=words):
        registry.validate("agent.history", args)


def test_agent_revoke_needs_a_valid_id():
    registry = build_registry(parse_settings({"device": {"id": "porch"}}), Runtime())
    with pytest.raises(InvalidArguments, match="missing argument 'id'"):
        registry.validate("agent.revoke", {})
    with pytest.raises(InvalidArguments, match="id must be"):
        registry.validate("agent.revoke", {"id": "has space"})


def test_events_config_is_checked(tmp_path):
    """[events] keys are typed and bounded; a wrong one names the key."""
    s = parse_settings({"events": {"keep": "2d", "max_rows": 5000, "outbox_max": 100, "enabled": False}})
    assert (s.events.keep, s.events.max_rows, s.events.outbox_max, s.events.enabled) == (172800.0, 5000, 100, False)
    assert parse_settings({}).events.enabled
    from edge_agent.errors import ConfigError

    with pytest.raises(ConfigError, match=r"events\.max_rows"):
        parse_settings({"events": {"max_rows": 10}})
    with pytest.raises(ConfigError, match=r"events\.keep"):
        parse_settings({"events": {"keep": "1m"}})
    with pytest.raises(ConfigError, match=r"events\.outbox_maxx"):
        parse_settings({"events": {"outbox_maxx": 1}})


def test_cli_send_rejects_bad_history_limit(tmp_path):
    """`edge-agent send agent.history limit=x` is a usage error (exit 2) naming the argument."""
    cfg = agent_config(tmp_path, device="porch")
    out = subprocess.run([sys.executable, "-m", "edge_agent", "send", "agent.history", "limit=x", "--config", str(cfg)],
                         capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert out.returncode == 2 and "'limit' must be int" in out.stderr


# --------------------------------------------------------------------------- the real daemon


@pytest.fixture
def agent(broker, daemon_factory, listener_factory, tmp_path):
    prefix = f"ev{uuid.uuid4().hex[:6]}"
    cfg = agent_config(tmp_path, device="porch", groups=["garden"], mqtt_port=broker.port, prefix=prefix,
                       devices=LAMP, tasks="fleet_tasks",
                       jobs=[{"name": "tick", "every": "1h", "action": "agent.ping"}])
    d = daemon_factory(cfg)
    listener = listener_factory(broker.port, [f"{prefix}/#"])
    d.start()
    listener.wait_for(lambda m: m.topic == f"{prefix}/porch/status" and m.payload == b"online")
    return d, listener, prefix


def _final(listener, cid, timeout=15.0):
    msgs = listener.wait_for(lambda m: m.topic.endswith("/reply") and json.loads(m.payload).get("id") == cid
                             and json.loads(m.payload)["status"] != "accepted", timeout=timeout)
    return json.loads(msgs[0].payload)


def _events(listener, prefix, pred=lambda e: True, count=1, timeout=15.0):
    msgs = listener.wait_for(lambda m: m.topic == f"{prefix}/porch/events" and pred(json.loads(m.payload)),
                             count=count, timeout=timeout)
    return [json.loads(m.payload) for m in msgs]


def _call(listener, prefix, action, args=None):
    cid = f"q-{uuid.uuid4().hex[:8]}"
    listener.publish(f"{prefix}/porch/cmd/{action}", {"id": cid, "args": args or {}})
    reply = _final(listener, cid)
    assert reply["status"] == "succeeded", reply
    return reply["result"]


def test_a_command_emits_received_started_succeeded_in_seq_order(agent):
    """received (source, args), started (attempt), succeeded (attempt, runtime, result): one each, in
    seq order, on P/D/events; agent.history returns the same documents."""
    _, listener, p = agent
    listener.publish(f"{p}/porch/cmd/gpio.set", {"id": "e1", "args": {"device": "lamp", "value": "on"}})
    evs = _events(listener, p, lambda e: e["id"] == "e1", count=3)
    assert [e["event"] for e in evs] == ["received", "started", "succeeded"]
    assert [e["seq"] for e in evs] == sorted(e["seq"] for e in evs) and evs[2]["seq"] - evs[0]["seq"] >= 2
    rec, start, done = evs
    assert rec["source"] == "mqtt" and rec["args"] == {"device": "lamp", "value": "on"} and rec["action"] == "gpio.set"
    assert start["attempt"] == 1 and done["attempt"] == 1 and 0 <= done["runtime"] < 10
    assert done["result"] == {"device": "lamp", "value": "on"} and done["device"] == "porch"
    assert all(abs(e["ts"] - time.time()) < 60 for e in evs)
    hist = _call(listener, p, "agent.history", {"id": "e1"})
    assert hist["events"] == evs and hist["device"] == "porch" and hist["last"] >= done["seq"]
    # The queries themselves emit nothing (a polling monitor would fill the history): the events
    # leave in seq order, so any of agent.history's would come before the next ping's.
    listener.publish(f"{p}/porch/cmd/agent.ping", {"id": "e2"})
    _events(listener, p, lambda e: e["id"] == "e2" and e["event"] == "succeeded")
    assert not [m for m in listener.messages if m.topic.endswith("/events") and b"agent.history" in m.payload]


def test_failed_and_retried_then_revoked(agent):
    """A permanent failure emits failed; a retryable one emits retried with its next try; agent.revoke
    then cancels it (reply status revoked, a revoked event), and it never runs again."""
    d, listener, p = agent
    listener.publish(f"{p}/porch/cmd/broken", {"id": "b1"})
    assert _final(listener, "b1")["status"] == "failed"
    failed = _events(listener, p, lambda e: e["id"] == "b1" and e["event"] == "failed")[0]
    assert failed["error"]["type"] == "permanent" and failed["attempt"] == 1

    listener.publish(f"{p}/porch/cmd/flaky", {"id": "f1"})
    retried = _events(listener, p, lambda e: e["id"] == "f1" and e["event"] == "retried")[0]
    assert retried["attempt"] == 1 and retried["error"]["type"] == "retryable"
    assert 0 < retried["next_try"] - time.time() <= 3600
    assert _call(listener, p, "agent.revoke", {"id": "f1"}) == {"id": "f1", "revoked": True, "state": "revoked"}
    reply = _final(listener, "f1")
    assert reply["status"] == "revoked" and reply["error"]["type"] == "revoked"
    revoked = _events(listener, p, lambda e: e["id"] == "f1" and e["event"] == "revoked")[0]
    assert revoked["seq"] > retried["seq"]
    assert _call(listener, p, "agent.revoke", {"id": "f1"}) == {"id": "f1", "revoked": False, "state": "revoked"}
    assert _call(listener, p, "agent.revoke", {"id": "never-sent"}) == {"id": "never-sent", "revoked": False,
                                                                         "state": "unknown"}
    hist = d.cli("history", "--json")
    row = next(c for c in json.loads(hist.stdout)["commands"] if c["id"] == "f1")
    assert row["state"] == "revoked" and row["attempt"] == 1


def test_revoke_reports_a_running_command_as_running(agent, tmp_path):
    """A running command is not revoked: the answer says it is running; it then finishes."""
    _, listener, p = agent
    flag = tmp_path / "release"
    listener.publish(f"{p}/porch/cmd/hold", {"id": "h1", "args": {"path": str(flag)}})
    _events(listener, p, lambda e: e["id"] == "h1" and e["event"] == "started")
    assert _call(listener, p, "agent.revoke", {"id": "h1"}) == {"id": "h1", "revoked": False, "state": "running"}
    flag.write_text("")
    assert _final(listener, "h1")["status"] == "succeeded"


def test_status_jobs_and_state_document(agent):
    """agent.status and agent.jobs answer with the CLI's documents; the retained state carries
    groups, failures_24h, last_seq and ts."""
    d, listener, p = agent
    status = _call(listener, p, "agent.status")
    local = json.loads(d.cli("status", "--json").stdout)
    assert status["device"] == "porch" and status["daemon"]["running"] and status["daemon"]["pid"] == local["daemon"]["pid"]
    assert set(status) == set(local) and status["mqtt"]["connected"]
    jobs = _call(listener, p, "agent.jobs")
    local_jobs = json.loads(d.cli("jobs", "--json").stdout)
    assert [j["name"] for j in jobs["jobs"]] == ["tick"] and set(jobs) == set(local_jobs)
    assert jobs["jobs"][0]["trigger"] == local_jobs["jobs"][0]["trigger"]
    listener.publish(f"{p}/porch/cmd/broken", {"id": "s1"})
    _final(listener, "s1")

    def fresh_state(m):
        if m.topic != f"{p}/porch/state":
            return False
        doc = json.loads(m.payload)
        return doc.get("failures_24h") == 1

    state = json.loads(listener.wait_for(fresh_state, timeout=20)[-1].payload)
    assert state["groups"] == ["garden"] and state["last_seq"] >= 3 and abs(state["ts"] - time.time()) < 60


def test_a_job_firing_emits_fired(broker, daemon_factory, listener_factory, tmp_path):
    """A job firing emits fired (job, planned instant, the command id it queued) next to that command's events."""
    prefix = f"ev{uuid.uuid4().hex[:6]}"
    cfg = agent_config(tmp_path, device="porch", mqtt_port=broker.port, prefix=prefix,
                       jobs=[{"name": "beat", "every": "2s", "action": "agent.ping"}])
    d = daemon_factory(cfg)
    listener = listener_factory(broker.port, [f"{prefix}/porch/events"])
    d.start()
    fired = json.loads(listener.wait_for(lambda m: json.loads(m.payload)["event"] == "fired", timeout=20)[0].payload)
    assert fired["job"] == "beat" and fired["action"] == "agent.ping" and fired["id"].startswith("job:beat:")
    assert fired["id"] == f"job:beat:{fired['planned']:.0f}" and fired["planned"] <= fired["ts"] + 1
    done = listener.wait_for(lambda m: json.loads(m.payload)["id"] == fired["id"]
                             and json.loads(m.payload)["event"] == "succeeded", timeout=20)
    assert json.loads(done[0].payload)["seq"] > fired["seq"]
    received = [json.loads(m.payload) for m in listener.messages if json.loads(m.payload)["id"] == fired["id"]
                and json.loads(m.payload)["event"] == "received"]
    assert received and received[0]["source"] == "schedule"


@pytest.mark.slow
def test_events_beyond_the_outbox_bound_are_dropped_and_refetched_by_seq(own_broker, daemon_factory, tmp_path):
    """With the broker away, of the unsent events only the newest [events] outbox_max are
    published when it is back (replies all are); a consumer that was following sees the jump in
    seq and fills it with agent.history: every event once, none lost."""
    import sqlite3
    import threading

    from edge_agent.config import MqttSettings, load_settings
    from edge_agent.device.client import LocalClient
    from edge_agent.device.commands import NewCommand
    from edge_agent.fleet.client import FleetClient
    from edge_agent.fleet.stream import EventStream

    prefix = f"ob{uuid.uuid4().hex[:6]}"
    cfg = agent_config(tmp_path, device="porch", mqtt_port=own_broker.port, prefix=prefix, events={"outbox_max": 20})
    d = daemon_factory(cfg)
    d.start()
    seen: list[dict] = []
    cond = threading.Condition()

    def collect(doc):
        with cond:
            seen.append(doc)
            cond.notify_all()

    def wait_succeeded(cid, timeout=120):
        with cond:
            assert cond.wait_for(lambda: any(e["id"] == cid and e["event"] == "succeeded" for e in seen), timeout), (
                cid, len(seen), d.log.read_text()[-2000:])

    client = FleetClient(MqttSettings(host="127.0.0.1", port=own_broker.port, topic_prefix=prefix))
    client.connect()
    stream = EventStream(client, collect, devices=["porch"])
    raw = _Persistent(own_broker.port, f"{prefix}/porch/events")
    try:
        stream.start()
        local = LocalClient(load_settings(str(cfg)))
        local.submit(NewCommand(action="agent.ping", args={}, id="before", source="cli"))
        wait_succeeded("before")
        with raw.cond:
            assert raw.cond.wait_for(lambda: len(raw.seqs) >= 3, 30)
            before_last = max(raw.seqs)
        own_broker.stop()
        ids = [f"away-{i:02d}" for i in range(60)]
        for cid in ids:
            local.submit(NewCommand(action="agent.ping", args={}, id=cid, source="cli"))
        db = sqlite3.connect(f"file:{tmp_path / 'agent.db'}?mode=ro", uri=True)
        wait_until(lambda: db.execute("select count(*) from commands where state = 'succeeded' and id like 'away-%'")
                   .fetchone()[0] >= 60, 60, interval=0.1, message="the commands did not run while the broker was away")
        replies = db.execute("select count(*) from outbox where topic = ?", (f"{prefix}/porch/reply",)).fetchone()[0]
        assert replies >= 60  # replies all wait
        assert db.execute("select count(*) from events where id like 'away-%'").fetchone()[0] == 180
        last = db.execute("select max(seq) from events").fetchone()[0]
        db.close()
        own_broker.start()
        wait_succeeded(ids[-1])
        with raw.cond:  # what the agent published after the outage: only the newest 20
            assert raw.cond.wait_for(lambda: last in raw.seqs, 60), raw.seqs
        time.sleep(0.5)  # not synchronisation: room for anything more it would (wrongly) publish
        with raw.cond:
            assert sorted(s for s in raw.seqs if s > before_last) == list(range(last - 19, last + 1))
    finally:
        stream.stop()
        client.close()
        raw.close()
    assert stream.fills >= 1 and stream.lost == {}
    seqs = [e["seq"] for e in seen]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    for cid in ids:
        assert [e["event"] for e in seen if e["id"] == cid] == ["received", "started", "succeeded"], cid


class _Persistent:
    """A subscriber with a persistent session (it survives the broker's restart): records the seqs."""

    def __init__(self, port, topic):
        import threading

        import paho.mqtt.client as mqtt
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        self.seqs: list[int] = []
        self.cond = threading.Condition()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"raw-{uuid.uuid4().hex[:8]}",
                                  protocol=mqtt.MQTTv5)
        ready = threading.Event()
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, 1)
        self.client.on_subscribe = lambda *a: ready.set()
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(0.2, 1)
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 600
        self.client.connect("127.0.0.1", port, clean_start=False, properties=props)
        self.client.loop_start()
        assert ready.wait(10)

    def _on_message(self, c, u, msg):
        doc = json.loads(msg.payload)
        with self.cond:
            self.seqs.extend(e["seq"] for e in (doc if isinstance(doc, list) else [doc]))
            self.cond.notify_all()

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


@pytest.mark.slow  # a storm of 1,000 commands end to end: 2-3 s
def test_a_burst_of_1000_commands_costs_at_most_2_5_messages_each_and_every_event_arrives_once_in_order(
        broker, daemon_factory, tmp_path):
    """1,000 MQTT commands at once: the agent publishes (replies, events, state: everything on its
    topics) at most 2.5 messages per command on average, since events leave in batches; an
    EventStream gets all 3,000 events of the burst once each, in seq order, with no fill needed."""
    import threading

    import paho.mqtt.client as mqtt

    from edge_agent.config import MqttSettings
    from edge_agent.fleet.client import FleetClient
    from edge_agent.fleet.stream import EventStream

    n = 1000
    prefix = f"bu{uuid.uuid4().hex[:6]}"
    cfg = agent_config(tmp_path, device="porch", mqtt_port=broker.port, prefix=prefix)
    d = daemon_factory(cfg)
    d.start()
    base = f"{prefix}/porch/"
    counts: dict[str, int] = {}
    finals: set[str] = set()
    seen: list[dict] = []
    cond = threading.Condition()

    def on_message(c, u, msg):
        leaf = msg.topic[len(base):].split("/")[0]
        if leaf == "cmd":
            return
        with cond:
            counts[leaf] = counts.get(leaf, 0) + 1
            if leaf == "reply":
                doc = json.loads(msg.payload)
                if doc["status"] != "accepted":
                    assert doc["status"] == "succeeded", doc
                    finals.add(doc["id"])
            cond.notify_all()

    def collect(doc):
        with cond:
            seen.append(doc)
            cond.notify_all()

    raw = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    subscribed = threading.Event()
    raw.on_connect = lambda c, u, f, rc, p: c.subscribe(f"{base}#", 1)
    raw.on_subscribe = lambda *a: subscribed.set()
    raw.on_message = on_message
    raw.connect("127.0.0.1", broker.port)
    raw.loop_start()
    client = FleetClient(MqttSettings(host="127.0.0.1", port=broker.port, topic_prefix=prefix))
    client.connect()
    stream = EventStream(client, collect, devices=["porch"])
    try:
        assert subscribed.wait(10)
        # Until the agent's start-up messages (online, state, the lamp's state) are in: not counted.
        with cond:
            assert cond.wait_for(lambda: counts.get("state") and counts.get("status"), 30), counts
            counts.clear()
        stream.start()
        ids = [f"burst-{i:04d}" for i in range(n)]
        infos = [raw.publish(f"{base}cmd/agent.ping", json.dumps({"id": cid}), qos=1) for cid in ids]
        for info in infos:
            info.wait_for_publish(30)
        with cond:
            assert cond.wait_for(lambda: len(finals) == n and sum(1 for e in seen if e["id"] in finals
                                                                  and e["event"] == "succeeded") == n, 120), (
                len(finals), len(seen))
            published = dict(counts)
    finally:
        stream.stop()
        client.close()
        raw.loop_stop()
        raw.disconnect()
    per_command = sum(published.values()) / n
    assert published["reply"] == 2 * n  # accepted and succeeded, each its own message
    assert per_command <= 2.5, published
    mine = [e for e in seen if str(e.get("id", "")).startswith("burst-")]
    assert len(mine) == 3 * n
    seqs = [e["seq"] for e in seen]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # each once, in order, no gap
    for cid in ids:
        assert [e["event"] for e in mine if e["id"] == cid] == ["received", "started", "succeeded"], cid
    assert stream.fills == 0 and stream.lost == {}


@settings(max_examples=200)
@given(attempts=st.integers(0, 10), started=st.floats(0, 4e9) | st.integers(0, 4_000_000_000),
       took=st.floats(0, 1e5) | st.integers(0, 100), result=st.none() | st.integers() | st.floats()
       | st.text(max_size=6) | st.lists(st.integers(), max_size=3) | st.tuples(st.text(max_size=3)))
def test_a_succeeded_events_extras_text_is_what_json_dumps_makes(attempts, started, took, result):
    """The worker writes a `succeeded` event's extras from the stored result text: the same bytes
    as json.dumps of the extras (what every other event gets), whatever the result and times."""
    from edge_agent.device.commands import Command
    from edge_agent.device.events import _succeeded_json
    from edge_agent.device.journal import encode_result

    text = encode_result(result)
    cmd = Command(seq=1, id="c", action="a", args={}, source="mqtt", state="succeeded", attempts=attempts,
                  created=started, not_before=None, deadline=None, started=started, finished=started + took,
                  next_attempt=None, result=json.loads(text) if text is not None else None, error_type=None,
                  error_message=None, reply_to=None, correlation=None, parked=False, result_json=text)
    runtime = round(cmd.finished - cmd.started, 6) if cmd.finished and cmd.started else None
    made = _succeeded_json(cmd, runtime)
    expected = json.dumps({"attempt": attempts, "runtime": runtime, "result": cmd.result}, separators=(",", ":"),
                          default=str)
    assert made is None or made == expected
    if type(runtime) is float or runtime is None:
        assert made is not None  # the fast path is taken for the daemon's own rows (float times)
