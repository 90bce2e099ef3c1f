"""``edge-agent monitor`` end to end in a real headless browser: a real mosquitto, three real agents, the monitor process.

One setup for the whole module (the agents, the monitor and one Chromium), shared by
the tests in order; screenshots of each page are kept as test artifacts in
``tests/artifacts/monitor/`` (or ``$EDGE_AGENT_ARTIFACTS/monitor/``; printed at the end). Needs Debian's ``chromium`` and ``chromium-driver`` and the
``monitor`` extra; skipped without them.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bench import harness
from tests.conftest import ROOT, Broker, Daemon, Listener, free_port, wait_port

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
webdriver = pytest.importorskip("selenium.webdriver")

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
PASSWORD = "correct horse battery staple"
DEVICES = ("dev1", "dev2", "dev3")
XSS_ID = '<img src=x onerror="window.__xss=1">'
XSS_TEXT = "<script>window.__xss=2</script>"

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)),
                                                   reason="chromium and chromium-driver are not installed")]

TASKS = '''
from edge_agent import task

@task(retries=2, retry_delay="0.2s")
def flaky(note: str = "") -> dict:
    raise RuntimeError(f"always fails: {note}")

@task(retries=3, retry_delay="60s")
def patient(note: str = "") -> dict:
    raise RuntimeError(f"not yet: {note}")

@task()
def echo(text: str) -> dict:
    return {"text": text}
'''


def agent_config(folder: Path, device: str, port: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "monitor_tasks.py").write_text(TASKS)
    path = folder / "config.toml"
    path.write_text(textwrap.dedent(f"""\
        [device]
        id = "{device}"
        [location]
        latitude = 41.0082
        longitude = 28.9784
        timezone = "Europe/Istanbul"
        [storage]
        path = "{folder}/agent.db"
        [clock]
        trust = "always"
        [mqtt]
        host = "127.0.0.1"
        port = {port}
        topic_prefix = "edge"
        discovery = false
        [gpio]
        pin_factory = "mock"
        [devices.lamp]
        kind = "output"
        pin = 17
        [devices.porch]
        kind = "output"
        pin = 18
        [tasks]
        modules = ["monitor_tasks"]
        paths = ["{folder}"]
        [[jobs]]
        name = "porch-off"
        cron = "0 23 * * *"
        action = "gpio.set"
        args = {{ device = "porch", value = "off" }}
        [[windows]]
        device = "porch"
        from = "sunset-15m"
        until = "23:00"
        """))
    return path


class MonitorProcess:
    """``edge-agent monitor`` as a child process on a free port, with its own SQLite file."""

    def __init__(self, folder: Path, broker_port: int):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.db = folder / "monitor.db"
        (folder / "password").write_text(PASSWORD + "\n")
        self.config = folder / "monitor.toml"
        self.config.write_text(textwrap.dedent(f"""\
            [device]
            id = "monitor"
            [location]
            latitude = 41.0082
            longitude = 28.9784
            timezone = "Europe/Istanbul"
            [mqtt]
            host = "127.0.0.1"
            port = {broker_port}
            topic_prefix = "edge"
            """))
        self.log = folder / "monitor.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "edge_agent", "monitor", "--config", str(self.config),
                                          "--listen", f"127.0.0.1:{self.port}", "--db", str(self.db),
                                          "--password-file", str(self.folder / "password")],
                                         stdout=subprocess.DEVNULL, stderr=log, cwd=ROOT)
        wait_port(self.port, 20)

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(20)
        self.proc = None
        return rc

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=10) as r:
            body = r.read()
        return json.loads(body) if path.startswith("/api/") else body.decode()

    def metric(self, name: str) -> float:
        for line in self.get("/metrics").splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        raise AssertionError(f"no metric {name}")


def wait_until(pred: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    """:func:`bench.harness.wait_until` for a page: an exception (a page still loading, an element
    not yet there) counts as not yet."""
    last: list[Any] = [None]

    def ready() -> Any:
        try:
            last[0] = pred()
        except Exception as exc:
            last[0] = exc
            return None
        return last[0]

    return harness.wait_until(ready, timeout, interval=0.1, message=lambda: f"timed out waiting for {what}; last: {last[0]!r}")


class Setup:
    def __init__(self, folder: Path):
        self.folder = folder
        base = os.environ.get("EDGE_AGENT_ARTIFACTS") or Path(__file__).resolve().parent / "artifacts"
        self.shots = Path(base) / "monitor"
        shutil.rmtree(self.shots, ignore_errors=True)
        self.shots.mkdir(parents=True)
        self.broker = Broker(folder)
        self.broker.start()
        self.agents = {d: Daemon(agent_config(folder / d, d, self.broker.port)) for d in DEVICES}
        for agent in self.agents.values():
            agent.start()
        self.monitor = MonitorProcess(folder / "monitor", self.broker.port)
        self.monitor.start()
        self.listener = Listener(self.broker.port, ["edge/+/cmd/#", "edge/+/reply", "edge/+/events"])
        self.driver = self._browser(folder / "chromium")
        self.fleet: Any = None

    @staticmethod
    def _browser(profile: Path) -> Any:
        from selenium.webdriver.chrome.service import Service

        os.environ.setdefault("SE_AVOID_STATS", "true")
        opts = webdriver.ChromeOptions()
        opts.binary_location = CHROMIUM
        for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    "--disable-dev-shm-usage", "--window-size=1280,1400", f"--user-data-dir={profile}"):
            opts.add_argument(arg)
        return webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)

    def shot(self, name: str) -> Path:
        path = self.shots / f"{name}.png"
        self.driver.save_screenshot(str(path))
        return path

    def login(self) -> None:
        d = self.driver
        d.get(self.monitor.url + "/login")
        d.find_element("id", "password").send_keys(PASSWORD)
        d.find_element("css selector", "#login button").click()
        wait_until(lambda: any(c["name"] == "em_session" for c in d.get_cookies()), what="the session cookie")

    def publish_command(self, device: str, action: str, command_id: str, args: dict[str, Any]) -> None:
        self.listener.publish(f"edge/{device}/cmd/{action}", {"id": command_id, "args": args})

    def final_replies(self, prefix: str) -> list[dict[str, Any]]:
        with self.listener.cond:
            docs = [json.loads(m.payload) for m in self.listener.messages if m.topic.endswith("/reply")]
        return [d for d in docs if str(d.get("id", "")).startswith(prefix) and d.get("status") not in ("accepted",)]

    def close(self) -> None:
        for step in (self.driver.quit, self.listener.close, *(a.kill for a in self.agents.values() if a.proc),
                     lambda: self.monitor.stop() if self.monitor.proc else None,
                     lambda: self.fleet.close() if self.fleet else None, self.broker.stop):
            try:
                step()
            except Exception:
                pass
        print(f"\nmonitor screenshots: {self.shots}")


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    s = Setup(tmp_path_factory.mktemp("monitor-e2e"))
    try:
        yield s
    finally:
        s.close()
        if os.environ.get("EDGE_AGENT_MONITOR_SHOTS"):
            dest = Path(os.environ["EDGE_AGENT_MONITOR_SHOTS"])
            dest.mkdir(parents=True, exist_ok=True)
            for png in s.shots.glob("*.png"):
                shutil.copy(png, dest / png.name)


def fleet_status(driver: Any, device: str) -> str:
    return str(driver.execute_script(
        "const r = [...document.querySelectorAll('#fleet tbody tr')].find(r => r.dataset.device === arguments[0]);"
        "return r ? r.querySelector('[data-f=status]').textContent : null;", device))


def test_fleet_page_lists_three_devices_online(setup: Setup) -> None:
    """The fleet page lists the three real agents, each online with its version."""
    d = setup.driver
    wait_until(lambda: len(setup.monitor.get("/api/devices")["devices"]) == 3, 15, "3 devices in the monitor")
    d.get(setup.monitor.url + "/")
    for dev in DEVICES:
        assert fleet_status(d, dev) == "online"
    assert "3 of 3 online" in d.find_element("id", "count").text
    setup.shot("fleet")


def test_send_without_login_is_refused(setup: Setup) -> None:
    """A send from the device page without a login is refused, and no command reaches the broker."""
    d = setup.driver
    d.delete_all_cookies()
    d.get(setup.monitor.url + "/device/dev1")
    before = len(setup.listener.messages)
    d.find_element("id", "send-args").send_keys("device=lamp value=on")
    d.find_element("id", "send-button").click()
    result = wait_until(lambda: d.find_element("id", "send-result").text if "refused" in d.find_element("id", "send-result").text
                        else None, 10, "the refusal")
    assert "log in" in result
    assert "log in" in result
    time.sleep(0.5)  # not synchronisation: room for a command that would (wrongly) be sent to arrive
    with setup.listener.cond:
        sent = [m.topic for m in setup.listener.messages[before:] if "/cmd/" in m.topic]
    assert sent == []
    # the same without the page's script: a plain form post with no session
    req = urllib.request.Request(setup.monitor.url + "/device/dev1/send", data=b"action=gpio.set&args=device%3Dlamp", method="POST")
    with pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.urlopen(req, timeout=10)
    assert exc.value.code == 403
    exc.value.close()


def test_gpio_set_from_device_page_replies_live_and_shows_on_day_picture(setup: Setup) -> None:
    """Logged in, a gpio.set sent from the device page shows its replies live and lands on the day picture."""
    d = setup.driver
    setup.login()
    d.get(setup.monitor.url + "/device/dev1")
    d.execute_script("window.__sameDocument = 1")
    d.find_element("id", "send-args").send_keys("device=lamp value=on")
    d.find_element("id", "send-button").click()
    command_id = wait_until(lambda: d.find_element("id", "send-result").get_attribute("data-id"), 10, "the command id")
    wait_until(lambda: d.execute_script(
        "return [...document.querySelectorAll('#replies li')].some(li => li.dataset.id === arguments[0] && "
        "li.dataset.status === 'succeeded')", command_id), 10, "the succeeded reply on the page")
    wait_until(lambda: d.execute_script(
        "return !!document.querySelector('#day svg [data-id=\"' + CSS.escape(arguments[0]) + '\"]')", command_id),
        10, "the command on the day picture")
    wait_until(lambda: d.execute_script("return !!document.querySelector('#day svg rect.gpio.on[data-pin=lamp]')"),
               10, "lamp on in the GPIO row")
    assert d.execute_script("return window.__sameDocument") == 1  # live, not a reload
    setup.shot("device")


def test_task_failing_after_retries_shows_each_attempt(setup: Setup) -> None:
    """A task that fails after two retries shows its three attempts, each with its error, and its events."""
    d = setup.driver
    setup.publish_command("dev2", "flaky", "flaky-1", {"note": "disk full"})
    wait_until(lambda: any(r["status"] == "failed" for r in setup.final_replies("flaky-1")), 20, "the task to fail")
    wait_until(lambda: setup.monitor.get("/api/tasks/dev2/flaky-1")["task"]["status"] == "failed", 10, "failed in the monitor")
    d.get(setup.monitor.url + "/task/dev2/flaky-1")
    rows = d.find_elements("css selector", "#attempts tbody tr")
    assert [r.find_elements("tag name", "td")[0].text for r in rows] == ["1", "2", "3"]
    outcomes = [r.find_elements("tag name", "td")[4].text for r in rows]  # (#, started, ended, took, outcome, error)
    assert outcomes == ["failed, retried", "failed, retried", "failed"]
    for r in rows:
        assert "always fails: disk full" in r.find_elements("tag name", "td")[5].text
    kinds = [r.find_elements("tag name", "td")[2].text for r in d.find_elements("css selector", "#events tbody tr")]
    assert kinds[0] == "received" and kinds[-1] == "failed" and kinds.count("started") == 3 and kinds.count("retried") == 2
    setup.shot("task-failed")
    d.get(setup.monitor.url + "/tasks?status=failed&device=dev2")
    assert "flaky-1" in d.find_element("id", "tasks").text


def test_revoke_from_the_task_page_ends_a_retry_waiting_task(setup: Setup) -> None:
    """A task waiting 60 s for its retry is revoked from its page: the device says revoked, the page shows it."""
    d = setup.driver
    setup.publish_command("dev1", "patient", "patient-1", {})
    wait_until(lambda: (setup.monitor.get("/api/tasks/dev1/patient-1").get("task") or {}).get("status") == "retrying",
               15, "the task to wait for its retry")
    d.get(setup.monitor.url + "/task/dev1/patient-1")
    d.find_element("css selector", "#revoke button").click()
    wait_until(lambda: "revoke sent" in d.find_element("tag name", "main").text, 10, "the revoke to be sent")
    wait_until(lambda: any(r["status"] == "revoked" for r in setup.final_replies("patient-1")), 10, "the device to revoke it")
    wait_until(lambda: d.find_element("id", "task-status").text == "revoked", 10, "revoked on the page, live")
    # ... and it stays so once the page's own look at the task (when its stream opened) has answered: an
    # answer read before the change must not undo what the stream said since.
    wait_until(lambda: d.execute_script("return document.body.dataset.refreshed") == "1", 10, "the page's refresh")
    assert d.find_element("id", "task-status").text == "revoked"
    d.get(setup.monitor.url + "/task/dev1/patient-1")
    kinds = [r.find_elements("tag name", "td")[2].text for r in d.find_elements("css selector", "#events tbody tr")]
    assert kinds[-1] == "revoked" and not d.find_elements("id", "revoke")


def test_a_job_is_paused_resumed_and_run_from_the_device_page(setup: Setup) -> None:
    """Logged in, the jobs table's buttons send job.pause, job.resume and job.run (through the send route, with
    its CSRF check); after each reply the page shows the job as the device now reports it."""
    from selenium.webdriver.support.expected_conditions import staleness_of

    d = setup.driver
    setup.login()
    page = setup.monitor.url + "/device/dev2"

    def row() -> Any:
        d.get(page)
        return d.find_element("xpath", "//table[@id='jobs']//tr[td[1][starts-with(normalize-space(), 'porch-off')]]")

    def click(label: str) -> None:
        button = wait_until(lambda: row().find_element("xpath", f".//button[text()='{label}']"), 15, f"the {label} button")
        button.click()
        # The form's POST navigates away from this page: wait for that before the next row() loads
        # the page again (a load started first would cancel the submission, and nothing is sent).
        wait_until(lambda: staleness_of(button)(d), 15, f"the {label} form to be sent")
        action = {"pause": "job.pause", "resume": "job.resume", "run now": "job.run"}[label]

        def sent() -> bool:
            with setup.listener.cond:
                return any(m.topic == f"edge/dev2/cmd/{action}" for m in setup.listener.messages)

        wait_until(sent, 10, f"{action} on the broker")

    assert wait_until(lambda: row().find_element("css selector", "td.origin").text, 15, "the origin") == "config"
    click("pause")
    wait_until(lambda: "paused" in row().find_element("tag name", "td").text, 15, "porch-off shown paused")
    setup.shot("device-job-paused")
    click("resume")
    wait_until(lambda: "paused" not in row().find_element("tag name", "td").text
               and row().find_elements("xpath", ".//button[text()='pause']"), 15, "porch-off shown running again")
    click("run now")
    run = wait_until(lambda: next((r for r in setup.final_replies("") if r.get("action") == "job.run"), None), 15,
                     "the job.run reply")
    assert run["status"] == "succeeded" and run["result"]["id"].startswith("job:porch-off:run:"), run
    with setup.listener.cond:
        sent = [json.loads(m.payload)["id"] for m in setup.listener.messages if m.topic == "edge/dev2/cmd/job.run"]
    assert sent == [run["id"]]  # one command, from the button


def test_script_in_device_id_and_payload_renders_as_inert_text(setup: Setup) -> None:
    """A device id and a task's args and result holding markup show as text and run nothing."""
    from bench.simfleet import SimFleet

    d = setup.driver
    setup.fleet = SimFleet(setup.broker.port, [XSS_ID])
    setup.fleet.online_all()
    setup.fleet.task(XSS_ID, f"x-{XSS_TEXT}", "echo", {"text": XSS_TEXT}, result={"text": XSS_TEXT})
    setup.publish_command("dev1", "echo", "echo-xss", {"text": XSS_TEXT})
    wait_until(lambda: setup.monitor.get("/api/tasks/dev1/echo-xss")["task"]["status"] == "succeeded", 10, "the echo task")
    d.get(setup.monitor.url + "/")
    try:
        wait_until(lambda: fleet_status(d, XSS_ID) == "online", 10, "the odd device")
    except AssertionError:
        print(d.find_element("id", "fleet").get_attribute("outerHTML"), d.get_log("browser"))
        raise
    assert XSS_ID in d.find_element("id", "fleet").text
    d.find_element("link text", XSS_ID).click()
    wait_until(lambda: XSS_ID in d.find_element("tag name", "h1").text, 10, "the odd device's page")
    assert f"x-{XSS_TEXT}" in d.find_element("id", "tasks").text
    d.get(setup.monitor.url + "/task/dev1/echo-xss")
    assert XSS_TEXT in d.find_element("id", "args").text and XSS_TEXT in d.find_element("id", "result").text
    d.get(setup.monitor.url + "/tasks")
    assert f"x-{XSS_TEXT}" in d.find_element("id", "tasks").text
    assert d.execute_script("return window.__xss") is None
    assert not d.find_elements("css selector", "main img, main script")
    setup.shot("inert")


