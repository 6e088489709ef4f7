"""The package layering of the README's Repository section, checked on the source: the core
(`converter`) imports neither `quant`, `verify`, the face (`grok1`) nor click; `quant` and
`verify` depend on the core only, never on each other or on the face; within the core,
`converter.formats` sits below the layouts and the engine; and no module imports itself through
others. Imports inside functions count too."""

import ast
from pathlib import Path

import pytest

from tests.conftest import REPO

FORBIDDEN = {
    "converter": {"quant", "verify", "grok1", "click"},
    "quant": {"verify", "grok1", "click"},
    "verify": {"quant", "grok1", "click"},
}


def imported_packages(path: Path) -> set[str]:
    """Top-level names of every module a file imports, anywhere in it."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_layering(package):
    files = sorted((REPO / package).rglob("*.py"))
    assert files
    offenders = {str(f.relative_to(REPO)): sorted(imported_packages(f) & FORBIDDEN[package])
                 for f in files}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_checker_sees_nested_imports(tmp_path):
    sample = tmp_path / "m.py"
    sample.write_text("def f():\n    from verify.run import x\n    import click.core\n")
    assert imported_packages(sample) == {"verify", "click"}


PACKAGES = ("converter", "quant", "verify", "grok1")

# Subpackages of the core that sit below the rest of it: a storage format knows nothing of the
# layouts that write it, the engine that drives them, or the Hub.
CORE_FORBIDDEN = {
    "converter.formats": {"converter.layouts", "converter.engine", "converter.hub",
                          "converter.linears", "converter.produce", "converter.serving"},
}


def module_name(path: Path) -> str:
    """`converter/formats/base.py` -> `converter.formats.base` (a package is its __init__)."""
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def module_imports(path: Path, known: set[str]) -> set[str]:
    """The project modules a file imports, anywhere in it (`from a import b` counts a.b when
    b is a module, else a)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in known)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            for alias in node.names:
                child = f"{node.module}.{alias.name}"
                found.add(child if child in known else node.module)
    return found & known


def import_graph() -> dict[str, set[str]]:
    """Every project module and the project modules it imports."""
    files = {module_name(f): f for p in PACKAGES for f in (REPO / p).rglob("*.py")}
    return {name: module_imports(path, set(files)) - {name} for name, path in files.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in sorted(graph.get(node, ())):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_module_imports_itself_through_others():
    assert cycles(import_graph()) == []


def test_the_cycle_finder_finds_cycles():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


@pytest.mark.parametrize("package", sorted(CORE_FORBIDDEN))
def test_core_subpackage_layering(package):
    graph = import_graph()
    inside = {m: deps for m, deps in graph.items() if m == package or m.startswith(package + ".")}
    assert inside
    offenders = {m: sorted(d for d in deps if any(d == f or d.startswith(f + ".")
                                                  for f in CORE_FORBIDDEN[package]))
                 for m, deps in inside.items()}
    assert {m: d for m, d in offenders.items() if d} == {}

