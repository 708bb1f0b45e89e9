"""Agent architectures on New York's observed wave 1 (AgentTorch's table): heuristic, LLM archetypes, one call per agent.

    python -m benchmarks.architectures [--size 10000] [--steps 120] [--calibrate-size 100000] [--out DIR]
                                       [--only heuristic,llm_archetypes] [--no-calibrate] [--set dotted.key=value ...]

Each architecture is a ``covid_nyc`` arm:

- ``heuristic``: ``policy: null`` (the model's isolation and employment hazards);
- ``llm_archetypes``: the scenario's LLM policy, one call per non-empty archetype per weekly round;
- ``llm_per_agent``: ``policy.architecture: per_agent``, one call per agent per round, with prompts
  that show each agent's own fields that the archetypes leave out (``PER_AGENT_DECISIONS``: occupation
  and household size for isolation, age band and household size for the job).

**Calibrated the same way, scored on held-out data.** Every arm is fitted by ``simcore calibrate``
with the same observed series (NYC DOHMH, NYS DOL LAUS), window (2020-03-01 to 2020-04-12), method
(Adam on the relaxed path, then CMA-ES), budget, seed and population size, and forecast to
2020-06-28. The fitted parameters are the same shared ones (initial infections, transmission, IFR
of the oldest, detection, the pause's job-loss and the return rate) plus four behaviour
parameters that each arm has of its own: the heuristic's isolation hazard (base, growth) and
own job-loss hazard (base, case load), or the LLM map's bias and slope for isolation and for
work, i.e. what the answer replaces. An LLM arm's answers are asked once per round and archetype
before the fit (``simcore.calibrate.llm_answers``) and looked up on the device in every rollout;
a test holds that lookup equal to the host-policy run, for these per-agent prompts too. The per-agent
answers are a finer table (2,880 isolation and 576 job cells per round, against 90 and 24), so its fit is
its own.

**Cost.** Columns ``calib_llm_*``: the calibration's own LLM work (its table of answers).
Columns ``run_*``: one forward run of the fitted arm (its calibration's ``overlay.yaml``) at ``--size``
agents over ``--steps`` days, as ``simcore run`` does it (fresh response cache per arm; ``llm_calls`` counts
every request, ``llm_cache_hits`` those answered by an earlier round; identical prompts within a
round are scored once, so ``run_llm_seconds`` is the measure of model work).

``--set`` edits every arm (e.g. ``--set "policy.backend={kind: openai, endpoints: [...], model:
...}"`` for any OpenAI-compatible server). Writes ``architectures.csv``, one calibration
directory per arm (``calib_<arm>/``: fit, forecast, validation, overlay, the LLM call log) and a
PNG of the held-out deaths.
"""
from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import polars as pl

from analysis import validation
from scenarios import load_scenario
from simcore.runs import run_scenario

# The per-agent arm's prompts show each agent's own fields that the archetypes leave out: occupation and
# household size for isolation, age band and household size for the job. Identical agents still get identical
# prompts (the response cache scores each once); the archetype arm keeps the scenario's coarser prompts.
OCCUPATION_WORDS = {"none": "not working", "health": "works in health care",
                    "transport": "works in transport or protective services", "grocery": "works in a grocery store",
                    "office": "works in an office job", "service": "works in restaurants or personal services",
                    "education": "works in education or childcare",
                    "construction_manufacturing": "works in construction or manufacturing"}
JOB_WORDS = {"none": "no job (not working)", "health": "health care", "transport": "transport or protective services",
             "grocery": "a grocery store", "office": "an office job", "service": "restaurants or personal services",
             "education": "education or childcare", "construction_manufacturing": "construction or manufacturing"}
HOUSEHOLD_WORDS = {"1": "alone", "2": "with 1 other person", "3-4": "with 2 or 3 others", "5+": "with 4 or more others"}
AGE_WORDS = {"U19": "under 20", "20t29": "20 to 29", "30t39": "30 to 39", "40t49": "40 to 49", "50t64": "50 to 64",
             "65A": "65 or older"}
