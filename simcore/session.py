"""The run session: the one lifecycle and the one loop every run goes through.

``simcore run`` and ``simcore resume`` (:func:`run_scenario`, :func:`resume_run`), the LLM
arms of an :class:`~simcore.experiments.Experiment` and the server's live runs
(``server/runs.py``: a thread and a command queue over a session) all run as a
:class:`RunSession`::

    with RunSession(scenario, run_dir, checkpoint_every=50) as s:   # builds, opens the writer
        s.run()                                                    # the cadence loop
    # closing lands a pipelined LLM round, closes policies, writes the final status

A session owns, in order: the build (``simcore.models.build``), the ``Simulation``
(sharded over ``run.devices``), the scenario's LLM archetype policy with its response
cache and call log, its surveys, the model's own host policies, the :class:`RunWriter`
and the :class:`~simcore.checkpoint.Checkpointer`. Between chunks it offers the hooks a
live run needs: ``allowance`` (called before each chunk: how many steps may run now;
it may block while paused, 0 stops), ``on_chunk`` (streaming), :meth:`RunSession.intervene`,
:meth:`RunSession.flush`, :meth:`RunSession.checkpoint` and :meth:`RunSession.stop`.

:func:`drive` is the loop itself, the only one in the code base: chunks of at most
``chunk_size`` steps, cut where a host policy is due, each policy updated once before
every step that is a multiple of its ``every``. It drives a
:class:`~simcore.engine.Simulation` or an :class:`~simcore.engine.ensemble.Ensemble`
(the batched form of the same compiled chunk) alike. The engine knows nothing of it.

Resume is the session's too (:meth:`RunSession.resume`): the checkpoint restores the
simulation and every policy's state, LLM call-log position, counters and pending
pipelined round included, so a resumed LLM run has the full call log and the same
metrics as an uninterrupted one.
"""
from __future__ import annotations

import datetime as _dt
import importlib.metadata as _md
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import jax
import numpy as np

from scenarios import Scenario, ScenarioError

from .engine import Chunk, HostPolicy, Simulation
from .io import RunWriter
from .models import Built, build
from .naming import child_dir, slug
from .validation import check_scenario  # re-exported: the server checks uploads as the CLI does

# -- what a run directory records about its run ----------------------------------------------------


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
            "processes": jax.process_count(), "platform": platform.platform(), "cpu_count": os.cpu_count()}


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


def make_archetype_policy(scenario: Scenario, built: Built, seed: int | None = None, *, backend: Any = None):
    """The scenario's LLM archetype policy, or None when it has no ``policy`` block.

    ``backend`` (a backend object, or a zero-argument factory of one) replaces the one
    ``policy.backend`` names; tests use it to run scripted backends through every path.
    """
    if scenario.policy is None:
        return None
    from llm_policy import make_policy

    stats_names = tuple(jax.eval_shape(built.model.stats, built.state, built.params)) if built.model.stats else ()
    scheduled = tuple(name for name, table in built.schedule.items() if np.ndim(table) == 1)  # prompt fields
    kw = dict(scheduled=scheduled, interventions=scenario.interventions, n_agents=built.n_agents,
              personas=scenario.personas, seed=scenario.run.seed if seed is None else seed)
    if backend is None:
        return make_policy(scenario.policy, built.model, stats_names, **kw)
    from llm_policy import ArchetypePolicy, check_policy

    check_policy(scenario.policy, built.model, stats_names, scheduled=scheduled,
                 interventions=scenario.interventions, n_agents=built.n_agents, personas=scenario.personas)
    backend = backend() if callable(backend) and not hasattr(backend, "score") else backend
    return ArchetypePolicy(scenario.policy, built.model, backend, stats_names=stats_names,
                           interventions=scenario.interventions, personas=scenario.personas, seed=kw["seed"])


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
        field, _, reason = str(exc).partition(": ")
        raise ScenarioError(field, reason) from None


