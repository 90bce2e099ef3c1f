"""Tests for edge_agent.device.systemd: sd_notify, the watchdog interval and clock trust."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_agent.device import systemd
from edge_agent.device.systemd import clock_synchronized, notify, watchdog_interval


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A datagram socket in a temp dir, standing in for systemd's notify socket."""
    path = str(tmp_path / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(2)
    yield sock, path
    sock.close()


def test_notify_sends_one_datagram_to_a_path_socket(notify_socket):
    """notify() delivers the state string as one datagram to a filesystem NOTIFY_SOCKET."""
    sock, path = notify_socket
    assert notify("READY=1\nSTATUS=running", environ={"NOTIFY_SOCKET": path}) is True
    assert sock.recv(4096) == b"READY=1\nSTATUS=running"


def test_notify_reaches_an_abstract_socket():
    """A NOTIFY_SOCKET starting with '@' names a socket in the abstract namespace."""
    name = f"edge-agent-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(2)
        assert notify("WATCHDOG=1", environ={"NOTIFY_SOCKET": "@" + name}) is True
        assert sock.recv(4096) == b"WATCHDOG=1"


def test_notify_outside_systemd_returns_false():
    """Without NOTIFY_SOCKET (or with an unsupported address) notify() is a no-op returning False."""
    assert notify("READY=1", environ={}) is False
    assert notify("READY=1", environ={"NOTIFY_SOCKET": ""}) is False
    assert notify("READY=1", environ={"NOTIFY_SOCKET": "vsock:2:1234"}) is False


def test_notify_never_raises_when_the_socket_is_gone(tmp_path):
    """A NOTIFY_SOCKET that nobody listens on makes notify() return False instead of raising."""
    assert notify("READY=1", environ={"NOTIFY_SOCKET": str(tmp_path / "missing")}) is False


def test_notify_uses_the_process_environment_by_default(notify_socket, monkeypatch):
    """With no environ argument, notify() reads NOTIFY_SOCKET from os.environ."""
    sock, path = notify_socket
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    assert notify("STOPPING=1") is True
    assert sock.recv(4096) == b"STOPPING=1"


def test_watchdog_interval_is_half_of_watchdog_usec():
    """WATCHDOG_USEC=30 s gives a ping interval of 15 s when WATCHDOG_PID is absent or ours."""
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    own = {"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}
    assert watchdog_interval(own) == 15.0


def test_watchdog_interval_is_none_when_pings_are_not_expected():
    """No, invalid or zero WATCHDOG_USEC, or a WATCHDOG_PID of another process, means no pings."""
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "soon"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}) is None
    other = {"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid() + 1)}
    assert watchdog_interval(other) is None
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "x"}) is None


def test_clock_is_synchronized_when_the_timesyncd_marker_exists(tmp_path):
    """The marker file systemd-timesyncd touches is enough to trust the clock."""
    marker = tmp_path / "synchronized"
    marker.touch()
    assert clock_synchronized(marker=str(marker)) is True


def test_clock_falls_back_to_the_kernel_ntp_state(tmp_path):
    """Without the marker the answer is the kernel's adjtimex state (False if unreadable)."""
    timex = systemd._read_kernel_timex()
    expected = timex is not None and systemd._timex_synchronized(*timex)
    assert clock_synchronized(marker=str(tmp_path / "absent")) is expected


def test_kernel_timex_is_readable_without_privileges():
    """A read-only adjtimex call works on Linux and returns (state, status, maxerror)."""
    timex = systemd._read_kernel_timex()
    assert timex is not None
    state, status, maxerror = timex
    assert 0 <= state <= 5 and status >= 0 and maxerror >= 0


@pytest.mark.parametrize(
    ("state", "status", "maxerror", "expected"),
    [
        (0, 0x0001, 50_000, True),  # TIME_OK, PLL, 50 ms
        (0, 0x2001, 15_999_999, True),  # still under the 16 s bound
        (0, 0x0001, 16_000_000, False),  # error estimate too large
        (0, 0x0041, 50_000, False),  # STA_UNSYNC set
        (5, 0x0001, 50_000, False),  # TIME_ERROR
        (-1, 0, 0, False),  # the call failed
    ],
)
def test_timex_interpretation(state, status, maxerror, expected):
    """Synchronised means STA_UNSYNC clear, maxerror under 16 s and no TIME_ERROR state."""
    assert systemd._timex_synchronized(state, status, maxerror) is expected
