"""The real daemon feeds systemd's watchdog only while its loops are really alive."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.configs import agent_config
from tests.conftest import ROOT


@pytest.mark.slow
def test_ready_then_watchdog_stops_when_a_worker_is_wedged(tmp_path: Path) -> None:
    """READY arrives, WATCHDOG=1 pings follow at half the interval, and they stop once the only worker is stuck."""
    config = agent_config(tmp_path, name="c.toml", device="wd", tasks="watchdog_tasks", gpio=None,
                          queue={"workers": 1, "task_timeout": "2s"})
    sock_path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(sock_path)
    sock.settimeout(0.2)
    env = dict(os.environ, NOTIFY_SOCKET=sock_path, WATCHDOG_USEC="1000000")
    proc = subprocess.Popen([sys.executable, "-m", "edge_agent", "run", "--config", str(config)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT)
    pings: list[float] = []
    ready = False
    try:
        def collect(until: float) -> None:
            nonlocal ready
            while time.monotonic() < until:
                try:
                    msg = sock.recv(4096).decode()
                except TimeoutError:
                    continue
                ready = ready or "READY=1" in msg
                if "WATCHDOG=1" in msg:
                    pings.append(time.monotonic())

        collect(time.monotonic() + 3.0)
        assert ready, "no READY=1"
        assert len(pings) >= 3, f"expected pings every 0.5 s, got {len(pings)}"
        sent = subprocess.run([sys.executable, "-m", "edge_agent", "send", "hang", "--config", str(config)],
                              capture_output=True, text=True, env=dict(os.environ), cwd=ROOT, timeout=30)
        assert sent.returncode == 0, sent.stderr
        t0 = time.monotonic()
        collect(t0 + 6.0)
        late = [p for p in pings if p > t0 + 3.5]
        assert any(t0 < p < t0 + 1.5 for p in pings), "pings should go on while the command is within task_timeout"
        assert not late, f"watchdog still fed {late[-1] - t0:.1f}s after the worker wedged"
    finally:
        proc.kill()
        _, err = proc.communicate(timeout=10)
        sock.close()
    assert b"not feeding the watchdog" in err
