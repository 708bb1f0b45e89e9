"""Property-based fuzzing of scenario files (hypothesis).

Documents come from two sources: generated from the schema (``Scenario.model_json_schema()``:
types, bounds, enums, discriminated unions, required keys), and random mutations of the built-in
scenarios (wrong types, out-of-range and non-finite values, missing and extra keys, deep nesting,
odd unicode, and text-level damage: duplicated lines, tags, anchors, truncation).

Property: ``simcore validate`` and ``simcore run --steps 1`` either succeed (exit 0) or exit 2 with a
single ``error: field: reason`` line; never a traceback, never another exit code, never a file
outside the run directory. Both are called in-process through ``simcore.cli.main`` (what
``python -m simcore`` runs), so thousands of documents fit in CI; ``run`` gets a smaller sample at
tiny population sizes. ``-m fuzz`` runs many more (``SIMCORE_FUZZ_EXAMPLES``, ``SIMCORE_FUZZ_SEED``).
"""
from __future__ import annotations

import contextlib
import io
import math
import os
import re
import time
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from scenarios import builtin_dir, builtin_names
from scenarios.schema import Scenario
from simcore.cli import main

SEED = int(os.environ.get("SIMCORE_FUZZ_SEED", "20261202"))
VALIDATE_EXAMPLES = int(os.environ.get("SIMCORE_FUZZ_CI_EXAMPLES", "2000"))
RUN_EXAMPLES = int(os.environ.get("SIMCORE_FUZZ_CI_RUNS", "8"))
LONG_EXAMPLES = int(os.environ.get("SIMCORE_FUZZ_EXAMPLES", "20000"))
ONE_LINE = re.compile(r"^error: \S.*?: \S.*$")  # error: field: reason, the field never blank

BUILTINS = {n: yaml.safe_load((builtin_dir() / f"{n}.yaml").read_text()) for n in builtin_names()}
TINY_SEIR = {"name": "tiny", "population": {"kind": "homogeneous", "size": 200},
             "graph": {"kind": "erdos_renyi", "mean_degree": 4}, "model": {"kind": "seir"},
             "run": {"steps": 2}, "output": {"sample_agents": 10, "sample_every": 1}}
BUILTINS_AND_TINY = {**BUILTINS, "tiny_seir": TINY_SEIR}
SCHEMA = Scenario.model_json_schema()
DEFS = SCHEMA["$defs"]


# -- documents from the schema ------------------------------------------------------------------------------
def _number(draw, s: dict, integer: bool):
    lo = s.get("minimum", s.get("exclusiveMinimum"))
    hi = s.get("maximum", s.get("exclusiveMaximum"))
    if integer:
        lo = -(2**31) if lo is None else int(lo) + ("exclusiveMinimum" in s)
        hi = 2**31 - 1 if hi is None else int(hi) - ("exclusiveMaximum" in s)
        if draw(st.booleans()):  # mostly small, like real files
            hi = min(hi, lo + 1000) if lo > -(2**31) else min(hi, 1000)
            lo = max(lo, -10)
        return draw(st.integers(min_value=lo, max_value=max(lo, hi)))
    return draw(st.floats(min_value=lo, max_value=hi, allow_nan=False, allow_infinity=False,
                          exclude_min=lo is not None and "exclusiveMinimum" in s,
                          exclude_max=hi is not None and "exclusiveMaximum" in s))


