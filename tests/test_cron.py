"""Cron expressions: parsing, matching and the daylight-saving rules, with time passed in."""

from __future__ import annotations

import calendar
import itertools
from datetime import UTC, date, datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.schedule import cron
from edge_agent.schedule.cron import CronExpr, wall_to_instant


def firings(text: str, start: datetime, end: datetime, tz: ZoneInfo | timezone) -> list[datetime]:
    expr = CronExpr.parse(text)
    out: list[datetime] = []
    instant = expr.next_after(start, tz)
    while instant < end:
        out.append(instant)
        instant = expr.next_after(instant, tz)
    return out


def local_day(day: date, tz: ZoneInfo) -> tuple[datetime, datetime]:
    return datetime.combine(day, time(0), tz), datetime.combine(day + timedelta(days=1), time(0), tz)


def test_parse_reads_every_field_form() -> None:
    """Stars, values, ranges, lists, steps, 'a/n', names in any case and Sunday as 7."""
    expr = CronExpr.parse("*/20 9-17/4 1,15 jan-MAR,Dec sun,7,Wed")
    assert expr.minutes == {0, 20, 40}
    assert expr.hours == {9, 13, 17}
    assert expr.days == {1, 15}
    assert expr.months == {1, 2, 3, 12}
    assert expr.weekdays == {0, 3}
    assert CronExpr.parse("5/15 * * * *").minutes == {5, 20, 35, 50}
    daily, plain = CronExpr.parse("@daily"), CronExpr.parse("0 0 * * *")
    assert (daily.minutes, daily.hours, daily.days, daily.months, daily.weekdays) == (
        plain.minutes, plain.hours, plain.days, plain.months, plain.weekdays)
    assert str(CronExpr.parse("0 23 * * *")) == "0 23 * * *"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("60 * * * *", "bad minute field '60': 60 is out of range 0-59"),
        ("* 24 * * *", "bad hour field '24'"),
        ("* * 0 * *", "bad day-of-month field '0'"),
        ("* * * 13 *", "bad month field '13'"),
        ("* * * * 8", "bad day-of-week field '8'"),
        ("* * * FOO *", "'FOO' is not a number or a name"),
        ("10-5 * * * *", "runs backwards"),
        ("*/0 * * * *", "step 0"),
        ("1,,2 * * * *", "cannot read ''"),
        ("* * * *", "expected 5 fields"),
        ("* * * * * *", "expected 5 fields"),
        ("0 0 30 2 *", "no such day in the months given"),
        ("@fortnightly", "unknown nickname"),
    ],
)
def test_parse_errors_name_the_field_and_the_problem(text: str, message: str) -> None:
    """A bad expression raises ValueError whose message names the field and what is wrong."""
    with pytest.raises(ValueError, match="cron .*" + message.replace("(", r"\(").replace("*", r"\*")):
        CronExpr.parse(text)


def test_next_after_is_strictly_after_and_in_utc() -> None:
    """'0 23 * * *' in Istanbul (UTC+3) fires at 20:00 UTC; from a firing the next is a day later."""
    tz = ZoneInfo("Europe/Istanbul")
    expr = CronExpr.parse("0 23 * * *")
    first = expr.next_after(datetime(2026, 5, 1, 12, 0, tzinfo=UTC), tz)
    assert first == datetime(2026, 5, 1, 20, 0, tzinfo=UTC) and first.tzinfo is UTC
    assert expr.next_after(first, tz) == datetime(2026, 5, 2, 20, 0, tzinfo=UTC)
    assert expr.next_after(first - timedelta(microseconds=1), tz) == first


def test_day_of_month_or_day_of_week_when_both_are_restricted() -> None:
    """Vixie rule: '13 * MON' fires on every 13th and every Monday; a starred field means AND."""
    start, end = datetime(2026, 2, 1, tzinfo=UTC), datetime(2026, 4, 1, tzinfo=UTC)
    either = {d.date() for d in firings("0 0 13 * MON", start, end, UTC)}
    assert date(2026, 2, 13) in either and date(2026, 3, 13) in either and date(2026, 2, 2) in either
    assert all(d.day == 13 or d.weekday() == 0 for d in either)
    assert len(either) == 2 + 9  # the 13ths are Fridays; February has 4 Mondays, March 5
    only_13th = {d.date() for d in firings("0 0 13 * *", start, end, UTC)}
    assert only_13th == {date(2026, 2, 13), date(2026, 3, 13)}
    # "*/2" starts with "*": day-of-week is not "restricted" for the OR rule (Vixie).
    both = {d.date() for d in firings("0 0 1-7 * */2", start, end, UTC)}
    assert all(d.day <= 7 and d.isoweekday() % 7 in (0, 2, 4, 6) for d in both) and both


