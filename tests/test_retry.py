"""Retry policies (exponential backoff, cap, full jitter) and the classification of errors."""

from __future__ import annotations

import errno
import random
import socket
import ssl
import statistics
import urllib.error

import pytest

from edge_agent.device.retry import RetryPolicy, classify
from edge_agent.errors import (
    InvalidArguments,
    NetworkUnavailable,
    PermanentError,
    RetryableError,
    TaskError,
)

# --------------------------------------------------------------------------- delays


def test_delays_grow_exponentially_up_to_the_cap_without_jitter():
    """Without jitter the delay after attempt n is delay * backoff**(n-1), capped at max_delay."""
    policy = RetryPolicy(retries=8, delay=1.0, backoff=2.0, max_delay=10.0, jitter=False)
    assert [policy.delay_before(n) for n in range(1, 8)] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0]


def test_first_delay_is_the_configured_delay_whatever_the_backoff():
    """The first retry waits `delay` (attempt 0 or 1 failed), not delay * backoff."""
    policy = RetryPolicy(delay=3.0, backoff=5.0, max_delay=100.0, jitter=False)
    assert policy.delay_before(0) == policy.delay_before(1) == 3.0
    assert policy.delay_before(2) == 15.0


def test_backoff_of_one_gives_a_constant_delay():
    """backoff = 1 keeps every delay at `delay`."""
    policy = RetryPolicy(delay=0.5, backoff=1.0, jitter=False)
    assert {policy.delay_before(n) for n in range(1, 50)} == {0.5}


def test_huge_attempt_numbers_stay_at_the_cap():
    """Attempt numbers far past the cap (2.0 ** 1024 overflows a float) still give max_delay."""
    policy = RetryPolicy(retries=100_000, delay=1.0, backoff=2.0, max_delay=300.0, jitter=False)
    assert policy.delay_before(1025) == 300.0
    assert policy.delay_before(100_000) == 300.0
    assert 0.0 <= RetryPolicy(delay=1.0, max_delay=300.0).delay_before(5000, random.Random(1)) <= 300.0


def test_full_jitter_stays_between_zero_and_the_exponential_value():
    """Full jitter draws each delay uniformly from [0, min(cap, delay * backoff**(n-1))]."""
    policy = RetryPolicy(retries=10, delay=2.0, backoff=2.0, max_delay=20.0)
    rng = random.Random(1234)
    for attempt, ceiling in [(1, 2.0), (2, 4.0), (3, 8.0), (4, 16.0), (5, 20.0), (9, 20.0)]:
        samples = [policy.delay_before(attempt, rng) for _ in range(2000)]
        assert min(samples) >= 0.0 and max(samples) <= ceiling
        # spread over the whole range, not clustered at the top (that would not be "full" jitter)
        assert min(samples) < 0.05 * ceiling and max(samples) > 0.95 * ceiling
        assert statistics.mean(samples) == pytest.approx(ceiling / 2, rel=0.08)


def test_jitter_is_reproducible_with_a_seeded_random():
    """The same seed gives the same delays, so runner tests can pin them."""
    policy = RetryPolicy(retries=5, delay=1.0)
    a = [policy.delay_before(n, random.Random(7)) for n in range(1, 6)]
    b = [policy.delay_before(n, random.Random(7)) for n in range(1, 6)]
    assert a == b


def test_build_reads_human_units():
    """RetryPolicy.build takes durations as text ("30s", "5m", "1h") or seconds."""
    policy = RetryPolicy.build(retries=5, retry_delay="30s", max_delay="5m", deadline="1h")
    assert (policy.retries, policy.delay, policy.max_delay, policy.deadline, policy.jitter) == (5, 30.0, 300.0, 3600.0, True)
    assert RetryPolicy.build(retry_delay=0.25).delay == 0.25
    assert RetryPolicy.build().deadline is None


@pytest.mark.parametrize("kwargs", [{"retries": -1}, {"retries": True}, {"retries": 1.5}, {"backoff": 0.5},
                                    {"retry_delay": "soon"}, {"max_delay": "5 parsecs"}, {"deadline": "later"}])
def test_build_rejects_nonsense(kwargs):
    """Negative or fractional retries, backoff below 1 and unreadable durations raise ValueError."""
    with pytest.raises(ValueError):
        RetryPolicy.build(**kwargs)


