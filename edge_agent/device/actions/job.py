"""Job control: ``job.pause``, ``job.resume`` and ``job.run``, each of a job by name.

The jobs are those of the current settings (they change on a SIGHUP reload). A pause is kept
in the database (:class:`~edge_agent.device.scheduler.Firings`): it survives restarts and
reloads, and the scheduler records a paused job's instants as handled and reports each as a
``skipped`` event. ``job.run`` queues the job's action once, now, even if the job is paused,
under an id derived from its own command's id: a repeat of that command queues nothing new.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

from edge_agent.device.actions.registry import Action, Runtime, bad_args
from edge_agent.device.commands import Command, NewCommand, Param

__all__ = ["job_actions", "run_id"]

MAX_ID = 128


def run_id(job: str, command_id: str) -> str:
    """The id of the firing ``job.run`` command ``command_id`` queues for ``job``: ``job:<job>:run:<command_id>``.

    In the scheduler's reserved namespace (no command from outside can take it first), never a
    scheduled firing's (``job:<job>:<unix time>``: job names have no ``:``), at most 128 characters."""
    plain = f"job:{job}:run:{command_id}"
    if len(plain) <= MAX_ID:
        return plain
    digest = hashlib.sha256(f"{job}\0{command_id}".encode()).hexdigest()[:40]
    return f"job:{job[:60]}:run:~{digest}"


def job_actions(settings: Any, runtime: Runtime | None) -> list[Action]:
    rt = runtime or Runtime()

    def current() -> Any:
        return rt.settings() if rt.settings is not None else settings

    def spec_of(action: str, name: str) -> Any:
        jobs = {spec.name: spec for spec in current().jobs}
        spec = jobs.get(name)
        if spec is None:
            import difflib

            hint = difflib.get_close_matches(name, list(jobs), n=1)
            known = f"did you mean {hint[0]!r}?" if hint else (f"jobs: {', '.join(jobs)}" if jobs else "no jobs are configured")
            raise bad_args(action, f"no job {name!r} ({known})")
        return spec

    def checker(action: str) -> Any:
        def check(args: dict[str, Any]) -> None:
            spec_of(action, args["name"])

        return check

    def firings() -> Any:
        from edge_agent.device.scheduler import Firings

        assert rt.store is not None  # (the daemon's runtime has it)
        return Firings(rt.store)

    def pause(name: str) -> dict[str, Any]:
        spec_of("job.pause", name)
        return {"job": name, "paused": True, "changed": firings().pause(name, time.time())}

    def resume(name: str) -> dict[str, Any]:
        spec_of("job.resume", name)
        return {"job": name, "paused": False, "changed": firings().resume(name)}

    def run(name: str, *, command: Command) -> dict[str, Any]:
        spec = spec_of("job.run", name)
        store = rt.store
        assert store is not None and rt.submit is not None  # (the daemon's runtime has both)
        from edge_agent.device.scheduler import reading_clock

        planned = reading_clock(store)()
        from edge_agent.device.events import EventReporter

        with store.transaction() as cur:  # the firing and its event, together
            row, created = rt.submit(NewCommand(action=spec.action, args=dict(spec.args), id=run_id(name, command.id),
                                                source="schedule"), cur)
            if created and rt.events is not None:
                EventReporter(rt.events).fired(cur, name, planned, row)
        return {"job": name, "id": row.id}

    name = (Param("name", str),)
    return [
        Action("job.pause", pause, name, idempotent=True, check=checker("job.pause")),
        Action("job.resume", resume, name, idempotent=True, check=checker("job.resume")),
        Action("job.run", run, name, idempotent=True, check=checker("job.run"), wants_command=True),
    ]
