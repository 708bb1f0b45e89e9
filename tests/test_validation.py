"""Bad scenarios never crash and never escape (issue 13).

One test per class of defect, on the CLI (``simcore validate`` / ``simcore run``, called in-process
through ``simcore.cli.main``, plus one real subprocess) and on the server's upload endpoint:
paths out of ``runs/``, graph sizes the population cannot hold, what only ``run`` used to catch,
huge integers, non-finite numbers, duplicate keys and the rest of strict YAML. Every refusal is
exit code 2 with one ``error: field: reason`` line and nothing written.
"""
from __future__ import annotations

import json
import subprocess
import textwrap
from pathlib import Path

import httpx
import pytest
import yaml

from conftest import SIMCORE
from scenarios import ScenarioError, load_scenario
from scenarios.loader import MAX_YAML_BYTES, MAX_YAML_DEPTH, MAX_YAML_NODES, parse_yaml
from simcore.cli import main

TINY = textwrap.dedent("""\
    name: tiny
    population: {kind: homogeneous, size: 200}
    graph: {kind: erdos_renyi, mean_degree: 4}
    model: {kind: seir}
    run: {steps: 2, chunk_size: 2}
    output: {sample_agents: 10, sample_every: 1}
""")


def cli(argv, capsys) -> tuple[int, str]:
    """(exit code, stderr) of ``simcore ARGV`` run in this process, as ``python -m simcore`` would."""
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse
        rc = exc.code
    err = capsys.readouterr().err
    return rc, err


def tree(root: Path) -> set[Path]:
    return {p for p in root.rglob("*")}


def assert_refused(rc: int, err: str, field: str, reason: str = "") -> None:
    assert rc == 2, err
    assert "Traceback" not in err
    lines = [l for l in err.splitlines() if l.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"error: {field}: "), lines[0]
    assert reason in lines[0], lines[0]


@pytest.fixture
def work(tmp_path, monkeypatch):
    """An empty working directory (``runs/`` would appear here) holding tiny.yaml."""
    d = tmp_path / "cwd"
    d.mkdir()
    (d / "tiny.yaml").write_text(TINY)
    monkeypatch.chdir(d)
    return d


# -- the classes of defect, on validate and on run ---------------------------------------------------
CASES = [
    # graph parameters the population size cannot satisfy
    ("tiny.yaml", ["graph.mean_degree=500"], "graph.mean_degree", "must be <= population.size - 1 (199)"),
    ("tiny.yaml", ["graph={kind: watts_strogatz, k: 400, p: 0.1}"], "graph.k", "must be < population.size (200)"),
    ("tiny.yaml", ["graph={kind: watts_strogatz, k: 5, p: 0.1}"], "graph.k", "must be even"),
    ("tiny.yaml", ["graph={kind: barabasi_albert, m: 200}"], "graph.m", "must be < population.size (200)"),
    ("misinformation_small", ["graph.m=5000"], "graph.m", "must be < population.size (3000)"),
    # only `run` used to catch these, after building the population
    ("covid_nyc", ["policy.decisions.0.target=nope"], "policy.decisions[0].target", "unknown decision target 'nope'"),
    ("covid_nyc", ["policy.decisions.0.prompt=Hi {nobody}"], "policy.decisions[0].prompt", "unknown field {nobody}"),
    ("covid_nyc", ["policy.decisions.0.prompt=Hi {borough:.0f}"], "policy.decisions[0].prompt", "cannot be rendered"),
    ("covid_nyc", ["policy.decisions.0.prompt=Hi {"], "policy.decisions[0].prompt", "not a valid template"),
    ("covid_nyc", ["policy.decisions.0.group_by=[shoe_size]"], "policy.decisions[0].group_by", "unknown feature"),
    ("covid_nyc", ["policy.backend.kind=nope"], "policy.backend.kind", "unknown backend kind 'nope'"),
    ("covid_nyc", ["policy.backend.n_ctxx=5"], "policy.backend.n_ctxx", "unknown key for backend 'llamacpp'"),
    ("covid_nyc", ["policy.backend={kind: openai}"], "policy.backend.endpoints", "is required"),
    ("covid_nyc", ["policy.start_date=2020-13-01"], "policy.start_date", "must be a date"),
    ("covid_small", ["interventions.0.param=nope"], "interventions[0].param", "unknown parameter 'nope'"),
    ("misinformation_small", ["graph={kind: erdos_renyi, mean_degree: 2}", "population.size=5",
                              "output.sample_agents=0"],
     "model.params.seed_posts", "accounts"),
    # huge integers: bounds the engine's integer types hold, and the message says the bound
    ("tiny.yaml", ["run.steps=100000000000000000000"], "run.steps", "must be <= 10000000"),
    ("tiny.yaml", ["population.size=100000000000000000000"], "population.size", "must be <= 2147483647"),
    ("tiny.yaml", ["run.seed=99999999999"], "run.seed", "must be <= 4294967295"),
    ("covid_nyc", ["policy.backend.n_ctx=99999999999999"], "policy.backend.n_ctx", "must be <= 2147483647 (int32)"),
    ("covid_small", ["graph.workplace_neighbors=1000000"], "graph.workplace_neighbors", "must be <= 10000"),
    ("tiny.yaml", ["run.devices=4096"], "run.devices", "requested but only"),
    ("tiny.yaml", ["run.devices=100000"], "run.devices", "must be <= 65536"),
    # memory the machine cannot have, found without building
    ("tiny.yaml", ["population.size=2000000000", "graph.mean_degree=5000"], "population.size", "int32 index limit"),
    ("misinformation_small", ["population.size=2000000000", "model.params.post_capacity=400000000",
                              "graph={kind: erdos_renyi, mean_degree: 1}"], "population.size", "GiB per device"),
    # non-finite and out-of-float32 numbers
    ("tiny.yaml", ["model.params={beta: .inf}"], "model.params.beta", "must be a finite number, got inf"),
    ("tiny.yaml", ["model.params={beta: .nan}"], "model.params.beta", "must be a finite number"),
    ("covid_small", ["model.params.susceptibility=[1, 1, -.inf, 1, 1, 1]"], "model.params.susceptibility[2]",
     "finite"),
    ("covid_small", ["interventions.0.value=.nan"], "interventions[0].value", "finite"),
    ("covid_small", ["model.params.isolation.base=1e39"], "model.params.isolation.base", "float32 range"),
    ("covid_nyc", ["policy.backend.n_ctx=.inf"], "policy.backend.n_ctx", "finite"),
    # YAML 1.1 booleans where text is expected: the hint
    ("covid_nyc", ["policy.decisions.0.options=[yes, no]"], "policy.decisions[0].options[0]",
     'must be a string, got True (YAML reads unquoted yes/no/on/off/true/false as booleans: quote it'),
]


