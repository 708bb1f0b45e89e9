"""The house's import rules (docs/house.md), read off the source with ``ast``: no import circles, the engine
knows no model/LLM/web/scenario, models know no CLI/server/session/LLM, the server reaches the project only
through the session and run-directory modules (and scenarios), and reading a run needs no JAX.

Imports are collected everywhere in a module, inside functions too (``lazy``), except under
``if TYPE_CHECKING:`` (never executed). The layer rules (b)-(d) apply to every import, lazy or not: a lazy
import is still a dependency. The circle rule (a) looks at module-level imports only: those run while a
module is being imported, so a circle among them can meet a half-initialised module and fail depending on
which module is imported first. A lazy import runs when its function is called, after every module-level
import has finished, so it cannot see a half-initialised module; lazy imports are how a lower module
reaches a higher one only where it needs to (e.g. ``simcore.session`` importing ``llm_policy`` when a
scenario has a policy).
"""
from __future__ import annotations

import ast
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("simcore", "server", "scenarios", "analysis", "llm_policy")


@dataclass(frozen=True)
class Import:
    source: str  # the importing module
    target: str  # the imported project module
    line: int
    lazy: bool  # inside a function (or a class body's method)


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def project_modules(root: Path = ROOT) -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in (root / pkg).rglob("*.py"):
            out[module_name(path, root)] = path
    return out


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or \
        (isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The project module ``name`` is, or is inside of (``simcore.rundir.read_table`` -> ``simcore.rundir``)."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> list[Import]:
    tree = ast.parse(path.read_text(), str(path))
    is_pkg = path.name == "__init__.py"
    out: list[Import] = []

    def visit(node: ast.AST, lazy: bool) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child, lazy)
            return
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            lazy = True
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = _resolve(alias.name, modules)
                if target is not None:
                    out.append(Import(module, target, node.lineno, lazy))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_pkg else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            for alias in node.names:  # `from pkg import sub` imports the submodule pkg.sub
                target = _resolve(f"{prefix}.{alias.name}", modules) if alias.name != "*" else None
                target = target or _resolve(prefix, modules)
                if target is not None:
                    out.append(Import(module, target, node.lineno, lazy))
        for child in ast.iter_child_nodes(node):
            visit(child, lazy)

    visit(tree, False)
    return [i for i in out if i.target != module]


def import_graph(root: Path = ROOT) -> list[Import]:
    modules = project_modules(root)
    return [imp for name, path in sorted(modules.items()) for imp in imports_of(name, path, modules)]


def cycles(edges: list[Import]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    graph: dict[str, set[str]] = {}
    for e in edges:
        graph.setdefault(e.source, set()).add(e.target)
        graph.setdefault(e.target, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def strong(v: str) -> None:  # recursion depth is bounded by the module count (a few hundred)
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return found


def _under(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def violations(edges: list[Import], sources: tuple[str, ...], *, forbidden: tuple[str, ...] = (),
               allowed: tuple[str, ...] | None = None) -> list[str]:
    """``source -> target (file line)`` for each import from ``sources`` into ``forbidden`` (or outside
    ``allowed``)."""
    bad = []
    for e in edges:
        if not _under(e.source, sources):
            continue
        if _under(e.target, forbidden) or (allowed is not None and not _under(e.target, allowed)):
            bad.append(f"{e.source} -> {e.target} (line {e.line}{', lazy' if e.lazy else ''})")
    return sorted(set(bad))


@pytest.fixture(scope="module")
def edges() -> list[Import]:
    return import_graph()


# -- the rules ----------------------------------------------------------------------------------
def test_the_graph_sees_the_known_imports(edges):
    """The collector itself: module-level, relative, `from pkg import submodule` and lazy imports."""
    pairs = {(e.source, e.target, e.lazy) for e in edges}
    assert ("simcore.session", "simcore.engine", False) in pairs  # from .engine import ...
    assert ("simcore.checkpoint", "simcore.rundir", False) in pairs  # from . import rundir
    assert ("server.app", "simcore.rundir", False) in pairs  # from simcore import rundir
    assert ("simcore.session", "llm_policy", True) in pairs  # inside make_archetype_policy
    assert ("server.runs", "simcore.session", True) in pairs  # import simcore.session, inside a function


def test_no_import_circles_between_project_modules(edges):
    module_level = [e for e in edges if not e.lazy]
    assert cycles(module_level) == []


def test_the_engine_imports_no_model_llm_server_scenario_or_analysis(edges):
    assert violations(edges, ("simcore.engine",),
                      forbidden=("simcore.models", "llm_policy", "server", "scenarios", "analysis")) == []


def test_models_import_no_cli_server_session_or_llm(edges):
    assert violations(edges, ("simcore.models",),
                      forbidden=("simcore.cli", "server", "simcore.session", "llm_policy")) == []


def test_the_server_reaches_the_project_only_through_session_rundir_and_scenarios(edges):
    assert violations(edges, ("server",),
                      allowed=("simcore.session", "simcore.rundir", "scenarios", "server")) == []


def test_the_rules_fail_on_a_violation(tmp_path):
    """A copy of the tree with one forbidden import each: every rule reports it."""
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            dest = tmp_path / path.relative_to(ROOT)
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_text(path.read_text())
    (tmp_path / "simcore/engine/ops.py").write_text((ROOT / "simcore/engine/ops.py").read_text()
                                                   + "\n\ndef _f():\n    from ..models import build\n")
    (tmp_path / "server/data.py").write_text((ROOT / "server/data.py").read_text() + "\nfrom simcore import checkpoint\n")
    (tmp_path / "simcore/rundir.py").write_text((ROOT / "simcore/rundir.py").read_text()
                                                + "\nfrom .session import RunSession\n")  # session -> ... -> rundir
    edges = import_graph(tmp_path)
    assert violations(edges, ("simcore.engine",), forbidden=("simcore.models",)) == \
        [f"simcore.engine.ops -> simcore.models.build (line {len((ROOT / 'simcore/engine/ops.py').read_text().splitlines()) + 4}, lazy)"]
    assert any(v.startswith("server.data -> simcore.checkpoint") for v in
               violations(edges, ("server",), allowed=("simcore.session", "simcore.rundir", "scenarios", "server")))
    assert any({"simcore.rundir", "simcore.session"} <= set(c) for c in cycles([e for e in edges if not e.lazy]))


# -- reading a run imports no JAX ---------------------------------------------------------------
READ_RUN = """
import sys
import analysis
from analysis.readers import read_manifest, scan_agents, scan_metrics
from analysis.surveys import read_surveys
from simcore import rundir
run = sys.argv[1]
m = read_manifest(run)
metrics = scan_metrics(run).collect()
assert metrics["step"].to_list() == list(range(m["steps"])), metrics["step"].to_list()
assert scan_agents(run, labels=True).collect().height > 0
assert rundir.read_network(run)["step"] == m["steps"]
assert read_surveys(run).height == 0
assert "jax" not in sys.modules, sorted(k for k in sys.modules if k.startswith(("jax", "simcore")))
print("ok")
"""


def test_importing_analysis_and_reading_a_run_leaves_jax_unimported(tmp_path):
    from scenarios import load_scenario
    from simcore.session import run_scenario

    sc = load_scenario("covid_small", ["population.size=2000", "output.sample_agents=50", "run.steps=6",
                                       "run.chunk_size=3"])
    run = run_scenario(sc, tmp_path / "run")
    res = subprocess.run([sys.executable, "-c", READ_RUN, str(run)], capture_output=True, text=True, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr[-2000:]
