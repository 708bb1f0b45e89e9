"""Experiments: counterfactual arms over seeds with common random numbers, and parameter sweeps.

::

    exp = Experiment("covid_small", seeds=range(8), overrides=["population.size=20000"])
    exp.arm("early_lockdown", overrides=["interventions.3.start=7"])
    exp.arm("no_lockdown", remove=["pause_order"])
    res = exp.branch(from_step=5).run()
    res.summary(["new_deaths:sum", "unemployment_rate:mean"])

**Common random numbers.** Every arm runs every seed with the same root key and
the same per-step folding (``fold_in(root_key(seed), t)``), so an arm and the
baseline draw identical uniforms at every step; paired differences (arm minus
baseline, per seed) come from the policy, not from noise. Arms with identical
interventions give exactly zero difference.

**Replicates.** ``replicates="shared"`` (default) builds *one* synthetic population
and graph (from the scenario's ``run.seed``) and the same initial infections for
every seed: replicates are over epidemic noise on a fixed synthetic population.
They run batched under ``jax.vmap`` (params shared), ``batch_size`` replicates at a
time per device, split over ``devices`` local devices that step their replicates
concurrently. The default on accelerators is one device and the number of seeds
per batch (capped by half the free memory), so the baseline prefix and every arm
reuse one compiled program; on CPU it is every local CPU device with one replicate
each at a time: one vmapped batch on one device measured only about even with
sequential runs on 2 cores, splitting the replicates over one host device per core
1.7x faster (``benchmarks/experiments.py``). ``simcore experiment`` asks XLA for one
host device per core (``XLA_FLAGS``, unless it already sets a device count); in a
notebook call :func:`simcore.cli.request_host_devices` before importing jax.
``replicates="independent"`` rebuilds population, graph and initial state for
every seed exactly as ``simcore run --seed S`` does; seeds then run one after
another (their graphs differ), arms of one seed still batched.

**Branching.** ``.branch(from_step=t)`` runs the baseline alone to step ``t``, then
every arm continues from the baseline's state at ``t`` with its own schedule
(and its own model parameters, if its overrides change them). Arms must not
change the schedule before ``t``. Steps before ``t`` are the baseline's for
every arm. The prefix is computed once instead of once per arm.

Arms may change interventions (add, ``remove`` by name, or ``overrides`` such as
``interventions.3.start=7``), ``model.params.*`` and ``policy``; never the
population, graph, model kind or run settings (paired comparisons need the
same agents). Host policies (archetype/LLM layers) run through ``policies=``, a
function of the :class:`~simcore.models.Built` returning fresh policies; such
arms run one replicate at a time and cannot be branched.

**LLM arms.** An arm whose scenario has a ``policy:`` block runs each seed as a
:class:`~simcore.session.RunSession` (what ``simcore run`` does, on the shared
population): the policy gets a response cache (``policy.cache``, else
``OUT/llm_cache.sqlite`` shared by every arm, else one for this ``run()``), a call log
per arm and seed (``arm=NAME/seed=S/llm_calls.parquet``) and the ``llm_*`` metric
columns; the manifests record ``llm_totals``. A second run with the same cache
asks the backend nothing new.

**Compiled programs** belong to the experiment (a
:class:`~simcore.engine.ensemble.ChunkPrograms`): every ensemble it makes reuses them,
and they go when the experiment goes.
"""
from __future__ import annotations

import datetime as _dt
import itertools
import json
import multiprocessing
import re
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Callable, Iterable, Literal, Mapping, Sequence, Union

import jax
import numpy as np
import polars as pl
from pydantic import AfterValidator, Field, ValidationError

from scenarios import Scenario, ScenarioError, load_scenario
from scenarios.loader import apply_overrides, format_validation_error, read_yaml, validate
from scenarios.schema import MAX_SEED, MAX_STEPS, InterventionSpec, Strict

# the results and their outcome algebra are analysis (polars only, no JAX); re-exported here
from analysis.results import (  # noqa: F401
    REDUCERS, ExperimentError, ExperimentResults, default_reducer, parse_outcome, reduce_series,
)

from .engine import Intervention, build_schedule
from .engine.ensemble import ChunkPrograms, Ensemble, batch_size_for, replicate_state
from .models import Built, build, check
from .naming import child_dir, slug
from .session import RunSession, run_metrics
from .validation import check_scenario

BASELINE = "baseline"


def jnp_copy(x):
    """A copy of one state leaf (a session may donate its state; the shared initial state must survive)."""
    return jax.numpy.array(x, copy=True)


_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]{0,99}$")  # with no '..': one safe path component, arm=NAME/


def _no_dotdot(name: str) -> str:
    if ".." in name:
        raise ValueError(f"must not contain '..', got {name!r}")
    return name


