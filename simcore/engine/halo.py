"""Explicit halo exchange for the dense neighbour pull on an agent-sharded graph.

Agents are split into D contiguous blocks of B = N / D, one per device, and each
device holds the contact entries of its own agents (entries are sorted by
destination). Left to GSPMD, a pull ``segment_sum(x[indices], rows)`` gathers all
N source values onto every device. With a halo plan each device sends every
other device only the values that device reads: one ``all_to_all`` of D x H
values per device, where H is the largest number of distinct sources that one
block reads from another. For local contact structure (households, workplaces
and schools drawn from contiguous blocks, as in the synthetic populations) H is
a small fraction of B; for a random graph it approaches B, and the exchange
costs what the all-gather costs.

Per step and device: D * H float32 sent and received. Memory: the plan stores,
per stored entry, its source's position in the extended (own + halo) vector and
its local row (8 bytes; 4 more if ``rows`` were dropped), plus D * H int32 send
indices per device.

Results are those of the single-device pull: every row sums the same entries in
the same order (on CPU, bit for bit; on GPUs scatter-adds are unordered anyway).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from .sharding import AXIS, place

ENTRY_PAD = 128


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class HaloPlan:
    send: jax.Array  # int32 [D, D, H]: send[s, d] = local ids on device s that device d reads
    src: jax.Array  # int32 [D, Emax]: entry's source in [own block (B) | halo from device 0 (H) | ...]
    row: jax.Array  # int32 [D, Emax]: entry's local row; B marks padding
    mesh: Mesh = field(metadata=dict(static=True))
    block: int = field(metadata=dict(static=True))
    halo: int = field(metadata=dict(static=True))

    @property
    def nbytes(self) -> int:
        return int(self.send.nbytes + self.src.nbytes + self.row.nbytes)

    def exchange_fraction(self) -> float:
        """Values received per device per pull, as a fraction of what an all-gather brings (N - B)."""
        d = self.send.shape[0]
        return (d - 1) * self.halo / max((d - 1) * self.block, 1)


def build_halo(indptr: np.ndarray, indices: np.ndarray, rows: np.ndarray, mesh: Mesh) -> HaloPlan:
    """Plan the exchange for a CSR graph: ``indptr`` [N+1], ``indices`` and ``rows`` (destination) per entry.

    N must divide evenly over the mesh (``shard_simulation`` checks it first).
    """
    indptr = np.asarray(indptr, np.int64)
    d = int(mesh.devices.size)
    b = (indptr.size - 1) // d
    indices = np.asarray(indices)[: indptr[-1]].astype(np.int64)
    rows = np.asarray(rows)[: indptr[-1]]
    bounds = indptr[np.arange(d + 1) * b]
    counts = np.diff(bounds)
    emax = max(int(-(-counts.max() // ENTRY_PAD) * ENTRY_PAD), ENTRY_PAD)
    edges = np.arange(d + 1, dtype=np.int64) * b

    # distinct sources each device reads, sorted, hence grouped by the device that owns them
    uniq = [np.unique(indices[bounds[t]: bounds[t + 1]]) for t in range(d)]
    cuts = [np.searchsorted(u, edges) for u in uniq]
    h = max([int(c[s + 1] - c[s]) for t, c in enumerate(cuts) for s in range(d) if s != t] + [1])

    send = np.zeros((d, d, h), np.int32)
    src = np.zeros((d, emax), np.int32)
    row = np.full((d, emax), b, np.int32)
    for t in range(d):
        lo, hi = bounds[t], bounds[t + 1]
        ids, u, cut = indices[lo:hi], uniq[t], cuts[t]
        owner = ids // b
        rank = np.searchsorted(u, ids) - cut[owner]  # position among the sources read from ``owner``
        src[t, : hi - lo] = np.where(owner == t, ids - t * b, b + owner * h + rank)
        row[t, : hi - lo] = rows[lo:hi] - t * b
        for s in range(d):
            if s != t:
                send[s, t, : cut[s + 1] - cut[s]] = u[cut[s]: cut[s + 1]] - s * b
    split = NamedSharding(mesh, PartitionSpec(AXIS))
    return HaloPlan(place(send, split), place(src, split), place(row, split), mesh, b, h)


def row_sum(values: jax.Array, rows: jax.Array, n: int) -> jax.Array:
    """Sum of ``values`` per row id (``rows`` sorted, as a CSR's are): the reduction of every pull.

    ``indices_are_sorted`` stays False although the rows are sorted: on an H200 XLA's sorted
    scatter took 3.9 ms for 84M entries (8.4M agents, mean degree 10) against 0.97 ms unsorted,
    97.7 % of a dense SEIR step (benchmarks.gpu profile, docs/benchmarks.md); on CPU both take the
    same time and give the same bits.
    """
    return jax.ops.segment_sum(values, rows, num_segments=n)


def halo_pull(plan: HaloPlan, x: jax.Array, active: jax.Array) -> jax.Array:
    """``y[j] = sum(x[i] for i in neighbours(j) if active[i])``, sharded like ``x``."""

    def local(x, active, send, src, row):
        values = jnp.where(active, x, 0).astype(jnp.float32)
        outgoing = values[send[0]]  # [D, H]: row d goes to device d
        incoming = jax.lax.all_to_all(outgoing, AXIS, 0, 0)  # row s came from device s
        extended = jnp.concatenate([values, incoming.reshape(-1)])
        return row_sum(extended[src[0]], row[0], plan.block)

    spec = PartitionSpec(AXIS)
    return jax.shard_map(local, mesh=plan.mesh, in_specs=(spec,) * 5, out_specs=spec)(
        x, active, plan.send, plan.src, plan.row)
