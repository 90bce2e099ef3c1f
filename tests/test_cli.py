"""The `edge-agent` command as a new user meets it: real processes, a real database file, the real daemon.

Bad input of every kind gets one clear line on stderr, exit code 2 (usage, config,
invalid command) or 1 (the thing failed), never a traceback, and loses no data.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from bench.harness import wait_until
from tests.configs import LAMP, agent_config
from tests.conftest import ROOT, free_port


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edge_agent", *args], capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, **(env or {})), cwd=ROOT)


def assert_one_line_error(r: subprocess.CompletedProcess[str], code: int, *words: str) -> str:
    """Exit ``code``, exactly one line on stderr naming the problem, no traceback."""
    assert "Traceback" not in r.stderr, r.stderr
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{r.stderr}"
    assert lines[0].startswith("edge-agent: "), lines[0]
    for word in words:
        assert word in lines[0], f"{word!r} not in {lines[0]!r}"
    return lines[0]


def journal(db: Path) -> dict[str, tuple[str, str, int]]:
    """id -> (action, state, attempts), read straight from the file."""
    with sqlite3.connect(db) as conn:
        return {r[0]: (r[1], r[2], r[3]) for r in conn.execute("select id, action, state, attempts from commands")}


def wait_state(db: Path, cid: str, states: tuple[str, ...] = ("succeeded", "failed", "expired"), timeout: float = 10) -> str:
    def state() -> str | None:
        got = journal(db).get(cid, (None, None, 0))[1] if db.exists() else None
        return got if got in states else None

    return wait_until(state, timeout, message=lambda: f"{cid} not in {states}: {journal(db).get(cid)}")


@pytest.fixture
def agent(daemon_factory, tmp_path: Path):
    """A daemon (not started) with its config; the append task writes to lines.txt."""
    d = daemon_factory(agent_config(tmp_path, device="qa", devices=LAMP, tasks="qa_tasks"),
                       env={"EDGE_AGENT_TEST_FILE": str(tmp_path / "lines.txt")})
    d.db = tmp_path / "agent.db"
    d.lines = tmp_path / "lines.txt"
    return d


@pytest.fixture
def queued(agent):
    """A config whose database already holds one queued command (the daemon is down)."""
    r = agent.cli("send", "qa_append", "line=kept", "--id", "kept")
    assert r.returncode == 0, r.stderr
    return agent


# --------------------------------------------------------------------------- check


def test_check_says_ok_and_starts_nothing(agent):
    """`check` on a good config prints one OK line with what it found, exits 0, and creates no database."""
    r = agent.cli("check")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().startswith(f"{agent.config}: OK: device 'qa', 1 device(s), 0 job(s), 0 window(s)")
    assert "MQTT off" in r.stdout and "qa_append" not in r.stdout
    assert r.stderr == ""
    assert not agent.db.exists()


def test_check_accepts_the_example_config():
    """The shipped example config passes `check`."""
    r = run_cli("check", "--config", str(ROOT / "config" / "example.toml"))
    assert r.returncode == 0, r.stderr
    assert ": OK: device 'porch'" in r.stdout


# --------------------------------------------------------------------------- bad configs


BAD_CONFIGS = {
    "broken TOML": ("[device\nid = 'qa'\n", "not valid TOML", "line 1"),
    "wrong type": ("[storage]\npath = 5\n", "storage.path: expected a string, got 5"),
    "unknown key": ('[storage]\npath = "agent.db"\n[devcie]\nid = "qa"\n', "devcie: unknown key (did you mean 'device'?)"),
    "unknown nested key": ('[storage]\npath = "agent.db"\n[clock]\ntrsut = "always"\n', "clock.trsut", "did you mean 'trust'?"),
    "missing device": ('[storage]\npath = "agent.db"\n[[windows]]\ndevice = "lamp"\nfrom = "18:00"\nuntil = "23:00"\n',
                       "windows[0].device: no device 'lamp'"),
    "unknown action in a job": ('[storage]\npath = "agent.db"\n[[jobs]]\nname = "j"\nevery = "1h"\naction = "gpio.sett"\n',
                                "jobs[0]", "unknown action 'gpio.sett'", "did you mean 'gpio.set'?"),
    "bad job arguments": ('[storage]\npath = "agent.db"\n[[jobs]]\nname = "j"\nevery = "1h"\naction = "agent.ping"\nargs = {x = 1}\n',
                          "jobs[0]", "unknown argument 'x'"),
    "missing task module": ('[storage]\npath = "agent.db"\n[tasks]\nmodules = ["no_such_tasks"]\n',
                            "tasks.modules: no module named 'no_such_tasks'"),
}


@pytest.mark.parametrize("case", list(BAD_CONFIGS))
def test_a_bad_config_stops_every_command_with_one_line_and_loses_nothing(queued, case):
    """check, send and run each refuse a bad config with exit 2 and one line naming file, key and problem."""
    good = queued.config.read_text()
    text, *words = BAD_CONFIGS[case]
    queued.config.write_text(text)
    before = queued.db.read_bytes()
    for args in (("check",), ("send", "agent.ping"), ("run",)):
        r = queued.cli(*args)
        line = assert_one_line_error(r, 2, str(queued.config), *words)
        assert r.stdout == "", (args, line)
    assert queued.db.read_bytes() == before  # nothing touched the database
    queued.config.write_text(good)
    assert journal(queued.db)["kept"][1] == "queued"


def test_a_missing_config_file_is_named(tmp_path: Path):
    """A config file that does not exist, given by --config or $EDGE_AGENT_CONFIG, is named with a hint; exit 2."""
    missing = tmp_path / "nope.toml"
    for args, env in ((("send", "agent.ping", "--config", str(missing)), None),
                      (("status",), {"EDGE_AGENT_CONFIG": str(missing)}),
                      (("run", "--config", str(missing)), None)):
        assert_one_line_error(run_cli(*args, env=env), 2, str(missing), "no such file", "--config")


# --------------------------------------------------------------------------- bad commands


BAD_SENDS = {
    "unknown action": (("gpio.sett", "device=lamp", "value=on"), "unknown action 'gpio.sett'; did you mean 'gpio.set'?"),
    "unknown action, no near name": (("reboot",), "unknown action 'reboot'", "known actions:"),
    "pair without =": (("gpio.set", "device=lamp", "value"), "expected key=value, got 'value'"),
    "pair without key": (("gpio.set", "=on"), "expected key=value, got '=on'"),
    "missing argument": (("gpio.set", "device=lamp"), "missing argument 'value'"),
    "unknown device": (("gpio.set", "device=lamb", "value=on"), "no device 'lamb' (did you mean 'lamp'?)"),
    "wrong type for a task": (("qa_typed", "count=abc", "ratio=1"), "qa_typed: argument 'count' must be int, got 'abc'"),
    "float for an int": (("qa_typed", "count=1.5", "ratio=1"), "argument 'count' must be int, got 1.5"),
    "missing task argument": (("qa_typed", "count=1"), "qa_typed: missing argument 'ratio' (float)"),
    "literal": (("qa_typed", "count=1", "ratio=1", "mode=medium"), "argument 'mode' must be one of 'fast', 'slow'"),
    "list item": (("qa_typed", "count=1", "ratio=1", 'tags=["a", 2]'), "argument 'tags'"),
    "unknown argument": (("qa_typed", "count=1", "ratio=1", "modes=fast"), "unknown argument 'modes' (did you mean 'mode'?)"),
    "huge number": (("qa_typed", "count=1", "ratio=1" + "0" * 400), "argument 'ratio' must be float"),
    "--args not JSON": (("agent.ping", "--args", "{x: 1}"), "--args is not valid JSON"),
    "--args not an object": (("agent.ping", "--args", "[1]"), "--args must be a JSON object, got list"),
    "--args nested too deep": (("agent.ping", "--args", '{"a":' * 5000 + "1" + "}" * 5000), "nested too deeply"),
    "bad id": (("agent.ping", "--id", "has space"), "id must be 1 to 128 printable characters"),
    "bad ttl": (("agent.ping", "--ttl", "-1"), "--ttl must be a positive number"),
    "endless ttl": (("agent.ping", "--ttl", "inf"), "--ttl must be a positive number"),
    "wait of nan": (("agent.ping", "--wait", "nan"), "--wait must be a number of seconds, got nan"),
}


@pytest.mark.parametrize("case", list(BAD_SENDS))
def test_a_bad_send_is_refused_before_anything_is_queued(queued, case):
    """`send` refuses unknown actions, malformed pairs and wrong or missing arguments: exit 2, one line, nothing queued."""
    args, *words = BAD_SENDS[case]
    assert_one_line_error(queued.cli("send", *args), 2, *words)
    assert list(journal(queued.db)) == ["kept"]


def test_text_arguments_may_look_like_numbers(agent):
    """`zone=12` gives a text parameter the text "12"; a number parameter still gets a number."""
    r = agent.cli("send", "qa_typed", "count=12", "ratio=0.5", "mode=slow", "--args", '{"tags": ["x"]}', "--json")
    assert r.returncode == 0, r.stderr
    r = agent.cli("send", "qa_append", "line=12", "hold_ms=0", "--id", "numeric-text")
    assert r.returncode == 0, r.stderr
    with sqlite3.connect(agent.db) as conn:
        args = dict(conn.execute("select id, args from commands").fetchall())
    assert json.loads(args["numeric-text"]) == {"line": "12", "hold_ms": 0.0}
    typed = next(json.loads(a) for cid, a in args.items() if cid != "numeric-text")
    assert typed == {"count": 12, "ratio": 0.5, "mode": "slow", "tags": ["x"]}


def test_usage_errors_exit_2_without_a_traceback(agent):
    """argparse mistakes (unknown command, bad option value) exit 2 with usage, never a traceback."""
    for args in (("frobnicate",), ("send",), ("send", "agent.ping", "--wait", "soon"), ("history", "-n", "x")):
        r = agent.cli(*args)
        assert r.returncode == 2, (args, r.stderr)
        assert "Traceback" not in r.stderr and "usage:" in r.stderr


# --------------------------------------------------------------------------- bad database files


def test_a_file_that_is_not_a_database(agent):
    """A database path holding something else: send, history, status and run fail with exit 1 and leave the file alone."""
    content = b"my shopping list: eggs, milk, bread\n" * 40
    agent.db.write_bytes(content)
    assert_one_line_error(agent.cli("send", "agent.ping"), 1, str(agent.db), "not an edge-agent database")
    assert_one_line_error(agent.cli("history"), 1, "not an edge-agent database")
    r = agent.cli("status")
    assert r.returncode == 1 and "not an edge-agent database" in r.stdout and "Traceback" not in r.stderr
    r = agent.cli("run")
    assert r.returncode == 1 and "cannot start" in r.stderr and "not an edge-agent database" in r.stderr
    assert "Traceback" not in r.stderr
    assert agent.db.read_bytes() == content


@pytest.fixture
def read_only():
    """Make a file read-only for this process: chmod for a normal user; for root, which ignores
    permissions, the immutable attribute (chattr +i), else the test is skipped. Undone at teardown."""
    made: list[Path] = []

    def make(path: Path) -> None:
        path.chmod(0o444)
        made.append(path)
        if os.geteuid() != 0:
            return
        chattr = shutil.which("chattr")
        if chattr is None:
            pytest.skip("running as root and chattr is not installed: cannot make a file read-only for root")
        r = subprocess.run([chattr, "+i", str(path)], capture_output=True, text=True)
        if r.returncode != 0:
            pytest.skip(f"running as root and chattr +i does not work here ({r.stderr.strip()})")

    def undo(path: Path) -> None:
        if os.geteuid() == 0 and shutil.which("chattr"):
            subprocess.run(["chattr", "-i", str(path)], capture_output=True)
        path.chmod(0o600)
        made.remove(path)

    make.undo = undo  # type: ignore[attr-defined]
    yield make
    for path in list(made):
        undo(path)


def test_a_read_only_database(queued, read_only):
    """A read-only database: send and run fail with exit 1 saying so; reading still works; the queued command survives."""
    read_only(queued.db)
    assert_one_line_error(queued.cli("send", "agent.ping"), 1, str(queued.db), "read-only")
    r = queued.cli("history")
    assert r.returncode == 0 and "kept" in r.stdout, r.stderr
    r = queued.cli("run")
    assert r.returncode == 1 and "cannot start" in r.stderr and "read-only" in r.stderr and "Traceback" not in r.stderr
    read_only.undo(queued.db)
    queued.start()
    assert wait_state(queued.db, "kept") == "succeeded"
    assert queued.lines.read_text() == "kept\n"


# --------------------------------------------------------------------------- with the daemon


def test_send_while_the_daemon_is_down_runs_after_it_starts(agent):
    """send with no daemon prints the id and a note, exits 0; the command runs once the daemon starts."""
    r = agent.cli("send", "qa_append", "line=later")
    assert r.returncode == 0, r.stderr
    cid = r.stdout.strip()
    assert len(cid) == 32 and all(c in "0123456789abcdef" for c in cid)
    assert "daemon is not running" in r.stderr and "runs when it starts" in r.stderr
    assert journal(agent.db)[cid][1] == "queued"
    agent.start()
    assert wait_state(agent.db, cid) == "succeeded"
    assert agent.lines.read_text() == "later\n"


def test_send_wait_exit_codes_follow_the_outcome(agent):
    """send --wait exits 0 when the command succeeded and 1 when it failed, printing the outcome."""
    agent.start()
    ok = agent.cli("send", "qa_append", "line=w", "--wait", "10")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.splitlines()[-1] == 'succeeded: {"line": "w"}'
    bad = agent.cli("send", "qa_fail", "reason=broken on purpose", "--wait", "10")
    assert bad.returncode == 1, bad.stderr
    assert bad.stdout.splitlines()[-1] == "failed: permanent: broken on purpose"
    doc = json.loads(agent.cli("send", "qa_fail", "--wait", "10", "--json").stdout)
    assert (doc["status"], doc["error"], doc["attempt"]) == ("failed", {"type": "permanent", "message": "on purpose"}, 1)
    doc = json.loads(agent.cli("send", "agent.ping", "--wait", "10", "--json").stdout)
    assert doc["status"] == "succeeded" and doc["result"]["device"] == "qa"


def test_a_repeated_id_runs_once_and_is_reported_duplicate(agent):
    """A second send with the same --id does not run again: it reports the stored outcome, marked duplicate."""
    agent.start()
    first = agent.cli("send", "qa_append", "line=once", "--id", "job-42", "--wait", "10", "--json")
    assert first.returncode == 0, first.stderr
    again = agent.cli("send", "qa_append", "line=once", "--id", "job-42", "--wait", "10", "--json")
    assert again.returncode == 0, again.stderr
    doc = json.loads(again.stdout)
    assert doc["duplicate"] is True and doc["status"] == "succeeded" and doc["result"] == {"line": "once"}
    plain = agent.cli("send", "qa_append", "line=once", "--id", "job-42")
    assert plain.stdout.strip() == "job-42"
    assert "already known (succeeded)" in plain.stderr and "not queued again" in plain.stderr
    assert agent.cli("send", "qa_append", "line=once", "--id", "job-42", "--json").stdout.count('"duplicate": true') == 1
    assert journal(agent.db)["job-42"] == ("qa_append", "succeeded", 1)
    assert agent.lines.read_text() == "once\n"


def test_history_json_shape(agent):
    """history --json prints {"commands": [...]} newest first: the reply fields plus created, source, args, and
    state (queued, parked, retrying, running or the outcome), parked, next_attempt and max_attempts."""
    agent.start()
    assert agent.cli("send", "qa_append", "line=h1", "--id", "h1", "--wait", "10").returncode == 0
    assert agent.cli("send", "qa_fail", "--id", "h2", "--wait", "10").returncode == 1
    r = agent.cli("history", "--json", "-n", "5")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert list(doc) == ["commands"]
    newest, older = doc["commands"]
    assert set(newest) == {"id", "action", "status", "result", "error", "attempt", "ts", "created", "source", "args",
                           "state", "parked", "next_attempt", "max_attempts"}
    assert newest["state"] == "failed" and newest["parked"] is False
    assert (newest["id"], newest["status"], newest["error"]["type"], newest["source"]) == ("h2", "failed", "permanent", "cli")
    assert (older["id"], older["status"], older["result"], older["args"]) == ("h1", "succeeded", {"line": "h1"}, {"line": "h1"})
    assert isinstance(older["ts"], float) and isinstance(older["created"], float)
    human = agent.cli("history")
    assert human.returncode == 0 and "h1" in human.stdout and "permanent: on purpose" in human.stdout


def test_status_json_shape(agent):
    """status --json describes daemon, clock, MQTT, queue, outbox and failures; exit 0 only while the daemon runs."""
    r = agent.cli("status", "--json")
    assert r.returncode == 1 and json.loads(r.stdout)["daemon"]["running"] is False
    agent.start()
    agent.cli("send", "qa_fail", "--id", "sf", "--wait", "10")
    r = agent.cli("status", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert {"device", "version", "config", "database", "daemon", "clock", "mqtt", "queue", "outbox", "waiting",
            "failures"} <= set(doc)
    assert doc["device"] == "qa" and doc["database"] == str(agent.db)
    assert doc["daemon"]["running"] is True and doc["daemon"]["pid"] == agent.proc.pid
    assert isinstance(doc["daemon"]["since"], float)
    assert doc["clock"]["synchronized"] is True and doc["clock"]["trust"] == "always"
    assert doc["mqtt"] == {"configured": False}
    assert doc["queue"] == {"queued": 0, "running": 0, "parked": 0, "retrying": 0}
    assert doc["outbox"] == {"depth": 0, "oldest_s": None}
    assert [f["id"] for f in doc["failures"]] == ["sf"]
    assert doc["failures"][0]["error"] == {"type": "permanent", "message": "on purpose"}
    human = agent.cli("status")
    assert human.returncode == 0 and f"running, pid {agent.proc.pid}" in human.stdout


def test_a_second_daemon_on_the_same_database_refuses(agent):
    """A second `run` on the same database exits non-zero saying another agent is already running; the first goes on."""
    agent.start()
    r = agent.cli("run", timeout=20)
    assert r.returncode != 0
    assert "already running" in r.stderr and f"pid {agent.proc.pid}" in r.stderr and "Traceback" not in r.stderr
    ok = agent.cli("send", "qa_append", "line=still", "--wait", "10")
    assert ok.returncode == 0, ok.stderr


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_stop_signals_drain_running_commands(agent, signum):
    """SIGTERM and SIGINT let a running command finish (it is not interrupted), then exit 0."""
    agent.start()
    r = agent.cli("send", "qa_append_once", "line=slow", "hold_ms=1500", "--id", "slow")
    assert r.returncode == 0, r.stderr
    wait_state(agent.db, "slow", ("running",))
    agent.proc.send_signal(signum)
    assert agent.proc.wait(20) == 0
    agent.proc = None
    assert journal(agent.db)["slow"] == ("qa_append_once", "succeeded", 1)
    log = agent.log.read_text()
    assert "draining: 1 command(s) running" in log and "Traceback" not in log
    assert log.rstrip().endswith("stopped")


def test_delay_from_another_process_runs_in_the_daemon(agent):
    """`task.delay()` in any process (config from $EDGE_AGENT_CONFIG) queues a command the daemon runs; bad args raise first."""
    agent.start()
    code = (f"import sys; sys.path.insert(0, {str(ROOT / 'tests' / 'tasks')!r})\n"
            "import qa_tasks\n"
            "from edge_agent.errors import InvalidArguments\n"
            "try:\n"
            "    qa_tasks.qa_typed.delay(count='one', ratio=1)\n"
            "except InvalidArguments as exc:\n"
            "    print('refused:', exc)\n"
            "pending = qa_tasks.qa_append.delay('delayed')\n"
            "done = pending.wait(10)\n"
            "print(pending.id, done.state, done.result)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, cwd=ROOT,
                       env=dict(os.environ, EDGE_AGENT_CONFIG=str(agent.config)))
    assert r.returncode == 0, r.stderr
    refused, outcome = r.stdout.splitlines()
    assert refused == "refused: qa_typed: argument 'count' must be int, got 'one'"
    cid, state, result = outcome.split(" ", 2)
    assert (state, result) == ("succeeded", "{'line': 'delayed'}")
    assert journal(agent.db) == {cid: ("qa_append", "succeeded", 1)}
    assert agent.lines.read_text() == "delayed\n"


def _imported(*args: str) -> set[str]:
    r = subprocess.run([sys.executable, "-X", "importtime", "-m", "edge_agent", *args], capture_output=True, text=True,
                       timeout=30, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    return {line.split("|")[-1].strip() for line in r.stderr.splitlines() if line.startswith("import time:")}


def test_the_cli_starts_without_modules_it_does_not_need():
    """Start-up cost on a 1 GHz CPU: `--help` loads neither astral, paho, huey nor gpiozero, and no command
    loads shutil (argparse's formatter would, with bz2 and lzma); `sun` loads astral, which it needs."""
    help_modules = _imported("--help")
    assert not help_modules & {"astral", "paho", "huey", "gpiozero", "shutil", "sqlite3"}, help_modules
    sun = _imported("sun", "--lat", "41", "--lon", "29", "--tz", "Europe/Istanbul", "--date", "2026-06-21")
    assert "astral" in sun and not sun & {"shutil", "paho", "huey", "gpiozero"}, sun


# --------------------------------------------------------------------------- pins, history, --wait, monitor


def test_check_and_run_refuse_what_the_daemon_could_not_use(tmp_path: Path):
    """`pin = "banana"`, two devices on one pin, a TLS ca_file that holds no certificate: `check` and `run` alike
    exit 2 with one line naming the key, and `run` opens nothing (before, check said OK and run failed later:
    exit 1 for the pin, an MQTT thread dead with a traceback for the CA)."""
    junk = tmp_path / "ca.pem"
    junk.write_text("not a certificate\n")
    for tables, words in (
            ({"devices": {"lamp": {"kind": "output", "pin": "banana"}}}, ("devices.lamp.pin", "banana is not a valid pin")),
            ({"devices": {"lamp": {"kind": "output", "pin": 17}, "door": {"kind": "input", "pin": "BOARD11"}}},
             ("devices.door.pin", "already used by device 'lamp'")),
            ({"mqtt_port": free_port(), "mqtt": {"tls": {"ca_file": str(junk)}}}, ("mqtt.tls.ca_file", "no usable certificate"))):
        config = agent_config(tmp_path, **tables)
        for command in ("check", "run"):
            r = run_cli(command, "--config", str(config))
            assert_one_line_error(r, 2, str(config), *words)
            assert r.stdout == ""
        assert not (tmp_path / "agent.db").exists()


def test_history_leaves_out_queries_and_keeps_each_command_on_one_line(daemon_factory, tmp_path: Path):
    """`history` leaves out the fleet's and the monitor's queries (agent.status, agent.jobs, agent.history) unless
    --all; each command is one line
    however long its result or error, with its whole id and its time with the UTC offset, as `jobs` prints."""
    from tests.configs import ISTANBUL

    d = daemon_factory(agent_config(tmp_path, device="qa", devices=LAMP, tasks="qa_tasks", location=ISTANBUL),
                       env={"EDGE_AGENT_TEST_FILE": str(tmp_path / "lines.txt"), "COLUMNS": "140"})
    d.start()
    long_id = "order-" + "x" * 100
    assert d.cli("send", "qa_append", "line=" + "y" * 5000, "--id", long_id, "--wait", "10").returncode == 0
    assert d.cli("send", "qa_fail", "reason=first line\nsecond line\x1b[2J " + "z" * 3000, "--wait", "10").returncode == 1
    for query in [("agent.history",), ("agent.jobs",), ("agent.status",), ("agent.ping",), ("gpio.read", "device=lamp")]:
        assert d.cli("send", *query, "--wait", "10").returncode == 0
    r = d.cli("history")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert [line.split()[2] for line in lines] == ["gpio.read", "agent.ping", "qa_fail", "qa_append"], r.stdout
    failed, done = lines[2:]
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+03:00  failed +qa_fail +try 1 ", failed), failed
    assert "permanent: first line second line" in failed and "\x1b" not in failed and len(failed) <= 140
    assert f" {long_id}  " in done and done.endswith("…") and len(done) <= 140 + len(long_id)
    everything = d.cli("history", "--all").stdout.splitlines()
    assert [line.split()[2] for line in everything] == ["gpio.read", "agent.ping", "agent.status", "agent.jobs",
                                                        "agent.history", "qa_fail", "qa_append"]
    assert all(len(line) <= 140 for line in everything[:-1]), everything
    doc = json.loads(d.cli("history", "--json").stdout)
    assert [c["action"] for c in doc["commands"]] == ["gpio.read", "agent.ping", "qa_fail", "qa_append"]
    assert len(json.loads(d.cli("history", "--json", "--all").stdout)["commands"]) == 7


@pytest.mark.slow
def test_send_wait_says_parked_for_a_parked_command(agent):
    """`send --wait` that ends before a command parked for the network names its state `parked`, as status does."""
    agent.start()
    url = f"http://127.0.0.1:{free_port()}/"  # nothing listens: connection refused, so the command parks
    r = agent.cli("send", "http.request", f"url={url}", "--wait", "1.5")
    assert r.returncode == 1 and "no outcome after 1.5s (state: parked)" in r.stderr, r.stderr
    doc = json.loads(agent.cli("send", "http.request", f"url={url}", "--wait", "1", "--json").stdout)
    assert (doc["status"], doc["timeout"]) == ("parked", True)


def _monitor_config(tmp_path: Path) -> Path:
    return agent_config(tmp_path, mqtt_port=free_port())


def test_monitor_without_its_extra_says_what_to_install(tmp_path: Path):
    """Without the [monitor] extra (uvicorn missing), `monitor` is one line saying what to install, exit 2."""
    shadow = tmp_path / "shadow" / "uvicorn"
    shadow.mkdir(parents=True)  # an installed package that is not there: how a missing extra looks to Python
    (shadow / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'uvicorn'\", name='uvicorn')\n")
    r = run_cli("monitor", "--config", str(_monitor_config(tmp_path)), env={"PYTHONPATH": str(shadow.parent)})
    assert_one_line_error(r, 2, "No module named 'uvicorn'", "pip install 'edge-agent[monitor]'")


def test_monitor_password_file_missing_or_empty_says_how_to_make_it(tmp_path: Path):
    """A --password-file that is missing or empty is one line saying how to create it, exit 2, before anything starts."""
    config, secret = _monitor_config(tmp_path), tmp_path / "monitor.secret"
    db = tmp_path / "monitor.db"
    r = run_cli("monitor", "--config", str(config), "--db", str(db), "--password-file", str(secret))
    assert_one_line_error(r, 2, f"--password-file {secret}: no such file", f"openssl rand -base64 24 > {secret}")
    secret.write_text("\n")
    r = run_cli("monitor", "--config", str(config), "--db", str(db), "--password-file", str(secret))
    assert_one_line_error(r, 2, f"--password-file {secret}: the first line is empty")
    assert not db.exists()