def test_sigkilled_agent_turns_offline_without_reload(setup: Setup) -> None:
    """SIGKILL one agent: its row on the open fleet page says offline within a few seconds, with no reload."""
    d = setup.driver
    d.get(setup.monitor.url + "/")
    assert fleet_status(d, "dev3") == "online"
    d.execute_script("window.__sameDocument = 1")
    t0 = time.monotonic()
    setup.agents["dev3"].kill()
    wait_until(lambda: fleet_status(d, "dev3") == "offline", 5, "dev3 offline on the page")
    took = time.monotonic() - t0
    assert d.execute_script("return window.__sameDocument") == 1
    setup.shot("fleet-offline")
    print(f"offline on the page {took:.2f} s after SIGKILL")
    setup.agents["dev3"].start()
    wait_until(lambda: fleet_status(d, "dev3") == "online", 10, "dev3 back online")


def test_an_open_fleet_page_catches_up_when_its_stream_comes_back(setup: Setup) -> None:
    """The monitor restarts under an open fleet page, and an agent dies while it is down: the monitor
    hears the agent's last will at its start, before the page's stream is back; once back, the page
    asks for the devices and the row says offline, with no reload."""
    d = setup.driver
    d.get(setup.monitor.url + "/")
    wait_until(lambda: fleet_status(d, "dev3") == "online", 10, "dev3 online on the page")
    d.execute_script("window.__sameDocument = 1")
    assert setup.monitor.stop() == 0
    wait_until(lambda: "on" not in d.find_element("id", "live").get_attribute("class").split(), 10, "the stream gone")
    setup.agents["dev3"].kill()
    status = Listener(setup.broker.port, ["edge/dev3/status"])  # the broker holds the last will
    try:
        status.wait_for(lambda m: m.payload == b"offline", 10)
    finally:
        status.close()
    setup.monitor.start()
    try:
        wait_until(lambda: "on" in d.find_element("id", "live").get_attribute("class").split(), 15, "the page's stream back")
        wait_until(lambda: fleet_status(d, "dev3") == "offline", 5, "dev3 offline on the page")
        assert d.execute_script("return window.__sameDocument") == 1
    finally:
        setup.agents["dev3"].start()
    wait_until(lambda: fleet_status(d, "dev3") == "online", 10, "dev3 back online")

    # The tasks page likewise: a task that ran while the monitor was down shows once the stream is back,
    # with a cell for each column (this page has a device column).
    d.get(setup.monitor.url + "/tasks")
    wait_until(lambda: "on" in d.find_element("id", "live").get_attribute("class").split(), 10, "the stream")
    d.execute_script("window.__sameDocument = 1")
    assert setup.monitor.stop() == 0
    setup.publish_command("dev1", "echo", "while-away", {"text": "nobody watching"})
    wait_until(lambda: any(r["status"] == "succeeded" for r in setup.final_replies("while-away")), 10, "the echo")
    setup.monitor.start()
    row = "#tasks tbody tr[data-id='while-away']"
    wait_until(lambda: d.find_element("css selector", row + " [data-f=status]").text == "succeeded", 15,
               "the task that ran while the monitor was down, on the page")
    header = d.find_elements("css selector", "#tasks thead th")
    cells = d.find_elements("css selector", row + " td")
    assert [c.text for c in cells[:2]][1] == "dev1" and len(cells) == len(header), [c.text for c in cells]
    assert d.execute_script("return window.__sameDocument") == 1


