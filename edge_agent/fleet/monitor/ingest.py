"""The ingest thread: what the broker link hears, checked, applied to the store in batches, and the gaps it finds.

Messages wait in the :class:`Inbox`, bounded in count (``QUEUE_MAX``) and in bytes (``QUEUE_BYTES``;
when it is full, paho's thread waits, and the broker holds the rest: memory stays
bounded under any burst, of small messages or of large ones). Everything a device sends
is checked first (:mod:`edge_agent.contract`, :mod:`.validate`): a bad message is dropped and
logged on its own.
Each batch is one transaction; if a row of it cannot be stored, the batch is stored again
device by device, each in a savepoint of its own: the failing row rolls back its device's
part only, never another device's.

Per device the thread tracks its place in the device's events (a
:class:`~edge_agent.fleet.stream.SeqLine`): ``hi``, the seq up to which every event is stored,
and the seqs stored beyond a gap. An event beyond ``hi + 1`` is stored and marks a gap,
which is fetched with ``agent.history`` after ``hi`` (asked through the link, see
:mod:`.link`). ``hi`` moves only over stored seqs: when a device's part is rolled back, its
place is put back too, so what was lost is fetched again. An event whose seq is valid but
whose other fields are not is stored as a ``rejected`` stub (its seq, the reason): it is
not fetched again and again. A page of history moves ``hi`` to its ``next``: the device
sends every event it still has after ``after``, in order, so whatever is missing below
``next`` was pruned on the device and cannot be had (:meth:`SeqLine.page_end
<edge_agent.fleet.stream.SeqLine.page_end>`, the rule ``edge-agent fleet events`` follows too).
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol, TypeVar

from edge_agent.contract import FIELD_MAX, SEQ_MAX, Rejected, clean_event, clean_state, text
from edge_agent.fleet.monitor.hub import Hub
from edge_agent.fleet.monitor.store import MonitorStore, Writer
from edge_agent.fleet.monitor.validate import JOBS_MAX, clean_reply
from edge_agent.fleet.stream import SeqLine, read_page, restarted

__all__ = ["Inbox", "Ingest", "Requests"]

log = logging.getLogger("edge_agent.monitor.ingest")

QUEUE_MAX = 10_000  # messages; events wait here as their raw bytes (parsed in this thread)
QUEUE_BYTES = 8 << 20  # ... and at most this many bytes of payload (a device may send 1 MB events, or batches)
BATCH_MAX = 2_000
BATCH_BYTES = 2 << 20  # payload bytes per batch (parsed, a batch takes several times its bytes)
BATCH_WINDOW = 0.02  # seconds a batch may wait for more messages (the live pages' added latency, at most)
AHEAD_MAX = 10_000  # events held beyond a gap per device before the set is dropped (the backfill refetches them)
PRUNE_EVERY = 60.0
RELEASE_AFTER = 10_000  # messages handled before an idle moment hands memory back
RELEASE_AFTER_BYTES = 32 << 20  # ... or this many payload bytes
WARN_EVERY = 60.0  # seconds between two log lines about one device's rejected messages
NOTIFY_TASKS_MAX = 100  # task rows re-read per batch for the live pages (a burst shows its first ones live)
RESET_CHECK_EVERY = 60.0  # seconds between two checks of a device whose state's last_seq is below the seq held


class Requests(Protocol):
    """What the ingest thread asks devices for (the link sends it)."""

    def request_history(self, device: str, after: int) -> None: ...

    def request_jobs(self, device: str) -> None: ...


class Inbox:
    """The messages the link heard, waiting for the ingest thread: at most ``QUEUE_MAX`` of them
    and ``QUEUE_BYTES`` of payload (the putting thread waits for room)."""

    def __init__(self) -> None:
        self._q: queue.Queue[tuple[int, tuple[Any, ...]]] = queue.Queue(QUEUE_MAX)
        self._bytes = 0  # payload bytes queued or in the batch at hand
        self._room = threading.Condition()
        self._closed = False

    def put(self, kind: str, device: str, *payload: Any, size: int = 0) -> None:
        """Queue a message; ``size``: its payload's bytes (raw ``bytes`` are counted by themselves).

        Waits while QUEUE_BYTES are queued (one message larger than that still passes alone)."""
        n = 100 + size + sum(len(p) for p in payload if isinstance(p, (bytes, str)))
        with self._room:
            while self._bytes and self._bytes + n > QUEUE_BYTES and not self._closed:
                self._room.wait(0.5)
            self._bytes += n
        self._q.put((n, (kind, device, time.time(), *payload)))

    def get(self, timeout: float | None = None) -> tuple[int, tuple[Any, ...]]:
        """(its size, the message): waits up to ``timeout`` seconds (None: not at all); queue.Empty when none came."""
        return self._q.get(timeout=timeout) if timeout is not None else self._q.get_nowait()

    def release(self, n: int) -> None:
        """Messages of ``n`` bytes (as :meth:`get` said) are done with: room for more."""
        with self._room:
            self._bytes -= n
            self._room.notify_all()

    def close(self) -> None:
        """Putting no longer waits for room (the ingest thread is stopping)."""
        with self._room:
            self._closed = True
            self._room.notify_all()

    def __len__(self) -> int:
        return self._q.qsize()


class Ingest:
    """Owns the store's writing side: stores what ``inbox`` holds; asks devices for what it
    misses through ``requests`` (the link); ``release_memory()`` after a burst."""

    def __init__(self, store: MonitorStore, hub: Hub, inbox: Inbox, requests: Requests, *,
                 release_memory: Callable[[], None] = lambda: None, prune_every: float = PRUNE_EVERY):
        self.store = store
        self.hub = hub
        self.inbox = inbox
        self.requests = requests
        self.release_memory = release_memory
        self.prune_every = prune_every
        self._since_release = 0
        self._since_release_bytes = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        marks = store.seq_marks()
        self._lines = {d: SeqLine(hi) for d, (hi, _) in marks.items()}
        self._history = {d: h for d, (_, h) in marks.items()}
        self._gpio: dict[tuple[str, str], str] = {}
        self._checked: dict[str, float] = {}
        self.ingested = 0  # events stored (for /metrics and the benchmark)
        self.rejected = 0  # messages dropped at the boundary (for /metrics)
        self._warned: dict[str, tuple[float, int]] = {}  # device -> (last logged, dropped since)
        self._size_pruned = 0
        self._size_logged = -1e9
        self.lag = 0.0  # seconds from the newest event's ts to its commit here
        self.idle = threading.Event()

    # ------------------------------------------------------------------ from other threads

    def start(self) -> None:
        # Events held beyond a gap when the monitor last stopped: pick them up again.
        for device, line in self._lines.items():
            held = self.store.held_seqs(device, line.hi)
            if held:
                self._lines[device] = SeqLine(line.hi, held)
        self._thread = threading.Thread(target=self._run, name="monitor-ingest", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self.inbox.close()
        if self._thread is not None:
            self._thread.join(timeout)

    def backlog(self) -> int:
        return len(self.inbox)

    def wants_history(self, device: str) -> bool:
        return self._history.get(device, True)

    def seq_hi(self, device: str) -> int:
        line = self._lines.get(device)
        return line.hi if line is not None else 0

    def _line(self, device: str) -> SeqLine:
        line = self._lines.get(device)
        if line is None:
            line = self._lines[device] = SeqLine()
        return line

    # ------------------------------------------------------------------ the thread

    def _run(self) -> None:
        last_prune = time.monotonic()
        while not self._stop.is_set():
            try:
                first = self.inbox.get(0.5)
            except queue.Empty:
                self.idle.set()
                if self._since_release > RELEASE_AFTER or self._since_release_bytes > RELEASE_AFTER_BYTES:
                    # After a burst: hand the freed memory back to the OS (the RSS stays that of the work at hand)
                    self._since_release = self._since_release_bytes = 0
                    self.release_memory()
                if time.monotonic() - last_prune > self.prune_every:
                    last_prune = time.monotonic()
                    self._prune()
                continue
            self.idle.clear()
            size, item = first
            batch = [item]
            # Gather for up to BATCH_WINDOW: a commit per message would cost more than the message.
            until = time.monotonic() + BATCH_WINDOW
            while len(batch) < BATCH_MAX and size < BATCH_BYTES:
                try:
                    n, item = self.inbox.get()
                except queue.Empty:
                    left = until - time.monotonic()
                    if left <= 0:
                        break
                    try:
                        n, item = self.inbox.get(left)
                    except queue.Empty:
                        break
                batch.append(item)
                size += n
            try:
                self._apply(batch)
            except Exception:
                log.exception("could not store a batch of %d messages", len(batch))
            self._since_release += len(batch)
            del batch, item, first  # (before the room is given back: the bound counts them until here)
            self.inbox.release(size)
            self._since_release_bytes += size
            if time.monotonic() - last_prune > self.prune_every:
                last_prune = time.monotonic()
                self._prune()
            self._prune_size()  # after every batch (three cheap pragmas): a burst cannot outgrow the bound
        # What was heard but not yet stored (events not stored are fetched again at the next start)
        rest = []
        while True:
            try:
                rest.append(self.inbox.get()[1])
            except queue.Empty:
                break
        if rest:
            try:
                self._apply(rest)
            except Exception:
                log.exception("could not store the last %d messages", len(rest))

    def _prune(self) -> None:
        try:
            n = self.store.prune()
            if n:
                log.info("retention: %d rows deleted", n)
        except Exception:
            log.exception("retention failed")

    def _prune_size(self) -> None:
        try:
            self._size_pruned += self.store.prune_size()
        except Exception:
            log.exception("size bound failed")
        if self._size_pruned and time.monotonic() - self._size_logged > WARN_EVERY:  # a line a minute at most
            log.info("the store is at its size bound (%d MB): %d of its oldest rows deleted",
                     self.store.max_bytes >> 20, self._size_pruned)
            self._size_pruned, self._size_logged = 0, time.monotonic()

    def _reject(self, device: str, what: str, why: str) -> None:
        """Count a message dropped at the boundary; log it, at most once per device per WARN_EVERY (with the count)."""
        self.rejected += 1
        now = time.monotonic()
        last, dropped = self._warned.get(device, (-1e9, 0))
        if now - last < WARN_EVERY:
            self._warned[device] = (last, dropped + 1)
            return
        if len(self._warned) > 10_000:
            self._warned.clear()
        self._warned[device] = (now, 0)
        more = f" ({dropped} more dropped since the last line)" if dropped else ""
        log.warning("%s: %s dropped: %s%s", device[:200], what, why, more)

    def _apply(self, batch: list[tuple[Any, ...]]) -> None:
        """Store ``batch`` in one transaction: at once, or, if that fails, one savepoint per device.

        At once is the common case (one statement per kind of row for the whole batch); a
        failure there is put back, marks included, and the batch is stored device by
        device, so that only the device whose row fails loses its part."""
        by_device: dict[str, list[tuple[Any, ...]]] = {}
        for item in batch:
            by_device.setdefault(item[1], []).append(item)
        done: list[tuple[str, _Marks, _Out]] = []
        rejected = self.rejected
        try:
            with self.store.transaction() as w:
                try:
                    with w.savepoint():
                        for device, items in by_device.items():
                            done.append((device, self._marks(device), _Out()))
                            self._apply_device(w, device, items, done[-1][2])
                except Exception:
                    for device, marks, _ in reversed(done):
                        self._restore(device, marks)
                    done, self.rejected = [], rejected
                    for device, items in by_device.items():
                        marks, part = self._marks(device), _Out()
                        try:
                            with w.savepoint():
                                self._apply_device(w, device, items, part)
                        except Exception:
                            # Only this device's messages are lost (its hi is put back: they are fetched again).
                            self._restore(device, marks)
                            log.exception("%s: could not store %d messages; they are fetched again", device[:200], len(items))
                            continue
                        done.append((device, marks, part))
        except Exception:
            for device, marks, _ in reversed(done):  # the commit failed: nothing of the batch is stored
                self._restore(device, marks)
            raise
        out = _Out()
        for _, _, part in done:
            out.merge(part)
        self.ingested += out.ingested
        if out.newest:
            self.lag = max(0.0, time.time() - out.newest)
        for device, after in out.wanted.items():
            self.requests.request_history(device, after)
        for device in out.jobs_wanted:
            self.requests.request_jobs(device)
        if self.hub.listening:
            self._notify(out.changed, out.tasks, out.replies)

    def _marks(self, device: str) -> _Marks:
        line = self._lines.get(device)
        return _Marks(None if line is None else line.copy(), self._history.get(device), self._checked.get(device))

    def _restore(self, device: str, m: _Marks) -> None:
        _put_back(self._lines, device, m.line)
        _put_back(self._history, device, m.history)
        _put_back(self._checked, device, m.checked)
        for key in [k for k in self._gpio if k[0] == device]:
            del self._gpio[key]

    def _apply_device(self, w: Writer, device: str, items: list[tuple[Any, ...]], out: _Out) -> None:
        changed, tasks, wanted = out.changed, out.tasks, out.wanted
        seen = None
        for kind, _, at, *payload in items:
            if not w.touch(device, at):
                return
            if kind == "status":
                w.status(device, payload[0], at)
                changed.add(device)
            elif kind == "state":
                try:
                    doc = clean_state(payload[0])
                except Rejected as exc:
                    self._reject(device, "a state", str(exc))
                    continue
                w.state(device, doc, at)
                changed.add(device)
                last = doc.get("last_seq")
                # Newer than held: fetch. Older: the device may count from 1 again (a new
                # database) or the retained state is stale; the history's `last` tells which.
                hi = self.seq_hi(device)
                if isinstance(last, int) and self.wants_history(device) and (
                        last > hi or (last < hi and time.monotonic() - self._checked.get(device, -1e9) > RESET_CHECK_EVERY)):
                    if last < hi:
                        self._checked[device] = time.monotonic()
                    wanted[device] = hi
            elif kind == "events":
                try:
                    doc = json.loads(payload[0])
                except (ValueError, RecursionError) as exc:
                    self._reject(device, "an events message", f"not JSON ({str(exc)[:100]})")
                    continue
                small = len(payload[0]) <= FIELD_MAX
                for ev in doc if isinstance(doc, list) else [doc]:
                    out.newest = max(out.newest, self._event(w, device, ev, wanted, tasks, out, small))
                seen = at
            elif kind == "history":
                after, result = payload
                self._history_page(w, device, after, result, wanted, tasks, out)
                changed.add(device)
            elif kind == "nohistory":
                self._history[device] = False
                line = self._line(device)
                line.skip_to(max([line.hi, *line.ahead]))
                w.seq_hi(device, line.hi, history=False)
            elif kind == "sync":
                if self.wants_history(device):
                    wanted[device] = self.seq_hi(device)
                out.jobs_wanted.add(device)
            elif kind == "jobs":
                try:
                    doc = clean_state(payload[0], JOBS_MAX)  # the same checks as a state: an object, finite, small
                except Rejected as exc:
                    self._reject(device, "its jobs", str(exc))
                    continue
                w.jobs(device, doc, at)
                changed.add(device)
            elif kind == "reply":
                try:
                    doc = clean_reply(payload[0])
                except Rejected as exc:
                    self._reject(device, "a reply", str(exc))
                    continue
                w.reply(device, doc, at)
                self._gpio_from_result(w, device, doc.get("action"), doc.get("status"), doc.get("result"), at)
                if isinstance(doc.get("id"), str):
                    tasks[(device, doc["id"])] = None
                if str(doc.get("action", "")).startswith("job.") and doc.get("status") == "succeeded":
                    out.jobs_wanted.add(device)  # a job paused, resumed or run: show its jobs as they are now
                out.replies.append((device, doc))
            elif kind == "gpio":
                pin, value = payload
                self._gpio_change(w, device, pin, value, at)
                changed.add(device)
        if seen is not None:
            w.seen(device, seen)
        if device in self._lines:
            w.seq_hi(device, self._lines[device].hi, self._history.get(device, True))

    def _event(self, w: Writer, device: str, ev: Any, wanted: dict[str, int], tasks: dict[tuple[str, str], None],
               out: _Out, small: bool = False) -> float:
        seq = ev.get("seq") if isinstance(ev, dict) else None
        if not isinstance(seq, int) or isinstance(seq, bool) or not 0 < seq <= SEQ_MAX:
            self._reject(device, "an event", f"no valid seq ({str(seq)[:30]})")
            return 0.0
        line = self._line(device)
        if not line.new(seq):
            return 0.0
        try:
            ev = clean_event(ev, small)
        except Rejected as exc:
            # Stored as a stub: the seq counts as held (a history page would bring the same event again).
            self._reject(device, f"event {seq}", str(exc))
            ev = {"seq": seq, "event": "rejected", "ts": round(time.time(), 3), "reason": str(exc)}
        w.event(device, ev)
        out.ingested += 1
        if isinstance(ev.get("id"), str):
            tasks[(device, ev["id"])] = None
        if ev.get("event") == "succeeded":
            self._gpio_from_result(w, device, ev.get("action"), "succeeded", ev.get("result"), ev.get("ts"))
        if seq == line.hi + 1:
            line.add(seq)
        elif not self.wants_history(device):  # (without agent.history a gap cannot be filled)
            line.skip_to(seq)
        else:
            if len(line.ahead) >= AHEAD_MAX:
                line.ahead.clear()
            line.add(seq)
            wanted.setdefault(device, line.hi)
        ts = ev.get("ts")
        return float(ts) if isinstance(ts, (int, float)) else 0.0

    def _restart_seq(self, w: Writer, device: str) -> None:
        """The device counts from 1 again (a new database, an upgrade to events): its old events make way.

        Decided only by an ``agent.history`` answer whose ``last`` (the device's largest seq,
        which never goes down otherwise) is below the seq held.

        Its tasks stay; their event lists go, since the old seqs would hide the new events.
        """
        log.warning("%s: its events start again (last_seq below the %d held); its old events are dropped",
                    device, self.seq_hi(device))
        w.forget_events(device)
        self._lines[device] = SeqLine()

    def _history_page(self, w: Writer, device: str, after: int, result: Any, wanted: dict[str, int],
                      tasks: dict[tuple[str, str], None], out: _Out) -> None:
        if not isinstance(result, dict):
            return
        try:
            page = read_page(result, after)
        except Rejected as exc:
            self._reject(device, "a history page", str(exc))
            return
        if restarted(after, page.last):
            self._restart_seq(w, device)
            wanted[device] = 0
            return
        for ev in page.events:
            self._event(w, device, ev, {}, tasks, out)
        line = self._line(device)
        again, _ = line.page_end(after, page.next, page.more, page.last)
        if again:
            wanted[device] = line.hi
        else:
            wanted.pop(device, None)

    def _gpio_from_result(self, w: Writer, device: str, action: Any, status: Any, result: Any, ts: Any) -> None:
        if status == "succeeded" and isinstance(action, str) and action.startswith("gpio.") and isinstance(result, dict):
            pin, value = result.get("device"), result.get("value")
            if isinstance(pin, str) and value is not None and not result.get("superseded"):
                self._gpio_change(w, device, pin, str(value), float(ts) if isinstance(ts, (int, float)) else time.time())

    def _gpio_change(self, w: Writer, device: str, pin: str, value: str, ts: float) -> None:
        pin, value = text(pin, 200) or "", text(value, 50) or ""
        value = value.lower() if value.upper() in ("ON", "OFF") else value
        key = (device, pin)
        if self._gpio.get(key) == value:
            return
        if len(self._gpio) > 100_000:
            self._gpio.clear()
        self._gpio[key] = value
        w.gpio(device, pin, value, ts)

    def _notify(self, changed: set[str], tasks: dict[tuple[str, str], None], replies: list[tuple[str, dict[str, Any]]]) -> None:
        for device in changed:
            row = self.store.device(device)
            if row is not None:
                self.hub.publish({"type": "device", "device": device, "row": row.to_json()})
        for device, task_id in list(tasks)[:NOTIFY_TASKS_MAX]:
            t = self.store.task(device, task_id)
            if t is not None:
                self.hub.publish({"type": "task", "device": device, "task": t})
        for device, doc in replies:
            self.hub.publish({"type": "reply", "device": device, "reply": json.loads(json.dumps(doc, default=str))})


class _Out:
    """What a batch (or one device's part of it) leads to once it is stored."""

    def __init__(self) -> None:
        self.changed: set[str] = set()
        self.tasks: dict[tuple[str, str], None] = {}
        self.replies: list[tuple[str, dict[str, Any]]] = []
        self.wanted: dict[str, int] = {}
        self.jobs_wanted: set[str] = set()
        self.newest = 0.0
        self.ingested = 0

    def merge(self, other: _Out) -> None:
        self.changed |= other.changed
        self.tasks.update(other.tasks)
        self.replies += other.replies
        self.wanted.update(other.wanted)
        self.jobs_wanted |= other.jobs_wanted
        self.newest = max(self.newest, other.newest)
        self.ingested += other.ingested


class _Marks(NamedTuple):
    """A device's marks before its part of a batch (None: it had none), to put back if the part is rolled back."""

    line: SeqLine | None
    history: bool | None
    checked: float | None


_V = TypeVar("_V")


def _put_back(table: dict[str, _V], device: str, value: _V | None) -> None:
    """``table[device] = value``, or no entry when ``value`` is None."""
    if value is None:
        table.pop(device, None)
    else:
        table[device] = value
