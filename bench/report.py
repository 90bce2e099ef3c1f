"""The results: the machine they came from, a Markdown table, and the JSON document."""

from __future__ import annotations

import math
import os
import platform
import sqlite3
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

from .harness import MOSQUITTO, ROOT, Row


def machine() -> dict[str, Any]:
    """CPU model, cores, Python, SQLite, kernel, and the versions under test."""
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    versions: dict[str, str] = {}
    for dist in ("edge-agent", "huey", "paho-mqtt"):
        try:
            from importlib.metadata import version

            versions[dist] = version(dist)
        except Exception:
            versions[dist] = "?"
    try:
        out = subprocess.run([MOSQUITTO, "-h"], capture_output=True, text=True, timeout=5).stdout
        versions["mosquitto"] = out.split("\n", 1)[0].replace("mosquitto version ", "").strip()
    except (OSError, subprocess.SubprocessError):
        versions["mosquitto"] = "?"
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "edge_agent"], cwd=ROOT, capture_output=True,
                               text=True, timeout=5).stdout.strip()
        versions["commit"] = commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        versions["commit"] = "?"
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "sqlite": sqlite3.sqlite_version,
            "kernel": platform.release(), "machine": platform.machine(), "versions": versions}


def machine_line(m: dict[str, Any]) -> str:
    v = m["versions"]
    return (f"{m['cpu']}, {m['cores']} cores, {m['machine']}, Linux {m['kernel']}, Python {m['python']}, "
            f"SQLite {m['sqlite']}; edge-agent {v['edge-agent']} ({v['commit']}), huey {v['huey']}, "
            f"paho-mqtt {v['paho-mqtt']}, mosquitto {v['mosquitto']}")


def fmt(value: float | None, unit: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if unit == "B":
        return f"{value:,.0f} B"
    if unit == "/s":
        return f"{value:,.0f}/s"
    if unit == "MB":
        return f"{value:.1f} MB"
    if unit.startswith("%"):
        return f"{value:.3f} %"
    if unit == "":
        return f"{value:.2f}"
    digits = 2 if abs(value) < 10 else 1 if abs(value) < 100 else 0
    return f"{value:,.{digits}f} {unit}"


def table(rows: Sequence[Row]) -> str:
    """A Markdown table, then the notes (baselines, sample sizes) numbered by row."""
    head = "| # | Figure | edge-agent | Baseline | Ratio | Goal | Met |"
    lines = [head, "|---|---|---|---|---|---|---|"]
    notes = []
    for i, r in enumerate(rows, 1):
        ratio = f"{r.ratio:.2f}x" if r.ratio is not None else "-"
        met = "-" if r.met is None else ("yes" if r.met else "**NO**")
        base = fmt(r.baseline, r.unit) if r.baseline is not None else "-"
        lines.append(f"| {i} | {r.section}: {r.figure} | {fmt(r.value, r.unit)} | {base} | {ratio} | {r.goal or '-'} | {met} |")
        parts = [p for p in (f"baseline: {r.baseline_name}" if r.baseline_name else "", r.note) if p]
        if parts:
            notes.append(f"{i}. {'; '.join(parts)}")
    return "\n".join(lines) + "\n\nNotes:\n" + "\n".join(notes)


def document(rows: Sequence[Row], *, machine_info: dict[str, Any], command: str, mode: str, started: str,
             duration_s: float, errors: Sequence[str]) -> dict[str, Any]:
    return {"machine": machine_info, "command": command, "mode": mode, "started": started,
            "duration_s": round(duration_s, 1), "python_executable": sys.executable,
            "rows": [r.to_json() for r in rows], "errors": list(errors)}