PER_AGENT_DECISIONS = [
    {"group_by": ["age_band", "borough", "case_trend", "occupation", "household_size"],
     "labels": {"age_band": AGE_WORDS, "occupation": OCCUPATION_WORDS, "household_size": HOUSEHOLD_WORDS},
     "prompt": "New Yorkers were asked in 2020 whether they would isolate at home next week ({options}).\n\n"
               "Age 65 or older, not working, lives alone, cases rising, stay-at-home order in force. "
               "Will isolate: yes\n"
               "Age 20 to 29, works in restaurants or personal services, lives with 2 or 3 others, cases falling, "
               "stay-at-home order not in force. Will isolate: no\n"
               "Age 50 to 64, works in an office job, lives with 1 other person, cases flat, stay-at-home order in "
               "force. Will isolate: yes\n"
               "Age 30 to 39, works in health care, lives with 4 or more others, cases rising, stay-at-home order in "
               "force. Will isolate: no\n"
               "Age 40 to 49, works in education or childcare, lives with 2 or 3 others, cases rising, stay-at-home "
               "order in force. Will isolate: yes\n"
               "Age under 20, not working, lives with 4 or more others, cases falling, stay-at-home order not in "
               "force. Will isolate: no\n\n"
               "Age {age_band}, {occupation}, lives {household_size}, cases {case_trend}, stay-at-home order "
               "{pause_order}. Will isolate:"},
    {"group_by": ["occupation", "case_trend", "age_band", "household_size"],
     "labels": {"age_band": AGE_WORDS, "occupation": JOB_WORDS, "household_size": HOUSEHOLD_WORDS},
     "prompt": "New York City workers were asked in 2020 whether they would keep or lose their job next week "
               "({options}).\n\n"
               "Works in an office job, age 40 to 49, lives with 2 or 3 others, cases falling, stay-at-home order in "
               "force. Next week: keep\n"
               "Works in restaurants or personal services, age 20 to 29, lives alone, cases rising, stay-at-home "
               "order in force. Next week: lose\n"
               "Works in health care, age 50 to 64, lives with 1 other person, cases rising, stay-at-home order in "
               "force. Next week: keep\n"
               "Works in construction or manufacturing, age 30 to 39, lives with 4 or more others, cases rising, "
               "stay-at-home order in force. Next week: lose\n"
               "Works in a grocery store, age under 20, lives with 2 or 3 others, cases flat, stay-at-home order in "
               "force. Next week: keep\n"
               "Works in restaurants or personal services, age 65 or older, lives with 1 other person, cases "
               "falling, stay-at-home order not in force. Next week: keep\n\n"
               "Works in {occupation}, age {age_band}, lives {household_size}, cases {case_trend}, stay-at-home order "
               "{pause_order}. Next week:"},
]


def per_agent_settings() -> list[str]:
    """``--set`` items that turn ``covid_nyc``'s decisions into the per-agent ones (JSON is YAML, so every
    value, the prompts' newlines and colons included, reads back as written)."""
    out = ["policy.architecture=per_agent"]
    for i, d in enumerate(PER_AGENT_DECISIONS):
        out += [f"policy.decisions.{i}.{k}={json.dumps(v)}" for k, v in d.items()]
    return out


ARCHITECTURES = {
    "heuristic": ["policy=null"],
    "llm_archetypes": [],
    "llm_per_agent": per_agent_settings(),
}


SHARED_FIT = ("initial_infected,beta.household,beta.community,beta.workplace,ifr.5,detection_rate,"
              "employment.loss_lockdown,employment.return_base")
BEHAVIOUR_FIT = {  # what each arm's agents decide with: the parameters the LLM answer replaces, or its map
    "heuristic": "isolation.base,isolation.growth,employment.loss_base,employment.loss_cases",
    "llm": "llm_map.isolate.bias,llm_map.isolate.slope,llm_map.work.bias,llm_map.work.slope",
}
WINDOW, FORECAST_TO = "2020-03-01:2020-04-12", "2020-06-28"
FIT_SETTINGS = ["model.params.contact_scales=people"]  # as the README's forecast


