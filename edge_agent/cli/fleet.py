"""``edge-agent fleet ...``: the subcommands' arguments turned into :mod:`edge_agent.fleet.client` calls, and
their results into text (or JSON). Exit codes as elsewhere: 0 success, 1 the thing asked for
failed (a device did not succeed, the broker is unreachable), 2 usage or config error.
What devices publish is printed through :func:`edge_agent.cli.terminal.safe`: a device name or value cannot move
the terminal's cursor or hide a line."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from edge_agent.cli.terminal import safe
from edge_agent.durations import ago
from edge_agent.fleet import client as fleet

__all__ = ["fleet_events", "fleet_history", "fleet_job", "fleet_ls", "fleet_schedule", "fleet_send"]


def _client(args: argparse.Namespace) -> fleet.FleetClient:
    mqtt = fleet.connection_settings(config=args.config, host=args.host, port=args.port, prefix=args.prefix,
                                     username=args.username, password_file=args.password_file, ca_file=args.ca_file,
                                     cert_file=args.cert_file, key_file=args.key_file, insecure=args.insecure)
    return fleet.FleetClient(mqtt)  # connected by `with`


def _num(value: Any) -> str:
    return "-" if value is None else str(value)


def _uptime(value: Any) -> str:
    if not isinstance(value, (int, float)):
        return "-"
    secs = int(value)
    if secs >= 86400:
        return f"{secs // 86400}d{secs % 86400 // 3600}h"
    if secs >= 3600:
        return f"{secs // 3600}h{secs % 3600 // 60}m"
    return f"{secs // 60}m{secs % 60}s"


def fleet_ls(args: argparse.Namespace) -> int:
    sync: dict[str, str] = {}
    with _client(args) as client:
        if args.json:  # (--json carries each device's reported `schedules`; the text compares them)
            rows = fleet.ls(client, timeout=client.timeout)
        else:
            from edge_agent.fleet.schedules import ls_and_status, summary

            rows, status_rows = ls_and_status(client)
            by_device: dict[str, list[dict[str, Any]]] = {}
            for row in status_rows:
                by_device.setdefault(row["device"], []).append(row)
            sync = {device: summary(found) for device, found in by_device.items()}
    if args.json:
        print(json.dumps({"devices": rows}, indent=2, default=str))
        return 0
    if not rows:
        print("no devices on this broker (no retained status or state under this prefix)")
        return 0
    print(f"{'DEVICE':<16} {'STATUS':<8} {'VERSION':<9} {'UPTIME':>7} {'QUEUE':>5} {'OUTBOX':>6} {'CLOCK':<5} "
          f"{'SEEN':>8} {'FAIL24H':>7} {'SCHEDULE':<8}  NEXT JOB")
    for r in rows:
        clock = {True: "ok", False: "NO", None: "-"}[r["clock_synchronized"]]
        nxt = r["next_job"]
        job = f"{nxt['job']} {nxt['at']}" if isinstance(nxt, dict) else "-"
        print(f"{safe(r['device'])[:16]:<16} {r['status'][:8]:<8} {safe(_num(r['version']))[:9]:<9} "
              f"{_uptime(r['uptime_s']):>7} {_num(r['queue']):>5} {_num(r['outbox']):>6} {clock:<5} "
              f"{ago(r['last_seen']):>8} {_num(r['failures_24h']):>7} {sync.get(r['device'], '-'):<8}  {safe(job)[:60]}")
    online = sum(1 for r in rows if r["online"])
    print(f"{len(rows)} device(s), {online} online")
    for r in rows:
        if r["problem"]:
            print(f"edge-agent: {safe(r['device'])[:60]}: {safe(r['problem'])}", file=sys.stderr)
    return 0


def fleet_send(args: argparse.Namespace) -> int:
    from edge_agent.contract import parse_pairs
    from edge_agent.device.commands import check_id
    from edge_agent.errors import InvalidCommand

    values = parse_pairs(args.pairs, args.args)
    if args.timeout <= 0:
        raise InvalidCommand("--timeout must be a positive number of seconds")
    if args.ttl is not None and args.ttl <= 0:
        raise InvalidCommand("--ttl must be a positive number of seconds")
    command_id = check_id(args.id) if args.id is not None else None
    with _client(args) as client:
        result = fleet.send(client, args.action, values, devices=args.device or (), group=args.group,
                            everyone=args.all, timeout=args.timeout, wait_offline=args.wait_offline,
                            command_id=command_id, ttl=args.ttl)
    if args.json:
        print(json.dumps(result.document(), indent=2, default=str))
        return _send_exit(result)
    if not result.devices:
        who = f"group {args.group!r}" if args.group else "this broker"
        print(f"no devices in {who} (from their retained state)", file=sys.stderr)
        return 1
    for device, d in result.document()["devices"].items():
        reply = d.get("reply") or {}
        if d["status"] == "succeeded":
            text = json.dumps(reply.get("result"), default=str)
        elif d["status"] in fleet.FINAL:
            err = reply.get("error") or {}
            text = f"{err.get('type')}: {err.get('message')}"
        else:
            text = d.get("detail", "")
        print(f"{safe(device)[:20]:<20} {safe(d['status']):<14} {safe(text)[:200]}")
    counts = ", ".join(f"{n} {safe(status)}" for status, n in sorted(result.counts().items()))
    print(f"{result.action} {result.id}: {counts} in {result.elapsed_s:.2f}s")
    return _send_exit(result)


def fleet_job(args: argparse.Namespace) -> int:
    """``fleet job VERB NAME``: ``fleet send job.VERB name=NAME`` (same output and exit codes)."""
    return fleet_send(argparse.Namespace(**vars(args), action=f"job.{args.verb}", pairs=[],
                                         args=json.dumps({"name": args.name}), wait_offline=False, ttl=None, id=None))


def _send_exit(result: fleet.SendResult) -> int:
    """0 when every device succeeded; else 1, with one line on stderr saying who did not and why."""
    if result.ok:
        return 0
    bad = result.not_succeeded()
    if bad:
        names = ", ".join(f"{safe(d)[:40]} {safe(status)}" for d, status in list(bad.items())[:20])
        more = f" and {len(bad) - 20} more" if len(bad) > 20 else ""
        print(f"edge-agent: not every device succeeded: {names}{more}", file=sys.stderr)
    return 1


def fleet_schedule(args: argparse.Namespace) -> int:
    """``fleet schedule set|status|get|clear``."""
    from edge_agent.errors import InvalidCommand
    from edge_agent.fleet import schedules

    verb = args.schedule_command
    if verb in ("set", "clear"):
        if args.timeout <= 0:
            raise InvalidCommand("--timeout must be a positive number of seconds")
        doc = schedules.load_document(args.file) if verb == "set" else None  # checked before connecting
        with _client(args) as client:
            if doc is not None:
                result = schedules.set_schedule(client, doc, devices=args.device or (), group=args.group,
                                                everyone=args.all, timeout=args.timeout)
            else:
                result = schedules.clear(client, devices=args.device or (), group=args.group, everyone=args.all,
                                         timeout=args.timeout)
        return _print_schedule_result(args, result)
    if verb == "status":
        with _client(args) as client:
            rows = schedules.status(client)
        _print_schedule_status(rows, args.json)
        return 0
    if args.timeout <= 0:
        raise InvalidCommand("--timeout must be a positive number of seconds")
    with _client(args) as client:
        got = schedules.get(client, args.device, timeout=args.timeout)
    _print_schedule_get(got, args.json)
    return 0


def _print_schedule_result(args: argparse.Namespace, result: Any) -> int:
    """One line per device and a summary (or ``--json``); 0 only when every device applied it."""
    doc = result.document()
    what = "clear" if result.clear else "schedule"
    label = f"{what} {'/'.join(doc['sources'])} v{result.version}"
    if args.json:
        print(json.dumps(doc, indent=2, default=str))
    elif result.devices:
        for d in doc["devices"]:
            text = d.get("error") or d.get("detail") or f"version {result.version}"
            print(f"{safe(d['device'])[:20]:<20} {safe(d['result']):<14} {safe(text)[:200]}")
        counts = ", ".join(f"{n} {safe(status)}" for status, n in sorted(result.counts().items()))
        print(f"{label}: {counts} in {result.elapsed_s:.2f}s")
    if not result.devices:
        who = f"group {args.group!r}" if args.group else "this broker"
        print(f"edge-agent: {label} is on the broker, but there are no devices in {safe(who)} yet (from their retained "
              f"state): each gets it when it connects", file=sys.stderr)
        return 1
    if result.ok:
        return 0
    done = "cleared" if result.clear else "applied"
    bad = [(d["device"], d["result"]) for d in doc["devices"] if d["result"] != done]
    names = ", ".join(f"{safe(d)[:40]} {safe(r)}" for d, r in bad[:20])
    more = f" and {len(bad) - 20} more" if len(bad) > 20 else ""
    print(f"edge-agent: not every device {done} it: {names}{more}", file=sys.stderr)
    return 1


_SYNC_ORDER = ("in sync", "offline", "drift", "rejected")  # a device's summary: its worst row


def _print_schedule_status(rows: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        print(json.dumps({"rows": rows}, indent=2, default=str))
        return
    if not rows:
        print("no devices on this broker (no retained status or state under this prefix)")
        return
    print(f"{'DEVICE':<16} {'STATUS':<8} {'SOURCE':<20} {'DESIRED':>14} {'APPLIED':>14}  SYNC")
    worst: dict[str, str] = {}
    for r in rows:
        desired = "clear" if r["desired_clear"] else _num(r["desired"])
        applied = "clear" if r["applied_clear"] else safe(_num(r["applied"]))[:14]
        sync = r["sync"]
        if r["sync"] == "rejected" and r["rejected"]:
            sync += f": {r['rejected']['error']}"
        print(f"{safe(r['device'])[:16]:<16} {'online' if r['online'] else 'offline':<8} "
              f"{safe(r['source'] or '-')[:20]:<20} {desired:>14} {applied:>14}  {safe(sync)[:200]}")
        was = worst.get(r["device"], "in sync")
        worst[r["device"]] = max(was, r["sync"], key=lambda s: _SYNC_ORDER.index(s) if s in _SYNC_ORDER else 0)
    counts: dict[str, int] = {}
    for sync in worst.values():
        counts[sync] = counts.get(sync, 0) + 1
    print(f"{len(worst)} device(s): " + ", ".join(f"{counts[s]} {s}" for s in _SYNC_ORDER if s in counts))
    for r in rows:
        if r.get("problem"):
            print(f"edge-agent: {safe(r['device'])[:60]}: {safe(r['problem'])}", file=sys.stderr)


def _print_schedule_get(got: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(got, indent=2, default=str))
        return
    if not got["jobs"] and not got["windows"]:
        print(f"{safe(got['device'])}: no jobs or windows")
        return
    print(f"{'JOB':<20} {'ORIGIN':<20} {'VERSION':>14}  TRIGGER -> ACTION; NEXT")
    for j in got["jobs"]:
        nxt = j.get("next") or []
        extra = " PAUSED" if j.get("paused") else ""
        print(f"{safe(j.get('name'))[:20]:<20} {safe(j.get('origin', 'config'))[:20]:<20} "
              f"{safe(_num(j.get('version')))[:14]:>14}  {safe(j.get('trigger'))[:60]} -> {safe(j.get('action'))[:40]}; "
              f"next {safe(nxt[0] if nxt else 'none')[:40]}{extra}")
    for w in got["windows"]:
        print(f"{'window ' + safe(w.get('device'))[:13]:<20} {safe(w.get('origin', 'config'))[:20]:<20} "
              f"{safe(_num(w.get('version')))[:14]:>14}  {safe(w.get('value'))[:10]} from {safe(w.get('from'))[:40]} "
              f"until {safe(w.get('until'))[:40]}")


def _print_event(doc: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(doc, separators=(",", ":"), default=str), flush=True)
        return
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(doc.get("ts") or 0))
    extra = ""
    kind = doc.get("event")
    if kind in ("started", "succeeded", "failed", "retried"):
        extra = f" attempt {doc.get('attempt')}"
    if kind == "succeeded" and doc.get("runtime") is not None:
        extra += f" in {doc['runtime'] * 1000:.1f} ms"
    if isinstance(doc.get("error"), dict):
        extra += f" {doc['error'].get('type')}: {doc['error'].get('message')}"
    if kind == "retried" and doc.get("next_try"):
        extra += f"; next try {time.strftime('%H:%M:%S', time.localtime(doc['next_try']))}"
    if kind == "fired":
        extra = f" job {doc.get('job')}"
    if kind == "skipped":
        planned = doc.get("planned")
        at = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(planned)) if isinstance(planned, (int, float)) else "?"
        extra = f" job {doc.get('job')} planned {at}: paused"
    if kind == "received":
        extra = f" from {doc.get('source')}"
    print(f"{when} {safe(doc.get('device'))[:16]:<16} #{safe(doc.get('seq')):<7} {safe(kind)[:9]:<9} "
          f"{safe(doc.get('action'))[:20]:<20} {safe(doc.get('id') if doc.get('id') is not None else '-')[:40]}{safe(extra)[:300]}", flush=True)


def fleet_events(args: argparse.Namespace) -> int:
    from edge_agent.errors import InvalidCommand

    if not 0 <= args.n <= fleet.HISTORY_COUNT:
        raise InvalidCommand(f"-n must be 0 to {fleet.HISTORY_COUNT}")
    positions: dict[str, int] = {}
    if args.resume:
        try:
            with open(args.resume, encoding="utf-8") as fh:
                positions = {str(k): int(v) for k, v in json.load(fh).items()}
        except FileNotFoundError:
            positions = {}
        except (ValueError, AttributeError, TypeError) as exc:
            from edge_agent.errors import ConfigError

            raise ConfigError(f"--resume {args.resume}: not a saved position file ({exc})") from None
    with _client(args) as client:
        devices = args.device or []
        if not devices and (args.n > 0 and not positions):
            # the latest events of the devices that can answer now (an offline one would cost a timeout)
            devices_seen = [r["device"] for r in fleet.ls(client, timeout=client.timeout) if r["online"]]
        else:
            devices_seen = devices
        if args.n > 0 and not positions:
            latest: list[dict[str, Any]] = []
            for device in devices_seen:
                try:
                    got = fleet.history(client, device, count=args.n, timeout=5.0)
                except Exception as exc:  # an offline device: say so, go on with the others
                    print(f"{safe(device)}: {safe(exc)}", file=sys.stderr)
                    continue
                latest.extend(got["events"])
                if got["events"]:
                    positions[device] = got["events"][-1]["seq"]
            for doc in sorted(latest, key=lambda d: (d.get("ts") or 0, d.get("seq") or 0)):
                _print_event(doc, args.json)
        if not args.follow:
            return 0
        from edge_agent.fleet.stream import EventStream

        stream = EventStream(client, lambda doc: _print_event(doc, args.json), devices=devices, positions=positions)
        stream.start()
        _stop_on_sigterm()  # (as on Ctrl-C: the position is saved, exit 0)
        try:
            while True:
                time.sleep(1.0)
                if args.resume:
                    _save_positions(args.resume, stream.last)
        except KeyboardInterrupt:
            pass
        finally:
            stream.stop()
            if args.resume:
                _save_positions(args.resume, stream.last)
            if stream.lost:
                print(f"events no longer kept by the devices (lost): {stream.lost}", file=sys.stderr)
    return 0


def _stop_on_sigterm() -> None:
    import signal

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)


def _save_positions(path: str, last: dict[str, int]) -> None:
    import os

    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(dict(last), fh)
    os.replace(tmp, path)


def _instant(value: str | None, flag: str) -> float | None:
    if value is None:
        return None
    from datetime import datetime

    from edge_agent.errors import InvalidCommand

    try:
        return float(value)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidCommand(f"{flag} must be unix seconds or ISO-8601, got {value!r}") from None
    if when.tzinfo is None:
        when = when.astimezone()  # local time, as typed
    return when.timestamp()


def fleet_history(args: argparse.Namespace) -> int:
    from edge_agent.contract import KINDS
    from edge_agent.errors import InvalidCommand

    if not 1 <= args.n <= fleet.HISTORY_COUNT:
        raise InvalidCommand(f"-n must be 1 to {fleet.HISTORY_COUNT}")
    if args.event is not None and args.event not in KINDS:
        raise InvalidCommand(f"--event must be one of {', '.join(KINDS)}; got {args.event!r}")
    if args.after is not None and args.after < 0:
        raise InvalidCommand("--after must be 0 or more")
    filters = {"action": args.action, "event": args.event, "id": args.id,
               "since": _instant(args.since, "--since"), "until": _instant(args.until, "--until")}
    with _client(args) as client:
        doc = fleet.history(client, args.device, after=args.after, count=args.n, filters=filters, timeout=args.timeout)
    if args.json:
        print(json.dumps(doc, indent=2, default=str))
    else:
        if not doc["events"]:
            print(f"{args.device}: no events" + (" matching" if any(v is not None for v in filters.values()) else ""))
        for ev in doc["events"]:
            _print_event(ev, False)
    if doc["invalid"]:
        print(f"edge-agent: {safe(args.device)}: {doc['invalid']} malformed event(s) left out", file=sys.stderr)
    return 0
