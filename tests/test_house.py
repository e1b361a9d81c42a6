"""Facts about the framework's own layout that anyone can check, kept true by tests.

- No import cycle among the framework's modules (run-time imports, also those inside
  functions: a lazy import that closes a cycle is still control bouncing between two rooms).
- No framework module much over 600 lines.
- No framework file names the example app: a library speaks for whichever app uses it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("reexec_core", "selfupdate")
MAX_LINES = 600


def _modules() -> dict[str, Path]:
    """Map every framework module's dotted name to its file."""
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _is_type_checking_block(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and (
        (isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING")
        or (isinstance(node.test, ast.Attribute) and node.test.attr == "TYPE_CHECKING")
    )


def _runtime_imports(tree: ast.AST, module: str, is_package: bool, known: set[str]) -> set[str]:
    """Framework modules this module imports at run time (``if TYPE_CHECKING:`` left out).

    ``from pkg import mod`` is an import of ``pkg.mod``; ``from pkg import func`` one of ``pkg``.
    """
    names: set[str] = set()
    base = module.split(".") if is_package else module.split(".")[:-1]

    def visit(node: ast.AST) -> None:
        if _is_type_checking_block(node):
            return
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = base[: len(base) - (node.level - 1)]
                source = ".".join(anchor + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                names.add(submodule if submodule in known else source)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return {name for name in names if name in known and name != module}


def _import_graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {
        name: _runtime_imports(
            ast.parse(path.read_text(encoding="utf-8"), str(path)),
            name, path.name == "__init__.py", known,
        )
        for name, path in modules.items()
    }


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path [a, b, ..., a], or None (iterative three-colour DFS)."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = finished
    for start in sorted(graph):
        if state.get(start):
            continue
        path: list[str] = [start]
        stack = [iter(sorted(graph[start]))]
        state[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph[nxt])))
    return None


def test_cycle_finder_sees_a_cycle() -> None:
    # The finder itself, on a graph with a known cycle and one without.
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_relative_imports_resolve() -> None:
    tree = ast.parse("from . import errors, helper\nfrom ..x import y\nimport pkg.z\n")
    known = {"pkg", "pkg.sub", "pkg.sub.errors", "pkg.sub.mod", "pkg.x", "pkg.z"}
    # errors is a module; helper and y are names in their packages.
    assert _runtime_imports(tree, "pkg.sub.mod", False, known) == {
        "pkg.sub", "pkg.sub.errors", "pkg.x", "pkg.z",
    }


def test_no_import_cycle_among_framework_modules() -> None:
    graph = _import_graph()
    assert graph, "found no framework modules"
    cycle = _find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


@pytest.mark.parametrize("name", sorted(_modules()))
def test_no_framework_module_is_over_600_lines(name: str) -> None:
    lines = len(_modules()[name].read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{name} has {lines} lines; split it by concern"


def test_no_framework_file_names_the_example_app() -> None:
    hits = []
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*")):
            if not path.is_file() or "__pycache__" in path.parts:
                continue
            for number, line in enumerate(path.read_bytes().splitlines(), 1):
                if b"nsapp" in line.lower():
                    hits.append(f"{path.relative_to(REPO)}:{number}")
    assert not hits, "the framework names the example app at " + ", ".join(hits)
