"""What a model is, to the engine: pure substeps plus on-device reducers.

The engine knows nothing about epidemics or posts. A model hands it
- ``substeps``: pure functions ``(state, params, key) -> state`` composed in order
  (observe -> policy -> transition);
- ``metrics``: ``(state, params) -> {name: scalar}`` reduced on the device each step;
- ``sample``: optional ``(state, params, idx) -> {name: array[k]}`` per-agent rows for
  a fixed set of sampled agents;
- ``events``: optional ``(state, params) -> {name: array[cap]}`` with a ``valid`` mask,
  a fixed-capacity append-only trace of what happened this step;
- for archetype policies: ``features`` (per-agent small-integer codes to group on, with
  their labels in ``labels``), ``stats`` (per-agent numbers averaged per archetype for
  prompts) and ``decision_targets`` (per-agent float params a policy may fill; NaN means
  "use the model's heuristic", so a failed LLM call falls back per agent). A target listed in
  ``decision_logits`` takes a logit, which the model maps to behaviour itself (with fittable
  parameters, on the device); the others take a per-step probability.

``params`` is a flat dict of arrays. Names listed in a run's schedule are replaced,
inside the scan, by their value at the current step, so interventions are data.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp

State = Any  # any pytree of arrays
Params = Mapping[str, Any]
Substep = Callable[[State, Params, jax.Array], State]


@dataclass(frozen=True)
class Model:
    name: str
    substeps: tuple[Substep, ...]
    metrics: Callable[[State, Params], dict[str, jax.Array]]
    sample: Callable[[State, Params, jax.Array], dict[str, jax.Array]] | None = None
    events: Callable[[State, Params], dict[str, jax.Array]] | None = None
    # code -> label tables for categorical sample/event/feature columns, written to the manifest
    labels: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    features: Callable[[State, Params], dict[str, jax.Array]] | None = None
    stats: Callable[[State, Params], dict[str, jax.Array]] | None = None
    decision_targets: tuple[str, ...] = ()
    decision_logits: tuple[str, ...] = ()

    def step(self, state: State, params: Params, key: jax.Array) -> State:
        from .rng import substep_key

        for i, substep in enumerate(self.substeps):
            state = substep(state, params, substep_key(key, i))
        return state


def replacement_param(params: Params, name: str, value) -> jax.Array:
    """``value`` as a stand-in for ``params[name]``: same shape and dtype, so no recompilation."""
    if name not in params:
        raise KeyError(f"unknown parameter {name!r}")
    old = params[name]
    new = jnp.asarray(value, dtype=jnp.asarray(old).dtype)
    if new.shape != jnp.shape(old):
        raise ValueError(f"parameter {name!r}: shape {new.shape} != {jnp.shape(old)}")
    return new
