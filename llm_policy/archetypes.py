"""Archetypes on the device: integer codes, segment statistics, broadcast back to agents.

An archetype is one combination of the ``group_by`` features (mixed-radix code, so
no Python loop over agents and no host-side group-by). Only the non-empty
archetypes leave the device. Decisions come back as one value per archetype and
are broadcast to every member as a per-agent array.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np


@dataclass
class Groups:
    """The host's view of one grouping: non-empty archetypes and their mean statistics."""

    group_by: tuple[str, ...]
    levels: tuple[int, ...]
    codes: np.ndarray  # non-empty archetype codes, ascending
    sizes: np.ndarray  # members per archetype
    means: dict[str, np.ndarray]  # statistic -> mean per archetype
    agent_code: jax.Array  # per-agent code, kept on the device for the broadcast

    @property
    def n_archetypes(self) -> int:
        return int(np.prod(self.levels))

    def decode(self, code: int) -> dict[str, int]:
        """Feature -> level of an archetype code (the inverse of the mixed radix)."""
        out = {}
        for name, n in zip(reversed(self.group_by), reversed(self.levels)):
            out[name] = int(code % n)
            code //= n
        return dict(reversed(list(out.items())))


@partial(jax.jit, static_argnames=("levels",))
def _group(features: tuple, stats: dict, levels: tuple):
    code = jnp.zeros(features[0].shape, jnp.int32)
    for f, n in zip(features, levels):
        code = code * n + f.astype(jnp.int32)
    n_arch = int(np.prod(levels))
    sizes = jax.ops.segment_sum(jnp.ones_like(code), code, num_segments=n_arch)
    sums = {k: jax.ops.segment_sum(v.astype(jnp.float32), code, num_segments=n_arch) for k, v in stats.items()}
    return code, sizes, sums


def group(features: dict, stats: dict, group_by: tuple[str, ...], levels: tuple[int, ...]) -> Groups:
    """Group agents by ``group_by`` (each feature's codes must lie in [0, level))."""
    code, sizes, sums = _group(tuple(features[name] for name in group_by), stats, tuple(levels))
    sizes, sums = jax.device_get((sizes, sums))
    nonempty = np.flatnonzero(sizes)
    denom = sizes[nonempty].astype(np.float64)
    means = {k: np.asarray(v)[nonempty] / denom for k, v in sums.items()}
    return Groups(tuple(group_by), tuple(levels), nonempty, np.asarray(sizes)[nonempty], means, code)


@jax.jit
def _broadcast(table, agent_code, key, heterogeneity):
    value = table[agent_code]
    # per-agent heterogeneity as logit noise keeps values in (0, 1); NaN (fallback) stays NaN
    logit = jnp.log(value) - jnp.log1p(-value)
    noisy = jax.nn.sigmoid(logit + heterogeneity * jax.random.normal(key, value.shape))
    return jnp.where((heterogeneity > 0) & (value > 0) & (value < 1), noisy, value)


def broadcast(groups: Groups, values: np.ndarray, key: jax.Array, heterogeneity: float = 0.0) -> jax.Array:
    """Per-agent array from one value per non-empty archetype (NaN = fall back to the heuristic)."""
    table = np.full(groups.n_archetypes, np.nan, np.float32)
    table[groups.codes] = values
    return _broadcast(jnp.asarray(table), groups.agent_code, key, jnp.float32(heterogeneity))
