"""Which firings are due: the rules that make a schedule safe across restarts and clock steps.

A firing is identified by (job name, planned instant). The planner is pure: the
caller passes the job, what it persisted (``last_planned``: the instant up to which
the job's planned instants are settled, normally the latest one fired or deliberately
skipped), when it first saw the job (``since``) and the trusted current time. It
returns the planned instants to run now and the new ``last_planned`` to persist.

Invariants (tested):

* never early: only planned instants <= now are returned;
* never twice: only planned instants > last_planned are returned, and the returned
  ``last_planned`` covers them, so a restart or a clock step backwards (now <
  last_planned) fires nothing again until a planned instant after last_planned;
* never from before the job existed: a job with no history only considers planned
  instants at or after ``since``;
* after downtime, or a clock step forwards, the job's ``missed`` policy decides which
  of the planned instants that went by are run (see :class:`Job`); a job bounded by
  ``not_before``/``not_after`` runs none of them while ``now`` is outside its hours.

Caller contract (crash safety): enqueue the returned firings keyed by (job, planned
instant) with a unique constraint, then persist ``last_planned``, ideally in the same
SQLite transaction. If the process dies between the two, the next call returns the
same instants again (or, for ``once``, possibly a later one) and the unique key turns
the repeat into a no-op. The planner assumes ``now`` comes from a trusted clock: hold
time-based jobs until the system clock is synchronised.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from edge_agent.schedule.triggers import BoundedTrigger, Trigger

__all__ = ["MISSED_POLICIES", "Decision", "Job", "Planner"]

MISSED_POLICIES = ("skip", "once", "all")
_MICROSECOND = timedelta(microseconds=1)


@dataclass(frozen=True)
class Job:
    """A scheduled job as the planner sees it.

    ``missed`` decides what happens to planned instants that went by while the agent
    was down (or the clock jumped forwards), i.e. more than ``Planner.on_time_s`` late:

    * ``skip``: none of them run; only on-time firings do;
    * ``once`` (the default): the most recent one runs, if it is at most ``grace_s``
      late (2 h by default, the contract's ``grace = "2h"``); the rest are dropped;
    * ``all``: every one at most ``grace_s`` late runs, oldest first, but no more than
      ``max_catch_up`` (the most recent ones), so a week-long outage cannot flood the
      queue with a per-minute job.
    """

    name: str
    trigger: Trigger
    missed: str = "once"
    grace_s: float = 7200.0
    max_catch_up: int = 100

    def __post_init__(self) -> None:
        if self.missed not in MISSED_POLICIES:
            raise ValueError(f"missed must be one of {', '.join(MISSED_POLICIES)}, got {self.missed!r}")
        if self.grace_s < 0:
            raise ValueError(f"grace cannot be negative, got {self.grace_s!r}")
        if self.max_catch_up < 1:
            raise ValueError(f"max_catch_up must be at least 1, got {self.max_catch_up!r}")


@dataclass(frozen=True)
class Decision:
    """What to do for one job now."""

    #: planned instants to run now, ascending (UTC)
    fire: tuple[datetime, ...]
    #: persist this after enqueuing ``fire``: every planned instant up to it is settled.
    #: Normally the latest planned instant that went by; after an outage longer than
    #: the grace window it can be the window's start (minus 1 µs) instead.
    last_planned: datetime | None
    #: planned instants examined (inside the grace window) that will not run
    skipped: tuple[datetime, ...] = ()
    #: set when instants older than the grace window went by unrun: everything
    #: planned before this instant was dropped without being listed
    dropped_before: datetime | None = None

    @property
    def changed(self) -> bool:
        """Whether there is anything to enqueue or persist (idle: write nothing)."""
        return bool(self.fire or self.skipped or self.dropped_before)

    @property
    def missed(self) -> int:
        """At least this many planned instants went by without running (for the log):
        the skipped ones, plus one for any dropped before the grace window."""
        return len(self.skipped) + (1 if self.dropped_before is not None else 0)


class Planner:
    """Decides due firings.

    ``on_time_s`` is how late a firing may be and still count as on time rather than
    missed: the daemon's own wake-up and start-up lag (60 s by default).
    """

    def __init__(self, on_time_s: float = 60.0) -> None:
        if on_time_s < 0:
            raise ValueError(f"on_time_s cannot be negative, got {on_time_s!r}")
        self.on_time_s = on_time_s

    def due(
        self,
        job: Job,
        *,
        last_planned: datetime | None,
        now: datetime,
        since: datetime | None = None,
    ) -> Decision:
        """The planned instants of ``job`` to run at ``now``.

        ``last_planned`` is what the previous decision said to persist (None: the job
        never fired); then ``since``, when the job was first seen, is required and
        planned instants at or after it count.
        """
        reference = _reference(job, last_planned, since)
        first = job.trigger.next_after(reference)
        if first is None or first > now:
            return Decision((), last_planned)  # nothing went by (also: clock stepped back)
        on_time = now - timedelta(seconds=self.on_time_s)
        window = self.on_time_s if job.missed == "skip" else max(job.grace_s, self.on_time_s)
        window_start = now - timedelta(seconds=window)
        dropped_before = None
        instant: datetime | None = first
        if first < window_start:
            # Older instants can only be dropped: jump to the window rather than walk a
            # month of a per-second job after a month of downtime.
            dropped_before = window_start
            instant = job.trigger.next_after(window_start - _MICROSECOND)
        passed = []
        while instant is not None and instant <= now:
            passed.append(instant)
            instant = job.trigger.next_after(instant)
        if job.missed == "skip":
            fire = [p for p in passed if p >= on_time]
        elif job.missed == "once":
            fire = passed[-1:]
        else:
            fire = passed[-job.max_catch_up :]
        if isinstance(job.trigger, BoundedTrigger) and not job.trigger.allows(now):
            # A bounded job ("not after 22:00") is not caught up outside its hours: the
            # fountain that missed 21:40 in a power cut does not start at 23:10.
            fire = [p for p in fire if p >= on_time]
        fired = set(fire)
        settled = passed[-1] if passed else window_start - _MICROSECOND
        return Decision(tuple(fire), settled, tuple(p for p in passed if p not in fired), dropped_before)


def _reference(job: Job, last_planned: datetime | None, since: datetime | None) -> datetime:
    """The instant after which planned instants are still open."""
    if last_planned is not None:
        return last_planned
    if since is None:
        raise ValueError(f"job {job.name!r} has no last_planned: pass since (when it was first seen)")
    return since - _MICROSECOND  # instants at `since` itself count
