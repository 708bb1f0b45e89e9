"""Experiments: common random numbers, branching, batched replicates, statistics, files, sweeps."""
from simcore.session import drive, run_metrics
import json
import subprocess

import numpy as np
import polars as pl
import pytest

from conftest import SIMCORE
from scenarios import load_scenario
from simcore.engine.ensemble import Ensemble, replicate_state
from simcore.experiments import (
    Experiment, ExperimentError, ExperimentResults, Sweep, parse_outcome, reduce_series,
)
from simcore.cli import main
from simcore.models import build
from simcore.runs import make_simulation

SEIR = {"name": "exp", "population": {"kind": "homogeneous", "size": 3000},
        "graph": {"kind": "erdos_renyi", "mean_degree": 8},
        "model": {"kind": "seir", "params": {"beta": 0.05, "initial_infected": 0.01}},
        "interventions": [{"name": "distancing", "param": "contact_scale", "start": 12, "end": 30, "value": 0.7}],
        "run": {"steps": 30, "chunk_size": 10}, "output": {"sample_agents": 0}}
SEEDS = [0, 1, 2, 3]
STRONG = [{"name": "lockdown", "param": "contact_scale", "start": 0, "end": 30, "value": 0.2, "mode": "set"}]


@pytest.fixture(scope="module")
def results():
    exp = Experiment(SEIR, seeds=SEEDS)
    exp.arm("same")
    exp.arm("strong", STRONG)
    return exp.run()


def test_identical_arms_have_zero_paired_difference(results):
    same = results.series("new_infections")
    assert np.array_equal(same["same"], same["baseline"])
    summary = results.summary(["new_infections:sum", "I:max"])
    row = summary.filter(pl.col("arm") == "same")
    assert row["diff_mean"].to_list() == [0.0, 0.0]
    assert row["ci_low"].to_list() == [0.0, 0.0] and row["ci_high"].to_list() == [0.0, 0.0]
    # the seeds do differ from each other: the zero is common random numbers, not a constant
    assert len(set(reduce_series(same["baseline"], "sum"))) > 1


def test_effective_intervention_ci_excludes_zero(results):
    row = results.summary(["new_infections:sum"], ci=0.95).filter(pl.col("arm") == "strong").row(0, named=True)
    assert row["ci_high"] < 0 and row["diff_mean"] < 0
    assert row["p_paired_t"] < 0.05
    assert results.test("new_infections:sum", "strong", "welch").pvalue < 0.05
    eff = results.effect_over_time("new_infections", arms=["strong"], cumulative=True)
    last = eff.filter(pl.col("step") == 29).row(0, named=True)
    assert last["ci_high"] < 0 and last["diff_mean"] == pytest.approx(row["diff_mean"])
    paired = results.paired("new_infections:sum").filter(pl.col("arm") == "strong")
    assert paired.height == len(SEEDS) and (paired["diff"] < 0).all()


def test_branch_equals_full_run_and_is_cheaper_per_arm(results):
    """Forking at t reuses the baseline's state; with common random numbers it matches running each arm from 0."""
    exp = Experiment(SEIR, seeds=SEEDS)
    exp.arm("same")
    exp.arm("later", [{"name": "later", "param": "contact_scale", "start": 15, "end": 30, "value": 0.3}])
    exp.batch_size = len(SEEDS)  # the branched run vmaps the seeds, the full one uses the default batching
    branched = exp.branch(from_step=12).run()
    full = Experiment(SEIR, seeds=SEEDS).arm("same").arm(
        "later", [{"name": "later", "param": "contact_scale", "start": 15, "end": 30, "value": 0.3}]).run()
    for metric in ("S", "I", "new_infections"):
        for arm in ("baseline", "same", "later"):
            assert np.array_equal(branched.series(metric)[arm], full.series(metric)[arm]), (metric, arm)
    assert np.array_equal(branched.series("I")["baseline"], results.series("I")["baseline"])
    assert branched.timing["replicate_steps_saved"] == 2 * len(SEEDS) * 12
    assert branched.timing["prefix_seconds"] > 0


def test_branch_rejects_arms_that_change_the_prefix():
    exp = Experiment(SEIR, seeds=[0]).arm("early", STRONG).branch(10)
    with pytest.raises(ExperimentError, match=r"arms\[early\]: changes contact_scale at step 0"):
        exp.run()


