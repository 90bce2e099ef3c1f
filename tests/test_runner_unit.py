"""The runner on its own, on a real SQLite store and the real queue (no worker threads): claim,
expiry, unstartable commands, retries with backoff, parking for the network and the release, a
full disk while recording. Time is injected (the runner's and the network gate's clocks); the
random delays come from a seeded generator."""

from __future__ import annotations

import logging
import random
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from edge_agent.device.actions.registry import Action, Registry
from edge_agent.device.commands import Command, NewCommand, Param
from edge_agent.device.journal import Journal
from edge_agent.device.network import PROBE_INTERVAL, NetworkGate
from edge_agent.device.retry import RetryPolicy
from edge_agent.device.runner import Runner, Started
from edge_agent.device.store import DiskFull, Store
from edge_agent.device.taskqueue import TaskQueue
from edge_agent.errors import NetworkUnavailable, RetryableError

T0 = 1_800_000_000.0  # the runner's clock starts here (unix time)
SEED = 20261207


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Said:
    """The runner's reporter: what it was told, in order."""

    def __init__(self) -> None:
        self.said: list[tuple[str, str, str]] = []  # (hook, command id, state)
        self.full_on_finish = 0  # how many finished() calls raise DiskFull first

    def started(self, cur: sqlite3.Cursor, cmd: Command) -> None:
        self.said.append(("started", cmd.id, cmd.state))

    def retried(self, cur: sqlite3.Cursor, before: Command, cmd: Command) -> None:
        self.said.append(("retried", cmd.id, cmd.state))

    def finished(self, cur: sqlite3.Cursor, cmd: Command) -> None:
        if self.full_on_finish:
            self.full_on_finish -= 1
            raise DiskFull("the disk is full; nothing was written")  # as SQLITE_FULL in this transaction would
        self.said.append(("finished", cmd.id, cmd.state))


@dataclass
class Parts:
    store: Store
    journal: Journal
    queue: TaskQueue
    runner: Runner
    said: Said
    clock: Clock
    gate_clock: Clock
    calls: list[tuple[str, dict[str, Any]]]

    def submit(self, action: str, cid: str, **fields: Any) -> Command:
        return self.queue.submit(NewCommand(action=action, args=fields.pop("args", {}), id=cid, **fields))[0]

    def get(self, cid: str) -> Command:
        row = self.journal.get(cid)
        assert row is not None
        return row

    def scheduled(self) -> list[tuple[int, float]]:
        """(seq, eta) of the messages waiting for a later time, in order."""
        rows = self.store.query("select data, timestamp from schedule order by timestamp, id")
        return [(self.queue.seq_of(bytes(d)), ts) for d, ts in rows]

    def ready(self) -> list[int]:
        """Seqs of the messages ready now, in the order they are taken."""
        rows = self.store.query("select data from task order by priority desc, id")
        return [self.queue.seq_of(bytes(d)) for (d,) in rows]


def _actions(calls: list[tuple[str, dict[str, Any]]], outcomes: dict[str, list[Exception | None]]) -> Registry:
    def make(name: str) -> Callable[..., Any]:
        def fn(**kwargs: Any) -> Any:
            calls.append((name, kwargs))
            todo = outcomes.get(name)
            if todo:
                error = todo.pop(0)
                if error is not None:
                    raise error
            return {"ok": name}
        return fn

    return Registry([
        Action("local", make("local"), (Param("n", int, False, 0),)),
        Action("flaky", make("flaky"), (), retry=RetryPolicy(retries=2, delay=10.0, backoff=3.0, max_delay=60.0)),
        Action("web", make("web"), (), needs_network=True, retry=RetryPolicy(retries=5)),
        Action("brief", make("brief"), (), retry=RetryPolicy(deadline=30.0)),
    ])


@pytest.fixture
def outcomes() -> dict[str, list[Exception | None]]:
    return {}


