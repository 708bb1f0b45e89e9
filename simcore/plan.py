"""Memory planning: predict bytes per device before building anything large.

The model is measured, not guessed. The scenario is built at two small sizes
(same model, same graph generator); for each, the resident device bytes are read
off the arrays and XLA's memory analysis of one compiled chunk gives the
temporaries (feeds, draws, gathers) and the outputs. A straight line through the
two sizes separates what grows with agents from fixed buffers (the social post
ring buffer), and is extrapolated to the full size. Without donation (the CPU
backend) a chunk's new state is a second copy, so outputs count too.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import jax

from scenarios import Scenario, ScenarioError

from .models.layers import INT32_MAX

SAMPLE_AGENTS = 20_000


@dataclass
class Plan:
    agents: int
    devices: int
    edges_per_agent: float
    resident_bytes_per_agent: float
    bytes_per_edge: float
    predicted_bytes_per_device: float
    capacity_bytes_per_device: float
    fits: bool
    largest_layer_entries: int = 0  # stored contacts of the biggest layer: int32 indices cap it
    fixed_bytes: float = 0.0  # buffers that do not grow with agents (the social post ring buffer)
    step_bytes_per_agent: float = 0.0  # a chunk's temporaries (and outputs without donation), per agent

    def describe(self) -> str:
        gib = 2**30
        return (f"{self.agents:,} agents on {self.devices} device(s): "
                f"{self.resident_bytes_per_agent:.0f} B/agent resident (incl. {self.edges_per_agent:.1f} stored "
                f"contacts x {self.bytes_per_edge:.0f} B) + {self.step_bytes_per_agent:.0f} B/agent while stepping"
                + (f" + {self.fixed_bytes / 2**20:,.0f} MiB fixed buffers" if self.fixed_bytes else "")
                + f", predicted {self.predicted_bytes_per_device / gib:.2f} GiB "
                f"per device of {self.capacity_bytes_per_device / gib:.1f} GiB")


def device_capacity() -> float:
    """Bytes one device can hold: the accelerator's reported limit, or this host's RAM for CPU devices."""
    # this process's own devices: another host's cannot report memory (and its RAM is not ours)
    dev = jax.local_devices()[0]
    stats = dev.memory_stats() if hasattr(dev, "memory_stats") else None
    if stats and stats.get("bytes_limit"):
        return float(stats["bytes_limit"])
    pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    return float(pages * size) / max(len(jax.local_devices(backend="cpu")), 1)


def _measure(scenario: Scenario, m: int):
    """(built, resident bytes, temporary + undonated output bytes) of ``scenario`` at ``m`` agents."""
    from .engine import Simulation
    from .models import build

    small = scenario.model_copy(update={
        "population": scenario.population.model_copy(update={"size": m}),
        "output": scenario.output.model_copy(update={"sample_agents": 0}),
    })
    built = build(small, steps=2)
    sim = Simulation(built.model, built.state, built.params, built.schedule, chunk_size=scenario.run.chunk_size)
    ma = sim.compile_chunk().memory_analysis()
    extra = ma.temp_size_in_bytes + (ma.output_size_in_bytes if jax.default_backend() == "cpu" else 0)
    return built, float(built.info["device_bytes"]), float(extra)


def plan(scenario: Scenario, devices: int | None = None, capacity: float | None = None) -> Plan:
    devices = devices or scenario.run.devices
    n = scenario.population.size
    m1, m2 = min(n, SAMPLE_AGENTS // 2), min(n, SAMPLE_AGENTS * 2)
    built, r1, x1 = _measure(scenario, m1)
    if m2 > m1:
        _, r2, x2 = _measure(scenario, m2)
        per_agent, per_agent_extra = (r2 - r1) / (m2 - m1), (x2 - x1) / (m2 - m1)
    else:
        per_agent, per_agent_extra = r1 / m1, x1 / m1
    fixed = max(r1 - per_agent * m1, 0.0) + max(x1 - per_agent_extra * m1, 0.0)
    m = built.n_agents
    edges = built.info["edges"]
    n_edges = sum(edges.values()) if isinstance(edges, dict) else int(edges)
    if "graph_bytes" in built.info:  # contact layers: 4 B per agent of indptr each, the rest per entry
        edge_bytes = float(built.info["graph_bytes"]) - 4.0 * (m + 1) * (len(edges) if isinstance(edges, dict) else 1)
        per_edge = edge_bytes / max(n_edges, 1)
        edges_per_agent = n_edges / m
    else:  # social: follow slots are reserved per user, one int32 each
        per_edge = 4.0
        edges_per_agent = float(built.state.follows.shape[1])
    total = n * (per_agent + per_agent_extra) + fixed
    per_device = total / devices
    cap = capacity if capacity is not None else device_capacity()
    per_layer = edges.values() if isinstance(edges, dict) else [edges]
    largest = int(max(per_layer, default=0) * n / m)
    fits = per_device <= 0.9 * cap and largest <= INT32_MAX
    return Plan(n, devices, edges_per_agent, per_agent, per_edge, per_device, cap, fits, largest, fixed,
                per_agent_extra)


def check_fits(scenario: Scenario, devices: int | None = None, capacity: float | None = None) -> Plan:
    p = plan(scenario, devices, capacity)
    if p.largest_layer_entries > INT32_MAX:
        raise ScenarioError("population.size", f"{p.agents:,} agents need {p.largest_layer_entries:,} stored "
                                               f"contacts in one layer, over the int32 index limit ({INT32_MAX:,})")
    if not p.fits:
        raise ScenarioError("population.size", f"will not fit: {p.describe()} (keep below 90%); "
                                               f"use more devices (--devices) or fewer agents")
    return p


def floor_bytes(scenario: Scenario) -> tuple[float, int, str]:
    """A lower bound of the device bytes ``scenario`` needs, its largest layer's stored contacts
    (lower bound too) and the field that dominates, from the scenario alone: nothing is built.

    Only terms that cannot be smaller are counted: 1 B of state and 4 B of row pointer per agent, 4 B
    of neighbour id per stored contact (of the documented 8), what the model's registry entry says
    its own arrays need at the least (``floor_bytes``: the epidemic's attributes and layers, the
    social follow slots and post embeddings), and the float32 schedule rows. The measured figure
    is :func:`plan`'s; this one is what ``simcore validate`` can afford in milliseconds.
    """
    from scenarios import REGISTRY

    from .models import scheduled_params

    n, g = scenario.population.size, scenario.graph
    entries, field = [0.0], "population.size"
    if g.kind == "multilayer":
        # the community layer: one partner per matching round, but the odd one out of each borough
        entries = [float(max(g.community_rounds_local, 0) * max(n - 5, 0) + g.community_rounds_city * max(n - 1, 0))]
    elif g.kind == "erdos_renyi":
        entries = [0.9 * n * g.mean_degree]  # Binomial edge count: far above 0.9 x its mean only for tiny n
    elif g.kind == "watts_strogatz":
        entries = [0.9 * n * g.k]  # rewired edges lost to dedupe: a fraction ~ p k / n
    elif g.kind == "barabasi_albert":
        entries = [0.9 * 2 * g.m * max(n - g.m - 1, 0)]
    total = n * 5.0 + 4 * sum(entries)
    own = REGISTRY.entry_for(scenario).floor(scenario)
    total += sum(own.values())
    for name, nbytes in own.items():  # a model term larger than all the rest names its field
        if name != "population.size" and nbytes > total - nbytes:
            field = name
    schedule = 4.0 * scenario.run.steps * len(scheduled_params(scenario))
    if schedule > total:
        field = "run.steps"
    return total + schedule, int(max(entries)), field


def check_floor(scenario: Scenario, devices: int | None = None, capacity: float | None = None) -> float:
    """Refuse (ScenarioError) what cannot fit even by :func:`floor_bytes`; returns the floor per device."""
    devices = devices or scenario.run.devices
    need, largest, field = floor_bytes(scenario)
    if largest > INT32_MAX:
        raise ScenarioError(field if field != "run.steps" else "population.size",
                            f"{scenario.population.size:,} agents need at least {largest:,} stored contacts in one "
                            f"layer, over the int32 index limit ({INT32_MAX:,})")
    per_device = need / devices
    cap = capacity if capacity is not None else device_capacity()
    if per_device > cap:
        gib = 2**30
        raise ScenarioError(field, f"needs at least {per_device / gib:,.1f} GiB per device (a lower bound), more "
                                   f"than the {cap / gib:,.1f} GiB of this machine's devices; use more devices or "
                                   f"a smaller size (`simcore plan` measures the full figure)")
    return per_device
