"""http.request and network-aware user tasks through the real daemon, against a real local
HTTP server that the test switches between 503s, 404s, slow answers, resets and not
listening at all.

The outage test lasts ``EDGE_AGENT_OUTAGE_SECONDS`` (20 s in CI); the issue's long
form is a 2-minute outage:

    EDGE_AGENT_OUTAGE_SECONDS=120 .venv/bin/python -m pytest tests/test_http.py -k outage -s
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bench.harness import wait_until
from edge_agent.config import load_settings
from edge_agent.device.client import LocalClient
from edge_agent.device.commands import Command
from tests.configs import agent_config
from tests.conftest import ROOT, Daemon
from tests.tasks.chaos_server import TestServer

OUTAGE_SECONDS = float(os.environ.get("EDGE_AGENT_OUTAGE_SECONDS", "20"))
#: the issue's rule is "within 5 s of the server's return"; CI machines get 1 s of slack
RESUME_LIMIT = 6.0


@dataclass
class Web:
    daemon: Daemon
    server: TestServer
    client: LocalClient

    def url(self, cid: str, path: str = "/hook") -> str:
        return f"{self.server.url}{path}?id={cid}"

    def send(self, action: str, cid: str, *extra: str, **args: Any) -> subprocess.CompletedProcess[str]:
        """``edge-agent send ACTION --args JSON --id ID [extra]``."""
        return self.daemon.cli("send", action, "--args", json.dumps(args), "--id", cid, *extra, timeout=300)

    def get(self, cid: str) -> Command:
        cmd = self.client.journal.get(cid)
        assert cmd is not None, f"{cid} is not in the journal"
        return cmd

    def wait_terminal(self, cid: str, timeout: float = 30.0) -> Command:
        def ended() -> Command | None:
            cmd = self.client.journal.get(cid)
            return cmd if cmd is not None and cmd.terminal else None

        return wait_until(ended, timeout, interval=0.05, message=lambda: f"{cid} not finished: {self.client.journal.get(cid)}")

    def json(self, *args: str) -> dict[str, Any]:
        r = self.daemon.cli(*args, "--json")
        assert r.stdout, r.stderr
        return json.loads(r.stdout)  # type: ignore[no-any-return]


@pytest.fixture
def web(daemon_factory, tmp_path: Path) -> Iterator[Web]:
    server = TestServer()
    server.start()
    d = daemon_factory(agent_config(tmp_path, device="web", tasks="chaos_tasks"))
    d.start()
    client = LocalClient(load_settings(str(d.config)), create=False)
    yield Web(d, server, client)
    client.close()
    server.stop()


def _gaps(reqs: list[Any]) -> list[float]:
    return [round(b.mono - a.mono, 2) for a, b in itertools.pairwise(reqs)]


# --------------------------------------------------------------------------- the policy


@pytest.mark.slow
def test_503s_are_retried_no_sooner_than_retry_after_then_succeed(web):
    """Two 503s with Retry-After: 1 are retried (each gap at least 1 s) and the third attempt succeeds."""
    web.server.set("ok", script=["unavailable", "unavailable"], retry_after="1")
    r = web.send("http.request", "r1", "--wait", "60", "--json", url=web.url("r1"))
    assert r.returncode == 0, r.stderr
    reply = json.loads(r.stdout)
    assert reply["status"] == "succeeded" and reply["attempt"] == 3
    assert reply["result"] == {"status": 200, "body": "fine"}
    reqs = web.server.log(id="r1")
    assert [q.mode for q in reqs] == ["unavailable", "unavailable", "ok"]
    gaps = _gaps(reqs)
    print(f"gaps between attempts: {gaps} s (Retry-After 1 s; policy ceilings 2 s, 4 s)")
    assert all(g >= 0.95 for g in gaps), gaps


@pytest.mark.slow
def test_user_task_retryable_error_honours_retry_after(web):
    """A user task raising RetryableError(retry_after=1.5) is tried again no sooner than 1.5 s later."""
    web.server.set("ok", script=["unavailable"], retry_after="1.5")
    r = web.send("chaos_fetch", "u1", "--wait", "30", "--json", url=web.url("u1"))
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["attempt"] == 2
    gaps = _gaps(web.server.log(id="u1"))
    print(f"gap: {gaps} s (Retry-After 1.5 s, policy ceiling 0.3 s)")
    assert gaps[0] >= 1.45


def test_retries_run_out_then_the_command_fails(web):
    """A server that keeps answering 503 gets retries + 1 attempts, then the command fails with the status."""
    web.server.set("unavailable", retry_after="0")
    r = web.send("chaos_webhook", "x1", "--wait", "30", "--json", url=web.url("x1"))
    assert r.returncode == 1
    reply = json.loads(r.stdout)
    assert reply["status"] == "failed" and reply["attempt"] == 2  # chaos_webhook: retries=1
    assert reply["error"]["type"] == "retryable" and "503" in reply["error"]["message"]
    assert len(web.server.log(id="x1")) == 2
    history = {c["id"]: c for c in web.json("history")["commands"]}
    assert history["x1"]["status"] == "failed" and history["x1"]["attempt"] == 2


def test_a_permanent_error_fails_at_once_with_the_servers_status(web):
    """A 404 fails http.request on the first attempt, with 404 in the error; a user task's PermanentError too."""
    web.server.set("missing")
    r = web.send("http.request", "p1", "--wait", "30", "--json", url=web.url("p1"))
    assert r.returncode == 1
    reply = json.loads(r.stdout)
    assert reply["status"] == "failed" and reply["attempt"] == 1
    assert reply["error"]["type"] == "permanent" and "404" in reply["error"]["message"]
    r = web.send("chaos_fetch", "p2", "--wait", "30", "--json", url=web.url("p2"))  # retries=2, but permanent
    reply = json.loads(r.stdout)
    assert r.returncode == 1 and reply["status"] == "failed" and reply["attempt"] == 1
    assert "404" in reply["error"]["message"]
    assert len(web.server.log(id="p1")) == 1 and len(web.server.log(id="p2")) == 1
    status = web.json("status")
    failed = {f["id"]: f for f in status["failures"]}
    assert "404" in failed["p1"]["error"]["message"]
    history = {c["id"]: c for c in web.json("history")["commands"]}
    assert history["p1"]["status"] == "failed" and "404" in history["p1"]["error"]["message"]


