"""The ``@task`` decorator: a function becomes an action, queued with ``.delay()`` like in Celery.

    from edge_agent import task

    @task(retries=5, retry_delay="30s", needs_network=True)
    def upload_report(path: str) -> dict: ...

    upload_report.delay(path="/var/lib/reports/today.pdf")   # from any process on the device

``.delay()`` checks the arguments against the signature, writes the command to the
agent's database and pokes the daemon awake; it returns a :class:`Pending` handle.
Inside the daemon the same call queues directly (fan-out from a running task).
"""

from __future__ import annotations

import contextlib
import functools
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Generic, ParamSpec, TypeVar

from edge_agent.device.commands import Command, NewCommand, Param, check_id, params_from_signature, validate_args
from edge_agent.device.retry import RetryPolicy

__all__ = ["Pending", "TaskFunction", "registered_tasks", "running", "set_submitter", "task"]

P = ParamSpec("P")
R = TypeVar("R")

_TASKS: dict[str, TaskFunction[Any, Any]] = {}
_lock = threading.Lock()
#: how commands leave this process: set by the daemon, else a local client made on first use
_submitter: Callable[[NewCommand], tuple[Command, bool]] | None = None


class TaskFunction(Generic[P, R]):
    """A function registered as an action; calling it runs it here and now."""

    def __init__(self, fn: Callable[P, R], name: str, retry: RetryPolicy, idempotent: bool, needs_network: bool,
                 at_most_once: bool = False):
        functools.update_wrapper(self, fn)
        self.fn = fn
        self.name = name
        self.retry = retry
        self.idempotent = idempotent
        self.at_most_once = at_most_once
        self.needs_network = needs_network
        self.params: tuple[Param, ...] = params_from_signature(fn)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.fn(*args, **kwargs)

    def delay(self, *args: P.args, **kwargs: P.kwargs) -> Pending:
        """Queue a run with these arguments (by name; positional ones are matched to names)."""
        return self.apply_async(kwargs=self._named(args, kwargs))

    def apply_async(self, kwargs: dict[str, Any] | None = None, *, id: str | None = None,
                    countdown: float | None = None, ttl: float | None = None) -> Pending:
        """Queue a run: ``id`` makes it run at most once, ``countdown`` delays it, ``ttl`` expires it."""
        clean = validate_args(self.name, self.params, kwargs or {})
        now = time.time()
        fields: dict[str, Any] = {"action": self.name, "args": clean, "source": "api"}
        if id is not None:
            fields["id"] = check_id(id)
        elif (parent := getattr(_running, "parent", None)) is not None:
            # Fan-out: children of a running command get ids derived from it, so a parent
            # that is re-run after a crash queues the same children again, which dedupe.
            _running.children += 1
            fields["id"] = f"{parent[:100]}/{_running.children}"
        if countdown:
            fields["not_before"] = now + countdown
        if ttl:
            fields["deadline"] = now + (countdown or 0) + ttl
        elif self.retry.deadline:
            fields["deadline"] = now + (countdown or 0) + self.retry.deadline
        cmd, created = _submit(NewCommand(**fields))
        return Pending(cmd.id, duplicate=not created)

    def _named(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        if len(args) > len(self.params):
            raise TypeError(f"{self.name}() takes {len(self.params)} arguments, {len(args)} given")
        named = {p.name: a for p, a in zip(self.params, args, strict=False)}
        for name in kwargs:
            if name in named:
                raise TypeError(f"{self.name}() got argument {name!r} twice")
        named.update(kwargs)
        return named


class Pending:
    """A queued command: its ``id``, and a way to wait for its outcome from any process."""

    def __init__(self, command_id: str, duplicate: bool = False):
        self.id = command_id
        self.duplicate = duplicate

    def __repr__(self) -> str:
        return f"<Pending {self.id}>"

    def wait(self, timeout: float = 30.0, *, config: str | None = None) -> Command:
        """The command once it is finished; raises TimeoutError after ``timeout`` seconds."""
        from edge_agent.device.client import open_local

        journal = open_local(config).journal
        end = time.monotonic() + timeout
        delay = 0.005
        while True:
            cmd = journal.get(self.id)
            if cmd is not None and cmd.terminal:
                return cmd
            if time.monotonic() >= end:
                raise TimeoutError(f"command {self.id} not finished after {timeout}s")
            time.sleep(delay)
            delay = min(delay * 1.5, 0.1)


def task(fn: Callable[P, R] | None = None, *, name: str | None = None, retries: int = 0,
         retry_delay: str | float = "1s", backoff: float = 2.0, max_delay: str | float = "5m",
         deadline: str | float | None = None, idempotent: bool = False,
         needs_network: bool = False, at_most_once: bool = False) -> Any:
    """Make ``fn`` an action (named ``name`` or its own name); usable bare or with options.

    A run that a kill (SIGKILL, power cut, watchdog) interrupts runs again after the restart,
    without counting as an attempt; ``at_most_once=True`` makes it end failed as
    ``interrupted`` instead (for work that must never happen twice, e.g. dosing).
    """
    policy = RetryPolicy.build(retries, retry_delay, backoff, max_delay, True, deadline)

    def wrap(f: Callable[P, R]) -> TaskFunction[P, R]:
        wrapper = TaskFunction(f, name or f.__name__, policy, idempotent, needs_network, at_most_once)
        with _lock:
            other = _TASKS.get(wrapper.name)
            if other is not None and (other.fn.__module__, other.fn.__qualname__) != (f.__module__, f.__qualname__):
                raise ValueError(f"two tasks are named {wrapper.name!r}: {other.fn.__module__} and {f.__module__}")
            _TASKS[wrapper.name] = wrapper
        return wrapper

    return wrap(fn) if fn is not None else wrap


_running = threading.local()


@contextlib.contextmanager
def running(command_id: str) -> Iterator[None]:
    """Mark this thread as running command ``command_id`` (the runner does, around each action)."""
    _running.parent, _running.children = command_id, 0
    try:
        yield
    finally:
        _running.parent = None


def registered_tasks() -> dict[str, TaskFunction[Any, Any]]:
    with _lock:
        return dict(_TASKS)


def set_submitter(submitter: Callable[[NewCommand], tuple[Command, bool]] | None) -> None:
    """Route ``.delay()`` of this process (the daemon sets its own queue here)."""
    global _submitter
    _submitter = submitter


def _submit(cmd: NewCommand) -> tuple[Command, bool]:
    if _submitter is not None:
        return _submitter(cmd)
    from edge_agent.device.client import open_local

    return open_local(None).submit(cmd)