@pytest.fixture
def parts(tmp_path: Path, outcomes: dict[str, list[Exception | None]]) -> Iterator[Parts]:
    print(f"seed {SEED}")
    store = Store(str(tmp_path / "agent.db"))
    clock, gate_clock = Clock(T0), Clock(1000.0)
    journal = Journal(store, clock=clock)
    queue = TaskQueue(store, journal, workers=1)
    said = Said()
    calls: list[tuple[str, dict[str, Any]]] = []
    runner = Runner(store, journal, _actions(calls, outcomes), queue, reporter=said,
                    gate=NetworkGate(clock=gate_clock), clock=clock, rng=random.Random(SEED))
    yield Parts(store, journal, queue, runner, said, clock, gate_clock, calls)
    store.close()


def test_a_queued_command_is_claimed_run_and_recorded_once(parts: Parts) -> None:
    """run() claims the command (one attempt), calls its action with its arguments, records the
    result and reports started then finished; a second message for it does nothing."""
    cmd = parts.submit("local", "a", args={"n": 3})
    parts.clock.now += 2.0
    done = parts.runner.run(cmd.seq)
    assert done is not None and (done.state, done.attempts, done.result) == ("succeeded", 1, {"ok": "local"})
    assert (done.started, done.finished) == (T0 + 2.0, T0 + 2.0)
    assert parts.calls == [("local", {"n": 3})]
    assert parts.said.said == [("started", "a", "running"), ("finished", "a", "succeeded")]
    assert parts.runner.run(cmd.seq) is None
    assert len(parts.calls) == 1


def test_begin_claims_in_the_callers_transaction(parts: Parts) -> None:
    """begin() claims inside the transaction it is given: rolled back, the command stays queued."""
    cmd = parts.submit("local", "a")
    with pytest.raises(RuntimeError), parts.store.transaction() as cur:
        step = parts.runner.begin(cur, cmd.seq)
        assert isinstance(step, Started) and step.cmd.state == "running"
        raise RuntimeError("the message could not be taken")
    assert (parts.get("a").state, parts.get("a").attempts) == ("queued", 0)


def test_a_command_past_its_deadline_expires_without_running(parts: Parts) -> None:
    """Its own deadline or its action's (counted from when it was queued), whichever is earlier:
    past it, the command ends expired and its action is never called."""
    own = parts.submit("local", "own", deadline=T0 + 5.0)
    by_action = parts.submit("brief", "by-action")
    in_time = parts.submit("brief", "in-time", deadline=T0 + 100.0)
    parts.clock.now = T0 + 10.0
    expired = parts.runner.run(own.seq)
    assert expired is not None and (expired.state, expired.error_type, expired.attempts) == ("expired", "expired", 1)
    assert expired.error_message == "its deadline passed 5.0s before it could start"
    assert parts.runner.run(in_time.seq).state == "succeeded"  # type: ignore[union-attr]
    parts.clock.now = T0 + 31.0  # brief's deadline: 30 s after it was queued, before its own
    late = parts.runner.run(by_action.seq)
    assert late is not None and late.state == "expired" and "passed 1.0s" in (late.error_message or "")
    assert [name for name, _ in parts.calls] == ["brief"]
    assert ("finished", "own", "expired") in parts.said.said and ("started", "own", "running") not in parts.said.said


def test_an_unknown_action_fails_at_once(parts: Parts) -> None:
    """A command whose action is not registered (any more) fails, naming the error."""
    cmd = parts.submit("gone", "g")
    done = parts.runner.run(cmd.seq)
    assert done is not None and (done.state, done.error_type) == ("failed", "unknown_action")
    assert parts.said.said == [("finished", "g", "failed")]


