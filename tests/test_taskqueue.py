"""Huey wired to the journal: blocking dequeue, scheduled messages, recovery, adoption of other processes' rows."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from bench.harness import wait_until
from edge_agent.device.commands import NewCommand
from edge_agent.device.journal import Journal
from edge_agent.device.store import Store
from edge_agent.device.taskqueue import TaskQueue, Workers

ROOT = Path(__file__).resolve().parent.parent


class Recorder:
    """Stands in for the runner: records the journal seq of every message a worker executes."""

    def __init__(self) -> None:
        self.seqs: list[int] = []
        self.cond = threading.Condition()

    def run(self, seq: int) -> None:
        with self.cond:
            self.seqs.append(seq)
            self.cond.notify_all()

    def begin(self, cur, seq: int) -> int:
        return seq

    def complete(self, seq: int, defer: bool = False) -> None:
        self.run(seq)

    def wait_for(self, count: int, timeout: float = 10.0) -> list[int]:
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.seqs) >= count, timeout), f"ran only {self.seqs}"
            return list(self.seqs)


class WatchedCondition(threading.Condition):
    """A Condition that tells when someone starts waiting on it."""

    def __init__(self) -> None:
        super().__init__()
        self.waiting = threading.Event()

    def wait(self, timeout: float | None = None) -> bool:
        self.waiting.set()
        return super().wait(timeout)


@pytest.fixture
def parts(tmp_path: Path):
    store = Store(str(tmp_path / "agent.db"))
    journal = Journal(store)
    recorder = Recorder()
    queue = TaskQueue(store, journal, workers=2)
    yield store, journal, queue, recorder
    store.close()


@pytest.fixture
def workers(parts):
    _, _, queue, recorder = parts
    workers = Workers(queue, recorder)
    yield workers
    workers.stop(5)


def _seq_of(queue: TaskQueue, data: bytes) -> int:
    return queue.huey.deserialize_task(data).args[0]


def _take(cur, queue: TaskQueue, seq: int) -> None:
    for rowid, data in cur.execute("select id, data from task").fetchall():
        if _seq_of(queue, bytes(data)) == seq:
            cur.execute("delete from task where id = ?", (rowid,))


def _messages(store: Store, table: str) -> list[bytes]:
    return [bytes(r[0]) for r in store.query(f"select data from {table} order by id")]


def test_submit_journals_and_queues_in_one_go(parts):
    """submit writes the journal row and its queue message together; a known id adds neither again."""
    store, _, queue, _ = parts
    row, created = queue.submit(NewCommand(action="t", args={"n": 1}, id="a"))
    assert created and row.state == "queued"
    assert [_seq_of(queue, m) for m in _messages(store, "task")] == [row.seq]
    again, created = queue.submit(NewCommand(action="t", args={"n": 2}, id="a"))
    assert not created and again.seq == row.seq
    assert len(_messages(store, "task")) == 1


def test_messages_keep_the_task_name_earlier_versions_wrote(parts):
    """Huey reads only task names it knows: a message names "edge_agent.runner.run_command", as the
    messages that a daemon of the layout before edge_agent/device left in its queue do (they still run)."""
    _, _, queue, _ = parts
    message = queue.huey.serializer.deserialize(queue.message(7))
    assert (message.name, message.args) == ("edge_agent.runner.run_command", (7,))
    # Ids are made from a random part per queue and a count (no OS random call per message): unique
    # within a queue and across queues (a restart makes a new queue).
    store = parts[0]
    ids = [queue.huey.serializer.deserialize(queue.message(i)).id for i in range(1000)]
    for _ in range(2):
        other = TaskQueue(store, Journal(store))
        ids.append(other.huey.serializer.deserialize(other.message(1)).id)
    assert len(set(ids)) == len(ids) and all(isinstance(i, str) and len(i) == 32 for i in ids)


def test_blocking_dequeue_wakes_on_signal(parts):
    """An idle dequeue sleeps on its condition and returns as soon as an enqueue signals (not after its 30 s safety wait)."""
    store, _, queue, _ = parts
    storage = queue.storage
    storage.cond = WatchedCondition()
    got: list[bytes | None] = []
    t = threading.Thread(target=lambda: got.append(storage.dequeue()), daemon=True)
    t.start()
    assert storage.cond.waiting.wait(5), "dequeue did not go to sleep on an empty queue"
    # Written behind the storage's back: only the signal can wake the sleeper.
    with store.transaction() as cur:
        storage.enqueue_in(cur, queue.message(41), None, time.time())
    storage.signal()
    t.join(5)
    assert not t.is_alive(), "dequeue slept through the signal"
    assert got and _seq_of(queue, got[0]) == 41


def test_a_scheduled_message_is_not_returned_before_its_eta(parts):
    """A message with an eta stays in the schedule until then; ready messages go first."""
    store, _, queue, _ = parts
    storage = queue.storage
    now = time.time()
    with store.transaction() as cur:
        storage.enqueue_in(cur, queue.message(1), now + 3600, now)
        storage.enqueue_in(cur, queue.message(2), None, now)
    data, _, _ = storage._pop(now)
    assert _seq_of(queue, data) == 2
    assert storage._pop(now) == (None, None, pytest.approx(now + 3600))
    assert storage._pop(now + 3599) == (None, None, pytest.approx(now + 3600))
    data, _, _ = storage._pop(now + 3600.001)
    assert _seq_of(queue, data) == 1


def test_dequeue_waits_for_a_near_eta_and_not_less(parts):
    """A worker waiting on an empty queue wakes for a scheduled message at its eta, never before it."""
    store, _, queue, _ = parts
    storage = queue.storage
    eta = time.time() + 0.3
    with store.transaction() as cur:
        storage.enqueue_in(cur, queue.message(7), eta, time.time())
    data = storage.dequeue()
    assert time.time() >= eta
    assert data is not None and _seq_of(queue, data) == 7


def test_recover_keeps_the_queue_and_puts_interrupted_commands_at_its_head(parts):
    """recover leaves Huey's messages as they are (no rewrite of the backlog) and gives each command a
    kill left running a message ahead of the line, with its attempt given back."""
    store, journal, queue, _ = parts
    ids = {}
    for cid in ("queued", "running", "finished", "later"):
        row, _ = queue.submit(NewCommand(action="t", args={}, id=cid,
                                         not_before=time.time() + 600 if cid == "later" else None))
        ids[cid] = row.seq
    with store.transaction() as cur:
        for cid in ("running", "finished"):
            _take(cur, queue, ids[cid])  # as a worker does: its message taken, the command claimed
            journal.claim(cur, ids[cid])
        journal.finish(cur, ids["finished"], "succeeded")
    before = _messages(store, "task")
    assert queue.recover() == []
    after = _messages(store, "task")
    assert after[: len(before)] == before  # the backlog's rows are not rewritten
    assert [_seq_of(queue, m) for m in after] == [ids["queued"], ids["running"]]
    first = store.query("select data from task order by priority desc, id limit 1")[0][0]
    assert _seq_of(queue, bytes(first)) == ids["running"]
    assert [_seq_of(queue, m) for m in _messages(store, "schedule")] == [ids["later"]]
    row = journal.get("running")
    assert (row.state, row.attempts) == ("queued", 0)


def test_adoption_resumes_after_the_last_seq_adopted_before_a_restart(tmp_path: Path):
    """The seq adopted up to is kept in the database: after a restart only later rows are adopted."""
    store = Store(str(tmp_path / "agent.db"))
    try:
        journal = Journal(store)
        queue = TaskQueue(store, journal, workers=1)
        with store.transaction() as cur:
            journal.add(cur, NewCommand(action="t", args={}, id="early"), enqueued=False)
        queue.recover()
        assert queue.adopt() == 1
        with store.transaction() as cur:
            journal.add(cur, NewCommand(action="t", args={}, id="late"), enqueued=False)
        again = TaskQueue(store, journal, workers=1)
        again.recover()
        assert again.adopt() == 1
        assert [_seq_of(queue, m) for m in _messages(store, "task")] == [journal.get("early").seq, journal.get("late").seq]
    finally:
        store.close()


def test_turning_the_network_lane_off_moves_its_messages_to_the_local_lane(tmp_path: Path):
    """Messages queued in the network lane are not stranded when a restart runs with network_workers = 0."""
    store = Store(str(tmp_path / "agent.db"))
    try:
        journal = Journal(store)
        two = TaskQueue(store, journal, workers=1, network_workers=1, is_network=lambda a: a == "web")
        two.recover()
        two.submit(NewCommand(action="web", args={}, id="w"))
        assert dict(store.query("select queue, count(*) from task group by queue")) == {"edge-net": 1}
        one = TaskQueue(store, journal, workers=1)
        one.recover()
        assert dict(store.query("select queue, count(*) from task group by queue")) == {"edge": 1}
    finally:
        store.close()


def test_recovered_commands_run_after_start(parts, workers):
    """After recover and start, the workers execute every recovered command once."""
    store, journal, queue, recorder = parts
    rows = [queue.submit(NewCommand(action="t", args={}, id=f"r{i}"))[0] for i in range(5)]
    with store.transaction() as cur:
        cur.execute("delete from task where id = (select min(id) from task)")  # as a worker's take does
        journal.claim(cur, rows[0].seq)
    queue.recover()
    workers.start(None)
    assert sorted(recorder.wait_for(5)) == [r.seq for r in rows]


def test_adopt_takes_rows_written_by_another_process(parts, tmp_path: Path):
    """Rows another process committed (enqueued=0) are adopted into the queue once (the queue remembers how far
    it took them, so adopting writes nothing to the journal rows)."""
    store, journal, queue, _ = parts
    code = ("import sys; from edge_agent.device.store import Store; from edge_agent.device.journal import Journal; "
            "from edge_agent.device.commands import NewCommand\n"
            "s = Store(sys.argv[1]); j = Journal(s)\n"
            "with s.transaction() as cur:\n"
            "    for i in range(3): j.add(cur, NewCommand(action='t', args={'i': i}, id=f'x{i}'), enqueued=False)\n")
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "agent.db")], check=True, cwd=ROOT, timeout=30)
    assert _messages(store, "task") == []
    assert queue.adopt() == 3
    seqs = [journal.get(f"x{i}").seq for i in range(3)]
    assert [_seq_of(queue, m) for m in _messages(store, "task")] == seqs
    assert queue.adopt() == 0


def test_a_poked_daemon_runs_a_command_another_process_queued(parts, workers, tmp_path: Path):
    """With workers started, a command written and poked by another process (the CLI's path) is executed."""
    _, journal, _, recorder = parts
    workers.start(str(tmp_path / "agent.db"))
    code = ("import sys; from edge_agent.device.store import Store; from edge_agent.device.journal import Journal; "
            "from edge_agent.device.commands import NewCommand; from edge_agent.device.poke import poke\n"
            "s = Store(sys.argv[1]); j = Journal(s)\n"
            "with s.transaction() as cur: j.add(cur, NewCommand(action='t', args={}, id='poked'), enqueued=False)\n"
            "assert poke(sys.argv[1])\n")
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "agent.db")], check=True, cwd=ROOT, timeout=30)
    assert recorder.wait_for(1) == [journal.get("poked").seq]


