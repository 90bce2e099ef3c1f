"""Simulated devices for the monitor: they speak the fleet interface (/tmp/team/FLEET-INTERFACE.md) over MQTT.

One paho client publishes for many devices: retained ``status`` and ``state``, task
events on ``P/D/events`` (each with its per-device ``seq``) and replies; it answers
``agent.history`` from the events it holds and ``agent.jobs`` with a fixed plan, and
runs every other command as an instant success. Used by the monitor's benchmark and by
tests that need device ids or payloads a real agent would refuse.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from typing import Any

__all__ = ["SimFleet"]


class SimFleet:
    """``devices``: ids; ``publish_events=False`` keeps events local (a monitor must fetch them with agent.history)."""

    def __init__(self, port: int, devices: list[str], *, prefix: str = "edge", client_id: str | None = None,
                 keep_events: bool = True):
        import paho.mqtt.client as mqtt

        self.prefix = prefix
        self.devices = list(devices)
        self.keep_events = keep_events  # False: only count them (a benchmark's million events), history answers none
        self.events: dict[str, list[dict[str, Any]]] = {d: [] for d in self.devices}
        self.seqs: dict[str, int] = dict.fromkeys(self.devices, 0)
        self.publish_events = True
        self.history_calls = 0
        self._sent = 0
        self._last: Any = None
        self.collect: list[tuple[str, str]] | None = None  # a list: emit() gathers messages instead of publishing
        self._lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id or f"simfleet-{time.monotonic_ns()}",
                                  protocol=mqtt.MQTTv5)
        self.client.max_inflight_messages_set(1000)
        self.client.max_queued_messages_set(0)
        self.client.on_socket_open = lambda c, u, s: s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        ready = threading.Event()
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(f"{prefix}/+/cmd/#", qos=1)
        self.client.on_subscribe = lambda *a: ready.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        if not ready.wait(10):
            raise RuntimeError("simulated fleet could not subscribe")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    # ------------------------------------------------------------------ what a device says

    def _pub(self, topic: str, payload: Any, retain: bool = False) -> Any:
        data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
        self._sent += 1
        if self._sent % 20_000 == 0:
            # paho numbers QoS 1 messages 1-65535 as they are queued: more than that unacknowledged
            # and new ones overwrite old ones. Let the queue drain before going on.
            self._last.wait_for_publish(60)
        self._last = self.client.publish(f"{self.prefix}/{topic}", data, qos=1, retain=retain)
        return self._last

    def flush(self, timeout: float = 60.0) -> None:
        """Until everything published so far is acknowledged by the broker."""
        if self._last is not None:
            self._last.wait_for_publish(timeout)

    def status(self, device: str, online: bool = True) -> None:
        self._pub(f"{device}/status", "online" if online else "offline", retain=True)

    def state(self, device: str, **extra: Any) -> None:
        doc = {"device": device, "version": "0.1.0-sim", "uptime_s": 100.0, "queue": 0, "outbox": 0,
               "clock_synchronized": True, "next_jobs": [], "failures_24h": 0,
               "last_seq": self.seqs.get(device, 0), "ts": round(time.time(), 3)}
        doc.update(extra)
        self._pub(f"{device}/state", doc, retain=True)

    def online_all(self) -> None:
        for d in self.devices:
            self.status(d)
            self.state(d)

    def emit(self, device: str, event: str, command_id: str, action: str, ts: float | None = None, **extra: Any) -> dict[str, Any]:
        with self._lock:
            seq = self.seqs.get(device, 0) + 1
            self.seqs[device] = seq
            ev = {"seq": seq, "device": device, "event": event, "id": command_id, "action": action,
                  "ts": round(time.time() if ts is None else ts, 3), **extra}
            if self.keep_events:
                self.events.setdefault(device, []).append(ev)
        if self.collect is not None:
            self.collect.append((f"{self.prefix}/{device}/events", json.dumps(ev, separators=(",", ":"))))
        elif self.publish_events:
            self._pub(f"{device}/events", ev)
        return ev

    def publish_collected(self) -> int:
        """Publish the messages gathered while ``collect`` was a list (serialized beforehand); returns how many."""
        messages, self.collect = self.collect or [], None
        for topic, payload in messages:
            self._sent += 1
            if self._sent % 20_000 == 0:
                self._last.wait_for_publish(60)
            self._last = self.client.publish(topic, payload, qos=1)
        return len(messages)

    def task(self, device: str, command_id: str, action: str, args: dict[str, Any], *, fail_attempts: int = 0,
             retries: int = 0, result: Any = None, ts: float | None = None) -> None:
        """A whole task's events: received, started, retried or failed per failing attempt, succeeded."""
        t = time.time() if ts is None else ts
        self.emit(device, "received", command_id, action, ts=t, source="mqtt", args=args)
        for attempt in range(1, fail_attempts + 1):
            self.emit(device, "started", command_id, action, ts=t + attempt * 0.01, attempt=attempt)
            error = {"type": "retryable", "message": f"attempt {attempt} failed"}
            if attempt <= retries:
                self.emit(device, "retried", command_id, action, ts=t + attempt * 0.01 + 0.005, attempt=attempt, error=error,
                          next_try=t + attempt)
            else:
                self.emit(device, "failed", command_id, action, ts=t + attempt * 0.01 + 0.005, attempt=attempt, error=error)
                return
        attempt = fail_attempts + 1
        self.emit(device, "started", command_id, action, ts=t + attempt * 0.01, attempt=attempt)
        self.emit(device, "succeeded", command_id, action, ts=t + attempt * 0.01 + 0.002, attempt=attempt, runtime=0.002,
                  result=result if result is not None else {"ok": True})

    # ------------------------------------------------------------------ what a device answers

    def _reply(self, device: str, doc: dict[str, Any]) -> None:
        self._pub(f"{device}/reply", doc)

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        parts = msg.topic.split("/")
        if len(parts) < 4 or parts[1] not in self.seqs:
            return
        device, action = parts[1], parts[3]
        try:
            doc = json.loads(msg.payload)
        except ValueError:
            return
        cid = doc.get("id") or f"sim-{time.monotonic_ns()}"
        args = doc.get("args") or {}
        base = {"id": cid, "action": action, "attempt": 1, "ts": round(time.time(), 3)}
        if action == "agent.history":
            self.history_calls += 1
            after, limit = int(args.get("after", 0)), min(1000, int(args.get("limit", 100)))
            since = args.get("since")
            with self._lock:
                evs = [e for e in self.events.get(device, []) if e["seq"] > after and (since is None or e["ts"] >= since)]
                last = self.seqs[device]
            page = evs[:limit]
            result = {"device": device, "events": page, "next": page[-1]["seq"] if page else after,
                      "more": len(evs) > limit, "oldest": 1 if last else None, "last": last}
            self._reply(device, {**base, "status": "succeeded", "result": result})
        elif action == "agent.jobs":
            self._reply(device, {**base, "status": "succeeded", "result": {"jobs": [], "windows": []}})
        else:
            self._reply(device, {**base, "status": "accepted"})
            self.task(device, cid, action, args, result={"echo": args})
            self._reply(device, {**base, "status": "succeeded", "result": {"echo": args}})