_Name = Annotated[str, Field(min_length=1, pattern=_NAME.pattern), AfterValidator(_no_dotdot)]


# -- the experiment file ----------------------------------------------------------------------
_Strict = Strict  # the scenario schema's base: no unknown keys, finite floats, bounded integers


class ArmSpec(_Strict):
    """One arm: the baseline scenario plus these edits (overrides first, then remove, then add)."""

    name: _Name
    description: str = ""
    overrides: list[str] = []
    remove: list[str] = []
    interventions: list[InterventionSpec] = []


class ExperimentSpec(_Strict):
    """An experiment file (YAML)."""

    name: _Name
    description: str = ""
    scenario: Union[str, dict[str, Any]]
    overrides: list[str] = []
    seeds: Union[Annotated[int, Field(gt=0, le=100_000)],
                 Annotated[list[Annotated[int, Field(ge=0, le=MAX_SEED)]], Field(min_length=1, max_length=100_000)]] = 4
    steps: Annotated[int, Field(gt=0, le=MAX_STEPS)] | None = None
    replicates: Literal["shared", "independent"] = "shared"
    batch_size: Annotated[int, Field(gt=0)] | None = None
    devices: Annotated[int, Field(gt=0, le=65_536)] | None = None
    branch_step: Annotated[int, Field(ge=0)] | None = None
    arms: list[ArmSpec] = Field(min_length=1)
    outcomes: list[str] = []
    ci: float = Field(0.95, gt=0, lt=1)
    n_boot: Annotated[int, Field(ge=100, le=1_000_000)] = 4000


# -- arms -------------------------------------------------------------------------------------
@dataclass
class _Arm:
    name: str
    scenario: Scenario
    group: str
    interventions: list[Intervention]
    policies: Callable[[Built], Iterable[Any]] | None = None
    spec: dict = field(default_factory=dict)


_ARM_MAY_CHANGE = {"name", "description", "interventions", "model", "policy", "output"}


def _as_scenario(scenario: Scenario | str | Path | Mapping[str, Any], overrides: Sequence[str]) -> Scenario:
    if isinstance(scenario, Scenario):
        return load_scenario(scenario.model_dump(mode="json"), overrides)
    return load_scenario(scenario, overrides)


def _intervention(spec: InterventionSpec | Mapping[str, Any], where: str) -> InterventionSpec:
    if isinstance(spec, InterventionSpec):
        return spec
    try:
        return InterventionSpec.model_validate(dict(spec))
    except ValidationError as exc:
        err = format_validation_error(exc)
        raise ExperimentError(f"{where}.{err.field}", err.reason) from None


