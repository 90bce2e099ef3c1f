"""Job control (issue 24, item 7): ``job.pause``, ``job.resume`` and ``job.run`` of a job by name.

Unit tests drive the scheduler's ``tick`` with an injected clock on a real SQLite file; the end-to-end
ones run real daemons on the session's mosquitto (``fleet job``), across a SIGTERM restart with the
fake clock, and the local ``edge-agent job run NAME --wait``."""

from __future__ import annotations

import json
import logging
import sqlite3
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from bench.harness import wait_until
from edge_agent.config import load_settings
from edge_agent.device.actions import Runtime, build_registry
from edge_agent.device.actions.job import job_actions, run_id
from edge_agent.device.commands import Command, NewCommand
from edge_agent.device.events import EventLog, EventReporter
from edge_agent.device.journal import Journal
from edge_agent.device.report import jobs_report, render_jobs
from edge_agent.device.scheduler import FAKE_TIME, Firings, Scheduler
from edge_agent.device.store import Store
from edge_agent.errors import InvalidArguments
from tests.configs import ISTANBUL, LAMP, agent_config
from tests.conftest import fleet_cli, start_all

HOURLY = {"name": "lamp-on", "cron": "0 * * * *", "action": "gpio.set", "args": {"device": "lamp", "value": "on"},
          "missed": "all", "grace": "1d"}


