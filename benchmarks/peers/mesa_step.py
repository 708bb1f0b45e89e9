"""The Mesa 3 reference SEIR (``benchmarks/mesa_seir.py``), timed on a contact graph we hand it.

Runs inside the ``mesa`` peer environment (``benchmarks/peers/setup.sh mesa``): numpy, networkx
and mesa only. Times ``--steps`` steps right after seeding (Mesa's cost grows with the number of
infectious agents, so this is its cheapest phase); with ``--epidemic`` it then runs on until no
agent is E or I (at most ``--max-steps`` steps in all) and reports the attack rate and peak, to
check other peers' epidemics against it. Prints one JSON line.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--graph", required=True)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--beta", type=float, default=0.055)
    ap.add_argument("--initial-infected", type=float, default=0.001)
    ap.add_argument("--epidemic", action="store_true", help="then run on until no agent is E or I")
    ap.add_argument("--max-steps", type=int, default=300)
    args = ap.parse_args()
    from importlib.metadata import version

    import networkx as nx

    from benchmarks import mesa_seir

    g = np.load(args.graph)
    indptr, indices = g["indptr"], g["indices"]
    n = len(indptr) - 1
    dst = np.repeat(np.arange(n), np.diff(indptr))
    keep = dst < indices  # each undirected edge once
    graph = nx.Graph()
    graph.add_nodes_from(range(n))
    graph.add_edges_from(zip(dst[keep].tolist(), indices[keep].tolist()))
    t0 = time.perf_counter()
    model = mesa_seir.MesaSEIR(graph=graph, beta=args.beta, initial_infected=args.initial_infected, seed=0)
    setup = time.perf_counter() - t0
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        model.step()
        times.append(time.perf_counter() - t0)
    out = {"peer": "mesa", "version": version("mesa"), "n_agents": n, "setup_s": setup,
           "steps": len(times), "ms_per_step": 1e3 * float(np.median(times))}
    if args.epidemic:
        t0 = time.perf_counter()
        done = len(times) + model.run(args.max_steps - len(times))
        counts = model.counts()  # row 0: the initial state
        out.update({"epidemic_steps": done,
                    "ms_per_step_epidemic": 1e3 * (sum(times) + time.perf_counter() - t0) / done,
                    "attack_rate": float(counts["R"][-1]) / n, "peak_step": int(np.argmax(counts["I"])),
                    "peak_infectious": float(counts["I"].max()) / n,
                    "active_at_end": int(counts["E"][-1] + counts["I"][-1])})
    print(json.dumps(out))


if __name__ == "__main__":
    main()
