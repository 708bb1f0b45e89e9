"""Surveys: questionnaires given to the population's archetypes at chosen steps (``surveys:``).

A survey round at step ``s`` is, for each survey listing ``s`` and each of its items: group the
agents by the survey's ``group_by`` on the device, render one prompt per non-empty archetype in
``orders`` rotations of the listed options, score the options' log-probabilities through the
policy's (cached) backend, and average the probabilities over the orders. All of that is the
archetype policy's own machinery (:meth:`ArchetypePolicy._prepare` and ``_score``): an item is
a :class:`~scenarios.schema.DecisionSpec` that writes no target. Rounds run inside the policy's
host cadence: survey steps must be multiples of ``policy.every``, and the runner is one more
host policy with that ``every``.

``surveys.parquet`` in the run directory has one row per (survey, step, item, archetype,
option): the archetype's size (``group_size``), its levels (one column per ``group_by``
feature), ``prob`` (averaged over ``orders`` listed orders; ``prob_sd`` their sd), and
``orders`` (how many orders were averaged: fewer than asked where a call failed, 0 with
``fallback``). Population distributions are size-weighted means of ``prob``
(:func:`analysis.surveys.distributions`), overall or by any grouping feature.

The table is appended through :class:`simcore.rundir.TableAppender` (one part file per survey
round, compacted into ``surveys.parquet`` when the run closes), so a round costs its own rows,
not the run's. Every part has the same columns: the union of the surveys' ``group_by`` features
(a level is null where its survey does not group by it). Resume truncates the table to the
checkpoint's step with the run's other appended tables (:func:`simcore.rundir.truncate_run`) and
recomputes the rounds from there, so a resumed run has each round exactly once.
"""
from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import pyarrow as pa

from scenarios.loader import ScenarioError
from scenarios.schema import DecisionSpec, SurveyItemSpec, SurveySpec
from simcore import rundir

from .personas import check_grouping
from .policy import (ENV_FIELDS, ArchetypePolicy, check_features, check_template, intervention_fields,
                     trial_values)

SURVEY_FIELDS = ("question",)


def item_decision(survey: SurveySpec, item: SurveyItemSpec) -> DecisionSpec:
    """The item as a decision the policy can render and score (it writes no target)."""
    return DecisionSpec(name=f"{survey.name}.{item.name}", target="(survey)", group_by=list(survey.group_by),
                        options=list(item.options), value={}, prompt=survey.prompt.replace("{question}", item.question),
                        labels=survey.labels)


def check_surveys(surveys: list[SurveySpec], *, features: Mapping[str, tuple] | Iterable[str], stats_names,
                  steps: int, every: int | None, scheduled: tuple[str, ...] = (), interventions: Iterable = (),
                  personas=None) -> None:
    """Every survey against the run and the model; raises ScenarioError naming the field."""
    if not surveys:
        return
    if every is None:
        raise ScenarioError("surveys", "surveys are asked through the policy's backend: add a policy: block")
    levels = {f: tuple(v) for f, v in features.items()} if isinstance(features, Mapping) else \
        {f: () for f in features}
    flags = intervention_fields(interventions)
    names: dict[str, int] = {}
    for i, sv in enumerate(surveys):
        where = f"surveys[{i}]"
        if sv.name in names:
            raise ScenarioError(f"{where}.name", f"{sv.name!r} is already surveys[{names[sv.name]}]'s name")
        names[sv.name] = i
        for k, s in enumerate(sv.steps):
            if s >= steps:
                raise ScenarioError(f"{where}.steps[{k}]", f"step {s} is beyond the run (run.steps = {steps})")
            if s % every:
                raise ScenarioError(f"{where}.steps[{k}]", f"step {s} is not on the policy's cadence "
                                    f"(a multiple of policy.every = {every})")
        check_features(where, sv.group_by, sv.labels, levels)
        allowed = set(sv.group_by) | set(stats_names) | set(ENV_FIELDS) | set(scheduled) | set(flags) | {"question"}
        fields = check_template(f"{where}.prompt", sv.prompt, allowed)
        if "question" not in fields:
            raise ScenarioError(f"{where}.prompt", "must show the item's {question}")
        check_grouping(personas, fields, sv.group_by, where)
        seen: dict[str, int] = {}
        for j, item in enumerate(sv.items):
            iw = f"{where}.items[{j}]"
            if item.name in seen:
                raise ScenarioError(f"{iw}.name", f"{item.name!r} is already items[{seen[item.name]}]'s name")
            seen[item.name] = j
            qfields = check_template(f"{iw}.question", item.question, allowed - {"question"})
            check_grouping(personas, qfields, sv.group_by, iw)
            trial = trial_values(flags, stats_names, scheduled, levels, sv.group_by, ", ".join(item.options))
            try:
                item_decision(sv, item).prompt.format_map(trial)
            except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
                raise ScenarioError(f"{iw}.question", f"cannot be rendered in {where}.prompt: "
                                    f"{type(exc).__name__}: {exc}") from None


