"""The CLI on bad input: exit code 2, one line naming the field, no traceback, no run directory."""
import json
import subprocess

import polars as pl
import pytest

from conftest import SIMCORE

BAD = [
    ("population.size=-5", "population.size: must be > 0, got -5"),
    ("population.size=abc", "population.size: must be an integer, got 'abc'"),
    ("run.steps=0", "run.steps: must be > 0, got 0"),
    ("model.params.beta.household=-1", "model.params.beta.household: must be >= 0"),
    ("bogus=1", "bogus: unknown key"),
    ("model.params.isolation.wat=1", "model.params.isolation.wat: unknown key"),
    ("model.kind=sir", "model.kind: must be one of 'epidemic', 'seir', 'social', 'economy', got 'sir'"),
    ("interventions.0.param=nope", "interventions[0].param: unknown parameter 'nope'"),
    ("interventions.0.end=1", "interventions[0].end: must be > start (15), got 1"),
]


def _run(args, env, cwd):
    return subprocess.run(SIMCORE + args, capture_output=True, text=True, env=env, cwd=cwd, timeout=120)


@pytest.mark.parametrize("override,message", BAD)
def test_bad_overrides_exit_2_and_name_the_field(override, message, cli_env, tmp_path):
    out = tmp_path / "run"
    res = _run(["run", "covid_small", "--set", override, "--out", str(out)], cli_env, tmp_path)
    assert res.returncode == 2, res.stderr
    assert message in res.stderr
    assert "Traceback" not in res.stderr
    assert not out.exists()
    assert not (tmp_path / "runs").exists()


def test_missing_field_wrong_type_and_unreadable_files(cli_env, tmp_path):
    missing = tmp_path / "missing.yaml"
    missing.write_text("name: x\npopulation: {kind: nyc, size: 10}\nmodel: {kind: epidemic}\n")
    res = _run(["validate", str(missing)], cli_env, tmp_path)
    assert res.returncode == 2 and "run: is required" in res.stderr

    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("name: x\npopulation: {kind: nyc, size: 10}\nmodel: {kind: epidemic}\nrun: {steps: [1]}\n")
    res = _run(["validate", str(wrong)], cli_env, tmp_path)
    assert res.returncode == 2 and "run.steps: must be an integer" in res.stderr

    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [unclosed\n")
    res = _run(["validate", str(broken)], cli_env, tmp_path)
    assert res.returncode == 2 and "invalid YAML" in res.stderr and "line" in res.stderr

    res = _run(["validate", str(tmp_path / "nope.yaml")], cli_env, tmp_path)
    assert res.returncode == 2 and "file not found" in res.stderr

    unreadable = tmp_path / "bin.yaml"
    unreadable.write_bytes(b"\xff\xfe\x00garbage")
    res = _run(["validate", str(unreadable)], cli_env, tmp_path)
    assert res.returncode == 2 and "scenario: cannot read" in res.stderr

    res = _run(["run", "no_such_builtin"], cli_env, tmp_path)
    assert res.returncode == 2 and "unknown built-in scenario 'no_such_builtin'" in res.stderr
    assert "covid_small" in res.stderr

    res = _run(["run", "covid_small", "--steps", "-3"], cli_env, tmp_path)
    assert res.returncode == 2 and "--steps: must be > 0, got -3" in res.stderr


def test_scenarios_and_validate_list_builtins(cli_env, tmp_path):
    res = _run(["scenarios"], cli_env, tmp_path)
    assert res.returncode == 0 and "covid_nyc" in res.stdout and "covid_small" in res.stdout
    res = _run(["validate", "covid_nyc"], cli_env, tmp_path)
    assert res.returncode == 0 and "8,400,000 agents" in res.stdout


def test_run_writes_a_complete_run_directory(cli_env, tmp_path):
    out = tmp_path / "run"
    res = _run(["run", "covid_small", "--set", "population.size=5000", "--steps", "20", "--seed", "3",
                "--set", "output.sample_every=5", "--set", "output.sample_agents=100", "--out", str(out),
                "--quiet"], cli_env, tmp_path)
    assert res.returncode == 0, res.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "completed" and manifest["steps_done"] == 20 and manifest["seed"] == 3
    assert manifest["scenario"]["population"]["size"] == 5000
    assert {"jax", "numpy", "pyarrow"} <= set(manifest["versions"])
    m = pl.read_parquet(out / "metrics.parquet")
    assert m["step"].to_list() == list(range(20))
    # compartments always add up to the population
    total = m.select(pl.sum_horizontal("S", "E", "I", "R", "M"))
    assert total.to_series().unique().to_list() == [5000]
    agents = pl.scan_parquet(out / "agents" / "**" / "*.parquet", hive_partitioning=True).collect()
    assert sorted(agents["step"].unique().to_list()) == [0, 5, 10, 15]
    assert agents.filter(pl.col("step") == 5).height == 100


def test_plan_refuses_an_impossible_size_and_accepts_with_more_devices(cli_env, tmp_path):
    huge = ["--set", "population.size=300000000", "--set", "policy=null"]
    res = _run(["plan", "covid_nyc", *huge, "--capacity-gib", "24"], cli_env, tmp_path)
    assert res.returncode == 2 and "population.size: will not fit" in res.stderr and "Traceback" not in res.stderr
    res = _run(["plan", "covid_nyc", *huge, "--devices", "8", "--capacity-gib", "139"], cli_env, tmp_path)
    assert res.returncode == 0 and "fits:" in res.stdout and "8 device(s)" in res.stdout


def test_plan_refuses_a_layer_beyond_int32_indices(cli_env, tmp_path):
    # 250M agents x mean degree 10 = 2.5e9 stored contacts in one layer: int32 ids would wrap silently
    big = ["--set", "population={kind: homogeneous, size: 250000000}", "--set",
           "graph={kind: erdos_renyi, mean_degree: 10}", "--set", "model={kind: seir, params: {beta: 0.05}}",
           "--set", "interventions=[]", "--set", "policy=null"]
    res = _run(["plan", "covid_small", *big, "--devices", "64", "--capacity-gib", "139"], cli_env, tmp_path)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "population.size: 250,000,000 agents need" in res.stderr and "int32 index limit" in res.stderr
