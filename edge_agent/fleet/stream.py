"""Following the fleet's events: each once, and the gaps in a device's ``seq`` filled with ``agent.history``.

A device numbers its events 1, 2, 3 ... (``seq``) and publishes them on ``P/D/events``; a
consumer that sees a jump in ``seq`` missed some (it was away, or the device's outbox dropped
them while the broker was unreachable) and asks the device for them with ``agent.history``
(:func:`edge_agent.contract.history_page`). Two consumers follow that protocol with the parts
of this module:

- :class:`EventStream` (``edge-agent fleet events --follow``): in memory, every event given
  to its callback once, in ``seq`` order per device.
- the monitor (:mod:`edge_agent.fleet.monitor.ingest` and ``.link``): every event stored as it
  comes, its place in each device's ``seq`` kept in its database.

The parts: :class:`SeqLine` (one device's place: what is had, what is beyond a gap, how a page
of history moves it, and when to ask again), :class:`HistoryRequests` (the requests in flight:
one per device, matched to their replies by id) and :func:`read_page`.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

from edge_agent.contract import (
    ANY,
    FINAL,
    HISTORY_ACTION,
    MAX_HISTORY,
    SEQ_MAX,
    Rejected,
    check_reply,
    clean_event,
    command_topic,
    device_topic,
    heard,
    loads,
    text,
)
from edge_agent.fleet.client import REPLY_BYTES, FleetClient, new_id

__all__ = ["BATCH_EVENTS_MAX", "STREAM_BUFFER", "EventStream", "HistoryRequests", "Page", "SeqLine", "lacks_history",
           "read_page", "restarted"]

log = logging.getLogger("edge_agent.fleet")

STREAM_BUFFER = 10_000  # events EventStream holds per device beyond a gap while it is being filled
BATCH_EVENTS_MAX = 1000  # events in one message (an agent sends at most 500): a longer array is dropped whole


# --------------------------------------------------------------------------- the shared core


class SeqLine:
    """One device's place in its events: every seq up to ``hi`` is had (or known to be gone);
    ``ahead`` holds the seqs had beyond a gap."""

    __slots__ = ("ahead", "hi")

    def __init__(self, hi: int = 0, ahead: Iterable[int] = ()):
        self.hi = hi
        self.ahead = {s for s in ahead if s > hi}
        self._absorb()

    def copy(self) -> SeqLine:
        return SeqLine(self.hi, self.ahead)

    def new(self, seq: int) -> bool:
        """Whether ``seq`` is not had yet."""
        return seq > self.hi and seq not in self.ahead

    def add(self, seq: int) -> bool:
        """``seq`` is had now; True when it was the next one (``hi`` moved), False when it is beyond a gap."""
        if seq != self.hi + 1:
            self.ahead.add(seq)
            return False
        self.hi = seq
        self._absorb()
        return True

    def skip_to(self, upto: int) -> int:
        """Everything up to ``upto`` is had or gone for good; returns how many of those seqs are gone."""
        if upto <= self.hi:
            return 0
        had = sum(1 for s in self.ahead if s <= upto)
        gone = upto - self.hi - had
        if had:
            self.ahead = {s for s in self.ahead if s > upto}
        self.hi = upto
        self._absorb()
        return gone

    def page_end(self, after: int, nxt: int, more: bool, last: int | None) -> tuple[bool, int]:
        """A page of history asked for after ``after`` is in (its events added): (ask again after
        ``hi``?, how many seqs are gone).

        The device sends every event it keeps after ``after``, in order: what is missing below
        ``nxt`` was pruned on the device. It is asked again while the pages move on (``nxt`` past
        ``after``) and there is more (``more``, a gap left before ``ahead``, a ``last`` beyond
        ``hi``). When they stop moving on, a gap left is gone: a device that says ``more`` for
        ever without moving on is not asked again and again."""
        gone = self.skip_to(nxt) if nxt > after else 0
        if nxt > after and (more or self.ahead or (last is not None and last > self.hi)):
            return True, gone
        if self.ahead:
            gone += self.skip_to(min(self.ahead) - 1)
        return False, gone

    def _absorb(self) -> None:
        """Move ``hi`` over the seqs held right after it (``ahead`` holds only seqs above ``hi``)."""
        ahead, hi = self.ahead, self.hi
        while hi + 1 in ahead:
            hi += 1
            ahead.discard(hi)
        self.hi = hi


class Page(NamedTuple):
    """One ``agent.history`` result, read: its events as sent (each consumer checks them), its ``next``
    (``after`` when it does not say), ``more`` and ``last`` (None when it does not say)."""

    events: list[Any]
    next: int
    more: bool
    last: int | None


def restarted(after: int, last: int | None) -> bool:
    """Whether a device asked for its events after ``after`` that answers that its newest seq is
    ``last`` counts from 1 again (a new database): ``last`` never goes down otherwise, and the
    consumer had every seq up to ``after`` from it. (Not the consumer's position now: events
    published after the device's answer was made may have moved it beyond ``last``.)"""
    return last is not None and last < after


def _is_seq(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= SEQ_MAX


def read_page(result: dict[str, Any], after: int) -> Page:
    """The page an ``agent.history`` result holds; :class:`Rejected` when its ``next`` or ``last``
    is not a seq. Events beyond :data:`MAX_HISTORY` (more than a page holds) are left out."""
    for key in ("next", "last"):
        value = result.get(key)
        if value is not None and not _is_seq(value):
            raise Rejected(f"{key} is {str(value)[:30]}")
    raw = result.get("events")
    nxt, last = result.get("next"), result.get("last")
    return Page(raw[:MAX_HISTORY] if isinstance(raw, list) else [], nxt if isinstance(nxt, int) else after,
                result.get("more") is True, last if isinstance(last, int) else None)


def lacks_history(doc: dict[str, Any]) -> bool:
    """Whether a reply to ``agent.history`` says the device has no such action (an older agent)."""
    error = doc.get("error")
    return doc.get("status") == "rejected" and isinstance(error, dict) and error.get("type") in ("unknown_action",
                                                                                                 "unknown")


class _Asked(NamedTuple):
    id: str
    after: int
    at: float


class HistoryRequests:
    """A consumer's ``agent.history`` requests: at most one in flight per device; one unanswered for
    ``timeout`` seconds may be sent again. ``send(device, doc)`` publishes a command document on
    ``P/D/cmd/agent.history`` (it may raise ConnectionError: then nothing is in flight); ``new_id()``
    names a request. Thread-safe."""

    def __init__(self, send: Callable[[str, dict[str, Any]], None], new_id: Callable[[], str], *, timeout: float,
                 limit: int = MAX_HISTORY, clock: Callable[[], float] = time.monotonic):
        self.send = send
        self.new_id = new_id
        self.timeout = timeout
        self.limit = limit
        self.clock = clock
        self._asked: dict[str, _Asked] = {}
        self._lock = threading.Lock()

    def ask(self, device: str, after: int, **args: Any) -> bool:
        """Ask ``device`` for its events after ``after`` (``args``: more filters), unless a request is
        in flight and not overdue; True when one was sent."""
        now = self.clock()
        with self._lock:
            asked = self._asked.get(device)
            if asked is not None and now - asked.at < self.timeout:
                return False
            request_id = self.new_id()
            self._asked[device] = _Asked(request_id, after, now)
        try:
            self.send(device, {"id": request_id, "args": {"after": after, "limit": self.limit, **args}})
        except ConnectionError:
            with self._lock:
                if self._asked.get(device, _Asked("", 0, 0.0)).id == request_id:
                    del self._asked[device]
            return False
        return True

    def answered(self, device: str, doc: dict[str, Any]) -> int | None:
        """The ``after`` of the request in flight to ``device`` that the reply ``doc`` ends (it is no
        longer in flight); None when ``doc`` ends none (another id, or only ``accepted``)."""
        with self._lock:
            asked = self._asked.get(device)
            if asked is None or doc.get("id") != asked.id or doc.get("status") not in FINAL:
                return None
            del self._asked[device]
        return asked.after

    def in_flight(self, device: str) -> bool:
        with self._lock:
            return device in self._asked

    def overdue(self) -> list[str]:
        """The devices whose request has waited ``timeout`` seconds for its answer."""
        now = self.clock()
        with self._lock:
            return [d for d, asked in self._asked.items() if now - asked.at >= self.timeout]

    def clear(self) -> None:
        """Forget every request (a new connection: their answers went to nobody)."""
        with self._lock:
            self._asked.clear()


# --------------------------------------------------------------------------- EventStream


class EventStream:
    """Every event of the selected devices, once each and in ``seq`` order per device.

    ``positions`` ({device: last seq seen}) resumes where an earlier stream stopped: those
    devices are asked for what came after at once. A jump in ``seq`` (the consumer was
    away, or the device's outbox dropped events while the broker was unreachable) is
    filled with ``agent.history``; events that the device no longer keeps are counted in
    ``lost``. ``on_event(doc)`` is called from the stream's own thread.
    """

    HISTORY_TIMEOUT = 10.0

    def __init__(self, client: FleetClient, on_event: Callable[[dict[str, Any]], None], *,
                 devices: Iterable[str] = (), positions: dict[str, int] | None = None):
        self.client = client
        self.prefix = client.prefix
        self.on_event = on_event
        self.devices = list(devices)
        self._lines = {device: SeqLine(seq) for device, seq in (positions or {}).items()}
        self.lost: dict[str, int] = {}
        self.fills = 0  # agent.history requests made to fill gaps
        self._buffer: dict[str, dict[int, dict[str, Any]]] = {}
        self._requests = HistoryRequests(self._send, new_id, timeout=self.HISTORY_TIMEOUT)
        self._inbox: queue.Queue[tuple[str, str, Any]] = queue.Queue()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._remove: Callable[[], None] | None = None

    @property
    def last(self) -> dict[str, int]:
        """{device: the seq up to which every event was given (or is lost)}: the positions to resume from."""
        return {device: line.hi for device, line in list(self._lines.items())}

    def start(self) -> None:
        self._stop.clear()
        removers = [self.client.on_message(self._on_message), self.client.on_reconnect(self._catch_up)]

        def remove() -> None:
            for r in removers:
                r()

        self._remove = remove
        devices = self.devices or [ANY]
        self.client.subscribe([device_topic(self.prefix, d, leaf) for d in devices for leaf in ("events", "reply")])
        self._thread = threading.Thread(target=self._loop, name="fleet-events", daemon=True)
        self._thread.start()
        self._catch_up()

    def _catch_up(self) -> None:
        """Ask every device we know for what came after our last: at a resumed start, and after
        a reconnect (what was published while we were away came to nobody)."""
        for device in list(self._lines):
            self._inbox.put(("catch_up", device, None))

    def stop(self) -> None:
        self._stop.set()
        if self._remove is not None:
            self._remove()
            self._remove = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def _on_message(self, msg: Any) -> None:
        where = heard(self.prefix, msg.topic)
        if where is None or where.leaf not in ("events", "reply") or (self.devices and where.device not in self.devices):
            return
        try:
            doc = loads(msg.payload, REPLY_BYTES)
            docs: list[dict[str, Any] | None]
            if where.leaf == "reply":
                docs = [check_reply(doc)]
            else:  # events come one per message (an object) or batched (an array of them, in seq order)
                if isinstance(doc, list) and len(doc) > BATCH_EVENTS_MAX:
                    raise Rejected(f"{len(doc)} events in one message (at most {BATCH_EVENTS_MAX})")
                docs = [_clean_or_none(one, msg.topic) for one in (doc if isinstance(doc, list) else [doc])]
        except Rejected as exc:
            log.debug("fleet events: a message on %s ignored: %s", msg.topic[:200], exc)
            return
        for one in docs:
            if one is not None:  # a bad event of a batch is dropped alone
                self._inbox.put((where.leaf, where.device, one))

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                kind, device, doc = self._inbox.get(timeout=0.5)
            except queue.Empty:
                self._check_timeouts()
                continue
            try:
                if kind == "events":
                    self._event(device, doc)
                elif kind == "reply":
                    self._reply(device, doc)
                else:
                    self._fill(device)
            except Exception:
                log.exception("fleet events: handling a message from %s", device)
            self._check_timeouts()

    def _event(self, device: str, doc: dict[str, Any]) -> None:
        seq = doc["seq"]
        line = self._lines.get(device)
        if line is None:
            line = self._lines[device] = SeqLine(seq - 1)  # the first event seen of a device: the stream starts here
        if not line.new(seq):
            return  # seen already (an outbox resend after a crash, or it came with a fill)
        before = line.hi
        self._buffer.setdefault(device, {})[seq] = doc
        line.add(seq)
        if len(line.ahead) > STREAM_BUFFER:
            # A gap that is not being filled while events keep coming (a device that jumps
            # seq on purpose, or cannot answer agent.history): memory stays bounded; the gap is lost.
            self._lose(device, line.skip_to(min(line.ahead) - 1))
        self._drain(device, before)

    def _drain(self, device: str, before: int) -> None:
        """Give the events held from ``before`` up to the line's ``hi``, in order; ask for a gap left."""
        line, buf = self._lines[device], self._buffer.get(device, {})
        if line.hi - before <= len(buf):
            seqs: Iterable[int] = range(before + 1, line.hi + 1)
        else:  # a long stretch skipped as lost: only what is held
            seqs = sorted(s for s in buf if s <= line.hi)
        for seq in seqs:
            doc = buf.pop(seq, None)
            if doc is not None:
                self.on_event(doc)
        if line.ahead:
            self._fill(device)

    def _fill(self, device: str) -> None:
        line = self._lines.setdefault(device, SeqLine())
        if self._requests.ask(device, line.hi):
            self.fills += 1

    def _send(self, device: str, doc: dict[str, Any]) -> None:
        self.client.publish_nowait(command_topic(self.prefix, device, HISTORY_ACTION), doc)

    def _reply(self, device: str, doc: dict[str, Any]) -> None:
        after = self._requests.answered(device, doc)
        if after is None:
            return
        if doc["status"] != "succeeded":
            log.warning("fleet events: %s answered agent.history with %s: %s", device, doc["status"], doc.get("error"))
            return
        result = doc.get("result")
        if not isinstance(result, dict) or not isinstance(result.get("events"), list):
            log.warning("fleet events: %s answered agent.history without a list of events", device)
            return
        try:
            page = read_page(result, after)
        except Rejected as exc:
            log.warning("fleet events: %s answered agent.history with a page that breaks the protocol: %s", device,
                        text(str(exc), 200))
            return
        line = self._lines.setdefault(device, SeqLine())
        buf = self._buffer.setdefault(device, {})
        if restarted(after, page.last):
            log.warning("fleet events: %s counts its events from 1 again (its last seq %s, below the %d seen)", device,
                        page.last, after)
            line = self._lines[device] = SeqLine()
            buf.clear()
            self._fill(device)
            return
        before = line.hi
        events = []
        for ev in page.events:
            try:
                events.append(clean_event(ev))
            except Rejected:
                continue
        for ev in sorted(events, key=lambda ev: ev["seq"]):
            if line.new(ev["seq"]):
                buf[ev["seq"]] = ev
                line.add(ev["seq"])
        again, gone = line.page_end(after, page.next, page.more, page.last)
        self._lose(device, gone)
        self._drain(device, before)
        if again:
            self._fill(device)

    def _lose(self, device: str, gone: int) -> None:
        if gone:
            self.lost[device] = self.lost.get(device, 0) + gone

    def _check_timeouts(self) -> None:
        for device in self._requests.overdue():
            self._fill(device)


def _clean_or_none(event: Any, topic: str) -> dict[str, Any] | None:
    """One event of a message, checked (:func:`clean_event`); None, logged, when it is bad."""
    try:
        return clean_event(event)
    except Rejected as exc:
        log.debug("fleet events: an event on %s ignored: %s", topic[:200], exc)
        return None
