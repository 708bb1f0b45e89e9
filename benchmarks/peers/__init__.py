"""simcore next to its peers, side by side from one run: ``python -m benchmarks.peers``.

Every peer runs in its own virtual environment, made by ``benchmarks/peers/setup.sh`` under
``$SIMCORE_PEERS_DIR`` (default ``<repo>/.peers``), never in simcore's: a worker script of ours
(``agenttorch_step.py``, ``oasis_recsys.py``, ``mesa_step.py``, ``mesaframes_step.py``) is started with that environment's
Python on the same contact graph (an ``.npz`` of the CSR arrays simcore builds) or the same
numbers of users and posts, and prints one JSON line. simcore itself is measured in this process.

* **agenttorch**: AgentTorch's own COVID step (transmission + SEIRM progression substeps from the
  ``agent-torch`` package, torch CPU; without and with autograd) vs simcore's network SEIR, per
  step, on the same Erdos-Renyi
  graph (mean degree 10). simcore's figure is its mean over a whole epidemic (sparse phases
  included, compile excluded); its dense-pull step (``sparse_capacity=0``: every edge every step,
  like AgentTorch) is printed too.
* **oasis**: OASIS's ``reddit`` (hot score) and ``random`` recommenders (``camel-oasis``), one
  ``Platform.update_rec_table()`` for every user, vs simcore's ``recommend`` substep for every user
  (``activity_rate=1``) with the same feed size, users and posts.
* **mesa**: the Mesa 3 reference SEIR (``benchmarks/mesa_seir.py``) right after seeding, vs the
  same simcore figure as for AgentTorch; then run to the end of its epidemic for the check below.
* **mesaframes**: the same SEIR written for mesa-frames (one polars ``AgentSetPolars``, a step of
  whole-table operations), right after seeding and as a mean over its whole epidemic, vs the same
  simcore figure.

The epidemic peers (simcore, Mesa, mesa-frames) each run a whole epidemic on the same graph with
the same parameters, and their attack rates and peaks are printed side by side: the ratios compare
the same model (each with its own random streams, so they agree to sampling noise, not exactly).

A requested peer whose environment is missing stops the run before anything is measured, with
exit code 2 and the command that creates it; nothing is skipped silently.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
PEERS = ("agenttorch", "oasis", "mesa", "mesaframes")
WORKERS = {"agenttorch": "agenttorch_step.py", "oasis": "oasis_recsys.py", "mesa": "mesa_step.py",
           "mesaframes": "mesaframes_step.py"}


class MissingPeer(Exception):
    pass


def peers_dir() -> Path:
    return Path(os.environ.get("SIMCORE_PEERS_DIR") or ROOT / ".peers")


def peer_python(name: str) -> Path:
    """The Python of a finished peer environment; raises MissingPeer naming what is missing."""
    env = peers_dir() / name
    py = env / "bin" / "python"
    if not (env / "READY").is_file() or not py.exists():
        raise MissingPeer(f"peer environment {name!r} is missing ({env / 'READY'} not found); "
                          f"create it with: benchmarks/peers/setup.sh {name}")
    return py


def run_worker(name: str, args: list[str], timeout: float) -> list[dict]:
    cmd = [str(peer_python(name)), str(HERE / WORKERS[name]), *args]
    # in a scratch folder: peers write logs into their working directory (OASIS: ./log/)
    with tempfile.TemporaryDirectory() as scratch:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=scratch)
    if proc.returncode != 0:
        raise RuntimeError(f"{name} worker failed (exit {proc.returncode}): {proc.stderr.strip()[-2000:]}")
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    if not rows:
        raise RuntimeError(f"{name} worker printed no result: {proc.stdout[-500:]} {proc.stderr[-500:]}")
    return rows


def simcore_seir(n: int, dense: bool) -> dict:
    from benchmarks import engine
    from simcore.graph import erdos_renyi
    from simcore.models import seir

    csr = erdos_renyi(n, engine.MEAN_DEGREE, seed=0)
    if not dense:
        return engine.run_simcore(csr)
    import jax
    import numpy as np

    from simcore.engine import Simulation, build_schedule
    state, params, base = seir.init(csr, beta=engine.BETA, initial_infected=engine.INITIAL, seed=0)
    sim = Simulation(seir.make_model(seir.SEIRConfig(sparse_capacity=0.0)), state, params,
                     build_schedule(base, 200), seed=0, chunk_size=engine.CHUNK)
    sim.advance(engine.CHUNK)  # compile
    secs = [sim.advance(engine.CHUNK).seconds for _ in range(3)]
    jax.block_until_ready(sim.state)
    return {"ms_per_step": 1e3 * float(np.median(secs)) / engine.CHUNK}


def simcore_recommender(users: int, posts: int, k: int, kind: str) -> dict:
    import jax
    import numpy as np

    from scenarios import load_scenario
    from simcore.models import build
    from simcore.runs import make_simulation

    feed = {"interest": 0.0, "hot": 0.0, "network": 0.0, "random": 0.0, kind: 1.0}
    sc = load_scenario("misinformation", [
        f"population.size={users}", "run.steps=4", "output.sample_agents=0", "model.params.activity_rate=1.0",
        "model.params.diurnal_amplitude=0", f"model.params.post_capacity={2 * users + posts}",
        f"model.params.initial_posts={posts}", f"model.params.feed_size={k}", f"model.params.feed={json.dumps(feed)}"])
    sim = make_simulation(sc, build(sc), sc.run.seed)
    sim.advance(1)
    recommend = sim.model.substeps[1]
    p = {**sim.params, **{name: v[min(sim.step, len(v) - 1)] for name, v in sim.schedule.items()},
         "step": np.int32(sim.step)}
    fn = jax.jit(lambda st, p, key: recommend(st, p, key).feed)
    key = jax.random.key(0)
    jax.block_until_ready(fn(sim.state, p, key))
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(sim.state, p, key))
        times.append(time.perf_counter() - t0)
    cfg = recommend.args[0]
    return {"ms": 1e3 * float(np.median(times)), "feeds": int(cfg.active_cap)}


def _line(what: str, peer: float, ours: float, target: float | None) -> str:
    ratio = peer / ours
    verdict = "" if target is None else (f"  (target >= {target:g}x: {'met' if ratio >= target else 'NOT met'})")
    shown = f"{ratio:10.0f}x" if ratio >= 10 else f"{ratio:10.1f}x"  # a single digit gets its decimal
    return f"  {what:<58} {peer:12.1f} {ours:12.2f} {shown}{verdict}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--peers", default=",".join(PEERS), help=f"comma-separated subset of {','.join(PEERS)}")
    ap.add_argument("--sizes", default="100000,1000000", help="agent counts for the epidemic comparison")
    ap.add_argument("--users", type=int, default=100_000, help="users for the recommender comparison")
    ap.add_argument("--mesa-max", type=int, default=100_000, help="largest size Mesa is run at (setup is slow)")
    ap.add_argument("--steps", type=int, default=5, help="steps timed per peer run")
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    wanted = [p.strip() for p in args.peers.split(",") if p.strip()]
    unknown = [p for p in wanted if p not in PEERS]
    if unknown:
        print(f"error: --peers: unknown peer {unknown[0]!r} (known: {', '.join(PEERS)})", file=sys.stderr)
        return 2
    missing = []
    for p in wanted:
        try:
            peer_python(p)
        except MissingPeer as exc:
            missing.append(str(exc))
    if missing:
        for m in missing:
            print(f"error: {m}", file=sys.stderr)
        return 2

    from benchmarks.engine import machine
    from simcore.graph import erdos_renyi
    import numpy as np

    sizes = [int(s) for s in args.sizes.split(",") if s]
    out: dict = {"machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "epidemic": [],
                 "recommender": []}
    lines = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            ours = simcore_seir(n, dense=False)
            ep = {"n": n, "simcore": ours["ms_per_step"], "simcore_dense": simcore_seir(n, dense=True)["ms_per_step"],
                  "simcore_epidemic": {k: ours[k] for k in ("active_at_end", "attack_rate", "peak_step", "peak_infectious")}}
            csr = erdos_renyi(n, 10, seed=0)
            g = Path(tmp) / f"g{n}.npz"
            np.savez(g, indptr=np.asarray(csr.indptr), indices=np.asarray(csr.indices))
            if "agenttorch" in wanted:
                at_args = ["--graph", str(g), "--steps", str(args.steps), "--threads", str(args.threads)]
                ep["agenttorch"] = run_worker("agenttorch", at_args, 3600)[0]
                ep["agenttorch_autograd"] = run_worker("agenttorch", at_args + ["--autograd"], 3600)[0]
            if "mesa" in wanted and n <= args.mesa_max:
                ep["mesa"] = run_worker("mesa", ["--graph", str(g), "--steps", str(args.steps), "--epidemic"], 3600)[0]
            if "mesaframes" in wanted:
                ep["mesaframes"] = run_worker("mesaframes", ["--graph", str(g), "--steps", str(args.steps),
                                                             "--epidemic"], 3600)[0]
            out["epidemic"].append(ep)
            print(json.dumps(ep), flush=True)
        if "oasis" in wanted:
            posts = max(args.users // 10, 1000)
            for row in run_worker("oasis", ["--users", str(args.users), "--posts", str(posts), "--k", "10"], 3600):
                kind = {"reddit": "hot", "random": "random"}[row["recommender"]]
                row["simcore"] = simcore_recommender(args.users, posts, 10, kind)
                out["recommender"].append(row)
                print(json.dumps(row), flush=True)
    m = out["machine"]
    print(f"\n{m['cpu_model']}, {m['cpus_usable']} CPUs, load {m['loadavg_start']}, {out['date']}")
    print(f"  {'figure':<58} {'peer ms':>12} {'simcore ms':>12} {'ratio':>11}")
    targets = {100_000: 100.0, 1_000_000: 200.0}
    for ep in out["epidemic"]:
        n = ep["n"]
        if "agenttorch" in ep:
            at = ep["agenttorch"]["ms_per_step"]
            lines.append(_line(f"AgentTorch {ep['agenttorch']['version']} COVID step, {n:,} agents x 10", at,
                               ep["simcore"], targets.get(n)))
            lines.append(_line("  same, vs simcore's dense-pull step", at, ep["simcore_dense"], None))
            lines.append(_line("  AgentTorch with autograd on (as its runner runs)", ep["agenttorch_autograd"]["ms_per_step"],
                               ep["simcore"], None))
        if "mesa" in ep:
            lines.append(_line(f"Mesa {ep['mesa']['version']} SEIR (after seeding), {n:,} agents", ep["mesa"]["ms_per_step"],
                               ep["simcore"], None))
            lines.append(_line("  same, mean over its whole epidemic", ep["mesa"]["ms_per_step_epidemic"], ep["simcore"],
                               None))
        if "mesaframes" in ep:
            mf = ep["mesaframes"]
            lines.append(_line(f"mesa-frames {mf['version']} SEIR (after seeding), {n:,} agents", mf["ms_per_step"],
                               ep["simcore"], None))
            lines.append(_line("  same, mean over its whole epidemic", mf["ms_per_step_epidemic"], ep["simcore"], None))
    for row in out["recommender"]:
        lines.append(_line(f"OASIS {row['version']} {row['recommender']} update_rec_table, {row['users']:,} users",
                           row["update_rec_table_ms"], row["simcore"]["ms"], 100.0))
        lines.append(_line("  same, OASIS ranking function alone", row["rank_only_ms"], row["simcore"]["ms"], None))
    print("\n".join(lines))
    checks = [ep for ep in out["epidemic"] if "mesa" in ep or "mesaframes" in ep]
    if checks:
        print("\n  same epidemic? whole runs on the same graph and parameters (own random streams)")
        print(f"  {'agents':>10} {'peer':<12} {'attack rate':>12} {'peak step':>10} {'peak infectious':>16} {'E+I at end':>11}")
        for ep in checks:
            for name, e in (("simcore", ep["simcore_epidemic"]), ("mesa", ep.get("mesa")),
                            ("mesa-frames", ep.get("mesaframes"))):
                if e is not None:
                    print(f"  {ep['n']:>10,} {name:<12} {e['attack_rate']:12.3f} {e['peak_step']:10d} "
                          f"{e['peak_infectious']:16.3f} {e['active_at_end']:11d}")
    out["load_end"] = list(os.getloadavg())
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0
