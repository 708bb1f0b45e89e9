"""The archetype layer: device grouping, decisions as probabilities, fallbacks, cache and replay."""
from simcore.session import drive
import json
import math
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import polars as pl
import pytest
from scipy import stats as sps

from conftest import SIMCORE
from llm_policy import ArchetypePolicy, broadcast, check_policy, group
from llm_policy.backends import ScriptedBackend
from scenarios import ScenarioError, load_scenario
from simcore.models import build
from simcore.runs import make_simulation


def test_grouping_matches_polars_groupby():
    rng = np.random.default_rng(0)
    n = 200_000
    feats = {"a": rng.integers(0, 6, n).astype(np.int8), "b": rng.integers(0, 5, n).astype(np.int8),
             "c": rng.integers(0, 3, n).astype(np.int8)}
    feats["b"][feats["a"] == 2] = 0  # leave some archetypes empty
    x = rng.random(n).astype(np.float32)
    g = group({k: jnp.asarray(v) for k, v in feats.items()}, {"x": jnp.asarray(x)}, ("a", "b", "c"), (6, 5, 3))
    ref = (pl.DataFrame({**feats, "x": x}).group_by("a", "b", "c").agg(pl.len(), pl.col("x").mean())
           .with_columns(code=(pl.col("a").cast(pl.Int32) * 5 + pl.col("b")) * 3 + pl.col("c")).sort("code"))
    np.testing.assert_array_equal(g.codes, ref["code"].to_numpy())
    np.testing.assert_array_equal(g.sizes, ref["len"].to_numpy())
    np.testing.assert_allclose(g.means["x"], ref["x"].to_numpy(), rtol=1e-5)
    assert len(g.codes) < 90  # empty archetypes never leave the device
    assert g.decode(int(g.codes[-1])) == {"a": 5, "b": 4, "c": 2}


def test_broadcast_agents_draw_from_their_archetype():
    """Every member of an archetype draws from that archetype's probability (chi-square per archetype)."""
    rng = np.random.default_rng(1)
    n = 300_000
    feats = {"a": jnp.asarray(rng.integers(0, 4, n).astype(np.int8))}
    g = group(feats, {}, ("a",), (4,))
    probs = np.array([0.05, 0.3, 0.6, 0.9], np.float32)
    per_agent = broadcast(g, probs[g.codes], jax.random.key(0))
    draws = np.asarray(jax.random.uniform(jax.random.key(1), (n,)) < per_agent)
    a = np.asarray(feats["a"])
    for code, p in enumerate(probs):
        members = draws[a == code]
        assert np.all(np.asarray(per_agent)[a == code] == p)
        assert sps.binomtest(int(members.sum()), members.size, float(p)).pvalue > 1e-3
    # heterogeneity spreads values around the archetype's value, keeping them in (0, 1)
    het = np.asarray(broadcast(g, probs[g.codes], jax.random.key(2), heterogeneity=0.5))
    assert het.min() > 0 and het.max() < 1 and het[a == 1].std() > 0.01
    assert abs(np.median(het[a == 1]) - 0.3) < 0.01


def _setup(size=5000, overrides=()):
    sc = load_scenario("covid_nyc", [f"population.size={size}", "run.steps=21", *overrides])
    built = build(sc, seed=0, steps=21)
    sim = make_simulation(sc, built, 0)
    names = tuple(jax.eval_shape(built.model.stats, built.state, built.params))
    return sc, built, sim, names


def _script(prompt, options):
    # older people isolate more; the 20-29 isolation prompts fail (to check the fallback)
    query = prompt.rsplit("\n\n", 1)[1]  # the archetype's own block, after the few-shot examples
    if "isolate" in query and "Age 20 to 29," in query:
        raise TimeoutError("injected: server timed out")
    if "isolate" in query:
        p = 0.8 if "Age 65 or older," in query else 0.3
        return [math.log(p), math.log(1 - p)]
    return [math.log(0.9), math.log(0.1)]


def test_policy_calls_once_per_archetype_and_falls_back_per_agent():
    sc, built, sim, names = _setup()
    backend = ScriptedBackend(_script)
    policy = ArchetypePolicy(sc.policy, built.model, backend, stats_names=names, interventions=sc.interventions)
    drive(sim, 21, policies=[policy])
    iso_calls = [r for r in policy.rows if r["decision"] == "isolate"]
    rounds = sorted({r["step"] for r in iso_calls})
    assert rounds == [0, 7, 14]
    for step in rounds:
        rows = [r for r in iso_calls if r["step"] == step]
        # one call per non-empty (age band x borough x trend) archetype; each borough has one trend
        assert len(rows) == 6 * 5
        assert sum(r["group_size"] for r in rows) == 5000
        assert sum(len(b) for b in backend.calls) < 5000  # never one call per agent
    for r in policy.rows:
        if r["fallback"]:
            assert "age_band=20t29" in r["archetype"] and "timed out" in r["error"] and math.isnan(r["value"])
        else:
            assert sum(r["probs"]) == pytest.approx(1.0, abs=1e-9)
    # 20-29 year olds follow the heuristic (NaN), others the archetype's hazard
    logit = np.asarray(sim.params["isolate_llm"])  # the epidemic's targets take logit(daily hazard)
    iso = 1 / (1 + np.exp(-logit))  # covid_nyc maps isolate with (bias, slope) = (0, 1): at face value
    age = np.asarray(built.params["age_band"])
    assert np.isnan(iso[age == 1]).all() and not np.isnan(iso[age != 1]).any()
    daily = lambda p: 1 - (1 - p) ** (1 / 7)  # noqa: E731
    # logit noise (sd 0.3) spreads members around their archetype's hazard; the median stays on it
    assert np.median(iso[age == 5]) == pytest.approx(daily(0.8), rel=0.05)
    assert np.median(iso[age == 2]) == pytest.approx(daily(0.3), rel=0.05)
    assert policy.totals.fallbacks == sum(r["fallback"] for r in policy.rows) > 0
    m = policy.metrics_for(np.arange(21))
    assert m["llm_calls"][0] > 0 and m["llm_calls"][1] == 0 and m["llm_fallbacks"][7] > 0


