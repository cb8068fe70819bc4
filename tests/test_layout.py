"""One home for each fact: run-folder file names and key sets are defined in one module."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = {
    "METRICS",
    "CHECKPOINT",
    "CONFIG",
    "ERROR",
    "LOG",
    "RESULTS_CSV",
    "REPORT_MD",
    "PLOTS",
    "EXECUTION_KEYS",
    "METADATA_KEYS",
    "LEGACY_DEFAULTS",
    "RETIRED_KEYS",
    "NAMING_KEYS",
}
FILE_NAMES = {
    "metrics.json",
    "checkpoint.pt",
    "config.yaml",
    "error.json",
    "results.csv",
    "report.md",
}


def module_constants(path: Path) -> dict[str, object]:
    """Top-level NAME = value assignments of a module: {name: value or None}."""
    out = {}
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            value = node.value
            for t in targets:
                if isinstance(t, ast.Name):
                    out[t.id] = value.value if isinstance(value, ast.Constant) else None
    return out


def test_run_folder_names_and_key_sets_are_defined_once():
    homes: dict[str, list[str]] = {}
    for path in sorted([*(ROOT / "posenc").rglob("*.py"), *(ROOT / "cli").rglob("*.py")]):
        rel = str(path.relative_to(ROOT))
        for name, value in module_constants(path).items():
            if name in SHARED or value in FILE_NAMES:
                homes.setdefault(name, []).append(rel)
    twice = {name: where for name, where in homes.items() if len(where) > 1}
    assert not twice, f"defined in more than one module: {twice}"
    file_names = {n for n, where in homes.items() if n in SHARED - {"NAMING_KEYS"}}
    assert all(homes[n] == ["posenc/runfolder.py"] for n in file_names), homes


def test_every_subpackage_of_posenc_is_installed():
    """pyproject lists its packages by name (folders are mapped into the posenc namespace):
    a new subpackage missing there would be absent from a built wheel."""
    import tomllib

    listed = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    found = {
        ".".join(p.parent.relative_to(ROOT).parts)
        for p in (ROOT / "posenc").rglob("__init__.py")
        if "__pycache__" not in p.parts
    }
    assert found <= listed, f"not in pyproject's packages: {sorted(found - listed)}"


# Functions allowed over the limit (none today); the list only shrinks.
LONG_FUNCTIONS_LEFT: set[str] = set()


def test_modules_functions_and_imports_stay_within_the_module_map_limits():
    """scripts/module_map.py: no module of posenc/ or cli/ over 500 lines, no function over
    80 lines beyond `LONG_FUNCTIONS_LEFT`, no cycle among the imports, those inside
    functions included."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("module_map", ROOT / "scripts" / "module_map.py")
    module_map = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module_map)
    m = module_map.measure(max_function=80)
    mine = [n for n in m["lines"] if module_map.checked(n)]
    assert not [n for n in mine if m["lines"][n] > 500], "modules over 500 lines"
    long = {f"{n}.{f}" for n in mine for f, _ in m["long"][n]}
    assert long <= LONG_FUNCTIONS_LEFT, f"functions over 80 lines: {sorted(long)}"
    cycles = m["top_cycles"] + m["all_cycles"]  # tasks/ included
    assert not cycles, f"import cycles: {cycles}"


def _module_map():
    import importlib.util

    spec = importlib.util.spec_from_file_location("module_map", ROOT / "scripts" / "module_map.py")
    module_map = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module_map)
    return module_map


def _reached(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for target in graph.get(todo.pop(), ()):
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


def _inside(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def test_the_encodings_never_reach_the_model_and_the_tasks_neither_the_encodings():
    """The floors point one way (STYLE.md), counting imports inside functions and the package
    ``__init__`` an import runs: an encoding or task module never reaches posenc.model (nor
    the conformance checks, which build one), and a task never reaches posenc.encodings."""
    graph = _module_map().measure()["all_graph"]
    above_encodings = ("posenc.model", "posenc.conformance")
    for name in graph:
        reached = _reached(graph, name)
        if _inside(name, "posenc.encodings"):
            bad = sorted(r for r in reached if r in above_encodings)
            assert not bad, f"{name} reaches {bad}"
        if _inside(name, "posenc.tasks"):
            bad = sorted(
                r for r in reached if r in above_encodings or _inside(r, "posenc.encodings")
            )
            assert not bad, f"{name} reaches {bad}"
        if name == "posenc.encodings.registry":
            assert "posenc.runfolder" not in reached, "the registry knows no run folder"


def test_the_module_map_counts_the_package_init_an_import_runs(tmp_path):
    """`from pkg.sub import x` runs ``pkg/__init__.py``: an edge to pkg, unless pkg is the
    importer's own package (running already)."""
    import ast

    module_map = _module_map()
    known = {"p", "p.a", "p.b", "q", "q.c"}
    tree = ast.parse("from p.a import x\nfrom q.c import y\ndef f():\n    import p.b\n")
    assert module_map.imports("q.d", tmp_path / "d.py", tree, known) == {
        "p.a": True,
        "p": True,
        "q.c": True,
        "p.b": False,
    }
