"""Running one command: claim it, call its action, record the outcome, report it.

An outcome is one of: ``succeeded``; ``failed`` (a permanent error, or retries used
up); ``expired`` (its deadline passed before it could start); or back to ``queued``
for a later attempt (a retryable error with attempts left, or the network is down:
then the attempt is given back and the command is "parked").

An outcome that cannot be recorded because the disk is full is kept by its worker and
recorded as soon as the store has space again: left ``running``, the command would run
a second time after the next restart.
"""

from __future__ import annotations

import contextlib
import logging
import random
import sqlite3
import time
from collections.abc import Callable
from typing import NamedTuple, Protocol

from edge_agent.device.actions.registry import Action, Registry
from edge_agent.device.commands import Command
from edge_agent.device.journal import Journal, encode_result
from edge_agent.device.network import PROBE_INTERVAL, NetworkGate, target_of
from edge_agent.device.retry import classify
from edge_agent.device.store import DiskFull, Store
from edge_agent.device.tasks import running
from edge_agent.errors import EdgeAgentError, RetryableError, StorageError

__all__ = ["Finish", "Reporter", "Runner", "Started", "WorkQueue"]

log = logging.getLogger("edge_agent.runner")

#: how long a command may stay parked when it has no deadline of its own
MAX_PARK = 86400.0
MAX_ERROR_TEXT = 1000
RECORD_RETRY_MAX = 2.0  # seconds between tries to record an outcome on a full disk (without a probe)


class Reporter(Protocol):
    """Told about outcomes inside the transaction that records them (the MQTT outbox is one)."""

    def finished(self, cur: sqlite3.Cursor, cmd: Command) -> None: ...

    def started(self, cur: sqlite3.Cursor, cmd: Command) -> None:
        """``cmd`` was claimed and its action is about to run."""

    def retried(self, cur: sqlite3.Cursor, before: Command, cmd: Command) -> None:
        """``cmd`` waits for a later attempt or for the network (``before``: as it was claimed)."""


class WorkQueue(Protocol):
    """What the runner asks of the queue its commands come from (the
    :class:`~edge_agent.device.taskqueue.TaskQueue`)."""

    @property
    def stopping(self) -> bool:
        """True once the daemon stops: an outcome held for a full disk is given up."""

    def retry_at(self, cur: sqlite3.Cursor, cmd: Command, when: float) -> None:
        """Give ``cmd`` a message due at ``when``, in the caller's transaction."""

    def release_parked(self) -> int:
        """Run every command parked for the network now."""

    def acting(self) -> contextlib.AbstractContextManager[None]:
        """Entered around each action (so the queue knows which workers are free)."""


class _Silent:
    def finished(self, cur: sqlite3.Cursor, cmd: Command) -> None:
        pass

    def started(self, cur: sqlite3.Cursor, cmd: Command) -> None:
        pass

    def retried(self, cur: sqlite3.Cursor, before: Command, cmd: Command) -> None:
        pass


class Started(NamedTuple):
    """A command claimed and about to run."""

    cmd: Command
    action: Action
    target: str | None


