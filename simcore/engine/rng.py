"""Randomness: one root key per run, the step index folded in.

Because a step's key depends only on (root, step), any step can be re-run or a
run branched from a checkpoint and draw exactly the same numbers.
"""
from __future__ import annotations

import jax


def root_key(seed: int) -> jax.Array:
    return jax.random.key(seed)


def step_key(root: jax.Array, step) -> jax.Array:
    return jax.random.fold_in(root, step)


def substep_key(key: jax.Array, index: int) -> jax.Array:
    return jax.random.fold_in(key, index)


def init_key(root: jax.Array, purpose: int = 0) -> jax.Array:
    """Keys for building the initial state, disjoint from every step key (steps stay < 2**30)."""
    return jax.random.fold_in(root, (1 << 30) + purpose)
