"""The MQTT link with credentials: username/password from a file, and TLS, against a real mosquitto.

A wrong password or an untrusted certificate is not fatal: the agent says why in one
clear log line, keeps running (everything local works offline) and keeps retrying, so
it connects by itself once the broker side is put right.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from bench.harness import WaitTimeout, wait_until
from tests.configs import LAMP, agent_config

PASSWORD = "s3cret-Pa55word"


def _reconfigure(broker: Any, body: str) -> None:
    """Restart a test broker with ``body`` as its whole config (on its own port)."""
    broker.stop()
    # mosquitto started as root drops to the `mosquitto` user, which cannot read pytest's 0700 tmp folders.
    user = "user root\n" if os.geteuid() == 0 else ""
    broker.conf.write_text(f"listener {broker.port} 127.0.0.1\n{body}\nset_tcp_nodelay true\npersistence false\n{user}")
    broker.start()


def _passwd(path: Path, user: str, password: str) -> None:
    tool = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
    if not os.path.exists(tool):
        pytest.skip("mosquitto_passwd is not installed")
    subprocess.run([tool, "-b", "-c", str(path), user, password], check=True, capture_output=True)


class Client:
    """A paho client that records what arrives on some topics; credentials and TLS optional."""

    def __init__(self, port: int, topics: list[str], *, username: str | None = None, password: str | None = None,
                 ca_file: str | None = None):
        import paho.mqtt.client as mqtt

        self.messages: list[Any] = []
        self.cond = threading.Condition()
        ready = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        if username:
            self.client.username_pw_set(username, password)
        if ca_file:
            self.client.tls_set(ca_certs=ca_file)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe([(t, 1) for t in topics])
        self.client.on_subscribe = lambda *a: ready.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert ready.wait(10), "test client did not subscribe"

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        with self.cond:
            self.messages.append(msg)
            self.cond.notify_all()

    def wait_for(self, pred: Any, timeout: float) -> Any:
        end = time.monotonic() + timeout
        with self.cond:
            while True:
                for m in self.messages:
                    if pred(m):
                        return m
                left = end - time.monotonic()
                if left <= 0:
                    return None
                self.cond.wait(left)

    def publish(self, topic: str, payload: Any) -> None:
        self.client.publish(topic, json.dumps(payload), qos=1).wait_for_publish(10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _round_trip(client: Client, prefix: str, dev: str, timeout: float = 10.0) -> dict[str, Any]:
    # `online` follows the agent's SUBSCRIBE on its connection: from then on commands reach it.
    online = client.wait_for(lambda m: m.topic == f"{prefix}/{dev}/status" and m.payload == b"online", timeout)
    assert online is not None, f"the agent did not say online within {timeout}s"
    cid = uuid.uuid4().hex
    client.publish(f"{prefix}/{dev}/cmd/agent.ping", {"id": cid})
    msg = client.wait_for(lambda m: m.topic.endswith("/reply") and json.loads(m.payload).get("id") == cid
                          and json.loads(m.payload)["status"] == "succeeded", timeout)
    assert msg is not None, f"no succeeded reply to agent.ping within {timeout}s"
    return json.loads(msg.payload)


def _wait_log(daemon: Any, pattern: str, timeout: float) -> str | None:
    """The first line of the daemon's log that matches ``pattern`` within ``timeout`` seconds, or None."""
    rx = re.compile(pattern, re.IGNORECASE)

    def line() -> str | None:
        return next((ln for ln in daemon.log.read_text(errors="replace").splitlines() if rx.search(ln)), None)

    with contextlib.suppress(WaitTimeout):
        return wait_until(line, timeout, interval=0.1)
    return None


def _config(tmp_path: Path, dev: str, port: int, prefix: str, mqtt: dict[str, Any] | None = None) -> Path:
    """The agent's config: one output, the lamp; ``mqtt`` adds keys to [mqtt] (credentials, TLS, client id)."""
    return agent_config(tmp_path, device=dev, mqtt_port=port, prefix=prefix, devices=LAMP, mqtt=mqtt or {})


def _setup(own_broker, daemon_factory, tmp_path, mqtt: dict[str, Any]):
    run = uuid.uuid4().hex[:6]
    dev, prefix = "au", f"au{run}"
    d = daemon_factory(_config(tmp_path, dev, own_broker.port, prefix, mqtt))
    return d, dev, prefix


