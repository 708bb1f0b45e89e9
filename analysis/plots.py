"""Standard figures (matplotlib, Agg backend): epidemic curves with CI bands, arm-vs-baseline
differences, per-borough small multiples.

Every function returns a :class:`matplotlib.figure.Figure` made without pyplot (rendered by
Agg when saved, shown inline by notebooks; no global backend is touched); pass ``ax`` to
draw into an existing axes.
Cascade and polarization plots come with the social-network module.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import matplotlib as mpl
import numpy as np
import polars as pl
from matplotlib.figure import Figure

from .metrics import borough_columns

if TYPE_CHECKING:
    from .results import ExperimentResults

COMPARTMENTS = ("S", "E", "I", "R", "M")
COLORS = mpl.rcParams["axes.prop_cycle"].by_key()["color"]


def _axes(ax, figsize=(7, 4)):
    if ax is None:
        fig = Figure(figsize=figsize, layout="constrained")
        return fig, fig.add_subplot()
    return ax.figure, ax


def _label(metric: str, cumulative: bool) -> str:
    return f"cumulative {metric}" if cumulative else metric


def epidemic_curves(metrics: pl.DataFrame, columns: Sequence[str] | None = None, *, ax=None, title: str = "",
                    log: bool = False):
    """One line per column over ``step`` (default: the compartments present)."""
    cols = list(columns or [c for c in COMPARTMENTS if c in metrics.columns])
    fig, ax = _axes(ax)
    steps = metrics["step"].to_numpy()
    for i, col in enumerate(cols):
        ax.plot(steps, metrics[col].to_numpy(), label=col, color=COLORS[i % len(COLORS)])
    ax.set_xlabel("step (day)")
    ax.set_ylabel("agents")
    if log:
        ax.set_yscale("symlog")
    ax.set_title(title or "epidemic curves")
    ax.legend(frameon=False, ncols=min(len(cols), 5))
    return fig


def mean_band(values: np.ndarray, ci: float = 0.9, *, n_boot: int = 2000, seed: int = 0):
    """Mean over replicates (axis 0) and a percentile-bootstrap CI band of the mean, per step."""
    from .stats import bootstrap_ci

    values = np.asarray(values, dtype=np.float64)
    if values.shape[0] < 2:
        return values.mean(axis=0), values[0], values[0]
    return bootstrap_ci(values, ci=ci, n_boot=n_boot, seed=seed, axis=0)


def replicate_curves(series: dict[str, np.ndarray], metric: str, *, ci: float = 0.9, ax=None, title: str = "",
                     cumulative: bool = False):
    """``{label: [n_replicates, T]}``: mean line and CI band of the mean for each label."""
    fig, ax = _axes(ax)
    for i, (label, values) in enumerate(series.items()):
        values = np.cumsum(values, axis=1) if cumulative else np.asarray(values)
        est, lo, hi = mean_band(values, ci)
        steps = np.arange(values.shape[1])
        color = COLORS[i % len(COLORS)]
        ax.plot(steps, est, color=color, label=f"{label} (n={values.shape[0]})")
        ax.fill_between(steps, lo, hi, color=color, alpha=0.25, linewidth=0)
    ax.set_xlabel("step (day)")
    ax.set_ylabel(_label(metric, cumulative))
    ax.set_title(title or f"{_label(metric, cumulative)}: mean, {int(ci * 100)}% CI of the mean")
    ax.legend(frameon=False)
    return fig


def arm_curves(results: "ExperimentResults", metric: str, *, arms: Sequence[str] | None = None, ci: float = 0.9,
               cumulative: bool = False, ax=None, title: str | None = None):
    ser = results.series(metric)
    chosen = list(arms or results.arms)
    fig = replicate_curves({a: ser[a] for a in chosen}, metric, ci=ci, ax=ax, title=title or "",
                           cumulative=cumulative)
    if results.branch_step:
        fig.axes[0].axvline(results.branch_step, color="0.5", linestyle=":", linewidth=1)
    return fig


def effect_curves(effects: pl.DataFrame, metric: str, *, cumulative: bool = False, ax=None, title: str | None = None):
    """Paired difference to the baseline over time (``effect_over_time`` output) with CI bands."""
    fig, ax = _axes(ax)
    for i, arm in enumerate(effects["arm"].unique(maintain_order=True).to_list()):
        sub = effects.filter(pl.col("arm") == arm).sort("step")
        color = COLORS[i % len(COLORS)]
        steps = sub["step"].to_numpy()
        ax.plot(steps, sub["diff_mean"].to_numpy(), color=color, label=arm)
        ax.fill_between(steps, sub["ci_low"].to_numpy(), sub["ci_high"].to_numpy(), color=color, alpha=0.25,
                        linewidth=0)
    ax.axhline(0, color="0.3", linewidth=0.8)
    ax.set_xlabel("step (day)")
    ax.set_ylabel(f"difference in {_label(metric, cumulative)}")
    ax.set_title(title or f"{_label(metric, cumulative)}: arm minus baseline (paired, with CI)")
    ax.legend(frameon=False)
    return fig


def summary_forest(summary: pl.DataFrame, outcome: str, *, ax=None, title: str | None = None):
    """Mean paired difference and CI per arm for one outcome (a row of ``results.summary()``)."""
    sub = summary.filter(pl.col("outcome") == outcome)
    fig, ax = _axes(ax, figsize=(6, 0.6 * max(len(sub), 2) + 1.2))
    y = np.arange(len(sub))
    est = sub["diff_mean"].to_numpy()
    ax.errorbar(est, y, xerr=[est - sub["ci_low"].to_numpy(), sub["ci_high"].to_numpy() - est], fmt="o",
                color=COLORS[0], capsize=4)
    ax.axvline(0, color="0.3", linewidth=0.8)
    ax.set_yticks(y, sub["arm"].to_list())
    ax.set_xlabel(f"difference in {outcome} (arm minus baseline)")
    ax.set_title(title or outcome)
    return fig


def borough_small_multiples(metrics: pl.DataFrame | dict[str, np.ndarray], metric: str, *, ci: float = 0.9,
                            title: str | None = None, sharey: bool = True):
    """One panel per borough from ``metric__borough_<slug>`` columns.

    ``metrics``: one run's metrics DataFrame (a line per panel), or ``{column: [n, T]}``
    replicate arrays (mean and CI band per panel).
    """
    cols = borough_columns(list(metrics.columns if isinstance(metrics, pl.DataFrame) else metrics), metric)
    if not cols:
        raise ValueError(f"no {metric}__borough_* columns")
    n = len(cols)
    ncols = min(n, 3)
    nrows = -(-n // ncols)
    fig = Figure(figsize=(3.4 * ncols, 2.6 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, sharex=True, sharey=sharey, squeeze=False)
    for ax, (slug, col) in zip(axes.flat, cols.items()):
        if isinstance(metrics, pl.DataFrame):
            ax.plot(metrics["step"].to_numpy(), metrics[col].to_numpy(), color=COLORS[0])
        else:
            values = np.asarray(metrics[col], dtype=np.float64)
            est, lo, hi = mean_band(values, ci)
            steps = np.arange(values.shape[1])
            ax.plot(steps, est, color=COLORS[0])
            ax.fill_between(steps, lo, hi, color=COLORS[0], alpha=0.25, linewidth=0)
        ax.set_title(slug.replace("_", " ").title(), fontsize=10)
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    fig.suptitle(title or f"{metric} by borough")
    return fig


def save(fig, path, dpi: int = 110) -> None:
    fig.savefig(path, dpi=dpi)


__all__ = ["arm_curves", "borough_small_multiples", "effect_curves", "epidemic_curves", "mean_band",
           "replicate_curves", "save", "summary_forest"]
