"""The command journal's state machine on a real SQLite file: add, dedupe, claim, finish, retry, recover."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from edge_agent.device.commands import NewCommand
from edge_agent.device.journal import Journal, encode_result
from edge_agent.device.store import Store


class FakeClock:
    def __init__(self, now: float = 1_700_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def env(tmp_path: Path):
    store = Store(str(tmp_path / "agent.db"))
    clock = FakeClock()
    yield store, Journal(store, clock=clock), clock
    store.close()


def _add(journal: Journal, store: Store, cid: str, action: str = "t", args: dict | None = None, *, enqueued: bool = True,
         **fields):
    with store.transaction() as cur:
        return journal.add(cur, NewCommand(action=action, args=args or {}, id=cid, **fields), enqueued=enqueued)


def test_add_stores_a_queued_row_with_its_args(env):
    """A new command becomes a queued row with its arguments, source, timing and the clock's time."""
    store, journal, clock = env
    row, created = _add(journal, store, "c1", "water", {"zone": "a", "minutes": 2.5}, source="cli", deadline=clock.now + 60)
    assert created
    assert (row.id, row.action, dict(row.args), row.source, row.state, row.attempts) == (
        "c1", "water", {"zone": "a", "minutes": 2.5}, "cli", "queued", 0)
    assert row.created == clock.now and row.deadline == clock.now + 60
    assert journal.get("c1") == row
    assert row.outcome()["status"] == "accepted"


def test_a_known_id_is_not_added_again_and_returns_the_stored_row(env):
    """Adding an id that is already known changes nothing and returns the stored row (at most once per id)."""
    store, journal, clock = env
    first, _ = _add(journal, store, "dup", "t", {"n": 1})
    with store.transaction() as cur:
        journal.claim(cur, first.seq)
        journal.finish(cur, first.seq, "succeeded", result={"ok": 1})
    clock.now += 3600
    again, created = _add(journal, store, "dup", "other", {"n": 2})
    assert not created
    assert (again.seq, again.action, dict(again.args), again.state, again.result) == (first.seq, "t", {"n": 1}, "succeeded", {"ok": 1})
    assert store.query("select count(*) from commands")[0][0] == 1


def test_claim_runs_a_queued_command_once(env):
    """claim marks a queued row running with one more attempt; a second claim of the same row gets None."""
    store, journal, clock = env
    row, _ = _add(journal, store, "c")
    clock.now += 1
    with store.transaction() as cur:
        running = journal.claim(cur, row.seq)
        assert running is not None
        assert (running.state, running.attempts, running.started) == ("running", 1, clock.now)
        assert journal.claim(cur, row.seq) is None
        assert journal.claim(cur, 999_999) is None


def test_the_rows_add_and_finish_make_are_the_rows_stored(env):
    """add and finish (with the claimed row) make their Command without reading it back: it is
    the row a read gets, field for field, also for a result JSON holds differently (a tuple)."""
    store, journal, clock = env
    new = NewCommand(action="t", args={"n": 1, "s": "é"}, id="r1", source="mqtt", not_before=5.0, deadline=9.5,
                     reply_to="x/y", correlation=b"\x01")
    with store.transaction() as cur:
        added, created = journal.add(cur, new, enqueued=True)
    assert created and added == journal.get("r1")
    assert added.args_json == journal.get("r1").args_json == '{"n":1,"s":"\\u00e9"}'
    for i, (state, result, error) in enumerate([("succeeded", (1, "a"), None), ("succeeded", None, None),
                                                ("failed", None, ("permanent", "no"))]):
        row, _ = _add(journal, store, f"f{i}")
        clock.now += 1.25
        with store.transaction() as cur:
            claimed = journal.claim(cur, row.seq)
            assert claimed is not None
            done = journal.finish(cur, row.seq, state, error=error, claimed=claimed,
                                  result_json=encode_result(result))
        assert done == journal.get(f"f{i}")
        assert done.result_json == encode_result(result)


def test_finish_records_outcomes(env):
    """finish records succeeded with a result, or failed/expired with an error; all are terminal."""
    store, journal, clock = env
    rows = [_add(journal, store, f"c{i}")[0] for i in range(3)]
    with store.transaction() as cur:
        for r in rows:
            journal.claim(cur, r.seq)
        ok = journal.finish(cur, rows[0].seq, "succeeded", result={"v": [1]})
        bad = journal.finish(cur, rows[1].seq, "failed", error=("permanent", "no"))
        late = journal.finish(cur, rows[2].seq, "expired", error=("expired", "too late"))
    assert (ok.state, ok.result, ok.error_type, ok.finished) == ("succeeded", {"v": [1]}, None, clock.now)
    assert (bad.state, bad.error_type, bad.error_message) == ("failed", "permanent", "no")
    assert late.state == "expired"
    assert all(r.terminal for r in (ok, bad, late))
    assert bad.outcome()["error"] == {"type": "permanent", "message": "no"}
    with store.transaction() as cur:
        assert journal.claim(cur, rows[0].seq) is None  # a finished command never runs again
    assert {c.id for c in journal.recent_failures()} == {"c1", "c2"}  # failed and expired, not succeeded


