"""Graph message passing whose cost follows the work that matters.

``neighbor_sum`` sums a value over each node's neighbours, counting only active
sources. When few sources are active (an epidemic's early and late phases) it
pushes from the active sources' edges alone; otherwise it pulls densely over all
edges. Both branches are compiled; ``lax.switch`` runs one per step.

Under ``jax.vmap`` over replicates (``simcore.engine.ensemble``), a data-dependent
switch would turn into a select that runs every branch. ``neighbor_sum`` has its
own batching rule instead (``jax.custom_batching.custom_vmap``): when the graph
is shared and only the values are batched, the R replicates are treated as one
population of R disjoint copies. The branch index becomes the cheapest tier
whose R-fold buffers hold all replicates' active sources (one unbatched
switch), the dense pull is one gather of
``[N, R]`` rows and one sorted segment sum, and the sparse push collects the
active sources of all replicates in one buffer of R times the capacity. Each
replicate's sums add the same terms in the same order as a single run, and the
sparse push and dense pull add a node's active neighbours in the same
(ascending, CSR) order, so results per replicate are bit for bit those of
sequential runs on CPU whichever branch runs (``tests/test_ensemble_batched.py``).
"""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from jax.custom_batching import custom_vmap

from .halo import halo_pull, row_sum


def edge_rows(indptr: jax.Array, n_edges: int) -> jax.Array:
    """Row (destination) of each CSR entry; sorted, so dense pulls use sorted segment sums."""
    n = indptr.shape[0] - 1
    deg = indptr[1:] - indptr[:-1]
    return jnp.repeat(jnp.arange(n, dtype=jnp.int32), deg, total_repeat_length=n_edges)


def _dense(indices, rows, x, active):
    """Pull over every edge. ``x``/``active``: ``[N]``, or ``[N, R]`` for R replicates (one gather of rows)."""
    n = x.shape[0]
    src = jnp.where(active, x, 0).astype(jnp.float32)
    # indices are in range by construction (padding points at 0): skipping XLA's bounds
    # normalisation saves a live int32 copy of ``indices`` per chunk (~30% of the pull's bytes)
    gathered = src.at[indices].get(mode="promise_in_bounds", wrap_negative_indices=False)
    return row_sum(gathered, rows, n)


def active_indices(mask: jax.Array, size: int, fill_value: int) -> jax.Array:
    """``jnp.nonzero(mask, size=size, fill_value=fill_value)[0]`` for a 1-D mask, as int32, exactly.

    Why not ``jnp.nonzero``: it takes a prefix sum over the whole mask, and XLA's CPU prefix sum
    costs ~4.4 ns per element (0.6 ms of a 1.4 ms SEIR step at 100k agents). Here the mask is
    packed into 32-bit words (a reduction), the prefix sum runs over the words' popcounts (N/32),
    and each of the ``size`` outputs finds its word by binary search and its bit by halving
    popcounts: O(N/32 + size * log N), 6-8x faster on CPU at 100k-1M, same result.
    """
    n = mask.shape[0]
    bits = jnp.pad(mask.astype(jnp.uint32), (0, (-n) % 32)).reshape(-1, 32)
    words = jnp.sum(bits << jnp.arange(32, dtype=jnp.uint32), axis=1, dtype=jnp.uint32)
    counts = jax.lax.population_count(words).astype(jnp.int32)
    ends = jnp.cumsum(counts)  # set bits up to and including each word
    k = jnp.arange(size, dtype=jnp.int32)
    w = jnp.minimum(jnp.searchsorted(ends, k, side="right", method="scan_unrolled").astype(jnp.int32),
                    words.shape[0] - 1)
    rank = k - (ends[w] - counts[w])  # which set bit of word w is the k-th overall
    word, pos = words[w], jnp.zeros(size, jnp.int32)
    for width in (16, 8, 4, 2, 1):
        low = jax.lax.population_count(word & jnp.uint32((1 << width) - 1)).astype(jnp.int32)
        up = rank >= low
        rank = jnp.where(up, rank - low, rank)
        word = jnp.where(up, word >> width, word)
        pos = jnp.where(up, pos + width, pos)
    return jnp.where(k < ends[-1], w * 32 + pos, jnp.int32(fill_value))


def _sparse(indptr, indices, x, active, node_capacity, edge_capacity):
    """Push from active sources. ``x``/``active``: ``[N]``, or ``[R, N]`` for R disjoint replicates
    (capacities then hold all replicates' active nodes and edges together)."""
    reps, n = (1, x.shape[0]) if x.ndim == 1 else x.shape
    total_n = reps * n
    flat_x, flat_active = x.reshape(-1), active.reshape(-1)
    ids = active_indices(flat_active, node_capacity, total_n)
    real = ids < total_n
    ids_c = jnp.where(real, ids, 0)
    local = ids_c if reps == 1 else ids_c % n  # node within its replicate
    deg = jnp.where(real, indptr[local + 1] - indptr[local], 0)
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
    src_local = local[slot]
    pos = jnp.where(valid, indptr[src_local] + (e - start[slot]), 0)
    dst = indices[pos] if reps == 1 else indices[pos] + (src - src_local)  # same replicate as the source
    dst = jnp.where(valid, dst, total_n)
    out = jnp.zeros(total_n, jnp.float32).at[dst].add(flat_x[src].astype(jnp.float32), mode="drop")
    return out.reshape(x.shape)  # [N], or [R, N] (also for a batch of one)


def _tier_sizes(node_capacity: int, edge_capacity: int, tiers: int) -> list[tuple[int, int]]:
    """Buffer sizes from the capacity down to 1/16 of it, spaced evenly in log: 3 tiers step by 4, 5 by 2."""
    if tiers < 2:
        return [(node_capacity, edge_capacity)]
    f = [16.0 ** (k / (tiers - 1)) for k in range(tiers)]
    return sorted({(max(int(node_capacity / x), 1), max(int(edge_capacity / x), 1)) for x in f})


