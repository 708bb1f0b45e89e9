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
4. ``report``    expected reported cases per borough into the 28-day history, and the observation
                 model: this step's symptom onsets enter a ``DELAY_DAYS`` ring buffer, from which
                 today's expected reported cases, hospital admissions and deaths per borough are
                 discrete convolutions with log-normal delay distributions (onset -> report,
                 onset -> admission, onset -> death), weighted by a detection ramp, ``ihr`` and ``ifr``.

Observation model (all on the device, pure and differentiable in its parameters): reported cases are
``sum_s onsets[t-s] * detection(t-s) * k_report[s]``, where ``detection(t) = detection_rate * (floor +
(1 - floor) * sigmoid((t - midpoint) / width))``; admissions ``sum_s (onsets[t-s] . ihr) * k_hosp[s]``;
deaths ``sum_s (onsets[t-s] . ifr) * k_death[s]`` (expected counts by date of event, as DOHMH dates them).
``k[s] = F(s + 1) - F(s)`` for the log-normal CDF F with the delay's mean and sd, renormalised over
``DELAY_DAYS``. The agent-level death (I -> M) uses the same ``ifr``, so both death counts agree in expectation.

Relaxed mode (``EpidemicConfig.relaxed``, used by ``simcore.calibrate``'s gradient path): the state also
carries float indicators of S, E and I per agent. Every Bernoulli draw ``u < p`` is replaced by
``hard * p / stop_gradient(p)`` (0 where the draw failed): the forward pass is exactly the ordinary
stochastic step (same draws, same integer state), and each realised event carries d log p, so that
E[d event] = dp per step. Forces of infection pull the float I indicator of the infectious agents only.
Derivatives follow the realised events; the effect of infections that did not happen is missed, which
biases transmission derivatives low (~0.65x of a finite difference in tests/test_calibrate.py). The
textbook straight-through ``hard + (p - stop_gradient(p))`` with every agent a source overshot ~60x here
(mean-field growth of never-realised mass inside households). Behaviour (isolation, job loss) stays hard.

Scheduled parameters (one row per step, edited by interventions): ``household_scale``,
``workplace_scale``, ``school_scale``, ``community_scale`` (contact multipliers), ``lockdown``
(0..1, drives job loss) and ``isolation_scale`` (multiplies the isolation start hazard).
``contact_scales`` (a model parameter) says what the workplace, school and community scales scale:
``rate`` (default) multiplies each contact's transmission rate; ``people`` makes the scale the share of
people who keep that layer's contacts that day, the others staying home (fixed ranks per agent, so the
same people stay home for a whole order, nested across layers; :func:`stay_home_ranks`). With a high
per-contact rate a rate multiplier barely changes whether a contact kept for days transmits, while
closing a workplace removes the contact: the wave-1 forecast fits needed the second.

Memory per agent (relaxed mode adds 12 bytes of float indicators, ``contact_scales: people`` 4 bytes of ranks): 4 int8 state arrays (disease, isolation days, labour, isolation
trend bin) + 4 int8 attributes (borough, age band, occupation, group) = 8 bytes,
plus 4 bytes of ``indptr`` per layer (16) and 8 bytes per stored contact.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from ..engine import Model, init_key, root_key, uniform
from .layers import Layer, seed_infections

S, E, I, R, M = 0, 1, 2, 3, 4
STATES = ("S", "E", "I", "R", "M")
LAYERS = ("household", "workplace", "school", "community")
LABOR = ("not_in_labor_force", "employed", "unemployed")
TRENDS = ("falling", "flat", "rising")
WINDOW = 28  # days of reported-case history kept per borough
N_FLOWS = 3  # new infections, new deaths, new symptomatic (I) cases
LLM_TARGETS = ("isolate", "work")  # decision target <t>_llm is mapped by params llm_<t>_bias / llm_<t>_slope
DELAY_DAYS = 64  # days of onset history kept for the delay convolutions
OBSERVED = ("reported_cases", "hospital_admissions", "reported_deaths")
SCHEDULED = ("household_scale", "workplace_scale", "school_scale", "community_scale", "lockdown",
             "isolation_scale")
