"""The package's import graph has no cycles.

Only module-level imports count (those that run when a module is imported): the module body,
including `if`/`try`/`with` blocks and class bodies, but not function bodies and not
`if TYPE_CHECKING:` blocks. An import is an edge to the module it names (`from P import x`, x
not a submodule, names P: x is read off P's `__init__`) and to each package above that module,
whose `__init__` runs first, except the importer's own packages (already being imported).

A cycle hidden by a function-level import is not one Python trips on today, but the next
top-level import makes it real, so a second test draws the graph as if every import of the
package's own modules sat at the top, and asks the same.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "traitscope"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted((SRC / PACKAGE).rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def module_level_imports(tree: ast.Module, functions: bool = False):
    """The Import and ImportFrom nodes that run when the module is imported (with `functions`,
    also those in function bodies, as if each were moved to the top)."""
    stack = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            if functions:
                stack.extend(node.body)
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
        elif isinstance(node, ast.stmt):
            stack.extend(child for child in ast.iter_child_nodes(node) if isinstance(child, ast.stmt))
            for handler in getattr(node, "handlers", []):
                stack.extend(handler.body)


def import_graph(functions: bool = False) -> dict[str, set[str]]:
    """Each module of the package -> the modules of the package its imports run."""
    known = modules()

    def ancestors(name: str) -> set[str]:
        parts = name.split(".")
        return {".".join(parts[:end]) for end in range(1, len(parts))}

    def deepest(name: str) -> str | None:
        parts = name.split(".")
        for end in range(len(parts), 0, -1):
            if ".".join(parts[:end]) in known:
                return ".".join(parts[:end])
        return None

    graph: dict[str, set[str]] = {}
    for name, path in known.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        named: set[str] = set()
        for node in module_level_imports(ast.parse(path.read_text(), filename=str(path)), functions):
            if isinstance(node, ast.Import):
                named |= {deepest(alias.name) for alias in node.names}
                continue
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                # `from P import m` names the submodule P.m; `from P import x` reads x off P
                named.add(f"{source}.{alias.name}" if f"{source}.{alias.name}" in known else deepest(source))
        named.discard(None)
        edges = set(named)
        for target in named:
            # importing a.b.c runs a.b's __init__ first, unless a.b is a package above the
            # importer (then it is already being imported, and nothing is read off it)
            edges |= {above for above in ancestors(target) if above in known} - ancestors(name)
        edges.discard(name)
        edges.discard(PACKAGE)  # the root __init__ imports nothing
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a path [a, b, ..., a], or None."""
    white, grey, black = 0, 1, 2
    colour = dict.fromkeys(graph, white)
    for start in sorted(graph):
        if colour[start] != white:
            continue
        path = [start]
        iterators = [iter(sorted(graph[start]))]
        colour[start] = grey
        while iterators:
            step = next(iterators[-1], None)
            if step is None:
                colour[path.pop()] = black
                iterators.pop()
            elif colour.get(step, black) == grey:
                return path[path.index(step) :] + [step]
            elif colour.get(step) == white:
                colour[step] = grey
                path.append(step)
                iterators.append(iter(sorted(graph[step])))
    return None


def function_level_imports(tree: ast.Module) -> int:
    """Import statements inside function bodies (anywhere in the module)."""
    count = 0
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for inner in ast.walk(node):
                if isinstance(inner, (ast.Import, ast.ImportFrom)):
                    count += 1
    return count


def test_graph_sees_the_package():
    graph = import_graph()
    assert "traitscope.cli" in graph
    assert any(graph.values()), "no module-level import found: the graph builder reads nothing"


def test_module_level_imports_have_no_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "module-level import cycle: " + " -> ".join(cycle)


def test_no_cycle_hides_behind_a_function_level_import():
    cycle = find_cycle(import_graph(functions=True))
    assert cycle is None, "import cycle through function-level imports: " + " -> ".join(cycle)


def test_function_level_imports_defer_a_start_up_cost():
    """A function-level import is kept only where it keeps a module out of every command's
    start-up: its target must not already be loaded by `import traitscope.cli` (682 modules,
    pandas among them, about 1.1 s on an AMD EPYC). Where it is, hoisting the import costs no
    job anything and shows the dependency at the top; the cycle test above says it is safe."""
    import json
    import subprocess
    import sys

    probe = "import json, sys, traitscope.cli; print(json.dumps(sorted(sys.modules)))"
    loaded = set(
        json.loads(subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True).stdout)
    )
    assert "traitscope.cli" in loaded and "torch" not in loaded  # the probe sees the real start-up
    needless = []
    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for inner in ast.walk(node):
                if isinstance(inner, ast.Import):
                    targets = [alias.name for alias in inner.names]
                elif isinstance(inner, ast.ImportFrom) and not inner.level:
                    targets = [inner.module]
                else:
                    continue
                if all(t in loaded for t in targets):
                    needless.append(f"{name}:{inner.lineno} ({', '.join(targets)})")
    assert not needless, "function-level imports of modules the CLI already loads: " + "; ".join(needless)


if __name__ == "__main__":
    # `python tests/test_imports.py`: the cycle (if any) and the count of function-level imports
    # (a nested function's import counts once per enclosing function, as ast.walk sees it).
    for functions in (False, True):
        cycle = find_cycle(import_graph(functions))
        label = "with function-level imports" if functions else "module-level"
        print(f"cycle ({label}):", " -> ".join(cycle) if cycle else "none")
    total = 0
    for path in modules().values():
        total += function_level_imports(ast.parse(path.read_text()))
    print("function-level imports:", total)
