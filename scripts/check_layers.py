"""Check the import graph of src/captioner: no import cycle between modules, and no import
that runs uphill (a lower layer importing a higher one). Imports inside functions count too.

    python scripts/check_layers.py          # prints every violation; exit code 1 if any
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

#: Layer of each top-level module or package of captioner (lower = more basic).
LAYERS: dict[str, int] = {
    "errors": 0, "fileio": 0, "runlog": 0, "cliargs": 0, "runtime": 0,
    "vision": 1, "viz": 1,  # plots draw pictures that vision loads
    "data": 2,
    "features": 3,
    "doctype": 4, "denoise": 4, "caption": 4,  # the three models: siblings
    "training": 5, "evaluation": 5,
    "demo": 6, "serve": 6, "pipeline": 6, "commands": 7, "cli": 7,
    "__init__": 8,  # the package's API re-exports every layer (its __version__ is free to all)
}  # fmt: skip
#: Modules named ``*.commands`` are the CLI handlers of their stage: the CLI layer.
CLI_LAYER = 7


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, name: str, modules: set[str]) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("captioner"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            if target.startswith("captioner"):
                subs = {f"{target}.{a.name}" for a in node.names} & modules
                found.update(subs)  # `from captioner import runlog` imports captioner.runlog
                if len(subs) < len(node.names):
                    found.add(target)
    return found


def layer_of(module: str) -> tuple[str, int]:
    top = module.split(".")[1] if "." in module else "__init__"
    if module.endswith(".commands"):
        return top, CLI_LAYER
    return top, LAYERS.get(top, -1)


def main() -> int:
    modules = {module_name(p): p for p in SRC.joinpath("captioner").rglob("*.py")}
    graph = {
        name: {m for m in imports_of(path, name, set(modules)) if m in modules and m != name}
        for name, path in modules.items()
    }
    problems = []
    for name, targets in sorted(graph.items()):
        top, rank = layer_of(name)
        if rank < 0:
            problems.append(f"{name}: no layer for {top!r} in scripts/check_layers.py")
        for target in sorted(targets):
            other, other_rank = layer_of(target)
            if target != "captioner" and other != top and other_rank > rank:
                problems.append(f"uphill: {name} (layer {rank}) imports {target} ({other_rank})")
    problems += [f"cycle: {' -> '.join(c)}" for c in cycles(graph)]
    for problem in problems:
        print(problem)
    print(
        f"{len(modules)} modules, {sum(map(len, graph.values()))} imports, {len(problems)} problems"
    )
    return 1 if problems else 0


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


if __name__ == "__main__":
    sys.exit(main())
