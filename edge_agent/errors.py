"""The edge-agent exception tree.

    EdgeAgentError
    ├── ConfigError (ValueError)            a config file or setting is wrong
    ├── InvalidCommand (ValueError)         a command cannot be accepted
    │   ├── UnknownAction (LookupError)     no such action is registered
    │   └── InvalidArguments                an argument is missing, unknown or of the wrong type
    ├── StorageError (OSError)              the database cannot be opened or written
    │   └── AlreadyRunning                  another daemon owns this database
    ├── HardwareError (RuntimeError)        a GPIO device cannot be opened or driven
    ├── BrokerUnreachable (ConnectionError) ``edge-agent fleet`` cannot reach the MQTT broker
    └── TaskError (RuntimeError)            raised by actions to classify a failure
        ├── RetryableError                  worth another attempt (the default for unknown errors
        │   └── NetworkUnavailable (ConnectionError)   ... is decided by the retry policy)
        └── PermanentError                  another attempt cannot help

Each member also inherits the matching builtin, so callers that only know Python's
exceptions still catch them. Library errors (paho, gpiozero, sqlite3) are translated
into these at the boundary with ``raise ... from exc``.
"""

from __future__ import annotations

__all__ = [
    "AlreadyRunning",
    "BrokerUnreachable",
    "ConfigError",
    "EdgeAgentError",
    "HardwareError",
    "InvalidArguments",
    "InvalidCommand",
    "NetworkUnavailable",
    "PermanentError",
    "RetryableError",
    "StorageError",
    "TaskError",
    "UnknownAction",
]


class EdgeAgentError(Exception):
    """Base of every error edge-agent raises on purpose."""

    #: short machine-readable name used in replies (``error.type``)
    kind = "error"


class ConfigError(EdgeAgentError, ValueError):
    """The config names a bad value; the message names file, key and problem."""

    kind = "config"

    def __init__(self, message: str, *, path: str | None = None, key: str | None = None):
        self.path = path
        self.key = key
        where = ": ".join(part for part in (path, key) if part)
        super().__init__(f"{where}: {message}" if where else message)


class InvalidCommand(EdgeAgentError, ValueError):
    """A command was refused before it was queued."""

    kind = "invalid"


class UnknownAction(InvalidCommand, LookupError):
    kind = "unknown_action"


class InvalidArguments(InvalidCommand):
    kind = "invalid_arguments"


class StorageError(EdgeAgentError, OSError):
    kind = "storage"


class AlreadyRunning(StorageError):
    kind = "already_running"


class HardwareError(EdgeAgentError, RuntimeError):
    kind = "hardware"


class BrokerUnreachable(EdgeAgentError, ConnectionError):
    """The operator side (``edge-agent fleet``) cannot connect to, or was refused by, the broker."""

    kind = "broker"


class TaskError(EdgeAgentError, RuntimeError):
    """Raise a subclass from a task to say whether another attempt may help."""

    kind = "task"


class RetryableError(TaskError):
    """A transient failure: the command is tried again per its retry policy.

    ``retry_after`` (seconds), when given, is the earliest sensible next attempt
    (an HTTP ``Retry-After`` header, say).
    """

    kind = "retryable"

    def __init__(self, message: str = "", *, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class NetworkUnavailable(RetryableError, ConnectionError):
    """The network is down: the command waits for it without using up attempts."""

    kind = "network_unavailable"


class PermanentError(TaskError):
    """A failure that another attempt cannot fix (bad request, 4xx, validation)."""

    kind = "permanent"
