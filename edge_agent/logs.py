"""Logging set-up: one line per event on stderr, journald-aware, secrets redacted.

Under systemd, stderr is connected to journald, which stamps each line itself
and reads a ``<N>`` prefix as the syslog priority. So there a line is
``<6>edge_agent.mqtt: connected`` and nothing more; in a terminal it is
``2024-06-01 21:14:03.512 INFO  edge_agent.mqtt: connected``. A traceback keeps
one prefix per line, so journald files every line under the error's priority.

Secrets never reach the log: values of keys that look secret (``password=``,
``"token": "…"``, ``Authorization: Bearer …``, the password in
``scheme://user:pass@host``) and any value registered with ``add_secret`` (the
MQTT password, once read) are replaced by ``***`` in the final text, traceback
included.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
from collections.abc import Mapping
from typing import TextIO

__all__ = ["SecretRedactor", "add_secret", "redact", "setup_logging"]

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}

# Shorter registered secrets are ignored: redacting every "ab" would garble the
# log and still not hide a password that short.
_MIN_SECRET_LENGTH = 4
_MASK = "***"

_KEY_WORDS = (
    r"password|passwd|passphrase|secret|token|api[_-]?key|access[_-]?key"
    r"|private[_-]?key|credentials?|authorization|auth"
)
# key (word characters allowed before the secret word, so mqtt_password and
# client_secret count, but nothing after it, so password_file stays visible),
# an optional closing quote, "=" or ":", then the value, quoted or bare.
_KEY_VALUE = re.compile(
    rf"""(?P<key>\b[\w.-]*(?:{_KEY_WORDS})(?P<q>["']?)\s*[:=]\s*)
         (?:(?P<scheme>(?:Bearer|Basic|Token|Digest)\s+))?
         (?P<value>"[^"]*"|'[^']*'|[^\s,;&'"}}\])]+)""",
    re.IGNORECASE | re.VERBOSE,
)
_URL_PASSWORD = re.compile(r"(?P<head>\b[a-z][a-z0-9+.-]*://[^\s/:@]+:)[^\s/@]+(?=@)", re.IGNORECASE)

_secrets: set[str] = set()
_secrets_lock = threading.Lock()


def add_secret(value: str | bytes | None) -> None:
    """Never log ``value`` from now on (e.g. the MQTT password once read from its file)."""
    if isinstance(value, bytes):
        value = value.decode(errors="replace")
    if not value:
        return
    value = value.strip()
    if len(value) >= _MIN_SECRET_LENGTH:
        with _secrets_lock:
            _secrets.add(value)


def redact(text: str) -> str:
    """``text`` with registered secrets and secret-looking key values replaced by ``***``."""
    with _secrets_lock:
        # longest first, so a secret containing another is masked whole
        known = sorted(_secrets, key=len, reverse=True)
    for secret in known:
        if secret in text:
            text = text.replace(secret, _MASK)
    text = _KEY_VALUE.sub(_mask_value, text)
    return _URL_PASSWORD.sub(lambda m: m["head"] + _MASK, text)


def _mask_value(match: re.Match[str]) -> str:
    value = match["value"]
    if value[0] in "\"'":
        masked = value[0] + _MASK + value[0]
    else:
        masked = _MASK
    return match["key"] + (match["scheme"] or "") + masked


def _syslog_priority(levelno: int) -> int:
    if levelno >= logging.CRITICAL:
        return 2
    if levelno >= logging.ERROR:
        return 3
    if levelno >= logging.WARNING:
        return 4
    if levelno >= logging.INFO:
        return 6
    return 7


class _JournalFormatter(logging.Formatter):
    """``<N>logger: message``, every line of a multi-line event under the same ``<N>``."""

    def format(self, record: logging.LogRecord) -> str:
        text = redact(super().format(record))
        prefix = f"<{_syslog_priority(record.levelno)}>"
        return "\n".join(prefix + line for line in text.splitlines() or [""])


class _TerminalFormatter(logging.Formatter):
    """Local time, level, logger and message; continuation lines indented."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s.%(msecs)03d %(levelname)-5s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        text = redact(super().format(record))
        head, *rest = text.splitlines() or [""]
        return "\n".join([head, *("    " + line for line in rest)])


class SecretRedactor(logging.Filter):
    """A filter that redacts a record's message in place, for handlers set up elsewhere.

    ``setup_logging``'s own handler redacts the whole formatted text instead
    (traceback included); this filter is for adding redaction to other handlers.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.getMessage())
        record.args = None
        return True


class _Handler(logging.StreamHandler[TextIO]):
    """Marks the handler ``setup_logging`` installed, so a second call replaces it."""


def setup_logging(level: str = "info", *, stream: TextIO | None = None, journald: bool | None = None) -> None:
    """Send every log record at ``level`` or above to ``stream`` (default: stderr), one line each.

    ``journald=None`` detects journald: ``$JOURNAL_STREAM`` names the device and
    inode of the stream (what systemd sets for a service's stderr), so a
    terminal or a pipe started from the service is not mistaken for it. Calling
    again replaces the previous set-up. Raises ValueError for an unknown level.
    """
    try:
        levelno = _LEVELS[level.lower()]
    except KeyError:
        raise ValueError(f"unknown log level {level!r}; use debug, info, warning, error or critical") from None
    if stream is None:
        stream = sys.stderr
    if journald is None:
        journald = _is_journal_stream(stream)
    handler = _Handler(stream)
    formatter = _JournalFormatter("%(name)s: %(message)s") if journald else _TerminalFormatter()
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _Handler)]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(levelno)
    logging.captureWarnings(True)


def _is_journal_stream(stream: TextIO, environ: Mapping[str, str] | None = None) -> bool:
    value = (os.environ if environ is None else environ).get("JOURNAL_STREAM", "")
    device, _, inode = value.partition(":")
    try:
        st = os.fstat(stream.fileno())
        return (st.st_dev, st.st_ino) == (int(device), int(inode))
    except (ValueError, OSError, AttributeError):
        # no JOURNAL_STREAM, or a stream without a file descriptor (StringIO)
        return False
