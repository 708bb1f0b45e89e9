"""networkx interop for small graphs, plus vectorized induced subgraphs.

networkx stores Python objects per node and edge (hundreds of bytes each), so
it is only for inspection, plotting and cross-checking small graphs; use
``subgraph`` first to cut a large CSR down.
"""

from __future__ import annotations

import numpy as np

from .csr import CSR, _check_n_nodes, _csr_from_counts, from_edges

__all__ = ["to_networkx", "from_networkx", "subgraph"]


def to_networkx(csr: CSR, node_attrs: dict[str, np.ndarray] | None = None, *, max_nodes: int = 200_000):
    """Convert a (symmetric) CSR to an undirected ``networkx.Graph`` on nodes ``0..n-1``.

    ``node_attrs`` maps attribute name -> array of length n; values are stored
    as Python scalars. Every stored entry becomes an undirected edge (a
    symmetric pair collapses to one, so a non-symmetric CSR is symmetrized);
    self loops are kept. Raises ``ValueError`` when ``n_nodes > max_nodes``,
    because networkx needs roughly 0.5-1 KB per node and per edge.
    """
    import networkx as nx  # deferred: only interop needs it

    n = csr.n_nodes
    if n > max_nodes:
        raise ValueError(
            f"to_networkx: graph has {n} nodes, above max_nodes={max_nodes}; networkx costs "
            "~1 KB per node/edge. Take a subgraph() first or raise max_nodes explicitly."
        )
    indptr = np.asarray(csr.indptr)
    indices = np.asarray(csr.indices)
    G = nx.Graph()
    G.add_nodes_from(range(n))
    src = np.repeat(np.arange(n, dtype=np.int64), np.diff(indptr))
    G.add_edges_from(zip(src.tolist(), indices.tolist()))
    for name, values in (node_attrs or {}).items():
        values = np.asarray(values)
        if values.shape[:1] != (n,):
            raise ValueError(f"node attribute {name!r} has shape {values.shape}, expected ({n}, ...)")
        nx.set_node_attributes(G, dict(enumerate(values.tolist())), name)
    return G


def from_networkx(G) -> tuple[CSR, list]:
    """Convert a networkx graph to a symmetric CSR; returns ``(csr, node_ids)``.

    Node ``i`` of the CSR is ``node_ids[i]`` (``list(G.nodes)`` order).
    Directed graphs are symmetrized, parallel edges merged and self loops
    dropped (the ``from_edges`` defaults). Edge attributes are ignored.
    """
    node_ids = list(G.nodes)
    index = {v: i for i, v in enumerate(node_ids)}
    m = G.number_of_edges()
    src = np.fromiter((index[u] for u, _ in G.edges()), dtype=np.int64, count=m)
    dst = np.fromiter((index[v] for _, v in G.edges()), dtype=np.int64, count=m)
    return from_edges(src, dst, len(node_ids)), node_ids


def subgraph(csr: CSR, nodes) -> CSR:
    """Induced subgraph on ``nodes`` (distinct ids), relabelled so ``nodes[i]`` -> ``i``.

    Vectorized: gathers the selected rows and keeps entries whose neighbour is
    selected. Row order within each row is preserved (sorted rows stay sorted
    when ``nodes`` is increasing). Memory: 4 B per node of ``csr`` for the
    relabel map plus ~20 B per entry of the selected rows.
    """
    n = csr.n_nodes
    nodes = np.asarray(nodes, dtype=np.int64).ravel()
    k = _check_n_nodes(nodes.shape[0])
    if k and (nodes.min() < 0 or nodes.max() >= n):
        raise ValueError(f"subgraph node ids must lie in [0, {n})")
    relabel = np.full(n, -1, dtype=np.int32)
    relabel[nodes] = np.arange(k, dtype=np.int32)
    if k and np.count_nonzero(relabel >= 0) != k:
        raise ValueError("subgraph nodes must be distinct")
    indptr = np.asarray(csr.indptr, dtype=np.int64)
    indices = np.asarray(csr.indices)
    starts = indptr[nodes]
    deg = indptr[nodes + 1] - starts
    total = int(deg.sum())
    # Positions of the selected rows' entries: row start + within-row arange.
    first = np.cumsum(deg) - deg
    pos = np.arange(total, dtype=np.int64) + np.repeat(starts - first, deg)
    new_nb = relabel[indices[pos]]
    del pos
    keep = new_nb >= 0
    row = np.repeat(np.arange(k, dtype=np.int32), deg)
    counts = np.bincount(row[keep], minlength=k)
    return _csr_from_counts(counts, new_nb[keep])
