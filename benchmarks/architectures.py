"""Agent architectures on one scenario (AgentTorch's table): heuristic, LLM archetypes, one call per agent.

    python -m benchmarks.architectures [--size 2000] [--steps 28] [--out DIR] [--set dotted.key=value ...]

Runs ``covid_nyc`` three times with the same seed and population (common random numbers):

- ``heuristic``: ``policy: null`` (the model's isolation and employment hazards);
- ``llm_archetypes``: the scenario's LLM policy, one call per non-empty archetype per round;
- ``llm_per_agent``: the same decisions and prompts with ``policy.architecture: per_agent``, one
  call per agent per round.

Each arm gets its own fresh response cache in its run directory. ``llm_calls`` and the token
columns count every request; identical prompts are scored by the model once (``llm_cache_hits``
counts answers stored by an earlier round; duplicates within a round are de-duplicated), so
``llm_seconds`` is the measure of model work. With prompts that show only archetype fields the
per-agent arm reproduces the archetype arm exactly; give it prompts with individual fields
(e.g. ``labor``, ``isolating``, ``disease``) for a real per-agent comparison.

``--set`` edits every arm (e.g. ``--set "policy.backend={kind: openai, endpoints: [...],
model: ...}"`` for an OpenAI-compatible server). Prints one row per architecture:
infections, deaths, peak isolation, final unemployment, LLM calls, cache hits, prompt and
completion tokens, LLM seconds and wall seconds; writes ``architectures.csv`` and a PNG.

Forecast error (held-out MAE / NRMSE on cases, deaths, unemployment, as issue 11 asks) is NOT
computed here: it needs the observation model and ``simcore calibrate`` (being built on a separate
branch). The hook is :func:`forecast_error`; until it is connected the table's ``forecast`` column
says why there is no number instead of showing one.
"""
from __future__ import annotations

import argparse
import importlib.util
import time
from pathlib import Path

import polars as pl

from scenarios import load_scenario
from simcore.runs import run_scenario

ARCHITECTURES = {
    "heuristic": ["policy=null"],
    "llm_archetypes": [],
    "llm_per_agent": ["policy.architecture=per_agent"],
}


def forecast_error(run_dir: Path) -> dict[str, float] | str:
    """Held-out forecast error of a run against New York's observed series, or why there is none.

    Hook for issue 11's calibration module: once ``simcore.calibrate`` exists, calibrate each
    architecture the same way (fit through 2020-04-12, forecast 2020-04-13 to 2020-06-28) and
    return its per-series NRMSE / MAE here. Until then it returns a reason, never numbers.
    """
    if importlib.util.find_spec("simcore.calibrate") is None:
        return "not available (needs simcore.calibrate, issue 11)"
    return "not wired (simcore.calibrate exists: connect it in benchmarks.architectures.forecast_error)"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=2000, help="agents (per_agent makes one call per agent per round)")
    ap.add_argument("--steps", type=int, default=28)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs/architectures")
    ap.add_argument("--only", help="comma-separated architectures to run (default: all three)")
    ap.add_argument("--set", action="append", default=[], metavar="dotted.key=value", help="edit every arm")
    args = ap.parse_args(argv)
    out = Path(args.out)
    names = args.only.split(",") if args.only else list(ARCHITECTURES)
    unknown = sorted(set(names) - set(ARCHITECTURES))
    if unknown:
        ap.error(f"--only: unknown architecture {unknown[0]!r} (known: {', '.join(ARCHITECTURES)})")
    results = {}
    for arch in names:
        sc = load_scenario("covid_nyc", [f"population.size={args.size}", "output.sample_agents=0", *args.set,
                                         *ARCHITECTURES[arch]])
        t0 = time.perf_counter()
        run = run_scenario(sc, out / arch, steps=args.steps, seed=args.seed)
        seconds = time.perf_counter() - t0
        results[arch] = (pl.read_parquet(run / "metrics.parquet"), seconds, forecast_error(run))

    rows = []
    for arch, (m, seconds, forecast) in results.items():
        col = lambda name: int(m[name].sum()) if name in m.columns else 0  # noqa: E731
        rows.append({
            "architecture": arch, "agents": args.size, "steps": args.steps,
            "infections": int(m["new_infections"].sum()), "deaths": int(m["new_deaths"].sum()),
            "peak_isolating": round(float(m["isolating_share"].max()), 3),
            "final_unemployment": round(float(m["unemployment_rate"][-1]), 3),
            "llm_calls": col("llm_calls"), "llm_cache_hits": col("llm_cache_hits"),
            "llm_prompt_tokens": col("llm_prompt_tokens"), "llm_completion_tokens": col("llm_completion_tokens"),
            "llm_seconds": round(float(m["llm_seconds"].sum()), 1) if "llm_seconds" in m.columns else 0.0,
            "wall_seconds": round(seconds, 1),
            "forecast": forecast if isinstance(forecast, str) else str(forecast),
        })
    table = pl.DataFrame(rows)
    with pl.Config(tbl_cols=20, tbl_width_chars=220):
        print(table)
    out.mkdir(parents=True, exist_ok=True)
    table.write_csv(out / "architectures.csv")

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for arch, (m, _, _) in results.items():
        axes[0].plot(m["step"], m["new_infections"], label=arch)
        axes[1].plot(m["step"], m["isolating_share"], label=arch)
        axes[2].plot(m["step"], m["unemployment_rate"], label=arch)
    for ax, title in zip(axes, ("new infections / day", "isolating share", "unemployment rate")):
        ax.set_title(title)
        ax.set_xlabel("day")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(out / "architectures.png", dpi=110)
    print(f"table: {out / 'architectures.csv'}\nfigure: {out / 'architectures.png'}")


if __name__ == "__main__":
    main()