class Experiment:
    """Arms x seeds on one scenario, with common random numbers; see the module docstring."""

    def __init__(self, scenario: Scenario | str | Path | Mapping[str, Any], seeds: Iterable[int] = (0, 1, 2, 3), *,
                 overrides: Sequence[str] = (), steps: int | None = None, replicates: str = "shared",
                 batch_size: int | None = None, name: str | None = None, chunk_size: int | None = None,
                 backend: Any = None, devices: int | None = None):
        self.scenario = _as_scenario(scenario, overrides)
        self.backend = backend  # replaces every LLM arm's policy.backend (an object or a factory; tests)
        self.programs = ChunkPrograms()  # compiled chunk programs of every ensemble this experiment runs
        check_scenario(self.scenario)  # what `simcore validate` checks, before any arm is built
        self.seeds = [int(s) for s in seeds]
        if not self.seeds:
            raise ExperimentError("seeds", "needs at least one seed")
        if len(set(self.seeds)) != len(self.seeds) or min(self.seeds) < 0:
            raise ExperimentError("seeds", f"must be distinct and >= 0, got {self.seeds}")
        self.steps = int(steps or self.scenario.run.steps)
        if replicates not in ("shared", "independent"):
            raise ExperimentError("replicates", f"must be 'shared' or 'independent', got {replicates!r}")
        self.replicates = replicates
        self.batch_size = batch_size
        if devices is not None and devices < 1:
            raise ExperimentError("devices", f"must be >= 1, got {devices}")
        self.devices = devices
        self.chunk_size = int(chunk_size or self.scenario.run.chunk_size)
        self.name = name or self.scenario.name
        self.branch_step: int | None = None
        self._arms: list[dict] = []
        self._baseline_policies: Callable | None = None
        self.info: dict[str, Any] = {}  # extra fields recorded in experiment.json

    # -- building the design ------------------------------------------------------------------
    def arm(self, name: str, interventions: Sequence[InterventionSpec | Mapping[str, Any]] = (),
            overrides: Sequence[str] = (), *, remove: Sequence[str] = (),
            policies: Callable[[Built], Iterable[Any]] | None = None, description: str = "") -> "Experiment":
        """Add an arm: the baseline scenario with ``overrides`` applied, interventions named in
        ``remove`` dropped (``"*"``: all), then ``interventions`` added. Returns the experiment."""
        if not _NAME.match(name or "") or ".." in name:
            raise ExperimentError("arms.name", f"must be letters, digits or . _ + - (no '..', not first '.', '+' "
                                               f"or '-'), got {name!r}")
        if name == BASELINE:
            raise ExperimentError("arms.name", f"{BASELINE!r} is the scenario itself; use baseline_policies() "
                                               "to give it host policies")
        if any(a["name"] == name for a in self._arms):
            raise ExperimentError("arms.name", f"duplicate arm {name!r}")
        where = f"arms[{name}]"
        ivs = [_intervention(iv, f"{where}.interventions[{i}]") for i, iv in enumerate(interventions)]
        self._arms.append({"name": name, "interventions": ivs, "overrides": list(overrides), "remove": list(remove),
                           "policies": policies, "description": description})
        self._resolve_arm(self._arms[-1])  # fail now, not at run()
        return self

    def baseline_policies(self, policies: Callable[[Built], Iterable[Any]]) -> "Experiment":
        """Host policies for the baseline arm (a function of the Built, called once per replicate)."""
        self._baseline_policies = policies
        return self

    def branch(self, from_step: int) -> "Experiment":
        """Fork every arm from the baseline's state at ``from_step`` (0 = no fork). Returns the experiment."""
        if not 0 <= int(from_step) < self.steps:
            raise ExperimentError("branch_step", f"must be in [0, {self.steps}), got {from_step}")
        self.branch_step = int(from_step) or None
        return self

    @property
    def arm_names(self) -> list[str]:
        return [BASELINE] + [a["name"] for a in self._arms]

    def _resolve_arm(self, arm: dict) -> _Arm:
        where = f"arms[{arm['name']}]"
        base = self.scenario.model_dump(mode="json")
        try:
            data = apply_overrides(base, arm["overrides"])
        except ScenarioError as exc:
            raise ExperimentError(f"{where}.overrides", str(exc)) from None
        names = [iv.get("name", "") for iv in data.get("interventions", [])]
        for name in arm["remove"]:
            if name != "*" and name not in names:
                raise ExperimentError(f"{where}.remove", f"no intervention named {name!r} (have: {', '.join(n for n in names if n) or 'none'})")
        drop = set(arm["remove"])
        data["interventions"] = [iv for iv in data.get("interventions", [])
                                 if not ("*" in drop or iv.get("name", "") in drop)]
        data["interventions"] += [iv.model_dump(mode="json") for iv in arm["interventions"]]
        try:
            sc = validate(data)  # added interventions are valid already: a failure here comes from overrides
        except ScenarioError as exc:
            raise ExperimentError(f"{where}.overrides", str(exc)) from None
        try:
            check_scenario(sc.model_copy(update={"run": sc.run.model_copy(update={"steps": self.steps})}), memory=False)
        except ScenarioError as exc:
            raise ExperimentError(where, str(exc)) from None
        after = sc.model_dump(mode="json")
        for key in sorted(set(base) | set(after)):
            if key not in _ARM_MAY_CHANGE and base.get(key) != after.get(key):
                raise ExperimentError(f"{where}.overrides", f"arms may change interventions, model.params and "
                                                            f"policy only; {key} differs from the baseline")
        if after["model"]["kind"] != base["model"]["kind"]:
            raise ExperimentError(f"{where}.overrides", "arms may not change model.kind")
        return self._plan(arm["name"], sc, arm["policies"], arm)

    def _plan(self, name: str, sc: Scenario, policies, spec: dict) -> _Arm:
        group = json.dumps({"model": sc.model.model_dump(mode="json")}, sort_keys=True)
        ivs = [Intervention(param=iv.param, start=iv.start, end=iv.end, value=iv.value, mode=iv.mode, name=iv.name)
               for iv in sc.interventions]
        public = {k: v for k, v in spec.items() if k != "policies"}
        public["interventions"] = [iv.model_dump(mode="json") if isinstance(iv, InterventionSpec) else iv
                                   for iv in public.get("interventions", [])]
        return _Arm(name, sc, group, ivs, policies, public)

    def _resolve(self) -> list[_Arm]:
        base = self._plan(BASELINE, self.scenario, self._baseline_policies, {"name": BASELINE})
        return [base] + [self._resolve_arm(a) for a in self._arms]

    # -- running ------------------------------------------------------------------------------------
    def run(self, out: str | Path | None = None, *, progress: bool = False, outcomes: Sequence[str] | None = None,
            ci: float = 0.95, n_boot: int = 4000) -> "ExperimentResults":
        """Run every arm and seed; returns :class:`ExperimentResults`.

        With ``out``, writes ``arm=NAME/seed=S/`` run directories (``metrics.parquet``,
        ``manifest.json``; with a branch, the baseline's checkpoint at the branch
        step), ``experiment.parquet`` (the paired summary of ``outcomes``),
        ``experiment_metrics.parquet`` and ``experiment.json``.
        """
        for outcome in outcomes or ():
            parse_outcome(outcome)
        arms = self._resolve()
        t_all = time.perf_counter()
        T, t_b = self.steps, self.branch_step or 0
        log = (lambda msg: print(f"[{self.name}] {msg}", flush=True)) if progress else (lambda msg: None)
        if t_b and any(a.policies is not None or a.scenario.policy is not None for a in arms):
            raise ExperimentError("branch_step", "arms with host policies cannot be branched (their policy state "
                                                 "at the branch step is not shared); run without branch()")
        pop_of = {s: (self.scenario.run.seed if self.replicates == "shared" else s) for s in self.seeds}
        builds: dict[tuple[str, int], Built] = {}
        timing = {"build_seconds": 0.0, "prefix_seconds": 0.0, "arms_seconds": 0.0}

        def get_build(arm: _Arm, pop_seed: int) -> Built:
            key = (arm.group, pop_seed)
            if key not in builds:
                t0 = time.perf_counter()
                bare = arm.scenario.model_copy(update={"interventions": []})
                builds[key] = build(bare, seed=pop_seed, steps=T)
                timing["build_seconds"] += time.perf_counter() - t0
                log(f"built {builds[key].n_agents:,} agents (population seed {pop_seed})")
            return builds[key]

        first_pop = pop_of[self.seeds[0]]
        schedules = {}
        for arm in arms:
            base_rows = {k: v[0] for k, v in get_build(arm, first_pop).schedule.items()}
            schedules[arm.name] = build_schedule(base_rows, T, arm.interventions)
        if t_b:
            if any(get_build(a, first_pop).host_policies is not None for a in arms):
                raise ExperimentError("branch_step", "arms whose model runs host policies (an LLM planner) cannot "
                                                     "be branched; run without branch()")
            self._check_branch(arms, schedules, get_build, first_pop, t_b)

        metrics: dict[tuple[str, int], dict[str, np.ndarray]] = {}
        llm: dict[tuple[str, int], dict | None] = {}  # per LLM arm and seed: totals and cache
        scratch = None  # the LLM arms' call logs and cache when there is no ``out``
        if out is None and any(a.scenario.policy is not None for a in arms):
            import tempfile

            scratch = tempfile.TemporaryDirectory(prefix="simcore-experiment-")
        prefix: dict[int, tuple[Any, dict[str, np.ndarray]]] = {}
        layouts: list[dict[str, int]] = []  # how each ensemble split its replicates (recorded in info)

        def layout(built: Built, n: int) -> dict[str, int]:
            layouts.append(self._layout(built, n))
            return layouts[-1]

        by_pop: dict[int, list[int]] = {}
        for s in self.seeds:
            by_pop.setdefault(pop_of[s], []).append(s)
        baseline = arms[0]
        if t_b:
            t0 = time.perf_counter()
            for pop_seed, seeds in by_pop.items():
                b = get_build(baseline, pop_seed)
                ens = Ensemble(b.model, replicate_state(b.state, len(seeds)), b.params, schedules[BASELINE], seeds,
                               chunk_size=self.chunk_size, programs=self.programs, **layout(b, len(seeds)))
                m = run_metrics(ens, t_b)
                for i, s in enumerate(seeds):
                    prefix[s] = (ens.replicate(i), {k: v[i] for k, v in m.items()})
            timing["prefix_seconds"] = time.perf_counter() - t0
            log(f"baseline prefix: {t_b} steps x {len(self.seeds)} seeds in {timing['prefix_seconds']:.2f}s")

        t0 = time.perf_counter()
        groups = list(dict.fromkeys(a.group for a in arms))
        for group, (pop_seed, seeds) in itertools.product(groups, by_pop.items()):
            members = [a for a in arms if a.group == group]
            b = get_build(members[0], pop_seed)
            hosted = [a for a in members
                      if a.policies is not None or b.host_policies is not None or a.scenario.policy is not None]
            batched = [(a, s) for a in members if a not in hosted for s in seeds]
            if batched:
                states = [prefix[s][0] for _, s in batched] if t_b else replicate_state(b.state, len(batched))
                sched = {k: np.stack([schedules[a.name][k] for a, _ in batched]) for k in b.schedule}
                ens = Ensemble(b.model, states, b.params, sched, [s for _, s in batched], chunk_size=self.chunk_size,
                               step=t_b, per_replicate_schedule=True, programs=self.programs,
                               **layout(b, len(batched)))
                m = run_metrics(ens, T - t_b)
                for i, (a, s) in enumerate(batched):
                    rows = {k: v[i] for k, v in m.items()}
                    if t_b:
                        rows = {k: np.concatenate([prefix[s][1][k], v]) for k, v in rows.items()}
                    metrics[(a.name, s)] = rows
                log(f"{len(batched)} replicates ({', '.join(dict.fromkeys(a.name for a, _ in batched))}) "
                    f"in {time.perf_counter() - t0:.2f}s")
            for a in hosted:
                for s in seeds:
                    metrics[(a.name, s)], llm[(a.name, s)] = self._run_hosted(a, b, s, pop_seed, schedules[a.name],
                                                                              out, scratch)
                log(f"{a.name}: {len(seeds)} replicates with host policies")
        timing["arms_seconds"] = time.perf_counter() - t0
        timing["total_seconds"] = time.perf_counter() - t_all
        if scratch is not None:
            scratch.cleanup()
        if t_b:
            # cost of one replicate-step, from the arms phase (its program was compiled by the prefix)
            per_step = timing["arms_seconds"] / (len(arms) * len(self.seeds) * (T - t_b))
            saved = (len(arms) - 1) * len(self.seeds) * t_b
            timing["replicate_steps_saved"] = saved
            timing["branch_saving_estimate_seconds"] = per_step * saved
        any_build = next(iter(builds.values()))
        results = ExperimentResults(
            _frame(metrics, [a.name for a in arms], self.seeds, T), baseline=BASELINE,
            arms=[a.name for a in arms], seeds=self.seeds, steps=T, branch_step=self.branch_step, timing=timing,
            info={"name": self.name, "scenario": self.scenario.model_dump(mode="json"), "replicates": self.replicates,
                  "population_seeds": {str(s): p for s, p in pop_of.items()}, "n_agents": any_build.n_agents,
                  "model": any_build.model.name, "arm_specs": [a.spec for a in arms[1:]],
                  "outcomes": list(outcomes) if outcomes else None,
                  "replicate_layout": layouts[-1] if layouts else None, **self.info})
        if out is not None:
            self._write(Path(out), results, arms, schedules, builds, prefix, pop_of, llm, ci=ci, n_boot=n_boot)
        return results

    def _run_hosted(self, arm: _Arm, built: Built, seed: int, pop_seed: int, schedule: dict, out, scratch):
        """One arm and seed with host policies, as a :class:`RunSession` on the shared population.

        Returns its metrics (model metrics and, with an LLM policy, the ``llm_*`` columns)
        and its LLM record (totals, cache) or None.
        """
        import dataclasses

        base = Path(out) if out is not None else (Path(scratch.name) if scratch is not None else None)
        run_dir = None
        if arm.scenario.policy is not None:
            run_dir = child_dir(base, f"arm={arm.name}") / f"seed={int(seed)}"
        own = dataclasses.replace(built, state=jax.tree_util.tree_map(jnp_copy, built.state), schedule=dict(schedule))
        session = RunSession(arm.scenario, run_dir, steps=self.steps, seed=seed, built=own, population_seed=pop_seed,
                             policies=list(arm.policies(built)) if arm.policies is not None else (),
                             backend=self.backend, chunk_size=self.chunk_size, write=False,
                             llm_cache=None if base is None else base / "llm_cache.sqlite")
        parts: list[dict[str, np.ndarray]] = []

        def keep(_s, chunk, cols) -> None:
            parts.append({**chunk.metrics, **{k: v for k, v in cols.items() if k.startswith("llm_")}})

        with session:
            session.run(on_chunk=keep)
        rows = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        record = None
        if session.policy is not None:
            record = {"llm_totals": dict(session.policy.totals.__dict__), "llm_cache": session.manifest.get("llm_cache"),
                      "llm_backend": session.manifest.get("llm_backend")}
        return rows, record

    def _layout(self, built: Built, n: int) -> dict[str, int]:
        """``batch_size`` (per device) and ``devices`` of an ensemble of ``n`` replicates.

        On CPU the replicates are split over every local CPU device (one per core when
        ``XLA_FLAGS=--xla_force_host_platform_device_count`` asks for them; ``simcore experiment``
        does), one replicate per device at a time: measured (benchmarks/experiments.py) that
        is the fastest layout on 2 cores, where one vmapped batch on one device is only about
        even with sequential runs. Elsewhere one device, one arm's seeds per batch (capped by
        memory), so the prefix and every arm reuse one compiled program.
        """
        cpu = jax.default_backend() == "cpu"
        devices = self.devices if self.devices is not None else (jax.local_device_count() if cpu else 1)
        if devices > jax.local_device_count():
            raise ExperimentError("devices", f"{devices} requested but only {jax.local_device_count()} available "
                                             f"({jax.default_backend()}); on CPU set XLA_FLAGS="
                                             f"--xla_force_host_platform_device_count=N before jax is imported")
        if self.batch_size:
            batch = self.batch_size
        elif cpu:
            batch = 1
        else:
            batch = min(len(self.seeds), batch_size_for(built.state, n))
        return {"batch_size": batch, "devices": min(devices, n)}

    def _check_branch(self, arms, schedules, get_build, pop_seed, t_b) -> None:
        from .checkpoint import params_fingerprint

        base = schedules[BASELINE]
        ref = get_build(arms[0], pop_seed)
        ref_fp = params_fingerprint(ref.params, getattr(ref.model, "decision_targets", ()))
        for arm in arms[1:]:
            for k, rows in schedules[arm.name].items():
                diff = np.flatnonzero(np.any((rows[:t_b] != base[k][:t_b]).reshape(t_b, -1), axis=1))
                if diff.size:
                    raise ExperimentError(f"arms[{arm.name}]", f"changes {k} at step {int(diff[0])}, before the "
                                                               f"branch step {t_b}; a fork may only differ from step {t_b} on")
            if arm.group != arms[0].group:
                b = get_build(arm, pop_seed)
                if params_fingerprint(b.params, getattr(b.model, "decision_targets", ())) != ref_fp:
                    raise ExperimentError(f"arms[{arm.name}].overrides", "changes the population or graph; "
                                                                         "it cannot fork from the baseline")

    def _write(self, out: Path, results: "ExperimentResults", arms, schedules, builds, prefix, pop_of, llm=None, *,
               ci: float, n_boot: int) -> None:
        from . import rundir
        from .checkpoint import save_checkpoint
        from .session import device_description, versions

        out.mkdir(parents=True, exist_ok=True)
        by_arm = {a.name: a for a in arms}
        for (arm, seed), part in results.metrics.partition_by(["arm", "seed"], as_dict=True).items():
            d = child_dir(out, f"arm={arm}") / f"seed={int(seed)}"
            d.mkdir(parents=True, exist_ok=True)
            rundir.replace_table(d, "metrics", part.drop("arm", "seed").to_arrow())
            a = by_arm[arm]
            rundir.write_manifest(d, {
                "scenario": a.scenario.model_dump(mode="json"), "seed": int(seed),
                "population_seed": pop_of[int(seed)], "steps": self.steps, "steps_done": self.steps,
                "n_agents": results.info["n_agents"], "model": results.info["model"], "arm": arm,
                "experiment": self.name, "branch_step": self.branch_step, "replicates": self.replicates,
                "status": "completed", "versions": versions(), "device": device_description(),
                **((llm or {}).get((arm, int(seed))) or {}),
            })
        if self.branch_step:
            base = arms[0]
            for s, (state, _) in prefix.items():
                b = builds[(base.group, pop_of[s])]
                save_checkpoint(out / f"arm={BASELINE}" / f"seed={int(s)}" / "checkpoints", step=self.branch_step, seed=s,
                                state=state, schedule=schedules[BASELINE], params=b.params, scenario=base.scenario,
                                steps=self.steps, live_params=getattr(b.model, "decision_targets", ()),
                                extra={"population_seed": pop_of[s], "experiment": self.name})
        results.save(out, ci=ci, n_boot=n_boot)


