"""Observed data, the observation model, and simcore calibrate: equivalence, gradients, recovery, bad input."""
import datetime as dt
import json
import math
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import polars as pl
import pytest

from analysis import observed as obs
from analysis import validation
from scenarios import load_scenario
from simcore import calibrate as C
from simcore.cli import main
from simcore.models import epidemic as ep

BOROUGHS = ("Bronx", "Brooklyn", "Manhattan", "Queens", "Staten Island")


# -- data loader ------------------------------------------------------------------------------
def test_daily_series_columns_dates_and_published_totals():
    daily = obs.load_daily("nyc")
    assert daily.columns == ["date", "borough", "cases", "hospitalizations", "deaths"]
    assert set(daily["borough"]) == set(BOROUGHS) | {"citywide"}
    assert daily["date"].min() == dt.date(2020, 2, 29)
    wave = daily.filter(pl.col("date").is_between(dt.date(2020, 3, 1), dt.date(2020, 6, 28)))
    city = wave.filter(pl.col("borough") == "citywide")
    # the README's facts: 212,849 confirmed cases, 51,791 hospitalizations, 23,313 deaths
    assert (city["cases"].sum(), city["hospitalizations"].sum(), city["deaths"].sum()) == (212849, 51791, 23313)
    # boroughs add up to the city (to within cases with unknown borough)
    boro = wave.filter(pl.col("borough") != "citywide")["deaths"].sum()
    assert 0.97 * 23313 <= boro <= 23313


def test_weekly_sums_full_weeks_from_the_window_start():
    daily = obs.load_daily("nyc")
    wk = obs.weekly(daily, dt.date(2020, 3, 1), dt.date(2020, 6, 28))
    assert wk["week"].max() == 16  # 120 days = 17 full weeks + 1 dropped day
    city = wk.filter(pl.col("borough") == "citywide").sort("week")
    first = daily.filter((pl.col("borough") == "citywide") & pl.col("date").is_between(dt.date(2020, 3, 1),
                                                                                        dt.date(2020, 3, 7)))
    assert city["deaths"][0] == first["deaths"].sum()
    assert city["week_start"][3] == dt.date(2020, 3, 22)
    assert int(city["deaths"].arg_max()) == 5  # the week of Apr 5-11 holds the 2020-04-07 peak


def test_unemployment_is_unemployed_over_labor_force():
    laus = obs.monthly_unemployment("nyc", dt.date(2020, 3, 1), dt.date(2020, 6, 28))
    assert laus.height == 4 * 5
    bk = laus.filter((pl.col("borough") == "Brooklyn") & (pl.col("month") == 5))
    assert bk["rate"][0] == pytest.approx(0.217, abs=0.001)
    assert np.allclose(laus["rate"], laus["unemployed"] / laus["labor_force"])


@pytest.mark.parametrize("window,field,reason", [
    ("2020-03-01", "--window", "expected START:END"),
    ("2020-13-01:2020-04-01", "--window", "dates must be YYYY-MM-DD"),
    ("2020-03-01:2020-03-05", "--window", "at least 13 days"),
    ("2019-01-01:2019-03-01", "--window", "outside the observed dates 2020-02-29"),
])
def test_bad_windows(window, field, reason):
    with pytest.raises(obs.ObservedError) as e:
        start, end = obs.parse_window(window)
        obs.check_range(obs.load_daily("nyc"), start, end)
    assert e.value.field == field and reason in e.value.reason


def test_a_directory_missing_columns_or_files_is_refused(tmp_path):
    src = obs.source_dir("nyc")
    shutil.copy(src / obs.LAUS_FILE, tmp_path / obs.LAUS_FILE)
    with pytest.raises(obs.ObservedError, match="missing file"):
        obs.load_daily(tmp_path)
    text = (src / obs.DAILY_FILE).read_text().replace("BK_DEATH_COUNT,", "BK_DEATHS,", 1)
    (tmp_path / obs.DAILY_FILE).write_text(text)
    with pytest.raises(obs.ObservedError, match=r"missing columns \['BK_DEATH_COUNT'\]"):
        obs.load_daily(tmp_path)


# -- observation model -----------------------------------------------------------------------------
def test_delay_kernel_is_a_discretised_lognormal():
    k = np.asarray(ep.delay_kernel(jnp.float32(10.0), jnp.float32(4.0)))
    assert k.shape == (ep.DELAY_DAYS,) and k.sum() == pytest.approx(1.0, abs=1e-5) and (k >= 0).all()
    s = np.arange(ep.DELAY_DAYS)
    # mass on [s, s+1) sits at s: the discrete mean is the continuous one minus ~1/2 day
    assert (s * k).sum() == pytest.approx(9.5, abs=0.05)
    assert np.sqrt(((s - (s * k).sum()) ** 2 * k).sum()) == pytest.approx(4.0, abs=0.1)


