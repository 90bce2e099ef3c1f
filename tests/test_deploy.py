"""Tests for deploy/: the systemd unit, install.sh in a temporary root, the broker config."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.harness import listens, wait_until

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
UNIT = DEPLOY / "edge-agent.service"
INSTALL = DEPLOY / "install.sh"
EXEC_START = "/opt/edge-agent/venv/bin/edge-agent"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_systemd_analyze = pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze not installed")


def _unit_entries(text: str) -> list[tuple[str, str, str]]:
    """(section, key, value) for every assignment; systemd keys may repeat, so no configparser."""
    entries, section = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        entries.append((section, key.strip(), value.strip()))
    return entries


def _values(key: str, section: str = "Service") -> list[str]:
    return [v for s, k, v in _unit_entries(UNIT.read_text()) if s == section and k == key]


# --------------------------------------------------------------------------- the unit


def test_unit_declares_the_service_contract():
    """The unit is Type=notify with a watchdog, reload, graceful stop and the documented paths."""
    assert _values("Type") == ["notify"]
    assert _values("NotifyAccess") == ["main"]
    assert _values("ExecStart") == [f"{EXEC_START} run --config /etc/edge-agent/config.toml"]
    assert _values("ExecReload") == ["/bin/kill -HUP $MAINPID"]
    assert _values("WatchdogSec") == ["30s"]
    assert _values("Restart") == ["on-failure"]
    assert _values("RestartPreventExitStatus") == ["2"]
    assert _values("TimeoutStopSec") == ["20s"]
    assert _values("StartLimitBurst", "Unit") and _values("StartLimitIntervalSec", "Unit")
    assert _values("User") == ["edge-agent"] and _values("Group") == ["edge-agent"]
    assert _values("StateDirectory") == ["edge-agent"]
    assert _values("ConfigurationDirectory") == ["edge-agent"]
    assert _values("WantedBy", "Install") == ["multi-user.target"]
    assert not any("network-online" in v for v in _values("Wants", "Unit") + _values("After", "Unit"))


def test_unit_hardening_leaves_gpio_and_the_clock_check_working():
    """GPIO devices and the gpio group stay reachable and adjtimex stays allowed (no ProtectClock)."""
    assert _values("SupplementaryGroups") == ["gpio"]
    assert _values("DevicePolicy") == ["closed"]
    assert "char-gpiochip rw" in _values("DeviceAllow")
    for absent in ("ProtectClock", "PrivateDevices", "PrivateUsers", "ProcSubset", "DynamicUser"):
        assert _values(absent) == [], f"{absent}= would break GPIO or the clock check"
    filters = _values("SystemCallFilter")
    assert any("adjtimex" in f.split() for f in filters if not f.startswith("~"))
    denied = " ".join(f for f in filters if f.startswith("~"))
    assert not re.search(r"@privileged|@clock|adjtimex", denied)
    assert _values("WorkingDirectory") == ["/run/edge-agent"]  # lgpio writes its pipes there


@needs_systemd_analyze
def test_unit_passes_systemd_analyze_verify(tmp_path):
    """`systemd-analyze verify` accepts the unit (ExecStart pointed at a stand-in executable)."""
    binary = tmp_path / "edge-agent"
    binary.write_text("#!/bin/sh\nexit 0\n")
    binary.chmod(0o755)
    unit = tmp_path / "edge-agent.service"
    unit.write_text(UNIT.read_text().replace(EXEC_START, str(binary)))
    result = subprocess.run([SYSTEMD_ANALYZE, "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "edge-agent.service" not in result.stdout + result.stderr, result.stdout + result.stderr


@needs_systemd_analyze
def test_unit_security_exposure_is_at_most_2_5(capsys):
    """`systemd-analyze security --offline=true` rates the unit 2.5 or better (lower is safer)."""
    result = subprocess.run(
        [SYSTEMD_ANALYZE, "security", "--offline=true", "--no-pager", str(UNIT)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if "Unknown option" in result.stderr or "unrecognized option" in result.stderr:
        pytest.skip("this systemd-analyze has no offline security review")
    found = re.search(r"Overall exposure level for edge-agent\.service: (\d+\.\d+)", result.stdout)
    assert found, result.stdout + result.stderr
    rating = float(found.group(1))
    with capsys.disabled():
        print(f"\nsystemd-analyze security --offline=true deploy/edge-agent.service: {rating}")
    assert rating <= 2.5, result.stdout


MDWE_PROBE = """
import ctypes, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(65, 1, 0, 0, 0) != 0:  # PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN (Linux 6.3+)
    sys.exit(77)
