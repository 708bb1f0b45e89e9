"""One run over several processes (hosts) with ``jax.distributed``.

Every process builds the same population and graph from the seed (host memory is
not split), places its share of the agent axis on its own devices, and runs the
same compiled chunks (SPMD). Per-step metrics are global reductions, replicated on
every process; process 0 writes them and the manifest. Agent rows (samples, and
events that name an agent) are written by the process that owns the agent, one
part file per process, and the manifest lists every part.

Set-up comes from the environment, as a cluster scheduler provides it:

- ``JAX_COORDINATOR_ADDRESS`` (``host:port`` of process 0), ``JAX_NUM_PROCESSES``,
  ``JAX_PROCESS_ID``; optionally ``JAX_LOCAL_DEVICE_IDS``;
- or nothing at all under SLURM (``srun``) or Open MPI, which JAX detects itself.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping

import jax
import numpy as np

ENV_VARS = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


class DistributedError(ValueError):
    """Bad or incomplete multi-process set-up; ``field`` names the variable or option."""

    def __init__(self, field: str, reason: str):
        super().__init__(f"{field}: {reason}")
        self.field, self.reason = field, reason


@dataclass(frozen=True)
class Cluster:
    process_id: int = 0
    num_processes: int = 1

    @property
    def is_lead(self) -> bool:
        return self.process_id == 0

    @property
    def multi(self) -> bool:
        return self.num_processes > 1


def _int_env(environ: Mapping[str, str], name: str) -> int | None:
    raw = environ.get(name)
    if raw is None or raw == "":
        return None
    try:
        return int(raw)
    except ValueError:
        raise DistributedError(name, f"must be an integer, got {raw!r}") from None


def initialize(environ: Mapping[str, str] = os.environ, timeout_s: int = 300) -> Cluster:
    """``jax.distributed.initialize`` from the environment; call before anything touches a device.

    With ``JAX_NUM_PROCESSES`` set, ``JAX_COORDINATOR_ADDRESS`` and ``JAX_PROCESS_ID``
    must be set too; without it, JAX's own cluster detection (SLURM, Open MPI) is used.
    """
    n = _int_env(environ, "JAX_NUM_PROCESSES")
    pid = _int_env(environ, "JAX_PROCESS_ID")
    coord = environ.get("JAX_COORDINATOR_ADDRESS") or None
    if n is not None:
        missing = [name for name, v in (("JAX_COORDINATOR_ADDRESS", coord), ("JAX_PROCESS_ID", pid)) if v is None]
        if missing:
            raise DistributedError(missing[0], "must be set when JAX_NUM_PROCESSES is")
        if n < 1 or not 0 <= pid < n:
            raise DistributedError("JAX_PROCESS_ID", f"must be in [0, {n}) for JAX_NUM_PROCESSES={n}, got {pid}")
    # CPU devices need a cross-process collective library; accelerators bring their own (NCCL).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(coordinator_address=coord, num_processes=n, process_id=pid,
                                   initialization_timeout=timeout_s)
    except ValueError as exc:  # JAX found no cluster and was given no coordinates
        raise DistributedError("JAX_NUM_PROCESSES", f"no multi-process set-up found ({exc}); set "
                               + ", ".join(ENV_VARS) + " or run under srun/mpirun") from None
    return current()


def current() -> Cluster:
    return Cluster(jax.process_index(), jax.process_count())


def owned_ranges(n_agents: int, mesh) -> list[tuple[int, int]]:
    """``[start, stop)`` agent ranges held by this process's devices (one block per mesh position)."""
    if mesh is None:
        return [(0, n_agents)]
    devices = list(np.asarray(mesh.devices).flat)
    block = -(-n_agents // len(devices))
    me = jax.process_index()
    out: list[tuple[int, int]] = []
    for pos, dev in enumerate(devices):
        if dev.process_index != me:
            continue
        lo, hi = pos * block, min((pos + 1) * block, n_agents)
        if out and out[-1][1] == lo:
            out[-1] = (out[-1][0], hi)
        elif lo < hi:
            out.append((lo, hi))
    return out


def owned_mask(agent: np.ndarray, ranges: list[tuple[int, int]]) -> np.ndarray:
    agent = np.asarray(agent)
    mask = np.zeros(agent.shape, bool)
    for lo, hi in ranges:
        mask |= (agent >= lo) & (agent < hi)
    return mask


def barrier(name: str) -> None:
    """All processes reach ``name`` before any goes on (no-op in a single process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def broadcast_from_lead(value: np.ndarray) -> np.ndarray:
    """Process 0's ``value`` on every process (same shape and dtype everywhere)."""
    if jax.process_count() == 1:
        return value
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.broadcast_one_to_all(np.asarray(value)))
