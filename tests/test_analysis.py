"""analysis/: bootstrap and tests, readers, metrics, plots and the HTML report."""
import base64
import json
import subprocess

import numpy as np
import polars as pl
import pytest

from analysis import plots
from analysis.metrics import borough_columns, epidemic_summary, growth_rate, long_by_borough
from analysis.readers import (
    NotAResultDir, kind_of, read_experiment_summary, scan_agents, scan_experiment, scan_metrics,
)
from analysis.report import write_report
from analysis.stats import bootstrap_ci, compare, coverage, paired_effect
from conftest import SIMCORE
from simcore.experiments import ExperimentResults

BOROUGHS = ("bronx", "brooklyn", "manhattan", "queens", "staten_island")


# -- statistics ----------------------------------------------------------------------------------
def test_bootstrap_ci_coverage_on_known_effect():
    """200 synthetic data sets with a known mean effect: the 90% CI covers it about 90% of the time."""
    rng = np.random.default_rng(12)
    data = rng.normal(1.5, 2.0, size=(200, 50))  # 200 data sets, 50 paired differences each
    est, lo, hi = bootstrap_ci(data, ci=0.90, n_boot=2000, seed=3)
    assert est.shape == lo.shape == (200,)
    assert np.all(lo <= est) and np.all(est <= hi)
    cov = coverage(1.5, lo, hi)
    assert 0.84 <= cov <= 0.96, cov
    # a wider interval covers more often
    _, lo99, hi99 = bootstrap_ci(data, ci=0.99, n_boot=2000, seed=3)
    assert coverage(1.5, lo99, hi99) > cov


def test_bootstrap_matches_index_resampling_and_handles_degenerate_data():
    rng = np.random.default_rng(0)
    x = rng.exponential(1.0, 40)
    _, lo, hi = bootstrap_ci(x, ci=0.9, n_boot=20000, seed=1)
    idx = np.random.default_rng(2).integers(0, 40, size=(20000, 40))
    ref_lo, ref_hi = np.quantile(x[idx].mean(axis=1), [0.05, 0.95])
    assert lo == pytest.approx(ref_lo, abs=0.03) and hi == pytest.approx(ref_hi, abs=0.03)
    est, lo, hi = bootstrap_ci(np.full(10, 3.0))
    assert est == lo == hi == 3.0
    med, lo, hi = bootstrap_ci(x, statistic="median", n_boot=500)
    assert lo <= med <= hi and med == pytest.approx(np.median(x))
    series = rng.normal(size=(8, 30))  # per-step bands: one interval per column
    est, lo, hi = bootstrap_ci(series, axis=0, n_boot=500)
    assert est.shape == (30,) and np.all(lo <= hi)


def test_paired_tests_use_the_pairing():
    """Common random numbers make arms correlated: the paired t sees a small shift that Welch cannot."""
    rng = np.random.default_rng(5)
    base = rng.normal(100, 20, 30)
    arm = base - 2.0 + rng.normal(0, 1, 30)
    assert compare(arm, base, "paired_t").pvalue < 1e-6
    assert compare(arm, base, "welch").pvalue > 0.2
    assert compare(arm, base, "t").pvalue > 0.2
    assert compare(arm, base, "mannwhitney").pvalue > 0.2
    assert compare(rng.normal(0, 1, 200), rng.normal(0, 1, 200), "ks").pvalue > 0.01
    assert compare(rng.normal(0, 1, 200), rng.normal(1, 1, 200), "ks").pvalue < 1e-6
    assert np.isnan(compare(base, base, "paired_t").pvalue)  # zero differences: undefined, not 0 or 1
    assert paired_effect(arm - base) < -1
    with pytest.raises(ValueError, match="unknown test"):
        compare(arm, base, "anova")


