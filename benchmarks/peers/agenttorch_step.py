"""AgentTorch's own COVID epidemic step, timed on a contact graph we hand it.

Runs inside the ``agenttorch`` peer environment (``benchmarks/peers/setup.sh agenttorch``), never
in simcore's: it imports only numpy, torch and agent_torch.

The step is the two substeps of AgentTorch's COVID model (``agent_torch.models.covid``):
``NewTransmission`` (message passing over every contact edge, torch_geometric ``propagate``) and
``SEIRMProgression``, instantiated from the package with the constants of its
``yamls/config.yaml``. The population, contacts and initial infections are ours (AgentTorch's
runner would load them from its population pickles); the simulation calls its ``forward``
methods directly. By default under ``torch.no_grad()`` (no calibration graph), the fastest way
AgentTorch can run this step; ``--autograd`` keeps autograd on, as AgentTorch's runner does (its
parameters are learnable for calibration). Prints one JSON line.

    python agenttorch_step.py --graph g.npz --steps 5 --threads 2
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--graph", required=True, help="npz with CSR indptr, indices (symmetric)")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--initial-infected", type=float, default=0.001)
    ap.add_argument("--autograd", action="store_true", help="build the autograd graph, as the runner does")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from importlib.metadata import version

    from agent_torch.models.covid.substeps.new_transmission.transition import NewTransmission
    from agent_torch.models.covid.substeps.seirm_progression.transition import SEIRMProgression

    g = np.load(args.graph)
    indptr, indices = g["indptr"].astype(np.int64), g["indices"].astype(np.int64)
    n = len(indptr) - 1
    dst = np.repeat(np.arange(n), np.diff(indptr))
    steps_total = args.warmup + args.steps
    meta = {"device": "cpu", "SUSCEPTIBLE_VAR": 0, "EXPOSED_VAR": 1, "INFECTED_VAR": 2, "RECOVERED_VAR": 3,
            "MORTALITY_VAR": 4, "num_steps_per_episode": steps_total, "NUM_WEEKS": steps_total // 7 + 1,
            "INFINITY_TIME": steps_total + 20, "EXPOSED_TO_INFECTED_TIME": 5, "INFECTED_TO_RECOVERED_TIME": 5,
            "EXECUTION_MODE": "heuristic", "calibration": False, "num_agents": n}
    config = {"simulation_metadata": meta}
    paths = {k: f"env/{k}" for k in ("SFSusceptibility", "SFInfector", "lam_gamma_integrals", "infected_time",
                                      "mean_interactions", "age", "disease_stage", "next_stage_time",
                                      "adjacency_matrix", "daily_infected", "daily_deaths")}
    trans = NewTransmission(config, paths, ["disease_stage", "next_stage_time", "infected_time", "daily_infected"],
                            {"learnable": {"R2": torch.full((meta["NUM_WEEKS"],), 4.75)}, "fixed": {}})
    prog = SEIRMProgression(config, paths, ["disease_stage", "next_stage_time", "daily_deaths"],
                            {"learnable": {"M": torch.tensor(0.12)}, "fixed": {}})

    rng = np.random.default_rng(0)
    stage = np.zeros((n, 1), np.float32)
    seeds = rng.choice(n, max(1, int(round(args.initial_infected * n))), replace=False)
    stage[seeds] = 2
    next_time = np.full((n, 1), meta["INFINITY_TIME"], np.float32)
    next_time[seeds] = 5
    inf_time = np.full((n, 1), -1.0, np.float32)
    t_axis = np.arange(meta["INFINITY_TIME"] + 1, dtype=np.float64)  # gamma infectiousness profile
    lam = (t_axis ** (2.4 - 1)) * np.exp(-t_axis / 5.5)
    env = {
        "SFSusceptibility": torch.tensor([0.35, 0.69, 1.03, 1.03, 1.03, 1.03, 1.27, 1.52, 1.52]),
        "SFInfector": torch.tensor([0.0, 0.33, 0.72, 0.0, 0.0]),
        "lam_gamma_integrals": torch.tensor(lam / lam.sum(), dtype=torch.float32),
        "infected_time": torch.from_numpy(inf_time),
        "mean_interactions": torch.full((n, 1), float(np.diff(indptr).mean())),
        "age": torch.from_numpy(rng.integers(0, 9, (n, 1)).astype(np.float32)),
        "disease_stage": torch.from_numpy(stage),
        "next_stage_time": torch.from_numpy(next_time),
        "adjacency_matrix": (torch.from_numpy(np.stack([indices, dst])),  # messages flow source -> target
                             torch.stack([torch.zeros(len(indices)), torch.ones(len(indices))])),
        "daily_infected": torch.zeros(steps_total),
        "daily_deaths": torch.zeros(steps_total),
    }
    state = {"env": env, "current_step": 0}
    action = {"citizens": {"isolation_decision": torch.zeros((n, 1))}}
    times = []
    with torch.set_grad_enabled(args.autograd):
        for t in range(steps_total):
            state["current_step"] = t
            t0 = time.perf_counter()
            out = trans.forward(state, action)
            env.update({"disease_stage": out["disease_stage"], "next_stage_time": out["next_stage_time"],
                        "infected_time": out["infected_time"], "daily_infected": out["daily_infected"]})
            out = prog.forward(state, None)
            env.update({"disease_stage": out["disease_stage"], "next_stage_time": out["next_stage_time"],
                        "daily_deaths": out["daily_deaths"]})
            if t >= args.warmup:
                times.append(time.perf_counter() - t0)
    stages = env["disease_stage"].detach().flatten().numpy()
    print(json.dumps({"peer": "agenttorch", "version": version("agent-torch"), "torch": torch.__version__,
                      "threads": torch.get_num_threads(), "autograd": args.autograd, "n_agents": n, "n_edges_directed": int(len(indices)),
                      "steps": len(times), "ms_per_step": 1e3 * float(np.median(times)),
                      "ms_per_step_mean": 1e3 * float(np.mean(times)),
                      "infected_ever": int((stages > 0).sum())}))


if __name__ == "__main__":
    main()