# what an archetype policy may fill, group on (keys of features()) and show in prompts (keys of stats()),
# known without building; tests/test_validation.py checks them against a built model
DECISION_TARGETS = ("isolate_llm", "work_llm")
FEATURES = ("age_band", "borough", "occupation", "case_trend", "labor", "isolating", "disease", "household_size")
HOUSEHOLD_SIZES = ("1", "2", "3-4", "5+")  # household_size feature levels (int8 code per agent: 1 byte/agent)


def household_size_band(household: np.ndarray, n_households: int) -> np.ndarray:
    """int8 [N]: the band (HOUSEHOLD_SIZES) of each agent's household size, from the household ids (bincount)."""
    sizes = np.bincount(np.asarray(household), minlength=n_households)[np.asarray(household)]
    return (np.searchsorted(np.array([2, 3, 5]), sizes, side="right")).astype(np.int8)
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
    onsets: jax.Array  # float32 [G], this step's new symptomatic cases (float: carries derivatives when relaxed)
    onset_hist: jax.Array  # float32 [DELAY_DAYS, G], onsets per day (row t % DELAY_DAYS)
    detected_hist: jax.Array  # float32 [DELAY_DAYS, B], onsets x detection per day
    observed: jax.Array  # float32 [B, 3], today's expected reported cases, admissions, deaths
    soft: jax.Array  # float32 [N, 3] S/E/I indicators when relaxed, else [0, 3]
    not_searching: jax.Array  # float32 [B], expected unemployed not yet looking for work (see laus_counts)


@dataclass(frozen=True)
class EpidemicConfig:
    n_boroughs: int
    n_ages: int
    n_occupations: int
    quarantine_days: int = 12
    sparse_capacity: float = 0.1
    borough_labels: tuple[str, ...] = ()
    age_labels: tuple[str, ...] = ()
    relaxed: bool = False  # straight-through derivatives (simcore.calibrate); same forward values
    contact_scales: str = "rate"  # "rate" or "people": what a workplace/school/community scale scales

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
    n = st.disease.shape[0]
    u = uniform(key, (n, 2))  # an agent's isolation and labour draws: the two words of one hash
    u_iso, u_labor = u[:, 0], u[:, 1]
    b = p["borough"]
    alive = st.disease != M
    # isolation: heuristic hazard by borough, or the archetype answer through its fitted map
    x = p["iso_base"] + p["iso_growth"] * jnp.clip(st.growth, -1.0, 1.0) + p["iso_level"] * jnp.log1p(st.level)
    heuristic = jax.nn.sigmoid(x)[b]
    p_start = _llm_or(heuristic, p["isolate_llm"], p["llm_isolate_bias"], p["llm_isolate_slope"])
    p_start = p_start * p["isolation_scale"]
    p_start = jnp.where(st.disease == I, 1 - (1 - p_start) * (1 - p["iso_symptomatic"]), p_start)
    starting = (st.iso_days == 0) & alive & (u_iso < jnp.clip(p_start, 0, 1))
    iso_days = jnp.where(st.iso_days > 0, st.iso_days - 1, st.iso_days)
    iso_days = jnp.where(starting, jnp.int8(cfg.quarantine_days), iso_days).astype(jnp.int8)
    iso_days = jnp.where(alive, iso_days, jnp.int8(0))
    # employment: loss = the worker's own hazard (base + case load, or the archetype answer through
    # its fitted map) + the closure imposed by the pause order, which no answer replaces: under LLM
    # archetypes the `lockdown` schedule still moves job loss. Return is slowed by the lockdown.
    lockdown = p["lockdown"]
    sens = p["occ_sensitivity"][p["occupation"]]
    # the borough's multiplier scales the whole hazard: boroughs' economies met the pause differently
    # (LAUS, May 2020: +12.6 pp in Manhattan, +20.5 pp in the Bronx), which one occupation mix cannot show
    sens = sens * p["borough_loss"][b]
    closure = lockdown * p["loss_lockdown"] * sens
    heuristic_loss = p["loss_base"] + closure + p["loss_cases"] * jnp.minimum(st.level / 1000.0, 1.0)[b] * sens
    loss = _llm_or(heuristic_loss, p["work_llm"], p["llm_work_bias"], p["llm_work_slope"], add=closure)
    ret = p["return_base"] * (1 - lockdown * p["return_drag"])
    labor = st.labor
    # one draw (u_labor): losing and returning are exclusive by state
    lose = (labor == 1) & (u_labor < loss)
    back = (labor == 2) & (u_labor < ret)
    labor = jnp.where(lose, jnp.int8(2), jnp.where(back, jnp.int8(1), labor))
    labor = jnp.where(alive, labor, jnp.int8(0))
    # LAUS counts a job loser who is not yet looking for work out of the labour force. Under the pause a
    # share of the day's losers start that way; each day a share 1/search_delay_days starts searching and,
    # like every unemployed agent, a share ret finds work (expected counts per borough: an observation
    # that nothing in the simulation reads back). The per-borough count of losers is a scatter over every
    # agent (29 ms a step at 8.4M on a 2-core CPU), so it runs only where the rule is on; the inflow is 0
    # either way where it is off.
    inflow = jax.lax.cond(
        p["not_searching"] > 0,
        lambda: p["not_searching"] * lockdown * jax.ops.segment_sum(lose.astype(jnp.float32), b,
                                                                    num_segments=cfg.n_boroughs),
        lambda: jnp.zeros(cfg.n_boroughs, jnp.float32))
    pool = st.not_searching * (1.0 - p["search_rate"]) * (1.0 - ret) + inflow
    return _replace(st, iso_days=iso_days, labor=labor, not_searching=pool)