def test_password_from_a_file(own_broker, daemon_factory, tmp_path):
    """With allow_anonymous off, the agent logs in with the password from its file and answers commands;
    the password never appears in its log."""
    _passwd(tmp_path / "passwd", "porch", PASSWORD)
    _passwd(tmp_path / "passwd-tester", "tester", "tester-pass")
    both = (tmp_path / "passwd").read_text() + (tmp_path / "passwd-tester").read_text()
    (tmp_path / "passwd").write_text(both)
    _reconfigure(own_broker, f"allow_anonymous false\npassword_file {tmp_path / 'passwd'}")
    secret = tmp_path / "mqtt.secret"
    secret.write_text(PASSWORD + "\n")
    secret.chmod(0o600)
    d, dev, prefix = _setup(own_broker, daemon_factory, tmp_path, {"username": "porch", "password_file": str(secret)})
    client = Client(own_broker.port, [f"{prefix}/#"], username="tester", password="tester-pass")
    try:
        d.start()
        assert _round_trip(client, prefix, dev)["result"]["device"] == dev
        assert PASSWORD not in d.log.read_text(errors="replace")
    finally:
        client.close()


@pytest.mark.slow
def test_wrong_password_is_logged_and_retried(own_broker, daemon_factory, tmp_path):
    """A refused login: one clear log line, the daemon keeps running and local commands work; once the broker
    accepts the password the agent connects by itself."""
    _passwd(tmp_path / "passwd", "porch", "another-password")
    _reconfigure(own_broker, f"allow_anonymous false\npassword_file {tmp_path / 'passwd'}")
    secret = tmp_path / "mqtt.secret"
    secret.write_text(PASSWORD + "\n")
    d, dev, prefix = _setup(own_broker, daemon_factory, tmp_path, {"username": "porch", "password_file": str(secret)})
    d.start()
    line = _wait_log(d, r"MQTT.*(refused|not authori[sz]ed|bad user ?name or password)", 10)
    assert line is not None, "no log line says the broker refused the login:\n" + d.log.read_text()[-2000:]
    assert re.search(r"password|authori[sz]", line, re.IGNORECASE), f"the log line does not say why: {line}"
    assert PASSWORD not in d.log.read_text(errors="replace")
    # Still alive, and local work goes on while the link is down.
    out = d.cli("send", "gpio.set", "device=lamp", "value=on", "--wait", "10")
    assert out.returncode == 0, out.stdout + out.stderr
    assert d.proc is not None and d.proc.poll() is None
    status = d.cli("status", "--json")
    link = json.loads(status.stdout)["mqtt"]
    assert link["connected"] is False and re.search(r"authori[sz]|password", link["last_error"] or "", re.I), link
    # Put the broker right: the agent's retries get in without a restart.
    _passwd(tmp_path / "passwd", "porch", PASSWORD)
    _passwd(tmp_path / "passwd-tester", "tester", "tester-pass")
    (tmp_path / "passwd").write_text((tmp_path / "passwd").read_text() + (tmp_path / "passwd-tester").read_text())
    own_broker.proc.send_signal(1)  # SIGHUP: mosquitto reloads its password file
    client = Client(own_broker.port, [f"{prefix}/#"], username="tester", password="tester-pass")
    try:
        assert _wait_log(d, r"MQTT: connected", 40) is not None, "the agent did not retry:\n" + d.log.read_text()[-2000:]
        assert _round_trip(client, prefix, dev)["result"]["device"] == dev
    finally:
        client.close()


@pytest.mark.slow
def test_a_message_the_broker_refuses_is_logged(own_broker, daemon_factory, tmp_path):
    """An ACL that denies the device its reply topic: the broker refuses each reply (an MQTT 5 PUBACK with
    'Not authorized'); the agent says so in a log line naming the topic, and keeps working."""
    run = uuid.uuid4().hex[:6]
    dev, prefix = "au", f"au{run}"
    _passwd(tmp_path / "passwd", "tester", "tester-pass")
    (tmp_path / "acl").write_text(
        f"topic readwrite {prefix}/{dev}/cmd/#\ntopic readwrite {prefix}/{dev}/status\n"
        f"topic readwrite {prefix}/{dev}/state\ntopic readwrite {prefix}/{dev}/gpio/#\n"
        f"topic read {prefix}/{dev}/reply\n\nuser tester\ntopic readwrite #\n")
    _reconfigure(own_broker, f"allow_anonymous true\npassword_file {tmp_path / 'passwd'}\nacl_file {tmp_path / 'acl'}")
    d = daemon_factory(_config(tmp_path, dev, own_broker.port, prefix))
    client = Client(own_broker.port, [f"{prefix}/#"], username="tester", password="tester-pass")
    try:
        d.start()
        assert client.wait_for(lambda m: m.topic == f"{prefix}/{dev}/status" and m.payload == b"online", 10)
        client.publish(f"{prefix}/{dev}/cmd/agent.ping", {"id": "denied-1"})
        line = _wait_log(d, rf"refused a message on {prefix}/{dev}/reply: Not authori[sz]ed", 10)
        assert line is not None, "no log line names the refused topic:\n" + d.log.read_text()[-2000:]
        assert client.wait_for(lambda m: m.topic.endswith("/reply"), 0.5) is None
        # Everything else still flows: the state of a GPIO output reaches the broker.
        out = d.cli("send", "gpio.set", "device=lamp", "value=on", "--wait", "10")
        assert out.returncode == 0, out.stdout + out.stderr
        assert client.wait_for(lambda m: m.topic == f"{prefix}/{dev}/gpio/lamp" and m.payload == b"ON", 10)
    finally:
        client.close()


