"""The monitor's own bounds on what it stores, beyond the contract's checks (:mod:`edge_agent.contract`).

Everything a device sends is checked in the ingest thread before it reaches the store (the
events and the state by the contract's :func:`~edge_agent.contract.clean_event` and
:func:`~edge_agent.contract.clean_state`); a reply is kept only in part, its fields bounded
like an event's, and a device's plan (the ``agent.jobs`` answer) at most ``JOBS_MAX`` bytes.
"""

from __future__ import annotations

from typing import Any

from edge_agent.contract import COUNT_MAX, ERROR_MAX, TS_MAX, Rejected, bounded, number, text

__all__ = ["JOBS_MAX", "clean_reply"]

JOBS_MAX = 64 * 1024  # bytes of a device's plan (the agent.jobs answer)


def clean_reply(doc: Any) -> dict[str, Any]:
    """A reply to a command (not the monitor's own), as it is stored: bounded like an event's fields."""
    if not isinstance(doc, dict):
        raise Rejected("a reply is a JSON object")
    out: dict[str, Any] = {}
    for key, limit in (("id", 500), ("action", 200), ("status", 50)):
        if doc.get(key) is not None:
            out[key] = text(doc[key], limit)
    for key, lo, hi in (("ts", 0, TS_MAX), ("attempt", 0, COUNT_MAX)):
        value = number(doc, key, lo, hi, integer=key == "attempt")
        if value is not None:
            out[key] = value
    if doc.get("duplicate"):
        out["duplicate"] = True
    error = doc.get("error")
    if isinstance(error, dict):
        out["error"] = {"type": text(error.get("type"), 200), "message": text(error.get("message"), ERROR_MAX)}
    if "result" in doc:
        out["result"] = bounded(doc["result"])
    return out