def laus_counts(st: EpidemicState, employed: jax.Array, unemployed: jax.Array):
    """(unemployed, labour force) per borough as LAUS counts them: without the unemployed not yet searching.

    ``employed``, ``unemployed``: the agents' counts per borough [B]. Returns float32 [B] each.
    """
    idle = jnp.minimum(st.not_searching, unemployed.astype(jnp.float32))
    u = unemployed.astype(jnp.float32) - idle
    return u, employed.astype(jnp.float32) + u


def transmit(cfg: EpidemicConfig, st: EpidemicState, p, key):
    d = st.disease
    infectious = d == I
    isolating = (st.iso_days > 0).astype(jnp.float32)
    keep = 1.0 - p["iso_effect"] * isolating  # share of non-household contact kept
    ones = jnp.ones(d.shape, jnp.float32)
    layers: dict[str, Layer] = p["layers"]
    beta = p["beta"]
    # relaxed: sums of the float I indicator of the infectious agents, so derivatives follow realised chains
    # (the pulls' reverse-mode rule is one dense pull per layer, see simcore.engine.ops._reverse_mode)
    src = st.soft[:, 2] if cfg.relaxed else ones
    active, cap = infectious, cfg.sparse_capacity
    foi_home = beta[0] * p["household_scale"] * layers["household"].pull(src, active, cap)
    foi_out = jnp.zeros(d.shape, jnp.float32)
    for i, name in enumerate(LAYERS[1:], start=1):
        scale = p[f"{name}_scale"]
        if cfg.contact_scales == "people":
            # the scale is the share of people who keep this layer's contacts (see stay_home_ranks): an
            # agent who stays home neither infects nor is infected there. Cutting whole contacts, not
            # each contact's rate, is what a closure does: a rate-scaled contact kept for days still
            # transmits almost surely when the rate is high (measured on the wave-1 forecast fits).
            goes = p["stay_rank"] < scale
            out = (_straight_through(goes, jnp.broadcast_to(jnp.clip(scale, 1e-6, 1.0), d.shape)) if cfg.relaxed
                   else goes.astype(jnp.float32))
            foi_out += beta[i] * out * layers[name].pull(out * keep * src, active, cap)
        else:
            foi_out += beta[i] * scale * layers[name].pull(keep * src, active, cap)
    foi = (foi_home + keep * foi_out) * p["susceptibility"][p["age_band"]]
    # One uniform per agent serves every disease transition: they are exclusive by state
    # (S infects, E progresses, I leaves), and I's death test reuses the same draw below its exit bar.
    u = uniform(key, d.shape)
    p_inf = 1.0 - jnp.exp(-foi)
    infected = (d == S) & (u < p_inf)
    p_ei, p_ir = p["p_ei"], p["p_ir"]
    to_i = (d == E) & (u < p_ei)
    leave = (d == I) & (u < p_ir)
    dies = leave & (u < p_ir * p["ifr"][p["age_band"]])
    soft = st.soft
    if cfg.relaxed:
        s_s, e_s, i_s = soft[:, 0], soft[:, 1], soft[:, 2]
        new_e = s_s * _straight_through(u < p_inf, p_inf)
        new_i = e_s * _straight_through(u < p_ei, jnp.broadcast_to(p_ei, d.shape))
        gone = i_s * _straight_through(u < p_ir, jnp.broadcast_to(p_ir, d.shape))
        soft = jnp.stack([s_s - new_e, e_s + new_e - new_i, i_s + new_i - gone], axis=1)
        onsets = jax.ops.segment_sum(new_i, p["group"], num_segments=st.onsets.shape[0])
    else:
        onsets = jax.ops.segment_sum(to_i.astype(jnp.float32), p["group"], num_segments=st.onsets.shape[0])
    d = jnp.where(infected, jnp.int8(E), d)
    d = jnp.where(to_i, jnp.int8(I), d)
    d = jnp.where(leave, jnp.where(dies, jnp.int8(M), jnp.int8(R)), d)
    flows = _flow(st.flows, p, 0, infected, reset=True)
    flows = _flow(flows, p, 1, dies)
    flows = _flow(flows, p, 2, to_i)
    return _replace(st, disease=d, flows=flows, onsets=onsets, soft=soft)


