"""Solar: astral's Sun with our search, beside the home-made solar theory it replaced.

- A year of events for one place: :func:`solar_events` for each of the 365 local days
  of 2026 in Oslo (all nine events; its caches cleared before each run), in this
  process. Median of several runs, the two engines alternating.
- ``edge-agent sun`` wall time: a fresh process that runs the CLI's ``main`` for one
  day, with ``edge_agent.schedule.solar`` loaded from the current file or from the
  old one, the same way for both (so both pay the same loader); and the real
  console script beside ``python -c pass``. The four alternate, each after a warm-up.

The old engine is the file as of :data:`OLD_COMMIT` (the last commit with the
home-made theory), taken with ``git show`` into the run's working folder at run time:
no copy of it is kept in the tree. Without git or that commit the rows say why.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import time
from datetime import date, timedelta
from pathlib import Path
from types import ModuleType
from zoneinfo import ZoneInfo

from .harness import BIN, PY, ROOT, BenchError, Row, median
from .lab import Context, Lab
from .startup import wall_times

#: the last commit whose ``edge_agent/schedule/solar.py`` holds the home-made theory
OLD_COMMIT = "dc583d25044b3076da283a9502cd81ae01618bc4"
SOLAR_FILE = ROOT / "edge_agent" / "schedule" / "solar.py"
PLACE = (59.9139, 10.7522, "Europe/Oslo")  # DST, grazing twilights, no astronomical night in summer
SUN_ARGS = ["sun", "--lat", str(PLACE[0]), "--lon", str(PLACE[1]), "--tz", PLACE[2], "--date", "2026-06-21"]
FIGURES = ("a year of solar events, one place", "edge-agent sun (CLI main, fresh process)", "edge-agent sun (console script)")

# Runs the CLI with edge_agent.schedule.solar taken from the file in argv[1].
_SUN_SHIM = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("edge_agent.schedule.solar", sys.argv[1])
module = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = module
spec.loader.exec_module(module)
from edge_agent.cli import main
sys.exit(main(sys.argv[2:]))
"""


def old_solar_source(workdir: Path) -> Path:
    """The old engine's file, from git, in ``workdir``."""
    try:
        text = subprocess.run(["git", "show", f"{OLD_COMMIT}:edge_agent/schedule/solar.py"], cwd=ROOT, check=True,
                              capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", "") or str(exc)
        raise BenchError(f"cannot get the old solar engine from git ({OLD_COMMIT[:7]}): {detail.strip()[:200]}") from None
    path = workdir / "solar_old" / "solar.py"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def load(path: Path, name: str) -> ModuleType:
    """``path`` imported as a module of its own (dataclasses need it in sys.modules)."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def clear_caches(module: ModuleType) -> None:
    for value in vars(module).values():
        if callable(getattr(value, "cache_clear", None)):
            value.cache_clear()


def year_of_events(module: ModuleType) -> float:
    """Seconds to compute every event of every local day of 2026 at :data:`PLACE`, cold caches."""
    latitude, longitude, zone = PLACE
    tz = ZoneInfo(zone)
    clear_caches(module)
    t0 = time.perf_counter()
    for n in range(365):
        module.solar_events(date(2026, 1, 1) + timedelta(days=n), latitude, longitude, tz)
    return time.perf_counter() - t0


def run(ctx: Context, lab: Lab) -> list[Row]:
    old_path = old_solar_source(ctx.workdir)
    # Warm imports for both (the astral import is not part of the year's figure).
    old = load(old_path, "_bench_solar_old")
    new = load(SOLAR_FILE, "_bench_solar_new")
    n_year = ctx.n(5, 1)
    n_sun = ctx.n(10, 3)
    ctx.say(f"solar: a year of events x{n_year} and edge-agent sun x{n_sun}, astral engine beside the old theory "
            f"({OLD_COMMIT[:7]})")
    year_new, year_old = [], []
    for _ in range(n_year):
        year_old.append(year_of_events(old))
        year_new.append(year_of_events(new))
    for name in ("_bench_solar_old", "_bench_solar_new"):
        sys.modules.pop(name, None)
    commands = {
        "old": [PY, "-c", _SUN_SHIM, str(old_path), *SUN_ARGS],
        "new": [PY, "-c", _SUN_SHIM, str(SOLAR_FILE), *SUN_ARGS],
        "console": [str(BIN / "edge-agent"), *SUN_ARGS],
        "python": [PY, "-c", "pass"],
    }
    walls: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(n_sun):
        for name, command in commands.items():
            walls[name].extend(wall_times(command, 1))
    sun_old, sun_new = walls["old"], walls["new"]
    console, python_floor = median(walls["console"]), median(walls["python"])
    ms = 1000.0
    place = f"{PLACE[2]} {PLACE[0]}, {PLACE[1]}"
    return [
        Row("solar", "a year of solar events, one place", median(year_new) * ms, median(year_old) * ms, "ms",
            "the home-made theory", note=f"365 days x 9 events, {place}; median of {n_year}"),
        Row("solar", "edge-agent sun (CLI main, fresh process)", median(sun_new) * ms, median(sun_old) * ms, "ms",
            "the home-made theory", note=f"median of {n_sun}; one day, {place}"),
        Row("solar", "edge-agent sun (console script)", console * ms, python_floor * ms, "ms", "python -c pass",
            note=f"median of {n_sun}"),
    ]
