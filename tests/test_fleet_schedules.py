"""Fleet schedules, the operator's side (edge_agent.fleet.schedules, ``edge-agent fleet schedule``).

Fast: the schedule file (good, TOML error, unknown key and bad cron with the config's messages),
versions, how a device's report is read and classified, the CLI's exit 2 on a bad file; and
set / clear / status against devices played by MQTT clients on the session's mosquitto.
Slow: 10 real agents on a real mosquitto: a group schedule set while 3 are stopped (applied at
once by the others, the 3 offline and applied when started), an invalid document rejected with
its error while the old schedule stays, an older version ignored, drift in ``status``, ``clear``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.harness import wait_until
from edge_agent.config import MqttSettings
from edge_agent.errors import ConfigError, InvalidCommand
from edge_agent.fleet import schedules
from edge_agent.fleet.client import FleetClient
from edge_agent.fleet.schedules import RetainedDoc, classify, load_document, reported
from tests.configs import LAMP, agent_config
from tests.conftest import ROOT, Broker, Daemon, Listener, agents_on_their_broker, fleet_cli, start_all

WATER = """\
# the greenhouse's watering, moved from 06:00 to 05:30
[[jobs]]
name = "water"
cron = "30 5 * * *"
action = "gpio.set"
args = { device = "lamp", value = "on" }

[[jobs]]
name = "new-year"
at = 2027-01-01T10:00:00+02:00
action = "agent.ping"