# -- the loop ----------------------------------------------------------------------------------------
def next_length(step: int, want: int, chunk_size: int, policies: Iterable[HostPolicy] = ()) -> int:
    """Steps the next chunk from ``step`` runs: at most ``want`` and ``chunk_size``, cut where a policy is due."""
    nxt = step + min(want, chunk_size)
    for p in policies:
        if p.every > 0:
            nxt = min(nxt, (step // p.every + 1) * p.every)
    return nxt - step


def drive(target: Any, n_steps: int, *, policies: Iterable[HostPolicy] = (),
          on_chunk: Callable[[Any, Any], None] | None = None, should_stop: Callable[[], bool] | None = None,
          allowance: Callable[[], int | None] | None = None, short_chunks_of_one: bool = False) -> int:
    """Advance ``target`` (a Simulation, or an Ensemble) by up to ``n_steps``: the one run loop.

    Before every step that is a multiple of a policy's ``every``, that policy's
    ``update`` runs once (on an ensemble of one replicate, through its
    :meth:`~simcore.engine.ensemble.Ensemble.host_view`). ``should_stop()`` is asked
    before each chunk; ``allowance()`` too, returning how many steps may run now
    (``None``: no limit, 0: stop) and possibly blocking (a paused live run).
    ``short_chunks_of_one`` runs every chunk shorter than ``chunk_size`` as single
    steps, so only two scan lengths are ever compiled. Returns the steps done.
    """
    policies = list(policies)
    view = (target if not hasattr(target, "host_view") else target.host_view()) if policies else None
    end = target.step + int(n_steps)
    done = 0
    updated_at = None
    while target.step < end:
        if should_stop is not None and should_stop():
            break
        want = end - target.step
        if allowance is not None:
            allowed = allowance()
            if allowed is not None:
                if allowed <= 0:
                    break
                want = min(want, int(allowed))
        length = next_length(target.step, want, target.chunk_size, policies)
        if short_chunks_of_one and length < target.chunk_size:
            length = 1
        if updated_at != target.step:  # a chunk cut short by the allowance must not repeat a round
            for policy in policies:
                if policy.every > 0 and target.step % policy.every == 0:
                    policy.update(view)
            updated_at = target.step
        chunk = target.advance(length)
        done += length
        if on_chunk is not None:
            on_chunk(target, chunk)
    return done


def run_metrics(target: Any, n_steps: int, *, policies: Iterable[HostPolicy] = ()) -> dict[str, np.ndarray]:
    """:func:`drive` ``target`` for ``n_steps`` and return its metrics joined along the step axis (the last)."""
    parts: list[dict[str, np.ndarray]] = []
    drive(target, n_steps, policies=policies, on_chunk=lambda _t, c: parts.append(c.metrics))
    if not parts:
        return {}
    return {k: np.concatenate([p[k] for p in parts], axis=-1) for k in parts[0]}


def merge_chunks(parts: list[tuple[Chunk, dict]]) -> tuple[Chunk, dict]:
    """Consecutive (chunk, extra columns) pairs as one pair, for one writer submit."""
    if len(parts) == 1:
        return parts[0]
    chunks = [c for c, _ in parts]

    def cat(dicts: list[dict]) -> dict:
        return {k: np.concatenate([d[k] for d in dicts]) for k in dicts[0]} if dicts[0] else {}

    merged = Chunk(steps=np.concatenate([c.steps for c in chunks]), metrics=cat([c.metrics for c in chunks]),
                   samples=cat([c.samples for c in chunks]), events=cat([c.events for c in chunks]),
                   seconds=sum(c.seconds for c in chunks))
    return merged, cat([e for _, e in parts])


MODES = ("set", "multiply", "add")


# -- the session -------------------------------------------------------------------------------------
class RunSession:
    """One run, start to end. Construct, :meth:`open` (or ``with``), :meth:`run`, :meth:`close`.

    ``run_dir``: where files go (default: a fresh directory under ``output.dir``);
    ``write=False`` writes no metrics, manifest or checkpoints (an experiment arm,
    whose results the experiment writes), though an LLM policy still logs its calls
    to ``run_dir`` when one is given. ``policies``: extra host policies;
    ``extra_metrics(sim, chunk)``: extra metric columns; ``backend``: replaces the
    scenario's LLM backend (an object or a factory); ``llm_cache``: the response cache
    path when the scenario names none (default: the run's own ``llm_cache.sqlite``).
    ``built``: a prebuilt population (experiments share one across seeds; recorded as
    ``population_seed``). ``chunk_size`` replaces the scenario's; ``short_chunks_of_one``
    see :func:`drive`; ``submit_interval(rows)``: seconds between writer submits (0:
    every chunk). ``checkpoint_every`` / ``checkpoint_keep``: periodic checkpoints;
    ``resume_from``: a loaded :class:`~simcore.checkpoint.Checkpoint` of this run directory.
    ``policy_factory(built) -> (policies, extra_metrics)``: more of both, made once built.
    """

    def __init__(
        self,
        scenario: Scenario,
        run_dir: str | Path | None = None,
        *,
        steps: int | None = None,
        seed: int | None = None,
        policies: Iterable[HostPolicy] = (),
        progress: bool = False,
        extra_metrics: Callable[[Simulation, Chunk], dict[str, np.ndarray]] | None = None,
        manifest_extra: Mapping[str, Any] | None = None,
        checkpoint_every: int = 0,
        checkpoint_keep: int | None = None,
        resume_from: Any = None,
        backend: Any = None,
        llm_cache: str | Path | None = None,
        built: Built | None = None,
        population_seed: int | None = None,
        chunk_size: int | None = None,
        short_chunks_of_one: bool = False,
        submit_interval: Callable[[int], float] | float = 0.0,
        write: bool = True,
        policy_factory: Callable[[Built], tuple[list, Callable | None]] | None = None,
    ):
        self.scenario = scenario
        self.seed = scenario.run.seed if seed is None else int(seed)
        self.steps = scenario.run.steps if steps is None else int(steps)
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.extra_policies = list(policies)
        self.progress = progress
        self.extra_metrics = extra_metrics
        self.manifest_extra = dict(manifest_extra or {})
        self.checkpoint_every = int(checkpoint_every or 0)
        self.checkpoint_keep = checkpoint_keep
        self.resume_from = resume_from
        self.backend = backend
        self.llm_cache = llm_cache
        self.built = built
        self.population_seed = population_seed
        self.chunk_size = chunk_size
        self.short_chunks_of_one = short_chunks_of_one
        self.submit_interval = submit_interval
        self.write = write
        self.policy_factory = policy_factory
        self.status = "new"
        self.sim: Simulation | None = None
        self.writer: RunWriter | None = None
        self.policy = None  # the scenario's ArchetypePolicy
        self.surveys = None
        self.model_policies: list = []
        self.policies: list = []  # in update order: checkpointer, extra, model, LLM, surveys
        self.checkpointer = None
        self.live_interventions: list[dict[str, Any]] = []
        self.start_step = 0
        self._stop = False
        self._pending: list[tuple[Chunk, dict]] = []
        self._last_submit = time.perf_counter()
        self._bar = None
        self._closed = False
        self.network = None  # the dashboard's NetworkView (simcore.netview), written to the run directory
        self.network_error: str | None = None
        self._net_out = None
        self._net_step = -1

    # -- resume ---------------------------------------------------------------------------------
    @classmethod
    def resume(cls, run_dir: str | Path, *, steps: int | None = None, checkpoint: str | Path | None = None,
               checkpoint_every: int | None = None, **kwargs) -> "RunSession":
        """A session continuing ``run_dir`` from its latest checkpoint (or ``checkpoint``), in the same directory.

        ``steps`` (default: the run's planned steps) may extend a finished run. Metrics
        after the checkpoint are recomputed, bit-identical to an uninterrupted run's on
        the same device (``wall_seconds`` and ``llm_seconds`` aside).
        """
        from .checkpoint import CheckpointError, load_checkpoint, read_manifest

        run_dir = Path(run_dir)
        manifest = read_manifest(run_dir)
        path = Path(checkpoint) if checkpoint is not None else resume_point(run_dir)
        ckpt = load_checkpoint(path)
        total = int(steps if steps is not None else manifest.get("steps") or ckpt.meta["steps"])
        if manifest.get("status") == "completed" and int(manifest.get("steps_done", 0)) >= total:
            raise CheckpointError("--steps" if steps is not None else "run_dir",
                                  f"nothing to resume: the run completed all {total} steps "
                                  f"(pass --steps N > {total} to extend it)")
        if total <= ckpt.step:
            raise CheckpointError("--steps" if steps is not None else "run_dir",
                                  f"nothing to resume: the checkpoint is at step {ckpt.step} and the run "
                                  f"has {total} steps (pass --steps to extend it)")
        every = manifest.get("checkpoint_every", 0) if checkpoint_every is None else checkpoint_every
        kwargs.setdefault("manifest_extra", {k: manifest[k] for k in ("server",) if k in manifest})
        session = cls(ckpt.scenario(), run_dir, steps=total, seed=ckpt.seed, checkpoint_every=every or 0,
                      resume_from=ckpt, **kwargs)
        session.live_interventions = list(manifest.get("live_interventions") or [])
        return session

    # -- opening ---------------------------------------------------------------------------------
    def __enter__(self) -> "RunSession":
        try:
            return self.open()
        except BaseException:
            self._abort()
            raise

    def _abort(self) -> None:
        """After a failed :meth:`open`: close what was started (the backend, the writer); the status is failed."""
        self._closed = True
        for p in [*self.model_policies, *([self.surveys] if self.surveys is not None else []),
                  *([self.policy] if self.policy is not None else [])]:
            try:
                p.close()
            except Exception:  # noqa: BLE001 - the open() error is the one reported
                pass
        if self.writer is not None:
            try:
                self.writer.close("failed")
            except Exception:  # noqa: BLE001 - as above
                pass
        self.status = "failed"

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.close("interrupted" if issubclass(exc_type, KeyboardInterrupt) else "failed")

    def open(self) -> "RunSession":
        """Build, then the simulation, the policies, the writer and the checkpointer. Files only after the build."""
        if self.status != "new":
            return self
        from .distributed import current, owned_ranges

        cluster = current()
        self._cluster = cluster
        if cluster.multi and (self.checkpoint_every or self.resume_from is not None):
            raise ScenarioError("--checkpoint-every", "checkpoints are not supported in multi-process runs yet")
        self.status = "building"
        scenario, seed, steps = self.scenario, self.seed, self.steps
        if self.built is None:
            t_build = time.perf_counter()
            built = build(scenario, seed=seed if self.population_seed is None else self.population_seed, steps=steps)
            built.info["build_seconds"] = time.perf_counter() - t_build
        else:
            built = self.built
        self.built = built
        sim = make_simulation(scenario, built, seed)  # bad device counts fail here, before any file
        if self.chunk_size:
            sim.chunk_size = max(1, int(self.chunk_size))
        if scenario.personas is not None:  # unknown template fields exit 2 before any file
            from llm_policy.personas import check_personas, feature_levels

            check_personas(scenario.personas, feature_levels(built.model, built.state, built.params),
                           has_policy=scenario.policy is not None)
        policy = make_archetype_policy(scenario, built, seed, backend=self.backend)  # a backend that cannot start
        surveys = None
        try:
            if scenario.surveys:  # questionnaires, asked on the policy's cadence through its backend
                from llm_policy.surveys import make_surveys

                surveys = make_surveys(scenario, built, policy, steps)
            self.model_policies = built.host_policies() if built.host_policies is not None else []  # e.g. a planner
            if self.policy_factory is not None:  # more host policies and metric columns, made from the build
                more, extra_metrics = self.policy_factory(built)
                self.extra_policies += list(more)
                self.extra_metrics = extra_metrics or self.extra_metrics
        except Exception:
            if policy is not None:
                policy.close()  # not attached yet: closes the backend, writes nothing
            raise
        self.policy, self.surveys, self.sim = policy, surveys, sim
        if self.run_dir is None and (self.write or policy is not None):
            self.run_dir = default_run_dir(scenario)
        run_dir = self.run_dir
        extra = dict(self.manifest_extra)
        if self.population_seed is not None:
            extra["population_seed"] = int(self.population_seed)
        if policy is not None and cluster.is_lead:  # the other processes receive process 0's decisions
            run_dir.mkdir(parents=True, exist_ok=True)
            cache = policy.attach(run_dir, cache=self.llm_cache)
            extra["llm_cache"] = str(cache) if cache else scenario.policy.backend.get("cache")
            extra["llm_backend"] = getattr(policy.backend, "identity", None)
            if surveys is not None:
                surveys.attach(run_dir)
        deep = None
        if scenario.deep_agents is not None:  # a few agents with memories and their own decisions (llm_policy.deep)
            from llm_policy.deep import make_deep_agents

            deep = make_deep_agents(scenario, built, policy, backend=self.backend, seed=seed)
            if deep is not None and run_dir is not None and cluster.is_lead:
                run_dir.mkdir(parents=True, exist_ok=True)
                deep.attach(run_dir)
        self.deep_agents = deep
        if scenario.personas is not None and cluster.is_lead and run_dir is not None:
            from llm_policy.personas import write_personas

            run_dir.mkdir(parents=True, exist_ok=True)
            info = write_personas(run_dir, scenario.personas, seed, built.model, built.state, built.params,
                                  backend=policy.backend if policy is not None else None)
            if scenario.personas.factory is not None:
                policy.backstories = info["backstories"]
                extra["backstory_fallbacks"] = info["backstory_fallbacks"]
        self.policies = (self.extra_policies + self.model_policies + ([policy] if policy is not None else [])
                         + ([deep] if deep is not None else []) + ([surveys] if surveys is not None else []))
        if self.write:
            manifest = manifest_for(scenario, built, seed, steps, extra)
            if self.checkpoint_every:
                manifest["checkpoint_every"] = self.checkpoint_every
            if self.resume_from is not None:
                from .checkpoint import resume_manifest

                manifest = resume_manifest(run_dir, self.resume_from, manifest)  # also truncates outputs
            self.writer = RunWriter(run_dir, manifest, sample_every=scenario.output.sample_every,
                                    process_id=cluster.process_id, num_processes=cluster.num_processes,
                                    owned=owned_ranges(built.n_agents, sim.mesh) if cluster.multi else None)
            self.manifest = manifest
            if not cluster.multi:
                self._open_network(built, sim)
        else:
            self.manifest = extra
        if self.resume_from is not None:
            self.resume_from.restore_into(sim, self.policies)
        self.record_network(force=True)  # the states at the start: step 0, or the resumed step (truncated away)
        self.start_step = sim.step
        if self.checkpoint_every and self.write:
            from .checkpoint import Checkpointer

            self.checkpointer = Checkpointer(self.checkpoint_every, run_dir, scenario=scenario, steps=steps,
                                             writer=self.writer, policies=self.policies, keep=self.checkpoint_keep,
                                             start_step=self.start_step, flush=self.flush,
                                             extra={"llm_cache": self.manifest.get("llm_cache"),
                                                    "population_seed": self.population_seed})
            self.policies = [self.checkpointer, *self.policies]  # first: a resume repeats the others' updates
        if self.progress and cluster.is_lead:
            from tqdm import tqdm

            self._bar = tqdm(total=steps, initial=self.start_step, unit="step", desc=scenario.name,
                             dynamic_ncols=True)
            self._bar.set_postfix(agents=f"{built.n_agents:,}")
        self.status = "running"
        return self

    def _open_network(self, built: Built, sim: Simulation) -> None:
        """Sample the network view (the registry entry's graph) and write it to the run directory, with the
        nodes' states at the start. Optional: a model without a graph, or a view that fails, is recorded
        in the manifest's ``network_error`` and the run goes on."""
        from scenarios import REGISTRY

        from . import rundir
        from .netview import NetworkView

        view = REGISTRY.entry_for(self.scenario).view(built)
        if view is None or built.n_agents == 0:
            self.network_error = f"model {self.scenario.model.kind!r} has no graph to show"
        else:
            try:
                self.network = NetworkView.sample(view, built, self.seed)
                rundir.write_network(self.run_dir, self.network.graph)
            except Exception as exc:  # the view is optional: the reason is recorded, the run goes on
                self.network = None
                self.network_error = f"{type(exc).__name__}: {exc}"
        if self.network is None:
            self.writer.update_manifest(network_error=self.network_error)
            return
        self._net_out = rundir.TableAppender(self.run_dir, "network_states")  # first states: after a resume's restore

    def record_network(self, force: bool = False) -> None:
        """Append the network view's node states at the current step (at most every 5% of the run, unless
        ``force``)."""
        if self._net_out is None or self.sim is None or self.sim.step == self._net_step:
            return
        if not force and self._net_step >= 0 and self.sim.step - self._net_step < max(1, self.steps // 20):
            return
        from . import rundir

        self._net_out.append(rundir.network_states_table(self.sim.step, self.network.graph["nodes"],
                                                         self.network.state(self.sim.state)))
        self._net_step = self.sim.step

    # -- running ---------------------------------------------------------------------------------
    @property
    def step(self) -> int:
        return self.sim.step if self.sim is not None else 0

    def run(self, n_steps: int | None = None, *, on_chunk: Callable[["RunSession", Chunk, dict], None] | None = None,
            should_stop: Callable[[], bool] | None = None, allowance: Callable[[], int | None] | None = None) -> int:
        """Step up to ``n_steps`` (default: to the run's end) through :func:`drive`; returns the steps done.

        ``on_chunk(session, chunk, columns)`` sees each chunk after it is queued for
        writing (``columns``: the host-side ones, ``wall_seconds`` and ``llm_*``).
        """
        self.open()
        left = self.steps - self.sim.step
        n = left if n_steps is None else min(int(n_steps), left)

        def stop() -> bool:
            return self._stop or (should_stop is not None and should_stop())

        def chunk_done(sim: Simulation, chunk: Chunk) -> None:
            cols = self.columns(chunk)
            self._queue_chunk(chunk, cols)
            if self._bar is not None:
                self._bar.update(len(chunk.steps))
            if on_chunk is not None:
                on_chunk(self, chunk, cols)

        if n <= 0:
            return 0
        return drive(self.sim, n, policies=self.policies, on_chunk=chunk_done, should_stop=stop,
                     allowance=allowance, short_chunks_of_one=self.short_chunks_of_one)

    def columns(self, chunk: Chunk) -> dict[str, np.ndarray]:
        """The host-side metric columns of ``chunk``: ``wall_seconds``, the LLM policy's, ``extra_metrics``'."""
        cols = {"wall_seconds": np.full(len(chunk.steps), chunk.seconds / len(chunk.steps))}
        if self.policy is not None:
            cols.update(self.policy.metrics_for(chunk.steps))
        if self.extra_metrics is not None:
            cols.update(self.extra_metrics(self.sim, chunk))
        return cols

    def _queue_chunk(self, chunk: Chunk, cols: dict) -> None:
        if self.writer is None:
            return
        self._pending.append((chunk, cols))
        interval = self.submit_interval(self.sim.step) if callable(self.submit_interval) else self.submit_interval
        if time.perf_counter() - self._last_submit >= interval:
            self.flush()

    def flush(self, sync: bool = False) -> None:
        """Hand buffered chunks to the writer; with ``sync``, wait until they are on disk."""
        if self.writer is None:
            return
        if self._pending:
            self.writer.submit(*merge_chunks(self._pending))
            self._pending = []
            self.record_network()
        self._last_submit = time.perf_counter()
        if sync:
            self.writer.flush()

    def stop(self) -> None:
        """Stop before the next chunk (thread-safe: a flag)."""
        self._stop = True

    def checkpoint(self) -> Path:
        """Checkpoint now (needs ``checkpoint_every``)."""
        if self.checkpointer is None:
            raise ScenarioError("checkpoint_every", "this session writes no checkpoints")
        return self.checkpointer.save(self.sim)

    def intervene(self, param: str, value: float, *, mode: str = "set", start: int | None = None,
                  end: int | None = None) -> dict[str, Any]:
        """Edit scheduled ``param`` from ``start`` (default: the next step) to ``end`` (default: the run's end).

        Recorded in the manifest's ``live_interventions`` (and so in every later
        checkpoint's schedule); raises ScenarioError naming the bad field.
        """
        sim = self.sim
        if mode not in MODES:
            raise ScenarioError("mode", f"must be one of {', '.join(MODES)}, got {mode!r}")
        if param not in sim.schedule:
            raise ScenarioError("param", f"unknown parameter {param!r} (scheduled: {', '.join(sorted(sim.schedule))})")
        start = sim.step if start is None else int(start)
        end = self.steps if end is None else int(end)
        if start < sim.step:
            raise ScenarioError("start", f"cannot intervene in the past: must be >= current step {sim.step}, got {start}")
        if start >= self.steps:
            raise ScenarioError("start", f"must be < run.steps ({self.steps}), got {start}")
        if end <= start:
            raise ScenarioError("end", f"must be > start ({start}), got {end}")
        if end > self.steps:
            raise ScenarioError("end", f"must be <= run.steps ({self.steps}), got {end}")
        sim.intervene(param, float(value), start=start, end=end, mode=mode)
        record = {"step": sim.step, "param": param, "value": float(value), "mode": mode, "start": start, "end": end,
                  "time": _dt.datetime.now().astimezone().isoformat(timespec="seconds")}
        self.live_interventions.append(record)
        if self.writer is not None:
            self.writer.update_manifest(live_interventions=list(self.live_interventions))
            self.writer.flush()  # answered once the manifest on disk records it
        return record

    # -- closing ---------------------------------------------------------------------------------
    def close(self, status: str | None = None) -> str:
        """Finish policies (a pipelined round lands), checkpoint a stopped run, close everything; returns the status.

        ``status`` defaults to ``completed`` when every step ran, else ``stopped``.
        """
        if self._closed:
            return self.status
        self._closed = True
        if self.sim is None:  # never opened, or the build failed
            self.status = status or "failed"
            return self.status
        status = status or ("completed" if self.sim.step >= self.steps else "stopped")
        errors: list[BaseException] = []

        def attempt(fn: Callable[[], Any]) -> None:
            try:
                fn()
            except Exception as exc:  # every resource is closed; the first error is raised after
                errors.append(exc)

        if status in ("completed", "stopped"):
            for p in self.policies:
                if hasattr(p, "finish"):
                    attempt(lambda p=p: p.finish(self.sim))
        attempt(self.flush)
        if self._net_out is not None:
            attempt(lambda: self.record_network(force=True))
            attempt(self._net_out.close)
        if (self.checkpointer is not None and status == "stopped" and self.sim.step > self.start_step
                and not errors):
            attempt(lambda: self.checkpointer.save(self.sim))  # a stopped run resumes where it stopped
        if self._bar is not None:
            self._bar.close()
        for mp in self.model_policies:
            attempt(mp.close)
        if self.surveys is not None:
            attempt(self.surveys.close)
        if getattr(self, "deep_agents", None) is not None:
            attempt(self.deep_agents.close)
        if self.policy is not None:
            attempt(self.policy.close)
            if self.writer is not None:
                attempt(lambda: self.writer.update_manifest(llm_totals=dict(self.policy.totals.__dict__)))
        if errors and status in ("completed", "stopped"):
            status = "failed"
        if self.writer is not None:
            if errors:
                attempt(lambda: self.writer.update_manifest(error=f"{type(errors[0]).__name__}: {errors[0]}"))
            attempt(lambda: self.writer.close(status))
            cluster = self._cluster
            if cluster.multi and status in ("completed", "stopped"):
                from .distributed import barrier

                barrier("simcore-run-closed")  # every process's part files are on disk
                if cluster.is_lead:
                    attempt(self.writer.merge_hosts)
        self.status = status
        if errors:
            raise errors[0]
        return status


def resume_point(run_dir: str | Path, field: str = "run_dir") -> Path:
    """The checkpoint :meth:`RunSession.resume` continues ``run_dir`` from (its latest);
    :class:`~simcore.checkpoint.CheckpointError` (a ``ScenarioError`` on ``field``) when it has none."""
    from .checkpoint import CheckpointError, latest_checkpoint

    path = latest_checkpoint(run_dir)
    if path is None:
        raise CheckpointError(field, f"no checkpoint in {Path(run_dir) / 'checkpoints'} "
                                     "(run with --checkpoint-every N to write them)")
    return path


# -- the CLI's entry points ------------------------------------------------------------------------
def run_scenario(scenario: Scenario, run_dir: str | Path | None = None, *, steps: int | None = None,
                 seed: int | None = None, policies: Iterable[HostPolicy] = (), progress: bool = False,
                 on_chunk: Callable[[Simulation, Chunk], None] | None = None,
                 should_stop: Callable[[], bool] | None = None,
                 extra_metrics: Callable[[Simulation, Chunk], dict[str, np.ndarray]] | None = None,
                 manifest_extra: dict | None = None, checkpoint_every: int = 0, checkpoint_keep: int | None = None,
                 resume_from: Any = None, backend: Any = None) -> Path:
    """Build and run ``scenario`` in one :class:`RunSession`; returns the run directory (made only after building).

    ``checkpoint_every=N`` writes ``run_dir/checkpoints/step=K/`` every N steps (and where a
    run stops early); ``resume_from`` (a :class:`simcore.checkpoint.Checkpoint`, see
    :func:`resume_run`) continues an existing run directory from it.
    """
    session = RunSession(scenario, run_dir, steps=steps, seed=seed, policies=policies, progress=progress,
                         extra_metrics=extra_metrics, manifest_extra=manifest_extra,
                         checkpoint_every=checkpoint_every, checkpoint_keep=checkpoint_keep,
                         resume_from=resume_from, backend=backend)
    return _run_to_end(session, on_chunk, should_stop)


def _run_to_end(session: RunSession, on_chunk, should_stop) -> Path:
    with session:
        session.run(on_chunk=None if on_chunk is None else (lambda s, chunk, cols: on_chunk(s.sim, chunk)),
                    should_stop=should_stop)
    return session.run_dir


def resume_run(run_dir: str | Path, *, steps: int | None = None, checkpoint: str | Path | None = None,
               checkpoint_every: int | None = None, policies: Iterable[HostPolicy] = (), progress: bool = False,
               on_chunk: Callable[[Simulation, Chunk], None] | None = None,
               should_stop: Callable[[], bool] | None = None, **kwargs) -> Path:
    """Continue a run from its latest checkpoint (or ``checkpoint``), appending to the same directory
    (:meth:`RunSession.resume`); returns the run directory."""
    session = RunSession.resume(run_dir, steps=steps, checkpoint=checkpoint, checkpoint_every=checkpoint_every,
                                policies=policies, progress=progress, **kwargs)
    return _run_to_end(session, on_chunk, should_stop)


# -- interviews (simcore.interviews), re-exported for the server, which imports only this module -----
def interview(run_dir: str | Path, step: int, question: str, **kwargs) -> dict[str, Any]:
    """Ask an agent or archetype of a run a question at ``step``: :func:`simcore.interviews.interview`."""
    from .interviews import interview as _interview

    return _interview(run_dir, step, question, **kwargs)


def read_interviews(run_dir: str | Path) -> list[dict[str, Any]]:
    """A run's interviews, oldest first: :func:`simcore.interviews.read_interviews`."""
    from .interviews import read_interviews as _read

    return _read(run_dir)


__all__ = [
    "MODES", "RunSession", "check_scenario", "default_run_dir", "device_description", "drive", "git_revision", "make_archetype_policy",
    "make_simulation", "manifest_for", "merge_chunks", "next_length", "resume_point", "resume_run", "run_metrics",
    "run_scenario", "slug", "versions",
    "interview", "read_interviews",  # simcore.interviews, for the server
]