import sqlite3, paho.mqtt.client, huey, gpiozero
from edge_agent.schedule import solar
from edge_agent.device import systemd
systemd.clock_synchronized(marker="/nonexistent")
sqlite3.connect(":memory:").execute("select 1")
"""


def test_daemon_libraries_work_without_writable_executable_memory():
    """Under the kernel's MemoryDenyWriteExecute the daemon's libraries and the adjtimex check still work."""
    result = subprocess.run([sys.executable, "-c", MDWE_PROBE], capture_output=True, text=True, timeout=60, cwd=REPO)
    if result.returncode == 77:
        pytest.skip("kernel without PR_SET_MDWE")
    assert result.returncode == 0, result.stderr


# --------------------------------------------------------------------------- install.sh


def _installer_python() -> str:
    """Debian's python3 (what a Pi uses) when it can make venvs, else this interpreter."""
    for candidate in ("/usr/bin/python3", sys.executable):
        probe = subprocess.run(
            [candidate, "-c", "import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))"],
            capture_output=True,
        )
        if probe.returncode == 0:
            return candidate
    pytest.skip("no Python 3.11+ with venv support")


def _install(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EDGE_AGENT_", "VIRTUAL_ENV"))}
    result = subprocess.run(
        ["bash", str(INSTALL), "--root", str(root), "--python", _installer_python(), *args],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert result.returncode == 0, f"install.sh {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result


def _tree(root: Path) -> set[str]:
    """Every path under root, the venv's contents summarised by the venv itself."""
    found = set()
    for path in root.rglob("*"):
        rel = path.relative_to(root).as_posix()
        if rel.startswith("opt/edge-agent/venv/"):
            continue
        found.add(rel + ("/" if path.is_dir() and not path.is_symlink() else ""))
    return found


# What install.sh creates inside the root (the venv is checked separately).
INSTALLED = {
    "etc/",
    "etc/edge-agent/",
    "etc/edge-agent/config.toml",
    "etc/edge-agent/example_tasks.py",
    "etc/systemd/",
    "etc/systemd/system/",
    "etc/systemd/system/edge-agent.service",
    "opt/",
    "opt/edge-agent/",
    "opt/edge-agent/venv/",
    "usr/",
    "usr/local/",
    "usr/local/bin/",
    "usr/local/bin/edge-agent",
    "var/",
    "var/lib/",
    "var/lib/edge-agent/",
}


@pytest.mark.slow
def test_install_upgrade_uninstall_purge_in_a_temporary_root(tmp_path):
    """install.sh installs, upgrades keeping config and state, uninstalls and purges, touching only its root."""
    root = tmp_path / "root"
    host_paths = [Path("/opt/edge-agent"), Path("/etc/systemd/system/edge-agent.service"), Path("/etc/edge-agent")]
    host_before = {p: p.exists() for p in host_paths}

    # 1. fresh install
    first = _install(root, "--device-id", "porch")
    assert _tree(root) == INSTALLED
    venv = root / "opt/edge-agent/venv"
    assert (venv / "bin/edge-agent").is_file() and os.access(venv / "bin/edge-agent", os.X_OK)
    assert "include-system-site-packages = true" in (venv / "pyvenv.cfg").read_text()
    assert os.readlink(root / "usr/local/bin/edge-agent") == EXEC_START
    assert (root / "etc/systemd/system/edge-agent.service").read_text() == UNIT.read_text()
    config = (root / "etc/edge-agent/config.toml").read_text()
    assert 'id = "porch"' in config
    assert 'path = "/var/lib/edge-agent/agent.db"' in config
    assert (root / "etc/edge-agent/config.toml").stat().st_mode & 0o777 == 0o640
    assert (root / "etc/edge-agent").stat().st_mode & 0o777 == 0o750
    assert (root / "var/lib/edge-agent").stat().st_mode & 0o777 == 0o750
    for planned in (
        "useradd --system",
        "chown root:edge-agent /etc/edge-agent",
        "systemctl daemon-reload",
        "systemctl enable edge-agent.service",
        "systemctl restart edge-agent.service",
    ):
        assert f"would run: {planned}" in first.stdout, first.stdout
    check = subprocess.run(
        [str(venv / "bin/edge-agent"), "check", "--config", str(root / "etc/edge-agent/config.toml")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert check.returncode == 0, check.stderr

    # 2. run again: upgrade in place (the package is reinstalled), config and state untouched
    (installed,) = venv.glob("lib/python3*/site-packages/edge_agent/__init__.py")
    installed.write_text(installed.read_text() + "# stale copy\n")
    (root / "etc/edge-agent/config.toml").write_text(config + "# edited by the operator\n")
    (root / "var/lib/edge-agent/agent.db").write_bytes(b"state")
    second = _install(root)
    assert "reusing venv" in second.stdout and "keeping existing config" in second.stdout
    assert "# stale copy" not in installed.read_text(), "the package was not reinstalled"
    assert (root / "etc/edge-agent/config.toml").read_text().endswith("# edited by the operator\n")
    assert (root / "var/lib/edge-agent/agent.db").read_bytes() == b"state"
    assert _tree(root) == INSTALLED | {"var/lib/edge-agent/agent.db"}

    # 3. uninstall: program gone, config, state (and the user) kept
    third = _install(root, "--uninstall")
    assert "would run: systemctl stop edge-agent.service" in third.stdout
    assert "would run: systemctl disable edge-agent.service" in third.stdout
    assert "userdel" not in third.stdout
    assert _tree(root) == {
        "etc/",
        "etc/edge-agent/",
        "etc/edge-agent/config.toml",
        "etc/edge-agent/example_tasks.py",
        "etc/systemd/",
        "etc/systemd/system/",
        "opt/",
        "usr/",
        "usr/local/",
        "usr/local/bin/",
        "var/",
        "var/lib/",
        "var/lib/edge-agent/",
        "var/lib/edge-agent/agent.db",
    }

    # 4. purge: config, state and the user go too
    fourth = _install(root, "--purge")
    assert "would run: userdel edge-agent" in fourth.stdout
    assert not (root / "etc/edge-agent").exists() and not (root / "var/lib/edge-agent").exists()

    assert {p: p.exists() for p in host_paths} == host_before, "install.sh touched the real system"


# Runs its arguments in a private mount namespace where /etc, /opt, /usr/local
# and /var are overlays (writes land in $1) and /run is empty (no systemd, no
# D-Bus to reach the host's service manager): install.sh's real-system path,
# useradd and chown included, without changing the machine.
OVERLAY_RUNNER = """
set -euo pipefail
T=$1; shift
mount --make-rprivate / || exit 77
for d in /etc /opt /usr/local /var; do
    n=${d//\\//_}
    mkdir -p "$T/up$n" "$T/work$n"
    mount -t overlay overlay -o "lowerdir=$d,upperdir=$T/up$n,workdir=$T/work$n" "$d" || exit 77
    mountpoint -q "$d" || exit 77
done
mount -t tmpfs tmpfs /run || exit 77
"$@"
"""

REAL_INSTALL = """
set -euo pipefail
install=$1
bash "$install" --no-apt --python /usr/bin/python3 --device-id porch
bash "$install" --no-apt --python /usr/bin/python3
echo "GROUPS $(id -nG edge-agent)"
stat -c 'STAT %n %U:%G %a' /etc/edge-agent /etc/edge-agent/config.toml /var/lib/edge-agent
echo "ENABLED $(readlink /etc/systemd/system/multi-user.target.wants/edge-agent.service)"
bash "$install" --purge
id edge-agent >/dev/null 2>&1 && echo "USER left" || echo "USER gone"
ls /etc/systemd/system/multi-user.target.wants/edge-agent.service 2>/dev/null && echo "LINK left" || echo "LINK gone"
"""


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None, reason="needs root and unshare")
def test_install_as_on_a_device_inside_a_private_mount_namespace(tmp_path):
    """Without --root, install.sh creates the user in group gpio, sets owners and modes and enables the unit."""
    probe = subprocess.run(["/usr/bin/python3", "-c", "import ensurepip, venv"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("/usr/bin/python3 cannot create venvs")

    def host_state() -> tuple[bool, ...]:
        user = subprocess.run(["id", "edge-agent"], capture_output=True).returncode == 0
        return user, Path("/opt/edge-agent").exists(), Path("/etc/edge-agent").exists()

    host_before = host_state()
    runner = tmp_path / "overlay.sh"
    runner.write_text(OVERLAY_RUNNER)
    (tmp_path / "layers").mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EDGE_AGENT_", "VIRTUAL_ENV", "PYTHON"))}
    env["PIP_CACHE_DIR"] = str(tmp_path / "pip-cache")
    result = subprocess.run(
        [
            "unshare",
            "--mount",
            "bash",
            str(runner),
            str(tmp_path / "layers"),
            "bash",
            "-c",
            REAL_INSTALL,
            "real-install",
            str(INSTALL),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    if result.returncode == 77:
        pytest.skip("cannot mount overlays here")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "running: useradd --system --user-group --groups gpio" in out
    assert "GROUPS edge-agent gpio" in out
    assert "STAT /etc/edge-agent root:edge-agent 750" in out
    assert "STAT /etc/edge-agent/config.toml root:edge-agent 640" in out
    assert "STAT /var/lib/edge-agent edge-agent:edge-agent 750" in out
    assert "ENABLED /etc/systemd/system/edge-agent.service" in out
    assert "running: userdel edge-agent" in out and "USER gone" in out and "LINK gone" in out
    assert host_state() == host_before, "install.sh changed the real system"


def test_install_script_help_and_bad_options():
    """--help documents the flags and an unknown option is a usage error (exit 2)."""
    shown = subprocess.run(["bash", str(INSTALL), "--help"], capture_output=True, text=True, timeout=30)
    assert shown.returncode == 0
    for flag in ("--from", "--root", "--no-apt", "--uninstall", "--purge", "--python", "--no-start"):
        assert flag in shown.stdout
    bad = subprocess.run(["bash", str(INSTALL), "--frobnicate"], capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "--frobnicate" in bad.stderr


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed")
def test_install_script_is_shellcheck_clean():
    """shellcheck finds nothing to complain about in install.sh."""
    result = subprocess.run(["shellcheck", str(INSTALL)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout


# --------------------------------------------------------------------------- mosquitto.conf

MOSQUITTO = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None)
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def broker(tmp_path) -> Iterator[int]:
    """mosquitto running deploy/mosquitto.conf as a Debian conf.d drop-in, with acl.example and two users."""
    if MOSQUITTO is None or MOSQUITTO_PASSWD is None:
        pytest.skip("mosquitto not installed")
    import pwd

    port = _free_port()
    data = tmp_path / "data"
    data.mkdir()
    (tmp_path / "conf.d").mkdir()
    passwd = tmp_path / "passwd"
    for i, (user, password) in enumerate([("porch", "porch-pw"), ("homeassistant", "ha-pw")]):
        create = ["-c"] if i == 0 else []
        subprocess.run([MOSQUITTO_PASSWD, *create, "-b", str(passwd), user, password], check=True, timeout=30)
    shutil.copy(DEPLOY / "acl.example", tmp_path / "acl")
    ours = (DEPLOY / "mosquitto.conf").read_text()
    assert re.search(r"^listener 1883$", ours, re.M)
    ours = re.sub(r"^listener 1883$", f"listener {port} 127.0.0.1", ours, flags=re.M)
    ours = ours.replace("/etc/mosquitto/passwd", str(passwd)).replace("/etc/mosquitto/acl", str(tmp_path / "acl"))
    (tmp_path / "conf.d/edge-agent.conf").write_text(ours)
    # what Debian's stock /etc/mosquitto/mosquitto.conf says, with temporary paths
    (tmp_path / "mosquitto.conf").write_text(
        f"user {pwd.getpwuid(os.getuid()).pw_name}\n"
        f"pid_file {tmp_path / 'mosquitto.pid'}\n"
        "persistence true\n"
        f"persistence_location {data}/\n"
        "log_dest stderr\n"
        f"include_dir {tmp_path / 'conf.d'}\n"
    )
    log = open(tmp_path / "mosquitto.log", "w")  # noqa: SIM115 - closed below, after the process
    proc = subprocess.Popen([MOSQUITTO, "-c", str(tmp_path / "mosquitto.conf")], stdout=log, stderr=log)
    try:
        def said() -> str:
            return "mosquitto did not start:\n" + (tmp_path / "mosquitto.log").read_text()

        wait_until(lambda: listens(port) or proc.poll() is not None, 10, interval=0.05, message=said)
        if proc.poll() is not None:
            pytest.fail(said())
        yield port
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()
    text = (tmp_path / "mosquitto.log").read_text()
    assert "Error" not in text, text
    assert (data / "mosquitto.db").exists(), "persistence did not write its database on stop"


class _Client:
    """A paho client that records CONNACK and every message it receives."""

    def __init__(self, port: int, username: str | None, password: str | None):
        import paho.mqtt.client as mqtt

        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self.reason: Any = None
        self.messages: list[str] = []
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        if username is not None:
            self.client.username_pw_set(username, password)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.on_message = lambda c, u, msg: self.messages.append(msg.topic)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert self.connected.wait(5), "no CONNACK"

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        self.reason = reason_code
        self.connected.set()

    @property
    def accepted(self) -> bool:
        return not self.reason.is_failure

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_mosquitto_config_authenticates_and_confines_devices(broker):
    """The shipped broker config starts, refuses bad logins and keeps a device to its own and group topics."""
    port = broker
    for user, password in [(None, None), ("porch", "wrong")]:
        refused = _Client(port, user, password)
        assert not refused.accepted, f"{user!r} with a bad password was let in"
        refused.close()

    porch = _Client(port, "porch", "porch-pw")
    ha = _Client(port, "homeassistant", "ha-pw")
    try:
        assert porch.accepted and ha.accepted
        porch.client.subscribe([("edge/porch/cmd/#", 1), ("edge/group/garden/cmd/#", 1), ("edge/kitchen/cmd/#", 1)])
        ha.client.subscribe("edge/#", 1)
        assert porch.subscribed.wait(5) and ha.subscribed.wait(5)
        for topic in ("edge/porch/cmd/agent.ping", "edge/group/garden/cmd/agent.ping", "edge/kitchen/cmd/agent.ping"):
            ha.client.publish(topic, b"{}", qos=1).wait_for_publish(5)
        for topic in ("edge/porch/reply", "edge/kitchen/reply", "homeassistant/switch/porch/config"):
            porch.client.publish(topic, b"{}", qos=1).wait_for_publish(5)
        wait_until(lambda: "edge/porch/reply" in ha.messages and len(porch.messages) >= 2, 5, interval=0.05,
                   message=lambda: f"porch got {porch.messages}, homeassistant got {ha.messages}")
        time.sleep(0.3)  # not synchronisation: room for a wrongly delivered message to arrive
        assert sorted(porch.messages) == ["edge/group/garden/cmd/agent.ping", "edge/porch/cmd/agent.ping"]
        assert "edge/kitchen/reply" not in ha.messages
        assert "edge/porch/reply" in ha.messages
    finally:
        porch.close()
        ha.close()


def test_mosquitto_config_sets_what_edge_agent_relies_on():
    """The broker config keeps sessions on disk, disables Nagle and queues far beyond the 1000 default."""
    settings = dict(
        line.split(None, 1) for line in (DEPLOY / "mosquitto.conf").read_text().splitlines() if line and not line.startswith("#")
    )
    assert settings["set_tcp_nodelay"] == "true"
    assert settings["persistence"] == "true"
    assert int(settings["max_queued_messages"]) >= 100000
    assert settings["allow_anonymous"] == "false"
    assert int(settings["autosave_interval"]) >= 60 and settings["autosave_on_changes"] == "false"
    assert "password_file" in settings and "acl_file" in settings
