"""The package order, enforced: every import in the package code (module-level and function-local alike) goes
down the declared order or stays inside its package, no module imports itself back through others, and the rank
side (trainer_core) names no scheduler.

    hydra_plugins  ->  jobs  ->  cluster  ->  trainer_core  ->  configs

jobs: the command line, run folders and records, the rank entry and the batch host's steps (top).
cluster: planning, rendering, the backends and their queries. trainer_core: what a rank runs, and the rank
contract it reads. configs: the config groups, schema and checks (bottom).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# bottom first: a package may import the ones before it, never the ones after
ORDER = ("configs", "trainer_core", "cluster", "jobs", "hydra_plugins")
RANK = {name: i for i, name in enumerate(ORDER)}
# the rank side knows no scheduler: none of these words appear in trainer_core's code
SCHEDULER_WORDS = ("scontrol", "sbatch", "squeue", "sacct", "SLURM_", "SLURMD_")


def module_name(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package_files() -> list[Path]:
    return sorted(p for pkg in ORDER for p in (REPO / pkg).rglob("*.py"))


def imports_of(path: Path) -> list[tuple[str, int]]:
    """(imported module, line) for every import in the file, wherever it stands; relative imports resolved."""
    tree = ast.parse(path.read_text(), str(path))
    here = module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            out.append((base, node.lineno))
            # `from pkg import module` imports pkg.module when it is one
            out += [(f"{base}.{a.name}", node.lineno) for a in node.names]
    return out


def own_modules() -> set[str]:
    return {module_name(p) for p in package_files()}


def edges() -> list[tuple[str, str, str]]:
    """(importer module, imported module, where) for every import of one of this project's modules."""
    mods = own_modules()
    out = []
    for path in package_files():
        me = module_name(path)
        for target, line in imports_of(path):
            if target in mods and target != me:
                out.append((me, target, f"{path.relative_to(REPO)}:{line}"))
    return out


def layer_violations(found: list[tuple[str, str, str]]) -> list[str]:
    bad = []
    for src, dst, where in found:
        a, b = src.split(".")[0], dst.split(".")[0]
        if a in RANK and b in RANK and RANK[b] > RANK[a]:
            bad.append(f"{where}: {src} imports {dst} ({a} may not import {b}: the order is {' < '.join(ORDER)})")
    return bad


def cycles(found: list[tuple[str, str, str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan)."""
    graph: dict[str, set[str]] = {}
    for src, dst, _ in found:
        # a package's __init__ importing its own submodules is how a package exposes them, not a cycle
        if dst.startswith(src + "."):
            continue
        graph.setdefault(src, set()).add(dst)
        graph.setdefault(dst, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    groups: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return groups


def test_the_parser_sees_function_local_imports(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("def f():\n    from jobs import cli\n    import cluster.plan\n")
    assert {"jobs", "jobs.cli", "cluster.plan"} <= {t for t, _ in imports_of_file(f)}


def imports_of_file(path: Path) -> list[tuple[str, int]]:
    tree = ast.parse(path.read_text())
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names.append((node.module or "", node.lineno))
            names += [(f"{node.module}.{a.name}", node.lineno) for a in node.names]
    return names


def test_no_import_goes_up_the_package_order():
    found = edges()
    assert len(found) > 50, "the parser found almost no imports between the project's modules"
    bad = layer_violations(found)
    assert not bad, "imports against the package order:\n" + "\n".join(bad)


@pytest.mark.parametrize("src,dst", [("trainer_core.train", "jobs.runs"), ("cluster.plan", "jobs.app"),
                                     ("configs.validate", "trainer_core.contract"), ("trainer_core.x", "cluster.y")])
def test_a_bad_edge_is_caught(src, dst):
    assert layer_violations([(src, dst, "here:1")]), f"{src} -> {dst} should be refused"


def test_the_order_allows_going_down():
    assert not layer_violations([("jobs.app", "cluster.plan", "x"), ("cluster.plan", "trainer_core.contract", "x"),
                                 ("trainer_core.train", "configs.schema", "x"), ("jobs.cli", "jobs.app", "x")])


def test_no_module_cycle():
    found = cycles(edges())
    assert not found, "modules that import each other (directly or through others): " + "; ".join(
        " <-> ".join(g) for g in found)


def test_a_cycle_is_caught():
    assert cycles([("a.x", "a.y", ""), ("a.y", "a.z", ""), ("a.z", "a.x", ""), ("a.q", "a.x", "")]) == [
        ["a.x", "a.y", "a.z"]]


def test_the_rank_side_names_no_scheduler():
    hits = []
    for path in sorted((REPO / "trainer_core").rglob("*.py")):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if any(w in line for w in SCHEDULER_WORDS):
                hits.append(f"{path.relative_to(REPO)}:{n}: {line.strip()}")
    assert not hits, "trainer_core reaches the scheduler:\n" + "\n".join(hits)
