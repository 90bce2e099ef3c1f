"""The HTTP app (Starlette): server-rendered pages, the same data as JSON under ``/api``, live updates.

Pages: ``/`` the fleet, ``/device/{id}`` one device (its day picture, jobs, recent tasks,
a send form), ``/tasks`` the fleet's tasks with filters, ``/task/{device}/{id}`` one task
(args, attempts, events, revoke). ``/live`` is a server-sent-event stream that the
pages' little script (``static/monitor.js``) applies to the DOM with ``textContent``
only. Templates are Jinja2 with autoescaping on: device ids, args, results and errors
are untrusted text. Who may see and do what is :mod:`.auth`'s.

Every request must name an allowed host in its ``Host`` header (:class:`HostCheck`):
what a DNS-rebinding page sends is its own name, which is refused. The live streams are
capped (:meth:`.hub.Hub.admit`): beyond the cap a stream is refused with 503.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import time
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from edge_agent.contract import parse_args_text
from edge_agent.fleet.monitor.auth import CSRF_COOKIE, SESSION_COOKIE, SESSION_SECONDS, new_csrf_token
from edge_agent.fleet.monitor.day import day_picture, render_svg
from edge_agent.fleet.monitor.metrics import render_metrics
from edge_agent.fleet.monitor.store import STATUSES, TERMINAL, TaskQuery

__all__ = ["HostCheck", "create_app"]

log = logging.getLogger("edge_agent.monitor.web")

HERE = Path(__file__).resolve().parent
MAX_FORM = 64 * 1024
LOCAL_NAMES = frozenset({"localhost", "localhost.", "127.0.0.1", "::1"})


def _templates() -> Any:
    from jinja2 import Environment, FileSystemLoader, select_autoescape

    env = Environment(loader=FileSystemLoader(str(HERE / "templates")), autoescape=select_autoescape(default=True),
                      trim_blocks=True, lstrip_blocks=True)
    env.filters["q"] = lambda s: quote(str(s), safe="")
    env.filters["qpath"] = lambda s: quote(str(s), safe="/")
    env.filters["pretty"] = lambda v: json.dumps(v, indent=2, ensure_ascii=False, default=str)
    return env


def fmt_duration(seconds: Any) -> str:
    if not isinstance(seconds, (int, float)):
        return "-"
    s = int(seconds)
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    return f"{d}d {h:02d}h" if d else f"{h}h {m:02d}m" if h else f"{m}m {s:02d}s"


def create_app(monitor: Any) -> Starlette:
    """The ASGI app over a :class:`edge_agent.fleet.monitor.service.Monitor` (store, link, hub, auth, place)."""
    env = _templates()
    store, auth = monitor.store, monitor.auth
    tz = monitor.tz

    def fmt_time(ts: Any) -> str:
        if not isinstance(ts, (int, float)):
            return "-"
        return datetime.fromtimestamp(ts, tz).strftime("%Y-%m-%d %H:%M:%S")

    env.filters["t"] = fmt_time
    env.filters["dur"] = fmt_duration

    def page(request: Request, name: str, status: int = 200, **ctx: Any) -> HTMLResponse:
        token = request.cookies.get(CSRF_COOKIE) or new_csrf_token()
        html = env.get_template(name).render(csrf=token, logged_in=auth.logged_in(request), can_login=auth.can_login,
                                             statuses=STATUSES, now=time.time(),
                                             tz_name=str(getattr(tz, "key", "") or ""), **ctx)
        resp = HTMLResponse(html, status)
        if request.cookies.get(CSRF_COOKIE) != token:
            resp.set_cookie(CSRF_COOKIE, token, httponly=True, samesite="strict", path="/")
        _secure_headers(resp)
        return resp

    def refuse_view(request: Request) -> Response:
        if request.url.path.startswith(("/api/", "/live", "/metrics")) or "json" in request.headers.get("accept", ""):
            return JSONResponse({"error": "log in first"}, 401)
        return RedirectResponse(f"/login?next={quote(str(request.url.path), safe='/')}", 303)

    def viewing(handler: Any) -> Any:
        async def wrapped(request: Request) -> Response:
            if not auth.may_view(request):
                return refuse_view(request)
            return await handler(request)
        return wrapped

    async def read_form(request: Request) -> dict[str, str]:
        body = await request.body()
        if len(body) > MAX_FORM:
            return {}
        return {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True).items()}

    def wants_json(request: Request) -> bool:
        return "application/json" in request.headers.get("accept", "")

    # ------------------------------------------------------------------ fleet

    def _with_schedule(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Each device's fleet schedules against the documents the broker holds: "in sync", "drift",
        "rejected", "offline" or "-" (no document concerns it) under ``schedule``."""
        from edge_agent.fleet.schedules import device_rows, summary

        desired = monitor.link.desired()
        for d in rows:
            state = d.get("state")
            state = state if isinstance(state, dict) else {}
            groups = [g for g in state.get("groups") or [] if isinstance(g, str)]
            d["schedule"] = summary(device_rows(monitor.link.prefix, d["device"], state, groups, d["online"],
                                                "online" if d["online"] else "offline", desired))
        return rows

    async def fleet(request: Request) -> Response:
        devices = store.devices()
        return page(request, "fleet.html", devices=_with_schedule([d.to_json() for d in devices]), title="Fleet")

    async def api_devices(request: Request) -> Response:
        return JSONResponse({"devices": _with_schedule([d.to_json() for d in store.devices()])})

    # ------------------------------------------------------------------ device

    def _day(request: Request) -> date:
        text = request.query_params.get("day")
        if text:
            try:
                return date.fromisoformat(text)
            except ValueError:
                pass
        return datetime.now(tz).date()

    def _picture(device: str, day: date) -> Any:
        row = store.device(device)
        start = datetime.combine(day, datetime.min.time(), tz).timestamp()
        end = start + 86400 + 3600
        return day_picture(device, day, tz=tz, latitude=monitor.latitude, longitude=monitor.longitude,
                           jobs_doc=row.jobs if row else None, state=row.state if row else {},
                           tasks=store.tasks_between(device, start, end),
                           fired=store.events_between(device, start, end, ["fired"]),
                           gpio=store.gpio_between(device, start, end), now=time.time())

    async def device_page(request: Request) -> Response:
        device = request.path_params["device"]
        row = store.device(device)
        if row is None:
            return page(request, "missing.html", 404, what=f"device {device}", title="Not found")
        day = _day(request)
        pic = _picture(device, day)
        recent, _ = store.tasks(TaskQuery(device=device, limit=25))
        return page(request, "device.html", title=device, d=row.to_json(), jobs=row.jobs or {}, tasks=recent,
                    svg=render_svg(pic, tz), day=day.isoformat(), prev_day=(day - timedelta(days=1)).isoformat(),
                    next_day=(day + timedelta(days=1)).isoformat())

    async def day_svg(request: Request) -> Response:
        device = request.path_params["device"]
        resp = Response(render_svg(_picture(device, _day(request)), tz), media_type="image/svg+xml")
        _secure_headers(resp)
        return resp

    async def api_device(request: Request) -> Response:
        row = store.device(request.path_params["device"])
        if row is None:
            return JSONResponse({"error": "unknown device"}, 404)
        doc = row.to_json()
        doc["jobs"] = row.jobs
        return JSONResponse(doc)

    async def api_day(request: Request) -> Response:
        return JSONResponse(_picture(request.path_params["device"], _day(request)).to_json())

    async def send(request: Request) -> Response:
        device = request.path_params["device"]
        form = await read_form(request)
        ok, why = auth.may_act(request, form)
        if not ok:
            return _answer(request, device, 403, error=f"refused: {why}")
        action = form.get("action", "").strip()
        if not action or len(action) > 200 or "/" in action or "+" in action or "#" in action:
            return _answer(request, device, 400, error="refused: give an action name, e.g. gpio.set")
        try:
            args = parse_args_text(form.get("args", ""))
        except ValueError as exc:
            return _answer(request, device, 400, error=f"refused: {exc}")
        try:
            command_id = monitor.link.send(device, action, args)
        except ConnectionError as exc:
            return _answer(request, device, 503, error=str(exc))
        return _answer(request, device, 200, id=command_id, action=action, args=args)

    def _answer(request: Request, device: str, status: int, **doc: Any) -> Response:
        if wants_json(request):
            return JSONResponse(doc, status)
        if status == 200:
            return RedirectResponse(f"/device/{quote(device, safe='')}?sent={quote(doc['id'], safe='')}", 303)
        return page(request, "refused.html", status, error=doc.get("error", ""), back=f"/device/{quote(device, safe='')}",
                    title="Refused")

    # ------------------------------------------------------------------ tasks

    def _task_query(request: Request) -> TaskQuery:
        p = request.query_params

        def instant(name: str) -> float | None:
            text = p.get(name, "").strip()
            if not text:
                return None
            if text[-1] in "smhd" and text[:-1].isdigit():  # "24h": that long ago
                return time.time() - int(text[:-1]) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[text[-1]]
            try:
                dt = datetime.fromisoformat(text)
            except ValueError:
                try:
                    return float(text)
                except ValueError:
                    return None
            return (dt if dt.tzinfo else dt.replace(tzinfo=tz)).timestamp()

        try:
            limit = max(1, min(500, int(p.get("limit", "50"))))
        except ValueError:
            limit = 50
        before = p.get("before")
        return TaskQuery(device=p.get("device") or None, action=p.get("action") or None, status=p.get("status") or None,
                         since=instant("since"), until=instant("until"),
                         before=float(before) if before and _is_number(before) else None, limit=limit)

    async def tasks_page(request: Request) -> Response:
        q = _task_query(request)
        rows, more = store.tasks(q)
        older = None
        if more and rows:
            params = {k: v for k, v in request.query_params.items() if k != "before"}
            params["before"] = repr(rows[-1]["updated"])
            older = "/tasks?" + "&".join(f"{quote(k)}={quote(v, safe='')}" for k, v in params.items())
        return page(request, "tasks.html", title="Tasks", tasks=rows, more=more, older=older,
                    f=dict(request.query_params), devices=[d.device for d in store.devices()])

    async def api_tasks(request: Request) -> Response:
        rows, more = store.tasks(_task_query(request))
        return JSONResponse({"tasks": rows, "more": more})

    def _task(request: Request) -> tuple[str, str, dict[str, Any] | None, list[dict[str, Any]]]:
        device, task_id = request.path_params["device"], request.path_params["task_id"]
        return device, task_id, store.task(device, task_id), store.task_events(device, task_id)

    async def task_page(request: Request) -> Response:
        device, task_id, task, events = _task(request)
        if task is None and not events:
            return page(request, "missing.html", 404, what=f"task {task_id} of {device}", title="Not found")
        attempts = attempts_of(events)
        return page(request, "task.html", title=task_id, device=device, task=task or {"id": task_id, "status": "?"},
                    events=events, attempts=attempts, waited=network_wait(attempts),
                    can_revoke=(task or {}).get("status") not in TERMINAL, revoke_sent=request.query_params.get("revoke"))

    async def api_task(request: Request) -> Response:
        _, _, task, events = _task(request)
        if task is None and not events:
            return JSONResponse({"error": "unknown task"}, 404)
        return JSONResponse({"task": task, "attempts": attempts_of(events), "events": events})

    async def revoke(request: Request) -> Response:
        device, task_id = request.path_params["device"], request.path_params["task_id"]
        form = await read_form(request)
        ok, why = auth.may_act(request, form)
        back = f"/task/{quote(device, safe='')}/{quote(task_id, safe='/')}"
        if not ok:
            if wants_json(request):
                return JSONResponse({"error": f"refused: {why}"}, 403)
            return page(request, "refused.html", 403, error=f"refused: {why}", back=back, title="Refused")
        try:
            command_id = monitor.link.send(device, "agent.revoke", {"id": task_id})
        except ConnectionError as exc:
            return JSONResponse({"error": str(exc)}, 503)
        if wants_json(request):
            return JSONResponse({"id": command_id})
        return RedirectResponse(f"{back}?revoke={quote(command_id, safe='')}", 303)

    # ------------------------------------------------------------------ login, live, metrics

    async def login_page(request: Request) -> Response:
        return page(request, "login.html", title="Log in", next=_safe_next(request.query_params.get("next")), error=None)

    async def login(request: Request) -> Response:
        from edge_agent.fleet.monitor.auth import csrf_ok

        form = await read_form(request)
        target = _safe_next(form.get("next"))
        if not csrf_ok(request, form):
            return page(request, "login.html", 403, title="Log in", next=target, error="missing or wrong CSRF token (reload)")
        if not auth.check_password(form.get("password", "")):
            import asyncio

            await asyncio.sleep(0.5)  # a guess costs time
            return page(request, "login.html", 403, title="Log in", next=target,
                        error="wrong password" if auth.can_login else "no password file is configured")
        resp = RedirectResponse(target, 303)
        resp.set_cookie(SESSION_COOKIE, auth.new_session(), max_age=SESSION_SECONDS, httponly=True, samesite="strict", path="/")
        return resp

    async def logout(request: Request) -> Response:
        from edge_agent.fleet.monitor.auth import csrf_ok

        form = await read_form(request)
        if not csrf_ok(request, form):
            return PlainTextResponse("missing or wrong CSRF token", 403)
        resp = RedirectResponse("/", 303)
        resp.delete_cookie(SESSION_COOKIE, path="/")
        return resp

    async def live(request: Request) -> Response:
        device = request.query_params.get("device") or None
        client = request.client.host if request.client else ""
        hub = monitor.hub
        refused = hub.admit(client)
        if refused:
            # Connection: close frees the socket now (a refused client must not hold a file descriptor)
            return PlainTextResponse(f"{refused}; try again later", 503,
                                     headers={"Retry-After": "30", "Connection": "close", "Cache-Control": "no-store"})
        return _LiveResponse(lambda: hub.leave(client), hub.stream(device), media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    async def metrics(request: Request) -> Response:
        text = render_metrics(store.devices(), store.counts(), lag=monitor.ingest.lag, backlog=monitor.ingest.backlog(),
                              ingested=monitor.ingest.ingested, rejected=monitor.rejected(),
                              streams=monitor.hub.count)
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4")

    async def health(request: Request) -> Response:
        """Cheap figures for scripts and probes (no table scans, unlike /metrics)."""
        ing = monitor.ingest
        return JSONResponse({"broker_connected": monitor.link.connected.is_set(), "ingested": ing.ingested,
                             "rejected": monitor.rejected(), "backlog": ing.backlog(), "lag_s": round(ing.lag, 3),
                             "live_streams": monitor.hub.count})

    routes = [
        Route("/api/health", viewing(health)),
        Route("/", viewing(fleet)),
        Route("/device/{device}", viewing(device_page)),
        Route("/device/{device}/day.svg", viewing(day_svg)),
        Route("/device/{device}/send", send, methods=["POST"]),
        Route("/tasks", viewing(tasks_page)),
        Route("/task/{device}/{task_id:path}", viewing(task_page)),
        Route("/revoke/{device}/{task_id:path}", revoke, methods=["POST"]),
        Route("/login", login_page, methods=["GET"]),
        Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/live", viewing(live)),
        Route("/metrics", viewing(metrics)),
        Route("/api/devices", viewing(api_devices)),
        Route("/api/devices/{device}", viewing(api_device)),
        Route("/api/devices/{device}/day", viewing(api_day)),
        Route("/api/tasks", viewing(api_tasks)),
        Route("/api/tasks/{device}/{task_id:path}", viewing(api_task)),
        Route("/favicon.ico", lambda request: Response(status_code=204)),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    from starlette.middleware import Middleware

    names = getattr(getattr(monitor, "settings", None), "allowed_hosts", ())
    return Starlette(routes=routes, middleware=[Middleware(HostCheck, names=tuple(names))])


class _LiveResponse(StreamingResponse):
    """A live stream that gives its place back when it ends, however it ends (also when it never started)."""

    def __init__(self, release: Any, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._release = release

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._release()


class HostCheck:
    """ASGI middleware: only requests whose ``Host`` is allowed reach the app; the rest get 400.

    Allowed: localhost, any IP address (a DNS-rebinding page sends a name of its own,
    never an address), and ``names`` (the names the monitor is reached by, e.g.
    ``monitor.lan``). ``"*"`` in ``names`` allows every host."""

    def __init__(self, app: Any, names: list[str] | tuple[str, ...] = ()):
        self.app = app
        self.names = {n.lower().rstrip(".") for n in names} | LOCAL_NAMES
        self.any = "*" in self.names
        self._logged = False

    def allowed(self, host: str) -> bool:
        if self.any:
            return True
        host = host.strip().lower()
        if not host:
            return True  # an HTTP/1.0 client without Host (a probe): browsers always send one
        if host.startswith("["):  # [v6]:port
            name = host[1:host.find("]")] if "]" in host else host
        else:
            name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
        if name.rstrip(".") in self.names:
            return True
        try:
            ipaddress.ip_address(name)
        except ValueError:
            return False
        return True

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            host = ""
            for key, value in scope.get("headers") or ():
                if key == b"host":
                    host = value.decode("latin-1")
                    break
            if not self.allowed(host):
                if not self._logged:  # once: a rebinding page may try without end
                    self._logged = True
                    log.warning("refused a request for host %r (allowed: localhost, addresses, %s; see --allowed-host)",
                                host[:100], ", ".join(sorted(self.names - LOCAL_NAMES)) or "no names")
                resp = PlainTextResponse("unknown host: start the monitor with --allowed-host NAME to serve it as NAME\n",
                                         400, headers={"Connection": "close"})
                await resp(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _secure_headers(resp: Response) -> None:
    # No inline script anywhere: the pages' one script is /static/monitor.js, so a CSP that
    # forbids inline scripts is a second wall behind the escaping.
    resp.headers["Content-Security-Policy"] = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
                                               "img-src 'self' data:; object-src 'none'; frame-ancestors 'none'; base-uri 'none'")
    resp.headers["X-Content-Type-Options"] = "nosniff"
    resp.headers["Referrer-Policy"] = "same-origin"
    resp.headers["Cache-Control"] = "no-store"  # live data; also keeps pages with a stream out of the back-forward cache


def _safe_next(target: str | None) -> str:
    """Only local paths: a login must not redirect elsewhere."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


NETWORK_WAIT = "network_unavailable"  # the error type of a command parked until its target is reachable again


def attempts_of(events: list[dict[str, Any]], now: float | None = None) -> list[dict[str, Any]]:
    """Every attempt of a task from its events (start, end, outcome, error), and its waits for the network.

    A command parked for the network says ``retried`` with the error type
    ``network_unavailable`` and an attempt given back: that is no failed attempt but a
    wait, a row ``{"wait": true}`` from the park to the next start (or the end), with
    its duration ``took`` (still counting while it waits)."""
    rows: list[dict[str, Any]] = []
    by_attempt: dict[int, dict[str, Any]] = {}
    wait: dict[str, Any] | None = None

    def end_wait(ts: Any) -> None:
        nonlocal wait
        if wait is not None:
            wait["ended"] = ts
            started = wait["started"]
            wait["took"] = ts - started if isinstance(ts, int | float) and isinstance(started, int | float) else None
            wait = None

    a: dict[str, Any] | None  # the attempt's row
    for ev in events:
        kind, ts, n = ev.get("event"), ev.get("ts"), ev.get("attempt")
        error = ev.get("error") if isinstance(ev.get("error"), dict) else None
        if kind == "retried" and error is not None and error.get("type") == NETWORK_WAIT:
            running = next((r for r in reversed(rows) if not r.get("wait") and r["outcome"] == "running"), None)
            if running is not None:  # it ran and found the network down: given back, not counted
                running.update(ended=ts, outcome="network down, not counted", error=error,
                               took=ts - running["started"] if isinstance(ts, (int, float)) and
                               isinstance(running["started"], (int, float)) else None)
            if wait is None:
                wait = {"attempt": None, "wait": True, "started": ts, "ended": None, "outcome": "waiting for the network",
                        "error": error, "next_try": ev.get("next_try"), "runtime": None, "took": None}
                rows.append(wait)
            continue
        runtime = ev.get("runtime")
        # A command released after a wait says no `started` (the device keeps its probes quiet): its
        # last attempt began `runtime` before it ended, and the wait ended there.
        begun = ts - runtime if isinstance(ts, (int, float)) and isinstance(runtime, (int, float)) else ts
        if kind in ("started", "succeeded", "failed", "expired", "revoked"):
            end_wait(begun if kind in ("succeeded", "failed") else ts)
        if not isinstance(n, int):
            continue
        if kind == "started":
            a = {"attempt": n, "wait": False, "started": ts, "ended": None, "outcome": "running", "error": None,
                 "next_try": None, "runtime": None, "took": None}
            by_attempt[n] = a
            rows.append(a)
        elif kind in ("retried", "failed", "succeeded"):
            a = by_attempt.get(n)
            if a is None or a["ended"] is not None:
                a = {"attempt": n, "wait": False, "started": begun if begun != ts else None, "ended": None,
                     "outcome": "running", "error": None, "next_try": None, "runtime": None, "took": None}
                by_attempt[n] = a
                rows.append(a)
            a.update(ended=ts, outcome="failed, retried" if kind == "retried" else kind, error=error,
                     next_try=ev.get("next_try"), runtime=runtime)
            if isinstance(a["runtime"], (int, float)):
                a["took"] = a["runtime"]
            elif isinstance(ts, (int, float)) and isinstance(a["started"], (int, float)):
                a["took"] = ts - a["started"]
    if wait is not None and isinstance(wait["started"], (int, float)):
        wait["took"] = max(0.0, (time.time() if now is None else now) - wait["started"])  # still waiting
    return rows


def network_wait(rows: list[dict[str, Any]]) -> float:
    """Seconds a task waited for the network, over all its waits."""
    return sum(r["took"] for r in rows if r.get("wait") and isinstance(r.get("took"), (int, float)))
