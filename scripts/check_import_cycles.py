"""Print the import cycles inside the Fastlane pack, between modules and between its top-level folders.

Why: the architecture rule is no import cycles between ``cachers/``, ``quantizers/``, ``compilers/``, ``measure/``
and ``nodes/`` (and none between modules). Every import counts, function-level ones included, since a cycle hidden
inside a function is still a cycle. Exits 1 if it finds one.

    python scripts/check_import_cycles.py
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = ("cachers", "quantizers", "compilers", "measure", "nodes", "demo")


def pack_modules(root: Path = ROOT) -> dict[str, Path]:
    """Dotted name (relative to the pack) -> file, for every module in the pack's folders."""
    found = {}
    for folder in FOLDERS:
        for path in sorted((root / folder).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    package = module.split(".") if is_package else module.split(".")[:-1]
    if node.level:
        package = package[:len(package) - (node.level - 1)]
        return ".".join([*package, *(node.module.split(".") if node.module else [])])
    return node.module or ""


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The pack modules ``module`` imports anywhere in its file (top level or inside functions)."""
    is_package = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = _resolve(module, is_package, node)
            for alias in node.names:
                candidate = f"{base}.{alias.name}" if base else alias.name
                if candidate in modules:
                    out.add(candidate)
                elif base in modules:
                    out.add(base)
    out.discard(module)
    return out


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
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

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def edges_within(graph: dict[str, set[str]], component: list[str]) -> list[str]:
    members = set(component)
    return [f"{a} -> {b}" for a in component for b in sorted(graph.get(a, ())) if b in members]


def main() -> int:
    modules = pack_modules()
    graph = {m: imports_of(m, p, modules) for m, p in modules.items()}
    # a package's __init__ importing its own submodules is not a cycle between modules
    graph = {m: {d for d in deps if not d.startswith(f"{m}.")} for m, deps in graph.items()}
    folders: dict[str, set[str]] = {}
    for m, deps in graph.items():
        folders.setdefault(m.split(".")[0], set()).update(d.split(".")[0] for d in deps if d.split(".")[0] != m.split(".")[0])
    module_cycles, folder_cycles = cycles(graph), cycles(folders)
    for title, graph_, found in (("module", graph, module_cycles), ("folder", folders, folder_cycles)):
        if not found:
            print(f"no {title} import cycles")
        for component in found:
            print(f"{title} cycle: {' <-> '.join(component)}")
            for edge in edges_within(graph_, component):
                print(f"    {edge}")
    return 1 if module_cycles or folder_cycles else 0


if __name__ == "__main__":
    sys.exit(main())
