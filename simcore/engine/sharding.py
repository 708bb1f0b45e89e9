"""Sharding along the agent axis with JAX's own machinery (GSPMD), no home-made scheduler.

Every array whose leading axis is at least the agent count and divides evenly over
the mesh is split along it (per-agent state and attributes; contact entries, which
are sorted by destination, so each device holds about its own agents' incoming
edges); everything else is replicated. XLA inserts the collectives for neighbour
gathers and segment sums. Random bits are generated partitionably, so a sharded run
draws exactly the numbers of a single-device run: metrics are identical (tested).
"""
from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

AXIS = "agents"


def agent_mesh(n_devices: int) -> Mesh:
    devices = jax.devices()
    if n_devices > len(devices):
        raise ValueError(f"run.devices: {n_devices} requested but only {len(devices)} available "
                         f"({jax.default_backend()}); on CPU set XLA_FLAGS=--xla_force_host_platform_device_count=N")
    return Mesh(np.array(devices[:n_devices]), (AXIS,))


def shard_tree(tree, n_agents: int, mesh: Mesh):
    """Place ``tree``: split agent-sized (or larger) leading axes that divide evenly, replicate the rest."""
    n = mesh.devices.size
    split = NamedSharding(mesh, PartitionSpec(AXIS))
    whole = NamedSharding(mesh, PartitionSpec())

    def place(x):
        shape = getattr(x, "shape", ())
        if len(shape) >= 1 and shape[0] >= n_agents and shape[0] % n == 0:
            return jax.device_put(x, split)
        return jax.device_put(x, whole)

    return jax.tree.map(place, tree)


def shard_simulation(sim, n_agents: int, n_devices: int):
    """Move a Simulation's state and params onto an ``n_devices`` mesh (in place; returns it)."""
    if n_devices <= 1:
        return sim
    mesh = agent_mesh(n_devices)
    sim.state = shard_tree(sim.state, n_agents, mesh)
    sim.params = shard_tree(sim.params, n_agents, mesh)
    sim.sample_idx = jax.device_put(sim.sample_idx, NamedSharding(mesh, PartitionSpec()))
    sim.mesh = mesh
    return sim