# -- results ----------------------------------------------------------------------------------
def _frame(metrics: Mapping[tuple[str, int], Mapping[str, np.ndarray]], arms: Sequence[str], seeds: Sequence[int],
           steps: int) -> pl.DataFrame:
    parts = []
    for arm in arms:
        for s in seeds:
            cols = {"arm": [arm] * steps, "seed": np.full(steps, s, np.int64), "step": np.arange(steps, dtype=np.int64)}
            cols.update({k: np.asarray(v) for k, v in metrics[(arm, s)].items()})
            parts.append(pl.DataFrame(cols))
    # arms without an LLM policy made no calls: their llm_* columns are 0, not missing
    frame = pl.concat(parts, how="diagonal_relaxed")
    return frame.with_columns(pl.col(c).fill_null(0) for c in frame.columns if c.startswith("llm_"))


# -- experiment files -----------------------------------------------------------------------------
def load_experiment_spec(path: str | Path) -> ExperimentSpec:
    path = Path(path)
    if not path.is_file():
        raise ExperimentError("experiment", f"file not found: {path}")
    try:
        data = read_yaml(path, "experiment")  # the scenarios' strict loader: limits, no duplicate keys or tags
    except ScenarioError as exc:
        raise ExperimentError("experiment", exc.reason) from None
    try:
        return ExperimentSpec.model_validate(data)
    except ValidationError as exc:
        err = format_validation_error(exc)
        raise ExperimentError(err.field, err.reason) from None


