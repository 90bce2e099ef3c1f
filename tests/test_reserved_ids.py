"""Issue 22, 24: a command whose id matched a future firing (``job:<name>:<unix time>``) turned
that firing into a no-op. Ids starting ``job:`` or ``window:`` are the scheduler's: every way in
from outside (MQTT, `edge-agent send`, `fleet send`, ``.delay()``/``apply_async`` and the local
client of other processes) refuses them, MQTT with a ``rejected`` reply naming the id, while the
scheduler's firings still run, each with its ``fired`` event."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
import uuid

import pytest

from bench.harness import wait_until
from edge_agent.device.commands import NewCommand, check_id, parse_payload
from edge_agent.errors import InvalidCommand
from tests.configs import LAMP, agent_config
from tests.conftest import ROOT


@pytest.mark.parametrize("cid", ["job:lamp-off:1800000000", "job:", "window:lamp:lamp:1.000", "porch-pulse/off"])
def test_reserved_ids_are_refused_and_the_mqtt_rejection_names_the_id(cid):
    """Firing and window ids, and a pulse's "<id>/off" follow-up (taken first, the off would never run)."""
    with pytest.raises(InvalidCommand, match="reserved"):
        check_id(cid)
    assert check_id(cid, reserved_ok=True) == cid  # agent.revoke may still name a firing
    with pytest.raises(InvalidCommand, match="reserved") as info:
        parse_payload(json.dumps({"id": cid, "args": {}}).encode(), max_size=65536)
    assert info.value.command_id == cid  # so the sender hears "rejected" for its id
    assert check_id("Job:lamp-off:1") == "Job:lamp-off:1" and check_id("my-job:1") == "my-job:1"


def test_the_local_client_and_apply_async_refuse_them(tmp_path):
    """Other processes queue through LocalClient (the CLI, ``.delay()``): nothing is written."""
    from edge_agent.config import load_settings
    from edge_agent.device.client import LocalClient

    client = LocalClient(load_settings(str(agent_config(tmp_path, device="ids", devices=LAMP))))
    try:
        with pytest.raises(InvalidCommand, match="reserved"):
            client.submit(NewCommand(action="agent.ping", args={}, id="job:tick:1800000000"))
        ok, created = client.submit(NewCommand(action="agent.ping", args={}, id="fine-1"))
        assert created and ok.id == "fine-1"
    finally:
        client.close()
    with sqlite3.connect(tmp_path / "agent.db") as db:
        assert [r[0] for r in db.execute("select id from commands")] == ["fine-1"]
    code = ("from edge_agent import task\n"
            "@task\n"
            "def reserved_probe() -> None: ...\n"
            "try:\n"
            "    reserved_probe.apply_async(id='job:tick:1800000000')\n"
            "except ValueError as exc:\n"
            "    print('refused:', exc)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.stdout.startswith("refused: id 'job:tick:1800000000' is reserved"), out.stdout + out.stderr


@pytest.mark.slow
def test_outside_commands_cannot_take_future_firings(broker, daemon_factory, listener_factory, tmp_path):
    """Six MQTT commands with the ids of the next six `lamp-off` firings are rejected (a reply
    naming each id); `edge-agent send --id job:...` exits 2; agent.revoke still accepts a firing's
    id. Each of those firings then runs from the schedule with its `fired` event."""
    prefix = f"rid{uuid.uuid4().hex[:6]}"
    job = {"name": "lamp-off", "every": "1s", "action": "gpio.set", "args": {"device": "lamp", "value": "off"},
           "missed": "skip"}
    d = daemon_factory(agent_config(tmp_path, device="porch", mqtt_port=broker.port, prefix=prefix, devices=LAMP,
                                    jobs=[job]))
    listener = listener_factory(broker.port, [f"{prefix}/porch/reply"])
    d.start()
    for i in range(40):  # READY does not wait for the broker: ping until the agent answers
        listener.publish(f"{prefix}/porch/cmd/agent.ping", {"id": f"hello-{i}"})
        try:
            listener.wait_for(lambda m: json.loads(m.payload)["id"].startswith("hello-"), timeout=0.5)
            break
        except AssertionError:
            continue
    else:
        raise AssertionError("the agent never answered agent.ping")
    first = int(time.time()) + 4
    ids = [f"job:lamp-off:{first + k}" for k in range(6)]
    for cid in ids:
        listener.publish(f"{prefix}/porch/cmd/gpio.set", {"id": cid, "args": {"device": "lamp", "value": "on"}})
    listener.publish(f"{prefix}/porch/cmd/agent.revoke", {"id": "rv", "args": {"id": f"job:lamp-off:{first + 600}"}})
    for cid in ids:
        got = listener.wait_for(lambda m, c=cid: json.loads(m.payload).get("id") == c, timeout=20)
        reply = json.loads(got[0].payload)
        assert reply["status"] == "rejected" and "reserved" in reply["error"]["message"], [m.payload for m in got]
    revoked = listener.wait_for(lambda m: json.loads(m.payload).get("id") == "rv"
                                and json.loads(m.payload)["status"] == "succeeded", timeout=20)
    assert json.loads(revoked[0].payload)["result"]["state"] == "unknown"
    cli = d.cli("send", "gpio.set", "device=lamp", "value=on", "--id", f"job:lamp-off:{first + 6}")
    assert cli.returncode == 2 and "Traceback" not in cli.stderr and len(cli.stderr.strip().splitlines()) == 1
    assert "reserved" in cli.stderr

    db = tmp_path / "agent.db"
    wanted = [*ids, f"job:lamp-off:{first + 6}"]

    def read() -> tuple[dict[str, tuple[str, str]], set[str]]:
        with sqlite3.connect(db) as conn:
            rows = {r[0]: (r[1], r[2]) for r in conn.execute(
                f"select id, source, state from commands where id in ({','.join('?' * len(wanted))})", wanted)}
            fired = {r[0] for r in conn.execute(
                f"select id from events where event = 'fired' and id in ({','.join('?' * len(wanted))})", wanted)}
        return rows, fired

    def all_succeeded() -> tuple[dict[str, tuple[str, str]], set[str]] | None:
        rows, fired = read()
        return (rows, fired) if len(rows) == len(wanted) and all(state == "succeeded" for _, state in rows.values()) else None

    rows, fired = wait_until(all_succeeded, 30, interval=0.2, message=lambda: str(read()[0]))
    assert {cid: source for cid, (source, _) in rows.items()} == {cid: "schedule" for cid in wanted}
    assert fired == set(wanted)
