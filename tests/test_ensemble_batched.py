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


SPLIT_SCRIPT = r"""
import json
import jax, numpy as np
from scenarios import load_scenario
from simcore.engine.ensemble import ChunkPrograms, Ensemble, replicate_state
from simcore.experiments import Experiment
from simcore.models import build
from simcore.session import run_metrics

SEIR = %r
out = {"devices": jax.local_device_count()}
for spec in ("seir", "epidemic"):
    sc = load_scenario(SEIR) if spec == "seir" else load_scenario(
        "covid_small", ["population.size=6000", "run.steps=40", "run.chunk_size=10", "output.sample_agents=0"])
    b = build(sc, seed=0)
    seeds = [11, 12, 13, 14, 15]
    programs = ChunkPrograms()

    def run(batch, devices):
        e = Ensemble(b.model, replicate_state(b.state, len(seeds)), b.params, b.schedule, seeds, chunk_size=10,
                     batch_size=batch, devices=devices, programs=programs)
        m = run_metrics(e, 37)  # the last chunk is cut short
        return m, [np.asarray(x) for x in jax.tree_util.tree_leaves(e.state)], e

    seq, seq_state, _ = run(1, 1)
    for batch, devices in ((1, 4), (2, 3)):  # 5 replicates: two calls of 4, the second padded; one call of 6
        m, st, e = run(batch, devices)
        out[f"{spec}_{batch}x{devices}_metrics"] = set(m) == set(seq) and all(np.array_equal(m[k], seq[k]) for k in seq)
        out[f"{spec}_{batch}x{devices}_state"] = all(np.array_equal(a, c) for a, c in zip(st, seq_state))
        out[f"{spec}_{batch}x{devices}_split"] = len(jax.tree_util.tree_leaves(e.state)[0].sharding.device_set)
    out[f"{spec}_replicates_differ"] = not np.array_equal(seq["I"][0], seq["I"][1]) if "I" in seq else None

# an Experiment on CPU splits its replicates over every host device by default, one replicate each
def design(**kw):
    ex = Experiment(SEIR, seeds=[3, 4, 5], steps=30, **kw)
    ex.branch(from_step=10)
    ex.arm("strong", interventions=[{"name": "d", "param": "contact_scale", "start": 10, "end": 30, "value": 0.3}])
    return ex.run()
split, one = design(), design(devices=1)
out["experiment_layout"] = split.info["replicate_layout"]
out["experiment_one_layout"] = one.info["replicate_layout"]
out["experiment_equal"] = split.metrics.equals(one.metrics)
print(json.dumps(out))
""" % (SEIR,)


def test_replicates_split_over_devices_equal_sequential_runs(cli_env):
    """The replicate axis split over host devices (each stepping its own replicates, vmapped):
    every replicate's metrics and final state equal its sequential run, bit for bit, whatever
    the devices, the per-device batch and the padding of the last call."""
    from conftest import run_script_on_devices

    out = run_script_on_devices(SPLIT_SCRIPT, cli_env, n_devices=4)
    assert out["devices"] == 4
    for spec in ("seir", "epidemic"):
        for batch, devices in ((1, 4), (2, 3)):
            assert out[f"{spec}_{batch}x{devices}_metrics"] is True, (spec, batch, devices)
            assert out[f"{spec}_{batch}x{devices}_state"] is True, (spec, batch, devices)
            assert out[f"{spec}_{batch}x{devices}_split"] == min(devices, 5), (spec, batch, devices)
    assert out["seir_replicates_differ"] is True
    assert out["experiment_layout"] == {"batch_size": 1, "devices": 4}
    assert out["experiment_one_layout"] == {"batch_size": 1, "devices": 1}
    assert out["experiment_equal"] is True


def test_request_host_devices_extends_xla_flags_only_without_a_count():
    from simcore.cli import request_host_devices

    env = {}
    assert request_host_devices(env, 4) and env == {"XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    env = {"XLA_FLAGS": "--xla_cpu_enable_fast_math=false"}
    assert request_host_devices(env, 2)
    assert env["XLA_FLAGS"] == "--xla_cpu_enable_fast_math=false --xla_force_host_platform_device_count=2"
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=3"}  # the user's count wins
    assert not request_host_devices(env, 2) and env["XLA_FLAGS"] == "--xla_force_host_platform_device_count=3"
    env = {}
    assert not request_host_devices(env, 1) and env == {}  # one core: nothing to split over


def test_experiment_cli_splits_replicates_over_the_cores(cli_env, tmp_path):
    """`simcore experiment` asks for one host device per core, unless XLA_FLAGS already sets a count."""
    import json
    import os
    import subprocess

    from conftest import SIMCORE
    from test_experiments import EXPERIMENT_YAML, _write_files

    cores = len(os.sched_getaffinity(0))
    path = _write_files(tmp_path, EXPERIMENT_YAML)
    env = {k: v for k, v in cli_env.items() if k != "XLA_FLAGS"}
    layouts = {}
    for label, extra in (("default", {}), ("user", {"XLA_FLAGS": "--xla_force_host_platform_device_count=1"})):
        out = tmp_path / label
        res = subprocess.run(SIMCORE + ["experiment", str(path), "--out", str(out), "--quiet"], capture_output=True,
                             text=True, env={**env, **extra}, timeout=300)
        assert res.returncode == 0, res.stderr[-3000:]
        layouts[label] = json.loads((out / "experiment.json").read_text())["replicate_layout"]
    assert layouts["default"] == {"batch_size": 1, "devices": min(cores, 3)}  # 3 seeds: at most 3 devices used
    assert layouts["user"] == {"batch_size": 1, "devices": 1}
