"""The network view: a small, drawable piece of a run's graph (contact layers, follow rows: the model's
registry entry says which), owned by the run session.

:func:`sample_subgraph`: breadth-first from one agent over every layer, a level at a time (vectorised
per level; only the visited rows are read from the device), capped at ``max_nodes``; then the induced
subgraph and a spring layout computed once with networkx.

:class:`NetworkView` is what a :class:`~simcore.session.RunSession` keeps of it: the subgraph (written
to the run directory at open, :func:`simcore.rundir.write_network`) and each node's state at a step
(appended to the ``network_states`` table now and then, and at close), so a finished or past run
serves the same view from disk (:func:`simcore.rundir.read_network`) as a live one from memory.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

MAX_NODES = 150


def _neighbours(layer, nodes: np.ndarray, per_node: int | None) -> tuple[np.ndarray, np.ndarray]:
    """(source, neighbour) pairs for ``nodes``; at most ``per_node`` neighbours each (the first ones).

    ``layer`` is a CSR (``indptr``/``indices``) or a dense ``[N, K]`` table of neighbour ids, -1 = empty slot;
    only the rows of ``nodes`` are read (from the device, for a device array)."""
    if not hasattr(layer, "indptr"):
        rows = np.asarray(layer[nodes]).astype(np.int64)
        if per_node is not None:
            rank = np.cumsum(rows >= 0, axis=1)
            rows = np.where(rank <= per_node, rows, -1)
        keep = rows >= 0
        return np.repeat(nodes, keep.sum(1)), rows[keep]
    indptr = layer.indptr
    lo = np.asarray(indptr[nodes]).astype(np.int64)
    hi = np.asarray(indptr[nodes + 1]).astype(np.int64)
    deg = hi - lo
    if per_node is not None:
        deg = np.minimum(deg, per_node)
    total = int(deg.sum())
    if total == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    src = np.repeat(nodes, deg)
    offs = np.arange(total) - np.repeat(np.cumsum(deg) - deg, deg)
    pos = np.repeat(lo, deg) + offs
    nbr = np.asarray(layer.indices[pos]).astype(np.int64)
    return src, nbr


def sample_subgraph(layers: Mapping[str, Any], start: int, *, max_nodes: int = 150, per_node: int = 6,
                    seed: int = 0) -> dict[str, Any]:
    """Nodes (agent ids), edges ``[i, j, layer]`` between node positions, and ``x``/``y`` positions."""
    import networkx as nx

    names = list(layers)
    chosen = np.array([start], np.int64)
    frontier = chosen
    while len(chosen) < max_nodes and len(frontier):
        found = [_neighbours(layers[n], frontier, per_node)[1] for n in names]
        nxt = np.unique(np.concatenate(found)) if found else np.zeros(0, np.int64)
        nxt = nxt[~np.isin(nxt, chosen)]
        nxt = nxt[: max_nodes - len(chosen)]
        chosen = np.concatenate([chosen, nxt])
        frontier = nxt
    nodes = np.sort(chosen)
    edges = []
    for li, name in enumerate(names):
        src, nbr = _neighbours(layers[name], nodes, None)
        keep = np.isin(nbr, nodes) & (src != nbr)  # drawn undirected: a follow either way is one edge
        a = np.searchsorted(nodes, src[keep])
        b = np.searchsorted(nodes, nbr[keep])
        i, j = np.minimum(a, b), np.maximum(a, b)
        pairs = np.unique(np.stack([i, j], 1), axis=0) if keep.any() else np.zeros((0, 2), np.int64)
        edges.append(np.concatenate([pairs, np.full((len(pairs), 1), li)], 1))
    edges_arr = np.concatenate(edges) if edges else np.zeros((0, 3), np.int64)
    g = nx.Graph()
    g.add_nodes_from(range(len(nodes)))
    g.add_edges_from(map(tuple, edges_arr[:, :2].tolist()))
    pos = nx.spring_layout(g, seed=seed)
    xy = np.array([pos[i] for i in range(len(nodes))]) if len(nodes) else np.zeros((0, 2))
    return {
        "nodes": nodes.tolist(),
        "x": np.round(xy[:, 0], 4).tolist(),
        "y": np.round(xy[:, 1], 4).tolist(),
        "edges": edges_arr.tolist(),
        "layers": names,
    }


class NetworkView:
    """The sampled subgraph of one run and the means to read its nodes' states from a simulation state."""

    def __init__(self, graph: dict[str, Any], view: Any):
        self.graph = graph  # nodes, x, y, edges, layers, graph, labels, colour (JSON-able)
        self._view = view  # the model's GraphView
        self._nodes = np.asarray(graph["nodes"], np.int32)

    @classmethod
    def sample(cls, view: Any, built: Any, seed: int) -> "NetworkView":
        """Sample ``view`` (the registry entry's ``GraphView`` of ``built``) from its first sampled agent."""
        start = int(built.sample_idx[0]) if len(built.sample_idx) else 0
        graph = {**sample_subgraph(view.layers, start, max_nodes=MAX_NODES, seed=seed),
                 "graph": view.kind, "labels": list(view.labels), "colour": view.colour}
        return cls(graph, view)

    def state(self, sim_state: Any) -> np.ndarray:
        """Each node's code into ``labels`` (host array, one per node)."""
        return np.asarray(self._view.state(sim_state, self._nodes))
