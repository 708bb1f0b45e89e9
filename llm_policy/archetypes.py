"""Archetypes on the device: integer codes, segment statistics, broadcast back to agents.

An archetype is one combination of the ``group_by`` features (mixed-radix code, so
no Python loop over agents and no host-side group-by). Only the non-empty
archetypes leave the device. Decisions come back as one value per archetype and
are broadcast to every member as a per-agent array.

:func:`per_agent` is the other architecture (``policy.architecture: per_agent``): every
agent is its own group of one, so a round makes one call per agent. Its features and
statistics leave the device whole (``4 * (len(group_by) + len(stats))`` bytes per agent),
which is why it is meant for small populations only.
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
    # per_agent only: feature -> level of each group (= agent); codes are then agent indices
    member_levels: dict[str, np.ndarray] | None = None

    @property
    def n_archetypes(self) -> int:
        if self.member_levels is not None:
            return len(self.codes)
        return int(np.prod(self.levels))

    def decode(self, code: int) -> dict[str, int]:
        """Feature -> level of an archetype code (the inverse of the mixed radix; per agent: its own levels)."""
        if self.member_levels is not None:
            return {name: int(self.member_levels[name][code]) for name in self.group_by}
        out = {}
        for name, n in zip(reversed(self.group_by), reversed(self.levels)):
            out[name] = int(code % n)
            code //= n
        return dict(reversed(list(out.items())))


def archetype_code(features, levels) -> jax.Array:
    """Each agent's archetype: the mixed radix of its feature levels, the first feature most significant
    (:meth:`Groups.decode` inverts it). Traceable: the calibration's LLM rounds code agents with it too."""
    code = jnp.zeros(jnp.shape(features[0]), jnp.int32)
    for f, n in zip(features, levels):
        code = code * n + f.astype(jnp.int32)
    return code


@partial(jax.jit, static_argnames=("levels",))
def _group(features: tuple, stats: dict, levels: tuple):
    code = archetype_code(features, levels)
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


def per_agent(features: dict, stats: dict, group_by: tuple[str, ...], levels: tuple[int, ...]) -> Groups:
    """One group per agent (code = agent index): its own ``group_by`` levels and statistics."""
    feats, stats = jax.device_get(({name: features[name] for name in group_by}, dict(stats)))
    n = len(np.asarray(feats[group_by[0]]))
    codes = np.arange(n, dtype=np.int64)
    return Groups(tuple(group_by), tuple(levels), codes, np.ones(n, np.int64),
                  {k: np.asarray(v, np.float64) for k, v in stats.items()}, jnp.arange(n, dtype=jnp.int32),
                  {name: np.asarray(feats[name]).astype(np.int64) for name in group_by})


@jax.jit
def _broadcast_logit(table, agent_code, key, heterogeneity):
    value = table[agent_code]
    return value + heterogeneity * jax.random.normal(key, value.shape)  # NaN (fallback) stays NaN


@jax.jit
def _broadcast(table, agent_code, key, heterogeneity):
    value = table[agent_code]
    # per-agent heterogeneity as logit noise keeps values in (0, 1); NaN (fallback) stays NaN
    logit = jnp.log(value) - jnp.log1p(-value)
    noisy = jax.nn.sigmoid(logit + heterogeneity * jax.random.normal(key, value.shape))
    return jnp.where((heterogeneity > 0) & (value > 0) & (value < 1), noisy, value)


def broadcast(groups: Groups, values: np.ndarray, key: jax.Array, heterogeneity: float = 0.0, *,
              logit: bool = False) -> jax.Array:
    """Per-agent array from one value per non-empty archetype (NaN = fall back to the heuristic).

    ``values`` are probabilities in [0, 1] (per-agent noise is added to their logit), or with
    ``logit=True`` already logits (the noise is added to them directly). Either way a member's
    value is ``sigmoid(logit(v) + heterogeneity * z)``-distributed around its archetype's ``v``.
    """
    table = np.full(groups.n_archetypes, np.nan, np.float32)
    table[groups.codes] = values
    return broadcast_table(jnp.asarray(table), groups.agent_code, key, jnp.float32(heterogeneity), logit=logit)


def broadcast_table(table: jax.Array, agent_code: jax.Array, key: jax.Array, heterogeneity: jax.Array, *,
                    logit: bool = False) -> jax.Array:
    """:func:`broadcast` on the device: ``table[agent_code]`` with each member's noise (traceable; the
    calibration's rounds call it inside their scan, so a fit sees what a run's round sets)."""
    fn = _broadcast_logit if logit else _broadcast
    return fn(table, agent_code, key, heterogeneity)
