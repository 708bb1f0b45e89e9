"""The economy model: calibration, best response, elasticity, Saez, gradient planner, LLM planner, CLI errors."""
from simcore.session import drive
import math
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import SIMCORE
from scenarios import load_scenario
from simcore.engine import Simulation
from simcore.models import build
from simcore.models.economy import (EconomyConfig, best_response, hill_pareto, relaxed_welfare,
                                    saez_rates, saez_top_rate, sample_workers, tax_of)
from simcore.models.economy.calibration import TARGET_GINI, TARGET_MEDIAN, TARGET_P90_P10, gini_sorted
from simcore.models.economy.model import gini, ginis

US_THR = [0.0, 11_600.0, 47_150.0, 100_525.0, 191_950.0, 243_725.0, 609_350.0]


def _params(n, rng, *, thresholds=US_THR, elasticity=None, disutility=20.0):
    skill = np.exp(rng.normal(np.log(35.0), 0.8, n)).astype(np.float32)
    e = rng.uniform(0.1, 1.5, n).astype(np.float32) if elasticity is None else np.full(n, elasticity, np.float32)
    persona = rng.integers(0, 4, n).astype(np.int8)
    return {"skill": jnp.asarray(skill), "elasticity": jnp.asarray(e), "persona": jnp.asarray(persona),
            "persona_psi": jnp.asarray([0.8, 1.0, 1.3, 1.6], jnp.float32), "disutility": jnp.float32(disutility),
            "thresholds": jnp.asarray(thresholds, jnp.float32)}


def _cfg(n, options=(0, 10, 20, 30, 40, 50, 60), n_brackets=7, **kw):
    return EconomyConfig(n_workers=n, hours_options=tuple(options), weeks_per_year=52.0, full_time_hours=2080.0,
                         n_brackets=n_brackets, **kw)


def test_sampled_workers_reproduce_the_census_calibration():
    prm = load_scenario("tax_us_fixed_small").model.params
    w = sample_workers(prm, 400_000, seed=3)
    income = np.sort(w["skill"].astype(np.float64) * prm.full_time_hours)
    q10, q50, q90 = np.quantile(income, [0.1, 0.5, 0.9])
    assert q50 == pytest.approx(TARGET_MEDIAN, rel=0.01)
    assert q90 / q10 == pytest.approx(TARGET_P90_P10, rel=0.03)
    assert gini_sorted(income) == pytest.approx(TARGET_GINI, abs=0.006)
    assert np.bincount(w["skill_decile"]).tolist() == [40_000] * 10
    # deciles are ordered by skill
    means = [w["skill"][w["skill_decile"] == d].mean() for d in range(10)]
    assert all(b > a for a, b in zip(means, means[1:]))


def test_tax_and_gini_against_hand_computation():
    thr = jnp.asarray(US_THR, jnp.float32)
    rates = jnp.asarray([0.10, 0.12, 0.22, 0.24, 0.32, 0.35, 0.37], jnp.float32)
    # $60,000: 10% of 11,600 + 12% of 35,550 + 22% of 12,850
    assert float(tax_of(jnp.float32(60_000), thr, rates)) == pytest.approx(1160 + 4266 + 2827, rel=1e-6)
    x = np.random.default_rng(0).pareto(2.5, 5000).astype(np.float32)
    brute = np.abs(x[:, None] - x[None, :]).mean() / (2 * x.mean())
    assert float(gini(jnp.asarray(x))) == pytest.approx(brute, rel=1e-4)


def test_histogram_ginis_bound_the_exact_ones_tightly():
    rng = np.random.default_rng(7)
    prm = load_scenario("tax_us_fixed_small").model.params
    z = sample_workers(prm, 200_000, seed=1)["skill"].astype(np.float64) * 2080 * rng.uniform(0, 1.5, 200_000)
    z[:5000] = 0.0  # non-participants
    thr = jnp.asarray(US_THR, jnp.float32)
    rates = jnp.asarray([0.10, 0.12, 0.22, 0.24, 0.32, 0.35, 0.37], jnp.float32)
    zj = jnp.asarray(z, jnp.float32)
    c = zj - tax_of(zj, thr, rates) + 9000.0
    g_pre, g_post = (float(g) for g in ginis(zj, c))
    exact_pre, exact_post = gini_sorted(np.sort(z)), gini_sorted(np.sort(np.asarray(c, np.float64)))
    for approx, exact in ((g_pre, exact_pre), (g_post, exact_post)):
        assert exact - 0.0013 <= approx <= exact + 1e-5


