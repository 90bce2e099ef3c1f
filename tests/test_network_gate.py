"""The network gate: only the probe's answer marks a target that is down up again."""

from __future__ import annotations

import json
import signal
import threading
from pathlib import Path
from typing import Any

from bench.harness import wait_until
from edge_agent.device.network import IDLE_WAIT, PROBE_INTERVAL, NetworkGate
from tests.configs import agent_config


def _in_thread(fn: Any) -> Any:
    out: list[Any] = []
    t = threading.Thread(target=lambda: out.append(fn()))
    t.start()
    t.join(5)
    return out[0]


def test_an_answer_older_than_the_outage_does_not_mark_the_target_up():
    now = [100.0]
    gate = NetworkGate(clock=lambda: now[0])
    assert gate.may_try("t") is None  # a long request begins while the target is up (this thread)
    _in_thread(lambda: gate.failed("t"))  # another command is refused: the target is down
    assert gate.succeeded("t") is False  # the long request answers: news from before the outage
    assert _in_thread(lambda: gate.may_try("t")) is not None  # still down: the others wait
    now[0] += PROBE_INTERVAL
    # the probe begins and answers in a worker of its own: its answer marks the target up
    assert _in_thread(lambda: (gate.may_try("t"), gate.succeeded("t"))) == (None, True)
    assert gate.may_try("t") is None and gate.succeeded("t") is False


def test_a_target_goes_down_is_probed_once_per_interval_and_comes_back():
    """Up: every command may try. Down (a refusal): the others wait out PROBE_INTERVAL from the
    last try, then one becomes the probe while the rest wait (IDLE_WAIT, released sooner); a probe
    that fails starts the interval again, one stuck for 5 minutes no longer blocks, and the
    probe's success marks the target up (once). Targets are independent."""
    now = [100.0]
    gate = NetworkGate(clock=lambda: now[0])
    assert gate.may_try("t") is None and gate.succeeded("t") is False  # up: nothing to report
    gate.failed("t")
    assert gate.may_try("t") == PROBE_INTERVAL and gate.may_try("other") is None
    now[0] += 1.0
    assert gate.may_try("t") == PROBE_INTERVAL - 1.0
    now[0] += PROBE_INTERVAL
    assert _in_thread(lambda: gate.may_try("t")) is None  # the probe (a worker of its own)
    assert gate.may_try("t") == IDLE_WAIT  # the others wait for its answer
    gate.failed("t")  # the probe is refused too
    assert gate.may_try("t") == PROBE_INTERVAL
    now[0] += PROBE_INTERVAL
    assert _in_thread(lambda: gate.may_try("t")) is None  # the next probe... hangs
    now[0] += 299.0
    assert gate.may_try("t") == IDLE_WAIT
    now[0] += 1.0
    assert gate.may_try("t") is None  # stuck 5 minutes: this one probes instead
    assert gate.succeeded("t") is True  # its answer: the target is up, parked work is released
    assert gate.may_try("t") is None and gate.succeeded("t") is False


def test_a_request_answering_during_the_stop_does_not_say_the_target_is_back(daemon_factory, tmp_path: Path):
    """A request in flight when the target went down answers while the daemon drains at SIGTERM:
    no "is reachable again", and the parked command stays parked for the next start."""
    answer, started = tmp_path / "answer", tmp_path / "started"
    d = daemon_factory(agent_config(tmp_path, tasks="gate_tasks"))
    d.start()
    assert d.cli("send", "gate_fetch", f"answer={answer}", f"started={started}", "--id", "slow").returncode == 0
    wait_until(started.exists, 10, message="the slow request did not begin")
    assert d.cli("send", "gate_fetch", "down=true", "--id", "refused").returncode == 0
    wait_until(lambda: "(gate_fetch) waits for the network" in d.log.read_text(), 10, message=lambda: d.log.read_text()[-2000:])
    d.proc.send_signal(signal.SIGTERM)
    wait_until(lambda: "draining" in d.log.read_text(), 10, message=lambda: d.log.read_text()[-2000:])
    answer.touch()  # the slow request answers during the drain; the target is still down
    assert d.proc.wait(20) == 0
    d.proc = None
    log = d.log.read_text()
    print(log[-2000:])
    assert "is reachable again" not in log
    history = {c["id"]: c for c in json.loads(d.cli("history", "--json").stdout)["commands"]}
    assert history["slow"]["status"] == "succeeded"
    assert history["refused"]["status"] not in ("succeeded", "failed")