@pytest.mark.parametrize("scenario,overrides,field,reason", CASES,
                         ids=[f"{c[2]}-{i}" for i, c in enumerate(CASES)])
def test_validate_refuses_what_run_refuses(scenario, overrides, field, reason, work, capsys):
    sets = [a for o in overrides for a in ("--set", o)]
    rc, err = cli(["validate", scenario, *sets], capsys)
    assert_refused(rc, err, field, reason)
    before = tree(work)
    rc, err = cli(["run", scenario, *sets, "--steps", "1", "--quiet"], capsys)
    assert_refused(rc, err, field, reason)
    assert tree(work) == before  # no run directory, nothing else


def test_cli_flags_obey_the_schema_bounds(work, capsys):
    rc, err = cli(["run", "tiny.yaml", "--steps", 10**20, "--quiet"], capsys)
    assert_refused(rc, err, "--steps", "must be <= 10000000, got 100000000000000000000")
    rc, err = cli(["run", "tiny.yaml", "--seed", 2**40, "--quiet"], capsys)
    assert_refused(rc, err, "--seed", "must be <= 4294967295")
    assert not (work / "runs").exists()


def test_check_backend_starts_or_reaches_the_backend(work, capsys):
    from llm_servers import FakeCompletionServer

    with FakeCompletionServer(mode="ok") as srv:
        backend = f"policy.backend={{kind: openai, endpoints: ['{srv.url}'], max_retries: 0}}"
        rc = main(["validate", "covid_nyc", "--set", backend, "--check-backend"])
        assert (rc, srv.completions >= 1) == (0, True)
        assert "backend openai answered" in capsys.readouterr().out
    with FakeCompletionServer(mode="garbage") as srv:
        backend = f"policy.backend={{kind: openai, endpoints: ['{srv.url}'], max_retries: 0}}"
        rc, err = cli(["validate", "covid_nyc", "--set", backend, "--check-backend"], capsys)
        assert_refused(rc, err, "policy.backend", "")
    dead = "policy.backend={kind: openai, endpoints: ['http://127.0.0.1:9']}"
    assert main(["validate", "covid_nyc", "--set", dead]) == 0  # without the flag nothing is contacted
    capsys.readouterr()
    rc, err = cli(["validate", "covid_nyc", "--set", dead, "--check-backend"], capsys)
    assert_refused(rc, err, "policy.backend", "cannot start")
    rc, err = cli(["validate", "covid_nyc", "--set", "policy.backend={kind: replay, cache: nope.sqlite}",
                   "--check-backend"], capsys)
    assert_refused(rc, err, "policy.backend", "replay cache file not found")


