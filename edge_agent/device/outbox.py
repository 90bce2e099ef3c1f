"""The durable outbox: every message the agent publishes is a row here first.

Rows are published in order at QoS 1 and deleted when the broker acknowledges
them (PUBACK), so what the device says while the broker is unreachable is
delivered when it returns, also across restarts. Retained state messages coalesce:
a row with a ``coalesce_key`` replaces the unsent one with the same key (only the
latest value of a state matters). Replies never coalesce.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from edge_agent.device.store import DiskFull, Store

__all__ = ["LAZY_WAIT", "Outbox", "OutMessage"]

#: seconds a lazy message (a command's ``accepted``, an output's state, an ack to settle) may wait
#: for the publisher's next pass: a quick command's messages then leave in one pass with its
#: final reply, instead of a pass each that competes with the worker running the command
LAZY_WAIT = 0.002


@dataclass(frozen=True)
class OutMessage:
    seq: int
    topic: str
    payload: bytes
    qos: int
    retain: bool
    props: dict[str, Any] | None


class Outbox:
    def __init__(self, store: Store):
        self.store = store
        self.cond = threading.Condition()
        self.generation = 0  # bumped by wake(): the publisher makes a pass now
        self.due: float | None = None  # monotonic: by when a lazy wake wants a pass (guarded by cond)
        self._unremoved: list[tuple[int]] = []  # delivered rows a full disk kept us from deleting

    def put(self, cur: sqlite3.Cursor, topic: str, payload: bytes | str, *, qos: int = 1, retain: bool = False,
            coalesce: bool = False, props: dict[str, Any] | None = None, lazy: bool = False) -> None:
        """Add a message inside the caller's transaction (the publisher is woken once it commits;
        ``lazy``: within :data:`LAZY_WAIT`, see :meth:`wake_lazy`)."""
        data = payload.encode() if isinstance(payload, str) else payload
        key = topic if coalesce else None
        if key is not None:
            cur.execute("delete from outbox where coalesce_key = ?", (key,))
        cur.execute(
            "insert into outbox (topic, payload, qos, retain, coalesce_key, props, created) values (?, ?, ?, ?, ?, ?, ?)",
            (topic, data, qos, int(retain), key, json.dumps(props) if props else None, time.time()),
        )
        self.store.after_commit(self.wake_lazy if lazy else self.wake)

    def wake(self) -> None:
        """The publisher makes a pass now (a final reply waits: the sender waits for it)."""
        with self.cond:
            self.generation += 1
            self.cond.notify_all()

    def wake_lazy(self) -> None:
        """The publisher makes a pass within LAZY_WAIT, or with the next :meth:`wake` if sooner."""
        with self.cond:
            if self.due is None:
                self.due = time.monotonic() + LAZY_WAIT
                self.cond.notify_all()  # (it recomputes how long it sleeps; no pass)

    def pending(self, after_seq: int, limit: int) -> list[OutMessage]:
        rows = self.store.query(
            "select seq, topic, payload, qos, retain, props from outbox where seq > ? order by seq limit ?", (after_seq, limit)
        )
        return [OutMessage(r[0], r[1], bytes(r[2]), r[3], bool(r[4]), json.loads(r[5]) if r[5] else None) for r in rows]

    def pending_on(self, topics: list[str], after_seq: int) -> list[OutMessage]:
        """The rows after ``after_seq`` on any of ``topics``, in order (the GPIO states sent ahead)."""
        rows = self.store.query(f"select seq, topic, payload, qos, retain from outbox where seq > ? and topic in "
                                f"({','.join('?' * len(topics))}) order by seq", (after_seq, *topics))
        return [OutMessage(r[0], r[1], bytes(r[2]), r[3], bool(r[4]), None) for r in rows]

    def last_seq(self) -> int:
        """The seq of the newest row waiting (0 if none)."""
        return int(self.store.query("select coalesce(max(seq), 0) from outbox")[0][0])

    @property
    def unremoved(self) -> bool:
        """Whether delivered rows wait to be deleted (a full disk kept :meth:`remove` from it)."""
        return bool(self._unremoved)

    def remove(self, seqs: Iterable[int]) -> None:
        """Delete delivered rows. On a full disk they are deleted with the next call that can
        (the publisher goes on meanwhile; only a restart before then would send them again)."""
        batch = [(s,) for s in seqs]
        if self._unremoved:
            batch = self._unremoved + batch
        if batch:
            try:
                with self.store.transaction() as cur:
                    cur.executemany("delete from outbox where seq = ?", batch)
            except DiskFull:
                self._unremoved = batch
                return
            self._unremoved = []

    def depth(self) -> tuple[int, float | None]:
        """(messages waiting, age in seconds of the oldest)."""
        n, oldest = self.store.query("select count(*), min(created) from outbox")[0]
        return int(n), (time.time() - oldest) if oldest is not None else None
