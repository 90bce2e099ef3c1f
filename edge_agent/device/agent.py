"""The daemon: wiring and lifecycle only.

Start-up order matters: take the instance lock, open the database, recover what a
crash left, open GPIO (outputs to ``initial``), start the workers, then tell systemd
READY. Everything else (the broker, the clock sync) may come later: the agent works
offline. Stop (SIGTERM/SIGINT) drains: no new work, running commands get
``drain_timeout``, then outputs go to their safe state. SIGHUP reloads the config.

Fleet schedules: what runs is the config file's jobs and windows merged with the schedule
documents applied (:mod:`edge_agent.device.desired`), at start-up from the database (no broker
needed), again at each SIGHUP, and when a document arrives. The link hands a document to the
main loop (a queue and the wake-up socket); the main loop checks, stores and applies it, as it
does a SIGHUP reload: one thread changes what runs, so a document and a reload never race.
"""

from __future__ import annotations

import contextlib
import faulthandler
import gc
import json
import logging
import os
import queue as queues
import select
import signal
import socket
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from edge_agent import __version__
from edge_agent.config import Settings, load_settings
from edge_agent.device import systemd
from edge_agent.device.actions import Registry, Runtime, build_registry, check_jobs
from edge_agent.device.desired import Desired, merge, offer, schedule_state
from edge_agent.device.events import EventLog, EventReporter
from edge_agent.device.hardware import Hardware
from edge_agent.device.journal import Journal
from edge_agent.device.lock import InstanceLock
from edge_agent.device.outbox import Outbox
from edge_agent.device.runner import Runner
from edge_agent.device.scheduler import Scheduler, claim_clock, scheduler_clock
from edge_agent.device.store import Store
from edge_agent.device.taskqueue import TaskQueue, Workers
from edge_agent.device.tasks import set_submitter
from edge_agent.errors import EdgeAgentError
from edge_agent.memory import limit_malloc_arenas, release_memory

if TYPE_CHECKING:
    from edge_agent.device.mqtt import MqttLink

__all__ = ["Agent"]

log = logging.getLogger("edge_agent.agent")


IDLE_LOOK = 60.0  # seconds: how often the main loop looks around when nothing wakes it
STOP_MARGIN = 6.0  # seconds for the rest of a stop besides the drain (TimeoutStopSec=20s covers both)


class Component(Protocol):
    """A part with a loop of its own that the agent watches and stops (the scheduler, the link)."""

    def alive(self) -> bool: ...

    def stop(self) -> None: ...


