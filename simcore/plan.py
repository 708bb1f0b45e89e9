"""Memory planning: predict bytes per device before building anything large.

The model is measured, not guessed: a small sample of the scenario (same model,
same graph generator) is built, its resident bytes per agent and per stored edge
are read off the device arrays, and the full size is extrapolated linearly.
Per-step temporaries (draws, forces, dense-pull gathers) are added from the
kernel's shapes: about 6 float32 arrays per agent and one float32 per stored edge.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import jax

from scenarios import Scenario, ScenarioError

SAMPLE_AGENTS = 20_000
TEMP_BYTES_PER_AGENT = 6 * 4
TEMP_BYTES_PER_EDGE = 4


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

    def describe(self) -> str:
        gib = 2**30
        return (f"{self.agents:,} agents on {self.devices} device(s): "
                f"{self.resident_bytes_per_agent:.0f} B/agent resident (incl. {self.edges_per_agent:.1f} stored "
                f"contacts x {self.bytes_per_edge:.0f} B), predicted {self.predicted_bytes_per_device / gib:.2f} GiB "
                f"per device of {self.capacity_bytes_per_device / gib:.1f} GiB")


def device_capacity() -> float:
    """Bytes one device can hold: the accelerator's reported limit, or this host's RAM for CPU devices."""
    dev = jax.devices()[0]
    stats = dev.memory_stats() if hasattr(dev, "memory_stats") else None
    if stats and stats.get("bytes_limit"):
        return float(stats["bytes_limit"])
    pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    return float(pages * size) / max(len(jax.devices("cpu")), 1)


def plan(scenario: Scenario, devices: int | None = None, capacity: float | None = None) -> Plan:
    from .models import build

    devices = devices or scenario.run.devices
    n = scenario.population.size
    small = scenario.model_copy(update={
        "population": scenario.population.model_copy(update={"size": min(n, SAMPLE_AGENTS)}),
        "output": scenario.output.model_copy(update={"sample_agents": 0}),
    })
    built = build(small, steps=2)
    m = built.n_agents
    edges = built.info["edges"]
    n_edges = sum(edges.values()) if isinstance(edges, dict) else int(edges)
    edge_bytes = float(built.info["graph_bytes"]) - 4.0 * (m + 1) * (len(edges) if isinstance(edges, dict) else 1)
    per_edge = edge_bytes / max(n_edges, 1)
    resident = built.info["device_bytes"] / m
    edges_per_agent = n_edges / m
    total = n * (resident + TEMP_BYTES_PER_AGENT + edges_per_agent * TEMP_BYTES_PER_EDGE)
    per_device = total / devices
    cap = capacity if capacity is not None else device_capacity()
    return Plan(n, devices, edges_per_agent, resident, per_edge, per_device, cap, per_device <= 0.9 * cap)


def check_fits(scenario: Scenario, devices: int | None = None, capacity: float | None = None) -> Plan:
    p = plan(scenario, devices, capacity)
    if not p.fits:
        raise ScenarioError("population.size", f"will not fit: {p.describe()} (keep below 90%); "
                                               f"use more devices (--devices) or fewer agents")
    return p