class Runner:
    def __init__(self, store: Store, journal: Journal, registry: Registry, queue: WorkQueue, *,
                 reporter: Reporter | None = None, gate: NetworkGate | None = None,
                 clock: Callable[[], float] = time.time, rng: random.Random | None = None):
        self.store = store
        self.journal = journal
        self.registry = registry
        self.queue = queue
        self.reporter: Reporter = reporter or _Silent()
        self.gate = gate or NetworkGate()
        self.clock = clock
        self.rng = rng or random.Random()

    def __call__(self, seq: int) -> None:
        try:
            self.run(seq)
        except StorageError as exc:
            # The command stays `running` in the journal: recovered at the next start.
            log.error("command #%d: could not record its outcome: %s", seq, exc)

    def run(self, seq: int) -> Command | None:
        with self.store.transaction() as cur:
            step = self.begin(cur, seq)
        done = self.complete(step)
        assert not isinstance(done, Finish)  # (only defer=True gives one)
        return done

    def begin(self, cur: sqlite3.Cursor, seq: int) -> Started | Command | None:
        """Claim command ``seq`` inside the caller's transaction (the queue's, which also takes
        its message): a :class:`Started` to pass to :meth:`complete`, or the command as it
        ended without running (expired, unknown action, parked), or None if it is not queued."""
        now = self.clock()
        cmd = self.journal.claim(cur, seq)
        if cmd is None:
            return None  # already run or finished: a second message for one command
        action = self.registry.actions_get(cmd.action)
        deadline = _deadline(cmd, action)
        if deadline is not None and now > deadline:
            if cmd.error_type == "network_unavailable":
                why = f"expired while waiting for the network ({cmd.error_message})"
            else:
                why = f"its deadline passed {now - deadline:.1f}s before it could start"
            done = self.journal.finish(cur, seq, "expired", error=("expired", why))
            self.reporter.finished(cur, done)
            log.info("command %s (%s) expired before it could run", cmd.id, cmd.action)
            return done
        if action is None:
            try:
                self.registry.get(cmd.action)
            except EdgeAgentError as exc:
                done = self.journal.finish(cur, seq, "failed", error=(exc.kind, str(exc)))
                self.reporter.finished(cur, done)
                return done
            raise AssertionError("unreachable")
        target = target_of(cmd.action, cmd.args) if action.needs_network else None
        wait = self.gate.may_try(target) if target is not None else None
        if wait is not None:
            return self._park(cur, cmd, action, f"{target} is unreachable; waiting for it", wait=wait)
        self.reporter.started(cur, cmd)
        return Started(cmd, action, target)

    def fail_unstartable(self, cur: sqlite3.Cursor, seq: int, error: tuple[str, str]) -> None:
        """Command ``seq`` could not be started (a bug of ours): it ends ``failed`` with the
        error, and is reported, instead of staying queued without a message."""
        if self.journal.is_queued(cur, seq):
            done = self.journal.finish(cur, seq, "failed", error=error)
            self.reporter.finished(cur, done)

    def complete(self, step: Started | Command | None, defer: bool = False) -> Command | Finish | None:
        """Run a begun command's action (outside any transaction) and record its outcome; with
        ``defer`` (a worker's way), a success comes back as a :class:`Finish` for the caller to
        record, and anything else, recorded already, as None."""
        if not isinstance(step, Started):
            return None if defer else step
        cmd, action, target = step
        started = time.monotonic()
        try:
            kwargs = dict(cmd.args)
            if action.wants_command:
                kwargs["command"] = cmd
            with self.queue.acting(), running(cmd.id):
                result = action.fn(**kwargs)
        except Exception as exc:
            failed = self._failed(cmd, action, exc, target)
            return None if defer else failed
        finish = Finish(self, cmd, encode_result(result), target, time.monotonic() - started)
        if defer:
            return finish
        done = self.record(cmd, finish.record)
        finish.after()
        return done

    def record(self, cmd: Command, write: Callable[[sqlite3.Cursor], Command]) -> Command:
        """``write(cur)`` the outcome of ``cmd``, whose action ran, in a transaction of its own. On
        a full disk the outcome is kept (this worker waits with it) and written once the store
        has space again; other storage errors are raised."""
        delay, said = 0.1, False
        while True:
            try:
                with self.store.transaction() as cur:
                    done = write(cur)
                break
            except DiskFull as exc:
                if not said:
                    log.error("command %s (%s) ran, and its outcome cannot be recorded: %s; kept until there "
                              "is space", cmd.id, cmd.action, exc)
                    said = True
                if self.queue.stopping:
                    # Not recorded: the command stays `running` and the next start runs it again
                    # (or reports it interrupted), as after a kill. A stop must not wait for space.
                    log.error("command %s (%s): stopping with the disk still full; its outcome is not recorded",
                              cmd.id, cmd.action)
                    raise
                if self.store.wait_after_full(1.0, fallback=delay):  # (a store without a probe: backing off)
                    delay = min(delay * 2, RECORD_RETRY_MAX)
        if said:
            log.warning("command %s (%s): outcome recorded (%s) now that there is space", cmd.id, cmd.action, done.state)
        return done

    def _park(self, cur: sqlite3.Cursor, cmd: Command, action: Action, why: str, *, wait: float = PROBE_INTERVAL) -> Command:
        now = self.clock()
        deadline = _deadline(cmd, action)
        give_up = deadline if deadline is not None else cmd.created + MAX_PARK
        if now >= give_up:
            done = self.journal.finish(cur, cmd.seq, "failed", error=("network_unavailable", f"{why} (gave up after "
                                       f"{now - cmd.created:.0f}s without the network)"))
            self.reporter.finished(cur, done)
            return done
        # Jitter upwards only: a probe must not come back before its target may be tried.
        when = min(now + wait * self.rng.uniform(1.0, 1.1) + 0.01, give_up + 0.001)
        parked = self.journal.retry_later(cur, cmd.seq, when, ("network_unavailable", why), refund=True)
        self.queue.retry_at(cur, cmd, when)
        self.reporter.retried(cur, cmd, parked)
        return parked

    def _failed(self, cmd: Command, action: Action, exc: Exception, target: str | None) -> Command:
        kind = classify(exc)
        if target is not None:
            if kind == "network":
                self.gate.failed(target)
            elif self.gate.succeeded(target):  # it answered, if only with an error: the network is there
                self.queue.release_parked()
        error = (_error_type(exc), _error_text(exc))
        policy = action.retry
        now = self.clock()
        parks = kind == "network" and action.needs_network
        if parks:
            log.info("command %s (%s) waits for the network: %s", cmd.id, cmd.action, error[1])

        def write(cur: sqlite3.Cursor) -> Command:
            if parks:
                return self._park(cur, cmd, action, error[1])
            if kind != "permanent" and cmd.attempts <= policy.retries:
                delay = policy.delay_before(cmd.attempts, self.rng)
                if isinstance(exc, RetryableError) and exc.retry_after is not None:
                    delay = max(delay, min(exc.retry_after, policy.max_delay))
                when = now + delay
                deadline = _deadline(cmd, action)
                if deadline is None or when < deadline:
                    retried = self.journal.retry_later(cur, cmd.seq, when, error, max_attempts=policy.retries + 1)
                    self.queue.retry_at(cur, cmd, when)
                    self.reporter.retried(cur, cmd, retried)
                    return retried
            done = self.journal.finish(cur, cmd.seq, "failed", error=error)
            self.reporter.finished(cur, done)
            return done

        done = self.record(cmd, write)
        if parks:
            return done
        if done.state == "queued":
            log.warning("command %s (%s) attempt %d of %d failed: %s; next attempt in %.1fs", cmd.id, cmd.action,
                        cmd.attempts, policy.retries + 1, error[1], (done.next_attempt or now) - now)
        else:
            log.error("command %s (%s) failed after %d attempt(s): %s: %s", cmd.id, cmd.action, cmd.attempts,
                      error[0], error[1])
        return done


