"""The layout shows the three programs, and says so: read from the source with ``ast``, nothing imported.

- device code (``edge_agent/device``) never imports the operator side (``edge_agent/fleet``) or the CLI;
- the shared top-level modules import none of the three programs;
- the operator side imports neither the device daemon nor the CLI;
- no import cycle among edge_agent's modules (module-level imports: those that run at import time);
- the README's module table (between ``<!-- modules -->`` and ``<!-- /modules -->``) lists every
  module, and only modules that exist.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "edge_agent"
DEVICE, FLEET, CLI = "edge_agent.device", "edge_agent.fleet", "edge_agent.cli"
SHARED = ["edge_agent.config", "edge_agent.errors", "edge_agent.durations", "edge_agent.logs", "edge_agent.mqttsock",
          "edge_agent.contract", "edge_agent.broker", "edge_agent.memory", "edge_agent.schedule"]


def module_name(path: Path) -> str:
    """``edge_agent/device/journal.py`` -> ``edge_agent.device.journal``; a package's ``__init__.py`` is the package."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    """Every module of edge_agent: its name -> its file."""
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


MODULES = modules()


def _is_package(name: str) -> bool:
    return MODULES.get(name, Path()).name == "__init__.py"


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(body: list[ast.stmt], module_level: bool) -> Iterator[ast.Import | ast.ImportFrom]:
    """The import statements in ``body``: all of them, or (``module_level``) those that run when the
    module is imported (not inside a function, nor under ``if TYPE_CHECKING:``)."""
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif module_level and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        elif module_level and isinstance(node, ast.If) and _type_checking(node):
            yield from _import_nodes(node.orelse, module_level)
        else:  # if, try (and its handlers), with, for, while, match (its cases), class bodies, functions
            for field in ("body", "orelse", "finalbody", "handlers", "cases"):
                yield from _import_nodes(getattr(node, field, []), module_level)


def imports(name: str, module_level: bool = False) -> set[str]:
    """The edge_agent modules that module ``name`` imports (a name imported from a package is that
    package's submodule if there is one, else the package)."""
    path = MODULES[name]
    tree = ast.parse(path.read_text(), str(path))
    package = name if _is_package(name) else name.rpartition(".")[0]
    found: set[str] = set()
    for node in _import_nodes(tree.body, module_level):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names]
        for target in targets:
            while target and target not in MODULES:  # `import edge_agent.x.y` of a name that is not a module
                target = target.rpartition(".")[0]
            if _within(target, "edge_agent") and target != name:
                found.add(target)
    return found


def _offenders(sources: list[str], forbidden: list[str]) -> list[str]:
    return [f"{name} imports {target}" for name in sorted(MODULES) if any(_within(name, s) for s in sources)
            for target in sorted(imports(name)) if any(_within(target, f) for f in forbidden)]


def test_the_layout_has_the_three_programs_and_the_shared_modules():
    for package in (DEVICE, FLEET, CLI, "edge_agent.schedule"):
        assert _is_package(package), f"{package} is not a package"
    for name in ("edge_agent.config", "edge_agent.errors", "edge_agent.durations", "edge_agent.logs", "edge_agent.mqttsock"):
        assert name in MODULES, f"{name} is missing"


def test_device_code_never_imports_operator_code_or_the_cli():
    """Not even inside a function: the daemon on a device runs without the fleet client or the monitor."""
    assert _offenders([DEVICE], [FLEET, CLI]) == []


def test_the_shared_modules_import_none_of_the_three_programs():
    assert _offenders(SHARED, [DEVICE, FLEET, CLI]) == []


def test_the_operator_side_imports_neither_the_daemon_nor_the_cli():
    """What both sides need (topics, the reply and event shapes) is in the shared modules."""
    assert _offenders([FLEET], [DEVICE, CLI]) == []


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One cycle of ``graph`` as [a, b, ..., a], or [] if there is none."""
    state: dict[str, int] = {}  # 1: on the path being explored, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return []

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return []


def test_find_cycle_finds_one_and_only_one_that_is_there():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) == []
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"a"}}) == ["a", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"d"}, "c": {"d"}, "d": set()}) == []


def test_no_import_cycles_among_the_modules():
    """Counting every import, a function's own too: a lazy import that closes a circle still ties the
    two modules into one (the cycles this layout removed, ``cli`` <-> ``fleetcli`` and ``actions`` <->
    ``actions/*``, were all inside functions)."""
    graph = {name: imports(name) for name in MODULES}
    cycle = find_cycle(graph)
    assert cycle == [], "import cycle: " + " -> ".join(cycle)


# --------------------------------------------------------------------------- the README's module table

README = ROOT / "README.md"
ROW = re.compile(r"^\|\s*`(edge_agent(?:/[^`]*)?)`\s*\|")


def table_paths() -> list[str]:
    """The paths in the first column of the README's module table, as written."""
    text = README.read_text()
    begin, end = text.find("<!-- modules -->"), text.find("<!-- /modules -->")
    assert begin >= 0 and end > begin, "README.md has no module table between <!-- modules --> and <!-- /modules -->"
    return [m.group(1) for line in text[begin:end].splitlines() if (m := ROW.match(line.strip()))]


def documented(path: str) -> str:
    """``edge_agent/device/journal.py`` -> ``edge_agent.device.journal``; ``edge_agent/device/`` -> ``edge_agent.device``."""
    path = path.rstrip("/")
    return path.removesuffix(".py").removesuffix("/__init__").replace("/", ".")


def test_the_readme_lists_every_module_and_no_other():
    """Each module is a row of the table: ``| `edge_agent/device/journal.py` | ...``, a package as
    ``| `edge_agent/device/` | ...`` (its ``__init__.py``)."""
    paths = table_paths()
    listed = [documented(p) for p in paths]
    missing = sorted(set(MODULES) - set(listed))
    unknown = sorted(p for p, name in zip(paths, listed, strict=True) if name not in MODULES)
    twice = sorted({p for p, name in zip(paths, listed, strict=True) if listed.count(name) > 1})
    assert (missing, unknown, twice) == ([], [], []), (
        f"not in the README's module table: {missing}; listed but no such module: {unknown}; listed twice: {twice}")


def test_table_rows_name_modules_as_the_test_reads_them():
    assert documented("edge_agent/device/journal.py") == "edge_agent.device.journal"
    assert documented("edge_agent/device/") == "edge_agent.device"
    assert documented("edge_agent/") == "edge_agent"
    assert documented("edge_agent/device/__init__.py") == "edge_agent.device"
    assert ROW.match("| `edge_agent/device/journal.py` | the journal |").group(1) == "edge_agent/device/journal.py"
    assert ROW.match("| edge_agent/x.py | no backticks |") is None
