"""``python -m bench [--quick] [--json PATH]``: every benchmark, one table, one JSON file.

Each figure is measured beside its baseline in the same run on the same machine
(these machines are noisy). ``--quick`` is a small form for CI (about a minute):
its numbers are not results. Exit status 1 if a benchmark could not run.
"""

from __future__ import annotations

import argparse
import compileall
import dataclasses
import json
import shutil
import sys
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType

from . import cron, fleet, footprint, hotpath, latency, monitor, pickup, recovery, scale, solar, startup, throughput, wear
from .harness import BENCH_DIR, Broker, Row
from .lab import Context, Lab, make_workdir, remove_workdir
from .report import document, machine, machine_line, table
from .wear import strace_problem

#: in running order: start-up first, on a quiet machine; footprint after the work, idle
BENCHMARKS: tuple[tuple[str, ModuleType], ...] = (
    ("start-up", startup),
    ("latency", latency),
    ("idle pickup", pickup),
    ("throughput", throughput),
    ("hotpath", hotpath),
    ("wear", wear),
    ("footprint", footprint),
    ("scale", scale),
    ("recovery", recovery),
    ("solar", solar),
    ("cron", cron),
    ("fleet", fleet),
    ("monitor", monitor),
)


#: sections that `--events-off` runs a second time, with the daemon's task events off
EVENTS_OFF = ("latency", "throughput", "wear")


def _events_off(section: str, module: ModuleType, ctx: Context, lab: Lab, errors: list[str],
                say: Callable[[str], None]) -> list[Row]:
    """``section`` again with ``[events] enabled = false`` (its baselines measured again too):
    the same figures, marked, without goals (they are for the default config)."""
    t = time.monotonic()
    lab.set_events(False)
    try:
        got = module.run(ctx, lab)
    except Exception as exc:
        errors.append(f"{section} (events off): {type(exc).__name__}: {exc}")
        traceback.print_exc()
        got = [Row(section, fig, None, note=f"error: {type(exc).__name__}: {str(exc)[:200]}") for fig in module.FIGURES]
    finally:
        lab.set_events(True)
    say(f"{section} with events off done in {time.monotonic() - t:.1f} s")
    return [dataclasses.replace(r, figure=f"{r.figure} (events off)", goal="", met=None) for r in got]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", "--smoke", dest="quick", action="store_true",
                   help="a small, fast form (CI smoke run); its numbers are not results")
    p.add_argument("--json", metavar="PATH", default=str(BENCH_DIR / "results.json"),
                   help="where to write the results (default: bench/results.json)")
    p.add_argument("--only", metavar="NAMES", help="comma-separated sections to run, e.g. latency,wear")
    p.add_argument("--no-strace", action="store_true", help="do not use strace even if it is installed")
    p.add_argument("--keep", action="store_true", help="keep the working folder (databases, logs) for inspection")
    p.add_argument("--events-off", action="store_true",
                   help=f"also run {', '.join(EVENTS_OFF)} with [events] enabled = false (rows marked 'events off')")
    args = p.parse_args(argv)

    if not Broker.available():
        print("bench: mosquitto is not installed (apt-get install mosquitto)", file=sys.stderr)
        return 2
    chosen = BENCHMARKS
    if args.only:
        names = {n.strip() for n in args.only.split(",")}
        chosen = tuple((name, mod) for name, mod in BENCHMARKS if name in names or mod.__name__.split(".")[-1] in names)
        if not chosen:
            print(f"bench: no benchmark named {args.only!r}", file=sys.stderr)
            return 2

    def say(text: str) -> None:
        print(f"[{time.monotonic() - t_start:6.1f}s] {text}", file=sys.stderr, flush=True)

    t_start = time.monotonic()
    started = datetime.now(UTC).isoformat(timespec="seconds")
    info = machine()
    command = "python -m bench" + (" --quick" if args.quick else "")
    print(f"machine: {machine_line(info)}", flush=True)
    strace = None if args.no_strace else shutil.which("strace")
    problem = "--no-strace" if args.no_strace else strace_problem(strace)
    if problem:
        say(f"fsyncs are not counted: {problem}")
        strace = None
    # As installed (pip and deploy/install.sh compile a package's modules): a checkout run with
    # PYTHONDONTWRITEBYTECODE=1, as on CI machines, would compile every module at every start.
    for package in ("edge_agent", "bench"):
        compileall.compile_dir(str(BENCH_DIR.parent / package), quiet=1)
    workdir = make_workdir()
    ctx = Context(quick=args.quick, workdir=workdir, strace=strace, say=say, strace_problem=problem or "")
    lab = Lab(ctx)
    rows: list[Row] = []
    errors: list[str] = []
    try:
        for section, module in chosen:
            t = time.monotonic()
            try:
                got = module.run(ctx, lab)
            except Exception as exc:
                errors.append(f"{section}: {type(exc).__name__}: {exc}")
                traceback.print_exc()
                got = [Row(section, fig, None, note=f"error: {type(exc).__name__}: {str(exc)[:200]}")
                       for fig in module.FIGURES]
            rows.extend(got)
            say(f"{section} done in {time.monotonic() - t:.1f} s")
            if args.events_off and section in EVENTS_OFF:
                rows.extend(_events_off(section, module, ctx, lab, errors, say))
    finally:
        lab.close()
        if args.keep:
            say(f"kept {workdir}")
        else:
            remove_workdir(workdir)
    duration = time.monotonic() - t_start
    print()
    print(table(rows))
    print(f"\nmachine: {machine_line(info)}\ncommand: {command}  ({'quick: not results' if args.quick else 'full'}); "
          f"total {duration:.0f} s")
    missed = [f"{r.section}: {r.figure}" for r in rows if r.met is False]
    if missed:
        print("goals missed: " + "; ".join(missed))
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(document(rows, machine_info=info, command=command, mode="quick" if args.quick else "full",
                                       started=started, duration_s=duration, errors=errors), indent=2) + "\n")
    print(f"wrote {out}")
    if errors:
        print("errors:\n  " + "\n  ".join(errors), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
