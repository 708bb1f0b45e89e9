"""Replicates of one model stepped together: stacked states, per-replicate keys, shared params.

An :class:`Ensemble` holds ``R`` replicates of the same model on the same
parameters (population, graph): a state pytree with a leading replicate axis,
one root key per replicate and one schedule row per replicate and step, so arms
of an experiment (which differ only in their schedules) can share a batch.
Step ``t`` of replicate ``r`` uses ``fold_in(root_key(seeds[r]), t)``, exactly as
:class:`~simcore.engine.Simulation` does, so a replicate draws the same numbers
as a single run of the same seed from the same state.

Replicates run ``batch_size`` at a time under ``jax.vmap`` (one compiled program
per batch size, reused across arms, batches and step counts: every chunk has the
same length; the programs live in a :class:`ChunkPrograms` that the experiment owns
and passes in, not in a module-level cache); ``batch_size=1`` runs them one after another without ``vmap``.
:func:`batch_size_for` picks the largest batch that fits a memory budget. The
tiered sparse/dense neighbour pull has its own batching rule
(``simcore.engine.ops``): a batch is one population of R disjoint graph copies
with one real ``lax.switch``, instead of a select that would run every branch,
and every replicate's numbers stay bit-identical to a run of its own
(``tests/test_ensemble_batched.py``). With ``devices=D`` the replicate axis is split
over D local devices (``shard_map`` of the vmapped chunk): on CPU, with one host
device per core (``XLA_FLAGS=--xla_force_host_platform_device_count``), that keeps
both cores busy and measured 1.5x (tiered pull) to 1.9x (dense pull) sequential runs on 2
cores, where one vmapped batch on one device is only about even
(``benchmarks/experiments.py``, docs/experiments.md).

Only per-step metrics come back to the host; agent samples and event traces are
not recorded for ensembles. The loop over chunks (and host policies, for a
one-replicate ensemble) is :func:`simcore.session.drive`, the same one a run uses.
"""
from __future__ import annotations

import functools
import os
import time
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from .model import Model, Params, State, replacement_param
from .rng import root_key
from .runner import step_body
from .schedule import extend_schedule

REPLICAS = "replicas"  # the mesh axis the replicate axis is split over


class _Compiled:
    """The jitted chunk functions of one model (single replicate and vmapped over replicates).

    Both scan :func:`~simcore.engine.runner.step_body`, the Simulation's own step, with
    metrics only; steps at or past ``t_end`` are skipped, so every chunk has the same
    length and compiles once.
    """

    def __init__(self, model: Model):
        self.model = model

        def chunk(state, params, rows, root, t0, t_end, length):
            # The skip is a cond on unbatched values (it stays a real branch under vmap).
            go = step_body(model, root, params, outputs=False)

            def body(st, xs):
                t, row = xs
                shapes = jax.eval_shape(go, st, t, row)[1]
                skip = lambda st, t, row: (st, jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes))  # noqa: E731
                return jax.lax.cond(t < t_end, go, skip, st, t, row)

            ts = t0 + jnp.arange(length, dtype=jnp.int32)
            return jax.lax.scan(body, state, (ts, rows))

        self._donate = donate = (0,) if jax.default_backend() != "cpu" else ()
        self.single = jax.jit(chunk, static_argnums=(6,), donate_argnums=donate)
        self._vmapped = batched = jax.vmap(chunk, in_axes=(0, None, 0, 0, None, None, None))
        self.batched = jax.jit(batched, static_argnums=(6,), donate_argnums=donate)
        self._split: dict[int, tuple[Mesh, Any]] = {}

    def split(self, n_devices: int) -> tuple[Mesh, Any]:
        """The mesh of the first ``n_devices`` local devices and the chunk program that splits the
        replicate axis over it: each device steps its own replicates (vmapped) at the same time."""
        hit = self._split.get(n_devices)
        if hit is None:
            devices = jax.local_devices()
            if n_devices > len(devices):
                raise ValueError(f"devices: {n_devices} requested but only {len(devices)} available "
                                 f"({jax.default_backend()}); on CPU set XLA_FLAGS="
                                 f"--xla_force_host_platform_device_count=N before jax is imported")
            mesh = Mesh(np.array(devices[:n_devices]), (REPLICAS,))
            batched, rep, whole = self._vmapped, PartitionSpec(REPLICAS), PartitionSpec()

            def chunk(state, params, rows, roots, t0, t_end, length):
                # no collectives: every replicate is independent. check_vma is off because the
                # skipped-step branch's zeros are the same on every device while stepped metrics vary.
                part = jax.shard_map(lambda st, p, r, k, a, e: batched(st, p, r, k, a, e, length), mesh=mesh,
                                     in_specs=(rep, whole, rep, rep, whole, whole), out_specs=(rep, rep),
                                     check_vma=False)
                return part(state, params, rows, roots, t0, t_end)

            hit = self._split[n_devices] = (mesh, jax.jit(chunk, static_argnums=(6,), donate_argnums=self._donate))
        return hit


