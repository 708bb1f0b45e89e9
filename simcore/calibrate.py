"""Calibrate an epidemic scenario to observed series, and forecast held-out weeks with intervals.

``simcore calibrate SCENARIO --observed nyc --window START:END --fit PARAM,...``

- **Parameters** (``--fit``): any numeric leaf of ``model.params`` by dotted path (``beta.community``,
  ``ifr.5``, ``observation.death_delay.mean``, ``initial_infected``; the ``model.params.`` prefix is optional),
  and the value of any scheduled intervention, ``interventions.<name or index>.value`` (a pause multiplier).
  Interventions are applied to the step-indexed schedule on device (:func:`schedule_rows`), so a fitted value
  is a tracer like any parameter: differentiable on the gradient path, vmapped in CMA-ES batches.
  They are optimised in an unconstrained space: logit for fields bounded to [0, 1], log for fields bounded
  below by 0, identity otherwise (bounds are read from the scenario schema by validating probe values).
  Every numeric parameter that :func:`simcore.models.epidemic.numeric_params` reads is a device array
  rebuilt from the (traced) values, so nothing recompiles between evaluations and derivatives exist.
- **Simulation**: the model's own substeps under ``lax.scan`` over chunks, each chunk under ``jax.checkpoint``
  (rematerialised in the backward pass, so memory grows with the number of chunks, not steps). Randomness
  is the engine's ``step_key(root, t)``; initial infections are the first ``round(f n)`` agents of the same
  permutation ``build`` uses, so a calibration's forward run equals ``simcore run`` at the same seed and size.
- **Gradient path** (``--method gradient``): the epidemic's relaxed mode (each Bernoulli draw becomes
  ``hard * p / stop_gradient(p)``: the exact stochastic forward pass, derivatives along realised events;
  biased low for transmission parameters, see ``simcore/models/epidemic.py``),
  ``jax.value_and_grad`` of the loss, optax Adam on the transformed parameters. The initial-infection
  fraction is differentiable the same way (each seed's indicator is ``1 + (f - stop_gradient(f)) / f``).
  Behaviour (isolation, job loss) is hard: its parameters get no gradient there; use the search path.
- **Search path with uncertainty** (``--method cmaes``): CMA-ES from the ``cmaes`` package (CyberAgent's,
  optuna's CMA backend: pure NumPy, one dependency, ask/tell; chosen over evosax, whose 0.3 line needs flax),
  each generation one vmapped batch of forward runs. Intervals: ABC rejection over every evaluated point
  (accept the ``accept`` fraction with the lowest loss, a sample from the ABC posterior at that tolerance);
  prediction bands come from re-running accepted points, each with a fresh seed, and taking the 10th-90th
  percentiles (an 80 % interval) of every weekly series.
- **Loss**: per series and borough, the squared NRMSE (RMSE / max of the observed weekly series), weighted
  (deaths 1, hospitalisations 1, cases 0.25: cases depend on testing) and averaged, plus monthly
  unemployment per borough (squared error in percentage points / 100, weight ``unemployment``). Simulated
  counts are per-capita rates scaled to each borough's census population.

Output directory: ``calibration.parquet`` (method, iteration, loss, parameters), ``posterior.parquet``,
``forecast.parquet`` (observed vs simulated with 80 % bands per week, series, borough), ``validation.parquet``
(:mod:`analysis.validation`), ``overlay.yaml`` (``simcore run SCENARIO --overlay overlay.yaml``), ``fit.png``
and ``summary.json``.
"""
from __future__ import annotations

import copy
import datetime as dt
import json
import math
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from scenarios import REGISTRY
from scenarios.loader import ScenarioError, apply_overrides
from scenarios.schema import Scenario

from .engine import init_key, root_key, step_key
from .models import build
from .models import epidemic as ep

SERIES = ("cases", "hospitalizations", "deaths")
BAND_DRAWS = 32  # posterior-predictive draws per band run (observation error and counting noise)
PRIOR_SD = 1.5  # the parameters' prior sd in free (log / logit) units: a factor e^1.5 = 4.5 either way
POSTERIOR_SEEDS = 4  # simulation seeds averaged in each posterior point's loss (see posterior_sample)
SHRINK_POINTS = 2  # amis: the last proposal's covariance counts as this many x (dimensions + 1) points
DEFAULT_WEIGHTS = {"cases": 0.25, "hospitalizations": 1.0, "deaths": 1.0, "unemployment": 1.0}
PREFIX = "model.params."


# -- parameters ----------------------------------------------------------------------
@dataclass(frozen=True)
class FitParam:
    path: str  # relative to model.params, e.g. "beta.community" or "ifr.5"
    start: float
    transform: str  # "logit", "log" or "identity"
    upper: float | None = None  # an upper bound other than 1 (clipped to in natural units)
    intervention: int | None = None  # an intervention's value: its index in scenario.interventions

    def to_free(self, v):
        xp = jnp if isinstance(v, jax.Array) else np
        if self.transform == "logit":
            v = xp.clip(v, 1e-6, 1 - 1e-6)
            return xp.log(v) - xp.log1p(-v)
        if self.transform == "log":
            return xp.log(xp.maximum(v, 1e-12))
        return v

    def to_natural(self, z):
        xp = jnp if isinstance(z, jax.Array) else np
        if self.transform == "logit":
            return 1.0 / (1.0 + xp.exp(-z))
        if self.transform == "log":
            v = xp.exp(z)
            return xp.minimum(v, self.upper) if self.upper is not None else v
        return z


def _leaf(tree, parts: Sequence[str], name: str):
    node = tree
    for part in parts:
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ScenarioError("--fit", f"{name}: list index {part!r} out of range (length {len(node)})")
            node = node[int(part)]
        elif isinstance(node, dict):
            if part not in node:
                known = ", ".join(sorted(node))
                raise ScenarioError("--fit", f"{name}: unknown parameter {part!r} (known here: {known})")
            node = node[part]
        else:
            raise ScenarioError("--fit", f"{name}: {part!r} is inside a number")
    return node


def _accepts(scenario: Scenario, path: str, value: float) -> bool:
    from pydantic import ValidationError

    data = apply_overrides(scenario.model_dump(mode="json"), [f"{PREFIX}{path}={value!r}"])
    try:
        Scenario.model_validate(data)
    except ValidationError:
        return False
    return True


NOT_ON_DEVICE = ("sparse_capacity",)  # numeric but not a model rate: changes cost, not dynamics


def resolve_fit(scenario: Scenario, names: str | Sequence[str]) -> list[FitParam]:
    """Check ``--fit`` names against the scenario and choose each one's transform."""
    if not REGISTRY.entry_for(scenario).calibrate:  # the registry entry says which models can be fitted
        fits = " or ".join(repr(e.kind) for e in REGISTRY if e.calibrate)
        raise ScenarioError("model.kind", f"calibrate needs model {fits}, got {scenario.model.kind!r}")
    items = [n.strip() for n in (names.split(",") if isinstance(names, str) else names)]
    if not items or any(not n for n in items):
        raise ScenarioError("--fit", f"expected a comma-separated list of parameters, got {names!r}")
    if len(set(items)) != len(items):
        raise ScenarioError("--fit", f"parameters listed twice in {names!r}")
    tree = scenario.model.params.model_dump()
    out = []
    for name in items:
        if name.startswith(IV_PREFIX):
            out.append(_resolve_intervention(scenario, name))
            continue
        path = name[len(PREFIX):] if name.startswith(PREFIX) else name
        value = _leaf(tree, path.split("."), name)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ScenarioError("--fit", f"{name}: not a number ({type(value).__name__}); list one leaf, e.g. "
                                         f"{name}.0" if isinstance(value, (list, dict)) else
                                f"{name}: not a number ({type(value).__name__})")
        if isinstance(value, int):
            raise ScenarioError("--fit", f"{name}: an integer parameter cannot be fitted continuously")
        if path in NOT_ON_DEVICE:
            raise ScenarioError("--fit", f"{name}: a performance setting, not a model parameter")
        lower = not _accepts(scenario, path, -1e-3)
        upper_one = not _accepts(scenario, path, 1.0 + 1e-3)
        transform = "logit" if (lower and upper_one) else ("log" if lower else "identity")
        upper = None
        if transform == "log":
            for cap in (10.0, 60.0, 100.0, 365.0, 1000.0):
                if not _accepts(scenario, path, cap + 1e-3):
                    upper = cap
                    break
        start = float(value)
        if transform == "logit" and not 0 < start < 1:
            start = min(max(start, 1e-4), 1 - 1e-4)
        if transform == "log" and start <= 0:
            start = 1e-4
        out.append(FitParam(path, start, transform, upper))
    ivs = [f.intervention for f in out if f.intervention is not None]
    if len(set(ivs)) != len(ivs):
        raise ScenarioError("--fit", f"an intervention's value is listed twice in {names!r}")
    return out


IV_PREFIX = "interventions."


