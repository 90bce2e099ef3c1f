"""The operator side: the fleet client, its event stream and the monitor (README: Design)."""

__all__: list[str] = []
