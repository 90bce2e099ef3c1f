"""``edge-agent run``, ``send``, ``job``, ``status``, ``history``, ``check``, ``jobs`` and ``sun``: the commands
that act on this device's config and database. Exit codes as everywhere: 0 success, 1 the thing asked
for failed, 2 usage or config error. Imports are lazy: ``send`` must start quickly on a 1 GHz CPU."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

from edge_agent.cli.terminal import columns

#: read-only queries the fleet and the monitor ask all day, so `history` leaves them out unless --all
#: (agent.ping and gpio.read stay: people send those by hand and schedules use them as heartbeats)
QUERY_ACTIONS = ("agent.status", "agent.jobs", "agent.history")
#: `edge-agent job VERB NAME` and `edge-agent fleet job VERB NAME`: the action job.VERB
JOB_VERBS = ("pause", "resume", "run")

__all__ = ["JOB_VERBS", "QUERY_ACTIONS", "cmd_check", "cmd_history", "cmd_job", "cmd_jobs", "cmd_run", "cmd_send",
           "cmd_status", "cmd_sun"]


def _settings(args: argparse.Namespace) -> Any:
    from edge_agent.config import config_path, load_settings

    return load_settings(config_path(args.config))


def _out(doc: Any) -> None:
    print(json.dumps(doc, indent=2, default=str))


def _fmt_time(ts: float | None, tz: Any) -> str:
    """ISO-8601 to the second with its UTC offset, in ``tz`` (the config's time zone), as `jobs` prints."""
    if ts is None:
        return "-"
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ts, UTC).astimezone(tz).isoformat(timespec="seconds")


# --------------------------------------------------------------------------- run


def cmd_run(args: argparse.Namespace) -> int:
    from edge_agent.logs import setup_logging

    settings = _settings(args)
    from edge_agent.device.actions import build_registry, check_jobs

    # The whole config (task modules, job actions, pins) is checked before anything is opened
    # or created: a config error is one line and exit 2, as with `check`.
    check_jobs(settings, build_registry(settings))
    from edge_agent.config import check_tls_files
    from edge_agent.device.hardware import check_pins

    note = check_pins(settings, strict=False)
    check_tls_files(settings)
    if note:
        print(f"note: {note}", file=sys.stderr)
    setup_logging(settings.log_level)
    import logging

    from edge_agent.device.agent import Agent
    from edge_agent.errors import ConfigError, EdgeAgentError

    log = logging.getLogger("edge_agent")
    agent = Agent(settings)
    agent.install_signal_handlers()
    try:
        agent.start()
    except EdgeAgentError as exc:
        log.critical("cannot start: %s", exc)
        agent.stop()
        return 2 if isinstance(exc, ConfigError) else 1
    except BaseException:
        log.critical("cannot start", exc_info=True)
        agent.stop()
        return 1
    try:
        agent.run_forever()
    except BaseException:
        log.critical("fatal error; putting outputs in their safe state", exc_info=True)
        agent.stop()
        return 1
    agent.stop()
    return 0


# --------------------------------------------------------------------------- send


def _text_where_wanted(action: Any, pairs: Sequence[str], values: dict[str, Any]) -> dict[str, Any]:
    """``zone=12`` means the text "12" when the parameter takes text but not a number.

    A ``key=value`` word is read as JSON first (so ``minutes=5`` is a number); if that
    value does not fit the parameter's type but the word as typed does, the text wins.
    """
    from edge_agent.device.commands import _check

    params = {p.name: p for p in action.params}
    out = dict(values)
    for word in pairs:
        key, _, raw = word.partition("=")
        key = key.strip()
        param = params.get(key)
        if param is None or out.get(key) == raw or _check(param.annotation, out.get(key))[0]:
            continue
        if _check(param.annotation, raw)[0]:
            out[key] = raw
    return out