def test_arm_validation():
    exp = Experiment(SEIR, seeds=[0])
    with pytest.raises(ExperimentError, match="population differs"):
        exp.arm("bigger", overrides=["population.size=4000"])
    with pytest.raises(ExperimentError, match="remove: no intervention named 'nope'"):
        exp.arm("x", remove=["nope"])
    with pytest.raises(ExperimentError, match=r"interventions\[0\].end: must be > start"):
        exp.arm("y", [{"param": "contact_scale", "start": 5, "end": 2, "value": 1}])
    with pytest.raises(ExperimentError, match="unknown parameter 'nope'"):
        exp.arm("z", [{"param": "nope", "start": 0, "end": 2, "value": 1}])
    with pytest.raises(ExperimentError, match="duplicate"):
        exp.arm("a").arm("a")
    with pytest.raises(ExperimentError, match="seeds"):
        Experiment(SEIR, seeds=[1, 1])


def test_vmap_batches_equal_sequential_and_single_runs():
    sc = load_scenario(SEIR)
    b = build(sc, seed=0)
    seq = run_metrics(Ensemble(b.model, replicate_state(b.state, 3), b.params, b.schedule, [5, 6, 7], chunk_size=10,
                               batch_size=1), 25)
    pairs = run_metrics(Ensemble(b.model, replicate_state(b.state, 3), b.params, b.schedule, [5, 6, 7],
                                 chunk_size=10, batch_size=2), 25)  # vmap batches of 2, the last one padded
    sim = make_simulation(sc, b, 6)
    rows = []
    drive(sim, 25, on_chunk=lambda s, c: rows.append(c.metrics))
    single = np.concatenate([r["I"] for r in rows])
    for k in seq:
        assert np.array_equal(seq[k], pairs[k]), k
        assert seq[k].shape == (3, 25)
    assert np.array_equal(seq["I"][1], single)
    assert not np.array_equal(seq["I"][0], seq["I"][1])


def test_independent_replicates_match_plain_runs():
    res = Experiment(SEIR, seeds=[2], replicates="independent").run()
    sc = load_scenario(SEIR)
    sim = make_simulation(sc, build(sc, seed=2), 2)
    rows = []
    drive(sim, 30, on_chunk=lambda s, c: rows.append(c.metrics))
    assert np.array_equal(res.series("I")["baseline"][0], np.concatenate([r["I"] for r in rows]))


class _Halve:
    """A host policy: halves beta at step 10 (like an archetype layer changing behaviour)."""

    every = 10

    def __init__(self):
        self.calls = []

    def update(self, sim):
        self.calls.append(sim.step)
        if sim.step == 10:
            sim.set_param("beta", np.float32(sim.params["beta"]) / 2)


def test_arms_with_host_policies():
    made = []

    def policies(built):
        made.append(_Halve())
        return [made[-1]]

    res = Experiment(SEIR, seeds=[0, 1]).arm("halved", policies=policies).run()
    assert [p.calls for p in made] == [[0, 10, 20], [0, 10, 20]]
    base, arm = res.series("new_infections")["baseline"], res.series("new_infections")["halved"]
    assert np.array_equal(base[:, :10], arm[:, :10])  # same random numbers before the policy acts
    assert arm[:, 10:].sum() < base[:, 10:].sum()
    with pytest.raises(ExperimentError, match="cannot be branched"):
        Experiment(SEIR, seeds=[0]).arm("halved", policies=policies).branch(5).run()


def test_outcome_parsing():
    assert parse_outcome("new_deaths") == ("new_deaths", "sum")
    assert parse_outcome("unemployment_rate") == ("unemployment_rate", "mean")
    assert parse_outcome("I:peak_step") == ("I", "peak_step")
    with pytest.raises(ExperimentError, match="unknown reducer"):
        parse_outcome("I:median")
    x = np.array([[1.0, 3.0, 2.0]])
    assert reduce_series(x, "peak_step")[0] == 1 and reduce_series(x, "final")[0] == 2


def test_results_save_load_and_directory(tmp_path, results):
    from analysis import read_experiment_summary, scan_experiment

    late = [{**STRONG[0], "start": 5}]
    exp = Experiment(SEIR, seeds=SEEDS).arm("strong", late).branch(5)
    res = exp.run(tmp_path / "exp", outcomes=["new_infections:sum", "I:max"])
    back = ExperimentResults.load(tmp_path / "exp")
    assert back.metrics.equals(res.metrics) and back.arms == ["baseline", "strong"]
    summary = read_experiment_summary(tmp_path / "exp")
    assert summary["outcome"].to_list() == ["new_infections:sum", "I:max"]
    lf = scan_experiment(tmp_path / "exp")
    df = lf.filter(pl.col("arm") == "strong").collect()
    assert df.schema["seed"] == pl.Int64 and df.height == len(SEEDS) * 30
    assert np.array_equal(df.filter(pl.col("seed") == 1).sort("step")["I"].to_numpy(), res.series("I")["strong"][1])
    manifest = json.loads((tmp_path / "exp" / "arm=strong" / "seed=1" / "manifest.json").read_text())
    assert manifest["arm"] == "strong" and manifest["branch_step"] == 5
    ckpt = tmp_path / "exp" / "arm=baseline" / "seed=1" / "checkpoints" / "step=5"
    assert (ckpt / "meta.json").exists()