@pytest.mark.slow
def test_a_slow_server_times_out_and_uses_up_attempts(web):
    """An answer slower than `timeout` (a half-open link looks the same) uses an attempt each time, so it is
    not parked forever: with retries=1 the task fails after two timeouts."""
    web.server.set("slow", slow_s=4.0)
    r = web.send("chaos_webhook", "s1", "--wait", "30", "--json", url=web.url("s1"), timeout=1.0)
    reply = json.loads(r.stdout)
    assert r.returncode == 1 and reply["status"] == "failed" and reply["attempt"] == 2
    assert "no answer" in reply["error"]["message"]
    assert len(web.server.log(id="s1")) == 2
    # A user task whose plain urllib call raises TimeoutError is judged the same way by the agent.
    r = web.send("chaos_fetch_raw", "s3", "--wait", "30", "--json", url=web.url("s3"))
    reply = json.loads(r.stdout)
    assert r.returncode == 1 and reply["status"] == "failed" and reply["attempt"] == 2, reply
    assert reply["error"]["type"] == "TimeoutError"
    assert len(web.server.log(id="s3")) == 2


@pytest.mark.slow
def test_http_request_retries_after_a_timeout(web):
    """http.request with timeout=1 against one slow answer succeeds on its second attempt."""
    web.server.set("ok", script=["slow"], slow_s=4.0)
    r = web.send("http.request", "s2", "--wait", "30", "--json", url=web.url("s2"), timeout=1)
    reply = json.loads(r.stdout)
    assert r.returncode == 0 and reply["status"] == "succeeded" and reply["attempt"] == 2


