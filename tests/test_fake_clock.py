"""EDGE_AGENT_FAKE_TIME: what it implies, what `jobs` and `status` show under it, and
that a fake run's firings never hold or swallow a real run's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from bench.harness import wait_until
from edge_agent.config import load_settings
from edge_agent.device.scheduler import FAKE_TIME, Scheduler
from edge_agent.device.store import Store
from tests.configs import ISTANBUL, LAMP, agent_config

ROOT = Path(__file__).resolve().parent.parent
JOB = {"name": "lamp-on", "cron": "30 20 * * *", "action": "gpio.set", "args": {"device": "lamp", "value": "on"}}


def _config(tmp_path: Path) -> Path:
    return agent_config(tmp_path, location=ISTANBUL, devices=LAMP, jobs=[JOB], clock={"trust": "sync"})


def test_a_fake_clock_counts_as_synchronised(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With trust = "sync" on a machine whose clock is not synchronised, a fake clock still
    runs the schedule (it is the clock the user asked for); without it the jobs are held."""
    settings = load_settings(str(_config(tmp_path)))
    store = Store(str(tmp_path / "agent.db"))
    try:
        real = Scheduler(settings, store, submit=lambda *a: None, trusted=lambda: False)
        assert not real.clock_trusted()
        monkeypatch.setenv(FAKE_TIME, "2026-06-01T20:29:00+03:00")
        fake = Scheduler(settings, store, submit=lambda *a: None, trusted=lambda: False)
        assert fake.clock_trusted()
    finally:
        store.close()


def _wait_fired(daemon, job_id: str) -> dict:
    def succeeded() -> dict | None:
        out = daemon.cli("history", "--json")
        rows = [c for c in json.loads(out.stdout)["commands"] if c["id"] == job_id]
        return rows[0] if rows and rows[0]["status"] == "succeeded" else None

    return wait_until(succeeded, 20, interval=0.1, message=lambda: f"{job_id} did not run; log:\n{daemon.log.read_text()[-3000:]}")


@pytest.mark.slow
def test_jobs_and_status_follow_the_fake_clock_and_a_real_run_refuses_its_database(daemon_factory, tmp_path: Path) -> None:
    """The field report: under a fake clock `jobs` said 'last fired 17:20:36' beside 'next
    17:20:36' (it read the real clock), and a later real run silently skipped the real
    firing the fake run had recorded. Now `jobs` and `status` read the daemon's fake clock,
    and a real run on that database stops with exit 2 and says what to do."""
    config = _config(tmp_path)
    daemon = daemon_factory(config, env={FAKE_TIME: "2026-06-01T20:29:58+03:00"})
    daemon.start()
    planned = int(datetime.fromisoformat("2026-06-01T20:30:00+03:00").timestamp())
    _wait_fired(daemon, f"job:lamp-on:{planned}")
    plain_env = {k: v for k, v in os.environ.items() if k != FAKE_TIME}
    run = lambda *args: subprocess.run([sys.executable, "-m", "edge_agent", *args, "--config", str(config)],  # noqa: E731
                                       capture_output=True, text=True, timeout=30, env=plain_env, cwd=ROOT)
    jobs = json.loads(run("jobs", "--json").stdout)["jobs"][0]
    assert jobs["last_fired"].startswith("2026-06-01T20:30:0"), jobs
    assert jobs["next"][0] == "2026-06-02T20:30:00+03:00", jobs
    status = json.loads(run("status", "--json").stdout)
    assert status["clock"]["synchronized"] is True and status["clock"]["fake"].startswith("2026-06-01T20:3"), status["clock"]
    assert daemon.terminate() == 0

    real = run("run")
    assert real.returncode == 2, real.stderr
    assert "EDGE_AGENT_FAKE_TIME" in real.stderr and "another [storage] path" in real.stderr, real.stderr


def test_a_fake_run_refuses_a_database_with_a_real_schedule(tmp_path: Path) -> None:
    """A fake clock on a database whose schedule a real run used would record fake firings
    there: refused with a message (ConfigError), the database left as it was."""
    from edge_agent.device.scheduler import claim_clock
    from edge_agent.errors import ConfigError

    store = Store(str(tmp_path / "agent.db"))
    try:
        with store.transaction() as cur:
            cur.execute("insert into firings (job, since) values ('lamp-on', ?)", (datetime.now(UTC).timestamp(),))
        claim_clock(store, time.time, environ={})  # a real run: fine
        with pytest.raises(ConfigError, match="holds a real run's schedule"):
            claim_clock(store, time.time, environ={FAKE_TIME: "2026-06-01T20:00:00+03:00"})
        assert store.get_meta("fake_clock") is None
        with pytest.raises(ConfigError, match="needs a UTC offset"):
            claim_clock(store, time.time, environ={FAKE_TIME: "2026-06-01T20:00:00"})
    finally:
        store.close()


@pytest.mark.slow
def test_the_daemon_keeps_a_mixed_window_off_between_sunrise_and_06_00_and_warns_about_flipping_jobs(
        daemon_factory, tmp_path: Path) -> None:
    """The real daemon at 12:00 on a June day in Istanbul: '06:00 until sunrise' is off (it
    ran until the next day's sunrise before), and the porch-on/porch-off pair that flips in
    summer at Anchorage is logged as a warning after start-up."""
    anchorage = {"latitude": 61.2181, "longitude": -149.9003, "timezone": "America/Anchorage"}
    jobs = [{"name": "porch-on", "solar": "sunset-15m", "action": "gpio.set", "args": {"device": "lamp", "value": "on"}},
            {"name": "porch-off", "cron": "0 23 * * *", "action": "gpio.set", "args": {"device": "lamp", "value": "off"}}]
    config = agent_config(tmp_path, location=ISTANBUL, devices={**LAMP, "pump": {"kind": "output", "pin": 22}},
                          windows=[{"device": "lamp", "from": "06:00", "until": "sunrise"}])
    daemon = daemon_factory(config, env={FAKE_TIME: "2026-06-15T12:00:00+03:00"})
    daemon.start()
    def window_succeeded() -> list[dict] | None:
        window = [c for c in json.loads(daemon.cli("history", "--json").stdout)["commands"] if c["id"].startswith("window:")]
        return window if window and window[0]["status"] == "succeeded" else None

    window = wait_until(window_succeeded, 20, interval=0.1, message="no window command succeeded")
    assert window[0]["args"] == {"device": "lamp", "value": "off"}, window
    read = json.loads(daemon.cli("send", "gpio.read", "device=lamp", "--wait", "5", "--json").stdout)
    assert read["result"]["value"] == "off"
    assert daemon.terminate() == 0

    config = agent_config(tmp_path, name="anchorage.toml", location=anchorage, devices=LAMP, jobs=jobs)
    (tmp_path / "agent.db").unlink()
    for extra in ("agent.db-wal", "agent.db-shm"):
        (tmp_path / extra).unlink(missing_ok=True)
    daemon = daemon_factory(config, env={FAKE_TIME: "2026-06-15T12:00:00-08:00"})
    daemon.start()
    wait_until(lambda: "'porch-on' fires after 'porch-off'" in daemon.log.read_text(), 20, interval=0.1,
               message=lambda: daemon.log.read_text()[-2000:])
    assert daemon.terminate() == 0
