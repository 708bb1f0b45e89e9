"""The calibrated LLM layer: the answer-to-behaviour map on the device, the pause order under LLM
job loss, prompts that read the schedule and the interventions, contextual calibration, and the
one-call-per-agent architecture. All with the scripted test-double backend (no model)."""
from simcore.session import drive
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats as sps

from llm_policy import ArchetypePolicy, check_policy
from llm_policy.backends import ScriptedBackend
from llm_policy.policy import calibrate
from llm_policy.probe import probe
from scenarios import ScenarioError, load_scenario
from simcore.models import build, epidemic
from simcore.runs import make_simulation

logit = lambda p: math.log(p) - math.log1p(-p)  # noqa: E731
daily = lambda p: 1 - (1 - p) ** (1 / 7)  # noqa: E731  the per-day hazard of a weekly probability


def _setup(size=3000, steps=35, overrides=()):
    sc = load_scenario("covid_nyc", [f"population.size={size}", f"run.steps={steps}", "output.sample_agents=0",
                                     *overrides])
    built = build(sc, seed=0, steps=steps)
    sim = make_simulation(sc, built, 0)
    names = tuple(jax.eval_shape(built.model.stats, built.state, built.params))
    return sc, built, sim, names


def _policy(sc, built, names, backend):
    check_policy(sc.policy, built.model, names, scheduled=tuple(built.schedule), interventions=sc.interventions,
                 n_agents=built.n_agents)
    return ArchetypePolicy(sc.policy, built.model, backend, stats_names=names, interventions=sc.interventions)


def _query(prompt: str) -> str:
    return prompt.rsplit("\n\n", 1)[1]  # the group's own block, after the few-shot examples


def _constant(p_isolate: float, p_lose: float):
    """Scripted answers that ignore the prompt: P(yes) to isolating, P(lose) to the job question."""
    table = {" yes": math.log(p_isolate), " no": math.log1p(-p_isolate), " lose": math.log(p_lose),
             " keep": math.log1p(-p_lose)}
    return lambda prompt, options: {o: table[o] for o in options}


# -- the map ------------------------------------------------------------------------------------
def test_map_is_logit_affine_with_exact_degenerate_cases_and_gradients():
    h = jnp.array([1e-4, 0.01, 0.2, 0.7], jnp.float32)
    x = jnp.log(h) - jnp.log1p(-h)
    np.testing.assert_allclose(epidemic.llm_hazard(x, 0.0, 1.0), h, rtol=1e-5)  # (0, 1): face value
    np.testing.assert_allclose(epidemic.llm_hazard(x, -3.0, 0.0), jax.nn.sigmoid(-3.0) * np.ones(4), rtol=1e-6)
    # slope 2: odds squared, bias 1: odds times e
    np.testing.assert_allclose(epidemic.llm_hazard(x, 1.0, 2.0), jax.nn.sigmoid(1.0 + 2 * x), rtol=1e-6)
    odds = np.asarray(h / (1 - h), np.float64)
    got = np.asarray(epidemic.llm_hazard(x, 1.0, 2.0), np.float64)
    np.testing.assert_allclose(got / (1 - got), math.e * odds**2, rtol=1e-4)
    # the old hand-set `scale` is reproduced exactly at one answer by bias = logit(s h0) - logit(h0)
    s, h0 = 0.015, daily(0.67)
    bias = logit(s * h0) - logit(h0)
    assert float(epidemic.llm_hazard(jnp.float32(logit(h0)), bias, 1.0)) == pytest.approx(s * h0, rel=1e-5)
    # analytic gradients, finite where agents follow the heuristic (NaN answers)
    xs = jnp.array([logit(0.1), jnp.nan, logit(0.3), jnp.nan], jnp.float32)
    heur = jnp.full(4, 0.05, jnp.float32)

    def total(b, k):
        return jnp.sum(epidemic._llm_or(heur, xs, b, k))

    gb, gk = jax.grad(total, argnums=(0, 1))(jnp.float32(0.5), jnp.float32(1.5))
    sig = jax.nn.sigmoid(0.5 + 1.5 * xs[jnp.array([0, 2])])
    assert float(gb) == pytest.approx(float(jnp.sum(sig * (1 - sig))), rel=1e-5)
    assert float(gk) == pytest.approx(float(jnp.sum(sig * (1 - sig) * xs[jnp.array([0, 2])])), rel=1e-5)