def test_a_leap_day_job_waits_for_the_next_leap_year() -> None:
    """'0 0 29 2 *' from 2026 fires on 2028-02-29."""
    expr = CronExpr.parse("0 0 29 2 *")
    assert expr.next_after(datetime(2026, 1, 1, tzinfo=UTC), UTC) == datetime(2028, 2, 29, tzinfo=UTC)


# zone, spring-forward date, fall-back date (2026), and a wall time inside the gap
DST = [
    ("America/New_York", date(2026, 3, 8), date(2026, 11, 1), "30 2 * * *"),
    ("Europe/London", date(2026, 3, 29), date(2026, 10, 25), "30 1 * * *"),
    ("Australia/Sydney", date(2026, 10, 4), date(2026, 4, 5), "30 2 * * *"),
]


@pytest.mark.parametrize(("zone", "spring", "fall", "gap_job"), DST)
def test_daily_0230_fires_once_on_both_transition_days(zone: str, spring: date, fall: date, gap_job: str) -> None:
    """A daily 02:30 job fires exactly once on spring-forward and on fall-back day, and every
    other day of the week around them at 02:30 local."""
    tz = ZoneInfo(zone)
    for day in (spring, fall):
        start, _ = local_day(day - timedelta(days=3), tz)
        _, end = local_day(day + timedelta(days=3), tz)
        fired = firings("30 2 * * *", start, end, tz)
        local = [f.astimezone(tz) for f in fired]
        assert [f.date() for f in local] == [day + timedelta(days=n) for n in range(-3, 4)]
        for f in local:
            if f.date() != day:
                assert (f.hour, f.minute) == (2, 30)


@pytest.mark.parametrize(("zone", "spring", "fall", "gap_job"), DST)
def test_a_time_in_the_spring_gap_fires_at_the_first_valid_instant(zone: str, spring: date, fall: date,
                                                                   gap_job: str) -> None:
    """A daily job whose time does not exist on spring-forward day fires once, when the gap ends
    (03:00 in New York and Sydney, 02:00 in London), in the new offset."""
    tz = ZoneInfo(zone)
    start, end = local_day(spring, tz)
    fired = firings(gap_job, start, end, tz)
    assert len(fired) == 1
    local = fired[0].astimezone(tz)
    gap_end_hour = 2 if zone == "Europe/London" else 3
    assert (local.hour, local.minute) == (gap_end_hour, 0)
    # It is the transition instant: one second earlier was still the old offset.
    assert (fired[0] - timedelta(seconds=1)).astimezone(tz).utcoffset() != local.utcoffset()


@pytest.mark.parametrize(("zone", "spring", "fall", "gap_job"), DST)
def test_a_repeated_time_on_fall_back_day_fires_at_its_first_occurrence(zone: str, spring: date, fall: date,
                                                                       gap_job: str) -> None:
    """On fall-back day a fixed-hour job inside the repeated hour fires once, in the summer offset."""
    tz = ZoneInfo(zone)
    repeated = "30 1 * * *" if zone != "Australia/Sydney" else "30 2 * * *"
    start, end = local_day(fall, tz)
    fired = firings(repeated, start, end, tz)
    assert len(fired) == 1
    local = fired[0].astimezone(tz)
    summer = (start.utcoffset() or timedelta(0))
    assert local.utcoffset() == summer and local.fold == 0


@pytest.mark.parametrize(("zone", "spring", "fall", "gap_job"), DST)
def test_wildcard_hour_jobs_advance_in_absolute_time(zone: str, spring: date, fall: date, gap_job: str) -> None:
    """'*/30 * * * *' fires every 30 real minutes through both transitions: 46 times on the
    23-hour day, 50 on the 25-hour day (both passes of the repeated hour)."""
    tz = ZoneInfo(zone)
    for day, hours in ((spring, 23), (fall, 25)):
        start, end = local_day(day, tz)
        fired = firings("*/30 * * * *", start - timedelta(microseconds=1), end, tz)
        assert len(fired) == hours * 2
        assert all(b - a == timedelta(minutes=30) for a, b in itertools.pairwise(fired))
        hourly = firings("0 * * * *", start - timedelta(microseconds=1), end, tz)
        assert len(hourly) == hours
        assert all(b - a == timedelta(hours=1) for a, b in itertools.pairwise(hourly))


def test_several_times_inside_the_gap_fire_once() -> None:
    """'*/15 2 * * *' on New York's spring-forward day: 02:00-02:45 do not exist, one firing at 03:00."""
    tz = ZoneInfo("America/New_York")
    start, end = local_day(date(2026, 3, 8), tz)
    fired = firings("*/15 2 * * *", start, end, tz)
    assert [f.astimezone(tz).strftime("%H:%M%z") for f in fired] == ["03:00-0400"]