def test_fail_unstartable_fails_a_queued_command_and_leaves_others(parts: Parts) -> None:
    """A command that could not be started ends failed with the error, and is reported; one that
    is not queued (already run) is left as it is."""
    stuck = parts.submit("local", "stuck")
    ran = parts.submit("local", "ran")
    parts.runner.run(ran.seq)
    parts.said.said.clear()
    with parts.store.transaction() as cur:
        parts.runner.fail_unstartable(cur, stuck.seq, ("internal_error", "could not be started: KeyError: 'x'"))
        parts.runner.fail_unstartable(cur, ran.seq, ("internal_error", "could not be started: KeyError: 'x'"))
    row = parts.get("stuck")
    assert (row.state, row.error_type, row.error_message) == ("failed", "internal_error", "could not be started: KeyError: 'x'")
    assert parts.get("ran").state == "succeeded"
    assert parts.said.said == [("finished", "stuck", "failed")]


def test_a_retryable_failure_waits_a_growing_jittered_delay_then_fails(parts: Parts,
                                                                       outcomes: dict[str, list[Exception | None]]) -> None:
    """retries=2: after the first and second failures the command waits delay_before(attempt) (full
    jitter under 10 s, then 30 s) with a message scheduled then; the third failure is final."""
    outcomes["flaky"] = [RetryableError("busy"), RetryableError("busy"), RetryableError("still busy")]
    cmd = parts.submit("flaky", "f")
    expected = random.Random(SEED)
    policy = RetryPolicy(retries=2, delay=10.0, backoff=3.0, max_delay=60.0)
    for attempt in (1, 2):
        done = parts.runner.run(cmd.seq)
        delay = policy.delay_before(attempt, expected)
        assert delay <= (10.0 if attempt == 1 else 30.0)
        assert done is not None and (done.state, done.attempts, done.max_attempts) == ("queued", attempt, 3)
        assert done.next_attempt == pytest.approx(parts.clock.now + delay)
        assert (done.error_type, done.error_message) == ("retryable", "busy")
        assert parts.scheduled()[-1] == (cmd.seq, pytest.approx(parts.clock.now + delay))
        parts.clock.now = done.next_attempt
    done = parts.runner.run(cmd.seq)
    assert done is not None and (done.state, done.attempts, done.error_message) == ("failed", 3, "still busy")
    assert [hook for hook, _, _ in parts.said.said] == ["started", "retried", "started", "retried", "started", "finished"]


def test_retry_after_stretches_the_delay_up_to_the_policys_cap(parts: Parts,
                                                             outcomes: dict[str, list[Exception | None]]) -> None:
    """A server's Retry-After is honoured, within max_delay."""
    outcomes["flaky"] = [RetryableError("slow down", retry_after=45.0), RetryableError("slow down", retry_after=600.0)]
    cmd = parts.submit("flaky", "f")
    done = parts.runner.run(cmd.seq)
    assert done is not None and done.next_attempt == pytest.approx(T0 + 45.0)
    parts.clock.now = T0 + 45.0
    done = parts.runner.run(cmd.seq)
    assert done is not None and done.next_attempt == pytest.approx(T0 + 45.0 + 60.0)


def test_the_network_down_parks_work_and_its_return_releases_it(parts: Parts,
                                                               outcomes: dict[str, list[Exception | None]]) -> None:
    """A refused connection parks the command (attempt given back, a probe scheduled); others for
    the same target park without running while the target is down; after PROBE_INTERVAL one runs
    as the probe, and its success releases every parked command at once."""
    outcomes["web"] = [NetworkUnavailable("connection refused")]
    first, second, third = (parts.submit("web", f"w{i}") for i in (1, 2, 3))
    parked = parts.runner.run(first.seq)
    assert parked is not None and (parked.state, parked.parked, parked.attempts) == ("queued", True, 0)
    assert (parked.error_type, parked.error_message) == ("network_unavailable", "connection refused")
    rng = random.Random(SEED)
    assert parked.next_attempt == pytest.approx(T0 + PROBE_INTERVAL * rng.uniform(1.0, 1.1) + 0.01)
    assert parts.scheduled() == [(first.seq, pytest.approx(parked.next_attempt))]

    parts.gate_clock.now += 1.0  # the target is down and was tried 1 s ago: the next waits
    waits = parts.runner.run(second.seq)
    assert waits is not None and waits.parked and waits.error_message == "web is unreachable; waiting for it"
    assert waits.next_attempt == pytest.approx(T0 + (PROBE_INTERVAL - 1.0) * rng.uniform(1.0, 1.1) + 0.01)
    assert [name for name, _ in parts.calls] == ["web"]  # parked without running

    parts.gate_clock.now += PROBE_INTERVAL
    parts.clock.now += 5.0
    before = parts.ready()  # (the messages of the submits: no worker takes them here)
    probe = parts.runner.run(third.seq)  # the probe: it runs, succeeds, the target is up
    assert probe is not None and probe.state == "succeeded"
    assert [name for name, _ in parts.calls] == ["web", "web"]
    for cid in ("w1", "w2"):
        row = parts.get(cid)
        assert (row.state, row.parked) == ("queued", True)
        assert row.next_attempt is not None and row.next_attempt <= time.time()  # due now
    assert sorted(parts.ready()[len(before):]) == [first.seq, second.seq]  # released: messages ready now
    assert (parts.runner.run(first.seq).state, parts.runner.run(second.seq).state) == ("succeeded", "succeeded")  # type: ignore[union-attr]


