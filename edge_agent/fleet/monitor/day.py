"""A device's day as one SVG picture: will the light come on tonight, and did it yesterday?

Rows, left to right over one local day (the device's place and time zone):
the sun (night, astronomical, nautical and civil twilight, daylight) as bands from
:func:`edge_agent.schedule.solar.solar_events`; each job's planned firings (hollow)
and when they really ran (filled, joined to the plan); each window's span; each
GPIO output's state over time (filled while on); every task as a tick, failures as a
red cross. Everything drawn from device data is escaped: ids and values are untrusted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from html import escape
from typing import Any

__all__ = ["DayPicture", "day_picture", "render_svg"]

WIDTH = 980
LEFT = 130
RIGHT = 12
ROW = 22
SUN_COLOURS = ("#1b2140", "#2d3a6b", "#4a5f9c", "#8aa3d6", "#f4e3a1")  # night .. daylight
SUN_NAMES = ("night", "astronomical twilight", "nautical twilight", "civil twilight", "daylight")
# (event, level after it) for the rising and setting halves of the day
_RISING = (("dawn_astronomical", 1), ("dawn_nautical", 2), ("dawn", 3), ("sunrise", 4))
_SETTING = (("sunset", 3), ("dusk", 2), ("dusk_nautical", 1), ("dusk_astronomical", 0))


@dataclass
class DayPicture:
    """What the SVG shows, in unix seconds; also served as JSON (``/api/devices/{id}/day``)."""

    device: str
    day: str
    tz: str
    start: float
    end: float
    sun: list[tuple[float, float, int]] = field(default_factory=list)  # (from, until, level)
    jobs: dict[str, dict[str, list[Any]]] = field(default_factory=dict)  # job -> planned: [t], ran: [(planned, t, id, status)]
    windows: list[tuple[str, float, float]] = field(default_factory=list)  # (device, from, until)
    gpio: dict[str, list[tuple[float, float, str]]] = field(default_factory=dict)  # pin -> [(from, until, value)]
    tasks: list[dict[str, Any]] = field(default_factory=list)  # {id, action, status, at}
    now: float | None = None
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"device": self.device, "day": self.day, "timezone": self.tz, "start": self.start, "end": self.end,
                "sun": [{"from": a, "until": b, "kind": SUN_NAMES[lv]} for a, b, lv in self.sun],
                "jobs": self.jobs, "windows": [{"device": d, "from": a, "until": b} for d, a, b in self.windows],
                "gpio": {p: [{"from": a, "until": b, "value": v} for a, b, v in s] for p, s in self.gpio.items()},
                "tasks": self.tasks, "note": self.note}


def _sun_bands(day: date, lat: float, lon: float, tz: tzinfo, start: float, end: float) -> list[tuple[float, float, int]]:
    from edge_agent.schedule.solar import solar_events

    sd = solar_events(day, lat, lon, tz)
    marks: list[tuple[float, int, int]] = []  # (ts, level before, level after)
    for event, after in _RISING:
        for instant in sd.events.get(event, ()):
            marks.append((instant.timestamp(), after - 1, after))
    for event, after in _SETTING:
        for instant in sd.events.get(event, ()):
            marks.append((instant.timestamp(), after + 1, after))
    marks.sort()
    if marks:
        level = marks[0][1]
    else:  # no crossing all day: polar day or night at some depth
        level = 0
        for event, after in _RISING:
            if sd.missing.get(event) == "never_sets":
                level = after
    bands = []
    t = start
    for ts, _, after in marks:
        if ts > t:
            bands.append((t, ts, level))
        t, level = max(t, ts), after
    bands.append((t, end, level))
    return [b for b in bands if b[1] > b[0]]


def _parse_iso(text: Any) -> float | None:
    if not isinstance(text, str):
        return None
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        return None
    return dt.timestamp() if dt.tzinfo else None


def _window_spans(windows: list[Any], lat: float | None, lon: float | None, tz: tzinfo, start: float,
                  end: float) -> list[tuple[str, float, float]]:
    from edge_agent.schedule.windows import Window, window_state

    out = []
    for w in windows[:50]:
        if not isinstance(w, dict):
            continue
        try:
            window = Window(str(w.get("device")), str(w.get("from")), str(w.get("until")))
            t = datetime.fromtimestamp(start, UTC)
            for _ in range(8):
                active, boundary = window_state(window, t, lat, lon, tz)
                b = boundary.timestamp() if boundary is not None else end
                if active:
                    out.append((window.device, t.timestamp(), min(b, end)))
                if b >= end:
                    break
                t = datetime.fromtimestamp(b, UTC)
        except (ValueError, TypeError):
            continue
    return out


def _is_on(value: str) -> bool:
    if value in ("on", "true", "1"):
        return True
    try:
        return float(value) > 0 and not math.isnan(float(value))
    except ValueError:
        return False


def day_picture(device: str, day: date, *, tz: tzinfo, latitude: float | None, longitude: float | None,
                jobs_doc: dict[str, Any] | None, state: dict[str, Any], tasks: list[dict[str, Any]],
                fired: list[dict[str, Any]], gpio: list[tuple[str, float, str]], now: float) -> DayPicture:
    """Assemble the picture of local ``day`` from what the store holds."""
    start = datetime.combine(day, time(0), tz).timestamp()
    end = datetime.combine(day + timedelta(days=1), time(0), tz).timestamp()
    pic = DayPicture(device, day.isoformat(), str(getattr(tz, "key", tz)), start, end, now=now if start <= now < end else None)
    if latitude is not None and longitude is not None:
        try:
            pic.sun = _sun_bands(day, latitude, longitude, tz, start, end)
        except ValueError as exc:
            pic.note = f"no sun: {exc}"
    else:
        pic.note = "no location: give the monitor's config a [location] for the sun bands"
    # planned firings: the device's own plan (agent.jobs, state.next_jobs) and what the firings said
    jobs = (jobs_doc or {}).get("jobs") if isinstance(jobs_doc, dict) else None
    for job in jobs if isinstance(jobs, list) else []:
        if isinstance(job, dict) and isinstance(job.get("name"), str):
            row = pic.jobs.setdefault(job["name"], {"planned": [], "ran": []})
            for text in job.get("next") or []:
                t = _parse_iso(text)
                if t is not None and start <= t < end:
                    row["planned"].append(t)
    for nxt in state.get("next_jobs") or []:
        if isinstance(nxt, dict) and isinstance(nxt.get("job"), str):
            t = _parse_iso(nxt.get("at"))
            if t is not None and start <= t < end:
                pic.jobs.setdefault(nxt["job"], {"planned": [], "ran": []})["planned"].append(t)
    by_id = {t["id"]: t for t in tasks}
    for ev in fired:
        job, planned = ev.get("job"), ev.get("planned")
        if not isinstance(job, str) or not isinstance(planned, (int, float)):
            continue
        row = pic.jobs.setdefault(job, {"planned": [], "ran": []})
        row["planned"].append(float(planned))
        task = by_id.get(ev.get("id")) or {}
        ran = task.get("started") or task.get("finished") or ev.get("ts")
        if ran is not None:  # (neither the task's times nor the event's ts: a device's event may lack its ts)
            row["ran"].append((float(planned), float(ran), ev.get("id"), task.get("status", "queued")))
    for row in pic.jobs.values():
        row["planned"] = sorted(set(row["planned"]))
    windows = (jobs_doc or {}).get("windows") if isinstance(jobs_doc, dict) else None
    if isinstance(windows, list):
        pic.windows = _window_spans(windows, latitude, longitude, tz, start, end)
    # GPIO: each change holds until the next change of that pin (or now / the day's end)
    stop = min(end, now) if start <= now else end
    series: dict[str, list[tuple[float, str]]] = {}
    for pin, ts, value in gpio:
        series.setdefault(pin, []).append((ts, value))
    for pin, changes in series.items():
        spans = []
        for i, (ts, value) in enumerate(changes):
            until = changes[i + 1][0] if i + 1 < len(changes) else stop
            if until > ts:
                spans.append((ts, until, value))
        pic.gpio[pin] = spans
    for doc in tasks:
        at = doc.get("finished") or doc.get("started") or doc.get("received") or doc.get("updated")
        if at is not None and start <= at < end:
            pic.tasks.append({"id": doc["id"], "action": doc.get("action"), "status": doc.get("status"), "at": at,
                              "error": doc.get("error_message")})
    return pic


def _clock(ts: float, tz: tzinfo) -> str:
    return datetime.fromtimestamp(ts, tz).strftime("%H:%M:%S")


def render_svg(pic: DayPicture, tz: tzinfo) -> str:
    """The picture as an SVG document (standalone, also inlined in the device page)."""
    span = pic.end - pic.start
    inner = WIDTH - LEFT - RIGHT

    def x(ts: float) -> float:
        return round(LEFT + (min(max(ts, pic.start), pic.end) - pic.start) / span * inner, 1)

    parts: list[str] = []
    y = 18

    def label(text: str, row_y: float) -> None:
        parts.append(f'<text class="lbl" x="4" y="{row_y + 15}">{escape(text[:22])}</text>')

    # hours
    for h in range(0, 25, 3):
        hx = LEFT + inner * h / 24
        parts.append(f'<line class="hr" x1="{hx:.1f}" y1="14" x2="{hx:.1f}" y2="__H__"/>'
                     f'<text class="hl" x="{hx:.1f}" y="11" text-anchor="middle">{h:02d}:00</text>')
    label("sun", y)
    for a, b, level in pic.sun:
        parts.append(f'<rect class="sun" x="{x(a)}" y="{y}" width="{max(0.5, x(b) - x(a))}" height="{ROW - 4}" '
                     f'fill="{SUN_COLOURS[level]}"><title>{escape(SUN_NAMES[level])} {_clock(a, tz)}-{_clock(b, tz)}</title></rect>')
    y += ROW
    for name, row in sorted(pic.jobs.items()):
        label(f"job {name}", y)
        mid = y + (ROW - 4) / 2
        for p in row["planned"]:
            parts.append(f'<circle class="planned" cx="{x(p)}" cy="{mid}" r="5"><title>{escape(name)} planned {_clock(p, tz)}'
                         f'</title></circle>')
        for planned, ran, cid, status in row["ran"]:
            parts.append(f'<line class="late" x1="{x(planned)}" y1="{mid}" x2="{x(ran)}" y2="{mid}"/>'
                         f'<circle class="ran {escape(str(status))}" cx="{x(ran)}" cy="{mid}" r="3.5" data-id="{escape(str(cid))}">'
                         f'<title>{escape(name)} ran {_clock(ran, tz)} ({escape(str(status))})</title></circle>')
        y += ROW
    for dev, a, b in pic.windows:
        label(f"window {dev}", y)
        parts.append(f'<rect class="window" x="{x(a)}" y="{y + 3}" width="{max(1, x(b) - x(a))}" height="{ROW - 10}">'
                     f'<title>window {escape(dev)} {_clock(a, tz)}-{_clock(b, tz)}</title></rect>')
        y += ROW
    for pin, spans in sorted(pic.gpio.items()):
        label(f"gpio {pin}", y)
        parts.append(f'<line class="off" x1="{LEFT}" y1="{y + ROW - 6}" x2="{WIDTH - RIGHT}" y2="{y + ROW - 6}"/>')
        for a, b, value in spans:
            on = _is_on(value)
            parts.append(f'<rect class="gpio {"on" if on else "off"}" data-pin="{escape(pin)}" data-value="{escape(value)}" '
                         f'x="{x(a)}" y="{y + (3 if on else ROW - 8)}" width="{max(1.0, x(b) - x(a))}" '
                         f'height="{ROW - 9 if on else 2}"><title>{escape(pin)} = {escape(value)} from {_clock(a, tz)}</title></rect>')
        y += ROW
    label("tasks", y)
    for t in pic.tasks[-1500:]:
        tx = x(t["at"])
        status = str(t.get("status"))
        title = f'{t.get("action")} {status} {_clock(t["at"], tz)}' + (f': {t["error"]}' if t.get("error") else "")
        if status in ("failed", "expired", "rejected"):
            parts.append(f'<g class="task failure" data-id="{escape(str(t["id"]))}"><title>{escape(title)}</title>'
                         f'<line x1="{tx - 4}" y1="{y + 2}" x2="{tx + 4}" y2="{y + 14}"/><line x1="{tx - 4}" y1="{y + 14}" '
                         f'x2="{tx + 4}" y2="{y + 2}"/></g>')
        else:
            parts.append(f'<line class="task {escape(status)}" data-id="{escape(str(t["id"]))}" x1="{tx}" y1="{y + 2}" '
                         f'x2="{tx}" y2="{y + 16}"><title>{escape(title)}</title></line>')
    y += ROW
    if pic.now is not None:
        parts.append(f'<line class="now" x1="{x(pic.now)}" y1="14" x2="{x(pic.now)}" y2="{y}"/>')
    if pic.note:
        parts.append(f'<text class="note" x="{LEFT}" y="{y + 14}">{escape(pic.note)}</text>')
        y += ROW
    height = y + 4
    body = "".join(parts).replace("__H__", str(y))
    return (f'<svg xmlns="http://www.w3.org/2000/svg" class="day" viewBox="0 0 {WIDTH} {height}" width="{WIDTH}" '
            f'height="{height}" role="img" aria-label="day of {escape(pic.device)} on {escape(pic.day)}">'
            "<style>.lbl{font:12px sans-serif;fill:#333}.hl{font:10px sans-serif;fill:#666}.hr{stroke:#ddd}"
            ".planned{fill:none;stroke:#333;stroke-width:1.5}.ran{fill:#2a7}.ran.failed{fill:#c22}.late{stroke:#2a7}"
            ".window{fill:#f2b84b;opacity:.7}.gpio.on{fill:#e8a317}.gpio.off{fill:#999}.off{stroke:#ccc}"
            ".task{stroke:#37a;stroke-width:1.5}.task.succeeded{stroke:#2a7}.failure line{stroke:#c22;stroke-width:2}"
            ".now{stroke:#c22;stroke-dasharray:3 2}.note{font:11px sans-serif;fill:#a60}</style>"
            f"{body}</svg>")
