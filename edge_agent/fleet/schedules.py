"""Fleet schedules, the operator's side: schedule documents published on the broker, and what
the devices report about them.

A schedule document is the ``[[jobs]]`` and ``[[windows]]`` tables of ``config.toml``, written as
a TOML file by the operator and published as JSON, retained, at QoS 1 on ``P/all/schedule``,
``P/group/<g>/schedule`` or ``P/<device>/schedule`` (:func:`edge_agent.contract.schedule_topic`)
with a ``version`` that only grows. The broker holds it: a device offline, or added later, gets it
when it connects. Each device reports, in its retained ``state``, per source ("all",
"group:<g>", "device") the version it applied or the version it rejected and why.

- :func:`load_document`: the TOML file, validated with the config's own code and messages.
- :func:`set_schedule` / :func:`clear`: publish a document (or a tombstone) and wait until
  every expected device applied or rejected it, or is offline, or the timeout.
- :func:`status`: desired (the retained documents) against reported, device by device.
- :func:`get`: one device's effective schedule, through ``agent.jobs``.

Like :func:`edge_agent.fleet.client.ls`, nothing is kept between calls: what is known comes from
the broker's retained messages. What a device reports is checked here before it is used.
"""

from __future__ import annotations

import getpass
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import date, datetime
from datetime import time as dtime
from typing import Any

from edge_agent.contract import ANY, Rejected, loads, schedule_source, schedule_topic, show
from edge_agent.errors import BrokerUnreachable, ConfigError, InvalidCommand
from edge_agent.fleet.client import VERSION_MAX, DeviceError, FleetClient, _Snapshot, is_version, request, snapshot
from edge_agent.fleet.client import reported_schedules as reported

__all__ = ["RESULTS", "RetainedDoc", "ScheduleResult", "Target", "all_topics", "classify", "clear", "device_rows", "get", "ls_and_status",
           "load_document", "next_version", "read_desired", "reported", "set_schedule", "status", "summary", "targets"]

DOC_BYTES = 256 * 1024  # a retained schedule document longer than this is not read
TOOL_KEYS = ("version", "clear", "set_at", "by")  # set by this tool, not by the file
RESULTS = ("applied", "cleared", "rejected", "offline", "no_answer", "no_such_device")


# --------------------------------------------------------------------------- the document