def test_stop_wakes_idle_workers_and_returns(parts, workers):
    """stop() ends idle workers that are blocked in dequeue (they do not sit out their safety wait)."""
    _, _, queue, _ = parts
    workers.start(None)
    assert workers.stop(5) is True
    assert queue.storage.dequeue() is None


class SlowRunner:
    """A runner whose actions take ``slow`` seconds for some seqs (inside the queue's acting()), records starts."""

    def __init__(self, slow: set[int], seconds: float) -> None:
        self.slow, self.seconds = slow, seconds
        self.started: dict[int, float] = {}
        self.lock = threading.Lock()
        self.storage = None

    def run(self, seq: int) -> None:
        self.complete(seq)

    def begin(self, cur, seq: int) -> int:
        return seq

    def complete(self, seq: int, defer: bool = False) -> None:
        with self.storage.acting():
            with self.lock:
                self.started[seq] = time.monotonic()
            if seq in self.slow:
                time.sleep(self.seconds)  # the slow action itself


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(2))
def test_no_message_waits_for_the_safety_look_while_workers_sleep(tmp_path: Path, seed: int):
    """With slow and quick actions mixed, due scheduled messages among them, and messages arriving while every
    awake worker is busy: each message starts within a second, never after the 30 s safety look (a lost wake-up)."""
    import random

    rng = random.Random(seed)
    store = Store(str(tmp_path / "agent.db"))
    slow = {3, 10, 17}  # at most three of the four workers are ever held by slow actions
    runner = SlowRunner(slow, 2.5)
    queue = TaskQueue(store, Journal(store), workers=4)
    runner.storage = queue.storage
    workers = Workers(queue, runner)
    workers.start(None)
    queued: dict[int, float] = {}
    try:
        for seq in range(1, 40):
            now = time.time()
            eta = now + rng.choice([0.0, 0.0, 0.05]) if seq % 3 else None
            with store.transaction() as cur:
                queue.storage.enqueue_in(cur, queue.message(seq), eta, now)
            queued[seq] = time.monotonic() + (eta - now if eta else 0.0)
            if eta is None or eta <= now:
                queue.storage.signal()  # as submit does; scheduled ones are not signalled
            time.sleep(rng.choice([0.0, 0.0, 0.01, 0.05]))  # pacing: messages arrive at random moments
        wait_until(lambda: len(runner.started) >= len(queued), 15, interval=0.05,
                   message=lambda: f"never started: {sorted(set(queued) - set(runner.started))}")
        late = {seq: round(runner.started[seq] - queued[seq], 2) for seq in queued
                if runner.started[seq] - queued[seq] > 1.0}
        assert not late, f"started more than 1 s after they were ready: {late}"
    finally:
        workers.stop(5)
        store.close()


