"""User tasks for the retry, HTTP, fan-out and chaos tests, loaded by the daemon through
``[tasks] paths = [".../tests/tasks"]`` and ``modules = ["chaos_tasks"]``.

Tasks that the tests count append one line to a log file per execution (``O_APPEND``
writes of one short line are atomic, and survive a SIGKILL of the daemon).
"""

from __future__ import annotations

import os
import time
import urllib.error
import urllib.request
from typing import Any

from edge_agent import task
from edge_agent.device.actions.http import http_request
from edge_agent.errors import NetworkUnavailable, PermanentError, RetryableError


def record(log: str, line: str) -> None:
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def _get(url: str, timeout: float) -> dict[str, Any]:
    """GET ``url`` and say what a failure means, as a user's own network code would."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return {"status": resp.status, "body": resp.read().decode()}
    except urllib.error.HTTPError as exc:
        if exc.code in (429, 503):
            after = exc.headers.get("Retry-After")
            raise RetryableError(f"HTTP {exc.code} from {url}", retry_after=float(after) if after else None) from None
        raise PermanentError(f"HTTP {exc.code} from {url}") from None
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, TimeoutError):
            raise RetryableError(f"no answer from {url} within {timeout}s") from None
        raise NetworkUnavailable(f"cannot reach {url}: {exc.reason}") from None


# --------------------------------------------------------------------------- retries and outages


@task(retries=2, retry_delay="0.3s", needs_network=True)
def chaos_fetch(url: str) -> dict[str, Any]:
    """Network-aware: raises NetworkUnavailable / RetryableError(retry_after) / PermanentError."""
    return _get(url, 2.0)


@task(retries=1, retry_delay="0.3s")
def chaos_fetch_unaware(url: str) -> dict[str, Any]:
    """The same request without ``needs_network``: an outage uses up its attempts."""
    return _get(url, 2.0)


@task(retries=1, retry_delay="0.2s", needs_network=True)
def chaos_fetch_raw(url: str) -> dict[str, Any]:
    """Plain urllib with no error translation: the agent classifies what it raises."""
    with urllib.request.urlopen(url, timeout=2.0) as resp:
        return {"status": resp.status}


@task(retries=3, retry_delay="0.2s", deadline="3s", needs_network=True)
def chaos_fetch_deadline(url: str) -> dict[str, Any]:
    """Network-aware with an absolute deadline 3 s after it is queued."""
    return _get(url, 2.0)


@task(retries=1, retry_delay="0.2s", needs_network=True)
def chaos_webhook(url: str, timeout: float = 1.0) -> dict[str, Any]:
    """The built-in http.request's code under a quick policy (one retry after ~0.2 s)."""
    return http_request(url, timeout=timeout)


@task(needs_network=True, idempotent=True)
def chaos_uplink(tag: str, flag: str, log: str) -> dict[str, Any]:
    """Needs the network, which is down while the file ``flag`` exists; logs every execution."""
    record(log, tag)
    if os.path.exists(flag):
        raise NetworkUnavailable("the uplink is down (test flag)")
    return {"tag": tag}


@task(needs_network=True)
def chaos_slow_outage(seconds: float) -> dict[str, Any]:
    """Fails like a lookup during an outage whose DNS server does not answer: after ``seconds``."""
    time.sleep(seconds)
    raise NetworkUnavailable("Temporary failure in name resolution (after a resolver timeout)")


# --------------------------------------------------------------------------- fan-out


@task
def chaos_fanout(users: list[str], fail_first: list[str], state_dir: str, pause_ms: float = 0.0,
                 fail_always: list[str] | None = None) -> dict[str, Any]:
    """Queue one chaos_email per user (``pause_ms`` after each); returns how many it queued and their ids."""
    record(os.path.join(state_dir, "parent.log"), ",".join(users))
    ids = []
    for u in users:
        ids.append(chaos_email.delay(user=u, fail_first=u in fail_first, state_dir=state_dir,
                                     fail_always=u in (fail_always or ())).id)
        record(os.path.join(state_dir, "queued.log"), f"{u} {ids[-1]}")
        time.sleep(pause_ms / 1000.0)
    return {"queued": len(ids), "children": ids}


@task(retries=2, retry_delay="0.2s", needs_network=True)
def chaos_email(user: str, fail_first: bool, state_dir: str, fail_always: bool = False) -> dict[str, Any]:
    """Send one email; fails once (a 451 from the mail server) when ``fail_first``, every time when ``fail_always``."""
    record(os.path.join(state_dir, "email.log"), user)
    if fail_always:
        raise RetryableError(f"451 mailbox of {user} busy, try later")
    marker = os.path.join(state_dir, f"{user}.failed-once")
    if fail_first and not os.path.exists(marker):
        open(marker, "w").close()
        raise RetryableError(f"451 mailbox of {user} busy, try later")
    return {"sent": user}


# --------------------------------------------------------------------------- chaos


@task(idempotent=True, retries=2, retry_delay="0.2s")
def chaos_work(tag: str, log: str, ms: float = 20.0) -> dict[str, Any]:
    """Idempotent work: a kill while it runs re-runs it at the next start."""
    record(log, tag)
    time.sleep(ms / 1000.0)
    return {"tag": tag}


@task
def chaos_once(tag: str, log: str, ms: float = 20.0) -> dict[str, Any]:
    """Not idempotent: a kill while it runs ends it failed (interrupted), never re-run."""
    record(log, tag)
    time.sleep(ms / 1000.0)
    return {"tag": tag}


@task(idempotent=True)
def chaos_tick(job: str, log: str) -> dict[str, Any]:
    """What scheduled jobs run: one line per execution."""
    record(log, job)
    return {"job": job}