def test_monitor_stopped_while_50_commands_run_shows_all_50_after_restart(setup: Setup) -> None:
    """With the monitor down, 50 commands run on an agent; started again, it fetches them with agent.history."""
    d = setup.driver
    assert setup.monitor.stop() == 0
    for i in range(50):
        setup.publish_command("dev2", "echo", f"down-{i:02d}", {"text": f"while down {i}"})
    wait_until(lambda: len([r for r in setup.final_replies("down-") if r["status"] == "succeeded"]) >= 50, 30,
               "50 commands to succeed")
    assert setup.monitor.proc is None  # nobody heard them live
    setup.monitor.start()
    wait_until(lambda: len(setup.monitor.get("/api/tasks?device=dev2&action=echo&limit=200")["tasks"]) >= 50, 20,
               "50 tasks backfilled")
    tasks = setup.monitor.get("/api/tasks?device=dev2&action=echo&limit=200")["tasks"]
    assert sorted(t["id"] for t in tasks) == [f"down-{i:02d}" for i in range(50)]
    assert all(t["status"] == "succeeded" and t["result"] == {"text": t["args"]["text"]} for t in tasks)
    d.get(setup.monitor.url + "/tasks?device=dev2&action=echo&limit=100")
    rows = d.find_elements("css selector", "#tasks tbody tr")
    assert len(rows) == 50
    setup.shot("tasks-backfilled")


