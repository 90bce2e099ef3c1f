"""``http.request``: a web request that waits out network outages instead of failing.

Failures to reach the server (DNS, refused, unreachable, reset while connecting) raise
:class:`NetworkUnavailable`, so the command is parked without using up attempts;
timeouts, a connection that breaks after the request went out, and HTTP 408, 425,
429 and 5xx are retried per the policy (honouring ``Retry-After``); other 4xx fail
at once with the server's status. TLS certificates are verified unless ``verify`` is false.
"""

from __future__ import annotations

import datetime
import json
import time
from typing import Any

from edge_agent.device.actions.registry import Action, bad_args
from edge_agent.device.commands import Param
from edge_agent.device.retry import RETRYABLE_STATUS, RetryPolicy
from edge_agent.errors import NetworkUnavailable, PermanentError, RetryableError

__all__ = ["http_actions", "http_request"]

MAX_BODY = 64 * 1024
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def _retry_after(value: str | None) -> float | None:
    import email.utils

    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date); None if unusable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None  # a garbled header must not turn a retryable 503 into a permanent failure
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=datetime.UTC)  # HTTP dates are GMT ("-0000" parses naive)
    return max(0.0, parsed.timestamp() - time.time())


def _read_body(resp: Any) -> str:
    raw = resp.read(MAX_BODY + 1)
    text = raw[:MAX_BODY].decode("utf-8", errors="replace")
    return text + ("…" if len(raw) > MAX_BODY else "")


def http_request(url: str, method: str = "GET", json_body: Any = None, body: str | None = None,
                 headers: dict[str, str] | None = None, timeout: float = 10.0, verify: bool = True) -> dict[str, Any]:
    """Send one request; returns ``{"status", "body"}`` or raises a classified error."""
    # Imported here, not at the top: the CLI loads this module to check arguments only.
    import http.client
    import socket
    import ssl
    import urllib.error
    import urllib.request

    data = None
    hdrs = dict(headers or {})
    if json_body is not None:
        data = json.dumps(json_body).encode()
        hdrs.setdefault("Content-Type", "application/json")
    elif body is not None:
        data = body.encode()
    req = urllib.request.Request(url, data=data, method=method.upper(), headers=hdrs)
    context = None
    if url.lower().startswith("https:"):
        context = ssl.create_default_context()
        if not verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=context) as resp:
            return {"status": resp.status, "body": _read_body(resp)}
    except urllib.error.HTTPError as exc:
        text = _read_body(exc) if exc.fp else ""
        summary = f"HTTP {exc.code} {exc.reason} from {url}" + (f": {text[:200]}" if text else "")
        if exc.code in RETRYABLE_STATUS:
            raise RetryableError(summary, retry_after=_retry_after(exc.headers.get("Retry-After"))) from None
        raise PermanentError(summary) from None
    except urllib.error.URLError as exc:
        # urllib wraps what fails before the request is sent (DNS, connect, TLS handshake).
        reason = exc.reason
        if isinstance(reason, ssl.SSLCertVerificationError):
            raise PermanentError(f"TLS certificate of {url} not trusted: {reason.verify_message}") from None
        if isinstance(reason, (TimeoutError, socket.timeout)):
            # No connection within the timeout: packets are dropped somewhere (a dead uplink,
            # a router rebooting). Nothing was sent, so wait for the network like a refusal.
            raise NetworkUnavailable(f"could not connect to {url} within {timeout}s") from None
        if not isinstance(reason, OSError):  # urllib's own complaints ("no host given"): waiting cannot help
            raise PermanentError(f"cannot request {url}: {reason}") from None
        raise NetworkUnavailable(f"cannot reach {url}: {reason}") from None
    except TimeoutError:
        raise RetryableError(f"no answer from {url} within {timeout}s") from None
    except (OSError, http.client.HTTPException) as exc:
        # The request went out and the connection broke before the answer (reset, closed,
        # garbled): the server is reachable and may have acted on it, so this uses up an
        # attempt instead of parking (parked work is re-sent every few seconds for up to a day).
        raise RetryableError(f"connection to {url} broke before the answer was complete: "
                             f"{type(exc).__name__}: {exc}") from None


def http_actions() -> list[Action]:
    def check(args: dict[str, Any]) -> None:
        method = args.get("method", "GET").upper()
        if method not in METHODS:
            raise bad_args("http.request", f"method must be one of {', '.join(METHODS)}, got {args['method']!r}")
        args["method"] = method
        url = args["url"]
        if not url.lower().startswith(("http://", "https://")):
            raise bad_args("http.request", f"url must start with http:// or https://, got {url[:80]!r}")
        try:
            from urllib.parse import urlsplit

            parts = urlsplit(url)
            _ = parts.port  # raises ValueError for a port out of range or not a number
        except ValueError as exc:
            raise bad_args("http.request", f"url {url[:80]!r} is not valid: {exc}") from None
        if not parts.hostname:
            raise bad_args("http.request", f"url {url[:80]!r} names no host")
        if "json" in args and "body" in args:
            raise bad_args("http.request", "give json or body, not both")
        if not 0 < args.get("timeout", 10.0) <= 300:
            raise bad_args("http.request", "timeout must be more than 0 and at most 300 seconds")
        for k, v in (args.get("headers") or {}).items():
            if not isinstance(v, str) or "\n" in k or "\n" in v or "\r" in k or "\r" in v:
                raise bad_args("http.request", f"header {k!r} must be a single-line string")

    def request(url: str, method: str = "GET", json: Any = None, body: str | None = None,
                headers: dict[str, str] | None = None, timeout: float = 10.0, verify: bool = True) -> dict[str, Any]:
        return http_request(url, method, json, body, headers, timeout, verify)

    params = (Param("url", str), Param("method", str, False, "GET"), Param("json", Any, False),
              Param("body", str, False), Param("headers", dict[str, str], False), Param("timeout", float, False, 10.0),
              Param("verify", bool, False, True))
    return [Action("http.request", request, params, needs_network=True, check=check,
                   idempotent=lambda args: args.get("method", "GET") in ("GET", "HEAD", "OPTIONS", "PUT", "DELETE"),
                   retry=RetryPolicy(retries=5, delay=2.0, max_delay=300.0))]
