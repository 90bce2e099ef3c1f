"""Replies after a crash: a SIGKILL during a flow of 1,000 replies repeats only a bounded few, byte for byte.

QoS 1 allows a repeat of what was in flight. The agent deletes acknowledged outbox rows
in batches (``REMOVE_BATCH`` rows or ``REMOVE_EVERY`` seconds, no fsync of their own), so
what a crash can publish again is the window of unacknowledged messages plus fewer than
``REMOVE_BATCH`` acknowledged ones. Each repeat is the stored message again, so it is
identical to the first copy (same id, status, ts) and a consumer can drop it.
"""

from __future__ import annotations

import collections
import json
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from bench.harness import wait_until
from edge_agent.device.mqtt import REMOVE_BATCH, WINDOW
from tests.configs import agent_config
from tests.conftest import Daemon

pytestmark = pytest.mark.slow

COMMANDS = 500  # an `accepted` and a `succeeded` reply each: 1,000 replies
KILL_AFTER = 400  # replies seen before the SIGKILL


def _receive_maximum(broker: Any) -> int:
    """The broker's Receive Maximum (mosquitto's max_inflight_messages, 20 unless its config says)."""
    for line in broker.conf.read_text().splitlines():
        if line.startswith("max_inflight_messages"):
            return int(line.split()[1])
    return 20


def test_a_kill_during_a_flow_of_replies_repeats_at_most_the_window_and_a_batch(own_broker, listener_factory,
                                                                               tmp_path: Path):
    """SIGKILL while 1,000 replies stream out: after the restart every command has its final reply,
    repeats number at most the in-flight window plus one delete batch, and each is byte-identical."""
    prefix = f"rep{uuid.uuid4().hex[:6]}"
    daemon = Daemon(agent_config(tmp_path, device="rep", mqtt_port=own_broker.port, prefix=prefix))
    listener = listener_factory(own_broker.port, [f"{prefix}/rep/reply", f"{prefix}/rep/status"])
    try:
        daemon.start()
        listener.wait_for(lambda m: m.topic.endswith("/status") and m.payload == b"online", timeout=20)
        for i in range(COMMANDS):
            listener.client.publish(f"{prefix}/rep/cmd/agent.ping", json.dumps({"id": f"p{i:03d}"}), qos=1)
        listener.wait_for(lambda m: m.topic.endswith("/reply"), count=KILL_AFTER, timeout=60)
        daemon.kill()
        with listener.cond:
            before_kill = sum(1 for m in listener.messages if m.topic.endswith("/reply"))
        daemon.start()

        def finals() -> set[str]:
            with listener.cond:
                return {d["id"] for d in (json.loads(m.payload) for m in listener.messages if m.topic.endswith("/reply"))
                        if d["status"] == "succeeded"}

        wait_until(lambda: len(finals()) >= COMMANDS, 60, interval=0.1,
                   message=lambda: f"{COMMANDS - len(finals())} command(s) without a final reply")
        assert len(finals()) == COMMANDS
        time.sleep(1.0)  # not synchronisation: a pause in which late repeats, if any, land in the count
    finally:
        if daemon.proc is not None:
            daemon.kill()

    with listener.cond:
        payloads = [bytes(m.payload) for m in listener.messages if m.topic.endswith("/reply")]
    copies = collections.Counter(payloads)
    by_reply: dict[tuple[str, str], set[bytes]] = collections.defaultdict(set)
    for p in payloads:
        doc = json.loads(p)
        by_reply[(doc["id"], doc["status"])].add(p)
    different = {k: v for k, v in by_reply.items() if len(v) > 1}
    assert not different, f"repeated replies that differ from their first copy: {list(different.items())[:3]}"
    assert not any(b'"duplicate"' in p for p in payloads), "a redelivered command got a duplicate reply"
    assert set(by_reply) == {(f"p{i:03d}", s) for i in range(COMMANDS) for s in ("accepted", "succeeded")}
    repeats = sum(n - 1 for n in copies.values())
    window = min(WINDOW, _receive_maximum(own_broker)) - 4
    bound = window + 64  # the bound the README states (REMOVE_BATCH is 64)
    print(f"\nreply repeats after a kill at {before_kill} of {2 * COMMANDS} replies: {repeats} "
          f"(bound: window {window} + batch {REMOVE_BATCH} = {bound})")
    assert repeats <= bound, f"{repeats} replies published again after one kill (bound {bound})"