def test_report_convolves_one_day_of_onsets_with_each_delay():
    """An impulse of onsets on day 0 comes back as ifr x kernel (deaths), ihr x kernel (admissions), det x kernel."""
    sc = load_scenario("covid_small", ["population.size=2000",
                                       "model.params.observation.detection_floor=0.2"])
    from simcore.models import build
    built = build(sc)
    cfg = ep.config(built.population, sc.model.params)
    p = dict(built.params)
    p.update({k: jnp.float32(v[0]) for k, v in built.schedule.items()})
    st = built.state
    onsets = np.zeros(cfg.n_groups, np.float32)
    onsets[3] = 100.0  # Bronx, age band 3
    series = []
    for t in range(40):
        st = ep._replace(st, onsets=jnp.asarray(onsets if t == 0 else np.zeros_like(onsets)))
        st = ep.report(cfg, st, {**p, "step": jnp.int32(t)}, None)
        series.append(np.asarray(st.observed[0]))
    series = np.stack(series)
    prm = sc.model.params
    delays = prm.observation
    k_death = np.asarray(ep.delay_kernel(jnp.float32(delays.death_delay.mean), jnp.float32(delays.death_delay.sd)))
    k_hosp = np.asarray(ep.delay_kernel(jnp.float32(delays.hospital_delay.mean),
                                        jnp.float32(delays.hospital_delay.sd)))
    k_rep = np.asarray(ep.delay_kernel(jnp.float32(delays.report_delay.mean), jnp.float32(delays.report_delay.sd)))
    det0 = prm.detection_rate * (0.2 + 0.8 / (1 + np.exp(30.0 / 7.0)))
    np.testing.assert_allclose(series[:, 2], 100 * prm.ifr[3] * k_death[:40], rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(series[:, 1], 100 * delays.ihr[3] * k_hosp[:40], rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(series[:, 0], 100 * det0 * k_rep[:40], rtol=1e-4, atol=1e-6)


# -- the calibration problem -------------------------------------------------------------------------
def _target(weekly, start="2020-03-01", days=42, fit_weeks=None, un_weight=0.0):
    months = [(2020, 3), (2020, 4)]
    w = {**C.DEFAULT_WEIGHTS, "unemployment": un_weight}
    start = dt.date.fromisoformat(start)
    end = start + dt.timedelta(days=days - 1)
    fw = weekly.shape[0] if fit_weeks is None else fit_weeks
    return C.Target(start, start + dt.timedelta(days=7 * fw - 1), end, weekly, fw,
                    np.full((2, 5), 0.04), months, BOROUGHS, w)


@pytest.fixture(scope="module")
def small():
    sc = load_scenario("covid_small", ["population.size=6000", "model.params.initial_infected=0.004"])
    fits = C.resolve_fit(sc, "beta.community,ifr.5")
    tg = _target(np.ones((6, 5, 3)))
    return sc, fits, tg


def test_forward_equals_the_engine_run_and_relaxed_equals_hard(small):
    from simcore.engine import Simulation
    from simcore.models import build

    sc, fits, tg = small
    hard = C.Problem(sc, tg, fits, relaxed=False)
    z = np.array([f.to_free(f.start) for f in fits], np.float32)
    d, lab = hard.rollout(z, 0)
    built = build(sc.model_copy(update={"run": sc.run.model_copy(update={"steps": 42})}))
    sim = Simulation(built.model, built.state, built.params, built.schedule, seed=0, chunk_size=42)
    m = sim.advance(42).metrics
    # same draws, same integer trajectory: expected observables agree to float rounding (fusion order differs),
    # so any diverging agent would show as a whole count
    for j, name in enumerate(ep.OBSERVED):
        np.testing.assert_allclose(np.asarray(d)[:, 0, j], m[f"{name}__borough_bronx"], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(lab)[:, 1, 0], m["unemployed__borough_brooklyn"])
    rel = C.Problem(sc, tg, fits, relaxed=True)
    d2, _ = rel.rollout(z, 0)
    np.testing.assert_allclose(np.asarray(d2), np.asarray(d), rtol=1e-5, atol=1e-6)


def _hashed_answers(prompt, options):
    """Scripted answers that differ per archetype and round: P(first option) from a hash of the query block."""
    import hashlib
    import math

    q = prompt.rsplit("\n\n", 1)[-1]
    p = 0.05 + 0.9 * int(hashlib.sha256(q.encode()).hexdigest()[:6], 16) / 0xFFFFFF
    return {options[0]: math.log(p), options[1]: math.log1p(-p)}


def _individual_fields():
    from benchmarks.architectures import per_agent_settings

    return per_agent_settings()


# distinct prompts of a 42-day run: the fields a prompt shows x the pause order (off, then on from day 21);
# borough is grouped on but not shown. Archetypes per round: every level of every grouped feature.
SHIPPED = {"archetypes": (6 * 5 * 3, 8 * 3), "distinct": 6 * 3 * 2 + 8 * 3 * 2}
INDIVIDUAL = {"archetypes": (6 * 5 * 3 * 8 * 4, 8 * 3 * 6 * 4), "distinct": 6 * 3 * 8 * 4 * 2 + 8 * 3 * 6 * 4 * 2}


@pytest.mark.parametrize("architecture,pipelined,prompts", [
    ("archetypes", False, "shipped"), ("per_agent", False, "shipped"), ("archetypes", True, "shipped"),
    ("per_agent", False, "individual")])
def test_llm_answer_tables_reproduce_the_host_policy_run(architecture, pipelined, prompts, tmp_path):
    """The calibration's LLM rounds (one answer per archetype and round, looked up on the device) give the run
    a host policy gives, with one call per archetype or one per agent, asked and applied at once or one
    cadence later (pipelined): the same job losses to the agent, the same observables to float rounding.
    "individual": the architecture benchmark's per-agent prompts, which show each agent's occupation and
    household size (and, for the job, age band) that the archetypes leave out."""
    from llm_policy.backends import ScriptedBackend
    from simcore.models import build
    from simcore.runs import make_simulation
    from simcore.session import drive, make_archetype_policy

    steps = 42  # six weekly rounds; the pause order (a prompt field) starts at day 21
    extra = _individual_fields() if prompts == "individual" else []
    sc = load_scenario("covid_nyc", ["population.size=6000", f"run.steps={steps}", "output.sample_agents=0",
                                     "model.params.initial_infected=0.004", f"policy.architecture={architecture}",
                                     f"policy.pipelined={str(pipelined).lower()}", *extra])
    expect = INDIVIDUAL if prompts == "individual" else SHIPPED
    built = build(sc)
    sim = make_simulation(sc, built, sc.run.seed)
    policy = make_archetype_policy(sc, built, backend=ScriptedBackend(_hashed_answers))
    parts = []
    drive(sim, steps, policies=[policy], on_chunk=lambda _t, c: parts.append(c.metrics))
    policy.finish(sim)
    policy.close()
    m = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    fits = C.resolve_fit(sc, "beta.community,llm_map.work.bias")
    prob = C.Problem(sc, _target(np.ones((6, 5, 3))), fits, relaxed=False)
    backend = ScriptedBackend(_hashed_answers)
    answers, pol = C.llm_answers(sc, prob, tmp_path, backend=backend)
    assert [a.target for a in answers] == ["isolate_llm", "work_llm"]
    assert [a.values.shape for a in answers] == [(6, n) for n in expect["archetypes"]]  # rounds x archetypes
    assert np.isfinite(answers[0].values).all() and answers[0].values.std() > 0.1
    # each distinct prompt asked once
    scored = [r.prompt for b in backend.calls for r in b]
    assert len(scored) == len(set(scored)) == expect["distinct"]
    assert pol.totals.calls == 6 * sum(expect["archetypes"])  # every archetype of every round, as a run counts
    assert (tmp_path / "llm_calls.parquet").exists()
    z = np.array([f.to_free(f.start) for f in fits], np.float32)
    prob.answers = answers
    d, lab = prob.rollout(z, sc.run.seed)
    np.testing.assert_array_equal(np.asarray(lab)[:, 1, 0], m["unemployed__borough_brooklyn"])
    np.testing.assert_array_equal(np.asarray(lab)[:, 0, 0], m["unemployed__borough_bronx"])
    for j, name in enumerate(ep.OBSERVED):
        np.testing.assert_allclose(np.asarray(d)[:, 0, j], m[f"{name}__borough_bronx"], rtol=1e-5, atol=1e-6)
    # and the answers matter: without them the same problem follows the heuristic
    heuristic = C.Problem(sc, _target(np.ones((6, 5, 3))), fits, relaxed=False)
    _, lab0 = heuristic.rollout(z, sc.run.seed)
    assert not np.array_equal(np.asarray(lab0)[:, :, 0], np.asarray(lab)[:, :, 0])


@pytest.mark.parametrize("index,prompt,reason", [
    (0, "Cases {weekly_cases} per 100k, order {pause_order}. Isolate? ({options})",
     "{weekly_cases} is a statistic of the archetype's members"),
    (1, "Lockdown level {lockdown}. Next week? ({options})", "{lockdown} is a scheduled parameter the calibration fits"),
])
def test_prompts_an_answer_table_cannot_hold_are_refused(index, prompt, reason, tmp_path):
    """A prompt whose answer depends on more than the archetype's levels and the round cannot be asked ahead."""
    from llm_policy.backends import ScriptedBackend
    from scenarios import ScenarioError

    sc = load_scenario("covid_nyc", ["population.size=3000", "run.steps=14", "output.sample_agents=0",
                                     f"policy.decisions.{index}.prompt='{prompt}'"])
    fits = C.resolve_fit(sc, "beta.community,interventions.pause_order.value")
    prob = C.Problem(sc, _target(np.ones((2, 5, 3)), days=14), fits, relaxed=False)
    backend = ScriptedBackend(_hashed_answers)
    with pytest.raises(ScenarioError) as err:
        C.llm_answers(sc, prob, tmp_path, backend=backend)
    assert err.value.field == f"policy.decisions[{index}].prompt" and err.value.reason.startswith(reason)
    asked = [r.prompt for b in backend.calls for r in b]
    assert not any(prompt.split(" {")[0] in q for q in asked)  # none of its questions was asked


def test_gradients_agree_with_finite_differences(small):
    """Observation parameters: exact (the loss is smooth in them). Transmission: the relaxed estimator (derivatives
    along realised events only) against a central difference of the loss averaged over the same 4 seeds: same
    sign, within a factor of 2 (measured ~0.65x on expected admissions: the estimator misses the contribution
    of infections that did not happen; see docs in simcore/calibrate.py)."""
    sc, fits, _ = small
    hard = C.Problem(sc, _target(np.ones((6, 5, 3))), fits, relaxed=False)
    z = np.array([f.to_free(f.start) for f in fits], np.float32)
    d, _ = hard.rollout(z, 0)
    # target: the run's own weekly series, death-rate scaled down, so the loss is well away from its minimum
    tg = _target(np.asarray(hard.weekly_sim(np.asarray(d))) * np.array([1.0, 1.0, 0.5]))
    rel = C.Problem(sc, tg, fits, relaxed=True)
    seeds = np.arange(4)
    _, g = rel.value_and_grad(z, seeds)
    g = np.asarray(g)

    loss = jax.jit(rel.loss)  # one compilation for the four evaluations (eagerly, each traced its scans again)

    def fd(i, h):
        lo, hi = z.copy(), z.copy()
        lo[i] -= h
        hi[i] += h
        return float(loss(jnp.asarray(hi), jnp.asarray(seeds)) - loss(jnp.asarray(lo), jnp.asarray(seeds))) / (2 * h)

    assert g[1] == pytest.approx(fd(1, 1e-2), rel=2e-2)  # ifr.5 (logit): observation only
    fd_beta = fd(0, 0.15)
    assert np.sign(g[0]) == np.sign(fd_beta) and 0.5 <= g[0] / fd_beta <= 2.0, (g[0], fd_beta)


def test_parameter_recovery_gradient_and_cmaes(small):
    """Synthetic observed data from known parameters (same population and seed); both paths recover them."""
    sc, fits, _ = small
    truth = np.array([0.09, 0.15])
    hard = C.Problem(sc, _target(np.ones((6, 5, 3))), fits, relaxed=False)
    z_true = np.array([f.to_free(v) for f, v in zip(fits, truth)], np.float32)
    d, _ = hard.rollout(z_true, 0)
    tg = _target(np.asarray(hard.weekly_sim(np.asarray(d))))
    z0 = np.array([f.to_free(v) for f, v in zip(fits, (0.05, 0.06))], np.float32)
    rel = C.Problem(sc, tg, fits, relaxed=True)
    g = C.fit_gradient(rel, iterations=40, lr=0.1, seeds=(0,), z0=z0)
    got = np.array(rel.natural(np.asarray(g.z, np.float64)))
    np.testing.assert_allclose(got, truth, rtol=0.15)
    assert g.history[-1]["loss"] < 0.1 * g.history[0]["loss"]
    search = C.Problem(sc, tg, fits, relaxed=False)
    c = C.fit_cmaes(search, generations=12, popsize=8, sigma=0.5, z0=z0, seed=1)
    got = np.array(search.natural(np.asarray(c.z, np.float64)))
    np.testing.assert_allclose(got, truth, rtol=0.15)
    post = np.array([search.natural(p) for p in c.posterior])
    assert post.shape[1] == 2 and (post.min(0) <= truth * 1.15).all() and (post.max(0) >= truth * 0.85).all()


def test_fit_paths_transforms_and_overlay_round_trip(tmp_path):
    sc = load_scenario("covid_small")
    fits = C.resolve_fit(sc, "model.params.beta.household,ifr.5,observation.death_delay.mean,isolation.base")
    assert [f.transform for f in fits] == ["log", "logit", "log", "identity"]
    assert fits[2].upper == 60.0
    for f in fits:
        assert f.to_natural(f.to_free(f.start)) == pytest.approx(f.start, rel=1e-6)
    post = np.array([[f.start for f in fits]] * 3)
    C.write_overlay(tmp_path / "o.yaml", sc, fits, [0.2, 0.1, 18.0, -5.0], post, "w", "nyc", "cmaes")
    items = C.read_overlay(tmp_path / "o.yaml")
    got = load_scenario("covid_small", items).model.params
    assert (got.beta.household, got.ifr[5], got.observation.death_delay.mean, got.isolation.base) == \
        (0.2, 0.1, 18.0, -5.0)
    assert got.ifr[:5] == sc.model.params.ifr[:5]


def test_validation_metrics_by_hand():
    m = validation.series_metrics([0, 2, 4, 2], [1, 2, 3, 5], lo=[0, 1, 1, 3], hi=[1, 3, 3, 6])
    assert m["mae"] == pytest.approx(5 / 4)
    assert m["rmse"] == pytest.approx(np.sqrt(11 / 4))
    assert m["nrmse"] == pytest.approx(np.sqrt(11 / 4) / 4)
    assert m["peak_error"] == 1 and m["coverage"] == 0.5
    # widths 1, 2, 2, 3; week 3 is 1 above its band and week 4 is 1 below: each fined 2 / 0.2 = 10
    assert m["interval_score"] == pytest.approx((1 + 2 + 12 + 13) / 4)
    assert m["interval_score_norm"] == pytest.approx(7.0 / 4)


def test_interval_score_is_lowest_at_the_true_quantiles():
    """A proper score: for standard normal values the 10-90 % band (+-1.2816) scores below a narrower or a
    wider band, although the wider one covers more."""
    y = np.random.default_rng(0).standard_normal(200_000)
    score = {h: validation.interval_score(y, -h, h).mean() for h in (1.0, 1.2816, 1.6)}
    assert score[1.2816] < score[1.0] and score[1.2816] < score[1.6]
    # the closed form for a normal: width 2z + (2 / 0.2) x two tails of E[(y - z)+] = phi(z) - z (1 - Phi(z))
    from scipy.stats import norm
    z = 1.2816
    assert score[z] == pytest.approx(2 * z + 10 * 2 * (norm.pdf(z) - z * norm.sf(z)), rel=0.01)


def _ar1_draws(rho: float, runs=16, per_run=32, weeks=17, boroughs=5, seed=0) -> np.ndarray:
    """Log-normal weekly counts whose weeks follow AR(1) with correlation ``rho``: every draw as likely as any
    other to be the truth, so a band from the others is calibrated by construction."""
    e = np.random.default_rng(seed).standard_normal((runs, per_run, weeks, boroughs, 3))
    x = e.copy()
    for w in range(1, weeks):
        x[:, :, w] = rho * x[:, :, w - 1] + np.sqrt(1 - rho ** 2) * e[:, :, w]
    return np.exp(6 + 0.3 * x)


def test_coverage_if_calibrated_matches_binomial_and_fully_shared_errors():
    """Independent weeks: the eleven held-out weeks' coverage is Binomial(11, 0.8) / 11 (median 9/11, all
    eleven 0.8^11 = 8.6 % of the time). Errors shared by every week: a draw is inside the band for all of
    them or none, so 80 % of forecasts cover every week and none lands in [0.6, 0.95]."""
    from scipy.stats import binom

    ind = validation.coverage_if_calibrated(_ar1_draws(0.0), fit_weeks=6)["deaths_citywide"]
    assert ind["forecasts"] == 16 * 32 and ind["median"] == pytest.approx(9 / 11)
    assert ind["at_one"] == pytest.approx(0.8 ** 11, abs=0.04)
    assert ind["in_target"] == pytest.approx(binom.cdf(10, 11, 0.8) - binom.cdf(6, 11, 0.8), abs=0.06)
    shared = validation.coverage_if_calibrated(_ar1_draws(1.0), fit_weeks=6)
    assert shared["deaths_citywide"]["at_one"] == pytest.approx(0.8, abs=0.05)
    assert shared["deaths_citywide"]["in_target"] == 0.0
    # fifteen borough-series curves with their own errors: the pooled coverage stays near 0.8
    assert shared["pooled"]["median"] == pytest.approx(0.8, abs=0.05) and shared["pooled"]["in_target"] > 0.9
    # p_as_far: a band covering every week, against shared errors, is what 80 % of right bands do
    seen = validation.coverage_if_calibrated(_ar1_draws(1.0), fit_weeks=6,
                                             observed={"deaths_citywide": 1.0, "pooled": 0.5})
    assert seen["deaths_citywide"]["p_as_far"] == pytest.approx(1.0)  # every coverage is 0 or 1: as far
    assert seen["pooled"]["observed"] == 0.5 and seen["pooled"]["p_as_far"] < 0.05
    with pytest.raises(ValueError, match="held-out weeks"):
        validation.coverage_if_calibrated(_ar1_draws(0.0, weeks=6), fit_weeks=6)


def test_held_out_scores_pool_the_boroughs_coverage():
    """Two boroughs' deaths (held out: 2 and 4 weeks), citywide deaths and a month of unemployment: the pooled
    coverage counts weeks, not curves; the fitted weeks do not enter."""
    rows = []
    for borough, inside in (("A", [True, False]), ("B", [True, True, True, False]), ("citywide", [False])):
        for i, ok in enumerate([False] + inside):  # one fitted week outside its band, then the held-out ones
            rows.append({"series": "deaths", "borough": borough, "period": f"w{i}", "index": i, "held_out": i > 0,
                         "observed": 10.0, "simulated": 12.0, "lo": 9.0 if ok else 11.0, "hi": 13.0})
    rows.append({"series": "unemployment", "borough": "A", "period": "m", "index": 0, "held_out": True,
                 "observed": 0.10, "simulated": 0.13, "lo": 0.1, "hi": 0.2})
    h = validation.held_out(validation.validation_table(pl.DataFrame(rows)))
    assert h["coverage80_pooled"] == pytest.approx(4 / 6)
    # citywide: observed 10 under a band 11..13: width 2 + fined 10 x 1, over max observed 10
    assert h["deaths"] == {"nrmse": pytest.approx(0.2), "mae": pytest.approx(2.0), "coverage80": 0.0,
                           "interval_score_norm": pytest.approx(1.2)}
    assert "cases" not in h and h["unemployment_mae_pp"] == pytest.approx(3.0)


# -- the command line -----------------------------------------------------------------------------------
BAD = [
    (["--observed", "nowhere"], "--observed: unknown observed data 'nowhere'"),
    (["--window", "2020-03-01"], "--window: expected START:END"),
    (["--window", "2018-01-01:2018-03-01"], "--window: 2018-01-01:2018-03-01 is outside the observed dates"),
    (["--fit", "beta.nope"], "--fit: beta.nope: unknown parameter 'nope'"),
    (["--fit", "isolation.quarantine_days"], "--fit: isolation.quarantine_days: an integer parameter"),
    (["--fit", "ifr"], "--fit: ifr: not a number (list)"),
    (["--fit", "ifr.9"], "--fit: ifr.9: list index '9' out of range"),
    (["--fit", "interventions.nope.value"], "--fit: interventions.nope.value: unknown intervention 'nope' "
                                             "(known: schools_closed, pause_community, pause_workplaces, pause_order)"),
    (["--fit", "interventions.7.value"], "--fit: interventions.7.value: intervention index 7 out of range"),
    (["--fit", "interventions.pause_order.start"], "--fit: interventions.pause_order.start: an integer step"),
    (["--fit", "interventions.pause_order.param"], "--fit: interventions.pause_order.param: only an intervention's value"),
    (["--fit", "interventions.pause_order"], "--fit: interventions.pause_order: expected interventions.<name or index>"),
    (["--size", "10"], "--size: must be >= 1000"),
    (["--method", "magic"], "--method: must be gradient, cmaes or both"),
    (["--posterior-min-ess", "-1"], "--posterior-min-ess: must be >= 0, got -1.0"),
    (["--posterior-min-ess", "nan"], "--posterior-min-ess: must be >= 0, got nan"),
    (["--posterior-runs", "64", "--posterior-max-runs", "32"], "--posterior-max-runs: must be >= --posterior-runs "
                                                               "(64), got 32"),
]


@pytest.mark.parametrize("change,message", BAD)
def test_bad_input_exits_2_naming_the_field(change, message, capsys, tmp_path):
    args = {"--observed": "nyc", "--window": "2020-03-01:2020-04-12", "--fit": "beta.community"}
    extra = []
    if change[0] in args:
        args[change[0]] = change[1]
    else:
        extra = change
    argv = ["calibrate", "covid_small", "--out", str(tmp_path / "c"), *sum(map(list, args.items()), []), *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "c").exists()


@pytest.mark.slow  # ~30 s idle: compiles both paths and the band ensemble
def test_calibrate_cli_writes_the_directory(tmp_path, capsys):
    out = tmp_path / "cal"
    argv = ["calibrate", "covid_small", "--observed", "nyc", "--window", "2020-03-01:2020-03-28",
            "--forecast-to", "2020-04-11", "--fit", "beta.community,ifr.5", "--size", "4000",
            "--iterations", "2", "--generations", "2", "--popsize", "4", "--band-runs", "4", "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[-1] == f"calibration directory: {out}" and printed[-4].startswith("fit (")
    assert printed[-2].startswith("held-out citywide deaths: NRMSE ") and "a right band: " in printed[-2]
    cal = pl.read_parquet(out / "calibration.parquet")
    assert set(cal["method"]) == {"gradient", "cmaes"} and {"loss", "beta.community", "ifr.5"} <= set(cal.columns)
    fc = pl.read_parquet(out / "forecast.parquet")
    weekly = fc.filter(pl.col("series") != "unemployment")
    assert weekly.filter(pl.col("held_out"))["index"].unique().sort().to_list() == [4, 5]
    assert (fc["lo"] <= fc["simulated"]).all() and (fc["simulated"] <= fc["hi"]).all()
    val = pl.read_parquet(out / "validation.parquet")
    assert {"mae", "rmse", "nrmse", "peak_error", "coverage", "interval_score"} <= set(val.columns)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["validation"]["coverage_if_calibrated"]["deaths_citywide"]["forecasts"] == 4 * C.BAND_DRAWS
    post = summary["posterior"]
    assert post["pareto_k_threshold"] == pytest.approx(min(1 - 1 / np.log10(post["proposals"]), 0.7))
    assert post["pareto_k"] is not None  # 32 points: a tail of 7
    assert post["reliable"] == (post["pareto_k"] <= post["pareto_k_threshold"])
    assert (out / "fit.png").stat().st_size > 10_000
    items = C.read_overlay(out / "overlay.yaml")
    keys = [i.split("=")[0] for i in items]
    assert "model.params.beta.community" in keys and "model.params.ifr" in keys


@pytest.mark.slow  # ~30 s idle: compiles the gradient path and the band ensemble
def test_gradient_only_calibration_says_it_sampled_no_posterior(tmp_path, capsys):
    """Without a CMA-ES search there is no weighted sample: the summary says so, judges nothing and warns of
    nothing (its bands re-run the best point)."""
    out = C.calibrate(load_scenario("covid_small"), observed="nyc", window="2020-03-01:2020-03-28",
                      forecast_to="2020-04-11", fit="beta.community", out=tmp_path / "cal", method="gradient",
                      size=4000, iterations=2, band_runs=4, progress=False)
    post = json.loads((out / "summary.json").read_text())["posterior"]
    assert post["proposals"] == 0 and post["reliable"] is None and post["pareto_k"] is None
    assert post["verdict"] == "no posterior sampled: the bands re-run the best point"
    assert capsys.readouterr().err == ""


def test_calibrated_scenario_reproduces_its_reported_error(tmp_path):
    """README, "Calibrated to New York City": covid_nyc_wave1 at 50,000 agents, seed 0, weekly citywide deaths
    NRMSE 0.093 against DOHMH (death-peak week exact), boroughs at most 0.232, and every borough-month of LAUS
    unemployment, Mar-Jun 2020, within 3 percentage points (mean 0.97); the run is deterministic, so the
    figures must come back."""
    from analysis import read_manifest, scan_metrics
    from simcore.runs import run_scenario

    sc = load_scenario("covid_nyc_wave1", ["population.size=50000", "output.sample_agents=0"])
    assert sc.model.params.contact_scales == "people"  # the fit's model (a rate-scaled pause is another model)
    run = run_scenario(sc, tmp_path / "run")
    frame = validation.run_vs_observed(scan_metrics(run).collect(), read_manifest(run)["n_agents"])
    head = validation.headline(validation.validation_table(frame))
    assert head["deaths_citywide_nrmse"] == pytest.approx(0.093, abs=0.01)
    assert head["deaths_peak_error_weeks"] == 0
    assert head["deaths_borough_nrmse_max"] == pytest.approx(0.232, abs=0.015)
    errors = validation.unemployment_errors(frame)
    assert errors.height == 20 and errors["error_pp"].abs().max() <= 3.0
    assert head["unemployment_mae_pp"] == pytest.approx(0.97, abs=0.1)


# -- intervention values ----------------------------------------------------------------------------------
def test_intervention_values_resolve_by_name_or_index_with_their_transforms():
    sc = load_scenario("covid_small")
    fits = C.resolve_fit(sc, "interventions.pause_community.value,interventions.0.value,beta.community")
    assert [f.path for f in fits] == ["interventions.pause_community.value", "interventions.schools_closed.value",
                                      "beta.community"]
    assert [f.intervention for f in fits] == [1, 0, None]
    assert [f.transform for f in fits] == ["log", "logit", "log"]  # multiply 0.3; set 0.0 (a scale in [0, 1])
    assert fits[0].start == pytest.approx(0.3) and fits[1].start == pytest.approx(1e-4)
    with pytest.raises(C.ScenarioError, match="listed twice"):
        C.resolve_fit(sc, "interventions.1.value,interventions.pause_community.value")


def test_schedule_rows_on_device_equal_the_host_schedule():
    """The device schedule (every intervention in order, values as given) is the engine's, bit for bit; a
    value given in place of an intervention's own changes exactly that intervention's rows."""
    from simcore.engine import Intervention, build_schedule

    sc = load_scenario("covid_small", ["interventions.2.param=community_scale",
                                       "interventions.2.mode=add", "interventions.2.value=0.05"])
    base = {"community_scale": 1.0, "school_scale": 1.0, "lockdown": 0.0, "workplace_scale": 1.0}
    ivs = [Intervention(param=i.param, start=i.start, end=i.end, value=i.value, mode=i.mode) for i in sc.interventions]
    host = build_schedule(base, 120, ivs)
    rows0 = {k: jnp.asarray(v) for k, v in build_schedule(base, 120, []).items()}
    dev = C.schedule_rows(rows0, sc.interventions, {}, 120)
    for k in host:
        np.testing.assert_array_equal(np.asarray(dev[k]), host[k])
    dev = C.schedule_rows(rows0, sc.interventions, {1: jnp.float32(0.5)}, 120)
    cs = np.asarray(dev["community_scale"])
    np.testing.assert_allclose(cs[21:99], 0.5 + 0.05, rtol=1e-6)  # the fitted multiply, then the add after it
    np.testing.assert_array_equal(cs[:21], host["community_scale"][:21])
    np.testing.assert_array_equal(np.asarray(dev["school_scale"]), host["school_scale"])


@pytest.fixture(scope="module")
def pause():
    """56 days (the pause starts on day 21): synthetic data from pause_community x 0.3."""
    sc = load_scenario("covid_small", ["population.size=6000", "model.params.initial_infected=0.004",
                                       "model.params.beta.community=0.12"])
    fits = C.resolve_fit(sc, "interventions.pause_community.value")
    hard = C.Problem(sc, _target(np.ones((8, 5, 3)), days=56), fits, relaxed=False)
    d, _ = hard.rollout(np.array([fits[0].to_free(0.3)], np.float32), 0)
    tg = _target(np.asarray(hard.weekly_sim(np.asarray(d))), days=56)
    return sc, fits, tg


def test_intervention_value_recovery_cmaes_and_gradient(pause):
    """Both paths recover the pause multiplier (0.3) from 0.9, same population and seed: CMA-ES within 15 %,
    the relaxed gradient (biased low for transmission, see above) within 30 %."""
    sc, fits, tg = pause
    z0 = np.array([fits[0].to_free(0.9)], np.float32)
    search = C.Problem(sc, tg, fits, relaxed=False)
    c = C.fit_cmaes(search, generations=8, popsize=6, sigma=0.5, z0=z0, seed=1)
    got = search.natural(np.asarray(c.z, np.float64))[0]
    assert got == pytest.approx(0.3, rel=0.15)
    assert c.history[0]["loss"] > 5 * min(r["loss"] for r in c.history)
    rel = C.Problem(sc, tg, fits, relaxed=True)
    g = C.fit_gradient(rel, iterations=25, lr=0.1, seeds=(0,), z0=z0)
    assert g.history[0]["grad_norm"] > 0  # community_scale carries a derivative along realised infections
    got = rel.natural(np.asarray(g.z, np.float64))[0]
    assert got == pytest.approx(0.3, rel=0.3)


def test_overlay_carries_fitted_interventions_and_run_reproduces_the_fit(pause, tmp_path):
    """The overlay writes the whole interventions list (in order) with the fitted value; simcore run's build of
    the overlaid scenario gives the same trajectory as the calibration's forward run at that value."""
    from simcore.engine import Simulation
    from simcore.models import build

    sc, _, tg = pause
    fits = C.resolve_fit(sc, "interventions.pause_community.value,beta.community")
    z = np.array([fits[0].to_free(0.25), fits[1].to_free(0.1)], np.float32)
    vals = [float(v) for v in C.Problem(sc, tg, fits, relaxed=False).natural(z)]
    post = np.array([vals] * 3)
    C.write_overlay(tmp_path / "o.yaml", sc, fits, vals, post, "w", "nyc", "cmaes")
    text = (tmp_path / "o.yaml").read_text()
    assert "interventions.pause_community.value 80%" in text
    over = load_scenario("covid_small", [*C.read_overlay(tmp_path / "o.yaml"), "population.size=6000",
                                         "model.params.initial_infected=0.004"])
    assert [iv.value for iv in over.interventions] == [0.0, pytest.approx(0.25, rel=1e-6), 0.4, 1.0]
    assert [iv.name for iv in over.interventions] == [iv.name for iv in sc.interventions]
    assert over.model.params.beta.community == pytest.approx(0.1, rel=1e-6)
    d, _ = C.Problem(sc, tg, fits, relaxed=False).rollout(z, 0)
    built = build(over.model_copy(update={"run": over.run.model_copy(update={"steps": 56})}))
    m = Simulation(built.model, built.state, built.params, built.schedule, seed=0, chunk_size=56).advance(56).metrics
    for j, name in enumerate(ep.OBSERVED):
        np.testing.assert_allclose(np.asarray(d)[:, 2, j], m[f"{name}__borough_manhattan"], rtol=1e-5, atol=1e-6)


# -- posterior and predictive bands --------------------------------------------------------------------------
def test_amis_recovers_the_gaussian_posterior_of_a_quadratic_loss_from_a_poor_first_proposal():
    """L(z) = L0 (1 + a |z - mu|^2) and prior N(m0, s0^2) -> posterior N((n a mu + m0 / s0^2) / P, 1 / P) with
    P = n a + 1 / s0^2. The first proposal is one posterior sd off-centre and half as wide: one round of
    importance sampling rests on a few heavy points; the adaptive rounds find the posterior."""
    l0, a, n_eff, mu, m0, s0 = 0.02, 3.0, 8.0, np.array([0.5, -1.0, 2.0]), np.zeros(3), 1.5
    prec = n_eff * a + 1 / s0 ** 2
    post_mean, post_var = (n_eff * a * mu + m0 / s0 ** 2) / prec, 1 / prec
    loss = lambda zs: l0 * (1 + a * ((zs - mu) ** 2).sum(1))  # noqa: E731
    target = lambda zs: C.log_target(loss(zs), zs, l0, n_eff, m0, s0)  # noqa: E731
    start, cov = post_mean + np.sqrt(post_var), np.eye(3) * post_var / 4
    one = C.amis(target, start, cov, rounds=1, per_round=2400, rng=np.random.default_rng(0))
    out = C.amis(target, start, cov, rounds=6, per_round=400, rng=np.random.default_rng(0))
    assert out["weights"].sum() == pytest.approx(1.0) and (out["weights"] >= 0).all()
    assert len(out["z"]) == 2400 and len(out["proposals"]) == 6
    assert one["ess"] < 100 < 500 < out["ess"]
    w, z = out["weights"], out["z"]
    mean = w @ z
    np.testing.assert_allclose(mean, post_mean, atol=0.05)
    np.testing.assert_allclose(w @ (z - mean) ** 2, post_var, rtol=0.25)
    idx = C.systematic_resample(w, 1000, np.random.default_rng(1))
    assert idx.min() >= 0 and idx.max() < len(z)
    np.testing.assert_allclose(z[idx].mean(0), post_mean, atol=0.06)
    assert C.weighted_quantile(np.arange(10.0), np.ones(10), 0.5) == 4.0
    assert C.weighted_quantile(np.arange(10.0), np.r_[np.zeros(9), 1.0], 0.1) == 9.0


def test_pareto_khat_reads_the_tail_of_the_weights():
    """Weights drawn from a Pareto law with tail index 1 / k give k back. Importance weights of N(0, 1) under
    a proposal N(0, 0.5²) have an infinite variance (asymptotic tail k = 1 / (1 - 0.5²) = 1.33, approached
    slowly: 0.34-0.87 over 20 streams of 2,000), under N(0, 2²) they are bounded (k < 0). One point holding
    every weight is infinite; equal weights are 0."""
    rng = np.random.default_rng(3)
    for k in (0.3, 0.9):
        got, threshold = C.pareto_khat(-k * np.log(rng.random(2000)))
        assert got == pytest.approx(k, abs=0.25) and threshold == pytest.approx(1 - 1 / np.log10(2000))
    for sd, low, high in ((0.5, 0.5, 1.5), (2.0, -3.0, 0.0)):
        z = rng.normal(0.0, sd, 2000)
        assert low < C.pareto_khat(-0.5 * z ** 2 + 0.5 * (z / sd) ** 2)[0] < high
    assert C.pareto_khat(np.array([0.0] + [-np.inf] * 95))[0] == np.inf
    assert C.pareto_khat(np.array([0.0] + [-1e4] * 95))[0] == np.inf
    assert C.pareto_khat(np.zeros(96)) == (0.0, pytest.approx(1 - 1 / np.log10(96)))


def test_posterior_verdict_follows_the_pareto_k_bands():
    """Vehtari et al. (2024): below the threshold, trusted; up to 0.7, 10^(1 / (1 - k)) points would do
    (k 0.6: 317); from 0.7 on, none would."""
    assert C.posterior_verdict(0.4, 0.55) == (True, "reliable")
    ok, text = C.posterior_verdict(0.6, 0.55)
    assert not ok and "about 317 would do" in text
    assert not C.posterior_verdict(0.75, 0.7)[0] and "missed" in C.posterior_verdict(1.22, 0.56)[1]
    assert C.posterior_verdict(None, 0.5)[0] and C.posterior_verdict(math.nan, 0.5)[0]


def test_summary_lines_say_whether_the_posterior_and_the_coverage_can_be_trusted():
    summary = {"best_method": "cmaes", "loss": {"gradient": 0.2, "cmaes": 0.0955},
               "posterior": {"n_eff": 7.4, "ess": 1.4, "proposals": 192, "pareto_k": None,
                             "pareto_k_threshold": 0.56, "reliable": False,
                             "verdict": C.posterior_verdict(math.inf, 0.56)[1]},
               "validation": {"forecast_deaths_citywide_nrmse": 0.16, "forecast_deaths_citywide_coverage80": 1.0,
                              "forecast_deaths_citywide_interval_score": 0.468, "forecast_coverage80_pooled": 0.87,
                              "coverage_if_calibrated": {"deaths_citywide": {"q10": 0.18, "q90": 1.0,
                                                                             "p_as_far": 0.8}}}}
    fit, post, held = C.summary_lines(summary)
    assert fit == "fit (cmaes): loss 0.0955"
    assert post == ("posterior: ESS 1.4 of 192 points, Pareto k inf (threshold 0.56): the proposals missed "
                    "where the posterior has mass: the bands are too narrow")
    assert held == ("held-out citywide deaths: NRMSE 0.160, 80 % coverage 1.00 (a right band: 0.18-1.00 in 80 % "
                    "of forecasts, p 0.80), interval score 0.468; pooled coverage 0.87")
    summary["posterior"] |= {"pareto_k": 0.31, "reliable": True, "verdict": "reliable"}
    assert C.summary_lines(summary)[1].endswith("Pareto k 0.31 (threshold 0.56): reliable")
    del summary["validation"]["forecast_deaths_citywide_nrmse"]  # no held-out weeks
    assert len(C.summary_lines(summary)) == 2


def test_amis_adds_rounds_until_the_ess_reaches_its_floor_and_stops_at_the_cap():
    """The same quadratic posterior from the same poor start, in rounds of 40: two rounds leave the ESS low;
    with a floor of 60 the sampler goes on round by round and stops at the first round that reaches it (the
    rounds before it did not); with a floor it cannot reach (more than its points) it stops at the cap."""
    l0, a, n_eff, mu, m0, s0 = 0.02, 3.0, 8.0, np.array([0.5, -1.0, 2.0]), np.zeros(3), 1.5
    prec = n_eff * a + 1 / s0 ** 2
    post_mean, post_var = (n_eff * a * mu + m0 / s0 ** 2) / prec, 1 / prec
    target = lambda zs: C.log_target(l0 * (1 + a * ((zs - mu) ** 2).sum(1)), zs, l0, n_eff, m0, s0)  # noqa: E731
    start, cov = post_mean + np.sqrt(post_var), np.eye(3) * post_var / 4

    def run(**kw):
        return C.amis(target, start, cov, rounds=2, per_round=40, rng=np.random.default_rng(3), **kw)

    base = run()
    assert base["rounds"] == 2 and len(base["z"]) == 80 and base["ess"] < 60
    more = run(min_ess=60, max_rounds=20)
    assert 2 < more["rounds"] < 20 and len(more["z"]) == 40 * more["rounds"] and more["ess"] >= 60
    assert run(min_ess=0, max_rounds=20)["rounds"] == 2  # no floor: the cap alone adds nothing
    # the same stream run one round fewer (the same draws, the same adaptation) had not reached the floor
    one_less = C.amis(target, start, cov, rounds=more["rounds"] - 1, per_round=40, rng=np.random.default_rng(3))
    assert one_less["ess"] < 60
    capped = run(min_ess=1e6, max_rounds=5)
    assert capped["rounds"] == 5 and len(capped["z"]) == 200 and capped["ess"] < 200


@pytest.mark.parametrize("evaluations", [120, 800])  # the diagonal quadratic, then the full one
def test_laplace_proposal_gives_a_blind_parameter_the_prior_width(evaluations):
    """A search's points (sd 0.15 around the best) on a loss that sees only z0: the proposal's covariance is
    the posterior's, 1 / (n a + 1 / s0^2) for z0 and the prior's s0^2 for z1, and the posterior sampled from
    it keeps z1's prior spread, ten times what the search explored."""
    rng = np.random.default_rng(3)
    l0, a, n_eff, s0 = 0.02, 3.0, 8.0, 1.5
    best = np.array([0.5, 0.0])
    loss = lambda zs: l0 * (1 + a * (zs[:, 0] - 0.5) ** 2)  # noqa: E731
    points = best + 0.15 * rng.standard_normal((evaluations, 2))
    cov = C.laplace_proposal(points, loss(points) + 1e-5 * rng.standard_normal(evaluations), best, l0, n_eff, s0)
    np.testing.assert_allclose(np.diag(cov), [1 / (n_eff * a + 1 / s0 ** 2), s0 ** 2], rtol=0.1)
    target = lambda zs: C.log_target(loss(zs), zs, l0, n_eff, np.zeros(2), s0)  # noqa: E731
    out = C.amis(target, best, cov, rounds=3, per_round=500, rng=rng)
    w, z1 = out["weights"], out["z"][:, 1]
    assert np.sqrt(w @ (z1 - w @ z1) ** 2) == pytest.approx(s0, rel=0.15)
    assert out["ess"] > 500


class _SeedChanceProblem:
    """A stand-in for :class:`simcore.calibrate.Problem` whose loss is l0 (1 + a |z - mu|^2) + e_s: a seed adds
    chance error e_s, and the search's seed (0) has none, as a search that fitted one seed's epidemic finds."""

    def __init__(self, l0, a, mu, extra, residuals):
        self.l0, self.a, self.mu, self.extra = l0, a, np.asarray(mu), dict(extra)
        self.fits = [C.FitParam(f"p{i}", 0.0, "identity") for i in range(len(mu))]
        self.target = type("T", (), {"fit_weeks": len(residuals)})()
        self.obs_fit, self.obs_max, self._res = np.zeros_like(residuals), np.ones(residuals.shape[1:]), residuals
        self.seeds_asked: set[int] = set()

    def rollout(self, z, seed):
        return self._res, None

    def weekly_sim(self, daily):
        return daily

    def batch_loss(self, zs, seeds):
        seeds = np.broadcast_to(np.asarray(seeds), (len(zs),))
        self.seeds_asked |= set(seeds.tolist())
        quad = self.l0 * (1 + self.a * ((np.asarray(zs) - self.mu) ** 2).sum(1))
        return quad + np.asarray([self.extra.get(int(s), 0.0) for s in seeds])


def test_the_posterior_weighs_points_by_their_loss_over_fresh_seeds():
    """The search's best point scores l0 on its own seed and l0 + 0.06 on the others (seeds 1-4 add chance
    error 0.03-0.09): the posterior's reference loss is that seed mean, never the search seed's, and the
    posterior has the precision that scale gives, n_eff a l0 / (l0 + 0.06) + 1 / s0^2 (twice as wide as
    the search seed's n_eff a + 1 / s0^2 would make it)."""
    l0, a, s0 = 0.02, 3.0, C.PRIOR_SD
    mu = np.array([0.3, -0.2])
    extra = {1: 0.03, 2: 0.05, 3: 0.07, 4: 0.09}
    res = np.random.default_rng(0).standard_normal((40, 1))
    prob = _SeedChanceProblem(l0, a, mu, extra, res)
    rng = np.random.default_rng(1)
    pts = mu + 0.15 * rng.standard_normal((200, 2))
    cma = C.Fit("cmaes", mu, [{"loss": float(v)} for v in prob.batch_loss(pts, 0)], points=pts, popsize=8)
    prob.seeds_asked.clear()
    post = C.posterior_sample(prob, mu, cma, proposals=3000, draws=500, sim_seed=0, rng=rng, rounds=5)
    assert prob.seeds_asked == {1, 2, 3, 4} and post["seeds"] == [1, 2, 3, 4]
    assert post["loss_ref"] == pytest.approx(l0 + 0.06) and post["loss_ref_seeds"] == pytest.approx(
        [l0 + e for e in extra.values()])
    n_eff = post["n_eff"]
    assert n_eff == pytest.approx(C.effective_points(res))
    prec = n_eff * a * l0 / (l0 + 0.06) + 1 / s0 ** 2
    w, z = post["weights"], post["all_z"]
    mean = w @ z
    np.testing.assert_allclose(mean, mu * n_eff * a * l0 / (l0 + 0.06) / prec, atol=0.03)
    np.testing.assert_allclose(w @ (z - mean) ** 2, 1 / prec, rtol=0.15)
    assert post["ess"] > 1000


def test_effective_points_follow_the_autocorrelation_and_the_columns_shared_error():
    rng = np.random.default_rng(1)
    white = rng.standard_normal((2000, 3))
    assert C.effective_points(white) == pytest.approx(6000, rel=0.1)
    ar = np.zeros((2000, 3))
    for t in range(1, 2000):
        ar[t] = 0.6 * ar[t - 1] + white[t]
    assert C.effective_points(ar) == pytest.approx(6000 * 0.4 / 1.6, rel=0.15)
    # five boroughs x three series sharing half their variance: 15 columns count as 15 / (1 + 14 x 0.5)
    shared = rng.standard_normal((2000, 1, 1)) + rng.standard_normal((2000, 5, 3))
    assert C.effective_points(shared) == pytest.approx(2000 * 15 / 8, rel=0.1)


def test_observation_error_reads_small_counts_as_counting_noise():
    """Observed = simulated x exp(0.3 eps) on 30 weeks of thousands (eps shared by the boroughs), plus 10
    early weeks of a handful counted with overdispersed (gamma-Poisson) noise: the model error comes back as
    0.3 where the root mean square of all log residuals is far larger, the overdispersion above Poisson's 1,
    and the predictive 80 % band covers about 80 % of fresh large-count weeks drawn the same way."""
    rng = np.random.default_rng(2)
    k, weeks, b, s = 4, 40, 5, 3
    sim = np.full((k, weeks, b, s), 2000.0)
    sim[:, :10] = 3.0
    per_agent = np.ones(b)

    def observe():
        mean = sim[0] * np.exp(0.3 * rng.standard_normal((weeks, 1, s)))  # the city's error, shared
        few = rng.poisson(sim[0] * rng.gamma(0.3, 1 / 0.3, size=sim[0].shape))
        return np.where(np.arange(weeks)[:, None, None] < 10, few, mean)

    obs = observe()
    rms = np.sqrt(np.mean((np.log1p(obs) - np.log1p(sim[0])) ** 2, axis=(0, 1)))
    sd, phi = C.observation_error(sim, obs, weeks, per_agent)
    np.testing.assert_allclose(sd, 0.3, rtol=0.25)
    assert (rms > 1.5 * sd).all()
    assert (phi > 1.3).all()  # above Poisson's 1 (each run's own count of 3 agents takes part of the noise)
    draws = C.predictive_draws(sim, sd, phi, 250, rng)
    assert draws.shape == (1000, weeks, b, s) and (draws >= 0).all()
    lo, hi = np.quantile(draws, 0.1, axis=0)[10:], np.quantile(draws, 0.9, axis=0)[10:]
    cover = np.mean([((f[10:] >= lo) & (f[10:] <= hi)).mean() for f in (observe() for _ in range(20))])
    assert 0.72 <= cover <= 0.88
    # the model error is shared by the boroughs: the citywide sum of the large weeks keeps it
    city = draws.sum(axis=2)
    assert np.std(np.log(city[:, 20, 0])) == pytest.approx(sd[0], rel=0.2)
    # the small weeks are counts: mean 3 e^(sd²/2), variance phi x mean + 9 (e^(2 sd²) - e^(sd²))
    few = draws[:, :10]
    for j in range(s):
        mean = 3 * np.exp(sd[j] ** 2 / 2)
        var = phi[j] * mean + 9 * (np.exp(2 * sd[j] ** 2) - np.exp(sd[j] ** 2))
        assert few[..., j].mean() == pytest.approx(mean, rel=0.05)
        assert few[..., j].var() == pytest.approx(var, rel=0.1)
    assert np.array_equal(few, np.round(few))


def test_observation_error_is_what_the_runs_own_spread_leaves():
    """32 runs whose weekly values spread by a factor exp(0.5 eta) (the posterior and chance), and observed
    weeks drawn as one more such run times exp(0.3 eps). The predictive 80 % band covers about 80 % of
    fresh weeks drawn the same way, because the fitted error is what the runs' spread leaves: above 0.3 by
    the smoothing 32 runs need, well below the mean's residual. An error fitted to the mean's residual
    (the former fit: 0.55) counted the spread twice and covered 0.91."""
    rng = np.random.default_rng(0)
    k, weeks, b, s = 32, 60, 5, 3
    base = 5000.0 * np.exp(rng.normal(0, 1, (1, weeks, 1, s)))  # weeks of different size; boroughs alike
    sim = base * np.exp(0.5 * rng.standard_normal((k, weeks, 1, s)))  # shared by the boroughs, as the city's
    sim = np.broadcast_to(sim, (k, weeks, b, s)).copy()

    def observe():
        run = base[0] * np.exp(0.5 * rng.standard_normal((weeks, 1, s)))
        return np.broadcast_to(run * np.exp(0.3 * rng.standard_normal((weeks, 1, s))), (weeks, b, s)).copy()

    obs = observe()
    sd, phi = C.observation_error(sim, obs, weeks, np.ones(b))
    resid_of_mean = np.sqrt(np.mean((np.log1p(obs) - np.log1p(sim.mean(0))) ** 2, axis=(0, 1)))
    assert (sd > 0.25).all() and (resid_of_mean > 1.25 * sd).all(), (sd, resid_of_mean)
    draws = C.predictive_draws(sim, sd, phi, 20, rng)
    lo, hi = np.quantile(draws, 0.1, axis=0), np.quantile(draws, 0.9, axis=0)
    cover = np.mean([((f >= lo) & (f <= hi)).mean() for f in (observe() for _ in range(20))])
    assert 0.74 <= cover <= 0.88


def test_overlay_puts_a_fitted_list_inside_its_fitted_mapping(tmp_path):
    """employment.borough_loss.1 fitted with employment.loss_lockdown: written apart, the mapping's copy of the
    list (defaults) would be applied after the fitted element; in one entry both hold after read_overlay."""
    sc = load_scenario("covid_small")
    fits = C.resolve_fit(sc, "employment.borough_loss.1,employment.loss_lockdown,employment.borough_loss.4")
    post = np.array([[f.start for f in fits]] * 3)
    C.write_overlay(tmp_path / "o.yaml", sc, fits, [1.7, 0.006, 0.5], post, "w", "nyc", "cmaes")
    text = (tmp_path / "o.yaml").read_text()
    assert text.count("model.params.employment") == 1 and "employment.borough_loss.1 80%" in text
    got = load_scenario("covid_small", C.read_overlay(tmp_path / "o.yaml")).model.params.employment
    assert got.borough_loss == [1.0, 1.7, 1.0, 1.0, 0.5] and got.loss_lockdown == 0.006


def test_overlay_carries_the_settings_the_fit_was_made_under(tmp_path):
    """A fit made with --set model.params.contact_scales=people belongs to that model: the overlay writes the
    setting (and the command's --set/--weight), so applying it to the base scenario gives the fitted model;
    a setting of a value that was then fitted is not written twice."""
    settings = ["model.params.contact_scales=people", "model.params.beta.community=0.05"]
    sc = load_scenario("covid_small", settings)
    fits = C.resolve_fit(sc, "beta.community,initial_infected")
    post = np.array([[f.start for f in fits]] * 3)
    C.write_overlay(tmp_path / "o.yaml", sc, fits, [0.07, 0.001], post, "w", "nyc", "cmaes",
                    settings=settings, loss_weights={"hospitalizations": 3.0})
    text = (tmp_path / "o.yaml").read_text()
    assert "--set model.params.contact_scales=people" in text.splitlines()[0]
    assert "--weight hospitalizations=3" in text.splitlines()[0]
    assert "model.params.contact_scales: people  # set for the fit" in text
    assert "community:0.05" not in text.replace(" ", "") and "community:0.07" in text.replace(" ", "")
    got = load_scenario("covid_small", C.read_overlay(tmp_path / "o.yaml")).model.params
    assert got.contact_scales == "people" and got.beta.community == 0.07 and got.initial_infected == 0.001


def test_overlay_carries_per_agent_prompts_whose_labels_are_keyed_by_digits(tmp_path):
    """The architecture benchmark's per-agent arm is fitted under --set items that replace whole decisions
    (labels keyed by household size "1", "2", prompts with newlines and colons): its overlay applied to the
    base scenario gives those decisions back, so the forward run is the fitted model."""
    from benchmarks.architectures import PER_AGENT_DECISIONS, per_agent_settings

    settings = ["model.params.contact_scales=people", *per_agent_settings()]
    sc = load_scenario("covid_nyc", settings)
    fits = C.resolve_fit(sc, "beta.community")
    C.write_overlay(tmp_path / "o.yaml", sc, fits, [0.07], np.array([[0.05]] * 3), "w", "nyc", "cmaes",
                    settings=settings)
    got = load_scenario("covid_nyc", C.read_overlay(tmp_path / "o.yaml"))
    assert got.policy.architecture == "per_agent" and got.model.params.beta.community == 0.07
    for d, want in zip(got.policy.decisions, PER_AGENT_DECISIONS):
        assert d.group_by == want["group_by"] and d.prompt == want["prompt"]
        for feature, words in want["labels"].items():
            assert d.labels[feature] == words


def test_baseline_unemployment_sets_each_boroughs_rate_and_leaves_the_rest():
    """With per-borough baseline rates the labour force's unemployment matches each borough's rate (to sampling
    error) and no one enters or leaves the labour force; without them the population's states stand."""
    from simcore.models.epidemic import baseline_labor

    rng = np.random.default_rng(3)
    borough = rng.integers(0, 5, 200_000)
    labor = rng.choice(np.array([0, 1, 2], np.int8), 200_000, p=[0.4, 0.58, 0.02])
    rates = [0.057, 0.043, 0.037, 0.037, 0.041]
    got = baseline_labor(labor, borough, rates, seed=0)
    assert ((got == 0) == (labor == 0)).all() and got.dtype == labor.dtype
    for b, r in enumerate(rates):
        lf = (borough == b) & (got != 0)
        assert abs((got[lf] == 2).mean() - r) < 4 * np.sqrt(r * (1 - r) / lf.sum())
    assert baseline_labor(labor, borough, None, seed=0) is labor
    np.testing.assert_array_equal(got, baseline_labor(labor, borough, rates, seed=0))