def _straight_through(hard: jax.Array, prob: jax.Array) -> jax.Array:
    """``hard`` (0/1) forward (p / p is exactly 1); backward, a realised event carries d log p, a failed one 0."""
    safe = jax.lax.stop_gradient(jnp.where(hard, prob, 1.0))  # hard implies prob > u >= 0
    return jnp.where(hard, prob / safe, 0.0)


def detection(p, day) -> jax.Array:
    """Share of symptomatic cases reported, on ``day``: ``detection_rate`` times a logistic ramp from ``floor``."""
    ramp = jax.nn.sigmoid((day - p["det_midpoint"]) / p["det_width"])
    return p["detection_rate"] * (p["det_floor"] + (1.0 - p["det_floor"]) * ramp)


def delay_kernel(mean, sd, days: int = DELAY_DAYS) -> jax.Array:
    """P(delay = s days), s = 0..days-1: a log-normal with ``mean`` and ``sd`` discretised as F(s+1) - F(s)."""
    sigma2 = jnp.log1p((sd / mean) ** 2)
    mu = jnp.log(mean) - sigma2 / 2
    edges = jnp.arange(1, days + 1, dtype=jnp.float32)
    cdf = jax.scipy.special.ndtr((jnp.log(edges) - mu) / jnp.sqrt(sigma2))
    pmf = jnp.diff(cdf, prepend=0.0)
    return pmf / cdf[-1]


