"""The package layering of the README's Repository section, checked on the source: the core
(`converter`) imports neither `quant`, `verify`, the face (`grok1`) nor click; `quant` and
`verify` depend on the core only, never on each other or on the face; within the core, modules
import downward through the tiers of `CORE_TIERS`; and no module imports itself through others.
Imports inside functions count too."""

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

# The core's tiers, lowest first (the README's architecture tour): a module imports its own tier
# and those below it, never one above. A storage format knows nothing of the layouts that write
# it; the forward knows no layout; the layouts know neither the verbs that drive them nor the Hub.
CORE_TIERS: tuple[tuple[str, ...], ...] = (
    ("converter", "converter.errors", "converter.dtypes", "converter.tensors", "converter.sizes"),
    ("converter.files",),
    ("converter.tokenizer", "converter.hf_model", "converter.model"),
    ("converter.formats",),
    ("converter.engine",),
    ("converter.forward",),
    ("converter.layouts",),
    ("converter.convert", "converter.generate"),
    ("converter.hub", "converter.report", "converter.vllm_grok1"),
)

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


def tier(module: str) -> int:
    """The index of the core tier a module belongs to (its longest matching prefix)."""
    matches = [(len(prefix), i) for i, names in enumerate(CORE_TIERS) for prefix in names
               if module == prefix or module.startswith(prefix + ".")]
    assert matches, f"{module} is in no tier of CORE_TIERS"
    return max(matches)[1]


def upward_imports(graph: dict[str, set[str]]) -> dict[str, list[str]]:
    """Core modules that import a module of a higher tier, with what they import."""
    found = {}
    for module, deps in graph.items():
        if module.split(".")[0] != "converter":
            continue
        up = sorted(d for d in deps if d.split(".")[0] == "converter" and tier(d) > tier(module))
        if up:
            found[module] = up
    return found


def test_core_tiers_import_downward_only():
    assert upward_imports(import_graph()) == {}


def test_every_core_module_has_a_tier():
    for module in import_graph():
        if module.split(".")[0] == "converter":
            tier(module)


def test_the_tier_check_sees_an_upward_import():
    graph = {"converter.formats.base": {"converter.layouts.hf", "converter.model.spec"},
             "converter.model.spec": set()}
    assert upward_imports(graph) == {"converter.formats.base": ["converter.layouts.hf"]}
