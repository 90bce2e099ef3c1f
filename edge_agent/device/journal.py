"""The command journal: every command's state, from ``queued`` to an outcome.

    queued ──claim──► running ──► succeeded | failed
      │  ▲                 │
      │  └── retry later ◄─┘ (attempts left; ``next_attempt`` set)
      └──► expired (its deadline passed before it could start)

The journal, not Huey's queue, is the source of truth: Huey deletes a task before
running it, so a crash could lose it. At start-up :meth:`Journal.recover` puts the
commands a kill left ``running`` back in line, with their attempt given back.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from edge_agent.device.commands import Command, NewCommand
from edge_agent.device.store import Store

__all__ = ["Journal", "Recovery", "encode_result"]

_COLUMNS = (
    "seq, id, action, args, source, state, attempts, created, not_before, deadline, started, finished, "
    "next_attempt, result, error_type, error_message, reply_to, correlation, parked, max_attempts"
)


def _row(r: tuple[Any, ...]) -> Command:
    return Command(
        seq=r[0], id=r[1], action=r[2], args=json.loads(r[3]), source=r[4], state=r[5], attempts=r[6],
        created=r[7], not_before=r[8], deadline=r[9], started=r[10], finished=r[11], next_attempt=r[12],
        result=json.loads(r[13]) if r[13] is not None else None, error_type=r[14], error_message=r[15],
        reply_to=r[16], correlation=r[17], parked=bool(r[18]), max_attempts=r[19], args_json=r[3], result_json=r[13],
    )


#: a command interrupted by this many kills in a row is not run again
MAX_INTERRUPTS = 3


@dataclass(frozen=True)
class Recovery:
    """What :meth:`Journal.recover` found after a stop or crash."""

    rerun: list[Command]
    interrupted: list[Command]


def encode_result(value: Any) -> str | None:
    """An action's return value as the journal stores it (JSON text; a value JSON cannot hold is
    stored as its ``repr``); None for None."""
    if value is None:
        return None
    try:
        return json.dumps(value, separators=(",", ":"))
    except (TypeError, ValueError):
        return json.dumps(repr(value), separators=(",", ":"))


class Journal:
    """Reads and changes command rows. Methods taking ``cur`` join the caller's transaction."""

    def __init__(self, store: Store, clock: Callable[[], float] = time.time):
        self.store = store
        self.clock = clock

    # ----------------------------------------------------------------- writing

    def add(self, cur: sqlite3.Cursor, cmd: NewCommand, *, enqueued: bool) -> tuple[Command, bool]:
        """Insert ``cmd``; if its id is already known, return the stored row and False."""
        now = self.clock()
        args = json.dumps(cmd.args, separators=(",", ":"))
        row = cur.execute(
            "insert into commands (id, action, args, source, state, created, not_before, deadline, reply_to, correlation, enqueued) "
            "values (?, ?, ?, ?, 'queued', ?, ?, ?, ?, ?, ?) on conflict (id) do nothing returning seq",
            (cmd.id, cmd.action, args, cmd.source, now, cmd.not_before, cmd.deadline, cmd.reply_to, cmd.correlation,
             int(enqueued)),
        ).fetchone()
        if row is not None:
            # The new row, as a select would read it (args: the validated mapping just stored).
            return Command(seq=row[0], id=cmd.id, action=cmd.action, args=cmd.args, source=cmd.source, state="queued",
                           attempts=0, created=now, not_before=cmd.not_before, deadline=cmd.deadline, started=None,
                           finished=None, next_attempt=None, result=None, error_type=None, error_message=None,
                           reply_to=cmd.reply_to, correlation=cmd.correlation, parked=False, args_json=args), True
        row = cur.execute(f"select {_COLUMNS} from commands where id = ?", (cmd.id,)).fetchone()
        return _row(row), False

    def claim(self, cur: sqlite3.Cursor, seq: int) -> Command | None:
        """Mark a queued command running (one more attempt); None if it is not queued any more."""
        now = self.clock()
        row = cur.execute(
            f"update commands set state = 'running', attempts = attempts + 1, started = ?, parked = 0 "
            f"where seq = ? and state = 'queued' returning {_COLUMNS}",
            (now, seq),
        ).fetchone()
        return _row(row) if row else None

    def finish(self, cur: sqlite3.Cursor, seq: int, state: str, *, result: Any = None,
               error: tuple[str, str] | None = None, claimed: Command | None = None,
               result_json: str | None = None) -> Command:
        """Record an outcome: ``succeeded``, ``failed`` or ``expired``. ``claimed``: the row as
        this worker claimed it (the outcome is then made from it, not read back); ``result_json``:
        ``result`` encoded already (as :func:`encode_result` does)."""
        now = self.clock()
        if result_json is None and result is not None:
            result_json = json.dumps(result, default=str, separators=(",", ":"))
        params = (state, now, result_json, error[0] if error else None, error[1] if error else None, seq)
        if claimed is None:
            row = cur.execute(
                f"update commands set state = ?, finished = ?, result = ?, error_type = ?, error_message = ?, "
                f"next_attempt = null, parked = 0 where seq = ? returning {_COLUMNS}", params).fetchone()
            return _row(row)
        # Nothing but the claiming worker changes a running row, and this sets every column that moves.
        cur.execute("update commands set state = ?, finished = ?, result = ?, error_type = ?, error_message = ?, "
                    "next_attempt = null, parked = 0 where seq = ?", params)
        c = claimed
        return Command(seq=c.seq, id=c.id, action=c.action, args=c.args, source=c.source, state=state,
                       attempts=c.attempts, created=c.created, not_before=c.not_before, deadline=c.deadline,
                       started=c.started, finished=now,
                       next_attempt=None, result=json.loads(result_json) if result_json is not None else None,
                       error_type=params[3], error_message=params[4], reply_to=c.reply_to, correlation=c.correlation,
                       parked=False, max_attempts=c.max_attempts, result_json=result_json, args_json=c.args_json)

    def retry_later(self, cur: sqlite3.Cursor, seq: int, when: float, error: tuple[str, str], *,
                    refund: bool = False, max_attempts: int | None = None) -> Command:
        """Put a command back in line for ``when``; ``refund`` gives back the attempt (parked work)."""
        row = cur.execute(
            f"update commands set state = 'queued', next_attempt = ?, error_type = ?, error_message = ?, "
            f"attempts = attempts - ?, parked = ?, max_attempts = coalesce(?, max_attempts) where seq = ? returning {_COLUMNS}",
            (when, error[0], error[1], int(refund), int(refund), max_attempts, seq),
        ).fetchone()
        return _row(row)

    def release_parked(self, cur: sqlite3.Cursor, when: float) -> list[tuple[int, str]]:
        """Make every command parked for the network due at ``when``; their (seq, action)."""
        rows = cur.execute("update commands set next_attempt = ? where state = 'queued' and parked = 1 "
                           "returning seq, action", (when,)).fetchall()
        return [(int(seq), str(action)) for seq, action in rows]

    def unadopted(self, cur: sqlite3.Cursor, after_seq: int, upto_seq: int) -> list[Command]:
        """Commands other processes wrote (``enqueued = 0``) with ``after_seq < seq <= upto_seq``.

        Read only, and no index: a range scan of the rows since the daemon's last look, so
        taking one costs no write. Seqs are assigned in commit order (one writer at a time),
        so none can appear later below a seq already seen.
        """
        rows = cur.execute(
            f"select {_COLUMNS} from commands where seq > ? and seq <= ? and enqueued = 0 order by seq",
            (after_seq, upto_seq),
        ).fetchall()
        return [_row(r) for r in rows]

    def last_seq(self, cur: sqlite3.Cursor | None = None) -> int:
        """The highest seq written so far (0 for none); in ``cur``'s transaction if given."""
        sql = "select coalesce(max(seq), 0) from commands"
        return int(cur.execute(sql).fetchone()[0] if cur is not None else self.store.query(sql)[0][0])

    def seq_state(self, cur: sqlite3.Cursor, command_id: str) -> tuple[int, str] | None:
        """(seq, state) of the command ``command_id``, None if unknown."""
        row = cur.execute("select seq, state from commands where id = ?", (command_id,)).fetchone()
        return (int(row[0]), str(row[1])) if row is not None else None

    def is_queued(self, cur: sqlite3.Cursor, seq: int) -> bool:
        return cur.execute("select 1 from commands where seq = ? and state = 'queued'", (seq,)).fetchone() is not None

    def recover(self, cur: sqlite3.Cursor, reruns: Callable[[Command], bool] = lambda cmd: True) -> Recovery:
        """Settle the commands a kill left ``running`` (found by their index, so the cost does not
        grow with the backlog): each goes back in line with its attempt given back, since a kill
        is not a failure of the task. It fails as ``interrupted`` instead when ``reruns(cmd)`` is
        false (an ``at_most_once`` task), or when it was interrupted ``MAX_INTERRUPTS`` times (it
        is probably what stops the agent: a crash, a hang the watchdog ends)."""
        rows = cur.execute(f"select {_COLUMNS}, interrupts from commands where state = 'running' order by seq").fetchall()
        rerun, interrupted = [], []
        now = self.clock()
        for r in rows:
            cmd, interrupts = _row(r), r[-1] + 1
            again = reruns(cmd)
            if again and interrupts < MAX_INTERRUPTS:
                row = cur.execute(
                    f"update commands set state = 'queued', attempts = max(attempts - 1, 0), interrupts = ?, "
                    f"started = null where seq = ? returning {_COLUMNS}", (interrupts, cmd.seq)).fetchone()
                rerun.append(_row(row))
            else:
                row = cur.execute(
                    f"update commands set state = 'failed', finished = ?, interrupts = ?, error_type = 'interrupted', "
                    f"error_message = ? where seq = ? returning {_COLUMNS}",
                    (now, interrupts, "the agent stopped while this command was running; it runs at most once, so "
                     "it was not run again" if not again else f"the agent stopped {interrupts} times while this command "
                     "was running (does it crash or hang the agent?); not run again", cmd.seq)).fetchone()
                interrupted.append(_row(row))
        return Recovery(rerun, interrupted)

    def prune(self, older_than: float) -> int:
        """Forget finished commands older than ``older_than`` (unix time); returns how many."""
        with self.store.transaction() as cur:
            # Never the newest row: seq is max + 1, and must not come back.
            cur.execute("delete from commands where finished is not null and finished < ? "
                        "and seq < (select max(seq) from commands)", (older_than,))
            return cur.rowcount

    # ----------------------------------------------------------------- reading

    def get(self, command_id: str) -> Command | None:
        rows = self.store.query(f"select {_COLUMNS} from commands where id = ?", (command_id,))
        return _row(rows[0]) if rows else None

    def history(self, limit: int = 20, *, exclude: tuple[str, ...] = ()) -> list[Command]:
        """The latest ``limit`` commands, newest first, leaving out the actions in ``exclude``."""
        skip = f"where action not in ({', '.join('?' * len(exclude))}) " if exclude else ""
        rows = self.store.query(f"select {_COLUMNS} from commands {skip}order by seq desc limit ?", (*exclude, limit))
        return [_row(r) for r in rows]

    def depth(self) -> int:
        """How many commands are queued or running."""
        return int(self.store.query("select count(*) from commands where state in ('queued', 'running')")[0][0])

    def failures_since(self, since: float) -> int:
        """How many commands ended ``failed`` or ``expired`` after ``since`` (unix time)."""
        return int(self.store.query("select count(*) from commands where state in ('failed', 'expired') "
                                    "and finished > ?", (since,))[0][0])

    def waiting(self, limit: int = 10) -> list[Command]:
        """Commands parked for the network or waiting for their next attempt, oldest first."""
        rows = self.store.query(
            f"select {_COLUMNS} from commands where state = 'queued' and (parked = 1 or next_attempt is not null) "
            f"order by seq limit ?", (limit,)
        )
        return [_row(r) for r in rows]

    def recent_failures(self, limit: int = 5) -> list[Command]:
        rows = self.store.query(
            f"select {_COLUMNS} from commands where state in ('failed', 'expired') order by finished desc limit ?", (limit,)
        )
        return [_row(r) for r in rows]

    def counts(self) -> dict[str, int]:
        out = {"queued": 0, "running": 0, "parked": 0, "retrying": 0}
        for state, parked, retrying, n in self.store.query(
            "select state, parked, next_attempt is not null, count(*) from commands "
            "where state in ('queued', 'running') group by 1, 2, 3"
        ):
            out[state] += n
            if parked:
                out["parked"] += n
            elif retrying and state == "queued":
                out["retrying"] += n
        return out
