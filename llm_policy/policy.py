"""The archetype policy: a host policy that runs one LLM round every ``every`` steps.

A round, per decision: group agents on the device (``architecture: archetypes``; or one
group per agent, ``per_agent``) -> render one prompt per non-empty group (``n_samples``
option orders each) -> score the options' log-probabilities through the cached backend ->
optionally divide by the answer to a content-free prompt (``calibration: content_free``) ->
one value per group -> broadcast to agents as the model's per-agent target parameter.
Groups whose calls failed after the backend's retries get NaN, which the model reads as
"use the heuristic" (counted as fallbacks). Every call is logged to ``llm_calls.parquet``.

From answer to behaviour: ``P = sum(value[o] * P(o))`` is the event's probability over one
round and ``h = 1 - (1 - P)**(1/every)`` its per-step hazard. A target the model lists in
``decision_logits`` receives ``logit(h)`` (``h`` clipped to [1e-6, 1 - 1e-6]) and the model
maps it to behaviour on the device with fitted parameters (the epidemic:
``sigmoid(bias + slope * logit(h))``), so changing the map needs no new LLM call; other
targets receive ``scale * h``.

Prompt fields, rendered per round at the round's step: the ``group_by`` features' labels, the
model's statistics (group means), ``date``/``month``/``year``/``step``/``options``/
``group_size``, every scalar scheduled parameter at that step (``{lockdown}``,
``{school_scale}``, ...), ``{interventions}`` (the names of the scenario's interventions in
force, or "none") and one field per intervention with an identifier name: ``{pause_order}``
renders "in force" / "not in force", ``{pause_order:yes/no}`` chooses the two words. Where an
intervention's name equals another field's, the other field wins.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import math
import string
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import jax
import numpy as np
import pyarrow as pa

from scenarios.loader import ScenarioError
from scenarios.schema import DecisionSpec, PolicySpec
from simcore.distributed import broadcast_from_lead
from simcore.engine import Model, Simulation, step_key
from simcore.rundir import TableAppender

from .archetypes import Groups, broadcast, group, per_agent
from .personas import check_grouping, render_persona
from .types import BackendUnavailable, ScoreRequest

ENV_FIELDS = ("date", "month", "year", "step", "options", "group_size", "interventions", "persona", "backstory")
LLM_METRICS = ("llm_calls", "llm_cache_hits", "llm_fallbacks", "llm_prompt_tokens", "llm_completion_tokens",
               "llm_seconds")
EPS = 1e-6  # per-step hazards are clipped to [EPS, 1 - EPS] before their logit


def round_sig(x: float, digits: int = 2) -> float:
    """Numbers in prompts keep 2 significant figures, so similar weeks share cache entries."""
    if x == 0 or not math.isfinite(x):
        return x
    return round(x, digits - 1 - int(math.floor(math.log10(abs(x)))))


def _fields(template: str) -> set[str]:
    return {name.split(".")[0].split("[")[0] for _, name, _, _ in string.Formatter().parse(template) if name}


class Flag:
    """An intervention as a prompt field: "in force" / "not in force", or the words of ``{name:ON/OFF}``."""

    def __init__(self, active: bool):
        self.active = bool(active)

    def __format__(self, spec: str) -> str:
        if not spec:
            return "in force" if self.active else "not in force"
        on, sep, off = spec.partition("/")
        if not sep:
            raise ValueError(f"an intervention field takes no format, or two words ON/OFF, got {spec!r}")
        return on if self.active else off

    def __str__(self) -> str:
        return format(self, "")


class Blank:
    """Every field of a content-free prompt: "N/A" whatever its format (contextual calibration)."""

    def __format__(self, spec: str) -> str:
        return "N/A"

    def __str__(self) -> str:
        return "N/A"


def intervention_fields(interventions: Iterable) -> list[str]:
    """Prompt fields the interventions offer: their names that are identifiers, once each."""
    return list(dict.fromkeys(iv.name for iv in interventions if iv.name and iv.name.isidentifier()))


def check_policy(spec: PolicySpec, model: Model, stats_names: tuple[str, ...], *, scheduled: tuple[str, ...] = (),
                 interventions: Iterable = (), n_agents: int | None = None, personas=None) -> None:
    """Field-by-field checks against what a built model offers (feature levels included); raises ScenarioError.

    ``scheduled``: the scalar scheduled parameters prompts may read; ``interventions``: the
    scenario's (objects with ``name``, ``start``, ``end``); ``n_agents``: the population size,
    checked against ``per_agent_max`` for ``architecture: per_agent``.
    """
    levels = dict(model.labels) if model.features else {}  # grouping needs each feature's levels
    check_policy_names(spec, model.name, model.decision_targets, levels, stats_names, scheduled=scheduled,
                       interventions=interventions, n_agents=n_agents, decision_logits=model.decision_logits,
                       personas=personas)


def check_features(where: str, group_by, labels: Mapping, levels: Mapping[str, tuple]) -> None:
    """``group_by`` names known features, and ``labels`` words only grouped features' known levels."""
    for f in group_by:
        if f not in levels:
            raise ScenarioError(f"{where}.group_by", f"unknown feature {f!r} (features: {', '.join(sorted(levels))})")
    for f, words in labels.items():
        if f not in group_by:
            raise ScenarioError(f"{where}.labels", f"{f!r} is not in group_by ({', '.join(group_by)})")
        unknown_levels = sorted(set(words) - set(levels[f])) if levels[f] else []
        if unknown_levels:
            raise ScenarioError(f"{where}.labels.{f}", f"unknown level {unknown_levels[0]!r} "
                                f"(levels: {', '.join(levels[f])})")


