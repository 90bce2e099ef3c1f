"""The actions a command can run: the registry (:mod:`.registry`) and the built-ins
(:mod:`.agent`, :mod:`.gpio`, :mod:`.http`, :mod:`.job`, :mod:`.mqtt`), put together by :func:`build_registry`."""

from __future__ import annotations

from typing import Any

from edge_agent.device.actions.agent import agent_actions
from edge_agent.device.actions.gpio import gpio_actions
from edge_agent.device.actions.http import http_actions
from edge_agent.device.actions.job import job_actions
from edge_agent.device.actions.mqtt import mqtt_actions
from edge_agent.device.actions.registry import Action, Registry, Runtime, bad_args, check_jobs, load_user_tasks
from edge_agent.errors import ConfigError

__all__ = ["Action", "Registry", "Runtime", "bad_args", "build_registry", "check_jobs", "load_user_tasks"]


def build_registry(settings: Any, runtime: Runtime | None = None) -> Registry:
    """Built-ins plus the user tasks of ``[tasks]``; raises ConfigError for a module that fails.
    Without ``runtime`` the built-ins are declared only (enough to check commands and jobs)."""
    registry = Registry()
    for action in (*gpio_actions(settings.devices, runtime), *agent_actions(settings.device_id, runtime),
                   *http_actions(), *mqtt_actions(settings, runtime), *job_actions(settings, runtime)):
        registry.add(action)
    for fn in load_user_tasks(settings).values():
        if fn.name in registry:
            raise ConfigError(f"task {fn.name!r} ({fn.fn.__module__}) has the name of a built-in action",
                              path=settings.path, key="tasks.modules")
        registry.add(Action(fn.name, fn.fn, fn.params, idempotent=fn.idempotent, at_most_once=fn.at_most_once,
                            needs_network=fn.needs_network,
                            retry=fn.retry))
    return registry
