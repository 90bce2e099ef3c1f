"""Fan-out: a task running in the daemon queues one child task per item with ``child.delay()``;
children are retried one by one, and the parent is never run again for them."""

from __future__ import annotations

import json
import sqlite3
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.harness import wait_until
from edge_agent.config import load_settings
from edge_agent.device.client import LocalClient
from edge_agent.device.commands import Command
from tests.configs import agent_config
from tests.conftest import Daemon


@pytest.fixture
def fan(daemon_factory, tmp_path: Path) -> Iterator[tuple[Daemon, LocalClient, Path]]:
    d = daemon_factory(agent_config(tmp_path, device="fan", tasks="chaos_tasks"))
    d.start()
    state = tmp_path / "state"
    state.mkdir()
    client = LocalClient(load_settings(str(d.config)), create=False)
    yield d, client, state
    client.close()


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def _wait_all(client: LocalClient, ids: list[str], timeout: float = 30.0) -> dict[str, Command]:
    def rows() -> dict[str, Command | None]:
        return {cid: client.journal.get(cid) for cid in ids}

    def ended() -> dict[str, Command | None] | None:
        got = rows()
        return got if all(c is not None and c.terminal for c in got.values()) else None

    return wait_until(ended, timeout, interval=0.05,  # type: ignore[return-value]
                      message=lambda: f"not finished: {[c for c in rows().values() if not (c and c.terminal)]}")


def _send(d: Daemon, action: str, cid: str, *extra: str, **args: Any) -> Any:
    return d.cli("send", action, "--args", json.dumps(args), "--id", cid, *extra)


def test_parent_queues_one_child_per_item_and_only_failed_children_are_retried(fan):
    """The parent returns {"queued": n}; children that fail once are retried on their own; the parent runs once."""
    d, client, state = fan
    users = [f"user{i:02d}" for i in range(40)]
    flaky = users[3::7]  # these children fail on their first attempt
    r = _send(d, "chaos_fanout", "parent-1", "--wait", "30", "--json", users=users, fail_first=flaky,
              state_dir=str(state))
    assert r.returncode == 0, r.stderr
    reply = json.loads(r.stdout)
    assert reply["status"] == "succeeded" and reply["attempt"] == 1
    assert reply["result"]["queued"] == len(users)
    children = reply["result"]["children"]
    assert len(set(children)) == len(users)

    rows = _wait_all(client, children)
    by_user = {row.args["user"]: row for row in rows.values()}
    assert set(by_user) == set(users)
    for user, row in by_user.items():
        assert row.action == "chaos_email" and row.state == "succeeded", row
        assert row.attempts == (2 if user in flaky else 1), (user, row.attempts)
    sends = Counter(_lines(state / "email.log"))
    assert sends == Counter({u: 2 if u in flaky else 1 for u in users})
    assert len(_lines(state / "parent.log")) == 1  # the parent was not re-run for its children's failures
    parent = client.journal.get("parent-1")
    assert parent is not None and parent.attempts == 1
    assert all(client.journal.get(c).seq > parent.seq for c in children)  # type: ignore[union-attr]


def test_a_child_that_keeps_failing_fails_alone(fan):
    """A child that exhausts its retries ends failed; its siblings and the parent still succeed."""
    d, client, state = fan
    r = _send(d, "chaos_fanout", "parent-2", "--wait", "30", "--json", users=["ok1", "bad", "ok2"], fail_first=[],
              fail_always=["bad"], state_dir=str(state))
    reply = json.loads(r.stdout)
    assert reply["result"]["queued"] == 3
    children = dict(zip(["ok1", "bad", "ok2"], reply["result"]["children"], strict=True))
    rows = _wait_all(client, list(children.values()))
    bad = rows[children["bad"]]
    assert bad.state == "failed" and bad.attempts == 3 and bad.error_type == "retryable"  # retries=2
    assert "451" in (bad.error_message or "")
    assert rows[children["ok1"]].state == rows[children["ok2"]].state == "succeeded"
    assert Counter(_lines(state / "email.log")) == Counter({"ok1": 1, "bad": 3, "ok2": 1})
    assert client.journal.get("parent-2").state == "succeeded"  # type: ignore[union-attr]
    assert len(_lines(state / "parent.log")) == 1


@pytest.mark.slow
def test_a_kill_during_fan_out_reruns_the_parent_and_queues_no_child_twice(fan):
    """SIGKILL while the parent is fanning out: the parent runs again after the restart and queues
    the same child ids, which dedupe, so every child is queued once and sent; only a child the
    journal shows running at the kill may be sent twice (it ran again too)."""
    d, client, state = fan
    users = [f"u{i:02d}" for i in range(30)]
    assert _send(d, "chaos_fanout", "parent-3", users=users, fail_first=[], state_dir=str(state),
                 pause_ms=100.0).returncode == 0
    wait_until(lambda: len(_lines(state / "queued.log")) >= 8, 20, interval=0.01, message="the parent did not start fanning out")
    d.kill()
    queued_before_kill = [line.split()[1] for line in _lines(state / "queued.log")]
    with sqlite3.connect(f"file:{d.config.parent / 'agent.db'}?mode=ro", uri=True) as db:
        running_at_kill = {r[0] for r in db.execute("select id from commands where state = 'running'")}
    assert "parent-3" in running_at_kill
    d.start()
    parent = _wait_all(client, ["parent-3"])["parent-3"]
    assert (parent.state, parent.attempts) == ("succeeded", 1), parent
    assert parent.result["queued"] == len(users)
    children = [row for row in client.journal.history(500) if row.action == "chaos_email"]
    ids = sorted(c.id for c in children)
    assert ids == sorted(parent.result["children"]) and set(queued_before_kill) <= set(ids)
    rows = _wait_all(client, ids)
    assert all(r.state == "succeeded" for r in rows.values()), rows
    sends = Counter(_lines(state / "email.log"))
    assert sorted(sends) == users
    twice = {u for u, n in sends.items() if n > 1}
    assert all(sends[u] == 2 for u in twice)
    assert {f"parent-3/{users.index(u) + 1}" for u in twice} <= running_at_kill, (twice, running_at_kill)
    assert len(_lines(state / "parent.log")) == 2  # the first run, cut short, and the run after the restart
    print(f"fan-out killed after {len(queued_before_kill)} of {len(users)} children: {len(ids)} queued once each, "
          f"{len(twice)} sent twice (running at the kill); parent {parent.state}")
