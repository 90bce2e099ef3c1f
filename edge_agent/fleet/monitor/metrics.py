"""``/metrics`` in the Prometheus text format (version 0.0.4).

Devices online, tasks by status, queue and outbox depth per device (from each
device's retained ``state``), event lag (newest event's ``ts`` to its commit in the
monitor), events stored, the ingest backlog, messages rejected and live streams. Label values are escaped as the
format requires (device ids are untrusted text).
"""

from __future__ import annotations

from typing import Any

__all__ = ["render_metrics"]


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def render_metrics(devices: list[Any], counts: dict[str, Any], *, lag: float, backlog: int, ingested: int,
                   rejected: int = 0, streams: int = 0) -> str:
    lines = [
        "# HELP edge_monitor_devices Devices known to the monitor, by status.",
        "# TYPE edge_monitor_devices gauge",
    ]
    online = sum(1 for d in devices if d.online)
    lines.append(f'edge_monitor_devices{{status="online"}} {online}')
    lines.append(f'edge_monitor_devices{{status="offline"}} {len(devices) - online}')
    lines += ["# HELP edge_monitor_device_up 1 while a device says online.", "# TYPE edge_monitor_device_up gauge"]
    lines += [f'edge_monitor_device_up{{device="{_label(d.device)}"}} {1 if d.online else 0}' for d in devices]
    for name, key, help_text in (("queue_depth", "queue", "Commands queued on the device."),
                                 ("outbox_depth", "outbox", "Messages waiting in the device's outbox.")):
        lines += [f"# HELP edge_monitor_device_{name} {help_text}", f"# TYPE edge_monitor_device_{name} gauge"]
        for d in devices:
            value = d.state.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                lines.append(f'edge_monitor_device_{name}{{device="{_label(d.device)}"}} {value}')
    lines += ["# HELP edge_monitor_tasks Tasks in the monitor's store, by status.", "# TYPE edge_monitor_tasks gauge"]
    for status, n in sorted(counts["tasks_by_status"].items()):
        lines.append(f'edge_monitor_tasks{{status="{_label(str(status))}"}} {n}')
    lines += [
        "# HELP edge_monitor_event_lag_seconds From the newest event's timestamp to its commit in the monitor.",
        "# TYPE edge_monitor_event_lag_seconds gauge",
        f"edge_monitor_event_lag_seconds {lag:.3f}",
        "# HELP edge_monitor_events_stored Events in the monitor's store.",
        "# TYPE edge_monitor_events_stored gauge",
        f"edge_monitor_events_stored {counts['events']}",
        "# HELP edge_monitor_events_ingested_total Events stored since the monitor started.",
        "# TYPE edge_monitor_events_ingested_total counter",
        f"edge_monitor_events_ingested_total {ingested}",
        "# HELP edge_monitor_ingest_backlog Messages heard but not yet stored.",
        "# TYPE edge_monitor_ingest_backlog gauge",
        f"edge_monitor_ingest_backlog {backlog}",
        "# HELP edge_monitor_messages_rejected_total Device messages dropped at the boundary (invalid or too large).",
        "# TYPE edge_monitor_messages_rejected_total counter",
        f"edge_monitor_messages_rejected_total {rejected}",
        "# HELP edge_monitor_live_streams Live streams (server-sent events) open.",
        "# TYPE edge_monitor_live_streams gauge",
        f"edge_monitor_live_streams {streams}",
    ]
    return "\n".join(lines) + "\n"
