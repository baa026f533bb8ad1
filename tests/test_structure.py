"""The package's shape: no import cycles, and the layers import only downwards.

Imports are read from the source (every `import` statement, also inside functions and under
`if TYPE_CHECKING:`: a cycle hidden there is still a cycle for a reader), so the test needs
nothing to be importable.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "fusefs"

# Modules that may import pyfuse3: the FUSE adapter and the composition root.
FUSE_MODULES = {"fusefs.fuse_ops", "fusefs.mount"}
# The data path below the file layer: none of these may import the modules listed after it.
LOWER = ("fusefs.codec", "fusefs.stores", "fusefs.meta", "fusefs.layout", "fusefs.health",
         "fusefs.workers", "fusefs.shareio", "fusefs.packs", "fusefs.compaction",
         "fusefs.chunkread", "fusefs.chunkwrite", "fusefs.durability", "fusefs.heal",
         "fusefs.scrub")
UPPER = ("fusefs.volume", "fusefs.filedata", "fusefs.vfs", "fusefs.fuse_ops", "fusefs.mount",
         "fusefs.cli", "fusefs.control", "fusefs.admin", "fusefs.status", "fusefs.scrubcli",
         "fusefs.compactcmd", "fusefs.offline", "fusefs.lifecycle", "fusefs.direct")
# Imported by every layer, so it imports nothing from the package but these.
EVERYONES = {"fusefs.metrics": {"fusefs.errors"}}


def module_name(path: Path, root: Path = PACKAGE) -> str:
    rel = path.relative_to(root.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The package modules `path` imports (`from fusefs.x import y` counts fusefs.x.y when
    that is a module, else fusefs.x)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name in modules}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                if sub in modules:
                    out.add(sub)
                elif node.module in modules:
                    out.add(node.module)
    return out


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    files = {module_name(p, root): p for p in root.rglob("*.py")}
    modules = set(files)
    return {name: imports_of(path, modules) - {name} for name, path in files.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_package_has_no_import_cycle() -> None:
    graph = import_graph()
    assert "fusefs.volume" in graph and graph["fusefs.heal"], "the graph was not read"
    assert cycles(graph) == []


def test_the_cycle_finder_finds_a_planted_cycle(tmp_path: Path) -> None:
    pkg = tmp_path / "fusefs"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from fusefs.sub import b\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from fusefs import c\n")
    (pkg / "c.py").write_text("from typing import TYPE_CHECKING\n"
                              "if TYPE_CHECKING:\n    import fusefs.a\n")
    assert cycles(import_graph(pkg)) == [["fusefs.a", "fusefs.c", "fusefs.sub.b"]]


@pytest.mark.parametrize("lower", LOWER)
def test_the_data_path_does_not_import_the_layers_above_it(lower: str) -> None:
    graph = import_graph()
    inside = {m for m in graph if m == lower or m.startswith(lower + ".")}
    assert inside, lower
    for m in inside:
        upward = {u for u in graph[m] if any(u == x or u.startswith(x + ".") for x in UPPER)}
        assert not upward, f"{m} imports {sorted(upward)}"


def test_only_the_adapter_and_the_composition_root_import_pyfuse3() -> None:
    users = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module] if isinstance(node, ast.ImportFrom) else [])
            if "pyfuse3" in names:
                users.add(module_name(path))
    assert users == FUSE_MODULES


def test_the_direct_api_is_beside_the_fuse_side_not_on_top_of_it() -> None:
    """The direct read API composes the data path itself (`chunkread`), so loader workers
    never import pyfuse3 nor the file layer of a mount."""
    graph = import_graph()
    direct = {m for m in graph if m.startswith("fusefs.direct")}
    assert {"fusefs.direct.view", "fusefs.direct.volume"} <= direct
    fuse_side = ("fusefs.fuse_ops", "fusefs.mount", "fusefs.vfs", "fusefs.filedata",
                 "fusefs.cli")
    for m in direct:
        assert not graph[m] & set(fuse_side), f"{m} imports {sorted(graph[m] & set(fuse_side))}"
    assert "fusefs.chunkread" in graph["fusefs.direct.view"]


@pytest.mark.parametrize("module", sorted(EVERYONES))
def test_modules_every_layer_imports_import_almost_nothing(module: str) -> None:
    graph = import_graph()
    assert graph[module] <= EVERYONES[module], f"{module} imports {sorted(graph[module])}"


def test_metrics_do_not_import_prometheus_client_at_import_time() -> None:
    """Off by default, so a mount without --metrics pays nothing for the library."""
    tree = ast.parse((PACKAGE / "metrics.py").read_text())
    top = [n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)]
    names = {a.name for n in top if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module for n in top if isinstance(n, ast.ImportFrom)}
    assert not any(str(n).startswith("prometheus_client") for n in names), names