def test_wall_to_instant_resolves_gaps_and_repeats() -> None:
    """A skipped wall time maps to the end of the gap; a repeated one to its first occurrence."""
    tz = ZoneInfo("America/New_York")
    assert wall_to_instant(datetime(2026, 3, 8, 2, 30), tz) == datetime(2026, 3, 8, 7, 0, tzinfo=UTC)
    assert wall_to_instant(datetime(2026, 11, 1, 1, 30), tz) == datetime(2026, 11, 1, 5, 30, tzinfo=UTC)
    assert wall_to_instant(datetime(2026, 7, 1, 12, 0), tz) == datetime(2026, 7, 1, 16, 0, tzinfo=UTC)


def test_naive_after_is_refused() -> None:
    """next_after needs an aware instant."""
    with pytest.raises(ValueError, match="timezone-aware"):
        CronExpr.parse("* * * * *").next_after(datetime(2026, 1, 1), UTC)


def _matches(expr: CronExpr, local: datetime) -> bool:
    """An independent statement of cron matching for one local minute (Vixie day rule)."""
    in_month = local.day in expr.days
    in_week = local.isoweekday() % 7 in expr.weekdays
    day_ok = (in_month and in_week) if (expr.any_day or expr.any_weekday) else (in_month or in_week)
    return local.minute in expr.minutes and local.hour in expr.hours and local.month in expr.months and day_ok


_FIELD_CHOICES = (
    ["*", "*/15", "0", "5,35", "10-20/5", "59"],
    ["*", "*/6", "9", "0-5", "22", "23"],
    ["*", "1", "13", "*/10", "28-31", "15-17"],
    ["*", "1-6", "JAN,JUL", "*/3", "2", "12"],
    ["*", "MON-FRI", "0", "7", "SAT,SUN", "*/2"],
)


@settings(max_examples=60, deadline=None)
@given(
    fields=st.tuples(*(st.sampled_from(choices) for choices in _FIELD_CHOICES)),
    offset_s=st.integers(0, 365 * 86400 * 3),
    zone=st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-9))]),
)
def test_next_after_is_the_first_matching_minute(fields: tuple[str, ...], offset_s: int, zone: timezone) -> None:
    """In zones without DST the answer matches and no minute between `after` and it does
    (scanned minute by minute over up to three days)."""
    expr = CronExpr.parse(" ".join(fields))
    after = datetime(2025, 1, 1, tzinfo=UTC) + timedelta(seconds=offset_s, microseconds=offset_s % 7)
    result = expr.next_after(after, zone)
    assert result > after and result.second == 0 and result.microsecond == 0
    assert _matches(expr, result.astimezone(zone))
    minute = after.replace(second=0, microsecond=0) + timedelta(minutes=1)
    stop = min(result, after + timedelta(days=3))
    while minute < stop:
        assert not _matches(expr, minute.astimezone(zone)), minute
        minute += timedelta(minutes=1)


def test_exported_names() -> None:
    """The module exports exactly its public API."""
    assert set(cron.__all__) == {"CronExpr", "wall_to_instant"}


# --------------------------------------------------------------------------- L, W and # forms


def _month_last(year: int, month: int) -> int:
    return calendar.monthrange(year, month)[1]


def _independent_day(dom: str, dow: str, day: date) -> bool:
    """The L/LW/nW/dL/d#n rules restated with the calendar module (and the Vixie OR rule)."""
    last = _month_last(day.year, day.month)
    weekday = day.isoweekday() % 7

    def dom_item(item: str) -> bool:
        if item == "*":
            return True
        if item == "L":
            return day.day == last
        if item == "LW":
            return day.day == max(d for d in range(1, last + 1) if calendar.weekday(day.year, day.month, d) < 5)
        if item.endswith("W"):
            n = int(item[:-1])
            if n > last:
                return False
            weekdays = [d for d in range(1, last + 1) if calendar.weekday(day.year, day.month, d) < 5]
            return day.day == min(weekdays, key=lambda d: abs(d - n))
        return day.day == int(item)

    def dow_item(item: str) -> bool:
        if item == "*":
            return True
        if item.endswith("L"):
            return weekday == int(item[:-1]) % 7 and day.day + 7 > last
        if "#" in item:
            d, nth = (int(x) for x in item.split("#"))
            same = [x for x in range(1, day.day + 1) if calendar.weekday(day.year, day.month, x) == (d % 7 - 1) % 7]
            return weekday == d % 7 and len(same) == nth
        return weekday == int(item) % 7

    in_month = any(dom_item(i) for i in dom.split(","))
    in_week = any(dow_item(i) for i in dow.split(","))
    if dom.startswith("*") or dow.startswith("*"):
        return in_month and in_week
    return in_month or in_week


