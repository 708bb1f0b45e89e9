"""The scanned runner: chunks of steps under ``lax.scan``, reductions back to the host.

Between chunks only per-step metrics, the sampled agents' rows and the event trace
leave the device. Host-side policies (LLM archetype rounds) run at chunk
boundaries and may replace parameter arrays of the same shape, which never
triggers a recompilation.

The engine steps (:meth:`Simulation.advance`); it has no run loop. The loop over
chunks, with its host-policy cadence, is :func:`simcore.session.drive`, the one
loop every run uses (``simcore run``/``resume``, experiment arms, live server runs).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from .model import Model, Params, State, replacement_param
from .rng import root_key, step_key
from .schedule import extend_schedule
from .sharding import place


@dataclass
class Chunk:
    """What one chunk of steps sends back to the host (numpy arrays, leading axis = step)."""

    steps: np.ndarray
    metrics: dict[str, np.ndarray]
    samples: dict[str, np.ndarray] = field(default_factory=dict)
    events: dict[str, np.ndarray] = field(default_factory=dict)
    seconds: float = 0.0


class HostPolicy(Protocol):
    """Runs on the host before every step that is a multiple of ``every`` (see :func:`simcore.session.drive`).

    Optional methods the session calls where a policy has them: ``state_dict()`` /
    ``load_state_dict(blob, arrays)`` (checkpoints), ``finish(sim)`` (at the end of a run,
    e.g. to land a pipelined round) and ``close()``.
    """

    every: int

    def update(self, sim: "Simulation") -> None: ...


def step_body(model: Model, root: jax.Array, params: Params, sample_idx: jax.Array | None = None, *,
              outputs: bool = True) -> Callable:
    """One step as a scan body ``(state, t, row) -> (state, out)``: the engine's only one.

    :class:`Simulation` scans it over a chunk; :class:`~simcore.engine.ensemble.Ensemble`
    scans it too (``outputs=False``: metrics only) and ``vmap``s the scan over replicates,
    so an ensemble is the batched form of the same chunk. ``out`` holds ``metrics`` and,
    with ``outputs``, the model's ``samples`` and ``events``.
    """

    def go(state, t, row):
        p = {**params, **row, "step": t}
        state = model.step(state, p, step_key(root, t))
        out = {"metrics": model.metrics(state, p)}
        if outputs and model.sample is not None:
            out["samples"] = model.sample(state, p, sample_idx)
        if outputs and model.events is not None:
            out["events"] = model.events(state, p)
        return state, out

    return go


class Simulation:
    """A model, its state and parameters, stepped in compiled chunks.

    ``schedule`` holds one row per step for each scheduled parameter; inside the
    scan, ``params[name]`` is that row. ``params['step']`` is the current step.
    """

    def __init__(
        self,
        model: Model,
        state: State,
        params: Params,
        schedule: Mapping[str, np.ndarray] | None = None,
        *,
        seed: int = 0,
        chunk_size: int = 32,
        sample_idx: np.ndarray | None = None,
        step: int = 0,
    ):
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self.model = model
        self.state = state
        self.params = dict(params)
        clash = set(self.params) & set(schedule or {})
        if clash:
            raise ValueError(f"parameters both static and scheduled: {sorted(clash)}")
        self.schedule = {k: np.asarray(v, dtype=np.float32) for k, v in (schedule or {}).items()}
        self.seed = int(seed)
        self.root = root_key(self.seed)
        self.chunk_size = int(chunk_size)
        self.step = int(step)
        self.sample_idx = jnp.asarray(
            np.zeros(0, np.int32) if sample_idx is None else np.asarray(sample_idx, np.int32)
        )
        self.mesh = None  # set by simcore.engine.sharding.shard_simulation
        # Donation lets XLA update the state in place. Kept off on CPU, where it saves little, so a
        # caller's reference to the initial state (reused across experiment arms) stays valid there.
        donate = (0,) if jax.default_backend() != "cpu" else ()
        self._compiled = jax.jit(self._chunk, static_argnums=(5,), donate_argnums=donate)

    # -- the compiled part -------------------------------------------------
    def _chunk(self, state, params, rows, t0, sample_idx, length):
        go = step_body(self.model, self.root, params, sample_idx)

        def body(state, xs):
            return go(state, *xs)

        ts = t0 + jnp.arange(length, dtype=jnp.int32)
        state, out = jax.lax.scan(body, state, (ts, rows))
        if self.mesh is not None:
            # the host reads these on every process, so every process must hold all of them
            whole = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec())
            out = jax.lax.with_sharding_constraint(out, whole)
        return state, out

    # -- host API ------------------------------------------------------------
    def _rows(self, start: int, length: int) -> dict[str, np.ndarray]:
        if self.schedule and any(len(t) < start + length for t in self.schedule.values()):
            self.schedule = extend_schedule(self.schedule, start + length)
        return {k: v[start : start + length] for k, v in self.schedule.items()}

    def advance(self, n_steps: int) -> Chunk:
        """Run ``n_steps`` steps as one compiled scan and bring back the reductions."""
        if n_steps < 1:
            raise ValueError(f"n_steps must be >= 1, got {n_steps}")
        t0 = time.perf_counter()
        start = self.step
        rows = self._rows(start, n_steps)
        state, out = self._compiled(self.state, self.params, rows, jnp.int32(start), self.sample_idx, n_steps)
        self.state = state
        host = jax.device_get(out)
        self.step = start + n_steps
        return Chunk(
            steps=np.arange(start, start + n_steps, dtype=np.int64),
            metrics={k: np.asarray(v) for k, v in host["metrics"].items()},
            samples={k: np.asarray(v) for k, v in host.get("samples", {}).items()},
            events={k: np.asarray(v) for k, v in host.get("events", {}).items()},
            seconds=time.perf_counter() - t0,
        )

    def compile_chunk(self, n_steps: int | None = None):
        """The compiled chunk ``advance(n_steps)`` would run, without running it (for memory and HLO analysis)."""
        n_steps = n_steps or self.chunk_size
        rows = self._rows(self.step, n_steps)
        lowered = self._compiled.lower(self.state, self.params, rows, jnp.int32(self.step), self.sample_idx, n_steps)
        return lowered.compile()

    def set_param(self, name: str, value: Any) -> None:
        """Replace a static parameter with an array of the same shape and dtype (no recompilation)."""
        new = replacement_param(self.params, name, value)
        old = self.params[name]
        if self.mesh is not None and getattr(new, "sharding", None) != old.sharding:
            new = place(new, old.sharding)
        self.params[name] = new

    def intervene(self, param: str, value: float, *, start: int | None = None, end: int | None = None,
                  mode: str = "set", index: int | None = None) -> None:
        """Edit a scheduled parameter from ``start`` (default: the next step) to ``end``."""
        from .schedule import Intervention

        if param not in self.schedule:
            raise KeyError(f"{param!r} is not a scheduled parameter (known: {', '.join(sorted(self.schedule))})")
        start = self.step if start is None else start
        if start < self.step:
            raise ValueError(f"cannot intervene in the past: start {start} < current step {self.step}")
        table = self.schedule[param]
        end = len(table) if end is None else end
        if end > len(table):
            self.schedule = extend_schedule(self.schedule, end)
            table = self.schedule[param]
        Intervention(param=param, start=start, end=end, value=value, mode=mode, index=index).apply(table)
