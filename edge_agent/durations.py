"""Durations written as ``30s``, ``15m``, ``2h``, ``1d`` or combined (``1h30m``), optionally signed."""

from __future__ import annotations

import re
import time

__all__ = ["ago", "format_duration", "parse_duration"]

_UNITS = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)([dhms])")


def parse_duration(text: str | int | float, *, signed: bool = False) -> float:
    """Seconds in ``text``; plain numbers are seconds. Raises ValueError naming the problem."""
    if isinstance(text, bool):
        raise ValueError(f"expected a duration like '15m' or '1h30m', got {text!r}")
    if isinstance(text, (int, float)):
        value = float(text)
    elif isinstance(text, str):
        body = text.strip().replace(" ", "")
        sign = 1.0
        if body[:1] in "+-" and body:
            if not signed:
                raise ValueError(f"a duration here cannot be signed: {text!r}")
            sign = -1.0 if body[0] == "-" else 1.0
            body = body[1:]
        pos, total = 0, 0.0
        for match in _PART.finditer(body):
            if match.start() != pos:
                break
            total += float(match.group(1)) * _UNITS[match.group(2)]
            pos = match.end()
        if not body or pos != len(body):
            raise ValueError(f"expected a duration like '30s', '15m', '2h', '1d' or '1h30m', got {text!r}")
        value = sign * total
    else:
        raise ValueError(f"expected a duration like '15m' or '1h30m', got {text!r}")
    if value < 0 and not signed:
        raise ValueError(f"a duration cannot be negative: {text!r}")
    return value


def format_duration(seconds: float) -> str:
    """The inverse of :func:`parse_duration` for whole seconds: ``5400 -> '1h30m'``."""
    sign = "-" if seconds < 0 else ""
    rest = round(abs(seconds))
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if rest >= size:
            parts.append(f"{rest // size}{unit}")
            rest %= size
    return sign + ("".join(parts) or "0s")


def ago(ts: float | None, now: float | None = None) -> str:
    """How long ago the unix time ``ts`` was, in its largest whole unit: ``'3h ago'`` (``-`` for none)."""
    if not isinstance(ts, (int, float)):
        return "-"
    secs = max(0, int((time.time() if now is None else now) - ts))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= size:
            return f"{secs // size}{unit} ago"
    return f"{secs}s ago"