def check_template(field: str, template: str, allowed: set[str]) -> set[str]:
    """The fields ``template`` names, each one of ``allowed``; raises ScenarioError on ``field``."""
    try:
        fields = _fields(template)
    except ValueError as exc:  # an unmatched brace: str.format could never render it
        raise ScenarioError(field, f"not a valid template: {exc}") from None
    unknown = sorted(fields - allowed)
    if unknown:
        raise ScenarioError(field, f"unknown field {{{unknown[0]}}} (available: {', '.join(sorted(allowed))})")
    return fields


def trial_values(flags, stats_names, scheduled, levels: Mapping[str, tuple], group_by, options: str) -> dict:
    """Values of the types _render passes, for a trial render that catches format specs that cannot apply
    (e.g. ``{borough:.0f}``) before the run starts."""
    return {**{name: Flag(True) for name in flags}, **{name: 1.0 for name in (*stats_names, *scheduled)},
            **{f: (levels[f][0] if levels[f] else "label") for f in group_by}, "date": "March 2020",
            "month": "March", "year": 2020, "step": 0, "options": options, "group_size": 1,
            "interventions": "none", "persona": "a persona", "backstory": "a backstory"}


def check_policy_names(spec: PolicySpec, model_name: str, decision_targets, features, stats_names, *,
                       scheduled: tuple[str, ...] = (), interventions: Iterable = (), n_agents: int | None = None,
                       decision_logits=(), personas=None) -> None:
    """The policy's decisions against a model's targets, features and stats (names only: nothing is built).

    ``features`` is a tuple of names, or a mapping name -> levels; levels, where known, are
    checked against ``labels`` and used for the trial render.
    """
    levels = {f: tuple(v) for f, v in features.items()} if isinstance(features, Mapping) else {f: () for f in features}
    if spec.architecture == "per_agent" and jax.process_count() > 1:
        raise ScenarioError("policy.architecture", "per_agent runs in a single process (it reads every agent's "
                            "features on the host)")
    if spec.architecture == "per_agent" and n_agents is not None and n_agents > spec.per_agent_max:
        raise ScenarioError("policy.architecture", f"per_agent makes one LLM call per agent per round: "
                            f"population.size must be <= policy.per_agent_max ({spec.per_agent_max}), got {n_agents}")
    flags = intervention_fields(interventions)
    targets: dict[str, int] = {}
    for i, d in enumerate(spec.decisions):
        where = f"policy.decisions[{i}]"
        if d.target not in decision_targets:
            raise ScenarioError(f"{where}.target", f"unknown decision target {d.target!r} for model "
                                f"{model_name!r} (targets: {', '.join(decision_targets) or 'none'})")
        if d.target in targets:
            raise ScenarioError(f"{where}.target", f"{d.target!r} is already the target of "
                                f"policy.decisions[{targets[d.target]}] (one decision per target)")
        targets[d.target] = i
        if d.scale is not None and d.target in decision_logits:
            stem = d.target.removesuffix("_llm")
            raise ScenarioError(f"{where}.scale", f"model {model_name!r} maps answers to behaviour on the device: "
                                f"set model.params.llm_map.{stem}.bias and .slope (hazard = sigmoid(bias + slope * "
                                f"logit(h))) instead of scale")
        check_features(where, d.group_by, d.labels, levels)
        allowed = set(d.group_by) | set(stats_names) | set(ENV_FIELDS) | set(scheduled) | set(flags)
        fields = check_template(f"{where}.prompt", d.prompt, allowed)
        check_grouping(personas, fields, d.group_by, where)
        trial = trial_values(flags, stats_names, scheduled, levels, d.group_by, " or ".join(d.options))
        try:
            d.prompt.format_map(trial)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
            raise ScenarioError(f"{where}.prompt", f"cannot be rendered: {type(exc).__name__}: {exc}") from None