def test_retry_later_puts_it_back_in_line(env):
    """retry_later requeues with next_attempt and the error; refund gives the attempt back and marks it parked."""
    store, journal, clock = env
    row, _ = _add(journal, store, "r")
    with store.transaction() as cur:
        journal.claim(cur, row.seq)
        retried = journal.retry_later(cur, row.seq, clock.now + 30, ("retryable", "busy"))
    assert (retried.state, retried.attempts, retried.next_attempt, retried.error_type, retried.parked) == (
        "queued", 1, clock.now + 30, "retryable", False)
    assert journal.counts() == {"queued": 1, "running": 0, "parked": 0, "retrying": 1}
    with store.transaction() as cur:
        journal.claim(cur, row.seq)
        parked = journal.retry_later(cur, row.seq, clock.now + 5, ("network_unavailable", "down"), refund=True)
    assert (parked.attempts, parked.parked) == (1, True)
    assert journal.counts()["parked"] == 1
    with store.transaction() as cur:
        journal.claim(cur, row.seq)
        done = journal.finish(cur, row.seq, "succeeded", result=1)
    assert (done.attempts, done.next_attempt, done.parked, done.error_type) == (2, None, False, None)


def test_recover_runs_interrupted_commands_again_with_their_attempt_given_back(env):
    """After a crash, running rows go back to queued with the kill's attempt given back; queued and finished rows are untouched."""
    store, journal, clock = env
    queued, _ = _add(journal, store, "q", "t")
    first, _ = _add(journal, store, "a", "t")
    second, _ = _add(journal, store, "b", "t")
    done, _ = _add(journal, store, "d", "t")
    with store.transaction() as cur:
        for r in (first, second, done):
            journal.claim(cur, r.seq)
        journal.finish(cur, done.seq, "succeeded")
        journal.retry_later(cur, second.seq, clock.now + 5, ("Boom", "x"))
        journal.claim(cur, second.seq)  # its second attempt, then the kill
    clock.now += 10
    with store.transaction() as cur:
        found = journal.recover(cur)
    assert [(c.id, c.state, c.attempts, c.started) for c in found.rerun] == [("a", "queued", 0, None), ("b", "queued", 1, None)]
    assert found.interrupted == []
    assert journal.get("q") == queued and journal.get("d").state == "succeeded"
    with store.transaction() as cur:
        assert journal.recover(cur) == found.__class__([], [])


def test_recover_uses_the_index_of_running_commands(env):
    """Recovery finds running commands through their partial index: its cost does not grow with the backlog."""
    store, _, _ = env
    plan = " ".join(str(r[-1]) for r in store.query(
        "explain query plan select seq from commands where state = 'running' order by seq"))
    assert "commands_running" in plan, plan


def test_a_command_interrupted_again_and_again_fails_instead_of_crash_looping(env):
    """A command that a kill interrupts MAX_INTERRUPTS times (it may be what crashes the agent) ends failed, interrupted."""
    from edge_agent.device.journal import MAX_INTERRUPTS

    store, journal, clock = env
    row, _ = _add(journal, store, "crashy", "t")
    for i in range(MAX_INTERRUPTS):
        with store.transaction() as cur:
            assert journal.claim(cur, row.seq) is not None
            found = journal.recover(cur)
        if i < MAX_INTERRUPTS - 1:
            assert [c.id for c in found.rerun] == ["crashy"] and found.interrupted == []
    assert found.rerun == []
    [failed] = found.interrupted
    assert (failed.state, failed.error_type, failed.finished) == ("failed", "interrupted", clock.now)
    assert f"stopped {MAX_INTERRUPTS} times" in failed.error_message


def test_unadopted_lists_outside_rows_after_a_seq(env):
    """Rows other processes wrote (enqueued=0) are listed in order after the last seq taken; the daemon's own never."""
    store, journal, _ = env
    _add(journal, store, "own", enqueued=True)
    _add(journal, store, "cli-1", enqueued=False)
    _add(journal, store, "cli-2", enqueued=False)
    with store.transaction() as cur:
        head = journal.last_seq(cur)
        rows = journal.unadopted(cur, 0, head)
        assert [c.id for c in rows] == ["cli-1", "cli-2"]
        assert rows[-1].seq == head
        assert journal.unadopted(cur, rows[-1].seq, head) == []
        assert [c.id for c in journal.unadopted(cur, 0, rows[0].seq)] == ["cli-1"]


