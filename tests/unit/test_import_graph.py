"""
The package's import graph has no cycle: not between modules, and not between its subpackages.

Every import counts: at the top of a module, inside a function (imported late to keep DAG parsing
cheap) and under ``TYPE_CHECKING`` (a type-only cycle still ties two modules together). The
Alembic scripts under ``api_server/migrations`` are run by Alembic, not imported, and left out.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import airflow_provider_qwen

PACKAGE = airflow_provider_qwen.__name__
ROOT = Path(airflow_provider_qwen.__file__).parent


def module_files() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its own name)."""
    modules = {}
    for path in ROOT.rglob("*.py"):
        parts = [PACKAGE, *path.relative_to(ROOT).with_suffix("").parts]
        if "migrations" in parts:
            continue
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def imported_names(module: str, path: Path) -> Iterator[str]:
    """The dotted names ``module`` imports, absolute or relative, wherever the import statement is."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names)


def import_graph() -> dict[str, set[str]]:
    """Which of the package's modules each module imports."""
    modules = module_files()

    def owner(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for module, path in modules.items():
        targets = {owner(name) for name in imported_names(module, path) if name.startswith(PACKAGE)}
        graph[module] = {target for target in targets if target and target != module}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while (member := stack.pop()) != node:
                component.append(member)
            component.append(node)
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def subpackage(module: str) -> str:
    """``hooks`` for ``airflow_provider_qwen.hooks.apikley``; a top-level module stands for itself."""
    parts = module.split(".")
    return ".".join(parts[:2])


def test_no_two_modules_import_each_other_even_through_others():
    assert cycles(import_graph()) == []


def test_no_two_subpackages_import_each_other_even_through_others():
    graph: dict[str, set[str]] = {}
    for module, targets in import_graph().items():
        graph.setdefault(subpackage(module), set()).update(
            subpackage(target) for target in targets if subpackage(target) != subpackage(module)
        )
    graph.pop(PACKAGE, None)  # the package root (provider info, version) is imported by all, and imports nothing
    assert cycles(graph) == []


@pytest.mark.parametrize(
    "graph, expected",
    [
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, [["a", "b", "c"]]),
        ({"a": {"b"}, "b": set(), "c": {"a"}}, []),
    ],
)
def test_the_check_finds_a_cycle_through_a_third_module(graph, expected):
    assert cycles(graph) == expected


def test_the_provider_loads_without_pillow_and_the_old_demo_name_still_works():
    """Only the emulator and the demo (the ``emulator`` extra) draw pictures."""
    provider_modules = [
        module
        for module in module_files()
        if not module.startswith((f"{PACKAGE}.emulator", f"{PACKAGE}.demo.")) and module != f"{PACKAGE}.demo"
    ]
    script = (
        "import importlib, sys, warnings\n"
        f"for module in {provider_modules!r}:\n"
        "    importlib.import_module(module)\n"
        "assert 'PIL' not in sys.modules, 'Pillow loaded'\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    from airflow_provider_qwen.demo_images import draw_product\n"
        "assert draw_product.__module__ == 'airflow_provider_qwen.demo.images'\n"
        "moved = [w for w in caught if 'moved to airflow_provider_qwen.demo.images' in str(w.message)]\n"
        "assert [w.category for w in moved] == [DeprecationWarning], [str(w.message) for w in caught]\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
