"""Scheduling rules, pure and clock-injected: no threads, no sleeping, no I/O.

``solar`` (sun events for a place), ``cron`` (five-field expressions with DST rules),
``triggers`` (when a job fires), ``planner`` (which firings are due, across restarts
and clock steps) and ``windows`` (desired state between two times). The daemon's
scheduler thread runs them; the CLI's ``jobs`` and ``sun`` report them.
"""

__all__: list[str] = []