def _resolve_intervention(scenario: Scenario, name: str) -> FitParam:
    """``interventions.<name or index>.value``: the value a scheduled intervention sets, multiplies or adds.

    Transforms: ``multiply`` -> log (a multiplier is >= 0), ``set`` -> logit when the value is in [0, 1] (the
    epidemic's scales and ``lockdown``), log when above 1, identity otherwise; ``add`` -> identity."""
    ivs = scenario.interventions
    parts = name[len(IV_PREFIX):].split(".")
    if len(parts) != 2:
        raise ScenarioError("--fit", f"{name}: expected interventions.<name or index>.value")
    key, attr = parts
    names = [iv.name for iv in ivs]
    if key.isdigit():
        if int(key) >= len(ivs):
            raise ScenarioError("--fit", f"{name}: intervention index {key} out of range (the scenario has "
                                         f"{len(ivs)})")
        idx = int(key)
    else:
        hits = [i for i, n in enumerate(names) if n == key]
        if not hits:
            known = ", ".join(n or f"#{i}" for i, n in enumerate(names)) or "none"
            raise ScenarioError("--fit", f"{name}: unknown intervention {key!r} (known: {known})")
        if len(hits) > 1:
            raise ScenarioError("--fit", f"{name}: {len(hits)} interventions are named {key!r}; use an index "
                                         f"({', '.join(map(str, hits))})")
        idx = hits[0]
    iv = ivs[idx]
    if attr in ("start", "end"):
        raise ScenarioError("--fit", f"{name}: an integer step cannot be fitted continuously; fit .value")
    if attr != "value":
        raise ScenarioError("--fit", f"{name}: only an intervention's value can be fitted, not {attr!r}")
    v = float(iv.value)
    if iv.mode == "multiply":
        transform = "log"
    elif iv.mode == "set":
        transform = "logit" if 0.0 <= v <= 1.0 else ("log" if v > 0 else "identity")
    else:
        transform = "identity"
    if transform == "logit":
        v = min(max(v, 1e-4), 1 - 1e-4)
    if transform == "log":
        v = max(v, 1e-4)
    label = iv.name if iv.name and names.count(iv.name) == 1 else str(idx)
    return FitParam(f"{IV_PREFIX}{label}.value", v, transform, None, idx)


def schedule_rows(base: dict, interventions, values: dict, steps: int) -> dict:
    """The schedule on device: ``base`` tables [steps, ...] edited by every intervention in order, as
    :func:`simcore.engine.build_schedule` does on the host, with ``values[i]`` (a float or a tracer) in place
    of intervention ``i``'s value where given; so a fitted value is differentiable and vmappable."""
    rows = dict(base)
    t = np.arange(steps)
    for i, iv in enumerate(interventions):
        table = rows[iv.param]
        v = values.get(i, float(iv.value))
        mask = ((t >= max(iv.start, 0)) & (t < min(iv.end, steps))).reshape((steps,) + (1,) * (table.ndim - 1))
        if iv.mode == "multiply":
            new = table * v
        elif iv.mode == "set":
            new = jnp.zeros_like(table) + v
        elif iv.mode == "add":
            new = table + v
        else:
            raise ScenarioError("interventions", f"{iv.name or iv.param}: unknown mode {iv.mode!r}")
        rows[iv.param] = jnp.where(jnp.asarray(mask), new.astype(table.dtype), table)
    return rows


def with_values(tree: dict, fits: Sequence[FitParam], values) -> dict:
    """A copy of the ``model.params`` dump with the fitted leaves replaced by ``values`` (floats or tracers)."""
    out = copy.deepcopy(tree) if not isinstance(values, jax.Array) else _copy_containers(tree)
    for f, v in zip(fits, values):
        if f.intervention is not None:
            continue
        *head, last = f.path.split(".")
        node = out
        for part in head:
            node = node[int(part)] if isinstance(node, list) else node[part]
        if isinstance(node, list):
            node[int(last)] = v
        else:
            node[last] = v
    return out


def _copy_containers(tree):
    if isinstance(tree, dict):
        return {k: _copy_containers(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_copy_containers(v) for v in tree]
    return tree


# -- observed targets --------------------------------------------------------------------
@dataclass
class Target:
    start: dt.date
    fit_end: dt.date
    end: dt.date  # last simulated day (>= fit_end; beyond it, weeks are held out)
    weekly: np.ndarray  # float64 [W, B, 3] observed per week, borough, series
    fit_weeks: int  # weeks 0..fit_weeks-1 are fitted
    unemployment: np.ndarray  # float64 [M, B] LAUS rate per month (0..1)
    months: list[tuple[int, int]]
    boroughs: tuple[str, ...]
    weights: dict = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))

    @property
    def days(self) -> int:
        return (self.end - self.start).days + 1

    @property
    def weeks(self) -> int:
        return self.weekly.shape[0]

    def week_starts(self) -> list[dt.date]:
        return [self.start + dt.timedelta(days=7 * w) for w in range(self.weeks)]


def load_target(observed: str, window: str, boroughs: Sequence[str], forecast_to: str | None = None,
                weights: dict | None = None) -> Target:
    from analysis import observed as obs

    try:
        start, fit_end = obs.parse_window(window)
    except obs.ObservedError as exc:
        raise ScenarioError(exc.field, exc.reason) from None
    end = fit_end
    if forecast_to:
        try:
            end = dt.date.fromisoformat(forecast_to)
        except ValueError:
            raise ScenarioError("--forecast-to", f"must be YYYY-MM-DD, got {forecast_to!r}") from None
        if end < fit_end:
            raise ScenarioError("--forecast-to", f"must be on or after the window's end {fit_end}, got {end}")
    try:
        daily = obs.load_daily(observed)
        obs.check_range(daily, start, fit_end)
        wk = obs.weekly(daily, start, end)
        laus = obs.monthly_unemployment(observed, start, end)
    except obs.ObservedError as exc:
        raise ScenarioError(exc.field, exc.reason) from None
    unknown = [b for b in boroughs if b not in obs.BOROUGHS]
    if unknown:
        raise ScenarioError("--observed", f"the population's borough {unknown[0]!r} is not in the observed data")
    n_weeks = int(wk["week"].max()) + 1
    arr = np.zeros((n_weeks, len(boroughs), 3))
    for bi, b in enumerate(boroughs):
        sub = wk.filter(wk["borough"] == b).sort("week")
        arr[:, bi, :] = sub.select(list(SERIES)).to_numpy()
    months = sorted({(int(y), int(m)) for y, m in zip(laus["year"], laus["month"])})
    un = np.zeros((len(months), len(boroughs)))
    for row in laus.iter_rows(named=True):
        un[months.index((row["year"], row["month"])), boroughs.index(row["borough"])] = row["rate"]
    fit_weeks = ((fit_end - start).days + 1) // 7
    return Target(start, fit_end, end, arr, fit_weeks, un, months, tuple(boroughs),
                  {**DEFAULT_WEIGHTS, **(weights or {})})


def month_masks(target: Target) -> np.ndarray:
    """float32 [M, T]: 1/days for the simulated days of each LAUS month (a month's mean; partial months use theirs)."""
    days = [target.start + dt.timedelta(days=t) for t in range(target.days)]
    out = np.zeros((len(target.months), len(days)), np.float32)
    for mi, (y, m) in enumerate(target.months):
        sel = np.array([(d.year, d.month) == (y, m) for d in days])
        if sel.any():
            out[mi, sel] = 1.0 / sel.sum()
    return out


# -- the differentiable problem --------------------------------------------------------------
@dataclass(frozen=True)
class DecisionTable:
    """One LLM decision's answers per round and archetype (``ArchetypePolicy.answer_table``), looked up on
    the device by :class:`Problem` where a run would ask the backend: the same value per archetype, the
    same per-agent noise (key and function of ``llm_policy.archetypes.broadcast``), at the same steps."""

    target: str  # the model parameter the decision fills, e.g. isolate_llm
    group_by: tuple[str, ...]
    levels: tuple[int, ...]
    values: np.ndarray  # float32 [rounds, prod(levels)]; NaN: the heuristic applies
    heterogeneity: float
    as_logit: bool
    index: int  # the decision's index in policy.decisions: its noise stream
    every: int
    lag: bool = False  # policy.pipelined: a round's answers, asked from its state, apply one cadence later


def llm_answers(scenario: Scenario, problem: "Problem", out: Path, *, backend: Any = None):
    """The scenario's LLM decisions as :class:`DecisionTable` s, asked once before a fit; with the policy.

    The policy is the run's (``simcore.session.make_archetype_policy``: its backend, prompts, content-free
    calibration and samples); its call log and response cache go to ``out`` (``llm_calls.parquet``,
    ``llm_cache.sqlite``) and its ``totals`` count the calls, tokens and seconds. No policy: ``([], None)``.
    """
    from .session import make_archetype_policy

    built = problem.built
    policy = make_archetype_policy(scenario, built, scenario.run.seed, backend=backend)
    if policy is None:
        return [], None
    try:
        policy.attach(out)
        rows = schedule_rows(problem.base_rows, problem.interventions, {}, problem.steps)
        schedule = {k: np.asarray(v) for k, v in rows.items()}  # the prompts' scheduled fields, at the scenario's values
        fixed = {problem.interventions[f.intervention].param for f in problem.fits if f.intervention is not None}
        tables = []
        for i, d in enumerate(scenario.policy.decisions):
            values = policy.answer_table(i, problem.steps, schedule, fixed)
            tables.append(DecisionTable(d.target, tuple(d.group_by), tuple(len(built.model.labels[f]) for f in d.group_by),
                                        values, float(d.heterogeneity), d.target in built.model.decision_logits, i,
                                        policy.every, bool(scenario.policy.pipelined)))
    finally:
        policy.close()
    return [t for t in tables if t.values.size], policy


