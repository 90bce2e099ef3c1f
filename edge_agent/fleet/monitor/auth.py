"""Who may look and who may act: open viewing from localhost only, a login for the rest, CSRF on forms.

- **Viewing** (pages, ``/api``, the live stream, ``/metrics``) is open to clients on the
  loopback address when ``open_local`` is on (the default); from anywhere else it
  needs a login. Behind a reverse proxy on the same machine every client looks local:
  start the monitor with ``--login-always`` there.
- **Acting** (send, revoke) always needs a login, and a form post must carry the CSRF
  token (double submit: the ``em_csrf`` cookie, ``SameSite=Strict``, repeated in the
  form or the ``X-CSRF-Token`` header) and, when the browser sends one, an ``Origin``
  matching the host.
- **Login**: the password (or token) is the first line of ``password_file``. A browser
  logs in with a form and gets a signed session cookie (``HttpOnly``,
  ``SameSite=Strict``, 7 days) whose key is derived from the password, so changing the
  password ends every session. A script sends ``Authorization: Bearer <token>``
  instead (no cookie, hence no CSRF check).
Without a password file nobody can log in: the monitor is then view-only, from localhost.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from typing import Any

__all__ = ["Auth", "CSRF_COOKIE", "SESSION_COOKIE"]

SESSION_COOKIE = "em_session"
CSRF_COOKIE = "em_csrf"
SESSION_SECONDS = 7 * 86400
_LOOPBACK = ("127.", "::1", "::ffff:127.")


@dataclass
class Auth:
    """``password`` None: logins are impossible. ``salt`` keeps sessions valid across restarts."""

    password: str | None
    salt: str
    open_local: bool = True

    @classmethod
    def from_file(cls, password_file: str | None, salt: str, *, open_local: bool = True) -> Auth:
        password = None
        if password_file:
            with open(password_file, encoding="utf-8") as fh:
                password = fh.readline().rstrip("\r\n") or None
        return cls(password, salt, open_local)

    @property
    def can_login(self) -> bool:
        return self.password is not None

    def _key(self) -> bytes:
        assert self.password is not None
        return hashlib.sha256(f"{self.salt}:{self.password}".encode()).digest()

    def check_password(self, given: str) -> bool:
        return self.password is not None and hmac.compare_digest(given.encode(), self.password.encode())

    def new_session(self, now: float | None = None) -> str:
        expires = int((time.time() if now is None else now) + SESSION_SECONDS)
        return f"{expires}.{self._sign(str(expires))}"

    def _sign(self, text: str) -> str:
        return hmac.new(self._key(), f"session:{text}".encode(), hashlib.sha256).hexdigest()

    def session_valid(self, value: str | None, now: float | None = None) -> bool:
        if not value or self.password is None or "." not in value:
            return False
        expires, sig = value.split(".", 1)
        if not expires.isdigit() or int(expires) < (time.time() if now is None else now):
            return False
        return hmac.compare_digest(sig, self._sign(expires))

    # ------------------------------------------------------------------ per request

    def logged_in(self, request: Any) -> bool:
        header = request.headers.get("authorization", "")
        if header.lower().startswith("bearer "):
            return self.check_password(header[7:].strip())
        return self.session_valid(request.cookies.get(SESSION_COOKIE))

    def is_local(self, request: Any) -> bool:
        host = request.client.host if request.client else ""
        return host.startswith(_LOOPBACK) or host == "localhost"

    def may_view(self, request: Any) -> bool:
        return (self.open_local and self.is_local(request)) or self.logged_in(request)

    def may_act(self, request: Any, form: dict[str, str]) -> tuple[bool, str]:
        """(allowed, why not) for a send or revoke."""
        header = request.headers.get("authorization", "")
        if header.lower().startswith("bearer "):
            return (True, "") if self.check_password(header[7:].strip()) else (False, "bad token")
        if not self.session_valid(request.cookies.get(SESSION_COOKIE)):
            return False, "log in first" if self.can_login else "no password file is configured: the monitor is view-only"
        if not csrf_ok(request, form):
            return False, "missing or wrong CSRF token (reload the page)"
        return True, ""


def new_csrf_token() -> str:
    return secrets.token_urlsafe(24)


def csrf_ok(request: Any, form: dict[str, str]) -> bool:
    cookie = request.cookies.get(CSRF_COOKIE, "")
    given = form.get("csrf") or request.headers.get("x-csrf-token", "")
    if not cookie or not given or not hmac.compare_digest(cookie, given):
        return False
    origin = request.headers.get("origin")
    if origin and origin != "null":
        host = request.headers.get("host", "")
        if origin.split("://", 1)[-1] != host:
            return False
    return True