def test_behave_draws_isolation_from_the_mapped_answer():
    sc, built, sim, names = _setup(5000, 7)
    cfg = built.model.substeps[1].args[0]
    n = built.n_agents
    p = {**built.params, **{k: jnp.asarray(v[0]) for k, v in built.schedule.items()}, "step": jnp.int32(0)}
    eligible = np.asarray(built.state.disease) != epidemic.I  # symptomatic agents get an extra push
    for bias, slope, x in ((0.0, 1.0, logit(0.2)), (1.0, 0.5, logit(0.2)), (-1.0, 0.0, 3.0)):
        q = {**p, "isolate_llm": jnp.full(n, x, jnp.float32), "llm_isolate_bias": jnp.float32(bias),
             "llm_isolate_slope": jnp.float32(slope)}
        st = epidemic.behave(cfg, built.state, q, jax.random.key(3))
        started = (np.asarray(st.iso_days) > 0)[eligible]
        expect = 1 / (1 + math.exp(-(bias + slope * x)))
        assert sps.binomtest(int(started.sum()), started.size, expect).pvalue > 1e-3, (bias, slope, started.mean())


# -- item 1: the pause order still moves job loss under LLM archetypes -----------------------------
def test_pause_order_changes_llm_job_loss():
    """Same seed, same scripted answers (they ignore the order): with the pause, more jobs are lost."""
    sc, built, sim, names = _setup(3000, 35)
    unemployed = {}
    for arm in ("pause", "no_pause"):
        sim = make_simulation(sc, built, 0)  # same build, same seed: common random numbers
        if arm == "no_pause":
            sim.schedule["lockdown"][:] = 0.0
        policy = _policy(sc, built, names, ScriptedBackend(_constant(0.3, 0.05)))
        drive(sim, 35, policies=[policy])
        assert not np.isnan(np.asarray(sim.params["work_llm"])).any()  # every worker follows the LLM path
        unemployed[arm] = int((np.asarray(sim.state.labor) == 2).sum())
    sens = np.asarray(built.params["occ_sensitivity"])[np.asarray(built.params["occupation"])]
    workers = np.asarray(built.state.labor) == 1
    # 14 paused days at loss_lockdown * sensitivity per day, minus returns: a clear excess
    expected_excess = 14 * 0.003 * sens[workers].sum()
    assert unemployed["pause"] - unemployed["no_pause"] > 0.5 * expected_excess > 10, (unemployed, expected_excess)


# -- item 2: prompts read the schedule and the interventions in force --------------------------------
def test_prompts_show_the_schedule_and_interventions_at_the_rounds_step():
    sc, built, sim, names = _setup(1000, 35, ["policy.log_prompts=true"])

    def script(prompt, options):
        return [math.log(0.5), math.log(0.5)]

    policy = _policy(sc, built, names, ScriptedBackend(script))
    drive(sim, 35, policies=[policy])
    # covid_nyc's prompts name the stay-at-home order: off before day 21 (Mar 22), on from it
    iso = [(r["step"], _query(r["prompt"])) for r in policy.rows if r["decision"] == "isolate"]
    assert sorted({s for s, _ in iso}) == [0, 7, 14, 21, 28]
    assert all(("stay-at-home order in force" in q) == (s >= 21) for s, q in iso)
    assert all(("stay-at-home order not in force" in q) == (s < 21) for s, q in iso)
    d = sc.policy.decisions[0].model_copy(update={
        "prompt": "{date}: lockdown={lockdown} schools={school_scale} pause={pause_order:on/off} "
                  "[{interventions}] {pause_order}"})
    env = policy.env_values(18, sim.schedule)  # schools closed from day 15, the pause from day 21
    assert policy.render(d, {}, env) == "March 2020: lockdown=0.0 schools=0.0 pause=off [schools_closed] not in force"
    env = policy.env_values(30, sim.schedule)
    assert policy.render(d, {}, env) == ("March 2020: lockdown=1.0 schools=0.0 pause=on [schools_closed, "
                                         "pause_community, pause_workplaces, pause_order] in force")
    assert policy.render_content_free(d).startswith("N/A: lockdown=N/A schools=N/A pause=N/A [N/A]")