def forecast_error(calib_dir: Path) -> dict[str, float]:
    """Held-out (2020-04-13 on) error of a calibration's forecast (``analysis.validation.held_out``): citywide
    weekly NRMSE / MAE, 80 % coverage and interval score (over max observed) per series, the coverage pooled
    over boroughs and series, the mean absolute error of monthly unemployment over boroughs, in percentage
    points, and how often a calibrated band would land in the coverage target on these weeks (from
    summary.json; absent in a directory written before it). The scores come from ``forecast.parquet``, so a
    reused directory gets the current metrics."""
    h = validation.held_out(validation.validation_table(pl.read_parquet(calib_dir / "forecast.parquet")))
    out = {}
    for series in validation.WEEKLY:
        out[f"{series}_nrmse"] = round(h[series]["nrmse"], 3)
        out[f"{series}_mae"] = round(h[series]["mae"], 1)
        out[f"{series}_coverage80"] = round(h[series]["coverage80"], 2)
        out[f"{series}_interval_score"] = round(h[series]["interval_score_norm"], 3)
    out["coverage80_pooled"] = round(h["coverage80_pooled"], 2)
    out["unemployment_mae_pp"] = round(h["unemployment_mae_pp"], 2)
    chance = json.loads((calib_dir / "summary.json").read_text())["validation"].get("coverage_if_calibrated")
    if chance:
        out["deaths_coverage80_calibrated_in_target"] = round(chance["deaths_citywide"]["in_target"], 2)
    return out


def distinct_prompts(calib_dir: Path) -> int:
    """Distinct prompts in a calibration's LLM call log: what the model scored (the cache answers the rest)."""
    log = calib_dir / "llm_calls.parquet"
    return pl.read_parquet(log, columns=["prompt_hash"])["prompt_hash"].n_unique() if log.exists() else 0


