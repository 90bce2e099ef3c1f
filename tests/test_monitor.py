"""The monitor's parts: store, ingest (gaps, backfill), auth, the day picture, metrics, and the app over a simulated fleet."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from bench.harness import wait_until
from tests.conftest import ROOT, Broker, free_port, wait_port

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

ISTANBUL = ZoneInfo("Europe/Istanbul")


def ev(seq: int, kind: str, cid: str = "c1", action: str = "gpio.set", ts: float | None = None, **extra: Any) -> dict[str, Any]:
    return {"seq": seq, "device": "d1", "event": kind, "id": cid, "action": action, "ts": ts or 1000.0 + seq, **extra}


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Any]:
    from edge_agent.fleet.monitor.store import MonitorStore

    s = MonitorStore(str(tmp_path / "m.db"))
    yield s
    s.close()


def write_events(store: Any, device: str, events: list[dict[str, Any]]) -> None:
    with store.transaction() as w:
        w.touch(device, 1000.0)
        for e in events:
            w.event(device, e)


# --------------------------------------------------------------------------- start-up cost


def test_help_does_not_import_the_monitor_or_its_web_stack() -> None:
    """``edge-agent --help`` stays fast: neither the monitor nor Starlette, uvicorn or Jinja is imported."""
    code = ("import sys\nfrom edge_agent import cli\ntry:\n    cli.main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in sys.modules if m.startswith(('edge_agent.fleet.monitor', 'starlette', 'uvicorn', 'jinja2'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True).stdout
    assert "monitor" in out  # the subcommand is listed
    assert out.strip().splitlines()[-1] == "[]"


# --------------------------------------------------------------------------- store


def test_events_fold_into_a_task_with_every_attempt(store: Any) -> None:
    """received, started, retried, started, succeeded: the task ends succeeded at attempt 2 with its result and args."""
    write_events(store, "d1", [ev(1, "received", source="mqtt", args={"device": "lamp"}), ev(2, "started", attempt=1),
                               ev(3, "retried", attempt=1, error={"type": "retryable", "message": "boom"}, next_try=1010.0),
                               ev(4, "started", attempt=2), ev(5, "succeeded", attempt=2, runtime=0.5, result={"ok": 1})])
    t = store.task("d1", "c1")
    assert (t["status"], t["attempt"], t["args"], t["result"], t["source"]) == ("succeeded", 2, {"device": "lamp"}, {"ok": 1}, "mqtt")
    assert t["error_type"] == "retryable" and t["received"] == 1001.0 and t["finished"] == 1005.0
    assert [e["event"] for e in store.task_events("d1", "c1")] == ["received", "started", "retried", "started", "succeeded"]


def test_an_older_event_arriving_late_fills_blanks_but_never_undoes_the_newer(store: Any) -> None:
    """A backfilled ``received``/``started`` after the ``failed`` leaves the task failed and adds its args."""
    write_events(store, "d1", [ev(3, "failed", attempt=1, error={"type": "x", "message": "no"})])
    write_events(store, "d1", [ev(1, "received", args={"a": 1}), ev(2, "started", attempt=1)])
    t = store.task("d1", "c1")
    assert (t["status"], t["args"], t["error_message"], t["seq"]) == ("failed", {"a": 1}, "no", 3)


def test_a_repeated_event_is_stored_once(store: Any) -> None:
    """The same (device, seq) live, in a history page and again after a gap: one row, counted once."""
    ingest, _ = make_ingest(store)
    apply(ingest, ("events", "d1", [ev(1, "received"), ev(3, "succeeded", attempt=1)]))
    apply(ingest, ("events", "d1", [ev(1, "received"), ev(3, "succeeded", attempt=1)]))
    apply(ingest, ("history", "d1", 1, {"events": [ev(2, "started", attempt=1), ev(3, "succeeded", attempt=1)], "next": 3,
                                        "more": False, "last": 3}))
    write_events(store, "d1", [ev(3, "succeeded", attempt=1)])  # the store itself ignores a repeat too
    assert store.counts()["events"] == 3 and ingest.ingested == 3
    assert store.task("d1", "c1")["status"] == "succeeded"


def test_replies_set_the_status_only_while_no_event_is_known(store: Any) -> None:
    """A device without events is followed by its replies; once events exist, a reply does not override them."""
    with store.transaction() as w:
        w.touch("d1", 1.0)
        w.reply("d1", {"id": "r1", "action": "gpio.set", "status": "accepted", "ts": 5.0}, 5.0)
        w.reply("d1", {"id": "r1", "action": "gpio.set", "status": "succeeded", "result": {"v": 1}, "ts": 6.0}, 6.0)
    assert store.task("d1", "r1")["status"] == "succeeded"
    write_events(store, "d1", [ev(1, "received", cid="r2"), ev(2, "started", cid="r2", attempt=1)])
    with store.transaction() as w:
        w.reply("d1", {"id": "r2", "status": "accepted", "ts": 7.0}, 7.0)
    assert store.task("d1", "r2")["status"] == "running"


def test_the_monitors_own_queries_are_not_tasks(store: Any) -> None:
    """agent.history requests (ids under ``monitor:``) leave no task row."""
    write_events(store, "d1", [ev(1, "received", cid="monitor:history:x:1", action="agent.history")])
    assert store.task("d1", "monitor:history:x:1") is None


def test_filtered_tasks_page_back_newest_first(store: Any) -> None:
    """Filters by device, action and status; ``before`` pages back; ``more`` says there is more."""
    from edge_agent.fleet.monitor.store import TaskQuery

    events = []
    for i in range(30):
        cid = f"t{i:02d}"
        events += [ev(2 * i + 1, "received", cid=cid, action="a" if i % 2 else "b", ts=2000.0 + i),
                   ev(2 * i + 2, "failed" if i % 3 == 0 else "succeeded", cid=cid, action="a" if i % 2 else "b", ts=2000.5 + i)]
    write_events(store, "d1", events)
    rows, more = store.tasks(TaskQuery(action="a", limit=5))
    assert [r["id"] for r in rows] == ["t29", "t27", "t25", "t23", "t21"] and more
    rows2, _ = store.tasks(TaskQuery(action="a", limit=5, before=rows[-1]["updated"]))
    assert rows2[0]["id"] == "t19"
    failed, _ = store.tasks(TaskQuery(status="failed", action="a", limit=50))
    assert [r["id"] for r in failed] == ["t27", "t21", "t15", "t09", "t03"]
    assert store.tasks(TaskQuery(device="other"))[0] == []


def test_retention_deletes_by_age_and_by_count(tmp_path: Path) -> None:
    """Rows older than ``keep`` go, and beyond ``max_tasks``/``max_events`` the oldest go first."""
    from edge_agent.fleet.monitor.store import MonitorStore

    s = MonitorStore(str(tmp_path / "m.db"), keep=100.0, max_tasks=10, max_events=15)
    now = 10_000.0
    old = [ev(i, "received", cid=f"old{i}", ts=now - 500 + i) for i in range(1, 6)]
    new = [ev(i, "received", cid=f"new{i}", ts=now - 50 + i) for i in range(6, 26)]
    write_events(s, "d1", old + new)
    s.prune(now=now)
    rows = s._query("select id from tasks order by updated")
    assert [r[0] for r in rows] == [f"new{i}" for i in range(16, 26)]
    assert s.counts()["events"] == 15
    s.close()


# --------------------------------------------------------------------------- ingest: gaps and backfill


class Recorder:
    def __init__(self) -> None:
        self.history: list[tuple[str, int]] = []
        self.jobs: list[str] = []


def make_ingest(store: Any) -> tuple[Any, Recorder]:
    from edge_agent.fleet.monitor.hub import Hub
    from edge_agent.fleet.monitor.ingest import Inbox, Ingest

    rec = Recorder()
    asks = SimpleNamespace(request_history=lambda device, after: rec.history.append((device, after)),
                           request_jobs=rec.jobs.append)
    ingest = Ingest(store, Hub(), Inbox(), asks)
    return ingest, rec


def apply(ingest: Any, *items: tuple[Any, ...]) -> None:
    """Hand ``items`` to the ingest as one batch; events go as the raw JSON the link passes on."""
    ingest._apply([(kind, device, time.time(), *([json.dumps(payload[0]).encode()] if kind == "events" else payload))
                   for kind, device, *payload in items])


def test_a_gap_in_seq_asks_for_the_history_after_the_last_contiguous_event(store: Any) -> None:
    """Events 1, 2, then 5: history is asked after 2; a page up to 4 closes the gap and 5 counts as held."""
    ingest, rec = make_ingest(store)
    apply(ingest, ("events", "d1", [ev(1, "received"), ev(2, "started", attempt=1)]))
    assert ingest.seq_hi("d1") == 2 and rec.history == []
    apply(ingest, ("events", "d1", [ev(5, "received", cid="c5")]))
    assert rec.history == [("d1", 2)] and ingest.seq_hi("d1") == 2
    page = {"events": [ev(3, "succeeded", attempt=1), ev(4, "received", cid="c4")], "next": 4, "more": False, "last": 5}
    apply(ingest, ("history", "d1", 2, page))
    assert ingest.seq_hi("d1") == 5
    assert store.task("d1", "c1")["status"] == "succeeded"
    assert store.seq_marks()["d1"] == (5, True)


def test_a_page_with_more_asks_for_the_next_page(store: Any) -> None:
    """``more: true`` asks again after the page's ``next``."""
    ingest, rec = make_ingest(store)
    apply(ingest, ("sync", "d1"))
    assert rec.history == [("d1", 0)] and rec.jobs == ["d1"]
    apply(ingest, ("history", "d1", 0, {"events": [ev(i, "received", cid=f"c{i}") for i in range(1, 4)], "next": 3,
                                        "more": True, "last": 9}))
    assert rec.history[-1] == ("d1", 3)


