"""The daemon's lifecycle on the real process: a pulse's "off" across a kill, and SIGHUP reloads."""

from __future__ import annotations

import ctypes
import json
import os
import platform
import re
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from bench.harness import wait_until
from tests.configs import agent_config

VALVE = {"valve": {"kind": "output", "pin": 17}}
TICK = {"name": "tick", "every": "1s", "action": "agent.ping", "missed": "skip"}


def _config(folder: Path, **tables: Any) -> Path:
    """The daemon's config: one output, the valve (unless ``devices`` says otherwise); ``tables`` as for agent_config."""
    return agent_config(folder, device="life", **{"devices": VALVE, **tables})


def _history(daemon):
    out = daemon.cli("history", "-n", "100", "--json")
    assert out.returncode == 0, out.stderr
    return {c["id"]: c for c in json.loads(out.stdout)["commands"]}



@pytest.mark.slow
def test_pulse_off_happens_after_a_kill_and_not_early(daemon_factory, tmp_path):
    """gpio.pulse's "off" is a durable command: after a SIGKILL and restart it still runs, at its time, not before."""
    d = daemon_factory(_config(tmp_path))
    d.start()
    started = time.time()
    r = d.cli("send", "gpio.pulse", "device=valve", "seconds=3", "--id", "p1", "--wait", "5", "--json")
    assert r.returncode == 0, r.stderr
    off_at = json.loads(r.stdout)["result"]["off_at"]
    d.kill()
    assert _history(d)["p1/off"]["status"] == "accepted"  # queued for later, not run
    d.start()
    def off_done():
        row = _history(d).get("p1/off")
        return row if row is not None and row["status"] == "succeeded" else None

    row = wait_until(off_done, 15, interval=0.1, message="p1/off did not succeed")
    assert row["result"] == {"device": "valve", "value": "off"}
    assert row["ts"] >= off_at >= started + 3 - 0.5
    assert d.terminate() == 0


@pytest.mark.slow
def test_sighup_reloads_jobs_and_refuses_a_broken_config(daemon_factory, tmp_path):
    """SIGHUP applies a new job without a restart; a broken config on reload is refused and the agent keeps running."""
    d = daemon_factory(_config(tmp_path))
    d.start()
    _config(tmp_path, jobs=[TICK])
    d.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: any(k.startswith("job:tick:") for k in _history(d)), 15, interval=0.1, message="the new job never fired")
    _config(tmp_path, devices={**VALVE, "valve2": {"kind": "output", "pin": "not a pin", "bogus": 1}})
    d.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "reload refused" in d.log.read_text(), 15, interval=0.1, message="no reload refused in the log")
    assert d.proc.poll() is None
    def ticks() -> int:  # read the journal directly: the CLI now refuses the broken file
        with sqlite3.connect(d.config.parent / "agent.db") as db:
            return int(db.execute("select count(*) from commands where id like 'job:tick:%'").fetchone()[0])

    before = ticks()
    wait_until(lambda: ticks() > before, 15, interval=0.1, message="no tick after the refused reload")  # the running config still works
    assert d.cli("send", "agent.ping", "--wait", "5").returncode == 2  # the CLI reads the broken file: config error
    assert d.terminate() == 0


_TGKILL = {"x86_64": 234, "aarch64": 131, "armv7l": 268, "armv6l": 268}.get(platform.machine())


def _signal_a_worker_thread(pid: int, sig: int) -> None:
    """What the kernel may do with a process-directed signal: hand it to a thread other than the
    main one (Python then runs its handler only when the main thread next wakes up)."""
    libc = ctypes.CDLL(None, use_errno=True)
    tids = sorted(int(t) for t in os.listdir(f"/proc/{pid}/task") if int(t) != pid)
    assert tids, "the daemon has no threads besides the main one"
    assert libc.syscall(_TGKILL, pid, tids[0], sig) == 0, os.strerror(ctypes.get_errno())


@pytest.mark.slow
@pytest.mark.skipif(_TGKILL is None or not os.path.isdir("/proc/self/task"), reason="needs Linux tgkill")
def test_a_signal_given_to_another_thread_is_acted_on_at_once(daemon_factory, tmp_path):
    """SIGHUP and SIGTERM delivered to a worker thread reload and stop the daemon within
    seconds, not when the main loop next looks round (up to a minute; systemd would SIGKILL)."""
    d = daemon_factory(_config(tmp_path))
    d.start()
    assert d.proc is not None
    _config(tmp_path, jobs=[TICK])
    _signal_a_worker_thread(d.proc.pid, signal.SIGHUP)
    wait_until(lambda: "reloaded" in d.log.read_text(), 10, interval=0.1, message="no reloaded in the log")
    _signal_a_worker_thread(d.proc.pid, signal.SIGTERM)
    assert d.proc.wait(10) == 0
    assert "stopped" in d.log.read_text()
    d.proc = None


_HANGING_STOP = """
import logging, sys, time
from edge_agent.device.agent import Agent
from edge_agent.config import load_settings

class Stuck:  # a part whose stop never returns (a bug, or a lock nobody will release)
    def stop(self):
        time.sleep(120)
    def alive(self):
        return True

logging.basicConfig(level=logging.INFO)
agent = Agent(load_settings(sys.argv[1]))
agent.start()
agent.hardware.set("valve", "on")
agent._components.insert(0, Stuck())  # stopped before the drain and the safe state
agent.stop()
print("stop returned")
"""


@pytest.mark.slow
def test_a_stop_that_hangs_dumps_the_stacks_and_exits_within_its_bound(tmp_path):
    """The last resort behind a bounded stop: after drain_timeout + STOP_MARGIN the process puts
    the outputs in their safe state (the hang came before the stop's own safe state), writes
    every thread's stack to its log and exits 1 (systemd would otherwise SIGKILL it, silently)."""
    import subprocess
    import sys

    from edge_agent.device.agent import STOP_MARGIN
    from tests.conftest import ROOT

    cfg = _config(tmp_path, name="c.toml", queue={"drain_timeout": "1s"})
    began = time.monotonic()
    out = subprocess.run([sys.executable, "-c", _HANGING_STOP, str(cfg)], cwd=tmp_path, capture_output=True,
                         text=True, timeout=60, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    took = time.monotonic() - began
    assert out.returncode == 1, out.stderr[-2000:]
    assert "stop returned" not in out.stdout
    err = out.stderr
    assert "the stop hung" in err, err[-2000:]
    assert "valve is off, its safe state" in err[err.index("the stop hung"):], err[-2000:]
    assert re.search(r'File "<string>", line \d+ in stop', err), err[-2000:]  # the stuck frame is named
    assert 1 + STOP_MARGIN <= took < 1 + STOP_MARGIN + 20  # bounded (start-up included), far below the 120 s hang