@dataclass
class RoundStats:
    calls: int = 0
    cache_hits: int = 0
    fallbacks: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0


@dataclass
class _Pending:
    step: int
    decision: int
    groups: Groups
    prompts: list[list[str]]
    content_free: list[str] = field(default_factory=list)  # one per listed option order, with calibration
    future: Future | None = None
    results: Any = None
    spec: DecisionSpec | None = None  # a survey item's (llm_policy.surveys); else spec.decisions[decision]
    values: np.ndarray | None = None  # one per group, once recorded (see ArchetypePolicy._record)


@dataclass(frozen=True)
class _Intervention:
    name: str
    start: int
    end: int


class ArchetypePolicy:
    """Host policy for :meth:`simcore.engine.Simulation.run`. Construct, then :meth:`attach` a run directory.

    ``interventions``: the scenario's (anything with ``name``, ``start``, ``end``), which prompts
    may name; scheduled parameters are read from the simulation at each round.
    """

    def __init__(self, spec: PolicySpec, model: Model, backend, *, stats_names: tuple[str, ...] = (),
                 interventions: Iterable = (), personas=None, seed: int = 0):
        self.spec = spec
        self.personas = personas  # scenarios.schema.PersonaSpec or None: what {persona} reads
        self.backstories: dict[tuple, str] = {}  # personas.factory's texts by combo_key (set by the session)
        self.seed = seed
        self.model = model
        self.every = spec.every
        self.backend = backend
        self.stats_names = stats_names
        self.interventions = [_Intervention(iv.name, int(iv.start), int(iv.end)) for iv in interventions]
        self.start_date = _dt.date.fromisoformat(spec.start_date)
        self.rows: list[dict] = []
        self.per_step: dict[int, RoundStats] = {}
        self.log_path: Path | None = None
        self._log: TableAppender | None = None  # the llm_calls table, once attached
        self._logged = 0
        self.cache_path: Path | None = None
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="llm-round") if spec.pipelined else None
        self._pending: list[_Pending] = []

    # -- set-up -------------------------------------------------------------------------
    def attach(self, run_dir: Path, *, cache: str | Path | None = None) -> Path | None:
        """Log next to the run; wrap the backend in the response cache (``policy.cache``, else ``cache``,
        else the run's own ``llm_cache.sqlite``). Returns the cache's path (None: a replay backend)."""
        from .cache import CachedBackend, ResponseCache

        self.log_path = Path(run_dir) / "llm_calls.parquet"  # where the closed run's log lies (simcore.rundir)
        self._log = TableAppender(run_dir, "llm_calls")  # one part file per round: O(new rows)
        self._logged = len(self.rows)  # rows of self.rows on disk (or not this run's)
        if self.spec.backend.get("kind") == "replay" or isinstance(self.backend, CachedBackend):
            return None
        path = Path(self.spec.cache or cache or Path(run_dir) / "llm_cache.sqlite")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.backend = CachedBackend(self.backend, ResponseCache(path))
        self.cache_path = path
        return path

    @property
    def totals(self) -> RoundStats:
        out = RoundStats()
        for st in self.per_step.values():
            for f in ("calls", "cache_hits", "fallbacks", "prompt_tokens", "completion_tokens", "seconds"):
                setattr(out, f, getattr(out, f) + getattr(st, f))
        return out

    # -- the round ------------------------------------------------------------------------
    def update(self, sim: Simulation) -> None:
        if self._pool is None:
            for i, decision in enumerate(self.spec.decisions):
                pending = self._prepare(sim, i, decision)
                pending.results = self._score(pending)
                self._set(sim, pending, self._record(pending, sim.step), sim.step)
        else:
            # apply the round computed from the previous cadence's state, then start the next one
            for pending in self._pending:
                self._collect(pending)
                self._set(sim, pending, pending.values, sim.step)
            self._pending = []
            for i, decision in enumerate(self.spec.decisions):
                pending = self._prepare(sim, i, decision)
                pending.future = self._pool.submit(self._score, pending)
                self._pending.append(pending)
        self._flush_log()

    def _collect(self, pending: _Pending) -> None:
        """Wait for a pipelined round's answers and record them (log rows, counters) at the step they apply.

        Once only: the round lands in the log when its answers arrive, whether at the next
        cadence step, at a checkpoint or at the end of the run (:meth:`finish`).
        """
        if pending.values is not None:
            return
        pending.results = pending.future.result()
        pending.values = self._record(pending, pending.step + self.every)

    def finish(self, sim: Simulation) -> None:
        """End of the run: a pipelined round still in flight lands in the log and the totals.

        Its step (the next cadence step) lies past the run, so it changes no simulated
        step; it stays pending, so a checkpoint taken now carries it into an extended run.
        """
        for pending in self._pending:
            self._collect(pending)
        self._flush_log()

    # -- checkpoints ----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """What a checkpoint keeps: the call log's length, the per-step counters, the pending round, the cache.

        A pending pipelined round is waited for and logged first, so its answers are
        saved (values per archetype, and per-agent archetype codes under ``arrays``).
        """
        for pending in self._pending:
            self._collect(pending)
        self._flush_log()
        pend, arrays = [], {}
        for k, p in enumerate(self._pending):
            pend.append({"step": p.step, "decision": p.decision, "group_by": list(p.groups.group_by),
                         "levels": list(p.groups.levels), "codes": [int(c) for c in p.groups.codes],
                         "per_agent": p.groups.member_levels is not None,
                         "values": [None if not math.isfinite(v) else float(v) for v in p.values]})
            arrays[f"pending{k}_agent_code"] = np.asarray(p.groups.agent_code, np.int32)
        return {"kind": "archetype_policy", "rows_logged": len(self.rows),
                "per_step": {str(k): vars(v).copy() for k, v in sorted(self.per_step.items())},
                "pending": pend, "backend": getattr(self.backend, "identity", type(self.backend).__name__),
                "cache": None if self.cache_path is None else str(self.cache_path), "arrays": arrays}

    def load_state_dict(self, blob: Mapping[str, Any]) -> None:
        """Continue from a checkpoint: the log's first ``rows_logged`` rows, the counters, the pending round."""
        import jax.numpy as jnp

        identity = getattr(self.backend, "identity", type(self.backend).__name__)
        if blob.get("backend") not in (None, identity):
            raise ScenarioError("checkpoint", f"the run's LLM answers came from backend {blob['backend']!r}, "
                                              f"this resume has {identity!r}; resume with the same backend")
        self._restore_log(int(blob.get("rows_logged", 0)))
        self.per_step = {int(k): RoundStats(**v) for k, v in (blob.get("per_step") or {}).items()}
        arrays = blob.get("arrays") or {}
        self._pending = []
        for k, p in enumerate(blob.get("pending") or []):
            codes = np.asarray(p["codes"], np.int64)
            groups = Groups(tuple(p["group_by"]), tuple(p["levels"]), codes, np.zeros(len(codes), np.int64), {},
                            jnp.asarray(arrays[f"pending{k}_agent_code"]), {} if p["per_agent"] else None)
            values = np.array([np.nan if v is None else v for v in p["values"]], np.float64)
            self._pending.append(_Pending(int(p["step"]), int(p["decision"]), groups, [], values=values))

    def _restore_log(self, n: int) -> None:
        """The call log as it was at the checkpoint: its first ``n`` rows, on disk and here (later ones are
        recomputed and appended again)."""
        from simcore import rundir

        self.rows = []
        if n == 0 and (self._log is None or not rundir.has_table(self._log.dir, "llm_calls")):
            self._logged = 0
            return
        if self._log is None or not rundir.has_table(self._log.dir, "llm_calls"):
            raise ScenarioError("checkpoint", f"the checkpoint counts {n} logged LLM calls but the run has no "
                                              "llm_calls table")
        run_dir = self._log.dir
        have = rundir.keep_rows(run_dir, "llm_calls", n)  # cuts nothing when it has fewer than n
        if have < n:
            raise ScenarioError("checkpoint", f"llm_calls has {have} rows, the checkpoint counts {n}")
        self._log = TableAppender(run_dir, "llm_calls")  # reopens after the cut
        self.rows = rundir.read_table(run_dir, "llm_calls").to_pylist()
        self._logged = len(self.rows)

    def _prepare(self, sim: Simulation, index: int, d: DecisionSpec, n_samples: int | None = None,
                 architecture: str | None = None) -> _Pending:
        """Group, then render every group's prompt in ``n_samples`` listed option orders (default the policy's)."""
        n_samples = self.spec.n_samples if n_samples is None else n_samples
        architecture = architecture or self.spec.architecture
        feats = self.model.features(sim.state, sim.params)
        stats = self.model.stats(sim.state, sim.params)
        levels = tuple(len(self.model.labels[f]) for f in d.group_by)
        grouping = per_agent if architecture == "per_agent" else group
        groups = grouping(feats, stats, tuple(d.group_by), levels)
        env = self.env_values(sim.step, sim.schedule)
        # one prompt string per call is host work by nature; per_agent is capped by per_agent_max
        samples = range(n_samples)
        prompts = [[self.render(d, self.group_values(d, groups, j), env, k) for k in samples]
                   for j in range(len(groups.codes))]
        content_free = ([self.render_content_free(d, sample) for sample in range(self.spec.n_samples)]
                        if self.spec.calibration == "content_free" else [])
        return _Pending(sim.step, index, groups, prompts, content_free)

    def answer_table(self, index: int, steps: int, schedule: dict | None = None,
                     fixed: Iterable[str] = ()) -> np.ndarray:
        """The value each archetype of decision ``index`` would get at every round in ``[0, steps)``, asked
        without a simulation: float32 ``[rounds, prod(levels)]``, NaN where the heuristic applies.

        A round's answer depends on the agents only through the archetype's levels when the prompt
        reads discrete fields alone (the grouped features, the calendar, interventions in force,
        scheduled parameters): then every archetype that could exist is asked once per round (the
        cache scores each distinct prompt once) and a calibration looks the value up on the device
        each round (:mod:`simcore.calibrate`). The rows land in the call log and the counters like a
        run's. A prompt that reads a statistic of the members, the group's size, or a scheduled
        parameter named in ``fixed`` (one the calibration changes) cannot be tabulated: ScenarioError.
        """
        d = self.spec.decisions[index]
        where = f"policy.decisions[{index}].prompt"
        fields = _fields(d.prompt)
        for name in sorted(fields):
            if name in self.stats_names or name == "group_size":
                raise ScenarioError(where, f"{{{name}}} is a statistic of the archetype's members; a calibration "
                                           "looks answers up per archetype and needs prompts of discrete fields")
            if name in fixed:
                raise ScenarioError(where, f"{{{name}}} is a scheduled parameter the calibration fits; its "
                                           "answers cannot be asked before the fit")
        if self.every <= 0:
            return np.zeros((0, 0), np.float32)
        levels = tuple(len(self.model.labels[f]) for f in d.group_by)
        n = int(np.prod(levels))
        import jax.numpy as jnp

        groups = Groups(tuple(d.group_by), levels, np.arange(n, dtype=np.int64), np.zeros(n, np.int64), {},
                        jnp.zeros(0, jnp.int32))
        rounds = range(0, steps, self.every)
        out = np.full((len(rounds), n), np.nan, np.float32)
        content_free = ([self.render_content_free(d, k) for k in range(self.spec.n_samples)]
                        if self.spec.calibration == "content_free" else [])
        for r, step in enumerate(rounds):
            env = self.env_values(step, schedule)
            prompts = [[self.render(d, self.group_values(d, groups, j), env, k) for k in range(self.spec.n_samples)]
                       for j in range(n)]
            pending = _Pending(step, index, groups, prompts, list(content_free))
            pending.results = self._score(pending)
            out[r] = self._record(pending, step)
        self._flush_log()
        return out

    def env_values(self, step: int, schedule: dict | None = None) -> dict[str, Any]:
        """The round's shared fields at ``step``: calendar, scalar scheduled parameters, interventions in force."""
        date = self.start_date + _dt.timedelta(days=step)
        values: dict[str, Any] = {"date": date.strftime("%B %Y"), "month": date.strftime("%B"), "year": date.year,
                                  "step": step}
        active = [iv.name for iv in self.interventions if iv.name and iv.start <= step < iv.end]
        for name in intervention_fields(self.interventions):
            values[name] = Flag(name in active)
        for name, table in (schedule or {}).items():
            table = np.asarray(table)
            if table.ndim == 1 and len(table):
                values[name] = round_sig(float(table[min(step, len(table) - 1)]))
        values["interventions"] = ", ".join(dict.fromkeys(active)) or "none"
        return values

    def group_values(self, d: DecisionSpec, groups: Groups, j: int) -> dict[str, Any]:
        """Group ``j``'s own fields: feature labels (in the decision's words), mean statistics, size."""
        values: dict[str, Any] = {"group_size": int(groups.sizes[j])}
        for name, level in groups.decode(int(groups.codes[j])).items():
            values[name] = self.label(d, name, level)
        for name, means in groups.means.items():
            values[name] = round_sig(float(means[j]))
        # {persona}: rendered from the group's own levels (llm_policy.personas); without a personas: block a
        # grouped feature named "persona" (the social model's) keeps its label
        if (self.personas is not None or "persona" not in groups.group_by) and "persona" in _fields(d.prompt):
            codes = {name: self.model.labels[name][lv] for name, lv in groups.decode(int(groups.codes[j])).items()}
            values["persona"] = self.persona(d, codes)
        if "backstory" in _fields(d.prompt):
            codes = {name: self.model.labels[name][lv] for name, lv in groups.decode(int(groups.codes[j])).items()}
            values["backstory"] = self.backstory(codes)
        return values

    def persona(self, d: DecisionSpec, codes: Mapping[str, str]) -> str:
        """``{persona}`` for a group with these level codes (the scenario's ``personas:``, or a default listing)."""
        text = render_persona(self.personas, self.seed, codes, d.labels)
        f = getattr(self.personas, "factory", None)
        if f is not None and f.into_persona:
            text = f"{text.rstrip('.')}. {self.backstory(codes)}"
        return text

    def backstory(self, codes: Mapping[str, str]) -> str:
        """``{backstory}``: the persona factory's text for these levels (written with personas.parquet)."""
        from .personas import combo_key, persona_fields

        key = combo_key({f: codes[f] for f in persona_fields(self.personas)})
        if key not in self.backstories:
            raise KeyError(f"no backstory for {dict(key)} (personas.parquet was not written with a factory)")
        return self.backstories[key]

    def label(self, d: DecisionSpec, feature: str, level: int) -> str:
        """How a feature's level reads in ``d``'s prompt: its words in ``d.labels``, else its code."""
        code = self.model.labels[feature][level]
        return d.labels.get(feature, {}).get(code, code)

    @staticmethod
    def _options_text(d: DecisionSpec, sample: int) -> str:
        k = sample % len(d.options)
        order = d.options[k:] + d.options[:k]  # rotate the listed option order: position-bias control
        return ", ".join(order[:-1]) + " or " + order[-1]

    def render(self, d: DecisionSpec, group_values: dict, env: dict, sample: int = 0) -> str:
        """One group's prompt; ``sample`` picks the listed option order."""
        return d.prompt.format_map({**env, **group_values, "options": self._options_text(d, sample)})

    def render_content_free(self, d: DecisionSpec, sample: int = 0) -> str:
        """The prompt with every field but ``options`` replaced by "N/A": its answer measures the prompt's own bias."""
        blanks = {name: Blank() for name in _fields(d.prompt)}
        return d.prompt.format_map({**blanks, "options": self._options_text(d, sample)})

    def _score(self, pending: _Pending):
        if jax.process_index() != 0:
            return [], 0.0  # in a multi-process run only process 0 asks; _record receives its answers
        d = pending.spec or self.spec.decisions[pending.decision]
        options = tuple(" " + o for o in d.options)
        prompts = [p for ps in pending.prompts for p in ps] + pending.content_free
        requests = [ScoreRequest(p, options, self.spec.temperature) for p in prompts]
        t0 = time.perf_counter()
        results = self.backend.score(requests) if requests else []
        return results, time.perf_counter() - t0

    def _record(self, pending: _Pending, step: int) -> np.ndarray:
        """Turn a round's answers into one value per group; log its rows and count its calls at ``step``."""
        d = self.spec.decisions[pending.decision]
        (results, seconds) = pending.results
        n_s = self.spec.n_samples
        n_groups = len(pending.groups.codes)
        weights = np.array([d.value.get(o, 0.0) for o in d.options])
        values = np.full(n_groups, np.nan)
        stats = self.per_step.setdefault(step, RoundStats())
        identity = getattr(self.backend, "identity", type(self.backend).__name__)
        as_logit = d.target in self.model.decision_logits
        cf_results = results[n_groups * n_s:] if results else []
        cf_probs, cf_error = content_free_probs(cf_results)
        for r in cf_results:
            _count(stats, r)
        for j in range(n_groups if results else 0):
            res = results[j * n_s:(j + 1) * n_s]
            ok = [k for k, r in enumerate(res) if r.error is None and all(math.isfinite(p) for p in r.probs)]
            raw = np.array([res[k].probs for k in ok]) if ok else np.full((1, len(d.options)), np.nan)
            probs_k = raw if cf_probs is None or not ok else calibrate(raw, cf_probs[ok])
            probs = probs_k.mean(axis=0)
            spread = probs_k.std(axis=0) if len(ok) > 1 else np.zeros(len(d.options))
            fallback = len(ok) < len(res) or cf_error is not None
            event = float(np.clip(probs @ weights, 0.0, 1.0)) if ok else math.nan
            if not fallback:
                hazard = 1.0 - (1.0 - event) ** (1.0 / self.every)
                if as_logit:
                    h = min(max(hazard, EPS), 1.0 - EPS)
                    values[j] = math.log(h) - math.log1p(-h)
                else:
                    values[j] = (1.0 if d.scale is None else d.scale) * hazard
            for r in res:
                _count(stats, r)
            stats.fallbacks += int(fallback)
            code = int(pending.groups.codes[j])
            labels = {k: self.model.labels[k][v] for k, v in pending.groups.decode(code).items()}
            if pending.groups.member_levels is not None:
                labels = {"agent": code, **labels}
            prompt = pending.prompts[j][0]
            self.rows.append({
                "step": step, "computed_at_step": pending.step, "decision": d.name,
                "archetype": "|".join(f"{k}={v}" for k, v in labels.items()),
                "archetype_code": code, "group_size": int(pending.groups.sizes[j]),
                "prompt_hash": hashlib.sha256(prompt.encode()).hexdigest()[:16],
                "prompt": prompt if self.spec.log_prompts else None,
                "options": list(d.options), "probs": [float(p) for p in probs], "probs_sd": [float(s) for s in spread],
                "probs_uncalibrated": [float(p) for p in raw.mean(axis=0)], "p_event": event,
                "value": float(values[j]), "backend": identity, "n_samples": len(res),
                "latency_s": float(sum(r.latency_s for r in res)),
                "prompt_tokens": int(sum(r.prompt_tokens for r in res)),
                "completion_tokens": int(sum(r.completion_tokens for r in res)),
                "cache_hit": all(bool(r.cached) for r in res), "retries": int(sum(r.retries for r in res)),
                "fallback": fallback, "error": next((r.error for r in res if r.error), cf_error),
            })
        stats.seconds += seconds
        return broadcast_from_lead(values)

    def _set(self, sim: Simulation, pending: _Pending, values: np.ndarray, step: int) -> None:
        """Broadcast a round's group values to the agents: the model's per-agent target parameter."""
        d = self.spec.decisions[pending.decision]
        as_logit = d.target in self.model.decision_logits
        key = jax.random.fold_in(step_key(sim.root, step), 0x4C4C4D + pending.decision)
        sim.set_param(d.target, broadcast(pending.groups, values.astype(np.float32), key, d.heterogeneity,
                                          logit=as_logit))

    # -- outputs ---------------------------------------------------------------------------------
    def metrics_for(self, steps: np.ndarray) -> dict[str, np.ndarray]:
        """Per-step LLM columns for metrics.parquet (zeros on steps without a round)."""
        cols = {name: np.zeros(len(steps), np.float64 if name == "llm_seconds" else np.int64) for name in LLM_METRICS}
        for i, step in enumerate(steps):
            st = self.per_step.get(int(step))
            if st is None:
                continue
            cols["llm_calls"][i] = st.calls
            cols["llm_cache_hits"][i] = st.cache_hits
            cols["llm_fallbacks"][i] = st.fallbacks
            cols["llm_prompt_tokens"][i] = st.prompt_tokens
            cols["llm_completion_tokens"][i] = st.completion_tokens
            cols["llm_seconds"][i] = st.seconds
        return cols

    def _flush_log(self) -> None:
        """Append the rows logged since the last flush (``llm_calls.parts/``; see :mod:`simcore.rundir`)."""
        if self._log is None or self._logged >= len(self.rows):
            return
        self._log.append(pa.Table.from_pylist(self.rows[self._logged:]))
        self._logged = len(self.rows)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        self._flush_log()
        if self._log is not None:
            self._log.close()  # one llm_calls.parquet again
        close = getattr(self.backend, "close", None)
        if close is not None:
            close()


