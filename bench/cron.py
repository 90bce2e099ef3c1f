"""Cron: our evaluator beside cronsim, and a catch-up decision after two days away.

- 10,000 successive firings of ``* * * * *`` and of ``30 2 * * *`` in Europe/Oslo from
  2026-03-01 (through the March DST change), by :class:`CronExpr.next_after` and by
  cronsim's iterator in the same process, alternating; median of several runs.
- The planner's decision for a ``* * * * *`` job with ``missed = "all"`` after two days
  of downtime (one decision, grace 2 h: 100 firings run, the rest dropped), beside the
  same job's decision when one minute went by.

cronsim is the baseline (``pip install cronsim``); without it those rows say so.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from edge_agent.schedule.cron import CronExpr
from edge_agent.schedule.planner import Job, Planner
from edge_agent.schedule.triggers import CronTrigger

from .harness import Row, median
from .lab import Context, Lab

TZ = ZoneInfo("Europe/Oslo")
START = datetime(2026, 3, 1, tzinfo=TZ)
COUNT = 10_000
EXPRESSIONS = ("* * * * *", "30 2 * * *")
FIGURES = (*(f"10,000 firings of {text!r}" for text in EXPRESSIONS), "missed = all decision after 2 days away (* * * * *)")


def ours(text: str, count: int) -> float:
    expr = CronExpr.parse(text)
    t0 = time.perf_counter()
    instant = START
    for _ in range(count):
        instant = expr.next_after(instant, TZ)
    return time.perf_counter() - t0


def cronsim_time(text: str, count: int) -> float | None:
    try:
        from cronsim import CronSim
    except ImportError:
        return None
    t0 = time.perf_counter()
    it = CronSim(text, START)
    for _ in range(count):
        next(it)
    return time.perf_counter() - t0


def catch_up(downtime: timedelta) -> float:
    job = Job("every-minute", CronTrigger(CronExpr.parse("* * * * *"), TZ), "all", 7200.0)
    since = START
    t0 = time.perf_counter()
    Planner().due(job, last_planned=since, now=since + downtime, since=since)
    return time.perf_counter() - t0


def run(ctx: Context, lab: Lab) -> list[Row]:
    runs = ctx.n(5, 1)
    count = ctx.n(COUNT, 1000)
    ctx.say(f"cron: {count} firings x{runs} of {', '.join(EXPRESSIONS)} beside cronsim; a two-day catch-up decision")
    rows = []
    for text in EXPRESSIONS:
        mine, theirs = [], []
        for _ in range(runs):
            mine.append(ours(text, count))
            other = cronsim_time(text, count)
            if other is not None:
                theirs.append(other)
        rows.append(Row("cron", f"10,000 firings of {text!r}", median(mine) * COUNT / count, median(theirs) * COUNT / count if theirs else None, "s",
                        "cronsim" if theirs else "cronsim (not installed)",
                        goal="< 1 s" if text == "* * * * *" else "", met=median(mine) * COUNT / count < 1.0 if text == "* * * * *" else None,
                        note=f"Europe/Oslo from 2026-03-01; {count:,} timed, median of {runs}"))
    two_days = median([catch_up(timedelta(days=2)) for _ in range(runs)])
    one_minute = median([catch_up(timedelta(minutes=1)) for _ in range(runs)])
    rows.append(Row("cron", FIGURES[2], two_days * 1000, one_minute * 1000, "ms",
                    "the same decision 1 minute late", note="grace 2 h: 100 run, the rest dropped"))
    return rows