class Finish:
    """A success to record: :meth:`record` inside a transaction, :meth:`after` once it committed."""

    said_full = False  # the worker logged that the disk is full while it holds this outcome

    def __init__(self, runner: Runner, cmd: Command, result_json: str | None, target: str | None, took: float):
        self.runner, self.cmd, self.result_json, self.target, self.took = runner, cmd, result_json, target, took

    def record(self, cur: sqlite3.Cursor) -> Command:
        done = self.runner.journal.finish(cur, self.cmd.seq, "succeeded", claimed=self.cmd, result_json=self.result_json)
        self.runner.reporter.finished(cur, done)
        return done

    def after(self) -> None:
        runner = self.runner
        if self.target is not None and runner.gate.succeeded(self.target):
            log.info("%s is reachable again: releasing parked commands", self.target)
            runner.queue.release_parked()
        log.debug("command %s (%s) succeeded in %.1f ms", self.cmd.id, self.cmd.action, self.took * 1000)
        if self.said_full:
            log.warning("command %s (%s): outcome recorded (succeeded) now that there is space", self.cmd.id,
                        self.cmd.action)


def _deadline(cmd: Command, action: Action | None) -> float | None:
    """The earlier of the command's own deadline and its action's (``@task(deadline=...)``,
    counted from when the command was queued, however it was queued)."""
    policy = action.retry if action is not None else None
    own = cmd.deadline
    if policy is not None and policy.deadline is not None:
        by_policy = cmd.created + policy.deadline
        return by_policy if own is None else min(own, by_policy)
    return own


def _error_type(exc: BaseException) -> str:
    if isinstance(exc, EdgeAgentError):
        return exc.kind
    return type(exc).__name__


def _error_text(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= MAX_ERROR_TEXT else text[: MAX_ERROR_TEXT - 1] + "…"
