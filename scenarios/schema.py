"""The scenario file format (pydantic). Unknown keys are rejected everywhere."""
from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator

PositiveInt = Annotated[int, Field(gt=0)]
Fraction = Annotated[float, Field(ge=0, le=1)]
AGE_BANDS = 6


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# -- population --------------------------------------------------------------
class NYCPopulation(Strict):
    """Synthetic New York City: boroughs, age bands, households, jobs, schools from census tables."""

    kind: Literal["nyc"] = "nyc"
    size: PositiveInt
    workplace_mean_size: float = Field(10.0, gt=1)
    class_mean_size: float = Field(20.0, gt=1)


class HomogeneousPopulation(Strict):
    """Identical agents: for graph experiments, benchmarks and analytic checks."""

    kind: Literal["homogeneous"]
    size: PositiveInt


Population = Annotated[Union[NYCPopulation, HomogeneousPopulation], Field(discriminator="kind")]


# -- contact / social graph --------------------------------------------------
class MultilayerGraph(Strict):
    """Households (cliques), workplaces and school classes (groups), community (random, by borough)."""

    kind: Literal["multilayer"] = "multilayer"
    workplace_neighbors: Annotated[int, Field(ge=0)] = 8
    school_neighbors: Annotated[int, Field(ge=0)] = 10
    community_rounds_local: Annotated[int, Field(ge=0)] = 4
    community_rounds_city: Annotated[int, Field(ge=0)] = 2


class ErdosRenyiGraph(Strict):
    kind: Literal["erdos_renyi"]
    mean_degree: float = Field(gt=0)


class BarabasiAlbertGraph(Strict):
    kind: Literal["barabasi_albert"]
    m: PositiveInt


class WattsStrogatzGraph(Strict):
    kind: Literal["watts_strogatz"]
    k: PositiveInt
    p: Fraction


Graph = Annotated[
    Union[MultilayerGraph, ErdosRenyiGraph, BarabasiAlbertGraph, WattsStrogatzGraph],
    Field(discriminator="kind"),
]


# -- models --------------------------------------------------------------------
class SEIRParams(Strict):
    """Plain network SEIR: per-step hazard ``beta`` per infectious neighbour; geometric durations."""

    beta: float = Field(0.05, ge=0)
    latent_days: float = Field(3.0, ge=0, description="0 makes it SIR")
    infectious_days: float = Field(5.0, ge=1)
    initial_infected: float = Field(0.001, gt=0, lt=1)
    sparse_capacity: Fraction = 0.1


class SEIRModel(Strict):
    kind: Literal["seir"]
    params: SEIRParams = SEIRParams()


class LayerBeta(Strict):
    household: float = Field(0.05, ge=0)
    workplace: float = Field(0.02, ge=0)
    school: float = Field(0.02, ge=0)
    community: float = Field(0.02, ge=0)


class IsolationParams(Strict):
    """Heuristic isolation: daily start probability sigmoid(base + growth*clip(g,-1,1) + level*log1p(weekly cases/100k))."""

    base: float = -6.0
    growth: float = 1.0
    level: float = 0.5
    quarantine_days: Annotated[int, Field(ge=1, le=100)] = 12
    effect: Fraction = 0.8
    symptomatic: Fraction = 0.3


class EmploymentParams(Strict):
    """Heuristic employment: daily job loss/return hazards, by occupation's lockdown sensitivity."""

    loss_base: Fraction = 0.0002
    loss_lockdown: Fraction = 0.003
    loss_cases: float = Field(0.001, ge=0)
    return_base: Fraction = 0.008
    return_lockdown_drag: Fraction = 0.7


class EpidemicParams(Strict):
    beta: LayerBeta = LayerBeta()
    latent_days: float = Field(3.0, ge=0)
    infectious_days: float = Field(5.0, ge=1)
    susceptibility: list[Annotated[float, Field(ge=0)]] = Field(
        default_factory=lambda: [0.6, 1.0, 1.0, 1.0, 1.0, 1.1], min_length=AGE_BANDS, max_length=AGE_BANDS
    )
    ifr: list[Fraction] = Field(
        default_factory=lambda: [0.00005, 0.0003, 0.001, 0.003, 0.012, 0.08],
        min_length=AGE_BANDS, max_length=AGE_BANDS,
    )
    initial_infected: float = Field(0.0005, gt=0, lt=1)
    detection_rate: Fraction = 0.25
    isolation: IsolationParams = IsolationParams()
    employment: EmploymentParams = EmploymentParams()
    sparse_capacity: Fraction = 0.1