def experiment_from_spec(spec: ExperimentSpec, base_dir: str | Path = ".") -> Experiment:
    scenario: Any = spec.scenario
    if isinstance(scenario, str) and (scenario.endswith((".yaml", ".yml")) or "/" in scenario):
        local = Path(base_dir) / scenario
        scenario = local if local.exists() else Path(scenario)
    seeds = list(range(spec.seeds)) if isinstance(spec.seeds, int) else spec.seeds
    try:
        exp = Experiment(scenario, seeds, overrides=spec.overrides, steps=spec.steps, replicates=spec.replicates,
                         batch_size=spec.batch_size, name=spec.name, devices=spec.devices)
    except ScenarioError as exc:
        if isinstance(exc, ExperimentError):
            raise
        field_ = "overrides" if spec.overrides and exc.field not in ("scenario",) else "scenario"
        raise ExperimentError(field_, str(exc)) from None
    for i, arm in enumerate(spec.arms):
        try:
            exp.arm(arm.name, arm.interventions, arm.overrides, remove=arm.remove, description=arm.description)
        except ExperimentError as exc:
            field_ = exc.field.removeprefix(f"arms[{arm.name}]").removeprefix("arms")
            raise ExperimentError(f"arms[{i}]{field_}", exc.reason) from None
    if spec.branch_step:
        exp.branch(spec.branch_step)
    for outcome in spec.outcomes:
        parse_outcome(outcome)
    return exp