# -- fixtures: a real run and synthetic results ------------------------------------------------------
@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from scenarios import load_scenario
    from simcore.runs import run_scenario

    sc = load_scenario({"name": "ana", "population": {"kind": "homogeneous", "size": 2000},
                        "graph": {"kind": "erdos_renyi", "mean_degree": 6},
                        "model": {"kind": "seir", "params": {"beta": 0.08, "initial_infected": 0.01}},
                        "run": {"steps": 20, "chunk_size": 10}, "output": {"sample_agents": 30, "sample_every": 5}})
    return run_scenario(sc, tmp_path_factory.mktemp("runs") / "run")


def _synthetic_metrics(steps=40, seed=0, shift=0.0):
    rng = np.random.default_rng(seed)
    t = np.arange(steps)
    i = 50 * np.exp(-((t - 15 - shift) ** 2) / 60) + rng.random(steps)
    cols = {"step": t.astype(np.int64), "S": 1000 - np.cumsum(i) / 5, "I": i, "R": np.cumsum(i) / 5,
            "new_infections": rng.poisson(i).astype(np.int32), "new_deaths": rng.poisson(i / 50).astype(np.int32),
            "unemployment_rate": 0.05 + 0.001 * t, "wall_seconds": np.full(steps, 0.01)}
    for k, b in enumerate(BOROUGHS):
        cols[f"I__borough_{b}"] = i * (k + 1) / 15
        cols[f"new_infections__borough_{b}"] = rng.poisson(i * (k + 1) / 15).astype(np.int32)
    return pl.DataFrame(cols)


@pytest.fixture(scope="module")
def synthetic_results():
    parts = []
    for arm, shift in (("baseline", 0.0), ("later", 5.0)):
        for seed in range(6):
            parts.append(_synthetic_metrics(seed=seed, shift=shift).with_columns(
                arm=pl.lit(arm), seed=pl.lit(seed, pl.Int64)).drop("wall_seconds"))
    metrics = pl.concat(parts).select("arm", "seed", pl.exclude("arm", "seed"))
    return ExperimentResults(metrics, baseline="baseline", arms=["baseline", "later"], seeds=list(range(6)),
                             steps=40, branch_step=10, timing={"total_seconds": 1.0},
                             info={"name": "synthetic", "n_agents": 1000, "model": "toy"})


# -- readers --------------------------------------------------------------------------------------
def test_run_readers_round_trip(run_dir):
    lf = scan_metrics(run_dir)
    assert isinstance(lf, pl.LazyFrame)
    df = lf.collect()
    assert df.equals(pl.read_parquet(run_dir / "metrics.parquet"))
    assert df.schema["step"] == pl.Int64 and df["step"].to_list() == list(range(20))
    agents = scan_agents(run_dir, labels=True).collect()
    assert agents.schema["step"] == pl.Int64
    assert sorted(agents["step"].unique().to_list()) == [0, 5, 10, 15]
    assert agents.height == 4 * 30
    assert set(agents["disease_label"].unique()) <= {"S", "E", "I", "R"}
    one = pl.read_parquet(run_dir / "agents" / "step=10" / "part-0.parquet")
    assert agents.filter(pl.col("step") == 10).drop("step", "disease_label").sort("agent").equals(one.sort("agent"))
    assert kind_of(run_dir) == "run"
    with pytest.raises(NotAResultDir):
        scan_agents(run_dir.parent)


