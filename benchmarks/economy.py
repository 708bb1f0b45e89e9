"""Economy benchmarks, and the LLM Economist's main comparison in one command.

    python -m benchmarks.economy speed   [--workers 1000000] [--years 10] [--json PATH]
    python -m benchmarks.economy compare [--workers 20000] [--years 20] [--seeds 4] [--llm] [--out DIR]

``speed``: seconds per tax year at ``--workers`` (heuristic workers, chunks of ``--years`` after a
compiling first chunk) for each planner that needs no LLM: ``fixed`` (the target: <= 0.5 s per step
on a 2-core CPU), ``saez`` and ``gradient`` (one Adam step through the relaxed response per year);
device bytes per worker; and the number of archetypes one LLM round asks about
(skill decile x persona; target <= 40).

``compare``: the LLM Economist's comparison, welfare of the fixed U.S. schedule vs Saez vs the
gradient planner (vs the LLM planner with ``--llm``, embedded Gemma 3 270M via llama.cpp), each
over ``--seeds`` independently sampled populations, through the experiments API (arms are
planners). Prints the final-year Atkinson and utilitarian welfare, post-tax Gini and revenue per
arm with bootstrap intervals of the paired difference to the fixed schedule.
Run heavy invocations under ``flock /tmp/simcore-cpu.lock`` on shared machines.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np

from scenarios import load_scenario
from simcore.models import build
from simcore.runs import make_simulation

PLANNERS = {"fixed": "tax_us_fixed", "saez": "tax_saez", "gradient": "tax_gradient_planner"}


def step_timing(name: str, workers: int, years: int) -> dict:
    sc = load_scenario(name, [f"population.size={workers}", f"run.steps={2 * years}", "output.sample_agents=0",
                              f"run.chunk_size={years}"])
    t0 = time.perf_counter()
    built = build(sc)
    t_build = time.perf_counter() - t0
    sim = make_simulation(sc, built, sc.run.seed)
    first = sim.advance(years)
    second = sim.advance(years)
    return {"scenario": name, "workers": workers, "build_s": round(t_build, 3),
            "first_chunk_s_incl_compile": round(first.seconds, 3),
            "s_per_year": round(second.seconds / years, 4),
            "bytes_per_worker": round(built.info["bytes_per_agent"], 2),
            "welfare_atkinson_final": float(second.metrics["welfare_atkinson"][-1])}


def archetypes_per_round() -> int:
    import jax

    from llm_policy.archetypes import group

    sc = load_scenario("tax_llm_planner_small", ["population.size=20000"])
    b = build(sc)
    feats = b.model.features(b.state, b.params)
    stats = b.model.stats(b.state, b.params)
    d = sc.policy.decisions[0]
    levels = tuple(len(b.model.labels[f]) for f in d.group_by)
    g = group(feats, stats, tuple(d.group_by), levels)
    jax.block_until_ready(g.codes)
    return int(len(g.codes))


def speed(args) -> dict:
    rows = [step_timing(PLANNERS[p], args.workers, args.years) for p in args.planners.split(",")]
    out = {"rows": rows, "archetypes_per_llm_round": archetypes_per_round()}
    for r in rows:
        print(f"{r['scenario']:>22}: {r['workers']:,} workers, {r['s_per_year']:.3f} s/year "
              f"(first chunk incl. compile {r['first_chunk_s_incl_compile']:.1f} s, build {r['build_s']:.1f} s), "
              f"{r['bytes_per_worker']:.1f} B/worker")
    fixed = next((r for r in rows if r["scenario"] == "tax_us_fixed"), None)
    if fixed:
        print(f"target <= 0.5 s/year (fixed, heuristic): {fixed['s_per_year']:.3f} s -> ratio "
              f"{fixed['s_per_year'] / 0.5:.2f} of the budget")
    print(f"LLM round: {out['archetypes_per_llm_round']} archetypes (target <= 40)")
    return out


def compare(args) -> dict:
    from simcore.experiments import Experiment

    exp = Experiment("tax_us_fixed_small", seeds=list(range(args.seeds)), steps=args.years, replicates="independent",
                     overrides=[f"population.size={args.workers}"], name="llm_economist_comparison")
    exp.arm("saez", overrides=["model.params.planner={kind: saez}"])
    exp.arm("gradient", overrides=["model.params.planner={kind: gradient, learning_rate: 0.03, updates_per_year: 2}"])
    if args.llm:
        exp.arm("llm", overrides=["model.params.planner={kind: llm, backend: {kind: llamacpp}}"])
    outcomes = ["welfare_atkinson:final", "welfare_utilitarian:final", "gini_post:final", "revenue:final"]
    t0 = time.perf_counter()
    res = exp.run(args.out, outcomes=outcomes)
    summary = res.summary(outcomes)
    print(f"{args.seeds} seeds x {args.workers:,} workers x {args.years} years in {time.perf_counter() - t0:.1f} s")
    with __import__("polars").Config(tbl_rows=100, tbl_cols=20, tbl_width_chars=200):
        print(summary)
    for arm in res.arms:
        w = res.outcome("welfare_atkinson:final")[arm]
        print(f"{arm:>9}: Atkinson welfare {np.mean(w):,.0f} (min {np.min(w):,.0f}, max {np.max(w):,.0f})")
    return {"summary": summary.to_dicts()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("speed")
    s.add_argument("--workers", type=int, default=1_000_000)
    s.add_argument("--years", type=int, default=10)
    s.add_argument("--planners", default="fixed,saez,gradient")
    s.add_argument("--json")
    c = sub.add_parser("compare")
    c.add_argument("--workers", type=int, default=20_000)
    c.add_argument("--years", type=int, default=20)
    c.add_argument("--seeds", type=int, default=4)
    c.add_argument("--llm", action="store_true", help="add the LLM planner arm (embedded llama.cpp model)")
    c.add_argument("--out", default=None)
    c.add_argument("--json")
    args = ap.parse_args(argv)
    out = speed(args) if args.cmd == "speed" else compare(args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2, default=str)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