def run_experiment_file(path: str | Path, *, out: str | Path | None = None, progress: bool = False) -> Path:
    """``simcore experiment FILE``: one run directory per arm and seed plus ``experiment.parquet``."""
    spec = load_experiment_spec(path)
    exp = experiment_from_spec(spec, Path(path).parent)
    if out is None:
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        out = child_dir(exp.scenario.output.dir, f"{slug(spec.name)}-{stamp}")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ExperimentError("--out", f"directory exists and is not empty: {out}")
    exp.info["spec"] = spec.model_dump(mode="json")
    try:
        exp.run(out, progress=progress, outcomes=spec.outcomes or None, ci=spec.ci, n_boot=spec.n_boot)
    except ExperimentError as exc:  # name arms by their index in the file, like the schema errors
        for i, arm in enumerate(spec.arms):
            if exc.field.startswith(f"arms[{arm.name}]"):
                raise ExperimentError(f"arms[{i}]" + exc.field.removeprefix(f"arms[{arm.name}]"), exc.reason) from None
        raise
    return out


# -- parameter sweeps ---------------------------------------------------------------------------
def run_point(scenario: Mapping[str, Any], overrides: Sequence[str], seed: int, steps: int | None = None,
              run_dir: str | None = None) -> dict[str, np.ndarray]:
    """One sweep task (top level, so process pools and Dask workers can pickle it): run the
    scenario with ``overrides`` and ``seed``; returns its per-step metrics. With ``run_dir``,
    also writes a normal run directory there."""
    from .engine.ensemble import Ensemble

    sc = load_scenario(dict(scenario), overrides)
    steps = int(steps or sc.run.steps)
    if run_dir is not None:
        from .session import run_scenario

        path = run_scenario(sc, run_dir, steps=steps, seed=seed)
        from . import rundir

        df = pl.from_arrow(rundir.read_table(path, "metrics")).sort("step")
        return {c: df[c].to_numpy() for c in df.columns if c not in ("step", "wall_seconds")}
    b = build(sc, seed=seed, steps=steps)
    ens = Ensemble(b.model, [b.state], b.params, b.schedule, [seed], chunk_size=sc.run.chunk_size)
    return {k: v[0] for k, v in run_metrics(ens, steps).items()}


