"""Decision-bias and information diagnostic: every archetype prompt, in every listed option order.

After the binary-decision-bias literature: LLM yes/no answers inside ABMs can be
strongly biased, and shift with the listed option order and with temperature. The
probe renders each archetype of each decision (the product of its ``group_by``
levels) with the policy's own renderer at one simulated step (scheduled parameters
and interventions in force at that step included), scores it in every rotation of
the listed option order, and scores the content-free prompt (every field "N/A") in
the same orders. It reports:

- ``rate``: mean P(first option) as written; ``rate_reversed_order``: with the order rotated;
- ``spread_across_archetypes``: sd of P(first option) over archetypes, as written (the
  historical figure); ``spread_order_averaged``: the same after averaging the orders;
  ``spread_calibrated``: after contextual calibration (each order divided by its
  content-free answer, Zhao et al. 2021) and averaging;
- ``spread_logit``: sd over archetypes of the order-averaged logit of the first option.
  A constant shift of the logit (which is what contextual calibration of a two-option
  decision is, and what a fitted ``bias`` absorbs) leaves it unchanged, so it measures
  how much the answer moves with the inputs, whatever its level;
- ``effect_<feature>``: max - min over the feature's levels of the mean order-averaged logit
  (its main effect; 0 means the answer ignores that input);
- ``content_free_rate``: P(first option) of the content-free prompt, averaged over orders;
- the rate at several temperatures.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .policy import ArchetypePolicy, calibrate, round_sig
from .types import ScoreRequest, softmax

# Numbers shown for the case-trend levels, since every trend must be probed, not only today's.
TREND_STATS = {0: {"weekly_cases": 60.0, "case_change_pct": -35.0},
               1: {"weekly_cases": 120.0, "case_change_pct": 0.0},
               2: {"weekly_cases": 300.0, "case_change_pct": 80.0}}
TEMPERATURES = (0.5, 1.0, 2.0)


@dataclass
class ProbeResult:
    rows: list[dict]
    summary: list[dict]


def _logit_first(probs: np.ndarray) -> np.ndarray:
    p = np.clip(probs[..., 0], 1e-9, 1 - 1e-9)
    return np.log(p) - np.log1p(-p)


def probe(policy: ArchetypePolicy, state, params, step: int = 30, schedule: dict | None = None) -> ProbeResult:
    model = policy.model
    feats = model.features(state, params)
    stats = model.stats(state, params)
    means = {k: float(np.mean(np.asarray(v))) for k, v in stats.items()}
    env = policy.env_values(step, schedule)
    rows, summary = [], []
    for d in policy.spec.decisions:
        levels = [len(model.labels[f]) for f in d.group_by]
        n_codes = int(np.prod(levels))
        n_orders = len(d.options)
        # group sizes from the current population, to weight the overall rate
        code = np.zeros(len(np.asarray(feats[d.group_by[0]])), np.int64)
        for f, n in zip(d.group_by, levels):
            code = code * n + np.asarray(feats[f]).astype(np.int64)
        sizes = np.bincount(code, minlength=n_codes)
        options = tuple(" " + o for o in d.options)
        reqs, archetype_levels = [], []
        for c in range(n_codes):
            rest, lv = c, {}
            for f, n in zip(reversed(d.group_by), reversed(levels)):
                lv[f] = rest % n
                rest //= n
            lv = {f: lv[f] for f in d.group_by}
            archetype_levels.append(lv)
            values = {**{k: round_sig(v) for k, v in means.items()},
                      **{f: policy.label(d, f, lv[f]) for f in d.group_by}, "group_size": int(sizes[c])}
            if "case_trend" in lv:
                values.update({k: round_sig(v) for k, v in TREND_STATS[lv["case_trend"]].items()})
            for k in range(n_orders):
                reqs.append(ScoreRequest(policy.render(d, values, env, k), options, 1.0))
        reqs += [ScoreRequest(policy.render_content_free(d, k), options, 1.0) for k in range(n_orders)]
        results = policy.backend.score(reqs)
        cf = results[n_codes * n_orders:]
        probs = np.full((n_codes, n_orders, len(d.options)), np.nan)
        temp_rates = {t: [] for t in TEMPERATURES}
        for c in range(n_codes):
            for k in range(n_orders):
                r = results[c * n_orders + k]
                ok = r.error is None and all(math.isfinite(p) for p in r.probs)
                rows.append({"decision": d.name,
                             "archetype": "|".join(f"{f}={model.labels[f][v]}" for f, v in archetype_levels[c].items()),
                             "group_size": int(sizes[c]), "listed_order": "as_written" if k == 0 else f"rotated_{k}",
                             "options": list(d.options), "probs": [float(p) for p in r.probs], "error": r.error})
                if not ok:
                    continue
                probs[c, k] = r.probs
                if k == 0:
                    for t in TEMPERATURES:
                        temp_rates[t].append(softmax(r.logprobs, t)[0])
        cf_ok = all(r.error is None and all(math.isfinite(p) and p > 0 for p in r.probs) for r in cf)
        cf_probs = np.array([r.probs for r in cf]) if cf_ok else np.full((n_orders, len(d.options)), np.nan)
        good = ~np.isnan(probs).any(axis=(1, 2))  # archetypes answered in every order
        first = probs[:, 0, 0]
        averaged = probs[good].mean(axis=1)
        calibrated = np.stack([calibrate(probs[good, k], cf_probs[k]) for k in range(n_orders)], axis=1).mean(axis=1)
        logit = _logit_first(probs[good]).mean(axis=1)  # order-averaged logit per archetype
        w = sizes[~np.isnan(first)].astype(float)
        f_ok = first[~np.isnan(first)]
        weighted = float(np.dot(f_ok, w) / w.sum()) if w.sum() > 0 else float(np.mean(f_ok)) if len(f_ok) else math.nan
        nan_mean = lambda x: float(np.mean(x)) if len(x) else math.nan  # noqa: E731
        nan_std = lambda x: float(np.std(x)) if len(x) else math.nan  # noqa: E731
        effects = {}
        for f, n in zip(d.group_by, levels):
            lv = np.array([archetype_levels[c][f] for c in range(n_codes)])[good]
            per_level = [logit[lv == v].mean() for v in range(n) if np.any(lv == v)]
            effects[f"effect_{f}"] = float(max(per_level) - min(per_level)) if per_level else math.nan
        summary.append({
            "decision": d.name, "first_option": d.options[0], "archetypes": n_codes,
            "failed": sum(r.error is not None for r in results),
            "rate": nan_mean(f_ok),
            "rate_population_weighted": weighted,
            "rate_reversed_order": nan_mean(probs[good, 1, 0]) if n_orders > 1 else math.nan,
            "spread_across_archetypes": nan_std(f_ok),
            "spread_order_averaged": nan_std(averaged[:, 0]),
            "rate_calibrated": nan_mean(calibrated[:, 0]),
            "spread_calibrated": nan_std(calibrated[:, 0]),
            "spread_logit": nan_std(logit),
            "content_free_rate": float(np.mean(cf_probs[:, 0])),
            **effects,
            **{f"rate_T{t:g}": nan_mean(v) for t, v in temp_rates.items()},
        })
    return ProbeResult(rows, summary)
