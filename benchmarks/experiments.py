"""Experiment targets: forking from a checkpoint vs re-running the prefix, vmap replicates vs sequential.

    python -m benchmarks.experiments            # defaults: 100k agents, 32 replicates
    python -m benchmarks.experiments --agents 20000 --replicates 8 --json out.json
    python -m benchmarks.experiments --only-replicates   # the replicates comparison alone

Measured (all after a warm-up that compiles every program, so compile time is excluded):

1. **fork vs re-run**: network SEIR on an Erdos-Renyi graph; the baseline runs to step ``t``;
   a counterfactual arm then continues from that state (a fork) versus running the arm from
   step 0 (re-running the prefix). Also the same through a real on-disk checkpoint
   (save + load + restore) and an ``Experiment`` with 3 arms, branched vs unbranched.
2. **replicates: split vs vmap vs sequential**: ``R`` replicates (same population, different root
   keys) split over one host device per core (one replicate per device at a time, the experiments'
   CPU default; the flag is set below before jax is imported), stepped as one ``jax.vmap`` batch on
   one device, and one after another with the compiled single-replicate program; with CPU
   utilisation, load and whether the metrics are identical. Repeated with the dense neighbour
   pull only (``sparse_capacity=0``).
3. **checkpoint size**: bytes per agent of a checkpoint for SEIR and for the epidemic model.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from simcore.cli import request_host_devices

request_host_devices()  # one host device per core (before jax is imported), as `simcore experiment` does

import jax  # noqa: E402
import numpy as np  # noqa: E402


def _scenario(n: int, steps: int, sparse: float = 0.1) -> dict:
    return {"name": "bench", "population": {"kind": "homogeneous", "size": n},
            "graph": {"kind": "erdos_renyi", "mean_degree": 10},
            "model": {"kind": "seir", "params": {"beta": 0.04, "initial_infected": 0.001, "sparse_capacity": sparse}},
            "interventions": [{"name": "distancing", "param": "contact_scale", "start": steps // 2, "end": steps,
                               "value": 0.5}],
            "run": {"steps": steps, "chunk_size": 25}, "output": {"sample_agents": 0}}


def _block(ens) -> None:
    jax.block_until_ready(jax.tree_util.tree_leaves(ens.state))


def bench_fork(n: int, steps: int, seeds: int) -> dict:
    from scenarios import load_scenario
    from simcore.checkpoint import load_checkpoint, save_checkpoint
    from simcore.engine.ensemble import ChunkPrograms, Ensemble, replicate_state
    from simcore.session import run_metrics
    from simcore.experiments import Experiment
    from simcore.models import build

    sc = load_scenario(_scenario(n, steps))
    b = build(sc, seed=0)
    t_b = steps // 2
    seed_list = list(range(seeds))
    arm = {k: v.copy() for k, v in b.schedule.items()}
    arm["contact_scale"][t_b:] = 0.3

    programs = ChunkPrograms()  # one set of compiled programs for every ensemble below

    def ens(state=None, step=0, schedule=b.schedule):
        return Ensemble(b.model, state if state is not None else replicate_state(b.state, seeds), b.params, schedule,
                        seed_list, chunk_size=25, step=step, programs=programs)

    run_metrics(ens(), 25)  # warm-up: compiles the one chunk program every run below uses
    e = ens()
    t0 = time.perf_counter()
    run_metrics(e, t_b)
    _block(e)
    prefix = time.perf_counter() - t0
    at_branch = e.state

    t0 = time.perf_counter()
    fork = ens(at_branch, t_b, arm)
    fork_metrics = run_metrics(fork, steps - t_b)
    _block(fork)
    fork_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    full = ens(schedule=arm)
    full_metrics = run_metrics(full, steps)
    _block(full)
    rerun_s = time.perf_counter() - t0
    same = all(np.array_equal(fork_metrics[k], full_metrics[k][:, t_b:]) for k in fork_metrics)

    with tempfile.TemporaryDirectory() as tmp:  # the same fork through an on-disk checkpoint of one replicate
        t0 = time.perf_counter()
        path = save_checkpoint(Path(tmp), step=t_b, seed=0, state=jax.tree_util.tree_map(lambda x: x[0], at_branch),
                               schedule=b.schedule, params=b.params, scenario=sc)
        save_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        ck = load_checkpoint(path)
        state = ck.state_like(b.state)
        ck.params_like(b.params)
        load_s = time.perf_counter() - t0
        ck_bytes = ck.meta["bytes"]
        del state

    def experiment(branch: bool) -> float:
        exp = Experiment(_scenario(n, steps), seeds=seed_list)
        exp.arm("strong", [{"param": "contact_scale", "start": t_b, "end": steps, "value": 0.3, "mode": "set"}])
        exp.arm("weak", [{"param": "contact_scale", "start": t_b, "end": steps, "value": 0.8, "mode": "set"}])
        if branch:
            exp.branch(t_b)
        res = exp.run()
        return res.timing["prefix_seconds"] + res.timing["arms_seconds"]

    experiment(True)  # warm-up (build caches, compiles)
    exp_branched, exp_full = experiment(True), experiment(False)
    return {
        "agents": n, "steps": steps, "branch_step": t_b, "replicates": seeds,
        "baseline_prefix_s": prefix, "fork_from_state_s": fork_s, "rerun_from_step0_s": rerun_s,
        "fork_speedup": rerun_s / fork_s, "fork_equals_rerun": bool(same),
        "checkpoint_save_s": save_s, "checkpoint_load_restore_s": load_s, "checkpoint_bytes": ck_bytes,
        "experiment_3arms_branched_s": exp_branched, "experiment_3arms_unbranched_s": exp_full,
        "experiment_saving_ratio": exp_full / exp_branched,
    }


def bench_vmap(n: int, steps: int, replicates: int, sparse: float) -> dict:
    """Split over the host devices (the experiments' CPU default) vs one vmapped batch vs sequential.

    Same process, same population, one after another; each after a warm-up that compiles it.
    ``*_cpu_util``: process CPU seconds per wall second (2.0 = both cores busy).
    """
    from scenarios import load_scenario
    from simcore.engine.ensemble import ChunkPrograms, Ensemble, replicate_state
    from simcore.session import run_metrics
    from simcore.models import build

    sc = load_scenario(_scenario(n, steps, sparse))
    b = build(sc, seed=0)
    seeds = list(range(replicates))
    devices = jax.local_device_count()
    out = {"agents": n, "steps": steps, "replicates": replicates, "sparse_capacity": sparse, "devices": devices,
           "load_before": os.getloadavg()[0]}
    layouts = (("split", 1, devices), ("vmap", replicates, 1), ("sequential", 1, 1))
    metrics = {}
    for label, batch, dev in layouts:
        if label == "split" and dev < 2:
            continue
        programs = ChunkPrograms()
        make = lambda: Ensemble(b.model, replicate_state(b.state, replicates), b.params, b.schedule, seeds,  # noqa: E731
                                chunk_size=25, batch_size=batch, devices=dev, programs=programs)
        run_metrics(make(), 25)  # warm-up compile
        e = make()
        t0, c0 = time.perf_counter(), time.process_time()
        m = run_metrics(e, steps)
        _block(e)
        dt, cpu = time.perf_counter() - t0, time.process_time() - c0
        out[f"{label}_s"] = dt
        out[f"{label}_cpu_util"] = cpu / dt
        out[f"{label}_agent_steps_per_s"] = n * steps * replicates / dt
        out[f"{label}_final_R_mean"] = float(m["R"][:, -1].mean())
        metrics[label] = m
    out["load_after"] = os.getloadavg()[0]
    out["vmap_speedup"] = out["sequential_s"] / out["vmap_s"]
    if "split_s" in out:
        out["split_speedup"] = out["sequential_s"] / out["split_s"]
        out["split_equals_sequential"] = all(np.array_equal(metrics["split"][k], metrics["sequential"][k])
                                             for k in metrics["sequential"])
    out["vmap_equals_sequential"] = all(np.array_equal(metrics["vmap"][k], metrics["sequential"][k])
                                        for k in metrics["sequential"])
    return out


def bench_checkpoint_size(n_epidemic: int) -> dict:
    from scenarios import load_scenario
    from simcore.checkpoint import checkpoint_size, save_simulation
    from simcore.models import build
    from simcore.runs import make_simulation
    from simcore.session import drive

    sc = load_scenario("covid_small", [f"population.size={n_epidemic}"])
    b = build(sc, seed=0)
    sim = make_simulation(sc, b, 0)
    drive(sim, 30)
    out = {"epidemic_agents": n_epidemic}
    with tempfile.TemporaryDirectory() as tmp:
        for compress in (True, False):
            t0 = time.perf_counter()
            path = save_simulation(sim, Path(tmp) / str(compress), scenario=sc, compress=compress)
            key = "compressed" if compress else "raw"
            out[f"{key}_save_s"] = time.perf_counter() - t0
            out[f"{key}_bytes_per_agent"] = checkpoint_size(path, b.n_agents)["bytes_per_agent"]
    out["graph_and_params_bytes_per_agent_not_saved"] = b.info["bytes_per_agent"]
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--agents", type=int, default=100_000)
    p.add_argument("--replicates", type=int, default=32)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--fork-seeds", type=int, default=4)
    p.add_argument("--epidemic-agents", type=int, default=50_000)
    p.add_argument("--only-replicates", action="store_true", help="run only the replicates comparison")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)
    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), {jax.device_count()} device(s)")
    results = {"device": jax.devices()[0].device_kind}
    t0 = time.perf_counter()
    if not args.only_replicates:
        results["fork"] = r = bench_fork(args.agents, 2 * args.steps, args.fork_seeds)
        print(f"\n[fork] {r['agents']:,} agents, {r['replicates']} replicates, {r['steps']} steps, fork at {r['branch_step']}")
        print(f"  fork from the baseline state : {r['fork_from_state_s']:.2f} s")
        print(f"  re-run the arm from step 0   : {r['rerun_from_step0_s']:.2f} s  -> fork is {r['fork_speedup']:.2f}x faster"
              f" (identical metrics: {r['fork_equals_rerun']})")
        print(f"  on-disk checkpoint of 1 replicate: save {r['checkpoint_save_s']:.3f} s, load+restore "
              f"{r['checkpoint_load_restore_s']:.3f} s, {r['checkpoint_bytes'] / r['agents']:.2f} B/agent")
        print(f"  Experiment, 3 arms: branched {r['experiment_3arms_branched_s']:.2f} s vs unbranched "
              f"{r['experiment_3arms_unbranched_s']:.2f} s ({r['experiment_saving_ratio']:.2f}x)")
    for sparse in (0.1, 0.0):
        key = f"vmap_sparse{sparse}"
        results[key] = r = bench_vmap(args.agents, args.steps, args.replicates, sparse)
        print(f"\n[replicates] {r['agents']:,} agents x {r['replicates']} replicates x {r['steps']} steps, "
              f"sparse_capacity={sparse}, load {r['load_before']:.2f} -> {r['load_after']:.2f}")
        if "split_s" in r:
            print(f"  split over {r['devices']} host devices, 1 each : {r['split_s']:.2f} s "
                  f"({r['split_agent_steps_per_s']:.3g} agent-steps/s, CPU util {r['split_cpu_util']:.2f})")
        print(f"  one vmap batch of {r['replicates']:<3}         : {r['vmap_s']:.2f} s "
              f"({r['vmap_agent_steps_per_s']:.3g} agent-steps/s, CPU util {r['vmap_cpu_util']:.2f})")
        print(f"  sequential                    : {r['sequential_s']:.2f} s "
              f"({r['sequential_agent_steps_per_s']:.3g} agent-steps/s, CPU util {r['sequential_cpu_util']:.2f})")
        if "split_s" in r:
            print(f"  -> split {r['split_speedup']:.2f}x sequential (identical metrics: {r['split_equals_sequential']})")
        print(f"  -> vmap {r['vmap_speedup']:.2f}x sequential (identical metrics: {r['vmap_equals_sequential']})")
    if not args.only_replicates:
        results["checkpoint"] = r = bench_checkpoint_size(args.epidemic_agents)
        print(f"\n[checkpoint] epidemic model, {r['epidemic_agents']:,} agents after 30 steps: "
              f"{r['compressed_bytes_per_agent']:.2f} B/agent compressed ({r['compressed_save_s']:.3f} s), "
              f"{r['raw_bytes_per_agent']:.2f} B/agent raw ({r['raw_save_s']:.3f} s); "
              f"graph+params not saved: {r['graph_and_params_bytes_per_agent_not_saved']:.0f} B/agent")
    results["total_s"] = time.perf_counter() - t0
    print(f"\ntotal {results['total_s']:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