def test_a_clean_stop_says_disconnect(own_broker, daemon_factory, tmp_path):
    """SIGTERM: the agent's DISCONNECT reaches the broker (its log says 'disconnected', not 'closed its
    connection'), so the broker does not take a clean stop for a lost device."""
    _reconfigure(own_broker, "allow_anonymous true")
    d, dev, prefix = _setup(own_broker, daemon_factory, tmp_path, {"client_id": "clean-stop-test"})
    client = Client(own_broker.port, [f"{prefix}/#"])
    try:
        d.start()
        _round_trip(client, prefix, dev)
        assert d.terminate() == 0
        log = own_broker.workdir / "mosquitto.log"

        def since_connect() -> str:  # what the broker logged about the agent after its last connect
            return log.read_text(errors="replace").split("as clean-stop-test")[-1]

        wait_until(lambda: "Client clean-stop-test" in since_connect(), 5, interval=0.05,
                   message=lambda: since_connect()[-1000:])
        assert "Client clean-stop-test disconnected" in since_connect(), since_connect()[-1000:]
    finally:
        client.close()


# ---------------------------------------------------------------------------------------- TLS


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture
def pki(tmp_path):
    """A throw-away CA and a server certificate for 127.0.0.1, and a second CA nobody trusts."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed")
    d = tmp_path / "pki"
    d.mkdir()
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    for ca in ("ca", "other-ca"):
        _openssl("req", "-x509", *ec, "-keyout", f"{ca}.key", "-out", f"{ca}.pem", "-days", "2",
                 "-subj", f"/CN=edge-agent test {ca}", "-addext", "basicConstraints=critical,CA:TRUE",
                 "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)
    _openssl("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1", cwd=d)
    (d / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n"
                               "keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n"
                               "authorityKeyIdentifier=keyid\nsubjectKeyIdentifier=hash\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "server.pem", "-days", "2", "-extfile", "ext.cnf", cwd=d)
    for f in d.iterdir():
        f.chmod(0o644)
    return d


def test_tls(own_broker, daemon_factory, tmp_path, pki):
    """The agent connects over TLS, verifying the broker's certificate against the configured CA."""
    _reconfigure(own_broker, f"allow_anonymous true\ncafile {pki / 'ca.pem'}\ncertfile {pki / 'server.pem'}\n"
                             f"keyfile {pki / 'server.key'}")
    d, dev, prefix = _setup(own_broker, daemon_factory, tmp_path, {"tls": {"ca_file": str(pki / "ca.pem")}})
    client = Client(own_broker.port, [f"{prefix}/#"], ca_file=str(pki / "ca.pem"))
    try:
        d.start()
        assert _round_trip(client, prefix, dev)["result"]["device"] == dev
    finally:
        client.close()


@pytest.mark.slow
def test_tls_untrusted_certificate_is_logged_and_retried(own_broker, daemon_factory, tmp_path, pki):
    """A broker certificate from a CA the agent does not trust: a clear log line, the daemon keeps running."""
    _reconfigure(own_broker, f"allow_anonymous true\ncafile {pki / 'ca.pem'}\ncertfile {pki / 'server.pem'}\n"
                             f"keyfile {pki / 'server.key'}")
    d, _, _ = _setup(own_broker, daemon_factory, tmp_path, {"tls": {"ca_file": str(pki / "other-ca.pem")}})
    d.start()
    line = _wait_log(d, r"MQTT.*(certificate|verif|ssl|tls)", 10)
    assert line is not None, "no log line says the certificate was not trusted:\n" + d.log.read_text()[-2000:]
    time.sleep(2.5)  # not synchronisation: a retry or two happen meanwhile, and the daemon must live through them
    assert d.proc is not None and d.proc.poll() is None, "the daemon stopped"
    log = d.log.read_text(errors="replace")
    assert "Traceback" not in log, log[log.index("Traceback") - 300:][:3000]
    assert "MQTT: connected" not in log
