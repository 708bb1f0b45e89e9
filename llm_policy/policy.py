"""The archetype policy: a host policy that runs one LLM round every ``every`` steps.

A round, per decision: group agents on the device -> render one prompt per
non-empty archetype (``n_samples`` option orders each) -> score the options'
log-probabilities through the cached backend -> one value per archetype ->
broadcast to agents as the model's per-agent target parameter. Archetypes whose
calls failed after the backend's retries get NaN, which the model reads as "use
the heuristic" (counted as fallbacks). Every call is logged to ``llm_calls.parquet``.
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
from typing import Any

import jax
import numpy as np
import pyarrow as pa

from scenarios.loader import ScenarioError
from scenarios.schema import DecisionSpec, PolicySpec
from simcore.distributed import broadcast_from_lead
from simcore.engine import Model, Simulation, step_key
from simcore.io import atomic_write_table

from .archetypes import Groups, broadcast, group
from .types import BackendUnavailable, ScoreRequest

ENV_FIELDS = ("date", "month", "year", "step", "options", "group_size")
LLM_METRICS = ("llm_calls", "llm_cache_hits", "llm_fallbacks", "llm_prompt_tokens", "llm_completion_tokens",
               "llm_seconds")


def round_sig(x: float, digits: int = 2) -> float:
    """Numbers in prompts keep 2 significant figures, so similar weeks share cache entries."""
    if x == 0 or not math.isfinite(x):
        return x
    return round(x, digits - 1 - int(math.floor(math.log10(abs(x)))))


def _fields(template: str) -> set[str]:
    return {name.split(".")[0].split("[")[0] for _, name, _, _ in string.Formatter().parse(template) if name}


def check_policy(spec: PolicySpec, model: Model, stats_names: tuple[str, ...]) -> None:
    """Field-by-field checks against what a built model offers; raises ScenarioError."""
    features = tuple(model.labels) if model.features else ()  # grouping needs each feature's levels
    check_policy_names(spec, model.name, model.decision_targets, features, stats_names)


def check_policy_names(spec: PolicySpec, model_name: str, decision_targets, features, stats_names) -> None:
    """The policy's decisions against a model's targets, features and stats (names only: nothing is built)."""
    feats = set(features)
    for i, d in enumerate(spec.decisions):
        where = f"policy.decisions[{i}]"
        if d.target not in decision_targets:
            raise ScenarioError(f"{where}.target", f"unknown decision target {d.target!r} for model "
                                f"{model_name!r} (targets: {', '.join(decision_targets) or 'none'})")
        for f in d.group_by:
            if f not in feats:
                raise ScenarioError(f"{where}.group_by", f"unknown feature {f!r} (features: {', '.join(sorted(feats))})")
        allowed = set(d.group_by) | set(stats_names) | set(ENV_FIELDS)
        try:
            fields = _fields(d.prompt)
        except ValueError as exc:  # an unmatched brace: str.format could never render it
            raise ScenarioError(f"{where}.prompt", f"not a valid template: {exc}") from None
        unknown = sorted(fields - allowed)
        if unknown:
            raise ScenarioError(f"{where}.prompt", f"unknown field {{{unknown[0]}}} "
                                f"(available: {', '.join(sorted(allowed))})")
        # a dry render with values of the types _render passes (labels are text, stats numbers)
        sample = {"date": "March 2020", "month": "March", "year": 2020, "step": 0, "options": "yes or no",
                  "group_size": 1, **{f: "label" for f in d.group_by}, **{s: 1.0 for s in stats_names}}
        try:
            d.prompt.format_map(sample)
        except (ValueError, KeyError, IndexError, AttributeError, TypeError) as exc:
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
    future: Future | None = None
    results: Any = None


class ArchetypePolicy:
    """Host policy for :meth:`simcore.engine.Simulation.run`. Construct, then :meth:`attach` a run directory."""

    def __init__(self, spec: PolicySpec, model: Model, backend, *, stats_names: tuple[str, ...] = ()):
        self.spec = spec
        self.model = model
        self.every = spec.every
        self.backend = backend
        self.stats_names = stats_names
        self.start_date = _dt.date.fromisoformat(spec.start_date)
        self.rows: list[dict] = []
        self.per_step: dict[int, RoundStats] = {}
        self.log_path: Path | None = None
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="llm-round") if spec.pipelined else None
        self._pending: list[_Pending] = []

    # -- set-up -------------------------------------------------------------------------
    def attach(self, run_dir: Path) -> Path | None:
        """Log next to the run; wrap the backend in the response cache (``policy.cache`` or the run's own)."""
        from .cache import CachedBackend, ResponseCache

        self.log_path = Path(run_dir) / "llm_calls.parquet"
        if self.spec.backend.get("kind") == "replay" or isinstance(self.backend, CachedBackend):
            return None
        path = Path(self.spec.cache) if self.spec.cache else Path(run_dir) / "llm_cache.sqlite"
        path.parent.mkdir(parents=True, exist_ok=True)
        self.backend = CachedBackend(self.backend, ResponseCache(path))
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
                self._apply(sim, pending, sim.step)
        else:
            # apply the round computed from the previous cadence's state, then start the next one
            for pending in self._pending:
                pending.results = pending.future.result()
                self._apply(sim, pending, sim.step)
            self._pending = []
            for i, decision in enumerate(self.spec.decisions):
                pending = self._prepare(sim, i, decision)
                pending.future = self._pool.submit(self._score, pending)
                self._pending.append(pending)
        self._flush_log()

    def _prepare(self, sim: Simulation, index: int, d: DecisionSpec) -> _Pending:
        feats = self.model.features(sim.state, sim.params)
        stats = self.model.stats(sim.state, sim.params)
        levels = tuple(len(self.model.labels[f]) for f in d.group_by)
        groups = group(feats, stats, tuple(d.group_by), levels)
        prompts = [[self._render(d, groups, j, sim.step, sample) for sample in range(self.spec.n_samples)]
                   for j in range(len(groups.codes))]
        return _Pending(sim.step, index, groups, prompts)

    def _render(self, d: DecisionSpec, groups: Groups, j: int, step: int, sample: int) -> str:
        date = self.start_date + _dt.timedelta(days=step)
        k = sample % len(d.options)
        order = d.options[k:] + d.options[:k]  # rotate the listed option order: position-bias control
        values: dict[str, Any] = {
            "date": date.strftime("%B %Y"), "month": date.strftime("%B"), "year": date.year, "step": step,
            "options": ", ".join(order[:-1]) + " or " + order[-1], "group_size": int(groups.sizes[j]),
        }
        for name, level in groups.decode(int(groups.codes[j])).items():
            values[name] = self.model.labels[name][level]
        for name, means in groups.means.items():
            values[name] = round_sig(float(means[j]))
        return d.prompt.format_map(values)

    def _score(self, pending: _Pending):
        if jax.process_index() != 0:
            return [], 0.0  # in a multi-process run only process 0 asks; _apply receives its answers
        d = self.spec.decisions[pending.decision]
        options = tuple(" " + o for o in d.options)
        requests = [ScoreRequest(p, options, self.spec.temperature) for ps in pending.prompts for p in ps]
        t0 = time.perf_counter()
        results = self.backend.score(requests) if requests else []
        return results, time.perf_counter() - t0

    def _apply(self, sim: Simulation, pending: _Pending, step: int) -> None:
        d = self.spec.decisions[pending.decision]
        (results, seconds) = pending.results
        n_s = self.spec.n_samples
        weights = np.array([d.value.get(o, 0.0) for o in d.options])
        values = np.full(len(pending.groups.codes), np.nan)
        stats = self.per_step.setdefault(step, RoundStats())
        identity = getattr(self.backend, "identity", type(self.backend).__name__)
        for j in range(len(pending.groups.codes) if results else 0):
            res = results[j * n_s:(j + 1) * n_s]
            ok = [r for r in res if r.error is None and all(math.isfinite(p) for p in r.probs)]
            probs = np.mean([r.probs for r in ok], axis=0) if ok else np.full(len(d.options), np.nan)
            spread = np.std([r.probs for r in ok], axis=0) if len(ok) > 1 else np.zeros(len(d.options))
            fallback = len(ok) < len(res)
            if ok and not fallback:
                event = float(np.clip(probs @ weights, 0.0, 1.0))
                values[j] = d.scale * (1.0 - (1.0 - event) ** (1.0 / self.every))
            stats.calls += len(res)
            stats.cache_hits += sum(bool(r.cached) for r in res)
            stats.fallbacks += int(fallback)
            stats.prompt_tokens += sum(r.prompt_tokens for r in res)
            stats.completion_tokens += sum(r.completion_tokens for r in res)
            labels = {k: self.model.labels[k][v] for k, v in pending.groups.decode(int(pending.groups.codes[j])).items()}
            prompt = pending.prompts[j][0]
            self.rows.append({
                "step": step, "computed_at_step": pending.step, "decision": d.name,
                "archetype": "|".join(f"{k}={v}" for k, v in labels.items()),
                "archetype_code": int(pending.groups.codes[j]), "group_size": int(pending.groups.sizes[j]),
                "prompt_hash": hashlib.sha256(prompt.encode()).hexdigest()[:16],
                "prompt": prompt if self.spec.log_prompts else None,
                "options": list(d.options), "probs": [float(p) for p in probs], "probs_sd": [float(s) for s in spread],
                "value": float(values[j]), "backend": identity, "n_samples": len(res),
                "latency_s": float(sum(r.latency_s for r in res)),
                "prompt_tokens": int(sum(r.prompt_tokens for r in res)),
                "completion_tokens": int(sum(r.completion_tokens for r in res)),
                "cache_hit": all(bool(r.cached) for r in res), "retries": int(sum(r.retries for r in res)),
                "fallback": fallback, "error": next((r.error for r in res if r.error), None),
            })
        stats.seconds += seconds
        values = broadcast_from_lead(values)
        key = jax.random.fold_in(step_key(sim.root, step), 0x4C4C4D + pending.decision)
        sim.set_param(d.target, broadcast(pending.groups, values.astype(np.float32), key, d.heterogeneity))

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
        if self.log_path is None or not self.rows:
            return
        atomic_write_table(pa.Table.from_pylist(self.rows), self.log_path)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        self._flush_log()
        close = getattr(self.backend, "close", None)
        if close is not None:
            close()


def make_policy(spec: PolicySpec, model: Model, stats_names: tuple[str, ...]):
    """Check the spec and start the backend; BackendUnavailable becomes a ScenarioError (exit 2)."""
    from .backends import make_backend

    check_policy(spec, model, stats_names)
    backend_spec = dict(spec.backend)
    try:
        backend = make_backend(backend_spec)
    except BackendUnavailable as exc:
        raise ScenarioError("policy.backend", f"backend {backend_spec.get('kind')!r} cannot start: {exc}") from None
    except ValueError as exc:
        raise ScenarioError("policy.backend", str(exc)) from None
    return ArchetypePolicy(spec, model, backend, stats_names=stats_names)