def test_validate_is_quick_and_builds_nothing(work, capsys, monkeypatch):
    """covid_nyc (8.4M agents) validates without sampling a population or a graph."""
    import importlib

    import populations

    build = importlib.import_module("simcore.models.build")

    def refuse(*a, **k):
        raise AssertionError("validate built something")

    monkeypatch.setattr(populations, "sample_population", refuse)
    monkeypatch.setattr(build, "contact_layers", refuse)
    monkeypatch.setattr(build, "_graph", refuse)
    rc = main(["validate", "covid_nyc"])
    out = capsys.readouterr().out
    assert rc == 0 and out.startswith("ok: covid_nyc (epidemic, 8,400,000 agents")


def test_models_declare_what_they_build(tmp_path):
    """The names validate checks policies against are those a built model has (no drift)."""
    import jax

    from simcore.models import build, policy_interface

    for name, overrides in (("covid_small", ["population.size=3000", "output.sample_agents=0"]),
                            ("misinformation_small", ["population.size=400", "output.sample_agents=0",
                                                      "model.params.post_capacity=2000",
                                                      "model.params.initial_posts=100"]),
                            ("tax_llm_planner_small", ["population.size=2000", "output.sample_agents=0"])):
        sc = load_scenario(name, overrides)
        built = build(sc, steps=1)
        iface = policy_interface(sc)
        feats = jax.eval_shape(built.model.features, built.state, built.params)
        stats = jax.eval_shape(built.model.stats, built.state, built.params)
        assert sorted(iface["features"]) == sorted(feats)
        assert set(iface["features"]) <= set(built.model.labels)
        assert sorted(iface["stats"]) == sorted(stats)
        assert tuple(iface["decision_targets"]) == tuple(built.model.decision_targets)


# -- strict YAML ---------------------------------------------------------------------------------------
BILLION_LAUGHS = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{c}: &{c} [{', '.join([f'*{p}'] * 10)}]\n" for p, c in zip("abcdefgh", "bcdefghi"))

YAML_CASES = [
    ("name: a\nname: b\n", "duplicate key 'name' (first at line 1)"),
    ("run: {steps: 1, steps: 2}\n", "duplicate key 'steps'"),
    ("name: !!python/object/apply:os.system [echo hi]\n", "tag !!python/object/apply:os.system is not allowed"),
    ("name: !!python/name:os.system\n", "is not allowed"),
    ("name: !custom x\n", "tag !custom is not allowed"),
    (BILLION_LAUGHS, f"more than {MAX_YAML_NODES} YAML nodes (aliases expanded)"),
    ("a: &a [1, *a]\n", "alias *a is inside the collection it refers to"),
    ("x: " + "[" * 5000 + "]" * 5000 + "\n", f"nested deeper than {MAX_YAML_DEPTH} levels"),
    ("x: " + "{a: " * 200 + "1" + "}" * 200 + "\n", f"nested deeper than {MAX_YAML_DEPTH} levels"),
    ("".join("  " * i + f"k{i}:\n" for i in range(60)) + "  " * 60 + "v: 1\n", "nested deeper than"),
    ("- " * 100 + "a\n", "nested deeper than"),
    ("x: [1\n", "invalid YAML"),
    ("name: a\x9b\n", "unacceptable character #x009b"),  # the reader refuses it as the loader is made
]


@pytest.mark.parametrize("text,reason", YAML_CASES, ids=[r[:24] for _, r in YAML_CASES])
def test_strict_yaml_on_the_cli(text, reason, work, capsys):
    f = work / "bad.yaml"
    f.write_text(text)
    before = tree(work)
    for verb in ("validate", "run"):
        rc, err = cli([verb, f], capsys)
        assert_refused(rc, err, "scenario", reason)
    assert tree(work) == before


def test_yaml_limits_hold_whatever_the_parser():
    # the limit fires in the scanner, before PyYAML/libyaml's own look-ahead could
    for text in ("[" * 1100 + "]" * 1100, "\n".join("[" for _ in range(2000)), "{a: " * 1100):
        with pytest.raises(ScenarioError, match=f"nested deeper than {MAX_YAML_DEPTH}"):
            parse_yaml("x: " + text)
    ok = "x: " + "[" * (MAX_YAML_DEPTH - 1) + "]" * (MAX_YAML_DEPTH - 1)  # the top mapping is a level
    assert parse_yaml(ok)["x"] is not None
    with pytest.raises(ScenarioError, match="characters; the limit is"):
        parse_yaml("x: '" + "a" * MAX_YAML_BYTES + "'")
    # aliases and merges within the bound are plain YAML and keep working; dates stay text
    assert parse_yaml("b: &b {x: 1, y: 2}\nc: {<<: *b, x: 3}\nd: 2020-03-01\n") == \
        {"b": {"x": 1, "y": 2}, "c": {"x": 3, "y": 2}, "d": "2020-03-01"}


