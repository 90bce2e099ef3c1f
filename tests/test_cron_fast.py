"""The quick path of cron's next_after (no offset change within 3 h) agrees with the
general search everywhere, including the hours around every 2026 DST change."""

from __future__ import annotations

import os
import random
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from edge_agent.schedule.cron import CronExpr

ZONES = ["America/New_York", "Europe/Oslo", "Australia/Lord_Howe", "Pacific/Chatham", "America/St_Johns",
         "Asia/Kathmandu", "America/Sao_Paulo", "Europe/Istanbul", "Africa/Casablanca", "UTC"]
EXPRESSIONS = ["* * * * *", "*/7 * * * *", "30 2 * * *", "0 * * * *", "15,45 1-3 * * *", "52 */3 * * *",
               "0 0 1 * *", "59 23 * * 0", "*/20 20 * * *", "0 2 29 2 *"]


def _transitions(tz: ZoneInfo, year: int) -> list[datetime]:
    out, instant = [], datetime(year, 1, 1, tzinfo=UTC)
    offset = instant.astimezone(tz).utcoffset()
    while instant.year == year:
        step = instant + timedelta(hours=1)
        if step.astimezone(tz).utcoffset() != offset:
            out.append(step)
            offset = step.astimezone(tz).utcoffset()
        instant = step
    return out


def _general(expr: CronExpr, after: datetime, tz: ZoneInfo) -> datetime:
    object.__setattr__(expr, "_next_without_transition", lambda *args: None)  # the general search alone
    try:
        return expr.next_after(after, tz)
    finally:
        object.__delattr__(expr, "_next_without_transition")


@pytest.mark.slow
def test_the_quick_path_agrees_with_the_general_search() -> None:
    """Seeded: instants within 5 h of each 2026 transition and at random through the year."""
    seed = int(os.environ.get("CRON_SEED", random.randrange(2**32)))
    print(f"seed {seed} (CRON_SEED={seed} repeats this run)")
    rng = random.Random(seed)
    for zone in ZONES:
        tz = ZoneInfo(zone)
        near = [t + timedelta(seconds=rng.randrange(-5 * 3600, 5 * 3600)) for t in _transitions(tz, 2026) for _ in range(20)]
        spread = [datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=rng.randrange(365 * 86400)) for _ in range(30)]
        for text in EXPRESSIONS:
            expr = CronExpr.parse(text)
            for after in near + spread:
                assert expr.next_after(after, tz) == _general(expr, after, tz), (seed, zone, text, after)
