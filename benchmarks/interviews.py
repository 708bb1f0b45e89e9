"""One interview (restore from the nearest checkpoint + the answer) with the embedded model (issue 14's target).

    flock /tmp/simcore-cpu.lock python -m benchmarks.interviews [--size 5000] [--step 24] [--set dotted.key=value ...]

Runs a small ``covid_nyc`` (heuristic behaviour, checkpoints every 7 steps) once, then times two
interviews of one agent at ``--step`` (between checkpoints, so the restore advances the run from the
checkpoint before it): a yes/no choice and a free answer of at most 32 tokens, both answered by the
embedded model (``--backend llamacpp``: Gemma 3 270M, llama.cpp). Each figure includes everything
``simcore interview`` does: the rebuild, the checkpoint restore, the session steps up to N, the
context, starting the backend (loading the model) and the answer. Prints the seconds of each part,
the target (<= 15 s) and the machine's load average.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path


def main(argv=None) -> None:
    from scenarios import load_scenario
    from simcore.session import RunSession, interview

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=5000)
    ap.add_argument("--step", type=int, default=24)
    ap.add_argument("--agent", type=int, default=17)
    ap.add_argument("--set", action="append", default=[])
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-interviews-") as tmp:
        run = Path(tmp) / "run"
        sc = load_scenario("covid_nyc", [f"population.size={args.size}", "run.steps=35", "run.chunk_size=7",
                                         "output.sample_agents=200", "policy=null", *args.set])
        t0 = time.perf_counter()
        with RunSession(sc, run, checkpoint_every=7) as s:
            s.run(28)
        print(f"setup: covid_nyc, {args.size:,} agents, 28 steps with checkpoints every 7: "
              f"{time.perf_counter() - t0:.1f} s")
        for label, kw in (("choice yes|no", {"options": "yes|no"}), ("free answer <= 32 tokens", {"max_tokens": 32})):
            t0 = time.perf_counter()
            row = interview(run, args.step, "Will you stay at home next week?", agent=args.agent,
                            backend="llamacpp", **kw)
            total = time.perf_counter() - t0
            probs = ", ".join(f"{o} {p:.3f}" for o, p in zip(row["options"], row["probs"]))
            print(f"interview ({label}) at step {args.step} from checkpoint {row['checkpoint_step']}: "
                  f"total {total:.2f} s (restore {row['restore_seconds']:.2f} s, answer {row['seconds']:.2f} s, "
                  f"rest = context + model load) -> {row['answer']!r} {probs} "
                  f"[{'ok' if total <= 15 else 'OVER'} target <= 15 s]")
    load = os.getloadavg()
    print(f"load average: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} cpus")


if __name__ == "__main__":
    main()
