"""``edge-agent monitor``: its options checked (the web extra installed, the password file readable),
then the monitor started (:mod:`edge_agent.fleet.monitor.service`)."""

from __future__ import annotations

import argparse

__all__ = ["cmd_monitor"]


def cmd_monitor(args: argparse.Namespace) -> int:
    from edge_agent.config import config_path, load_settings
    from edge_agent.durations import parse_duration
    from edge_agent.errors import ConfigError
    from edge_agent.logs import setup_logging

    settings = load_settings(config_path(args.config))
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
