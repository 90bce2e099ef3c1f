"""``edge-agent jobs``: every job and window, its trigger, next firings and last firing, and where it
comes from (``origin``: the config file, or a fleet schedule document's source, with its ``version``)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

__all__ = ["jobs_report", "render_jobs"]


def _iso(ts: float | None, tz: Any) -> str | None:
    return datetime.fromtimestamp(ts, UTC).astimezone(tz).isoformat(timespec="seconds") if ts is not None else None


def jobs_report(settings: Any, *, start: str | None = None, count: int = 3, store: Any = None) -> dict[str, Any]:
    """``{"jobs": [{"name", "trigger", "next", "last_fired", "waiting", "paused", "paused_since", "origin",
    "version"}], "windows": [{..., "origin", "version"}]}`` (a paused job's ``next`` instants are skipped
    until ``job.resume``). ``settings``: the config file's, or what runs (the daemon's): the schedule
    documents applied in ``store`` are merged in (again: merging twice changes nothing)."""
    from edge_agent.errors import ConfigError
    from edge_agent.schedule.triggers import job_trigger, next_firings
    from edge_agent.schedule.windows import Window, window_state

    tz = settings.location.tz
    if start:
        try:
            after = datetime.fromisoformat(start)
        except ValueError:
            raise ConfigError(f"--from must be ISO-8601 like 2026-06-01T12:00+03:00, got {start!r}") from None
        if after.tzinfo is None:
            after = after.replace(tzinfo=tz)
    if store is None:
        try:
            from edge_agent.device.client import LocalClient

            store = LocalClient(settings, create=False).store
        except Exception:
            store = None
    if not start:
        from edge_agent.device.scheduler import reading_clock

        after = datetime.fromtimestamp(reading_clock(store)(), UTC)
    last: dict[str, float | None] = {}
    paused: dict[str, float] = {}
    if store is not None:
        from edge_agent.device.scheduler import Firings

        try:
            last = Firings(store).last_fired()
        except Exception:
            last = {}
        try:
            paused = Firings(store).paused()
        except Exception:  # a database no daemon of this version opened yet: nothing is paused
            paused = {}
        from edge_agent.device.desired import Desired, merge

        try:
            held = Desired(store).held()
        except Exception:  # (as for paused jobs)
            held = {}
        settings = merge(settings, held)
    loc = settings.location
    jobs = []
    for spec in settings.jobs:
        trigger = job_trigger(spec, loc)
        jobs.append({
            "name": spec.name,
            "trigger": trigger.describe(),
            "action": spec.action,
            "next": [t.astimezone(tz).isoformat(timespec="seconds") for t in next_firings(trigger, after, count)],
            "last_fired": _iso(last.get(spec.name), tz),
            "waiting": trigger.waiting_reason(after),
            "missed": spec.missed,
            "paused": spec.name in paused,
            "paused_since": _iso(paused.get(spec.name), tz),
            "origin": spec.origin,
            "version": spec.version,
        })
    windows = []
    for spec in settings.windows:
        active, boundary = window_state(Window(spec.device, spec.start, spec.until), after, loc.latitude, loc.longitude, tz)
        windows.append({
            "device": spec.device, "from": spec.start, "until": spec.until, "value": spec.value, "active": active,
            "changes_at": boundary.astimezone(tz).isoformat(timespec="seconds") if boundary else None,
            "origin": spec.origin, "version": spec.version,
        })
    return {"jobs": jobs, "windows": windows}


def render_jobs(doc: dict[str, Any]) -> str:
    if not doc["jobs"] and not doc["windows"]:
        return "no jobs or windows configured"
    lines = []
    for j in doc["jobs"]:
        lines.append(f"{j['name']}  ({j['trigger']} -> {j['action']}, missed: {j['missed']})")
        lines.append(f"    origin      {_origin(j)}")
        lines.append(f"    last fired  {j['last_fired'] or 'never'}")
        if j["waiting"]:
            lines.append(f"    waiting     {j['waiting']}")
        if j.get("paused"):
            lines.append(f"    PAUSED      since {j['paused_since']}")
        mark = "  (paused: skipped)" if j.get("paused") else ""
        for i, n in enumerate(j["next"]):
            lines.append(f"    {'next' if i == 0 else '':<11} {n}{mark}")
        if not j["next"]:
            lines.append("    next        none")
    for w in doc["windows"]:
        state = "ACTIVE" if w["active"] else "inactive"
        lines.append(f"window {w['device']} = {w['value']}  from {w['from']} until {w['until']}: {state}, "
                     f"changes at {w['changes_at'] or 'never'} (origin {_origin(w)})")
    return "\n".join(lines)


def _origin(item: dict[str, Any]) -> str:
    """``config``, or a document's source and version: ``group:greenhouse v17``."""
    origin = item.get("origin") or "config"
    return origin if item.get("version") is None else f"{origin} v{item['version']}"
