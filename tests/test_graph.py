"""Tests for simcore.graph: CSR construction, generators, networkx interop."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import networkx as nx
import numpy as np
import pytest

from simcore.graph import (
    CSR,
    barabasi_albert,
    erdos_renyi,
    from_edges,
    from_networkx,
    group_layer,
    matching_layer,
    stochastic_block,
    subgraph,
    to_edges,
    to_networkx,
    union,
    watts_strogatz,
)


def _keys(csr: CSR) -> np.ndarray:
    src, dst = to_edges(csr)
    return src.astype(np.int64) * csr.n_nodes + dst


def _transpose_keys(csr: CSR) -> np.ndarray:
    src, dst = to_edges(csr)
    return dst.astype(np.int64) * csr.n_nodes + src


def assert_simple_symmetric(csr: CSR) -> None:
    """Symmetric (equal to its transpose), no self loops, no duplicate entries."""
    assert csr.indptr.shape == (csr.n_nodes + 1,)
    assert csr.indptr[0] == 0 and csr.indptr[-1] == csr.n_edges
    assert (np.diff(csr.indptr) >= 0).all()
    assert csr.indices.dtype == np.int32
    src, dst = to_edges(csr)
    if csr.n_edges:
        assert dst.min() >= 0 and dst.max() < csr.n_nodes
    assert not (src == dst).any(), "self loop"
    k = np.sort(_keys(csr))
    assert (np.diff(k) > 0).all(), "duplicate entry"
    np.testing.assert_array_equal(k, np.sort(_transpose_keys(csr)), err_msg="not symmetric")


def assert_rows_sorted(csr: CSR) -> None:
    k = _keys(csr)
    assert (np.diff(k) > 0).all()


def edge_set(csr: CSR) -> set[tuple[int, int]]:
    src, dst = to_edges(csr)
    return {(int(u), int(v)) for u, v in zip(src, dst) if u < v}


# ---------------------------------------------------------------- CSR / from_edges


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("dedupe", [True, False])
@pytest.mark.parametrize("drop_self_loops", [True, False])
def test_from_edges_matches_reference(symmetric, dedupe, drop_self_loops):
    rng = np.random.default_rng(0)
    n = 40
    src = rng.integers(0, n, 500)
    dst = rng.integers(0, n, 500)
    csr = from_edges(src, dst, n, symmetric=symmetric, dedupe=dedupe, drop_self_loops=drop_self_loops)

    s, d = src, dst
    if drop_self_loops:
        s, d = s[s != d], d[s != d]
    if symmetric:
        s, d = np.concatenate([s, d]), np.concatenate([d, s])
    ref = s.astype(np.int64) * n + d
    ref = np.unique(ref) if dedupe else np.sort(ref)
    np.testing.assert_array_equal(_keys(csr), ref)
    assert csr.indptr.dtype == np.int32 and csr.indices.dtype == np.int32


def test_from_edges_symmetric_simple_and_sorted():
    rng = np.random.default_rng(1)
    n = 10_000
    csr = from_edges(rng.integers(0, n, 50_000), rng.integers(0, n, 50_000), n)
    assert_simple_symmetric(csr)
    assert_rows_sorted(csr)
    assert csr.n_nodes == n
    np.testing.assert_array_equal(csr.degree(), np.diff(csr.indptr))
    assert csr.degree().dtype == np.int32
    assert csr.nbytes == 4 * (n + 1) + 4 * csr.n_edges


def test_from_edges_validation():
    with pytest.raises(ValueError):
        from_edges([0, 5], [1, 2], 5)
    with pytest.raises(ValueError):
        from_edges([0, -1], [1, 2], 5)
    with pytest.raises(ValueError):
        from_edges([0, 1], [1], 5)
    empty = from_edges(np.empty(0, np.int64), np.empty(0, np.int64), 3)
    assert empty.n_nodes == 3 and empty.n_edges == 0
    np.testing.assert_array_equal(empty.degree(), [0, 0, 0])


def test_to_edges_roundtrip_and_union():
    a = erdos_renyi(500, 4, seed=1)
    b = erdos_renyi(500, 4, seed=2)
    src, dst = to_edges(a)
    again = from_edges(src, dst, a.n_nodes, symmetric=False)
    np.testing.assert_array_equal(again.indptr, a.indptr)
    np.testing.assert_array_equal(again.indices, a.indices)

    u = union(a, b, a)
    assert_simple_symmetric(u)
    assert_rows_sorted(u)
    assert edge_set(u) == edge_set(a) | edge_set(b)
    multi = union(a, b, a, dedupe=False)
    assert multi.n_edges == 2 * a.n_edges + b.n_edges
    with pytest.raises(ValueError):
        union(a, erdos_renyi(10, 2, seed=0))


def test_csr_is_jax_pytree():
    csr = erdos_renyi(1000, 6, seed=3)
    leaves = jax.tree_util.tree_leaves(csr)
    assert len(leaves) == 2
    on_device = jax.device_put(csr)
    assert isinstance(on_device, CSR)

    @jax.jit
    def neighbour_sum(c: CSR, x):
        rows = jnp.repeat(jnp.arange(c.n_nodes), c.degree(), total_repeat_length=c.n_edges)
        return jax.ops.segment_sum(x[c.indices], rows, num_segments=c.n_nodes)

    x = np.arange(csr.n_nodes, dtype=np.float32)
    got = np.asarray(neighbour_sum(on_device, x))
    src, dst = to_edges(csr)
    np.testing.assert_allclose(got, np.bincount(src, weights=x[dst], minlength=csr.n_nodes))


# ---------------------------------------------------------------- generators


def test_erdos_renyi_degree_stats():
    n, k = 200_000, 10.0
    csr = erdos_renyi(n, k, seed=42)
    assert_simple_symmetric(csr)
    assert_rows_sorted(csr)
    deg = csr.degree()
    assert abs(deg.mean() - k) / k < 0.02
    # Binomial(n-1, p) ~ Poisson: variance ~ mean.
    assert abs(deg.var() / deg.mean() - 1.0) < 0.05
    # Same seed -> same graph.
    np.testing.assert_array_equal(erdos_renyi(2000, 5, seed=7).indices, erdos_renyi(2000, 5, seed=7).indices)


def test_erdos_renyi_dense_and_edge_cases():
    full = erdos_renyi(30, 29, seed=0)
    assert full.n_edges == 30 * 29
    assert erdos_renyi(50, 0, seed=0).n_edges == 0
    assert erdos_renyi(1, 0, seed=0).n_nodes == 1
    dense = erdos_renyi(400, 200, seed=0)  # enumerated-pairs path
    assert_simple_symmetric(dense)
    assert abs(dense.degree().mean() - 200) < 3


def _ccdf_exponent(deg: np.ndarray, kmin: int, min_count: int = 50) -> float:
    """Exponent gamma of P(k) ~ k^-gamma from a log-log fit of the ccdf (slope 1 - gamma)."""
    k = np.sort(deg)
    uk, first = np.unique(k, return_index=True)
    ccdf = 1.0 - first / k.shape[0]
    sel = (uk >= kmin) & (ccdf * k.shape[0] >= min_count)
    slope = np.polyfit(np.log(uk[sel]), np.log(ccdf[sel]), 1)[0]
    return 1.0 - slope


def test_barabasi_albert():
    n, m = 200_000, 3
    csr = barabasi_albert(n, m, seed=0)
    assert_simple_symmetric(csr)
    deg = csr.degree()
    assert abs(csr.n_edges / 2 - m * n) / (m * n) < 0.01
    assert deg.min() >= 1
    assert deg.max() > 50 * deg.mean()
    assert 2.5 < _ccdf_exponent(deg, kmin=3 * m) < 3.5
    # Small-k law of BA: P(k) = 2m(m+1) / (k(k+1)(k+2)).
    for k in range(m, m + 4):
        assert abs((deg == k).mean() - 2 * m * (m + 1) / (k * (k + 1) * (k + 2))) < 0.01
    with pytest.raises(ValueError):
        barabasi_albert(3, 3, seed=0)


def test_watts_strogatz_p0_is_ring_lattice():
    n, k = 101, 6
    csr = watts_strogatz(n, k, 0.0, seed=0)
    assert_simple_symmetric(csr)
    assert edge_set(csr) == {tuple(sorted(e)) for e in nx.watts_strogatz_graph(n, k, 0.0).edges()}
    assert (csr.degree() == k).all()
    with pytest.raises(ValueError):
        watts_strogatz(n, 5, 0.1, seed=0)


def test_watts_strogatz_clustering_matches_networkx():
    n, k, p = 2000, 10, 0.1
    csr = watts_strogatz(n, k, p, seed=1)
    assert_simple_symmetric(csr)
    assert abs(csr.n_edges / 2 - n * k / 2) / (n * k / 2) < 0.01
    ours = np.mean([nx.average_clustering(to_networkx(watts_strogatz(n, k, p, seed=s))) for s in range(3)])
    ref = np.mean([nx.average_clustering(nx.watts_strogatz_graph(n, k, p, seed=s)) for s in range(3)])
    assert abs(ours - ref) < 0.02


def test_stochastic_block_densities():
    sizes = [600, 1000, 400]
    P = np.array([[0.05, 0.005, 0.0], [0.005, 0.02, 0.01], [0.0, 0.01, 0.1]])
    csr, block = stochastic_block(sizes, P, seed=3)
    assert_simple_symmetric(csr)
    assert block.dtype == np.int32
    np.testing.assert_array_equal(np.bincount(block), sizes)
    src, dst = to_edges(csr)
    upper = src < dst
    ba, bb = block[src[upper]], block[dst[upper]]
    for a in range(3):
        for b in range(a, 3):
            count = np.count_nonzero(((ba == a) & (bb == b)) | ((ba == b) & (bb == a)))
            pairs = sizes[a] * (sizes[a] - 1) // 2 if a == b else sizes[a] * sizes[b]
            mean = pairs * P[a, b]
            sd = np.sqrt(pairs * P[a, b] * (1 - P[a, b]))
            assert abs(count - mean) <= 5 * sd + 1e-9, (a, b, count, mean)
    with pytest.raises(ValueError):
        stochastic_block([10, 10], [[0.1, 0.2], [0.3, 0.1]], seed=0)


# ---------------------------------------------------------------- contact layers


@pytest.mark.parametrize("seed", [None, 5])
def test_group_layer_households_and_large_groups(seed):
    rng = np.random.default_rng(0)
    hh_size = rng.integers(1, 7, 3000)
    group = np.repeat(np.arange(hh_size.shape[0]), hh_size)
    n = group.shape[0]
    # Scramble group ids and node order so groups are not contiguous.
    group = rng.permutation(hh_size.shape[0])[group][rng.permutation(n)]
    group[rng.random(n) < 0.05] = -1
    csr = group_layer(group, max_neighbors=8, seed=seed)
    assert_simple_symmetric(csr)
    size_of = np.bincount(group[group >= 0])
    expected = np.where(group >= 0, size_of[np.maximum(group, 0)] - 1, 0)
    np.testing.assert_array_equal(csr.degree(), expected)  # cliques: degree s-1
    src, dst = to_edges(csr)
    assert (group[src] == group[dst]).all()

    big = np.concatenate([np.zeros(50), np.ones(37), np.full(9, 2), np.full(4, -1)]).astype(np.int64)
    big = big[rng.permutation(big.shape[0])]
    csr = group_layer(big, max_neighbors=8, seed=seed)
    assert_simple_symmetric(csr)
    deg = csr.degree()
    assert (deg[(big == 0) | (big == 1)] == 8).all()
    assert (deg[big == 2] == 8).all()  # size 9 = max_neighbors + 1 -> clique
    assert (deg[big == -1] == 0).all()
    src, dst = to_edges(csr)
    assert (big[src] == big[dst]).all()


def test_group_layer_ring_order_and_odd_max():
    n = 20
    csr = group_layer(np.zeros(n, dtype=np.int64), max_neighbors=4)
    # Without a seed members are ordered by id: ring lattice on 0..19.
    assert edge_set(csr) == edge_set(watts_strogatz(n, 4, 0.0, seed=0))
    assert (group_layer(np.zeros(n, dtype=np.int64), max_neighbors=5).degree() == 4).all()
    assert group_layer(np.full(5, -1), max_neighbors=3).n_edges == 0


def test_group_layer_seed_shuffles_ring_groups_only():
    group = np.repeat([0, 1, 2], [60, 3, 40]).astype(np.uint32)
    a = group_layer(group, 4, seed=1)
    b = group_layer(group, 4, seed=2)
    c = group_layer(group, 4)
    for x in (a, b, c):
        assert_simple_symmetric(x)
        np.testing.assert_array_equal(x.degree(), np.repeat([4, 2, 4], [60, 3, 40]))
    assert edge_set(a) != edge_set(b) and edge_set(a) != edge_set(c)
    # Cliques do not depend on the order, so a seed changes nothing there.
    hh = np.repeat(np.arange(50), 3)
    assert edge_set(group_layer(hh, 4, seed=1)) == edge_set(group_layer(hh, 4))
    # Every member of a ring group ends up next to each other member about equally often.
    hits = np.zeros((30, 30))
    for s in range(300):
        src, dst = to_edges(group_layer(np.zeros(30, dtype=np.int64), 2, seed=s))
        np.add.at(hits, (src, dst), 1)
    off = hits[~np.eye(30, dtype=bool)]
    assert abs(off.mean() - 300 * 2 / 29) < 1 and off.min() > 5


def test_group_layer_large_group_ids_fallback():
    rng = np.random.default_rng(2)
    group = rng.integers(-1, 200, 3000)
    wide = np.where(group >= 0, group.astype(np.int64) + 2**40, -1)
    a = group_layer(group, max_neighbors=6)
    b = group_layer(wide, max_neighbors=6)
    np.testing.assert_array_equal(a.indptr, b.indptr)
    np.testing.assert_array_equal(a.indices, b.indices)
    c = group_layer(wide, max_neighbors=6, seed=1)
    assert_simple_symmetric(c)
    np.testing.assert_array_equal(c.degree(), a.degree())


def test_matching_layer_plain():
    n, rounds = 10_000, 6
    csr = matching_layer(n, rounds, seed=0)
    assert (csr.degree() == rounds).all()  # n even: everyone matched every round
    src, dst = to_edges(csr)
    assert not (src == dst).any()
    np.testing.assert_array_equal(np.sort(_keys(csr)), np.sort(_transpose_keys(csr)))

    odd = matching_layer(1001, rounds, seed=1)
    assert odd.degree().max() <= rounds
    assert odd.n_edges == rounds * 1000

    simple = matching_layer(n, rounds, seed=0, dedupe=True)
    assert_simple_symmetric(simple)


@pytest.mark.parametrize("n_strata", [5, 700])
def test_matching_layer_strata(n_strata):
    rng = np.random.default_rng(4)
    n, rounds = 7001, 4
    strata = rng.integers(0, n_strata, n) * 3 - 7  # arbitrary values
    csr = matching_layer(n, rounds, seed=2, strata=strata)
    deg = csr.degree()
    assert deg.max() <= rounds
    src, dst = to_edges(csr)
    assert (strata[src] == strata[dst]).all()
    assert not (src == dst).any()
    np.testing.assert_array_equal(np.sort(_keys(csr)), np.sort(_transpose_keys(csr)))
    # Per round each stratum of odd size leaves exactly one node unmatched.
    _, sizes = np.unique(strata, return_counts=True)
    assert csr.n_edges == rounds * int((sizes - sizes % 2).sum())


# ---------------------------------------------------------------- networkx interop


def test_networkx_roundtrip():
    G = nx.relabel_nodes(nx.karate_club_graph(), lambda v: f"p{v}")
    csr, ids = from_networkx(G)
    assert ids == list(G.nodes)
    assert_simple_symmetric(csr)
    H = to_networkx(csr)
    assert {frozenset((ids[u], ids[v])) for u, v in H.edges()} == {frozenset(e) for e in G.edges()}
    csr2, ids2 = from_networkx(H)
    assert ids2 == list(range(csr.n_nodes))
    np.testing.assert_array_equal(csr2.indices, csr.indices)

    age = np.arange(csr.n_nodes) * 2
    H = to_networkx(csr, node_attrs={"age": age})
    assert H.nodes[3]["age"] == 6
    with pytest.raises(ValueError):
        to_networkx(csr, node_attrs={"age": age[:-1]})


def test_to_networkx_refuses_big_graphs():
    big = from_edges(np.array([0]), np.array([1]), 200_001)
    with pytest.raises(ValueError, match="max_nodes"):
        to_networkx(big)
    with pytest.raises(ValueError, match="max_nodes"):
        to_networkx(erdos_renyi(100, 3, seed=0), max_nodes=50)


def test_subgraph_matches_networkx():
    csr = erdos_renyi(3000, 8, seed=9)
    nodes = np.random.default_rng(0).choice(3000, 700, replace=False)
    sub = subgraph(csr, nodes)
    assert sub.n_nodes == 700
    assert_simple_symmetric(sub)
    ref = nx.relabel_nodes(to_networkx(csr).subgraph(nodes.tolist()), {int(v): i for i, v in enumerate(nodes)})
    assert edge_set(sub) == {tuple(sorted(e)) for e in ref.edges()}
    assert_rows_sorted(subgraph(csr, np.sort(nodes)))
    with pytest.raises(ValueError):
        subgraph(csr, [1, 1, 2])
    with pytest.raises(ValueError):
        subgraph(csr, [3000])