def test_policy_spec_errors_name_the_field():
    sc, built, sim, names = _setup(2000)
    known = dict(scheduled=tuple(built.schedule), interventions=sc.interventions)
    bad = sc.policy.model_copy(deep=True)
    bad.decisions[0].target = "nope"
    with pytest.raises(ScenarioError, match=r"policy.decisions\[0\].target: unknown decision target 'nope'"):
        check_policy(bad, built.model, names, **known)
    bad = sc.policy.model_copy(deep=True)
    bad.decisions[1].group_by = ["shoe_size"]
    with pytest.raises(ScenarioError, match=r"policy.decisions\[1\].group_by: unknown feature 'shoe_size'"):
        check_policy(bad, built.model, names, **known)
    bad = sc.policy.model_copy(deep=True)
    bad.decisions[0].prompt = "Hello {nonsense}"
    with pytest.raises(ScenarioError, match=r"policy.decisions\[0\].prompt: unknown field \{nonsense\}"):
        check_policy(bad, built.model, names, **known)
    with pytest.raises(ScenarioError, match=r"policy.decisions\[0\].value: keys \['maybe'\]"):
        load_scenario("covid_nyc", ["policy.decisions.0.value={maybe: 1}"])


def test_backend_that_cannot_start_exits_2_before_any_file(cli_env, tmp_path):
    out = tmp_path / "run"
    res = subprocess.run(SIMCORE + ["run", "covid_nyc", "--set", "population.size=2000", "--out", str(out),
                                    "--set", "policy.backend={kind: llamacpp, model_path: /nonexistent.gguf}"],
                         capture_output=True, text=True, env=cli_env, cwd=tmp_path, timeout=300)
    assert res.returncode == 2, res.stderr
    assert "policy.backend: backend 'llamacpp' cannot start" in res.stderr and "Traceback" not in res.stderr
    assert not out.exists()
    res = subprocess.run(SIMCORE + ["run", "covid_nyc", "--set", "population.size=2000", "--out", str(out),
                                    "--set", "policy.backend={kind: gpt5}"],
                         capture_output=True, text=True, env=cli_env, cwd=tmp_path, timeout=300)
    assert res.returncode == 2 and "policy.backend.kind: unknown backend kind 'gpt5'" in res.stderr


@pytest.mark.llm
def test_embedded_model_end_to_end_cache_and_replay(cli_env, tmp_path):
    """Real llama.cpp + Gemma 270M on a tiny NYC run; a re-run hits the cache; replay reproduces it."""
    pytest.importorskip("llama_cpp", reason="llama-cpp-python not installed (pip install -e .[llm])")
    cache = tmp_path / "shared_cache.sqlite"
    common = ["--set", "population.size=3000", "--steps", "7", "--quiet", "--set", f"policy.cache={cache}"]

    def run(name, *extra):
        res = subprocess.run(SIMCORE + ["run", "covid_nyc", "--out", str(tmp_path / name), *common, *extra],
                             capture_output=True, text=True, env=cli_env, cwd=tmp_path, timeout=900)
        assert res.returncode == 0, res.stderr[-3000:]
        m = pl.read_parquet(tmp_path / name / "metrics.parquet").drop("wall_seconds", "llm_seconds")
        return m, pl.read_parquet(tmp_path / name / "llm_calls.parquet")

    first, calls = run("first")
    assert calls.height == first["llm_calls"].sum() and first["llm_fallbacks"].sum() == 0
    assert calls["probs"].list.sum().is_between(0.999, 1.001).all()
    assert not calls["cache_hit"].all()
    assert json.loads((tmp_path / "first" / "manifest.json").read_text())["llm_backend"].startswith("llamacpp:")

    again, calls2 = run("again")
    assert calls2["cache_hit"].all() and again["llm_cache_hits"].sum() == again["llm_calls"].sum()
    assert again.drop("llm_cache_hits").equals(first.drop("llm_cache_hits"))

    replay, _ = run("replay", "--set", f"policy.backend={{kind: replay, cache: {cache}}}")
    assert replay.drop("llm_cache_hits").equals(first.drop("llm_cache_hits"))