def test_big_file_is_refused_before_reading(work, capsys):
    f = work / "big.yaml"
    f.write_text("name: x\ndescription: '" + "a" * MAX_YAML_BYTES + "'\n")
    rc, err = cli(["validate", f], capsys)
    assert_refused(rc, err, "scenario", "a scenario file must be <=")


def test_set_values_go_through_the_strict_loader(work, capsys):
    rc, err = cli(["validate", "tiny.yaml", "--set", "model.params={beta: 1, beta: 2}"], capsys)
    assert_refused(rc, err, "model.params", "duplicate key 'beta'")
    rc, err = cli(["validate", "tiny.yaml", "--set", "name=" + "[" * 100], capsys)
    assert_refused(rc, err, "name", "nested deeper than")


def test_a_real_subprocess_run_is_refused_the_same_way(cli_env, work):
    res = subprocess.run(SIMCORE + ["run", "tiny.yaml", "--set", "graph.mean_degree=20000.0", "--quiet"],
                         capture_output=True, text=True, env=cli_env, cwd=work, timeout=120)
    assert (res.returncode, res.stderr.strip()) == (2, "error: graph.mean_degree: must be <= 10000.0, got 20000.0")
    assert not (work / "runs").exists()


# -- names never escape the run directory ----------------------------------------------------------------
HOSTILE = ["../../escape", "/tmp/abs", "..", "a/../../b", "nul\0byte", "C:\\win\\path", "~root", "ü/../..", ""]


def test_slugs_are_single_safe_components():
    from simcore.naming import MAX_SLUG, child_dir, slug

    for name in HOSTILE + ["x" * 500, ".hidden", "-rf", "a..b"]:
        s = slug(name)
        assert s and "/" not in s and "\\" not in s and ".." not in s and not s.startswith((".", "-"))
        assert len(s) <= MAX_SLUG and s == slug(s)
        assert child_dir("runs", s).parent == Path("runs")
    for bad in ("..", "../x", "a/b", "", ".", "x\0"):
        with pytest.raises(ValueError):
            child_dir("runs", bad)


def test_hostile_names_stay_in_the_run_directory(work, tmp_path, capsys):
    """`simcore run` without --out, hostile names: everything written lies in runs/<slug>-<stamp>/."""
    outside_before = tree(tmp_path)
    from simcore.naming import slug

    names = ["../../escape", "../" * 8 + "tmp/pwned", "/abs/olute", "sub/dir/..\\..\\x"]
    for i, name in enumerate(names):
        rc = main(["run", "tiny.yaml", "--set", f"name={json.dumps(name)}",
                   "--set", f"run.seed={i}", "--quiet"])
        capsys.readouterr()
        assert rc == 0
    runs = work / "runs"
    made = sorted(p for p in runs.iterdir())
    assert len(made) == 4 and all(p.is_dir() and p.parent == runs for p in made)
    assert {p.name.rsplit("-", 3)[0] for p in made} == {"escape", "tmp_pwned", "abs_olute", slug(names[3])}
    new = tree(tmp_path) - outside_before
    assert new and all(p == runs or runs in p.parents for p in new), sorted(new - set(runs.rglob("*")))
    assert not (tmp_path.parent / "escape").exists()


def test_output_dir_cannot_climb(work, capsys):
    rc, err = cli(["validate", "tiny.yaml", "--set", "output.dir=../../elsewhere"], capsys)
    assert_refused(rc, err, "output.dir", "'..'")
    rc, err = cli(["run", "tiny.yaml", "--set", "output.dir=tiny.yaml/sub", "--quiet"], capsys)
    assert_refused(rc, err, "output.dir", "not a writable directory")