def test_a_state_with_a_newer_last_seq_asks_for_history(store: Any) -> None:
    """The retained state says ``last_seq`` 7 while the monitor holds 0: it asks (the monitor was away)."""
    ingest, rec = make_ingest(store)
    apply(ingest, ("state", "d1", {"device": "d1", "last_seq": 7}))
    assert rec.history == [("d1", 0)]


def test_a_device_that_counts_from_1_again_is_followed_again(store: Any) -> None:
    """A history whose ``last`` is below the seq held (a new database): the old events go, the new ones count."""
    ingest, rec = make_ingest(store)
    apply(ingest, ("events", "d1", [ev(i, "received", cid=f"old{i}") for i in range(1, 6)]))
    apply(ingest, ("state", "d1", {"device": "d1", "last_seq": 2}))  # stale or new? ask
    assert ingest.seq_hi("d1") == 5 and rec.history[-1] == ("d1", 5)
    apply(ingest, ("history", "d1", 5, {"events": [], "next": 5, "more": False, "last": 2}))
    assert ingest.seq_hi("d1") == 0 and rec.history[-1] == ("d1", 0)
    apply(ingest, ("events", "d1", [ev(3, "received", cid="new3")]))
    apply(ingest, ("history", "d1", 0, {"events": [ev(1, "received", cid="new1"), ev(2, "received", cid="new2"),
                                                   ev(3, "received", cid="new3")], "next": 3, "more": False, "last": 3}))
    assert ingest.seq_hi("d1") == 3
    assert [e["id"] for e in store.task_events("d1", "new1")] == ["new1"]
    assert store.task("d1", "old4") is not None  # the tasks stay


