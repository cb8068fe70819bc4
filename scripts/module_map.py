"""The module map of posenc: lines per module, functions over the size limit, import cycles.

    python scripts/module_map.py            # the map: every module, longest first
    python scripts/module_map.py --check    # exit 1 if a module or function is over the limit
                                            # or the modules import each other in a cycle

It reads the source (``ast``, nothing is imported), so it runs anywhere in a second. The
repository keeps ``cli/`` and ``tasks/`` at its top level; they are the installed
``posenc.cli`` and ``posenc.tasks`` and are named so here. Limits: a module of at most
``--max-module`` lines (500), a function or method of at most ``--max-function`` lines (80,
decorators and docstring included). Two import graphs: ``top level`` (imports that run when
the module is imported: a cycle there can break an import) and ``all`` (imports inside
functions too: a cycle there is a tangle of responsibilities); ``--check`` requires both
acyclic. ``TYPE_CHECKING`` blocks are left out of both.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Repository folder -> installed package name.
PACKAGES = {"posenc": "posenc", "cli": "posenc.cli", "tasks": "posenc.tasks"}
# What the limits apply to (tasks/ is shown in the map but is measured by its own owners).
CHECKED = ("posenc", "posenc.cli")


def modules(root: Path = ROOT) -> dict[str, Path]:
    """Installed module name -> source file, for every module under `PACKAGES`."""
    out = {}
    for folder, package in PACKAGES.items():
        for path in sorted((root / folder).rglob("*.py")):
            if "__pycache__" in path.parts:
                continue
            parts = list(path.relative_to(root / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join([package, *parts])] = path
    return out


def long_functions(tree: ast.Module, limit: int) -> list[tuple[str, int]]:
    """(qualified name, lines) of every function longer than ``limit`` lines."""
    found = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                name = f"{prefix}{child.name}"
                if not isinstance(child, ast.ClassDef):
                    first = min([child.lineno, *(d.lineno for d in child.decorator_list)])
                    size = child.end_lineno - first + 1
                    if size > limit:
                        found.append((name, size))
                visit(child, name + ".")
            else:
                visit(child, prefix)

    visit(tree, "")
    return found


def _type_checking(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")
    )


def imports(name: str, path: Path, tree: ast.Module, known: set[str]) -> dict[str, bool]:
    """Modules of ``known`` that ``name`` imports: {module: imported at top level?}."""
    is_package = path.name == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]
    out: dict[str, bool] = {}

    def add(target: str, top: bool) -> None:
        while target and target not in known:  # posenc.x.attr -> posenc.x
            target = target.rpartition(".")[0]
        if target and target != name:
            out[target] = out.get(target, False) or top
        # Importing posenc.x.y runs posenc.x's __init__ first (unless it is this module's own
        # package, which is running already): an import of what that __init__ imports.
        package = target.rpartition(".")[0]
        while package:
            if package in known and package != name and not name.startswith(package + "."):
                out[package] = out.get(package, False) or top
            package = package.rpartition(".")[0]

    def visit(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if _type_checking(child):
                continue
            if isinstance(child, ast.Import):
                for alias in child.names:
                    add(alias.name, top)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")
                    base = base[: len(base) - child.level + 1]
                    source = ".".join([*base, *([child.module] if child.module else [])])
                else:
                    source = child.module or ""
                for alias in child.names:  # `from posenc import run` imports posenc.run.execute
                    full = f"{source}.{alias.name}"
                    add(full if full in known else source, top)
            elif isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                visit(child, False)
            else:
                visit(child, top)

    visit(tree, True)
    return out


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                connect(w)
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
            connect(v)
    return sorted(found)


def measure(max_function: int = 80) -> dict:
    mods = modules()
    known = set(mods)
    lines, long, top_graph, all_graph = {}, {}, {}, {}
    for name, path in mods.items():
        text = path.read_text()
        tree = ast.parse(text)
        lines[name] = len(text.splitlines())
        long[name] = long_functions(tree, max_function)
        deps = imports(name, path, tree, known)
        top_graph[name] = {m for m, top in deps.items() if top}
        all_graph[name] = set(deps)
    return {
        "paths": mods,
        "lines": lines,
        "long": long,
        "all_graph": all_graph,
        "top_cycles": cycles(top_graph),
        "all_cycles": cycles(all_graph),
    }


def checked(name: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in CHECKED) and not (
        name == "posenc.tasks" or name.startswith("posenc.tasks.")
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when over a limit")
    parser.add_argument("--max-module", type=int, default=500)
    parser.add_argument("--max-function", type=int, default=80)
    parser.add_argument("--all", action="store_true", help="list every module, not the top 25")
    args = parser.parse_args(argv)
    m = measure(args.max_function)
    names = sorted(m["lines"], key=lambda n: (-m["lines"][n], n))
    mine = [n for n in names if checked(n)]
    total = sum(m["lines"][n] for n in mine)
    print(f"posenc/ and cli/: {len(mine)} modules, {total} lines (tasks/ shown, not checked)")
    print(f"{'lines':>6}  {'module':<34} file")
    for n in names if args.all else names[:25]:
        flag = "  << over" if checked(n) and m["lines"][n] > args.max_module else ""
        print(f"{m['lines'][n]:>6}  {n:<34} {m['paths'][n].relative_to(ROOT)}{flag}")
    if not args.all and len(names) > 25:
        print(f"   ... {len(names) - 25} more (--all)")
    big = [n for n in mine if m["lines"][n] > args.max_module]
    long = [(n, f, size) for n in mine for f, size in m["long"][n]]
    print(f"\nmodules over {args.max_module} lines: {len(big)}")
    print(f"functions over {args.max_function} lines: {len(long)}")
    for n, f, size in sorted(long, key=lambda x: -x[2]):
        print(f"{size:>6}  {n}.{f}")
    for label in ("top", "all"):
        found = [c for c in m[f"{label}_cycles"] if any(checked(n) for n in c)]
        kind = "top-level imports" if label == "top" else "all imports, in functions too"
        print(f"import cycles ({kind}): {len(found)}")
        for c in found:
            print("        " + " <-> ".join(c))
    over = big or long or any(checked(n) for c in m["top_cycles"] + m["all_cycles"] for n in c)
    return 1 if args.check and over else 0


if __name__ == "__main__":
    sys.exit(main())
