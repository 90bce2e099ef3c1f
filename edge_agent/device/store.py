"""The one SQLite file that holds everything durable: commands, the queue, the outbox, schedule state.

One connection per process, guarded by a lock: SQLite has one writer at a time
anyway, and sharing the connection lets the journal and Huey's queue tables change
in the same transaction. WAL mode; ``synchronous=NORMAL`` by default survives any
process crash (kill -9), and :meth:`Store.flush` makes the last writes power-cut safe
without an fsync per command (see the README's "Durability" section).

One thread, ``store-sync``, started on first need, does the slow disk work off the
commit path: the delayed fsync of :meth:`Store.flush_soon` and, in the daemon
(``background=True``), the WAL checkpoints. SQLite's own checkpoint runs inside the
commit that crosses 1,000 WAL pages, with our lock held and two fsyncs in it: every
~60th command waited ~1 ms more for it (the p99 of the MQTT latency benchmark). Here
a second connection checkpoints (PASSIVE: writers go on meanwhile) every
``CHECKPOINT_EVERY`` commits.

A full disk (SQLITE_FULL) raises :class:`DiskFull` and makes the store *full*
(:attr:`Store.full`) until a probe in ``store-sync``, run only while it is full, finds
``RESUME_FREE`` bytes free again and a small write succeeds; writers that must not lose
what they hold wait with :meth:`Store.wait_space`. While little space is left (below
``LOW_SPACE``, or after the disk was full) the WAL is kept small: every ``TIGHT_EVERY``
commits, the committing thread checkpoints and truncates it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from edge_agent.errors import StorageError

__all__ = ["RESUME_FREE", "SCHEMA_VERSION", "DiskFull", "Store", "disk_report", "free_space", "translate_sqlite_error"]

log = logging.getLogger("edge_agent.store")

SCHEMA_VERSION = 3
CHECKPOINT_EVERY = 256  # commits (~4 WAL pages each) between background checkpoints: about SQLite's 1,000 pages
WAL_RESTART_FRAMES = 4000  # a WAL this long is checkpointed to the end, holding the writers briefly
AUTOCHECKPOINT_BACKSTOP = 20000  # pages: SQLite checkpoints in a commit only if the daemon's fall far behind
# A full disk. The probe runs only while the store is full; it writes only once the file
# system has RESUME_FREE bytes free, so a nearly full disk is not written to twice a second.
PROBE_EVERY = 0.5  # seconds between two looks while full
RESUME_FREE = 256 * 1024  # bytes free before writes are tried again (status says "full" below it)
# Below LOW_SPACE free (looked at with each checkpoint) or after the disk was full, the WAL, which
# never shrinks by itself and may reach ~4 MB between checkpoints, is truncated every TIGHT_EVERY
# commits: a redelivered backlog then cannot fill the disk again with WAL.
LOW_SPACE = 16 * 1024 * 1024
TIGHT_EVERY = 16
FULL_LOG_EVERY = 60.0  # seconds: a disk full again within this is logged at debug level

# Per paused job (job.pause): since when. Added without a schema version: a database of
# schema 3 gets it at its next open, and an older edge-agent still opens the file.
_PAUSED_JOBS = "create table if not exists paused_jobs (job text primary key, since real not null)"
# Per schedule source ("all", "group:<g>", "device"; fleet schedules): the version applied and its
# document (JSON; null for a tombstone or none), and the last rejection. Added as paused_jobs is;
# owned by edge_agent.device.desired.
_DESIRED = """create table if not exists desired_schedules (
    source text primary key,
    version integer,
    doc text,
    applied_at real,
    rejected_version integer,
    rejected_error text,
    rejected_at real
)"""

_SCHEMA = (
    # The command journal: one row per command, the source of truth for what must run.
    # seq is the rowid (max + 1, so in commit order). No AUTOINCREMENT: it rewrites
    # sqlite_sequence on every insert (a page more per command); seq never goes back because
    # pruning always keeps the newest row (GPIO writes and adoption are ordered by seq).
    """create table if not exists commands (
        seq integer primary key,
        id text not null unique,
        action text not null,
        args text not null,
        source text not null,
        state text not null,
        attempts integer not null default 0,
        created real not null,
        not_before real,
        deadline real,
        started real,
        finished real,
        next_attempt real,
        result text,
        error_type text,
        error_message text,
        reply_to text,
        correlation blob,
        enqueued integer not null default 0,
        parked integer not null default 0,
        max_attempts integer,
        interrupts integer not null default 0
    )""",
    # The commands a kill may have left `running`: found at start-up without reading the
    # backlog (a handful of rows, one small page touched when a command starts and ends).
    "create index if not exists commands_running on commands (seq) where state = 'running'",
    # Only failures are looked up by time (status, state); pruning scans, once an hour.
    "create index if not exists commands_failed on commands (finished) where state in ('failed', 'expired')",
    # Messages to publish, in order; retained state coalesces on `coalesce_key`.
    # AUTOINCREMENT: the publisher resumes after the last seq it sent, so a seq must never
    # come back after its row was delivered and deleted.
    """create table if not exists outbox (
        seq integer primary key autoincrement,
        topic text not null,
        payload blob not null,
        qos integer not null default 1,
        retain integer not null default 0,
        coalesce_key text,
        props text,
        created real not null
    )""",
    "create unique index if not exists outbox_coalesce on outbox (coalesce_key) where coalesce_key is not null",
    # Per scheduled job: when it was first seen (it never fires for instants before),
    # and the last planned instant handled. (job, planned instant) identifies a firing.
    """create table if not exists firings (
        job text primary key,
        since real not null,
        planned real,
        fired real
    )""",
    # Small facts the daemon shares with the CLI: pid, start time, link state, last error.
    "create table if not exists meta (key text primary key, value text not null)",
    _PAUSED_JOBS,
    _DESIRED,
)


class DiskFull(StorageError):
    """SQLITE_FULL: the transaction was rolled back for want of disk space."""


def free_space(path: str) -> int:
    """Bytes that may still be written on the file system holding ``path`` (root may use the reserve)."""
    st = os.statvfs(os.path.dirname(os.path.abspath(path)))
    return st.f_frsize * (st.f_bfree if os.geteuid() == 0 else st.f_bavail)


def _short_of_space(path: str) -> bool:
    try:
        return free_space(path) < RESUME_FREE
    except OSError:
        return False


def disk_report(store: Store) -> dict[str, Any]:
    """What ``status`` says of the disk holding ``store``: bytes free; full (fewer than RESUME_FREE
    free, the point below which the daemon writes nothing, or ``store`` is the daemon's and full);
    and the last full disk the daemon got over (``since``/``until``, unix time)."""
    free = store._free()
    last = store.get_meta("disk_full")
    return {"full": store.full or free < RESUME_FREE, "free_bytes": free, "last_full": json.loads(last) if last else None}


def translate_sqlite_error(exc: sqlite3.Error, path: str) -> StorageError:
    """A :class:`StorageError` that says what is wrong with the database at ``path``, in words."""
    text = str(exc)
    if "readonly" in text or "read-only" in text:
        msg = f"{path}: the database is read-only (check its permissions and those of its folder)"
    elif getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or "disk is full" in text:
        return DiskFull(f"{path}: the disk is full; nothing was written")
    elif "disk I/O error" in text and _short_of_space(path):
        # Making the -shm file (opening a database no process has open) fails this way on a full disk.
        return DiskFull(f"{path}: the disk is full ({text}); nothing was written")
    elif "not a database" in text or "malformed" in text or "file is encrypted" in text:
        msg = f"{path}: not an edge-agent database ({text})"
    elif "unable to open" in text:
        msg = f"{path}: cannot open the database (does its folder exist, and may we write there?)"
    elif "locked" in text:
        msg = f"{path}: the database stayed locked by another process ({text})"
    else:
        msg = f"{path}: database error: {text}"
    return StorageError(msg)


class Store:
    """An open database file with the edge-agent schema.

    ``transaction()`` yields a cursor inside ``BEGIN IMMEDIATE`` ... ``COMMIT``;
    nested calls from the same thread join the outer transaction.
    """

    def __init__(self, path: str, *, sync: str = "normal", create: bool = True, timeout: float = 10.0,
                 background: bool = False):
        self.path = path
        self.timeout = timeout
        self.sync = "full" if sync == "full" else "normal"
        self.lock = threading.RLock()
        self._depth = 0
        self._owner: int | None = None  # the thread inside transaction(), if any
        self._after: list[Callable[[], None]] = []  # what to call once the transaction commits
        self._background = background
        self._commits = 0
        self._changes = 0
        self._sync_cond = threading.Condition()
        self._flush_due: float | None = None
        self._checkpoint_due = False
        self._closing = False
        self._syncer: threading.Thread | None = None
        self.checkpoints = 0  # background checkpoints done (and of those, finished holding the writers)
        self.checkpoints_held = 0
        self._checkpoint_every = CHECKPOINT_EVERY  # TIGHT_EVERY while space is low
        # A full disk: since when (time.time()), and the probe's next look (monotonic).
        self.full_since: float | None = None
        self._probe_at: float | None = None  # guarded by _sync_cond
        self._first_probe = False
        self._said_full_at = -FULL_LOG_EVERY  # monotonic: a disk that keeps filling up is logged once a minute
        self._loud = True  # whether this full disk was logged (then so is its end)
        self._space = threading.Condition()  # guards full_since; notified when space returns
        self.on_full: list[Callable[[bool], None]] = []  # told when the store becomes full (True) and not (False)
        try:
            if create:
                folder = os.path.dirname(os.path.abspath(path))
                if not os.path.isdir(folder):
                    raise StorageError(f"{path}: folder {folder} does not exist")
                if not os.path.exists(path):
                    # Task data is pickled by Huey: the file is for its owner and group (the admins who
                    # may use the CLI) only, never for everyone.
                    os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o660))
            elif not os.path.exists(path):
                raise StorageError(f"{path}: no database yet (has the agent ever run with this config?)")
            self.conn = sqlite3.connect(path, timeout=timeout, isolation_level=None, check_same_thread=False)
            # 512-byte pages, SQLite's smallest (set before the first table exists): every commit
            # appends each page it changed to the WAL, and a command changes about 20 (its row and
            # index, Huey's message, replies, events: each table a page per transaction), so the
            # page size is the bytes written to the SD card per command (1 KiB pages: ~20 KB, these:
            # ~11 KB). The rows are small (a command ~200 B, an event ~100 B); larger values spill
            # into overflow pages. A database made with 1 KiB pages keeps them.
            self.conn.execute("pragma page_size=512")
            self.conn.execute("pragma journal_mode=wal")
            self.conn.execute(f"pragma synchronous={self.sync}")
            self.conn.execute("pragma cache_size=-2000")
            # Also in other processes (the CLI, a script calling .delay()): at SQLite's 1,000
            # pages, a WAL that the daemon's checkpoints keep between 1,000 and 4,000 pages
            # under load would make each of their commits run a checkpoint of its own.
            self.conn.execute(f"pragma wal_autocheckpoint={AUTOCHECKPOINT_BACKSTOP}")
            self.conn.execute("pragma temp_store=memory")
            if create:
                self._migrate()
        except sqlite3.Error as exc:
            raise translate_sqlite_error(exc, path) from exc

    def _migrate(self) -> None:
        version = self.conn.execute("pragma user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StorageError(f"{self.path}: written by a newer edge-agent (schema {version}); upgrade edge-agent")
        if version == SCHEMA_VERSION:
            with contextlib.suppress(sqlite3.OperationalError):  # (read-only: the daemon makes it at its start)
                self.conn.execute(_PAUSED_JOBS)  # (no write when it is there)
                self.conn.execute(_DESIRED)
            return
        with self.transaction() as cur:
            for sql in _SCHEMA:
                cur.execute(sql)
            # 1 -> 2: other processes' commands are found by a seq range scan, not an index
            # that cost a page write per command.
            cur.execute("drop index if exists commands_unadopted")
            # 2 -> 3: how often a kill interrupted a command (a command that keeps crashing the agent
            # must not make it crash-loop), and the index of running commands.
            columns = {r[1] for r in cur.execute("pragma table_info(commands)").fetchall()}
            if "interrupts" not in columns:
                cur.execute("alter table commands add column interrupts integer not null default 0")
            cur.execute(f"pragma user_version={SCHEMA_VERSION}")

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Cursor]:
        after: list[Callable[[], None]] = []
        with self.lock:
            cur = self.conn.cursor()
            if self._depth:
                self._depth += 1
                try:
                    yield cur
                finally:
                    self._depth -= 1
                return
            try:
                self._begin(cur)
            except sqlite3.Error as exc:
                raise self._translate(exc) from exc
            self._depth = 1
            self._owner = threading.get_ident()
            try:
                yield cur
                self.conn.commit()
                after = self._after
                if self._background:
                    self._count_commit()
            except sqlite3.Error as exc:
                self._rollback()
                raise self._translate(exc) from exc
            except BaseException:
                self._rollback()
                raise
            finally:
                self._depth = 0
                self._owner = None
                self._after = []
                cur.close()
        for fn in after:  # committed, and the lock is free for the threads they wake
            fn()

    def after_commit(self, fn: Callable[[], None]) -> None:
        """Call ``fn`` (a wake-up: a worker, the publisher) once the calling thread's transaction
        commits and the store is free, once however often it is asked; at once outside a
        transaction. A thread woken inside the transaction would only wait for the lock (and
        take the CPU from the thread that holds it); after a rollback it is not called."""
        if self._owner != threading.get_ident():
            fn()
        elif fn not in self._after:
            self._after.append(fn)

    def _count_commit(self) -> None:
        # Only commits that changed rows: an idle daemon's empty transactions (a worker's
        # safety look) must not start a checkpoint, which would write at idle.
        changes = self.conn.total_changes
        if changes != self._changes:
            self._changes = changes
            self._commits += 1
            if self._commits % self._checkpoint_every == 0:
                if self._checkpoint_every == TIGHT_EVERY:
                    self._truncate_wal()
                else:
                    self._request(checkpoint=True)

    def _truncate_wal(self) -> None:
        """Space is short: the WAL copied and cut to nothing now, in the commit that asked (under
        steady writes the store-sync thread lags behind), and whether space is still short."""
        try:
            self.conn.execute("pragma busy_timeout = 200")  # other processes' readers: not for long
            self.conn.execute("pragma wal_checkpoint(truncate)").fetchall()
            self.checkpoints += 1
        except sqlite3.Error as exc:
            if not isinstance(translate_sqlite_error(exc, self.path), DiskFull):
                log.warning("%s: checkpoint failed: %s", self.path, exc)
        finally:
            with contextlib.suppress(sqlite3.Error):
                self.conn.execute(f"pragma busy_timeout = {int(self.timeout * 1000)}")
        self._low_on_space()

    def _translate(self, exc: sqlite3.Error) -> StorageError:
        error = translate_sqlite_error(exc, self.path)
        if isinstance(error, DiskFull) and self._background:
            self._note_full()
        return error

    # ----------------------------------------------------------------- a full disk

    @property
    def full(self) -> bool:
        """Whether a write failed for want of space and the probe has not found space since."""
        return self.full_since is not None

    def _note_full(self) -> None:
        with self._space:
            if self.full_since is not None or self._closing:
                return
            self.full_since = time.time()
            self._checkpoint_every = TIGHT_EVERY
        with self._sync_cond:
            self._probe_at = time.monotonic()  # the first look at once: truncating the WAL may free enough
            self._first_probe = True
        loud = self._loud = time.monotonic() - self._said_full_at >= FULL_LOG_EVERY
        if loud:
            self._said_full_at = time.monotonic()
        log.log(logging.ERROR if loud else logging.DEBUG, "%s: the disk is full: writes wait (commands from MQTT "
                "stay with the broker, outcomes are kept) until %d KiB are free again", self.path, RESUME_FREE // 1024)
        self._request()
        self._tell(True)

    def _tell(self, full: bool) -> None:
        for listener in self.on_full:
            try:
                listener(full)
            except Exception:
                log.exception("telling of a %s disk", "full" if full else "writable")

    def wait_space(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s while the store is full; whether it is not full (at once, normally)."""
        with self._space:
            if self.full_since is not None:
                self._space.wait(timeout)
            return self.full_since is None

    def wait_after_full(self, timeout: float, *, fallback: float, stop: Callable[[], bool] | None = None) -> bool:
        """After a :class:`DiskFull`, before trying again. The daemon's store is full then and its
        probe says when space is back: wait for that up to ``timeout`` s (with ``stop``: until
        there is space or ``stop()``, looking every ``timeout`` s). A store without a probe (not
        the daemon's) never says: sleep ``fallback`` s instead. Returns whether it slept."""
        if not self.full:
            time.sleep(fallback)
            return True
        if stop is None:
            self.wait_space(timeout)
        else:
            while not stop() and not self.wait_space(timeout):
                pass
        return False

    def _free(self) -> int:
        try:
            return free_space(self.path)
        except OSError:
            return 0

    def _probe(self, side: sqlite3.Connection | None, first: bool) -> sqlite3.Connection | None:
        """One look while full. Writes only at the first look or once RESUME_FREE bytes are free:
        the WAL copied and truncated (it may hold much of the disk), then a small write; if that
        commits, the store is not full any more and every waiter goes on."""
        free = self._free()
        if first or free >= RESUME_FREE:
            side = self._checkpoint(side, truncate=True)
            free = self._free()
        if free >= RESUME_FREE:
            since = self.full_since or time.time()
            try:
                with self.transaction() as cur:  # what status shows as the last full disk
                    self.set_meta(cur, "disk_full", json.dumps({"since": since, "until": time.time()}))
            except StorageError:
                pass
            else:
                with self._sync_cond:
                    self._probe_at = None
                with self._space:
                    self.full_since = None
                log.log(logging.WARNING if self._loud else logging.DEBUG, "%s: %d KiB free again after %.0fs of a "
                        "full disk: writes go on", self.path, free // 1024, time.time() - since)
                self._tell(False)
                with self._space:  # the waiters last: the listeners (MQTT intake) know first
                    self._space.notify_all()
                return side
        with self._sync_cond:
            self._probe_at = time.monotonic() + PROBE_EVERY
        return side

    def _low_on_space(self) -> None:
        """Keep the WAL small while space is low (looked at with each background checkpoint)."""
        try:
            free = free_space(self.path)
        except OSError:
            return
        every = TIGHT_EVERY if free < LOW_SPACE or self.full_since is not None else CHECKPOINT_EVERY
        if every != self._checkpoint_every:
            log.info("%s: %.1f MiB free: the WAL is now checkpointed every %d commits%s", self.path, free / 2**20,
                     every, " and truncated" if every == TIGHT_EVERY else "")
            self._checkpoint_every = every

    def _begin(self, cur: sqlite3.Cursor) -> None:
        """BEGIN IMMEDIATE, waiting for another process's write with short sleeps: SQLite's own
        busy handler sleeps 1 ms, then 2, 5, 10 ms..., while the other side's write
        transactions last tens of microseconds (a loop of ``.delay()`` beside a busy daemon
        spent two thirds of its time asleep there)."""
        self.conn.execute("pragma busy_timeout = 0")
        try:
            delay, end = 0.00005, time.monotonic() + self.timeout
            while True:
                try:
                    cur.execute("begin immediate")
                    return
                except sqlite3.OperationalError as exc:
                    if "locked" not in str(exc) or time.monotonic() > end:
                        raise
                time.sleep(delay)
                delay = min(delay * 2, 0.002)
        finally:
            self.conn.execute(f"pragma busy_timeout = {int(self.timeout * 1000)}")

    def _rollback(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self.conn.rollback()

    @contextlib.contextmanager
    def reading(self) -> Iterator[sqlite3.Cursor]:
        """A cursor for reads outside any transaction (each statement sees committed data)."""
        with self.lock:
            cur = self.conn.cursor()
            try:
                yield cur
            except sqlite3.Error as exc:
                raise translate_sqlite_error(exc, self.path) from exc
            finally:
                cur.close()

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self.reading() as cur:
            return cur.execute(sql, params).fetchall()

    def get_meta(self, key: str) -> str | None:
        rows = self.query("select value from meta where key = ?", (key,))
        return rows[0][0] if rows else None

    def set_meta(self, cur: sqlite3.Cursor, key: str, value: str) -> None:
        cur.execute("insert into meta (key, value) values (?, ?) on conflict (key) do update set value = excluded.value", (key, value))

    def flush_soon(self, delay: float = 0.05) -> None:
        """Flush within ``delay`` seconds, or once a background checkpoint that is copying
        then ends; calls in between share one fsync (a burst of commands costs one, not one
        each)."""
        self._request(flush_by=time.monotonic() + delay)

    def _request(self, *, flush_by: float | None = None, checkpoint: bool = False) -> None:
        with self._sync_cond:
            if self._closing:
                return
            sooner = flush_by is not None and (self._flush_due is None or flush_by < self._flush_due)
            if sooner:
                self._flush_due = flush_by
            # (a bare call: something else changed, the probe's time: always a wake-up)
            news = sooner or (checkpoint and not self._checkpoint_due) or (flush_by is None and not checkpoint)
            self._checkpoint_due = self._checkpoint_due or checkpoint
            if self._syncer is None:
                thread = threading.Thread(target=self._sync_loop, name="store-sync", daemon=True)
                try:
                    thread.start()
                except RuntimeError as exc:  # no thread now (shutting down): the caller's commit stands
                    log.warning("%s: cannot start the store-sync thread: %s", self.path, exc)
                    return
                self._syncer = thread
            if news:  # (a flush due no sooner than the one it waits for: nothing to wake it for)
                self._sync_cond.notify()

    def _take_flush(self, *, due_only: bool) -> bool:
        """Whether to flush now (the request is taken); called with ``_sync_cond`` held."""
        due = self._flush_due
        if due is None or (due_only and due > time.monotonic()):
            return False
        self._flush_due = None
        return True

    def _sync_loop(self) -> None:
        side: sqlite3.Connection | None = None
        try:
            while True:
                with self._sync_cond:
                    while not self._closing and not self._checkpoint_due and (
                            self._flush_due is None or self._flush_due > time.monotonic()) and (
                            self._probe_at is None or self._probe_at > time.monotonic()):
                        dues = [d - time.monotonic() for d in (self._flush_due, self._probe_at) if d is not None]
                        self._sync_cond.wait(min(dues) if dues else None)
                    if self._closing:
                        return
                    checkpoint, self._checkpoint_due = self._checkpoint_due, False
                    flush = self._take_flush(due_only=True)
                    probe = self._probe_at is not None and self._probe_at <= time.monotonic()
                    first = probe and self._first_probe
                    if probe:
                        self._first_probe = False
                if flush:  # first: an fsync that is due never waits behind a checkpoint
                    self._flush_logged()
                if probe:
                    side = self._probe(side, first)
                elif checkpoint:
                    self._low_on_space()
                    side = self._checkpoint(side, truncate=self._checkpoint_every == TIGHT_EVERY)
        finally:
            if side is not None:
                with contextlib.suppress(sqlite3.Error):
                    side.close()

    def _checkpoint(self, side: sqlite3.Connection | None, *, truncate: bool = False) -> sqlite3.Connection | None:
        try:
            if side is None:
                # A short busy timeout: only a truncating checkpoint waits, for other processes'
                # readers, and it does so holding our writers.
                side = sqlite3.connect(self.path, timeout=0.2, isolation_level=None, check_same_thread=False)
                side.execute(f"pragma synchronous={self.sync}")
            if truncate:
                # Space is short: the WAL is copied and cut to nothing, with our writers held
                # (a passive checkpoint under steady writes never lets it start over).
                with self.lock:
                    side.execute("pragma wal_checkpoint(truncate)").fetchall()
                self.checkpoints_held += 1
                self.checkpoints += 1
                return side
            # Also fsyncs the WAL before it copies (synchronous NORMAL or FULL).
            frames = side.execute("pragma wal_checkpoint(passive)").fetchone()[1]
            if frames >= WAL_RESTART_FRAMES:
                # Under steady writes a checkpoint never catches up (commits land while it
                # copies), and the WAL only starts over after one has: copy the few frames
                # committed meanwhile with our writers held. A flush asked for is done
                # first, so that it does not wait for the writers' lock.
                with self._sync_cond:
                    flush = self._take_flush(due_only=False)
                if flush:
                    self._flush_logged()
                self.checkpoints_held += 1
                with self.lock:
                    side.execute("pragma wal_checkpoint(passive)").fetchall()
            self.checkpoints += 1
        except sqlite3.Error as exc:
            # Not fatal: the next request, or SQLite's own backstop, checkpoints again. On a full
            # disk (the database file cannot grow) it fails until space returns: said once.
            if not (self.full_since is not None and isinstance(translate_sqlite_error(exc, self.path), DiskFull)):
                log.warning("%s: background checkpoint failed: %s", self.path, exc)
        return side

    def _flush_logged(self) -> None:
        try:
            self.flush()
        except OSError as exc:
            log.warning("%s: could not fsync the WAL: %s", self.path, exc)

    def checkpoint(self) -> None:
        """Copy the WAL into the database file now (as SQLite would at the next commit after
        1,000 pages): after recovery rebuilt a deep queue, so the first commands do not wait
        for it."""
        with self.reading() as cur:
            cur.execute("pragma wal_checkpoint(passive)").fetchall()

    def flush(self) -> None:
        """Make every committed transaction durable against a power cut (one fsync of the WAL)."""
        wal = self.path + "-wal"
        try:
            fd = os.open(wal, os.O_RDONLY)
        except OSError:
            return
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def close(self) -> None:
        with self._sync_cond:
            self._closing = True
            self._sync_cond.notify()
        if self._syncer is not None:
            self._syncer.join(timeout=2)
        if self._flush_due is not None:  # asked for and not yet done
            self._flush_logged()
        with self.lock, contextlib.suppress(sqlite3.Error):
            self.conn.close()
