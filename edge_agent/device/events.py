"""Task events: the device's history, one row per thing that happened to a command or job.

Every event is a row of the ``events`` table, written in the transaction that makes the
change it describes (a crash can neither lose nor invent one), and, when MQTT is on, is
published on ``P/D/events`` (QoS 1) by the link's publisher straight from that table
(:class:`EventPublisher`): the table is the events' outbox, so an event costs one row
written, not three (a row here, an outbox row, its deletion). One event is published as

    {"seq": 17, "device": "porch", "event": "succeeded", "id": "...", "action": "gpio.set",
     "ts": 1765000000.123, "attempt": 1, "runtime": 0.002, "result": {...}}

and events that are ready together (a burst) as one message holding a JSON array of those
objects, in seq order: a consumer reads ``doc if isinstance(doc, list) else [doc]``.

``seq`` is per device and only grows: it is the rowid (max + 1, assigned inside the
write transaction, so in commit order and without gaps), and pruning always keeps the
newest row, so a seq is never handed out twice. A consumer that sees a jump in ``seq``
missed events and fetches them with :meth:`EventLog.history` (the ``agent.history``
action). The shapes (an event, a page of history) and the kinds with their extras are the
contract's (:mod:`edge_agent.contract`: ``event_document``, ``history_page``, ``KINDS``).

Bounds: the table keeps ``keep`` seconds and at most ``max_rows`` rows; while the broker
is away at most ``outbox_max`` events wait to be published: when it is back, the publisher
starts at the newest ``outbox_max`` (older unsent events are dropped from publishing,
oldest first, and stay in the table; replies are never dropped): the consumer sees the gap
in ``seq`` and fetches it with ``agent.history``.
"""

from __future__ import annotations

import json
import json.encoder
import math
import sqlite3
import time
from collections.abc import Callable
from typing import Any, Protocol

from edge_agent.contract import KINDS, MAX_HISTORY, event_document, history_page
from edge_agent.device.commands import Command
from edge_agent.device.outbox import Outbox
from edge_agent.device.store import Store

__all__ = ["QUIET_ACTIONS", "EventLog", "EventPublisher", "EventReporter"]

#: read-only queries: no events of their own (a monitor polling agent.status would otherwise
#: fill the history, and agent.history's result would nest the history inside an event)
QUIET_ACTIONS = frozenset({"agent.status", "agent.jobs", "agent.history"})

_TABLE = """create table if not exists events (
    seq integer primary key,
    ts real not null,
    event text not null,
    id text,
    action text,
    extras text
)"""
# Only the extras are stored as JSON; seq, ts, kind, id and action are columns, and device is
# the same for every row: the rows stay small (a few to a 512-byte page).


_FIELDS = "seq, ts, event, id, action, extras"
_quote = json.encoder.encode_basestring_ascii  # a str as JSON, as json.dumps writes it