def _from_schema(draw, s: dict, depth: int = 0):
    if "$ref" in s:
        return _from_schema(draw, DEFS[s["$ref"].rsplit("/", 1)[1]], depth)
    for key in ("oneOf", "anyOf"):
        if key in s:
            return _from_schema(draw, draw(st.sampled_from(s[key])), depth)
    if "const" in s:
        return s["const"]
    if "enum" in s:
        return draw(st.sampled_from(s["enum"]))
    t = s.get("type")
    if t == "object":
        props = s.get("properties", {})
        out = {}
        for name, sub in props.items():
            if name in s.get("required", ()) or draw(st.integers(0, 3)) == 0:
                out[name] = _from_schema(draw, sub, depth + 1)
        if not props and depth < 6:  # free-form mappings (backend): a few scalars
            out = draw(st.dictionaries(st.sampled_from(["kind", "n_ctx", "seed", "model", "x"]),
                                       st.one_of(st.integers(-5, 5000), st.text(max_size=8)), max_size=3))
        return out
    if t == "array":
        lo, hi = s.get("minItems", 0), s.get("maxItems", lo_hi_default(s))
        return [_from_schema(draw, s.get("items", {}), depth + 1) for _ in range(draw(st.integers(lo, max(lo, hi))))]
    if t == "integer":
        return _number(draw, s, True)
    if t == "number":
        return _number(draw, s, False)
    if t == "boolean":
        return draw(st.booleans())
    if t == "string":
        if "pattern" in s:
            return draw(st.from_regex(s["pattern"], fullmatch=True))
        return draw(st.text(min_size=s.get("minLength", 0), max_size=20))
    if t == "null":
        return None
    return draw(st.none())


def lo_hi_default(s: dict) -> int:
    return s.get("minItems", 0) + 3


@st.composite
def schema_documents(draw):
    doc = _from_schema(draw, SCHEMA)
    if isinstance(doc.get("population"), dict):  # keep most of them buildable-small
        doc["population"]["size"] = draw(st.integers(1, 3000))
    return doc


# -- mutations -----------------------------------------------------------------------------------------------
def _nested(depth: int):
    v: object = 1
    for _ in range(depth):
        v = [v]
    return v


ODD = ["", " ", "\u202e\u0000x", "ü🦠\u200b", "../../etc/passwd", "/abs", "C:\\x", "~", "%s%n", "{0}", "{",
       "yes", "no", "on", "null", "NaN", ".inf", "1e400", "0x10", "a" * 3000]
WRONG = [None, True, False, 0, -1, 1, 2, 7, 2**31, 2**31 - 1, -(2**31) - 1, 10**20, -(10**20), 0.5, -0.0, 1e-300,
         1e39, -1e39, math.inf, -math.inf, math.nan, [], {}, [1, 2], {"a": 1}, {"kind": "nope"}, _nested(40),
         _nested(10), *ODD]


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, prefix + (i,))


def _wrong(draw):
    import copy

    return copy.deepcopy(draw(st.sampled_from(WRONG)))  # never share (and later mutate) the pool's objects


def _parent(doc, path):
    node = doc
    for p in path[:-1]:
        node = node[p]
    return node


@st.composite
def mutated(draw, doc: dict, n_max: int = 3):
    import copy

    doc = copy.deepcopy(doc)
    for _ in range(draw(st.integers(0, n_max))):
        paths = [p for p in _paths(doc) if p]
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent, last = _parent(doc, path), path[-1]
        op = draw(st.sampled_from(["wrong", "wrong", "scale", "delete", "extra", "append", "key"]))
        if op == "wrong":
            parent[last] = _wrong(draw)
        elif op == "scale" and isinstance(parent[last], (int, float)) and not isinstance(parent[last], bool):
            f = draw(st.sampled_from([-1, 0, 2, 10, 1000, 1e6, 1e12, 0.5, 1e-9]))
            v = parent[last] * f
            parent[last] = int(v) if isinstance(parent[last], int) and abs(v) < 1e30 else v
        elif op == "delete":
            del parent[last]
        elif op == "extra" and isinstance(parent, dict):
            parent[draw(st.sampled_from(ODD[:8] + ["bogus", "kind", "size"]))] = _wrong(draw)
        elif op == "append" and isinstance(parent[last], list):
            parent[last].append(_wrong(draw))
        elif op == "key" and isinstance(parent, dict):  # a key of the wrong type
            parent[draw(st.sampled_from([1, True, None, 2.5]))] = parent.pop(last)
    return doc


_Dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)  # only to write the test documents: speed