def calibrate_arm(arch: str, args, out: Path) -> dict:
    from simcore.calibrate import calibrate

    settings = [*FIT_SETTINGS, *args.set, *ARCHITECTURES[arch]]
    if arch == "llm_per_agent":  # the cap bounds a run's per-agent prompts per round; the fit asks per archetype
        settings.append(f"policy.per_agent_max={max(args.calibrate_size, 20_000)}")
    sc = load_scenario("covid_nyc", settings)
    fit = SHARED_FIT + "," + BEHAVIOUR_FIT["heuristic" if sc.policy is None else "llm"]
    d = out / f"calib_{arch}"
    if not (args.reuse and (d / "summary.json").exists()):
        calibrate(sc, observed="nyc", window=WINDOW, forecast_to=FORECAST_TO, fit=fit, out=d,
                  size=args.calibrate_size, iterations=args.iterations, lr=0.08, generations=args.generations,
                  popsize=args.popsize, posterior_runs=args.posterior_runs, band_runs=args.band_runs,
                  posterior_min_ess=args.posterior_min_ess, posterior_max_runs=args.posterior_max_runs,
                  seed=args.seed, weights={"hospitalizations": 3.0}, progress=False, settings=settings)
    summary = json.loads((d / "summary.json").read_text())
    llm = summary.get("llm") or {}
    post = summary["posterior"]
    return {"calib_seconds": round(summary["seconds"]["total"], 1), "fit_loss": round(min(summary["loss"].values()), 4),
            "posterior_ess": round(post["ess"], 1), "posterior_points": post["proposals"],
            "n_eff": None if post["n_eff"] is None else round(post["n_eff"], 1),  # None: no CMA-ES, no posterior
            **forecast_error(d), "calib_llm_calls": llm.get("calls", 0),
            "calib_llm_distinct": distinct_prompts(d),
            "calib_llm_seconds": round(llm.get("llm_seconds", 0.0), 1)}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=10_000, help="agents of the forward runs (with the arm's fitted "
                                                            "overlay) that measure its cost (per_agent makes one call "
                                                            "per agent per round)")
    ap.add_argument("--steps", type=int, default=120, help="days of the forward runs (120: Mar 1 - Jun 28 2020)")
    ap.add_argument("--no-calibrate", action="store_true", help="forward runs only (no fit, no forecast error)")
    ap.add_argument("--calibrate-size", type=int, default=100_000, help="agents of each arm's calibration")
    ap.add_argument("--iterations", type=int, default=30, help="Adam steps of each calibration")
    ap.add_argument("--generations", type=int, default=30, help="CMA-ES generations of each calibration")
    ap.add_argument("--popsize", type=int, default=16)
    ap.add_argument("--posterior-runs", type=int, default=96)
    ap.add_argument("--posterior-min-ess", type=float, default=32.0,
                    help="more posterior rounds while the ESS is below this (a band from fewer points is chance)")
    ap.add_argument("--posterior-max-runs", type=int, default=192)
    ap.add_argument("--band-runs", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs/architectures")
    ap.add_argument("--reuse", action="store_true", help="reuse an arm's calibration directory in --out when "
                                                         "it is complete (holds summary.json), e.g. after a crash")
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
        calib, fitted = {}, []
        print(f"{arch}: {'forward run' if args.no_calibrate else 'calibrating'} ({time.strftime('%H:%M:%S')})",
              flush=True)
        if not args.no_calibrate:
            from simcore.calibrate import read_overlay

            calib = calibrate_arm(arch, args, out)
            fitted = read_overlay(out / f"calib_{arch}" / "overlay.yaml")  # the forward run is the fitted model
        sc = load_scenario("covid_nyc", [*fitted, f"population.size={args.size}", "output.sample_agents=0",
                                         *args.set, *ARCHITECTURES[arch]])
        if args.reuse and (out / arch).exists():
            shutil.rmtree(out / arch)  # a forward run is cheap and is the cost measure: always run afresh
        t0 = time.perf_counter()
        run = run_scenario(sc, out / arch, steps=args.steps, seed=args.seed)
        seconds = time.perf_counter() - t0
        results[arch] = (pl.read_parquet(run / "metrics.parquet"), seconds, calib)

    rows = []
    for arch, (m, seconds, calib) in results.items():
        col = lambda name: int(m[name].sum()) if name in m.columns else 0  # noqa: E731
        rows.append({
            "architecture": arch, **calib, "run_agents": args.size, "run_steps": args.steps,
            "run_infections": int(m["new_infections"].sum()), "run_deaths": int(m["new_deaths"].sum()),
            "run_peak_isolating": round(float(m["isolating_share"].max()), 3),
            "run_final_unemployment": round(float(m["unemployment_rate"][-1]), 3),
            "run_llm_calls": col("llm_calls"), "run_llm_cache_hits": col("llm_cache_hits"),
            "run_llm_prompt_tokens": col("llm_prompt_tokens"),
            "run_llm_completion_tokens": col("llm_completion_tokens"),
            "run_llm_seconds": round(float(m["llm_seconds"].sum()), 1) if "llm_seconds" in m.columns else 0.0,
            "run_seconds": round(seconds, 1),
        })
    table = pl.DataFrame(rows)
    shown = [c for c in ("architecture", "fit_loss", "posterior_ess", "posterior_points", "deaths_nrmse",
                         "deaths_coverage80", "deaths_interval_score", "deaths_coverage80_calibrated_in_target",
                         "coverage80_pooled", "hospitalizations_nrmse", "cases_nrmse",
                         "unemployment_mae_pp", "calib_llm_calls", "calib_llm_distinct", "calib_llm_seconds",
                         "run_llm_calls", "run_llm_prompt_tokens", "run_llm_seconds", "run_seconds")
             if c in table.columns]
    with pl.Config(tbl_cols=-1, tbl_width_chars=400, tbl_formatting="MARKDOWN", tbl_hide_column_data_types=True):
        print(table.select(shown))
    out.mkdir(parents=True, exist_ok=True)
    table.write_csv(out / "architectures.csv")

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    calibrated = [a for a, (_, _, c) in results.items() if c]
    fig, axes = plt.subplots(1, 3 if calibrated else 2, figsize=(13 if calibrated else 9, 3.6))
    for arch, (m, _, _) in results.items():
        axes[0].plot(m["step"], m["isolating_share"], label=arch)
        axes[1].plot(m["step"], m["unemployment_rate"], label=arch)
    for ax, title in zip(axes, (f"isolating share ({args.size:,} agents)", "unemployment rate")):
        ax.set_title(title)
        ax.set_xlabel("day")
    axes[0].legend()
    if calibrated:  # held-out weeks of citywide deaths: observed and each arm's forecast with its 80 % band
        ax = axes[2]
        for i, arch in enumerate(calibrated):
            f = pl.read_parquet(out / f"calib_{arch}" / "forecast.parquet").filter(
                (pl.col("series") == "deaths") & (pl.col("borough") == "citywide")).sort("index")
            if i == 0:
                ax.plot(f["index"], f["observed"], "k.-", label="observed (DOHMH)")
            ax.plot(f["index"], f["simulated"], label=arch)
            ax.fill_between(f["index"], f["lo"], f["hi"], alpha=0.15)
        start = int(f.filter(pl.col("held_out"))["index"].min())
        ax.axvline(start - 0.5, color="grey", lw=0.8)
        ax.set_title("weekly deaths, NYC (fit | held out)")
        ax.set_xlabel("week from 2020-03-01")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "architectures.png", dpi=110)
    print(f"table: {out / 'architectures.csv'}\nfigure: {out / 'architectures.png'}")


if __name__ == "__main__":
    main()
