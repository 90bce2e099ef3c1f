"""The ``edge-agent`` command line: its arguments, and which module runs each command.

The commands live beside this file: :mod:`.device` (run, send, status, history, check, jobs,
sun: this device's config and database), :mod:`.fleet` (``edge-agent fleet ...``: many devices
through the broker), :mod:`.monitor` (``edge-agent monitor``). Exit codes: 0 success; 1 the
thing asked for failed; 2 usage or config error. Imports are lazy so that ``--help`` and
``send`` start quickly on a 1 GHz CPU.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

from edge_agent.cli.device import JOB_VERBS, QUERY_ACTIONS
from edge_agent.cli.terminal import columns

__all__ = ["main"]



class _Formatter(argparse.HelpFormatter):
    """argparse's help formatter with the width found as ``shutil.get_terminal_size`` finds it, without
    importing shutil (with bz2 and lzma, ~3 ms of every command's start on a fast CPU) for each parser."""

    def __init__(self, prog: str, **kwargs: Any) -> None:
        if kwargs.get("width") is None:
            kwargs["width"] = columns() - 2
        super().__init__(prog, **kwargs)


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
    jc = cmd("job", "pause, resume or run now a job by name (queues job.pause/resume/run, as send does)")
    jc.add_argument("verb", choices=JOB_VERBS, help="pause: its firings are skipped until resume; run: fire it once now")
    jc.add_argument("name", help="the job's name")
    jc.add_argument("--wait", nargs="?", const=30.0, type=float, metavar="SECONDS", help="wait for the outcome (default 30 s)")
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
    f = sub.add_parser("fleet", help="every device on the broker: list, command, schedules, events, history",
                       description="The fleet, seen from the MQTT broker (from any machine that reaches it).",
                       formatter_class=_Formatter)
    fsub = f.add_subparsers(dest="fleet_command", metavar="SUBCOMMAND")
    fsub.required = True

    def fcmd(name: str, help_text: str, under: Any = fsub) -> argparse.ArgumentParser:
        sp = under.add_parser(name, help=help_text, description=help_text, formatter_class=_Formatter)
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
    jf = fcmd("job", "pause, resume or run now a job on many devices (send of job.pause/resume/run)")
    jf.add_argument("verb", choices=JOB_VERBS, help="pause: its firings are skipped until resume; run: fire it once now")
    jf.add_argument("name", help="the job's name")
    jwho = jf.add_mutually_exclusive_group(required=True)
    jwho.add_argument("--device", "-d", action="append", metavar="D", help="a device (repeat for more)")
    jwho.add_argument("--group", "-g", metavar="G", help="one group command to every member of G")
    jwho.add_argument("--all", action="store_true", help="every device on the broker")
    jf.add_argument("--timeout", type=float, default=30.0, metavar="S", help="wait at most S seconds (default 30)")
    _schedule_parser(fsub, fcmd)
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
    h.add_argument("--event", help="only this kind (received, started, retried, succeeded, failed, expired, revoked, fired, skipped)")
    h.add_argument("--id", help="only this command id")
    h.add_argument("--since", metavar="TIME", help="unix seconds or ISO-8601")
    h.add_argument("--until", metavar="TIME", help="unix seconds or ISO-8601")
    h.add_argument("--timeout", type=float, default=10.0, metavar="S", help="wait at most S seconds for each answer")


def _schedule_parser(fsub: Any, fcmd: Callable[..., argparse.ArgumentParser]) -> None:
    sc = fsub.add_parser("schedule", help="jobs and windows for many devices, held by the broker: set, status, get, clear",
                         description="Fleet schedules: [[jobs]] and [[windows]] documents published (retained) for "
                                     "a device, a group or all devices, applied by each device.",
                         formatter_class=_Formatter)
    ssub = sc.add_subparsers(dest="schedule_command", metavar="SUBCOMMAND")
    ssub.required = True

    def who(sp: argparse.ArgumentParser) -> None:
        w = sp.add_mutually_exclusive_group(required=True)
        w.add_argument("--device", "-d", action="append", metavar="D", help="a device's own document (repeat for more)")
        w.add_argument("--group", "-g", metavar="G", help="the document of group G (its members)")
        w.add_argument("--all", action="store_true", help="the document for every device")
        sp.add_argument("--timeout", type=float, default=30.0, metavar="S", help="wait at most S seconds (default 30)")

    st = fcmd("set", "publish a schedule file (TOML [[jobs]]/[[windows]]); wait until each device applied or rejected it "
                     "(exit 0 only if all applied)", ssub)
    st.add_argument("file", metavar="FILE", help="TOML with [[jobs]] and [[windows]] tables, as in config.toml")
    who(st)
    fcmd("status", "per device and source: the version on the broker against the one applied (in sync, drift, "
                   "rejected, offline)", ssub)
    g = fcmd("get", "one device's effective schedule (agent.jobs): each job and window with its origin and version", ssub)
    g.add_argument("device", help="the device")
    g.add_argument("--timeout", type=float, default=10.0, metavar="S", help="wait at most S seconds (default 10)")
    c = fcmd("clear", "remove a device's, a group's or the all document (a retained tombstone); wait as set does", ssub)
    who(c)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from edge_agent.errors import ConfigError, EdgeAgentError, InvalidCommand

    try:
        return int(_handler(args)(args))
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


def _handler(args: argparse.Namespace) -> Callable[[argparse.Namespace], int]:
    """The function behind ``args.command``, its module imported only now (``--help`` stays quick)."""
    if args.command == "fleet":
        from edge_agent.cli import fleet

        handler: Callable[[argparse.Namespace], int] = getattr(fleet, f"fleet_{args.fleet_command}")
        return handler
    if args.command == "monitor":
        from edge_agent.cli.monitor import cmd_monitor

        return cmd_monitor
    from edge_agent.cli import device

    handler = getattr(device, f"cmd_{args.command}")
    return handler
