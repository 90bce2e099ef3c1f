"""The monitor's own SQLite file: devices, their events, the tasks made from them, GPIO states.

What it keeps and for how long (the retention): every event, task and GPIO change for
``keep`` seconds (default 30 days) after it was last updated, and at most ``max_tasks``
tasks, ``max_events`` events and ``max_gpio`` GPIO changes (beyond those, the oldest rows of the
device that holds the most go first). Devices are kept until they have said nothing for ``keep``; at most
``MAX_DEVICES`` are tracked (ids beyond that are ignored: anyone who may publish on
the broker could otherwise invent ids without end).

Its size is bounded in bytes too: past ``max_bytes`` of used pages rows go, the oldest of
the device that holds the most bytes first (:meth:`MonitorStore.prune_size`, checked after
every batch by the ingest thread): a device that floods the monitor loses its own history,
not another's. Freed pages are reused, so the file stays near ``max_bytes`` (plus the WAL,
cut back to ``WAL_MAX`` after each checkpoint). What one row holds is bounded at the boundary
(:mod:`.validate`), and what a read returns by ``RESPONSE_MAX`` bytes.

One writer (the ingest thread) applies batches in one transaction each, a savepoint per
device; readers (the web app) use a connection of their own (WAL: they never wait for
the writer). Memory is bounded by SQLite's page cache per connection (``CACHE_KIB``),
not by what is stored.

A task's row is the reduction of its events: the newest event (highest ``seq``) wins a
field it carries; an older one, arriving later through a backfill, only fills blanks.
Replies (which carry no ``seq``) set a task's status only while no event of it is known,
so the monitor also shows devices that send replies but no events.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from edge_agent.contract import text

__all__ = ["INTERNAL_PREFIX", "DeviceRow", "MonitorStore", "TaskQuery", "TERMINAL", "STATUSES"]

#: ids of the monitor's own commands (agent.history, agent.jobs): their events are kept, but they are not tasks
INTERNAL_PREFIX = "monitor:"
MAX_DEVICES = 10_000
CACHE_KIB = 4096
WAL_MAX = 16 << 20  # bytes the WAL file is cut back to after a checkpoint
RESPONSE_MAX = 2 << 20  # bytes of stored JSON one read returns at most (rows beyond wait for the next page)
FIELD_READ_MAX = 16 * 1024  # a stored field longer than this (written before the bounds) is read as a marker
# What a row weighs in a device's byte tally (see MonitorStore.prune_size) besides its JSON text: its other
# columns and its index entries, roughly (the tally only ranks devices, it need not be exact).
EVENT_ROW, TASK_ROW, GPIO_ROW = 150, 300, 80
#: task status after each event kind (``fired`` leaves the status alone)
EVENT_STATUS = {"received": "queued", "started": "running", "retried": "retrying", "succeeded": "succeeded",
                "failed": "failed", "expired": "expired", "revoked": "revoked"}
REPLY_STATUS = {"accepted": "queued", "succeeded": "succeeded", "failed": "failed", "rejected": "rejected",
                "expired": "expired", "revoked": "revoked"}
TERMINAL = frozenset({"succeeded", "failed", "rejected", "expired", "revoked"})
STATUSES = ("queued", "running", "retrying", "succeeded", "failed", "rejected", "expired", "revoked")

_SCHEMA = (
    """create table if not exists devices (
        device text primary key,
        online integer,
        status_ts real,
        state text,
        state_ts real,
        last_seen real not null,
        seq_hi integer not null default 0,
        history integer not null default 1,
        jobs text,
        jobs_ts real
    )""",
    # rowid is arrival order: the caps delete the oldest rows by it.
    """create table if not exists events (
        device text not null,
        seq integer not null,
        ts real not null,
        event text not null,
        id text,
        action text,
        doc text not null
    )""",
    "create unique index if not exists events_seq on events (device, seq)",
    "create index if not exists events_task on events (device, id)",
    "create index if not exists events_ts on events (device, ts)",
    """create table if not exists tasks (
        device text not null,
        id text not null,
        action text,
        status text not null,
        seq integer not null default 0,
        source text,
        args text,
        attempt integer,
        received real,
        started real,
        finished real,
        next_try real,
        runtime real,
        result text,
        error_type text,
        error_message text,
        job text,
        planned real,
        updated real not null
    )""",
    "create unique index if not exists tasks_key on tasks (device, id)",
    "create index if not exists tasks_updated on tasks (updated)",
    "create index if not exists tasks_device on tasks (device, updated)",
    "create index if not exists tasks_action on tasks (action, updated)",
    "create index if not exists tasks_status on tasks (status, updated)",
    """create table if not exists gpio (
        device text not null,
        pin text not null,
        ts real not null,
        value text not null
    )""",
    "create index if not exists gpio_ts on gpio (device, ts)",
    "create table if not exists meta (key text primary key, value text not null)",
)

# The per-device byte tally of the size bound: a table of the writer's connection only (in memory, not in the
# file), filled by one scan the first time the store is over its bound, then kept by these triggers on every
# insert, update and delete of an event, a task or a GPIO change (retention and size pruning included).
_TALLY = (
    """create temp table if not exists sizes (
        device text primary key,
        bytes integer not null default 0,
        events integer not null default 0,
        tasks integer not null default 0,
        gpio integer not null default 0
    )""",
    f"""create temp trigger if not exists sizes_event_in after insert on main.events begin
        insert into sizes (device, bytes, events) values (new.device, length(new.doc) + {EVENT_ROW}, 1)
        on conflict (device) do update set bytes = bytes + excluded.bytes, events = events + 1; end""",
    f"""create temp trigger if not exists sizes_event_out after delete on main.events begin
        update sizes set bytes = bytes - length(old.doc) - {EVENT_ROW}, events = events - 1
        where device = old.device; end""",
    f"""create temp trigger if not exists sizes_task_in after insert on main.tasks begin
        insert into sizes (device, bytes, tasks) values
        (new.device, coalesce(length(new.args), 0) + coalesce(length(new.result), 0) + {TASK_ROW}, 1)
        on conflict (device) do update set bytes = bytes + excluded.bytes, tasks = tasks + 1; end""",
    """create temp trigger if not exists sizes_task_change after update of args, result on main.tasks begin
        update sizes set bytes = bytes + coalesce(length(new.args), 0) + coalesce(length(new.result), 0)
                                       - coalesce(length(old.args), 0) - coalesce(length(old.result), 0)
        where device = new.device; end""",
    f"""create temp trigger if not exists sizes_task_out after delete on main.tasks begin
        update sizes set bytes = bytes - coalesce(length(old.args), 0) - coalesce(length(old.result), 0) - {TASK_ROW},
        tasks = tasks - 1 where device = old.device; end""",
    f"""create temp trigger if not exists sizes_gpio_in after insert on main.gpio begin
        insert into sizes (device, bytes, gpio) values (new.device, length(new.value) + {GPIO_ROW}, 1)
        on conflict (device) do update set bytes = bytes + excluded.bytes, gpio = gpio + 1; end""",
    f"""create temp trigger if not exists sizes_gpio_out after delete on main.gpio begin
        update sizes set bytes = bytes - length(old.value) - {GPIO_ROW}, gpio = gpio - 1
        where device = old.device; end""",
)
# The one scan that fills the tally (per table: device, bytes, rows).
_TALLY_SCAN = (
    ("events", f"select device, sum(length(doc) + {EVENT_ROW}), count(*) from events group by device"),
    ("tasks", f"select device, sum(coalesce(length(args), 0) + coalesce(length(result), 0) + {TASK_ROW}), count(*) "
              "from tasks group by device"),
    ("gpio", f"select device, sum(length(value) + {GPIO_ROW}), count(*) from gpio group by device"),
)
# A device's oldest rows, per table: events by seq, tasks by updated, GPIO changes by ts (each an index of its own).
_OLDEST = {
    "events": "delete from events where rowid in (select rowid from events where device = ? order by seq limit ?)",
    "tasks": "delete from tasks where rowid in (select rowid from tasks where device = ? order by updated limit ?)",
    "gpio": "delete from gpio where rowid in (select rowid from gpio where device = ? order by ts limit ?)",
}

_TASK_COLUMNS = ("action", "source", "args", "attempt", "received", "started", "finished", "next_try", "runtime",
                 "result", "error_type", "error_message", "job", "planned")
# Newest event wins a field it carries; an older one only fills blanks (see the module docstring).
_UPSERT_TASK = (
    "insert into tasks (device, id, status, seq, updated, " + ", ".join(_TASK_COLUMNS) + ") "
    "values (:device, :id, coalesce(:status, 'queued'), :seq, :updated, " + ", ".join(f":{c}" for c in _TASK_COLUMNS) + ") "
    "on conflict (device, id) do update set "
    + ", ".join(f"{c} = case when excluded.seq > tasks.seq then coalesce(excluded.{c}, tasks.{c}) "
                f"else coalesce(tasks.{c}, excluded.{c}) end" for c in _TASK_COLUMNS)
    + ", status = case when :status is not null and (excluded.seq > tasks.seq or (excluded.seq = 0 and tasks.seq = 0)) "
      "then :status else tasks.status end"
    + ", seq = max(tasks.seq, excluded.seq), updated = max(tasks.updated, excluded.updated)"
)


def _dumps(value: Any) -> str | None:
    return None if value is None else json.dumps(value, separators=(",", ":"), default=str)


def _float(value: Any) -> float | None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and abs(value) < 1e15
    return float(value) if ok else None


def _int(value: Any) -> int | None:
    return int(value) if isinstance(value, int) and not isinstance(value, bool) and abs(value) < 2**63 else None


def _text(value: Any, limit: int = 2000) -> str | None:
    return text(value, limit)


@dataclass(frozen=True)
class DeviceRow:
    device: str
    online: bool | None
    status_ts: float | None
    state: dict[str, Any]
    state_ts: float | None
    last_seen: float
    seq_hi: int
    history: bool
    jobs: dict[str, Any] | None
    failures_24h: int = 0

    def to_json(self) -> dict[str, Any]:
        s = self.state
        return {"device": self.device, "online": self.online, "since": self.status_ts, "last_seen": self.last_seen,
                "version": s.get("version"), "uptime_s": s.get("uptime_s"), "queue": s.get("queue"),
                "outbox": s.get("outbox"), "clock_synchronized": s.get("clock_synchronized"),
                "failures_24h": s.get("failures_24h", self.failures_24h), "next_job": self.next_job,
                "last_seq": s.get("last_seq"), "seq": self.seq_hi, "state": s}

    @property
    def next_job(self) -> dict[str, Any] | None:
        jobs = self.state.get("next_jobs")
        if isinstance(jobs, list) and jobs and isinstance(jobs[0], dict):
            return jobs[0]
        return None


@dataclass(frozen=True)
class TaskQuery:
    """A filter of the tasks page: every field optional; ``before`` pages back by ``updated``."""

    device: str | None = None
    action: str | None = None
    status: str | None = None
    since: float | None = None
    until: float | None = None
    before: float | None = None
    limit: int = 50


class MonitorStore:
    """The monitor's SQLite file. :meth:`write` belongs to one thread; the readers lock their own connection."""

    def __init__(self, path: str, *, keep: float = 30 * 86400.0, max_tasks: int = 1_000_000,
                 max_events: int = 5_000_000, max_gpio: int = 1_000_000, max_bytes: int = 1 << 30):
        self.path = path
        self.max_bytes = max_bytes
        self.keep = keep
        self.max_tasks = max_tasks
        self.max_events = max_events
        self.max_gpio = max_gpio
        parent = os.path.dirname(os.path.abspath(path))
        os.makedirs(parent, exist_ok=True)
        self._w = self._connect()
        with self._w:
            for stmt in _SCHEMA:
                self._w.execute(stmt)
        self._r = self._connect()
        self._rlock = threading.Lock()
        self._known: set[str] = {d for (d,) in self._w.execute("select device from devices")}
        self._tallied = False  # whether the temp table `sizes` is filled and kept (see prune_size)

    def _connect(self) -> sqlite3.Connection:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        os.close(fd)
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=10)
        conn.execute("pragma journal_mode=wal")
        conn.execute("pragma synchronous=normal")
        conn.execute(f"pragma cache_size=-{CACHE_KIB}")
        conn.execute("pragma temp_store=memory")
        conn.execute(f"pragma journal_size_limit={WAL_MAX}")
        return conn

    def close(self) -> None:
        with self._rlock:
            self._r.close()
        self._w.close()

    # ------------------------------------------------------------------ writing (the ingest thread)

    @contextmanager
    def transaction(self) -> Iterator[Writer]:
        self._w.execute("begin immediate")
        writer = Writer(self)
        try:
            yield writer
            writer.flush()
            self._w.execute("commit")
        except BaseException:
            if self._w.in_transaction:
                self._w.execute("rollback")
            self._known.difference_update(writer.added)
            raise

    def seq_marks(self) -> dict[str, tuple[int, bool]]:
        """Per device: (the seq up to which every event is held, whether it answers agent.history)."""
        return {d: (hi, bool(h)) for d, hi, h in self._w.execute("select device, seq_hi, history from devices")}

    def held_seqs(self, device: str, after: int, limit: int = 10_000) -> list[int]:
        """Seqs above ``after`` already stored for ``device`` (events that came ahead of a gap)."""
        return [s for (s,) in self._w.execute("select seq from events where device = ? and seq > ? order by seq limit ?",
                                              (device, after, limit))]

    def prune(self, now: float | None = None) -> int:
        """Apply the retention; returns the rows deleted."""
        cutoff = (time.time() if now is None else now) - self.keep
        w = self._w
        n = 0
        with self.transaction():
            n += w.execute("delete from events where ts < ?", (cutoff,)).rowcount
            n += w.execute("delete from tasks where updated < ?", (cutoff,)).rowcount
            n += w.execute("delete from gpio where ts < ?", (cutoff,)).rowcount
            gone = [d for (d,) in w.execute("select device from devices where last_seen < ?", (cutoff,))]
            w.executemany("delete from devices where device = ?", [(d,) for d in gone])
            self._known.difference_update(gone)
            for table, cap in (("events", self.max_events), ("tasks", self.max_tasks), ("gpio", self.max_gpio)):
                n += self._cap_rows(table, cap)
        return n

    def _cap_rows(self, table: str, cap: int) -> int:
        """Bring ``table`` down to ``cap`` rows, fairly: a device keeps all its rows while it holds
        no more than the others, and the ones over the level that fits the cap lose their oldest
        (a device is not trusted: one that floods the monitor loses its own rows)."""
        w = self._w
        counts = sorted((rows for _, rows in w.execute(f"select device, count(*) from {table} group by device")),
                        reverse=True)
        if sum(counts) <= cap:
            return 0
        # The highest level L with sum(min(rows, L)) <= cap: devices above it are cut to it.
        level, rest = 0, sum(counts)
        for k, rows in enumerate(counts):
            rest -= rows  # rows of the devices lighter than this one
            fits = (cap - rest) // (k + 1)
            if fits >= (counts[k + 1] if k + 1 < len(counts) else 0):
                level = max(0, min(fits, rows))
                break
        n = 0
        for device, rows in w.execute(f"select device, count(*) from {table} group by device having count(*) > ?",
                                      (level,)).fetchall():
            n += w.execute(f"delete from {table} where rowid in (select rowid from {table} where device = ? "
                           f"order by rowid limit ?)", (device, rows - level)).rowcount
        return n

    def used_bytes(self) -> int:
        """Bytes of the file's pages in use (free pages, reused by new rows, not counted)."""
        (pages,), = self._w.execute("pragma page_count").fetchall()
        (free,), = self._w.execute("pragma freelist_count").fetchall()
        (size,), = self._w.execute("pragma page_size").fetchall()
        return (pages - free) * size

    def prune_size(self) -> int:
        """While more than ``max_bytes`` are in use, delete the oldest 5% of the rows (events, tasks, GPIO changes)
        of the device that holds the most bytes, then of the heaviest again; returns the rows deleted.

        A device is not trusted: one that floods the monitor fills the bound, and its own
        rows go, not another device's. Like the retention, it leaves a device's ``seq_hi``
        where it is: what was pruned is not fetched again.
        """
        n = 0
        for _ in range(40):
            if self.used_bytes() <= self.max_bytes:
                break
            self._tally()
            w = self._w
            row = w.execute("select device, events, tasks, gpio from sizes where events + tasks + gpio > 0 "
                            "order by bytes desc limit 1").fetchone()
            if row is None:
                break
            device, counts = row[0], dict(zip(("events", "tasks", "gpio"), row[1:], strict=True))
            with self.transaction():
                deleted = sum(w.execute(_OLDEST[table], (device, max(1, count // 20))).rowcount
                              for table, count in counts.items() if count > 0)
            if deleted == 0:
                break
            n += deleted
        return n

    def _tally(self) -> None:
        """Fill the per-device byte tally (one scan of the three tables) and keep it from now on (the triggers).

        Lazily, the first time the store is over its bound: opening a full store stays quick,
        and a store that is never full never pays for the triggers."""
        if self._tallied:
            return
        with self.transaction():
            for stmt in _TALLY:
                self._w.execute(stmt)
            self._w.execute("delete from sizes")
            for table, scan in _TALLY_SCAN:
                self._w.executemany(f"insert into sizes (device, bytes, {table}) values (?, ?, ?) on conflict (device) "
                                    f"do update set bytes = bytes + excluded.bytes, {table} = excluded.{table}",
                                    self._w.execute(scan).fetchall())
        self._tallied = True

    # ------------------------------------------------------------------ reading (any thread)

    def _query(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[tuple[Any, ...]]:
        with self._rlock:
            return self._r.execute(sql, params).fetchall()

    def meta(self, key: str) -> str | None:
        rows = self._query("select value from meta where key = ?", (key,))
        return rows[0][0] if rows else None

    def set_meta(self, key: str, value: str) -> None:
        with self._rlock:
            self._r.execute("insert into meta (key, value) values (?, ?) on conflict (key) do update set value = excluded.value",
                            (key, value))

    def devices(self, now: float | None = None) -> list[DeviceRow]:
        since = (time.time() if now is None else now) - 86400
        failures = dict(self._query("select device, count(*) from tasks where status in ('failed', 'expired') "
                                    "and updated >= ? group by device", (since,)))
        rows = self._query("select device, online, status_ts, state, state_ts, last_seen, seq_hi, history, jobs "
                           "from devices order by device")
        return [self._device(r, failures.get(r[0], 0)) for r in rows]

    def device(self, device: str, now: float | None = None) -> DeviceRow | None:
        rows = self._query("select device, online, status_ts, state, state_ts, last_seen, seq_hi, history, jobs "
                           "from devices where device = ?", (device,))
        if not rows:
            return None
        since = (time.time() if now is None else now) - 86400
        (fails,), = self._query("select count(*) from tasks where device = ? and status in ('failed', 'expired') "
                                "and updated >= ?", (device, since))
        return self._device(rows[0], fails)

    @staticmethod
    def _device(r: tuple[Any, ...], failures: int) -> DeviceRow:
        state = _loads(r[3], FIELD_READ_MAX) if r[3] else {}
        jobs = _loads(r[8], 4 * FIELD_READ_MAX) if r[8] else None
        return DeviceRow(r[0], None if r[1] is None else bool(r[1]), r[2], state if isinstance(state, dict) else {},
                         r[4], r[5], r[6], bool(r[7]), jobs if isinstance(jobs, dict) else None, failures)

    def tasks(self, q: TaskQuery) -> tuple[list[dict[str, Any]], bool]:
        """Tasks matching ``q``, newest first, and whether there are more."""
        where: list[str] = []
        params: list[Any] = []
        for column, value in (("device", q.device), ("action", q.action), ("status", q.status)):
            if value:
                where.append(f"{column} = ?")
                params.append(value)
        if q.since is not None:
            where.append("updated >= ?")
            params.append(q.since)
        if q.until is not None:
            where.append("updated < ?")
            params.append(q.until)
        if q.before is not None:
            where.append("updated < ?")
            params.append(q.before)
        sql = ("select * from tasks" + (" where " + " and ".join(where) if where else "")
               + " order by updated desc limit ?")
        rows = self._task_rows(sql, [*params, q.limit + 1])
        return rows[:q.limit], len(rows) > q.limit

    def _task_rows(self, sql: str, params: Sequence[Any], budget: int = RESPONSE_MAX) -> list[dict[str, Any]]:
        """The rows, as many as fit in ``budget`` bytes of stored text (at least one)."""
        out: list[dict[str, Any]] = []
        with self._rlock:
            cur = self._r.execute(sql, params)
            names = [d[0] for d in cur.description]
            for r in cur:
                doc = dict(zip(names, r, strict=True))
                for key in ("args", "result"):
                    if doc[key] is not None:
                        budget -= len(doc[key])
                        doc[key] = _loads(doc[key], FIELD_READ_MAX)
                budget -= 500
                if out and budget < 0:
                    break
                out.append(doc)
        return out

    def task(self, device: str, task_id: str) -> dict[str, Any] | None:
        rows = self._task_rows("select * from tasks where device = ? and id = ?", (device, task_id))
        return rows[0] if rows else None

    def task_events(self, device: str, task_id: str, limit: int = 500) -> list[dict[str, Any]]:
        return self._docs("select doc from events where device = ? and id = ? order by seq limit ?", (device, task_id, limit))

    def _docs(self, sql: str, params: Sequence[Any]) -> list[dict[str, Any]]:
        """Stored event documents, as many as fit in RESPONSE_MAX bytes."""
        out: list[dict[str, Any]] = []
        budget = RESPONSE_MAX
        with self._rlock:
            for (d,) in self._r.execute(sql, params):
                budget -= len(d)
                if out and budget < 0:
                    break
                out.append(_loads(d, FIELD_READ_MAX))
        return out

    def tasks_between(self, device: str, t0: float, t1: float, limit: int = 2000) -> list[dict[str, Any]]:
        """Tasks of ``device`` that were received, ran or ended in [t0, t1) (for the day picture)."""
        return self._task_rows("select * from tasks where device = ? and updated >= ? and "
                               "coalesce(received, started, updated) < ? order by updated limit ?",
                               (device, t0, t1, limit))

    def events_between(self, device: str, t0: float, t1: float, kinds: Iterable[str], limit: int = 5000) -> list[dict[str, Any]]:
        kinds = list(kinds)
        marks = ", ".join("?" for _ in kinds)
        return self._docs(f"select doc from events where device = ? and ts >= ? and ts < ? and event in ({marks}) "
                          "order by ts limit ?", (device, t0, t1, *kinds, limit))

    def gpio_between(self, device: str, t0: float, t1: float, limit: int = 5000) -> list[tuple[str, float, str]]:
        """GPIO changes in [t0, t1), plus each pin's last value before t0 (stamped t0)."""
        before = self._query("select pin, max(ts), value from gpio where device = ? and ts < ? group by pin", (device, t0))
        rows = self._query("select pin, ts, value from gpio where device = ? and ts >= ? and ts < ? order by ts limit ?",
                           (device, t0, t1, limit))
        return [(p, t0, v) for p, _, v in before] + [(p, t, v) for p, t, v in rows]

    def counts(self) -> dict[str, Any]:
        """Figures for /metrics."""
        by_status = dict(self._query("select status, count(*) from tasks group by status"))
        (events,), = self._query("select count(*) from events")
        return {"tasks_by_status": by_status, "events": events}


def _no_constant(name: str) -> None:
    return None  # NaN, Infinity: stored before the boundary checked them, they are no JSON (a page would fail)


def _loads(text: str, limit: int | None = None) -> Any:
    """Stored JSON: numbers that are not finite read as null; longer than ``limit``: a marker saying so."""
    if limit is not None and len(text) > limit:
        return {"truncated": True, "bytes": len(text), "head": text[:200]}
    try:
        return json.loads(text, parse_constant=_no_constant)
    except (ValueError, RecursionError):
        return text


_INSERT_EVENT = "insert into events (device, seq, ts, event, id, action, doc) values (?, ?, ?, ?, ?, ?, ?) on conflict do nothing"


class Writer:
    """The operations of one write transaction (see :meth:`MonitorStore.transaction`).

    Events and task changes are gathered and written with one ``executemany`` each at the
    end, in their order: a statement per event would hand the GIL to the MQTT thread and
    back for each one, which under a stream of events cost more than the statement.
    """

    def __init__(self, store: MonitorStore):
        self.store = store
        self.w = store._w
        self._events: list[tuple[Any, ...]] = []
        self._tasks: list[dict[str, Any]] = []
        self.added: list[str] = []  # devices whose row this transaction made (forgotten if it is rolled back)

    @contextmanager
    def savepoint(self) -> Iterator[None]:
        """A part of the transaction that is rolled back alone (one device's messages)."""
        self.flush()
        added = len(self.added)
        self.w.execute("savepoint part")
        try:
            yield
            self.flush()
        except BaseException:
            self._events, self._tasks = [], []
            self.w.execute("rollback to part")
            self.w.execute("release part")
            self.store._known.difference_update(self.added[added:])
            del self.added[added:]
            raise
        self.w.execute("release part")

    def flush(self) -> None:
        if self._events:
            self.w.executemany(_INSERT_EVENT, self._events)
            self._events = []
        if self._tasks:
            self.w.executemany(_UPSERT_TASK, self._tasks)
            self._tasks = []

    def touch(self, device: str, ts: float) -> bool:
        """Make sure ``device`` has a row; False when it is new and the cap is reached."""
        known = self.store._known
        if device not in known:
            if len(known) >= MAX_DEVICES:
                return False
            self.w.execute("insert into devices (device, last_seen) values (?, ?) on conflict do nothing", (device, ts))
            known.add(device)
            self.added.append(device)
        return True

    def status(self, device: str, online: bool, ts: float) -> None:
        self.w.execute("update devices set online = ?, status_ts = ?, last_seen = max(last_seen, ?) where device = ?",
                       (int(online), ts, ts, device))

    def state(self, device: str, doc: dict[str, Any], ts: float) -> None:
        self.w.execute("update devices set state = ?, state_ts = ?, last_seen = max(last_seen, ?) where device = ?",
                       (_dumps(doc), ts, ts, device))

    def jobs(self, device: str, doc: dict[str, Any], ts: float) -> None:
        self.w.execute("update devices set jobs = ?, jobs_ts = ? where device = ?", (_dumps(doc), ts, device))

    def seen(self, device: str, ts: float) -> None:
        self.w.execute("update devices set last_seen = max(last_seen, ?) where device = ?", (ts, device))

    def seq_hi(self, device: str, hi: int, history: bool = True) -> None:
        self.w.execute("update devices set seq_hi = ?, history = ? where device = ?", (hi, int(history), device))

    def event(self, device: str, ev: dict[str, Any]) -> None:
        """Store one event (once: a repeat of a (device, seq) is ignored) and fold it into its task.

        The caller knows which seqs it holds (see :mod:`.ingest`) and passes each new one once.
        """
        seq = ev["seq"]
        ts = _float(ev.get("ts")) or time.time()
        kind = str(ev.get("event"))
        task_id = _text(ev.get("id"), 500)
        action = _text(ev.get("action"), 200)
        self._events.append((device, seq, ts, kind, task_id, action, _dumps(ev)))
        if task_id is None or task_id.startswith(INTERNAL_PREFIX):
            return
        raw_error = ev.get("error")
        error = raw_error if isinstance(raw_error, dict) else {}
        row: dict[str, Any] = dict.fromkeys(_TASK_COLUMNS)
        row.update(device=device, id=task_id, action=action, updated=ts, status=EVENT_STATUS.get(kind),
                   seq=0 if kind == "fired" else seq)
        if kind == "received":
            row.update(source=_text(ev.get("source"), 100), args=_dumps(ev.get("args")), received=ts)
        elif kind == "started":
            row.update(attempt=_int(ev.get("attempt")), started=ts)
        elif kind == "retried":
            row.update(attempt=_int(ev.get("attempt")), next_try=_float(ev.get("next_try")))
        elif kind in ("succeeded", "failed", "expired", "revoked"):
            row.update(attempt=_int(ev.get("attempt")), finished=ts, runtime=_float(ev.get("runtime")),
                       result=_dumps(ev.get("result")) if kind == "succeeded" else None)
        elif kind == "fired":
            row.update(job=_text(ev.get("job"), 200), planned=_float(ev.get("planned")))
        if kind in ("retried", "failed", "expired"):
            row.update(error_type=_text(error.get("type"), 200), error_message=_text(error.get("message")))
        self._tasks.append(row)

    def reply(self, device: str, doc: dict[str, Any], ts: float) -> None:
        """Fold a reply into its task (status only while no event of the task is known)."""
        task_id = _text(doc.get("id"), 500)
        status = REPLY_STATUS.get(str(doc.get("status")))
        if task_id is None or status is None or doc.get("duplicate") or task_id.startswith(INTERNAL_PREFIX):
            return
        raw_error = doc.get("error")
        error = raw_error if isinstance(raw_error, dict) else {}
        row: dict[str, Any] = dict.fromkeys(_TASK_COLUMNS)
        at = _float(doc.get("ts")) or ts
        row.update(device=device, id=task_id, action=_text(doc.get("action"), 200), status=status, seq=0, updated=at,
                   attempt=_int(doc.get("attempt")), error_type=_text(error.get("type"), 200),
                   error_message=_text(error.get("message")))
        if status in TERMINAL:
            row.update(finished=at, result=_dumps(doc.get("result")) if status == "succeeded" else None)
        else:
            row.update(received=at)
        self._tasks.append(row)

    def forget_events(self, device: str) -> None:
        """Drop ``device``'s events (it numbers them from 1 again) and its held seq."""
        self.flush()
        self.w.execute("delete from events where device = ?", (device,))
        self.w.execute("update devices set seq_hi = 0 where device = ?", (device,))

    def gpio(self, device: str, pin: str, value: str, ts: float) -> None:
        self.w.execute("insert into gpio (device, pin, ts, value) values (?, ?, ?, ?)",
                       (device, text(pin, 200), ts, text(value, 50)))
