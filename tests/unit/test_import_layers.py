"""The library's import graph, read with ``ast``: nothing is imported, function-level imports count.

- No cycle among ``fedft`` modules (imports under ``if TYPE_CHECKING:`` aside: they never run).
- ``fedft/`` is the library: only its command-line layer (:data:`CLI_LAYER`) imports the Flower apps
  in ``server/`` and ``clients/``.
- The pure maths and codecs (:data:`PURE`) reach no Flower, peft, transformers or Ray import, even
  through other fedft modules.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
APPS = ("server", "clients")
CLI_LAYER = {"fedft.cli"}  # the `fedft` console script: the one place that wires the apps in
PURE = ("fedft.algorithms", "fedft.wire", "fedft.privacy")
HEAVY = ("flwr", "peft", "transformers", "ray")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _type_checking_only(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")
    )


def imported_names(
    source: str, module: str, is_package: bool = False, runtime_only: bool = False
) -> set[str]:
    """Every absolute module name ``source`` imports, at any depth.

    ``from a import b`` gives both ``a`` and ``a.b`` (``b`` may be a module). With
    ``runtime_only``, imports under ``if TYPE_CHECKING:`` are left out.
    """
    package = module if is_package else module.rpartition(".")[0]
    names: set[str] = set()
    todo: list[ast.AST] = [ast.parse(source)]
    while todo:
        node = todo.pop()
        if runtime_only and _type_checking_only(node):
            todo.extend(getattr(node, "orelse", []))
            continue
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
        todo.extend(ast.iter_child_nodes(node))
    return names


def fedft_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted((ROOT / "fedft").rglob("*.py"))}


def imports_of(path: Path, runtime_only: bool = False) -> set[str]:
    source, package = path.read_text(encoding="utf-8"), path.name == "__init__.py"
    return imported_names(source, module_name(path), package, runtime_only)


def fedft_graph() -> dict[str, set[str]]:
    """Module -> the fedft modules it imports at run time (a submodule's own parents aside)."""
    modules = fedft_modules()
    graph = {}
    for name, path in modules.items():
        parents = {name.rsplit(".", i)[0] for i in range(1, name.count(".") + 1)}
        graph[name] = {d for d in imports_of(path, True) if d in modules} - parents - {name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a path ``[a, b, ..., a]``, or None."""
    done: set[str] = set()
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if dep in stack:
                return [*stack[stack.index(dep) :], dep]
            if dep not in done and (cycle := visit(dep)):
                return cycle
        stack.pop()
        done.add(node)
        return None

    for node in sorted(graph):
        if node not in done and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycle_among_fedft_modules():
    cycle = find_cycle(fedft_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_library_imports_no_app_outside_the_cli_layer():
    offenders = [
        f"{path.relative_to(ROOT)} imports {name}"
        for module, path in fedft_modules().items()
        if module not in CLI_LAYER
        for name in sorted(imports_of(path))
        if name.split(".")[0] in APPS
    ]
    assert not offenders, "\n".join(offenders)


def test_pure_maths_and_codecs_import_no_framework_even_indirectly():
    modules, graph = fedft_modules(), fedft_graph()
    offenders = []
    for start in (m for m in modules if m.startswith(PURE)):
        seen, todo = {start}, [start]
        while todo:
            module = todo.pop()
            heavy = {n.split(".")[0] for n in imports_of(modules[module], True)} & set(HEAVY)
            offenders += [f"{start}: {module} imports {h}" for h in sorted(heavy)]
            todo += [d for d in graph[module] if d not in seen]
            seen.update(graph[module])
    assert not offenders, "\n".join(offenders)


def test_the_checker_sees_function_level_and_relative_imports_and_cycles():
    source = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    import fedft.typed\n"
        "def f():\n    from fedft.b import x\n    from . import c\n"
    )
    assert imported_names(source, "fedft.pkg.a", runtime_only=True) >= {"fedft.b", "fedft.pkg.c"}
    assert "fedft.typed" not in imported_names(source, "fedft.pkg.a", runtime_only=True)
    assert "fedft.typed" in imported_names(source, "fedft.pkg.a")
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None
