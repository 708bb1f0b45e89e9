"""Engine behaviour: analytic final size, determinism, chunking, schedules, the sparse/dense kernel."""
from simcore.session import drive
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import brentq

from simcore.engine import Simulation, build_schedule
from hypothesis import given, settings, strategies as st

from simcore.engine.ops import active_indices, edge_rows, neighbor_sum
from simcore.graph import erdos_renyi
from simcore.models import seir


def _sir(csr, beta, seed, steps, chunk=50, infectious_days=5.0, capacity=0.1, i0=1e-3):
    state, params, base = seir.init(csr, beta=beta, initial_infected=i0, seed=seed)
    cfg = seir.SEIRConfig(latent_days=0.0, infectious_days=infectious_days, sparse_capacity=capacity)
    sim = Simulation(seir.make_model(cfg), state, params, build_schedule(base, steps), seed=seed, chunk_size=chunk)
    chunks = []
    drive(sim, steps, on_chunk=lambda s, c: chunks.append(c))
    return {k: np.concatenate([c.metrics[k] for c in chunks]) for k in chunks[0].metrics}, sim


def test_final_size_matches_homogeneous_mixing():
    """SIR on a dense ER graph approaches mass action: z = 1 - s0 exp(-R0 z) within 1% at 200k agents."""
    n, k, r0, days = 200_000, 50.0, 2.0, 5.0
    csr = erdos_renyi(n, k, seed=3)
    kbar = csr.n_edges / n
    beta = brentq(lambda b: kbar * seir.transmissibility(b, days) - r0, 1e-6, 1.0)
    m, _ = _sir(csr, beta, seed=11, steps=300, infectious_days=days)
    assert m["I"][-1] == 0, "epidemic should be over"
    i0 = m["I"][0] + m["R"][0] - m["new_infections"][0]  # seeds: infected before step 0's infections
    s0 = 1 - i0 / n
    s_inf = brentq(lambda s: s - s0 * np.exp(-r0 * (1 - s)), 1e-12, s0 - 1e-12)
    attack = m["R"][-1] / n
    assert attack == pytest.approx(1 - s_inf, rel=0.01)


def test_same_seed_same_metrics_different_seed_differs():
    csr = erdos_renyi(20_000, 8, seed=1)
    a, _ = _sir(csr, 0.08, seed=5, steps=60)
    b, _ = _sir(csr, 0.08, seed=5, steps=60)
    c, _ = _sir(csr, 0.08, seed=6, steps=60)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    assert any(not np.array_equal(a[k], c[k]) for k in a)


def test_chunking_does_not_change_results():
    """Step keys fold in the step index, so chunk boundaries are invisible in the results."""
    csr = erdos_renyi(20_000, 8, seed=1)
    a, _ = _sir(csr, 0.08, seed=5, steps=60, chunk=60)
    b, _ = _sir(csr, 0.08, seed=5, steps=60, chunk=7)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])


def test_sparse_and_dense_paths_agree_bitwise_on_outcome():
    """Capacity 0 forces the dense pull; the default switches to the sparse push at low prevalence."""
    csr = erdos_renyi(20_000, 8, seed=1)
    a, _ = _sir(csr, 0.08, seed=5, steps=80, capacity=0.0)
    b, _ = _sir(csr, 0.08, seed=5, steps=80, capacity=0.2)
    # float sums in different order may flip a rare borderline draw; trajectories must match closely
    assert abs(int(a["R"][-1]) - int(b["R"][-1])) <= 0.01 * 20_000
    np.testing.assert_array_equal(a["S"][:5], b["S"][:5])


# lengths and sizes around the 32-bit words' edges; drawn from a few, because each new shape compiles (~1 s)
@settings(max_examples=60, deadline=None)
@given(n=st.sampled_from([1, 31, 32, 33, 64, 97, 200]), p=st.sampled_from([0.0, 0.03, 0.5, 1.0]),
       size=st.sampled_from([1, 7, 32, 33, 250]), seed=st.integers(0, 9))
def test_active_indices_is_nonzero(n, p, size, seed):
    """The packed-word compaction gives jnp.nonzero's answer: ascending indices, fill past the count."""
    mask = jnp.asarray(np.random.default_rng(seed).random(n) < p)
    expected = np.asarray(jnp.nonzero(mask, size=size, fill_value=n)[0])
    np.testing.assert_array_equal(np.asarray(active_indices(mask, size, n)), expected)


