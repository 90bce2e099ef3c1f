"""The agent's own actions: ``agent.ping``, and the queries and control a fleet needs.

- ``agent.status``: the document ``edge-agent status --json`` prints;
- ``agent.jobs``: the document ``edge-agent jobs --json`` prints;
- ``agent.history``: task events after a ``seq``, filtered and paged (:mod:`edge_agent.device.events`);
- ``agent.revoke``: cancel a queued or retry-waiting command by id.

All are local (no network), idempotent, and read or change only the database.
"""

from __future__ import annotations

import time
from typing import Any

from edge_agent import __version__
from edge_agent.device.actions.registry import Action, Runtime, bad_args
from edge_agent.device.commands import Param

__all__ = ["agent_actions"]

HISTORY_PARAMS = (
    Param("after", int, False, 0),
    Param("limit", int, False, 100),
    Param("action", str | None, False, None),
    Param("event", str | None, False, None),
    Param("id", str | None, False, None),
    Param("since", float | None, False, None),
    Param("until", float | None, False, None),
)


def _check_history(args: dict[str, Any]) -> None:
    from edge_agent.contract import KINDS, MAX_HISTORY

    if args.get("after", 0) < 0:
        raise bad_args("agent.history", f"after must be a seq (0 or more), got {args['after']}")
    limit = args.get("limit", 100)
    if not 1 <= limit <= MAX_HISTORY:
        raise bad_args("agent.history", f"limit must be 1 to {MAX_HISTORY}, got {limit}")
    kind = args.get("event")
    if kind is not None and kind not in KINDS:
        raise bad_args("agent.history", f"event must be one of {', '.join(KINDS)}; got {kind!r}")
    since, until = args.get("since"), args.get("until")
    if since is not None and until is not None and since > until:
        raise bad_args("agent.history", f"since ({since}) is after until ({until})")


def _check_revoke(args: dict[str, Any]) -> None:
    from edge_agent.device.commands import check_id
    from edge_agent.errors import InvalidCommand

    try:
        check_id(args["id"], reserved_ok=True)  # a job firing may be revoked
    except InvalidCommand as exc:
        raise bad_args("agent.revoke", str(exc)) from None


def agent_actions(device_id: str, runtime: Runtime | None) -> list[Action]:
    rt = runtime or Runtime()

    def ping() -> dict[str, Any]:
        started = rt.started_monotonic if runtime else time.monotonic()
        return {"device": device_id, "version": __version__, "uptime_s": round(time.monotonic() - started, 3)}

    def status() -> dict[str, Any]:
        from edge_agent.device.status import collect_status

        assert rt.settings is not None
        return collect_status(rt.settings(), store=rt.store)

    def jobs() -> dict[str, Any]:
        from edge_agent.device.report import jobs_report

        assert rt.settings is not None
        return jobs_report(rt.settings(), store=rt.store)

    def history(after: int = 0, limit: int = 100, action: str | None = None, event: str | None = None,
                id: str | None = None, since: float | None = None, until: float | None = None) -> dict[str, Any]:
        assert rt.events is not None
        return rt.events.history(after=after, limit=limit, action=action, event=event, command_id=id,
                                 since=since, until=until)

    def revoke(id: str) -> dict[str, Any]:
        """A queued command (also one waiting for its next attempt or for the network) ends
        ``revoked``: its message in the queue becomes a no-op (a claim takes only queued rows)."""
        from edge_agent.device.journal import Journal

        store = rt.store
        assert store is not None
        journal = Journal(store)
        with store.transaction() as cur:
            found = journal.seq_state(cur, id)
            if found is None:
                return {"id": id, "revoked": False, "state": "unknown"}
            seq, state = found
            if state != "queued":
                return {"id": id, "revoked": False, "state": state}
            done = journal.finish(cur, seq, "revoked", error=("revoked", "revoked by agent.revoke"))
            if rt.reporter is not None:
                rt.reporter.finished(cur, done)
        return {"id": id, "revoked": True, "state": "revoked"}

    return [
        Action("agent.ping", ping, (), idempotent=True),
        Action("agent.status", status, (), idempotent=True),
        Action("agent.jobs", jobs, (), idempotent=True),
        Action("agent.history", history, HISTORY_PARAMS, idempotent=True, check=_check_history),
        Action("agent.revoke", revoke, (Param("id", str),), idempotent=True, check=_check_revoke),
    ]
