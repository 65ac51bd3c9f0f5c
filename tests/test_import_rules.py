"""The layering of the packages, checked statically over every module's imports (no module is executed):

- the library `dvdm` knows nothing of orchestration or serving: only the CLI entry point imports `flows`,
  Prefect or `serving`;
- `flows` calls stage functions (`dvdm.stages.registry`), never the CLI, and parses no command lines;
- no import cycle between the packages (the CLI entry point sits on top of all of them).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("dvdm", "flows", "serving")
ENTRY_POINTS = ("dvdm.cli", "dvdm.__main__")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> set[str]:
    """Every module `path` imports: import statements (relative ones resolved), at any depth, and
    `__import__` / `importlib.import_module` calls with a literal name."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # `from pkg import module`
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and ((isinstance(node.func, ast.Name) and node.func.id == "__import__")
                   or (isinstance(node.func, ast.Attribute) and node.func.attr == "import_module"))):
            found.add(node.args[0].value)
    return found


MODULES = {module_name(p): imported_modules(p) for package in PACKAGES
           for p in sorted((REPO / package).rglob("*.py"))}


def importers_of(prefixes: tuple[str, ...], among: str) -> dict[str, list[str]]:
    """Modules of package `among` (other than the CLI entry point) that import any of `prefixes`."""
    hits = {}
    for module, imports in MODULES.items():
        if module.split(".")[0] != among or module in ENTRY_POINTS:
            continue
        bad = sorted(i for i in imports if any(i == p or i.startswith(p + ".") for p in prefixes))
        if bad:
            hits[module] = bad
    return hits


def test_the_rule_sees_imports():
    assert "flows.pipeline" in MODULES["dvdm.cli"] and "dvdm.stages.registry" in MODULES["flows.stage_task"]


@pytest.mark.parametrize("forbidden", ["flows", "prefect", "serving"])
def test_the_library_imports_no_orchestration_or_serving(forbidden):
    assert importers_of((forbidden,), "dvdm") == {}


def test_flows_never_import_the_cli_nor_parse_command_lines():
    assert importers_of(ENTRY_POINTS + ("typer", "click", "argparse", "shlex"), "flows") == {}


def test_nothing_but_the_entry_point_imports_the_cli():
    users = {m for m, imports in MODULES.items() if m != "dvdm.__main__" and imports & set(ENTRY_POINTS)}
    assert users == set()


def test_no_import_cycle_between_packages():
    edges = {p: set() for p in PACKAGES}
    for module, imports in MODULES.items():
        if module in ENTRY_POINTS:
            continue
        source = module.split(".")[0]
        edges[source] |= {i.split(".")[0] for i in imports if i.split(".")[0] in PACKAGES} - {source}

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        return any(n == goal or (n not in seen and reaches(n, goal, seen | {n})) for n in edges[start])

    assert [p for p in PACKAGES if reaches(p, p, set())] == [], edges
