"""Replicates batched under vmap equal sequential runs, bit for bit, with the tiered sparse/dense pull.

``neighbor_sum`` batches R replicates as one population of R disjoint graph copies and runs the
branch the busiest replicate needs (simcore/engine/ops.py); these tests pin that the per-replicate
numbers do not depend on that choice or on which replicates share a batch.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scenarios import load_scenario
from simcore.engine.ensemble import Ensemble, replicate_state
from simcore.engine.ops import edge_rows, neighbor_sum
from simcore.graph import erdos_renyi
from simcore.models import build
from simcore.session import run_metrics

SEIR = {"name": "rep", "population": {"kind": "homogeneous", "size": 6000},
        "graph": {"kind": "erdos_renyi", "mean_degree": 8},
        "model": {"kind": "seir", "params": {"beta": 0.06, "initial_infected": 0.002, "sparse_capacity": 0.1}},
        "run": {"steps": 40, "chunk_size": 10}, "output": {"sample_agents": 0}}


def _csr(n=4000, k=6, seed=3):
    csr = erdos_renyi(n, k, seed=seed)
    indptr, indices = jnp.asarray(csr.indptr), jnp.asarray(csr.indices)
    return csr, indptr, indices, edge_rows(indptr, csr.n_edges)


def test_vmapped_neighbor_sum_equals_each_replicate_alone():
    """Replicates at very different prevalences share one batch: the batch runs the dense pull
    (the busiest replicate needs it), the quiet replicates still get their own sparse-push numbers."""
    csr, indptr, indices, rows = _csr()
    rng = np.random.default_rng(1)
    n = csr.n_nodes
    prevalence = [0.0005, 0.004, 0.6, 0.0]
    x = jnp.asarray(np.where(rng.random((4, n)) < 0.5, 1.0, 0.2).astype(np.float32))  # inexact sums
    active = jnp.asarray(np.stack([rng.random(n) < p for p in prevalence]))
    kw = dict(node_capacity=n // 10, edge_capacity=csr.n_edges // 10)
    batched = jax.jit(jax.vmap(lambda xv, a: neighbor_sum(indptr, indices, rows, xv, a, **kw)))(x, active)
    for r in range(4):
        alone = neighbor_sum(indptr, indices, rows, x[r], active[r], **kw)
        np.testing.assert_array_equal(np.asarray(batched[r]), np.asarray(alone))
    # only the quiet replicates: the batch stays on a sparse tier, same numbers again
    quiet = jax.jit(jax.vmap(lambda xv, a: neighbor_sum(indptr, indices, rows, xv, a, **kw)))(x[:2], active[:2])
    np.testing.assert_array_equal(np.asarray(quiet), np.asarray(batched[:2]))
    # and the dense pull alone (capacity 0) gives them too
    dense = neighbor_sum(indptr, indices, rows, x[0], active[0], node_capacity=0, edge_capacity=0)
    np.testing.assert_array_equal(np.asarray(dense), np.asarray(batched[0]))


def test_vmapped_neighbor_sum_unbatched_values_and_batched_graphs():
    csr, indptr, indices, rows = _csr(n=2000)
    x = jnp.ones(csr.n_nodes, jnp.float32)
    active = jnp.asarray(np.random.default_rng(2).random((3, csr.n_nodes)) < 0.01)
    kw = dict(node_capacity=200, edge_capacity=csr.n_edges // 10)
    out = jax.vmap(lambda a: neighbor_sum(indptr, indices, rows, x, a, **kw))(active)  # x not batched
    for r in range(3):
        np.testing.assert_array_equal(np.asarray(out[r]), np.asarray(neighbor_sum(indptr, indices, rows, x, active[r], **kw)))
    # a different graph per replicate (graph arrays batched): the generic path, same numbers
    g = jax.vmap(lambda ip, ix, rw, a: neighbor_sum(ip, ix, rw, x, a, **kw))(
        jnp.stack([indptr] * 3), jnp.stack([indices] * 3), jnp.stack([rows] * 3), active)
    np.testing.assert_array_equal(np.asarray(g), np.asarray(out))


@pytest.mark.parametrize("spec", ["seir", "epidemic"])
def test_batched_replicates_equal_sequential_runs(spec):
    if spec == "seir":
        sc = load_scenario(SEIR)
    else:  # four contact layers, isolation weights 0.2 (sums that are not exact in float32)
        sc = load_scenario("covid_small", ["population.size=6000", "run.steps=40", "run.chunk_size=10",
                                           "output.sample_agents=0"])
    b = build(sc, seed=0)
    seeds = [11, 12, 13, 14, 15]

    def run(batch):
        e = Ensemble(b.model, replicate_state(b.state, len(seeds)), b.params, b.schedule, seeds, chunk_size=10,
                     batch_size=batch)
        return run_metrics(e, 40), e

    seq, e_seq = run(1)
    together, e_all = run(len(seeds))
    pairs, _ = run(2)  # batches of 2 (the last one padded): other batch-mates, same numbers
    assert set(seq) == set(together)
    for k in seq:
        np.testing.assert_array_equal(seq[k], together[k], err_msg=k)
        np.testing.assert_array_equal(seq[k], pairs[k], err_msg=k)
    for a, c in zip(jax.tree_util.tree_leaves(e_seq.state), jax.tree_util.tree_leaves(e_all.state)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(c))
    first = next(iter(seq))
    assert not np.array_equal(seq[first][0], seq[first][1])  # replicates differ (own keys)
