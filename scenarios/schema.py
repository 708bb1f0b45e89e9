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


class DelaySpec(Strict):
    """A delay in days, discretised from a log-normal with this mean and standard deviation (see docs/calibration.md)."""

    mean: float = Field(gt=0, le=60)
    sd: float = Field(gt=0, le=60)


class ObservationParams(Strict):
    """What surveillance would have recorded, as expected counts from symptom onsets (the model's E -> I).

    Reported cases: onsets x detection(t) (by onset day), spread by ``report_delay``; detection(t) =
    ``detection_rate`` x (floor + (1 - floor) x sigmoid((t - midpoint) / width)) models scarce March-2020
    tests. Admissions: onsets x ``ihr[age]`` spread by ``hospital_delay``. Deaths: onsets x ``ifr[age]``
    spread by ``death_delay`` (onset to death). Day indices t are steps from run start.
    """

    ihr: list[Fraction] = Field(
        default_factory=lambda: [0.002, 0.008, 0.015, 0.025, 0.05, 0.15],
        min_length=AGE_BANDS, max_length=AGE_BANDS, description="hospitalised share of infections, by age band",
    )
    detection_floor: Fraction = Field(1.0, description="detection at the start, relative to detection_rate")
    detection_midpoint: float = Field(30.0, ge=0, le=1000)
    detection_width: float = Field(7.0, gt=0, le=365)
    report_delay: DelaySpec = DelaySpec(mean=4.0, sd=3.0)
    hospital_delay: DelaySpec = DelaySpec(mean=7.0, sd=4.0)
    death_delay: DelaySpec = DelaySpec(mean=16.0, sd=8.0)


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
    observation: ObservationParams = ObservationParams()


class EpidemicModel(Strict):
    kind: Literal["epidemic"]
    params: EpidemicParams = EpidemicParams()


class SocialActionWeights(Strict):
    """Baseline odds (versus doing nothing) of each action for an active user, per feed item."""

    create_post: float = Field(0.15, ge=0)
    like: float = Field(0.04, ge=0)
    dislike: float = Field(0.01, ge=0)
    repost: float = Field(0.01, ge=0)
    quote: float = Field(0.003, ge=0)
    comment: float = Field(0.006, ge=0)
    follow: float = Field(0.004, ge=0)
    unfollow: float = Field(0.002, ge=0)
    mute: float = Field(0.0005, ge=0)


class SocialFeedMix(Strict):
    """Share of the feed's k slots per recommender (renormalized; largest-remainder rounding)."""

    interest: float = Field(1.0, ge=0, description="OASIS-style R*F*S over topic-cluster + hot candidates")
    hot: float = Field(0.0, ge=0, description="Reddit hot score, global")
    network: float = Field(0.0, ge=0, description="followees' recent posts by popularity")
    random: float = Field(0.0, ge=0)

    @model_validator(mode="after")
    def _some(self):
        if self.interest + self.hot + self.network + self.random <= 0:
            raise ValueError("interest: at least one recommender share must be > 0")
        return self


class SeedPostSpec(Strict):
    """Posts placed before step 0 by ``accounts`` users (the most followed first); their cascades are tracked."""

    label: str = Field(min_length=1, pattern=r"^[a-z][a-z0-9_]*$")
    accounts: PositiveInt = 1
    stance: float = Field(0.0, ge=-1, le=1)
    topic: Annotated[int, Field(ge=0)] = 0
    likes: Annotated[int, Field(ge=0)] = 0
    dislikes: Annotated[int, Field(ge=0)] = 0
    popular_authors: bool = True


class SocialParams(Strict):
    """OASIS-like X/Reddit platform as device arrays; see docs/social.md."""

    embedding_dim: Annotated[int, Field(ge=4, le=64)] = 16
    n_topics: Annotated[int, Field(ge=1, le=1024)] = 32
    post_capacity: PositiveInt = 100_000
    max_followees: Annotated[int, Field(ge=1, le=1024)] = 32
    mute_slots: Annotated[int, Field(ge=1, le=64)] = 4
    feed_size: Annotated[int, Field(ge=1, le=256)] = 10
    feed: SocialFeedMix = SocialFeedMix()
    cluster_list: Annotated[int, Field(ge=1, le=4096)] = 64
    clusters_per_user: Annotated[int, Field(ge=1, le=64)] = 2
    hot_candidates: Annotated[int, Field(ge=0, le=4096)] = 64
    recommend_chunk: PositiveInt = 8192
    minutes_per_step: float = Field(60.0, gt=0)
    recency_unit_minutes: float = Field(60.0, gt=0, description="unit of delta-t in R = ln((271.8 - dt)/100)")
    start_epoch: float = Field(1_700_000_000.0, ge=0, description="simulated clock at step 0 (Unix seconds)")
    activity_rate: Fraction = Field(0.1, description="mean per-step activation probability over a day")
    diurnal_amplitude: Fraction = Field(0.8, description="activity = rate x (1 + a cos(2 pi (hour - peak)/24)); 0 = flat")
    start_hour: float = Field(0.0, ge=0, lt=24, description="simulated hour of day at step 0")
    personas: dict[str, Annotated[float, Field(ge=0)]] = Field(
        default_factory=lambda: {"lurker": 0.5, "regular": 0.4, "creator": 0.1})
    initial_posts: Annotated[int, Field(ge=0)] = 1000
    actions: SocialActionWeights = SocialActionWeights()
    similarity_weight: float = 2.0
    stance_weight: float = 1.5
    popularity_weight: float = 0.3
    herd_weight: float = Field(0.0, description="like/dislike odds shift by tanh((likes-dislikes)/herd_scale)")
    herd_scale: float = Field(5.0, gt=0)
    post_extremity: float = Field(0.3, ge=0, description="posts are clip(stance*(1+x)) of their author")
    extremity_posting: float = Field(1.0, ge=0, description="post odds x exp(this*|stance|)")
    stance_topic_coupling: float = Field(2.0, ge=0, description="weight of stance in the topic embedding")
    interest_rate: Fraction = 0.05
    confidence: float = Field(0.6, ge=0, le=2, description="bounded-confidence threshold on |stance difference|")
    convergence: Fraction = Field(0.02, description="Deffuant mu per read post")
    initial_stance_sd: float = Field(0.35, ge=0)
    seed_posts: list[SeedPostSpec] = []
    compact_every: PositiveInt = 24
    record_events: bool = True


class SocialModel(Strict):
    kind: Literal["social"]
    params: SocialParams = SocialParams()


Model = Annotated[Union[EpidemicModel, SEIRModel, SocialModel], Field(discriminator="kind")]


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
    # sharded runs: graph pulls exchange only the halo each device reads (explicit all_to_all)
    # instead of letting XLA all-gather every source value; costs 8 B per stored contact
    halo: bool = False


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
