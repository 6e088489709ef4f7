"""The package layering of the README's Repository section, checked on the source: the core
(`converter`) imports neither `quant`, `verify`, the face (`grok1`) nor click; `quant` and
`verify` depend on the core only, never on each other or on the face. Imports inside
functions count too."""

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
