"""The network SEIR of the Mesa reference (``benchmarks/mesa_seir.py``) written for mesa-frames.

Runs inside the ``mesaframes`` peer environment (``benchmarks/peers/setup.sh mesaframes``): numpy,
polars and mesa-frames only. The model is the Mesa reference's, rule for rule, but written the
mesa-frames way: every agent is a row of one ``AgentSetPolars`` (``unique_id`` = graph node,
``state``), the contact graph is a polars edge table (both directions of every edge, as the CSR we
are handed), and a step is a few whole-table operations instead of a method per agent:

- infection is pushed: the edges from infectious to susceptible agents (two semi-joins) each get
  one uniform draw, and those under ``1 - exp(-beta)`` expose their target, so a susceptible with
  ``c`` infectious neighbours is infected with ``1 - exp(-beta * c)``;
- E -> I with probability ``1/latent_days``, I -> R with ``1/infectious_days`` (one draw per agent);
- all of it reads the start-of-step states and is committed at once (synchronous, like Mesa's
  step/advance pair); then the S/E/I/R counts are taken, as the reference's DataCollector does.

``round(initial_infected * n)`` agents (at least 1) start infectious, chosen without replacement
with the model's numpy Generator (``ModelDF.random``), the only source of randomness.

Times ``--steps`` steps right after seeding (the phase the Mesa reference is timed in); with
``--epidemic`` it then runs on until no agent is E or I (at most ``--max-steps`` steps in all) and
reports the mean ms/step over the whole epidemic (what simcore's figure is) with the attack rate
and peak, to check that it is the same epidemic. Prints one JSON line.

    python mesaframes_step.py --graph g.npz --steps 5 --epidemic
"""
from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np
import polars as pl
from mesa_frames import AgentSetPolars, ModelDF

S, E, I, R = 0, 1, 2, 3
STATES = ("S", "E", "I", "R")


class SEIRAgents(AgentSetPolars):
    def __init__(self, model: "SEIRModel", states: np.ndarray, edges: pl.DataFrame):
        super().__init__(model)
        self += pl.DataFrame({"unique_id": pl.Series(np.arange(len(states), dtype=np.int64)),
                              "state": pl.Series(states, dtype=pl.Int8)})
        self.edges = edges  # src -> dst, every contact in both directions

    def step(self) -> None:
        m = self.model
        agents = self.agents
        state = pl.col("state")
        infectious = agents.filter(state == I).select(src=pl.col("unique_id"))
        susceptible = agents.filter(state == S).select(dst=pl.col("unique_id"))
        contacts = self.edges.join(infectious, on="src", how="semi").join(susceptible, on="dst", how="semi")
        hit = pl.Series(m.random.random(contacts.height) < m.p_transmit)
        exposed = contacts.filter(hit).get_column("dst").unique()
        u = pl.Series(m.random.random(agents.height))
        self.agents = agents.with_columns(
            state=pl.when((state == I) & (u < m.p_recover)).then(pl.lit(R, pl.Int8))
            .when((state == E) & (u < m.p_progress)).then(pl.lit(I, pl.Int8))
            .when(pl.col("unique_id").is_in(exposed.implode())).then(pl.lit(m.infected_state, pl.Int8))
            .otherwise(state))


class SEIRModel(ModelDF):
    def __init__(self, indptr: np.ndarray, indices: np.ndarray, *, beta: float, latent_days: float = 3.0,
                 infectious_days: float = 5.0, initial_infected: float = 0.001, seed: int = 0):
        super().__init__(seed)
        self.p_transmit = 1.0 - math.exp(-beta)
        self.p_recover = 1.0 / infectious_days
        self.p_progress = 1.0 / latent_days if latent_days > 0 else 1.0
        self.infected_state = E if latent_days > 0 else I
        n = len(indptr) - 1
        edges = pl.DataFrame({"src": np.repeat(np.arange(n, dtype=np.int64), np.diff(indptr)),
                              "dst": indices.astype(np.int64)})
        states = np.zeros(n, np.int8)
        k = max(1, int(round(initial_infected * n)))
        states[self.random.choice(n, size=k, replace=False)] = I
        self.people = SEIRAgents(self, states, edges)
        self.agents += self.people
        self.series: list[list[int]] = []
        self._count()

    def _count(self) -> None:
        counts = np.bincount(self.people["state"].to_numpy(), minlength=4)
        self.series.append(counts.tolist())
        self.running = bool(counts[E] + counts[I] > 0)

    def step(self) -> None:
        self.agents.step()
        self._count()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--graph", required=True, help="npz with CSR indptr, indices (symmetric)")
    ap.add_argument("--steps", type=int, default=5, help="steps timed right after seeding")
    ap.add_argument("--epidemic", action="store_true", help="then run on until no agent is E or I")
    ap.add_argument("--max-steps", type=int, default=300)
    ap.add_argument("--beta", type=float, default=0.055)
    ap.add_argument("--initial-infected", type=float, default=0.001)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    from importlib.metadata import version

    g = np.load(args.graph)
    t0 = time.perf_counter()
    model = SEIRModel(g["indptr"], g["indices"], beta=args.beta, initial_infected=args.initial_infected,
                      seed=args.seed)
    setup = time.perf_counter() - t0
    n = len(g["indptr"]) - 1
    times = []
    limit = args.max_steps if args.epidemic else args.steps
    while len(times) < limit and (len(times) < args.steps or model.running):
        t0 = time.perf_counter()
        model.step()
        times.append(time.perf_counter() - t0)
    out = {"peer": "mesaframes", "version": version("mesa-frames"), "polars": pl.__version__,
           "polars_threads": pl.thread_pool_size(), "n_agents": n, "setup_s": setup, "steps": args.steps,
           "ms_per_step": 1e3 * float(np.median(times[:args.steps]))}
    if args.epidemic:
        series = np.array(model.series)  # row 0: the initial state
        out.update({"epidemic_steps": len(times), "ms_per_step_epidemic": 1e3 * float(np.mean(times)),
                    "attack_rate": float(series[-1, R]) / n, "peak_step": int(np.argmax(series[:, I])),
                    "peak_infectious": float(series[:, I].max()) / n,
                    "active_at_end": int(series[-1, E] + series[-1, I])})
    print(json.dumps(out))


if __name__ == "__main__":
    main()