def test_a_device_without_agent_history_is_not_asked_again(store: Any) -> None:
    """After ``agent.history`` is rejected as unknown, gaps are accepted as they are."""
    ingest, rec = make_ingest(store)
    apply(ingest, ("nohistory", "d1"), ("events", "d1", [ev(4, "received")]))
    assert rec.history == [] and ingest.seq_hi("d1") == 4


def test_gpio_states_come_from_results_and_topics_once_per_change(store: Any) -> None:
    """A gpio.set success and the retained ON that follows make one change; OFF makes another."""
    ingest, _ = make_ingest(store)
    apply(ingest, ("events", "d1", [ev(1, "succeeded", attempt=1, result={"device": "lamp", "value": "on"})]),
          ("gpio", "d1", "lamp", "ON"), ("gpio", "d1", "lamp", "OFF"))
    assert [(p, v) for p, _, v in store.gpio_between("d1", 0, time.time() + 10)] == [("lamp", "on"), ("lamp", "off")]


# --------------------------------------------------------------------------- live updates


def test_a_stream_that_falls_behind_is_closed_not_grown() -> None:
    """Past QUEUE_MAX waiting messages the stream's queue is emptied and closed (the browser reconnects)."""
    import asyncio

    from edge_agent.fleet.monitor import hub as hub_mod

    async def run() -> list[str]:
        h = hub_mod.Hub()
        gen = h.stream(None, heartbeat=0.5)
        first = await gen.__anext__()
        for i in range(hub_mod.QUEUE_MAX + 5):
            h.publish({"type": "x", "device": "d", "i": i})
        await asyncio.sleep(0)  # the offers published above run first: the loop runs its callbacks in order
        rest = [item async for item in gen]
        return [first, *rest]

    got = asyncio.run(run())
    assert got[0].startswith("retry:")
    assert len(got) < 10  # not QUEUE_MAX messages