def test_best_response_equals_brute_force_over_the_options():
    rng = np.random.default_rng(1)
    n = 300
    p = _params(n, rng)
    cfg = _cfg(n)
    for trial in range(3):
        rates = np.sort(rng.uniform(0.0, 0.8, 7)).astype(np.float32) if trial else rng.uniform(0, 0.9, 7).astype(np.float32)
        choice = np.asarray(best_response(cfg, p, jnp.asarray(rates)))
        skill, e = np.asarray(p["skill"], np.float64), np.asarray(p["elasticity"], np.float64)
        psi = 20.0 * np.array([0.8, 1.0, 1.3, 1.6])[np.asarray(p["persona"])]
        for i in range(n):  # brute force, one worker at a time, in float64
            best, best_u = None, -math.inf
            for k, h in enumerate(cfg.hours_options):
                l = h * 52.0
                z = skill[i] * l
                tax = sum(r * min(max(z - lo, 0.0), hi - lo) for r, lo, hi in zip(rates, US_THR, US_THR[1:] + [math.inf]))
                g = 1 + 1 / e[i]
                u = z - tax - psi[i] * 2080.0 * (l / 2080.0) ** g / g
                if u > best_u:
                    best, best_u = k, u
            if choice[i] != best:  # only a float32 near-tie may differ
                k = choice[i]
                l = cfg.hours_options[k] * 52.0
                z = skill[i] * l
                tax = sum(r * min(max(z - lo, 0.0), hi - lo) for r, lo, hi in zip(rates, US_THR, US_THR[1:] + [math.inf]))
                g = 1 + 1 / e[i]
                u = z - tax - psi[i] * 2080.0 * (l / 2080.0) ** g / g
                assert best_u - u < 1e-4 * abs(best_u) + 1e-2


def test_linear_tax_hours_respond_with_the_configured_elasticity():
    rng = np.random.default_rng(2)
    n = 40
    options = tuple(range(0, 1201))  # hours/week in 0..1200 (fine grid: the continuous limit)
    p = _params(n, rng, thresholds=[0.0])
    p["skill"] = jnp.asarray(rng.uniform(15, 60, n), jnp.float32)
    cfg = _cfg(n, options=options, n_brackets=1)
    h = {}
    for t in (0.2, 0.4):
        choice = np.asarray(best_response(cfg, p, jnp.asarray([t], jnp.float32)))
        h[t] = np.asarray(options, np.float64)[choice]
    assert (h[0.4] > 5).all() and (h[0.2] < 1200).all()  # interior
    measured = np.log(h[0.4] / h[0.2]) / np.log(0.6 / 0.8)
    # one-hour grid: the error is at most ~1 h / h in log terms
    tol = 1.0 / np.minimum(h[0.2], h[0.4]) / abs(np.log(0.6 / 0.8)) + 1e-3
    assert np.all(np.abs(measured - np.asarray(p["elasticity"])) <= tol)
    # and the level is the closed form l = H ((1 - t) w / psi)^e
    psi = 20.0 * np.asarray(p["persona_psi"])[np.asarray(p["persona"])]
    closed = 40.0 * (0.8 * np.asarray(p["skill"], np.float64) / psi) ** np.asarray(p["elasticity"], np.float64)
    assert np.all(np.abs(h[0.2] - closed) <= 1.0)