def test_experiment_names_cannot_escape(work, tmp_path, capsys):
    from simcore.experiments import ArmSpec, ExperimentError, load_experiment_spec

    exp = work / "exp.yaml"
    exp.write_text("name: ../../out\nscenario: tiny.yaml\nseeds: 1\narms: [{name: a}]\n")
    rc, err = cli(["experiment", exp], capsys)
    assert_refused(rc, err, "name", "")
    for arm in ("..", "../x", "a/b", ".hidden", "x..y"):
        with pytest.raises(Exception):
            ArmSpec(name=arm)
    exp.write_text("name: e\nname: f\nscenario: tiny.yaml\narms: [{name: a}]\n")
    with pytest.raises(ExperimentError, match="duplicate key 'name'"):
        load_experiment_spec(exp)
    # a hostile scenario name inside a valid experiment: arm=/seed= directories under --out only
    (work / "evil.yaml").write_text(TINY.replace("name: tiny", "name: ../../../evil"))
    exp.write_text("name: ok\nscenario: evil.yaml\nseeds: 1\narms: [{name: b, overrides: ['model.params.beta=0.1']}]\n")
    before = tree(tmp_path)
    rc, err = cli(["experiment", exp, "--quiet"], capsys)
    assert rc == 0, err
    new = tree(tmp_path) - before
    runs = work / "runs"
    (top,) = [p for p in runs.iterdir()]
    assert top.name.startswith("ok-")
    assert all(p == runs or runs in p.parents for p in new)


# -- the server's upload endpoint -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def upload(tmp_path_factory):
    from server.app import ServerConfig, create_app
    from server.testing import ServerThread

    runs = tmp_path_factory.mktemp("srv") / "runs"
    with ServerThread(create_app(ServerConfig(runs_dir=runs, max_runs=2))) as srv:
        with httpx.Client(base_url=srv.url, timeout=120) as c:
            yield c, runs


def tiny_with(**edits) -> str:
    data = yaml.safe_load(TINY)
    for k, v in edits.items():
        node = data
        *head, last = k.split(".")
        for h in head:
            node = node.setdefault(h, {})
        node[last] = v
    return yaml.safe_dump(data)


SERVER_CASES = [
    (tiny_with(**{"graph.mean_degree": 500}), "graph.mean_degree", "must be <= population.size - 1"),
    (tiny_with(graph={"kind": "barabasi_albert", "m": 300}), "graph.m", "must be < population.size"),
    (tiny_with(**{"run.steps": 10**20}), "run.steps", "must be <= 10000000"),
    (TINY.replace("mean_degree: 4", "mean_degree: .inf"), "graph.mean_degree", "finite"),
    (TINY.replace("model: {kind: seir}", "model: {kind: seir, params: {beta: .nan}}"), "model.params.beta", "finite"),
    (TINY + "name: again\n", "scenario", "duplicate key 'name'"),
    (TINY.replace("name: tiny", "name: !!python/object/apply:os.system [id]"), "scenario", "is not allowed"),
    ("x: " + "[" * 5000 + "]" * 5000, "scenario", "nested deeper than"),
    (BILLION_LAUGHS, "scenario", "aliases"),
    (TINY.replace("name: tiny", "name: tiny\x9b"), "scenario", "unacceptable character"),  # was a 500
]


@pytest.mark.parametrize("text,field,reason", SERVER_CASES, ids=[f"{c[1]}-{i}" for i, c in enumerate(SERVER_CASES)])
def test_server_upload_refuses_with_the_field(text, field, reason, upload):
    c, runs = upload
    before = tree(runs)
    for path in ("/api/scenarios/validate", "/api/runs"):
        r = c.post(path, json={"yaml": text})
        assert r.status_code == 422, r.text
        assert (r.json()["field"], reason in r.json()["reason"]) == (field, True), r.json()
    assert tree(runs) == before


def test_server_refuses_what_run_refuses_on_builtins(upload):
    c, _ = upload
    for overrides, field in ((["policy.decisions.0.target=nope"], "policy.decisions[0].target"),
                             (["policy.decisions.0.prompt=x {nobody}"], "policy.decisions[0].prompt"),
                             (["population.size=5000", "interventions.0.param=nope"], "interventions[0].param")):
        r = c.post("/api/scenarios/validate", json={"scenario": "covid_nyc", "overrides": overrides})
        assert (r.status_code, r.json()["field"]) == (422, field), r.text


def test_server_run_with_a_hostile_name_stays_in_runs(upload, tmp_path):
    import time

    c, runs = upload
    outside = runs.parent.parent
    before = tree(outside)
    r = c.post("/api/runs", json={"yaml": tiny_with(name="../../../../escape")})
    assert r.status_code == 201, r.text
    run_id = r.json()["id"]
    assert run_id.startswith("escape-") and "/" not in run_id
    deadline = time.time() + 120
    while c.get(f"/api/runs/{run_id}").json()["status"] not in ("completed", "failed", "stopped"):
        assert time.time() < deadline
        time.sleep(0.2)
    assert c.get(f"/api/runs/{run_id}").json()["status"] == "completed"
    new = tree(outside) - before
    assert new and all(runs in p.parents for p in new), sorted(new)