# --------------------------------------------------------------------------- auth


def request(host: str = "127.0.0.1", cookies: dict[str, str] | None = None, headers: dict[str, str] | None = None) -> Any:
    return SimpleNamespace(client=SimpleNamespace(host=host), cookies=cookies or {}, headers=headers or {})


def test_viewing_is_open_on_localhost_only() -> None:
    """Without a login, 127.0.0.1 and ::1 may view; another address may not; with --login-always nobody may."""
    from edge_agent.fleet.monitor.auth import Auth

    auth = Auth("pw", "salt")
    assert auth.may_view(request("127.0.0.1")) and auth.may_view(request("::1"))
    assert not auth.may_view(request("192.0.2.7"))
    assert not Auth("pw", "salt", open_local=False).may_view(request("127.0.0.1"))
    assert auth.may_view(request("192.0.2.7", headers={"authorization": "Bearer pw"}))


def test_acting_needs_a_session_and_the_csrf_token() -> None:
    """A send needs a valid session cookie and the CSRF token that matches its cookie; a bearer token needs neither."""
    from edge_agent.fleet.monitor.auth import CSRF_COOKIE, SESSION_COOKIE, Auth

    auth = Auth("pw", "salt")
    session = auth.new_session()
    good = request(cookies={SESSION_COOKIE: session, CSRF_COOKIE: "tok"}, headers={"host": "h:1", "origin": "http://h:1"})
    assert auth.may_act(good, {"csrf": "tok"}) == (True, "")
    assert not auth.may_act(good, {"csrf": "other"})[0]
    assert not auth.may_act(good, {})[0]
    cross = request(cookies={SESSION_COOKIE: session, CSRF_COOKIE: "tok"}, headers={"host": "h:1", "origin": "http://evil"})
    assert not auth.may_act(cross, {"csrf": "tok"})[0]
    assert auth.may_act(request(cookies={CSRF_COOKIE: "tok"}), {"csrf": "tok"}) == (False, "log in first")
    assert auth.may_act(request(headers={"authorization": "Bearer pw"}), {})[0]
    assert not auth.may_act(request(headers={"authorization": "Bearer nope"}), {})[0]


def test_sessions_expire_and_end_when_the_password_changes() -> None:
    """A session is signed with a key derived from the password: an old one or another password's is refused."""
    from edge_agent.fleet.monitor.auth import SESSION_SECONDS, Auth

    auth = Auth("pw", "salt")
    s = auth.new_session(now=1000.0)
    assert auth.session_valid(s, now=1000.0 + SESSION_SECONDS - 1)
    assert not auth.session_valid(s, now=1000.0 + SESSION_SECONDS + 1)
    assert not Auth("new password", "salt").session_valid(s, now=1001.0)
    assert not auth.session_valid(s[:-1] + ("0" if s[-1] != "0" else "1"), now=1001.0)
    assert not Auth(None, "salt").session_valid(s, now=1001.0)


# --------------------------------------------------------------------------- day picture, metrics