def test_parked_work_ends_at_its_deadline(parts: Parts, outcomes: dict[str, list[Exception | None]]) -> None:
    """Parked work is never scheduled past its deadline: a probe failing at the deadline gives up
    (failed), and a command found past it expires, saying it waited for the network."""
    outcomes["web"] = [NetworkUnavailable("no route to host"), NetworkUnavailable("no route to host")]
    probe, other = parts.submit("web", "w", deadline=T0 + 3.0), parts.submit("web", "v", deadline=T0 + 3.0)
    parked = parts.runner.run(probe.seq)
    assert parked is not None and parked.parked and parked.next_attempt is not None
    assert parked.next_attempt <= T0 + 3.0 + 0.001
    parts.runner.run(other.seq)
    assert parts.get("v").parked
    parts.clock.now = T0 + 3.0
    parts.gate_clock.now += PROBE_INTERVAL
    done = parts.runner.run(probe.seq)
    assert done is not None and (done.state, done.error_type) == ("failed", "network_unavailable")
    assert done.error_message == "no route to host (gave up after 3s without the network)"
    parts.clock.now = T0 + 3.5
    late = parts.runner.run(other.seq)
    assert late is not None and (late.state, late.error_type) == ("expired", "expired")
    assert late.error_message == "expired while waiting for the network (web is unreachable; waiting for it)"


def test_an_outcome_a_full_disk_refuses_is_kept_and_recorded_once_there_is_space(parts: Parts,
                                                                                caplog: pytest.LogCaptureFixture) -> None:
    """DiskFull while recording: the transaction is rolled back, the worker keeps the outcome and
    records it when a write succeeds again; the action ran once."""
    cmd = parts.submit("local", "a")
    parts.said.full_on_finish = 1
    with caplog.at_level(logging.WARNING, logger="edge_agent.runner"):
        done = parts.runner.run(cmd.seq)
    assert done is not None and done.state == "succeeded"
    assert parts.get("a").state == "succeeded" and len(parts.calls) == 1
    assert parts.said.said == [("started", "a", "running"), ("finished", "a", "succeeded")]
    messages = [r.getMessage() for r in caplog.records]
    assert any("its outcome cannot be recorded" in m and "kept until there is space" in m for m in messages), messages
    assert any("outcome recorded (succeeded) now that there is space" in m for m in messages), messages


def test_a_stop_with_the_disk_still_full_leaves_the_command_running(parts: Parts) -> None:
    """Stopping, the runner does not wait for space: the outcome is not recorded, the command stays
    running (the next start runs it again or reports it interrupted, as after a kill)."""
    cmd = parts.submit("local", "a")
    parts.said.full_on_finish = 1
    parts.queue.storage.stopping = True
    parts.runner(cmd.seq)  # (the worker's entry: logs that the outcome could not be recorded)
    assert parts.get("a").state == "running"
