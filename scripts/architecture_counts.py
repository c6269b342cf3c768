"""Issue 26's counts for a checkout: lines of the CLI surface (cli.py, every experiment's
`add_commands` and the helpers it calls in the same module, common.smk and common_judge.smk),
`add_argument` calls, functions with >= 9 parameters, and function-level imports, over
src/traitscope.

Usage: python scripts/architecture_counts.py [CHECKOUT]   (default: this checkout)
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path


def _params(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    a = fn.args
    return len(a.posonlyargs) + len(a.args) + len(a.kwonlyargs) + bool(a.vararg) + bool(a.kwarg)


def counts(root: Path) -> dict[str, int]:
    src = root / "src" / "traitscope"
    add_argument = wide = local_imports = surface = 0
    for path in sorted(src.rglob("*.py")):
        tree = ast.parse(path.read_text())
        lines = path.read_text().splitlines()
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "add_argument":
                add_argument += 1
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                wide += _params(node) >= 9
                local_imports += sum(isinstance(n, ast.Import | ast.ImportFrom) for n in ast.walk(node))
                if node.name in ("add_commands", "add_behaviour_commands", "add_sae_commands"):
                    surface += node.end_lineno - node.lineno + 1
        if path.name == "cli.py" and path.parent == src:
            surface += len(lines)
    for common in sorted((root / "workflow" / "rules").glob("common*.smk")):
        surface += len(common.read_text().splitlines())
    return {
        "cli.py + add_commands + common*.smk lines": surface,
        "add_argument calls": add_argument,
        "functions with >= 9 parameters": wide,
        "function-level imports": local_imports,
    }


if __name__ == "__main__":
    root = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parents[1])
    for name, value in counts(root).items():
        print(f"{name}: {value}")