@dataclass
class SweepResults:
    """``metrics``: ``point, seed, <grid keys>, step, <metrics>``; ``points``: one row per grid point."""

    metrics: pl.DataFrame
    points: pl.DataFrame
    grid_keys: list[str]
    seconds: float

    def outcomes(self, outcomes: Sequence[str]) -> pl.DataFrame:
        """One row per point and seed with each outcome's value (``metric:reducer``)."""
        rows = []
        for (point, seed), part in self.metrics.sort("step").partition_by(["point", "seed"], as_dict=True).items():
            row = {"point": point, "seed": seed}
            for outcome in outcomes:
                metric, reducer = parse_outcome(outcome)
                row[f"{metric}:{reducer}"] = float(reduce_series(part[metric].to_numpy(), reducer))
            rows.append(row)
        return self.points.join(pl.DataFrame(rows), on="point").sort("point", "seed")

    def summary(self, outcomes: Sequence[str], *, ci: float = 0.95, n_boot: int = 4000, seed: int = 0) -> pl.DataFrame:
        """Per point and outcome: mean over seeds with a percentile bootstrap CI."""
        from analysis.stats import bootstrap_ci

        table = self.outcomes(outcomes)
        rows = []
        for part in table.partition_by("point"):
            base = {k: part[k][0] for k in ["point", *self.grid_keys]}
            for outcome in outcomes:
                name = "{}:{}".format(*parse_outcome(outcome))
                est, lo, hi = bootstrap_ci(part[name].to_numpy(), ci=ci, n_boot=n_boot, seed=seed)
                rows.append({**base, "outcome": name, "n": part.height, "mean": float(est), "ci_low": float(lo),
                             "ci_high": float(hi)})
        return pl.DataFrame(rows).sort("point", "outcome")


