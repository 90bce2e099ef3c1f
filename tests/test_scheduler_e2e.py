"""The real daemon with a schedule clock it is told to use: catch-up after downtime, windows at start-up."""

from __future__ import annotations

import json

import pytest

from bench.harness import wait_until
from tests.configs import ISTANBUL, LAMP, agent_config

JOBS = [
    {"name": "catch-once", "cron": "30 20 * * *", "action": "agent.ping", "missed": "once"},
    {"name": "catch-skip", "cron": "31 20 * * *", "action": "agent.ping", "missed": "skip"},
    {"name": "catch-all", "cron": "*/20 20 * * *", "action": "agent.ping", "missed": "all"},
]
WINDOWS = [
    {"device": "lamp", "from": "20:15", "until": "23:00"},
    {"device": "pump", "from": "06:00", "until": "07:00"},
]


def _rows(daemon):
    out = daemon.cli("history", "-n", "200", "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)["commands"]


@pytest.mark.slow
def test_missed_jobs_follow_policy_and_windows_restore(daemon_factory, tmp_path):
    """A job due while the daemon was down is caught up per its policy; windows are applied at start-up."""
    d = daemon_factory(agent_config(tmp_path, device="sched", location=ISTANBUL,
                                    devices={**LAMP, "pump": {"kind": "output", "pin": 22}}, jobs=JOBS, windows=WINDOWS))
    d.env["EDGE_AGENT_FAKE_TIME"] = "2026-06-01T20:00:00+03:00"
    d.start()
    first = _rows(d)
    assert d.terminate() == 0
    assert not [c for c in first if c["id"].startswith("job:")], "nothing was due at 20:00"
    lamp_first = [c for c in first if c["id"].startswith("window:") and c["args"]["device"] == "lamp"]
    assert lamp_first and lamp_first[0]["args"]["value"] == "off"  # 20:00 is before the window opens at 20:15

    d.env["EDGE_AGENT_FAKE_TIME"] = "2026-06-01T21:00:00+03:00"
    d.start()

    def caught_up() -> bool:
        rows = _rows(d)
        return sum(1 for c in rows if c["id"].startswith("job:")) >= 3 and all(c["status"] in ("succeeded", "failed") for c in rows)

    wait_until(caught_up, 10, interval=0.2, message=lambda: f"the missed firings did not all run: {_rows(d)}")
    rows = _rows(d)
    ids = sorted(c["id"] for c in rows if c["id"].startswith("job:"))
    # 20:30 (once), none for the skip job, and every */20 instant in 20:00..21:00 after the job was first seen at 20:00
    from datetime import datetime

    def ts(hhmm: str) -> int:
        return int(datetime.fromisoformat(f"2026-06-01T{hhmm}:00+03:00").timestamp())

    assert ids == sorted([f"job:catch-once:{ts('20:30')}", f"job:catch-all:{ts('20:20')}", f"job:catch-all:{ts('20:40')}"])
    latest = {}
    for c in sorted((c for c in rows if c["id"].startswith("window:")), key=lambda c: c["created"]):
        latest[c["args"]["device"]] = c
    assert latest["lamp"]["args"]["value"] == "on" and latest["lamp"]["status"] == "succeeded"
    assert latest["pump"]["args"]["value"] == "off"
    out = d.cli("send", "gpio.read", "device=lamp", "--wait", "5", "--json")
    assert json.loads(out.stdout)["result"]["value"] == "on"
    assert d.terminate() == 0
