"""The @task decorator's queueing rules that need no daemon."""

from __future__ import annotations

from edge_agent.device.commands import Command, NewCommand
from edge_agent.device.tasks import Pending, running, set_submitter, task


def _capture() -> list[NewCommand]:
    seen: list[NewCommand] = []

    def submit(cmd: NewCommand) -> tuple[Command, bool]:
        seen.append(cmd)
        row = Command(seq=len(seen), id=cmd.id, action=cmd.action, args=cmd.args, source=cmd.source, state="queued",
                      attempts=0, created=0.0, not_before=None, deadline=None, started=None, finished=None,
                      next_attempt=None, result=None, error_type=None, error_message=None, reply_to=None,
                      correlation=None, parked=False)
        return row, True

    set_submitter(submit)
    return seen


@task
def child_of_fanout(n: int) -> int:
    return n


def test_children_of_a_running_command_get_ids_derived_from_it() -> None:
    """Inside a running command, .delay() numbers its children after the parent's id, so a re-run dedupes."""
    seen = _capture()
    try:
        for _ in range(2):  # the parent runs twice (re-run after a crash): the same ids both times
            with running("parent-7"):
                assert isinstance(child_of_fanout.delay(n=1), Pending)
                child_of_fanout.delay(n=2)
        child_of_fanout.delay(n=3)
    finally:
        set_submitter(None)
    assert [c.id for c in seen[:4]] == ["parent-7/1", "parent-7/2", "parent-7/1", "parent-7/2"]
    assert seen[4].id not in {"parent-7/3"} and "/" not in seen[4].id


def test_an_explicit_id_wins_over_the_derived_one() -> None:
    """apply_async(id=...) inside a running command keeps the id it was given."""
    seen = _capture()
    try:
        with running("p"):
            child_of_fanout.apply_async({"n": 1}, id="mine")
    finally:
        set_submitter(None)
    assert seen[0].id == "mine"