def _plain(value: Any) -> Any:
    """TOML values as JSON ones: dates and times (an ``at`` job's instant) as ISO-8601 text."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, (datetime, date, dtime)):
        return value.isoformat()
    return value


def load_document(path: str) -> dict[str, Any]:
    """The schedule file at ``path`` (TOML: ``[[jobs]]`` and ``[[windows]]`` exactly as in
    ``config.toml``) as the JSON document to publish (without its version); validated by the
    config's own code, without the device's ``[devices]`` (each device checks those, and its
    actions). Raises :class:`ConfigError` with one line naming the file, key and problem."""
    from edge_agent.config import parse_schedule, read_toml

    raw = read_toml(path, "schedule file")
    for key in TOOL_KEYS:
        if key in raw:
            raise ConfigError("is set by edge-agent fleet schedule, not in the file", path=path, key=key)
    doc = _plain(raw)
    parse_schedule({**doc, "version": 1}, where=path, devices=None)
    return {"jobs": doc.get("jobs", []), "windows": doc.get("windows", [])}


# --------------------------------------------------------------------------- where


@dataclass(frozen=True)
class Target:
    """One retained document: its scope ("all", "group", "device"), name, topic and source name."""

    scope: str
    name: str
    topic: str
    source: str


def _name(value: str, what: str) -> str:
    if not value or any(c in value for c in "/+#") or not value.isprintable():
        raise InvalidCommand(f"{what} {show(value)} cannot be a topic level (empty, or with /, + or #)")
    if what == "device" and value in ("all", "group"):
        raise InvalidCommand(f"{value!r} is not a device id: P/{value}/schedule is the {value} document")
    return value


def targets(prefix: str, *, devices: Iterable[str] = (), group: str | None = None, everyone: bool = False) -> list[Target]:
    """The documents that ``--device D ...``, ``--group G`` or ``--all`` (exactly one) stand for."""
    named = list(dict.fromkeys(devices))
    if sum((bool(named), group is not None, everyone)) != 1:
        raise InvalidCommand("give --device D (repeatable), --group G or --all")
    if everyone:
        return [Target("all", "", schedule_topic(prefix, "all"), schedule_source("all"))]
    if group is not None:
        g = _name(group, "group")
        return [Target("group", g, schedule_topic(prefix, "group", g), schedule_source("group", g))]
    return [Target("device", d, schedule_topic(prefix, "device", _name(d, "device")), schedule_source("device"))
            for d in named]


def all_topics(prefix: str) -> list[str]:
    """Every retained schedule document: ``P/+/schedule`` (all, and each device's) and the groups'."""
    return [schedule_topic(prefix, "device", ANY), schedule_topic(prefix, "group", ANY)]


# --------------------------------------------------------------------------- reading the broker


@dataclass
class RetainedDoc:
    """A retained schedule document as read back: its version, and whether it is a tombstone."""

    version: int | None
    clear: bool = False
    problem: str | None = None


def read_desired(payload: bytes) -> RetainedDoc | None:
    """A retained schedule document's payload read back (None: no document, or it was deleted)."""
    if not payload:
        return None  # no document (or deleted)
    try:
        doc = loads(payload, DOC_BYTES)
    except Rejected as exc:
        return RetainedDoc(None, problem=f"not a schedule document: {exc}")
    version = doc.get("version") if isinstance(doc, dict) else None
    if not is_version(version):
        return RetainedDoc(None, problem=f"not a schedule document (version {show(version)})")
    return RetainedDoc(version, clear=doc.get("clear") is True)


class _Retained:
    """The retained schedule documents on some topics (collected before the snapshot's marker)."""

    def __init__(self, client: FleetClient, topics: list[str]):
        self.prefix = client.prefix
        self.docs: dict[str, RetainedDoc | None] = {}
        self._lock = threading.Lock()
        self._remove: Callable[[], None] | None = client.on_message(self._handle)
        self._topics = topics
        self._client = client
        try:
            client.subscribe(topics, qos=0)  # as the snapshot's: delivered before its marker
        except BaseException:
            self.close()
            raise

    def _handle(self, msg: Any) -> None:
        from paho.mqtt.client import topic_matches_sub

        if not any(topic_matches_sub(sub, msg.topic) for sub in self._topics):
            return
        with self._lock:
            self.docs[msg.topic] = read_desired(msg.payload)

    def get(self, topic: str) -> RetainedDoc | None:
        with self._lock:
            return self.docs.get(topic)

    def all(self) -> dict[str, RetainedDoc | None]:
        with self._lock:
            return dict(self.docs)

    def close(self) -> None:
        if self._remove is not None:
            self._remove()
            self._remove = None
            self._client.unsubscribe(self._topics)


def _read(client: FleetClient, topics: list[str]) -> tuple[_Retained, _Snapshot]:
    """The retained documents on ``topics`` and every device's status and state, both followed
    live until closed."""
    docs = _Retained(client, topics)
    try:
        snap = snapshot(client, timeout=client.timeout)
    except BaseException:
        docs.close()
        raise
    return docs, snap


def next_version(client: FleetClient, topics: Iterable[str], *, retained: _Retained | None = None) -> int:
    """The version to publish on ``topics``: the time in ms, or one more than the highest version
    retained there when that is higher (another operator's clock ahead of ours): it only grows."""
    topics = list(topics)
    own = retained is None
    docs = retained if retained is not None else _Retained(client, topics)
    try:
        if own:
            snapshot(client, timeout=client.timeout).close()  # its marker comes after the retained documents
        return _version_after([docs.get(t) for t in topics])
    finally:
        if own:
            docs.close()


def _version_after(current: Iterable[RetainedDoc | None], now: float | None = None) -> int:
    top = max((d.version for d in current if d is not None and d.version is not None), default=0)
    version = max(int((time.time() if now is None else now) * 1000), top + 1)
    if version > VERSION_MAX:
        raise InvalidCommand(f"a schedule document on the broker has version {top}: no higher version is left")
    return version


# --------------------------------------------------------------------------- what devices report


def classify(entry: dict[str, Any] | None, version: int, *, clear: bool = False) -> tuple[str, str | None] | None:
    """What one device's reported entry for a source says about ``version``: ("applied" or
    "cleared", None), ("rejected", error), or None (not yet)."""
    rej = (entry or {}).get("rejected")
    if rej is not None and rej["version"] == version:
        return "rejected", rej["error"]
    applied = (entry or {}).get("version")
    if applied is not None and applied >= version:
        return ("cleared" if clear else "applied"), None
    if clear and applied is None and (rej is None or rej["version"] < version):
        return "cleared", None  # nothing (left) from this source
    return None


# --------------------------------------------------------------------------- set and clear


@dataclass
class ScheduleResult:
    """The outcome of :func:`set_schedule` or :func:`clear`, device by device."""

    version: int
    clear: bool
    targets: list[Target]
    devices: dict[str, dict[str, Any]] = field(default_factory=dict)
    elapsed_s: float = 0.0

    @property
    def ok(self) -> bool:
        done = "cleared" if self.clear else "applied"
        return bool(self.devices) and all(d["result"] == done for d in self.devices.values())

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for d in self.devices.values():
            out[d["result"]] = out.get(d["result"], 0) + 1
        return out

    def document(self) -> dict[str, Any]:
        return {"version": self.version, "clear": self.clear, "ok": self.ok,
                "topics": [t.topic for t in self.targets], "sources": sorted({t.source for t in self.targets}),
                "elapsed_s": round(self.elapsed_s, 3), "counts": self.counts(),
                "devices": [{"device": d, **self.devices[d]} for d in sorted(self.devices)]}


def _by() -> str:
    try:
        user = getpass.getuser()
    except Exception:  # no user name in this environment
        user = "?"
    return f"{user}@{socket.gethostname()}"[:200]


def set_schedule(client: FleetClient, doc: dict[str, Any], *, devices: Iterable[str] = (), group: str | None = None,
                 everyone: bool = False, timeout: float = 30.0) -> ScheduleResult:
    """Publish ``doc`` (from :func:`load_document`) retained for ``devices``, ``group`` or every
    device, with a new version, and wait for the devices (see :func:`_publish_and_wait`)."""
    return _publish_and_wait(client, {"jobs": doc.get("jobs", []), "windows": doc.get("windows", [])},
                             targets(client.prefix, devices=devices, group=group, everyone=everyone), timeout=timeout)


def clear(client: FleetClient, *, devices: Iterable[str] = (), group: str | None = None, everyone: bool = False,
          timeout: float = 30.0) -> ScheduleResult:
    """Publish a tombstone (``{"version", "clear": true}``, retained: a device offline gets it
    too) for ``devices``, ``group`` or every device, and wait as :func:`set_schedule` does."""
    return _publish_and_wait(client, {"clear": True},
                             targets(client.prefix, devices=devices, group=group, everyone=everyone), timeout=timeout)


def _publish_and_wait(client: FleetClient, body: dict[str, Any], where: list[Target], *,
                      timeout: float) -> ScheduleResult:
    """Expected devices: those named; for a group, the members by their retained state; for all,
    every device with a retained status. Returns when each expected device that is online applied
    or rejected this version, or after ``timeout`` seconds; devices are followed live (one that
    goes offline meanwhile stops being waited for, one that comes back is waited for again), as
    :func:`edge_agent.fleet.client.send` does. A named device the broker knows nothing of is
    ``no_such_device``, one without an online/offline status ``no_answer``: neither is waited for."""
    began = time.monotonic()
    is_clear = body.get("clear") is True
    docs, snap = _read(client, [t.topic for t in where])
    try:
        version = next_version(client, [t.topic for t in where], retained=docs)
        payload = {"version": version, **body, "set_at": round(time.time(), 3), "by": _by()}
        for t in where:
            client.publish(t.topic, payload, qos=1, retain=True)
        with snap.cond:
            if where[0].scope == "group":
                expected = {d: where[0].source for d, info in snap.devices.items() if where[0].name in info.groups}
            elif where[0].scope == "all":
                expected = {d: "all" for d, info in snap.devices.items() if info.status is not None}
            else:
                expected = {t.name: "device" for t in where}
        result = ScheduleResult(version, is_clear, where)

        def outcome(device: str, final: bool) -> dict[str, Any] | None:
            info = snap.devices.get(device)
            entries, problem = reported(info.state if info else None)
            got = classify(entries.get(expected[device]), version, clear=is_clear) if info and info.state else None
            if got is not None:
                row: dict[str, Any] = {"result": got[0], "source": expected[device]}
                if got[1] is not None:
                    row["error"] = got[1]
                return row
            if info is None:
                return {"result": "no_such_device", "source": expected[device],
                        "detail": "no retained status or state under this prefix: it gets the document when it "
                                  "first connects"}
            if info.status == "offline":
                return {"result": "offline", "source": expected[device], "detail": "offline: applies it when back"}
            if info.online and not final:
                return None  # waited for
            if info.online:
                detail = f"online, but did not report version {version} within {timeout:g}s"
            else:
                detail = "no online/offline status to wait for"
            if problem or info.problem:
                detail += f" ({'; '.join(p for p in (problem, info.problem) if p)})"
            return {"result": "no_answer", "source": expected[device], "detail": detail}

        end = began + timeout
        with snap.cond:
            while True:
                waiting = [d for d in expected if outcome(d, False) is None]
                left = end - time.monotonic()
                if not waiting or left <= 0:
                    break
                snap.cond.wait(min(left, 0.5))
            for d in expected:
                row = outcome(d, True)
                assert row is not None
                result.devices[d] = row
        result.elapsed_s = time.monotonic() - began
        return result
    finally:
        snap.close()
        docs.close()


# --------------------------------------------------------------------------- status and get


def status(client: FleetClient) -> list[dict[str, Any]]:
    """One row per device and source it has a document from (on the broker or by its own report):
    ``{"device", "online", "source", "desired", "desired_clear", "applied", "applied_clear", "rejected", "sync",
    "problem"}`` (``*_clear``: that version is a tombstone)
    with ``sync`` one of "in sync", "drift", "rejected", "offline" (drifts, applies when back);
    a device with none: one row, source None, "in sync" (its config file only)."""
    return ls_and_status(client)[1]


def ls_and_status(client: FleetClient) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """:func:`edge_agent.fleet.client.ls`'s rows and :func:`status`'s, from one read of what the broker
    retains (``fleet ls`` shows both: the retained messages are read once, not twice)."""
    docs, snap = _read(client, all_topics(client.prefix))
    snap.close()
    docs.close()
    desired = {topic: d for topic, d in docs.all().items() if d is not None}
    rows: list[dict[str, Any]] = []
    listed = snap.rows()
    with snap.cond:
        devices = dict(snap.devices)
    for device in sorted(devices):
        info = devices[device]
        rows += device_rows(client.prefix, device, info.state, info.groups, info.online, info.status, desired,
                            info.problem)
    return listed, rows


def device_rows(prefix: str, device: str, state: dict[str, Any] | None, groups: Iterable[str], online: bool,
                device_status: str | None, desired: dict[str, RetainedDoc], known_problem: str | None = None,
                ) -> list[dict[str, Any]]:
    """:func:`status`'s rows for one device: ``desired`` maps a schedule topic to its retained document
    (what ``P/+/schedule`` and ``P/group/+/schedule`` hold), ``state`` is the device's retained state.
    Also the monitor's fleet page (:func:`summary` of these rows)."""
    entries, problem = reported(state)
    mine: dict[str, str] = {schedule_topic(prefix, "all"): "all"}
    for g in groups:
        mine[schedule_topic(prefix, "group", g)] = schedule_source("group", g)
    mine[schedule_topic(prefix, "device", device)] = "device"
    sources: dict[str, RetainedDoc | None] = {src: desired[topic] for topic, src in mine.items() if topic in desired}
    for src in entries:
        sources.setdefault(src, None)
    if not sources:
        return [{"device": device, "online": online, "source": None, "desired": None,
                 "desired_clear": False, "applied": None, "applied_clear": False, "rejected": None,
                 "sync": "in sync", "problem": problem or known_problem}]
    rows = []
    for src in sorted(sources, key=_source_order):
        want = sources[src]
        entry = entries.get(src)
        rows.append({"device": device, "online": online, "source": src,
                     "desired": want.version if want else None, "desired_clear": bool(want and want.clear),
                     "applied": (entry or {}).get("version"), "applied_clear": bool((entry or {}).get("cleared")),
                     "rejected": (entry or {}).get("rejected"),
                     "sync": _sync(want, entry, device_status), "problem": problem or known_problem
                     or (want.problem if want else None)})
    return rows


def summary(rows: list[dict[str, Any]]) -> str:
    """One word for a device's rows: "rejected", "drift", "offline" (it drifts, and applies when back),
    "in sync", or "-" when no document concerns it (its config file alone)."""
    if all(r["source"] is None for r in rows):
        return "-"
    found = {r["sync"] for r in rows}
    return next((word for word in ("rejected", "drift", "offline") if word in found), "in sync")


def _source_order(source: str) -> tuple[int, str]:
    return ({"all": 0, "device": 2}.get(source, 1), source)


def _sync(want: RetainedDoc | None, entry: dict[str, Any] | None, device_status: str | None) -> str:
    applied = (entry or {}).get("version")
    if want is None or want.version is None:
        # nothing (readable) on the broker: in sync only when the device runs nothing from it
        return "in sync" if applied is None or (entry or {}).get("cleared") else "drift"
    rej = (entry or {}).get("rejected")
    if rej is not None and rej["version"] == want.version:
        return "rejected"
    if applied == want.version or (want.clear and applied is None):
        return "in sync"
    return "offline" if device_status == "offline" else "drift"


def get(client: FleetClient, device: str, *, timeout: float = 10.0) -> dict[str, Any]:
    """``device``'s effective schedule (``agent.jobs``): ``{"device", "jobs", "windows"}``, each
    job and window with its ``origin`` (config, all, group:<g>, device) and ``version``."""
    _name(device, "device")
    doc = request(client, device, "agent.jobs", timeout=timeout)
    if doc is None:
        raise BrokerUnreachable(f"{device} did not answer agent.jobs within {timeout:g}s (is it online?)")
    if doc["status"] != "succeeded":
        err = doc.get("error") or {}
        raise DeviceError(f"{device}: agent.jobs {doc['status']}: {err.get('type')}: {err.get('message')}")
    result = doc.get("result")
    if not isinstance(result, dict) or not isinstance(result.get("jobs"), list) or \
            not isinstance(result.get("windows", []), list):
        raise DeviceError(f"{device}: agent.jobs answered {show(result)}, not {{jobs, windows}}")
    jobs = [j for j in result["jobs"] if isinstance(j, dict)]
    windows = [w for w in result.get("windows", []) if isinstance(w, dict)]
    return {"device": device, "jobs": jobs, "windows": windows}