_DOM_CHOICES = ["*", "L", "LW", "15W", "1W", "31W", "1,L", "13W", "30W"]
_DOW_CHOICES = ["*", "5L", "0L", "7L", "5#3", "1#1", "0#5", "6#4", "1-5"]
_DST_ZONES = ["America/New_York", "Europe/Oslo", "Australia/Lord_Howe", "Pacific/Chatham", "America/Sao_Paulo",
              "Asia/Kathmandu"]


@settings(max_examples=150, deadline=None)
@given(
    dom=st.sampled_from(_DOM_CHOICES),
    dow=st.sampled_from(_DOW_CHOICES),
    clock=st.sampled_from([(0, 2), (30, 2), (0, 9), (59, 23), (0, 0)]),
    offset_s=st.integers(0, 365 * 86400 * 2),
    zone=st.sampled_from(_DST_ZONES),
)
def test_last_nearest_weekday_and_nth_forms_match_an_independent_enumerator(
        dom: str, dow: str, clock: tuple[int, int], offset_s: int, zone: str) -> None:
    """Next instants of L, LW, 15W, 5L, 5#3... at fixed times (02:00 and 02:30 fall in DST
    gaps and repeats) equal the first matching local date's wall time by the DST rules."""
    minute, hour = clock
    if dom == "*" and dow == "*":
        dom = "L"
    tz = ZoneInfo(zone)
    expr = CronExpr.parse(f"{minute} {hour} {dom} * {dow.replace('1-5', 'MON-FRI')}")
    after = datetime(2025, 1, 1, tzinfo=UTC) + timedelta(seconds=offset_s)
    got = expr.next_after(after, tz)
    day = after.astimezone(tz).date() - timedelta(days=1)
    while True:
        if _independent_day(dom, dow.replace("1-5", "1,2,3,4,5"), day):
            instant = wall_to_instant(datetime.combine(day, time(hour, minute)), tz)
            if instant > after:
                break
        day += timedelta(days=1)
    assert got == instant, (expr.text, zone, after, got, instant)


@pytest.mark.parametrize(("text", "message"), [
    ("0 9 * * 5#6", "#1 to #5"),
    ("0 9 32W * *", "out of range"),
    ("0 9 LX * *", "'LX' is not a number"),
    ("0 9 * * 8L", "out of range"),
    ("0 9 30W 2 *", "no such day in the months given"),
])
def test_bad_special_forms_are_refused_with_the_field(text: str, message: str) -> None:
    """A bad L/W/# item names its field and the problem."""
    with pytest.raises(ValueError, match=message):
        CronExpr.parse(text)


def test_the_issue_examples_across_a_dst_change() -> None:
    """Last day, last Friday, third Friday, weekday nearest the 13th in New York around
    the March 2026 change (fixed hours follow the wall clock)."""
    tz = ZoneInfo("America/New_York")
    after = datetime(2026, 2, 27, 12, tzinfo=tz)
    firsts = {text: CronExpr.parse(text).next_after(after, tz).astimezone(tz) for text in
              ("30 2 L * *", "0 9 * * 5L", "0 9 * * 5#3", "0 9 13W * *", "0 9 * * 0L")}
    assert firsts["30 2 L * *"] == datetime(2026, 2, 28, 2, 30, tzinfo=tz)
    assert firsts["0 9 * * 5L"] == datetime(2026, 3, 27, 9, tzinfo=tz)
    assert firsts["0 9 * * 5#3"] == datetime(2026, 3, 20, 9, tzinfo=tz)
    assert firsts["0 9 13W * *"] == datetime(2026, 3, 13, 9, tzinfo=tz)  # a Friday
    assert firsts["0 9 * * 0L"] == datetime(2026, 3, 29, 9, tzinfo=tz)


def test_rare_days_are_found_years_ahead() -> None:
    """A fifth Tuesday, Wednesday or Thursday in February exists only on a 29 February: found
    (2028-02-29, a Tuesday), with the Vixie OR rule for '29 February or a fifth Monday'."""
    expr = CronExpr.parse("0 0 29 2 1#5")
    assert expr.next_after(datetime(2026, 1, 1, tzinfo=UTC), UTC) == datetime(2028, 2, 29, tzinfo=UTC)
    rare = CronExpr.parse("0 0 * 2 2#5,3#5,4#5")
    assert rare.next_after(datetime(2026, 1, 1, tzinfo=UTC), UTC) == datetime(2028, 2, 29, tzinfo=UTC)