[[windows]]
device = "lamp"
from = "sunset"
until = "23:00"
"""


def _file(tmp_path: Path, body: str, name: str = "s.toml") -> str:
    path = tmp_path / name
    path.write_text(body)
    return str(path)


# --------------------------------------------------------------------------- the file


def test_load_document_gives_the_json_document(tmp_path):
    doc = load_document(_file(tmp_path, WATER))
    assert doc == {"jobs": [{"name": "water", "cron": "30 5 * * *", "action": "gpio.set",
                             "args": {"device": "lamp", "value": "on"}},
                            {"name": "new-year", "at": "2027-01-01T10:00:00+02:00", "action": "agent.ping"}],
                   "windows": [{"device": "lamp", "from": "sunset", "until": "23:00"}]}
    json.dumps(doc)  # JSON as it is
    assert load_document(_file(tmp_path, "# nothing\n")) == {"jobs": [], "windows": []}


@pytest.mark.parametrize("body, message", [
    ('[[jobs]\nname = "x"\n', "s.toml: not valid TOML: "),
    ('[[jobs]]\nname = "x"\ncron = "1 * * * *"\nacton = "agent.ping"\n',
     "s.toml: jobs[0].acton: unknown key (did you mean 'action'?)"),
    ('[[jobs]]\nname = "x"\ncron = "61 * * * *"\naction = "agent.ping"\n', "s.toml: jobs[0].cron: cron '61 * * * *'"),
    ('[[jobs]]\nname = "x"\ncron = "1 * * * *"\nevery = "1m"\naction = "agent.ping"\n',
     "s.toml: jobs[0]: needs exactly one of"),
    ('version = 7\n[[jobs]]\nname = "x"\nevery = "1m"\naction = "agent.ping"\n',
     "s.toml: version: is set by edge-agent fleet schedule, not in the file"),
])
def test_load_document_refuses_what_the_config_refuses(tmp_path, body, message):
    with pytest.raises(ConfigError) as err:
        load_document(_file(tmp_path, body))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_missing_file_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match=r"nope.toml: no such file$"):
        load_document(str(tmp_path / "nope.toml"))


def test_the_cli_refuses_a_bad_file_with_exit_2_before_connecting(tmp_path):
    bad = _file(tmp_path, '[[jobs]]\nname = "x"\ncron = "61 * * * *"\naction = "agent.ping"\n')
    out = subprocess.run([sys.executable, "-m", "edge_agent", "fleet", "schedule", "set", bad, "--all", "--host",
                          "127.0.0.1", "--port", "1"], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.count("\n") == 1 and "jobs[0].cron: cron '61 * * * *'" in out.stderr, out.stderr
    usage = subprocess.run([sys.executable, "-m", "edge_agent", "fleet", "schedule", "clear", "--host", "127.0.0.1"],
                           capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert usage.returncode == 2 and "one of the arguments --device/-d --group/-g --all is required" in usage.stderr


def test_targets():
    assert [t.topic for t in schedules.targets("edge", devices=["a", "b", "a"])] == ["edge/a/schedule", "edge/b/schedule"]
    assert schedules.targets("edge", group="gh")[0].source == "group:gh"
    assert schedules.targets("edge", everyone=True)[0].topic == "edge/all/schedule"
    for bad in ({"devices": ["a/b"]}, {"group": "+"}, {"devices": ["all"]}, {}):
        with pytest.raises(InvalidCommand):
            schedules.targets("edge", **bad)


# --------------------------------------------------------------------------- versions and reports


def test_next_version_is_the_time_in_ms_or_one_more_than_the_retained():
    now = 1_765_000_000.123
    assert schedules._version_after([], now) == 1_765_000_000_123
    assert schedules._version_after([RetainedDoc(5), None, RetainedDoc(None, problem="x")], now) == 1_765_000_000_123
    ahead = 1_765_000_000_123 + 10**6  # another operator's clock, ahead of ours
    assert schedules._version_after([RetainedDoc(ahead), RetainedDoc(7)], now) == ahead + 1
    with pytest.raises(InvalidCommand):
        schedules._version_after([RetainedDoc(2**63 - 1)], now)


def test_reported_keeps_well_formed_entries_only():
    state = {"schedules": {"all": {"version": 3, "rejected": None},
                           "group:gh": {"version": None, "rejected": {"version": 9, "error": "x" * 5000}},
                           "device": {"version": "7"}, "bad": 5}}
    got, problem = reported(state)
    assert got["all"] == {"version": 3, "cleared": False, "rejected": None}
    assert got["group:gh"]["rejected"]["version"] == 9 and len(got["group:gh"]["rejected"]["error"]) <= 2100
    assert set(got) == {"all", "group:gh"} and problem and "device" in problem
    assert reported({"schedules": []})[0] == {} and reported(None) == ({}, None)


@pytest.mark.parametrize("entry, version, clear, expect", [
    (None, 10, False, None),
    ({"version": 9, "rejected": None}, 10, False, None),
    ({"version": 10, "rejected": None}, 10, False, ("applied", None)),
    ({"version": 11, "rejected": None}, 10, False, ("applied", None)),  # a newer one since: ours is superseded
    ({"version": 9, "rejected": {"version": 10, "error": "bad cron"}}, 10, False, ("rejected", "bad cron")),
    ({"version": 9, "rejected": {"version": 8, "error": "old"}}, 10, False, None),  # an older rejection
    (None, 10, True, ("cleared", None)),
    ({"version": None, "rejected": None}, 10, True, ("cleared", None)),
    ({"version": 9, "rejected": None}, 10, True, None),
    ({"version": 10, "rejected": None}, 10, True, ("cleared", None)),
])
def test_classify(entry, version, clear, expect):
    assert classify(entry, version, clear=clear) == expect


@pytest.mark.parametrize("want, entry, device_status, expect", [
    (RetainedDoc(5), {"version": 5, "rejected": None}, "online", "in sync"),
    (RetainedDoc(5), {"version": 4, "rejected": None}, "online", "drift"),
    (RetainedDoc(5), {"version": 6, "rejected": None}, "online", "drift"),  # the broker holds an older one
    (RetainedDoc(5), {"version": 4, "rejected": None}, "offline", "offline"),
    (RetainedDoc(5), {"version": 4, "rejected": {"version": 5, "error": "e"}}, "online", "rejected"),
    (RetainedDoc(5, clear=True), None, "online", "in sync"),
    (None, {"version": 4, "rejected": None}, "online", "drift"),  # the retained document was deleted
    (None, {"version": 4, "cleared": True, "rejected": None}, "online", "in sync"),
    (None, None, "online", "in sync"),
])
def test_sync(want, entry, device_status, expect):
    assert schedules._sync(want, entry, device_status) == expect


# --------------------------------------------------------------------------- devices played by MQTT clients


class FakeDevice:
    """Publishes a retained status and state as an agent does, and answers a schedule document on
    its own, its group's and the all topic by reporting it applied (or rejected, or nothing)."""

    def __init__(self, port: int, prefix: str, name: str, groups: list[str], mode: str = "apply"):
        self.prefix, self.name, self.groups, self.mode = prefix, name, groups, mode
        self.schedules: dict[str, dict[str, Any]] = {}
        self.listener = Listener(port, [f"{prefix}/all/schedule", f"{prefix}/{name}/schedule",
                                        *(f"{prefix}/group/{g}/schedule" for g in groups)])
        self.listener.client.on_message = self._on_message
        self.publish_state()
        self.listener.publish(f"{prefix}/{name}/status", "offline" if mode == "offline" else "online", retain=True)

    def publish_state(self) -> None:
        self.listener.client.publish(f"{self.prefix}/{self.name}/state", json.dumps(
            {"device": self.name, "version": "test", "groups": self.groups, "ts": time.time(),
             "schedules": self.schedules}), qos=1, retain=True)

    def _on_message(self, c: Any, u: Any, msg: Any) -> None:
        if not msg.payload or self.mode in ("silent", "offline"):
            return
        doc = json.loads(msg.payload)
        rest = msg.topic[len(self.prefix) + 1:].split("/")
        source = "all" if rest[0] == "all" else f"group:{rest[1]}" if rest[0] == "group" else "device"
        entry = self.schedules.setdefault(source, {"version": None, "rejected": None})
        if self.mode == "reject":
            entry["rejected"] = {"version": doc["version"], "error": "jobs[0].action: no action 'nope'"}
        elif doc.get("clear"):
            del self.schedules[source]
        else:
            entry["version"] = doc["version"]
        self.publish_state()

    def close(self) -> None:
        self.listener.client.disconnect()  # first: the loop thread then ends at once
        self.listener.client.loop_stop()
        # paho closes its wake-up socket pair only when the client is collected; this client and this
        # object refer to each other (on_message), so that may happen at exit, as a ResourceWarning
        self.listener.client.on_message = None
        self.listener.client._reset_sockets()


