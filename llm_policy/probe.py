"""Decision-bias diagnostic: every archetype prompt once, its answer distribution and sensitivities.

After the binary-decision-bias literature: LLM yes/no answers inside ABMs can be
strongly biased, and shift with the listed option order and with temperature.
The probe renders each archetype of each decision (the product of its
``group_by`` levels), scores it with the scenario's backend in both listed
option orders, and reports per-archetype probabilities, the overall rate of the
first option, its shift under reversed order, and the rate at several temperatures.
"""
from __future__ import annotations

import datetime as _dt
import math
from dataclasses import dataclass

import numpy as np

from .policy import ArchetypePolicy, round_sig
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


def probe(policy: ArchetypePolicy, state, params, step: int = 30) -> ProbeResult:
    model = policy.model
    feats = model.features(state, params)
    stats = model.stats(state, params)
    means = {k: float(np.mean(np.asarray(v))) for k, v in stats.items()}
    rows, summary = [], []
    for d in policy.spec.decisions:
        levels = [len(model.labels[f]) for f in d.group_by]
        codes = np.arange(int(np.prod(levels)))
        # group sizes from the current population, to weight the overall rate
        code = np.zeros(len(np.asarray(feats[d.group_by[0]])), np.int64)
        for f, n in zip(d.group_by, levels):
            code = code * n + np.asarray(feats[f]).astype(np.int64)
        sizes = np.bincount(code, minlength=len(codes))
        reqs, meta = [], []
        for c in codes:
            rest, lv = int(c), {}
            for f, n in zip(reversed(d.group_by), reversed(levels)):
                lv[f] = rest % n
                rest //= n
            values = {**{k: round_sig(v) for k, v in means.items()},
                      **{f: model.labels[f][lv[f]] for f in d.group_by}, "group_size": int(sizes[c]), "step": step}
            if "case_trend" in lv:
                values.update({k: round_sig(v) for k, v in TREND_STATS[lv["case_trend"]].items()})
            day = policy.start_date + _dt.timedelta(days=step)
            for order in (list(d.options), list(reversed(d.options))):
                v = {**values, "date": day.strftime("%B %Y"), "month": day.strftime("%B"), "year": day.year,
                     "options": ", ".join(order[:-1]) + " or " + order[-1]}
                reqs.append(ScoreRequest(d.prompt.format_map(v), tuple(" " + o for o in d.options), 1.0))
                meta.append((int(c), order == list(d.options), {f: model.labels[f][lv[f]] for f in d.group_by}))
        results = policy.backend.score(reqs)
        first_rates = {True: [], False: []}
        temp_rates = {t: [] for t in TEMPERATURES}
        weights = {True: [], False: []}
        for (c, listed, labels), r in zip(meta, results):
            ok = r.error is None and all(math.isfinite(p) for p in r.probs)
            rows.append({"decision": d.name, "archetype": "|".join(f"{k}={v}" for k, v in labels.items()),
                         "group_size": int(sizes[c]), "listed_order": "as_written" if listed else "reversed",
                         "options": list(d.options), "probs": [float(p) for p in r.probs],
                         "error": r.error})
            if not ok:
                continue
            first_rates[listed].append(r.probs[0])
            weights[listed].append(max(int(sizes[c]), 0))
            if listed:
                for t in TEMPERATURES:
                    temp_rates[t].append(softmax(r.logprobs, t)[0])
        w = np.asarray(weights[True], float)
        wsum = w.sum() if w.sum() > 0 else float(len(w))
        weighted = float(np.dot(first_rates[True], w) / wsum) if len(w) else float("nan")
        summary.append({
            "decision": d.name, "first_option": d.options[0], "archetypes": len(codes),
            "failed": sum(r.error is not None for r in results),
            "rate": float(np.mean(first_rates[True])) if first_rates[True] else float("nan"),
            "rate_population_weighted": weighted,
            "rate_reversed_order": float(np.mean(first_rates[False])) if first_rates[False] else float("nan"),
            "spread_across_archetypes": float(np.std(first_rates[True])) if first_rates[True] else float("nan"),
            **{f"rate_T{t:g}": float(np.mean(v)) if v else float("nan") for t, v in temp_rates.items()},
        })
    return ProbeResult(rows, summary)