def test_day_picture_bands_cover_the_day_in_order_with_daylight_at_noon() -> None:
    """Istanbul in December: contiguous bands from midnight to midnight, night at 02:00, daylight at 12:00."""
    from datetime import datetime

    from edge_agent.fleet.monitor.day import SUN_NAMES, day_picture

    day = date(2026, 12, 7)
    pic = day_picture("d1", day, tz=ISTANBUL, latitude=41.0082, longitude=28.9784, jobs_doc=None, state={}, tasks=[],
                      fired=[], gpio=[], now=0.0)
    assert pic.sun[0][0] == pic.start and pic.sun[-1][1] == pic.end
    assert all(a[1] == b[0] for a, b in zip(pic.sun, pic.sun[1:], strict=False))

    def at(hour: int) -> str:
        t = datetime(2026, 12, 7, hour, tzinfo=ISTANBUL).timestamp()
        return next(SUN_NAMES[lv] for a, b, lv in pic.sun if a <= t < b)

    assert at(2) == "night" and at(12) == "daylight" and at(23) == "night"
    assert [SUN_NAMES[lv] for *_, lv in pic.sun].count("daylight") == 1


def test_day_picture_shows_firings_gpio_and_failures_and_escapes_everything() -> None:
    """A planned and an actual firing, a GPIO on-span, a failure cross; ids with markup stay text."""
    from datetime import datetime

    from edge_agent.fleet.monitor.day import day_picture, render_svg

    day = date(2026, 12, 7)
    t0 = datetime(2026, 12, 7, 18, tzinfo=ISTANBUL).timestamp()
    bad = '<script>alert("x")</script>'
    tasks = [{"id": "job:on:1", "action": "gpio.set", "status": "succeeded", "started": t0 + 2, "finished": t0 + 3,
              "updated": t0 + 3}, {"id": bad, "action": bad, "status": "failed", "finished": t0 + 60, "updated": t0 + 60,
                                   "error_message": bad}]
    fired = [{"event": "fired", "job": "on", "planned": t0, "id": "job:on:1", "ts": t0 + 1}]
    pic = day_picture(bad, day, tz=ISTANBUL, latitude=41.0, longitude=29.0, jobs_doc={"jobs": [], "windows": [
        {"device": "porch", "from": "sunset-15m", "until": "23:00"}]}, state={}, tasks=tasks, fired=fired,
        gpio=[("lamp", t0 + 3, "on"), ("lamp", t0 + 600, "off")], now=t0 + 3600)
    assert pic.jobs["on"]["planned"] == [t0] and pic.jobs["on"]["ran"][0][1] == t0 + 2
    assert [(a, b, v) for a, b, v in pic.gpio["lamp"]] == [(t0 + 3, t0 + 600, "on"), (t0 + 600, t0 + 3600, "off")]
    assert len(pic.windows) == 1
    svg = render_svg(pic, ISTANBUL)
    assert "<script" not in svg and "&lt;script&gt;" in svg
    assert 'class="gpio on" data-pin="lamp"' in svg and 'class="task failure"' in svg and 'class="window"' in svg


def test_day_picture_takes_a_firing_without_ts_or_task() -> None:
    """A device's `fired` event without its ts, of a task not known yet: planned is drawn, no ran mark (no crash)."""
    from datetime import datetime

    from edge_agent.fleet.monitor.day import day_picture

    t0 = datetime(2026, 12, 7, 18, tzinfo=ISTANBUL).timestamp()
    pic = day_picture("d1", date(2026, 12, 7), tz=ISTANBUL, latitude=None, longitude=None, jobs_doc=None, state={},
                      tasks=[], fired=[{"event": "fired", "job": "on", "planned": t0, "id": "job:on:1"}], gpio=[], now=t0)
    assert pic.jobs["on"] == {"planned": [t0], "ran": []}


