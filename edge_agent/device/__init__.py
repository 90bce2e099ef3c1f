"""The device daemon: everything that runs on the Pi (README: Design)."""

__all__: list[str] = []