def _fn_key(fn):
    if isinstance(fn, functools.partial):
        return (fn.func, fn.args, tuple(sorted(fn.keywords.items())))
    return fn


def model_key(model: Model):
    """Equal for two models built from the same functions and configuration (so they share compiled code)."""
    key = (model.name, tuple(_fn_key(f) for f in model.substeps), _fn_key(model.metrics))
    try:
        hash(key)
    except TypeError:  # an unhashable configuration: share only with the very same model object
        return ("id", id(model))
    return key


class ChunkPrograms:
    """Compiled chunk programs by model configuration, owned by whoever runs the ensembles.

    There is no process-wide cache: an :class:`~simcore.experiments.Experiment` (or a
    session) owns one and passes it to each :class:`Ensemble` it makes, so arms built
    separately from equal configurations (each ``build`` makes a new ``Model``) reuse one
    compilation, and the programs (and the models they hold) go when the owner goes.
    An Ensemble made without one gets its own.
    """

    def __init__(self) -> None:
        self._by_key: dict[Any, _Compiled] = {}

    def for_model(self, model: Model) -> _Compiled:
        """The compiled functions for ``model`` (compiled lazily per shape), keyed by :func:`model_key`."""
        key = model_key(model)
        hit = self._by_key.get(key)
        if hit is None:
            hit = self._by_key[key] = _Compiled(model)
        return hit

    def __len__(self) -> int:
        return len(self._by_key)

    def clear(self) -> None:
        self._by_key.clear()


@dataclass
class EnsembleChunk:
    """Metrics of one chunk: ``metrics[name]`` has shape ``[R, len(steps)]``."""

    steps: np.ndarray
    metrics: dict[str, np.ndarray]
    seconds: float = 0.0


def stack_states(states: Sequence[State]) -> State:
    return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *states)


def unstack_state(stacked: State, index: int) -> State:
    return jax.tree_util.tree_map(lambda x: x[index], stacked)


def replicate_state(state: State, n: int) -> State:
    """``n`` copies of one state along a new leading axis."""
    return jax.tree_util.tree_map(lambda x: jnp.broadcast_to(x, (n, *jnp.shape(x))).copy(), state)


def tree_bytes(tree: Any) -> int:
    return int(sum(getattr(x, "nbytes", 0) for x in jax.tree_util.tree_leaves(tree)))


def available_memory() -> int:
    """Bytes the default device can still hand out (GPU: allocator stats; CPU: available RAM)."""
    dev = jax.devices()[0]
    stats = dev.memory_stats() if hasattr(dev, "memory_stats") else None
    if stats and "bytes_limit" in stats:
        return int(stats["bytes_limit"] - stats.get("bytes_in_use", 0))
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))