def test_experiment_readers_round_trip(tmp_path, synthetic_results):
    out = tmp_path / "exp"
    for (arm, seed), part in synthetic_results.metrics.partition_by(["arm", "seed"], as_dict=True).items():
        d = out / f"arm={arm}" / f"seed={seed}"
        d.mkdir(parents=True)
        part.drop("arm", "seed").write_parquet(d / "metrics.parquet")
    synthetic_results.save(out, ["new_infections:sum", "I:peak_step"])
    lf = scan_experiment(out)
    df = lf.collect()
    assert df.schema["arm"] == pl.String and df.schema["seed"] == pl.Int64
    cols = synthetic_results.metrics.columns
    assert df.select(cols).equals(synthetic_results.metrics.sort("arm", "seed", "step").select(cols))
    summary = read_experiment_summary(out)
    assert summary["outcome"].to_list() == ["new_infections:sum", "I:peak_step"]
    later = summary.filter(pl.col("outcome") == "I:peak_step").row(0, named=True)
    assert later["diff_mean"] == pytest.approx(5.0, abs=1.0) and later["ci_low"] > 0
    assert kind_of(out) == "experiment"
    back = ExperimentResults.load(out)
    assert back.metrics.equals(synthetic_results.metrics) and back.branch_step == 10


# -- metrics and plots ------------------------------------------------------------------------------
def test_standard_metrics():
    m = _synthetic_metrics()
    s = epidemic_summary(m, n_agents=1000)
    assert s["peak_step"] == float(m["step"][int(m["I"].to_numpy().argmax())])
    assert s["attack_rate"] == pytest.approx(m["new_infections"].sum() / 1000)
    assert s["unemployment_final"] == pytest.approx(0.05 + 0.039)
    assert list(borough_columns(m.columns, "I")) == list(BOROUGHS)
    long = long_by_borough(m, "I")
    assert long.height == 40 * 5 and set(long["borough"]) == set(BOROUGHS)
    r = growth_rate(100 * np.exp(0.1 * np.arange(40)))
    assert np.nanmean(r[14:]) == pytest.approx(0.1, rel=1e-6)


def test_plots_return_figures(tmp_path, synthetic_results):
    m = _synthetic_metrics()
    figs = [plots.epidemic_curves(m), plots.borough_small_multiples(m, "I"),
            synthetic_results.plot("I"), synthetic_results.plot("new_infections", "effect", cumulative=True),
            plots.summary_forest(synthetic_results.summary(["I:max"]), "I:max")]
    for k, fig in enumerate(figs):
        path = tmp_path / f"f{k}.png"
        plots.save(fig, path)
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="borough"):
        plots.borough_small_multiples(m, "nope")


# -- report ---------------------------------------------------------------------------------------
def test_run_report(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    _synthetic_metrics().write_parquet(run / "metrics.parquet")
    (run / "manifest.json").write_text(json.dumps({"scenario": {"name": "toy", "interventions": []}, "seed": 0,
                                                   "steps": 40, "steps_done": 40, "status": "completed",
                                                   "n_agents": 1000, "model": "toy"}))
    html_path = write_report(run)
    text = html_path.read_text()
    pngs = sorted(p.name for p in html_path.parent.glob("*.png"))
    assert "compartments.png" in pngs and "borough_I.png" in pngs
    assert text.count("data:image/png;base64,") == len(pngs)
    first = text.split("data:image/png;base64,")[1].split('"')[0]
    assert base64.b64decode(first)[:4] == b"\x89PNG"
    assert "http://" not in text and "https://" not in text  # self-contained


def test_experiment_report_via_cli(tmp_path, synthetic_results, cli_env):
    out = tmp_path / "exp"
    synthetic_results.save(out, ["new_infections:sum", "I:max"])
    res = subprocess.run(SIMCORE + ["report", str(out), "--out", str(tmp_path / "rep")], capture_output=True,
                         text=True, env=cli_env, timeout=300)
    assert res.returncode == 0, res.stderr
    text = (tmp_path / "rep" / "report.html").read_text()
    assert "later" in text and "p_paired_t" in text
    names = {p.name for p in (tmp_path / "rep").glob("*.png")}
    assert {"curves_I.png", "effect_new_infections.png", "forest_I_max.png", "borough_I.png"} <= names
    res = subprocess.run(SIMCORE + ["report", str(tmp_path)], capture_output=True, text=True, env=cli_env, timeout=300)
    assert res.returncode == 2 and "directory: not a run or experiment directory" in res.stderr
