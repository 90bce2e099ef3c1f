"""Fleet schedules on the device: the schedule documents it applied, per source, and the merge.

A source is ``all``, ``group:<g>`` (one of the config's ``[device] groups``) or ``device`` (the
config file itself is ``config`` and is not stored here). The table ``desired_schedules`` holds,
per source, the version applied and its document (JSON; null after a tombstone), and the last
rejection; this module is the only code on it.

- A document whose version is not above the applied one is ignored (equal: nothing to do).
- A tombstone (``{"version", "clear": true}``) with a newer version removes the source.
- An invalid document (the config file's checks, then the actions against the registry) is
  rejected whole and stored as the source's rejection; what runs does not change.
- Precedence, :func:`merge`: config < all < groups in the config's order < device. Jobs by name;
  windows by the output they hold: a source with a window for an output replaces the windows of
  lower sources for that output.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from edge_agent.config import JobSpec, Settings, WindowSpec, parse_schedule
from edge_agent.contract import Rejected, loads, schedule_source, text
from edge_agent.device.store import Store
from edge_agent.errors import EdgeAgentError

__all__ = ["Desired", "Held", "Outcome", "check_document", "merge", "offer", "schedule_state", "sources"]

ERROR_CHARS = 500  # of a rejection's error in the state document

#: what checks a document's jobs against the actions (device.actions.check_jobs with the registry)
CheckJobs = Callable[[Settings], None]


def sources(settings: Settings) -> tuple[str, ...]:
    """The sources this device obeys, lowest precedence first (the config file, below them all, is not one)."""
    return (schedule_source("all"), *(schedule_source("group", g) for g in settings.groups), schedule_source("device"))


@dataclass(frozen=True)
class Held:
    """What the device holds about one source: the version applied (a tombstone's too) and its
    document (None: nothing applied, or cleared), and the last rejection."""

    version: int | None = None
    doc: dict[str, Any] | None = None
    rejected_version: int | None = None
    rejected_error: str | None = None

    def state(self) -> dict[str, Any]:
        """As the state document says it: ``{"version", "rejected": null | {"version", "error"}}``
        (and ``"cleared": true`` after a tombstone)."""
        out: dict[str, Any] = {"version": self.version, "rejected": None}
        if self.rejected_error is not None:
            # (cut: the state document is dropped by the fleet's tools beyond STATE_MAX bytes)
            out["rejected"] = {"version": self.rejected_version, "error": text(self.rejected_error, ERROR_CHARS)}
        if self.version is not None and self.doc is None:
            out["cleared"] = True
        return out


class Desired:
    """The ``desired_schedules`` table."""

    def __init__(self, store: Store):
        self.store = store

    def held(self) -> dict[str, Held]:
        rows = self.store.query("select source, version, doc, rejected_version, rejected_error from desired_schedules")
        return {source: Held(version, json.loads(doc) if doc is not None else None, rversion, error)
                for source, version, doc, rversion, error in rows}

    def applied(self, source: str, version: int, doc: dict[str, Any] | None, now: float) -> None:
        """``doc`` (None: a tombstone) is what ``source`` says from now on; its rejection is forgotten."""
        with self.store.transaction() as cur:
            self._upsert(cur, source)
            cur.execute("update desired_schedules set version = ?, doc = ?, applied_at = ?, rejected_version = null, "
                        "rejected_error = null, rejected_at = null where source = ?",
                        (version, json.dumps(doc, separators=(",", ":")) if doc is not None else None, now, source))

    def rejected(self, source: str, version: int | None, error: str, now: float) -> None:
        """A document of ``source`` was refused; what was applied stays."""
        with self.store.transaction() as cur:
            self._upsert(cur, source)
            cur.execute("update desired_schedules set rejected_version = ?, rejected_error = ?, rejected_at = ? "
                        "where source = ?", (version, error, now, source))

    def withdrawn(self, source: str, version: int, error: str, now: float) -> None:
        """The applied document of ``source`` no longer passes the checks (the config changed): it
        is dropped and becomes the rejection; the broker's retained copy is checked again at connect."""
        with self.store.transaction() as cur:
            cur.execute("update desired_schedules set version = null, doc = null, applied_at = null, "
                        "rejected_version = ?, rejected_error = ?, rejected_at = ? where source = ?",
                        (version, error, now, source))

    @staticmethod
    def _upsert(cur: sqlite3.Cursor, source: str) -> None:
        cur.execute("insert into desired_schedules (source) values (?) on conflict (source) do nothing", (source,))


def check_document(doc: Any, source: str, version: int | None, settings: Settings, check_jobs: CheckJobs | None
                   ) -> tuple[tuple[JobSpec, ...], tuple[WindowSpec, ...]]:
    """The jobs and windows of ``doc``, checked as the config file's are (against this device's
    ``[devices]`` and ``[location]``, then its actions); raises :class:`EdgeAgentError` (a ConfigError
    whose message starts ``schedule <source> v<version>``)."""
    where = f"schedule {source} v{version}" if version is not None else f"schedule {source}"
    jobs, windows = parse_schedule(doc, where=where, devices=settings.devices, location=settings.location)
    if check_jobs is not None:
        check_jobs(replace(settings, path=where, jobs=jobs, windows=windows))
    return jobs, windows


@dataclass(frozen=True)
class Outcome:
    """What became of a document: ``applied`` or ``cleared`` (what runs must be merged again),
    ``rejected`` (``message`` is the error) or ``ignored`` (``message`` says why)."""

    result: str
    message: str
    version: int | None = None


def _version(doc: Any) -> int | None:
    version = doc.get("version") if isinstance(doc, dict) else None
    return version if isinstance(version, int) and not isinstance(version, bool) else None


def offer(desired: Desired, source: str, payload: bytes, settings: Settings, *, check_jobs: CheckJobs | None,
          limit: int, now: float) -> Outcome:
    """A retained document of ``source`` arrived: checked, and stored as applied or rejected, by the version rules."""
    if not payload.strip():
        return Outcome("ignored", "an empty message (the retained document was deleted): what was applied stays")
    held = desired.held().get(source, Held())
    try:
        doc = loads(payload, limit)
    except Rejected as exc:
        return _reject(desired, source, held, None, f"schedule {source}: {exc}", now)
    version = _version(doc)
    if version is not None and held.version is not None and version <= held.version:
        same = "the same as" if version == held.version else "older than"
        return Outcome("ignored", f"version {version} is {same} the applied {held.version}", version)
    try:
        jobs, windows = check_document(doc, source, version, settings, check_jobs)
    except EdgeAgentError as exc:
        return _reject(desired, source, held, version, str(exc), now)
    assert version is not None  # (parse_schedule requires it)
    if doc.get("clear"):
        desired.applied(source, version, None, now)
        return Outcome("cleared", "its jobs and windows are gone", version)
    desired.applied(source, version, doc, now)
    return Outcome("applied", f"{len(jobs)} job(s), {len(windows)} window(s)", version)


def _reject(desired: Desired, source: str, held: Held, version: int | None, error: str, now: float) -> Outcome:
    if (held.rejected_version, held.rejected_error) == (version, error):
        return Outcome("ignored", f"rejected before: {error}", version)  # a redelivery: logged once
    desired.rejected(source, version, error, now)
    return Outcome("rejected", error, version)


def merge(settings: Settings, held: Mapping[str, Held], *, check_jobs: CheckJobs | None = None,
          on_invalid: Callable[[str, int, str], None] | None = None) -> Settings:
    """``settings`` with the jobs and windows of the config file and of the documents held, by
    precedence (config < all < groups in the config's order < device), each job and window with
    its ``origin`` and ``version``. A stored document that no longer passes the checks is left out
    (``on_invalid(source, version, error)`` is told). Merging merged settings again changes nothing."""
    jobs: dict[str, JobSpec] = {job.name: job for job in settings.jobs}
    windows: list[WindowSpec] = list(settings.windows)
    for source in sources(settings):
        h = held.get(source)
        if h is None or h.doc is None or h.version is None:
            continue
        try:
            doc_jobs, doc_windows = check_document(h.doc, source, h.version, settings, check_jobs)
        except EdgeAgentError as exc:
            if on_invalid is not None:
                on_invalid(source, h.version, str(exc))
            continue
        for job in doc_jobs:
            jobs[job.name] = replace(job, origin=source, version=h.version)
        outputs = {w.device for w in doc_windows}
        windows = [w for w in windows if w.device not in outputs]
        windows += [replace(w, key=f"{source}.{w.key}", origin=source, version=h.version) for w in doc_windows]
    return replace(settings, jobs=tuple(jobs.values()), windows=tuple(windows))


def schedule_state(settings: Settings, held: Mapping[str, Held]) -> dict[str, dict[str, Any]]:
    """The state document's ``schedules``: per source this device obeys and holds something about."""
    return {source: held[source].state() for source in sources(settings) if source in held}
