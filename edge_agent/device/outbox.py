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

__all__ = ["Outbox", "OutMessage"]


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
        self.generation = 0
        self._unremoved: list[tuple[int]] = []  # delivered rows a full disk kept us from deleting

    def put(self, cur: sqlite3.Cursor, topic: str, payload: bytes | str, *, qos: int = 1, retain: bool = False,
            coalesce: bool = False, props: dict[str, Any] | None = None) -> None:
        """Add a message inside the caller's transaction (the publisher is woken once it commits)."""
        data = payload.encode() if isinstance(payload, str) else payload
        key = topic if coalesce else None
        if key is not None:
            cur.execute("delete from outbox where coalesce_key = ?", (key,))
        cur.execute(
            "insert into outbox (topic, payload, qos, retain, coalesce_key, props, created) values (?, ?, ?, ?, ?, ?, ?)",
            (topic, data, qos, int(retain), key, json.dumps(props) if props else None, time.time()),
        )
        self.store.after_commit(self.wake)

    def wake(self) -> None:
        with self.cond:
            self.generation += 1
            self.cond.notify_all()

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
