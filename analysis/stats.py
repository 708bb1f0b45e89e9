"""Statistics for replicated runs: percentile bootstrap, paired differences, standard tests.

The bootstrap is vectorized: resamples are drawn once as an ``[n_boot, n]``
matrix of multinomial counts, and the mean of every resample of every series
(a whole time series, or many synthetic data sets at once) is one matrix
product. Tests wrap :mod:`scipy.stats`.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np

TESTS = ("paired_t", "t", "welch", "mannwhitney", "ks")


def resample_counts(n: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """``[n_boot, n]`` counts: how often each observation appears in each bootstrap resample."""
    return rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot)


def bootstrap_means(x: np.ndarray, *, n_boot: int = 4000, seed: int | np.random.Generator = 0,
                    axis: int = -1) -> np.ndarray:
    """Means of ``n_boot`` resamples along ``axis``; the resample axis comes last: ``[..., n_boot]``."""
    x = np.moveaxis(np.asarray(x, dtype=np.float64), axis, -1)
    n = x.shape[-1]
    if n < 1:
        raise ValueError("bootstrap needs at least one observation")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    counts = resample_counts(n, n_boot, rng).astype(np.float64)
    return x @ counts.T / n


def bootstrap_ci(x: np.ndarray, *, ci: float = 0.95, n_boot: int = 4000, seed: int | np.random.Generator = 0,
                 axis: int = -1, statistic: str | Callable = "mean") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Percentile bootstrap CI of a statistic along ``axis``: ``(estimate, low, high)``.

    ``statistic`` is ``"mean"`` (fast path: one matrix product) or a function
    ``f(samples, axis=-1)`` applied to index-resampled data (``median`` etc.).
    Leading axes are independent series: a ``[T, n]`` array gives T intervals.
    """
    if not 0 < ci < 1:
        raise ValueError(f"ci must be in (0, 1), got {ci}")
    x = np.moveaxis(np.asarray(x, dtype=np.float64), axis, -1)
    alpha = (1.0 - ci) / 2.0
    if statistic == "mean":
        est = x.mean(axis=-1)
        boots = bootstrap_means(x, n_boot=n_boot, seed=seed)
    else:
        fn = np.median if statistic == "median" else statistic
        if not callable(fn):
            raise ValueError(f"unknown statistic {statistic!r}")
        rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        n = x.shape[-1]
        idx = rng.integers(0, n, size=(n_boot, n))
        est = fn(x, axis=-1)
        boots = fn(x[..., idx], axis=-1)  # [..., n_boot]
    lo, hi = np.quantile(boots, [alpha, 1.0 - alpha], axis=-1)
    return est, lo, hi


@dataclass(frozen=True)
class TestResult:
    method: str
    statistic: float
    pvalue: float


def compare(a: np.ndarray, b: np.ndarray, method: str = "paired_t") -> TestResult:
    """Test ``a`` against ``b``: ``paired_t`` (a, b paired by index), ``t`` (pooled variance),
    ``welch``, ``mannwhitney`` (two-sided) or ``ks`` (two-sample Kolmogorov-Smirnov).

    Degenerate inputs (e.g. all paired differences zero) give NaN statistics, as scipy does.
    """
    from scipy import stats

    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # zero variance: scipy returns NaN, which we keep
        if method == "paired_t":
            if a.shape != b.shape:
                raise ValueError(f"paired test needs equal shapes, got {a.shape} and {b.shape}")
            res = stats.ttest_rel(a, b)
        elif method == "t":
            res = stats.ttest_ind(a, b, equal_var=True)
        elif method == "welch":
            res = stats.ttest_ind(a, b, equal_var=False)
        elif method == "mannwhitney":
            res = stats.mannwhitneyu(a, b, alternative="two-sided")
        elif method == "ks":
            res = stats.ks_2samp(a, b)
        else:
            raise ValueError(f"unknown test {method!r} (known: {', '.join(TESTS)})")
    return TestResult(method, float(res.statistic), float(res.pvalue))


def paired_effect(diff: np.ndarray) -> float:
    """Standardized paired effect (mean difference / sd of differences); NaN when the sd is 0."""
    diff = np.asarray(diff, dtype=np.float64)
    sd = diff.std(ddof=1) if diff.size > 1 else 0.0
    return float(diff.mean() / sd) if sd > 0 else float("nan")


def coverage(true_value: float, lo: np.ndarray, hi: np.ndarray) -> float:
    """Share of intervals that contain ``true_value``."""
    return float(np.mean((np.asarray(lo) <= true_value) & (true_value <= np.asarray(hi))))


__all__ = ["TESTS", "TestResult", "bootstrap_ci", "bootstrap_means", "compare", "coverage", "paired_effect",
           "resample_counts"]