@pytest.fixture
def fakes(broker: Broker) -> Iterator[tuple[MqttSettings, dict[str, FakeDevice]]]:
    prefix = f"fs{uuid.uuid4().hex[:6]}"
    made = {name: FakeDevice(broker.port, prefix, name, ["gh"], mode)
            for name, mode in (("a", "apply"), ("b", "apply"), ("c", "reject"), ("d", "silent"), ("e", "offline"))}
    try:
        yield MqttSettings(host="127.0.0.1", port=broker.port, topic_prefix=prefix), made
    finally:
        for f in made.values():
            f.close()


def test_set_waits_for_each_device_and_tells_them_apart(fakes):
    mqtt, _ = fakes
    doc = {"jobs": [{"name": "water", "cron": "30 5 * * *", "action": "agent.ping"}], "windows": []}
    with FleetClient(mqtt) as client:
        began = time.monotonic()
        res = schedules.set_schedule(client, doc, group="gh", timeout=2.0)
        assert time.monotonic() - began < 10
        assert {d: v["result"] for d, v in res.devices.items()} == {
            "a": "applied", "b": "applied", "c": "rejected", "d": "no_answer", "e": "offline"}
        assert res.devices["c"]["error"] == "jobs[0].action: no action 'nope'" and not res.ok
        assert "did not report version" in res.devices["d"]["detail"]
        again = schedules.set_schedule(client, doc, devices=["a", "b", "ghost"], timeout=1.0)
        assert again.version > res.version
        assert {d: v["result"] for d, v in again.devices.items()} == {
            "a": "applied", "b": "applied", "ghost": "no_such_device"}
        both = schedules.set_schedule(client, doc, devices=["a", "b"], timeout=5.0)
        assert both.ok and both.counts() == {"applied": 2}
        assert schedules.next_version(client, [f"{mqtt.topic_prefix}/a/schedule"]) > both.version
        rows = {(r["device"], r["source"]): r["sync"] for r in schedules.status(client)}
        assert rows[("a", "group:gh")] == rows[("a", "device")] == "in sync"
        assert rows[("c", "group:gh")] == "rejected" and rows[("d", "group:gh")] == "drift"
        assert rows[("e", "group:gh")] == "offline"
        gone = schedules.clear(client, devices=["a"], timeout=5.0)
        assert gone.ok and gone.counts() == {"cleared": 1}
        rows = {(r["device"], r["source"]): r for r in schedules.status(client)}
        assert rows[("a", "device")]["sync"] == "in sync" and rows[("a", "device")]["desired_clear"]
        assert client._handlers == [], "set/status/clear left handlers behind"


