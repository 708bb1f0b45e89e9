"""Contact layers on the device: CSR plus the row of each entry, for dense pulls.

Memory: 8 bytes per stored (directed) entry — 4 for the neighbour id, 4 for its
row — plus 4 bytes per agent for ``indptr``. Undirected contacts are stored
twice, so an undirected contact costs 16 bytes.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import jax
import jax.numpy as jnp
import numpy as np

from ..engine.halo import HaloPlan, build_halo
from ..engine.ops import edge_rows, neighbor_sum
from ..engine.sharding import shard_tree

EDGE_PAD = 128  # entries per layer are a multiple of this, so any power-of-two device count divides them
INT32_MAX = 2**31 - 1  # entries per layer: indices are int32 (jax_enable_x64 is off)


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class Layer:
    indptr: jax.Array
    indices: jax.Array
    rows: jax.Array
    halo: HaloPlan | None = None  # explicit halo exchange for the dense pull when sharded (run.halo)

    @staticmethod
    def from_csr(csr, pad_to: int = EDGE_PAD) -> "Layer":
        """Entries are padded to a multiple of ``pad_to`` so they split evenly over devices.

        Padding rows point one past the last agent: segment sums drop them, and the
        sparse path never reaches them (it walks ``indptr``).
        """
        n = int(csr.indptr.shape[0]) - 1
        e = int(csr.indices.shape[0])
        pad = (-e) % pad_to
        if e + pad > INT32_MAX:
            # jnp.asarray would silently wrap int64 offsets into int32 (jax_enable_x64 is off)
            raise ValueError(f"graph: {e + pad:,} stored contacts in one layer exceed the int32 index limit "
                             f"({INT32_MAX:,}); use fewer agents or contacts per device layer")
        indptr = jnp.asarray(csr.indptr)
        rows = edge_rows(indptr, e)
        indices = jnp.asarray(csr.indices)
        if pad:
            indices = jnp.concatenate([indices, jnp.zeros(pad, indices.dtype)])
            rows = jnp.concatenate([rows, jnp.full(pad, n, rows.dtype)])
        return Layer(indptr, indices, rows)

    def for_mesh(self, mesh, n_agents: int, halo: bool = False) -> "Layer":
        """This layer on ``mesh``: entries split with their destinations, plus a halo plan if asked."""
        plan = None
        if halo:
            plan = build_halo(np.asarray(self.indptr), np.asarray(self.indices), np.asarray(self.rows), mesh)
        placed = shard_tree((self.indptr, self.indices, self.rows), n_agents, mesh)
        return replace(self, indptr=placed[0], indices=placed[1], rows=placed[2], halo=plan)

    @property
    def n_edges(self) -> int:
        return int(self.indices.shape[0])

    @property
    def nbytes(self) -> int:
        halo = self.halo.nbytes if self.halo is not None else 0
        return int(self.indptr.nbytes + self.indices.nbytes + self.rows.nbytes + halo)

    def pull(self, x: jax.Array, active: jax.Array, capacity: float, tiers: int = 3) -> jax.Array:
        """Sum of ``x`` over active neighbours. ``capacity`` is the fraction of agents/edges the sparse path may
        hold, in ``tiers`` buffer sizes (see :func:`~simcore.engine.ops.neighbor_sum`)."""
        n = x.shape[0]
        node_cap = int(n * capacity) if capacity > 0 else 0
        edge_cap = int(self.n_edges * capacity) if capacity > 0 else 0
        if node_cap < 1 or edge_cap < 1:
            node_cap = edge_cap = 0
        return neighbor_sum(self.indptr, self.indices, self.rows, x, active,
                            node_capacity=node_cap, edge_capacity=edge_cap, tiers=tiers, halo=self.halo)


def seed_infections(key: jax.Array, n: int, fraction: float) -> np.ndarray:
    """Exactly round(fraction * n) distinct agents (at least one)."""
    k = max(1, int(round(fraction * n)))
    return np.asarray(jax.random.choice(key, n, (k,), replace=False))