class Problem:
    """A built (reduced) scenario, its observed target and the fitted parameters: loss and rollouts.

    ``answers``: the scenario's LLM decisions as tables (:func:`llm_answers`); without them the agents
    follow the heuristic hazards, as ``policy: null`` runs do.
    """

    def __init__(self, scenario: Scenario, target: Target, fits: Sequence[FitParam], *, relaxed: bool,
                 answers: Sequence[DecisionTable] = ()):
        self.scenario, self.target, self.fits = scenario, target, list(fits)
        self.relaxed = relaxed
        self.answers = list(answers)
        steps = target.days
        # built without interventions: the host schedule is then the base, and every intervention is applied
        # on device by schedule_rows (the same float32 arithmetic as build_schedule), so values can be fitted
        self.interventions = list(scenario.interventions)
        sc = scenario.model_copy(update={"run": scenario.run.model_copy(update={"steps": steps}),
                                         "output": scenario.output.model_copy(update={"sample_agents": 0}),
                                         "interventions": []})
        built = build(sc)
        for i, iv in enumerate(self.interventions):
            if iv.param not in built.schedule:
                raise ScenarioError(f"interventions[{i}].param", f"unknown parameter {iv.param!r} (scheduled: "
                                                                 f"{', '.join(sorted(built.schedule))})")
        self.built = built
        pop = built.population
        prm = sc.model.params
        self.tree = prm.model_dump()
        self.cfg = ep.config(pop, prm, relaxed=relaxed)
        self.model = ep.make_model(self.cfg, tuple(pop.labels["occupation"]))
        self.n = built.n_agents
        self.steps = steps
        self.chunk = max(d for d in range(1, min(steps, 32) + 1) if steps % d == 0)
        self.base_rows = {k: jnp.asarray(np.asarray(v[:steps], np.float32)) for k, v in built.schedule.items()}
        b = pop.attributes["borough"]
        counts = np.bincount(b, minlength=len(target.boroughs)).astype(np.float64)
        self.scale = jnp.asarray(pop.tables.borough_population / np.maximum(counts, 1), jnp.float32)  # [B]
        self.months = jnp.asarray(month_masks(target))
        self.base_state = built.state
        w = target.weights
        self.series_w = jnp.asarray([w["cases"], w["hospitalizations"], w["deaths"]], jnp.float32)
        self.series_total = float(w["cases"] + w["hospitalizations"] + w["deaths"])
        obs = target.weekly[: target.fit_weeks]
        self.obs_fit = jnp.asarray(obs, jnp.float32)
        self.obs_max = jnp.asarray(np.maximum(obs.max(axis=0), 1.0), jnp.float32)  # [B, 3]
        fit_months = [i for i, (y, m) in enumerate(target.months) if dt.date(y, m, 1) <= target.fit_end]
        self.fit_months = np.asarray(fit_months, np.int32)
        self._rollout = jax.jit(self._rollout_impl)
        self._loss_grad = None

    # initial state for fraction f and a seed's permutation (the same agents as build at that seed)
    def _initial(self, f, seed_key):
        st = self.base_state
        n = self.n
        perm = jax.random.permutation(seed_key, n)
        rank = jnp.zeros(n, jnp.int32).at[perm].set(jnp.arange(n, dtype=jnp.int32))
        k = jnp.maximum(1, jnp.round(jax.lax.stop_gradient(f) * n)).astype(jnp.int32)
        seeded = rank < k
        disease = jnp.where(seeded, jnp.int8(ep.I), jnp.int8(ep.S))
        soft = st.soft
        if self.relaxed:
            i_soft = jnp.where(seeded, 1.0 + (f - jax.lax.stop_gradient(f)) / jax.lax.stop_gradient(f), 0.0)
            soft = jnp.stack([1.0 - i_soft, jnp.zeros(n, jnp.float32), i_soft], axis=1).astype(jnp.float32)
        return replace(st, disease=disease, soft=soft)

    def natural(self, z) -> list:
        return [f.to_natural(z[i]) for i, f in enumerate(self.fits)]

    def _rollout_impl(self, z, seed):
        """Daily expected observables [T, B, 3] and (unemployed, labour force) [T, B, 2] for free params ``z``."""
        values = self.natural(z)
        tree = with_values(self.tree, self.fits, values)
        iv_values = {f.intervention: v for f, v in zip(self.fits, values) if f.intervention is not None}
        rows = schedule_rows(self.base_rows, self.interventions, iv_values, self.steps)
        rows = {k: v.reshape((-1, self.chunk) + v.shape[1:]) for k, v in rows.items()}
        params = {**self.built.params, **ep.numeric_params(tree)}
        f0 = tree["initial_infected"]
        root = root_key(seed)
        state = self._initial(jnp.asarray(f0, jnp.float32), init_key(root))
        model = self.model
        nb = self.cfg.n_boroughs

        answers = self.answers
        targets = tuple(a.target for a in answers)

        def step(carry, xs):
            state, current, asked = carry
            t, row = xs
            p = {**params, **row, "step": t}
            if answers:  # an LLM round where a run has one: before the step, from the state the step starts from
                every = answers[0].every
                current, asked = jax.lax.cond(t % every == 0, lambda: self._llm_round(state, p, t, root, current, asked),
                                              lambda: (current, asked))
                p = {**p, **dict(zip(targets, current))}
            state = model.step(state, p, step_key(root, t))
            code = p["borough"].astype(jnp.int32) * 3 + state.labor
            labor = jnp.bincount(code, length=nb * 3).reshape(nb, 3)
            return (state, current, asked), (state.observed,
                                             jnp.stack(ep.laus_counts(state, labor[:, 1], labor[:, 2]), 1))

        @jax.checkpoint
        def chunk(carry, xs):
            return jax.lax.scan(step, carry, xs)

        ts = jnp.arange(self.steps, dtype=jnp.int32).reshape(-1, self.chunk)
        current = tuple(jnp.asarray(params[t_], jnp.float32) for t_ in targets)
        # pipelined rounds: each decision's archetype codes when its pending round was asked
        asked = tuple(jnp.zeros(self.n, jnp.int32) for a in answers if a.lag)
        _, (obs, labor) = jax.lax.scan(chunk, (state, current, asked), (ts, rows))
        return obs.reshape(self.steps, nb, 3), labor.reshape(self.steps, nb, 2).astype(jnp.float32)

    def _llm_round(self, state, p, t, root, current, asked):
        """Each decision's per-agent values at round step ``t`` (its table row, looked up by archetype code) and
        the codes a pipelined round asks with. As ``ArchetypePolicy.update``: without ``pipelined`` the round
        asked now applies now; with it, the round asked one cadence ago applies now (none at step 0), with
        the archetypes its agents had then, and this round's codes wait for the next."""
        from llm_policy.archetypes import archetype_code, broadcast_table

        feats = self.model.features(state, p)
        out, now = [], []
        pending = iter(asked)
        for a, cur in zip(self.answers, current):
            code = archetype_code([feats[name] for name in a.group_by], a.levels)
            use, r = (next(pending), t // a.every - 1) if a.lag else (code, t // a.every)
            table = jnp.asarray(a.values)[jnp.maximum(r, 0)]
            key = jax.random.fold_in(step_key(root, t), 0x4C4C4D + a.index)  # as ArchetypePolicy._set
            value = broadcast_table(table, use, key, jnp.float32(a.heterogeneity), logit=a.as_logit)
            out.append(jnp.where(r >= 0, value, cur))
            if a.lag:
                now.append(code)
        return tuple(out), tuple(now)

    def weekly_sim(self, daily):
        """Daily per-agent counts -> weekly counts scaled to each borough's census population [W, B, 3]."""
        w = self.target.weeks
        xp = jnp if isinstance(daily, jax.Array) else np
        scale = self.scale if xp is jnp else np.asarray(self.scale)
        return daily[: 7 * w].reshape(w, 7, *daily.shape[1:]).sum(axis=1) * scale[None, :, None]

    def monthly_unemployment(self, labor):
        """LAUS-style monthly rate per borough: mean unemployed / mean labour force over the month's days."""
        xp = jnp if isinstance(labor, jax.Array) else np
        m = self.months if xp is jnp else np.asarray(self.months)
        u, lf = m @ labor[..., 0], m @ labor[..., 1]
        return u / xp.maximum(lf, 1.0)

    def loss_from(self, daily, labor):
        loss = jnp.float32(0.0)
        if self.series_total > 0:  # all three weighted 0: a fit of unemployment alone
            sim = self.weekly_sim(daily)[: self.target.fit_weeks]
            rmse = jnp.sqrt(jnp.mean((sim - self.obs_fit) ** 2, axis=0))  # [B, 3]
            nrmse2 = (rmse / self.obs_max) ** 2
            loss = jnp.sum(jnp.mean(nrmse2, axis=0) * self.series_w) / self.series_total
        if len(self.fit_months):
            un = self.monthly_unemployment(labor)[self.fit_months]
            obs_un = jnp.asarray(self.target.unemployment[self.fit_months], jnp.float32)
            loss = loss + self.target.weights["unemployment"] * jnp.mean(((un - obs_un) * 10.0) ** 2)
        return loss

    def loss(self, z, seeds):
        """Mean loss over ``seeds`` (vmapped forward runs)."""
        daily, labor = jax.vmap(lambda s: self._rollout_impl(z, s))(seeds)
        return jnp.mean(jax.vmap(self.loss_from)(daily, labor))

    def rollout(self, z, seed: int):
        return self._rollout(jnp.asarray(z, jnp.float32), jnp.int32(seed))

    def value_and_grad(self, z, seeds):
        if self._loss_grad is None:
            self._loss_grad = jax.jit(jax.value_and_grad(self.loss))
        return self._loss_grad(jnp.asarray(z, jnp.float32), jnp.asarray(seeds, jnp.int32))

    def batch_loss(self, zs, seeds):
        """Losses of several parameter points (one vmapped batch): ``seeds`` one per point, or one for all."""
        if not hasattr(self, "_batch"):
            def one(z, s):
                d, lab = self._rollout_impl(z, s)
                return self.loss_from(d, lab)
            self._batch = jax.jit(jax.vmap(one))
        seeds = np.broadcast_to(np.asarray(seeds, np.int32), (len(zs),))
        return np.asarray(self._batch(jnp.asarray(zs, jnp.float32), jnp.asarray(seeds)))

    def batch_rollout(self, zs, seeds):
        if not hasattr(self, "_brollout"):
            self._brollout = jax.jit(jax.vmap(self._rollout_impl))
        d, lab = self._brollout(jnp.asarray(zs, jnp.float32), jnp.asarray(seeds, jnp.int32))
        return np.asarray(d), np.asarray(lab)


# -- the two paths ----------------------------------------------------------------------------------
@dataclass
class Fit:
    method: str
    z: np.ndarray
    history: list[dict]
    posterior: np.ndarray | None = None  # [K, P] free parameters accepted by ABC
    seconds: float = 0.0
    points: np.ndarray | None = None  # [E, P] every evaluated free point, in order (CMA-ES)
    popsize: int = 0


def fit_gradient(problem: Problem, *, iterations: int = 60, lr: float = 0.1, seeds: Sequence[int] = (0,),
                 z0=None, log=None) -> Fit:
    import optax

    t0 = time.perf_counter()
    z = jnp.asarray(z0 if z0 is not None else [f.to_free(f.start) for f in problem.fits], jnp.float32)
    opt = optax.adam(lr)
    state = opt.init(z)
    history, best = [], (math.inf, np.asarray(z))
    for it in range(iterations):
        loss, g = problem.value_and_grad(z, seeds)
        loss = float(loss)
        history.append(_record("gradient", it, loss, problem, np.asarray(z), grad_norm=float(jnp.linalg.norm(g))))
        if log:
            log(history[-1])
        if loss < best[0]:
            best = (loss, np.asarray(z))
        if not np.all(np.isfinite(np.asarray(g))):
            break
        updates, state = opt.update(g, state, z)
        z = optax.apply_updates(z, updates)
    return Fit("gradient", best[1], history, seconds=time.perf_counter() - t0)


def fit_cmaes(problem: Problem, *, generations: int = 15, popsize: int = 8, sigma: float = 0.5, seed: int = 0,
              sim_seed: int = 0, accept: float = 0.15, z0=None, log=None) -> Fit:
    """CMA-ES (``seed`` drives its sampling) on the loss of forward runs at ``sim_seed``; ABC-accepted points."""
    from cmaes import CMA

    t0 = time.perf_counter()
    mean = np.asarray(z0 if z0 is not None else [f.to_free(f.start) for f in problem.fits], np.float64)
    opt = CMA(mean=mean, sigma=sigma, population_size=popsize, seed=seed)
    history, points = [], []
    it = 0
    for gen in range(generations):
        zs = np.stack([opt.ask() for _ in range(opt.population_size)])
        losses = problem.batch_loss(zs, sim_seed)
        losses = np.where(np.isfinite(losses), losses, 1e6)
        opt.tell(list(zip(zs, losses)))
        for z, loss in zip(zs, losses):
            history.append(_record("cmaes", it, float(loss), problem, z, generation=gen))
            points.append((float(loss), z))
            it += 1
        if log:
            log(min(history[-len(zs):], key=lambda r: r["loss"]))
    evaluated = np.stack([p[1] for p in points])
    points.sort(key=lambda p: p[0])
    k = max(2, int(round(accept * len(points))))
    post = np.stack([p[1] for p in points[:k]])
    return Fit("cmaes", points[0][1], history, post, seconds=time.perf_counter() - t0, points=evaluated,
               popsize=popsize)


# -- posterior and predictive bands ------------------------------------------------------------------------
def effective_points(residuals: np.ndarray) -> float:
    """Effective number of independent residuals in [W, ...] (weeks, then boroughs x series): the weeks' AR(1)
    count W (1 - rho) / (1 + rho) times the columns' design effect C / (1 + (C - 1) rho_c).

    rho: lag-1 autocorrelation pooled over the columns; rho_c: the mean correlation between two columns
    (uncentred: a bias the boroughs share counts as shared). Both clipped to [0, 0.95]. The boroughs' errors
    are mostly the city's (one transmission, one pause), so five boroughs are far fewer than five
    independent measurements, and counting them as five would make the posterior too narrow."""
    r = np.asarray(residuals, np.float64)
    w = r.shape[0]
    cols = r.reshape(w, -1)
    c = cols.shape[1]
    rho = 0.0
    if w >= 3:
        a, b = cols[1:].ravel(), cols[:-1].ravel()
        rho = float(np.sum(a * b) / max(np.sqrt(np.sum(a * a) * np.sum(b * b)), 1e-300))
    rho = min(max(rho, 0.0), 0.95)
    rho_c = 0.0
    if c >= 2:
        unit = cols / np.maximum(np.sqrt(np.sum(cols ** 2, axis=0)), 1e-300)
        gram = unit.T @ unit
        rho_c = float((gram.sum() - np.trace(gram)) / (c * (c - 1)))
    rho_c = min(max(rho_c, 0.0), 0.95)
    return w * (1 - rho) / (1 + rho) * c / (1 + (c - 1) * rho_c)


def log_target(losses, zs, loss_ref: float, n_eff: float, prior_mean, prior_sd: float) -> np.ndarray:
    """Unnormalised log posterior of free points ``zs``: the likelihood exp(-n_eff (L - L_ref) / (2 L_ref)) times
    a Gaussian prior N(prior_mean, prior_sd²) per free coordinate.

    The likelihood is that of the normalised residuals with their variance profiled at the best fit (the loss is
    a weighted mean of squared NRMSEs, so the best point's loss L_ref estimates it; :func:`posterior_sample`
    averages it over fresh seeds) and ``n_eff`` independent points. The prior is
    proper so that a parameter the window cannot identify (how fast isolation wanes after the peak) keeps its
    prior spread instead of an improper flat one, and the forecast carries that spread."""
    zs = np.asarray(zs, np.float64)
    log_l = -n_eff * (np.asarray(losses, np.float64) - loss_ref) / (2 * max(loss_ref, 1e-12))
    log_prior = -0.5 * np.sum(((zs - np.asarray(prior_mean, np.float64)) / prior_sd) ** 2, axis=1)
    return np.where(np.isfinite(log_l), log_l + log_prior, -np.inf)


def _log_normal_pdf(zs: np.ndarray, mean: np.ndarray, cov: np.ndarray) -> np.ndarray:
    d = zs - mean
    chol = np.linalg.cholesky(cov)
    sol = np.linalg.solve(chol, d.T)
    return -0.5 * np.sum(sol ** 2, axis=0) - np.sum(np.log(np.diag(chol))) - 0.5 * len(mean) * np.log(2 * np.pi)


def normalised(log_w: np.ndarray) -> np.ndarray:
    """Weights from log weights (-inf: none), summing to 1."""
    w = np.exp(log_w - log_w.max())
    return w / w.sum()


def tempered_weights(log_w: np.ndarray, min_ess: float) -> np.ndarray:
    """Normalised weights exp(beta x log_w) with the largest beta in [0, 1] whose ESS reaches ``min_ess``
    (bisection): the flattest change that keeps a proposal's moments from resting on a few heavy points."""
    def weights(beta):
        return normalised(np.where(np.isfinite(log_w), beta * log_w, -np.inf))

    w = weights(1.0)
    if 1.0 / np.sum(w ** 2) >= min_ess:
        return w
    lo, hi = 0.0, 1.0
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        if 1.0 / np.sum(weights(mid) ** 2) >= min_ess:
            lo = mid
        else:
            hi = mid
    return weights(lo)


def pareto_khat(log_w: np.ndarray) -> tuple[float, float]:
    """The Pareto k-hat diagnostic of importance weights and its sample-size threshold (Vehtari, Simpson,
    Gelman, Yao & Gabry 2024, "Pareto smoothed importance sampling", JMLR 25(72)): the shape k of a generalised
    Pareto distribution fitted to the ceil(min(S / 5, 3 sqrt(S))) largest weights' excess over the next one.
    1 / k estimates how many moments the weights have; above min(1 - 1 / log10 S, 0.7) the weighted sample
    does not stand for the target whatever its ESS says (the proposals missed where the target has mass),
    and the bands built from it are too narrow. Fitted by maximum likelihood (scipy; the paper uses Zhang and
    Stephens' estimator), which reads a tail that is Pareto only asymptotically low: 0.34-0.87 for the 1.33
    of N(0, 1) weighted against N(0, 0.5²), 2,000 points (tests). Returns (k, threshold); k is inf when one
    weight holds everything, nan below 25 points (too few for a tail)."""
    from scipy.stats import genpareto

    w = np.sort(np.exp(log_w - np.max(log_w)))  # a point of no weight (-inf) counts, as a 0
    s = len(w)
    m = int(np.ceil(min(0.2 * s, 3 * np.sqrt(s))))
    threshold = min(1.0 - 1.0 / np.log10(max(s, 11)), 0.7)
    if m < 5:
        return float("nan"), threshold
    excess = w[-m:] - w[-m - 1]
    if not np.any(excess > 0):
        return 0.0, threshold  # equal weights: the lightest possible tail
    if np.count_nonzero(w[:-1]) == 0:
        return float("inf"), threshold
    k, _, _ = genpareto.fit(excess / excess.max(), floc=0.0)
    return float(k), threshold


def posterior_verdict(k: float | None, threshold: float) -> tuple[bool, str]:
    """Whether a weighted sample with Pareto k-hat ``k`` (:func:`pareto_khat`) can be trusted, and what to do,
    after Vehtari et al. (2024): below the sample-size threshold it can; up to 0.7 more points would make it
    so (about 10^(1 / (1 - k)) of them, the paper's minimum sample size); from 0.7 on no feasible number
    would: the proposals missed where the posterior has mass, and bands drawn from it are too narrow."""
    if k is None or math.isnan(k):
        return True, "too few points to judge the weights' tail"
    if k <= threshold:
        return True, "reliable"
    if k < 0.7:
        return False, (f"too few points for this tail: about {math.ceil(10 ** (1 / (1 - k)))} would do "
                       "(--posterior-min-ess, --posterior-max-runs)")
    return False, "the proposals missed where the posterior has mass: the bands are too narrow"


def amis(log_target_fn, mean, cov, *, rounds: int, per_round: int, rng: np.random.Generator,
         min_ess: float = 0.0, max_rounds: int | None = None) -> dict:
    """Adaptive multiple importance sampling (Cornuet et al. 2012): each round draws ``per_round`` points from a
    Gaussian fitted to the weighted sample so far, and every point is weighted against the mixture of all the
    proposals used (deterministic-mixture weights), so no round's draws are wasted.

    ``log_target_fn(zs) -> log density`` (unnormalised). The next proposal's mean and covariance are the
    sample's moments under the weights tempered (:func:`tempered_weights`) to an ESS of at least
    max(2 (d + 1), n / 4) of the n points, at most n / 2: with a first proposal too narrow or off-centre the
    heavy points sit at its edge, so the tempered moments move and widen it round by round, where the raw
    weights would collapse it onto one point. The covariance is shrunk towards the last proposal's, which
    counts as ``SHRINK_POINTS`` x (d + 1) points: measured on a 12-dimensional Gaussian posterior with 96
    points (16 a round), starting from the exact posterior, the median ESS over 8 streams was 6 of 96
    with the raw sample covariance and 51 with the shrunk one (with 1 nat of noise on the log target:
    18 and 43). After ``rounds`` rounds it goes on, a round at a time, while the ESS is below ``min_ess``,
    up to ``max_rounds`` in all. Returns every point, its log target, the (untempered) normalised weights,
    the ESS, the Pareto k-hat of the weights with its threshold (:func:`pareto_khat`), the rounds run
    and the proposals used."""
    mean, cov = np.asarray(mean, np.float64), np.asarray(cov, np.float64)
    d = len(mean)
    zs = np.empty((0, d))
    lt = np.empty(0)
    comps: list[tuple[np.ndarray, np.ndarray, int]] = []
    log_w = np.empty(0)
    max_rounds = rounds if max_rounds is None else max(rounds, max_rounds)
    done, ess = 0, 0.0
    while done < rounds or (ess < min_ess and done < max_rounds):
        done += 1
        new = rng.multivariate_normal(mean, cov, size=per_round)
        zs = np.concatenate([zs, new])
        lt = np.concatenate([lt, np.asarray(log_target_fn(new), np.float64)])
        comps.append((mean, cov, per_round))
        n = len(zs)
        log_q = np.logaddexp.reduce(np.stack([np.log(k / n) + _log_normal_pdf(zs, m, c) for m, c, k in comps]),
                                    axis=0)
        log_w = np.where(np.isfinite(lt), lt - log_q, -np.inf)
        t = tempered_weights(log_w, min(max(2.0 * (d + 1), n / 4), n / 2))
        ess_t = 1.0 / np.sum(t ** 2)
        mean = t @ zs
        dz = zs - mean
        # a covariance from a few effective points in d dimensions is mostly noise (16 points in 12 dimensions
        # give eigenvalues from near 0 to several times the truth, and a proposal narrow in some direction
        # makes the next points' weights explode): the last proposal's covariance counts as SHRINK_POINTS x
        # (d + 1) points more, so the estimate moves towards the sample's as the sample grows
        prior_points = SHRINK_POINTS * (d + 1)
        cov = (ess_t * ((t[:, None] * dz).T @ dz) + prior_points * cov) / (ess_t + prior_points) + 1e-9 * np.eye(d)
        ess = float(1.0 / np.sum(normalised(log_w) ** 2)) if np.isfinite(log_w).any() else 0.0
    w = normalised(log_w)
    k_hat, k_max = pareto_khat(log_w)
    return {"z": zs, "log_target": lt, "weights": w, "ess": ess, "rounds": done, "pareto_k": k_hat,
            "pareto_k_threshold": k_max, "proposals": [(m, c) for m, c, _ in comps]}


def systematic_resample(weights: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """``k`` indices drawn in proportion to ``weights`` (systematic resampling: low variance)."""
    c = np.cumsum(weights)
    c[-1] = 1.0
    return np.searchsorted(c, (rng.random() + np.arange(k)) / k)


def laplace_proposal(points: np.ndarray, losses: np.ndarray, best_z: np.ndarray, loss_ref: float, n_eff: float,
                     prior_sd: float) -> np.ndarray:
    """A Gaussian approximation of :func:`log_target`'s covariance around ``best_z``, from losses already computed
    (CMA-ES's): a quadratic fitted by least squares to the better half of them (the full quadratic when there
    are four times as many points as its coefficients, else the diagonal one), its Hessian projected onto the
    positive semi-definite cone (a flat or saddle direction carries no information), scaled as
    :func:`log_target` scales the loss, plus the prior's precision.

    Why not CMA-ES's own covariance: it is the search's step, not the posterior's width. On New York's wave 1
    the loss is nearly flat in most of its twelve directions, where the posterior is the prior's width
    (1.5) and the search's was about 0.15, so proposals from the search weighted a few points at their edge
    (ESS 1-6 of 97)."""
    points, losses = np.asarray(points, np.float64), np.asarray(losses, np.float64)
    ok = np.isfinite(losses)
    points, losses = points[ok], losses[ok]
    p = len(best_z)
    full = 1 + p + p * (p + 1) // 2
    diag_only = len(points) < 4 * full
    n_coef = 1 + 2 * p if diag_only else full
    keep = np.argsort(losses)[: max(len(points) // 2, min(len(points), 2 * n_coef))]
    dz, y = points[keep] - best_z, losses[keep]
    iu = np.triu_indices(p)
    quad = dz ** 2 if diag_only else (dz[:, :, None] * dz[:, None, :])[:, iu[0], iu[1]]
    coef, *_ = np.linalg.lstsq(np.hstack([np.ones((len(dz), 1)), dz, quad]), y, rcond=None)
    h = np.zeros((p, p))
    if diag_only:
        h[np.diag_indices(p)] = 2 * coef[1 + p:]
    else:
        h[iu] = coef[1 + p:]
        h = h + h.T  # d²/dz_i² of c z_i² is 2c; d²/dz_i dz_j of c z_i z_j is c
    vals, vecs = np.linalg.eigh(h)
    h = (vecs * np.maximum(vals, 0.0)) @ vecs.T
    prec = n_eff * h / (2 * max(loss_ref, 1e-12)) + np.eye(p) / prior_sd ** 2
    return np.linalg.inv(prec)


def posterior_sample(problem: "Problem", best_z, cmaes_fit: Fit | None, *, proposals: int, draws: int,
                     sim_seed: int, rng: np.random.Generator, batch: int = 8, rounds: int | None = None,
                     prior_sd: float = PRIOR_SD, seeds: int = POSTERIOR_SEEDS, min_ess: float = 0.0,
                     max_proposals: int | None = None) -> dict:
    """The parameter posterior (:func:`log_target`, prior centred on the scenario's values), sampled by
    :func:`amis` in ``rounds`` rounds of ``proposals / rounds`` points (default: rounds of at least 16, at
    most 6 rounds), starting from :func:`laplace_proposal` on CMA-ES's evaluations. While the ESS is below
    ``min_ess`` it adds rounds of the same size, up to ``max_proposals`` points in all (default: 3 x
    ``proposals``): the ESS one budget reaches differs between fits (6-58 of 96 on wave 1's), and a
    sample resting on a few points gives bands whose coverage is chance.

    Every point's loss is the mean over ``seeds`` simulation seeds that the search did not use (the same ones
    for every point, so their differences are the parameters'), and so is the reference loss, at the best
    point. Why: the search minimised one seed's loss, and a 100k-agent epidemic's early weeks are chance. On
    wave 1 (seed 0's fit, loss 0.032) the same point scored 0.06-0.45 on seeds 1-7, so the single-seed
    minimum took the seed's luck for the model's error: it made the likelihood about five times too sharp,
    and the noise of single-seed losses (1.6 nats between points 0.03 apart) decided the weights.
    ``n_eff`` comes from the best fit's residuals (:func:`effective_points`). Returns ``draws`` resampled free
    points and the diagnostics."""
    best_z = np.asarray(best_z, np.float64)
    if cmaes_fit is None or cmaes_fit.points is None or len(cmaes_fit.points) < 2 * cmaes_fit.popsize:
        return {"z": np.repeat(best_z[None], draws, 0), "ess": 1.0, "n_eff": None, "proposals": 0}
    d, _ = problem.rollout(np.asarray(best_z, np.float32), sim_seed)
    sim = problem.weekly_sim(np.asarray(d))[: problem.target.fit_weeks]
    obs = np.asarray(problem.obs_fit)
    n_eff = effective_points((sim - obs) / np.asarray(problem.obs_max)[None])
    fresh = np.arange(sim_seed + 1, sim_seed + 1 + seeds)

    def seed_losses(zs):  # [points, seeds]: every (point, seed) pair a row of the same batches
        rows = _padded_losses(problem, np.repeat(zs, seeds, 0), np.tile(fresh, len(zs)), batch)
        return rows.reshape(len(zs), seeds)

    per_seed = seed_losses(best_z[None])[0]
    loss_ref = float(per_seed.mean())
    prior_mean = np.asarray([f.to_free(f.start) for f in problem.fits], np.float64)
    cma_losses = np.asarray([r["loss"] for r in cmaes_fit.history], np.float64)
    cov = laplace_proposal(cmaes_fit.points, cma_losses, best_z, loss_ref, n_eff, prior_sd)
    losses: list[np.ndarray] = []

    def target(zs):
        loss = seed_losses(zs).mean(axis=1)
        losses.append(loss)
        return log_target(loss, zs, loss_ref, n_eff, prior_mean, prior_sd)

    rounds = max(1, min(6, proposals // 16)) if rounds is None else max(1, min(rounds, proposals))
    per_round = -(-proposals // rounds)
    cap = 3 * proposals if max_proposals is None else max(max_proposals, proposals)
    out = amis(target, best_z, cov, rounds=rounds, per_round=per_round, rng=rng, min_ess=min_ess,
               max_rounds=max(rounds, cap // per_round))
    idx = systematic_resample(out["weights"], draws, rng)
    return {"z": out["z"][idx], "ess": out["ess"], "n_eff": float(n_eff), "proposals": len(out["z"]),
            "rounds": out["rounds"], "pareto_k": out["pareto_k"], "pareto_k_threshold": out["pareto_k_threshold"],
            "loss_ref": loss_ref, "loss_ref_seeds": per_seed.tolist(), "seeds": fresh.tolist(),
            "all_z": out["z"], "losses": np.concatenate(losses), "weights": out["weights"]}


def _padded_losses(problem: "Problem", zs: np.ndarray, seeds, batch: int) -> np.ndarray:
    """batch_loss in batches of exactly ``batch`` (the last padded with its first row): one compiled shape,
    and never a vmap of size 1 (the engine's sparse-pull switch mis-shapes one). ``seeds``: one per point, or
    one for all."""
    seeds = np.broadcast_to(np.asarray(seeds, np.int64), (len(zs),))
    out = []
    for i in range(0, len(zs), batch):
        chunk, chunk_seeds = zs[i:i + batch], seeds[i:i + batch]
        pad = batch - len(chunk)
        out.append(problem.batch_loss(np.concatenate([chunk, np.repeat(chunk[:1], pad, 0)]),
                                      np.concatenate([chunk_seeds, np.repeat(chunk_seeds[:1], pad)]))[: len(chunk)])
    return np.concatenate(out)


def observation_error(weekly: np.ndarray, observed: np.ndarray, fit_weeks: int,
                      people_per_agent: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The observation model of the predictive bands, fitted per series on the fitted weeks and boroughs.

    Each week's observed count is one of the K runs' (chosen at random) times the model's error, counted:
    log(1 + observed) - log(1 + run k) ~ N(0, sd² + phi x (1 / (1 + observed) + 1 / (1 + n_k))), a mixture
    over the runs with equal weights. ``sd`` is the model's error (bias included) beyond what the runs' own
    spread (posterior and chance) explains, the same for a week of 10 deaths or 5,000; the second term is
    count noise, Poisson's 1 / count times an overdispersion ``phi`` >= 1, for the observed count and for
    run k's n_k simulated agents (its value / ``people_per_agent``). Both by maximum likelihood (scipy). So
    a week of four deaths against a simulated handful, in the first days of March, reads as counting noise,
    not as a model error to spread over every forecast week.

    Why a mixture over the runs and not the residual of their mean: :func:`predictive_draws` puts the error
    on each run, so the runs' spread is in the band already; an sd fitted to the mean's residual counted
    that spread twice: on synthetic weeks (32 runs spread by a factor exp(0.5 eta), the observed one more run
    times exp(0.3 eps); 6 streams) it read 0.55 and the 80 % band covered 0.91; the mixture reads 0.36 (the
    runs' finite number needs some smoothing) and covers 0.82.

    ``weekly`` [K, W, B, S], ``observed`` [W, B, S], ``people_per_agent`` [B] -> (sd [S], phi [S])."""
    from scipy.optimize import minimize
    from scipy.special import logsumexp

    k = weekly.shape[0]
    runs = np.maximum(weekly[:, :fit_weeks], 0.0)
    y = observed[:fit_weeks]
    r = np.log1p(y)[None] - np.log1p(runs)  # [K, W, B, S]
    agents = runs / np.asarray(people_per_agent, np.float64)[None, None, :, None]
    counting = 1.0 / (1.0 + y)[None] + 1.0 / (1.0 + agents)
    sds, phis = [], []
    for s in range(r.shape[-1]):
        rs, cs = r[..., s].reshape(k, -1), counting[..., s].reshape(k, -1)

        def nll(p, rs=rs, cs=cs):
            v = np.exp(2 * p[0]) + (1.0 + np.exp(p[1])) * cs
            return -np.sum(logsumexp(-0.5 * (np.log(v) + rs ** 2 / v), axis=0))

        spread = np.sqrt(np.mean((rs - rs.mean(axis=0)) ** 2))  # the runs' own spread, in the residuals' units
        start = [np.log(max(np.sqrt(max(np.mean(rs ** 2) - spread ** 2, 0.0)) / 2, 1e-3)), 0.0]
        res = minimize(nll, start, method="Nelder-Mead", options={"xatol": 1e-4, "fatol": 1e-8, "maxiter": 2000})
        sds.append(float(np.exp(res.x[0])))
        phis.append(float(1.0 + np.exp(res.x[1])))
    return np.asarray(sds), np.asarray(phis)


def predictive_draws(weekly: np.ndarray, sd: np.ndarray, phi: np.ndarray, per_run: int,
                     rng: np.random.Generator) -> np.ndarray:
    """Posterior-predictive weekly counts [K x per_run, W, B, S] under :func:`observation_error`'s model: every
    run's value times exp(sd_s x eps), one eps per draw, week and series shared by the boroughs (the model's
    errors are the city's: one transmission, one pause, so the citywide band keeps them), then counted with
    variance phi_s x mean, independently per borough: gamma-Poisson (negative binomial) for phi > 1, Poisson
    at 1. A count, not a log-normal: a week expecting two deaths gets a band of a few, not of hundreds."""
    k, w, b, s = weekly.shape
    shared = rng.standard_normal((k, per_run, w, 1, s)) * np.asarray(sd)[None, None, None, None, :]
    mean = np.maximum(weekly[:, None], 0.0) * np.exp(shared)
    extra = np.broadcast_to(np.asarray(phi, np.float64) - 1.0, mean.shape)
    over = extra > 1e-9
    rate = mean.copy()
    rate[over] = rng.gamma(mean[over] / extra[over], extra[over])  # mean mu, variance (phi - 1) mu
    return rng.poisson(rate).astype(np.float64).reshape(k * per_run, w, b, s)


def _record(method, it, loss, problem, z, **extra) -> dict:
    row = {"method": method, "iteration": it, "loss": loss, **extra}
    for f, v in zip(problem.fits, problem.natural(np.asarray(z, np.float64))):
        row[f.path] = float(v)
    return row


# -- forecasts and output ----------------------------------------------------------------------------------
def ensemble(problem: Problem, zs: np.ndarray, seeds: Sequence[int], batch: int = 8):
    """Weekly simulated series [K, W, B, 3] and monthly unemployment [K, M, B] for points ``zs`` x ``seeds``."""
    zs = np.asarray(zs)
    weekly, unemp = [], []
    for i in range(0, len(zs), batch):
        d, lab = problem.batch_rollout(zs[i:i + batch], np.asarray(seeds[i:i + batch]))
        for k in range(len(d)):
            weekly.append(problem.weekly_sim(d[k]))
            unemp.append(problem.monthly_unemployment(lab[k]))
    return np.stack(weekly), np.stack(unemp)


def forecast_frame(problem: Problem, weekly: np.ndarray, unemp: np.ndarray, band: np.ndarray | None = None):
    """Long table: week/month rows per series and borough (plus citywide), observed, median of ``weekly`` and the
    80 % band of ``band`` (posterior-predictive draws; default ``weekly`` itself)."""
    import polars as pl

    tg = problem.target
    rows = []
    band = weekly if band is None else band
    city = weekly.sum(axis=2, keepdims=True)
    obs_city = tg.weekly.sum(axis=1, keepdims=True)
    allw = np.concatenate([weekly, city], axis=2)
    allb = np.concatenate([band, band.sum(axis=2, keepdims=True)], axis=2)
    allobs = np.concatenate([tg.weekly, obs_city], axis=1)
    names = list(tg.boroughs) + ["citywide"]
    starts = tg.week_starts()
    for w in range(tg.weeks):
        for bi, b in enumerate(names):
            for si, s in enumerate(SERIES):
                v, vb = allw[:, w, bi, si], allb[:, w, bi, si]
                med = float(np.median(v))
                rows.append({"series": s, "borough": b, "period": starts[w].isoformat(), "index": w,
                             "held_out": w >= tg.fit_weeks, "observed": float(allobs[w, bi, si]),
                             "simulated": med, "lo": min(float(np.quantile(vb, 0.1)), med),
                             "hi": max(float(np.quantile(vb, 0.9)), med)})
    for mi, (y, m) in enumerate(tg.months):
        for bi, b in enumerate(tg.boroughs):
            v = unemp[:, mi, bi]
            rows.append({"series": "unemployment", "borough": b, "period": f"{y:04d}-{m:02d}-01", "index": mi,
                         "held_out": dt.date(y, m, 1) > tg.fit_end, "observed": float(tg.unemployment[mi, bi]),
                         "simulated": float(np.median(v)), "lo": float(np.quantile(v, 0.1)),
                         "hi": float(np.quantile(v, 0.9))})
    return pl.DataFrame(rows)


def calibrate(scenario: Scenario, *, observed: str, window: str, fit: str | Sequence[str], out: str | Path,
              method: str = "both", size: int | None = 100_000, forecast_to: str | None = None,
              iterations: int = 40, lr: float = 0.1, generations: int = 12, popsize: int = 8,
              band_runs: int = 16, posterior_runs: int = 32, seed: int | None = None, weights: dict | None = None,
              progress: bool = True, settings: Sequence[str] = (), backend: Any = None,
              posterior_min_ess: float = 0.0, posterior_max_runs: int | None = None) -> Path:
    """Fit, forecast and write the calibration directory; returns its path. ``settings``: the ``--set`` /
    ``--overlay`` items the scenario was loaded with, written into the overlay (the fitted values belong to
    the model they define, e.g. ``model.params.contact_scales=people``). A scenario with an LLM ``policy`` is
    fitted with its answers asked once per round and archetype (:func:`llm_answers`; ``backend`` replaces
    ``policy.backend``, as in ``simcore.session.make_archetype_policy``). ``posterior_min_ess``: the posterior
    adds importance-sampling rounds while its ESS is below this, up to ``posterior_max_runs`` points
    (default 3 x ``posterior_runs``; :func:`posterior_sample`)."""
    import polars as pl

    from analysis import validation

    if method not in ("gradient", "cmaes", "both"):
        raise ScenarioError("--method", f"must be gradient, cmaes or both, got {method!r}")
    for flag, v in (("--iterations", iterations), ("--generations", generations), ("--popsize", popsize),
                    ("--band-runs", band_runs), ("--posterior-runs", posterior_runs)):
        if v < 1 or (flag == "--popsize" and v < 2):
            raise ScenarioError(flag, f"must be >= {2 if flag == '--popsize' else 1}, got {v}")
    if not posterior_min_ess >= 0:  # also refuses NaN
        raise ScenarioError("--posterior-min-ess", f"must be >= 0, got {posterior_min_ess}")
    if posterior_max_runs is not None and posterior_max_runs < posterior_runs:
        raise ScenarioError("--posterior-max-runs", f"must be >= --posterior-runs ({posterior_runs}), "
                                                    f"got {posterior_max_runs}")
    fits = resolve_fit(scenario, fit)
    if size is not None:
        if size < 1000:
            raise ScenarioError("--size", f"must be >= 1000, got {size}")
        size = min(size, scenario.population.size)
        sample = min(scenario.output.sample_agents, size)
        scenario = scenario.model_copy(update={
            "population": scenario.population.model_copy(update={"size": size}),
            "output": scenario.output.model_copy(update={"sample_agents": sample})})
    if seed is not None:
        scenario = scenario.model_copy(update={"run": scenario.run.model_copy(update={"seed": seed})})
    from populations.tables import load_tables

    boroughs = load_tables("nyc").boroughs
    target = load_target(observed, window, boroughs, forecast_to, weights)
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ScenarioError("--out", f"directory exists and is not empty: {out}")
    log = _printer(progress)
    rows, fits_done = [], []
    z = None
    t_start = time.perf_counter()
    search = Problem(scenario, target, fits, relaxed=False)
    llm = None
    if scenario.policy is not None:
        out.mkdir(parents=True, exist_ok=True)
        t_llm = time.perf_counter()
        # set before the first rollout traces: _rollout_impl reads self.answers when jit traces it
        search.answers, policy = llm_answers(scenario, search, out, backend=backend)
        tot = policy.totals
        llm = {"architecture": scenario.policy.architecture, "backend": getattr(policy.backend, "identity", None),
               "calls": tot.calls, "cache_hits": tot.cache_hits, "fallbacks": tot.fallbacks,
               "prompt_tokens": tot.prompt_tokens, "completion_tokens": tot.completion_tokens,
               "llm_seconds": tot.seconds, "seconds": time.perf_counter() - t_llm,
               "rounds": int(search.answers[0].values.shape[0]) if search.answers else 0}
        if progress:
            print(f"LLM answers, {llm['rounds']} rounds: {tot.calls} calls ({tot.cache_hits} cached, "
                  f"{tot.fallbacks} fallbacks), {tot.seconds:.1f} s", flush=True)
    if method in ("gradient", "both"):
        prob = Problem(scenario, target, fits, relaxed=True, answers=search.answers)
        g = fit_gradient(prob, iterations=iterations, lr=lr, seeds=(scenario.run.seed,), log=log)
        rows += g.history
        fits_done.append(g)
        z = g.z
    if method in ("cmaes", "both"):
        c = fit_cmaes(search, generations=generations, popsize=popsize, seed=scenario.run.seed,
                      sim_seed=scenario.run.seed,
                      sigma=0.3 if z is not None else 0.5, z0=z, log=log)
        rows += c.history
        fits_done.append(c)
    best = min(fits_done, key=lambda f: min(r["loss"] for r in f.history))
    # 80 % bands: the posterior (importance-sampled around the best point), each draw re-run with a fresh seed,
    # times the observation error measured on the fitted weeks (posterior predictive)
    rng = np.random.default_rng(scenario.run.seed + 7)
    cma = next((f for f in fits_done if f.method == "cmaes"), None)
    post = posterior_sample(search, best.z, cma, proposals=posterior_runs, draws=band_runs,
                            sim_seed=scenario.run.seed, rng=rng, min_ess=posterior_min_ess,
                            max_proposals=posterior_max_runs)
    if "pareto_k" in post:
        reliable, verdict = posterior_verdict(post["pareto_k"], post["pareto_k_threshold"])
    else:  # no CMA-ES search to start from, so no weighted sample to judge
        reliable, verdict = None, "no posterior sampled: the bands re-run the best point"
    if reliable is False:  # printed even under --quiet: the run succeeds, but its bands may not mean what they say
        print(f"warning: posterior sample (Pareto k {post['pareto_k']:.2f} > {post['pareto_k_threshold']:.2f}, "
              f"ESS {post['ess']:.1f} of {post['proposals']} points): {verdict}", file=sys.stderr, flush=True)
    picks = post["z"]
    seeds = [scenario.run.seed + 1000 + i for i in range(band_runs)]
    weekly, unemp = ensemble(search, picks, seeds)
    obs_sd, phi = observation_error(weekly, target.weekly, target.fit_weeks, np.asarray(search.scale))
    band = predictive_draws(weekly, obs_sd, phi, BAND_DRAWS, rng)
    out.mkdir(parents=True, exist_ok=True)
    pl.DataFrame(rows).write_parquet(out / "calibration.parquet")
    all_z = post.get("all_z", picks)
    all_w = post.get("weights", np.full(len(all_z), 1.0 / len(all_z)))
    post_nat = np.asarray([search.natural(p) for p in all_z], np.float64)
    pl.DataFrame({**{f.path: post_nat[:, i] for i, f in enumerate(fits)}, "weight": all_w,
                  **({"loss": post["losses"]} if "losses" in post else {})}).write_parquet(out / "posterior.parquet")
    frame = forecast_frame(search, weekly, unemp, band)
    frame.write_parquet(out / "forecast.parquet")
    table = validation.validation_table(frame)
    table.write_parquet(out / "validation.parquet")
    values = search.natural(np.asarray(best.z, np.float64))
    write_overlay(out / "overlay.yaml", scenario, fits, values, post_nat, window, observed, best.method, all_w,
                  settings=settings, loss_weights=weights)
    from analysis.validation import plot_forecast
    plot_forecast(frame, out / "fit.png", title=f"{scenario.name}: fitted {target.start}..{target.fit_end}")
    headline = validation.headline(table)
    summary = {
        "scenario": scenario.name, "observed": observed, "window": window, "forecast_to": str(target.end),
        "population": scenario.population.size, "method": method, "best_method": best.method,
        "fit": {f.path: float(v) for f, v in zip(fits, values)},
        "interval_80": {f.path: [weighted_quantile(post_nat[:, i], all_w, 0.1),
                                 weighted_quantile(post_nat[:, i], all_w, 0.9)] for i, f in enumerate(fits)},
        "posterior": {"proposals": post["proposals"], "rounds": post.get("rounds", 0), "ess": post["ess"],
                      "min_ess": posterior_min_ess,
                      # JSON has no inf or nan: None, with the verdict beside it
                      "pareto_k": post["pareto_k"] if math.isfinite(post.get("pareto_k", math.nan)) else None,
                      "pareto_k_threshold": post.get("pareto_k_threshold"),
                      "reliable": reliable, "verdict": verdict,
                      "n_eff": post["n_eff"], "prior_sd": PRIOR_SD, "seeds": post.get("seeds"),
                      "loss_ref": post.get("loss_ref"), "loss_ref_seeds": post.get("loss_ref_seeds"),
                      "observation_sd": dict(zip(SERIES, map(float, obs_sd))),
                      "count_overdispersion": dict(zip(SERIES, map(float, phi)))},
        "seconds": {fd.method: fd.seconds for fd in fits_done} | {"total": time.perf_counter() - t_start},
        "loss": {fd.method: float(min(r["loss"] for r in fd.history)) for fd in fits_done},
        "validation": headline | ({"coverage_if_calibrated": validation.coverage_if_calibrated(
            band.reshape(band_runs, BAND_DRAWS, *band.shape[1:]), target.fit_weeks, SERIES,
            observed={"deaths_citywide": headline["forecast_deaths_citywide_coverage80"],
                      "pooled": headline["forecast_coverage80_pooled"]})}
            if target.weeks > target.fit_weeks and band_runs > 1 else {}),
        "llm": llm,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    if progress:
        print("\n".join(summary_lines(summary)), flush=True)
    return out


def weighted_quantile(x, w, q: float) -> float:
    """The ``q`` quantile of ``x`` under weights ``w`` (the inverse of the weighted empirical CDF)."""
    x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
    order = np.argsort(x)
    c = np.cumsum(w[order])
    return float(x[order][min(np.searchsorted(c, q * c[-1]), len(x) - 1)])


def write_overlay(path: Path, scenario: Scenario, fits, values, posterior, window, observed, method,
                  weights=None, *, settings: Sequence[str] = (), loss_weights: dict | None = None) -> None:
    """A scenario overlay: the fitted values as ``dotted.path: value`` lines, with how they were obtained.

    ``settings`` (``dotted.key=value`` items the fitted scenario was loaded with) come first, each as an entry
    of its own, so that applying the overlay to the base scenario gives the model that was fitted."""
    import yaml

    flags = "".join(f" --set {item}" for item in settings)
    flags += "".join(f" --weight {k}={v:g}" for k, v in sorted((loss_weights or {}).items()))
    lines = [f"# simcore calibrate {scenario.name} --observed {observed} --window {window} "
             f"--fit {','.join(f.path for f in fits)}{flags}",
             f"# {scenario.population.size:,} agents, seed {scenario.run.seed}; best point from {method};",
             "# 80 % posterior intervals in the comments. Apply with: simcore run SCENARIO --overlay THIS_FILE"]
    # a nested leaf is written with its whole parent (the ifr list, the beta or death_delay mapping) so the
    # overlay applies to any base scenario, even one that leaves that block at its defaults
    tree = scenario.model.params.model_dump()
    entries: dict[str, object] = {}
    notes: dict[str, list[str]] = {}
    for i, (f, v) in enumerate(zip(fits, values)):
        *head, last = f.path.split(".")
        w = np.full(len(posterior), 1.0) if weights is None else weights
        lo, hi = weighted_quantile(posterior[:, i], w, 0.1), weighted_quantile(posterior[:, i], w, 0.9)
        value = float(f"{float(v):.6g}")
        if f.intervention is not None:
            # the whole list, in order (the schedule applies them in order): the run sees what the fit saw
            key = "interventions"
            if key not in entries:
                entries[key] = [iv.model_dump(mode="json") for iv in scenario.interventions]
            entries[key][f.intervention]["value"] = value
        elif head:
            key = f"{PREFIX}{'.'.join(head)}"
            if key not in entries:
                entries[key] = copy.deepcopy(_leaf(tree, head, f.path))
            parent = entries[key]
            parent[int(last) if isinstance(parent, list) else last] = value
        else:
            key = f"{PREFIX}{f.path}"
            entries[key] = value
        notes.setdefault(key, []).append(f"{f.path} 80%: {lo:.4g} .. {hi:.4g}")
    # a fitted list inside a fitted mapping (employment.borough_loss.0 with employment.loss_lockdown) goes into
    # the mapping's entry: written apart, the mapping's copy of the list (its defaults) would be applied after it
    for key in sorted(entries, key=len, reverse=True):
        parent = next((p for p in entries if key.startswith(p + ".") and isinstance(entries[p], dict)), None)
        if parent is None:
            continue
        node: Any = entries[parent]
        *route, last = key[len(parent) + 1:].split(".")
        for part in route:
            node = node[int(part)] if isinstance(node, list) else node[part]
        node[int(last) if isinstance(node, list) else last] = entries.pop(key)
        notes[parent] = notes.pop(key) + notes[parent]
    out = []
    for item in settings:
        key, _, raw = item.partition("=")
        if key in entries or any(key.startswith(e + ".") for e in entries):
            continue  # a fitted value replaces what the fit started from
        text = yaml.safe_dump({key: yaml.safe_load(raw)}, default_flow_style=True, width=10_000).strip()[1:-1]
        out.append(f"{text}  # set for the fit")
    for key, value in entries.items():
        text = yaml.safe_dump({key: value}, default_flow_style=True, width=10_000).strip()[1:-1]
        out.append(f"{text}  # {'; '.join(notes[key])}")
    Path(path).write_text("\n".join(lines + out) + "\n")


def read_overlay(path: str | Path) -> list[str]:
    """``--overlay FILE`` -> ``--set`` items: a flat ``dotted.key: value`` mapping, or a nested one (flattened)."""
    import yaml

    from scenarios.loader import read_yaml

    p = Path(path)
    if not p.is_file():
        raise ScenarioError("--overlay", f"file not found: {p}")
    try:
        data = read_yaml(p)
    except ScenarioError as exc:
        raise ScenarioError("--overlay", exc.reason) from None
    items: list[str] = []

    def walk(prefix, node):
        if isinstance(node, dict):
            for k, v in node.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        else:
            items.append(f"{prefix}={yaml.safe_dump(node, default_flow_style=True).strip().removesuffix('...').strip()}")

    walk("", data)
    return items


def summary_lines(summary: dict) -> list[str]:
    """What a calibration found, in a few lines for the terminal (:func:`calibrate` prints them): the fit,
    the posterior sample's quality and, with held-out weeks, the citywide deaths forecast against what a
    right band would score on the same weeks (:func:`analysis.validation.coverage_if_calibrated`)."""
    lines = [f"fit ({summary['best_method']}): loss {min(summary['loss'].values()):.4f}"]
    post, val = summary["posterior"], summary["validation"]
    if post.get("n_eff") is not None:
        k = post.get("pareto_k")
        lines.append(f"posterior: ESS {post['ess']:.1f} of {post['proposals']} points, Pareto k "
                     f"{('inf' if not post['reliable'] else 'n/a') if k is None else f'{k:.2f}'} "
                     f"(threshold {post['pareto_k_threshold']:.2f}): {post['verdict']}")
    if "forecast_deaths_citywide_nrmse" in val:
        line = (f"held-out citywide deaths: NRMSE {val['forecast_deaths_citywide_nrmse']:.3f}, 80 % coverage "
                f"{val['forecast_deaths_citywide_coverage80']:.2f}")
        chance = (val.get("coverage_if_calibrated") or {}).get("deaths_citywide")
        if chance:
            line += (f" (a right band: {chance['q10']:.2f}-{chance['q90']:.2f} in 80 % of forecasts, "
                     f"p {chance['p_as_far']:.2f})")
        lines.append(line + f", interval score {val['forecast_deaths_citywide_interval_score']:.3f}; pooled "
                            f"coverage {val['forecast_coverage80_pooled']:.2f}")
    return lines


def _printer(progress: bool):
    if not progress:
        return None

    def log(row):
        vals = ", ".join(f"{k}={v:.4g}" for k, v in row.items() if k not in ("method", "iteration", "loss", "generation")
                         and isinstance(v, float))
        print(f"[{row['method']}] {row.get('generation', row['iteration'])}: loss {row['loss']:.4f}  {vals}",
              flush=True)
    return log