def test_saez_top_rate_matches_the_closed_form_for_a_pareto_tail():
    rng = np.random.default_rng(4)
    a, e, top = 2.0, 0.5, 609_350.0
    n = 400_000
    body = rng.uniform(5_000, top, n // 2)
    tail = top * (1.0 + rng.pareto(a, n // 2))  # Pareto(a) above the top threshold
    income = jnp.asarray(np.concatenate([body, tail]), jnp.float32)
    assert float(hill_pareto(income, top)) == pytest.approx(a, rel=0.02)
    assert saez_top_rate(2.0, 0.5) == pytest.approx(0.5)
    assert saez_top_rate(3.0, 0.25, 0.2) == pytest.approx(0.8 / (0.8 + 0.75))
    cfg = _cfg(n, top_weight=0.0, max_rate=0.99)
    p = {"thresholds": jnp.asarray(US_THR, jnp.float32), "elasticity": jnp.full(n, e, jnp.float32)}
    rates = np.asarray(saez_rates(cfg, p, income, jnp.full(n, 50_000.0)))
    assert rates[-1] == pytest.approx(1.0 / (1.0 + a * e), abs=0.01)
    # equal utilities -> equal weights -> G = 1 below the top: no distortion is worth it there
    assert np.allclose(rates[:-1], 0.0, atol=1e-6)


def test_gradient_of_the_relaxed_welfare_matches_finite_differences():
    rng = np.random.default_rng(5)
    n = 2000
    p = _params(n, rng)
    rates0 = np.array([0.10, 0.12, 0.22, 0.24, 0.32, 0.35, 0.37])
    with jax.enable_x64(True):
        p64 = {k: jnp.asarray(np.asarray(v), jnp.float64 if np.asarray(v).dtype.kind == "f" else None)
               for k, v in p.items()}
        cfg = _cfg(n, temperature=0.05)
        f = jax.jit(lambda r: relaxed_welfare(cfg, p64, r))
        grad = np.asarray(jax.grad(lambda r: relaxed_welfare(cfg, p64, r))(jnp.asarray(rates0)))
        h = 1e-5
        fd = np.array([(float(f(jnp.asarray(rates0 + h * np.eye(7)[j]))) - float(f(jnp.asarray(rates0 - h * np.eye(7)[j]))))
                       / (2 * h) for j in range(7)])
    assert np.all(np.isfinite(grad))
    np.testing.assert_allclose(grad, fd, rtol=1e-4, atol=1e-4 * np.abs(fd).max())


def _run(name, steps, overrides=()):
    sc = load_scenario(name, overrides)
    b = build(sc, steps=steps)
    sim = Simulation(b.model, b.state, b.params, b.schedule, chunk_size=steps)
    return sim.advance(steps).metrics, b


def test_gradient_planner_raises_welfare_over_the_fixed_schedule():
    size = ["population.size=5000"]
    fixed, _ = _run("tax_us_fixed_small", 8, size)
    grad, _ = _run("tax_gradient_planner_small", 8, size)
    assert np.all(np.diff(fixed["welfare_atkinson"]) == 0)  # the fixed schedule is a steady state
    assert grad["welfare_atkinson"][-1] > fixed["welfare_atkinson"][-1] * 1.02
    assert grad["welfare_atkinson"][-1] > grad["welfare_atkinson"][0]
    # and the rates it found differ from the U.S. brackets
    assert any(abs(grad[f"rate_b{j}"][-1] - fixed[f"rate_b{j}"][-1]) > 0.05 for j in range(7))


def test_saez_planner_sets_the_top_rate_from_the_simulated_tail():
    m, b = _run("tax_saez_small", 3, ["model.params.planner.top_weight=0"])
    st = b.state  # year -1 incomes (U.S. schedule): the planner's first input
    e = np.asarray(b.params["elasticity"])
    inc = np.asarray(st.income)
    top = 609_350.0
    a = float(hill_pareto(jnp.asarray(inc), top))
    assert m["rate_b6"][0] == pytest.approx(1 / (1 + a * e[inc > top].mean()), abs=1e-4)


def test_llm_planner_constrained_json_and_counted_fallback():
    from llm_policy.backends import ScriptedBackend
    from llm_policy.planner import make_planner_policy

    sc = load_scenario("tax_llm_planner_small", ["population.size=2000", "policy=null", "model.params.vote_every=0"])
    b = build(sc, steps=4)
    seen = []
    answers = [{"rates": [10, 15, 25, 30, 35, 40, 45]},
               {"rates": [10, 15]},  # wrong length: the schema rejects it
               {"rates": [5, 5, 5, 5, 5, 5, 5]},
               "raise"]

    def json_fn(prompt, schema):
        seen.append((prompt, schema))
        a = answers[len(seen) - 1]
        if a == "raise":
            raise TimeoutError("server timed out")
        return a

    policy = make_planner_policy(sc.model.params, None, backend=ScriptedBackend(lambda p, o: [0.0] * len(o),
                                                                                  json_fn=json_fn))
    sim = Simulation(b.model, b.state, b.params, b.schedule, chunk_size=1)
    rows = []
    drive(sim, 4, policies=[policy], on_chunk=lambda s, c: rows.append(c.metrics))
    schema = seen[0][1]["properties"]["rates"]
    assert schema["minItems"] == schema["maxItems"] == 7 and schema["items"]["maximum"] == 90
    rates = [[float(r[f"rate_b{j}"][0]) for j in range(7)] for r in rows]
    assert rates[0] == pytest.approx([0.10, 0.15, 0.25, 0.30, 0.35, 0.40, 0.45])
    assert rates[1] == rates[0]  # invalid -> last valid
    assert rates[2] == pytest.approx([0.05] * 7)
    assert rates[3] == rates[2]  # backend failure -> last valid
    assert [float(r["planner_fallbacks"][0]) for r in rows] == [0, 1, 1, 2]
    assert [float(r["planner_calls"][0]) for r in rows] == [1, 2, 3, 4]
    # the prompt carries the history of schedules and outcomes
    assert "year 0: rates [10, 15, 25, 30, 35, 40, 45]" in seen[2][0]
    assert policy.log[1]["fallback"] and "fewer than 7 items" in policy.log[1]["error"]
    assert policy.log[3]["fallback"] and "timed out" in policy.log[3]["error"]


def test_worker_archetypes_decile_by_persona_at_most_40_per_round():
    from llm_policy import ArchetypePolicy
    from llm_policy.backends import ScriptedBackend

    sc = load_scenario("tax_llm_planner_small", ["population.size=3000"])
    b = build(sc, steps=2)
    names = tuple(jax.eval_shape(b.model.stats, b.state, b.params))

    def script(prompt, options):
        if "hours" in prompt:  # everybody answers 40 hours
            return [0.0 if o.strip() == "40" else -50.0 for o in options]
        return [0.0, -50.0]  # vote yes

    policy = ArchetypePolicy(sc.policy, b.model, ScriptedBackend(script), stats_names=names)
    sim = Simulation(b.model, b.state, b.params, b.schedule, chunk_size=1)
    drive(sim, 1, policies=[policy])
    hours_rows = [r for r in policy.rows if r["decision"] == "hours"]
    assert 0 < len(hours_rows) <= 40
    assert sum(r["group_size"] for r in hours_rows) == 3000
    hl = np.asarray(sim.params["hours_llm"])
    assert np.allclose(hl, 40 / 60, atol=1e-5)
    assert np.all(np.asarray(sim.state.hours) == 4)  # option index of 40 h


def test_experiment_arms_are_planners():
    from simcore.experiments import Experiment

    exp = Experiment("tax_us_fixed_small", seeds=[0, 1], steps=3, replicates="independent",
                     overrides=["population.size=2000"])
    exp.arm("saez", overrides=["model.params.planner={kind: saez}"])
    res = exp.run()
    s = res.summary(["welfare_atkinson:final"])
    assert set(s["arm"].to_list()) >= {"saez"}
    w = res.outcome("welfare_atkinson:final")
    assert w["saez"].shape == (2,) and not np.allclose(w["saez"], w["baseline"])


@pytest.mark.parametrize("override,message", [
    ("model.params.planner.kind=bogus", "model.params.planner.kind: must be one of 'fixed', 'saez', 'gradient', 'llm'"),
    ("model.params.planner={kind: gradient, learning_rate: -1}", "model.params.planner.learning_rate: must be > 0"),
    ("model.params.planner={kind: llm, backend: {}}", "model.params.planner.backend: needs a 'kind'"),
    ("model.params.planner={kind: llm, backend: {kind: nope}}", "model.params.planner.backend.kind: must be one of"),
    ("model.params.schedule.rates=[0.1,0.2]", "model.params.schedule.rates: needs one rate per threshold (7), got 2"),
    ("model.params.schedule.rates=[0.1,0.2,0.3,0.4,0.5,0.6,1.5]", "model.params.schedule.rates[6]: must be <= 1"),
    ("model.params.schedule.thresholds=[0,5000,4000,6000,7000,8000,9000]",
     "model.params.schedule.thresholds: must be strictly increasing"),
    ("model.params.schedule.thresholds=[10,20,30,40,50,60,70]", "model.params.schedule.thresholds: the first bracket must start at 0"),
    ("model.params.hours_options=[0,20,10]", "model.params.hours_options: must be strictly increasing"),
    ("graph.kind=erdos_renyi", "graph.mean_degree"),
])
def test_bad_planner_or_bracket_specs_exit_2_naming_the_field(override, message, cli_env, tmp_path):
    res = subprocess.run(SIMCORE + ["run", "tax_us_fixed_small", "--set", override, "--out", str(tmp_path / "r")],
                         capture_output=True, text=True, env=cli_env, cwd=tmp_path, timeout=120)
    assert res.returncode == 2, res.stderr
    assert message in res.stderr, res.stderr
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "r").exists()


def test_dashboard_charts_come_from_the_models_metric_groups(tmp_path):
    import httpx

    from server.app import ServerConfig, create_app
    from server.testing import ServerThread, wait_until

    with ServerThread(create_app(ServerConfig(runs_dir=tmp_path / "runs", max_runs=1))) as srv, \
            httpx.Client(base_url=srv.url, timeout=120) as c:
        r = c.post("/api/runs", json={"scenario": "tax_saez_small", "overrides": ["population.size=2000",
                                                                                   "run.steps=3"]})
        assert r.status_code == 201, r.text
        run_id = r.json()["id"]
        d = wait_until(lambda: (x := c.get(f"/api/runs/{run_id}").json())["status"] == "completed" and x, 240,
                       what="the economy run to complete")
        groups = {g["title"]: g["columns"] for g in d["metric_groups"]}
        assert groups["Marginal rates by bracket"] == [f"rate_b{j}" for j in range(7)]
        assert groups["Welfare"] == ["welfare_utilitarian", "welfare_atkinson"]
        assert all(col in d["columns"] for cols in groups.values() for col in cols)
        assert "Epidemic compartments" not in groups


def test_simcore_run_writes_the_economy_metrics(cli_env, tmp_path):
    import json

    import polars as pl

    out = tmp_path / "run"
    res = subprocess.run(SIMCORE + ["run", "tax_gradient_planner_small", "--set", "population.size=2000",
                                    "--set", "run.steps=4", "--set", "output.sample_agents=50", "--out", str(out)],
                         capture_output=True, text=True, env=cli_env, cwd=tmp_path, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    m = pl.read_parquet(out / "metrics.parquet")
    assert m["step"].to_list() == [0, 1, 2, 3]
    for col in ("output", "revenue", "gini_post", "welfare_atkinson", "rate_b6", "bracket_share_b0"):
        assert m[col].null_count() == 0
    assert abs(sum(m[f"bracket_share_b{j}"][0] for j in range(7)) - 1.0) < 1e-6
    man = json.loads((out / "manifest.json").read_text())
    assert man["model"] == "economy" and "Welfare" in man["metric_groups"]
    assert 31 < man["build_info"]["bytes_per_agent"] < 33


@pytest.mark.llm
def test_embedded_llm_planner_answers_through_the_grammar():
    pytest.importorskip("llama_cpp")
    from llm_policy.backends.llamacpp import LlamaCppBackend
    from llm_policy.planner import make_planner_policy

    sc = load_scenario("tax_llm_planner_small", ["population.size=1000", "policy=null", "model.params.vote_every=0"])
    b = build(sc, steps=2)
    policy = make_planner_policy(sc.model.params, None, backend=LlamaCppBackend(n_ctx=2048, n_threads=1))
    sim = Simulation(b.model, b.state, b.params, b.schedule, chunk_size=1)
    try:
        drive(sim, 2, policies=[policy])
    finally:
        policy.close()
    assert policy.calls == 2
    for row in policy.log:  # the grammar only lets valid schedules through
        assert row["error"] is None, row["error"]
        assert len(row["rates"]) == 7 and all(0 <= r <= 0.9 for r in row["rates"])
    np.testing.assert_allclose(np.asarray(sim.state.rates), policy.log[-1]["rates"], atol=1e-6)


def test_a_vote_year_elects_the_schedule_a_majority_prefers():
    """Votes fall on steps k * vote_every (k >= 1), and the winner's rates are in force from that year on.

    Without transfers, a schedule of zero rates leaves every earner strictly better off, so its vote
    share is the share of workers with positive income, a clear majority. Putting the incumbent's own
    rates to the vote gives nobody a strict gain: share 0, nothing changes.
    """
    zero = "model.params.challenger.rates=[0, 0, 0, 0, 0, 0, 0]"
    base = ["population.size=4000", "model.params.vote_every=2", "model.params.transfer_share=0"]
    m, b = _run("tax_us_fixed_small", 5, base + [zero])
    us = [m[f"rate_b{j}"][0] for j in range(7)]
    assert np.all(np.isnan(m["vote_share"][:2])) and list(m["challenger_elected"][:2]) == [0, 0]
    assert m["participation_rate"][1] > 0.5
    # the share equals the workers who earn anything under the zero schedule (they keep every dollar)
    assert m["vote_share"][2] == pytest.approx(m["participation_rate"][2], abs=1e-6)
    assert list(m["challenger_elected"][2:]) == [1, 1, 1]
    assert all(m[f"rate_b{j}"][t] == 0.0 for j in range(7) for t in (2, 3, 4))
    assert all(m[f"rate_b{j}"][1] == pytest.approx(us[j]) for j in range(7)) and max(us) > 0.3
    assert m["revenue"][2] == 0.0 < m["revenue"][1]

    same = f"model.params.challenger.rates={list(b.params['base_rates'].tolist())}"
    m2, _ = _run("tax_us_fixed_small", 5, base + [same])
    assert m2["vote_share"][2] == 0.0 and m2["vote_share"][4] == 0.0
    assert list(m2["challenger_elected"]) == [0] * 5
