"""A separate process that queues work the way user code does: ``task.delay()``.

The bench drives it over stdin/stdout, one JSON document a line, so that each
command comes from another process (as from the CLI or a user script) while the
process start itself stays out of the measurement. ``EDGE_AGENT_CONFIG`` names the
daemon's config; ``BENCH_HUEY_DB`` the plain Huey file.

Requests: ``{"op": "mark" | "chain" | "noop", "system": "edge" | "huey", "port": P, "n": N, "tag": T}``,
``{"op": "io"}`` (this process's /proc/self/io), ``{"op": "quit"}``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

# The daemon loads these from [tasks] paths; only that folder goes on sys.path.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "usertasks"))


def _tasks(system: str) -> Any:
    if system == "edge":
        import bench_tasks

        return bench_tasks
    from bench import huey_app

    return huey_app


def read_io(pid: int | str = "self") -> dict[str, int]:
    out = {}
    with open(f"/proc/{pid}/io") as f:
        for line in f:
            key, _, value = line.partition(":")
            out[key.strip()] = int(value)
    return out


def _submit(tasks: Any, system: str, op: str, i: int, port: int, tag: str) -> None:
    if op == "mark":
        fn, kwargs = tasks.mark, {"t0": time.time(), "port": port, "tag": tag}
    elif op == "chain":
        fn, kwargs = tasks.chain, {"port": port, "tag": tag}
    else:
        fn, kwargs = tasks.noop, {"i": i, "port": port}
    if system == "edge":
        fn.delay(**kwargs)
    else:
        fn(**kwargs)  # a Huey task called is queued


def handle(req: dict[str, Any]) -> dict[str, Any]:
    op = req["op"]
    if op == "io":
        return {"io": read_io()}
    system = req["system"]
    tasks = _tasks(system)
    n = int(req.get("n", 1))
    start = time.time()
    for i in range(n):
        _submit(tasks, system, op, i, int(req.get("port", 0)), str(req.get("tag", "")))
    return {"start": start, "end": time.time()}


def main() -> None:
    for line in sys.stdin:
        req = json.loads(line)
        if req["op"] == "quit":
            break
        try:
            reply = handle(req)
        except Exception as exc:  # reported to the bench, which fails the benchmark loudly
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
