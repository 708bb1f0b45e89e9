"""Benchmark / smoke run: ``python -m populations [-n 8400000] [--seed 0] [--tracemalloc]``.

Prints sampling wall time, group counts, bytes per agent and peak memory.
Peak RSS (ru_maxrss) includes the interpreter and imported libraries, so the
baseline before sampling is printed too; ``--tracemalloc`` reports the peak of
numpy allocations alone (numpy reports to tracemalloc) at some time overhead.
"""

from __future__ import annotations

import argparse
import resource
import time

from . import load_tables, sample_population


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m populations")
    ap.add_argument("-n", type=int, default=8_400_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--tracemalloc", action="store_true")
    args = ap.parse_args()

    tables = load_tables("nyc")  # load once so timings are sampling only
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if args.tracemalloc:
        import tracemalloc

        tracemalloc.start()
    times = []
    for _ in range(args.repeat):
        pop = None  # free the previous population before timing the next
        t0 = time.perf_counter()
        pop = sample_population(args.n, args.seed, tables)
        times.append(time.perf_counter() - t0)
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"n={pop.n:,} households={pop.households:,} workplaces={pop.workplaces:,} classes={pop.classes:,}")
    print(f"sample time s: " + ", ".join(f"{t:.2f}" for t in times) + f" (best {min(times):.2f})")
    print(f"population arrays: {pop.nbytes / 2**20:.1f} MiB = {pop.bytes_per_agent:.1f} bytes/agent")
    print(f"peak RSS: {rss1:.0f} MiB (baseline before sampling {rss0:.0f} MiB)")
    if args.tracemalloc:
        _, peak = tracemalloc.get_traced_memory()
        print(f"tracemalloc peak during sampling: {peak / 2**20:.0f} MiB = {peak / pop.n:.1f} bytes/agent")
    pop.validate()


if __name__ == "__main__":
    main()
