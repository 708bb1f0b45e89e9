"""Calibration cost on the reduced population, measured side by side in one run.

    flock /tmp/simcore-cpu.lock python -m benchmarks.calibration [--size 100000] [--iterations 30]

Prints: one forward run (ordinary stochastic step, sparse pulls), one forward run of the relaxed mode,
one gradient step (value_and_grad of the loss through the scanned, rematerialised chunks), their ratios,
and the wall time of a whole gradient calibration (Adam, ``--iterations`` steps, compile included).
Targets (issue 11): gradient calibration <= 15 min on a 2-core CPU; gradient step / forward run <= 4x.
"""
from __future__ import annotations

import argparse
import json
import time

import jax
import numpy as np

FIT = "initial_infected,beta.household,beta.community,beta.workplace,ifr.4,ifr.5,detection_rate"


def _time(fn, repeats=3):
    jax.block_until_ready(fn())  # compile
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        best = min(best, time.perf_counter() - t0)
    return best


def main(argv=None):
    from populations.tables import load_tables
    from scenarios import load_scenario
    from simcore import calibrate as C

    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=100_000)
    ap.add_argument("--iterations", type=int, default=30)
    ap.add_argument("--window", default="2020-03-01:2020-06-28")
    args = ap.parse_args(argv)
    sc = load_scenario("covid_nyc", [f"population.size={args.size}", "output.sample_agents=0"])
    tg = C.load_target("nyc", args.window, load_tables("nyc").boroughs)
    fits = C.resolve_fit(sc, FIT)
    z = np.array([f.to_free(f.start) for f in fits], np.float32)
    hard = C.Problem(sc, tg, fits, relaxed=False)
    rel = C.Problem(sc, tg, fits, relaxed=True)
    t_fwd = _time(lambda: hard.rollout(z, 0)[0])
    t_rel = _time(lambda: rel.rollout(z, 0)[0])
    t_grad = _time(lambda: rel.value_and_grad(z, [0])[1])
    t0 = time.perf_counter()
    fit = C.fit_gradient(C.Problem(sc, tg, fits, relaxed=True), iterations=args.iterations, lr=0.08, seeds=(0,))
    t_cal = time.perf_counter() - t0
    out = {
        "agents": args.size, "days": tg.days, "devices": jax.device_count(), "backend": jax.default_backend(),
        "forward_seconds": t_fwd, "relaxed_forward_seconds": t_rel, "gradient_step_seconds": t_grad,
        "gradient_over_forward": t_grad / t_fwd, "gradient_over_relaxed_forward": t_grad / t_rel,
        "gradient_calibration_seconds": t_cal, "iterations": args.iterations,
        "loss_first": fit.history[0]["loss"], "loss_best": min(r["loss"] for r in fit.history),
    }
    for k, v in out.items():
        print(f"{k:32s} {v:.4g}" if isinstance(v, float) else f"{k:32s} {v}")
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