def report(cfg: EpidemicConfig, st: EpidemicState, p, key):
    nb, na = cfg.n_boroughs, cfg.n_ages
    t = p["step"]
    by_borough = st.onsets.reshape(nb, na).sum(axis=1)
    detected = by_borough * detection(p, t.astype(jnp.float32))
    # reported cases: expected detections of new symptomatic cases, by borough (the behaviour signal)
    hist = st.case_hist.at[t % WINDOW].set(detected)
    onset_hist = st.onset_hist.at[t % DELAY_DAYS].set(st.onsets)
    det_hist = st.detected_hist.at[t % DELAY_DAYS].set(detected)
    # row (t - s) % DELAY_DAYS holds day t - s (zeros before day 0)
    order = (t - jnp.arange(DELAY_DAYS)) % DELAY_DAYS
    past_onsets = onset_hist[order].reshape(DELAY_DAYS, nb, na)
    delays = p["obs_delays"]
    k_rep, k_hosp, k_death = (delay_kernel(delays[i, 0], delays[i, 1]) for i in range(3))
    # the contractions as elementwise adds in a fixed order (_rows_sum), not matmuls: XLA blocks a
    # dot differently once replicates are batched under vmap, which changed the last bit
    by_age = jnp.moveaxis(past_onsets, -1, 0)  # [na, DELAY_DAYS, nb]
    cases = _rows_sum(k_rep[:, None] * det_hist[order])
    admissions = _rows_sum(k_hosp[:, None] * _rows_sum(by_age * p["ihr"][:, None, None]))
    deaths = _rows_sum(k_death[:, None] * _rows_sum(by_age * p["ifr"][:, None, None]))
    observed = jnp.stack([cases, admissions, deaths], axis=1)
    return _replace(st, case_hist=hist, onset_hist=onset_hist, detected_hist=det_hist, observed=observed)


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
    laus_u, laus_lf = laus_counts(st, employed.sum(axis=1), unemployed.sum(axis=1))
    out = {name: by_state[i] for i, name in enumerate(STATES)}
    out["new_infections"] = flows[..., 0].sum()
    out["new_deaths"] = flows[..., 1].sum()
    out["new_cases"] = flows[..., 2].sum()
    out["isolating_share"] = iso.sum() / jnp.maximum(alive.sum(), 1)
    out["unemployment_rate"] = unemployed.sum() / jnp.maximum(employed.sum() + unemployed.sum(), 1)
    for j, name in enumerate(OBSERVED):
        out[name] = st.observed[:, j].sum()
    for bi, name in enumerate(cfg.borough_labels):
        key = f"borough_{_slug(name)}"
        out[f"I__{key}"] = hist[bi, :, I].sum()
        out[f"new_infections__{key}"] = flows[bi, :, 0].sum()
        out[f"new_deaths__{key}"] = flows[bi, :, 1].sum()
        out[f"isolating_share__{key}"] = iso[bi].sum() / jnp.maximum(alive[bi].sum(), 1)
        out[f"unemployment_rate__{key}"] = unemployed[bi].sum() / jnp.maximum(employed[bi].sum() + unemployed[bi].sum(), 1)
        out[f"case_growth__{key}"] = st.growth[bi]
        out[f"labor_force__{key}"] = employed[bi].sum() + unemployed[bi].sum()
        out[f"unemployed__{key}"] = unemployed[bi].sum()
        out[f"laus_labor_force__{key}"] = laus_lf[bi]
        out[f"laus_unemployed__{key}"] = laus_u[bi]
        for j, obs in enumerate(OBSERVED):
            out[f"{obs}__{key}"] = st.observed[bi, j]
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
        "household_size": p["household_size"],
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
                "occupation": occupation_labels, "case_trend": TRENDS, "isolating": ("no", "yes"),
                "household_size": HOUSEHOLD_SIZES},
        features=features,
        stats=stats,
        decision_targets=DECISION_TARGETS,
        decision_logits=DECISION_TARGETS,  # both mapped on the device by llm_hazard
    )


def numeric_params(prm: dict) -> dict:
    """The device arrays read from the scenario's numeric epidemic parameters.

    ``prm`` is ``EpidemicParams.model_dump()``; any leaf may be a JAX tracer, so ``simcore.calibrate`` can
    differentiate the model's outputs with respect to any parameter read here.
    """
    f32 = lambda v: jnp.asarray(v, jnp.float32)  # noqa: E731
    iso, emp, obs, beta = prm["isolation"], prm["employment"], prm["observation"], prm["beta"]
    latent = f32(prm["latent_days"])
    delays = [obs[k] for k in ("report_delay", "hospital_delay", "death_delay")]
    return {
        "beta": jnp.stack([f32(beta[k]) for k in LAYERS]),
        "susceptibility": jnp.stack([f32(v) for v in prm["susceptibility"]]),
        "ifr": jnp.stack([f32(v) for v in prm["ifr"]]),
        "p_ei": jnp.where(latent > 0, 1.0 / jnp.maximum(latent, 1e-6), 1.0),
        "p_ir": 1.0 / f32(prm["infectious_days"]),
        "detection_rate": f32(prm["detection_rate"]),
        "iso_base": f32(iso["base"]), "iso_growth": f32(iso["growth"]), "iso_level": f32(iso["level"]),
        "iso_effect": f32(iso["effect"]), "iso_symptomatic": f32(iso["symptomatic"]),
        "loss_base": f32(emp["loss_base"]), "loss_lockdown": f32(emp["loss_lockdown"]),
        "loss_cases": f32(emp["loss_cases"]),
        "return_base": f32(emp["return_base"]), "return_drag": f32(emp["return_lockdown_drag"]),
        "not_searching": f32(emp["not_searching"]), "search_rate": 1.0 / f32(emp["search_delay_days"]),
        "borough_loss": jnp.stack([f32(v) for v in emp["borough_loss"]]),
        "ihr": jnp.stack([f32(v) for v in obs["ihr"]]),
        "det_floor": f32(obs["detection_floor"]), "det_midpoint": f32(obs["detection_midpoint"]),
        "det_width": f32(obs["detection_width"]),
        "obs_delays": jnp.stack([jnp.stack([f32(d["mean"]), f32(d["sd"])]) for d in delays]),
        # the answer-to-behaviour maps (model.params.llm_map.<target>.bias/slope), see llm_hazard
        **{f"llm_{t}_{k}": f32(prm["llm_map"][t][k]) for t in LLM_TARGETS for k in ("bias", "slope")},
    }


