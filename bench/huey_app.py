"""The baseline: plain SqliteHuey with its defaults, and the same tasks as :mod:`bench.bench_tasks`.

Run by ``huey_consumer bench.huey_app.huey`` with ``BENCH_HUEY_DB`` naming the file.
"""

from __future__ import annotations

import os
import socket
import time

from huey import SqliteHuey

huey = SqliteHuey("bench", filename=os.environ.get("BENCH_HUEY_DB", "huey-bench.db"))

_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)


def _send_mark(port: int, tag: str, t0: float) -> None:
    _sock.sendto(f"{tag} {t0!r} {time.time()!r}".encode(), ("127.0.0.1", port))


@huey.task()
def mark(t0: float, port: int, tag: str = "") -> None:
    _send_mark(port, tag, t0)


@huey.task()
def noop(i: int = 0, port: int = 0) -> None:
    if port:
        _send_mark(port, str(i), 0.0)


@huey.task()
def chain(port: int, tag: str = "") -> None:
    mark(time.time(), port, tag)
