"""Agent architectures compared on one scenario: heuristic agents vs LLM archetypes.

    python -m benchmarks.architectures [--size 50000] [--steps 56] [--out DIR]

Runs ``covid_nyc`` twice with the same seed (common random numbers): once with
``policy: null`` (heuristic isolation/employment), once with the scenario's LLM
archetypes. Prints infections, deaths, peak isolation and unemployment, the LLM
calls, cache hits and seconds, and writes a PNG with both curves.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import polars as pl

from scenarios import load_scenario
from simcore.runs import run_scenario


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=50_000)
    ap.add_argument("--steps", type=int, default=56)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs/architectures")
    args = ap.parse_args(argv)
    out = Path(args.out)
    results = {}
    for arch, overrides in (("heuristic", ["policy=null"]), ("llm_archetypes", [])):
        sc = load_scenario("covid_nyc", [f"population.size={args.size}", *overrides])
        t0 = time.perf_counter()
        run = run_scenario(sc, out / arch, steps=args.steps, seed=args.seed)
        seconds = time.perf_counter() - t0
        results[arch] = (pl.read_parquet(run / "metrics.parquet"), seconds)

    rows = []
    for arch, (m, seconds) in results.items():
        calls = int(m["llm_calls"].sum()) if "llm_calls" in m.columns else 0
        hits = int(m["llm_cache_hits"].sum()) if "llm_cache_hits" in m.columns else 0
        rows.append({
            "architecture": arch, "agents": args.size, "steps": args.steps,
            "infections": int(m["new_infections"].sum()), "deaths": int(m["new_deaths"].sum()),
            "peak_isolating": round(float(m["isolating_share"].max()), 3),
            "final_unemployment": round(float(m["unemployment_rate"][-1]), 3),
            "llm_calls": calls, "llm_cache_hits": hits,
            "llm_seconds": round(float(m["llm_seconds"].sum()), 1) if "llm_seconds" in m.columns else 0.0,
            "wall_seconds": round(seconds, 1),
        })
    table = pl.DataFrame(rows)
    with pl.Config(tbl_cols=20, tbl_width_chars=200):
        print(table)
    table.write_csv(out / "architectures.csv")

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for arch, (m, _) in results.items():
        axes[0].plot(m["step"], m["new_infections"], label=arch)
        axes[1].plot(m["step"], m["isolating_share"], label=arch)
        axes[2].plot(m["step"], m["unemployment_rate"], label=arch)
    for ax, title in zip(axes, ("new infections / day", "isolating share", "unemployment rate")):
        ax.set_title(title)
        ax.set_xlabel("day")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(out / "architectures.png", dpi=110)
    print(f"figure: {out / 'architectures.png'}")


if __name__ == "__main__":
    main()