def _tier(indptr, active, sizes) -> jax.Array:
    """Index of the cheapest branch that fits ``active`` (``len(sizes)`` = dense); batched over leading axes."""
    deg = indptr[1:] - indptr[:-1]
    n_active = jnp.sum(active, axis=-1, dtype=jnp.int32)
    active_edges = jnp.sum(jnp.where(active, deg, 0), axis=-1, dtype=indptr.dtype)
    misses = [((n_active > nc) | (active_edges > ec)).astype(jnp.int32) for nc, ec in sizes]
    return sum(misses)


def _tiered(node_capacity: int, edge_capacity: int, tiers: int):
    """The tiered sparse/dense sum as a function of (indptr, indices, rows, x, active), with a
    batching rule that keeps one real switch for a batch of replicates (see the module docstring)."""
    sizes = _tier_sizes(node_capacity, edge_capacity, tiers)

    def single(indptr, indices, rows, x, active):
        branches = [partial(_sparse, indptr, indices, x, active, nc, ec) for nc, ec in sizes]
        branches.append(partial(_dense, indices, rows, x, active))
        return jax.lax.switch(_tier(indptr, active, sizes), branches)

    fn = custom_vmap(single)

    @fn.def_vmap
    def _batched(axis_size, in_batched, indptr, indices, rows, x, active):
        graph_batched = any(in_batched[:3])
        if graph_batched:  # a graph per replicate: no shared structure to exploit
            return jax.vmap(single, in_axes=tuple(0 if b else None for b in in_batched))(
                indptr, indices, rows, x, active), True
        x = x if in_batched[3] else jnp.broadcast_to(x, (axis_size, *x.shape))
        active = active if in_batched[4] else jnp.broadcast_to(active, (axis_size, *active.shape))
        # one unbatched index: the cheapest tier whose buffers (R times a replicate's) hold the
        # active nodes and edges of all replicates together (the result does not depend on the
        # branch, see above)
        deg = indptr[1:] - indptr[:-1]
        n_active = jnp.sum(active, dtype=jnp.int32)
        active_edges = jnp.sum(jnp.where(active, deg, 0), dtype=indptr.dtype)
        index = sum(((n_active > axis_size * nc) | (active_edges > axis_size * ec)).astype(jnp.int32)
                    for nc, ec in sizes)
        branches = [partial(_sparse, indptr, indices, x, active, axis_size * nc, axis_size * ec) for nc, ec in sizes]
        branches.append(lambda: _dense(indices, rows, x.T, active.T).T)
        return jax.lax.switch(index, branches), True

    return _reverse_mode(fn)


def _reverse_mode(fn):
    """``fn`` (the tiered sum) with a reverse-mode derivative, which ``custom_vmap`` does not provide.

    ``y[j] = sum of x[i] over active neighbours i of j`` is linear in ``x``; on a symmetric graph its
    transpose is ``x_bar[i] = active[i] * sum of y_bar[j] over all neighbours j of i``: one dense pull.
    So the gradient path (``simcore.calibrate``) can step with sparse pushes forward.
    """
    @jax.custom_vjp
    def f(indptr, indices, rows, x, active):
        return fn(indptr, indices, rows, x, active)

    def fwd(indptr, indices, rows, x, active):
        return fn(indptr, indices, rows, x, active), (indices, rows, active)

    def bwd(res, y_bar):
        indices, rows, active = res
        back = _dense(indices, rows, y_bar, jnp.ones(active.shape, bool))
        return None, None, None, jnp.where(active, back, 0.0).astype(y_bar.dtype), None

    f.defvjp(fwd, bwd)
    return f


@partial(jax.jit, static_argnames=("node_capacity", "edge_capacity", "tiers"))
def neighbor_sum(indptr, indices, rows, x, active, *, node_capacity: int, edge_capacity: int, tiers: int = 3,
                 halo=None):
    """``y[j] = sum(x[i] for i in neighbours(j) if active[i])`` on a symmetric CSR graph.

    ``rows`` is :func:`edge_rows` of the graph (4 bytes per edge, kept with the graph).
    The sparse push costs O(N) to find active sources plus O(buffer) for their edges,
    whatever the number actually active, so buffers come in ``tiers`` sizes (from the capacity down to
    1/16 of it) and the smallest that fits runs; above ``edge_capacity`` active edges (or
    ``node_capacity`` active nodes) the dense O(E) pull runs. More tiers keep the buffer that runs
    closer to the load, but each is a compiled branch whose buffers XLA's CPU runtime keeps: 5 instead
    of 3 made SEIR at 1M agents 3-7 % faster and cost the 8.4M epidemic 0.3 GB of RSS for no speed.
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
    if halo is not None:
        deg = indptr[1:] - indptr[:-1]
        n_active = jnp.sum(active, dtype=jnp.int32)
        active_edges = jnp.sum(jnp.where(active, deg, 0), dtype=indptr.dtype)
        sizes = _tier_sizes(node_capacity, edge_capacity, tiers)
        branches = [partial(_sparse, indptr, indices, x, active, nc, ec) for nc, ec in sizes]
        branches.append(dense)
        return jax.lax.switch(_tier(indptr, active, sizes), branches)
    return _tiered(node_capacity, edge_capacity, tiers)(indptr, indices, rows, x, active)


def group_sum(values: jax.Array, group: jax.Array, n_groups: int, *, sorted_groups: bool = False) -> jax.Array:
    """Sum per group code (segment reduction); values may carry trailing axes."""
    return jax.ops.segment_sum(values, group, num_segments=n_groups, indices_are_sorted=sorted_groups)