def test_a_free_worker_that_takes_other_work_passes_a_signalled_message_on(parts):
    """The wake-up a signal skipped because a worker was free is not lost when that worker takes a due
    scheduled message instead and goes busy: a sleeping worker is woken for the signalled one."""
    store, _, queue, _ = parts
    storage = queue.storage  # no workers of its own: this test plays them
    release = threading.Event()
    got: dict[str, int] = {}

    def worker(name: str, busy: bool) -> None:
        found = storage.take()
        if found is not None:
            got[name] = _seq_of(queue, found[0])
            if busy:
                with storage.acting():
                    release.wait(10)

    with storage.cond:
        storage.awake = 1  # the sleeper
    sleeper = threading.Thread(target=worker, args=("sleeper", False), daemon=True)
    storage.cond = WatchedCondition()
    sleeper.start()
    assert storage.cond.waiting.wait(5)
    # A worker busy with a slow action.
    with storage.cond:
        storage.awake += 1
    with store.transaction() as cur:
        storage.enqueue_in(cur, queue.message(1), None, time.time())
    storage.signal()
    busy = threading.Thread(target=worker, args=("busy", True), daemon=True)
    busy.start()
    wait_until(lambda: "busy" in got, 5, interval=0.01, message="the busy worker did not take the message")
    # This thread is the free worker: a retry falls due (not signalled), then a new message is signalled.
    with storage.cond:
        storage.awake += 1
    with store.transaction() as cur:
        cur.execute("insert into schedule (queue, data, timestamp) values (?, ?, ?)",
                    (storage.name, queue.message(2), time.time() - 1))
        storage.enqueue_in(cur, queue.message(3), None, time.time())
    storage.signal()
    taken = storage.take()
    assert taken is not None and _seq_of(queue, taken[0]) == 2, "the due retry goes first"
    try:
        with storage.acting():  # and its action is slow
            sleeper.join(3)
            assert got.get("sleeper") == 3, f"the signalled message waited for the 30 s safety look: {got}"
    finally:
        release.set()
        storage.stopping = True
        storage.wake_all()


