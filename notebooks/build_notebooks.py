"""Writes the notebooks in this folder from the cell sources below (outputs empty).

    python notebooks/build_notebooks.py

Edit the cells here, not in the .ipynb files, so reviews see plain Python.
Every notebook reads ``SIMCORE_NB_SIZE`` (agents), ``SIMCORE_NB_SEEDS`` and
``SIMCORE_NB_STEPS`` so CI can execute it at a small size (tests/test_notebooks.py).
"""
from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent

SETUP = """\
%matplotlib inline
import os

import polars as pl

from scenarios import load_scenario
from simcore.experiments import Experiment
from analysis import plots

# Small in CI (tests/test_notebooks.py sets these), full size by default.
SIZE = int(os.environ.get("SIMCORE_NB_SIZE", "50000"))
SEEDS = list(range(int(os.environ.get("SIMCORE_NB_SEEDS", "8"))))
STEPS = int(os.environ.get("SIMCORE_NB_STEPS", "120"))
pl.Config.set_tbl_cols(14)
pl.Config.set_tbl_width_chars(160)
print(f"{SIZE:,} agents, {len(SEEDS)} seeds, {STEPS} steps")
"""

LOCKDOWN = [
    new_markdown_cell("""\
# Counterfactual lockdown timing

What if New York's pause order had come two weeks earlier, or two weeks later?

This notebook runs the NYC-style epidemic (`covid_small`: the `covid_nyc` model on a smaller synthetic
population) three ways and compares deaths and unemployment:

* **baseline**: the scenario as written (pause order, workplace and community restrictions from day 21);
* **early_14d**: the same restrictions starting 14 days earlier;
* **late_14d**: starting 14 days later.

The arms share random numbers (same root key, same per-step folding), so for each seed the only difference
between arms is the policy. All arms fork from the baseline's state at day 7, the first day the early arm
differs, so the first week is simulated once. Replicates vary the epidemic noise on one fixed synthetic
population (`replicates="shared"`); they run batched under `jax.vmap` on a GPU, one after another on one
compiled program on CPU (where batching measured no faster).

Size knobs (environment): `SIMCORE_NB_SIZE`, `SIMCORE_NB_SEEDS`, `SIMCORE_NB_STEPS`."""),
    new_code_cell(SETUP),
    new_markdown_cell("## The scenario and its lockdown interventions"),
    new_code_cell("""\
scenario = load_scenario("covid_small", [f"population.size={SIZE}", f"run.steps={STEPS}"])
pl.DataFrame([iv.model_dump() for iv in scenario.interventions])"""),
    new_code_cell("""\
LOCKDOWN = {"pause_order", "pause_community", "pause_workplaces"}
SHIFT = 14


def moved(days):
    \"\"\"Overrides that move the start of every lockdown intervention by `days` (end unchanged).\"\"\"
    return [f"interventions.{i}.start={iv.start + days}"
            for i, iv in enumerate(scenario.interventions) if iv.name in LOCKDOWN]


early, late = moved(-SHIFT), moved(+SHIFT)
branch_at = min(iv.start for iv in scenario.interventions if iv.name in LOCKDOWN) - SHIFT
print("early:", early, "\\nlate:", late, "\\nfork from day", branch_at)"""),
    new_markdown_cell("## Run the experiment"),
    new_code_cell("""\
exp = (Experiment(scenario, seeds=SEEDS)
       .arm("early_14d", overrides=early)
       .arm("late_14d", overrides=late)
       .branch(from_step=branch_at))
results = exp.run(progress=True)
{k: round(v, 2) for k, v in results.timing.items()}"""),
    new_markdown_cell("""\
`branch_saving_estimate_seconds` is the time the fork saved: the prefix (days before the fork) is run once
for the baseline instead of once per arm."""),
    new_markdown_cell("""\
## Paired effects with confidence intervals

Per seed, arm minus baseline; `ci_low`/`ci_high` is a 95% percentile bootstrap interval of the mean paired
difference; p-values from the paired t, Welch, Mann-Whitney and Kolmogorov-Smirnov tests."""),
    new_code_cell("""\
OUTCOMES = ["new_deaths:sum", "new_infections:sum", "I:max", "unemployment_rate:mean", "unemployment_rate:max"]
summary = results.summary(OUTCOMES, ci=0.95)
summary.select("arm", "outcome", "baseline_mean", "arm_mean", "diff_mean", "ci_low", "ci_high", "rel_diff",
               "p_paired_t")"""),
    new_code_cell("""\
results.paired("new_deaths:sum").pivot(on="arm", index="seed", values="diff")"""),
    new_markdown_cell("## Deaths"),
    new_code_cell("""\
results.plot("new_deaths", "curves", cumulative=True)"""),
    new_code_cell("""\
results.plot("new_deaths", "effect", cumulative=True)"""),
    new_markdown_cell("## Unemployment"),
    new_code_cell("""\
results.plot("unemployment_rate", "curves")"""),
    new_code_cell("""\
results.plot("unemployment_rate", "effect")"""),
    new_code_cell("""\
plots.summary_forest(summary, "unemployment_rate:mean")"""),
    new_markdown_cell("## Where: deaths by borough (early arm minus baseline, cumulative)"),
    new_code_cell("""\
import numpy as np

boroughs = [c for c in results.metric_names if c.startswith("new_deaths__borough_")]
diffs = {c: np.cumsum(results.series(c)["early_14d"] - results.series(c)["baseline"], axis=1) for c in boroughs}
plots.borough_small_multiples(diffs, "new_deaths", title="cumulative deaths, early_14d minus baseline")"""),
    new_markdown_cell("""\
## Reading the results

* An earlier lockdown cuts infections before they compound: the deaths difference opens as soon as the
  arms diverge and keeps growing, while the later lockdown does the opposite.
* Unemployment moves the other way: job losses follow the pause order, so the early arm loses jobs
  earlier (a positive unemployment difference early on) and the later arm later. Compare the mean and
  peak unemployment rows above.
* With few seeds or a small population, intervals are wide; raise `SIMCORE_NB_SEEDS` / `SIMCORE_NB_SIZE`.
* Save everything for `simcore report`: `exp.run("runs/lockdown_timing")`, then
  `simcore report runs/lockdown_timing`."""),
]