class EventLog:
    """Writes events (inside the caller's transaction) and answers history queries."""

    def __init__(self, store: Store, device_id: str, *, keep: float = 7 * 86400.0, max_rows: int = 100_000,
                 outbox: Outbox | None = None, outbox_max: int = 10_000,
                 clock: Callable[[], float] = time.time, enabled: bool = True):
        self.store = store
        self.device_id = device_id
        self.keep = keep
        self.max_rows = max_rows
        self.outbox = outbox
        self.outbox_max = outbox_max
        self.clock = clock
        self.enabled = enabled  # off ([events] enabled = false): nothing is recorded nor published
        self.wake_publisher = True  # set by the publisher before it looks for events to publish
        # How often (in seqs) max_rows is enforced: each check trims to `every` below the bound,
        # so between checks the bound holds exactly.
        self._rows_every = max(1, min(256, max_rows // 4))
        with store.transaction() as cur:
            cur.execute(_TABLE)

    # ----------------------------------------------------------------- writing

    def emit(self, cur: sqlite3.Cursor, kind: str, command_id: str | None, action: str | None, *,
             extras_json: str | None = None, **extras: Any) -> dict[str, Any]:
        """Record one event in the caller's transaction (the publisher is woken); returns it.
        ``extras_json``: ``extras`` as JSON text already (what ``json.dumps`` makes of them)."""
        assert kind in KINDS, kind
        if not self.enabled:
            return {}
        ts = round(self.clock(), 3)
        # seq is the rowid SQLite gives the row: max + 1 (no AUTOINCREMENT), in one statement
        seq = int(cur.execute("insert into events (ts, event, id, action, extras) values (?, ?, ?, ?, ?) returning seq",
                              (ts, kind, command_id, action, extras_json if extras_json is not None else
                               json.dumps(extras, separators=(",", ":"), default=str) if extras else None)).fetchone()[0])
        doc = event_document(seq, self.device_id, kind, command_id, action, ts, extras)
        if self.outbox is not None and self.wake_publisher:
            # Only when the publisher found nothing to publish at its last look (otherwise an ack or
            # its linger wakes it); woken once our transaction commits, lazily (events linger anyway).
            self.wake_publisher = False
            self.store.after_commit(self.outbox.wake_lazy)
        if seq % self._rows_every == 0:
            cur.execute("delete from events where seq <= ?", (seq - self.max_rows + self._rows_every,))
        return doc

    def prune(self, now: float | None = None) -> int:
        """Forget events older than ``keep`` (never the newest: seq must not come back)."""
        cutoff = (self.clock() if now is None else now) - self.keep
        with self.store.transaction() as cur:
            cur.execute("delete from events where ts < ? and seq < (select max(seq) from events)", (cutoff,))
            return cur.rowcount

    # ----------------------------------------------------------------- reading

    def last_seq(self) -> int:
        return int(self.store.query("select coalesce(max(seq), 0) from events")[0][0])

    def unsent(self, after: int, limit: int) -> list[tuple[int, bytes]]:
        """(seq, JSON text) of the events to publish after ``after``: at most the newest
        ``outbox_max`` of those not yet sent (the bound), in seq order. The text is made from
        the columns and the stored extras without parsing them (the same bytes as
        ``json.dumps`` of :meth:`_doc`, in the same key order)."""
        rows = self.store.query(
            f"select {_FIELDS} from events where seq > max(?, (select coalesce(max(seq), 0) from events) - ?) "
            "order by seq limit ?", (after, self.outbox_max, limit))
        head = '{"seq":%d,"device":' + _quote(self.device_id).replace("%", "%%") + ',"event":"%s","id":%s,"action":%s,"ts":%r'
        out = []
        for seq, ts, kind, command_id, action, extras in rows:
            text = head % (seq, kind, "null" if command_id is None else _quote(command_id),
                           "null" if action is None else _quote(action), float(ts))
            text = text + "," + extras[1:] if extras and len(extras) > 2 else text + "}"
            out.append((int(seq), text.encode()))
        return out

    def _doc(self, row: tuple[Any, ...]) -> dict[str, Any]:
        seq, ts, kind, command_id, action, extras = row
        return event_document(seq, self.device_id, kind, command_id, action, ts, json.loads(extras) if extras else None)

    def history(self, *, after: int = 0, limit: int = 100, action: str | None = None, event: str | None = None,
                command_id: str | None = None, since: float | None = None, until: float | None = None) -> dict[str, Any]:
        """Events with ``seq > after`` matching every filter given, seq ascending, at most ``limit``."""
        limit = max(1, min(MAX_HISTORY, limit))
        where = ["seq > ?"]
        params: list[Any] = [after]
        for column, value in (("action", action), ("event", event), ("id", command_id)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        if since is not None:
            where.append("ts >= ?")
            params.append(since)
        if until is not None:
            where.append("ts <= ?")
            params.append(until)
        with self.store.reading() as cur:
            rows = cur.execute(f"select {_FIELDS} from events where {' and '.join(where)} order by seq limit ?",
                               (*params, limit + 1)).fetchall()
            oldest, last = cur.execute("select min(seq), coalesce(max(seq), 0) from events").fetchone()
        more = len(rows) > limit
        rows = rows[:limit]
        return history_page(self.device_id, [self._doc(r) for r in rows], next_seq=rows[-1][0] if rows else after,
                            more=more, oldest=oldest, last=last)


class EventPublisher:
    """The link's publisher's view of the events table: what to publish next, what the broker
    acknowledged, and the position (meta ``events_sent``: every event up to it was acknowledged)
    remembered across restarts. Used from the publisher thread only.

    Events leave in batches: at most ``IN_FLIGHT`` messages of events are unacknowledged at a
    time, and each carries every event that is ready then (up to ``BATCH_MAX`` events or about
    ``BATCH_BYTES``): one event alone is a JSON object, several are a JSON array of those
    objects in seq order. The first event after a pause waits ``linger`` seconds for the ones
    that follow it (a command's received, started and succeeded then share one message); under
    load, what came in during one broker round trip leaves in the next message, so a burst of
    commands costs a few event messages, not three per command.

    Messages are published at QoS 1 in seq order, and a broker acknowledges QoS 1 messages in
    the order it got them, so the highest acknowledged seq is a position with nothing unsent
    before it. It is written at most every ``SAVE_EVERY`` seconds or ``SAVE_BATCH`` events
    (one small row; at every clean stop too): after a crash the events acknowledged since are
    published again (at least once, like replies), and a consumer drops seqs it has seen."""

    META_KEY = "events_sent"
    SAVE_EVERY = 1.0  # seconds between two writes of the position
    SAVE_BATCH = 1000  # events acknowledged since the last write that make one due at once
    IN_FLIGHT = 1  # messages of events handed to paho and not yet acknowledged, at most
    BATCH_MAX = 500  # events per message, at most
    BATCH_BYTES = 32 * 1024  # a message stops growing past this many bytes (one large event still goes)
    LINGER = 0.01  # seconds the first event after a pause waits for the next ones

    def __init__(self, log: EventLog, topic: str, *, linger: float = LINGER,
                 clock: Callable[[], float] = time.monotonic):
        self.log = log
        self.topic = topic
        self.linger = linger
        self.clock = clock
        self._waiting_since: float | None = None  # monotonic: when unsent events were first seen
        self.acked_upto = int(log.store.get_meta(self.META_KEY) or 0)
        self.sent_upto = self.acked_upto
        self._saved = self.acked_upto
        self._saved_at = 0.0
        self._inflight: dict[int, int] = {}  # paho mid -> the last seq of its message
        self.messages = 0  # messages of events published (for tests and benchmarks)

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    @property
    def dirty(self) -> bool:
        return self.acked_upto != self._saved

    @property
    def due(self) -> float | None:
        """When (monotonic) events that wait for their batch to fill must be published, if any do
        (None while a message of events is in flight: its ack wakes the publisher)."""
        if self._waiting_since is None or len(self._inflight) >= self.IN_FLIGHT:
            return None
        return self._waiting_since + self.linger

    def publish(self, client: Any, room: int) -> None:
        """Hand paho the events after the last one handed over (or after the bound), batched,
        in at most ``room`` messages and ``IN_FLIGHT`` unacknowledged ones."""
        room = min(room, self.IN_FLIGHT - len(self._inflight))
        while room > 0:
            now = self.clock()
            if self._waiting_since is not None and now - self._waiting_since < self.linger:
                return  # (not read again meanwhile: every event written wakes the publisher)
            self.log.wake_publisher = True  # before the look: an event written after it wakes us
            rows = self.log.unsent(self.sent_upto, self.BATCH_MAX)
            if not rows:
                self._waiting_since = None
                return
            if self._waiting_since is None and self.linger > 0 and len(rows) < self.BATCH_MAX:
                self._waiting_since = now
                return
            self._waiting_since = None
            parts: list[bytes] = []
            size = 0
            for seq, payload in rows:
                if parts and size + len(payload) > self.BATCH_BYTES:
                    break
                parts.append(payload)
                size += len(payload) + 1
                last = seq
            body = parts[0] if len(parts) == 1 else b"[" + b",".join(parts) + b"]"
            info = client.publish(self.topic, body, qos=1)
            self._inflight[info.mid] = last
            self.sent_upto = last
            self.messages += 1
            room -= 1

    def acked(self, mid: int) -> bool:
        """Whether ``mid`` was one of ours (then it is recorded)."""
        seq = self._inflight.pop(mid, None)
        if seq is None:
            return False
        self.acked_upto = max(self.acked_upto, seq)
        return True

    def save(self, *, now: float, force: bool = False) -> None:
        """Remember the position (at most every SAVE_EVERY s or SAVE_BATCH events, unless ``force``)."""
        if not self.dirty or (not force and now - self._saved_at < self.SAVE_EVERY
                              and self.acked_upto - self._saved < self.SAVE_BATCH):
            return
        value = self.acked_upto
        with self.log.store.transaction() as cur:
            self.log.store.set_meta(cur, self.META_KEY, str(value))
        self._saved, self._saved_at = value, now
        # This may be the last write of a burst, up to SAVE_EVERY after the rest: read once now, so
        # that SQLite moves its read mark in the -shm file here and not at the idle daemon's next
        # look (a page written while idle).
        self.log.last_seq()


def _error(cmd: Command) -> dict[str, Any] | None:
    return {"type": cmd.error_type, "message": cmd.error_message} if cmd.error_type else None


class Replies(Protocol):
    """Where a finished command's reply goes (the MQTT link), in the same transaction."""

    def finished(self, cur: sqlite3.Cursor, cmd: Command) -> None: ...


def _succeeded_json(cmd: Command, runtime: float | None) -> str | None:
    """A ``succeeded`` event's extras as ``json.dumps`` writes them, from the stored result text
    (None when there is none to use: then they are encoded as usual)."""
    if (cmd.result_json is None and cmd.result is not None) or type(cmd.attempts) is not int \
            or not (runtime is None or (type(runtime) is float and math.isfinite(runtime))):
        return None
    return f'{{"attempt":{cmd.attempts},"runtime":{"null" if runtime is None else repr(runtime)},' \
           f'"result":{cmd.result_json or "null"}}}'


class EventReporter:
    """The runner's and the queue's hooks: each records its event, then tells ``inner`` (the
    MQTT replies) where it has something to say. Called inside the transaction that makes
    the change."""

    def __init__(self, events: EventLog, inner: Replies | None = None,
                 accepted: Callable[[sqlite3.Cursor, Command], None] | None = None):
        self.events = events
        self.inner = inner
        self._accepted = accepted

    def received(self, cur: sqlite3.Cursor, cmd: Command) -> None:
        """TaskQueue's ``on_submitted``: every command queued here or adopted from another process."""
        if cmd.action not in QUIET_ACTIONS:
            self.events.emit(cur, "received", cmd.id, cmd.action, source=cmd.source, args=cmd.args,
                             extras_json=f'{{"source":{_quote(cmd.source)},"args":{cmd.args_json}}}'
                             if cmd.args_json is not None and isinstance(cmd.source, str) else None)
        if self._accepted is not None:
            self._accepted(cur, cmd)

    def fired(self, cur: sqlite3.Cursor, job: str, planned: float, cmd: Command) -> None:
        """The scheduler queued ``cmd`` for the firing of ``job`` planned at ``planned``."""
        self.events.emit(cur, "fired", cmd.id, cmd.action, job=job, planned=round(planned, 3))

    def skipped(self, cur: sqlite3.Cursor, job: str, planned: float, action: str | None = None) -> None:
        """The scheduler skipped the firing of paused ``job`` planned at ``planned`` (no command: no id)."""
        self.events.emit(cur, "skipped", None, action, job=job, planned=round(planned, 3))

    def started(self, cur: sqlite3.Cursor, cmd: Command) -> None:
        if cmd.action in QUIET_ACTIONS or cmd.error_type == "network_unavailable":
            # A command parked for the network said `retried` once when it was parked; its
            # probes (one every few seconds for as long as the outage lasts) say nothing.
            return
        self.events.emit(cur, "started", cmd.id, cmd.action, attempt=cmd.attempts,
                         extras_json=f'{{"attempt":{cmd.attempts}}}' if type(cmd.attempts) is int else None)

    def retried(self, cur: sqlite3.Cursor, before: Command, cmd: Command) -> None:
        """``cmd`` waits for a later attempt (``before``: the row as it was claimed)."""
        if cmd.action in QUIET_ACTIONS:
            return
        if cmd.parked and before.error_type == "network_unavailable":
            return  # parked again after a probe: said once already
        self.events.emit(cur, "retried", cmd.id, cmd.action, attempt=cmd.attempts, error=_error(cmd),
                         next_try=round(cmd.next_attempt, 3) if cmd.next_attempt is not None else None)

    def finished(self, cur: sqlite3.Cursor, cmd: Command) -> None:
        if cmd.action not in QUIET_ACTIONS:
            if cmd.state == "succeeded":
                runtime = round(cmd.finished - cmd.started, 6) if cmd.finished and cmd.started else None
                self.events.emit(cur, "succeeded", cmd.id, cmd.action, attempt=cmd.attempts, runtime=runtime,
                                 result=cmd.result, extras_json=_succeeded_json(cmd, runtime))
            elif cmd.state == "failed":
                self.events.emit(cur, "failed", cmd.id, cmd.action, attempt=cmd.attempts, error=_error(cmd))
            elif cmd.state == "expired":
                self.events.emit(cur, "expired", cmd.id, cmd.action, error=_error(cmd))
            elif cmd.state == "revoked":
                self.events.emit(cur, "revoked", cmd.id, cmd.action)
        if self.inner is not None:
            self.inner.finished(cur, cmd)
