"""Scenario -> population and graph -> (model, state, params, schedule). One direction only.

Which function builds which ``model.kind`` is the model registry's (``scenarios/registry.py``); the
built-in models' builders, interfaces, checks and graph views live here and are named by their entries.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import jax
import numpy as np

from scenarios.loader import ScenarioError
from scenarios.registry import REGISTRY, Registry
from scenarios.schema import MultilayerGraph, Scenario

from ..engine import Intervention, Model, build_schedule, init_key, root_key
from . import epidemic, seir


@dataclass
class Built:
    model: Model
    state: Any
    params: dict
    schedule: dict[str, np.ndarray]
    n_agents: int
    sample_idx: np.ndarray
    info: dict = field(default_factory=dict)
    population: Any = None
    # host policies the model itself needs (e.g. the economy's LLM planner): a factory of fresh ones
    host_policies: Callable[[], list] | None = None
    # the dashboard's charts: {title: [metric, ...]}, from the model's registry entry
    metric_groups: dict[str, list[str]] = field(default_factory=dict)


def scheduled_params(scenario: Scenario, registry: Registry = REGISTRY) -> tuple[str, ...]:
    return registry.entry_for(scenario).scheduled_params(scenario)


def policy_interface(scenario: Scenario, registry: Registry = REGISTRY) -> dict[str, tuple[str, ...]]:
    """What the scenario's model offers an archetype policy, known without building anything:
    ``decision_targets`` it reads, ``features`` to group on, ``stats`` to show in prompts."""
    return registry.entry_for(scenario).policy_interface(scenario)


def check(scenario: Scenario, registry: Registry = REGISTRY) -> None:
    """Semantic checks that need to know the model, without building anything."""
    registry.entry_for(scenario).check_scenario(scenario)


# -- the built-in models' entries point here (scenarios/registry.py) ---------------------------------
def epidemic_interface(scenario: Scenario) -> dict[str, tuple[str, ...]]:
    return {"decision_targets": epidemic.DECISION_TARGETS, "features": epidemic.FEATURES,
            "stats": epidemic.STATS, "decision_logits": epidemic.DECISION_TARGETS}


def social_interface(scenario: Scenario) -> dict[str, tuple[str, ...]]:
    from .social import model as social_model
    return {"decision_targets": social_model.DECISION_TARGETS, "features": social_model.FEATURES,
            "stats": social_model.STATS}


def economy_interface(scenario: Scenario) -> dict[str, tuple[str, ...]]:
    from .economy import model as economy_model
    return {"decision_targets": economy_model.DECISION_TARGETS, "features": economy_model.FEATURES,
            "stats": economy_model.stat_names(len(scenario.model.params.schedule.rates))}


def check_economy(scenario: Scenario) -> None:
    from .economy import PERSONAS

    prm = scenario.model.params
    unknown = sorted(set(prm.personas) - set(PERSONAS))
    if unknown:
        raise ScenarioError("model.params.personas", f"unknown persona {unknown[0]!r} (known: {', '.join(PERSONAS)})")
    if sum(prm.personas.values()) <= 0:
        raise ScenarioError("model.params.personas", "multipliers must sum to > 0")
    if prm.planner.kind == "llm":
        kinds = ("llamacpp", "openai", "vllm", "replay")
        if prm.planner.backend.get("kind") not in kinds:
            raise ScenarioError("model.params.planner.backend.kind",
                                f"must be one of {list(kinds)}, got {prm.planner.backend.get('kind')!r}")
    if scenario.policy is not None and scenario.policy.every != 1:
        raise ScenarioError("policy.every", f"economy steps are tax years: archetype rounds run every year "
                                            f"(every: 1), got {scenario.policy.every}")


def check_social(scenario: Scenario) -> None:
    from .social import PERSONAS

    prm, field = scenario.model.params, "model.params"
    if prm.feed_size > prm.post_capacity:
        raise ScenarioError(f"{field}.feed_size", f"must be <= post_capacity ({prm.post_capacity}), got {prm.feed_size}")
    unknown = sorted(set(prm.personas) - set(PERSONAS))
    if unknown:
        raise ScenarioError(f"{field}.personas", f"unknown persona {unknown[0]!r} (known: {', '.join(PERSONAS)})")
    if sum(prm.personas.values()) <= 0:
        raise ScenarioError(f"{field}.personas", "shares must sum to > 0")
    seeds = sum(s.accounts for s in prm.seed_posts)
    if seeds > scenario.population.size:
        raise ScenarioError(f"{field}.seed_posts", f"accounts ({seeds}) must be <= population.size "
                                                   f"({scenario.population.size})")
    if seeds + prm.initial_posts > prm.post_capacity:
        raise ScenarioError(f"{field}.initial_posts", f"seed posts ({seeds}) + initial_posts must be <= "
                                                      f"post_capacity ({prm.post_capacity}), got {prm.initial_posts}")
    labels = [s.label for s in prm.seed_posts]
    if len(set(labels)) != len(labels):
        raise ScenarioError(f"{field}.seed_posts", f"labels must be distinct, got {labels}")
    for i, s in enumerate(prm.seed_posts):
        if s.topic >= prm.n_topics:
            raise ScenarioError(f"{field}.seed_posts[{i}].topic", f"must be < n_topics ({prm.n_topics}), got {s.topic}")
    # the ring must hold at least one step of new posts: every active user may post once per step
    peak = 1.8 * prm.activity_rate * scenario.population.size
    if prm.post_capacity < peak:
        raise ScenarioError(f"{field}.post_capacity", f"must be >= the peak active users per step "
                                                      f"(~{peak:.0f} = 1.8 x activity_rate x population.size), "
                                                      f"got {prm.post_capacity}")


@dataclass(frozen=True)
class GraphView:
    """What the dashboard's network view draws for a model: named edge layers and a colour per node.

    A layer is a CSR (``indptr``/``indices``) or a dense ``[N, K]`` row table of neighbour ids with -1 for an
    empty slot (the social model's follow rows). ``state(sim_state, nodes)`` gives each node's code into
    ``labels`` at a step; the edges are those of the built graph.
    """
    kind: str  # "contact" or "follow"
    layers: dict[str, Any]
    labels: tuple[str, ...]
    state: Callable[[Any, np.ndarray], np.ndarray]
    colour: str  # what the node colour means


def contact_view(built: Built) -> GraphView:
    """Epidemic layers (household, workplace, school, community) or the SEIR graph, coloured by disease state."""
    layers = dict(built.params["layers"]) if "layers" in built.params else {"contacts": built.params["graph"]}
    return GraphView("contact", layers, tuple(built.model.labels["disease"]),
                     lambda st, nodes: np.asarray(st.disease[nodes]), "disease state")


def follow_view(built: Built) -> GraphView:
    """The social model's follow rows at the start of the run, coloured by each user's stance bin."""
    from .social import model as social_model

    return GraphView("follow", {"follows": built.state.follows}, tuple(social_model.STANCE_BINS),
                     lambda st, nodes: np.asarray(social_model.stance_bin(st.stance[nodes])), "stance")


def concat_rows(*csrs):
    """Row-wise concatenation of CSRs on the same nodes, without sorting (multi-edges kept)."""
    from ..graph import CSR

    degs = [np.diff(c.indptr).astype(np.int64) for c in csrs]
    total = sum(degs)
    indptr = np.zeros(len(total) + 1, np.int64)
    np.cumsum(total, out=indptr[1:])
    indices = np.empty(int(indptr[-1]), np.int32)
    offset = indptr[:-1].copy()
    for c, d in zip(csrs, degs):
        rows = np.repeat(np.arange(len(d)), d)
        within = np.arange(len(c.indices)) - np.repeat(c.indptr[:-1].astype(np.int64), d)
        indices[offset[rows] + within] = c.indices
        offset += d
    dtype = np.int64 if indptr[-1] >= 2**31 else np.int32
    return CSR(indptr.astype(dtype), indices)


def _graph(scenario: Scenario, n: int, seed: int):
    from .. import graph as g

    spec = scenario.graph
    if spec.kind == "erdos_renyi":
        return g.erdos_renyi(n, spec.mean_degree, seed)
    if spec.kind == "barabasi_albert":
        return g.barabasi_albert(n, spec.m, seed)
    if spec.kind == "watts_strogatz":
        return g.watts_strogatz(n, spec.k, spec.p, seed)
    raise ScenarioError("graph.kind", f"{spec.kind!r} is not available for model {scenario.model.kind!r}")


def contact_layers(population, spec: MultilayerGraph, seed: int) -> dict:
    from .. import graph as g

    a = population.attributes
    rng = np.random.default_rng(seed)
    seeds = rng.integers(0, 2**31, 5)
    community = [
        g.matching_layer(population.n, spec.community_rounds_local, int(seeds[3]), strata=a["borough"])
        if spec.community_rounds_local else None,
        g.matching_layer(population.n, spec.community_rounds_city, int(seeds[4]))
        if spec.community_rounds_city else None,
    ]
    community = [c for c in community if c is not None]
    empty = g.CSR(np.zeros(population.n + 1, np.int32), np.zeros(0, np.int32))
    return {
        "household": g.group_layer(a["household"], 64, int(seeds[0])),
        "workplace": g.group_layer(a["workplace"], spec.workplace_neighbors, int(seeds[1])),
        "school": g.group_layer(a["school"], spec.school_neighbors, int(seeds[2])),
        "community": concat_rows(*community) if len(community) > 1 else (community[0] if community else empty),
    }


def build_seir(scenario: Scenario, seed: int) -> Built:
    n = scenario.population.size
    t0 = time.perf_counter()
    csr = _graph(scenario, n, seed)
    t_graph = time.perf_counter() - t0
    p = scenario.model.params
    state, params, base = seir.init(csr, beta=p.beta, initial_infected=p.initial_infected, seed=seed)
    cfg = seir.SEIRConfig(latent_days=p.latent_days, infectious_days=p.infectious_days,
                          sparse_capacity=p.sparse_capacity)
    info = {"graph_seconds": t_graph, "edges": csr.n_edges, "graph_bytes": params["graph"].nbytes,
            "bytes_per_agent_state": 1}
    return Built(seir.make_model(cfg), state, params, base, n, np.empty(0, np.int32), info)


def build_epidemic(scenario: Scenario, seed: int) -> Built:
    from populations import sample_population

    pop_spec = scenario.population
    t0 = time.perf_counter()
    population = sample_population(pop_spec.size, seed, "nyc", workplace_mean_size=pop_spec.workplace_mean_size,
                                   class_mean_size=pop_spec.class_mean_size)
    t_pop = time.perf_counter() - t0
    layers = contact_layers(population, scenario.graph, seed)
    t_graph = time.perf_counter() - t0 - t_pop
    sens = population.tables.occupation_lockdown_sensitivity
    cfg, state, params, base = epidemic.init(population, layers, scenario.model.params, seed=seed,
                                             occupation_sensitivity=sens)
    edges = {k: v.n_edges for k, v in layers.items()}
    info = {
        "population_seconds": t_pop, "graph_seconds": t_graph, "edges": edges,
        "edges_per_agent": sum(edges.values()) / population.n,
        "graph_bytes": sum(l.nbytes for l in params["layers"].values()),
        "bytes_per_agent_state": 4,
    }
    return Built(epidemic.make_model(cfg, tuple(population.labels["occupation"])), state, params, base, population.n, np.empty(0, np.int32), info,
                 population)


def build_social(scenario: Scenario, seed: int) -> Built:
    from . import social

    n = scenario.population.size
    t0 = time.perf_counter()
    csr = _graph(scenario, n, seed)
    t_graph = time.perf_counter() - t0
    cfg, state, params, base, info = social.init(scenario.model.params, n, csr, seed)
    info.update({"graph_seconds": t_graph, "init_seconds": time.perf_counter() - t0 - t_graph,
                 "edges": int(state.followees.sum())})
    return Built(social.make_model(cfg), state, params, base, n, np.empty(0, np.int32), info)


def build_economy(scenario: Scenario, seed: int) -> Built:
    from . import economy

    n = scenario.population.size
    t0 = time.perf_counter()
    prm = scenario.model.params
    cfg, state, params, base, info = economy.init(prm, n, seed)
    info["init_seconds"] = time.perf_counter() - t0
    return Built(economy.make_model(cfg), state, params, base, n, np.empty(0, np.int32), info)


def build(scenario: Scenario, *, seed: int | None = None, steps: int | None = None,
          registry: Registry = REGISTRY) -> Built:
    """Population, graph, initial state, params and the intervention schedule for ``scenario``
    (its model is ``registry``'s entry for ``scenario.model.kind``)."""
    entry = registry.entry_for(scenario)
    entry.check_scenario(scenario)
    seed = scenario.run.seed if seed is None else seed
    steps = scenario.run.steps if steps is None else steps
    built = entry.build(scenario, seed)
    built.metric_groups = entry.groups(scenario)
    built.host_policies = entry.host_policies_for(scenario)  # e.g. the economy's LLM planner (llm_policy)
    interventions = [Intervention(param=iv.param, start=iv.start, end=iv.end, value=iv.value, mode=iv.mode,
                                  name=iv.name) for iv in scenario.interventions]
    built.schedule = build_schedule(built.schedule, steps, interventions)
    k = min(scenario.output.sample_agents, built.n_agents)
    if k:
        pick = jax.random.choice(init_key(root_key(seed), 1), built.n_agents, (k,), replace=False)
        built.sample_idx = np.sort(np.asarray(pick)).astype(np.int32)
    leaves = jax.tree_util.tree_leaves((built.state, built.params))
    built.info["device_bytes"] = int(sum(getattr(x, "nbytes", 0) for x in leaves))
    built.info["bytes_per_agent"] = built.info["device_bytes"] / built.n_agents
    return built