def test_task_decorator_builds_its_policy():
    """@task(retries=, retry_delay=, max_delay=, deadline=) becomes the task's RetryPolicy."""
    from edge_agent import task

    @task(name="test_retry_policy_probe", retries=3, retry_delay="2s", backoff=3.0, max_delay="1m", deadline="2h",
          needs_network=True)
    def probe() -> None:
        pass

    assert probe.retry == RetryPolicy(retries=3, delay=2.0, backoff=3.0, max_delay=60.0, jitter=True, deadline=7200.0)
    assert probe.needs_network


# --------------------------------------------------------------------------- classification


def _cert_error() -> ssl.SSLCertVerificationError:
    err = ssl.SSLCertVerificationError(1, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed")
    err.verify_message = "self-signed certificate"
    return err


def _http_error(code: int) -> urllib.error.HTTPError:
    return urllib.error.HTTPError("http://x/", code, "status", None, None)  # type: ignore[arg-type]


NETWORK = [
    NetworkUnavailable("the uplink is down"),
    socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution"),
    socket.gaierror(socket.EAI_NONAME, "Name or service not known"),
    ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"),
    ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"),
    ConnectionAbortedError(errno.ECONNABORTED, "Software caused connection abort"),
    OSError(errno.ENETUNREACH, "Network is unreachable"),
    OSError(errno.EHOSTUNREACH, "No route to host"),
    OSError(errno.ENETDOWN, "Network is down"),
    urllib.error.URLError(ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")),
    urllib.error.URLError(socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")),
]
RETRY = [
    RetryableError("HTTP 503"),
    RetryableError("HTTP 429", retry_after=30.0),
    TaskError("something transient"),
    TimeoutError("timed out"),
    socket.timeout("timed out"),  # noqa: UP041 (the alias user code still raises)
    OSError(errno.ETIMEDOUT, "Connection timed out"),
    urllib.error.URLError(TimeoutError("timed out")),
    urllib.error.URLError("a reason that is only text"),
    _http_error(503),
    _http_error(429),
    _http_error(408),
    RuntimeError("unexpected"),
    OSError(errno.EIO, "Input/output error"),
]
PERMANENT = [
    PermanentError("HTTP 404 Not Found"),
    _cert_error(),
    urllib.error.URLError(_cert_error()),
    _http_error(404),
    _http_error(401),
    _http_error(400),
    ValueError("minutes must be in (0, 60]"),
    TypeError("unsupported operand"),
    KeyError("missing"),
    IndexError("list index out of range"),
    AttributeError("no attribute"),
    InvalidArguments("gpio.set: argument 'value' must be ..."),
]


@pytest.mark.parametrize("exc", NETWORK, ids=lambda e: f"{type(e).__name__}:{e}"[:60])
def test_network_failures_wait_for_the_network(exc):
    """Refused, reset, DNS failures, unreachable networks and NetworkUnavailable are "network"."""
    assert classify(exc) == "network"


@pytest.mark.parametrize("exc", RETRY, ids=lambda e: f"{type(e).__name__}:{e}"[:60])
def test_transient_failures_are_retried(exc):
    """Timeouts (a half-open link too), RetryableError, HTTP 408/429/5xx and unknown errors are "retry"."""
    assert classify(exc) == "retry"


@pytest.mark.parametrize("exc", PERMANENT, ids=lambda e: f"{type(e).__name__}:{e}"[:60])
def test_permanent_failures_are_not_retried(exc):
    """PermanentError, untrusted certificates, other 4xx and programming or validation errors are "permanent"."""
    assert classify(exc) == "permanent"


def test_a_task_says_what_it_raised_whatever_the_builtin_base():
    """The task's own class wins: NetworkUnavailable is a ConnectionError but also Retryable; a
    PermanentError subclass that is also a TimeoutError is still permanent."""

    class GiveUp(PermanentError, TimeoutError):
        pass

    class Later(RetryableError, ValueError):
        pass

    assert classify(GiveUp("no")) == "permanent"
    assert classify(Later("soon")) == "retry"
    assert isinstance(NetworkUnavailable("x"), ConnectionError) and classify(NetworkUnavailable("x")) == "network"