def _to_text(doc) -> str:
    try:
        return yaml.dump(doc, Dumper=_Dumper, allow_unicode=True, sort_keys=False)
    except yaml.YAMLError:
        return repr(doc)


@st.composite
def damaged_text(draw, text: str):
    lines = text.splitlines()
    op = draw(st.sampled_from(["dup", "tag", "anchor", "cut", "deep", *["none"] * 5]))
    if op == "dup" and lines:
        i = draw(st.integers(0, len(lines) - 1))
        lines.insert(i, lines[i])
    elif op == "tag" and lines:
        i = draw(st.integers(0, len(lines) - 1))
        tag = draw(st.sampled_from(["!!python/object/apply:os.system ['true']", "!!binary aGk=", "!!set {a}",
                                    "!x 1", "!!timestamp 2020-01-01", "&a [1]", "*missing"]))
        lines[i] = lines[i].split(":")[0] + ": " + tag if ":" in lines[i] else tag
    elif op == "anchor":
        lines.append("zz: &a [" + ", ".join(["x"] * 20) + "]")
        lines.extend(f"z{i}: &a{i} [{', '.join(['*a' if i == 0 else f'*a{i - 1}'] * 20)}]" for i in range(6))
    elif op == "cut" and text:
        return text[: draw(st.integers(0, len(text)))]
    elif op == "deep":
        d = draw(st.integers(20, 3000))
        lines.append("deep: " + draw(st.sampled_from(["[" * d + "]" * d, "{a: " * d + "1" + "}" * d])))
    return "\n".join(lines) + "\n"


def documents():
    builtin = st.sampled_from(sorted(BUILTINS_AND_TINY)).flatmap(lambda n: mutated(BUILTINS_AND_TINY[n]))
    from_schema = schema_documents().flatmap(lambda d: st.one_of(st.just(d), mutated(d, 2)))
    return st.one_of(builtin, builtin, from_schema).map(_to_text).flatmap(damaged_text)


# -- the property ----------------------------------------------------------------------------------------------
def call(argv: list[str]) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(argv)
        except SystemExit as exc:
            rc = exc.code
    return rc, err.getvalue()


def check_outcome(rc, err: str, text: str) -> None:
    lines = [l for l in err.splitlines() if l.strip()]
    assert rc in (0, 2), f"exit {rc}\n{err}\n---\n{text[:2000]}"
    if rc == 2:
        assert len(lines) == 1 and ONE_LINE.match(lines[0]), f"{err}\n---\n{text[:2000]}"


def files(root: Path) -> set[Path]:
    return set(root.rglob("*"))


def _validate_property(work: Path, stats: dict):
    f = work / "s.yaml"

    @given(documents())
    def prop(text):
        f.write_text(text, encoding="utf-8")
        before = files(work)
        rc, err = call(["validate", str(f)])
        check_outcome(rc, err, text)
        assert files(work) == before
        stats["n"] += 1
        stats["ok" if rc == 0 else "refused"] += 1

    return prop


def _report(what: str, stats: dict, t0: float) -> str:
    line = (f"fuzz {what}: {stats['n']} documents, seed {SEED}, {time.perf_counter() - t0:.1f} s, "
            f"{stats['ok']} valid, {stats['refused']} refused with one line, 0 tracebacks")
    print(line)
    return line


@pytest.fixture
def work(tmp_path, monkeypatch):
    """The working directory (runs/ appears here); tmp_path around it must stay untouched."""
    d = tmp_path / "cwd"
    d.mkdir()
    monkeypatch.chdir(d)
    return d


def _run_validate(work, n: int, record_property):
    stats = {"n": 0, "ok": 0, "refused": 0}
    prop = _validate_property(work, stats)
    prop = settings(max_examples=n, deadline=None, database=None,
                    suppress_health_check=list(HealthCheck))(seed(SEED)(prop))
    t0 = time.perf_counter()
    prop()
    record_property("fuzz_validate", _report("validate", stats, t0))
    assert stats["n"] >= n and stats["ok"] > 0 and stats["refused"] > 0


