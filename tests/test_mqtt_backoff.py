"""Reconnect backoff: capped exponential with full jitter (1 s, 2 s, 4 s ... up to the program's cap), so
that a fleet spreads its reconnects after a broker restart instead of coming back in lockstep.
One policy (edge_agent/broker.py) for the daemon (up to 60 s), `edge-agent fleet` and `edge-agent monitor` (10 s)."""

from __future__ import annotations

import random
import threading

import pytest

from edge_agent.broker import DEVICE_MAX_BACKOFF, OPERATOR_MAX_BACKOFF, STABLE_AFTER, Backoff, reconnect_delay
from edge_agent.config import MqttSettings, parse_settings
from edge_agent.device.journal import Journal
from edge_agent.device.mqtt import MqttLink
from edge_agent.device.outbox import Outbox
from edge_agent.device.store import Store


def test_delays_are_full_jitter_under_a_doubling_capped_ceiling():
    """Attempt n waits uniformly in [0, min(60, 2^n)] seconds: the samples fill that range."""
    seed = 7
    print(f"seed {seed}")
    rng = random.Random(seed)
    for failures in range(12):
        ceiling = min(DEVICE_MAX_BACKOFF, 2.0 ** failures)
        samples = [reconnect_delay(failures, rng) for _ in range(2000)]
        assert all(0.0 <= s <= ceiling for s in samples)
        assert min(samples) < 0.05 * ceiling and max(samples) > 0.95 * ceiling
        assert 0.45 * ceiling < sum(samples) / len(samples) < 0.55 * ceiling
    assert reconnect_delay(10_000, rng) <= DEVICE_MAX_BACKOFF  # no overflow however long the outage


def _reconnect_instants(devices: int, outage: float, seed: int) -> list[float]:
    """When each of ``devices`` is back, all disconnected at 0 by a broker that returns at ``outage``."""
    rng = random.Random(seed)
    out = []
    for _ in range(devices):
        t, failures = 0.0, 0
        while True:
            t += reconnect_delay(failures, rng)
            failures += 1
            if t >= outage:
                out.append(t)
                break
    return out


def test_a_fleet_spreads_its_reconnects_after_a_broker_restart():
    """300 devices, broker away for 20 s: the reconnects spread over more than 10 s, all within 90 s."""
    for seed in range(5):
        print(f"seed {seed}")
        back = _reconnect_instants(300, 20.0, seed)
        assert max(back) - min(back) >= 10.0
        assert max(back) <= 90.0
        # and not in a crowd: no second holds more than a tenth of the fleet
        per_second: dict[int, int] = {}
        for t in back:
            per_second[int(t)] = per_second.get(int(t), 0) + 1
        assert max(per_second.values()) <= 30


class _Waits:
    """Stands in for a link's stop event: records the waits instead of sleeping."""

    def __init__(self):
        self.waits: list[float] = []

    def wait(self, seconds: float) -> bool:
        self.waits.append(seconds)
        return False

    def is_set(self) -> bool:
        return False


def test_the_backoff_grows_until_a_connection_holds_then_starts_again(monkeypatch):
    """Failed attempts raise the ceiling; a connection that held STABLE_AFTER seconds resets it, one
    the broker dropped at once (a session taken over, an ACL) does not."""
    now = [1000.0]
    backoff = Backoff(DEVICE_MAX_BACKOFF, clock=lambda: now[0])
    seen: list[int] = []
    monkeypatch.setattr("edge_agent.broker.reconnect_delay", lambda failures, rng, cap, base: seen.append(failures) or 0.0)
    stop = _Waits()
    for _ in range(4):
        backoff.wait(stop)  # type: ignore[arg-type]
    assert seen == [0, 1, 2, 3] and stop.waits == [0.0] * 4
    backoff.connected()  # connected, dropped at once
    now[0] += 1.0
    backoff.wait(stop)  # type: ignore[arg-type]
    assert seen[-1] == 4
    backoff.connected()  # connected, held
    now[0] += STABLE_AFTER + 1
    backoff.wait(stop)  # type: ignore[arg-type]
    assert seen[-1] == 0


def _device_backoff(tmp_path) -> Backoff:
    settings = parse_settings({"device": {"id": "porch"}, "mqtt": {"host": "127.0.0.1"},
                               "storage": {"path": str(tmp_path / "agent.db")}})
    store = Store(settings.db_path)
    try:
        link = MqttLink(settings, store, Outbox(store), Journal(store), daemon=None)  # type: ignore[arg-type]
        link._stop = _Waits()  # type: ignore[assignment]
        link._wait_backoff()  # the link waits by its Backoff
        assert link._stop.waits and link._backoff.failures == 1  # type: ignore[attr-defined]
        return link._backoff
    finally:
        store.close()


def _fleet_backoff(tmp_path) -> Backoff:
    from edge_agent.fleet.client import FleetClient

    return FleetClient(MqttSettings())._backoff


def _monitor_backoff(tmp_path) -> Backoff:
    from edge_agent.fleet.monitor.ingest import Inbox
    from edge_agent.fleet.monitor.link import Link

    link = Link(MqttSettings(), Inbox())
    link.stop()
    return link._backoff


@pytest.mark.parametrize(("program", "cap"), [(_device_backoff, DEVICE_MAX_BACKOFF), (_fleet_backoff, OPERATOR_MAX_BACKOFF),
                                              (_monitor_backoff, OPERATOR_MAX_BACKOFF)],
                         ids=["daemon", "fleet", "monitor"])
def test_each_program_reconnects_with_full_jitter_up_to_its_cap(tmp_path, program, cap):
    """The daemon, `edge-agent fleet` and `edge-agent monitor` all wait by the one policy: after many failed
    attempts, uniform in [0, cap] (60 s for the daemon, as the README says; 10 s for the others)."""
    backoff = program(tmp_path)
    seed = 11
    print(f"seed {seed}")
    backoff.rng = random.Random(seed)
    assert backoff.cap == cap
    backoff.failures = 20
    samples = [backoff.delay() for _ in range(2000)]
    assert all(0.0 <= s <= cap for s in samples)
    assert min(samples) < 0.05 * cap and max(samples) > 0.95 * cap  # full jitter: from 0, not from a floor
    assert 0.45 * cap < sum(samples) / len(samples) < 0.55 * cap
    stop = threading.Event()
    stop.set()
    assert backoff.wait(stop) is True  # a stop ends the wait at once
