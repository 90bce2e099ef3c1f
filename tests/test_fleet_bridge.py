"""Two bridged mosquitto brokers, the cheap stand-in for a clustered broker: the devices on one,
the operator on the other. fleet ls and fleet send work across the bridge, a device that dies
is seen offline there, and its command waits for it."""

from __future__ import annotations

import json

import pytest

from bench.harness import wait_until
from tests.configs import LAMP, agent_config
from tests.conftest import Broker, agents_on_their_broker, fleet_cli

pytestmark = pytest.mark.slow


@pytest.fixture
def bridged(tmp_path):
    def config(folder, name, port, prefix):
        return agent_config(folder, device=name, groups=["yard"], mqtt_port=port, prefix=prefix, devices=LAMP)

    # The devices on their broker (the near one); the operator's broker bridges to it.
    with agents_on_their_broker(tmp_path, "br", ["b1", "b2", "b3"], config) as (near, prefix, daemons):
        (tmp_path / "operator").mkdir()
        far = Broker(tmp_path / "operator", extra=(
            "connection to-devices\n"
            f"address 127.0.0.1:{near.port}\n"
            f"topic {prefix}/# both 1\n"
            "cleansession false\n"
            "restart_timeout 1 5\n"
        ))
        far.start()
        try:
            yield far, prefix, daemons
        finally:
            far.stop()


def _ls(port, prefix, pred, timeout=60):
    def rows():
        out = fleet_cli(port, prefix, "ls", "--json")
        assert out.returncode == 0, out.stderr
        return {r["device"]: r for r in json.loads(out.stdout)["devices"]}

    def matching():
        got = rows()
        return got if pred(got) else None

    return wait_until(matching, timeout, interval=0.3, message=lambda: str(rows()))


def test_ls_and_send_across_a_bridge(bridged):
    """From the operator's broker: ls shows the three devices and their state; a group send collects
    three replies; a killed device is offline there, and a send reports it offline and waits in
    its session: after a restart the command has run."""
    far, prefix, daemons = bridged
    rows = _ls(far.port, prefix, lambda r: len(r) == 3 and all(v["online"] and v["version"] for v in r.values()))
    assert all(r["groups"] == ["yard"] for r in rows.values())
    out = fleet_cli(far.port, prefix, "send", "gpio.set", "device=lamp", "value=on", "--group", "yard", "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    assert json.loads(out.stdout)["counts"] == {"succeeded": 3}

    daemons["b2"].kill()
    _ls(far.port, prefix, lambda r: r["b2"]["status"] == "offline")
    out = fleet_cli(far.port, prefix, "send", "agent.ping", "--all", "--id", "across", "--json")
    assert out.returncode == 1
    doc = json.loads(out.stdout)
    assert doc["counts"] == {"succeeded": 2, "offline": 1} and doc["devices"]["b2"]["status"] == "offline"
    daemons["b2"].start()
    _ls(far.port, prefix, lambda r: r["b2"]["online"])
    def kinds():
        hist = fleet_cli(far.port, prefix, "history", "b2", "--id", "across", "--json")
        return [e["event"] for e in json.loads(hist.stdout)["events"]] if hist.returncode == 0 else hist.stderr

    wait_until(lambda: kinds() == ["received", "started", "succeeded"], 60, interval=0.3, message=lambda: str(kinds()))
