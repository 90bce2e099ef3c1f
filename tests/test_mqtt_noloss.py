"""No loss over MQTT: 1,000 QoS 1 commands while the agent is SIGKILLed and the broker restarts.

A publisher with its own persistent session sends 1,000 commands with unique ids
(agent.ping, gpio.set on a mock output, and a user task that takes a while, so
kills land mid-run and the broker's outages find work still running). Meanwhile
the daemon is SIGKILLed at random moments (at least 5 times, once while the broker
is down) and restarted, and the broker is stopped and started twice. A recorder with
a persistent session collects every reply across the outages.

What is checked, for every command the broker acknowledged (PUBACK seen by the
publisher):
- exactly one final outcome: the distinct non-duplicate final replies for its id
  number exactly one (``succeeded``, or ``failed`` with an error type and message);
  replies flagged ``"duplicate": true`` (the broker redelivered a command the agent
  had committed but not yet acked when killed) must repeat that same outcome; the
  same reply delivered twice on the wire (QoS 1 is at least once) is counted as a
  duplicate delivery, printed, and not a failure;
- an ``accepted`` reply, first seen before the final one;
- the agent's order: every reply carries ``ts`` (its creation or finish time, taken
  inside the transaction that also writes the reply to the outbox, so ``ts`` order is
  outbox order); the first deliveries of non-duplicate replies must come with
  non-decreasing ``ts``, across restarts of both sides;
- replies produced while the broker was down (``ts`` inside an outage) arrive, after
  it is back;
- the journal agrees with the replies.

The seed is printed; set ``NOLOSS_SEED`` to replay a run's chaos schedule.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import random
import sqlite3
import threading
import time
import uuid
from typing import Any

import pytest

from bench.harness import WaitTimeout, wait_until
from tests.configs import LAMP, agent_config

N_COMMANDS = 1000
RATE = 55.0  # commands per second offered by the publisher
KILLS = 6  # at least 5 required; one of them lands while the broker is down
OUTAGES = 2
FINAL = ("succeeded", "failed", "expired")

@pytest.fixture
def persistent_broker(own_broker):
    """``own_broker``, made able to write its persistence file when the tests run as root.

    mosquitto started as root drops to the ``mosquitto`` user, which cannot write into
    pytest's 0700 tmp folders: every save fails ("Error saving in-memory database ...
    Permission denied") and a restart loses all sessions, subscriptions and queued
    messages. ``user root`` keeps it as it was started.
    """
    conf = own_broker.conf.read_text()
    if os.geteuid() == 0 and not any(line.strip().startswith("user ") for line in conf.splitlines()):
        own_broker.stop()
        own_broker.conf.write_text(conf + "user root\n")
        own_broker.start()
    log = own_broker.workdir / "mosquitto.log"
    own_broker.log_offset = log.stat().st_size if log.exists() else 0
    return own_broker


def _assert_broker_saved(broker: Any) -> None:
    text = (broker.workdir / "mosquitto.log").read_bytes()[getattr(broker, "log_offset", 0):].decode(errors="replace")
    assert "Error saving" not in text, "the broker could not save its persistence file: " + \
        text[text.index("Error saving"):][:300]


def _paho() -> Any:
    import paho.mqtt.client as mqtt

    return mqtt


def _session_props(expiry: int = 3600) -> Any:
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = expiry
    return props


def _nodelay(client: Any, userdata: Any, sock: Any) -> None:
    import socket

    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class Recorder:
    """A persistent-session subscriber that reconnects and resubscribes across broker restarts."""

    def __init__(self, port: int, topic: str, client_id: str):
        mqtt = _paho()
        self.topic = topic
        self.records: list[tuple[float, bytes, bool]] = []  # (arrival wall time, payload, dup flag)
        self.cond = threading.Condition()
        self.subscribed = threading.Event()
        self.connects = 0
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        self.client.reconnect_delay_set(min_delay=0.05, max_delay=0.5)
        self.client.on_socket_open = _nodelay
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port, keepalive=5, clean_start=False, properties=_session_props())
        self.client.loop_start()
        assert self.subscribed.wait(10), "recorder did not subscribe"

    def _on_connect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        if rc.is_failure:
            return
        self.connects += 1
        client.subscribe([(self.topic, 1)])  # also on every reconnect: paho does not resubscribe

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        with self.cond:
            self.records.append((time.time(), bytes(msg.payload), bool(msg.dup)))
            self.cond.notify_all()

    def snapshot(self) -> list[tuple[float, bytes, bool]]:
        with self.cond:
            return list(self.records)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class Publisher:
    """A persistent-session publisher: paho keeps unacknowledged QoS 1 messages and resends them
    after every reconnect, so it keeps publishing across broker restarts."""

    def __init__(self, port: int, client_id: str):
        mqtt = _paho()
        self.connected = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        self.client.reconnect_delay_set(min_delay=0.05, max_delay=0.5)
        self.client.max_inflight_messages_set(50)
        self.client.max_queued_messages_set(0)
        self.client.on_socket_open = _nodelay
        self.client.on_connect = lambda c, u, f, rc, p: self.connected.set() if not rc.is_failure else None
        self.client.on_disconnect = lambda *a: self.connected.clear()
        self.acked: set[int] = set()  # mids the broker acknowledged (PUBACK, success reason)
        self.unrouted: set[int] = set()
        self.client.on_publish = self._on_publish
        self.client.connect("127.0.0.1", port, keepalive=5, clean_start=False, properties=_session_props())
        self.client.loop_start()
        assert self.connected.wait(10), "publisher did not connect"

    def _on_publish(self, client: Any, userdata: Any, mid: int, rc: Any, props: Any) -> None:
        # (MessageInfo.is_published() raises once a publish met a closed socket, even though
        # paho keeps the message and sends it after the reconnect: track PUBACKs by mid.)
        if not rc.is_failure:
            self.acked.add(mid)
            if rc.value != 0:  # 16: "no matching subscribers": the broker dropped it (the agent's session is gone)
                self.unrouted.add(mid)

    def publish(self, topic: str, payload: bytes) -> int:
        info = self.client.publish(topic, payload, qos=1)
        if info.rc not in (0, 4):  # success, or "not connected": queued and sent after the reconnect
            raise AssertionError(f"paho refused a publish: {info.rc}")
        return info.mid

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _commands(rng: random.Random, run: str) -> list[tuple[str, str, dict[str, Any]]]:
    out: list[tuple[str, str, dict[str, Any]]] = []
    for i in range(N_COMMANDS):
        cid = f"{run}-{i:04d}"
        kind = i % 3
        if kind == 0:
            out.append((cid, "agent.ping", {}))
        elif kind == 1:
            out.append((cid, "gpio.set", {"device": "lamp", "value": rng.choice(["on", "off"])}))
        else:
            out.append((cid, "mqtt_work", {"n": i, "ms": round(rng.uniform(20, 250), 1)}))
    return out


def _plan(rng: random.Random, span: float) -> list[tuple[float, str]]:
    """(seconds after the start, event): kills at random moments at least 1.5 s apart, two broker outages.

    Events run one after another: one that falls due during an outage runs right after it.
    """
    outage_starts = [rng.uniform(0.15, 0.35) * span, rng.uniform(0.6, 0.8) * span]
    n, gap, lo, hi = KILLS - 1, 1.5, 0.05 * span, 0.95 * span
    free = sorted(rng.uniform(0, hi - lo - (n - 1) * gap) for _ in range(n))
    kills = [lo + t + i * gap for i, t in enumerate(free)]
    return sorted([(t, "outage") for t in outage_starts] + [(t, "kill") for t in kills])


@pytest.mark.slow
def test_no_acknowledged_command_is_lost(persistent_broker, daemon_factory, tmp_path):
    """Every command the broker acknowledged gets exactly one final reply, in the agent's order, through
    6 SIGKILLs of the agent and 2 broker restarts."""
    own_broker = persistent_broker
    seed = int(os.environ.get("NOLOSS_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    print(f"\nNO-LOSS seed={seed} (replay with NOLOSS_SEED={seed})")  # shown with a failure's output
    run = uuid.uuid4().hex[:6]
    dev, prefix = "nl", f"nl{run}"
    db = tmp_path / "agent.db"
    d = daemon_factory(agent_config(tmp_path, device=dev, mqtt_port=own_broker.port, prefix=prefix, devices=LAMP,
                                    tasks="mqtt_noloss_tasks", mqtt={"keepalive": "5s"}))
    reply_topic = f"{prefix}/{dev}/reply"
    recorder = Recorder(own_broker.port, reply_topic, f"noloss-rec-{run}")
    publisher = Publisher(own_broker.port, f"noloss-pub-{run}")
    try:
        d.start()
        # The agent's session must exist (subscribed) before the first command, or the broker drops it.
        warm = f"{run}-warmup"

        def warmed_up() -> bool:
            if any(json.loads(p)["id"] == warm and json.loads(p)["status"] == "succeeded" for _, p, _ in recorder.snapshot()):
                return True
            publisher.publish(f"{prefix}/{dev}/cmd/agent.ping", json.dumps({"id": warm}).encode())
            return False

        wait_until(warmed_up, 15, interval=0.2, message="the agent did not answer the warm-up ping")
        commands = _commands(rng, run)
        span = N_COMMANDS / RATE
        plan = _plan(rng, span)
        infos: list[tuple[str, int]] = []  # (command id, paho mid)
        sent_lock = threading.Lock()

        def publish_all() -> None:
            t0 = time.monotonic()
            for i, (cid, action, args) in enumerate(commands):
                delay = t0 + i / RATE - time.monotonic()
                if delay > 0:
                    time.sleep(delay)  # pacing: at its planned moment
                payload = json.dumps({"id": cid, "args": args}).encode()
                mid = publisher.publish(f"{prefix}/{dev}/cmd/{action}", payload)
                with sent_lock:
                    infos.append((cid, mid))

        def in_progress() -> int:
            accepted: set[str] = set()
            final: set[str] = set()
            for _, payload, _ in recorder.snapshot():
                doc = json.loads(payload)
                (final if doc["status"] in FINAL else accepted).add(doc["id"])
            return len(accepted - final)

        kills = broker_restarts = 0
        outages: list[tuple[float, float]] = []  # wall time: broker gone .. broker started again

        def kill_and_restart() -> None:
            nonlocal kills
            d.kill()
            kills += 1
            time.sleep(rng.uniform(0.0, 0.3))  # the plan: down this long
            d.start()

        start = time.monotonic()
        pub_thread = threading.Thread(target=publish_all, name="publisher", daemon=True)
        pub_thread.start()
        for at, event in plan:
            delay = start + at - time.monotonic()
            if delay > 0:
                time.sleep(delay)  # pacing: at its planned moment
            if event == "kill":
                kill_and_restart()
            else:
                # Stop the broker while commands are still running, so replies are produced while it is down.
                with contextlib.suppress(WaitTimeout):  # (stopped after 3 s all the same)
                    wait_until(lambda: in_progress() >= 4, 3.0)
                own_broker.stop()
                gone = time.time()
                time.sleep(rng.uniform(0.3, 0.6))  # the plan: the broker stays down this long
                if len(outages) == 0:
                    kill_and_restart()  # a crash while the broker is down: its replies must survive it
                time.sleep(rng.uniform(0.8, 1.5))  # ... and this long
                back_begin = time.time()
                own_broker.start()
                broker_restarts += 1
                outages.append((gone, back_begin))
        pub_thread.join(span + 60)
        assert not pub_thread.is_alive(), "the publisher did not finish"

        # Every message is acknowledged by the broker in the end (paho resends after reconnects).
        with contextlib.suppress(WaitTimeout):  # what is never acknowledged is counted and failed on below
            wait_until(lambda: all(mid in publisher.acked for _, mid in infos), 30, interval=0.05)
        acked = [cid for cid, mid in infos if mid in publisher.acked]

        # Wait for a final reply to every acknowledged command.
        def all_final() -> bool:
            finals = {json.loads(p)["id"] for _, p, _ in recorder.snapshot() if json.loads(p)["status"] in FINAL}
            return all(cid in finals for cid in acked)

        with contextlib.suppress(WaitTimeout):  # what has no final reply is reported below, command by command
            wait_until(all_final, 45, interval=0.1)
        time.sleep(0.5)  # not synchronisation: a pause in which late wire duplicates, if any, land in the count
        records = recorder.snapshot()
        assert d.terminate() == 0
        elapsed = time.monotonic() - start

        # ------------------------------------------------------------------ analysis
        by_id: dict[str, list[tuple[int, dict[str, Any], bytes]]] = collections.defaultdict(list)
        for idx, (_, payload, _) in enumerate(records):
            doc = json.loads(payload)
            by_id[doc["id"]].append((idx, doc, payload))

        final_count = dup_deliveries = dup_flagged = 0
        problems: list[str] = []
        early_finals: list[str] = []  # the final reply arrived before the accepted one (an order break too)
        outcomes: dict[str, dict[str, Any]] = {}
        for cid in acked:
            replies = by_id.get(cid, [])
            finals_raw = [(i, doc, p) for i, doc, p in replies if doc["status"] in FINAL]
            own = {p for _, doc, p in finals_raw if not doc.get("duplicate")}
            flagged = [doc for _, doc, _ in finals_raw if doc.get("duplicate")]
            final_count += len(finals_raw)
            dup_flagged += sum(1 for _, doc, _ in replies if doc.get("duplicate"))
            dup_deliveries += sum(1 for _, doc, _ in finals_raw if not doc.get("duplicate")) - len(own)
            if len(own) != 1:
                if own:
                    problems.append(f"{cid}: {len(own)} distinct final outcomes: {sorted(own)}")
                continue
            outcome = json.loads(next(iter(own)))
            outcomes[cid] = outcome
            if outcome["status"] not in ("succeeded", "failed"):
                problems.append(f"{cid}: final status {outcome['status']!r}")
            error = outcome.get("error") or {}
            if outcome["status"] == "failed" and not (error.get("type") and error.get("message")):
                problems.append(f"{cid}: failed without a reason: {outcome}")
            for doc in flagged:
                if (doc["status"], doc["result"], doc["error"]) != (outcome["status"], outcome["result"], outcome["error"]):
                    problems.append(f"{cid}: a duplicate reply disagrees with the outcome: {doc} vs {outcome}")
            accepted = [i for i, doc, _ in replies if doc["status"] == "accepted" and not doc.get("duplicate")]
            if not accepted:
                problems.append(f"{cid}: no accepted reply")
            elif min(accepted) > min(i for i, _, _ in finals_raw):
                early_finals.append(cid)

        missing = [cid for cid in acked if cid not in outcomes]
        unknown_ids = sorted(set(by_id) - {cid for cid, _, _ in commands} - {warm})
        unrouted = [cid for cid, mid in infos if mid in publisher.unrouted]

        # The agent's order: first deliveries of its own (non-duplicate) replies carry non-decreasing ts.
        seen: set[bytes] = set()
        order_breaks = []
        last_ts, last_doc = 0.0, None
        for idx, (_, payload, _) in enumerate(records):
            if payload in seen:
                continue
            seen.add(payload)
            doc = json.loads(payload)
            if doc.get("duplicate") or doc["id"] == warm:
                continue
            if doc["ts"] < last_ts:
                order_breaks.append((idx, last_doc, doc))
            last_ts, last_doc = doc["ts"], doc

        # Replies produced while the broker was down arrive, after it is back.
        during = []
        for gone, back in outages:
            made = [(t, json.loads(p)) for t, p, _ in records if gone < json.loads(p)["ts"] < back]
            during.append(len({(doc["id"], doc["status"]) for _, doc in made}))
            early = [doc for t, doc in made if t < back]
            assert not early, f"replies made while the broker was down arrived before it was back: {early[:3]}"

        # The journal agrees with what was said.
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        journal = {cid: (state, finished) for cid, state, finished in
                   con.execute("select id, state, finished from commands")}
        con.close()
        disagree = [cid for cid, o in outcomes.items()
                    if cid not in journal or journal[cid][0] != o["status"] or round(journal[cid][1], 3) != o["ts"]]

        log_text = d.log.read_text(errors="replace")
        statuses = collections.Counter(o["status"] for o in outcomes.values())
        errors = collections.Counter(o["error"]["type"] for o in outcomes.values() if o["error"])
        print(f"\nNO-LOSS seed={seed}: sent {len(infos)}, acked {len(acked)}, final replies {len(outcomes)} "
              f"(outcomes {dict(statuses)}, errors {dict(errors)}), missing {len(missing)}, "
              f"duplicate deliveries {dup_deliveries} (+{dup_flagged} replies flagged duplicate), "
              f"kills {kills}, broker restarts {broker_restarts}, replies made during outages {during}, "
              f"order breaks {len(order_breaks)} (+{len(early_finals)} finals before accepted), recorder connects {recorder.connects}, {elapsed:.1f}s", flush=True)

        _assert_broker_saved(own_broker)
        assert kills >= 5 and broker_restarts == OUTAGES
        assert len(infos) == N_COMMANDS
        assert len(acked) == N_COMMANDS, f"{N_COMMANDS - len(acked)} command(s) never acknowledged by the broker"
        assert not unrouted, f"the broker had no subscriber for {len(unrouted)} command(s) (lost session?): {unrouted[:10]}"
        assert not missing, f"{len(missing)} acknowledged command(s) without a final reply: " + "; ".join(
            f"{cid}: replies {[doc for _, doc, _ in by_id.get(cid, [])]}, journal {journal.get(cid)}" for cid in missing[:10])
        assert not problems, "\n".join(problems[:30])
        assert not unknown_ids, f"replies for ids never sent: {unknown_ids[:10]}"

        assert all(n > 0 for n in during), f"no reply was produced during an outage ({during}): the test proved nothing"
        assert not disagree, f"journal and replies disagree for {disagree[:10]}"
        assert "Traceback" not in log_text, log_text[log_text.index("Traceback") - 500:][:4000]
        if order_breaks or early_finals:
            context = [f"  final before accepted: {early_finals[:10]}"] if early_finals else []
            for idx, _, _ in order_breaks[:3]:
                context.append("\n".join(f"  #{i} t={records[i][0]:.3f} dup={records[i][2]} {records[i][1][:160]!r}"
                                         for i in range(max(0, idx - 6), min(len(records), idx + 3))))
            message = (f"{len(order_breaks)} replies out of the agent's order (outages {outages}):\n"
                       + "\n".join(context))
            raise AssertionError(message)
    finally:
        recorder.close()
        publisher.close()