def test_prune_keeps_the_newest_row_so_seq_never_goes_back(env):
    """Even when every row is old and finished, the newest survives pruning: a new row gets a higher seq."""
    store, journal, clock = env
    rows = [_add(journal, store, f"p{i}")[0] for i in range(3)]
    with store.transaction() as cur:
        for r in rows:
            journal.claim(cur, r.seq)
            journal.finish(cur, r.seq, "succeeded")
    assert journal.prune(clock.now + 10) == 2
    assert journal.get("p2") is not None
    new, created = _add(journal, store, "p0")
    assert created and new.seq == rows[-1].seq + 1


def test_a_schema_1_database_is_migrated(tmp_path: Path):
    """A database of the first schema (AUTOINCREMENT, an index of unadopted rows) opens, loses the index, keeps rows."""
    path = tmp_path / "agent.db"
    store = Store(str(path))
    _add(Journal(store), store, "old", enqueued=False)
    with store.transaction() as cur:
        cur.execute("create index commands_unadopted on commands (seq) where enqueued = 0")
        cur.execute("pragma user_version=1")
    store.close()
    store = Store(str(path))
    try:
        assert store.query("select count(*) from sqlite_schema where name = 'commands_unadopted'") == [(0,)]
        assert store.query("pragma user_version") == [(3,)]
        assert journal_interrupts(store) == [0]
        journal = Journal(store)
        assert journal.get("old") is not None
        assert _add(journal, store, "new")[0].seq == journal.get("old").seq + 1
    finally:
        store.close()


def journal_interrupts(store: Store) -> list[int]:
    return [r[0] for r in store.query("select interrupts from commands")]


def test_another_connection_sees_committed_rows_only(env, tmp_path: Path):
    """A command is visible to other processes once add's transaction commits, not before."""
    store, journal, _ = env
    other = sqlite3.connect(tmp_path / "agent.db", timeout=5)
    try:
        with store.transaction() as cur:
            journal.add(cur, NewCommand(action="t", args={}, id="x"), enqueued=False)
            assert other.execute("select count(*) from commands").fetchone()[0] == 0
        assert other.execute("select count(*) from commands").fetchone()[0] == 1
    finally:
        other.close()


def test_history_counts_and_prune(env):
    """history is newest first; prune forgets finished rows older than the limit and keeps open ones."""
    store, journal, clock = env
    rows = [_add(journal, store, f"h{i}")[0] for i in range(4)]
    with store.transaction() as cur:
        journal.claim(cur, rows[0].seq)
        journal.finish(cur, rows[0].seq, "succeeded")
        journal.claim(cur, rows[1].seq)
    assert [c.id for c in journal.history(3)] == ["h3", "h2", "h1"]
    assert journal.counts() == {"queued": 2, "running": 1, "parked": 0, "retrying": 0}
    assert journal.depth() == 3
    assert journal.prune(clock.now - 1) == 0
    assert journal.prune(clock.now + 1) == 1
    assert journal.get("h0") is None and journal.get("h1") is not None
    # A forgotten id may be used again; seq numbers are never reused.
    again, created = _add(journal, store, "h0")
    assert created and again.seq > rows[-1].seq


def test_an_at_most_once_command_that_a_kill_interrupted_fails_instead_of_running_again(env):
    """recover's predicate says no (an at_most_once task): the running row ends failed, interrupted, not queued."""
    store, journal, _ = env
    dose, _ = _add(journal, store, "dose", "pump.dose")
    light, _ = _add(journal, store, "light", "gpio.set")
    with store.transaction() as cur:
        journal.claim(cur, dose.seq)
        journal.claim(cur, light.seq)
        found = journal.recover(cur, lambda cmd: cmd.action != "pump.dose")
    assert [c.id for c in found.rerun] == ["light"]
    [failed] = found.interrupted
    assert (failed.id, failed.state, failed.error_type) == ("dose", "failed", "interrupted")
    assert "runs at most once" in failed.error_message


def test_the_registry_reruns_every_action_but_at_most_once_tasks(tmp_path: Path):
    """Built-ins and plain tasks run again after a kill; a task declared at_most_once does not."""
    from edge_agent.device.actions import Action, Registry

    registry = Registry([Action("plain", lambda: None, ()), Action("dose", lambda: None, (), at_most_once=True)])
    assert registry.reruns_after_a_kill("plain") and not registry.reruns_after_a_kill("dose")
    assert registry.reruns_after_a_kill("unknown")  # ends failed as unknown when it runs
