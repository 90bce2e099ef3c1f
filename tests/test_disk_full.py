"""A full disk, for real: the daemon's database on a 2 MB tmpfs that a filler file fills.

While the disk is full nothing can be written: commands from MQTT wait with the broker
(unacknowledged), outcomes of actions that ran are kept in memory, and ``status`` and the
retained state document say the disk is full. When the filler is deleted, everything is
recorded and answered within seconds, and no action runs twice (not even after a restart).
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.harness import wait_until
from tests.configs import agent_config
from tests.conftest import fill_disk, small_tmpfs

pytestmark = pytest.mark.slow

BACKLOG = 300  # commands sent while the disk is full: on the old code their redelivery filled the WAL again
RECOVERY = 10.0  # seconds from deleting the filler to the last reply


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 2 MB tmpfs (requested before the daemon, so it is unmounted after the daemon is killed)."""
    with small_tmpfs(tmp_path, "2m") as mnt:
        yield mnt


def _runs(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def _poll(pred: Any, timeout: float, what: str) -> None:
    wait_until(pred, timeout, interval=0.05, message=f"waiting for: {what}")


def _final(listener: Any, command_id: str) -> dict[str, Any] | None:
    for doc in listener.replies(command_id):
        if doc.get("status") not in ("accepted", None):
            return doc
    return None


def _state(listener: Any, topic: str) -> dict[str, Any] | None:
    with listener.cond:
        for m in reversed(listener.messages):
            if m.topic == topic:
                return json.loads(m.payload)
    return None


def test_a_full_disk_pauses_intake_keeps_outcomes_and_recovers_when_space_returns(
        small_disk, broker, daemon_factory, listener_factory, tmp_path: Path):
    run = uuid.uuid4().hex[:6]
    dev, prefix = "full", f"df{run}"
    runs, go, filler = tmp_path / "runs.txt", tmp_path / "go", small_disk / "filler"
    db = small_disk / "agent.db"
    config = agent_config(tmp_path, device=dev, mqtt_port=broker.port, prefix=prefix, tasks="disk_tasks",
                          storage={"path": str(db)})
    d = daemon_factory(config, env={"EDGE_AGENT_TEST_FILE": str(runs)})
    d.start()
    state_topic = f"{prefix}/{dev}/state"
    listener = listener_factory(broker.port, [f"{prefix}/{dev}/reply", state_topic])

    def send(action: str, command_id: str, **args: Any) -> None:
        listener.publish(f"{prefix}/{dev}/cmd/{action}", {"id": command_id, "args": args})

    _poll(lambda: _state(listener, state_topic) is not None, 10, "the daemon to connect (its state document)")

    # Two commands running when the disk fills: their outcomes cannot be recorded when they end.
    send("disk_mark", "hold-ok", tag="hold-ok", wait_for=str(go))
    send("disk_mark_fail", "hold-fail", tag="hold-fail", wait_for=str(go))
    _poll(lambda: {"hold-ok", "hold-fail"} <= set(_runs(runs)), 10, "both holding commands to start")

    fill_disk(filler)
    # Until the daemon has met the full disk (the tail of its WAL may take a few more writes).
    sent: list[str] = []
    def says_full() -> bool:
        return (_state(listener, state_topic) or {}).get("disk_full") is True

    for i in range(200):
        if says_full():
            break
        sent.append(f"probe-{i}")
        send("disk_mark", sent[-1], tag=sent[-1])
        _poll(lambda: says_full() or _final(listener, sent[-1]) is not None, 10,
              f"{sent[-1]} answered or the retained state document to say disk_full")
    assert says_full()

    status = d.cli("status", "--json")
    assert status.returncode == 0, status.stderr
    doc = json.loads(status.stdout)
    assert doc["disk"]["full"] is True, doc["disk"]
    text = d.cli("status").stdout
    assert "disk       FULL" in text, text

    go.touch()  # the holding commands end now, with nothing writable
    def named(command_id: str) -> bool:
        return any(command_id in line and "cannot be recorded" in line for line in d.log.read_text().splitlines())

    _poll(lambda: named("hold-ok") and named("hold-fail"), 10, "the log to name both commands whose outcomes wait")
    backlog = [f"b{i}" for i in range(BACKLOG)]
    for command_id in backlog:
        send("disk_mark", command_id, tag=command_id)
    # Sent (the broker has them), and none taken while the disk is full.
    assert _final(listener, "hold-fail") is None and listener.replies(backlog[0]) == []
    assert json.loads(d.cli("status", "--json").stdout)["disk"]["full"] is True

    # Space returns: how big the WAL grows while the backlog comes in.
    wal_max = [0]
    watching = threading.Event()

    def watch_wal() -> None:
        while not watching.wait(0.01):  # a sample every 10 ms until told to stop
            try:
                wal_max[0] = max(wal_max[0], os.path.getsize(str(db) + "-wal"))
            except OSError:
                pass

    watcher = threading.Thread(target=watch_wal)
    watcher.start()
    filler.unlink()
    freed = time.monotonic()
    everything = ["hold-ok", "hold-fail", *sent, *backlog]
    try:
        _poll(lambda: all(_final(listener, c) is not None for c in everything), RECOVERY,
              "every command's final reply after space returned")
    finally:
        watching.set()
        watcher.join()
        took = time.monotonic() - freed
        missing = [c for c in everything if _final(listener, c) is None]
        print(f"recovered in {took:.1f}s; WAL at most {wal_max[0]} bytes; without a reply: {missing[:10]}")
    assert _final(listener, "hold-ok")["status"] == "succeeded"
    assert _final(listener, "hold-fail")["status"] == "failed"
    assert wal_max[0] < 600_000, f"the WAL grew to {wal_max[0]} bytes during recovery"
    _poll(lambda: (_state(listener, state_topic) or {}).get("disk_full") is False, 10,
          "the state document to say the disk is no longer full")
    assert json.loads(d.cli("status", "--json").stdout)["disk"]["full"] is False

    # Nothing is left to run again: a restart runs nothing twice.
    assert d.terminate() == 0
    with sqlite3.connect(db) as conn:
        left = conn.execute("select id, state from commands where state in ('queued', 'running')").fetchall()
    assert left == []
    d.start()
    send("disk_mark", "after", tag="after")
    _poll(lambda: _final(listener, "after") is not None, 10, "a command after the restart")
    counts: dict[str, int] = {}
    for tag in _runs(runs):
        counts[tag] = counts.get(tag, 0) + 1
    assert {t: n for t, n in counts.items() if n > 1} == {}
    assert set(counts) == {*everything, "after"}
