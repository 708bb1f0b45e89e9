"""Social-platform benchmarks: per-step time and memory at 1M users, recommender alone vs size.

    python -m benchmarks.social [--users N] [--steps K] [--sizes 100000,1000000] [--json PATH]

Figures (see docs/social.md), for the ``misinformation`` scenario shape (10% active per step,
k = 10, interest recommender, events recorded):
- build seconds, compile seconds, ms per step (mean over K steps after compile, events included);
- device bytes per user and per post slot, peak RSS of this process;
- the recommender substep alone (jitted, after warm-up): ms per step for each user count in --sizes,
  with the number of posts in the buffer at that point.
Targets from the issue: <= 2 s per step and <= 8 GB peak RSS at 1M users on a 2-core CPU.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import time

import jax
import numpy as np

from scenarios import load_scenario
from simcore.models import build
from simcore.runs import make_simulation


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def scenario_for(users: int, steps: int):
    overrides = [f"population.size={users}", f"run.steps={steps}", "output.sample_agents=0",
                 f"model.params.post_capacity={max(users, 10_000)}",
                 f"model.params.initial_posts={max(users // 10, 1000)}",
                 "model.params.diurnal_amplitude=0"]  # flat profile: 10% active on every step
    return load_scenario("misinformation", overrides)


def step_timing(users: int, steps: int, chunk: int) -> dict:
    sc = scenario_for(users, steps)
    t0 = time.perf_counter()
    built = build(sc)
    t_build = time.perf_counter() - t0
    sim = make_simulation(sc, built, sc.run.seed)
    t0 = time.perf_counter()
    first = sim.advance(chunk)
    t_first = time.perf_counter() - t0
    times, active, events = [], [], 0
    done = chunk
    while done < steps + chunk:
        c = sim.advance(chunk)
        times.append(c.seconds / chunk)
        active.extend(c.metrics["active"].tolist())
        events += int(c.events["valid"].sum()) if c.events else 0
        done += chunk
    posts = int(jax.device_get(sim.state.n_posts))
    return {
        "users": users, "build_s": t_build, "first_chunk_s_incl_compile": t_first,
        "ms_per_step": 1000 * float(np.mean(times)), "ms_per_step_max_chunk": 1000 * float(np.max(times)),
        "mean_active": float(np.mean(active)), "active_share": float(np.mean(active)) / users,
        "events_per_step": events / max(len(times) * chunk, 1), "posts_created": posts,
        "active_cap": built.info["active_cap"], "bytes_per_user": built.info["bytes_per_user"],
        "bytes_per_post": built.info["bytes_per_post"], "device_bytes": built.info["device_bytes"],
        "peak_rss_gb": peak_rss_gb(),
    }, sim


def recommender_timing(sim, repeats: int = 5) -> dict:
    model = sim.model
    recommend = model.substeps[1]  # partial(recommend, cfg)
    params = {**sim.params, **{k: v[min(sim.step, len(v) - 1)] for k, v in sim.schedule.items()}, "step": np.int32(sim.step)}
    fn = jax.jit(lambda st, p, key: recommend(st, p, key).feed)
    key = jax.random.key(0)
    jax.block_until_ready(fn(sim.state, params, key))
    t0 = time.perf_counter()
    for _ in range(repeats):
        jax.block_until_ready(fn(sim.state, params, key))
    cfg = recommend.args[0]
    return {"users": cfg.n_users, "active_cap": cfg.active_cap, "post_capacity": cfg.post_capacity,
            "posts_in_buffer": int(min(int(sim.state.n_posts), cfg.post_capacity)),
            "candidates_per_user": cfg.clusters_per_user * cfg.cluster_list + cfg.hot_candidates,
            "recommender_ms": 1000 * (time.perf_counter() - t0) / repeats}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=1_000_000)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--chunk", type=int, default=4)
    ap.add_argument("--sizes", default="100000,1000000")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    out = {"cpu_count": os.cpu_count(), "backend": jax.default_backend(),
           "load_avg_at_start": os.getloadavg()}
    step, sim = step_timing(args.users, args.steps, args.chunk)
    out["step"] = step
    print(json.dumps(step, indent=1), flush=True)
    rec = []
    for n in [int(s) for s in args.sizes.split(",") if s]:
        if n == args.users:
            r = recommender_timing(sim)
        else:
            _, s2 = step_timing(n, args.chunk, args.chunk)
            r = recommender_timing(s2)
        rec.append(r)
        print(json.dumps(r), flush=True)
    out["recommender"] = rec
    out["peak_rss_gb"] = peak_rss_gb()
    out["load_avg_at_end"] = os.getloadavg()
    print(f"1M-user step: {step['ms_per_step']:.0f} ms (target <= 2000), peak RSS {out['peak_rss_gb']:.2f} GB "
          f"(target <= 8), {step['bytes_per_user']:.0f} B/user, {step['bytes_per_post']:.0f} B/post")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