def test_prompt_field_checks_know_the_new_fields_and_still_reject_unknown_ones():
    sc, built, sim, names = _setup(2000, 7)
    kw = dict(scheduled=tuple(built.schedule), interventions=sc.interventions, n_agents=built.n_agents)
    for prompt, ok in (("{lockdown} {pause_order} {pause_order:yes/no} {interventions} {isolation_scale}", True),
                       ("{lockdown_level}", "unknown field {lockdown_level}"),
                       ("{pause_order:.0f}", "cannot be rendered"),
                       ("{borough:.0f}", "cannot be rendered")):
        bad = sc.policy.model_copy(deep=True)
        bad.decisions[0].prompt = prompt
        if ok is True:
            check_policy(bad, built.model, names, **kw)
        else:
            with pytest.raises(ScenarioError, match=r"policy.decisions\[0\].prompt: " + re_escape(ok)):
                check_policy(bad, built.model, names, **kw)
    # intervention fields come from the scenario: without interventions, {pause_order} is unknown
    bad = sc.policy.model_copy(deep=True)
    bad.decisions[0].prompt = "{pause_order}"
    with pytest.raises(ScenarioError, match=r"unknown field \{pause_order\}"):
        check_policy(bad, built.model, names, scheduled=tuple(built.schedule))
    # the hand-set scale is gone for the epidemic: it names its replacement
    bad = sc.policy.model_copy(deep=True)
    bad.decisions[1].scale = 0.015
    with pytest.raises(ScenarioError, match=r"policy.decisions\[1\].scale: .*model.params.llm_map.work.bias"):
        check_policy(bad, built.model, names, **kw)
    bad = sc.policy.model_copy(deep=True)
    bad.decisions[1].target = "isolate_llm"
    with pytest.raises(ScenarioError, match=r"policy.decisions\[1\].target: 'isolate_llm' is already the target"):
        check_policy(bad, built.model, names, **kw)


def re_escape(s):
    import re
    return re.escape(s)


# -- item 3: the map is applied on the device, the answers are computed once per round --------------
def test_changing_the_map_changes_behaviour_without_a_new_llm_call():
    sc, built, sim, names = _setup(5000, 14)
    backend = ScriptedBackend(_constant(0.3, 0.05))
    policy = _policy(sc, built, names, backend)
    policy.update(sim)  # the round at step 0: one batch per decision
    n_batches = len(backend.calls)
    state0, step0 = sim.state, sim.step
    shares = {}
    for bias in (-2.0, 0.0, 2.0):
        sim.state, sim.step = state0, step0
        sim.set_param("llm_isolate_bias", bias)
        chunk = sim.advance(7)
        shares[bias] = float(chunk.metrics["isolating_share"][-1])
    assert len(backend.calls) == n_batches  # no new LLM call
    assert shares[-2.0] < shares[0.0] < shares[2.0]
    # with bias 0 and slope 1 the answer is taken at face value: ~7 days of daily(0.3) isolation starts
    assert shares[0.0] == pytest.approx(1 - (1 - daily(0.3)) ** 7, abs=0.05)


def test_map_parameters_are_scenario_fields():
    sc = load_scenario("covid_nyc", ["population.size=2000", "model.params.llm_map.work.slope=0.5"])
    built = build(sc, seed=0, steps=7)
    assert float(built.params["llm_work_slope"]) == 0.5
    assert float(built.params["llm_work_bias"]) == pytest.approx(sc.model.params.llm_map.work.bias)
    with pytest.raises(ScenarioError, match=r"model.params.llm_map.isolate"):
        load_scenario("covid_nyc", ["model.params.llm_map.isolate.gain=2"])


# -- item 4: contextual calibration -----------------------------------------------------------------
def test_content_free_calibration_divides_out_the_prompts_own_bias():
    sc, built, sim, names = _setup(2000, 7, ["policy.calibration=content_free", "policy.n_samples=2"])

    def script(prompt, options):
        q = _query(prompt)
        if "isolate" not in q:
            return [math.log(0.5), math.log(0.5)]
        first_yes = "(yes or no)" in prompt  # the listed order shifts the answer: position bias
        if "N/A" in q:
            p = 0.8 if first_yes else 0.6  # content-free: the prompt's own lean towards yes
        else:
            p = (0.8 if first_yes else 0.6) if "Age 65 or older," in q else 0.5
        return [math.log(p), math.log(1 - p)]

    backend = ScriptedBackend(script)
    policy = _policy(sc, built, names, backend)
    policy.update(sim)
    rows = [r for r in policy.rows if r["decision"] == "isolate"]
    old = [r for r in rows if "age_band=65A" in r["archetype"]]
    young = [r for r in rows if "age_band=20t29" in r["archetype"]]
    assert old and young
    for r in old:  # equal to the content-free answer in both orders: calibrated to 1/2
        assert r["probs"][0] == pytest.approx(0.5, abs=1e-9)
        assert r["probs_uncalibrated"][0] == pytest.approx(0.7, abs=1e-9)
    expect = np.mean([calibrate(np.array([[0.5, 0.5]]), np.array([[p, 1 - p]]))[0, 0] for p in (0.8, 0.6)])
    for r in young:
        assert r["probs"][0] == pytest.approx(expect, abs=1e-9) and expect < 0.35
    # content-free prompts are asked once per listed order per round and counted as calls
    iso_batch = backend.calls[0]
    assert sum("N/A" in _query(q.prompt) for q in iso_batch) == 2
    assert policy.totals.calls == sum(len(b) for b in backend.calls)