def test_fuzzed_documents_validate_or_exit_2_with_one_line(work, record_property):
    _run_validate(work, VALIDATE_EXAMPLES, record_property)


@pytest.mark.fuzz
@pytest.mark.slow
def test_fuzzed_documents_many(work, record_property):
    _run_validate(work, LONG_EXAMPLES, record_property)


# -- run --steps 1 at tiny sizes ------------------------------------------------------------------------------
SMALL = {  # cut to sizes that build in well under a second, no LLM policy
    "tiny_seir": [],
    "covid_small": ["population.size=400", "output.sample_agents=20"],
    "misinformation_small": ["population.size=300", "output.sample_agents=20", "model.params.post_capacity=3000",
                             "model.params.initial_posts=50"],
}


def _small(name: str) -> dict:
    from scenarios.loader import apply_overrides

    doc = apply_overrides(BUILTINS_AND_TINY[name], SMALL[name])
    doc.pop("policy", None)
    doc["run"]["chunk_size"] = 1
    return doc


def run_documents():
    mild = [0, 1, 2, 3, 0.0, 0.5, 1.0, 1e-6, 99, -1, 1e30, math.inf, None, "x", 10**12]

    @st.composite
    def tweak(draw, name):
        import copy

        doc = copy.deepcopy(_small(name))
        for _ in range(draw(st.integers(0, 2))):  # each new value of a static setting costs a compile
            path = draw(st.sampled_from([p for p in _paths(doc) if p and p[0] not in ("name", "population")]))
            parent = _parent(doc, path)
            if isinstance(parent[path[-1]], (int, float, type(None))):
                parent[path[-1]] = draw(st.sampled_from(mild))
        doc["name"] = draw(st.sampled_from(["../../x", "a/b", "..", "ü", "ok"]))
        return doc

    return st.sampled_from(sorted(SMALL)).flatmap(tweak).map(_to_text)


def _run_property(work: Path, stats: dict, tmp_root: Path):
    f = work / "s.yaml"

    @given(run_documents())
    def prop(text):
        f.write_text(text, encoding="utf-8")
        before = files(tmp_root)
        runs = work / "runs"
        had = set(runs.iterdir()) if runs.exists() else set()
        rc, err = call(["run", str(f), "--steps", "1", "--quiet"])
        check_outcome(rc, err, text)
        new = files(tmp_root) - before
        made = (set(runs.iterdir()) if runs.exists() else set()) - had
        if rc == 0:
            assert len(made) == 1, made
            (run_dir,) = made
            assert all(p == runs or p == run_dir or run_dir in p.parents for p in new), new
        else:
            assert not made and new <= {runs}, new
        stats["n"] += 1
        stats["ok" if rc == 0 else "refused"] += 1

    return prop


@pytest.fixture
def compile_cache(request):
    """Persist compiled chunks (pytest's cache dir), so repeated shapes cost no compile."""
    import jax

    from server.app import enable_compile_cache

    cache = getattr(request.config, "cache", None)
    if cache is not None and not jax.config.jax_compilation_cache_dir:
        enable_compile_cache(str(cache.mkdir("simcore-jax")))


def _run_runs(work, n: int, record_property):
    stats = {"n": 0, "ok": 0, "refused": 0}
    prop = _run_property(work, stats, work.parent)
    prop = settings(max_examples=n, deadline=None, database=None,
                    suppress_health_check=list(HealthCheck))(seed(SEED)(prop))
    t0 = time.perf_counter()
    prop()
    record_property("fuzz_run", _report("run --steps 1", stats, t0))
    assert stats["n"] >= n and stats["ok"] > 0


def test_fuzzed_runs_of_one_step_succeed_or_exit_2(work, compile_cache, record_property):
    _run_runs(work, RUN_EXAMPLES, record_property)


@pytest.mark.fuzz
@pytest.mark.slow
def test_fuzzed_runs_many(work, compile_cache, record_property):
    _run_runs(work, int(os.environ.get("SIMCORE_FUZZ_RUNS", "100")), record_property)