@pytest.mark.slow
def test_a_connection_reset_after_the_request_uses_up_attempts(web):
    """A reset after the request went out (the server may have acted on it) is retried per the policy, not
    parked: a resetting server fails the task after retries + 1 attempts instead of being re-sent for a day."""
    web.server.set("reset")
    r = web.send("chaos_webhook", "z1", "--wait", "30", "--json", url=web.url("z1"))
    reply = json.loads(r.stdout)
    assert r.returncode == 1 and reply["status"] == "failed" and reply["attempt"] == 2, reply
    assert len(web.server.log(id="z1")) == 2
    web.server.set("ok", script=["reset"])
    r = web.send("http.request", "z2", "--wait", "30", "--json", url=web.url("z2"))
    reply = json.loads(r.stdout)
    assert r.returncode == 0 and reply["attempt"] == 2, reply


# --------------------------------------------------------------------------- the request itself


def test_method_json_body_and_headers_reach_the_server(web):
    """http.request sends the method, a JSON body (with its content type) or a text body, and the headers."""
    r = web.send("http.request", "q1", "--wait", "30", "--json", url=web.url("q1"), method="post",
                 json={"a": [1, 2]}, headers={"X-Token": "abc"})
    reply = json.loads(r.stdout)
    assert r.returncode == 0 and reply["result"] == {"status": 200, "body": "fine"}
    req = web.server.log(id="q1")[0]
    assert req.method == "POST" and json.loads(req.body) == {"a": [1, 2]}
    assert req.headers["Content-Type"] == "application/json" and req.headers["X-Token"] == "abc"
    r = web.send("http.request", "q2", "--wait", "30", "--json", url=web.url("q2"), method="PUT", body="plain text")
    assert r.returncode == 0
    req = web.server.log(id="q2")[0]
    assert req.method == "PUT" and req.body == b"plain text"


def test_the_response_body_in_the_result_is_bounded(web):
    """A 100 KiB answer comes back cut to 64 KiB (marked with an ellipsis), with its status."""
    web.server.set("big")
    r = web.send("http.request", "b1", "--wait", "30", "--json", url=web.url("b1"))
    result = json.loads(r.stdout)["result"]
    assert result["status"] == 200
    assert result["body"] == "x" * (64 * 1024) + "…"


@pytest.mark.parametrize("args", [{"url": "ftp://example.com/"}, {"url": "http://"}, {"url": "http://h:99999/"},
                                  {"url": "http://h/", "method": "BREW"}, {"url": "http://h/", "json": 1, "body": "x"},
                                  {"url": "http://h/", "timeout": 0}, {"url": "http://h/", "headers": {"A": "b\nc"}}])
def test_bad_arguments_are_refused_before_queueing(web, args):
    """A bad url, method, timeout or header, or json with body, is refused by `send` (exit 2), never queued."""
    r = web.daemon.cli("send", "http.request", "--args", json.dumps(args), "--id", "bad")
    assert r.returncode == 2 and "http.request" in r.stderr, r.stderr
    assert web.client.journal.get("bad") is None


def test_tls_certificates_are_verified_by_default(web, tmp_path):
    """An HTTPS server with a self-signed certificate fails at once (not retried, not parked); verify=false accepts it."""
    import shutil

    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "2", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    tls = TestServer(tls=(str(cert), str(key)))
    tls.start()
    try:
        r = web.send("http.request", "t1", "--wait", "30", "--json", url=f"{tls.url}/?id=t1")
        reply = json.loads(r.stdout)
        assert r.returncode == 1 and reply["status"] == "failed" and reply["attempt"] == 1
        assert reply["error"]["type"] == "permanent" and "certificate" in reply["error"]["message"]
        assert tls.log(id="t1") == []
        r = web.send("http.request", "t2", "--wait", "30", "--json", url=f"{tls.url}/?id=t2", verify=False)
        assert r.returncode == 0 and json.loads(r.stdout)["result"]["status"] == 200
    finally:
        tls.stop()


# --------------------------------------------------------------------------- outages


