"""Fleet schedules on the device (issue 24, items 3-5): documents stored per source with their
versions, rejections and tombstones; the merge by precedence; a change applied as a SIGHUP reload
is (never early, never twice); the state's ``schedules``; ``origin`` and ``version`` in the jobs report.

Unit tests use real SQLite files and tick the scheduler by hand; the end-to-end ones (slow) run the
real daemon on the session's mosquitto (one test on a broker of its own, stopped), one on the fake clock."""

from __future__ import annotations

import json
import signal
import sqlite3
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from bench.harness import wait_until
from edge_agent.config import Settings, load_settings
from edge_agent.contract import schedule_topic
from edge_agent.device.actions import build_registry, check_jobs
from edge_agent.device.commands import Command, NewCommand
from edge_agent.device.desired import Desired, Held, merge, offer, schedule_state
from edge_agent.device.journal import Journal
from edge_agent.device.report import jobs_report, render_jobs
from edge_agent.device.scheduler import FAKE_TIME, Scheduler
from edge_agent.device.store import Store
from tests.configs import ISTANBUL, LAMP_DIM_DOOR, agent_config


def _ts(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def _job(name: str, cron: str, **more: Any) -> dict[str, Any]:
    return {"name": name, "cron": cron, "action": "agent.ping", **more}


def _doc(version: int, jobs: list[dict[str, Any]] = (), windows: list[dict[str, Any]] = (), **more: Any) -> bytes:  # type: ignore[assignment]
    return json.dumps({"version": version, "jobs": list(jobs), "windows": list(windows), **more}).encode()


class Device:
    """A device's settings, its registry and a real database, without a daemon."""

    def __init__(self, tmp_path: Path, **tables: Any):
        tables.setdefault("location", ISTANBUL)
        tables.setdefault("devices", LAMP_DIM_DOOR)
        self.settings = load_settings(str(agent_config(tmp_path, groups=("north", "greenhouse"), **tables)))
        self.registry = build_registry(self.settings)
        self.store = Store(str(tmp_path / "agent.db"))
        self.desired = Desired(self.store)
        self.now = 1_000.0

    def offer(self, source: str, payload: bytes) -> Any:
        self.now += 1
        return offer(self.desired, source, payload, self.settings, check_jobs=lambda s: check_jobs(s, self.registry),
                     limit=65536, now=self.now)

    def merged(self) -> Settings:
        return merge(self.settings, self.desired.held(), check_jobs=lambda s: check_jobs(s, self.registry))


@pytest.fixture
def device(tmp_path: Path) -> Iterator[Device]:
    d = Device(tmp_path, jobs=[_job("water", "0 6 * * *"), _job("vent", "0 7 * * *")],
               windows=[{"device": "lamp", "from": "18:00", "until": "22:00"}])
    yield d
    d.store.close()


# --------------------------------------------------------------------------- versions, rejections, tombstones


def test_versions_only_grow_and_an_invalid_document_is_rejected_whole(device: Device) -> None:
    assert device.offer("all", _doc(5, [_job("water", "0 5 * * *")])).result == "applied"
    older = device.offer("all", _doc(4, [_job("water", "0 4 * * *")]))
    assert (older.result, older.message) == ("ignored", "version 4 is older than the applied 5")
    assert device.offer("all", _doc(5, [_job("water", "0 3 * * *")])).message == "version 5 is the same as the applied 5"
    unknown = device.offer("all", _doc(6, [_job("water", "0 3 * * *", action="agent.nope")]))
    assert unknown.result == "rejected"
    assert unknown.message.startswith("schedule all v6: jobs[0].action: ") and "agent.nope" in unknown.message
    bad_cron = device.offer("all", _doc(7, [_job("water", "0 25 * * *"), _job("fine", "0 1 * * *")]))
    assert bad_cron.result == "rejected" and bad_cron.message.startswith("schedule all v7: jobs[0].cron: cron '0 25 * * *'")
    held = device.desired.held()["all"]
    assert held.version == 5 and held.doc is not None and held.doc["jobs"][0]["cron"] == "0 5 * * *"  # what runs stays
    assert held.state() == {"version": 5, "rejected": {"version": 7, "error": bad_cron.message}}
    again = device.offer("all", _doc(7, [_job("water", "0 25 * * *"), _job("fine", "0 1 * * *")]))
    assert again.result == "ignored" and again.message.startswith("rejected before")  # a redelivery: logged once
    assert [j.value for j in device.merged().jobs if j.name == "water"] == ["0 5 * * *"]
    assert device.offer("all", _doc(8, [_job("water", "0 2 * * *")])).result == "applied"
    assert device.desired.held()["all"].state() == {"version": 8, "rejected": None}  # the rejection is forgotten


def test_a_document_that_is_not_json_or_has_no_version_is_rejected(device: Device) -> None:
    garbage = device.offer("device", b"{nope")
    assert garbage.result == "rejected" and garbage.message.startswith("schedule device: not JSON")
    assert device.desired.held()["device"].state() == {"version": None, "rejected": {"version": None, "error": garbage.message}}
    assert device.offer("device", b'{"jobs": []}').message == "schedule device: version: is required"
    assert device.offer("device", b"").result == "ignored"  # a deleted retained message: nothing changes
    assert device.offer("device", _doc(1, windows=[{"device": "door", "from": "1:00", "until": "2:00"}])).message == (
        "schedule device v1: windows[0].device: 'door' is an input; windows hold outputs")


def test_the_state_cuts_a_long_error() -> None:
    """The fleet's tools drop a state document beyond 16 KB: a rejection says at most 500 characters."""
    state = Held(3, None, 4, "x" * 5000).state()
    assert len(state["rejected"]["error"]) == 500 and state["rejected"]["version"] == 4


def test_a_tombstone_removes_its_source_and_an_older_document_stays_out(device: Device) -> None:
    device.offer("device", _doc(3, [_job("water", "0 9 * * *")]))
    assert {j.name: j.origin for j in device.merged().jobs}["water"] == "device"
    assert device.offer("device", b'{"version": 4, "clear": true}').result == "cleared"
    assert device.desired.held()["device"].state() == {"version": 4, "rejected": None, "cleared": True}
    assert {j.name: (j.origin, j.value) for j in device.merged().jobs}["water"] == ("config", "0 6 * * *")
    assert device.offer("device", _doc(3, [_job("water", "0 9 * * *")])).result == "ignored"  # older than the tombstone
    assert device.offer("device", _doc(5, [_job("water", "0 10 * * *")])).result == "applied"


def test_stored_documents_survive_a_reopen(device: Device, tmp_path: Path) -> None:
    device.offer("group:north", _doc(2, [_job("water", "0 8 * * *")]))
    device.store.close()
    device.store = Store(str(tmp_path / "agent.db"))
    device.desired = Desired(device.store)
    assert {j.name: j.value for j in device.merged().jobs}["water"] == "0 8 * * *"


def test_a_database_without_the_table_gets_it(tmp_path: Path) -> None:
    path = str(tmp_path / "agent.db")
    Store(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute("drop table desired_schedules")
    store = Store(path)
    try:
        assert Desired(store).held() == {}
    finally:
        store.close()


# --------------------------------------------------------------------------- precedence


def test_precedence_config_all_groups_in_config_order_device(device: Device) -> None:
    """Jobs by name: config < all < north < greenhouse (the config's order) < device; windows by output."""
    device.offer("all", _doc(10, [_job("water", "0 1 * * *"), _job("vent", "0 1 * * *"), _job("mist", "0 1 * * *"),
                                  _job("fan", "0 1 * * *")],
                             [{"device": "lamp", "from": "19:00", "until": "23:00"}]))
    device.offer("group:greenhouse", _doc(30, [_job("water", "0 3 * * *"), _job("mist", "0 3 * * *")]))
    device.offer("group:north", _doc(20, [_job("water", "0 2 * * *"), _job("mist", "0 2 * * *"), _job("fan", "0 2 * * *")],
                                     [{"device": "dim", "from": "1:00", "until": "2:00", "value": 0.4}]))
    device.offer("device", _doc(40, [_job("water", "0 4 * * *")]))
    device.offer("group:south", _doc(50, [_job("water", "0 5 * * *")]))  # not a group of this device
    merged = device.merged()
    got = {j.name: (j.value, j.origin, j.version) for j in merged.jobs}
    assert got == {"water": ("0 4 * * *", "device", 40), "vent": ("0 1 * * *", "all", 10),
                   "mist": ("0 3 * * *", "group:greenhouse", 30), "fan": ("0 2 * * *", "group:north", 20)}
    windows = {w.device: (w.start, w.origin, w.version, w.key) for w in merged.windows}
    assert windows == {"lamp": ("19:00", "all", 10, "all.windows[0]"), "dim": ("1:00", "group:north", 20, "group:north.windows[0]")}
    assert merge(merged, device.desired.held()) == merged  # merging again changes nothing
    assert schedule_state(device.settings, device.desired.held()) == {
        "all": {"version": 10, "rejected": None}, "group:north": {"version": 20, "rejected": None},
        "group:greenhouse": {"version": 30, "rejected": None}, "device": {"version": 40, "rejected": None}}


def test_a_stored_document_the_config_no_longer_allows_is_left_out(device: Device) -> None:
    held = {"all": Held(3, {"version": 3, "jobs": [_job("water", "0 1 * * *", action="tasks.gone")]})}
    told: list[tuple[str, int, str]] = []
    merged = merge(device.settings, held, check_jobs=lambda s: check_jobs(s, device.registry),
                   on_invalid=lambda *a: told.append(a))
    assert merged.jobs == device.settings.jobs
    assert told and told[0][:2] == ("all", 3) and "tasks.gone" in told[0][2]
    device.offer("all", _doc(3, [_job("water", "0 1 * * *")]))
    device.desired.withdrawn("all", 3, told[0][2], 5.0)  # what the daemon does when told
    assert device.desired.held()["all"].state() == {"version": None, "rejected": {"version": 3, "error": told[0][2]}}
    assert device.offer("all", _doc(3, [_job("water", "0 1 * * *")])).result == "applied"  # the broker's copy, at connect


# --------------------------------------------------------------------------- never early, never twice


class Ticked:
    """A scheduler on the device's database, ticked by hand; the firings it queued."""

    def __init__(self, device: Device, settings: Settings, *, live: bool = False):
        self.journal = Journal(device.store)
        self.store = device.store
        self.scheduler = Scheduler(settings, device.store, submit=self.submit, clock=lambda: 0.0, live=live)

    def submit(self, cmd: NewCommand, cur: sqlite3.Cursor | None = None) -> tuple[Command, bool]:
        if cur is None:
            with self.store.transaction() as own:
                return self.journal.add(own, cmd, enqueued=False)
        return self.journal.add(cur, cmd, enqueued=False)

    def fired(self, job: str) -> list[str]:
        """The planned instants of ``job`` queued, as Istanbul wall times."""
        from zoneinfo import ZoneInfo

        ids = [c.id for c in reversed(self.journal.history(1000)) if c.id.startswith(f"job:{job}:")]
        return [datetime.fromtimestamp(int(i.rsplit(":", 1)[1]), ZoneInfo("Europe/Istanbul")).strftime("%d %H:%M")
                for i in ids]


def _moved(device: Device, version: int, cron: str, **more: Any) -> Settings:
    assert device.offer("device", _doc(version, [_job("water", cron, **more)])).result == "applied"
    return device.merged()


@pytest.mark.parametrize("to", ["0 16 * * *", "0 12 * * *"])
def test_a_job_moved_after_it_fired_fires_nothing_more_and_nothing_early(device: Device, to: str) -> None:
    """13:30 fired; at 13:30:05 moved to 16:00 (still to come today) or 12:00 (past, inside its
    2 h grace): no firing between, the next at the new time."""
    t = Ticked(device, _moved(device, 1, "30 13 * * *", missed="all"))
    t.scheduler.tick(_ts("2026-06-01T13:29:00+03:00"))
    t.scheduler.tick(_ts("2026-06-01T13:30:01+03:00"))
    assert t.fired("water") == ["01 13:30"]
    t.scheduler.reload(_moved(device, 2, to, missed="all"))
    for at in ("13:30:05", "13:30:06", "14:00:00", "15:59:59"):
        t.scheduler.tick(_ts(f"2026-06-01T{at}+03:00"))
    assert t.fired("water") == ["01 13:30"]
    t.scheduler.tick(_ts("2026-06-01T16:00:01+03:00"))
    t.scheduler.tick(_ts("2026-06-02T12:00:01+03:00"))
    assert t.fired("water") == ["01 13:30", "01 16:00" if to.endswith("16 * * *") else "02 12:00"]


def test_a_changed_job_has_no_catch_up_whatever_its_missed_policy(device: Device) -> None:
    """The bug of celery #2531 / django-celery-beat #683: a job that last fired yesterday at 13:30,
    moved at 13:00:30 today to 12:00, would catch up today's 12:00 (inside its grace, missed = "all").
    It does not: planned from the change on. An unchanged job keeps what it fired: its 13:00, due
    just before the reload and not yet ticked, still fires after it, once."""
    def doc(version: int, cron: str) -> bytes:
        return _doc(version, [_job("water", cron, missed="all", grace="1d"), _job("feed", "0 13 * * *", missed="all")])

    device.offer("device", doc(1, "30 13 * * *"))
    t = Ticked(device, device.merged())
    t.scheduler.tick(_ts("2026-05-31T13:29:00+03:00"))
    t.scheduler.tick(_ts("2026-05-31T13:30:01+03:00"))
    t.scheduler.tick(_ts("2026-06-01T12:59:59+03:00"))
    assert t.fired("water") == ["31 13:30"] and t.fired("feed") == []
    device.offer("device", doc(2, "0 12 * * *"))
    t.scheduler.reload(device.merged())
    t.scheduler.tick(_ts("2026-06-01T13:00:30+03:00"))
    t.scheduler.tick(_ts("2026-06-01T13:00:31+03:00"))
    assert t.fired("water") == ["31 13:30"]  # today's 12:00 is before the change: not caught up
    assert t.fired("feed") == ["01 13:00"]  # unchanged
    t.scheduler.tick(_ts("2026-06-02T12:00:01+03:00"))
    t.scheduler.tick(_ts("2026-06-02T13:00:01+03:00"))
    assert t.fired("water") == ["31 13:30", "02 12:00"] and t.fired("feed") == ["01 13:00", "02 13:00"]


def test_a_job_back_under_an_old_name_and_the_first_jobs_of_a_reload_are_not_caught_up(device: Device) -> None:
    """A job removed and added again (a document cleared, then set) keeps no catch-up from its old
    row; a scheduler made by a reload (the device had no jobs) plans its jobs from then on."""
    t = Ticked(device, _moved(device, 1, "0 * * * *", missed="all", grace="1d"))
    t.scheduler.tick(_ts("2026-06-01T08:59:00+03:00"))
    t.scheduler.tick(_ts("2026-06-01T09:00:01+03:00"))
    assert t.fired("water") == ["01 09:00"]
    device.offer("device", b'{"version": 2, "clear": true}')
    t.scheduler.reload(device.merged())  # water is config's again ("0 6 * * *")
    t.scheduler.reload(_moved(device, 3, "0 * * * *", missed="all", grace="1d"))  # hourly again, at 13:10
    t.scheduler.tick(_ts("2026-06-01T13:10:00+03:00"))
    assert t.fired("water") == ["01 09:00"]  # not 10:00 .. 13:00
    other = Ticked(device, device.merged(), live=True)
    other.scheduler.tick(_ts("2026-06-02T10:10:00+03:00"))
    assert other.fired("vent") == []  # 07:00 is before the scheduler was made by a reload


def test_a_window_from_a_document_puts_its_output_in_its_state_at_once(device: Device) -> None:
    """The config's lamp window (18:00-22:00) holds the lamp off at noon; a document's lamp window
    (10:00-14:00) replaces it and, at the next tick, the lamp is on."""
    t = Ticked(device, device.merged())
    t.scheduler.tick(_ts("2026-06-01T12:00:00+03:00"))
    sets = lambda: [dict(c.args) for c in reversed(t.journal.history(1000)) if c.action == "gpio.set"]  # noqa: E731
    assert sets() == [{"device": "lamp", "value": "off"}]
    device.offer("all", _doc(1, windows=[{"device": "lamp", "from": "10:00", "until": "14:00"}]))
    t.scheduler.reload(device.merged())
    t.scheduler.tick(_ts("2026-06-01T12:00:01+03:00"))
    assert sets() == [{"device": "lamp", "value": "off"}, {"device": "lamp", "value": "on"}]


# --------------------------------------------------------------------------- the jobs report


def test_the_report_gives_each_job_and_window_its_origin_and_version(device: Device) -> None:
    device.offer("group:north", _doc(17, [_job("water", "0 8 * * *")],
                                     [{"device": "lamp", "from": "20:00", "until": "21:00"}]))
    doc = jobs_report(device.settings, start="2026-06-01T12:00:00+03:00", store=device.store)
    jobs = {j["name"]: (j["origin"], j["version"], j["next"][0]) for j in doc["jobs"]}
    assert jobs == {"water": ("group:north", 17, "2026-06-02T08:00:00+03:00"),
                    "vent": ("config", None, "2026-06-02T07:00:00+03:00")}
    assert [(w["device"], w["from"], w["origin"], w["version"]) for w in doc["windows"]] == [("lamp", "20:00", "group:north", 17)]
    assert jobs_report(device.merged(), start="2026-06-01T12:00:00+03:00", store=device.store) == doc  # the daemon's view
    text = render_jobs(doc)
    assert "water  (cron 0 8 * * *" in text or "water  (" in text
    assert "    origin      group:north v17" in text and "    origin      config" in text, text
    assert "(origin group:north v17)" in text, text


# --------------------------------------------------------------------------- end to end (real daemons)


def _state(listener: Any, device: str) -> dict[str, Any] | None:
    """The last state document ``device`` published, or None."""
    docs = [m for m in listener.messages if m.topic.endswith(f"/{device}/state")]
    return json.loads(docs[-1].payload) if docs else None


def _schedules(listener: Any, device: str) -> dict[str, Any]:
    state = _state(listener, device)
    return (state or {}).get("schedules") or {}


def _fired(db: Path, job: str) -> list[float]:
    """The planned instants of ``job`` queued by the daemon (read from its database)."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
        rows = conn.execute("select id from commands where id like ?", (f"job:{job}:%",)).fetchall()
    return sorted(float(r[0].rsplit(":", 1)[1]) for r in rows if ":run:" not in r[0])


def _publish(listener: Any, topic: str, doc: dict[str, Any] | bytes) -> None:
    listener.publish(topic, doc if isinstance(doc, bytes) else json.dumps(doc), retain=True)


def _mqtt(prefix: str) -> dict[str, Any]:
    """A client id of the test's own: the persistent session of another test's "a" would bring its subscriptions."""
    return {"client_id": f"edge-agent-{prefix}", "state_interval": 3600}


@pytest.fixture
def prefix(broker: Any, listener_factory: Any) -> Iterator[str]:
    """A topic prefix of the test's own; its device "a" gets a client id of its own too (:func:`_mqtt`)."""
    p = f"sd{uuid.uuid4().hex[:6]}"
    yield p
    cleaner = listener_factory(broker.port, [f"{p}/all/schedule"])
    for topic in (schedule_topic(p, "all"), schedule_topic(p, "group", "greenhouse"), schedule_topic(p, "device", "a")):
        cleaner.publish(topic, b"", retain=True)  # the retained documents of this test go


@pytest.mark.slow
def test_documents_applied_on_connect_and_live_versions_rejections_tombstones_precedence(
        broker: Any, daemon_factory: Any, listener_factory: Any, prefix: str, tmp_path: Path) -> None:
    """A retained ``all`` document set before the daemon starts is applied at connect; a group and a
    device document live. An older version is ignored; an invalid one (unknown action, bad cron) is
    rejected with its error in ``state.schedules`` and the applied schedule keeps firing; a tombstone
    removes the device's document. Precedence, as `edge-agent jobs --json` shows it."""
    listener = listener_factory(broker.port, [f"{prefix}/a/state"])
    every = lambda name, s="1s": {"name": name, "every": s, "action": "agent.ping"}  # noqa: E731
    _publish(listener, schedule_topic(prefix, "all"), {"version": 5, "jobs": [every("tick"), every("water", "1h")]})
    daemon = daemon_factory(agent_config(tmp_path, device="a", groups=("greenhouse",), mqtt_port=broker.port,
                                         prefix=prefix, devices=LAMP_DIM_DOOR, jobs=[every("water", "2h")],
                                         mqtt=_mqtt(prefix)))
    daemon.start()
    db = tmp_path / "agent.db"
    wait_until(lambda: _schedules(listener, "a").get("all", {}).get("version") == 5, 15,
               message=lambda: f"state: {_state(listener, 'a')}; log:\n{daemon.log.read_text()[-3000:]}")
    wait_until(lambda: _fired(db, "tick"), 15, message="the all document's tick never fired")

    _publish(listener, schedule_topic(prefix, "group", "greenhouse"), {"version": 7, "jobs": [every("water", "3h")]})
    _publish(listener, schedule_topic(prefix, "device", "a"), {"version": 3, "jobs": [every("water", "4h")]})
    wait_until(lambda: _schedules(listener, "a").get("device", {}).get("version") == 3, 15, message="device v3 not applied")
    jobs = {j["name"]: (j["origin"], j["version"], j["trigger"]) for j in json.loads(daemon.cli("jobs", "--json").stdout)["jobs"]}
    assert jobs["water"][:2] == ("device", 3) and "4h" in jobs["water"][2], jobs
    assert jobs["tick"][:2] == ("all", 5), jobs
    assert _schedules(listener, "a")["group:greenhouse"] == {"version": 7, "rejected": None}

    _publish(listener, schedule_topic(prefix, "all"), {"version": 4, "jobs": []})  # older: ignored
    _publish(listener, schedule_topic(prefix, "all"),
             {"version": 6, "jobs": [every("tick"), {"name": "x", "every": "1s", "action": "agent.nope"}]})
    rejected = wait_until(lambda: (_schedules(listener, "a").get("all") or {}).get("rejected"), 15, message="v6 not rejected")
    assert rejected["version"] == 6 and "agent.nope" in rejected["error"], rejected
    assert _schedules(listener, "a")["all"]["version"] == 5
    _publish(listener, schedule_topic(prefix, "all"), {"version": 8, "jobs": [{"name": "tick", "cron": "61 * * * *",
                                                                               "action": "agent.ping"}]})
    wait_until(lambda: ((_schedules(listener, "a").get("all") or {}).get("rejected") or {}).get("version") == 8, 15,
               message="v8 not rejected")
    assert "jobs[0].cron" in _schedules(listener, "a")["all"]["rejected"]["error"]
    assert "schedule all ignored: version 4 is older than the applied 5" in daemon.log.read_text()
    seen = len(_fired(db, "tick"))
    wait_until(lambda: len(_fired(db, "tick")) >= seen + 2, 15, message="the applied schedule stopped firing")

    _publish(listener, schedule_topic(prefix, "device", "a"), {"version": 9, "clear": True})
    wait_until(lambda: _schedules(listener, "a").get("device") == {"version": 9, "rejected": None, "cleared": True}, 15,
               message="the tombstone was not applied")
    jobs = {j["name"]: (j["origin"], j["version"]) for j in json.loads(daemon.cli("jobs", "--json").stdout)["jobs"]}
    assert jobs == {"water": ("group:greenhouse", 7), "tick": ("all", 5)}, jobs
    assert daemon.terminate() == 0


@pytest.mark.slow
def test_a_restart_with_the_broker_down_runs_the_applied_schedule(own_broker: Any, daemon_factory: Any,
                                                                  listener_factory: Any, tmp_path: Path) -> None:
    """Applied once; then the broker stops and the daemon restarts: it reads the documents from its
    database before its scheduler starts, and the job fires with no broker."""
    prefix = f"sd{uuid.uuid4().hex[:6]}"
    listener = listener_factory(own_broker.port, [f"{prefix}/a/state"])
    _publish(listener, schedule_topic(prefix, "device", "a"),
             {"version": 1, "jobs": [{"name": "tick", "every": "1s", "action": "agent.ping"}]})
    daemon = daemon_factory(agent_config(tmp_path, device="a", mqtt_port=own_broker.port, prefix=prefix))
    daemon.start()
    wait_until(lambda: _schedules(listener, "a").get("device", {}).get("version") == 1, 15,
               message=lambda: daemon.log.read_text()[-3000:])
    assert daemon.terminate() == 0
    listener.close()
    own_broker.stop()
    db = tmp_path / "agent.db"
    before = len(_fired(db, "tick"))
    daemon.start()
    wait_until(lambda: len(_fired(db, "tick")) >= before + 2, 15, message=lambda: daemon.log.read_text()[-3000:])
    assert "1 job(s)" in daemon.log.read_text().rsplit("ready:", 1)[1].splitlines()[0]
    # A SIGHUP reload of a changed file merges the stored document again: tick goes on firing.
    agent_config(tmp_path, device="a", mqtt_port=own_broker.port, prefix=prefix,
                 jobs=[{"name": "yearly", "cron": "0 3 1 1 *", "action": "agent.ping"}])
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "reloaded" in daemon.log.read_text(), 15, message="no reload")
    after = len(_fired(db, "tick"))
    wait_until(lambda: len(_fired(db, "tick")) >= after + 2, 15, message=lambda: daemon.log.read_text()[-3000:])
    jobs = json.loads(daemon.cli("send", "agent.jobs", "--wait", "10", "--json").stdout)["result"]["jobs"]
    assert {j["name"]: j["origin"] for j in jobs} == {"yearly": "config", "tick": "device"}, jobs
    assert daemon.terminate() == 0


@pytest.mark.slow
def test_fake_clock_a_job_moved_at_13_30_05_fires_nothing_more_and_nothing_early(
        broker: Any, daemon_factory: Any, listener_factory: Any, prefix: str, tmp_path: Path) -> None:
    """The real daemon on a fake clock: ``water`` (13:30, from the device's document) fires at 13:30; at
    ~13:30:05 it is moved to 16:00, then to 12:00 (past, inside its grace, missed = "all"): each change
    is taken by the scheduler (a later tick of ``tick`` proves it) and ``water`` fires nothing more."""
    listener = listener_factory(broker.port, [f"{prefix}/a/state"])
    water = lambda v, cron: {"version": v, "jobs": [{"name": "water", "cron": cron, "action": "agent.ping",  # noqa: E731
                                                     "missed": "all", "grace": "2h"}]}
    _publish(listener, schedule_topic(prefix, "device", "a"), water(1, "30 13 * * *"))
    daemon = daemon_factory(agent_config(tmp_path, device="a", mqtt_port=broker.port, prefix=prefix, location=ISTANBUL,
                                         jobs=[{"name": "tick", "every": "1s", "action": "agent.ping"}], mqtt=_mqtt(prefix)),
                            env={FAKE_TIME: "2026-06-01T13:29:57+03:00"})
    daemon.start()
    db = tmp_path / "agent.db"
    wait_until(lambda: _fired(db, "water"), 15, message=lambda: daemon.log.read_text()[-3000:])
    assert _fired(db, "water") == [_ts("2026-06-01T13:30:00+03:00")]
    for version, cron in ((2, "0 16 * * *"), (3, "0 12 * * *")):
        _publish(listener, schedule_topic(prefix, "device", "a"), water(version, cron))
        wait_until(lambda v=version: _schedules(listener, "a").get("device", {}).get("version") == v, 15,
                   message=lambda: daemon.log.read_text()[-3000:])
        # The tick of applied_at + 1 may have begun before the change; the one after it (its whole
        # tick, water too, is done once applied_at + 3 fires) planned water by the new document.
        applied_at = max(_fired(db, "tick"))
        wait_until(lambda t=applied_at: max(_fired(db, "tick")) >= t + 3, 15, message="no tick after the change")
        assert _fired(db, "water") == [_ts("2026-06-01T13:30:00+03:00")], daemon.log.read_text()[-3000:]
    job = {j["name"]: j for j in json.loads(daemon.cli("jobs", "--json").stdout)["jobs"]}["water"]
    assert job["next"][0] == "2026-06-02T12:00:00+03:00" and (job["origin"], job["version"]) == ("device", 3), job
    assert daemon.terminate() == 0


def test_the_state_says_schedules_and_a_change_republishes(device: Device) -> None:
    """``schedules`` is in the change key: a new version or a rejection republishes ``state``."""
    from edge_agent.device.mqtt import _key_of

    base = {"queue": 0, "outbox": 0, "failures_24h": 0, "last_error": None, "disk_full": False}
    before = _key_of({**base, "schedules": schedule_state(device.settings, device.desired.held())})
    device.offer("all", _doc(1))
    after = _key_of({**base, "schedules": schedule_state(device.settings, device.desired.held())})
    assert before != after

