"""Vectorized graph construction (numpy, host side) for millions of nodes.

Graphs are ``CSR`` pytrees (int32 indices, int32/int64 indptr); undirected
graphs are stored symmetric. See docs/graph.md for memory and timings.
"""

from .csr import CSR, from_edges, to_edges, union
from .generators import (
    barabasi_albert,
    erdos_renyi,
    group_layer,
    matching_layer,
    stochastic_block,
    watts_strogatz,
)
from .nx import from_networkx, subgraph, to_networkx

__all__ = [
    "CSR",
    "from_edges",
    "to_edges",
    "union",
    "erdos_renyi",
    "barabasi_albert",
    "watts_strogatz",
    "stochastic_block",
    "group_layer",
    "matching_layer",
    "to_networkx",
    "from_networkx",
    "subgraph",
]
