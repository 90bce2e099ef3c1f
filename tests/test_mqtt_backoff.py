"""Reconnect backoff: capped exponential with full jitter (1 s, 2 s, 4 s ... up to 60 s), so that a
fleet spreads its reconnects after a broker restart instead of coming back in lockstep."""

from __future__ import annotations

import random

from edge_agent.config import parse_settings
from edge_agent.device.mqtt import MAX_BACKOFF, STABLE_AFTER, MqttLink, reconnect_delay
from edge_agent.device.store import Store


def test_delays_are_full_jitter_under_a_doubling_capped_ceiling():
    """Attempt n waits uniformly in [0, min(60, 2^n)] seconds: the samples fill that range."""
    rng = random.Random(7)
    for failures in range(12):
        ceiling = min(MAX_BACKOFF, 2.0 ** failures)
        samples = [reconnect_delay(failures, rng) for _ in range(2000)]
        assert all(0.0 <= s <= ceiling for s in samples)
        assert min(samples) < 0.05 * ceiling and max(samples) > 0.95 * ceiling
        assert 0.45 * ceiling < sum(samples) / len(samples) < 0.55 * ceiling
    assert reconnect_delay(10_000, rng) <= MAX_BACKOFF  # no overflow however long the outage


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
        back = _reconnect_instants(300, 20.0, seed)
        assert max(back) - min(back) >= 10.0
        assert max(back) <= 90.0
        # and not in a crowd: no second holds more than a tenth of the fleet
        per_second: dict[int, int] = {}
        for t in back:
            per_second[int(t)] = per_second.get(int(t), 0) + 1
        assert max(per_second.values()) <= 30


class _Waits:
    """Stands in for the link's stop event: records the waits instead of sleeping."""

    def __init__(self):
        self.waits: list[float] = []

    def wait(self, seconds: float) -> bool:
        self.waits.append(seconds)
        return False

    def is_set(self) -> bool:
        return False


def test_the_backoff_grows_until_a_connection_holds_then_starts_again(tmp_path, monkeypatch):
    """Failed attempts raise the ceiling; a connection that held STABLE_AFTER seconds resets it, one
    the broker dropped at once (a session taken over, an ACL) does not."""
    settings = parse_settings({"device": {"id": "porch"}, "mqtt": {"host": "127.0.0.1"},
                               "storage": {"path": str(tmp_path / "agent.db")}})
    store = Store(settings.db_path)
    try:
        link = MqttLink(settings, store, agent=None)
        link._stop = _Waits()  # type: ignore[assignment]
        seen: list[int] = []
        monkeypatch.setattr("edge_agent.device.mqtt.reconnect_delay", lambda failures, rng: seen.append(failures) or 0.0)
        now = [1000.0]
        monkeypatch.setattr("edge_agent.device.mqtt.time.monotonic", lambda: now[0])
        for _ in range(4):
            link._wait_backoff()
        assert seen == [0, 1, 2, 3]
        link._connected_at = now[0]  # connected, dropped at once
        now[0] += 1.0
        link._wait_backoff()
        assert seen[-1] == 4
        link._connected_at = now[0]  # connected, held
        now[0] += STABLE_AFTER + 1
        link._wait_backoff()
        assert seen[-1] == 0
    finally:
        store.close()
