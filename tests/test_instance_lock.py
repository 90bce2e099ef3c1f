"""One daemon per database file, whatever the path that reaches it: a symlink to the file or
to a folder above it, a relative path or a hard link meets the first daemon's lock, and the
second daemon stops before its start-up recovery touches the first one's commands."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from bench.harness import wait_until
from edge_agent.device.lock import InstanceLock, daemon_running
from edge_agent.errors import AlreadyRunning
from tests.configs import LAMP, agent_config


def _paths(tmp_path: Path) -> tuple[Path, list[Path]]:
    real_dir = tmp_path / "data"
    real_dir.mkdir()
    db = real_dir / "agent.db"
    db.write_bytes(b"")
    (tmp_path / "link.db").symlink_to(db)
    (tmp_path / "dirlink").symlink_to(real_dir, target_is_directory=True)
    os.link(db, tmp_path / "hard.db")
    return db, [tmp_path / "link.db", tmp_path / "dirlink" / "agent.db", tmp_path / "hard.db"]


def test_every_path_to_the_same_file_meets_the_lock(tmp_path, monkeypatch):
    db, others = _paths(tmp_path)
    monkeypatch.chdir(tmp_path / "data")
    held = InstanceLock(str(db))
    try:
        for path in [*others, Path("agent.db"), tmp_path / "dirlink" / ".." / "data" / "agent.db"]:
            with pytest.raises(AlreadyRunning, match="already running"):
                InstanceLock(str(path))
        assert daemon_running(str(tmp_path / "link.db")) == os.getpid()  # status through the symlink sees it
    finally:
        held.release()
    again = InstanceLock(str(others[0]))  # released: any path may take it
    again.release()


def test_a_new_database_is_locked_by_its_file_too(tmp_path):
    """The database file is created with the lock, so a hard link made afterwards meets it."""
    db = tmp_path / "new.db"
    held = InstanceLock(str(db))
    try:
        assert db.exists()
        os.link(db, tmp_path / "hard.db")
        with pytest.raises(AlreadyRunning, match="inode"):
            InstanceLock(str(tmp_path / "hard.db"))
    finally:
        held.release()


@pytest.mark.slow
def test_a_second_daemon_through_a_symlink_refuses_and_leaves_the_running_command_alone(daemon_factory, tmp_path):
    """Issue 22, 21: the second daemon reached the database through a symlink, passed the lock and
    re-queued the first one's running command (it ran twice). Now it exits saying who holds it,
    and the command runs once."""
    first_dir, second_dir = tmp_path / "first", tmp_path / "second"
    first_dir.mkdir()
    second_dir.mkdir()
    lines = tmp_path / "lines.txt"
    env = {"EDGE_AGENT_TEST_FILE": str(lines)}
    first = daemon_factory(agent_config(first_dir, device="qa", devices=LAMP, tasks="qa_tasks"), env=env)
    (second_dir / "agent.db").symlink_to(first_dir / "agent.db")
    second = daemon_factory(agent_config(second_dir, device="qa", devices=LAMP, tasks="qa_tasks"), env=env)
    first.start()
    r = first.cli("send", "qa_append_once", "line=once", "hold_ms=3000", "--id", "slow")
    assert r.returncode == 0, r.stderr
    db = first_dir / "agent.db"

    def state() -> str | None:
        with sqlite3.connect(db) as conn:
            row = conn.execute("select state from commands where id = 'slow'").fetchone()
        return row[0] if row else None

    wait_until(lambda: state() == "running", 15, interval=0.05, message=lambda: f"state {state()}")
    r = second.cli("run", timeout=30)
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
    assert "already running" in r.stderr and f"pid {first.proc.pid}" in r.stderr, r.stderr
    assert state() == "running"  # not re-queued nor marked interrupted by the second daemon
    wait_until(lambda: state() == "succeeded", 15, interval=0.05, message=lambda: f"state {state()}")
    assert lines.read_text().splitlines().count("once") == 1
    assert first.terminate() == 0