def cmd_send(args: argparse.Namespace) -> int:
    from edge_agent.contract import parse_pairs
    from edge_agent.device.actions import build_registry
    from edge_agent.device.client import LocalClient
    from edge_agent.device.commands import NewCommand, check_id

    settings = _settings(args)
    values = parse_pairs(args.pairs, args.args)
    registry = build_registry(settings)
    from edge_agent.device.actions import check_jobs

    check_jobs(settings, registry)  # a config the daemon would refuse is refused here too
    values = _text_where_wanted(registry.get(args.action), args.pairs, values)
    _, clean = registry.validate(args.action, values)
    fields: dict[str, Any] = {"action": args.action, "args": clean, "source": "cli"}
    if args.id is not None:
        fields["id"] = check_id(args.id)
    from edge_agent.errors import InvalidCommand

    if args.wait is not None and not 0 <= args.wait < float("inf"):  # nan too: it would never end
        raise InvalidCommand(f"--wait must be a number of seconds, got {args.wait}")
    if args.ttl is not None:
        if not 0 < args.ttl < float("inf"):
            raise InvalidCommand("--ttl must be a positive number of seconds")
        fields["deadline"] = time.time() + args.ttl
    client = LocalClient(settings)
    cmd, created = client.submit(NewCommand(**fields))
    client.store.flush()  # a command someone typed survives a power cut from now on
    from edge_agent.device.lock import daemon_running

    if not args.json:
        print(cmd.id)
        if not created:
            print(f"note: id {cmd.id} is already known ({cmd.state}); it was not queued again", file=sys.stderr)
        if daemon_running(settings.db_path) is None:
            print("note: the daemon is not running; the command runs when it starts", file=sys.stderr)
    if args.wait is None:
        if args.json:
            _out({"id": cmd.id, "status": "accepted" if created else cmd.state, "duplicate": not created})
        return 0
    end = time.monotonic() + args.wait
    delay = 0.002
    while True:
        current = client.journal.get(cmd.id)
        if current is not None and current.terminal:
            break
        if time.monotonic() >= end:
            if args.json:
                _out({"id": cmd.id, "status": current.phase if current else "unknown", "timeout": True})
            else:
                print(f"no outcome after {args.wait:g}s (state: {current.phase if current else 'unknown'})", file=sys.stderr)
            return 1
        time.sleep(delay)
        delay = min(delay * 1.5, 0.05)
    outcome = current.outcome()
    if not created:
        outcome["duplicate"] = True
    if args.json:
        _out(outcome)
    elif current.state == "succeeded":
        print(f"succeeded: {json.dumps(current.result)}")
    else:
        print(f"{current.state}: {current.error_type}: {current.error_message}")
    return 0 if current.state == "succeeded" else 1


def cmd_job(args: argparse.Namespace) -> int:
    """``edge-agent job VERB NAME``: ``send job.VERB name=NAME``."""
    return cmd_send(argparse.Namespace(**vars(args), action=f"job.{args.verb}", pairs=[],
                                       args=json.dumps({"name": args.name}), id=None, ttl=None))


# --------------------------------------------------------------------------- status / history


def cmd_status(args: argparse.Namespace) -> int:
    from edge_agent.device.status import collect_status, render_status

    settings = _settings(args)
    while True:
        doc = collect_status(settings)
        if args.json:
            _out(doc)
        else:
            if args.watch:
                print("\x1b[2J\x1b[H", end="")
            print(render_status(doc))
        if not args.watch:
            return 0 if doc["daemon"]["running"] else 1
        time.sleep(args.watch)


def cmd_history(args: argparse.Namespace) -> int:
    from edge_agent.device.client import LocalClient

    settings = _settings(args)
    client = LocalClient(settings, create=False)
    rows = client.journal.history(max(1, args.n), exclude=() if args.all else QUERY_ACTIONS)
    if args.json:
        _out({"commands": [dict(c.outcome(), state=c.phase, created=c.created, source=c.source, args=c.args,
                                parked=c.parked, next_attempt=c.next_attempt, max_attempts=c.max_attempts)
                           for c in rows]})
        return 0
    if not rows:
        print("no commands yet" if args.all else "no commands yet (--all shows the read-only queries too)")
    tz, width = settings.location.tz, columns()
    for c in rows:
        tries = f"try {c.attempts}" + (f"/{c.max_attempts}" if c.max_attempts else "")
        line = f"{_fmt_time(c.created, tz)}  {c.phase:<9} {c.action:<14} {tries:<7} {c.id}"
        tail = (f"{c.error_type}: {c.error_message}" if c.error_type else
                json.dumps(c.result, ensure_ascii=False) if c.result is not None and c.state == "succeeded" else "")
        print(f"{line}  {_clip(tail, width - len(line) - 2)}" if tail else line)
    return 0


