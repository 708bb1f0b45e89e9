"""Where the economy's numbers come from: the skill distribution and the U.S. tax schedule.

**Skill.** A worker's skill is an hourly wage: ``annual income / full_time_hours`` (2080 h = 40 h x 52
weeks), with annual income drawn from a generalized beta distribution of the second kind (GB2,
McDonald 1984, "Some generalized functions for the size distribution of income", Econometrica 52,
647-663), the family the LLM Economist samples its personas' incomes from:

    f(x) = a (x/b)^(ap-1) / (b B(p, q) (1 + (x/b)^a)^(p+q)),   x = b (Z / (1 - Z))^(1/a),  Z ~ Beta(p, q)

The defaults (``a = 1.897, b = 143011, p = 0.6672, q = 1.4437``) were calibrated here, by
:func:`fit_gb2`, to three figures for U.S. household money income in 2023 from the Census Bureau's
report P60-282 ("Income in the United States: 2023", Guzman and Kollar, September 2024):

- median household income $80,610 (reported in the report's highlights);
- Gini index 0.485;
- 90th / 10th percentile ratio 12.6.

Three targets leave one degree of freedom, fixed by a weak pull of ``log p`` and ``log q`` to 0.
The fitted distribution's mean is about $115,800, its 20th / 80th / 95th percentiles about $33,600 /
$165,500 / $326,500 and its upper-tail Pareto exponent ``a q`` about 2.74. Only the median was
checked against the report's text while writing this module; the Gini index and the 90/10 ratio
are the report's published values as remembered, so re-check them before quoting the calibration.
``tests/test_economy.py`` checks that sampled workers reproduce the three targets.

Model incomes differ from these: they are labour income, ``skill x hours chosen``, and hours
respond to taxes. The calibration fixes what a worker would earn at 40 hours a week.

**Taxes.** ``US_2024_THRESHOLDS`` / ``US_2024_RATES`` (in :mod:`scenarios.schema`) are the 2024
federal brackets for single filers (IRS Revenue Procedure 2023-34). They are applied to labour
income directly, with no standard deduction or credits, as in the LLM Economist.
"""
from __future__ import annotations

import numpy as np

# Census P60-282 (2023 household money income): the calibration targets
TARGET_MEDIAN = 80_610.0
TARGET_GINI = 0.485
TARGET_P90_P10 = 12.6


def gb2_sample(rng: np.random.Generator, n: int, a: float, b: float, p: float, q: float) -> np.ndarray:
    """``n`` GB2 draws: ``b (Z/(1-Z))^(1/a)`` with ``Z ~ Beta(p, q)`` (float64)."""
    z = rng.beta(p, q, n)
    z = np.clip(z, 1e-12, 1 - 1e-12)
    return b * (z / (1.0 - z)) ** (1.0 / a)


def gb2_quantile(u, a: float, b: float, p: float, q: float):
    from scipy import stats

    z = stats.beta.ppf(u, p, q)
    return b * (z / (1.0 - z)) ** (1.0 / a)


def gini_sorted(x: np.ndarray) -> float:
    """Gini of an ascending array: 1 - 2 * (mean Lorenz ordinate) + 1/n."""
    lorenz = np.cumsum(x, dtype=np.float64) / np.sum(x, dtype=np.float64)
    return float(1.0 - 2.0 * lorenz.mean() + 1.0 / len(x))


def gb2_gini(a: float, b: float, p: float, q: float, n: int = 1_000_000) -> float:
    """Gini of the GB2 by the quantile rule on ``n`` equally spaced probabilities."""
    u = (np.arange(n) + 0.5) / n
    return gini_sorted(gb2_quantile(u, a, b, p, q))


def fit_gb2(median: float = TARGET_MEDIAN, gini: float = TARGET_GINI, p90_p10: float = TARGET_P90_P10,
            n: int = 1_000_000) -> dict[str, float]:
    """The least-squares GB2 for the three targets (scipy); reproduces the schema's defaults."""
    from scipy import optimize

    def resid(v):
        a, b, p, q = np.exp(v)
        return [10 * (gb2_gini(a, b, p, q, n) - gini),
                10 * np.log(gb2_quantile(0.5, a, b, p, q) / median),
                10 * np.log(gb2_quantile(0.9, a, b, p, q) / gb2_quantile(0.1, a, b, p, q) / p90_p10),
                0.01 * v[2], 0.01 * v[3]]

    sol = optimize.least_squares(resid, np.log([2.0, 80_000.0, 1.0, 1.0]), xtol=1e-12)
    a, b, p, q = np.exp(sol.x)
    return {"a": float(a), "b": float(b), "p": float(p), "q": float(q)}