def test_active_indices_at_scale():
    mask = np.random.default_rng(3).random(1_000_003) < 0.01
    got = np.asarray(active_indices(jnp.asarray(mask), 20_000, -1))
    expected = np.full(20_000, -1)
    hits = np.flatnonzero(mask)[:20_000]
    expected[: hits.size] = hits
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("prevalence", [0.002, 0.02, 0.5])
def test_neighbor_sum_gradient_equals_the_dense_pulls(prevalence):
    """The tiered sum's reverse-mode rule (one dense pull of the cotangent) gives the dense pull's gradient,
    whichever branch ran forward, also under vmap (the calibration's gradient path)."""
    rng = np.random.default_rng(1)
    csr = erdos_renyi(3_000, 6, seed=4)
    indptr, indices = jnp.asarray(csr.indptr), jnp.asarray(csr.indices)
    rows = edge_rows(indptr, csr.n_edges)
    x = jnp.asarray(rng.random(3_000).astype(np.float32))
    w = jnp.asarray(rng.random(3_000).astype(np.float32))
    active = jnp.asarray(rng.random(3_000) < prevalence)

    def loss(x, capacity):
        cap = int(3_000 * capacity)
        y = neighbor_sum(indptr, indices, rows, x, active, node_capacity=cap, edge_capacity=int(csr.n_edges * capacity))
        return jnp.sum(w * y ** 2)

    dense = jax.grad(lambda x: loss(x, 0.0))(x)
    tiered = jax.grad(lambda x: loss(x, 0.1))(x)
    np.testing.assert_allclose(np.asarray(tiered), np.asarray(dense), rtol=1e-5, atol=1e-6)
    assert np.all(np.asarray(tiered)[~np.asarray(active)] == 0)
    batched = jax.vmap(jax.grad(lambda x: loss(x, 0.1)))(jnp.stack([x, 2 * x]))
    np.testing.assert_allclose(np.asarray(batched[0]), np.asarray(dense), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("prevalence", [0.0005, 0.02, 0.5])
def test_neighbor_sum_sparse_equals_dense(prevalence):
    rng = np.random.default_rng(0)
    csr = erdos_renyi(5_000, 6, seed=2)
    indptr, indices = jnp.asarray(csr.indptr), jnp.asarray(csr.indices)
    rows = edge_rows(indptr, csr.n_edges)
    x = jnp.asarray(rng.random(5_000).astype(np.float32))
    active = jnp.asarray(rng.random(5_000) < prevalence)
    dense = neighbor_sum(indptr, indices, rows, x, active, node_capacity=0, edge_capacity=0)
    sparse = neighbor_sum(indptr, indices, rows, x, active, node_capacity=5_000, edge_capacity=csr.n_edges)
    deg = np.diff(csr.indptr)
    ref = np.zeros(5_000)
    np.add.at(ref, np.repeat(np.arange(5_000), deg), np.where(np.asarray(active), np.asarray(x), 0)[csr.indices])
    np.testing.assert_allclose(np.asarray(dense), ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(sparse), ref, rtol=1e-5, atol=1e-6)


def test_schedule_edit_needs_no_recompilation_and_changes_outcome():
    csr = erdos_renyi(20_000, 8, seed=1)
    state, params, base = seir.init(csr, beta=0.08, initial_infected=1e-3, seed=2)
    model = seir.make_model(seir.SEIRConfig(latent_days=0.0))
    sched = build_schedule(base, 60)
    sim = Simulation(model, state, params, sched, seed=2, chunk_size=20)
    sim.advance(20)
    compiled = sim._compiled._cache_size()
    sim.intervene("contact_scale", 0.0)  # from the next step on: no transmission
    sim.set_param("beta", 0.05)
    c = sim.advance(20)
    assert sim._compiled._cache_size() == compiled
    assert c.metrics["new_infections"].sum() == 0
    with pytest.raises(ValueError, match="in the past"):
        sim.intervene("contact_scale", 1.0, start=5)
    with pytest.raises(KeyError, match="not a scheduled parameter"):
        sim.intervene("beta", 1.0)
    with pytest.raises(ValueError, match="shape"):
        sim.set_param("beta", np.ones(3))


def test_policy_cadence_cuts_chunks_and_runs_before_due_steps():
    csr = erdos_renyi(2_000, 6, seed=1)
    state, params, base = seir.init(csr, beta=0.05, initial_infected=1e-2, seed=2)
    sim = Simulation(seir.make_model(), state, params, build_schedule(base, 50), seed=2, chunk_size=30)

    class Every7:
        every = 7
        seen: list = []

        def update(self, s):
            self.seen.append(s.step)

    pol = Every7()
    lengths = []
    drive(sim, 50, policies=[pol], on_chunk=lambda s, c: lengths.append(len(c.steps)))
    assert sum(lengths) == 50 and max(lengths) <= 7
    assert pol.seen == [0, 7, 14, 21, 28, 35, 42, 49]
