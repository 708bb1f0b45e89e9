"""Compressed sparse row (CSR) adjacency storage and vectorized construction.

Everything here is numpy on the host; ``CSR`` is a JAX pytree so the engine can
``jax.device_put`` it or pass it straight into jitted functions.

Memory model: ``indices`` holds one int32 (4 B) per stored *directed* entry, and
``indptr`` one int32 (4 B, int64 = 8 B once there are >= 2**31 entries) per
node plus one.  Undirected graphs are stored symmetric, so an undirected edge
costs 8 B.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

__all__ = ["CSR", "from_edges", "to_edges", "union"]

_INT32_MAX = np.iinfo(np.int32).max


@dataclasses.dataclass(frozen=True, eq=False)
class CSR:
    """Adjacency in CSR form: row ``i``'s neighbours are ``indices[indptr[i]:indptr[i+1]]``.

    ``indptr`` is int32 (int64 once ``n_edges >= 2**31``), shape ``(n_nodes + 1,)``;
    ``indices`` is int32, shape ``(n_edges,)``. ``n_edges`` counts stored
    directed entries: an undirected graph is stored symmetric, so each
    undirected edge is counted twice and the same arrays serve as out- and
    in-neighbour lists.

    Memory: ``4 * n_edges + 4 * (n_nodes + 1)`` bytes (``8 *`` for an int64 indptr).

    ``eq=False`` because elementwise array comparison has no single truth
    value; compare the arrays explicitly. No validation runs in
    ``__post_init__`` since JAX rebuilds pytrees with tracers and placeholders.
    """

    indptr: np.ndarray
    indices: np.ndarray

    @property
    def n_nodes(self) -> int:
        """Number of nodes (rows)."""
        return int(self.indptr.shape[0]) - 1

    @property
    def n_edges(self) -> int:
        """Number of stored directed entries (twice the undirected edge count)."""
        return int(self.indices.shape[0])

    @property
    def nbytes(self) -> int:
        """Bytes held by ``indptr`` and ``indices``."""
        return int(self.indptr.nbytes) + int(self.indices.nbytes)

    def degree(self) -> np.ndarray:
        """Row lengths as int32, shape ``(n_nodes,)``; allocates 4 B per node.

        Written with slicing rather than ``np.diff`` so it also works on JAX
        arrays inside jitted code.
        """
        return (self.indptr[1:] - self.indptr[:-1]).astype(np.int32)

    def __repr__(self) -> str:
        try:
            return f"CSR(n_nodes={self.n_nodes}, n_edges={self.n_edges}, nbytes={self.nbytes})"
        except (AttributeError, TypeError):
            # Pytree placeholders (not arrays) may sit in the fields.
            return f"CSR(indptr={self.indptr!r}, indices={self.indices!r})"


jax.tree_util.register_dataclass(CSR, data_fields=["indptr", "indices"], meta_fields=[])


def _indptr_dtype(n_entries: int):
    return np.int64 if n_entries >= 2**31 else np.int32


def _check_n_nodes(n_nodes: int) -> int:
    n_nodes = int(n_nodes)
    if n_nodes < 0:
        raise ValueError(f"n_nodes must be >= 0, got {n_nodes}")
    if n_nodes > _INT32_MAX:
        raise ValueError(f"n_nodes={n_nodes} does not fit int32 node ids")
    return n_nodes


def _csr_from_counts(counts: np.ndarray, indices: np.ndarray) -> CSR:
    """Wrap row counts and already row-ordered int32 indices into a CSR."""
    indptr = np.zeros(counts.shape[0] + 1, dtype=_indptr_dtype(indices.shape[0]))
    np.cumsum(counts, out=indptr[1:])
    return CSR(indptr=indptr, indices=np.ascontiguousarray(indices, dtype=np.int32))


def _split_sorted_keys(key: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted ``row * n + col`` int64 keys -> (row counts int64, cols int32).

    Row bounds come from a binary search (n queries) instead of an int64
    division per key; the column subtraction is done in wrapping int32, which
    is exact because the true result fits int32.
    """
    bounds = np.arange(n + 1, dtype=np.int64) * n
    counts = np.diff(np.searchsorted(key, bounds))
    cols = key.astype(np.int32)
    cols -= np.repeat(bounds[:-1].astype(np.int32), counts)
    return counts, cols


def _dedupe_sorted(key: np.ndarray) -> np.ndarray:
    if key.shape[0] < 2:
        return key
    keep = np.empty(key.shape[0], dtype=bool)
    keep[0] = True
    np.not_equal(key[1:], key[:-1], out=keep[1:])
    return key if keep.all() else key[keep]


def _row_positions(indptr_out: np.ndarray, counts: np.ndarray, shift: np.ndarray | None) -> np.ndarray:
    """Output slots for entries listed row by row (``counts[r]`` entries for row ``r``),
    placed at ``indptr_out[r] + shift[r] + j`` for the ``j``-th entry of row ``r``."""
    src_ptr = np.zeros(counts.shape[0] + 1, dtype=np.int64)
    np.cumsum(counts, out=src_ptr[1:])
    base = indptr_out[:-1].astype(np.int64) - src_ptr[:-1]
    if shift is not None:
        base += shift
    return np.arange(src_ptr[-1], dtype=np.int64) + np.repeat(base, counts)


