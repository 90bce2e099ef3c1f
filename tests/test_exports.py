"""The public surface: `edge_agent` exports exactly what users are meant to use, and every module's __all__ is honest."""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys

import edge_agent

PUBLIC = {
    "task",            # the decorator of the contract's Python API
    "Pending",         # what .delay() returns
    "EdgeAgentError",  # the base of every error we raise
    "RetryableError",  # what a task raises to ask for another attempt
    "PermanentError",  # ... or to say another attempt cannot help
    "NetworkUnavailable",
    "__version__",
}


def test_all_is_exactly_the_intended_public_names():
    """edge_agent.__all__ lists the intended names, no more and no fewer, each once."""
    assert sorted(edge_agent.__all__) == sorted(PUBLIC)
    assert len(edge_agent.__all__) == len(set(edge_agent.__all__))


def test_each_public_name_is_importable():
    """`from edge_agent import <name>` works for every public name, and star-import gives exactly them."""
    for name in PUBLIC:
        assert getattr(edge_agent, name) is not None
    namespace: dict[str, object] = {}
    exec("from edge_agent import *", namespace)
    assert set(namespace) - {"__builtins__"} == PUBLIC


def test_public_errors_form_one_tree_with_builtin_parents():
    """Every exported error derives from EdgeAgentError; NetworkUnavailable is also a ConnectionError."""
    for name in ("RetryableError", "PermanentError", "NetworkUnavailable"):
        assert issubclass(getattr(edge_agent, name), edge_agent.EdgeAgentError)
    assert issubclass(edge_agent.NetworkUnavailable, ConnectionError)
    assert issubclass(edge_agent.NetworkUnavailable, edge_agent.RetryableError)
    assert isinstance(edge_agent.__version__, str) and edge_agent.__version__.count(".") >= 2


def test_every_module_all_names_exist():
    """Each module of the package has an __all__ whose names are all defined (no stale exports)."""
    for info in pkgutil.walk_packages(edge_agent.__path__, "edge_agent."):
        if info.name == "edge_agent.__main__":
            continue
        module = importlib.import_module(info.name)
        names = getattr(module, "__all__", None)
        assert names is not None, f"{info.name} has no __all__"
        missing = [n for n in names if not hasattr(module, n)]
        assert not missing, f"{info.name}.__all__ names undefined {missing}"


def test_importing_the_package_stays_light():
    """`import edge_agent` (what every .delay() caller pays) does not pull in Huey, paho, gpiozero or the daemon."""
    code = ("import sys, edge_agent\n"
            "heavy = [m for m in ('huey', 'paho', 'gpiozero', 'edge_agent.device.agent', 'edge_agent.device.mqtt', 'sqlite3') "
            "if m in sys.modules]\n"
            "print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=30)
    assert out.stdout.strip() == ""