class Sweep:
    """A grid over scenario parameters x seeds, each cell an independent run.

    ``grid``: ``{"dotted.key": [values...]}`` (the ``--set`` syntax); every
    combination is a point. Runs go to a local ``ProcessPoolExecutor`` (spawn
    context; ``executor="process"``), a Dask cluster (``executor="dask"``, the
    ``[cluster]`` extra; pass ``client=`` or a local one is started), or run in
    this process (``executor="serial"``). Each run is ``simcore run --seed S``
    with the point's overrides: its own population and graph.
    """

    def __init__(self, scenario: Scenario | str | Path | Mapping[str, Any], grid: Mapping[str, Sequence[Any]],
                 seeds: Iterable[int] = (0,), *, overrides: Sequence[str] = (), steps: int | None = None):
        self.scenario = _as_scenario(scenario, overrides)
        if not grid:
            raise ExperimentError("grid", "needs at least one parameter")
        self.grid = {k: list(v) for k, v in grid.items()}
        for key, values in self.grid.items():
            if not values:
                raise ExperimentError(f"grid.{key}", "needs at least one value")
        self.seeds = [int(s) for s in seeds]
        self.steps = steps
        for point in self.points():  # validate every point before starting anything
            try:
                check(load_scenario(self.scenario.model_dump(mode="json"), self._overrides(point)))
            except ScenarioError as exc:
                raise ExperimentError(f"grid.{exc.field}", exc.reason) from None

    def points(self) -> list[dict[str, Any]]:
        keys = list(self.grid)
        return [dict(zip(keys, combo)) for combo in itertools.product(*self.grid.values())]

    @staticmethod
    def _overrides(point: Mapping[str, Any]) -> list[str]:
        return [f"{k}={json.dumps(v)}" for k, v in point.items()]

    def run(self, *, executor: str = "process", max_workers: int | None = None, client: Any = None,
            out: str | Path | None = None) -> SweepResults:
        """Run every point x seed; with ``out``, each run also writes ``out/point=K/seed=S/``."""
        t0 = time.perf_counter()
        data = self.scenario.model_dump(mode="json")
        tasks = [(k, s, self._overrides(p), None if out is None else str(Path(out) / f"point={k}" / f"seed={s}"))
                 for k, p in enumerate(self.points()) for s in self.seeds]
        args = [(data, ov, s, self.steps, d) for _, s, ov, d in tasks]
        if executor == "serial":
            outputs = [run_point(*a) for a in args]
        elif executor == "process":
            ctx = multiprocessing.get_context("spawn")  # JAX is not fork-safe
            with ProcessPoolExecutor(max_workers=max_workers, mp_context=ctx) as pool:
                outputs = list(pool.map(run_point, *zip(*args)))
        elif executor == "dask":
            try:
                from dask.distributed import Client
            except ImportError as exc:
                raise ImportError("executor='dask' needs dask.distributed: pip install 'simcore[cluster]'") from exc
            own = client is None
            client = client or Client(n_workers=max_workers, threads_per_worker=1, processes=True)
            try:
                outputs = client.gather(client.map(run_point, *zip(*args), pure=False))
            finally:
                if own:
                    client.close()
        else:
            raise ValueError(f"executor must be 'process', 'dask' or 'serial', got {executor!r}")
        frames = []
        points = self.points()
        for (k, s, _, _), metrics in zip(tasks, outputs):
            n = len(next(iter(metrics.values())))
            cols = {"point": np.full(n, k, np.int64), "seed": np.full(n, s, np.int64),
                    **{key: [points[k][key]] * n for key in self.grid}, "step": np.arange(n, dtype=np.int64)}
            frames.append(pl.DataFrame({**cols, **metrics}))
        point_table = pl.DataFrame([{"point": k, **p} for k, p in enumerate(points)])
        if out is not None:
            Path(out).mkdir(parents=True, exist_ok=True)
            point_table.write_parquet(Path(out) / "points.parquet")
        return SweepResults(pl.concat(frames), point_table, list(self.grid), time.perf_counter() - t0)


__all__ = [
    "ArmSpec", "BASELINE", "Experiment", "ExperimentError", "ExperimentResults", "ExperimentSpec", "REDUCERS",
    "Sweep", "SweepResults", "default_reducer", "experiment_from_spec", "load_experiment_spec", "parse_outcome",
    "reduce_series", "run_experiment_file", "run_point",
]
