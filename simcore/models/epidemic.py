"""NYC-style epidemic: SEIRM on a multilayer contact graph, with heuristic isolation and employment.

Substeps, in order (each a pure ``(state, params, key) -> state``):

1. ``observe``   reported cases per borough -> weekly growth against the 4-week mean, and level per 100k;
2. ``behave``    isolation starts/ends and job loss/return: heuristic hazards, or where a
                 ``llm_policy`` answer is present (``isolate_llm``/``work_llm`` not NaN) the
                 fitted map ``sigmoid(bias + slope * answer logit)`` of ``llm_map``; the pause
                 order's job-loss term (``lockdown * loss_lockdown``) applies on both paths;
3. ``transmit``  layer-specific force of infection from infectious neighbours; isolation cuts
                 non-household contacts at both ends; S -> E with age-specific susceptibility;
                 E -> I, I -> R or M (age-specific infection fatality), all read from the state at
                 the start of the step;
4. ``report``    expected reported cases per borough into the 28-day history.

Scheduled parameters (one row per step, edited by interventions): ``household_scale``,
``workplace_scale``, ``school_scale``, ``community_scale`` (contact multipliers), ``lockdown``
(0..1, drives job loss) and ``isolation_scale`` (multiplies the isolation start hazard).

Memory per agent: 4 int8 state arrays (disease, isolation days, labour, isolation
trend bin) + 4 int8 attributes (borough, age band, occupation, group) = 8 bytes,
plus 4 bytes of ``indptr`` per layer (16) and 8 bytes per stored contact.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from ..engine import Model, init_key, root_key
from .layers import Layer, seed_infections

S, E, I, R, M = 0, 1, 2, 3, 4
STATES = ("S", "E", "I", "R", "M")
LAYERS = ("household", "workplace", "school", "community")
LABOR = ("not_in_labor_force", "employed", "unemployed")
TRENDS = ("falling", "flat", "rising")
WINDOW = 28  # days of reported-case history kept per borough
N_FLOWS = 3  # new infections, new deaths, new symptomatic (I) cases
LLM_TARGETS = ("isolate", "work")  # decision target <t>_llm is mapped by params llm_<t>_bias / llm_<t>_slope
SCHEDULED = ("household_scale", "workplace_scale", "school_scale", "community_scale", "lockdown",
             "isolation_scale")
# what an archetype policy may fill, group on (keys of features()) and show in prompts (keys of stats()),
# known without building; tests/test_validation.py checks them against a built model
DECISION_TARGETS = ("isolate_llm", "work_llm")
FEATURES = ("age_band", "borough", "occupation", "case_trend", "labor", "isolating", "disease")
STATS = ("weekly_cases", "case_change_pct", "isolating_pct", "unemployed_pct", "employed_pct", "infected_pct")


@jax.tree_util.register_dataclass
@dataclass
class EpidemicState:
    disease: jax.Array  # int8 [N]
    iso_days: jax.Array  # int8 [N], days of isolation left (0 = not isolating)
    labor: jax.Array  # int8 [N]
    case_hist: jax.Array  # float32 [WINDOW, B], expected reported cases per day and borough
    growth: jax.Array  # float32 [B], weekly cases vs 4-week mean, relative
    level: jax.Array  # float32 [B], weekly reported cases per 100k
    flows: jax.Array  # int32 [G, N_FLOWS], this step's transitions by borough x age group


@dataclass(frozen=True)
class EpidemicConfig:
    n_boroughs: int
    n_ages: int
    n_occupations: int
    latent_days: float = 3.0
    infectious_days: float = 5.0
    quarantine_days: int = 12
    sparse_capacity: float = 0.1
    borough_labels: tuple[str, ...] = ()
    age_labels: tuple[str, ...] = ()

    @property
    def n_groups(self) -> int:
        return self.n_boroughs * self.n_ages


def trend_bin(growth: jax.Array, threshold: float = 0.1) -> jax.Array:
    """falling / flat / rising (0/1/2) from relative weekly growth; archetypes group on it."""
    return (growth > -threshold).astype(jnp.int8) + (growth > threshold).astype(jnp.int8)


# -- substeps ---------------------------------------------------------------------
def observe(cfg: EpidemicConfig, st: EpidemicState, p, key):
    weekly = _rows_sum(_last_days(st.case_hist, p["step"], 7))
    monthly_mean = _rows_sum(st.case_hist) / 4.0
    growth = (weekly - monthly_mean) / jnp.maximum(monthly_mean, 1.0)
    # times a per-100k factor, not divided by the population: XLA rewrites a division by an
    # unbatched array into a reciprocal multiply under vmap only, which changes the last bit
    level = weekly * (1e5 / p["borough_pop"])
    return _replace(st, growth=growth, level=level)


def _rows_sum(rows):
    """Sum over the leading axis as elementwise adds in row order: the same floats for one run and
    for replicates batched under vmap (where XLA may reorder a reduction of the batched array)."""
    total = rows[0]
    for i in range(1, rows.shape[0]):
        total = total + rows[i]
    return total


def _last_days(hist, step, days):
    # hist row (t % WINDOW) holds day t's cases; rows for days step-days+1..step
    idx = (step - jnp.arange(days)) % WINDOW
    return hist[idx]


def llm_hazard(x: jax.Array, bias: jax.Array, slope: jax.Array) -> jax.Array:
    """Per-step hazard from an archetype answer: ``sigmoid(bias + slope * x)``.

    ``x`` is what ``llm_policy`` writes to a decision target: ``logit(1 - (1 - P)**(1/every))``,
    the logit of the per-step hazard implied by the answer's probability ``P`` of the event over
    one round. ``(bias, slope) = (0, 1)`` is the identity (the answer at face value);
    ``slope = 0`` is the constant ``sigmoid(bias)``. Smooth in ``bias`` and ``slope``, so a
    calibration can differentiate through it.
    """
    return jax.nn.sigmoid(bias + slope * x)


def _llm_or(heuristic: jax.Array, x: jax.Array, bias: jax.Array, slope: jax.Array, add=0.0) -> jax.Array:
    # NaN = no LLM answer for this agent (heuristic, unchanged). The map is evaluated on a NaN-free
    # copy so that gradients with respect to bias/slope stay finite where agents follow the heuristic.
    missing = jnp.isnan(x)
    return jnp.where(missing, heuristic, llm_hazard(jnp.where(missing, 0.0, x), bias, slope) + add)


def behave(cfg: EpidemicConfig, st: EpidemicState, p, key):
    k_iso, k_loss = jax.random.split(key)
    n = st.disease.shape[0]
    b = p["borough"]
    alive = st.disease != M
    # isolation: heuristic hazard by borough, or the archetype answer through its fitted map
    x = p["iso_base"] + p["iso_growth"] * jnp.clip(st.growth, -1.0, 1.0) + p["iso_level"] * jnp.log1p(st.level)
    heuristic = jax.nn.sigmoid(x)[b]
    p_start = _llm_or(heuristic, p["isolate_llm"], p["llm_isolate_bias"], p["llm_isolate_slope"])
    p_start = p_start * p["isolation_scale"]
    p_start = jnp.where(st.disease == I, 1 - (1 - p_start) * (1 - p["iso_symptomatic"]), p_start)
    u = jax.random.uniform(k_iso, (n,))
    starting = (st.iso_days == 0) & alive & (u < jnp.clip(p_start, 0, 1))
    iso_days = jnp.where(st.iso_days > 0, st.iso_days - 1, st.iso_days)
    iso_days = jnp.where(starting, jnp.int8(cfg.quarantine_days), iso_days).astype(jnp.int8)
    iso_days = jnp.where(alive, iso_days, jnp.int8(0))
    # employment: loss = the worker's own hazard (base + case load, or the archetype answer through
    # its fitted map) + the closure imposed by the pause order, which no answer replaces: under LLM
    # archetypes the `lockdown` schedule still moves job loss. Return is slowed by the lockdown.
    lockdown = p["lockdown"]
    sens = p["occ_sensitivity"][p["occupation"]]
    closure = lockdown * p["loss_lockdown"] * sens
    heuristic_loss = p["loss_base"] + closure + p["loss_cases"] * jnp.minimum(st.level / 1000.0, 1.0)[b] * sens
    loss = _llm_or(heuristic_loss, p["work_llm"], p["llm_work_bias"], p["llm_work_slope"], add=closure)
    ret = p["return_base"] * (1 - lockdown * p["return_drag"])
    labor = st.labor
    u_labor = jax.random.uniform(k_loss, (n,))  # one draw: losing and returning are exclusive by state
    lose = (labor == 1) & (u_labor < loss)
    back = (labor == 2) & (u_labor < ret)
    labor = jnp.where(lose, jnp.int8(2), jnp.where(back, jnp.int8(1), labor))
    labor = jnp.where(alive, labor, jnp.int8(0))
    return _replace(st, iso_days=iso_days, labor=labor)


def transmit(cfg: EpidemicConfig, st: EpidemicState, p, key):
    d = st.disease
    infectious = d == I
    isolating = (st.iso_days > 0).astype(jnp.float32)
    keep = 1.0 - p["iso_effect"] * isolating  # share of non-household contact kept
    ones = jnp.ones(d.shape, jnp.float32)
    layers: dict[str, Layer] = p["layers"]
    beta = p["beta"]
    foi_home = beta[0] * p["household_scale"] * layers["household"].pull(ones, infectious, cfg.sparse_capacity)
    foi_out = jnp.zeros(d.shape, jnp.float32)
    for i, name in enumerate(LAYERS[1:], start=1):
        foi_out += beta[i] * p[f"{name}_scale"] * layers[name].pull(keep, infectious, cfg.sparse_capacity)
    foi = (foi_home + keep * foi_out) * p["susceptibility"][p["age_band"]]
    # One uniform per agent serves every disease transition: they are exclusive by state
    # (S infects, E progresses, I leaves), and I's death test reuses the same draw below its exit bar.
    u = jax.random.uniform(key, d.shape)
    infected = (d == S) & (u < 1.0 - jnp.exp(-foi))
    p_ei = 1.0 if cfg.latent_days <= 0 else 1.0 / cfg.latent_days
    p_ir = 1.0 / cfg.infectious_days
    to_i = (d == E) & (u < p_ei)
    leave = (d == I) & (u < p_ir)
    dies = leave & (u < p_ir * p["ifr"][p["age_band"]])
    d = jnp.where(infected, jnp.int8(E), d)
    d = jnp.where(to_i, jnp.int8(I), d)
    d = jnp.where(leave, jnp.where(dies, jnp.int8(M), jnp.int8(R)), d)
    flows = _flow(st.flows, p, 0, infected, reset=True)
    flows = _flow(flows, p, 1, dies)
    flows = _flow(flows, p, 2, to_i)
    return _replace(st, disease=d, flows=flows)


def report(cfg: EpidemicConfig, st: EpidemicState, p, key):
    flows = st.flows
    # reported cases: expected detections of new symptomatic cases, by borough
    reported = flows[:, 2].reshape(cfg.n_boroughs, cfg.n_ages).sum(axis=1) * p["detection_rate"]
    hist = st.case_hist.at[p["step"] % WINDOW].set(reported.astype(jnp.float32))
    return _replace(st, case_hist=hist)


def _flow(flows, p, column, mask, reset=False):
    counts = jax.ops.segment_sum(mask.astype(jnp.int32), p["group"], num_segments=flows.shape[0])
    base = jnp.zeros_like(flows) if reset else flows
    return base.at[:, column].set(counts)


def _replace(st: EpidemicState, **kw) -> EpidemicState:
    return EpidemicState(**{**st.__dict__, **kw})


# -- reductions -----------------------------------------------------------------------
def _slug(label: str) -> str:
    return label.lower().replace(" ", "_")


def metrics(cfg: EpidemicConfig, st: EpidemicState, p):
    """One flat dict of scalars per step: totals, then ``metric__borough_x`` and ``metric__age_y``."""
    nb, na = cfg.n_boroughs, cfg.n_ages
    # one histogram over (group, disease, isolating, labour) gives every count below
    code = ((p["group"].astype(jnp.int32) * 5 + st.disease) * 2 + (st.iso_days > 0)) * 3 + st.labor
    hist = jnp.bincount(code, length=cfg.n_groups * 30).reshape(nb, na, 5, 2, 3)
    by_state = hist.sum(axis=(0, 1, 3, 4))
    flows = st.flows.reshape(nb, na, N_FLOWS)
    alive = hist[:, :, :M].sum(axis=(2, 3, 4))
    iso = hist[:, :, :M, 1].sum(axis=(2, 3))
    employed = hist[..., 1].sum(axis=(2, 3))
    unemployed = hist[..., 2].sum(axis=(2, 3))
    out = {name: by_state[i] for i, name in enumerate(STATES)}
    out["new_infections"] = flows[..., 0].sum()
    out["new_deaths"] = flows[..., 1].sum()
    out["new_cases"] = flows[..., 2].sum()
    out["isolating_share"] = iso.sum() / jnp.maximum(alive.sum(), 1)
    out["unemployment_rate"] = unemployed.sum() / jnp.maximum(employed.sum() + unemployed.sum(), 1)
    for bi, name in enumerate(cfg.borough_labels):
        key = f"borough_{_slug(name)}"
        out[f"I__{key}"] = hist[bi, :, I].sum()
        out[f"new_infections__{key}"] = flows[bi, :, 0].sum()
        out[f"new_deaths__{key}"] = flows[bi, :, 1].sum()
        out[f"isolating_share__{key}"] = iso[bi].sum() / jnp.maximum(alive[bi].sum(), 1)
        out[f"unemployment_rate__{key}"] = unemployed[bi].sum() / jnp.maximum(employed[bi].sum() + unemployed[bi].sum(), 1)
        out[f"case_growth__{key}"] = st.growth[bi]
    for ai, name in enumerate(cfg.age_labels):
        key = f"age_{_slug(name)}"
        out[f"I__{key}"] = hist[:, ai, I].sum()
        out[f"new_infections__{key}"] = flows[:, ai, 0].sum()
        out[f"new_deaths__{key}"] = flows[:, ai, 1].sum()
    return out


def sample(st: EpidemicState, p, idx):
    return {
        "agent": idx,
        "disease": st.disease[idx],
        "isolating": (st.iso_days[idx] > 0).astype(jnp.int8),
        "labor": st.labor[idx],
        "borough": p["borough"][idx],
        "age_band": p["age_band"][idx],
        "occupation": p["occupation"][idx],
    }


def features(st: EpidemicState, p):
    """What archetypes may group on: attributes, the local case trend, own labour/isolation/disease state."""
    b = p["borough"]
    return {
        "age_band": p["age_band"], "borough": b, "occupation": p["occupation"],
        "case_trend": trend_bin(st.growth)[b], "labor": st.labor,
        "isolating": (st.iso_days > 0).astype(jnp.int8), "disease": st.disease,
    }


def stats(st: EpidemicState, p):
    """Per-agent numbers averaged per archetype and offered to prompt templates."""
    b = p["borough"]
    return {
        "weekly_cases": st.level[b],  # reported cases per 100k in the agent's borough, last 7 days
        "case_change_pct": 100.0 * st.growth[b],
        "isolating_pct": 100.0 * (st.iso_days > 0),
        "unemployed_pct": 100.0 * (st.labor == 2),
        "employed_pct": 100.0 * (st.labor == 1),
        "infected_pct": 100.0 * (st.disease == I),
    }


def make_model(cfg: EpidemicConfig, occupation_labels: tuple[str, ...] = ()) -> Model:
    return Model(
        name="epidemic",
        substeps=tuple(partial(f, cfg) for f in (observe, behave, transmit, report)),
        metrics=partial(metrics, cfg),
        sample=sample,
        labels={"disease": STATES, "labor": LABOR, "borough": cfg.borough_labels, "age_band": cfg.age_labels,
                "occupation": occupation_labels, "case_trend": TRENDS, "isolating": ("no", "yes")},
        features=features,
        stats=stats,
        decision_targets=DECISION_TARGETS,
        decision_logits=DECISION_TARGETS,  # both mapped on the device by llm_hazard
    )


def init(population, layers: dict, params, *, seed: int, occupation_sensitivity, occupation_labels=()):
    """State, array params and scheduled base values. ``params`` is the scenario's EpidemicParams."""
    attrs = population.attributes
    n = population.n
    nb = len(population.labels["borough"])
    na = len(population.labels["age_band"])
    cfg = EpidemicConfig(
        n_boroughs=nb, n_ages=na, n_occupations=len(population.labels["occupation"]),
        latent_days=params.latent_days, infectious_days=params.infectious_days,
        quarantine_days=params.isolation.quarantine_days, sparse_capacity=params.sparse_capacity,
        borough_labels=tuple(population.labels["borough"]), age_labels=tuple(population.labels["age_band"]),
    )
    disease = np.zeros(n, np.int8)
    disease[seed_infections(init_key(root_key(seed)), n, params.initial_infected)] = I
    group = (attrs["borough"].astype(np.int16) * na + attrs["age_band"]).astype(np.int8)
    state = EpidemicState(
        disease=jnp.asarray(disease),
        iso_days=jnp.zeros(n, jnp.int8),
        labor=jnp.asarray(attrs["labor"]),
        case_hist=jnp.zeros((WINDOW, nb), jnp.float32),
        growth=jnp.zeros(nb, jnp.float32),
        level=jnp.zeros(nb, jnp.float32),
        flows=jnp.zeros((nb * na, N_FLOWS), jnp.int32),
    )
    borough_pop = np.bincount(attrs["borough"], minlength=nb).astype(np.float32)
    iso, emp = params.isolation, params.employment
    f32 = lambda v: jnp.asarray(v, jnp.float32)  # noqa: E731
    arrays = {
        "borough": jnp.asarray(attrs["borough"]),
        "age_band": jnp.asarray(attrs["age_band"]),
        "occupation": jnp.asarray(attrs["occupation"]),
        "group": jnp.asarray(group),
        "borough_pop": f32(np.maximum(borough_pop, 1)),
        "layers": {name: Layer.from_csr(layers[name]) for name in LAYERS},
        "beta": f32([params.beta.household, params.beta.workplace, params.beta.school, params.beta.community]),
        "susceptibility": f32(params.susceptibility),
        "ifr": f32(params.ifr),
        "detection_rate": f32(params.detection_rate),
        "iso_base": f32(iso.base), "iso_growth": f32(iso.growth), "iso_level": f32(iso.level),
        "iso_effect": f32(iso.effect), "iso_symptomatic": f32(iso.symptomatic),
        "occ_sensitivity": f32(occupation_sensitivity),
        "loss_base": f32(emp.loss_base), "loss_lockdown": f32(emp.loss_lockdown), "loss_cases": f32(emp.loss_cases),
        "return_base": f32(emp.return_base), "return_drag": f32(emp.return_lockdown_drag),
        # per-agent answer logits from archetype decisions, filled between chunks; NaN = heuristic
        "isolate_llm": jnp.full(n, jnp.nan, jnp.float32),
        "work_llm": jnp.full(n, jnp.nan, jnp.float32),
        # their maps to behaviour (model.params.llm_map.<target>.bias/slope), see llm_hazard
        **{f"llm_{t}_{k}": f32(getattr(getattr(params.llm_map, t), k)) for t in LLM_TARGETS for k in ("bias", "slope")},
    }
    base = {name: 1.0 for name in SCHEDULED}
    base["lockdown"] = 0.0
    return cfg, state, arrays, base
