"""The command queue: Huey's storage wired to the journal, and the worker threads.

Huey is used here for the storage and serialization of one small message per command,
``run_command(seq)``: its SQLite tables (``task`` and ``schedule``) live in the agent's
database, so a command enters the journal and the queue in one transaction, and the
message is pickled by Huey but made only here, from journal rows (never from network
data). Only :class:`QueueStorage`, the storage adapter, touches Huey's tables.

Huey's consumer is not used; two of its ways would break what the agent promises:
- Its idle workers poll, with up to 10 s of delay: here a worker blocks on a condition
  that in-process enqueues signal, and that other processes poke awake
  (:mod:`edge_agent.device.poke`), so pickup takes milliseconds and idle costs nothing.
- It deletes a task before running it, so a crash could lose it: here the journal keeps
  the command ``running`` until it has an outcome, and :meth:`TaskQueue.recover` puts back
  what a crash left. A worker (:class:`Workers`) takes a message and claims its command in
  one transaction, runs the action outside any, and records the outcome with its next take.

Work that needs the network runs in a lane of its own (queue name ``edge-net``, its own
workers), so requests hanging until their timeouts never hold up local work.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any, Protocol

from huey import Huey
from huey.storage import SqliteStorage

from edge_agent.device.commands import Command, NewCommand
from edge_agent.device.journal import MAX_INTERRUPTS, Journal
from edge_agent.device.poke import PokeListener
from edge_agent.device.store import DiskFull, Store
from edge_agent.errors import StorageError

__all__ = ["Deferred", "Executor", "QueueStorage", "TaskQueue", "Workers"]

log = logging.getLogger("edge_agent.taskqueue")

#: the Huey queue name of the network lane (the local one is "edge")
NET_QUEUE = "edge-net"

#: how often an idle worker looks for work nobody poked about (a missed poke)
SAFETY_INTERVAL = 30.0


class Executor(Protocol):
    """What workers run messages with (the :class:`~edge_agent.device.runner.Runner`)."""

    def begin(self, cur: sqlite3.Cursor, seq: int) -> Any: ...

    def fail_unstartable(self, cur: sqlite3.Cursor, seq: int, error: tuple[str, str]) -> None: ...

    def complete(self, step: Any, defer: bool = False) -> Any:
        """Run a begun step. With ``defer``, a success comes back unrecorded, as a
        :class:`Deferred`; anything else (recorded already) as None."""


class Deferred(Protocol):
    """A success left to the worker (the runner's Finish): :meth:`record` is called in the
    transaction that takes the worker's next message (one commit per command less), and
    :meth:`after` once that committed."""

    cmd: Command
    said_full: bool  # the worker said the disk is full while it holds this outcome

    def record(self, cur: sqlite3.Cursor) -> Any: ...

    def after(self) -> None: ...


class QueueStorage(SqliteStorage):
    """Huey's SQLite storage on the agent's shared connection, with a blocking dequeue.

    ``dequeue`` returns the next ready message, moving due scheduled ones first, or
    waits until an enqueue signals, the next scheduled one is due, or :meth:`wake_all`.
    """

    blocking = True

    def __init__(self, name: str = "edge", store: Store | None = None, **kwargs: Any):
        assert store is not None
        self.store = store
        self.cond = threading.Condition()
        self._generation = 0
        self.stopping = False
        # Who may take the next message without being woken (see signal): workers not
        # asleep in take(), and those of them inside an action.
        self.awake = 0
        self._acting = 0
        self._seen = threading.local()  # per worker: the signal generation before its last take
        super().__init__(name=name, filename=store.path, **kwargs)

    # Huey reaches the database through ``conn`` and ``db()``: route both to the Store.
    @property
    def conn(self) -> sqlite3.Connection:
        return self.store.conn

    def db(self, commit: bool = False, close: bool = False) -> Any:
        return self.store.transaction() if commit else self.store.reading()

    def close(self) -> bool:
        return False

    # --- signalling

    def signal(self) -> None:
        """A message is ready. A sleeping worker is woken only when no awake worker is free
        to take it (every awake one is inside an action): a burst of quick commands is then
        run by one or two threads, not by four taking turns at the GIL and the database lock,
        while a slow action never holds up the next command. A free worker that then takes
        other work passes the message on (see _pop and acting)."""
        with self.cond:
            self._generation += 1
            if self.awake <= self._acting:
                self.cond.notify()

    @contextlib.contextmanager
    def acting(self) -> Iterator[None]:
        """Around an action. A signal that came after this worker's last take may have
        counted on it being free: if no other awake worker is free, a sleeping one is woken."""
        with self.cond:
            self._acting += 1
            if self._generation != getattr(self._seen, "generation", None) and self.awake <= self._acting:
                self.cond.notify()
        try:
            yield
        finally:
            with self.cond:
                self._acting -= 1

    def _more_work(self) -> None:
        with self.cond:
            # The worker that took a message is about to be busy: if it was the last free one,
            # the rest of the work needs a sleeper.
            if self.awake - self._acting <= 1:
                self.cond.notify()

    def wake_all(self) -> None:
        with self.cond:
            self._generation += 1
            self.cond.notify_all()

    # --- queue

    def enqueue(self, data: bytes, priority: float | None = None) -> None:
        super().enqueue(data, priority)
        self.signal()

    def enqueue_in(self, cur: sqlite3.Cursor, data: bytes, eta: float | None, now: float, priority: int = 0) -> None:
        """Add a message inside the caller's transaction; call :meth:`signal` after commit."""
        if eta is not None and eta > now:
            cur.execute("insert into schedule (queue, data, timestamp) values (?, ?, ?)", (self.name, data, eta))
        else:
            cur.execute("insert into task (queue, data, priority) values (?, ?, ?)", (self.name, data, priority))

    def add_to_schedule(self, data: bytes, ts: datetime) -> None:
        # Huey passes naive UTC datetimes; store real unix time.
        stamp = ts.replace(tzinfo=UTC).timestamp() if ts.tzinfo is None else ts.timestamp()
        self.sql("insert into schedule (queue, data, timestamp) values (?, ?, ?)", (self.name, data, stamp), commit=True)
        self.signal()

    def read_schedule(self, ts: datetime) -> list[bytes]:
        stamp = ts.replace(tzinfo=UTC).timestamp() if ts.tzinfo is None else ts.timestamp()
        with self.store.transaction() as cur:
            rows = cur.execute("delete from schedule where queue = ? and timestamp <= ? returning data, timestamp",
                               (self.name, stamp)).fetchall()
        return [bytes(d) for d, _ in sorted(rows, key=lambda r: r[1])]

    def take_over(self, cur: sqlite3.Cursor, lane: str) -> None:
        """Move the messages of queue ``lane`` to this one, in the caller's transaction."""
        for table in ("task", "schedule"):
            cur.execute(f"update {table} set queue = ? where queue = ?", (self.name, lane))

    def _pop(self, now: float, then: Callable[[sqlite3.Cursor, bytes], Any] | None = None,
             first: Callable[[sqlite3.Cursor], None] | None = None) -> tuple[bytes | None, Any, float | None]:
        # With ``then``, one write transaction does ``first`` (records the worker's last
        # outcome), takes the message and does what ``then`` does with it (the runner claims
        # its command): one commit per command where there were three.
        with (self.store.transaction() if then is not None else self.store.reading()) as cur:
            if first is not None:
                first(cur)
            # Due scheduled messages first, found with an indexed read (a DELETE ... WHERE
            # over the schedule would be one more write statement per command).
            due = cur.execute("select id from schedule where queue = ? and timestamp <= ? order by timestamp, id "
                              "limit 1", (self.name, now)).fetchone()
            row = None
            if due is not None:
                row = cur.execute("delete from schedule where id = ? returning data", due).fetchone()
            if row is None:
                row = cur.execute(
                    "delete from task where id = (select id from task where queue = ? "
                    "order by priority desc, id limit 1) returning data", (self.name,)).fetchone()
            if row is not None:
                more = cur.execute("select exists (select 1 from task where queue = ?) or exists (select 1 from "
                                   "schedule where queue = ? and timestamp <= ?)", (self.name, self.name, now)).fetchone()[0]
                if more:
                    self.store.after_commit(self._more_work)
                data = bytes(row[0])
                return data, then(cur, data) if then is not None else None, None
            nxt = cur.execute("select min(timestamp) from schedule where queue = ?", (self.name,)).fetchone()[0]
        return None, None, nxt

    def dequeue(self) -> bytes | None:
        got = self.take()
        return None if got is None else got[0]

    def take(self, then: Callable[[sqlite3.Cursor, bytes], Any] | None = None,
             first: Callable[[sqlite3.Cursor], None] | None = None) -> tuple[bytes, Any] | None:
        """The next ready message and what ``then(cur, message)`` returned in the transaction
        that took it; None after waiting up to ``SAFETY_INTERVAL`` (so the caller's loop comes
        round and can show it is alive). ``first(cur)`` runs in the first look's transaction,
        which commits before any wait."""
        assert first is None or then is not None, "first needs a write transaction"
        end = time.monotonic() + SAFETY_INTERVAL
        while not self.stopping:
            generation = self._generation
            self._seen.generation = generation
            data, result, next_eta = self._pop(time.time(), then, first)
            first = None
            if data is not None:
                return data, result
            left = end - time.monotonic()
            if left <= 0:
                return None
            timeout = left if next_eta is None else min(left, max(0.0, next_eta - time.time()))
            with self.cond:
                if generation == self._generation and not self.stopping:
                    self.awake -= 1
                    try:
                        self.cond.wait(timeout)
                    finally:
                        self.awake += 1
        return None


def run_command(seq: int) -> None:
    """The task Huey's messages name. Never called: :class:`Workers` run a message in two steps."""
    raise NotImplementedError("queued commands are run by the daemon's workers")


# Huey names a message's task "<module>.<name>" and reads only names it knows: this is the
# name messages carried before the daemon moved to edge_agent/device, so a queue that a daemon
# of the earlier layout left is still read (the code moved; the name must not).
run_command.__module__ = "edge_agent.runner"


class TaskQueue:
    """What is queued: commands enter the journal and a lane together (:meth:`submit`), are
    adopted from other processes (:meth:`adopt`), wait for a retry or the network, and are put
    back after a stop (:meth:`recover`). :class:`Workers` take them off the lanes."""

    def __init__(self, store: Store, journal: Journal, *, workers: int = 4, network_workers: int = 0,
                 is_network: Callable[[str], bool] = lambda action: False,
                 on_submitted: Callable[[sqlite3.Cursor, Command], None] | None = None):
        self.store = store
        self.journal = journal
        self.huey = Huey("edge", results=False, utc=True, storage_class=QueueStorage, store=store)
        self.storage: QueueStorage = self.huey.storage
        # Two lanes: work that needs the network (``is_network(action)``) has workers of its own,
        # so hung web requests cannot hold up a GPIO command. Same tables, its own queue name.
        self.network_workers = network_workers
        self.is_network = is_network
        self.net_storage = QueueStorage(NET_QUEUE, store=store) if network_workers else self.storage
        #: (queue, thread name, how many workers) per lane
        self.lanes = [(self.storage, "worker", workers)] + (
            [(self.net_storage, "net", network_workers)] if network_workers else [])
        self._run = self.huey.task(name="run_command")(run_command)
        self._template = self.huey._registry.create_message(self._run.s(0))  # (see message())
        # Message ids: unique without a call to the OS's random source per message (Huey
        # only carries them; nothing here reads them): this process's random part, a count.
        self._id_part, self._id_count = uuid.uuid4().hex[:20], itertools.count(1)  # (next() of a count: atomic)
        self.on_submitted = on_submitted
        self._adopt_lock = threading.Lock()
        self._adopted_upto = 0  # the highest seq looked at for commands of other processes
        self._lane_of = threading.local()  # the lane of the current worker thread (see serve)

    # ----------------------------------------------------------------- entering the queue

    def message(self, seq: int) -> bytes:
        """Huey's message for command ``seq``: what ``huey.serialize_task(run_command.s(seq))`` makes,
        from a template (Huey's task objects cost more than the rest of queueing a command)."""
        return self.huey.serializer.serialize(self._template._replace(id=f"{self._id_part}{next(self._id_count):012x}",
                                                                         args=(seq,)))

    def seq_of(self, message: bytes) -> int:
        """The command seq a message names (a message of another task is refused)."""
        got = self.huey.serializer.deserialize(message)
        if got.name != self._template.name or len(got.args) != 1:
            raise ValueError(f"not a run_command message: {got.name}{got.args!r}"[:200])
        return int(got.args[0])

    def lane(self, action: str) -> QueueStorage:
        """The queue that runs ``action``: the network lane or the local one."""
        return self.net_storage if self.network_workers and self.is_network(action) else self.storage

    def put_in(self, cur: sqlite3.Cursor, cmd: Command, *, first: bool = False) -> None:
        """Queue an accepted journal row, inside the caller's transaction; ``first``: ahead of
        the line (a command a kill interrupted was at its head)."""
        eta = cmd.next_attempt or cmd.not_before
        self.lane(cmd.action).enqueue_in(cur, self.message(cmd.seq), eta, time.time(), priority=1 if first else 0)

    def submit(self, new: NewCommand, cur: sqlite3.Cursor | None = None) -> tuple[Command, bool]:
        """Journal and queue ``new`` in one transaction (or the caller's); (row, created)."""
        if cur is None:
            with self.store.transaction() as own:
                row, created = self._submit(own, new)
        else:
            row, created = self._submit(cur, new)
        if created:
            self.store.after_commit(self.lane(row.action).signal)  # (the caller's transaction: once it commits)
        return row, created

    def _submit(self, cur: sqlite3.Cursor, new: NewCommand) -> tuple[Command, bool]:
        row, created = self.journal.add(cur, new, enqueued=True)
        if created:
            self.put_in(cur, row)
            if self.on_submitted is not None:
                self.on_submitted(cur, row)
        return row, created

    def adopt(self) -> int:
        """Queue the commands other processes wrote since the last look."""
        with self._adopt_lock:
            head = self.journal.last_seq()
            if head <= self._adopted_upto:
                return 0
            total = 0
            while self._adopted_upto < head and not self.storage.stopping:
                upto = min(head, self._adopted_upto + 2000)
                put = []
                with self.store.transaction() as cur:
                    rows = self.journal.unadopted(cur, self._adopted_upto, upto)
                    for cmd in rows:
                        if cmd.state == "queued":
                            self.put_in(cur, cmd)
                            put.append(cmd.action)
                            if self.on_submitted is not None:
                                self.on_submitted(cur, cmd)
                    # Remembered with the messages: the next start resumes after it.
                    self.store.set_meta(cur, "adopted", str(upto))
                self._adopted_upto = upto
                total += len(rows)
                for action in put:
                    self.lane(action).signal()
            if total:
                # Other processes commit without an fsync (a loop of .delay() would pay one
                # each): one fsync here covers the burst.
                self.store.flush_soon()
            return total

    def release_parked(self) -> int:
        """Run every command parked for the network now (its target came back)."""
        now = time.time()
        with self.store.transaction() as cur:
            rows = self.journal.release_parked(cur, now)
            for seq, action in rows:
                # The message already scheduled for later stays; the claim makes it a no-op.
                self.lane(action).enqueue_in(cur, self.message(seq), None, now)
        for _, action in rows:
            self.lane(action).signal()
        return len(rows)

    def retry_at(self, cur: sqlite3.Cursor, cmd: Command, when: float) -> None:
        self.lane(cmd.action).enqueue_in(cur, self.message(cmd.seq), when, time.time())

    def depth(self) -> int:
        """How many commands are queued or running."""
        return self.journal.depth()

    # ----------------------------------------------------------------- for the workers and the runner

    def serve(self, storage: QueueStorage) -> None:
        """Called by a worker thread as it starts: the lane it takes from (see :meth:`acting`)."""
        self._lane_of.storage = storage

    @contextlib.contextmanager
    def acting(self) -> Iterator[None]:
        """Around an action in a worker (the runner enters it): its lane knows it is busy."""
        storage = getattr(self._lane_of, "storage", None)
        if storage is None:  # not a worker thread (a test running a command directly)
            yield
            return
        with storage.acting():
            yield

    @property
    def stopping(self) -> bool:
        """True once the workers stop (:meth:`Workers.stop`)."""
        return self.storage.stopping

    # ----------------------------------------------------------------- recovery

    def recover(self, reruns: Callable[[Command], bool] = lambda cmd: True) -> list[Command]:
        """Settle what a stop or crash left, at a cost that does not grow with the backlog; returns
        the commands that ended ``interrupted`` (to be reported).

        Huey's tables are durable and change in the same transactions as the journal, so every
        ``queued`` command still has its message. What a kill leaves is the ``running`` commands
        (their messages were taken): they get a message at the head of the line. Commands other
        processes wrote are adopted after start-up (:meth:`Workers.start`), from the last seq adopted.
        """
        with self.store.transaction() as cur:
            lanes = self.store.get_meta("lanes")
            if lanes != "1" and not self.network_workers:
                # The network lane was turned off (or the last run did not say): its messages move
                # to the local one. With the lane on, nothing is scanned.
                self.storage.take_over(cur, NET_QUEUE)
            if lanes != str(len(self.lanes)):
                self.store.set_meta(cur, "lanes", str(len(self.lanes)))
            found = self.journal.recover(cur, reruns)
            for cmd in found.rerun:
                self.put_in(cur, cmd, first=True)
            self._adopted_upto = int(self.store.get_meta("adopted") or 0)
        if found.rerun:
            log.warning("running again %d command(s) that a stop interrupted: %s", len(found.rerun),
                        ", ".join(c.id for c in found.rerun[:10]))
        if found.interrupted:
            log.error("%d command(s) that a stop interrupted are not run again (at_most_once, or interrupted %d "
                      "times): marked failed (interrupted): %s", len(found.interrupted), MAX_INTERRUPTS,
                      ", ".join(c.id for c in found.interrupted[:10]))
        return found.interrupted


class Workers:
    """The worker threads of the queue's lanes, and the thread that adopts what other processes
    queue (woken by their poke). A worker takes a message and claims its command in one
    transaction, runs the action with ``runner`` outside any, and records a success in the
    transaction of its next take; Huey's task function is never called."""

    def __init__(self, queue: TaskQueue, runner: Executor):
        self.queue = queue
        self.store = queue.store
        self.runner = runner
        self._threads: list[threading.Thread] = []
        self._busy = 0
        self.processed = 0
        self._busy_lock = threading.Lock()
        self._poke: PokeListener | None = None
        # Per worker: when its loop last came round, and since when it runs a command.
        self._beats: dict[str, float] = {}
        self._busy_since: dict[str, float | None] = {}

    def start(self, poke_path: str | None) -> None:
        for storage, name, count in self.queue.lanes:
            for i in range(count):
                with storage.cond:
                    storage.awake += 1
                t = threading.Thread(target=self._work, args=(storage,), name=f"{name}-{i}", daemon=True)
                t.start()
                self._threads.append(t)
        if poke_path is not None:
            self._poke = PokeListener(poke_path)
        # Commands other processes queued while the daemon was down are adopted here, after
        # start-up (READY does not wait for a backlog of them), in batches, in their order.
        t = threading.Thread(target=self._listen, name="poke", daemon=True)
        t.start()
        self._threads.append(t)

    def _listen(self) -> None:
        look = True  # the first look: what was queued while the daemon was down
        while not self.queue.stopping:
            if not look and (self._poke is None or not self._poke.wait()):
                return
            try:
                self.queue.adopt()
                look = False
            except DiskFull:  # the store said so; the commands wait in the journal
                look = True
                self.store.wait_after_full(5.0, fallback=1.0)
            except Exception:
                log.exception("could not take commands queued by another process; trying again in 1s")
                look = True
                time.sleep(1.0)

    def _claim(self, cur: sqlite3.Cursor, data: bytes) -> Any:
        """In the transaction that takes message ``data``: the runner claims its command."""
        cur.execute("savepoint claim")
        try:
            seq = self.queue.seq_of(data)
            step = self.runner.begin(cur, seq)
        except StorageError:
            raise  # all rolled back with the message, which stays queued
        except Exception as exc:
            # Not a poison message blocking the queue: the message is taken, the claim undone,
            # and the command ends failed with the error (a bug of ours), so it is not left
            # queued without a message.
            log.exception("a queued message could not be started")
            cur.execute("rollback to claim")
            step = None
            self._fail_unstartable(cur, data, exc)
        cur.execute("release claim")
        return step

    def _fail_unstartable(self, cur: sqlite3.Cursor, data: bytes, exc: Exception) -> None:
        try:
            seq = self.queue.seq_of(data)
        except Exception:
            return  # not one of our messages: nothing to settle
        cur.execute("savepoint unstartable")
        try:
            self.runner.fail_unstartable(cur, seq, ("internal_error", f"could not be started: {type(exc).__name__}: {exc}"))
        except StorageError:
            raise
        except Exception:
            log.exception("could not record that command #%s could not be started", seq)
            cur.execute("rollback to unstartable")
        cur.execute("release unstartable")

    def _work(self, storage: QueueStorage) -> None:
        self.queue.serve(storage)
        try:
            self._work_loop(storage)
        finally:
            with storage.cond:
                storage.awake -= 1  # a worker that ended cannot take anything

    def _work_loop(self, storage: QueueStorage) -> None:
        name = threading.current_thread().name
        pending: Deferred | None = None  # the last success, recorded in the transaction of the next take
        try:
            while not storage.stopping:
                self._beats[name] = time.monotonic()
                recorded: list[Deferred] = []

                def first(cur: sqlite3.Cursor, p: Any = pending, out: list[Deferred] = recorded) -> None:
                    p.record(cur)
                    out.append(p)

                try:
                    got = storage.take(self._claim, first if pending is not None else None)
                except DiskFull as exc:
                    # Rolled back, the pending outcome too: it is kept, and tried again once the
                    # store has space (the store said the disk is full; this says which command waits).
                    if pending is not None and not pending.said_full:
                        pending.said_full = True
                        log.error("command %s (%s) ran, and its outcome cannot be recorded: %s; kept until there "
                                  "is space", pending.cmd.id, pending.cmd.action, exc)
                    self.store.wait_after_full(1.0, fallback=1.0, stop=lambda: storage.stopping)
                    continue
                except StorageError as exc:  # rolled back, the pending outcome too: it is tried again
                    log.error("reading the queue failed (%s); trying again in 1s", exc)
                    time.sleep(1.0)
                    continue
                except Exception:
                    log.exception("reading the queue failed; trying again in 1s")
                    time.sleep(1.0)
                    continue
                if recorded:  # take returned: its transaction committed
                    pending = None
                    self._after(recorded[0])
                if got is None:
                    continue
                with self._busy_lock:
                    self._busy += 1
                self._busy_since[name] = time.monotonic()
                try:
                    pending = self.runner.complete(got[1], defer=True)
                except StorageError as exc:
                    # The command stays `running` in the journal: settled at the next start.
                    cmd = getattr(got[1], "cmd", None)
                    log.error("could not record the outcome of command %s: %s", getattr(cmd, "id", "?"), exc)
                except Exception:
                    log.exception("worker %s: unexpected error", name)
                finally:
                    self._busy_since[name] = None
                    with self._busy_lock:
                        self._busy -= 1
                        self.processed += 1
        finally:
            if pending is not None:  # stopping: the last success on its own
                try:
                    with self.store.transaction() as cur:
                        pending.record(cur)
                    self._after(pending)
                except StorageError as exc:
                    log.error("could not record the outcome of command %s (it runs again at the next start): %s",
                              pending.cmd.id, exc)

    @staticmethod
    def _after(outcome: Deferred) -> None:
        try:
            outcome.after()
        except Exception:
            log.exception("after recording a command's outcome")

    def wedged(self, task_timeout: float, now: float | None = None) -> list[str]:
        """Workers that are dead, stuck outside a command, or running one longer than ``task_timeout``."""
        now = time.monotonic() if now is None else now
        out = []
        for t in self._threads:
            if t.name == "poke":
                continue
            busy = self._busy_since.get(t.name)
            if not t.is_alive():
                out.append(f"{t.name} (dead)")
            elif busy is not None and now - busy > task_timeout:
                out.append(f"{t.name} (one command for {now - busy:.0f}s)")
            elif busy is None and now - self._beats.get(t.name, now) > 2 * SAFETY_INTERVAL + 10:
                out.append(f"{t.name} (stuck)")
        return out

    @property
    def busy(self) -> int:
        return self._busy

    def stop(self, timeout: float) -> bool:
        """Stop taking work; wait up to ``timeout`` s for running commands. True if all finished."""
        for storage, _, _ in self.queue.lanes:
            storage.stopping = True
            storage.wake_all()
        if self._poke is not None:
            self._poke.close()
        end = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, end - time.monotonic()))
        return not any(t.is_alive() for t in self._threads)
