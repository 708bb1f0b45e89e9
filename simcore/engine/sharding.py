"""Sharding along the agent axis with JAX's own machinery (GSPMD), no home-made scheduler.

Every array whose leading axis is at least the agent count and divides evenly over
the mesh is split along it (per-agent state and attributes; contact entries, which
are sorted by destination, so each device holds about its own agents' incoming
edges); everything else is replicated. XLA inserts the collectives for neighbour
gathers and segment sums (or :mod:`simcore.engine.halo` places them explicitly).
Random bits are generated partitionably, so a sharded run draws exactly the numbers
of a single-device run: metrics are identical (tested).

Across processes (:mod:`simcore.distributed`) the mesh spans every process's
devices; each process fills only the shards of its own devices.
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
    if jax.process_count() > 1 and n_devices != len(devices):
        # every process must hold part of the mesh, or it could not take part in the collectives
        raise ValueError(f"run.devices: a {jax.process_count()}-process run uses all {len(devices)} devices, "
                         f"got {n_devices}")
    return Mesh(np.array(devices[:n_devices]), (AXIS,))


def place(x, sharding: NamedSharding):
    """``x`` on ``sharding``; across processes each process supplies only its own shards."""
    if jax.process_count() == 1 or (isinstance(x, jax.Array) and not x.is_fully_addressable):
        return jax.device_put(x, sharding)
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def shard_tree(tree, n_agents: int, mesh: Mesh, *, halo: bool = False):
    """Place ``tree``: split agent-sized (or larger) leading axes that divide evenly, replicate the rest.

    Nodes with a ``for_mesh(mesh, n_agents, halo)`` method (graph layers) place themselves.
    """
    n = mesh.devices.size
    split = NamedSharding(mesh, PartitionSpec(AXIS))
    whole = NamedSharding(mesh, PartitionSpec())

    def put(x):
        if hasattr(x, "for_mesh"):
            return x.for_mesh(mesh, n_agents, halo)
        shape = getattr(x, "shape", ())
        if len(shape) >= 1 and shape[0] >= n_agents and shape[0] % n == 0:
            return place(x, split)
        return place(x, whole)

    return jax.tree.map(put, tree, is_leaf=lambda x: hasattr(x, "for_mesh"))


def shard_simulation(sim, n_agents: int, n_devices: int, *, halo: bool = False):
    """Move a Simulation's state and params onto an ``n_devices`` mesh (in place; returns it).

    ``halo``: graph layers exchange halos explicitly in their dense pulls (:mod:`.halo`).
    """
    if n_devices <= 1:
        return sim
    if n_agents % n_devices:
        # per-agent arrays would silently stay whole on every device
        raise ValueError(f"run.devices: {n_agents:,} agents do not split evenly over {n_devices} devices; "
                         f"make population.size a multiple of {n_devices}")
    mesh = agent_mesh(n_devices)
    sim.state = shard_tree(sim.state, n_agents, mesh)
    sim.params = shard_tree(sim.params, n_agents, mesh, halo=halo)
    sim.sample_idx = place(sim.sample_idx, NamedSharding(mesh, PartitionSpec()))
    sim.mesh = mesh
    return sim
