"""Standard epidemic metrics computed from a run's per-step metrics table."""
from __future__ import annotations

import re
from typing import Sequence

import numpy as np
import polars as pl

_BOROUGH = re.compile(r"^(?P<metric>.+)__borough_(?P<slug>.+)$")
_AGE = re.compile(r"^(?P<metric>.+)__age_(?P<slug>.+)$")


def _breakdown_columns(pattern: re.Pattern, columns: Sequence[str], metric: str) -> dict[str, str]:
    return {m.group("slug"): col for col in columns if (m := pattern.match(col)) and m.group("metric") == metric}


def borough_columns(columns: Sequence[str], metric: str) -> dict[str, str]:
    """``{slug: column}`` for the ``<metric>__borough_<slug>`` columns, in table order."""
    return _breakdown_columns(_BOROUGH, columns, metric)


def age_columns(columns: Sequence[str], metric: str) -> dict[str, str]:
    """``{slug: column}`` for the ``<metric>__age_<slug>`` columns, in table order."""
    return _breakdown_columns(_AGE, columns, metric)


def breakdown_metrics(columns: Sequence[str], kind: str = "borough") -> list[str]:
    """Metrics that have a per-borough (or per-age) breakdown."""
    pat = _BOROUGH if kind == "borough" else _AGE
    return list(dict.fromkeys(m.group("metric") for c in columns if (m := pat.match(c))))


def long_by_borough(metrics: pl.DataFrame, metric: str) -> pl.DataFrame:
    """``step, borough, value`` rows from the ``<metric>__borough_*`` columns."""
    cols = borough_columns(metrics.columns, metric)
    if not cols:
        raise ValueError(f"no {metric}__borough_* columns")
    return (metrics.select("step", *cols.values()).rename({v: k for k, v in cols.items()})
            .unpivot(index="step", variable_name="borough", value_name=metric))


def growth_rate(values: np.ndarray, window: int = 7) -> np.ndarray:
    """Daily exponential growth rate of a flow (e.g. new cases) from ``window``-day sums; NaN where undefined."""
    x = np.asarray(values, dtype=np.float64)
    kernel = np.ones(window)
    sums = np.convolve(x, kernel, mode="full")[: len(x)]
    prev = np.concatenate([np.full(window, np.nan), sums[:-window]])
    with np.errstate(divide="ignore", invalid="ignore"):
        rate = np.log(sums / prev) / window
    rate[~np.isfinite(rate)] = np.nan
    return rate


def doubling_time(values: np.ndarray, window: int = 7) -> np.ndarray:
    """Days to double at the current growth rate (NaN when not growing)."""
    r = growth_rate(values, window)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.log(2.0) / r
    out[~(r > 0)] = np.nan
    return out


def epidemic_summary(metrics: pl.DataFrame, n_agents: int | None = None) -> dict[str, float]:
    """Headline numbers of one run: attack rate, peak infectious and its step, deaths, cases,
    unemployment (mean / peak / final), peak isolating share. Missing columns are skipped."""
    m = metrics.sort("step")
    out: dict[str, float] = {"steps": float(m.height)}
    if n_agents is None and all(c in m.columns for c in ("S", "I", "R")):
        n_agents = int(sum(m[c][0] for c in ("S", "E", "I", "R", "M") if c in m.columns))
    if n_agents:
        out["n_agents"] = float(n_agents)
    if "I" in m.columns:
        i = m["I"].to_numpy()
        out["peak_infectious"] = float(i.max())
        out["peak_step"] = float(m["step"][int(i.argmax())])
        if n_agents:
            out["peak_infectious_share"] = float(i.max() / n_agents)
    if "new_infections" in m.columns:
        total = float(m["new_infections"].sum())
        out["infections"] = total
        if n_agents:
            out["attack_rate"] = total / n_agents
    elif n_agents and "S" in m.columns:
        out["attack_rate"] = float((m["S"][0] - m["S"][-1]) / n_agents)
    if "new_deaths" in m.columns:
        out["deaths"] = float(m["new_deaths"].sum())
        if n_agents:
            out["deaths_per_100k"] = out["deaths"] / n_agents * 1e5
    if "new_cases" in m.columns:
        out["cases"] = float(m["new_cases"].sum())
    if "unemployment_rate" in m.columns:
        u = m["unemployment_rate"].to_numpy()
        out.update(unemployment_mean=float(u.mean()), unemployment_peak=float(u.max()), unemployment_final=float(u[-1]))
    if "isolating_share" in m.columns:
        out["isolating_peak"] = float(m["isolating_share"].max())
    if "wall_seconds" in m.columns:
        out["wall_seconds"] = float(m["wall_seconds"].sum())
    return out


__all__ = ["age_columns", "borough_columns", "breakdown_metrics", "doubling_time", "epidemic_summary",
           "growth_rate", "long_by_borough"]