@pytest.mark.slow
def test_outage_consumes_no_attempts_and_work_resumes_within_5s_of_the_return(web):
    """While the server does not listen, network commands are parked (shown by status and history) without
    using attempts; they succeed on attempt 1 within 5 s of its return; a task without needs_network fails."""
    server = web.server
    server.stop()
    t0 = time.monotonic()
    waiter = subprocess.Popen(
        [sys.executable, "-m", "edge_agent", "send", "http.request", f"url={web.url('o1')}", "--id", "o1",
         "--wait", str(OUTAGE_SECONDS + 60), "--json", "--config", str(web.daemon.config)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=web.daemon.env, cwd=ROOT)
    try:
        parked_ids = ["o1", "o2", "o3"]
        for cid, action in (("o2", "chaos_fetch"), ("o3", "chaos_fetch_raw"), ("o4", "chaos_fetch_unaware")):
            assert web.send(action, cid, url=web.url(cid)).returncode == 0

        # During the outage: parked, never an attempt used, never failed; status and history show it.
        seen_parked = False
        max_attempts = {cid: 0 for cid in parked_ids}
        while time.monotonic() - t0 < OUTAGE_SECONDS:
            for cid in parked_ids:
                cmd = web.client.journal.get(cid)
                if cmd is None:
                    continue
                assert not cmd.terminal, f"{cid} ended during the outage: {cmd.state} {cmd.error_message}"
                max_attempts[cid] = max(max_attempts[cid], cmd.attempts)
            if not seen_parked and time.monotonic() - t0 > 3:
                status = web.json("status")
                waiting = {w["id"]: w for w in status["waiting"]}
                for cid in parked_ids:
                    assert waiting[cid]["parked"] is True, waiting
                    assert waiting[cid]["attempt"] <= 1
                    assert waiting[cid]["next_attempt"] is not None
                assert status["queue"]["parked"] >= 3
                history = {c["id"]: c for c in web.json("history")["commands"]}
                assert history["o1"]["status"] not in ("succeeded", "failed", "expired")
                assert history["o1"]["error"]["type"] == "network_unavailable"
                seen_parked = True
            time.sleep(0.25)  # not synchronisation: a sample every 0.25 s for as long as the outage lasts
        assert seen_parked
        assert all(n <= 1 for n in max_attempts.values()), max_attempts

        unaware = web.get("o4")
        assert unaware.state == "failed" and unaware.attempts == 2, unaware
        assert unaware.error_type == "network_unavailable"

        back_mono, back_wall = time.monotonic(), time.time()
        server.start()
        finished = {cid: web.wait_terminal(cid, timeout=20) for cid in parked_ids}
        out, err = waiter.communicate(timeout=30)
    finally:
        if waiter.poll() is None:
            waiter.kill()
            waiter.communicate()
    for cid, cmd in finished.items():
        reqs = server.log(id=cid)
        first = reqs[0].mono - back_mono
        done = cmd.finished - back_wall
        print(f"{cid} ({cmd.action}): outage {OUTAGE_SECONDS:.0f}s, first request {first:.2f}s and success "
              f"{done:.2f}s after the server's return, attempt {cmd.attempts}, {len(reqs)} request(s)")
        assert cmd.state == "succeeded" and cmd.attempts == 1
        assert len(reqs) == 1  # refused connections never reached the server
        assert done <= RESUME_LIMIT, f"{cid} resumed {done:.2f}s after the server's return"
    assert waiter.returncode == 0, err
    reply = json.loads(out)
    assert reply["status"] == "succeeded" and reply["attempt"] == 1 and reply["result"]["status"] == 200


# --------------------------------------------------------------------------- status and history


def test_status_shows_a_retrying_command_and_when_it_tries_next(web):
    """After a 503 with Retry-After: 20 the command waits, not parked: status lists attempt 1 and the next attempt."""
    web.server.set("unavailable", retry_after="20")
    before = time.time()
    assert web.send("http.request", "w1", url=web.url("w1")).returncode == 0
    wait_until(lambda: web.server.log(id="w1") and web.get("w1").state == "queued", 10, interval=0.05,
               message="the first attempt did not happen")
    status = web.json("status")
    entry = {w["id"]: w for w in status["waiting"]}["w1"]
    assert entry["parked"] is False and entry["attempt"] == 1
    assert entry["next_attempt"] >= before + 19
    assert "503" in entry["last_error"]
    assert status["queue"]["retrying"] == 1
    text = web.daemon.cli("status").stdout
    assert "w1" in text and "retrying, attempt 1" in text


def test_status_says_attempt_n_of_m(web):
    """status --json gives, for a retrying command, its attempt and how many it may have (n of m)."""
    web.server.set("unavailable", retry_after="20")
    assert web.send("http.request", "m1", url=web.url("m1")).returncode == 0
    wait_until(lambda: web.server.log(id="m1") and web.get("m1").state == "queued", 10, interval=0.05,
               message="the first attempt did not happen")
    entry = {w["id"]: w for w in web.json("status")["waiting"]}["m1"]
    assert entry["state"] == "retrying" and entry["attempt"] == 1
    assert entry["max_attempts"] == 6  # http.request: retries=5
    assert "retrying, attempt 1 of 6" in web.daemon.cli("status").stdout


def test_history_shows_retrying_and_parked_commands(web):
    """history --json tells a retrying command (attempt n of m, next attempt at) from a parked one."""
    web.server.set("unavailable", retry_after="20")
    assert web.send("http.request", "h1", url=web.url("h1")).returncode == 0
    assert web.send("http.request", "h2", url="http://127.0.0.1:9/never").returncode == 0  # port 9: refused
    wait_until(lambda: web.server.log(id="h1") and web.get("h1").state == "queued" and web.get("h2").parked, 10,
               interval=0.05, message="h1 not retrying or h2 not parked")
    history = {c["id"]: c for c in web.json("history")["commands"]}
    retrying, parked = history["h1"], history["h2"]
    assert retrying["state"] == "retrying" and retrying["parked"] is False
    assert retrying["attempt"] == 1 and retrying["max_attempts"] == 6
    assert retrying["next_attempt"] > time.time() + 15
    assert parked["state"] == "parked" and parked["parked"] is True and parked["next_attempt"] is not None
    assert retrying["status"] == parked["status"] == "accepted"  # the reply vocabulary of the contract is unchanged


# --------------------------------------------------------------------------- deadlines


@pytest.mark.slow
def test_a_task_deadline_ends_parking_when_queued_with_apply_async(web):
    """@task(deadline="3s") queued with .apply_async() during an outage ends (expired or failed) soon after 3 s."""
    from edge_agent.device.tasks import set_submitter
    from tests.tasks import chaos_tasks

    web.server.stop()
    set_submitter(web.client.submit)
    try:
        chaos_tasks.chaos_fetch_deadline.apply_async({"url": web.url("d1")}, id="d1")
    finally:
        set_submitter(None)
    queued = time.time()
    cmd = web.wait_terminal("d1", timeout=15)
    print(f"d1 ended {cmd.state} ({cmd.error_type}: {cmd.error_message}) {cmd.finished - queued:.1f}s after queueing")
    assert cmd.state in ("expired", "failed") and cmd.attempts <= 1
    assert cmd.finished - queued >= 2.9


@pytest.mark.slow
def test_a_task_deadline_ends_parking_whoever_queued_it(web):
    """@task(deadline="3s") sent with `edge-agent send` during an outage also ends soon after 3 s."""
    web.server.stop()
    assert web.send("chaos_fetch_deadline", "d2", url=web.url("d2")).returncode == 0
    cmd = web.wait_terminal("d2", timeout=10)
    assert cmd.state in ("expired", "failed")


def test_status_lists_parked_commands_behind_other_waiting_work(web):
    """A parked command is listed by status even when older commands wait for a later start time."""
    from edge_agent.device.commands import NewCommand

    for i in range(10):
        web.client.submit(NewCommand(action="agent.ping", args={}, id=f"later-{i}", not_before=time.time() + 3600))
    web.server.stop()
    assert web.send("http.request", "k1", url=web.url("k1")).returncode == 0
    wait_until(lambda: web.get("k1").parked, 10, interval=0.05, message="k1 not parked")
    status = web.json("status")
    assert status["queue"]["parked"] == 1
    assert "k1" in {w["id"] for w in status["waiting"]}


@pytest.mark.slow
def test_parked_work_does_not_hold_up_other_commands_when_failures_are_slow(web):
    """While ten network tasks wait out an outage whose failures take 5 s (DNS timeouts), agent.ping runs within 1 s."""
    from edge_agent.device.commands import NewCommand

    for i in range(10):
        web.client.submit(NewCommand(action="chaos_slow_outage", args={"seconds": 5.0}, id=f"dns-{i}"))
    time.sleep(5.5)  # not synchronisation: the first slow failures take their 5 s
    latencies = []
    for i in range(6):
        sent = time.time()
        web.client.submit(NewCommand(action="agent.ping", args={}, id=f"ping-{i}"))
        latencies.append(round(web.wait_terminal(f"ping-{i}", timeout=30).finished - sent, 2))
        time.sleep(1.0)  # not synchronisation: the pings are spread over the parked commands' retries
    print(f"agent.ping latency while 10 commands park with 5 s failures: {latencies} s")
    assert max(latencies) <= 1.0, latencies


@pytest.mark.slow
def test_one_probe_at_a_time_tries_a_target_that_is_down_and_its_return_releases_all(web, tmp_path):
    """Ten commands for a target that is down do not each retry: one probe every few seconds tries it; once
    it succeeds every parked command runs, within 5 s of the network's return, on attempt 1."""
    from edge_agent.device.commands import NewCommand

    flag, log = tmp_path / "uplink-down", tmp_path / "uplink.log"
    flag.touch()
    ids = [f"up-{i}" for i in range(10)]
    for cid in ids:
        web.client.submit(NewCommand(action="chaos_uplink", args={"tag": cid, "flag": str(flag), "log": str(log)}, id=cid))
    outage = 14.0
    time.sleep(outage)  # not synchronisation: the outage lasts this long
    executions = len(log.read_text().splitlines())
    back = time.time()
    flag.unlink()
    rows = [web.wait_terminal(cid, timeout=15) for cid in ids]
    latest = max(r.finished for r in rows) - back
    print(f"{executions} executions for 10 parked commands in a {outage:.0f}s outage; all done {latest:.2f}s after the return")
    assert all(r.state == "succeeded" and r.attempts == 1 for r in rows)
    # At most one wave of 4 workers before the target is known down, then one probe per ~4 s.
    assert 2 <= executions <= 4 + outage / 4 + 2, executions  # it keeps probing, one at a time
    assert latest <= RESUME_LIMIT


def test_a_target_that_is_down_does_not_hold_up_another(web):
    """While one host refuses connections (its commands parked), requests to another host run at once."""
    from edge_agent.device.commands import NewCommand

    for i in range(5):
        web.client.submit(NewCommand(action="http.request", args={"url": f"http://127.0.0.1:9/?id=d{i}"}, id=f"down-{i}"))
    wait_until(lambda: all(web.get(f"down-{i}").parked for i in range(5)), 10, interval=0.05, message="not all parked")
    for i in range(3):
        sent = time.time()
        web.client.submit(NewCommand(action="http.request", args={"url": web.url(f"up-{i}")}, id=f"up-{i}"))
        cmd = web.wait_terminal(f"up-{i}", timeout=10)
        assert cmd.state == "succeeded" and cmd.finished - sent < 1.0, (cmd.state, cmd.finished - sent)


@pytest.mark.slow
def test_hung_web_requests_do_not_hold_up_local_commands(web):
    """Work that needs the network has its own workers ([queue] network_workers): with more web
    requests hanging than there are workers of either kind, a local command still runs at once,
    before any of the hung requests ends."""
    from edge_agent.device.commands import NewCommand

    web.server.set("slow", slow_s=4.0)
    for i in range(5):  # more than the 4 local workers could hold: with one shared pool, all 4 hang
        web.client.submit(NewCommand(action="http.request", args={"url": web.url(f"hung-{i}"), "timeout": 10},
                                     id=f"hung-{i}"))
    # the network workers are inside their requests
    wait_until(lambda: len(web.server.log()) >= 2, 10, message="the slow server got no requests")
    web.client.submit(NewCommand(action="agent.ping", args={}, id="local-ping"))
    ping = web.wait_terminal("local-ping", timeout=30)
    hung = [web.wait_terminal(f"hung-{i}", timeout=60) for i in range(5)]
    assert ping.state == "succeeded"
    assert all(h.state == "succeeded" for h in hung), [(h.id, h.state, h.error_message) for h in hung]
    assert ping.finished < min(h.finished for h in hung)