def test_cli_set_text_and_exit_codes(fakes, tmp_path):
    mqtt, _ = fakes
    water = _file(tmp_path, WATER, "water.toml")
    out = fleet_cli(mqtt.port, mqtt.topic_prefix, "schedule", "set", water, "--group", "gh", "--timeout", "2")
    assert out.returncode == 1, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert [ln.split()[:2] for ln in lines[:-1]] == [["a", "applied"], ["b", "applied"], ["c", "rejected"],
                                                    ["d", "no_answer"], ["e", "offline"]]
    assert "no action 'nope'" in lines[2] and "applies it when back" in lines[4]
    assert lines[-1].startswith("schedule group:gh v") and "2 applied, 1 no_answer, 1 offline, 1 rejected" in lines[-1]
    assert "not every device applied it: c rejected, d no_answer, e offline" in out.stderr
    ok = fleet_cli(mqtt.port, mqtt.topic_prefix, "schedule", "set", water, "-d", "a", "-d", "b", "--json")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert [(d["device"], d["result"]) for d in json.loads(ok.stdout)["devices"]] == [("a", "applied"), ("b", "applied")]
    empty = fleet_cli(mqtt.port, mqtt.topic_prefix, "schedule", "set", water, "--group", "nobody")
    assert empty.returncode == 1 and "no devices in group 'nobody' yet" in empty.stderr
    st = fleet_cli(mqtt.port, mqtt.topic_prefix, "schedule", "status")
    assert st.returncode == 0 and st.stdout.splitlines()[-1] == "5 device(s): 2 in sync, 1 offline, 1 drift, 1 rejected"
    ls = fleet_cli(mqtt.port, mqtt.topic_prefix, "ls")
    assert ls.returncode == 0 and "SCHEDULE" in ls.stdout.splitlines()[0], ls.stdout + ls.stderr
    col = ls.stdout.splitlines()[0].index("SCHEDULE")
    shown = {ln.split()[0]: ln[col:col + 8].strip() for ln in ls.stdout.splitlines()[1:-1]}
    assert shown == {"a": "in sync", "b": "in sync", "c": "rejected", "d": "drift", "e": "offline"}, ls.stdout
    cleared = fleet_cli(mqtt.port, mqtt.topic_prefix, "schedule", "clear", "-d", "a")
    assert cleared.returncode == 0 and cleared.stdout.splitlines()[0].split()[:2] == ["a", "cleared"]


# --------------------------------------------------------------------------- 10 real agents

N = 10
STOPPED = ("g07", "g08", "g09")
CONFIG_JOB = [{"name": "water", "cron": "0 6 * * *", "action": "gpio.set", "args": {"device": "lamp", "value": "on"}}]


class Greenhouse:
    def __init__(self, broker: Broker, prefix: str, daemons: dict[str, Daemon], folder: Path):
        self.broker, self.prefix, self.daemons, self.folder = broker, prefix, daemons, folder

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return fleet_cli(self.broker.port, self.prefix, *args, timeout=timeout)

    def json(self, *args: str, code: int | None = 0) -> Any:
        out = self.cli(*args, "--json")
        assert code is None or out.returncode == code, out.stdout + out.stderr
        return json.loads(out.stdout)

    def file(self, name: str, body: str) -> str:
        return _file(self.folder, body, name)

    def status(self) -> dict[tuple[str, str | None], dict[str, Any]]:
        return {(r["device"], r["source"]): r for r in self.json("schedule", "status")["rows"]}

    def wait_status(self, pred, timeout: float = 90) -> dict[tuple[str, str | None], dict[str, Any]]:
        def matching() -> Any:
            rows = self.status()
            return rows if pred(rows) else None

        return wait_until(matching, timeout, interval=0.5, message=lambda: json.dumps(
            [r for r in self.status().values()])[:3000])

    def jobs(self, device: str) -> dict[str, dict[str, Any]]:
        return {j["name"]: j for j in self.json("schedule", "get", device)["jobs"]}

    def online(self) -> None:
        def up() -> bool:
            out = self.cli("ls", "--json")
            rows = {r["device"]: r for r in json.loads(out.stdout)["devices"]}
            return len(rows) == N and all(rows[d]["online"] == (self.daemons[d].proc is not None) for d in rows)

        wait_until(up, 90, interval=0.5)


