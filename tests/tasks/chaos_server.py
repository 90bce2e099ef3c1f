"""A local HTTP server for tests that a test switches between behaviours while it runs.

Behaviours (``mode``): ``ok`` (200), ``unavailable`` (503 with ``Retry-After``),
``missing`` (404), ``slow`` (answers after ``slow_s`` seconds), ``reset`` (reads the
request, then resets the connection), ``big`` (a 100 KiB answer). With ``tls=(cert,
key)`` it serves HTTPS. :meth:`stop` closes the listening socket, so
connections are refused until :meth:`start` binds the same port again. Every request
that reaches a handler is logged with its monotonic and wall time.
"""

from __future__ import annotations

import http.server
import socket
import ssl
import struct
import threading
import time
import urllib.parse
from dataclasses import dataclass, field

__all__ = ["BIG", "Request", "TestServer"]

BIG = 100 * 1024  # bytes in a ``big`` answer


@dataclass(frozen=True)
class Request:
    mono: float
    wall: float
    method: str
    path: str
    query: dict[str, str]
    mode: str
    headers: dict[str, str]
    body: bytes


@dataclass
class _Behaviour:
    mode: str = "ok"
    script: list[str] = field(default_factory=list)  # modes for the next requests, then `mode`
    retry_after: str | None = "1"
    slow_s: float = 5.0


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a client that went away mid-answer (a killed daemon, a timeout) is part of the test


class TestServer:
    __test__ = False  # not a pytest test class

    def __init__(self, port: int | None = None, tls: tuple[str, str] | None = None):
        self.port = port or _free_port()
        self.tls = tls
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self.requests: list[Request] = []
        self.behaviour = _Behaviour()
        self._lock = threading.Lock()
        self._release = threading.Event()  # ends `slow` waits early at stop()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # ----------------------------------------------------------------- control

    def set(self, mode: str, *, script: list[str] | None = None, retry_after: str | None = "1",
            slow_s: float = 5.0) -> None:
        with self._lock:
            self.behaviour = _Behaviour(mode, list(script or []), retry_after, slow_s)

    def start(self) -> None:
        assert self._server is None
        self._release.clear()
        self._server = _Server(("127.0.0.1", self.port), self._handler())
        if self.tls is not None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(*self.tls)
            self._server.socket = ctx.wrap_socket(self._server.socket, server_side=True)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"http-{self.port}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop listening: new connections are refused."""
        if self._server is None:
            return
        self._release.set()
        self._server.shutdown()
        self._server.server_close()
        assert self._thread is not None
        self._thread.join(5)
        self._server = None

    @property
    def running(self) -> bool:
        return self._server is not None

    def log(self, **query: str) -> list[Request]:
        """The requests so far, optionally only those whose query has these values."""
        with self._lock:
            return [r for r in self.requests if all(r.query.get(k) == v for k, v in query.items())]

    # ----------------------------------------------------------------- serving

    def _next_mode(self) -> tuple[str, _Behaviour]:
        with self._lock:
            b = self.behaviour
            mode = b.script.pop(0) if b.script else b.mode
            return mode, b

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def _serve(self) -> None:
                mode, b = owner._next_mode()
                parsed = urllib.parse.urlsplit(self.path)
                query = dict(urllib.parse.parse_qsl(parsed.query))
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                with owner._lock:
                    owner.requests.append(Request(time.monotonic(), time.time(), self.command, parsed.path, query, mode,
                                                  dict(self.headers.items()), body))
                if mode == "reset":
                    # SO_LINGER 0: close() sends RST, as a crashing server or a dropped NAT entry would.
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.close_connection = True
                    return
                if mode == "slow":
                    owner._release.wait(b.slow_s)
                status, answer = {"ok": (200, b"fine"), "slow": (200, b"late"), "missing": (404, b"no such thing"),
                                  "unavailable": (503, b"busy"), "big": (200, b"x" * BIG)}[mode]
                self.send_response(status)
                if status == 503 and b.retry_after is not None:
                    self.send_header("Retry-After", b.retry_after)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(answer)

            do_GET = do_POST = do_PUT = do_HEAD = do_DELETE = do_PATCH = _serve

        return Handler


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
