"""Run-directory flush cost against run length: append-only part files vs rewriting metrics.parquet.

    flock /tmp/simcore-cpu.lock python -m benchmarks.io [--agents 50000] [--steps 10000] [--chunk 10]
        [--scenario covid_small] [--json PATH]

Runs one real chunk of the scenario at ``--agents`` agents to get the run's own chunk shape (its
metric columns, sampled agent columns, ``output.sample_agents`` rows every ``output.sample_every``
steps), then feeds :class:`simcore.io.RunWriter` that chunk again and again, with shifted step
numbers, up to ``--steps`` steps, one flush (``submit`` + ``flush``, manifest included) per chunk of
``--chunk`` steps. No stepping is timed: only what the writer does per flush. Two writers, side by
side, in fresh directories:

- ``append``: the writer as shipped (one part file per flush, every 64 parts merged, one
  ``metrics.parquet`` at close; :mod:`simcore.rundir`);
- ``rewrite``: the same writer with the old metrics strategy (all rows kept in memory and all of
  ``metrics.parquet`` rewritten at every flush).

Printed per writer: median flush ms over the 5 flushes ending at step 100 and at step ``--steps``,
their ratio (target <= 1.5 for ``append``), the mean over the last 64 flushes (amortizes one merge of
64 parts), the close (compaction) ms, and the total. Load (``os.getloadavg``) is printed with them.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from simcore.engine.runner import Chunk
from simcore.io import RunWriter, atomic_write_table


class RewritingWriter(RunWriter):
    """The writer before simcore.rundir: every flush rewrites all of metrics.parquet (O(run length))."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._batches: list[pa.RecordBatch] = []

    def _write_metrics(self, chunk, extra) -> None:
        cols = {"step": pa.array(chunk.steps, pa.int64())}
        for name, values in {**chunk.metrics, **extra}.items():
            cols[name] = pa.array(np.asarray(values))
        batch = pa.RecordBatch.from_pydict(cols)
        first = int(chunk.steps[0])
        self._batches = [b.filter(pc.less(b.column("step"), first)) for b in self._batches]
        self._batches.append(batch)
        atomic_write_table(pa.Table.from_batches(self._batches), self.dir / "metrics.parquet")

    def close(self, status: str = "completed") -> None:
        self._metrics = None  # nothing to compact: the file is whole after every flush
        super().close(status)


def template_chunk(scenario: str, agents: int, chunk: int):
    """One real chunk of ``scenario`` at ``agents`` agents (and its output settings)."""
    from scenarios import load_scenario
    from simcore.models import build
    from simcore.runs import make_simulation

    sc = load_scenario(scenario, [f"population.size={agents}", f"run.chunk_size={chunk}", f"run.steps={chunk}"])
    built = build(sc)
    sim = make_simulation(sc, built, 0)
    got = []
    sim.run(chunk, on_chunk=lambda s, c: got.append(c))
    return got[0], sc.output.sample_every


def shifted(c: Chunk, start: int) -> Chunk:
    return Chunk(steps=np.arange(start, start + len(c.steps), dtype=np.int64), metrics=c.metrics,
                 samples=c.samples, events=c.events, seconds=c.seconds)


def time_writer(cls, tmpl: Chunk, sample_every: int, steps: int, out: Path) -> dict:
    chunk = len(tmpl.steps)
    writer = cls(out, {"scenario": {"name": "bench"}, "steps": steps}, sample_every=sample_every)
    per_flush, at = [], []
    t_all = time.perf_counter()
    for start in range(0, steps, chunk):
        extra = {"wall_seconds": np.zeros(chunk)}
        t0 = time.perf_counter()
        writer.submit(shifted(tmpl, start), extra)
        writer.flush()
        per_flush.append(time.perf_counter() - t0)
        at.append(start + chunk)  # steps on disk after this flush
    t0 = time.perf_counter()
    writer.close()
    close_s = time.perf_counter() - t0
    total = time.perf_counter() - t_all
    i100 = at.index(100) if 100 in at else int(np.searchsorted(at, 100))
    early = per_flush[max(0, i100 - 4):i100 + 1]
    late = per_flush[-5:]
    return {"flush_ms_step100": 1e3 * statistics.median(early), f"flush_ms_step{steps}": 1e3 * statistics.median(late),
            "ratio": statistics.median(late) / statistics.median(early),
            "mean_ms_last64": 1e3 * float(np.mean(per_flush[-64:])), "close_ms": 1e3 * close_s,
            "total_s": total, "flushes": len(per_flush),
            "files": sum(1 for p in out.rglob("*") if p.is_file())}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenario", default="covid_small")
    ap.add_argument("--agents", type=int, default=50_000)
    ap.add_argument("--steps", type=int, default=10_000)
    ap.add_argument("--chunk", type=int, default=10)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    if args.steps < 200 or args.steps % args.chunk or 100 % args.chunk:
        ap.error("--steps must be >= 200 and both 100 and --steps multiples of --chunk")

    tmpl, sample_every = template_chunk(args.scenario, args.agents, args.chunk)
    sample_rows = len(next(iter(tmpl.samples.values()))[0]) if tmpl.samples else 0
    print(f"{args.scenario} at {args.agents:,} agents: {len(tmpl.metrics) + 2} metric columns, "
          f"{sample_rows} sampled agents every {sample_every} steps, {args.chunk} steps per flush, "
          f"{args.steps:,} steps; load {os.getloadavg()[0]:.2f}")
    results = {}
    root = Path(tempfile.mkdtemp(prefix="simcore-bench-io-"))
    try:
        for name, cls in (("append", RunWriter), ("rewrite", RewritingWriter)):
            results[name] = time_writer(cls, tmpl, sample_every, args.steps, root / name)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    late = f"flush_ms_step{args.steps}"
    print(f"{'writer':<8} {'ms/flush @100':>14} {f'ms/flush @{args.steps}':>16} {'ratio':>6} "
          f"{'mean ms last 64':>16} {'close ms':>9} {'total s':>8} {'files':>6}")
    for name, r in results.items():
        print(f"{name:<8} {r['flush_ms_step100']:>14.2f} {r[late]:>16.2f} {r['ratio']:>6.2f} "
              f"{r['mean_ms_last64']:>16.2f} {r['close_ms']:>9.1f} {r['total_s']:>8.1f} {r['files']:>6}")
    ok = results["append"]["ratio"] <= 1.5
    print(f"target: append flush at step {args.steps:,} <= 1.5x the flush at step 100: {'met' if ok else 'NOT met'}"
          f"; load {os.getloadavg()[0]:.2f}")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, **results}, indent=2))


if __name__ == "__main__":
    main()