def _symmetric_from_upper(n: int, counts_up: np.ndarray, cols: np.ndarray, loops_twice: bool) -> CSR:
    """Symmetric CSR from upper-triangle entries (``col >= row``) sorted by (row, col),
    given as row counts plus int32 columns.

    The mirrored (lower) part needs one sort of its own keys; concatenating
    lower (col < row) then upper (col >= row) keeps each row sorted without
    re-sorting all 2E entries.
    """
    rows = np.repeat(np.arange(n, dtype=np.int32), counts_up)
    strict = rows != cols
    if loops_twice or strict.all():
        t_rows, t_cols = cols, rows
    else:
        t_rows, t_cols = cols[strict], rows[strict]
    del strict
    key_t = t_rows.astype(np.int64)
    key_t *= n
    key_t += t_cols
    del t_rows, t_cols, rows
    key_t.sort()
    counts_lo, lo_cols = _split_sorted_keys(key_t, n)
    del key_t

    counts = counts_lo + counts_up
    total = int(counts.sum())
    indptr = np.zeros(n + 1, dtype=_indptr_dtype(total))
    np.cumsum(counts, out=indptr[1:])
    indices = np.empty(total, dtype=np.int32)
    indices[_row_positions(indptr, counts_lo, None)] = lo_cols
    del lo_cols
    indices[_row_positions(indptr, counts_up, counts_lo)] = cols
    return CSR(indptr=indptr, indices=indices)


def from_edges(
    src,
    dst,
    n_nodes: int,
    *,
    symmetric: bool = True,
    dedupe: bool = True,
    drop_self_loops: bool = True,
) -> CSR:
    """Build a CSR from an edge list; rows come out sorted by source, each row sorted.

    Args:
        src, dst: integer arrays of equal length E with ids in ``[0, n_nodes)``.
        n_nodes: number of nodes (must fit int32).
        symmetric: also store every edge reversed (undirected graph).
        dedupe: drop repeated entries (np.unique-style on an int64 ``row*n+col`` key).
        drop_self_loops: drop ``u == v`` entries.  A kept self loop is stored
            once when ``dedupe`` else twice (it is its own reverse).

    Cost: one int64 sort of E keys, plus one of <= E mirrored keys when
    ``symmetric``. Peak memory roughly 40 B per input edge (keys, their
    mirror, positions, output), i.e. a few GB for 100M edges.
    """
    n = _check_n_nodes(n_nodes)
    src = np.asarray(src)
    dst = np.asarray(dst)
    if src.shape != dst.shape or src.ndim != 1:
        raise ValueError(f"src and dst must be 1-D of equal length, got {src.shape} and {dst.shape}")
    if src.size and not (np.issubdtype(src.dtype, np.integer) and np.issubdtype(dst.dtype, np.integer)):
        raise TypeError(f"edge arrays must be integer, got {src.dtype} and {dst.dtype}")
    if src.size:
        lo = min(int(src.min()), int(dst.min()))
        hi = max(int(src.max()), int(dst.max()))
        if lo < 0 or hi >= n:
            raise ValueError(f"node ids must lie in [0, {n}), found range [{lo}, {hi}]")
    if drop_self_loops:
        loops = src == dst
        if loops.any():
            keep = ~loops
            src, dst = src[keep], dst[keep]
        del loops

    if symmetric:
        # Canonical (min, max) keys: the mirror is built from them, halving the sort.
        key = np.minimum(src, dst).astype(np.int64)
        key *= n
        key += np.maximum(src, dst)
    else:
        key = src.astype(np.int64)
        key *= n
        key += dst
    key.sort()
    if dedupe:
        key = _dedupe_sorted(key)
    counts, cols = _split_sorted_keys(key, n)
    del key
    if symmetric:
        return _symmetric_from_upper(n, counts, cols, loops_twice=not dedupe)
    return _csr_from_counts(counts, cols)


def _row_ids(csr: CSR) -> np.ndarray:
    return np.repeat(np.arange(csr.n_nodes, dtype=np.int32), csr.degree())


def to_edges(csr: CSR) -> tuple[np.ndarray, np.ndarray]:
    """Directed entry list ``(src, dst)`` as int32 arrays of length ``n_edges``.

    A symmetric CSR yields every undirected edge twice. ``dst`` is
    ``csr.indices`` itself (no copy); ``src`` costs 4 B per entry.
    """
    return _row_ids(csr), np.asarray(csr.indices)


def union(*csrs: CSR, dedupe: bool = True) -> CSR:
    """Merge layers on the same node set into one CSR (rows sorted).

    With ``dedupe`` an entry present in several layers is kept once; without,
    multiplicities add up (useful as contact counts). Self loops are kept as
    stored. Cost: one int64 sort of all entries, ~30 B per entry peak.
    """
    if not csrs:
        raise ValueError("union needs at least one CSR")
    n = csrs[0].n_nodes
    if any(c.n_nodes != n for c in csrs):
        raise ValueError(f"all layers must have the same n_nodes, got {[c.n_nodes for c in csrs]}")
    src = np.concatenate([_row_ids(c) for c in csrs])
    dst = np.concatenate([np.asarray(c.indices) for c in csrs])
    return from_edges(src, dst, n, symmetric=False, dedupe=dedupe, drop_self_loops=False)
