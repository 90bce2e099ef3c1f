"""A stop (SIGTERM) on the real daemon: no new work, a bounded drain, replies before `offline`."""

from __future__ import annotations

import json
import signal
import socket
import sqlite3
import uuid

import pytest

from bench.harness import wait_until
from tests.configs import LAMP, agent_config


def _config(folder, *, drain: str = "1s", mqtt_port: int | None = None, prefix: str = "edge"):
    return agent_config(folder, device="stopper", devices=LAMP, tasks="chaos_tasks", mqtt_port=mqtt_port, prefix=prefix,
                        queue={"drain_timeout": drain})


def _state(db, cid: str) -> str | None:
    with sqlite3.connect(db) as con:
        row = con.execute("select state from commands where id = ?", (cid,)).fetchone()
    return row[0] if row else None


@pytest.mark.slow
def test_a_command_outliving_the_drain_is_left_for_the_next_start(daemon_factory, tmp_path):
    """Without MQTT: one drain of drain_timeout (not two), exit 0, and the command that was still
    running runs again at the next start."""
    work = tmp_path / "work.log"
    d = daemon_factory(_config(tmp_path))
    d.start()
    db = d.config.parent / "agent.db"
    args = json.dumps({"tag": "long", "log": str(work), "ms": 3000})
    assert d.cli("send", "chaos_work", "--args", args, "--id", "long").returncode == 0
    wait_until(lambda: _state(db, "long") == "running", 15, interval=0.05, message="long is not running")
    assert d.terminate() == 0
    log = d.log.read_text()
    assert log.count("draining:") == 1, log[-2000:]
    assert "still running after 1s" in log and "stopped" in log
    assert _state(db, "long") == "running"  # left as it was: recovered at the next start
    d.start()
    wait_until(lambda: _state(db, "long") == "succeeded", 15, interval=0.05, message="long did not succeed")
    assert work.read_text().split() == ["long", "long"]
    assert d.terminate() == 0


@pytest.mark.slow
def test_a_stop_replies_before_offline_and_leaves_new_commands_with_the_broker(broker, daemon_factory,
                                                                               listener_factory, tmp_path):
    """During the drain the running command finishes and its reply (and the lamp's safe state)
    go out before `offline`; a command sent after the stop began is not accepted now (the
    broker keeps it, unacknowledged) and runs at the next start."""
    prefix = f"stop{uuid.uuid4().hex[:6]}"
    base = f"{prefix}/stopper"
    listener = listener_factory(broker.port, [f"{base}/#"])
    d = daemon_factory(_config(tmp_path, drain="10s", mqtt_port=broker.port, prefix=prefix))
    d.start()
    listener.wait_for(lambda m: m.topic == f"{base}/status" and m.payload == b"online")
    listener.publish(f"{base}/cmd/gpio.set", {"id": "lamp-on", "args": {"device": "lamp", "value": "on"}})
    listener.wait_for(lambda m: m.topic == f"{base}/gpio/lamp" and m.payload == b"ON")
    work = d.config.parent / "work.log"
    listener.publish(f"{base}/cmd/chaos_work", {"id": "slow", "args": {"tag": "slow", "log": str(work), "ms": 1500}})
    wait_until(lambda: _state(d.config.parent / "agent.db", "slow") == "running", 15, interval=0.05, message="slow is not running")
    assert d.proc is not None
    d.proc.send_signal(signal.SIGTERM)
    wait_until(lambda: "stopping" in d.log.read_text(), 15, interval=0.05, message="no stopping in the log")
    listener.publish(f"{base}/cmd/agent.ping", {"id": "late"})
    assert d.proc.wait(20) == 0
    d.proc = None
    offline = listener.wait_for(lambda m: m.topic == f"{base}/status" and m.payload == b"offline")[0]
    with listener.cond:
        before = listener.messages[:listener.messages.index(offline)]
    finals = [json.loads(m.payload) for m in before if m.topic == f"{base}/reply"]
    assert any(r["id"] == "slow" and r["status"] == "succeeded" for r in finals), finals
    assert [m.payload for m in before if m.topic == f"{base}/gpio/lamp"][-1] == b"OFF"  # the safe state
    assert not [r for r in finals if r["id"] == "late"], finals
    d.start()
    listener.wait_for(lambda m: m.topic == f"{base}/reply" and b'"late"' in m.payload and b"succeeded" in m.payload)
    assert [r["status"] for r in listener.replies("late")] == ["accepted", "succeeded"]
    assert d.terminate() == 0


@pytest.mark.slow
def test_a_stop_asks_systemd_for_the_time_it_may_take(daemon_factory, tmp_path):
    """STOPPING=1 comes with EXTEND_TIMEOUT_USEC covering drain_timeout + STOP_MARGIN (and the
    guard's last resort), so a drain_timeout raised past the unit's TimeoutStopSec is not cut short."""
    from edge_agent.device.agent import STOP_MARGIN

    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(20)
    try:
        d = daemon_factory(_config(tmp_path, drain="30s"), env={"NOTIFY_SOCKET": path})
        d.start(wait_ready=False)
        while "READY=1" not in sock.recv(4096).decode():
            pass
        assert d.proc is not None
        d.proc.send_signal(signal.SIGTERM)
        while "STOPPING=1" not in (msg := sock.recv(4096).decode()):
            pass
        assert d.proc.wait(20) == 0
        d.proc = None
    finally:
        sock.close()
    fields = dict(line.split("=", 1) for line in msg.splitlines())
    assert int(fields["EXTEND_TIMEOUT_USEC"]) >= (30 + STOP_MARGIN + 2) * 1e6, msg
