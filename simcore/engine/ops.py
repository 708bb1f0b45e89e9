"""Graph message passing whose cost follows the work that matters.

``neighbor_sum`` sums a value over each node's neighbours, counting only active
sources. When few sources are active (an epidemic's early and late phases) it
pushes from the active sources' edges alone; otherwise it pulls densely over all
edges. Both branches are compiled; ``lax.cond`` runs one per step.
"""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from .halo import halo_pull


def edge_rows(indptr: jax.Array, n_edges: int) -> jax.Array:
    """Row (destination) of each CSR entry; sorted, so dense pulls use sorted segment sums."""
    n = indptr.shape[0] - 1
    deg = indptr[1:] - indptr[:-1]
    return jnp.repeat(jnp.arange(n, dtype=jnp.int32), deg, total_repeat_length=n_edges)


def _dense(indices, rows, x, active):
    n = x.shape[0]
    src = jnp.where(active, x, 0).astype(jnp.float32)
    # indices are in range by construction (padding points at 0): skipping XLA's bounds
    # normalisation saves a live int32 copy of ``indices`` per chunk (~30% of the pull's bytes)
    gathered = src.at[indices].get(mode="promise_in_bounds", wrap_negative_indices=False)
    return jax.ops.segment_sum(gathered, rows, num_segments=n, indices_are_sorted=True)


def _sparse(indptr, indices, x, active, node_capacity, edge_capacity):
    n = x.shape[0]
    ids = jnp.nonzero(active, size=node_capacity, fill_value=n)[0]
    real = ids < n
    ids_c = jnp.where(real, ids, 0)
    deg = jnp.where(real, indptr[ids_c + 1] - indptr[ids_c], 0)
    start = jnp.cumsum(deg) - deg
    total = start[-1] + deg[-1]
    # Each edge slot finds its source by a running max over start markers (cheaper than a search).
    marker = jnp.zeros(edge_capacity, jnp.int32).at[start].max(
        jnp.arange(node_capacity, dtype=jnp.int32), mode="drop"
    )
    slot = jax.lax.cummax(marker)
    e = jnp.arange(edge_capacity, dtype=indptr.dtype)
    valid = e < total
    src = ids_c[slot]
    pos = jnp.where(valid, indptr[src] + (e - start[slot]), 0)
    dst = jnp.where(valid, indices[pos], n)
    return jnp.zeros(n, jnp.float32).at[dst].add(x[src].astype(jnp.float32), mode="drop")


@partial(jax.jit, static_argnames=("node_capacity", "edge_capacity", "tiers"))
def neighbor_sum(indptr, indices, rows, x, active, *, node_capacity: int, edge_capacity: int, tiers: int = 3,
                 halo=None):
    """``y[j] = sum(x[i] for i in neighbours(j) if active[i])`` on a symmetric CSR graph.

    ``rows`` is :func:`edge_rows` of the graph (4 bytes per edge, kept with the graph).
    The sparse push costs O(N) to find active sources plus O(buffer) for their edges,
    whatever the number actually active, so buffers come in ``tiers`` sizes
    (``capacity / 4**k``) and the smallest that fits runs; above ``edge_capacity``
    active edges (or ``node_capacity`` active nodes) the dense O(E) pull runs.
    With a :class:`~simcore.engine.halo.HaloPlan` the dense pull exchanges halos explicitly.
    """
    if halo is not None:
        def dense():
            return halo_pull(halo, x, active)
    else:
        def dense():
            return _dense(indices, rows, x, active)
    if edge_capacity <= 0 or node_capacity <= 0:
        return dense()
    deg = indptr[1:] - indptr[:-1]
    n_active = jnp.sum(active, dtype=jnp.int32)
    active_edges = jnp.sum(jnp.where(active, deg, 0), dtype=indptr.dtype)
    sizes = sorted({(max(node_capacity // 4**k, 1), max(edge_capacity // 4**k, 1)) for k in range(tiers)})
    branches = [partial(_sparse, indptr, indices, x, active, nc, ec) for nc, ec in sizes]
    branches.append(dense)
    misses = [((n_active > nc) | (active_edges > ec)).astype(jnp.int32) for nc, ec in sizes]
    return jax.lax.switch(sum(misses), branches)


def group_sum(values: jax.Array, group: jax.Array, n_groups: int, *, sorted_groups: bool = False) -> jax.Array:
    """Sum per group code (segment reduction); values may carry trailing axes."""
    return jax.ops.segment_sum(values, group, num_segments=n_groups, indices_are_sorted=sorted_groups)
