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


def _archetypes(policy: ArchetypePolicy, d, feats, means: dict[str, float]):
    """Every archetype of ``d``'s grouping (the product of its levels, empty ones too): (levels, sizes, prompt values).

    Sizes come from the current population (to weight overall rates); statistics are the population's means,
    with the case-trend levels' own numbers where the grouping has one; ``{persona}`` from the levels.
    """
    model = policy.model
    levels = [len(model.labels[f]) for f in d.group_by]
    n_codes = int(np.prod(levels))
    code = np.zeros(len(np.asarray(feats[d.group_by[0]])), np.int64)
    for f, n in zip(d.group_by, levels):
        code = code * n + np.asarray(feats[f]).astype(np.int64)
    sizes = np.bincount(code, minlength=n_codes)
    archetype_levels, values_list = [], []
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
        if (policy.personas is not None or "persona" not in d.group_by) and "{persona" in d.prompt:
            values["persona"] = policy.persona(d, {f: model.labels[f][v] for f, v in lv.items()})
        values_list.append(values)
    return archetype_levels, sizes, values_list


def probe_surveys(policy: ArchetypePolicy, surveys, state, params, step: int = 0,
                  schedule: dict | None = None) -> ProbeResult:
    """Per survey item: how much the answers move with the listed option order and with temperature.

    Every archetype is scored in every rotation of the item's options. ``order_sensitivity`` is the
    size-weighted mean over archetypes of the largest total-variation distance between two orders'
    answers (0: the order does not matter; 1: it decides the answer); ``first_listed_gain`` the mean
    gain in probability of an option when it is listed first rather than later. ``temperature_sensitivity``
    is the weighted mean total-variation distance between the answers at T = 0.5 and T = 2 (as written).
    ``share_T<t>`` is the population share of the item's modal option at each temperature, orders averaged.
    """
    from .surveys import item_decision

    model = policy.model
    feats = model.features(state, params)
    means = {k: float(np.mean(np.asarray(v))) for k, v in model.stats(state, params).items()}
    env = policy.env_values(step, schedule)
    rows, summary = [], []
    for sv in surveys:
        for item in sv.items:
            d = item_decision(sv, item)
            n_opt = len(d.options)
            options = tuple(" " + o for o in d.options)
            archetype_levels, sizes, values_list = _archetypes(policy, d, feats, means)
            reqs = [ScoreRequest(policy.render(d, values, env, k), options, 1.0)
                    for values in values_list for k in range(n_opt)]
            results = policy.backend.score(reqs)
            lp = np.full((len(values_list), n_opt, n_opt), np.nan)  # archetype, order, option
            for i, r in enumerate(results):
                if r.error is None and all(math.isfinite(x) or x == -math.inf for x in r.logprobs):
                    lp[i // n_opt, i % n_opt] = r.logprobs
            good = ~np.isnan(lp).any(axis=(1, 2))
            w = sizes[good].astype(float)
            w = w / w.sum() if w.sum() > 0 else np.full(int(good.sum()), 1.0 / max(int(good.sum()), 1))
            temps = {t: np.array([[softmax(lp[a, k], t) for k in range(n_opt)] for a in np.flatnonzero(good)])
                     for t in TEMPERATURES}
            p1 = temps[1.0]  # [archetype, order, option]
            tv = 0.5 * np.abs(p1[:, :, None, :] - p1[:, None, :, :]).sum(-1).max(axis=(1, 2)) if len(p1) else p1
            first = np.array([[p1[a, k, k] - np.mean([p1[a, j, k] for j in range(n_opt) if j != k])
                               for k in range(n_opt)] for a in range(len(p1))])
            tv_t = 0.5 * np.abs(temps[0.5][:, 0] - temps[2.0][:, 0]).sum(-1) if len(p1) else p1
            modal = int(np.argmax((w[:, None] * p1.mean(axis=1)).sum(0))) if len(p1) else 0
            summary.append({
                "survey": sv.name, "item": item.name, "kind": item.kind, "archetypes": len(values_list),
                "failed": sum(r.error is not None for r in results), "modal_option": d.options[modal],
                "order_sensitivity": float(w @ tv) if len(p1) else math.nan,
                "first_listed_gain": float(w @ first.mean(axis=1)) if len(p1) else math.nan,
                "temperature_sensitivity": float(w @ tv_t) if len(p1) else math.nan,
                **{f"share_T{t:g}": float((w[:, None] * temps[t].mean(axis=1)).sum(0)[modal]) if len(p1) else math.nan
                   for t in TEMPERATURES},
            })
            for i, r in enumerate(results):
                a, k = divmod(i, n_opt)
                rows.append({"survey": sv.name, "item": item.name,
                             "archetype": "|".join(f"{f}={model.labels[f][v]}" for f, v in archetype_levels[a].items()),
                             "group_size": int(sizes[a]), "listed_order": "as_written" if k == 0 else f"rotated_{k}",
                             "options": list(d.options), "probs": [float(p) for p in r.probs], "error": r.error})
    return ProbeResult(rows, summary)


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
        options = tuple(" " + o for o in d.options)
        archetype_levels, sizes, values_list = _archetypes(policy, d, feats, means)
        reqs = [ScoreRequest(policy.render(d, values, env, k), options, 1.0)
                for values in values_list for k in range(n_orders)]
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
