"""The house: broker/ and client/ import each other one way only (no circle, imports under
TYPE_CHECKING counted), each layer imports only what its package docstring allows, and parts are
objects, not mixins of a class of another module. Read from the source (ast), nothing imported."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("broker", "client")

ALLOWED_BASES = {"Protocol", "Exception", "_Msg", "StrEnum", "IntEnum", "NamedTuple"}
"""Project classes a class of another module may inherit from: the protocol's message base,
exceptions and typing Protocols (and the standard library's kinds of class)."""

LAYER_RULES = {
    "broker.wire": ("broker.wire",),
    "broker.chat": (
        "broker.wire",
        "broker.config",
        "broker.chat",
        "broker.store.base",
        "broker.store.access",
    ),
    "broker.store": ("broker.wire", "broker.config", "broker.store"),
    "broker.security": ("broker.wire", "broker.config", "broker.stoppipe", "broker.security"),
    "broker.admin": (
        "broker.wire",
        "broker.config",
        "broker.chat",
        "broker.store.base",
        "broker.store.access",
        "broker.admin",
    ),
}
"""What the modules of each layer may import of the broker (by prefix)."""

NO_SOCKETS = ("broker.wire", "broker.chat", "broker.store", "broker.admin")
"""Layers that never import zmq."""


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, ast.Module]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            found[_module_name(path)] = ast.parse(path.read_text(), str(path))
    return found


MODULES = _modules()


def _imports(name: str, tree: ast.Module) -> set[str]:
    """Every module of the project that ``name`` imports, anywhere in it."""
    package = name if _is_package(name) else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        out.update(t for t in targets if t in MODULES and t != name)
    return out


def _is_package(name: str) -> bool:
    return (ROOT / name.replace(".", "/") / "__init__.py").exists()


GRAPH = {name: _imports(name, tree) for name, tree in MODULES.items()}


def test_no_module_imports_itself_through_others() -> None:
    circles = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(name: str) -> None:
        state[name] = 1
        path.append(name)
        for other in sorted(GRAPH[name]):
            if state.get(other) == 1:
                circles.append([*path[path.index(other) :], other])
            elif other not in state:
                visit(other)
        path.pop()
        state[name] = 2

    for name in sorted(GRAPH):
        if name not in state:
            visit(name)
    assert not circles, "\n".join(" -> ".join(c) for c in circles)


def test_each_layer_imports_only_what_it_may() -> None:
    wrong = []
    for name, imported in GRAPH.items():
        for layer, allowed in LAYER_RULES.items():
            if name == layer or name.startswith(layer + "."):
                wrong += [
                    f"{name} imports {other}"
                    for other in sorted(imported)
                    if other.startswith("broker") and not other.startswith(allowed)
                ]
    assert not wrong, "\n".join(wrong)


def test_the_core_layers_import_no_sockets() -> None:
    wrong = []
    for name, tree in MODULES.items():
        if not name.startswith(NO_SOCKETS):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            wrong += [f"{name} imports {n}" for n in names if n.split(".")[0] in ("zmq", "socket")]
    assert not wrong, "\n".join(wrong)


def test_only_the_metrics_modules_import_prometheus_client() -> None:
    """The layers count in plain numbers; one module of the loop (``broker.loop.metrics``) and
    one of room-web serve them to Prometheus, and each is loaded only with ``--metrics``."""
    importers = set()
    for name, tree in MODULES.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            if any(n.split(".")[0] == "prometheus_client" for n in names):
                importers.add(name)
    assert importers == {"broker.loop.metrics", "client.web.metrics"}
    loaded_by = {name for name, imported in GRAPH.items() if imported & importers}
    assert loaded_by == {"broker.loop.server", "client.web.gateway"}


def test_parts_are_objects_not_mixins_of_other_modules() -> None:
    wrong = []
    for name, tree in MODULES.items():
        imported = {  # a name this module imports from another module of the project
            alias.asname or alias.name: node.module
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(PACKAGES)
            for alias in node.names
        }
        for node in ast.walk(tree):
            if not isinstance(node, ast.ClassDef):
                continue
            for base in node.bases:
                base_name = base.id if isinstance(base, ast.Name) else ""
                home = imported.get(base_name)
                if home and base_name not in ALLOWED_BASES:
                    wrong.append(f"{name}.{node.name} inherits {home}.{base_name}")
    assert not wrong, "\n".join(wrong)


def test_broker_holds_a_dozen_modules_at_most_beside_its_folders() -> None:
    top = sorted(p.name for p in (ROOT / "broker").glob("*.py"))
    assert len(top) <= 12, top
    folders = [p for p in (ROOT / "broker").iterdir() if (p / "__init__.py").exists()]
    undocumented = [
        p.name for p in folders if ast.get_docstring(MODULES[f"broker.{p.name}"]) is None
    ]
    assert not undocumented, f"folders whose __init__ does not say what they own: {undocumented}"