class SurveyRunner:
    """Host policy (``every`` = the policy's): at each survey step, every item, one call per archetype and order."""

    def __init__(self, surveys: list[SurveySpec], policy: ArchetypePolicy):
        self.surveys = surveys
        self.policy = policy
        self.every = policy.every
        self.rows: list[dict] = []  # answers not yet appended
        self.levels = list(dict.fromkeys(f for sv in surveys for f in sv.group_by))  # one column each, every row
        self.path: Path | None = None
        self._out: rundir.TableAppender | None = None

    def attach(self, run_dir: Path) -> None:
        self.path = rundir.table_path(run_dir, "surveys")
        self._out = rundir.TableAppender(run_dir, "surveys")  # opened at the first round, after a resume's truncation

    def due(self, step: int) -> list[SurveySpec]:
        return [sv for sv in self.surveys if step in sv.steps]

    def update(self, sim) -> None:
        for sv in self.due(sim.step):
            for item in sv.items:
                self._ask(sim, sv, item)
        self._flush()

    def _ask(self, sim, sv: SurveySpec, item: SurveyItemSpec) -> None:
        policy = self.policy
        d = item_decision(sv, item)
        pending = policy._prepare(sim, -1, d, n_samples=sv.orders, architecture="archetypes")
        pending.spec = d
        pending.content_free = []  # surveys report the answers as given; calibration is the decisions' option
        if policy._pool is not None:  # pipelined: queue behind the policy's round, one backend user at a time
            results, _seconds = policy._pool.submit(policy._score, pending).result()
        else:
            results, _seconds = policy._score(pending)
        n_o, groups = sv.orders, pending.groups
        identity = getattr(policy.backend, "identity", type(policy.backend).__name__)
        for j in range(len(groups.codes) if results else 0):
            res = results[j * n_o:(j + 1) * n_o]
            ok = [r for r in res if r.error is None and all(math.isfinite(p) for p in r.probs)]
            probs = np.array([r.probs for r in ok]) if ok else np.full((1, len(d.options)), np.nan)
            mean, sd = probs.mean(axis=0), (probs.std(axis=0) if len(ok) > 1 else np.zeros(len(d.options)))
            code = int(groups.codes[j])
            levels = {k: policy.model.labels[k][v] for k, v in groups.decode(code).items()}
            base = {"survey": sv.name, "step": int(sim.step), "item": item.name, "kind": item.kind,
                    "archetype": "|".join(f"{k}={v}" for k, v in levels.items()), "archetype_code": code,
                    **{k: levels.get(k) for k in self.levels}, "group_size": int(groups.sizes[j]),
                    "prompt_hash": hashlib.sha256(pending.prompts[j][0].encode()).hexdigest()[:16],
                    "orders": len(ok), "orders_asked": n_o, "fallback": len(ok) < len(res),
                    "error": next((r.error for r in res if r.error), None), "backend": identity,
                    "cache_hit": all(bool(r.cached) for r in res)}
            for k, option in enumerate(d.options):
                self.rows.append({**base, "option": option, "option_index": k, "prob": float(mean[k]),
                                  "prob_sd": float(sd[k])})

    def _flush(self) -> None:
        """Append the round's rows (one part file); nothing without rows or a run directory."""
        if self._out is None or not self.rows:
            return
        self._out.append(pa.Table.from_pylist(self.rows))
        self.rows = []

    def close(self) -> None:
        self._flush()
        if self._out is not None:
            self._out.close()


def make_surveys(scenario, built, policy: ArchetypePolicy | None, steps: int) -> SurveyRunner | None:
    """The scenario's survey runner (checked against the built model), or None without ``surveys:``."""
    if not scenario.surveys:
        return None
    stats_names = tuple(policy.stats_names) if policy is not None else ()
    from .personas import feature_levels

    check_surveys(scenario.surveys, features=feature_levels(built.model, built.state, built.params),
                  stats_names=stats_names,
                  steps=steps,
                  every=policy.every if policy is not None else None,
                  scheduled=tuple(name for name, t in built.schedule.items() if np.ndim(t) == 1),
                  interventions=scenario.interventions, personas=scenario.personas)
    return SurveyRunner(list(scenario.surveys), policy)