def soft_indicators(disease: jax.Array) -> jax.Array:
    """float32 [N, 3]: 1 where an agent is S, E, I (the relaxed mode's differentiable state)."""
    return jnp.stack([disease == S, disease == E, disease == I], axis=1).astype(jnp.float32)


def config(population, params, *, relaxed: bool = False) -> EpidemicConfig:
    """The static configuration for ``population`` and the scenario's EpidemicParams."""
    return EpidemicConfig(
        n_boroughs=len(population.labels["borough"]), n_ages=len(population.labels["age_band"]),
        n_occupations=len(population.labels["occupation"]),
        quarantine_days=params.isolation.quarantine_days, sparse_capacity=params.sparse_capacity,
        borough_labels=tuple(population.labels["borough"]), age_labels=tuple(population.labels["age_band"]),
        relaxed=relaxed, contact_scales=params.contact_scales,
    )


def baseline_labor(labor: np.ndarray, borough: np.ndarray, rates, seed: int) -> np.ndarray:
    """Labour states at step 0: the population's, or with ``rates`` (one per borough) each labour-force member
    unemployed with its borough's rate (a draw of its own stream, so nothing else the seed draws changes).

    Who is in the labour force is the population's; only employed vs unemployed is redrawn. The contact
    graph was built from the population's employment, so a worker redrawn as unemployed keeps a workplace
    the model no longer uses (as after a job loss) and one redrawn as employed has none: about the
    difference between the rates (1-2 % of workers for NYC in February 2020)."""
    if rates is None:
        return labor
    rates = np.asarray(rates, np.float64)  # one per borough (checked by the schema)
    u = np.random.default_rng([int(seed), 0x1AB0]).random(len(labor))
    in_force = labor != 0
    return np.where(in_force, np.where(u < rates[borough], 2, 1), 0).astype(labor.dtype)


def stay_home_ranks(n: int, seed: int) -> np.ndarray:
    """float32 [N] uniform ranks, one per agent for the whole run (a draw of its own stream): with
    ``contact_scales: people`` an agent keeps a layer's contacts on a day iff its rank is below the
    layer's scale, so a scale is the share of people still going out, and the same people stay home
    throughout an order (nested across layers: who skips work also skips the community)."""
    return np.random.default_rng([int(seed), 0x5747]).random(n).astype(np.float32)