def test_network_work_has_a_lane_of_its_own(tmp_path: Path):
    """Commands whose action needs the network go to the network lane (queue "edge-net") and
    are run by its workers; the rest by the local workers. Recovery keeps both lanes."""
    class ByThread(Recorder):
        def run(self, seq: int) -> None:
            with queue.acting():  # as the runner does around an action: counted in this worker's lane only
                ran_by[seq] = (threading.current_thread().name, queue.storage._acting, queue.net_storage._acting)
            super().run(seq)

    ran_by: dict[int, tuple[str, int, int]] = {}
    store = Store(str(tmp_path / "agent.db"))
    journal = Journal(store)
    recorder = ByThread()
    queue = TaskQueue(store, journal, workers=1, network_workers=1, is_network=lambda a: a == "web")
    workers = Workers(queue, recorder)
    try:
        web, _ = queue.submit(NewCommand(action="web", args={}, id="w"))
        local, _ = queue.submit(NewCommand(action="gpio.set", args={}, id="g"))
        lanes = dict(store.query("select queue, count(*) from task group by queue"))
        assert lanes == {"edge-net": 1, "edge": 1}
        assert queue.recover() == []
        assert dict(store.query("select queue, count(*) from task group by queue")) == lanes
        workers.start(None)
        recorder.wait_for(2)
        assert ran_by == {web.seq: ("net-0", 0, 1), local.seq: ("worker-0", 1, 0)}
    finally:
        workers.stop(5)
        store.close()