class Agent:
    """The composition root: :meth:`start` builds every part, each given what it needs, in the
    order they depend on each other. The agent is also the link's :class:`~edge_agent.device.mqtt.Daemon`
    (what ``state`` says of the schedule and the clock; discovery with the config of the moment)."""

    def __init__(self, settings: Settings):
        self.file_settings = settings  # the config file's (SIGHUP re-reads it)
        self.settings = settings  # what runs: the file's merged with the schedule documents applied (from start())
        self.started_monotonic = time.monotonic()
        self.started_at = time.time()
        # The main loop sleeps on this socket pair. Signals write to it too (set_wakeup_fd): the
        # kernel may deliver SIGTERM to any thread, and then only the written byte wakes the main
        # thread at once (a sleep on a lock would last until its timeout, up to a minute).
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._signals_installed = False
        self._stop_requested = False
        self._reload_requested = False
        # Made by start(), in this order:
        self._schedule_clock: Callable[[], float] | None = None
        self._lock: InstanceLock | None = None
        self.store: Store | None = None
        self.outbox: Outbox | None = None
        self.events: EventLog | None = None
        self.link: MqttLink | None = None
        self.reporter: EventReporter | None = None
        self.queue: TaskQueue | None = None
        self.hardware: Hardware | None = None
        self.registry: Registry | None = None
        self.workers: Workers | None = None
        self.scheduler: Scheduler | None = None
        self._components: list[Component] = []
        self._last_problems: list[str] = []
        self.desired: Desired | None = None
        self._schedules_in: queues.SimpleQueue[tuple[str, bytes]] = queues.SimpleQueue()  # from the link's thread
        self._schedules: dict[str, Any] = {}  # the state document's `schedules`

    # ----------------------------------------------------------------- start

    def start(self) -> None:
        s = self.settings
        limit_malloc_arenas()
        # The whole config is checked before anything is created or locked, with the actions
        # declared only (as `edge-agent check` does): enough for the queue's lanes too (whether an
        # action needs the network). The daemon's own registry needs the queue (gpio.pulse queues
        # its "off"), so it is built after it.
        declared = build_registry(s)
        check_jobs(s, declared)
        self._lock = InstanceLock(s.db_path)
        store = self.store = Store(s.db_path, sync=s.sync, background=True)
        self.desired = Desired(store)
        s = self.settings = self._merged(s, lambda new: check_jobs(new, declared))  # the documents applied, before anything runs
        self._schedule_clock = scheduler_clock()  # one clock: the one recorded is the one that runs
        if s.jobs or s.windows:
            claim_clock(store, self._schedule_clock)
        journal = Journal(store)
        outbox = self.outbox = Outbox(store) if s.mqtt is not None else None
        events = self.events = EventLog(store, s.device_id, keep=s.events.keep, max_rows=s.events.max_rows,
                                        outbox=outbox, outbox_max=s.events.outbox_max, enabled=s.events.enabled)
        link = self.link = self._make_link(store, outbox, journal, events)
        reporter = self.reporter = EventReporter(events, link, accepted=link.accepted if link is not None else None)
        queue = self.queue = TaskQueue(store, journal, workers=s.workers, network_workers=s.network_workers,
                                       is_network=declared.needs_network, on_submitted=reporter.received)
        hardware = self.hardware = Hardware(s.devices, s.pin_factory,
                                            on_change=link.gpio_changed if link is not None else None)
        runtime = Runtime(hardware=hardware, submit=queue.submit, publish=link.publish if link is not None else None,
                          started_monotonic=self.started_monotonic, store=store, events=events, reporter=reporter,
                          settings=lambda: self.settings)
        registry = self.registry = build_registry(s, runtime)
        runner = Runner(store, journal, registry, queue, reporter=reporter)
        workers = self.workers = Workers(queue, runner)
        set_submitter(queue.submit)
        hardware.open()

        interrupted = queue.recover(lambda cmd: registry.reruns_after_a_kill(cmd.action))
        if interrupted:
            with store.transaction() as cur:
                for cmd in interrupted:
                    reporter.finished(cur, cmd)
        with store.transaction() as cur:
            store.set_meta(cur, "daemon", json.dumps({"pid": os.getpid(), "started": self.started_at, "version": __version__}))
        workers.start(s.db_path)
        self._components = []
        self._start_scheduler(queue, reporter)
        if link is not None:
            from edge_agent.device.mqtt import Intake

            link.start(Intake(registry, queue.submit), hardware_states=hardware.states())
            self._components.append(link)
        log.info("edge-agent %s ready: device %r, %d device(s), %d job(s), %d window(s), MQTT %s, database %s",
                 __version__, s.device_id, len(s.devices), len(s.jobs), len(s.windows),
                 f"{s.mqtt.host}:{s.mqtt.port}" if s.mqtt else "off", s.db_path)
        # What start-up made (modules, config, registry) lives as long as the daemon: kept out of
        # the garbage collector's passes, which would otherwise walk it all now and then in the
        # middle of a command (a pause of milliseconds).
        gc.collect()
        gc.freeze()
        systemd.notify("READY=1\nSTATUS=running")

    def _make_link(self, store: Store, outbox: Outbox | None, journal: Journal, events: EventLog) -> MqttLink | None:
        if outbox is None:
            return None
        from edge_agent.device.mqtt import MqttLink  # (paho and the link's modules only with [mqtt])

        return MqttLink(self.settings, store, outbox, journal, self, events=events, on_schedule=self._schedule_arrived)

    def _start_scheduler(self, queue: TaskQueue, reporter: EventReporter, *, live: bool = False) -> None:
        """The scheduler, if there are jobs or windows (at start, or at the first reload that adds
        some: ``live``, its jobs are planned from now, with no catch-up)."""
        if not self.settings.jobs and not self.settings.windows:
            return
        assert self.store is not None and self._schedule_clock is not None
        if live:
            claim_clock(self.store, self._schedule_clock)  # (at start, done before anything runs)
        scheduler = self.scheduler = Scheduler(self.settings, self.store, submit=queue.submit, on_fired=reporter.fired,
                                               on_skipped=reporter.skipped,
                                               clock=self._schedule_clock, live=live)
        scheduler.start()
        self._components.append(scheduler)

    # ----------------------------------------------------------------- what the link asks (mqtt.Daemon)

    def next_jobs(self, count: int) -> list[dict[str, str]]:
        """The next ``count`` firings of the jobs, soonest first."""
        return self.scheduler.next_firings(count) if self.scheduler is not None else []

    def next_solar(self, event: str) -> str | None:
        """The next ``event`` (e.g. sunset) at the configured place, ISO-8601 local, or None."""
        loc = self.settings.location
        if loc.latitude is None or loc.longitude is None:
            return None
        from datetime import UTC, datetime

        from edge_agent.schedule.solar import next_solar

        nxt = next_solar(event, datetime.now(UTC), loc.latitude, loc.longitude)
        return nxt.astimezone(loc.tz).isoformat(timespec="seconds") if nxt is not None else None

    def schedule_state(self) -> dict[str, Any]:
        """The state document's ``schedules``: per source, the version applied or the rejection."""
        return self._schedules

    def clock_trusted(self) -> bool:
        if self.scheduler is not None:
            return bool(self.scheduler.clock_trusted())
        return self.settings.clock_trust == "always" or systemd.clock_synchronized()

    def announce_discovery(self) -> None:
        """Queue the Home Assistant discovery messages (the link calls this on connect and on HA's birth)."""
        if self.outbox is not None and self.store is not None and self.settings.mqtt:
            from edge_agent.device.discovery import announce

            announce(self.settings, self.store, self.outbox)

    def _prune(self) -> None:
        assert self.store is not None
        removed = Journal(self.store).prune(time.time() - self.settings.keep)
        if removed:
            log.info("forgot %d finished command(s) older than %.0f days", removed, self.settings.keep / 86400)
        if self.events is not None:
            self.events.prune()

    # ----------------------------------------------------------------- run

    def install_signal_handlers(self) -> None:
        """From the main thread. Handlers only set flags (no locks in a signal handler); the
        wake-up byte that Python's C-level handler writes ends the main loop's sleep."""
        def stop(signum: int, frame: Any) -> None:
            self._stop_requested = True

        def reload(signum: int, frame: Any) -> None:
            self._reload_requested = True

        signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
        self._signals_installed = True
        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGHUP, reload)

    def _sleep(self, timeout: float) -> None:
        """Until a signal, :meth:`request_stop` or ``timeout`` seconds."""
        readable, _, _ = select.select([self._wake_r], [], [], timeout)
        if readable:
            with contextlib.suppress(OSError):
                while self._wake_r.recv(512):
                    pass

    def run_forever(self, *, on_tick: Callable[[], None] | None = None) -> None:
        interval = systemd.watchdog_interval()
        # The first prune 5 minutes after start-up: not before READY, nor in a backlog's drain.
        last_prune = time.monotonic() - 3600 + 300
        trimmed_at = 0
        while not self._stop_requested:
            self._sleep(min(interval, IDLE_LOOK) if interval else IDLE_LOOK)
            self._take_schedules()
            if self.workers is not None and self.workers.busy == 0 and self.workers.processed - trimmed_at > 1000:
                # After a burst, hand freed memory back to the OS (glibc keeps it otherwise,
                # and an idle daemon on a 512 MB Pi should be small again).
                trimmed_at = self.workers.processed
                release_memory()
            if self._reload_requested:
                self._reload_requested = False
                self.reload()
            if interval and self.alive():
                systemd.notify("WATCHDOG=1")
            if time.monotonic() - last_prune > 3600:
                last_prune = time.monotonic()
                self._prune()
            if on_tick:
                on_tick()

    def alive(self) -> bool:
        """Whether every loop that must run is running (the watchdog is fed only then)."""
        problems = [type(c).__name__ for c in self._components if not c.alive()]
        if self.workers is not None:
            problems += self.workers.wedged(self.settings.task_timeout)
        if problems:
            if problems != self._last_problems:
                log.error("not feeding the watchdog: %s", ", ".join(problems))
            self._last_problems = problems
            return False
        self._last_problems = []
        return True

    def reload(self) -> None:
        """Re-read the config (SIGHUP): jobs, windows and log level change live; the rest needs a restart."""
        assert self.registry is not None, "reloaded before start"
        try:
            new = load_settings(self.settings.path)
            check_jobs(new, self.registry)
        except EdgeAgentError as exc:
            log.error("reload refused, keeping the running config: %s", exc)
            return
        old = self.settings
        needs_restart = [name for name in ("device_id", "groups", "db_path", "sync", "mqtt", "pin_factory", "devices",
                                           "task_modules", "task_paths", "workers", "network_workers")
                         if getattr(old, name) != getattr(new, name)]
        self.file_settings = new
        logging.getLogger().setLevel(new.log_level.upper())
        self._apply()
        if needs_restart:
            log.warning("reloaded; these changes take effect at the next restart: %s", ", ".join(needs_restart))
        else:
            log.info("reloaded %s", new.path)

    # ----------------------------------------------------------------- fleet schedules

    def _merged(self, file: Settings, check: Callable[[Settings], None]) -> Settings:
        """``file`` merged with the documents applied; also refreshes the state's ``schedules``."""
        assert self.desired is not None
        merged = merge(file, self.desired.held(), check_jobs=check, on_invalid=self._withdraw)
        self._schedules = schedule_state(file, self.desired.held())
        return merged

    def _withdraw(self, source: str, version: int, error: str) -> None:
        assert self.desired is not None
        log.error("schedule %s v%d no longer passes the checks and is dropped: %s", source, version, error)
        self.desired.withdrawn(source, version, error, time.time())

    def _apply(self) -> None:
        """Run the config file's jobs and windows merged with the documents applied: through the
        scheduler's reload (an unchanged job keeps its last firing; a changed or new one is planned
        from now, with no catch-up; windows are put in their state at once)."""
        registry = self.registry
        assert registry is not None
        self.settings = self._merged(self.file_settings, lambda new: check_jobs(new, registry))
        if self.scheduler is not None:
            self.scheduler.reload(self.settings)
        elif self.queue is not None and self.reporter is not None:
            try:
                self._start_scheduler(self.queue, self.reporter, live=True)
            except EdgeAgentError as exc:  # (the fake-clock guard: claim_clock)
                log.error("schedules not started: %s", exc)
        if self.link is not None:
            self.link.state_changed()  # (republished if `schedules` changed)

    def _schedule_arrived(self, source: str, payload: bytes) -> None:
        """From the link's thread: a retained schedule document; the main loop takes it."""
        self._schedules_in.put((source, payload))
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")

    def _take_schedules(self) -> None:
        """On the main loop: check, store and apply the documents that arrived."""
        while True:
            try:
                source, payload = self._schedules_in.get_nowait()
            except queues.Empty:
                return
            try:
                self._take_schedule(source, payload)
            except EdgeAgentError as exc:  # the database (a full disk): the broker sends it again at the next connect
                log.error("schedule %s not taken: %s", source, exc)

    def _take_schedule(self, source: str, payload: bytes) -> None:
        assert self.desired is not None and self.registry is not None
        registry = self.registry
        max_payload = self.file_settings.mqtt.max_payload if self.file_settings.mqtt else 65536
        outcome = offer(self.desired, source, payload, self.file_settings,
                        check_jobs=lambda new: check_jobs(new, registry), limit=max_payload, now=time.time())
        if outcome.result == "rejected":
            log.error("schedule %s rejected, keeping the running schedule: %s", source, outcome.message)
            self._schedules = schedule_state(self.file_settings, self.desired.held())
            if self.link is not None:
                self.link.state_changed()
        elif outcome.result == "ignored":
            log.info("schedule %s ignored: %s", source, outcome.message)
        else:
            self._apply()
            log.info("schedule %s v%s %s: %s", source, outcome.version, outcome.result, outcome.message)

    # ----------------------------------------------------------------- stop

    def request_stop(self) -> None:
        self._stop_requested = True
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")

    def stop(self) -> None:
        """No new work (MQTT commands stay with the broker); running commands get
        ``drain_timeout``; outputs to their safe state; the link says ``offline`` after the
        drained commands' replies; the database is flushed. Bounded: should a step hang, the
        stop guard puts the outputs in their safe state, writes every thread's stack to the
        log and exits 1 after ``drain_timeout`` + STOP_MARGIN s, within TimeoutStopSec."""
        bound = self.settings.drain_timeout + STOP_MARGIN
        # Under systemd: at least the time this stop may take, even if a raised drain_timeout
        # exceeds the unit's TimeoutStopSec (systemd only ever extends, never shortens).
        systemd.notify(f"STOPPING=1\nEXTEND_TIMEOUT_USEC={int((bound + 4) * 1e6)}")
        if self.link is not None:
            self.link.pause_ingress()
        log.info("stopping")
        done = self._guard(bound)
        try:
            for component in self._components:
                if component is not self.link:
                    self._timed(component)
            self._drain()
            if self.link is not None:
                self._timed(self.link)
            set_submitter(None)
            if self.store is not None:
                self.store.flush()
                self.store.close()
            if self._lock is not None:
                self._lock.release()
            self._close_wakeup()
        finally:
            done.set()
            with contextlib.suppress(Exception):
                faulthandler.cancel_dump_traceback_later()
        log.info("stopped")

    def _guard(self, seconds: float) -> threading.Event:
        """Set the returned event when the stop is done; if it is not done in ``seconds``:
        outputs to their safe state, every thread's stack to stderr (the journal), exit 1.
        faulthandler's own timer, 2 s later, covers a guard thread that cannot run."""
        done = threading.Event()

        def watch() -> None:
            if done.wait(seconds):
                return
            log.critical("the stop hung for %.0fs: outputs to their safe state, thread stacks follow, exiting", seconds)
            with contextlib.suppress(Exception):
                if self.hardware is not None:
                    self.hardware.safe_state()
            with contextlib.suppress(Exception):
                faulthandler.dump_traceback(all_threads=True)
            os._exit(1)

        threading.Thread(target=watch, name="stop-guard", daemon=True).start()
        with contextlib.suppress(Exception):  # no usable stderr (embedded): the guard thread still works
            faulthandler.dump_traceback_later(seconds + 2.0, exit=True)
        return done

    @staticmethod
    def _timed(component: Component) -> None:
        name = type(component).__name__
        began = time.monotonic()
        try:
            component.stop()
        except Exception:
            log.exception("stopping %s", name)
        if time.monotonic() - began > 1.0:  # a stop should be quick: say what held it up
            log.warning("stopping %s took %.1fs", name, time.monotonic() - began)

    def _close_wakeup(self) -> None:
        if self._signals_installed and threading.current_thread() is threading.main_thread():
            with contextlib.suppress(ValueError):
                signal.set_wakeup_fd(-1)
            self._signals_installed = False
        self._wake_r.close()
        self._wake_w.close()

    def _drain(self) -> None:
        if self.workers is not None:
            log.info("draining: %d command(s) running, up to %.0fs", self.workers.busy, self.settings.drain_timeout)
            if not self.workers.stop(self.settings.drain_timeout):
                log.warning("commands still running after %.0fs; they will be recovered at the next start",
                            self.settings.drain_timeout)
        if self.hardware is not None:
            self.hardware.close()