def test_probe_measures_spread_and_main_effects():
    sc, built, sim, names = _setup(3000, 7)
    age_logit = {"U19": -1.5, "20t29": -1.0, "30t39": -0.5, "40t49": 0.0, "50t64": 0.5, "65A": 1.0}
    words = sc.policy.decisions[0].labels["age_band"]  # the prompt shows each band in words

    def script(prompt, options):
        q = _query(prompt)
        if "isolate" not in q:
            return [math.log(0.5), math.log(0.5)]
        z = next((v for k, v in age_logit.items() if f"Age {words[k]}," in q), 0.0)  # 0: content-free
        if "(no or yes)" in prompt:
            z -= 0.4  # a position bias the order averaging removes
        return [-math.log1p(math.exp(-z)), -math.log1p(math.exp(z))]

    policy = _policy(sc, built, names, ScriptedBackend(script))
    res = probe(policy, built.state, built.params, step=30, schedule=built.schedule)
    s = next(x for x in res.summary if x["decision"] == "isolate")
    ages = [age_logit[a] for a in built.model.labels["age_band"] if a in age_logit]
    assert len(ages) == len(built.model.labels["age_band"])
    assert s["effect_age_band"] == pytest.approx(max(ages) - min(ages) - 0.0, abs=1e-6)
    assert s["effect_borough"] == pytest.approx(0.0, abs=1e-9) and s["effect_case_trend"] == pytest.approx(0, abs=1e-9)
    assert s["spread_logit"] == pytest.approx(np.std(np.array(ages) - 0.2), abs=1e-6)
    assert s["rate_reversed_order"] < s["rate"]
    assert s["failed"] == 0


# -- item 5: one call per agent ---------------------------------------------------------------------
def test_per_agent_makes_one_call_per_agent_and_each_agent_gets_its_own_answer():
    n = 400
    sc, built, sim, names = _setup(n, 14, ["policy.architecture=per_agent", "policy.decisions.0.heterogeneity=0"])
    p_by_age = {label: 0.1 + 0.1 * i for i, label in enumerate(built.model.labels["age_band"])}
    words = sc.policy.decisions[0].labels["age_band"]

    def script(prompt, options):
        q = _query(prompt)
        if "isolate" in q:
            p = next(v for k, v in p_by_age.items() if f"Age {words[k]}," in q)
            return [math.log(p), math.log(1 - p)]
        return [math.log(0.9), math.log(0.1)]

    backend = ScriptedBackend(script)
    policy = _policy(sc, built, names, backend)
    drive(sim, 14, policies=[policy])
    assert [len(b) for b in backend.calls] == [n, n, n, n]  # 2 rounds x 2 decisions, one call per agent
    assert policy.totals.calls == 4 * n
    iso_rows = [r for r in policy.rows if r["decision"] == "isolate" and r["step"] == 7]
    assert sorted(r["archetype_code"] for r in iso_rows) == list(range(n))
    assert all(r["group_size"] == 1 and r["archetype"].startswith("agent=") for r in iso_rows)
    x = np.asarray(sim.params["isolate_llm"])
    ages = np.asarray(built.params["age_band"])
    expect = np.array([logit(daily(p_by_age[built.model.labels["age_band"][a]])) for a in ages], np.float32)
    np.testing.assert_allclose(x, expect, rtol=1e-5)
    with pytest.raises(ScenarioError, match=r"policy.architecture: per_agent .*per_agent_max \(100\), got 400"):
        bad = sc.policy.model_copy(update={"per_agent_max": 100})
        check_policy(bad, built.model, names, n_agents=n)