EXPERIMENT_YAML = """
name: distancing
scenario: scenario.yaml
seeds: 3
steps: 30
branch_step: 5
arms:
  - name: strong
    interventions:
      - {param: contact_scale, start: 5, end: 30, value: 0.2, mode: set}
  - name: stop_distancing
    remove: [distancing]
outcomes: [new_infections:sum, I:max]
"""


def _write_files(tmp_path, text):
    import yaml

    (tmp_path / "scenario.yaml").write_text(yaml.safe_dump(SEIR))
    path = tmp_path / "experiment.yaml"
    path.write_text(text)
    return path


def test_experiment_cli(tmp_path, capsys):
    path = _write_files(tmp_path, EXPERIMENT_YAML)
    out = tmp_path / "out"
    assert main(["experiment", str(path), "--out", str(out), "--quiet"]) == 0, capsys.readouterr().err
    dirs = sorted(p.relative_to(out).as_posix() for p in out.glob("arm=*/seed=*"))
    assert dirs == [f"arm={a}/seed={s}" for a in ("baseline", "stop_distancing", "strong") for s in range(3)]
    summary = pl.read_parquet(out / "experiment.parquet")
    assert summary.height == 4 and set(summary["arm"]) == {"strong", "stop_distancing"}
    strong = summary.filter((pl.col("arm") == "strong") & (pl.col("outcome") == "new_infections:sum")).row(0, named=True)
    assert strong["ci_high"] < 0
    info = json.loads((out / "experiment.json").read_text())
    assert info["spec"]["name"] == "distancing" and info["branch_step"] == 5


@pytest.mark.parametrize("text,message", [
    (EXPERIMENT_YAML.replace("seeds: 3", "seeds: 3\nbogus: 1"), "bogus: unknown key"),
    (EXPERIMENT_YAML.replace("end: 30, value: 0.2", "end: 2, value: 0.2"),
     "arms[0].interventions[0].end: must be > start (5), got 2"),
    (EXPERIMENT_YAML.replace("seeds: 3", "seeds: 0"), "seeds"),
    (EXPERIMENT_YAML.replace("remove: [distancing]", "remove: [nope]"), "arms[1].remove: no intervention named 'nope'"),
    (EXPERIMENT_YAML.replace("scenario: scenario.yaml", "scenario: missing.yaml"), "scenario: file not found"),
    (EXPERIMENT_YAML.replace("name: strong", "name: strong\n    overrides: [population.size=-1]"),
     "arms[0].overrides: population.size: must be > 0"),
    (EXPERIMENT_YAML.replace("branch_step: 5", "branch_step: 7"), "arms[0]: changes contact_scale at step 5"),
    ("name: x\n  bad: [", "experiment: invalid YAML"),
])
def test_experiment_cli_bad_files_exit_2(tmp_path, capsys, text, message):
    path = _write_files(tmp_path, text)
    assert main(["experiment", str(path), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err, err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_experiment_cli_subprocess_exit_code(cli_env, tmp_path):
    path = _write_files(tmp_path, EXPERIMENT_YAML.replace("seeds: 3", "seeds: 3\nbogus: 1"))
    res = subprocess.run(SIMCORE + ["experiment", str(path), "--quiet"], capture_output=True, text=True, env=cli_env,
                         cwd=tmp_path, timeout=300)
    assert res.returncode == 2 and res.stderr.strip().endswith("bogus: unknown key") and "Traceback" not in res.stderr


def test_sweep_serial():
    sweep = Sweep(SEIR, {"model.params.beta": [0.02, 0.08]}, seeds=[0, 1], steps=20)
    res = sweep.run(executor="serial")
    assert res.metrics.height == 2 * 2 * 20
    summary = res.summary(["new_infections:sum"])
    low, high = summary.sort("model.params.beta")["mean"].to_list()
    assert high > low
    with pytest.raises(ExperimentError, match="grid"):
        Sweep(SEIR, {"population.size": [-1]})


@pytest.mark.slow
def test_sweep_process_pool_matches_serial():
    sweep = Sweep(SEIR, {"model.params.beta": [0.03, 0.06]}, seeds=[0], steps=20)
    a = sweep.run(executor="process", max_workers=2).metrics
    b = sweep.run(executor="serial").metrics
    assert a.equals(b)


@pytest.mark.slow
def test_sweep_dask_matches_serial():
    pytest.importorskip("dask.distributed")
    sweep = Sweep(SEIR, {"model.params.beta": [0.05]}, seeds=[0, 1], steps=20)
    a = sweep.run(executor="dask", max_workers=1).metrics
    b = sweep.run(executor="serial").metrics
    assert a.equals(b)
