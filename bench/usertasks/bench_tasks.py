"""The user tasks the benchmarked daemon loads (``[tasks] modules = ["bench_tasks"]``).

Each task that marks sends one UDP datagram ``"<tag> <t0> <t_start>"`` to the bench
process at the moment it starts, so latencies are measured inside the task, with
the same code as the plain Huey baseline (:mod:`bench.huey_app`).
"""

from __future__ import annotations

import socket
import time

from edge_agent import task

_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)


def send_mark(port: int, tag: str, t0: float) -> None:
    _sock.sendto(f"{tag} {t0!r} {time.time()!r}".encode(), ("127.0.0.1", port))


@task
def mark(t0: float, port: int, tag: str = "") -> None:
    """Report when it started (``t0`` is when it was queued)."""
    send_mark(port, tag, t0)


@task
def noop(i: int = 0, port: int = 0) -> None:
    """Nothing; with a port, report that it ran."""
    if port:
        send_mark(port, str(i), 0.0)


@task
def chain(port: int, tag: str = "") -> None:
    """Queue a ``mark`` from inside the daemon: the in-process queueing latency."""
    mark.delay(t0=time.time(), port=port, tag=tag)