def test_a_success_is_recorded_in_the_transaction_that_takes_the_next_message(tmp_path: Path):
    """A worker records its last success together with taking (and claiming) its next message: one
    commit for both; its after() runs once that committed; the last one is recorded at stop."""
    events: list[tuple[str, int, int]] = []

    class Outcome:
        def __init__(self, seq: int) -> None:
            self.seq = seq

        def record(self, cur) -> None:
            cur.execute("insert into meta (key, value) values (?, 'done')", (f"done-{self.seq}",))
            events.append(("record", self.seq, id(cur)))

        def after(self) -> None:
            events.append(("after", self.seq, 0))

    class Deferring(Recorder):
        def begin(self, cur, seq: int) -> int:
            events.append(("claim", seq, id(cur)))
            return seq

        def complete(self, seq: int, defer: bool = False) -> Outcome:
            self.run(seq)
            return Outcome(seq)

    store = Store(str(tmp_path / "agent.db"))
    journal = Journal(store)
    runner = Deferring()
    queue = TaskQueue(store, journal, workers=1)
    workers = Workers(queue, runner)
    try:
        seqs = []
        with store.transaction() as cur:
            for i in range(3):
                row, _ = queue.submit(NewCommand(action="t", args={}, id=f"c{i}"), cur)
                seqs.append(row.seq)
        workers.start(None)
        runner.wait_for(3)
    finally:
        assert workers.stop(5)
    a, b, c = seqs
    kinds = [(k, s) for k, s, _ in events]
    assert kinds == [("claim", a), ("record", a), ("claim", b), ("after", a), ("record", b), ("claim", c),
                     ("after", b), ("record", c), ("after", c)], kinds
    cursor = {(k, s): cur for k, s, cur in events}
    assert cursor[("record", a)] == cursor[("claim", b)] and cursor[("record", b)] == cursor[("claim", c)]
    assert {k for (k,) in store.query("select key from meta where value = 'done'")} == {f"done-{s}" for s in seqs}
    store.close()


def test_the_last_success_before_a_stop_is_recorded(tmp_path: Path):
    """A worker that stops right after a success (no next take) still records it, then runs after()."""
    events: list[str] = []

    class Outcome:
        def record(self, cur) -> None:
            cur.execute("insert into meta (key, value) values ('last', 'done')")
            events.append("record")

        def after(self) -> None:
            events.append("after")

    class StopsAfterOne(Recorder):
        def complete(self, seq: int, defer: bool = False) -> Outcome:
            queue.storage.stopping = True  # the stop comes while this command finishes
            self.run(seq)
            return Outcome()

    store = Store(str(tmp_path / "agent.db"))
    queue = TaskQueue(store, Journal(store), workers=1)
    workers = Workers(queue, StopsAfterOne())
    queue.submit(NewCommand(action="t", args={}, id="only"))
    workers.start(None)
    assert workers.stop(5)
    assert events == ["record", "after"]
    assert store.query("select value from meta where key = 'last'") == [("done",)]
    store.close()


def test_a_message_that_cannot_be_started_fails_its_command_and_does_not_block_the_queue(tmp_path: Path):
    """A claim that raises (a bug of ours) is undone, its command is settled as failed through the runner
    (it would otherwise stay queued with no message, since start-up no longer rebuilds the queue), and the
    next message runs."""
    class Breaks(Recorder):
        def __init__(self) -> None:
            super().__init__()
            self.failed: list[tuple[int, str]] = []

        def begin(self, cur, seq: int) -> int:
            if seq == broken.seq:
                cur.execute("update commands set attempts = 99 where seq = ?", (seq,))  # undone by the savepoint
                raise KeyError("boom")
            return seq

        def complete(self, seq: int | None, defer: bool = False) -> None:
            if seq is not None:  # the runner is handed None for a message that did not start
                self.run(seq)

        def fail_unstartable(self, cur, seq: int, error: tuple[str, str]) -> None:
            self.failed.append((seq, error[0]))
            settle(cur, seq, error)

    store = Store(str(tmp_path / "agent.db"))
    journal = Journal(store)

    def settle(cur, seq: int, error: tuple[str, str]) -> None:
        journal.finish(cur, seq, "failed", error=error)

    runner = Breaks()
    queue = TaskQueue(store, journal, workers=1)
    workers = Workers(queue, runner)
    try:
        broken, _ = queue.submit(NewCommand(action="t", args={}, id="broken"))
        fine, _ = queue.submit(NewCommand(action="t", args={}, id="fine"))
        workers.start(None)
        assert runner.wait_for(1) == [fine.seq]
        row = journal.get("broken")
        assert (row.state, row.error_type, row.attempts) == ("failed", "internal_error", 0)
        assert runner.failed == [(broken.seq, "internal_error")]
    finally:
        workers.stop(5)
        store.close()