def _count(stats: RoundStats, r) -> None:
    stats.calls += 1
    stats.cache_hits += int(bool(r.cached))
    stats.prompt_tokens += r.prompt_tokens
    stats.completion_tokens += r.completion_tokens


def content_free_probs(results) -> tuple[np.ndarray | None, str | None]:
    """(probabilities of the content-free prompts, one row per option order; error). (None, None): no calibration."""
    if not results:
        return None, None
    for r in results:
        if r.error is not None or not all(math.isfinite(p) and p > 0 for p in r.probs):
            return None, f"content-free prompt: {r.error or 'zero or non-finite probabilities'}"
    return np.array([r.probs for r in results], np.float64), None


def calibrate(probs: np.ndarray, content_free: np.ndarray) -> np.ndarray:
    """Contextual calibration (Zhao et al. 2021): ``p_cal ∝ p / p_cf``, row by row.

    ``content_free`` holds the answer to the same prompt with every field replaced by "N/A"
    (same listed option order): the prompt's own bias towards each option. Dividing it out
    makes that content-free prompt answer uniformly. For two options this is a shift of the
    answer's logit by ``-logit(p_cf)``.
    """
    out = np.asarray(probs, np.float64) / np.asarray(content_free, np.float64)
    return out / out.sum(axis=-1, keepdims=True)


def open_backend(spec: dict):
    """Start (or reach) the backend ``spec`` names; a backend that cannot start is a ScenarioError on policy.backend."""
    from .backends import make_backend

    try:
        return make_backend(spec)
    except BackendUnavailable as exc:
        raise ScenarioError("policy.backend", f"backend {spec.get('kind')!r} cannot start: {exc}") from None
    except ValueError as exc:
        raise ScenarioError("policy.backend", str(exc)) from None


def make_policy(spec: PolicySpec, model: Model, stats_names: tuple[str, ...], *, scheduled: tuple[str, ...] = (),
                interventions: Iterable = (), n_agents: int | None = None, personas=None, seed: int = 0):
    """Check the spec and start the backend; BackendUnavailable becomes a ScenarioError (exit 2)."""
    interventions = list(interventions)
    check_policy(spec, model, stats_names, scheduled=scheduled, interventions=interventions, n_agents=n_agents,
                 personas=personas)
    backend = open_backend(dict(spec.backend))
    return ArchetypePolicy(spec, model, backend, stats_names=stats_names, interventions=interventions,
                           personas=personas, seed=seed)
