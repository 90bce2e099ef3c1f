"""``edge-agent monitor``: a web page for the fleet, live, that forgets nothing (Flower for devices).

Its own process, never inside the device daemon. The flow, one module per step:

    broker ──► link (paho: status, state, events, reply, gpio; agent.history for gaps)
                 └─► ingest (bounded queue, validate, batches, seq tracking) ──► store (its own SQLite file)
                                                   └─► hub (live updates) ──► web (Starlette: pages, /api, /live SSE)
    web also draws day (the SVG day picture), checks auth (login, CSRF) and serves metrics.

``service`` wires them and runs uvicorn. Nothing here is imported by the rest of
edge-agent: the web stack is the optional extra ``edge-agent[monitor]``.
"""

__all__ = ["MonitorSettings", "run_monitor"]


def __getattr__(name: str) -> object:
    # Lazy: `from edge_agent.fleet.monitor import run_monitor` should not need the web stack to import this package.
    if name in __all__:
        from edge_agent.fleet.monitor import service

        return getattr(service, name)
    raise AttributeError(name)