def batch_size_for(state: State, n_replicates: int, *, work_factor: float = 8.0, budget: int | None = None,
                   fraction: float = 0.5) -> int:
    """Largest batch (<= n_replicates) whose replicated state and step temporaries fit the budget.

    ``work_factor`` is the step's peak temporary memory in multiples of one
    replicate's state (force-of-infection floats, masks, random bits: per agent a
    few 4-byte arrays against ~1-8 bytes of state). The budget defaults to
    ``fraction`` of the memory :func:`available_memory` reports.
    """
    per = max(tree_bytes(state), 1) * (1.0 + work_factor)
    budget = int(available_memory() * fraction) if budget is None else int(budget)
    return int(max(1, min(n_replicates, budget // per)))


class Ensemble:
    """``R`` replicates of ``model`` on shared ``params``, stepped in compiled chunks.

    ``states``: a list of R state pytrees, or one pytree with a leading axis of R.
    ``schedule``: ``{name: rows}`` with rows ``[T, ...]`` shared by all replicates, or
    ``[R, T, ...]`` (one schedule per replicate) with ``per_replicate_schedule=True``;
    ``seeds``: R root seeds. ``devices``: local devices the replicate axis is split over
    (each steps ``batch_size`` replicates at a time, vmapped, concurrently with the others);
    ``batch_size`` is per device.
    """

    def __init__(self, model: Model, states: State | Sequence[State], params: Params,
                 schedule: Mapping[str, np.ndarray], seeds: Sequence[int], *, chunk_size: int = 32,
                 step: int = 0, batch_size: int | None = None, per_replicate_schedule: bool = False,
                 programs: ChunkPrograms | None = None, devices: int = 1):
        self.model = model
        self.seeds = [int(s) for s in seeds]
        r = len(self.seeds)
        if r < 1:
            raise ValueError("an ensemble needs at least one seed")
        self.state = stack_states(states) if isinstance(states, (list, tuple)) else states
        lead = {int(np.shape(x)[0]) for x in jax.tree_util.tree_leaves(self.state)}
        if lead != {r}:
            raise ValueError(f"states have leading sizes {sorted(lead)}, expected {r} (one per seed)")
        self.params = dict(params)
        clash = set(self.params) & set(schedule)
        if clash:
            raise ValueError(f"parameters both static and scheduled: {sorted(clash)}")
        self.schedule = {k: self._per_replicate(k, np.asarray(v, np.float32), per_replicate_schedule)
                         for k, v in schedule.items()}
        self.roots = jnp.stack([root_key(s) for s in self.seeds])
        self.step = int(step)
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self.chunk_size = int(chunk_size)
        if devices < 1:
            raise ValueError(f"devices must be >= 1, got {devices}")
        self.devices = min(int(devices), r)
        per_device = -(-r // self.devices)
        self.batch_size = per_device if batch_size is None else max(1, min(int(batch_size), per_device))
        self.programs = programs if programs is not None else ChunkPrograms()
        self._fns = self.programs.for_model(model)
        self._placed: tuple[tuple, Any] | None = None  # (the param leaves, their copies on the replicate mesh)

    def _per_replicate(self, name: str, table: np.ndarray, per_replicate: bool) -> np.ndarray:
        r = len(self.seeds)
        if per_replicate:
            if table.shape[0] != r:
                raise ValueError(f"schedule {name!r}: {table.shape[0]} tables for {r} replicates")
            return table.copy()
        return np.repeat(table[None], r, axis=0)

    @property
    def n_replicates(self) -> int:
        return len(self.seeds)

    # -- schedule edits ---------------------------------------------------------------
    def _ensure_rows(self, end: int) -> None:
        if any(v.shape[1] < end for v in self.schedule.values()):
            ext = extend_schedule({k: np.swapaxes(v, 0, 1) for k, v in self.schedule.items()}, end)
            self.schedule = {k: np.ascontiguousarray(np.swapaxes(v, 0, 1)) for k, v in ext.items()}

    def set_schedule(self, name: str, rows: np.ndarray, replicates: Sequence[int] | None = None) -> None:
        """Replace the rows of ``name`` from the current step on, for all (or some) replicates."""
        rows = np.asarray(rows, np.float32)
        self._ensure_rows(self.step + len(rows))
        sel = slice(None) if replicates is None else np.asarray(replicates)
        self.schedule[name][sel, self.step:self.step + len(rows)] = rows

    # -- stepping ---------------------------------------------------------------
    def advance(self, n_steps: int) -> EnsembleChunk:
        """Run ``n_steps`` for every replicate; metrics come back as ``[R, n_steps]`` arrays.

        Steps run in compiled chunks of exactly ``chunk_size`` (the tail of the last one
        is skipped), so any ``n_steps`` reuses the same program.
        """
        if n_steps < 1:
            raise ValueError(f"n_steps must be >= 1, got {n_steps}")
        t_start = time.perf_counter()
        start = self.step
        parts = []
        while n_steps > 0:
            m = min(n_steps, self.chunk_size)
            parts.append(self._advance_chunk(m))
            n_steps -= m
        metrics = {k: np.concatenate([p[k] for p in parts], axis=1) for k in parts[0]}
        return EnsembleChunk(steps=np.arange(start, self.step, dtype=np.int64), metrics=metrics, seconds=time.perf_counter() - t_start)

    def _advance_chunk(self, n_steps: int) -> dict[str, np.ndarray]:
        start, length = self.step, self.chunk_size
        self._ensure_rows(start + length)
        rows = {k: v[:, start:start + length] for k, v in self.schedule.items()}
        r, g = self.n_replicates, self.batch_size * self.devices  # g: replicates per call
        t0 = (jnp.int32(start), jnp.int32(start + n_steps))
        if g == r:
            state, out = self._call(self.state, rows, self.roots, t0, length, batched=r > 1)
        else:
            states, outs = [], []
            for lo in range(0, r, g):
                idx = np.arange(lo, min(lo + g, r))
                pad = np.concatenate([idx, np.full(g - len(idx), idx[-1])])  # same batch shape: no recompilation
                sub = jax.tree_util.tree_map(lambda x: x[pad], self.state)
                st, o = self._call(sub, {k: v[pad] for k, v in rows.items()}, self.roots[pad], t0, length,
                                   batched=g > 1)
                keep = len(idx)
                states.append(jax.tree_util.tree_map(lambda x: x[:keep], st))
                outs.append(jax.tree_util.tree_map(lambda x: np.asarray(x)[:keep], o))
            state = jax.tree_util.tree_map(lambda *xs: jnp.concatenate(xs), *states)
            out = jax.tree_util.tree_map(lambda *xs: np.concatenate(xs), *outs)
        self.state = state
        host = jax.device_get(out)
        self.step = start + n_steps
        return {k: np.asarray(v)[:, :n_steps] for k, v in host["metrics"].items()}

    def _call(self, state, rows, roots, t0, n, *, batched: bool):
        if self.devices > 1:
            mesh, fn = self._fns.split(self.devices)
            rep = NamedSharding(mesh, PartitionSpec(REPLICAS))
            return fn(jax.device_put(state, rep), self._params_on(mesh), jax.device_put(rows, rep),
                      jax.device_put(roots, rep), *t0, n)
        if batched:
            return self._fns.batched(state, self.params, rows, roots, *t0, n)
        one = jax.tree_util.tree_map(lambda x: x[0], state)
        st, out = self._fns.single(one, self.params, {k: v[0] for k, v in rows.items()}, roots[0], *t0, n)
        return (jax.tree_util.tree_map(lambda x: x[None], st), jax.tree_util.tree_map(lambda x: x[None], out))

    def _params_on(self, mesh: Mesh) -> Params:
        """The shared params replicated on every device of ``mesh`` (copied once, again after a change)."""
        leaves = jax.tree_util.tree_leaves(self.params)
        if (self._placed is None or len(self._placed[0]) != len(leaves)
                or any(a is not b for a, b in zip(self._placed[0], leaves))):
            self._placed = (tuple(leaves), jax.device_put(self.params, NamedSharding(mesh, PartitionSpec())))
        return self._placed[1]

    def set_param(self, name: str, value: Any) -> None:
        """Replace a shared parameter with an array of the same shape and dtype (no recompilation)."""
        self.params[name] = replacement_param(self.params, name, value)

    def host_view(self) -> "_SimView":
        """What host policies see of a one-replicate ensemble (Simulation-like); see :func:`simcore.session.drive`."""
        if self.n_replicates != 1:
            raise ValueError("host policies need an ensemble of one replicate (they may set its params)")
        return _SimView(self)

    def replicate(self, index: int) -> State:
        """The state of one replicate (device arrays)."""
        return unstack_state(self.state, index)


class _SimView:
    """What a host policy sees of a one-replicate ensemble: the Simulation attributes it uses."""

    def __init__(self, ens: Ensemble):
        self._ens = ens
        self.model = ens.model
        self.seed = ens.seeds[0]
        self.root = ens.roots[0]

    @property
    def step(self) -> int:
        return self._ens.step

    @property
    def state(self) -> State:
        return self._ens.replicate(0)

    @property
    def params(self) -> dict:
        return self._ens.params

    @property
    def schedule(self) -> dict[str, np.ndarray]:
        return {k: v[0] for k, v in self._ens.schedule.items()}

    def set_param(self, name: str, value: Any) -> None:
        self._ens.set_param(name, value)
