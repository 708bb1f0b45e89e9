"""One survey round: 5 items over the archetypes of a grouping, with the scenario's backend (issue 14's target).

    flock /tmp/simcore-cpu.lock python -m benchmarks.surveys [--scenario polarization_llm_small] [--size 2000]
        [--group-by persona,stance_bin] [--orders 2] [--set dotted.key=value ...]

Builds the scenario, starts its policy's backend (the embedded model by default) with no response
cache, and times one round of a 5-item questionnaire (the scenario's own items, topped up to 5 with
generic Likert and yes/no items) at step 0: grouping on the device, rendering, one log-prob-scored
call per archetype, item and listed option order. Prints archetypes, calls, seconds, seconds per call
and the target (<= 30 s for <= 64 archetypes).
"""
from __future__ import annotations

import argparse
import time

from scenarios import load_scenario
from scenarios.schema import SurveyItemSpec, SurveySpec

EXTRA = [SurveyItemSpec(name="trust", kind="likert", question="I trust what I read about the issue."),
         SurveyItemSpec(name="worried", kind="yes_no", question="Are you worried about the issue?"),
         SurveyItemSpec(name="talk", kind="choice", question="How often do you talk about the issue?",
                        options=["never", "sometimes", "often"]),
         SurveyItemSpec(name="future", kind="likert", question="Things will get better next year."),
         SurveyItemSpec(name="officials", kind="likert", question="Officials are handling the situation well.")]


def main(argv=None) -> None:
    from llm_policy.personas import feature_levels
    from llm_policy.surveys import SurveyRunner, check_surveys
    from simcore.models import build
    from simcore.runs import make_archetype_policy, make_simulation

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenario", default="polarization_llm_small")
    ap.add_argument("--size", type=int, default=2000)
    ap.add_argument("--group-by", default=None, help="comma-separated features (default: the scenario survey's)")
    ap.add_argument("--orders", type=int, default=2)
    ap.add_argument("--set", action="append", default=[])
    args = ap.parse_args(argv)
    sc = load_scenario(args.scenario, [f"population.size={args.size}", "output.sample_agents=0", *args.set])
    base = sc.surveys[0] if sc.surveys else None
    items = list(base.items if base else [])[:5]
    items += [i for i in EXTRA if i.name not in {x.name for x in items}][:5 - len(items)]
    group_by = args.group_by.split(",") if args.group_by else list(base.group_by)
    kw = {"prompt": base.prompt} if base and set(group_by) >= set(base.group_by) else {
        # the layout the docs recommend: the item (shared by every archetype) first, the respondent last
        "prompt": "A survey of residents.\nQuestion: {question}\nAnswer with one of: {options}.\n"
                  "Respondent: {persona}.\nAnswer:"}
    survey = SurveySpec(name="bench", steps=[0], group_by=group_by, orders=args.orders, items=items, **kw)
    t0 = time.perf_counter()
    built = build(sc)
    sim = make_simulation(sc, built, sc.run.seed)
    policy = make_archetype_policy(sc, built)
    check_surveys([survey], features=feature_levels(built.model, built.state, built.params), stats_names=policy.stats_names, steps=sc.run.steps,
                  every=policy.every, personas=sc.personas)
    runner = SurveyRunner([survey], policy)
    setup = time.perf_counter() - t0
    t0 = time.perf_counter()
    runner.update(sim)
    seconds = time.perf_counter() - t0
    stats = dict(getattr(policy.backend, "stats", {}))
    policy.close()
    archetypes = len({r["archetype"] for r in runner.rows})
    calls = archetypes * len(items) * args.orders
    print(f"scenario {sc.name}, {built.n_agents:,} agents, grouping {'x'.join(group_by)}: {archetypes} archetypes, "
          f"{len(items)} items x {args.orders} orders = {calls} calls")
    print(f"backend {getattr(policy.backend, 'identity', '?')}: setup {setup:.1f} s; survey round {seconds:.1f} s "
          f"({seconds / calls:.3f} s per call); target <= 30 s for <= 64 archetypes: "
          f"{'met' if seconds <= 30 and archetypes <= 64 else 'NOT met' if archetypes <= 64 else 'n/a (> 64)'}")
    if stats:  # where the time goes: context tokens decoded vs served from cached KV prefixes
        print("backend stats: " + ", ".join(f"{k} {v:,.0f}" if isinstance(v, (int, float)) and k != "seconds"
                                            else f"{k} {v}" for k, v in stats.items()))


if __name__ == "__main__":
    main()
