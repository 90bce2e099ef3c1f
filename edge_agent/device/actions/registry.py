"""The action registry: the only things a command can run.

An :class:`Action` is a name, a function, its parameters (read from the signature
and type hints, or declared), and how it behaves under failure (idempotent? needs
the network? retry policy?). Built-ins live in this package; user ``@task``
functions join under their own names. Commands from the network can only name
registered actions: nothing else is ever looked up or imported on their behalf.
"""

from __future__ import annotations

import difflib
import sqlite3
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from edge_agent.device.commands import Command, NewCommand, Param, validate_args
from edge_agent.device.retry import RetryPolicy
from edge_agent.errors import ConfigError, EdgeAgentError, InvalidArguments, UnknownAction

if TYPE_CHECKING:
    from edge_agent.config import Settings
    from edge_agent.device.events import EventLog
    from edge_agent.device.hardware import Hardware
    from edge_agent.device.store import Store
    from edge_agent.device.tasks import TaskFunction

__all__ = ["Action", "Registry", "Runtime", "bad_args", "check_jobs", "load_user_tasks"]


class Submit(Protocol):
    """Journal and queue a command, in ``cur``'s transaction if given: (its row, whether it is new)."""

    def __call__(self, new: NewCommand, cur: sqlite3.Cursor | None = None) -> tuple[Command, bool]: ...


@dataclass(frozen=True)
class Action:
    name: str
    fn: Callable[..., Any]
    params: tuple[Param, ...]
    #: safe to run again: a bool, or a function of the arguments (informational: every command a
    #: kill interrupts runs again, unless ``at_most_once``)
    idempotent: bool | Callable[[Mapping[str, Any]], bool] = False
    #: never run twice: a run a kill interrupted ends failed as ``interrupted`` instead of running again
    at_most_once: bool = False
    needs_network: bool = False
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    #: extra validation after type checks (device names, ranges); raises InvalidArguments
    check: Callable[[dict[str, Any]], None] | None = None
    #: set when the action itself queues its follow-up (gpio.pulse): gets ``command`` kwarg
    wants_command: bool = False

    def validate(self, args: Mapping[str, Any]) -> dict[str, Any]:
        clean = validate_args(self.name, self.params, args)
        if self.check is not None:
            self.check(clean)
        return clean


class Registry:
    """Actions by name."""

    def __init__(self, actions: list[Action] | None = None):
        self._actions: dict[str, Action] = {}
        for action in actions or ():
            self.add(action)

    def add(self, action: Action) -> None:
        if action.name in self._actions:
            raise ValueError(f"two actions are named {action.name!r}")
        self._actions[action.name] = action

    def get(self, name: str) -> Action:
        try:
            return self._actions[name]
        except KeyError:
            hint = difflib.get_close_matches(str(name), list(self._actions), n=1)
            extra = f"; did you mean {hint[0]!r}?" if hint else f"; known actions: {', '.join(sorted(self._actions))}"
            raise UnknownAction(f"unknown action {str(name)[:80]!r}{extra}") from None

    def actions_get(self, name: str) -> Action | None:
        """The action, or None (no error) when it is not registered."""
        return self._actions.get(name)

    def validate(self, name: str, args: Mapping[str, Any]) -> tuple[Action, dict[str, Any]]:
        action = self.get(name)
        return action, action.validate(args)

    def names(self) -> list[str]:
        return sorted(self._actions)

    def __contains__(self, name: object) -> bool:
        return name in self._actions

    def needs_network(self, name: str) -> bool:
        action = self._actions.get(name)
        return action is not None and action.needs_network

    def reruns_after_a_kill(self, name: str) -> bool:
        """Whether a command of ``name`` that a kill interrupted runs again (all but ``at_most_once``)."""
        action = self._actions.get(name)
        return action is None or not action.at_most_once


def bad_args(action: str, message: str) -> InvalidArguments:
    return InvalidArguments(f"{action}: {message}")


class Outcomes(Protocol):
    """Told of an outcome in the transaction that records it (the events and the MQTT replies)."""

    def finished(self, cur: sqlite3.Cursor, cmd: Command) -> None: ...


@dataclass(frozen=True)
class Runtime:
    """What built-in actions reach inside the daemon (outside it, e.g. in ``edge-agent check``,
    all of it is absent: the actions are then only declared, never run)."""

    hardware: Hardware | None = None
    #: queue a command (``gpio.pulse`` its "off"), in the caller's transaction if given: the daemon's TaskQueue.submit
    submit: Submit | None = None
    #: queue an MQTT message (``mqtt.publish``): the link's outbox
    publish: Callable[..., None] | None = None
    started_monotonic: float = 0.0
    # for the agent.* queries and agent.revoke: the database, the event log, who is told of a
    # revoked command (its event and reply) and the current settings (they change on reload)
    store: Store | None = None
    events: EventLog | None = None
    reporter: Outcomes | None = None
    settings: Callable[[], Settings] | None = None


def load_user_tasks(settings: Any) -> dict[str, TaskFunction[Any, Any]]:
    """Import the modules of ``[tasks] modules`` (searching ``paths`` first); their @task functions."""
    import importlib
    import sys
    import traceback

    from edge_agent.device.tasks import registered_tasks

    for path in reversed(settings.task_paths):
        if path not in sys.path:
            sys.path.insert(0, path)
    for name in settings.task_modules:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name and name.startswith(exc.name):
                where = f" (searched {', '.join(settings.task_paths)} and the Python path)" if settings.task_paths else ""
                raise ConfigError(f"no module named {name!r}{where}", path=settings.path, key="tasks.modules") from None
            raise ConfigError(f"module {name!r} failed to import: {exc}", path=settings.path, key="tasks.modules") from None
        except Exception as exc:
            last = traceback.extract_tb(exc.__traceback__)[-1]
            raise ConfigError(f"module {name!r} failed to import: {type(exc).__name__}: {exc} "
                              f"({last.filename}:{last.lineno})", path=settings.path, key="tasks.modules") from None
    return registered_tasks()


def check_jobs(settings: Any, registry: Registry) -> None:
    """Every job names a known action with valid arguments; raises ConfigError naming the job's key."""
    for job in settings.jobs:
        try:
            registry.validate(job.action, job.args)
        except EdgeAgentError as exc:
            key = "action" if isinstance(exc, UnknownAction) else "args"
            raise ConfigError(str(exc), path=settings.path, key=f"{job.key}.{key}") from None
