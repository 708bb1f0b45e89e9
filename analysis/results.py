"""Experiment results: per-step metrics of every arm and seed, and paired statistics against the baseline.

Polars and numpy only, no JAX: ``analysis.load_experiment(DIR)`` reads a saved experiment
without the engine. :mod:`simcore.experiments` runs experiments and returns these (and re-exports
the names below).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import polars as pl

from scenarios import ScenarioError
from simcore.rundir import atomic_write_json

REDUCERS = ("sum", "mean", "max", "min", "final", "peak_step")


class ExperimentError(ScenarioError):
    """Invalid experiment input: ``field: reason`` (CLI exit code 2)."""


# -- outcomes ---------------------------------------------------------------------------------
def default_reducer(metric: str) -> str:
    """``new_*`` flows are summed over the run, rates and shares averaged, stocks taken at the end."""
    if metric.startswith("new_"):
        return "sum"
    if metric.endswith(("_rate", "_share")):
        return "mean"
    return "final"


def parse_outcome(outcome: str) -> tuple[str, str]:
    """``"new_deaths:sum"`` -> ``("new_deaths", "sum")``; a bare metric gets :func:`default_reducer`."""
    metric, _, reducer = outcome.partition(":")
    reducer = reducer or default_reducer(metric)
    if reducer not in REDUCERS:
        raise ExperimentError("outcomes", f"unknown reducer {reducer!r} in {outcome!r} (known: {', '.join(REDUCERS)})")
    return metric, reducer


def reduce_series(values: np.ndarray, reducer: str) -> np.ndarray:
    """Reduce ``[..., T]`` series to ``[...]``."""
    values = np.asarray(values, dtype=np.float64)
    if reducer == "sum":
        return values.sum(axis=-1)
    if reducer == "mean":
        return values.mean(axis=-1)
    if reducer == "max":
        return values.max(axis=-1)
    if reducer == "min":
        return values.min(axis=-1)
    if reducer == "final":
        return values[..., -1]
    if reducer == "peak_step":
        return values.argmax(axis=-1).astype(np.float64)
    raise ExperimentError("outcomes", f"unknown reducer {reducer!r}")


class ExperimentResults:
    """Per-step metrics of every arm and seed, with paired statistics against the baseline.

    ``metrics``: a polars DataFrame with columns ``arm, seed, step`` and one per metric.
    Outcomes are ``"metric:reducer"`` strings (reducers: sum, mean, max, min, final,
    peak_step; a bare metric uses :func:`default_reducer`).
    """

    def __init__(self, metrics: pl.DataFrame, *, baseline: str, arms: Sequence[str], seeds: Sequence[int],
                 steps: int, branch_step: int | None = None, timing: Mapping[str, float] | None = None,
                 info: Mapping[str, Any] | None = None):
        self.metrics = metrics
        self.baseline = baseline
        self.arms = list(arms)
        self.seeds = [int(s) for s in seeds]
        self.steps = int(steps)
        self.branch_step = branch_step
        self.timing = dict(timing or {})
        self.info = dict(info or {})
        self._cache: dict[str, dict[str, np.ndarray]] = {}

    @property
    def metric_names(self) -> list[str]:
        return [c for c in self.metrics.columns if c not in ("arm", "seed", "step")]

    def series(self, metric: str) -> dict[str, np.ndarray]:
        """``{arm: [n_seeds, T]}`` for one metric, seeds in ``self.seeds`` order."""
        if metric not in self._cache:
            if metric not in self.metrics.columns:
                raise ExperimentError("metric", f"unknown metric {metric!r} (have: {', '.join(self.metric_names[:12])}...)")
            df = self.metrics.select("arm", "seed", "step", metric).sort("arm", "seed", "step")
            out = {}
            for arm in self.arms:
                sub = df.filter(pl.col("arm") == arm)
                order = {s: i for i, s in enumerate(sub["seed"].unique(maintain_order=True).to_list())}
                vals = sub[metric].to_numpy().astype(np.float64).reshape(len(order), -1)
                out[arm] = vals[[order[s] for s in self.seeds]]
            self._cache[metric] = out
        return self._cache[metric]

    def outcome(self, outcome: str) -> dict[str, np.ndarray]:
        """``{arm: [n_seeds]}`` values of one outcome."""
        metric, reducer = parse_outcome(outcome)
        return {arm: reduce_series(v, reducer) for arm, v in self.series(metric).items()}

    def default_outcomes(self) -> list[str]:
        return [f"{m}:{default_reducer(m)}" for m in self.metric_names
                if "__" not in m and m != "wall_seconds" and not m.startswith("llm_")]

    def paired(self, outcome: str) -> pl.DataFrame:
        """Per arm and seed: the arm's value, the baseline's, and the difference (arm minus baseline)."""
        vals = self.outcome(outcome)
        base = vals[self.baseline]
        rows = []
        for arm in self.arms:
            if arm == self.baseline:
                continue
            rows.append(pl.DataFrame({"arm": [arm] * len(self.seeds), "seed": self.seeds, "value": vals[arm],
                                      "baseline": base, "diff": vals[arm] - base}))
        return pl.concat(rows) if rows else pl.DataFrame()

    def test(self, outcome: str, arm: str, method: str = "paired_t"):
        """A :class:`analysis.stats.TestResult` comparing ``arm`` with the baseline on ``outcome``."""
        from .stats import compare

        vals = self.outcome(outcome)
        if arm not in vals:
            raise ExperimentError("arm", f"unknown arm {arm!r} (have: {', '.join(self.arms)})")
        return compare(vals[arm], vals[self.baseline], method)

    def summary(self, outcomes: Sequence[str] | None = None, *, ci: float = 0.95, n_boot: int = 4000,
                seed: int = 0) -> pl.DataFrame:
        """One row per arm and outcome: means, the mean paired difference with its percentile
        bootstrap CI, the relative difference, a standardized effect, and p-values of the
        paired t, Welch, Mann-Whitney and Kolmogorov-Smirnov tests."""
        from .stats import bootstrap_ci, compare, paired_effect

        rows = []
        for outcome in outcomes or self.default_outcomes():
            metric, reducer = parse_outcome(outcome)
            vals = self.outcome(outcome)
            base = vals[self.baseline]
            for arm in self.arms:
                if arm == self.baseline:
                    continue
                diff = vals[arm] - base
                est, lo, hi = bootstrap_ci(diff, ci=ci, n_boot=n_boot, seed=seed)
                row = {"arm": arm, "outcome": f"{metric}:{reducer}", "metric": metric, "reducer": reducer,
                       "n": len(diff), "baseline_mean": float(base.mean()), "arm_mean": float(vals[arm].mean()),
                       "diff_mean": float(est), "ci_low": float(lo), "ci_high": float(hi), "ci": ci,
                       "rel_diff": float(est / base.mean()) if base.mean() != 0 else float("nan"),
                       "diff_sd": float(diff.std(ddof=1)) if len(diff) > 1 else float("nan"),
                       "effect_size": paired_effect(diff)}
                for method in ("paired_t", "welch", "mannwhitney", "ks"):
                    row[f"p_{method}"] = compare(vals[arm], base, method).pvalue if len(diff) > 1 else float("nan")
                rows.append(row)
        return pl.DataFrame(rows)

    def effect_over_time(self, metric: str, *, arms: Sequence[str] | None = None, ci: float = 0.95,
                         cumulative: bool = False, n_boot: int = 2000, seed: int = 0) -> pl.DataFrame:
        """Per arm and step: mean paired difference of ``metric`` (cumulative sum if asked) with a bootstrap CI band."""
        from .stats import bootstrap_ci

        ser = self.series(metric)
        base = np.cumsum(ser[self.baseline], axis=1) if cumulative else ser[self.baseline]
        parts = []
        for arm in arms or [a for a in self.arms if a != self.baseline]:
            vals = np.cumsum(ser[arm], axis=1) if cumulative else ser[arm]
            diff = vals - base  # [n_seeds, T]
            est, lo, hi = bootstrap_ci(diff, ci=ci, n_boot=n_boot, seed=seed, axis=0)
            parts.append(pl.DataFrame({"arm": [arm] * self.steps, "step": np.arange(self.steps, dtype=np.int64),
                                       "diff_mean": est, "ci_low": lo, "ci_high": hi}))
        return pl.concat(parts)

    def plot(self, metric: str, kind: str = "curves", *, arms: Sequence[str] | None = None, ci: float = 0.9,
             cumulative: bool = False, ax=None, title: str | None = None):
        """``kind="curves"``: mean per arm with a CI band of the mean; ``kind="effect"``: paired
        difference to the baseline over time with its CI band. Returns the matplotlib Figure."""
        from . import plots

        if kind == "curves":
            return plots.arm_curves(self, metric, arms=arms, ci=ci, cumulative=cumulative, ax=ax, title=title)
        if kind == "effect":
            return plots.effect_curves(self.effect_over_time(metric, arms=arms, ci=ci, cumulative=cumulative),
                                       metric, cumulative=cumulative, ax=ax, title=title)
        raise ValueError(f"kind must be 'curves' or 'effect', got {kind!r}")

    # -- persistence -------------------------------------------------------------------------------
    def save(self, out: str | Path, outcomes: Sequence[str] | None = None, *, ci: float = 0.95,
             n_boot: int = 4000) -> Path:
        """Write ``experiment.parquet`` (paired summary), ``experiment_metrics.parquet`` and ``experiment.json``."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        outcomes = list(outcomes or self.info.get("outcomes") or self.default_outcomes())
        self.summary(outcomes, ci=ci, n_boot=n_boot).write_parquet(out / "experiment.parquet")
        self.metrics.write_parquet(out / "experiment_metrics.parquet")
        atomic_write_json({"baseline": self.baseline, "arms": self.arms, "seeds": self.seeds, "steps": self.steps,
                           "branch_step": self.branch_step, "timing": self.timing, "outcomes": outcomes,
                           "ci": ci, **self.info}, out / "experiment.json")
        return out

    @classmethod
    def load(cls, path: str | Path) -> "ExperimentResults":
        path = Path(path)
        meta = json.loads((path / "experiment.json").read_text())
        metrics = pl.read_parquet(path / "experiment_metrics.parquet")
        info = {k: v for k, v in meta.items() if k not in ("baseline", "arms", "seeds", "steps", "branch_step", "timing")}
        return cls(metrics, baseline=meta["baseline"], arms=meta["arms"], seeds=meta["seeds"], steps=meta["steps"],
                   branch_step=meta.get("branch_step"), timing=meta.get("timing"), info=info)


__all__ = ["REDUCERS", "ExperimentError", "ExperimentResults", "default_reducer", "parse_outcome",
           "reduce_series"]
