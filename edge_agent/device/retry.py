"""Retry policies: how many attempts, how long to wait between them, and which errors deserve one.

Delays grow exponentially up to a cap with "full jitter" (a random delay between 0
and the exponential value), so a fleet of devices that lost the same server does not
hammer it in lockstep when it returns.
"""

from __future__ import annotations

import errno
import random
import sys
from dataclasses import dataclass

from edge_agent.durations import parse_duration
from edge_agent.errors import NetworkUnavailable, PermanentError, RetryableError, TaskError

__all__ = ["RETRYABLE_STATUS", "RetryPolicy", "classify"]


@dataclass(frozen=True)
class RetryPolicy:
    """``retries`` further attempts after the first; delays in seconds; ``deadline`` after creation."""

    retries: int = 0
    delay: float = 1.0
    backoff: float = 2.0
    max_delay: float = 300.0
    jitter: bool = True
    deadline: float | None = None

    @classmethod
    def build(cls, retries: int = 0, retry_delay: str | float = "1s", backoff: float = 2.0,
              max_delay: str | float = "5m", jitter: bool = True, deadline: str | float | None = None) -> RetryPolicy:
        """A policy from human units (``"30s"``); raises ValueError on nonsense."""
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ValueError(f"retries must be a whole number >= 0, got {retries!r}")
        if backoff < 1:
            raise ValueError(f"backoff must be >= 1, got {backoff!r}")
        return cls(retries, parse_duration(retry_delay), float(backoff), parse_duration(max_delay), jitter,
                   parse_duration(deadline) if deadline is not None else None)

    def delay_before(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before attempt ``attempt + 1``, after ``attempt`` attempts failed."""
        try:
            ceiling = min(self.max_delay, self.delay * self.backoff ** max(0, attempt - 1))
        except OverflowError:  # 2.0 ** 1024 and up: long past the cap
            ceiling = self.max_delay
        if not self.jitter:
            return ceiling
        return (rng or random).uniform(0.0, ceiling)


#: HTTP statuses worth another attempt (408 timeout, 425 too early, 429 too many, 5xx)
RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})

# ETIMEDOUT is not here: Python raises it as TimeoutError, which is a "retry" (see classify).
_TRANSIENT_ERRNOS = {
    errno.ECONNREFUSED, errno.ECONNRESET, errno.ECONNABORTED, errno.EHOSTUNREACH,
    errno.ENETUNREACH, errno.ENETDOWN, errno.EPIPE, errno.EAGAIN, errno.EHOSTDOWN,
}


def classify(exc: BaseException) -> str:
    """``"network"`` (wait for the network), ``"retry"`` (transient) or ``"permanent"``.

    Tasks say what they mean by raising :class:`RetryableError`, :class:`NetworkUnavailable`
    or :class:`PermanentError`; other exceptions are judged by type. Unknown errors are
    ``retry``: with ``retries = 0`` (the default) that still fails at once.

    A timeout is ``retry``, not ``network``: it does not show that the network is
    down (a half-open connection or a slow server times out too), and parked work
    never uses up its attempts, so a timeout that parked could park for good.
    urllib's ``URLError`` is judged by the error it wraps and ``HTTPError`` by its
    status, as the built-in ``http.request`` judges them.
    """
    # Not imported here (it costs the CLI a few ms): if urllib.error is not loaded, exc is not one of its.
    urllib_error = sys.modules.get("urllib.error")
    if urllib_error is not None:
        if isinstance(exc, urllib_error.HTTPError):
            return "retry" if exc.code in RETRYABLE_STATUS else "permanent"
        if isinstance(exc, urllib_error.URLError) and isinstance(exc.reason, BaseException):
            return classify(exc.reason)
    if isinstance(exc, NetworkUnavailable):
        return "network"
    if isinstance(exc, PermanentError):
        return "permanent"
    if isinstance(exc, (RetryableError, TaskError)):
        return "retry"
    # socket and ssl are only looked up if loaded: an error of theirs implies they are.
    socket_mod, ssl_mod = sys.modules.get("socket"), sys.modules.get("ssl")
    gaierror = socket_mod.gaierror if socket_mod is not None else ConnectionRefusedError
    if isinstance(exc, (gaierror, ConnectionRefusedError, ConnectionResetError, ConnectionAbortedError)):
        return "network"
    if ssl_mod is not None and isinstance(exc, ssl_mod.SSLCertVerificationError):
        return "permanent"
    if isinstance(exc, TimeoutError):  # socket.timeout is TimeoutError
        return "retry"
    if isinstance(exc, OSError) and exc.errno in _TRANSIENT_ERRNOS:
        return "network"
    if isinstance(exc, (TypeError, ValueError, KeyError, LookupError, AttributeError)):
        return "permanent"
    return "retry"
