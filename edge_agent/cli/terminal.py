"""What is printed on a terminal: its width, and text from elsewhere made safe to show."""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["columns", "safe"]


def columns() -> int:
    """The terminal's width (COLUMNS first, as argparse reads it; 80 when there is none)."""
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


def safe(value: Any) -> str:
    """``value`` as text with control characters (escape sequences, newlines) shown as ``?``."""
    return "".join(c if c.isprintable() else "?" for c in str(value))