def test_monitor_restarted_keeps_its_history(setup: Setup) -> None:
    """Restarted, the monitor shows what it had from its own file; it fetches only the events after the last seq it held."""
    d = setup.driver
    held = setup.monitor.metric("edge_monitor_events_stored")
    assert held > 50
    assert setup.monitor.stop() == 0
    heard = len(setup.listener.messages)
    setup.monitor.start()
    wait_until(lambda: len(setup.monitor.get("/api/devices")["devices"]) == 4, 10, "devices")

    def history_answered() -> set[str]:  # devices that answered this run's agent.history request
        with setup.listener.cond:
            replies = [(m.topic.split("/")[1], json.loads(m.payload)) for m in setup.listener.messages[heard:]
                       if m.topic.endswith("/reply")]
        return {dev for dev, doc in replies if str(doc.get("id")).startswith("monitor:history:") and doc.get("status") == "succeeded"}

    devices = {row["device"] for row in setup.monitor.get("/api/devices")["devices"]}
    wait_until(lambda: history_answered() >= devices, 15, "each device's answer to the backfill")
    # The monitor stores what it hears in order: once a reply sent after those answers is stored, the
    # backfill (it finds nothing new) is stored too. agent.status is quiet: it adds no events.
    setup.publish_command("dev1", "agent.status", "after-backfill", {})
    wait_until(lambda: setup.monitor.get("/api/tasks/dev1/after-backfill")["task"]["status"] == "succeeded", 10,
               "a reply heard after the backfill")
    assert setup.monitor.metric("edge_monitor_events_ingested_total") < 10  # nothing refetched
    assert setup.monitor.metric("edge_monitor_events_stored") >= held
    d.get(setup.monitor.url + "/task/dev2/flaky-1")
    assert len(d.find_elements("css selector", "#attempts tbody tr")) == 3
    d.get(setup.monitor.url + "/device/dev1")
    assert d.execute_script("return document.querySelectorAll('#day svg rect.gpio.on[data-pin=lamp]').length") >= 1
