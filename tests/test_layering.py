"""The house's layering: plugin -> patterns -> kernels, search above patterns; no import runs backwards.

Read from the source (every import statement, including deferred ones inside functions), so a
backward import is caught even where it only runs on some paths.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "headsparse"

# Packages (or modules) each layer must never import.
FORBIDDEN = {
    "kernels": ("headsparse.patterns", "headsparse.plugin", "headsparse.search", "headsparse.plan",
                "headsparse.pipelines", "headsparse.cli"),
    "patterns": ("headsparse.plugin", "headsparse.search", "headsparse.plan", "headsparse.pipelines",
                 "headsparse.cli"),
    "search": ("headsparse.pipelines", "headsparse.cli"),
    "plugin": ("headsparse.search", "headsparse.pipelines", "headsparse.cli"),
}


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return {n for n in names if n.startswith("headsparse")}


def test_no_import_runs_backwards():
    bad = []
    for layer, forbidden in FORBIDDEN.items():
        for path in sorted((PACKAGE / layer).rglob("*.py")):
            for name in imports_of(path):
                if any(name == f or name.startswith(f + ".") for f in forbidden):
                    bad.append(f"{path.relative_to(PACKAGE.parent)} imports {name}")
    assert not bad, "\n".join(bad)


def test_plugin_spec_and_runtime_do_not_import_each_other():
    spec = imports_of(PACKAGE / "plugin" / "spec.py")
    runtime = imports_of(PACKAGE / "plugin" / "runtime.py")
    assert "headsparse.plugin.runtime" not in spec
    assert "headsparse.plugin.spec" in runtime
    assert "headsparse.search.cost" not in imports_of(PACKAGE / "patterns" / "recognize.py")
