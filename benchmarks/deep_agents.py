"""25 deep agents with weekly decisions and reflections: seconds added to a run (issue 14's target: <= 5 min).

    flock /tmp/simcore-cpu.lock python -m benchmarks.deep_agents [--scenario covid_deep_small] [--size 50000]
        [--steps 120] [--k 25] [--set dotted.key=value ...]

Runs the scenario twice through RunSession in temporary run directories: once as it is (its
``deep_agents:`` block, the embedded model by default) and once with ``deep_agents.k = 0`` (the same
run without deep agents). Prints both wall times, the seconds added, the deep agents' LLM calls,
tokens, fallbacks and rows, and the machine's load (os.getloadavg) before and after.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from scenarios import load_scenario


def timed(sc, run_dir: Path):
    from simcore.session import RunSession

    t0 = time.perf_counter()
    with RunSession(sc, run_dir) as s:
        s.run()
        deep = s.deep_agents
        stats = None if deep is None else vars(deep.stats).copy()
        rows = 0 if deep is None else len(deep.rows)
    return time.perf_counter() - t0, stats, rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenario", default="covid_deep_small")
    ap.add_argument("--size", type=int, default=None)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--k", type=int, default=25)
    ap.add_argument("--set", action="append", default=[])
    args = ap.parse_args(argv)
    over = [*args.set, f"deep_agents.k={args.k}", "output.sample_agents=0"]
    if args.size:
        over.append(f"population.size={args.size}")
    if args.steps:
        over.append(f"run.steps={args.steps}")
    sc = load_scenario(args.scenario, over)
    base = load_scenario(args.scenario, [*over, "deep_agents.k=0"])
    print(f"{sc.name}: {sc.population.size:,} agents, {sc.run.steps} steps, k={args.k}, "
          f"every={sc.deep_agents.every}, reflect_every={sc.deep_agents.reflect_every}; load {os.getloadavg()}")
    with tempfile.TemporaryDirectory() as tmp:
        t_base, _, _ = timed(base, Path(tmp) / "base")
        print(f"without deep agents: {t_base:.1f} s", flush=True)
        t_deep, stats, rows = timed(sc, Path(tmp) / "deep")
    print(f"without deep agents: {t_base:.1f} s; with: {t_deep:.1f} s; added {t_deep - t_base:.1f} s "
          f"(target <= 300 s)")
    print(f"deep-agent LLM calls {stats['calls']}, fallbacks {stats['fallbacks']}, prompt tokens "
          f"{stats['prompt_tokens']}, completion tokens {stats['completion_tokens']}, LLM seconds "
          f"{stats['seconds']:.1f}, rows {rows}; load {os.getloadavg()}")


if __name__ == "__main__":
    main()
