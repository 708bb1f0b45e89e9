"""Accelerator benchmark: network SEIR and the social step against the device's memory roofline.

    python -m benchmarks.gpu [--quick] [--json PATH] [--profile DIR] [--seir-sizes 8.4M ...]
                             [--social-sizes 1M 10M] [--max-agents-search] [--max-agents N]

Runs on any JAX backend; on CPU (or with --quick) the default sizes are small. Figures
(see docs/benchmarks.md, "GPU benchmark"):
- the device and its measured copy bandwidth: a jitted, donated ``x = x + 1`` over a large float32
  array, (read + write bytes) / time, best of several runs after warm-up;
- network SEIR (``seir`` model, Erdos-Renyi graph, mean degree 10) at each --seir-sizes:
  * dense pull (``sparse_capacity = 0``: every step reads every edge, the prevalence-independent
    worst case): ms/step, agent-steps/s, edges/s, bytes per step from XLA's cost analysis of
    the compiled step and from an explicit traffic model, achieved bytes/s and its fraction
    of the copy bandwidth (the roofline fraction);
  * tiered (default ``sparse_capacity = 0.1``): ms/step over a whole epidemic, compile excluded;
- the largest population that fits (plan.py's memory model, then built and stepped);
- the social step (``misinformation`` shape, benchmarks.social) at each --social-sizes;
- with --profile DIR: a jax.profiler trace of a few dense SEIR steps and its top ops by self time.
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import gc
import gzip
import json
import os
import platform
import re
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from scenarios import load_scenario
from simcore.engine.rng import step_key
from simcore.models import build, seir
from simcore.runs import make_simulation

MEAN_DEGREE = 10
BETA = 0.055  # as benchmarks/engine.py: R0 ~ 2.2
INITIAL = 0.001
NYC_AGENTS = 8_400_000

TARGET_AGENT_STEPS = 1e9  # network SEIR at 8.4M agents, one H100
TARGET_ROOFLINE = 0.5
TARGET_MAX_AGENTS = 200_000_000  # one H200

# erdos_renyi peaks at ~40 B per undirected edge (its docstring); the CSR and its device upload
# add ~8 B per stored entry while both exist.
HOST_BYTES_PER_AGENT = 40 * MEAN_DEGREE / 2 + 8 * MEAN_DEGREE
# Without jax_enable_x64 an int64 indptr is truncated to int32 on the device, so a layer must
# stay below 2**31 stored entries (0.5% margin for the binomial edge count and padding).
INT32_MAX_AGENTS = int(0.995 * 2**31 / MEAN_DEGREE)
CPU_MAX_AGENTS = 1_000_000  # default --max-agents on CPU: the search only exercises the code path


def on_cpu() -> bool:
    return jax.default_backend() == "cpu"


# -- device -------------------------------------------------------------------------------------
def describe_device() -> dict:
    dev = jax.devices()[0]
    stats = dev.memory_stats() if hasattr(dev, "memory_stats") else None
    cpu_model = "unknown"
    if Path("/proc/cpuinfo").exists():
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    return {
        "backend": jax.default_backend(),
        "device_kind": getattr(dev, "device_kind", str(dev)),
        "platform": dev.platform,
        "device_count": jax.device_count(),
        "memory_bytes_limit": int(stats["bytes_limit"]) if stats and stats.get("bytes_limit") else None,
        "memory_stats_available": bool(stats),
        "host_cpu": cpu_model,
        "host_cpus": os.cpu_count(),
        "host_memory_available_bytes": host_available_bytes(),
        "jax_version": jax.__version__,
        "python": platform.python_version(),
        "loadavg_start": list(os.getloadavg()),
    }


def host_available_bytes() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("/proc/meminfo has no MemAvailable line")


def copy_bandwidth(array_bytes: int, repeats: int) -> dict:
    """Best-of-``repeats`` bytes/s of ``x = x + 1`` (read x, write x) after two warm-up runs.

    The input is donated so the output reuses its buffer: without that each call allocates a fresh
    output, and on CPU first-touch page faults (not memory bandwidth) set the time (~5-10x slower).
    """
    n = array_bytes // 4
    x = jnp.arange(n, dtype=jnp.float32)
    f = jax.jit(lambda a: a + 1, donate_argnums=0)
    xla_bytes = cost(f.lower(x).compile())["bytes accessed"]
    for _ in range(2):
        x = jax.block_until_ready(f(x))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        x = jax.block_until_ready(f(x))
        times.append(time.perf_counter() - t0)
    del x
    moved = 2 * 4 * n
    best = min(times)
    return {"array_bytes": 4 * n, "bytes_moved": moved, "bytes_xla": xla_bytes, "repeats": repeats,
            "best_s": best, "median_s": float(np.median(times)), "bytes_per_s": moved / best}


def cost(compiled) -> dict:
    ca = compiled.cost_analysis()
    if isinstance(ca, (list, tuple)):  # older jax returned one dict per computation
        ca = ca[0]
    if not ca or "bytes accessed" not in ca:
        raise RuntimeError(f"XLA cost analysis gave no 'bytes accessed' on this backend: {ca!r}")
    return dict(ca)


# -- network SEIR -------------------------------------------------------------------------------
def seir_scenario(n: int, steps: int, chunk: int):
    return load_scenario({
        "name": f"gpu_bench_seir_{n}",
        "population": {"kind": "homogeneous", "size": n},
        "graph": {"kind": "erdos_renyi", "mean_degree": MEAN_DEGREE},
        "model": {"kind": "seir", "params": {"beta": BETA, "initial_infected": INITIAL}},
        "run": {"steps": steps, "chunk_size": chunk, "seed": 0},
        "output": {"sample_agents": 0},
    })


def with_capacity(sc, built, capacity: float, state):
    """``built`` as if the scenario had ``model.params.sparse_capacity = capacity``, with a fresh state.

    Building once and swapping the compile-time config avoids generating the graph twice.
    """
    p = sc.model.params
    cfg = seir.SEIRConfig(latent_days=p.latent_days, infectious_days=p.infectious_days, sparse_capacity=capacity)
    return dataclasses.replace(built, model=seir.make_model(cfg), state=jax.tree.map(jnp.asarray, state))


def step_cost(sim) -> dict:
    """XLA's cost analysis of one step as the runner's scan body runs it (step + metrics)."""
    model, root = sim.model, sim.root

    def one_step(state, params, row, t):
        p = {**params, **row, "step": t}
        state = model.step(state, p, step_key(root, t))
        return state, model.metrics(state, p)

    spec = lambda a: jax.ShapeDtypeStruct(jnp.shape(a), jnp.asarray(a).dtype)  # noqa: E731
    row = {k: np.float32(v[0]) for k, v in sim.schedule.items()}
    args = (jax.tree.map(spec, sim.state), jax.tree.map(spec, sim.params), row, jax.ShapeDtypeStruct((), jnp.int32))
    ca = cost(jax.jit(one_step).lower(*args).compile())
    return {"bytes": float(ca["bytes accessed"]), "flops": float(ca.get("flops", float("nan")))}


def traffic_model(n: int, stored: int) -> dict:
    """Bytes one dense-pull SEIR step must move, by hand (see docs/benchmarks.md)."""
    compulsory = 8 * stored + 2 * n  # indices + rows (int32) per stored entry; int8 state read and written
    modelled = compulsory + 4 * stored + 8 * n  # + gathered float32 source value per entry; float32 sums out and in
    return {"compulsory_bytes": compulsory, "modelled_bytes": modelled,
            "formula": "compulsory = 8 E + 2 N; modelled = 12 E + 10 N (E = stored entries incl. padding)"}


def time_chunks(sim, chunk: int, chunks: int) -> tuple[float, list[float], dict]:
    """Compile with one chunk, then time ``chunks`` chunks; returns (compile_s, per-chunk seconds, last metrics)."""
    t0 = time.perf_counter()
    sim.advance(chunk)
    first = time.perf_counter() - t0
    secs, last = [], None
    for _ in range(chunks):
        c = sim.advance(chunk)
        secs.append(c.seconds)
        last = c.metrics
    return max(first - float(np.median(secs)), 0.0), secs, last


def seir_dense(sc, built, initial, bandwidth: float, chunk: int, chunks: int) -> dict:
    n = built.n_agents
    sim = make_simulation(sc, with_capacity(sc, built, 0.0, initial), sc.run.seed)
    c = step_cost(sim)
    compile_s, secs, metrics = time_chunks(sim, chunk, chunks)
    layer = built.params["graph"]
    stored, edges = layer.n_edges, int(built.info["edges"])
    total, steps = float(sum(secs)), chunk * len(secs)
    s_step = total / steps
    tm = traffic_model(n, stored)
    out = {
        "config": "dense pull (sparse_capacity=0)",
        "n_agents": n, "edges_directed": edges, "stored_entries": stored,
        "steps_timed": steps, "chunk": chunk, "compile_s": compile_s,
        "ms_per_step": 1e3 * s_step, "ms_per_step_best_chunk": 1e3 * min(secs) / chunk,
        "agent_steps_per_s": n / s_step, "edges_per_s": edges / s_step,
        "bytes_per_step_xla": c["bytes"], "flops_per_step_xla": c["flops"],
        "bytes_per_step_model": tm["modelled_bytes"], "bytes_per_step_compulsory": tm["compulsory_bytes"],
        "traffic_model": tm["formula"],
        "bytes_per_s_xla": c["bytes"] / s_step, "bytes_per_s_model": tm["modelled_bytes"] / s_step,
        "bytes_per_s_compulsory": tm["compulsory_bytes"] / s_step,
        "infectious_share_end": float(metrics["I"][-1]) / n,
    }
    out["roofline_fraction_xla"] = out["bytes_per_s_xla"] / bandwidth
    out["roofline_fraction_model"] = out["bytes_per_s_model"] / bandwidth
    out["roofline_fraction_compulsory"] = out["bytes_per_s_compulsory"] / bandwidth
    del sim
    return out


def seir_epidemic(sc, built, initial, steps: int, chunk: int) -> dict:
    """Tiered sparse/dense pull over a whole epidemic (as benchmarks/engine.py), compile excluded."""
    n = built.n_agents
    sim = make_simulation(sc, with_capacity(sc, built, sc.model.params.sparse_capacity, initial), sc.run.seed)
    c = step_cost(sim)
    t0 = time.perf_counter()
    warm = sim.advance(chunk)
    warm_s = time.perf_counter() - t0
    sim.state = jax.tree.map(jnp.asarray, initial)  # rewind: the warm-up chunk only compiled
    sim.step = 0
    secs, peak_i, series_i, series_r = [], [], [], []
    for _ in range(steps // chunk):
        ch = sim.advance(chunk)
        secs.append(ch.seconds)
        peak_i.append(float(ch.metrics["I"].max()) / n)
        series_i.append(ch.metrics["I"])
        series_r.append(ch.metrics["R"])
    secs, peak_i = np.array(secs), np.array(peak_i)
    total, done = float(secs.sum()), chunk * len(secs)
    high = peak_i >= 0.01
    series_i, series_r = np.concatenate(series_i), np.concatenate(series_r)
    del sim, warm
    return {
        "config": f"tiered sparse push / dense pull (sparse_capacity={sc.model.params.sparse_capacity})",
        "n_agents": n, "steps": done, "chunk": chunk,
        "compile_s": max(warm_s - float(np.median(secs)), 0.0),
        "ms_per_step": 1e3 * total / done, "agent_steps_per_s": n * done / total,
        "edges_per_s": int(built.info["edges"]) * done / total,
        "ms_per_step_low": 1e3 * float(secs[~high].sum()) / (chunk * int((~high).sum())) if (~high).any() else None,
        "ms_per_step_high": 1e3 * float(secs[high].sum()) / (chunk * int(high.sum())) if high.any() else None,
        # XLA counts a lax.switch as its most expensive branch (the dense pull), so this is an upper bound
        "bytes_per_step_xla_max_branch": c["bytes"],
        "attack_rate": float(series_r[-1]) / n, "peak_infectious": float(series_i.max()) / n,
        "active_at_end": int(series_i[-1]),
    }


def seir_size(n: int, bandwidth: float, *, chunk: int, chunks: int, epidemic_steps: int | None) -> dict:
    sc = seir_scenario(n, max(epidemic_steps or 0, chunk * (chunks + 1)), chunk)
    t0 = time.perf_counter()
    built = build(sc)
    out = {"n_agents": n, "build_s": time.perf_counter() - t0, "graph_s": built.info["graph_seconds"],
           "device_bytes": built.info["device_bytes"]}
    initial = jax.device_get(built.state)  # host copy: the device state is donated on GPU
    out["dense"] = seir_dense(sc, built, initial, bandwidth, chunk, chunks)
    if epidemic_steps:
        out["epidemic"] = seir_epidemic(sc, built, initial, epidemic_steps, chunk)
    del built
    gc.collect()
    return out


# -- largest population -------------------------------------------------------------------------
def max_agents(bandwidth: float, cap: int | None, chunk: int, chunks: int, attempts: int = 3) -> dict:
    """Predict the largest N from plan.py, bound it by host memory and int32 indexing, then build and step it."""
    from simcore.plan import device_capacity, plan

    probe = 1_000_000
    p = plan(seir_scenario(probe, 2, chunk))
    per_agent = p.predicted_bytes_per_device / probe
    capacity = device_capacity()
    limits = {
        "device_memory": int(0.9 * capacity / per_agent),  # plan.py keeps predictions below 90%
        "host_memory": int(0.8 * host_available_bytes() / HOST_BYTES_PER_AGENT),
        "int32_edge_index": INT32_MAX_AGENTS,
    }
    if cap is not None:
        limits["cap (--max-agents, or the CPU default)"] = cap
    binding = min(limits, key=limits.get)
    n = limits[binding]
    n = n // 1_000_000 * 1_000_000 if n >= 10_000_000 else n // 1000 * 1000
    out = {"predicted_bytes_per_agent": per_agent, "device_capacity_bytes": capacity,
           "predicted_max_agents": limits["device_memory"], "limits": limits, "limited_by": binding,
           "attempts": []}
    for _ in range(attempts):
        r = None
        try:
            r = seir_size(n, bandwidth, chunk=chunk, chunks=chunks, epidemic_steps=None)
        except jax.errors.JaxRuntimeError as exc:
            if "RESOURCE_EXHAUSTED" not in str(exc):
                raise
            out["attempts"].append({"n_agents": n, "error": str(exc).splitlines()[0][:300]})
        if r is not None:
            out["attempts"].append({"n_agents": n, "ok": True})
            out["agents_reached"] = n
            out["run"] = r
            return out
        gc.collect()  # out here, once the traceback (and the arrays its frames hold) is gone
        n = int(n * 0.8) // 1000 * 1000  # the failed size is in attempts, so the report says where it failed
    out["agents_reached"] = None
    return out


# -- social ---------------------------------------------------------------------------------------
def social_size(users: int, steps: int, chunk: int) -> dict:
    from benchmarks.social import step_timing

    r, sim = step_timing(users, steps, chunk)
    del sim
    gc.collect()
    r["user_steps_per_s"] = users * 1e3 / r["ms_per_step"]
    r["steps_timed"] = steps
    return r


# -- profile --------------------------------------------------------------------------------------
def profile_seir(n: int, trace_dir: Path, chunk: int, chunks: int, top: int = 12) -> dict:
    sc = seir_scenario(n, chunk * (chunks + 1), chunk)
    built = build(sc)
    initial = jax.device_get(built.state)
    sim = make_simulation(sc, with_capacity(sc, built, 0.0, initial), sc.run.seed)
    sim.advance(chunk)  # compile outside the trace
    with jax.profiler.trace(str(trace_dir), create_perfetto_trace=True):  # for ui.perfetto.dev
        for _ in range(chunks):
            sim.advance(chunk)
    sources = hlo_sources(sim, chunk)
    del sim, built
    ops = top_ops(trace_dir, top)
    for row in ops["top"]:
        src = sources.get(row["op"]) if row["module"] in ("jit__chunk", "?") else None
        # the scan body's prefix is the same on every op
        for prefix in ("jit(_chunk)/", "while/body/", "closed_call/"):
            src = src.removeprefix(prefix) if src else src
        row["source"] = src
    ops.update({"n_agents": n, "steps": chunk * chunks, "trace_dir": str(trace_dir)})
    if any(row["op"].startswith("command_buffer") for row in ops["top"]):
        # XLA's GPU backend replays the scan body as one CUDA graph, whose kernels the trace does
        # not name: the H200 profile read 100% "command_buffer_6" until the flag below was set
        ops["note"] = ("XLA ran the step as a CUDA command buffer, which hides its ops; for a per-op "
                       "breakdown run again with XLA_FLAGS=--xla_gpu_enable_command_buffer=")
    return ops


def top_ops(trace_dir: Path, top: int) -> dict:
    """Top XLA ops by self time from the newest ``plugins/profile/*/*.trace.json.gz`` (Chrome trace JSON).

    GPU traces have ``/device:GPU:N`` processes: their "XLA Ops" line (one event per HLO op) is
    used when present, else their "Stream ..." lines (kernels); never both, which would count each
    kernel twice, and never the container lines ("XLA Modules", "Steps"). CPU traces only have
    ``/host:CPU``, where the events that name an HLO op (``args.hlo_op``) are XLA's ops. Self
    time = duration minus nested op events on the same line (a ``while`` contains its body's ops).
    """
    runs = sorted((trace_dir / "plugins" / "profile").iterdir(), key=os.path.getmtime)
    files = sorted(runs[-1].glob("*.trace.json.gz"))
    if not files:
        raise RuntimeError(f"no *.trace.json.gz under {runs[-1]}")
    events, procs, threads = [], {}, {}
    for i, f in enumerate(files):
        with gzip.open(f, "rt") as fh:
            trace = json.load(fh)
        for e in trace["traceEvents"]:
            pid = (i, e.get("pid"))
            if e.get("ph") == "M" and e.get("name") == "process_name":
                procs[pid] = e["args"]["name"]
            elif e.get("ph") == "M" and e.get("name") == "thread_name":
                threads[(pid, e.get("tid"))] = e["args"]["name"]
            elif e.get("ph") == "X" and "dur" in e:
                a = e.get("args", {})
                events.append(((pid, e.get("tid")), float(e["ts"]), float(e["dur"]),
                               (a.get("hlo_module", "?"), a.get("hlo_op", e["name"])), "hlo_op" in a))

    device = {pid for pid, name in procs.items() if name.startswith("/device:")}
    if device:
        lines = {k: name for k, name in threads.items() if k[0] in device}
        keep = {k for k, name in lines.items() if name == "XLA Ops"}
        source = "device 'XLA Ops' line"
        if not keep:
            keep = {k for k, name in lines.items() if name.startswith("Stream")}
            source = "device stream lines (kernels)"
        if not keep:
            raise RuntimeError(f"no 'XLA Ops' or 'Stream' line among the device lines: {sorted(set(lines.values()))}")
        events = [e[:4] for e in events if e[0] in keep]
    else:
        source = "host XLA threads (CPU backend)"
        events = [e[:4] for e in events if e[4]]

    by_line = collections.defaultdict(list)
    for line, ts, dur, key in events:
        by_line[line].append((ts, dur, key))
    self_us, calls = collections.Counter(), collections.Counter()
    for evs in by_line.values():
        evs.sort(key=lambda e: (e[0], -e[1]))
        stack: list[list] = []  # [end, key, self time]
        for ts, dur, key in evs:
            while stack and stack[-1][0] <= ts:
                _, k, s = stack.pop()
                self_us[k] += s
            if stack:
                stack[-1][2] -= min(dur, stack[-1][0] - ts)
            stack.append([ts + dur, key, dur])
            calls[key] += 1
        for _, k, s in stack:
            self_us[k] += s
    total = sum(self_us.values())
    rows = [{"module": mod, "op": op, "self_ms": us / 1e3, "share": us / total if total else float("nan"),
             "calls": calls[(mod, op)]} for (mod, op), us in self_us.most_common(top)]
    return {"source": source, "trace_files": [str(f) for f in files], "total_self_ms": total / 1e3, "top": rows}


def hlo_sources(sim, chunk: int) -> dict[str, str]:
    """HLO instruction name -> the JAX op it came from (``metadata.op_name``), from the chunk's compiled HLO.

    Trace names such as ``bitcast_gather_fusion`` mean little without it.
    """
    hlo = sim.compile_chunk(chunk)
    out = {}
    for line in hlo.as_text().splitlines():
        m = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = .*?op_name=\"([^\"]+)\"", line)
        if m:
            out[m.group(1)] = m.group(2)
    return out


# -- report ---------------------------------------------------------------------------------------
def parse_size(text: str) -> int:
    t = text.strip().lower().replace("_", "")
    scale = {"k": 1e3, "m": 1e6, "g": 1e9}.get(t[-1:], 1)
    value = float(t[:-1]) if scale != 1 else float(t)
    n = int(round(value * scale))
    if n < 100:
        raise argparse.ArgumentTypeError(f"size must be >= 100, got {text!r}")
    return n


def pick(seir_results: list[dict], n: int) -> dict | None:
    """The result at ``n`` agents, else the largest size measured (the table says which)."""
    exact = [r for r in seir_results if r["n_agents"] == n]
    return exact[0] if exact else (max(seir_results, key=lambda r: r["n_agents"]) if seir_results else None)


def targets(res: dict) -> list[dict]:
    rows = []
    s = pick(res["seir"], NYC_AGENTS)
    note = "" if s is None or s["n_agents"] == NYC_AGENTS else f" (measured at {s['n_agents']:,}; target is for 8.4M)"
    if s is not None:
        d = s["dense"]
        rows.append({"figure": f"network SEIR agent-steps/s, dense pull{note}", "value": d["agent_steps_per_s"],
                     "target": TARGET_AGENT_STEPS, "ratio": d["agent_steps_per_s"] / TARGET_AGENT_STEPS})
        if "epidemic" in s:
            e = s["epidemic"]
            rows.append({"figure": f"network SEIR agent-steps/s, whole epidemic (tiered){note}",
                         "value": e["agent_steps_per_s"], "target": TARGET_AGENT_STEPS,
                         "ratio": e["agent_steps_per_s"] / TARGET_AGENT_STEPS})
        for k, label in (("xla", "XLA cost analysis bytes"), ("model", "traffic-model bytes")):
            f = d[f"roofline_fraction_{k}"]
            rows.append({"figure": f"roofline fraction, dense pull, {label}{note}", "value": f,
                         "target": TARGET_ROOFLINE, "ratio": f / TARGET_ROOFLINE})
    m = res.get("max_agents")
    if m and "agents_reached" in m:
        reached = m["agents_reached"] or 0
        rows.append({"figure": f"largest population stepped (limited by {m['limited_by']}; target is for one H200)",
                     "value": reached, "target": TARGET_MAX_AGENTS, "ratio": reached / TARGET_MAX_AGENTS})
    return rows


def report(res: dict) -> str:
    d, bw = res["device"], res["copy_bandwidth"]
    gb = lambda x: f"{x / 1e9:.3g}"  # noqa: E731
    lines = [
        f"device: {d['device_kind']} ({d['backend']}, {d['device_count']} device(s)), memory limit "
        f"{'n/a' if d['memory_bytes_limit'] is None else gb(d['memory_bytes_limit']) + ' GB'}; host {d['host_cpu']} "
        f"x{d['host_cpus']}; jax {d['jax_version']}; load avg {d['loadavg_start'][0]:.2f} -> {d['loadavg_end'][0]:.2f}",
        f"copy bandwidth (x = x + 1, donated, on {gb(bw['array_bytes'])} GB float32, best of {bw['repeats']}): "
        f"{gb(bw['bytes_per_s'])} GB/s",
        "",
        "| network SEIR | agents | edges (directed) | ms/step | agent-steps/s | edges/s | bytes/step XLA / model | "
        "GB/s XLA / model | roofline XLA / model |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    runs = [(r, "") for r in res["seir"]]
    m = res.get("max_agents")
    if m and m.get("run"):
        runs.append((m["run"], " (largest)"))
    for r, tag in runs:
        x = r["dense"]
        lines.append(
            f"| dense pull{tag} | {x['n_agents']:,} | {x['edges_directed']:,} | {x['ms_per_step']:.3g} | "
            f"{x['agent_steps_per_s']:.3g} | {x['edges_per_s']:.3g} | {gb(x['bytes_per_step_xla'])} / "
            f"{gb(x['bytes_per_step_model'])} GB | {gb(x['bytes_per_s_xla'])} / {gb(x['bytes_per_s_model'])} | "
            f"{x['roofline_fraction_xla']:.1%} / {x['roofline_fraction_model']:.1%} |")
        if "epidemic" in r:
            e = r["epidemic"]
            lines.append(
                f"| whole epidemic, tiered | {e['n_agents']:,} | {x['edges_directed']:,} | {e['ms_per_step']:.3g} | "
                f"{e['agent_steps_per_s']:.3g} | {e['edges_per_s']:.3g} | <= {gb(e['bytes_per_step_xla_max_branch'])}"
                f" GB (max branch) | | |")
    if m and not m.get("run"):
        lines.append(f"\nlargest population: {m.get('skipped') or 'no size fitted: ' + json.dumps(m['attempts'])}")
    elif m:
        lines.append(f"\nlargest population: {m['agents_reached']:,} agents stepped (plan.py predicts "
                     f"{m['predicted_max_agents']:,} for {gb(m['device_capacity_bytes'])} GB at "
                     f"{m['predicted_bytes_per_agent']:.0f} B/agent; limited by {m['limited_by']})")
    if res["social"]:
        lines += ["", "| social step | users | ms/step | user-steps/s | active/step | compile+first chunk (s) |",
                  "|---|---|---|---|---|---|"]
        for s in res["social"]:
            lines.append(f"| misinformation shape | {s['users']:,} | {s['ms_per_step']:.3g} | "
                         f"{s['user_steps_per_s']:.3g} | {s['mean_active']:.0f} | "
                         f"{s['first_chunk_s_incl_compile']:.1f} |")
    p = res.get("profile")
    if p:
        if p.get("note"):
            lines += ["", f"note: {p['note']}"]
        lines += ["", f"top ops by self time ({p['source']}; {p['steps']} dense SEIR steps at {p['n_agents']:,} "
                      f"agents; {p['total_self_ms']:.1f} ms in all):", "| op | from | self ms | share | calls |",
                  "|---|---|---|---|---|"]
        for o in p["top"]:
            lines.append(f"| {o['module']}/{o['op']} | {o['source'] or ''} | {o['self_ms']:.2f} | {o['share']:.1%} "
                         f"| {o['calls']} |")
    lines += ["", "| target | value | target | value / target |", "|---|---|---|---|"]
    for t in res["targets"]:
        lines.append(f"| {t['figure']} | {t['value']:.3g} | {t['target']:.3g} | {t['ratio']:.3g} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.gpu", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes and few repeats (what the test runs)")
    ap.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    ap.add_argument("--profile", metavar="DIR", help="trace a few dense SEIR steps (smallest size) into DIR")
    ap.add_argument("--seir-sizes", nargs="+", type=parse_size, metavar="N",
                    help="agents (e.g. 8.4M 1M 100k); default 8.4M on GPU, 1M on CPU, 20k with --quick")
    ap.add_argument("--social-sizes", nargs="+", type=parse_size, metavar="N",
                    help="users; default 1M 10M on GPU, 100k on CPU, 10k with --quick")
    ap.add_argument("--max-agents-search", action=argparse.BooleanOptionalAction, default=None,
                    help="find, build and step the largest SEIR population that fits (default: on GPU "
                         "without --quick)")
    ap.add_argument("--max-agents", type=parse_size, metavar="N",
                    help=f"cap for the search (default none on GPU, {CPU_MAX_AGENTS:,} on CPU)")
    ap.add_argument("--copy-bytes", type=parse_size, metavar="B", help="bytes of the copy-bandwidth array")
    ap.add_argument("--no-epidemic", action="store_true", help="skip the whole-epidemic (tiered) SEIR timing")
    ap.add_argument("--no-social", action="store_true", help="skip the social step")
    args = ap.parse_args(argv)

    cpu, quick = on_cpu(), args.quick
    seir_sizes = args.seir_sizes or ([20_000] if quick else [1_000_000] if cpu else [NYC_AGENTS])
    social_sizes = args.social_sizes or ([10_000] if quick else [100_000] if cpu else [1_000_000, 10_000_000])
    if args.no_social:
        social_sizes = []
    # well past the last-level cache (2 GiB: a few GB moved per run on a GPU)
    copy_bytes = args.copy_bytes or ((256 if cpu else 512) * 2**20 if quick else (2**30 if cpu else 2 * 2**30))
    chunk = 10 if cpu else 50
    chunks = 3 if quick else (5 if cpu else 10)
    epidemic_steps = None if args.no_epidemic else (120 if quick else 300)
    search = args.max_agents_search if args.max_agents_search is not None else (not cpu and not quick)
    cap = args.max_agents or (CPU_MAX_AGENTS if cpu else None)

    res: dict = {"device": describe_device(), "quick": quick, "params": {
        "mean_degree": MEAN_DEGREE, "beta": BETA, "initial_infected": INITIAL, "chunk": chunk,
        "timed_chunks": chunks, "epidemic_steps": epidemic_steps}}
    print(f"copy bandwidth, {copy_bytes / 1e9:.3g} GB ...", flush=True)
    res["copy_bandwidth"] = copy_bandwidth(copy_bytes, 5 if quick else 10)
    bandwidth = res["copy_bandwidth"]["bytes_per_s"]

    res["seir"] = []
    for n in seir_sizes:
        print(f"network SEIR, {n:,} agents ...", flush=True)
        res["seir"].append(seir_size(n, bandwidth, chunk=chunk, chunks=chunks, epidemic_steps=epidemic_steps))
    res["social"] = []
    for n in social_sizes:
        print(f"social step, {n:,} users ...", flush=True)
        res["social"].append(social_size(n, 4 if quick else 16, 2 if quick else 4))
    if args.profile:
        print(f"profile, {min(seir_sizes):,} agents -> {args.profile} ...", flush=True)
        res["profile"] = profile_seir(min(seir_sizes), Path(args.profile), chunk, 2)
    if search:
        print("largest population ...", flush=True)
        res["max_agents"] = max_agents(bandwidth, cap, chunk, min(chunks, 3))  # large N: a few chunks suffice
    else:
        res["max_agents"] = {"skipped": "not requested (--max-agents-search; on by default on GPU without --quick)"}
    res["targets"] = targets(res)
    res["device"]["loadavg_end"] = list(os.getloadavg())
    print()
    print(report(res))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2, default=_json_default))
        print(f"\nwrote {args.json}")
    return 0


def _json_default(x):
    if isinstance(x, (np.integer, np.floating)):
        return x.item()
    raise TypeError(f"not JSON serializable: {type(x).__name__}")


if __name__ == "__main__":
    raise SystemExit(main())
