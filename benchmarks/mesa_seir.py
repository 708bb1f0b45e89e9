"""The network SEIR of ``simcore/models/seir.py``, written as a plain Mesa 3 model.

This is the baseline for the speed comparison and the independent reference for
the parity test (tests/test_mesa_parity.py), so it is deliberately written the
way a Mesa user would write it: one Python object per agent on a
``mesa.discrete_space.Network``, a ``step``/``advance`` pair per agent, a
``DataCollector`` for the S/E/I/R counts. Nothing is vectorized.

Semantics (same as simcore's SEIR, synchronous update):
- ``step``: every agent reads only the states at the start of the step and writes
  its neighbours' / its own ``next_state``; ``advance`` then commits them all.
- Infection is pushed, as in Mesa's virus_on_network example: each infectious agent
  infects each susceptible neighbour independently with probability
  ``1 - exp(-beta)``. A susceptible with ``c`` infectious neighbours therefore
  escapes with probability ``exp(-beta)**c``, i.e. it is infected with
  ``1 - exp(-beta * c)`` exactly as in simcore's pull formulation.
- E -> I with probability ``1/latent_days`` per step (``latent_days == 0``: SIR,
  infected agents go straight to I); I -> R with probability ``1/infectious_days``.
- ``round(initial_infected * n)`` (at least 1) agents start infectious, chosen
  uniformly without replacement.

Randomness comes from the model's own numpy Generator (``Model.rng``), so runs
are reproducible per seed but share no random stream with simcore.
"""
from __future__ import annotations

import math
from collections import Counter

import mesa
import numpy as np
from mesa.discrete_space import FixedAgent, Network

S, E, I, R = 0, 1, 2, 3
STATES = ("S", "E", "I", "R")


class SEIRAgent(FixedAgent):
    def __init__(self, model: "MesaSEIR", cell, state: int):
        super().__init__(model)
        self.cell = cell
        self.state = state
        self.next_state = state

    def step(self) -> None:
        m = self.model
        if self.state == I:
            neighbours = list(self.cell.neighborhood.agents)
            draws = m.rng.random(len(neighbours))
            for other, u in zip(neighbours, draws):
                if other.state == S and u < m.p_transmit:
                    other.next_state = m.infected_state
            if m.rng.random() < m.p_recover:
                self.next_state = R
        elif self.state == E:
            if m.rng.random() < m.p_progress:
                self.next_state = I

    def advance(self) -> None:
        self.state = self.next_state


class MesaSEIR(mesa.Model):
    """Network SEIR on a given contact graph.

    ``csr`` is a symmetric ``simcore.graph.CSR`` (or anything with ``indptr``,
    ``indices``, ``n_nodes``); ``graph`` may pass an already converted networkx
    graph of it to skip the conversion when many models share one graph.
    Agent ``by_node[i]`` sits on graph node ``i`` (nodes must be ``0..n-1``, as
    ``simcore.graph.to_networkx`` makes them).
    """

    def __init__(self, csr=None, *, beta: float, latent_days: float = 3.0, infectious_days: float = 5.0,
                 initial_infected: float = 0.001, seed: int = 0, graph=None):
        super().__init__(seed=seed)
        if graph is None:
            if csr is None:
                raise ValueError("MesaSEIR needs csr or graph")
            from simcore.graph import to_networkx

            graph = to_networkx(csr, max_nodes=max(200_000, csr.n_nodes))
        if infectious_days <= 0:
            raise ValueError(f"infectious_days must be > 0, got {infectious_days}")
        self.p_transmit = 1.0 - math.exp(-beta)
        self.p_recover = 1.0 / infectious_days
        # latent_days <= 0: SIR, the E state is skipped (simcore's geometric_exit does the same)
        self.p_progress = 1.0 / latent_days if latent_days > 0 else 1.0
        self.infected_state = E if latent_days > 0 else I

        self.grid = Network(graph, capacity=1, random=self.random)
        n = graph.number_of_nodes()
        states = np.zeros(n, np.int8)
        k = max(1, int(round(initial_infected * n)))
        states[self.rng.choice(n, size=k, replace=False)] = I
        # FixedAgent's cell setter puts each agent in its cell.
        self.by_node = [SEIRAgent(self, self.grid[node], int(state)) for node, state in enumerate(states.tolist())]

        self.datacollector = mesa.DataCollector(
            model_reporters={name: (lambda m, c=code: m.tally[c]) for code, name in enumerate(STATES)}
        )
        self.tally: Counter = Counter()
        self._count()
        self.datacollector.collect(self)

    def set_states(self, states: np.ndarray) -> None:
        """Overwrite every agent's state (int codes per graph node), e.g. to time a mid-epidemic step."""
        states = np.asarray(states)
        if states.shape != (len(self.by_node),):
            raise ValueError(f"states has shape {states.shape}, expected ({len(self.by_node)},)")
        for agent, state in zip(self.by_node, states.tolist()):
            agent.state = agent.next_state = int(state)
        self._count()

    def _count(self) -> None:
        self.tally = Counter(self.agents.get("state"))
        self.running = self.tally[E] + self.tally[I] > 0

    def step(self) -> None:
        # Two phases over all agents: decide from the start-of-step states, then commit.
        self.agents.do("step")
        self.agents.do("advance")
        self._count()
        self.datacollector.collect(self)

    def counts(self) -> dict[str, np.ndarray]:
        """S/E/I/R per recorded step (row 0 is the initial state)."""
        df = self.datacollector.get_model_vars_dataframe()
        return {name: df[name].to_numpy(np.int64) for name in STATES}

    def run(self, n_steps: int, *, stop_when_over: bool = True) -> int:
        """Step up to ``n_steps`` times; stops early once no agent is E or I. Returns steps done."""
        done = 0
        while done < n_steps and (self.running or not stop_when_over):
            self.step()
            done += 1
        return done