class EpidemicModel(Strict):
    kind: Literal["epidemic"]
    params: EpidemicParams = EpidemicParams()


Model = Annotated[Union[EpidemicModel, SEIRModel], Field(discriminator="kind")]


# -- interventions, run, output -------------------------------------------------
class InterventionSpec(Strict):
    """Edit a scheduled parameter on steps [start, end): ``multiply``, ``set`` or ``add`` ``value``."""

    name: str = ""
    param: str
    start: Annotated[int, Field(ge=0)]
    end: Annotated[int, Field(gt=0)]
    value: float
    mode: Literal["multiply", "set", "add"] = "multiply"

    @model_validator(mode="after")
    def _ordered(self):
        if self.end <= self.start:
            raise ValueError(f"end: must be > start ({self.start}), got {self.end}")
        return self


class RunSpec(Strict):
    steps: PositiveInt
    seed: Annotated[int, Field(ge=0)] = 0
    chunk_size: PositiveInt = 30
    devices: PositiveInt = 1


class OutputSpec(Strict):
    dir: str = "runs"
    sample_agents: Annotated[int, Field(ge=0)] = 1000
    sample_every: PositiveInt = 7


class DecisionSpec(Strict):
    """One archetype decision: who is grouped, what is asked, how answers become behaviour.

    The agent value is ``sum(value[o] * P(o))``, read as the probability of the event over one
    round (``policy.every`` steps); it is turned into a per-step hazard ``1 - (1 - v)**(1/every)``
    and multiplied by ``scale`` before it fills the model's per-agent ``target`` parameter.
    """

    name: str = Field(min_length=1)
    target: str = Field(min_length=1)
    group_by: list[str] = Field(min_length=1)
    options: list[str] = Field(min_length=2)
    value: dict[str, float]
    prompt: str = Field(min_length=1)
    scale: float = Field(1.0, ge=0)
    heterogeneity: float = Field(0.0, ge=0, description="sd of per-agent logit noise")

    @model_validator(mode="after")
    def _value_keys(self):
        unknown = sorted(set(self.value) - set(self.options))
        if unknown:
            raise ValueError(f"value: keys {unknown} are not among options {self.options}")
        if len(set(self.options)) != len(self.options):
            raise ValueError(f"options: must be distinct, got {self.options}")
        return self


class PolicySpec(Strict):
    """LLM archetype layer: one call per non-empty archetype per decision, every ``every`` steps."""

    backend: dict[str, Any]
    cache: str | None = Field(None, description="SQLite cache path; default <run_dir>/llm_cache.sqlite")
    every: PositiveInt = 7
    temperature: float = Field(1.0, gt=0)
    n_samples: PositiveInt = Field(1, description="option orders averaged per archetype (bias control)")
    pipelined: bool = False
    start_date: str = "2020-03-01"
    log_prompts: bool = False
    decisions: list[DecisionSpec] = Field(min_length=1)

    @model_validator(mode="after")
    def _backend_kind(self):
        if "kind" not in self.backend:
            raise ValueError("backend: needs a 'kind' (llamacpp, openai, vllm or replay)")
        return self


class Scenario(Strict):
    name: str = Field(min_length=1)
    description: str = ""
    population: Population
    graph: Graph = MultilayerGraph()
    model: Model
    interventions: list[InterventionSpec] = []
    run: RunSpec
    output: OutputSpec = OutputSpec()
    policy: PolicySpec | None = None

    @model_validator(mode="after")
    def _consistent(self):
        if isinstance(self.graph, MultilayerGraph) and not isinstance(self.population, NYCPopulation):
            raise ValueError("graph.kind: 'multilayer' needs population.kind 'nyc' (it uses households, jobs, schools)")
        if self.output.sample_agents > self.population.size:
            raise ValueError(
                f"output.sample_agents: must be <= population.size ({self.population.size}), "
                f"got {self.output.sample_agents}"
            )
        return self
