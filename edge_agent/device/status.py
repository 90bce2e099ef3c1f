"""``edge-agent status``: one screen that answers "is it all right?", read from the database."""

from __future__ import annotations

import json
import time
from typing import Any

from edge_agent.durations import ago

__all__ = ["collect_status", "render_status"]


def collect_status(settings: Any, store: Any = None) -> dict[str, Any]:
    """The ``status --json`` document; ``store``: an open database (the daemon's own, for
    ``agent.status``) instead of opening one."""
    from edge_agent import __version__
    from edge_agent.device import systemd
    from edge_agent.device.client import LocalClient
    from edge_agent.device.lock import daemon_running
    from edge_agent.device.outbox import Outbox
    from edge_agent.device.store import disk_report

    pid = daemon_running(settings.db_path)
    doc: dict[str, Any] = {"device": settings.device_id, "version": __version__, "config": settings.path,
                           "database": settings.db_path,
                           "daemon": {"running": pid is not None, "pid": pid, "since": None}}
    trusted = settings.clock_trust == "always" or systemd.clock_synchronized()
    doc["clock"] = {"synchronized": trusted, "trust": settings.clock_trust,
                    "holding_jobs": not trusted and bool(settings.jobs or settings.windows)}
    if store is None:
        try:
            store = LocalClient(settings, create=False).store
        except Exception as exc:  # no database yet: the daemon never ran
            doc["error"] = str(exc)
            return doc
    from edge_agent.device.journal import Journal
    from edge_agent.device.scheduler import FAKE_TIME, fake_start, reading_clock

    if fake_start() is not None or store.get_meta("fake_clock"):
        # a fake schedule clock counts as synchronised: say so, and what time it says
        from datetime import UTC, datetime

        fake_now = datetime.fromtimestamp(reading_clock(store)(), UTC).astimezone(settings.location.tz)
        doc["clock"].update(synchronized=True, holding_jobs=False,
                            fake=f"{fake_now.isoformat(timespec='seconds')} ({FAKE_TIME})")
    journal = Journal(store)
    meta = store.get_meta("daemon")
    if meta and pid is not None:
        doc["daemon"]["since"] = json.loads(meta).get("started")
    mqtt_meta = store.get_meta("mqtt")
    if settings.mqtt is None:
        doc["mqtt"] = {"configured": False}
    else:
        link = json.loads(mqtt_meta) if mqtt_meta else {}
        doc["mqtt"] = {"configured": True, "broker": f"{settings.mqtt.host}:{settings.mqtt.port}",
                       "connected": bool(link.get("connected")) and pid is not None, "since": link.get("since"),
                       "last_error": link.get("last_error")}
    doc["queue"] = journal.counts()
    depth, oldest = Outbox(store).depth()
    doc["outbox"] = {"depth": depth, "oldest_s": round(oldest, 1) if oldest is not None else None}
    doc["disk"] = disk_report(store)
    doc["waiting"] = [{"id": c.id, "action": c.action, "state": c.phase, "attempt": c.attempts,
                       "max_attempts": c.max_attempts, "parked": c.parked, "next_attempt": c.next_attempt,
                       "last_error": c.error_message} for c in journal.waiting(10)]
    doc["failures"] = [{"id": c.id, "action": c.action, "state": c.state, "at": c.finished,
                        "error": {"type": c.error_type, "message": c.error_message}} for c in journal.recent_failures(5)]
    try:
        from datetime import datetime

        from edge_agent.device.report import jobs_report

        firings: list[tuple[datetime, str, str]] = []
        for job in jobs_report(settings, count=5, store=store)["jobs"]:
            if not job["paused"]:  # (a paused job's instants are skipped: none of them fires)
                firings.extend((datetime.fromisoformat(n), n, job["name"]) for n in job["next"])
        # (sorted as instants: across a DST change the texts' offsets differ)
        doc["next_firings"] = [{"at": at, "job": name} for _, at, name in sorted(firings)[:5]]
    except ImportError:
        doc["next_firings"] = []
    return doc


def render_status(doc: dict[str, Any]) -> str:
    lines = [f"edge-agent {doc['version']}  device {doc['device']}  ({doc['config']})"]
    d = doc["daemon"]
    lines.append(f"  daemon     {'running, pid ' + str(d['pid']) + ', since ' + ago(d['since']) if d['running'] else 'NOT RUNNING'}")
    if "error" in doc:
        lines.append(f"  database   {doc['error']}")
        return "\n".join(lines)
    m = doc["mqtt"]
    if not m["configured"]:
        lines.append("  mqtt       off (no [mqtt] in the config)")
    else:
        state = f"connected to {m['broker']}" if m["connected"] else f"DISCONNECTED from {m['broker']}"
        err = f"; last error: {m['last_error']}" if m.get("last_error") else ""
        lines.append(f"  mqtt       {state} ({ago(m['since'])}){err}")
    c = doc["clock"]
    lines.append(f"  clock      {'synchronized' if c['synchronized'] else 'NOT synchronized'}"
                 f"{' (time-based jobs held)' if c['holding_jobs'] else ''}"
                 f"{'; FAKE schedule clock at ' + c['fake'] if c.get('fake') else ''}")
    q = doc["queue"]
    lines.append(f"  queue      {q['queued']} queued, {q['running']} running, {q['parked']} parked, {q['retrying']} retrying")
    o = doc["outbox"]
    lines.append(f"  outbox     {o['depth']} waiting" + (f", oldest {o['oldest_s']:.0f}s" if o["oldest_s"] is not None else ""))
    disk = doc["disk"]
    if disk["full"]:
        lines.append(f"  disk       FULL ({disk['free_bytes'] // 1024} KiB free): commands from MQTT wait with the broker")
    else:
        last = disk["last_full"]
        lines.append(f"  disk       {disk['free_bytes'] / 2**20:.1f} MiB free"
                     + (f"; last full {ago(last['until'])} for {last['until'] - last['since']:.0f}s" if last else ""))
    for w in doc["waiting"]:
        when = time.strftime("%H:%M:%S", time.localtime(w["next_attempt"])) if w["next_attempt"] else "-"
        of = f" of {w['max_attempts']}" if w["max_attempts"] else ""
        what = "parked (network)" if w["parked"] else f"retrying, attempt {w['attempt']}{of}"
        lines.append(f"    {w['id'][:24]:<24} {w['action']:<14} {what}, next {when}: {w['last_error']}")
    if doc.get("next_firings"):
        lines.append("  next")
        lines.extend(f"    {f['at']}  {f['job']}" for f in doc["next_firings"])
    if doc["failures"]:
        lines.append("  failures")
        for f in doc["failures"]:
            lines.append(f"    {ago(f['at']):>8}  {f['action']:<14} {f['id'][:24]:<24} {f['error']['type']}: {f['error']['message']}")
    else:
        lines.append("  failures   none")
    return "\n".join(lines)
