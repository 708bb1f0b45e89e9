"""Run a scenario end to end: build, step in chunks, stream to a run directory."""
from __future__ import annotations

import datetime as _dt
import importlib.metadata as _md
import platform
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import jax
import numpy as np

from scenarios import Scenario

from .engine import Chunk, HostPolicy, Simulation
from .io import RunWriter
from .models import Built, build
from .naming import child_dir, slug


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("simcore", "jax", "jaxlib", "numpy", "pyarrow", "polars", "pydantic", "llama_cpp_python"):
        try:
            out[pkg] = _md.version(pkg)
        except _md.PackageNotFoundError:
            continue
    return out


def git_revision() -> str | None:
    here = Path(__file__).resolve().parent.parent
    if not (here / ".git").exists():
        return None
    try:
        res = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return res.stdout.strip() or None


def device_description() -> dict[str, Any]:
    devs = jax.devices()
    return {"backend": jax.default_backend(), "count": len(devs), "kind": devs[0].device_kind,
            "processes": jax.process_count(), "platform": platform.platform(),
            "cpu_count": __import__("os").cpu_count()}


def default_run_dir(scenario: Scenario, base: str | Path | None = None) -> Path:
    from .distributed import broadcast_from_lead

    # every process of a multi-process run must pick the same name: process 0's clock decides
    now_us = int(broadcast_from_lead(np.array([time.time_ns() // 1000], np.int64))[0])
    stamp = _dt.datetime.fromtimestamp(now_us / 1e6).strftime("%Y%m%d-%H%M%S-%f")
    return child_dir(base or scenario.output.dir, f"{slug(scenario.name)}-{stamp}")  # never leaves output.dir


def manifest_for(scenario: Scenario, built: Built, seed: int, steps: int, extra: dict | None = None) -> dict:
    return {
        "scenario": scenario.model_dump(mode="json"),
        "seed": seed,
        "steps": steps,
        "n_agents": built.n_agents,
        "model": built.model.name,
        "labels": {k: list(v) for k, v in built.model.labels.items()},
        "sample_every": scenario.output.sample_every,
        "versions": versions(),
        "git_revision": git_revision(),
        "device": device_description(),
        "build_info": built.info,
        "metric_groups": built.metric_groups,
        **(extra or {}),
    }


def make_archetype_policy(scenario: Scenario, built: Built, seed: int | None = None):
    """The scenario's LLM archetype policy, or None when it has no ``policy`` block."""
    if scenario.policy is None:
        return None
    from llm_policy import make_policy

    stats_names = tuple(jax.eval_shape(built.model.stats, built.state, built.params)) if built.model.stats else ()
    scheduled = tuple(name for name, table in built.schedule.items() if np.ndim(table) == 1)  # prompt fields
    return make_policy(scenario.policy, built.model, stats_names, scheduled=scheduled,
                       interventions=scenario.interventions, n_agents=built.n_agents, personas=scenario.personas,
                       seed=scenario.run.seed if seed is None else seed)


def make_simulation(scenario: Scenario, built: Built, seed: int) -> Simulation:
    """A Simulation for ``built``, sharded over ``run.devices`` devices along the agent axis."""
    from .engine.sharding import shard_simulation

    sim = Simulation(built.model, built.state, built.params, built.schedule, seed=seed,
                     chunk_size=scenario.run.chunk_size, sample_idx=built.sample_idx)
    devices = scenario.run.devices
    if jax.process_count() > 1 and devices == 1:
        devices = jax.device_count()  # a multi-process run spans every process's devices
    try:
        return shard_simulation(sim, built.n_agents, devices, halo=scenario.run.halo)
    except ValueError as exc:
        from scenarios import ScenarioError
        field, _, reason = str(exc).partition(": ")
        raise ScenarioError(field, reason) from None


def run_scenario(
    scenario: Scenario,
    run_dir: str | Path | None = None,
    *,
    steps: int | None = None,
    seed: int | None = None,
    policies: Iterable[HostPolicy] = (),
    progress: bool = False,
    on_chunk: Callable[[Simulation, Chunk], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    extra_metrics: Callable[[Simulation, Chunk], dict[str, np.ndarray]] | None = None,
    manifest_extra: dict | None = None,
    checkpoint_every: int = 0,
    checkpoint_keep: int | None = None,
    resume_from: Any = None,
) -> Path:
    """Build and run ``scenario``; returns the run directory. The directory is created only after building.

    ``checkpoint_every=N`` writes ``run_dir/checkpoints/step=K/`` every N steps (and where a
    run stops early); ``resume_from`` (a :class:`simcore.checkpoint.Checkpoint`, see
    :func:`simcore.checkpoint.resume_run`) continues an existing run directory from it.
    """
    from .distributed import barrier, current, owned_ranges

    cluster = current()
    if cluster.multi and (checkpoint_every or resume_from is not None):
        from scenarios import ScenarioError
        raise ScenarioError("--checkpoint-every", "checkpoints are not supported in multi-process runs yet")
    seed = scenario.run.seed if seed is None else seed
    steps = scenario.run.steps if steps is None else steps
    t_build = time.perf_counter()
    built = build(scenario, seed=seed, steps=steps)
    built.info["build_seconds"] = time.perf_counter() - t_build
    sim = make_simulation(scenario, built, seed)  # bad device counts fail here, before any file
    if scenario.personas is not None:  # unknown template fields exit 2 before any file
        from llm_policy.personas import check_personas, feature_levels

        check_personas(scenario.personas, feature_levels(built.model, built.state, built.params))
    policy = make_archetype_policy(scenario, built, seed)  # so does a backend that cannot start
    surveys = None
    if scenario.surveys:  # questionnaires, asked on the policy's cadence through its backend
        from llm_policy.surveys import make_surveys

        try:
            surveys = make_surveys(scenario, built, policy, steps)
        except Exception:
            if policy is not None:
                policy.close()  # not attached yet: closes the backend, writes nothing
            raise
    model_policies = built.host_policies() if built.host_policies is not None else []  # e.g. an LLM planner
    run_dir = Path(run_dir) if run_dir is not None else default_run_dir(scenario)
    manifest_extra = dict(manifest_extra or {})
    if policy is not None and cluster.is_lead:  # the other processes receive process 0's decisions
        run_dir.mkdir(parents=True, exist_ok=True)
        cache = policy.attach(run_dir)
        manifest_extra["llm_cache"] = str(cache) if cache else scenario.policy.backend.get("cache")
        manifest_extra["llm_backend"] = getattr(policy.backend, "identity", None)
        if surveys is not None:
            surveys.attach(run_dir)
    if scenario.personas is not None and cluster.is_lead:
        from llm_policy.personas import write_personas

        run_dir.mkdir(parents=True, exist_ok=True)
        write_personas(run_dir, scenario.personas, seed, built.model, built.state, built.params)
    manifest = manifest_for(scenario, built, seed, steps, manifest_extra)
    if checkpoint_every:
        manifest["checkpoint_every"] = int(checkpoint_every)
    if resume_from is not None:
        from .checkpoint import resume_manifest
        manifest = resume_manifest(run_dir, resume_from, manifest)  # also truncates outputs to its step
    writer = RunWriter(run_dir, manifest, sample_every=scenario.output.sample_every,
                       process_id=cluster.process_id, num_processes=cluster.num_processes,
                       owned=owned_ranges(built.n_agents, sim.mesh) if cluster.multi else None)
    policies = (list(policies) + model_policies + ([policy] if policy is not None else [])
                + ([surveys] if surveys is not None else []))
    if resume_from is not None:
        resume_from.restore_into(sim, policies)
    start = sim.step
    if checkpoint_every:
        from .checkpoint import Checkpointer
        checkpointer = Checkpointer(checkpoint_every, run_dir, scenario=scenario, steps=steps, writer=writer,
                                    policies=policies, keep=checkpoint_keep, start_step=start,
                                    extra={"llm_cache": manifest.get("llm_cache")})
        policies = [checkpointer, *policies]  # first, so a resume repeats the other policies' updates
    bar = None
    if progress and cluster.is_lead:
        from tqdm import tqdm

        bar = tqdm(total=steps, initial=start, unit="step", desc=scenario.name, dynamic_ncols=True)
        bar.set_postfix(agents=f"{built.n_agents:,}")

    def chunk_done(s: Simulation, chunk: Chunk) -> None:
        extra = {"wall_seconds": np.full(len(chunk.steps), chunk.seconds / len(chunk.steps))}
        if policy is not None:
            extra.update(policy.metrics_for(chunk.steps))
        if extra_metrics is not None:
            extra.update(extra_metrics(s, chunk))
        writer.submit(chunk, extra)
        if bar is not None:
            bar.update(len(chunk.steps))
        if on_chunk is not None:
            on_chunk(s, chunk)

    status = "failed"
    try:
        done = sim.run(steps - start, policies=policies, on_chunk=chunk_done, should_stop=should_stop)
        status = "completed" if start + done == steps else "stopped"
        if checkpoint_every and status == "stopped" and sim.step > start:
            checkpointer.save(sim)  # a stopped run can be resumed where it stopped
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    finally:
        if bar is not None:
            bar.close()
        for mp in model_policies:
            mp.close()
        if surveys is not None:
            surveys.close()
        if policy is not None:
            policy.close()
            writer.update_manifest(llm_totals=dict(policy.totals.__dict__))
        writer.close(status)
        if cluster.multi and status in ("completed", "stopped"):
            barrier("simcore-run-closed")  # every process's part files are on disk
            if cluster.is_lead:
                writer.merge_hosts()
    return run_dir
