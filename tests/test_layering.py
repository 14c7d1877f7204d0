"""The architecture: the memory manager imports nothing else of samepage, the KSM engine
only the memory manager, and neither imports the CLI, the harness or the scenarios."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src" / "samepage"
ALLOWED = {"mm": {"mm"}, "ksm": {"mm", "ksm"}}


def _samepage_imports(path: Path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:                      # relative: stays inside the package
                if node.level > 1:
                    yield "<parent>"
                continue
            mod = node.module or ""
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("samepage."):
                    yield alias.name.split(".")[1]
            continue
        else:
            continue
        if mod.startswith("samepage."):
            yield mod.split(".")[1]
        elif mod == "samepage":
            yield "<top>"


@pytest.mark.parametrize("pkg", sorted(ALLOWED))
def test_core_package_imports_only_what_it_may(pkg):
    bad = []
    for f in sorted((SRC / pkg).glob("*.py")):
        for target in _samepage_imports(f):
            if target not in ALLOWED[pkg]:
                bad.append(f"{f.name} imports samepage.{target}")
    assert not bad, bad
