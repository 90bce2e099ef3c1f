"""The ingest thread: what the broker link hears, applied to the store in batches, and the gaps it finds.

Messages wait in a bounded queue (``QUEUE_MAX``; when it is full, paho's thread waits,
and the broker holds the rest: memory stays bounded under any burst). Each batch is
one transaction. Per device the thread tracks ``hi``, the seq up to which every event
is held; an event beyond ``hi + 1`` is stored and marks a gap, which is fetched with
``agent.history`` after ``hi`` (see :mod:`.link`). A page of history moves ``hi`` to its
``next``: the device sends every event it still has after ``after``, in order, so
whatever is missing below ``next`` was pruned on the device and cannot be had.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from .hub import Hub
from .store import MonitorStore, Writer

__all__ = ["Ingest"]

log = logging.getLogger(__name__)

QUEUE_MAX = 10_000  # messages (a batch of events: as many as it holds); events wait here as their raw bytes
# (parsed in this thread), so ~3 MB at most
BATCH_MAX = 2_000
BATCH_WINDOW = 0.02  # seconds a batch may wait for more messages (the live pages' added latency, at most)
AHEAD_MAX = 10_000  # events held beyond a gap per device before the set is dropped (the backfill refetches them)
PRUNE_EVERY = 60.0
RELEASE_AFTER = 10_000  # messages handled before an idle moment hands memory back
NOTIFY_TASKS_MAX = 100  # task rows re-read per batch for the live pages (a burst shows its first ones live)
RESET_CHECK_EVERY = 60.0  # seconds between two checks of a device whose state's last_seq is below the seq held


EVENT_BYTES = 300  # about one event's JSON: a batched events message weighs in the queue as the events it holds


class _Weighted(queue.Queue):  # type: ignore[type-arg]
    """The bounded queue, where a message of batched events counts as the events it holds, so
    the bound stays one of memory (an array of 100 events is not one slot)."""

    def _init(self, maxsize: int) -> None:
        super()._init(maxsize)
        self._weight = 0

    def _qsize(self) -> int:
        return self._weight

    def _put(self, item: tuple[Any, ...]) -> None:
        self._weight += _weight(item)
        super()._put(item)

    def _get(self) -> tuple[Any, ...]:
        item = super()._get()
        self._weight -= _weight(item)
        return item


def _weight(item: tuple[Any, ...]) -> int:
    return max(1, len(item[3]) // EVENT_BYTES) if item[0] == "events" else 1


class Ingest:
    """Owns the store's writing side. ``request_history(device, after)`` and ``request_jobs(device)`` come from the link."""

    def __init__(self, store: MonitorStore, hub: Hub, *, prune_every: float = PRUNE_EVERY):
        self.store = store
        self.hub = hub
        self.prune_every = prune_every
        self.request_history: Callable[[str, int], None] = lambda device, after: None
        self.request_jobs: Callable[[str], None] = lambda device: None
        self.release_memory: Callable[[], None] = lambda: None
        self._since_release = 0
        self._q: queue.Queue[tuple[Any, ...]] = _Weighted(QUEUE_MAX)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        marks = store.seq_marks()
        self._hi = {d: hi for d, (hi, _) in marks.items()}
        self._history = {d: h for d, (_, h) in marks.items()}
        self._ahead: dict[str, set[int]] = {}
        self._gpio: dict[tuple[str, str], str] = {}
        self._checked: dict[str, float] = {}
        self.ingested = 0  # events stored (for /metrics and the benchmark)
        self.lag = 0.0  # seconds from the newest event's ts to its commit here
        self.idle = threading.Event()

    # ------------------------------------------------------------------ from other threads

    def put(self, kind: str, device: str, *payload: Any) -> None:
        self._q.put((kind, device, time.time(), *payload))

    def start(self) -> None:
        # Events held beyond a gap when the monitor last stopped: pick them up again.
        for device, hi in self._hi.items():
            held = self.store.held_seqs(device, hi)
            if held:
                self._ahead[device] = set(held)
                self._advance(device)
        self._thread = threading.Thread(target=self._run, name="monitor-ingest", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def backlog(self) -> int:
        return self._q.qsize()

    def wants_history(self, device: str) -> bool:
        return self._history.get(device, True)

    def seq_hi(self, device: str) -> int:
        return self._hi.get(device, 0)

    # ------------------------------------------------------------------ the thread

    def _run(self) -> None:
        last_prune = time.monotonic()
        while not self._stop.is_set():
            try:
                first = self._q.get(timeout=0.5)
            except queue.Empty:
                self.idle.set()
                if self._since_release > RELEASE_AFTER:
                    # After a burst: hand the freed memory back to the OS (the RSS stays that of the work at hand)
                    self._since_release = 0
                    self.release_memory()
                if time.monotonic() - last_prune > self.prune_every:
                    last_prune = time.monotonic()
                    self._prune()
                continue
            self.idle.clear()
            batch = [first]
            # Gather for up to BATCH_WINDOW: a commit per message would cost more than the message.
            until = time.monotonic() + BATCH_WINDOW
            while len(batch) < BATCH_MAX:
                try:
                    batch.append(self._q.get_nowait())
                except queue.Empty:
                    left = until - time.monotonic()
                    if left <= 0:
                        break
                    try:
                        batch.append(self._q.get(timeout=left))
                    except queue.Empty:
                        break
            try:
                self._apply(batch)
            except Exception:
                log.exception("could not store a batch of %d messages", len(batch))
            self._since_release += len(batch)
            if time.monotonic() - last_prune > self.prune_every:
                last_prune = time.monotonic()
                self._prune()
        # What was heard but not yet stored (events not stored are fetched again at the next start)
        rest = []
        while True:
            try:
                rest.append(self._q.get_nowait())
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

    def _apply(self, batch: list[tuple[Any, ...]]) -> None:
        changed: set[str] = set()
        tasks: dict[tuple[str, str], None] = {}
        replies: list[tuple[str, dict[str, Any]]] = []
        wanted: dict[str, int] = {}
        jobs_wanted: set[str] = set()
        seen: dict[str, float] = {}
        newest = 0.0
        with self.store.transaction() as w:
            for kind, device, at, *payload in batch:
                if not w.touch(device, at):
                    continue
                if kind == "status":
                    w.status(device, payload[0], at)
                    changed.add(device)
                elif kind == "state":
                    doc = payload[0]
                    w.state(device, doc, at)
                    changed.add(device)
                    last = doc.get("last_seq")
                    # Newer than held: fetch. Older: the device may count from 1 again (a new
                    # database) or the retained state is stale; the history's `last` tells which.
                    hi = self._hi.get(device, 0)
                    if isinstance(last, int) and self.wants_history(device) and (
                            last > hi or (last < hi and time.monotonic() - self._checked.get(device, -1e9) > RESET_CHECK_EVERY)):
                        if last < hi:
                            self._checked[device] = time.monotonic()
                        wanted[device] = hi
                elif kind == "events":
                    try:
                        doc = json.loads(payload[0])
                    except (ValueError, RecursionError):
                        continue
                    for ev in doc if isinstance(doc, list) else [doc]:
                        ts = self._event(w, device, ev, wanted, tasks)
                        newest = max(newest, ts)
                    seen[device] = at
                elif kind == "history":
                    after, result = payload
                    self._history_page(w, device, after, result, wanted, tasks)
                    changed.add(device)
                elif kind == "nohistory":
                    self._history[device] = False
                    ahead = self._ahead.pop(device, set())
                    self._hi[device] = max([self._hi.get(device, 0), *ahead])
                    w.seq_hi(device, self._hi[device], history=False)
                elif kind == "sync":
                    if self.wants_history(device):
                        wanted[device] = self._hi.get(device, 0)
                    jobs_wanted.add(device)
                elif kind == "jobs":
                    w.jobs(device, payload[0], at)
                    changed.add(device)
                elif kind == "reply":
                    doc = payload[0]
                    w.reply(device, doc, at)
                    self._gpio_from_result(w, device, doc.get("action"), doc.get("status"), doc.get("result"), at)
                    if isinstance(doc.get("id"), str):
                        tasks[(device, doc["id"])] = None
                    replies.append((device, doc))
                elif kind == "gpio":
                    pin, value = payload
                    self._gpio_change(w, device, pin, value, at)
                    changed.add(device)
            for device, at in seen.items():
                w.seen(device, at)
            for device in changed | {d for d, _ in tasks}:
                if device in self._hi:
                    w.seq_hi(device, self._hi[device], self._history.get(device, True))
        if newest:
            self.lag = max(0.0, time.time() - newest)
        for device, after in wanted.items():
            self.request_history(device, after)
        for device in jobs_wanted:
            self.request_jobs(device)
        if self.hub.listening:
            self._notify(changed, tasks, replies)

    def _event(self, w: Writer, device: str, ev: Any, wanted: dict[str, int], tasks: dict[tuple[str, str], None]) -> float:
        if not isinstance(ev, dict) or not isinstance(ev.get("seq"), int) or isinstance(ev.get("seq"), bool):
            return 0.0
        seq = ev["seq"]
        hi = self._hi.get(device, 0)
        if seq > hi and seq not in self._ahead.get(device, ()):
            w.event(device, ev)
            self.ingested += 1
            if isinstance(ev.get("id"), str):
                tasks[(device, ev["id"])] = None
            if ev.get("event") == "succeeded":
                self._gpio_from_result(w, device, ev.get("action"), "succeeded", ev.get("result"), ev.get("ts"))
            if seq == hi + 1 or not self.wants_history(device):  # (without agent.history a gap cannot be filled)
                self._hi[device] = seq
                self._advance(device)
            else:
                ahead = self._ahead.setdefault(device, set())
                if len(ahead) >= AHEAD_MAX:
                    ahead.clear()
                ahead.add(seq)
                wanted.setdefault(device, hi)
        ts = ev.get("ts")
        return float(ts) if isinstance(ts, (int, float)) else 0.0

    def _restart_seq(self, w: Writer, device: str) -> None:
        """The device counts from 1 again (a new database, an upgrade to events): its old events make way.

        Decided only by an ``agent.history`` answer whose ``last`` (the device's largest seq,
        which never goes down otherwise) is below the seq held.

        Its tasks stay; their event lists go, since the old seqs would hide the new events.
        """
        log.warning("%s: its events start again (last_seq below the %d held); its old events are dropped",
                    device, self._hi.get(device, 0))
        w.forget_events(device)
        self._hi[device] = 0
        self._ahead.pop(device, None)

    def _advance(self, device: str) -> None:
        ahead = self._ahead.get(device)
        if not ahead:
            return
        hi = self._hi.get(device, 0)
        while hi + 1 in ahead:
            hi += 1
        self._hi[device] = hi
        ahead.difference_update([s for s in ahead if s <= hi])
        if not ahead:
            del self._ahead[device]

    def _history_page(self, w: Writer, device: str, after: int, result: Any, wanted: dict[str, int],
                      tasks: dict[tuple[str, str], None]) -> None:
        if not isinstance(result, dict):
            return
        if isinstance(result.get("last"), int) and result["last"] < self._hi.get(device, 0):
            self._restart_seq(w, device)
            wanted[device] = 0
            return
        events = result.get("events") if isinstance(result.get("events"), list) else []
        for ev in events:
            self._event(w, device, ev, {}, tasks)
        nxt = result.get("next")
        if isinstance(nxt, int) and nxt >= after:
            self._hi[device] = max(self._hi.get(device, 0), nxt)
        self._advance(device)
        last = result.get("last")
        hi = self._hi.get(device, 0)
        if result.get("more") or (isinstance(last, int) and last > hi and events) or self._ahead.get(device):
            wanted[device] = hi
        else:
            wanted.pop(device, None)

    def _gpio_from_result(self, w: Writer, device: str, action: Any, status: Any, result: Any, ts: Any) -> None:
        if status == "succeeded" and isinstance(action, str) and action.startswith("gpio.") and isinstance(result, dict):
            pin, value = result.get("device"), result.get("value")
            if isinstance(pin, str) and value is not None and not result.get("superseded"):
                self._gpio_change(w, device, pin, str(value), float(ts) if isinstance(ts, (int, float)) else time.time())

    def _gpio_change(self, w: Writer, device: str, pin: str, value: str, ts: float) -> None:
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
