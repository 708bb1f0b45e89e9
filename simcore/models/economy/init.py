"""Synthetic U.S. workers: age band, persona (from the age band), GB2 skill, heterogeneous elasticity.

Age bands follow the approximate age mix of employed Americans (BLS Current Population Survey:
about a quarter under 30, a third 30-44, a third 45-64, 6 % 65 and over). Personas are drawn from
the age band (``PERSONA_BY_AGE``, illustrative shares: older workers are more often semi-retired,
30-44 year olds more often caregivers), then scaled by the scenario's ``personas`` multipliers.
Skill is independent of age and persona, so the calibrated income distribution is kept.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from .calibration import gb2_sample
from .model import (AGE_BANDS, PERSONA_TRAITS, PERSONAS, EconomyConfig, EconomyState, make_optimizer, outcome,
                    best_response, atkinson, ginis)

AGE_SHARES = np.array([0.24, 0.34, 0.36, 0.06])
PERSONA_BY_AGE = np.array([  # rows: age band; columns: striver, balanced, caregiver, semi_retired
    [0.35, 0.45, 0.15, 0.05],
    [0.30, 0.40, 0.28, 0.02],
    [0.25, 0.45, 0.20, 0.10],
    [0.05, 0.25, 0.10, 0.60],
])


def sample_workers(prm, n: int, seed: int) -> dict[str, np.ndarray]:
    """Per-worker attributes (numpy): skill, elasticity, persona, age band, skill decile."""
    rng = np.random.default_rng([seed, 0xEC0])
    g = prm.income
    income = gb2_sample(rng, n, g.a, g.b, g.p, g.q)
    skill = (income / prm.full_time_hours).astype(np.float32)
    age = rng.choice(len(AGE_BANDS), n, p=AGE_SHARES).astype(np.int8)
    mult = np.array([prm.personas.get(name, 0.0) for name in PERSONAS])
    table = PERSONA_BY_AGE * mult
    table = table / table.sum(axis=1, keepdims=True)
    u = rng.random(n)
    persona = (u[:, None] > np.cumsum(table, axis=1)[age]).sum(axis=1).clip(0, len(PERSONAS) - 1).astype(np.int8)
    e_mult = np.array([PERSONA_TRAITS[name][1] for name in PERSONAS])
    noise = np.exp(prm.elasticity_sd * rng.standard_normal(n) - 0.5 * prm.elasticity_sd ** 2)
    elasticity = np.clip(prm.elasticity * e_mult[persona] * noise, 0.02, 5.0).astype(np.float32)
    order = np.argsort(skill, kind="stable")
    decile = np.empty(n, np.int8)
    decile[order] = (np.arange(n) * 10 // n).astype(np.int8)
    return {"skill": skill, "elasticity": elasticity, "persona": persona, "age_band": age, "skill_decile": decile}


def config_for(prm, n: int) -> EconomyConfig:
    pl = prm.planner
    kw = {}
    if pl.kind == "saez":
        kw = {"bandwidth": pl.bandwidth, "top_weight": pl.top_weight}
    elif pl.kind == "gradient":
        kw = {"learning_rate": pl.learning_rate, "optimizer": pl.optimizer, "updates_per_year": pl.updates_per_year,
              "temperature": pl.temperature}
    return EconomyConfig(n_workers=n, hours_options=tuple(prm.hours_options), weeks_per_year=prm.weeks_per_year,
                         full_time_hours=prm.full_time_hours, n_brackets=len(prm.schedule.rates), planner=pl.kind,
                         max_rate=prm.max_rate, epsilon=prm.inequality_aversion, utility_floor=prm.utility_floor,
                         vote_every=prm.vote_every, **kw)


def params_from(prm, workers: dict[str, np.ndarray]) -> dict:
    n = len(workers["skill"])
    base = np.asarray(prm.schedule.rates, np.float32)
    return {
        "skill": jnp.asarray(workers["skill"]), "elasticity": jnp.asarray(workers["elasticity"]),
        "persona": jnp.asarray(workers["persona"]), "age_band": jnp.asarray(workers["age_band"]),
        "skill_decile": jnp.asarray(workers["skill_decile"]),
        "persona_psi": jnp.asarray([PERSONA_TRAITS[name][0] for name in PERSONAS], jnp.float32),
        "disutility": jnp.float32(prm.disutility),
        "thresholds": jnp.asarray(prm.schedule.thresholds, jnp.float32),
        "base_rates": jnp.asarray(base), "llm_rates": jnp.asarray(base),
        "challenger_rates": jnp.asarray(prm.challenger.rates, jnp.float32),
        "planner_calls": jnp.float32(0), "planner_fallbacks": jnp.float32(0),
        "hours_llm": jnp.full(n, jnp.nan, jnp.float32), "vote_llm": jnp.full(n, jnp.nan, jnp.float32),
    }


def initial_state(cfg: EconomyConfig, params: dict, transfer_share: float) -> EconomyState:
    """Year -1: every worker's best response under the starting schedule (what planners first see)."""
    rates = params["base_rates"]

    @jax.jit
    def year0(p):
        choice = best_response(cfg, p, rates)
        z, tax, u, transfer, revenue = outcome(cfg, p, rates, choice, transfer_share)
        g_pre, g_post = ginis(z, z - tax + transfer)
        return choice, z, tax, u, transfer, revenue, g_pre, g_post, jnp.mean(u), atkinson(cfg, u)

    choice, z, tax, u, transfer, revenue, g_pre, g, w, wa = year0(params)
    opt = make_optimizer(cfg).init(rates) if cfg.planner == "gradient" else ()
    return EconomyState(hours=choice.astype(jnp.int8), income=z, tax=tax, utility=u, rates=rates, planner_rates=rates,
                        opt=opt, elected=jnp.int32(0), vote_share=jnp.float32(jnp.nan), transfer=transfer,
                        output=jnp.sum(z), revenue=revenue, gini_pre=g_pre, gini_post=g, welfare=w, welfare_atkinson=wa)


def init(prm, n: int, seed: int):
    """Config, state, params, scheduled base values and build info for ``n`` workers."""
    workers = sample_workers(prm, n, seed)
    cfg = config_for(prm, n)
    params = params_from(prm, workers)
    state = initial_state(cfg, params, prm.transfer_share)
    base = {"rate_scale": 1.0, "transfer_share": float(prm.transfer_share)}
    info = {"bytes_per_agent_state": 13, "bytes_per_agent_params": 19}
    return cfg, state, params, base, info
