"""The shipped ACL (deploy/acl.example) on a real mosquitto with passwords: the agents and the
operator work as usual, and a device's credentials cannot command, impersonate or eavesdrop on
another device, nor publish a schedule document."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
from pathlib import Path

import pytest

from bench.harness import wait_until
from tests.configs import LAMP, agent_config
from tests.conftest import Broker, Daemon, fleet_cli, start_all
from tests.test_mqtt_auth import pki  # noqa: F401 - the throw-away CA and broker certificate (a fixture)

pytestmark = pytest.mark.slow

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
USERS = {"porch": "porch-pw", "kitchen": "kitchen-pw", "operator": "op-pw", "homeassistant": "ha-pw"}


@pytest.fixture
def secured(tmp_path):
    if not Path(MOSQUITTO_PASSWD).exists():
        pytest.skip("mosquitto_passwd is not installed")
    passwd = tmp_path / "passwd"
    for i, (user, password) in enumerate(USERS.items()):
        subprocess.run([MOSQUITTO_PASSWD, *(["-c"] if i == 0 else []), "-b", str(passwd), user, password],
                       check=True, timeout=30, capture_output=True)
    shutil.copy(DEPLOY / "acl.example", tmp_path / "acl")
    secrets = {}
    for user, password in USERS.items():
        secrets[user] = tmp_path / f"{user}.secret"
        secrets[user].write_text(password + "\n")
    (tmp_path / "broker").mkdir()
    broker = Broker(tmp_path / "broker", extra=f"password_file {passwd}\nacl_file {tmp_path / 'acl'}\n")
    broker.conf.write_text(broker.conf.read_text().replace("allow_anonymous true", "allow_anonymous false"))
    broker.start()
    daemons = []
    for name in ("porch", "kitchen"):
        (tmp_path / name).mkdir()
        cfg = agent_config(tmp_path / name, device=name, groups=["garden"], mqtt_port=broker.port, prefix="edge",
                           devices=LAMP, mqtt={"username": name, "password_file": str(secrets[name]), "discovery": True})
        daemons.append(Daemon(cfg))
    try:
        start_all(daemons)
        yield broker, dict(zip(("porch", "kitchen"), daemons, strict=True)), secrets
    finally:
        for d in daemons:
            if d.proc is not None:
                d.proc.kill()
                d.proc.wait(10)
        broker.stop()


class Client:
    """A paho client logged in as someone, recording messages and PUBACK reason codes."""

    def __init__(self, port: int, user: str, client_id: str):
        import paho.mqtt.client as mqtt

        self.messages: list[tuple[str, bytes]] = []
        self.acks: dict[int, str] = {}
        self.cond = threading.Condition()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        self.client.username_pw_set(user, USERS[user])
        ready = threading.Event()
        self.client.on_connect = lambda c, u, f, rc, p: ready.set()
        self.client.on_message = self._on_message
        self.client.on_publish = self._on_publish
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self._subscribed = threading.Event()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert ready.wait(10)

    def _on_message(self, c, u, msg) -> None:
        with self.cond:
            self.messages.append((msg.topic, msg.payload))
            self.cond.notify_all()

    def _on_publish(self, c, u, mid, reason_code, properties) -> None:
        with self.cond:
            self.acks[mid] = str(reason_code)
            self.cond.notify_all()

    def subscribe(self, topic: str) -> None:
        self._subscribed.clear()
        self.client.subscribe(topic, 1)
        assert self._subscribed.wait(10)

    def publish(self, topic: str, payload: object, retain: bool = False) -> str:
        info = self.client.publish(topic, json.dumps(payload), qos=1, retain=retain)
        info.wait_for_publish(10)
        with self.cond:
            assert self.cond.wait_for(lambda: info.mid in self.acks, 10)
            return self.acks[info.mid]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _op(broker, secrets, *args):
    return fleet_cli(broker.port, "edge", *args, extra=("--username", "operator", "--password-file",
                                                        str(secrets["operator"])))


def _ls(broker, secrets, pred, timeout=60):
    def rows():
        out = _op(broker, secrets, "ls", "--json")
        assert out.returncode == 0, out.stderr
        return {r["device"]: r for r in json.loads(out.stdout)["devices"]}

    def matching():
        got = rows()
        return got if pred(got) else None

    return wait_until(matching, timeout, interval=0.3, message=lambda: str(rows()))


def _history_ids(daemon: Daemon) -> set[str]:
    out = daemon.cli("history", "-n", "1000", "--json")
    return {c["id"] for c in json.loads(out.stdout)["commands"]}


def test_operator_works_and_leaked_device_credentials_cannot_reach_another_device(secured):
    """Under the ACL the operator lists, commands and reads events of every device; porch's
    credentials cannot command kitchen, send group commands, fake kitchen's state or status,
    nor read kitchen's commands; the agents' own traffic (discovery too) is never refused."""
    broker, daemons, secrets = secured
    rows = _ls(broker, secrets, lambda r: {"porch", "kitchen"} <= set(r) and all(
        r[d]["online"] and r[d]["version"] for d in ("porch", "kitchen")))
    out = _op(broker, secrets, "send", "agent.ping", "--group", "garden", "--json")
    assert out.returncode == 0 and json.loads(out.stdout)["counts"] == {"succeeded": 2}, out.stdout + out.stderr

    thief = Client(broker.port, "porch", "stolen-porch-credentials")
    try:
        thief.subscribe("edge/kitchen/cmd/#")
        refusals = [thief.publish("edge/kitchen/cmd/gpio.set", {"id": "evil-1", "args": {"device": "lamp", "value": "on"}}),
                    thief.publish("edge/group/garden/cmd/agent.ping", {"id": "evil-2"}),
                    thief.publish("edge/kitchen/state", {"device": "kitchen", "version": "0-evil"}, retain=True),
                    thief.publish("edge/kitchen/status", "offline", retain=True)]
        assert all(r == "Not authorized" for r in refusals), refusals
        # A command the operator sends after those: when kitchen has its reply, anything
        # published before it would have reached kitchen first.
        out = _op(broker, secrets, "send", "gpio.set", "device=lamp", "value=off", "-d", "kitchen", "--id", "control",
                  "--json")
        assert out.returncode == 0, out.stdout + out.stderr
        ids = _history_ids(daemons["kitchen"])
        assert "control" in ids and not {"evil-1", "evil-2"} & ids
        assert "evil-2" not in _history_ids(daemons["porch"])
        assert not [t for t, _ in thief.messages if t.startswith("edge/kitchen/cmd/")]  # could not eavesdrop
        rows = _ls(broker, secrets, lambda r: True)
        assert rows["kitchen"]["online"] and rows["kitchen"]["version"] != "0-evil"
        hist = _op(broker, secrets, "history", "kitchen", "--id", "control", "--json")
        assert [e["event"] for e in json.loads(hist.stdout)["events"]] == ["received", "started", "succeeded"]
    finally:
        thief.close()
    ha = Client(broker.port, "homeassistant", "ha-test")
    try:
        ha.subscribe("homeassistant/#")  # the retained discovery configs the agents announced
        with ha.cond:
            assert ha.cond.wait_for(lambda: {"porch", "kitchen"} <= {
                t.split("/")[2].removeprefix("edge-agent-") for t, _ in ha.messages}, 10), ha.messages
    finally:
        ha.close()
    for d in daemons.values():
        assert "refused a message" not in d.log.read_text(), d.log.read_text()[-2000:]


def test_only_operators_publish_schedules(secured, tmp_path):
    """Under the ACL a device's credentials cannot publish any schedule document (all, a group's,
    another device's, its own): the broker answers Not authorized and keeps none of them; the
    operator's `fleet schedule set` is published, read by the devices and applied."""
    broker, daemons, secrets = secured
    _ls(broker, secrets, lambda r: {"porch", "kitchen"} <= set(r) and all(
        r[d]["online"] and r[d]["version"] for d in ("porch", "kitchen")))
    evil = {"version": 2**62, "jobs": [{"name": "evil", "every": "1m", "action": "gpio.set",
                                        "args": {"device": "lamp", "value": "on"}}]}
    thief = Client(broker.port, "porch", "stolen-porch-schedules")
    try:
        refusals = [thief.publish(topic, evil, retain=True) for topic in
                    ("edge/all/schedule", "edge/group/garden/schedule", "edge/kitchen/schedule", "edge/porch/schedule")]
        assert all(r == "Not authorized" for r in refusals), refusals
    finally:
        thief.close()
    water = tmp_path / "water.toml"
    water.write_text('[[jobs]]\nname = "water"\ncron = "30 5 * * *"\naction = "gpio.set"\n'
                     'args = { device = "lamp", value = "on" }\n')
    out = _op(broker, secrets, "schedule", "set", str(water), "--group", "garden", "--timeout", "60", "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    doc = json.loads(out.stdout)
    assert doc["counts"] == {"applied": 2} and doc["version"] < 2**62, doc
    reader = Client(broker.port, "operator", "op-schedules")
    try:
        reader.subscribe("edge/+/schedule")
        reader.subscribe("edge/group/+/schedule")
        marker = "edge/_fleet/acl-test/sync"
        reader.subscribe(marker)
        reader.publish(marker, "")
        with reader.cond:
            assert reader.cond.wait_for(lambda: any(t == marker for t, _ in reader.messages), 10)
            held = {t: json.loads(p) for t, p in reader.messages if t.endswith("/schedule")}
    finally:
        reader.close()
    assert list(held) == ["edge/group/garden/schedule"] and held["edge/group/garden/schedule"]["version"] == doc["version"]
    for d in daemons.values():
        assert "refused a message" not in d.log.read_text(), d.log.read_text()[-2000:]


def test_fleet_over_tls_with_the_acl(tmp_path, pki):  # noqa: F811 - pki is the imported fixture
    """The README's setup: a TLS listener with passwords and the ACL; an agent with ca_file,
    username and password_file; the operator's fleet ls and send with --ca-file."""
    if not Path(MOSQUITTO_PASSWD).exists():
        pytest.skip("mosquitto_passwd is not installed")
    passwd = tmp_path / "passwd"
    for i, user in enumerate(("porch", "operator")):
        subprocess.run([MOSQUITTO_PASSWD, *(["-c"] if i == 0 else []), "-b", str(passwd), user, USERS[user]],
                       check=True, timeout=30, capture_output=True)
    shutil.copy(DEPLOY / "acl.example", tmp_path / "acl")
    for user in ("porch", "operator"):
        (tmp_path / f"{user}.secret").write_text(USERS[user] + "\n")
    (tmp_path / "broker").mkdir()
    broker = Broker(tmp_path / "broker", extra=(
        f"cafile {pki / 'ca.pem'}\ncertfile {pki / 'server.pem'}\nkeyfile {pki / 'server.key'}\n"
        f"password_file {passwd}\nacl_file {tmp_path / 'acl'}\n"))
    broker.conf.write_text(broker.conf.read_text().replace("allow_anonymous true", "allow_anonymous false"))
    broker.start()
    (tmp_path / "porch").mkdir()
    agent = Daemon(agent_config(tmp_path / "porch", device="porch", mqtt_port=broker.port, prefix="edge", devices=LAMP,
                                mqtt={"username": "porch", "password_file": str(tmp_path / "porch.secret"),
                                      "tls": {"ca_file": str(pki / "ca.pem")}}))
    tls = ("--ca-file", str(pki / "ca.pem"), "--username", "operator", "--password-file", str(tmp_path / "operator.secret"))
    try:
        agent.start()
        def porch_online() -> bool:
            out = fleet_cli(broker.port, "edge", "ls", "--json", extra=tls)
            assert out.returncode == 0, out.stderr
            rows = {r["device"]: r for r in json.loads(out.stdout)["devices"]}
            return bool(rows.get("porch", {}).get("online") and rows["porch"]["version"])

        wait_until(porch_online, 60, interval=0.3, message=lambda: agent.log.read_text()[-2000:])
        out = fleet_cli(broker.port, "edge", "send", "agent.ping", "-d", "porch", "--json", extra=tls)
        assert out.returncode == 0 and json.loads(out.stdout)["counts"] == {"succeeded": 1}, out.stdout + out.stderr
        untrusted = fleet_cli(broker.port, "edge", "ls", extra=("--ca-file", str(pki / "other-ca.pem"),
                                                              *tls[2:]))
        assert untrusted.returncode == 1 and "cannot reach the MQTT broker" in untrusted.stderr, untrusted.stderr
    finally:
        if agent.proc is not None:
            agent.proc.kill()
            agent.proc.wait(10)
        broker.stop()
