"""The ``edge-agent`` command: a thin shell over the library.

Exit codes: 0 success; 1 the thing asked for failed; 2 usage or config error.
Imports are lazy so that ``--help`` and ``send`` start quickly on a 1 GHz CPU.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

__all__ = ["main"]

#: read-only queries the fleet and the monitor ask all day, so `history` leaves them out unless --all
#: (agent.ping and gpio.read stay: people send those by hand and schedules use them as heartbeats)
QUERY_ACTIONS = ("agent.status", "agent.jobs", "agent.history")


class _Formatter(argparse.HelpFormatter):
    """argparse's help formatter with the width found as ``shutil.get_terminal_size`` finds it, without
    importing shutil (with bz2 and lzma, ~3 ms of every command's start on a fast CPU) for each parser."""

    def __init__(self, prog: str, **kwargs: Any) -> None:
        if kwargs.get("width") is None:
            kwargs["width"] = _columns() - 2
        super().__init__(prog, **kwargs)


def _columns() -> int:
    import os

    try:
        if (columns := int(os.environ.get("COLUMNS", "0"))) > 0:
            return columns
    except ValueError:
        pass
    try:
        return os.get_terminal_size(sys.__stdout__.fileno()).columns or 80  # type: ignore[union-attr]
    except (AttributeError, ValueError, OSError):
        return 80


def _parser() -> argparse.ArgumentParser:
    from edge_agent import __version__

    p = argparse.ArgumentParser(prog="edge-agent", description="A durable task runner for Raspberry Pi-class devices.",
                                formatter_class=_Formatter)
    p.add_argument("--version", action="version", version=f"edge-agent {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    def cmd(name: str, help_text: str, *, config: bool = True, json_flag: bool = True) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_text, description=help_text, formatter_class=_Formatter)
        if config:
            sp.add_argument("--config", metavar="PATH", help="config file (default: $EDGE_AGENT_CONFIG or /etc/edge-agent/config.toml)")
        if json_flag:
            sp.add_argument("--json", action="store_true", help="print one JSON document")
        return sp

    cmd("run", "run the daemon in the foreground (systemd Type=notify)", json_flag=False)
    s = cmd("send", "queue a command (also while the daemon is down) and print its id")
    s.add_argument("action", help="action name, e.g. gpio.set")
    s.add_argument("pairs", nargs="*", metavar="key=value", help="arguments; values are read as JSON when they parse, else as text")
    s.add_argument("--args", metavar="JSON", help="arguments as one JSON object")
    s.add_argument("--id", help="command id (a repeated id runs at most once)")
    s.add_argument("--ttl", type=float, metavar="SECONDS", help="expire if it cannot start within this time")
    s.add_argument("--wait", nargs="?", const=30.0, type=float, metavar="SECONDS", help="wait for the outcome (default 30 s)")
    st = cmd("status", "is it all right? daemon, MQTT link, queue, outbox, clock, next firings, failures")
    st.add_argument("--watch", nargs="?", const=2.0, type=float, metavar="SECONDS", help="refresh every SECONDS")
    j = cmd("jobs", "every job and window: trigger, next firings, last fired")
    j.add_argument("--from", dest="start", metavar="ISO", help="list firings after this instant (default: now)")
    j.add_argument("--count", type=int, default=3, metavar="N", help="firings per job (default 3)")
    su = cmd("sun", "solar events of one local date")
    su.add_argument("--date", metavar="YYYY-MM-DD", help="local date (default: today)")
    su.add_argument("--lat", type=float, help="latitude (with --lon and --tz no config is needed)")
    su.add_argument("--lon", type=float, help="longitude")
    su.add_argument("--tz", help="IANA time zone, e.g. Europe/Istanbul")
    h = cmd("history", "recent commands and their outcomes")
    h.add_argument("-n", type=int, default=20, metavar="N", help="how many (default 20)")
    h.add_argument("--all", action="store_true",
                   help=f"also the read-only queries ({', '.join(QUERY_ACTIONS)}), left out by default")
    cmd("check", "validate the config; exit 2 with a clear message when it is wrong", json_flag=False)
    _fleet_parser(sub)
    mo = cmd("monitor", "a web page for the fleet, live (needs edge-agent[monitor]); broker from the config's [mqtt]",
             json_flag=False)
    mo.add_argument("--listen", default="127.0.0.1:5555", metavar="HOST:PORT", help="where to serve (default 127.0.0.1:5555)")
    mo.add_argument("--db", metavar="PATH", help="the monitor's own SQLite file (default /var/lib/edge-agent/monitor.db as root)")
    mo.add_argument("--keep", default="30d", metavar="DURATION", help="how long tasks and events are kept (default 30d)")
    mo.add_argument("--max-tasks", type=int, default=1_000_000, metavar="N", help="tasks kept at most (default 1000000)")
    mo.add_argument("--password-file", metavar="PATH", help="first line: the password or token that logs in")
    mo.add_argument("--login-always", action="store_true", help="ask for a login also from localhost (behind a proxy)")
    mo.add_argument("--max-db-mb", type=int, default=1024, metavar="MB",
                    help="the monitor's database at most (oldest rows go first; default 1024)")
    mo.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                    help="a host name the monitor is reached by (repeatable; localhost and addresses always; '*': any)")
    return p


def _fleet_parser(sub: Any) -> None:
    f = sub.add_parser("fleet", help="every device on the broker: list, command, events, history",
                       description="The fleet, seen from the MQTT broker (from any machine that reaches it).",
                       formatter_class=_Formatter)
    fsub = f.add_subparsers(dest="fleet_command", metavar="SUBCOMMAND")
    fsub.required = True

    def fcmd(name: str, help_text: str) -> argparse.ArgumentParser:
        sp = fsub.add_parser(name, help=help_text, description=help_text, formatter_class=_Formatter)
        g = sp.add_argument_group("broker (default: the [mqtt] table of the config)")
        g.add_argument("--config", metavar="PATH", help="config file whose [mqtt] table to use")
        g.add_argument("--host", help="broker host (without --config: no config file is read); "
                                      "default 127.0.0.1 when there is no config file")
        g.add_argument("--port", type=int)
        g.add_argument("--prefix", metavar="P", help="topic prefix (default: edge)")
        g.add_argument("--username")
        g.add_argument("--password-file", metavar="PATH")
        g.add_argument("--ca-file", metavar="PATH", help="TLS: CA certificate(s) to trust")
        g.add_argument("--cert-file", metavar="PATH", help="TLS: client certificate")
        g.add_argument("--key-file", metavar="PATH", help="TLS: client key")
        g.add_argument("--insecure", action="store_true", help="TLS without checking the broker's certificate")
        sp.add_argument("--json", action="store_true", help="print one JSON document (events: one per line)")
        return sp

    fcmd("ls", "every device: online/offline, version, uptime, queue, outbox, clock, last seen, failures, next job")
    s = fcmd("send", "one command to many devices; the replies, device by device (exit 0 only if all succeeded)")
    s.add_argument("action", help="action name, e.g. agent.ping")
    s.add_argument("pairs", nargs="*", metavar="key=value", help="arguments; values are read as JSON when they parse")
    s.add_argument("--args", metavar="JSON", help="arguments as one JSON object")
    who = s.add_mutually_exclusive_group(required=True)
    who.add_argument("--device", "-d", action="append", metavar="D", help="a device (repeat for more)")
    who.add_argument("--group", "-g", metavar="G", help="one group command to every member of G")
    who.add_argument("--all", action="store_true", help="every device on the broker")
    s.add_argument("--timeout", type=float, default=30.0, metavar="S", help="wait at most S seconds (default 30)")
    s.add_argument("--wait-offline", action="store_true",
                   help="also wait (until the timeout) for offline devices to come back and answer")
    s.add_argument("--ttl", type=float, metavar="S", help="the command expires if it cannot start within S seconds")
    s.add_argument("--id", help="command id (default: a new one)")
    e = fcmd("events", "the fleet's task events: the latest ones, and with --follow the live stream")
    e.add_argument("--device", "-d", action="append", metavar="D", help="only this device (repeat for more)")
    e.add_argument("--follow", "-f", action="store_true", help="keep printing events as they happen (Ctrl-C ends)")
    e.add_argument("-n", type=int, default=10, metavar="N", help="latest events per device first (default 10; 0: none)")
    e.add_argument("--resume", metavar="FILE", help="with --follow: start after the positions saved in FILE, save them there")
    h = fcmd("history", "one device's task events, fetched with agent.history")
    h.add_argument("device")
    h.add_argument("-n", type=int, default=50, metavar="N", help="how many (default 50): the latest, or the first after --after")
    h.add_argument("--after", type=int, metavar="SEQ", help="events after this seq, oldest first")
    h.add_argument("--action", help="only this action")
    h.add_argument("--event", help="only this kind (received, started, retried, succeeded, failed, expired, revoked, fired)")
    h.add_argument("--id", help="only this command id")
    h.add_argument("--since", metavar="TIME", help="unix seconds or ISO-8601")
    h.add_argument("--until", metavar="TIME", help="unix seconds or ISO-8601")
    h.add_argument("--timeout", type=float, default=10.0, metavar="S", help="wait at most S seconds for each answer")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from edge_agent.errors import ConfigError, EdgeAgentError, InvalidCommand

    try:
        handler = globals()[f"_cmd_{args.command}"]
        return int(handler(args))
    except (ConfigError, InvalidCommand) as exc:
        print(f"edge-agent: {exc}", file=sys.stderr)
        return 2
    except EdgeAgentError as exc:
        print(f"edge-agent: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


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


def _cmd_run(args: argparse.Namespace) -> int:
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


def parse_pairs(pairs: Sequence[str], args_json: str | None) -> dict[str, Any]:
    """``key=value`` words (values read as JSON when they parse) over an optional JSON object."""
    from edge_agent.errors import InvalidCommand

    out: dict[str, Any] = {}
    if args_json is not None:
        try:
            doc = json.loads(args_json)
        except RecursionError:
            raise InvalidCommand("--args is nested too deeply") from None
        except ValueError as exc:
            raise InvalidCommand(f"--args is not valid JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise InvalidCommand(f"--args must be a JSON object, got {type(doc).__name__}")
        out.update(doc)
    for word in pairs:
        key, sep, raw = word.partition("=")
        if not sep or not key.strip():
            raise InvalidCommand(f"expected key=value, got {word!r}")
        try:
            value = json.loads(raw)
        except (ValueError, RecursionError):
            value = raw
        out[key.strip()] = value
    from edge_agent.device.commands import MAX_DEPTH, _depth

    if _depth(out) > MAX_DEPTH:
        raise InvalidCommand(f"arguments are nested deeper than {MAX_DEPTH} levels")
    return out


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


def _cmd_send(args: argparse.Namespace) -> int:
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


# --------------------------------------------------------------------------- status / history


def _cmd_status(args: argparse.Namespace) -> int:
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


def _cmd_history(args: argparse.Namespace) -> int:
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
    tz, width = settings.location.tz, _columns()
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


def _cmd_check(args: argparse.Namespace) -> int:
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


def _cmd_jobs(args: argparse.Namespace) -> int:
    from edge_agent.device.report import jobs_report, render_jobs

    settings = _settings(args)
    doc = jobs_report(settings, start=args.start, count=max(1, args.count))
    if args.json:
        _out(doc)
    else:
        print(render_jobs(doc))
    return 0


def _cmd_sun(args: argparse.Namespace) -> int:
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


# --------------------------------------------------------------------------- monitor


def _cmd_monitor(args: argparse.Namespace) -> int:
    from edge_agent.durations import parse_duration
    from edge_agent.errors import ConfigError
    from edge_agent.logs import setup_logging

    settings = _settings(args)
    if settings.mqtt is None:
        raise ConfigError("the monitor needs an [mqtt] table (its broker)", path=settings.path)
    host, sep, port = args.listen.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"--listen must be HOST:PORT, got {args.listen!r}")
    if args.max_db_mb < 8:
        raise ConfigError(f"--max-db-mb must be at least 8, got {args.max_db_mb}")
    try:
        keep = parse_duration(args.keep)
    except ValueError as exc:
        raise ConfigError(f"--keep: {exc}") from None
    try:  # the whole web stack now: the server and the pages import theirs only later
        import jinja2  # noqa: F401
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401

        from edge_agent.fleet.monitor.service import MonitorSettings, run_monitor
    except ImportError as exc:
        raise ConfigError(f"the monitor needs its web stack ({exc}): pip install 'edge-agent[monitor]'") from None
    if args.password_file:
        _check_password_file(args.password_file)
    setup_logging(settings.log_level)
    return run_monitor(MonitorSettings(mqtt=settings.mqtt, location=settings.location, host=host.strip("[]") or "127.0.0.1",
                                       port=int(port), db_path=args.db or "", keep=keep, max_tasks=args.max_tasks,
                                       password_file=args.password_file, open_local=not args.login_always,
                                       log_level=settings.log_level, max_db_bytes=args.max_db_mb << 20,
                                       allowed_hosts=tuple(args.allowed_host)))


def _check_password_file(path: str) -> None:
    """The monitor's password is the first line of ``path``: a file that is missing, unreadable or
    empty is a usage error, said with what to do, before anything starts."""
    from edge_agent.errors import ConfigError

    create = f"create it with: (umask 077; openssl rand -base64 24 > {path})"
    try:
        with open(path, encoding="utf-8") as fh:
            first = fh.readline().rstrip("\r\n")
    except FileNotFoundError:
        raise ConfigError(f"--password-file {path}: no such file; {create}") from None
    except PermissionError:
        raise ConfigError(f"--password-file {path}: permission denied (the monitor must be able to read it)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--password-file {path}: cannot read it: {exc}") from None
    if not first:
        raise ConfigError(f"--password-file {path}: the first line is empty (it holds the password); {create}")


# --------------------------------------------------------------------------- fleet


def _cmd_fleet(args: argparse.Namespace) -> int:
    from edge_agent.cli import fleet as fleetcli

    return int(getattr(fleetcli, f"fleet_{args.fleet_command}")(args))