def _ts(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


class Bench:
    """A scheduler on a real database, ticked by hand; the commands it queued and the events it reported."""

    def __init__(self, tmp_path: Path, job: dict[str, Any] = HOURLY):
        self.settings = load_settings(str(agent_config(tmp_path, location=ISTANBUL, devices=LAMP, jobs=[job])))
        self.store = Store(str(tmp_path / "agent.db"))
        self.journal = Journal(self.store)
        self.events = EventLog(self.store, "dev")
        reporter = EventReporter(self.events)
        self.scheduler = Scheduler(self.settings, self.store, submit=self.submit, clock=lambda: 0.0,
                                   on_fired=reporter.fired, on_skipped=reporter.skipped)
        self.firings = Firings(self.store)

    def submit(self, cmd: NewCommand, cur: sqlite3.Cursor | None = None) -> tuple[Command, bool]:
        if cur is None:
            with self.store.transaction() as own:
                return self.journal.add(own, cmd, enqueued=False)
        return self.journal.add(cur, cmd, enqueued=False)

    def ids(self) -> list[str]:
        return [c.id for c in reversed(self.journal.history(1000))]

    def kinds(self, kind: str) -> list[dict[str, Any]]:
        return list(self.events.history(event=kind, limit=1000)["events"])


@pytest.fixture
def bench(tmp_path: Path) -> Iterator[Bench]:
    b = Bench(tmp_path)
    yield b
    b.store.close()


def test_a_paused_job_is_skipped_recorded_and_not_caught_up_after_resume(bench: Bench, caplog) -> None:
    """Paused: the due instant is not queued, it is recorded as handled and reported as a ``skipped``
    event (logged once); resumed: no catch-up of the paused instants (missed = "all"), the next fires."""
    sched = bench.scheduler
    sched.tick(_ts("2026-06-01T09:59:00+03:00"))  # first seen
    sched.tick(_ts("2026-06-01T10:00:01+03:00"))
    ten = f"job:lamp-on:{_ts('2026-06-01T10:00:00+03:00'):.0f}"
    assert bench.ids() == [ten]
    assert bench.firings.pause("lamp-on", 1.0) is True
    assert bench.firings.pause("lamp-on", 2.0) is False  # already: since kept
    assert bench.firings.paused() == {"lamp-on": 1.0}
    with caplog.at_level(logging.INFO, logger="edge_agent.scheduler"):
        sched.tick(_ts("2026-06-01T11:00:01+03:00"))
        sched.tick(_ts("2026-06-01T11:00:02+03:00"))  # the same instant is not reported again
    assert bench.ids() == [ten]
    skipped = bench.kinds("skipped")
    assert [(e["job"], e["planned"], e["id"], e["action"]) for e in skipped] == [
        ("lamp-on", _ts("2026-06-01T11:00:00+03:00"), None, "gpio.set")]
    said = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert said == ["job lamp-on skipped for 2026-06-01T11:00:00+03:00: paused"], said
    # "down" while paused: the instants of three hours are all skipped, none queued
    sched.tick(_ts("2026-06-01T14:00:05+03:00"))
    assert bench.ids() == [ten]
    assert len(bench.kinds("skipped")) == 4
    assert bench.firings.resume("lamp-on") is True and bench.firings.resume("lamp-on") is False
    sched.tick(_ts("2026-06-01T14:30:00+03:00"))  # missed = "all", yet nothing paused is caught up
    assert bench.ids() == [ten]
    sched.tick(_ts("2026-06-01T15:00:01+03:00"))
    assert bench.ids() == [ten, f"job:lamp-on:{_ts('2026-06-01T15:00:00+03:00'):.0f}"]
    assert [e["event"] for e in bench.events.history(limit=1000)["events"]].count("fired") == 2


def test_a_pause_is_kept_in_the_database_and_the_report_marks_it(bench: Bench, tmp_path: Path) -> None:
    bench.firings.pause("lamp-on", _ts("2026-06-01T10:00:00+03:00"))
    bench.store.close()
    again = Store(str(tmp_path / "agent.db"))
    try:
        assert Firings(again).paused() == {"lamp-on": _ts("2026-06-01T10:00:00+03:00")}
        doc = jobs_report(bench.settings, start="2026-06-01T12:30:00+03:00", store=again)
        job = doc["jobs"][0]
        assert job["paused"] is True and job["paused_since"] == "2026-06-01T10:00:00+03:00", job
        text = render_jobs(doc)
        assert "PAUSED      since 2026-06-01T10:00:00+03:00" in text, text
        assert "2026-06-01T13:00:00+03:00  (paused: skipped)" in text, text
        Firings(again).resume("lamp-on")
        job = jobs_report(bench.settings, start="2026-06-01T12:30:00+03:00", store=again)["jobs"][0]
        assert job["paused"] is False and job["paused_since"] is None
        assert "paused" not in render_jobs(jobs_report(bench.settings, store=again)).lower()
    finally:
        again.close()


def test_a_paused_job_has_no_next_firings(bench: Bench) -> None:
    """The state document's ``next_jobs`` (and so ``fleet ls`` and the monitor) and ``edge-agent status``
    leave a paused job out: none of its instants fires."""
    from edge_agent.device.status import collect_status

    assert [f["job"] for f in bench.scheduler.next_firings()] == ["lamp-on"]
    assert [f["job"] for f in collect_status(bench.settings, store=bench.store)["next_firings"]] == ["lamp-on"] * 5
    bench.firings.pause("lamp-on", 0.0)
    assert bench.scheduler.next_firings() == []
    assert collect_status(bench.settings, store=bench.store)["next_firings"] == []
    bench.firings.resume("lamp-on")
    assert [f["job"] for f in bench.scheduler.next_firings()] == ["lamp-on"]


def test_a_database_of_schema_3_gets_the_paused_jobs_table(tmp_path: Path) -> None:
    path = str(tmp_path / "agent.db")
    Store(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute("drop table paused_jobs")
    store = Store(path)
    try:
        assert Firings(store).paused() == {}
    finally:
        store.close()


def _job_run(bench: Bench) -> Any:
    runtime = Runtime(store=bench.store, submit=bench.submit, events=bench.events, settings=lambda: bench.settings)
    return {a.name: a for a in job_actions(bench.settings, runtime)}


def test_run_now_queues_once_under_an_id_of_its_own_even_when_paused(bench: Bench) -> None:
    actions = _job_run(bench)
    bench.firings.pause("lamp-on", 1.0)
    own, _ = bench.submit(NewCommand(action="job.run", args={"name": "lamp-on"}, id="op-1"))
    first = actions["job.run"].fn(name="lamp-on", command=own)
    assert first == {"job": "lamp-on", "id": "job:lamp-on:run:op-1"}
    again = actions["job.run"].fn(name="lamp-on", command=own)  # a repeat of that command (after a kill)
    assert again == first
    queued = [i for i in bench.ids() if i != "op-1"]
    assert queued == ["job:lamp-on:run:op-1"]
    row = bench.journal.get("job:lamp-on:run:op-1")
    assert row is not None and row.action == "gpio.set" and dict(row.args) == {"device": "lamp", "value": "on"}
    fired = bench.kinds("fired")
    assert [(e["id"], e["job"]) for e in fired] == [("job:lamp-on:run:op-1", "lamp-on")]
    assert actions["job.pause"].fn(name="lamp-on") == {"job": "lamp-on", "paused": True, "changed": False}
    assert actions["job.resume"].fn(name="lamp-on") == {"job": "lamp-on", "paused": False, "changed": True}
    assert actions["job.resume"].fn(name="lamp-on") == {"job": "lamp-on", "paused": False, "changed": False}


def test_run_ids_never_collide_with_firings_and_stay_within_128() -> None:
    assert run_id("lamp-on", "abc") == "job:lamp-on:run:abc"
    long = run_id("j" * 100, "x" * 128)
    assert len(long) <= 128 and long.startswith("job:" + "j" * 60 + ":run:~")
    assert run_id("j" * 100, "x" * 127 + "y") != long
    assert len(run_id("a", "x" * 128)) <= 128


@pytest.mark.parametrize(("args", "message"), [
    ({"name": "lamp-onn"}, "no job 'lamp-onn' (did you mean 'lamp-on'?)"),
    ({"name": "zzz"}, "no job 'zzz' (jobs: lamp-on)"),
    ({}, "missing argument 'name'"),
    ({"name": 3}, "name"),
])
def test_bad_names_are_bad_arguments(tmp_path: Path, args: dict[str, Any], message: str) -> None:
    settings = load_settings(str(agent_config(tmp_path, location=ISTANBUL, devices=LAMP, jobs=[HOURLY])))
    registry = build_registry(settings)
    for action in ("job.pause", "job.resume", "job.run"):
        with pytest.raises(InvalidArguments) as err:
            registry.validate(action, args)
        assert str(err.value).startswith(f"{action}: ") and message in str(err.value), str(err.value)


def test_a_skipped_event_passes_the_contract_and_prints(capsys) -> None:
    from edge_agent.cli.fleet import _print_event
    from edge_agent.contract import KINDS, clean_event

    assert KINDS["skipped"] == ("job", "planned")
    ev = clean_event({"seq": 7, "device": "a", "event": "skipped", "id": None, "action": "gpio.set", "ts": 100.0,
                      "job": "lamp-on", "planned": 99.0})
    assert ev["event"] == "skipped" and ev["job"] == "lamp-on" and ev["planned"] == 99.0 and "id" not in ev
    _print_event(ev, False)
    line = capsys.readouterr().out
    assert "skipped" in line and "gpio.set" in line and " - job lamp-on planned " in line and line.rstrip().endswith(": paused")


# --------------------------------------------------------------------------- end to end

AT_2030 = {"name": "lamp-on", "cron": "30 20 * * *", "action": "gpio.set", "args": {"device": "lamp", "value": "on"}}


@pytest.mark.slow
def test_fleet_job_pause_to_two_agents_survives_a_restart(broker, daemon_factory, tmp_path: Path) -> None:
    """`fleet job pause` to 2 agents: both succeed, exit 0; an unknown name is rejected saying what
    was meant. One agent restarted (SIGTERM) just before the job's instant (fake clock): agent.jobs
    still says paused, and the instant is skipped (event and log), not fired."""
    prefix = f"jc{uuid.uuid4().hex[:6]}"
    daemons = {}
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        config = agent_config(tmp_path / name, device=name, mqtt_port=broker.port, prefix=prefix,
                              location=ISTANBUL, devices=LAMP, jobs=[AT_2030])
        daemons[name] = daemon_factory(config, env={FAKE_TIME: "2026-06-01T20:00:00+03:00"})
    start_all(list(daemons.values()))

    def next_job_of_b() -> Any:
        rows = json.loads(fleet_cli(broker.port, prefix, "ls", "--json").stdout)["devices"]
        return next((r["next_job"] for r in rows if r["device"] == "b"), "no row")

    wait_until(lambda: (next_job_of_b() or {}).get("job") == "lamp-on", 20, interval=0.2, message="b's next job")
    who = ("--device", "a", "--device", "b")
    out = fleet_cli(broker.port, prefix, "job", "pause", "lamp-on", *who, "--timeout", "20", "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    devices = json.loads(out.stdout)["devices"]
    for name in ("a", "b"):
        assert devices[name]["status"] == "succeeded", devices
        assert devices[name]["reply"]["result"] == {"job": "lamp-on", "paused": True, "changed": True}
    # b's retained state is published again without the paused job's firings
    wait_until(lambda: next_job_of_b() is None, 20, interval=0.2, message=lambda: f"b's next job: {next_job_of_b()}")
    text = fleet_cli(broker.port, prefix, "job", "pause", "lamp-onn", "--device", "a", "--timeout", "20")
    assert text.returncode == 1 and "did you mean 'lamp-on'?" in text.stdout, text.stdout + text.stderr

    a = daemons["a"]
    assert a.terminate() == 0
    a.env[FAKE_TIME] = "2026-06-01T20:29:59+03:00"
    a.start()
    wait_until(lambda: "job lamp-on skipped for 2026-06-01T20:30:00+03:00: paused" in a.log.read_text(), 20,
               interval=0.05, message=lambda: a.log.read_text()[-3000:])
    jobs = fleet_cli(broker.port, prefix, "send", "agent.jobs", "--device", "a", "--timeout", "20", "--json")
    assert jobs.returncode == 0, jobs.stderr
    job = json.loads(jobs.stdout)["devices"]["a"]["reply"]["result"]["jobs"][0]
    assert job["paused"] is True, job
    history = json.loads(a.cli("history", "--json").stdout)["commands"]
    assert not [c for c in history if c["id"].startswith("job:lamp-on:")], history
    skipped = fleet_cli(broker.port, prefix, "history", "a", "--event", "skipped", "--json")
    events = json.loads(skipped.stdout)["events"]
    assert [(e["job"], e["planned"]) for e in events] == [("lamp-on", _ts("2026-06-01T20:30:00+03:00"))], events


def test_local_job_run_waits_for_its_outcome_and_the_firing_runs(daemon_factory, tmp_path: Path) -> None:
    """`edge-agent job pause`, then `job run NAME --wait`: the run fires anyway, once, and the lamp is on;
    `edge-agent jobs` shows the job paused."""
    yearly = dict(AT_2030, cron="0 3 1 1 *")
    daemon = daemon_factory(agent_config(tmp_path, location=ISTANBUL, devices=LAMP, jobs=[yearly]))
    daemon.start()
    paused = daemon.cli("job", "pause", "lamp-on", "--wait", "10", "--json")
    assert paused.returncode == 0 and json.loads(paused.stdout)["result"]["paused"] is True, paused.stdout + paused.stderr
    run = daemon.cli("job", "run", "lamp-on", "--wait", "10", "--json")
    assert run.returncode == 0, run.stdout + run.stderr
    outcome = json.loads(run.stdout)
    fired = outcome["result"]["id"]
    assert outcome["status"] == "succeeded" and fired == f"job:lamp-on:run:{outcome['id']}", outcome

    def done() -> dict[str, Any] | None:
        rows = [c for c in json.loads(daemon.cli("history", "--json").stdout)["commands"] if c["id"] == fired]
        return rows[0] if rows and rows[0]["status"] == "succeeded" else None

    wait_until(done, 20, interval=0.05, message=lambda: daemon.log.read_text()[-3000:])
    read = json.loads(daemon.cli("send", "gpio.read", "device=lamp", "--wait", "5", "--json").stdout)
    assert read["result"]["value"] == "on"
    jobs = daemon.cli("jobs")
    assert "PAUSED" in jobs.stdout and "(paused: skipped)" in jobs.stdout, jobs.stdout
    bad = daemon.cli("job", "run", "nope")
    assert bad.returncode == 2 and "no job 'nope' (jobs: lamp-on)" in bad.stderr, bad.stderr
    assert daemon.terminate() == 0