@pytest.fixture(scope="module")
def greenhouse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Greenhouse]:
    def config(folder: Path, name: str, port: int, prefix: str) -> Path:
        return agent_config(folder, device=name, groups=["greenhouse"], mqtt_port=port, prefix=prefix, devices=LAMP,
                            jobs=CONFIG_JOB, queue={"workers": 1, "network_workers": 0})

    root = tmp_path_factory.mktemp("greenhouse")
    with agents_on_their_broker(root, "gh", [f"g{i:02d}" for i in range(N)], config) as (broker, prefix, daemons):
        yield Greenhouse(broker, prefix, daemons, root)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_group_schedule_reaches_stopped_agents_when_they_start(greenhouse):
    """`fleet schedule set --group` with 3 of 10 agents stopped: the 7 apply it at once, the 3 are
    reported offline ("applies when back", exit 1), and apply it when started; `get` shows the
    job's origin and version; the config's own job is replaced by name."""
    gh = greenhouse
    gh.online()
    for name in STOPPED:
        gh.daemons[name].kill()
    gh.online()
    water = gh.file("water.toml", WATER.split("[[windows]]")[0])
    began = time.monotonic()
    doc = gh.json("schedule", "set", water, "--group", "greenhouse", "--timeout", "60", code=1)
    assert time.monotonic() - began < 30, "set waited for the offline devices"
    assert doc["counts"] == {"applied": N - len(STOPPED), "offline": len(STOPPED)}, doc
    assert {d["device"] for d in doc["devices"] if d["result"] == "offline"} == set(STOPPED)
    version = doc["version"]
    assert gh.jobs("g00")["water"]["origin"] == "group:greenhouse" and gh.jobs("g00")["water"]["version"] == version
    assert "30 5" in gh.jobs("g00")["water"]["trigger"] or "05:30" in gh.jobs("g00")["water"]["trigger"]
    rows = gh.status()
    assert {rows[(d, "group:greenhouse")]["sync"] for d in STOPPED} == {"offline"}
    listed = {r["device"]: r for r in json.loads(gh.cli("ls", "--json").stdout)["devices"]}
    assert listed["g00"]["schedules"]["group:greenhouse"]["version"] == version  # fleet ls --json has the reports too
    start_all([gh.daemons[d] for d in STOPPED])
    gh.wait_status(lambda rows: all(rows[(f"g{i:02d}", "group:greenhouse")]["sync"] == "in sync" for i in range(N)))
    assert gh.jobs("g08")["water"]["origin"] == "group:greenhouse" and gh.jobs("g08")["water"]["version"] == version


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_invalid_older_drift_and_clear(greenhouse):
    """An invalid document is rejected with its error and the previous schedule stays; an older
    version published after a newer one is ignored (status: drift); clear takes a source away."""
    gh = greenhouse
    start_all([d for d in gh.daemons.values() if d.proc is None])
    gh.online()
    good = gh.file("mine.toml", '[[jobs]]\nname = "mine"\nevery = "1h"\naction = "agent.ping"\n')
    applied = gh.json("schedule", "set", good, "-d", "g01", "-d", "g02")
    assert applied["counts"] == {"applied": 2}
    bad = gh.file("bad.toml", '[[jobs]]\nname = "mine"\nevery = "1h"\naction = "nope.nope"\n')
    out = gh.json("schedule", "set", bad, "-d", "g01", code=1)
    assert [d["result"] for d in out["devices"]] == ["rejected"] and "nope.nope" in out["devices"][0]["error"]
    assert gh.jobs("g01")["mine"]["version"] == applied["version"]  # the previous one keeps running
    assert gh.status()[("g01", "device")]["sync"] == "rejected"

    # An older version (another operator's tool, a replayed message) after the newer one,
    # published straight to the broker: the device says (in its log) that it ignored it.
    topic = f"{gh.prefix}/g02/schedule"
    old = {"version": applied["version"] - 1, "jobs": [{"name": "old", "every": "2h", "action": "agent.ping"}]}
    pub = Listener(gh.broker.port, [f"{gh.prefix}/g02/reply"])
    try:
        pub.publish(topic, old, retain=True)
    finally:
        pub.close()
    log = gh.daemons["g02"].log
    wait_until(lambda: f"schedule device ignored: version {old['version']} " in log.read_text(), 60, interval=0.2,
               message=lambda: log.read_text()[-2000:])
    jobs = gh.jobs("g02")
    assert "old" not in jobs and jobs["mine"]["version"] == applied["version"]
    row = gh.status()[("g02", "device")]
    assert (row["sync"], row["desired"], row["applied"]) == ("drift", applied["version"] - 1, applied["version"])
    text = gh.cli("schedule", "status")
    assert any(ln.startswith("g02") and "drift" in ln for ln in text.stdout.splitlines()), text.stdout

    gone = gh.json("schedule", "clear", "-d", "g01", "-d", "g02")
    assert gone["counts"] == {"cleared": 2}, gone
    assert "mine" not in gh.jobs("g02") and gh.jobs("g02")["water"]["origin"] in ("config", "group:greenhouse")
    everyone = gh.json("schedule", "clear", "--group", "greenhouse", "--timeout", "60")
    assert everyone["counts"] == {"cleared": N}, everyone
    water = gh.jobs("g05")["water"]
    assert water["origin"] == "config" and water["version"] is None
    text = gh.cli("schedule", "get", "g05")
    assert text.returncode == 0 and any(ln.startswith("water") and "config" in ln for ln in text.stdout.splitlines())

