"""The benchmarks in their small form, so that they cannot rot: they run, and report every row.

No timing is asserted: CI machines are noisy and the quick form's numbers are not results.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_parse_strace_counts_syncs_and_database_bytes() -> None:
    """strace -f -y output is read per file, across unfinished/resumed lines, sockets left out."""
    from bench.wear import parse_strace

    text = "\n".join([
        '101 pwrite64(5</d/agent.db-wal>, ""..., 24, 0) = 24',
        '101 pwrite64(5</d/agent.db-wal>, ""..., 4096, 24) = 4096',
        '102 write(7<socket:[123]>, ""..., 40) = 40',
        '101 fsync(5</d/agent.db-wal> <unfinished ...>',
        '102 write(2</d/daemon.log>, ""..., 10) = 10',
        '101 <... fsync resumed>) = 0',
        '103 fdatasync(9</d/huey.db>) = 0',
    ])
    got = parse_strace(text)
    assert got["syncs"] == 2
    assert got["db_bytes"] == 4120 and got["db_writes"] == 2
    assert got["by_file"]["fsync agent.db-wal"] == 1


def test_percentile_interpolates_between_ranks() -> None:
    """p50 of an even count is the mean of the middle two; p100 is the maximum."""
    from bench.harness import percentile

    assert percentile([4.0, 1.0, 3.0, 2.0], 50) == 2.5
    assert percentile([1.0, 2.0, 3.0], 100) == 3.0


@pytest.mark.slow
def test_quick_run_writes_every_row(tmp_path: Path) -> None:
    """``python -m bench --quick`` completes and its JSON holds every row of every benchmark."""
    from bench.__main__ import BENCHMARKS
    from bench.harness import MOSQUITTO

    if not os.path.exists(MOSQUITTO):
        pytest.skip("mosquitto is not installed")
    out = tmp_path / "results.json"
    proc = subprocess.run([sys.executable, "-m", "bench", "--quick", "--json", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "| # | Figure |" in proc.stdout
    doc = json.loads(out.read_text())
    assert doc["mode"] == "quick" and doc["errors"] == []
    assert {"cpu", "cores", "python", "sqlite", "kernel"} <= set(doc["machine"])
    got = {(r["section"], r["figure"]) for r in doc["rows"]}
    expected = {(section, fig) for section, module in BENCHMARKS for fig in module.FIGURES}
    assert got == expected
    for row in doc["rows"]:
        assert row["value"] is not None or row["note"].startswith("n/a"), row
        assert not row["note"].startswith("error"), row
        assert row["met"] in (True, False, None)