def test_metrics_escape_label_values() -> None:
    """Device ids with quotes and backslashes are escaped in label values; the text ends with a newline."""
    from edge_agent.fleet.monitor.metrics import render_metrics
    from edge_agent.fleet.monitor.store import DeviceRow

    d = DeviceRow('a"b\\c', True, 1.0, {"queue": 3, "outbox": 1}, 1.0, 1.0, 0, True, None)
    text = render_metrics([d], {"tasks_by_status": {"failed": 2}, "events": 5}, lag=0.25, backlog=0, ingested=5)
    assert 'edge_monitor_device_queue_depth{device="a\\"b\\\\c"} 3' in text
    assert 'edge_monitor_tasks{status="failed"} 2' in text and "edge_monitor_event_lag_seconds 0.250" in text
    assert text.endswith("\n")


# --------------------------------------------------------------------------- the process over a simulated fleet


@pytest.fixture(scope="module")
def mon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The real ``edge-agent monitor`` process, a real mosquitto and a simulated fleet (no browser)."""
    from bench.simfleet import SimFleet

    folder = tmp_path_factory.mktemp("monitor")
    broker = Broker(folder)
    broker.start()
    (folder / "pw").write_text("s3cret\n")
    cfg = folder / "m.toml"
    cfg.write_text(textwrap.dedent(f"""\
        [device]
        id = "monitor"
        [mqtt]
        host = "127.0.0.1"
        port = {broker.port}
        """))
    port = free_port()
    log = open(folder / "monitor.log", "ab")  # noqa: SIM115 (closed at the end of the module)
    proc = subprocess.Popen([sys.executable, "-m", "edge_agent", "monitor", "--config", str(cfg), "--listen",
                             f"127.0.0.1:{port}", "--db", str(folder / "m.db"), "--password-file", str(folder / "pw")],
                            stderr=log, cwd=ROOT)
    wait_port(port, 20)
    fleet = SimFleet(broker.port, ["s1", "s2"])
    ns = SimpleNamespace(url=f"http://127.0.0.1:{port}", fleet=fleet, broker=broker, proc=proc, folder=folder)
    try:
        yield ns
    finally:
        fleet.close()
        proc.terminate()
        rc = proc.wait(10)
        log.close()
        broker.stop()
        assert rc == 0, (folder / "monitor.log").read_text()[-3000:]


def http(url: str, data: bytes | None = None, headers: dict[str, str] | None = None) -> tuple[int, str]:
    req = urllib.request.Request(url, data=data, headers=headers or {}, method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read().decode()


def test_gap_in_live_events_is_fetched_with_agent_history(mon: Any) -> None:
    """Events 11-20 never reach the broker (an outbox that dropped them); event 21 shows the gap; the monitor fetches 11-20."""
    f = mon.fleet
    f.online_all()
    for i in range(5):
        f.task("s1", f"g{i}", "gpio.set", {"device": "lamp", "value": "on"})  # seq 1-20
    wait_until(lambda: json.loads(http(mon.url + "/api/tasks?device=s1")[1])["tasks"])
    calls = f.history_calls
    f.publish_events = False
    for i in range(5, 8):
        f.task("s1", f"g{i}", "gpio.set", {"device": "lamp", "value": "off"})  # seq 21-32, not published
    f.publish_events = True
    f.task("s1", "g8", "gpio.set", {"device": "lamp", "value": "on"})
    wait_until(lambda: len(json.loads(http(mon.url + "/api/tasks?device=s1&status=succeeded")[1])["tasks"]) == 9)
    assert f.history_calls > calls
    _, body = http(mon.url + "/api/tasks/s1/g6")
    assert [e["event"] for e in json.loads(body)["events"]] == ["received", "started", "succeeded"]


def test_send_needs_a_login_and_a_bearer_token_works(mon: Any) -> None:
    """An anonymous POST is refused (403); with ``Authorization: Bearer`` it is published and its reply is stored."""
    status, body = http(mon.url + "/device/s2/send", b"action=gpio.set&args=device%3Dlamp", {"accept": "application/json"})
    assert status == 403 and "log in" in body, body
    status, body = http(mon.url + "/device/s2/send", b"action=gpio.set&args=device%3Dlamp+value%3Don",
                        {"accept": "application/json", "authorization": "Bearer s3cret"})
    assert status == 200, body
    cid = json.loads(body)["id"]
    task = wait_until(lambda: json.loads(http(mon.url + f"/api/tasks/s2/{cid}")[1]).get("task"))
    assert task["args"] == {"device": "lamp", "value": "on"}
    status, _ = http(mon.url + "/device/s2/send", b"action=x", {"authorization": "Bearer wrong", "accept": "application/json"})
    assert status == 403


def test_pages_escape_untrusted_text(mon: Any) -> None:
    """A device id and args holding markup come back escaped in every page that shows them."""
    bad = "<i onmouseover=alert(1)>x"  # (no "/": it would split the topic)
    mon.fleet.seqs[bad] = 0
    mon.fleet.devices.append(bad)
    mon.fleet.online_all()
    mon.fleet.task(bad, "x1", "echo", {"text": "<script>alert(1)</script>"})
    wait_until(lambda: json.loads(http(mon.url + "/api/tasks?action=echo")[1])["tasks"])
    quoted = urllib.parse.quote(bad, safe="")
    for path in ("/", "/tasks", f"/device/{quoted}", f"/task/{quoted}/x1"):
        status, html = http(mon.url + path)
        assert status == 200, path
        assert "<i " not in html and "&lt;i onmouseover=alert(1)&gt;x" in html, path
        assert "<script>alert" not in html
    _, html = http(mon.url + f"/task/{quoted}/x1")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_the_fleet_page_shows_schedule_drift_against_the_documents_the_broker_holds(mon: Any) -> None:
    """A device whose state reports an older version of its group's retained schedule is "drift"; the same
    version "in sync"; that version rejected "rejected"; with no document at all "-"."""
    import paho.mqtt.client as mqtt

    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="drift-test")
    c.connect("127.0.0.1", mon.broker.port)
    c.loop_start()

    def state(**schedules: Any) -> None:
        doc = {"device": "gh1", "version": "0.1.0", "groups": ["greenhouse"], "queue": 0, "outbox": 0,
               "last_seq": 0, "ts": time.time(), "schedules": schedules}
        c.publish("edge/gh1/state", json.dumps(doc), qos=1, retain=True).wait_for_publish(5)

    def shown() -> Any:
        rows = json.loads(http(mon.url + "/api/devices")[1])["devices"]
        return next((r["schedule"] for r in rows if r["device"] == "gh1"), None)

    try:
        c.publish("edge/gh1/status", "online", qos=1, retain=True).wait_for_publish(5)
        state()
        wait_until(lambda: shown() == "-", message="gh1 without documents")
        c.publish("edge/group/greenhouse/schedule", json.dumps({"version": 7, "jobs": [], "windows": []}), qos=1,
                  retain=True).wait_for_publish(5)
        state(**{"group:greenhouse": {"version": 5, "rejected": None}})
        wait_until(lambda: shown() == "drift", message="gh1 drifting")
        state(**{"group:greenhouse": {"version": 7, "rejected": None}})
        wait_until(lambda: shown() == "in sync", message="gh1 in sync")
        state(**{"group:greenhouse": {"version": 5, "rejected": {"version": 7, "error": "no action 'valve.open'"}}})
        wait_until(lambda: shown() == "rejected", message="gh1 rejected")
        status, html = http(mon.url + "/")
        assert status == 200 and 'class="sched rejected">rejected<' in html
    finally:
        for topic in ("edge/group/greenhouse/schedule", "edge/gh1/state", "edge/gh1/status"):
            c.publish(topic, b"", qos=1, retain=True).wait_for_publish(5)
        c.loop_stop()
        c.disconnect()


def test_metrics_and_api_answer(mon: Any) -> None:
    """/metrics is Prometheus text with the devices online; /api/devices is JSON with each device."""
    status, text = http(mon.url + "/metrics")
    assert status == 200 and 'edge_monitor_devices{status="online"}' in text
    _, body = http(mon.url + "/api/devices")
    assert {"s1", "s2"} <= {d["device"] for d in json.loads(body)["devices"]}


def test_a_login_redirects_only_to_local_paths() -> None:
    """``next`` after a login may be a path on this site, never another site."""
    from edge_agent.fleet.monitor.web import _safe_next

    assert _safe_next("/device/x") == "/device/x"
    assert _safe_next("//evil.example/") == "/" and _safe_next("https://evil.example/") == "/" and _safe_next(None) == "/"