def init(population, layers: dict, params, *, seed: int, occupation_sensitivity, occupation_labels=(),
         relaxed: bool = False):
    """State, array params and scheduled base values. ``params`` is the scenario's EpidemicParams."""
    attrs = population.attributes
    n = population.n
    nb = len(population.labels["borough"])
    na = len(population.labels["age_band"])
    cfg = config(population, params, relaxed=relaxed)
    disease = np.zeros(n, np.int8)
    disease[seed_infections(init_key(root_key(seed)), n, params.initial_infected)] = I
    group = (attrs["borough"].astype(np.int16) * na + attrs["age_band"]).astype(np.int8)
    state = EpidemicState(
        disease=jnp.asarray(disease),
        iso_days=jnp.zeros(n, jnp.int8),
        labor=jnp.asarray(baseline_labor(attrs["labor"], attrs["borough"], params.employment.baseline_unemployment,
                                         seed)),
        case_hist=jnp.zeros((WINDOW, nb), jnp.float32),
        growth=jnp.zeros(nb, jnp.float32),
        level=jnp.zeros(nb, jnp.float32),
        flows=jnp.zeros((nb * na, N_FLOWS), jnp.int32),
        onsets=jnp.zeros(nb * na, jnp.float32),
        onset_hist=jnp.zeros((DELAY_DAYS, nb * na), jnp.float32),
        detected_hist=jnp.zeros((DELAY_DAYS, nb), jnp.float32),
        observed=jnp.zeros((nb, len(OBSERVED)), jnp.float32),
        soft=soft_indicators(jnp.asarray(disease)) if relaxed else jnp.zeros((0, 3), jnp.float32),
        not_searching=jnp.zeros(nb, jnp.float32),
    )
    borough_pop = np.bincount(attrs["borough"], minlength=nb).astype(np.float32)
    f32 = lambda v: jnp.asarray(v, jnp.float32)  # noqa: E731
    arrays = {
        "borough": jnp.asarray(attrs["borough"]),
        "age_band": jnp.asarray(attrs["age_band"]),
        "occupation": jnp.asarray(attrs["occupation"]),
        "group": jnp.asarray(group),
        "household_size": jnp.asarray(household_size_band(attrs["household"], population.households)),
        "borough_pop": f32(np.maximum(borough_pop, 1)),
        "layers": {name: Layer.from_csr(layers[name]) for name in LAYERS},
        **numeric_params(params.model_dump()),
        "occ_sensitivity": f32(occupation_sensitivity),
        # per-agent answer logits from archetype decisions, filled between chunks; NaN = heuristic
        "isolate_llm": jnp.full(n, jnp.nan, jnp.float32),
        "work_llm": jnp.full(n, jnp.nan, jnp.float32),
    }
    if cfg.contact_scales == "people":  # 4 bytes per agent, only in this mode
        arrays["stay_rank"] = f32(stay_home_ranks(n, seed))
    base = {name: 1.0 for name in SCHEDULED}
    base["lockdown"] = 0.0
    return cfg, state, arrays, base


def interview_context(built, state, params, members, metrics, step: int) -> list[str]:
    """An interviewed agent's (or archetype's) surroundings at ``step``, in words (:mod:`simcore.interviews`).

    Its household (one agent: who lives with it and how they are) and its borough's reported cases over the
    last two weeks from the run's metrics, with the trend the model itself sees.
    """
    import numpy as np

    cfg_b = list(built.model.labels["borough"])
    borough = np.asarray(params["borough"])
    disease = np.asarray(state.disease)
    isolating = np.asarray(state.iso_days) > 0
    lines = []
    if len(members) == 1 and built.population is not None and "household" in built.population.attributes:
        hh = np.asarray(built.population.attributes["household"])
        agent = int(members[0])
        mates = np.flatnonzero(hh == hh[agent])
        mates = mates[mates != agent]
        if len(mates):
            counts = np.bincount(disease[mates], minlength=len(STATES))
            states = ", ".join(f"{n} {name}" for name, n in zip(("susceptible", "exposed", "infectious",
                                                                 "recovered", "dead"), counts) if n)
            lines.append(f"household: you live with {len(mates)} others ({states}; "
                         f"{int(isolating[mates].sum())} isolating)")
        else:
            lines.append("household: you live alone")
    shown = np.unique(borough[np.asarray(members)])
    trend = np.asarray(trend_bin(state.growth))
    for b in shown[:3]:
        name = cfg_b[int(b)]
        col = f"reported_cases__borough_{_slug(name)}"
        line = f"{name}: cases {TRENDS[int(trend[int(b)])]}"
        if metrics.height and col in metrics.columns:
            daily = metrics[col].to_numpy()
            last, prev = float(daily[-7:].sum()), float(daily[-14:-7].sum()) if len(daily) > 7 else float("nan")
            line += f", {last:.0f} reported cases in the last 7 days"
            if np.isfinite(prev):
                line += f" ({prev:.0f} the week before)"
        lines.append(line)
    return lines