HEURISTIC_VS_LLM = [
    new_markdown_cell("""\
# Agent architectures: heuristic vs archetype table (vs LLM)

The epidemic model decides each day whether an agent starts isolating. Three architectures:

1. **heuristic**: the model's built-in hazard, a logistic function of the local case trend and level
   (the scenario as is; `isolate_llm` is NaN, meaning "use the heuristic");
2. **archetype_table**: a host policy that, every 7 days, looks up a daily isolation probability in a table
   indexed by *[age band, borough, local case trend]* and writes it to every agent through the model's
   decision target `isolate_llm` (one array write of the hazard's logit; no Python loop over agents). The table is filled from a
   simple rule here;
3. **llm**: the same archetype grouping, with the table filled by a language model (`llm_policy`). The cell
   marked **LLM BACKEND PLUGS IN HERE** adds it; it is off unless `SIMCORE_NB_LLM=1`, because the LLM
   layer is still being written and CI has no model.

All arms share random numbers, so differences come from the decision rule, not from noise."""),
    new_code_cell(SETUP),
    new_code_cell("""\
import jax.numpy as jnp
import numpy as np

scenario = load_scenario("covid_small", [f"population.size={SIZE}", f"run.steps={STEPS}"])"""),
    new_markdown_cell("## The archetype table, from a simple rule"),
    new_code_cell("""\
class TablePolicy:
    \"\"\"Every `every` days: per-agent isolation hazard = table[age band, borough, case trend].

    The epidemic's decision targets take the hazard's logit (the model maps it to behaviour with
    model.params.llm_map, which is the identity by default).
    \"\"\"

    def __init__(self, table, model, target="isolate_llm", every=7):
        if target not in model.decision_targets:
            raise KeyError(f"{target!r} is not a decision target of {model.name} ({model.decision_targets})")
        table = jnp.asarray(table, jnp.float32)
        self.table = jnp.log(table) - jnp.log1p(-table)
        self.model, self.target, self.every = model, target, every
        self.rounds = 0

    def update(self, sim):
        f = self.model.features(sim.state, sim.params)  # per-agent codes, on the device
        sim.set_param(self.target, self.table[f["age_band"], f["borough"], f["case_trend"]])
        self.rounds += 1


def rule_table(labels):
    \"\"\"Daily isolation-start probability: rises with the local trend and with age.\"\"\"
    n_age, n_bor, n_trend = len(labels["age_band"]), len(labels["borough"]), len(labels["case_trend"])
    by_trend = np.array([0.001, 0.004, 0.015])[:n_trend]  # falling, flat, rising
    by_age = np.linspace(0.6, 2.0, n_age)  # older agents isolate more
    return np.broadcast_to(by_age[:, None, None] * by_trend[None, None, :], (n_age, n_bor, n_trend)).copy()


def table_policies(built):
    return [TablePolicy(rule_table(built.model.labels), built.model)]"""),
    new_code_cell("""\
from simcore.models import build

labels = build(scenario.model_copy(update={"population": scenario.population.model_copy(update={"size": 2000})}),
               seed=0).model.labels
table = rule_table(labels)
pl.DataFrame({"age_band": list(labels["age_band"]),
              **{trend: table[:, 0, k] for k, trend in enumerate(labels["case_trend"])}})"""),
    new_markdown_cell("## Arms"),
    new_code_cell("""\
exp = Experiment(scenario, seeds=SEEDS).arm("archetype_table", policies=table_policies)"""),
    new_markdown_cell("""\
### >>> LLM BACKEND PLUGS IN HERE <<<

Set `SIMCORE_NB_LLM=1` to add an `llm` arm: `llm_policy.policy.make_policy` builds the archetype policy
from a `policy:` block (the one in `covid_nyc.yaml`, with its embedded llama.cpp backend by default), and
the experiment runs it once per seed. Any backend `llm_policy.backends.make_backend` accepts works
(`openai` for a vLLM server, `replay` to re-run from a cache)."""),
    new_code_cell("""\
RUN_LLM = os.environ.get("SIMCORE_NB_LLM") == "1"
if RUN_LLM:
    import jax
    from llm_policy.policy import make_policy

    llm_spec = load_scenario("covid_nyc").policy  # decisions + prompts; change .backend to use another model

    def llm_policies(built):
        stats_names = tuple(jax.eval_shape(built.model.stats, built.state, built.params))
        return [make_policy(llm_spec, built.model, stats_names, scheduled=tuple(built.schedule),
                            interventions=scenario.interventions)]  # prompts may name them

    exp.arm("llm", policies=llm_policies)
print("arms:", exp.arm_names)"""),
    new_markdown_cell("## Run"),
    new_code_cell("""\
results = exp.run(progress=True)
OUTCOMES = ["isolating_share:mean", "isolating_share:max", "new_infections:sum", "new_deaths:sum",
            "unemployment_rate:mean"]
results.summary(OUTCOMES).select("arm", "outcome", "baseline_mean", "arm_mean", "diff_mean", "ci_low", "ci_high",
                                 "p_paired_t")"""),
    new_code_cell("""\
results.plot("isolating_share", "curves")"""),
    new_code_cell("""\
results.plot("new_infections", "effect", cumulative=True)"""),
    new_markdown_cell("""\
## Notes

* The archetype table changes behaviour only at its weekly rounds, like the LLM layer: between rounds the
  per-agent hazard is fixed, whereas the heuristic reacts daily.
* Arms with host policies run one replicate at a time (each replicate owns its parameters), still on one
  compiled program; they cannot be forked from a checkpoint.
* To compare architectures fairly, calibrate the table (or the LLM's `scale`) so that isolation levels
  in a reference period match, then compare the dynamics."""),
]


def write(name: str, cells) -> Path:
    nb = new_notebook(cells=cells, metadata={
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
    })
    path = HERE / name
    nbformat.validate(nb)
    nbformat.write(nb, path)
    return path


def main() -> None:
    for name, cells in (("counterfactual_lockdown.ipynb", LOCKDOWN), ("heuristic_vs_llm.ipynb", HEURISTIC_VS_LLM)):
        print(write(name, cells))


if __name__ == "__main__":
    main()