def _clip(text: str, room: int) -> str:
    """``text`` cut to ``room`` characters (at least 30) with an ellipsis, control characters (newlines,
    escapes from a task's error message) made spaces: a result of many kilobytes stays on its line."""
    room = max(room, 30)
    cut = text if len(text) <= room else text[:room - 1] + "…"
    return "".join(ch if ch.isprintable() else " " for ch in cut)


# --------------------------------------------------------------------------- check / jobs / sun


def cmd_check(args: argparse.Namespace) -> int:
    from edge_agent.device.actions import build_registry, check_jobs

    settings = _settings(args)
    registry = build_registry(settings)
    check_jobs(settings, registry)
    from edge_agent.config import check_tls_files
    from edge_agent.device.hardware import check_pins

    note = check_pins(settings)
    check_tls_files(settings)
    if note:
        print(f"note: {note}", file=sys.stderr)
    from datetime import UTC, datetime

    from edge_agent.device.scheduler import scheduler_clock
    from edge_agent.schedule.conflicts import schedule_warnings

    for warning in schedule_warnings(settings, datetime.fromtimestamp(scheduler_clock()(), UTC)):
        print(f"warning: {warning}", file=sys.stderr)
    print(f"{settings.path}: OK: device {settings.device_id!r}, {len(settings.devices)} device(s), "
          f"{len(settings.jobs)} job(s), {len(settings.windows)} window(s), {len(registry.names())} action(s), "
          f"MQTT {'off' if settings.mqtt is None else f'{settings.mqtt.host}:{settings.mqtt.port}'}")
    return 0


def cmd_jobs(args: argparse.Namespace) -> int:
    from edge_agent.device.report import jobs_report, render_jobs

    settings = _settings(args)
    doc = jobs_report(settings, start=args.start, count=max(1, args.count))
    if args.json:
        _out(doc)
    else:
        print(render_jobs(doc))
    return 0


def cmd_sun(args: argparse.Namespace) -> int:
    from datetime import date, datetime
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    from edge_agent.errors import ConfigError
    from edge_agent.schedule.solar import sun_report

    if args.lat is not None and args.lon is not None and args.tz:
        lat, lon, tzname = args.lat, args.lon, args.tz
    else:
        if args.lat is not None or args.lon is not None or args.tz:
            if args.config is None:
                raise ConfigError("give all of --lat, --lon and --tz, or a config with [location]")
        settings = _settings(args)
        loc = settings.location
        if loc.latitude is None:
            raise ConfigError("no [location] latitude/longitude in the config (or give --lat --lon --tz)", path=settings.path)
        lat = args.lat if args.lat is not None else loc.latitude
        lon = args.lon if args.lon is not None else loc.longitude
        tzname = args.tz or loc.timezone
    if not -90 <= lat <= 90 or not -180 <= lon <= 180:
        raise ConfigError(f"latitude must be -90..90 and longitude -180..180, got {lat}, {lon}")
    try:
        tz = ZoneInfo(tzname)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"unknown time zone {tzname!r}") from None
    try:
        day = date.fromisoformat(args.date) if args.date else datetime.now(tz).date()
    except ValueError:
        raise ConfigError(f"--date must be YYYY-MM-DD, got {args.date!r}") from None
    doc = sun_report(day, lat, lon, tz)
    if args.json:
        _out(doc)
        return 0
    print(f"{doc['date']}  {doc['timezone']}  {lat:.4f}, {lon:.4f}")
    events, missing = doc["events"], doc["missing"]
    assert isinstance(events, dict) and isinstance(missing, dict)
    for name, when in events.items():
        shown = when[11:19] + " " + when[19:] if when else f"- ({missing.get(name, 'none this day')})"
        print(f"  {name:<18} {shown}")
    return 0
