"""The shared test bench of one run: a broker, the daemon, the plain Huey consumer, helpers.

Started lazily and stopped once at the end, so the benchmarks that only need a warm
daemon do not pay for its start-up again, and the footprint benchmark finds the
daemon and the baseline idle after real work, as on a device.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .harness import Broker, Daemon, HueyConsumer, Marks, Submitter, WaitTimeout, wait_until, write_daemon_config


@dataclass
class Context:
    """How this run goes: ``quick`` shrinks every sample count; ``strace`` is its path, or None
    with the reason in ``strace_problem``."""

    quick: bool
    workdir: Path
    strace: str | None
    say: Callable[[str], None]
    strace_problem: str = ""

    def n(self, full: int, quick: int) -> int:
        return quick if self.quick else full


class Lab:
    def __init__(self, ctx: Context):
        self.ctx = ctx
        self._broker: Broker | None = None
        self._daemon: Daemon | None = None
        self._huey: HueyConsumer | None = None
        self._edge_sub: Submitter | None = None
        self._huey_sub: Submitter | None = None
        self._marks: Marks | None = None
        self.workers = 4
        self.events = True  # task events on (the default config); off: the `--events-off` rows
        self._extra: list[Any] = []

    def broker(self) -> Broker:
        if self._broker is None:
            self._broker = Broker(self.ctx.workdir / "broker")
            self._broker.start()
        return self._broker

    def daemon(self) -> Daemon:
        if self._daemon is None:
            config = write_daemon_config(self.ctx.workdir / ("edge" if self.events else "edge-events-off"),
                                         mqtt_port=self.broker().port, workers=self.workers, events=self.events)
            self._daemon = Daemon(config)
            self._daemon.start()
            self._wait_link(self._daemon)
        self._daemon.check_alive()
        return self._daemon

    @staticmethod
    def _wait_link(daemon: Daemon, timeout: float = 10.0) -> None:
        """Until the daemon says its MQTT link is up (the meta row it keeps for ``status``)."""
        import json

        def linked() -> bool:
            rows = daemon.query("select value from meta where key = 'mqtt'")
            return bool(rows and json.loads(rows[0][0]).get("connected"))

        with contextlib.suppress(WaitTimeout):  # (a benchmark that needs the link fails on its own)
            wait_until(linked, timeout)

    def huey(self) -> HueyConsumer:
        if self._huey is None:
            self._huey = HueyConsumer(self.ctx.workdir / "huey", workers=self.workers)
            self.huey_submitter()  # creates Huey's tables before the consumer opens the file
            self._huey.start()
        return self._huey

    def set_events(self, on: bool) -> None:
        """The daemon from now on: task events on or off (a daemon of the other kind is stopped;
        each kind has its own database, kept for a switch back)."""
        if on == self.events:
            return
        if self._edge_sub is not None:
            self._edge_sub.close()
            self._edge_sub = None
        if self._daemon is not None:
            self._daemon.stop()
            self._daemon = None
        self.events = on

    def edge_submitter(self) -> Submitter:
        if self._edge_sub is None:
            self._edge_sub = Submitter(edge_config=self.daemon().config)
        return self._edge_sub

    def huey_submitter(self) -> Submitter:
        if self._huey_sub is None:
            assert self._huey is not None
            self._huey_sub = Submitter(huey_db=self._huey.db)
            self._huey_sub.call(op="noop", system="huey", n=1)  # opens the file, creates the tables
        return self._huey_sub

    def marks(self) -> Marks:
        if self._marks is None:
            self._marks = Marks()
        return self._marks

    def adopt(self, thing: Any) -> Any:
        """Stop ``thing`` (anything with ``stop`` or ``close``) with the lab."""
        self._extra.append(thing)
        return thing

    def close(self) -> None:
        for thing in reversed(self._extra):
            (getattr(thing, "stop", None) or thing.close)()
        for sub in (self._edge_sub, self._huey_sub):
            if sub is not None:
                sub.close()
        if self._daemon is not None:
            self._daemon.stop()
        if self._huey is not None:
            self._huey.stop()
        if self._broker is not None:
            self._broker.stop()
        if self._marks is not None:
            self._marks.close()


def make_workdir() -> Path:
    """A fresh folder on the real disk (``/var/tmp``, else the system temp dir)."""
    base = "/var/tmp" if Path("/var/tmp").is_dir() else None
    return Path(tempfile.mkdtemp(prefix="edge-agent-bench-", dir=base))


def remove_workdir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
