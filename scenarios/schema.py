"""The scenario file format (pydantic). Unknown keys are rejected everywhere.

Generic rules live on :class:`Strict`, the base of every scenario class: no unknown keys, every
float finite and within float32 range (device arrays are float32), every integer within int32
unless its field states its own bound. Counts use the shared ``Count`` / ``PositiveInt`` types,
whose bounds are the engine's integer types.
"""
from __future__ import annotations

import datetime as _dt
import math
from typing import Annotated, Any, Literal, Union, get_args

import annotated_types
from pydantic import BaseModel, ConfigDict, Field, model_validator

INT32_MAX = 2**31 - 1  # agent ids, CSR offsets and counters on the device are int32
FLOAT32_MAX = 3.4028234e38
MAX_STEPS = 10_000_000  # step keys stay far below 2**30 (init keys); a schedule row is 4 B/parameter/step
MAX_DEGREE = 10_000  # contacts or edges per agent asked of a graph generator
MAX_SEED = 2**32 - 1  # jax.random.key takes an unsigned 32-bit seed without x64

Count = Annotated[int, Field(ge=0, le=INT32_MAX)]
PositiveInt = Annotated[int, Field(gt=0, le=INT32_MAX)]
Degree = Annotated[int, Field(ge=0, le=MAX_DEGREE)]
Seed = Annotated[int, Field(ge=0, le=MAX_SEED)]
Fraction = Annotated[float, Field(ge=0, le=1)]
AGE_BANDS = 6


def _out_of_bounds(value: Any, path: str, explicit_int_bound: bool) -> tuple[str, str] | None:
    """(path, reason) of the first number in ``value`` that breaks the generic rules, else None."""
    if isinstance(value, bool) or value is None or isinstance(value, (str, BaseModel)):
        return None  # nested models check themselves
    if isinstance(value, int):
        if not explicit_int_bound and not -INT32_MAX - 1 <= value <= INT32_MAX:
            return path, f"must be <= {INT32_MAX} (int32), got {value}" if value > 0 else \
                f"must be >= {-INT32_MAX - 1} (int32), got {value}"
        return None
    if isinstance(value, float):
        if not math.isfinite(value):
            return path, f"must be a finite number, got {value}"
        if abs(value) > FLOAT32_MAX:
            return path, f"must be within float32 range (|x| <= {FLOAT32_MAX:.4g}), got {value:g}"
        return None
    if isinstance(value, dict):
        def sub(k):
            return f"{path}.{k}" if isinstance(k, str) and k.isidentifier() else f"{path}[{k!r}]"

        for k in value:
            bad = _out_of_bounds(k, sub(k), False) if isinstance(k, (int, float)) else None
            if bad:
                return bad
        return next((b for k, v in value.items() if (b := _out_of_bounds(v, sub(k), False))), None)
    if isinstance(value, (list, tuple)):
        return next((b for i, v in enumerate(value) if (b := _out_of_bounds(v, f"{path}[{i}]", False))), None)
    return None


class Strict(BaseModel):
    """Base of every scenario class; see the module docstring for the rules it enforces."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @model_validator(mode="after")
    def _numbers_bounded(self):
        for name, info in type(self).model_fields.items():
            explicit = any(isinstance(m, (annotated_types.Le, annotated_types.Lt)) for m in info.metadata)
            bad = _out_of_bounds(getattr(self, name), name, explicit)
            if bad:
                raise ValueError(f"{bad[0]}: {bad[1]}")
        return self


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
    workplace_neighbors: Degree = 8
    school_neighbors: Degree = 10
    community_rounds_local: Degree = 4
    community_rounds_city: Degree = 2


class ErdosRenyiGraph(Strict):
    kind: Literal["erdos_renyi"]
    mean_degree: float = Field(gt=0, le=MAX_DEGREE)


class BarabasiAlbertGraph(Strict):
    kind: Literal["barabasi_albert"]
    m: Annotated[int, Field(gt=0, le=MAX_DEGREE)]


class WattsStrogatzGraph(Strict):
    kind: Literal["watts_strogatz"]
    k: Annotated[int, Field(gt=0, le=MAX_DEGREE)]
    p: Fraction

    @model_validator(mode="after")
    def _even(self):
        if self.k % 2:
            raise ValueError(f"k: must be even (k/2 neighbours on each side of the ring), got {self.k}")
        return self


class NoGraph(Strict):
    """No contact graph: for models whose agents interact only through aggregates (``economy``)."""

    kind: Literal["none"]


Graph = Annotated[
    Union[MultilayerGraph, ErdosRenyiGraph, BarabasiAlbertGraph, WattsStrogatzGraph, NoGraph],
    Field(discriminator="kind"),
]


# -- models --------------------------------------------------------------------
class SEIRParams(Strict):
    """Plain network SEIR: per-step hazard ``beta`` per infectious neighbour; geometric durations."""

    beta: float = Field(0.05, ge=0)
    latent_days: float = Field(3.0, ge=0, description="0 makes it SIR")
    infectious_days: float = Field(5.0, ge=1)
    initial_infected: float = Field(0.001, gt=0, lt=1)
    sparse_capacity: Fraction = 0.15  # see SEIRConfig


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
    borough_loss: list[Annotated[float, Field(ge=0)]] = Field(
        default_factory=lambda: [1.0] * 5,
        description="per-borough multiplier of the job-loss hazard, in the population's borough order (fitted: "
                    "boroughs' economies met the pause differently)")
    not_searching: Fraction = Field(
        0.0, description="share of the workers who lose their job while the pause order holds (times `lockdown`) "
                         "and do not look for work at first; LAUS counts them out of the labour force until they "
                         "start (an observation: it changes the reported unemployed and labour force, not the "
                         "simulation). 0: every unemployed agent is counted")
    search_delay_days: float = Field(
        14.0, gt=0, description="mean days before such a job loser starts looking for work (geometric)")
    baseline_unemployment: list[Fraction] | None = Field(
        None, description="per-borough unemployment rate of the labour force at step 0 (e.g. LAUS for the month "
                          "before the start); default: the population's own draw")

    @model_validator(mode="after")
    def _one_per_borough(self):
        # the NYC population's five boroughs (populations.synthetic.BOROUGHS), in that order
        for name in ("borough_loss", "baseline_unemployment"):
            v = getattr(self, name)
            if v is not None and len(v) != 5:
                raise ValueError(f"{name}: needs one value per borough (5: Bronx, Brooklyn, Manhattan, Queens, "
                                 f"Staten Island), got {len(v)}")
        return self


class LogitAffine(Strict):
    """Map from an LLM answer to a per-step hazard, applied on the device: ``sigmoid(bias + slope * x)``.

    ``x = logit(1 - (1 - P)**(1/every))`` is the logit of the per-step hazard implied by the
    answer's probability ``P`` of the event over one policy round (see ``DecisionSpec``). So
    ``(bias, slope) = (0, 1)`` takes the answer at face value, ``slope = 0`` ignores the LLM
    (a constant hazard ``sigmoid(bias)``), ``slope > 1`` sharpens its differences and ``bias``
    shifts its level. Both are ordinary numeric parameters, fitted by ``simcore calibrate``.
    """

    bias: float = 0.0
    slope: float = 1.0


class LLMMaps(Strict):
    """One answer-to-behaviour map per epidemic decision target (``isolate_llm``, ``work_llm``)."""

    isolate: LogitAffine = LogitAffine()
    work: LogitAffine = LogitAffine()


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
    llm_map: LLMMaps = LLMMaps()
    sparse_capacity: Fraction = 0.1
    observation: ObservationParams = ObservationParams()
    # what the workplace/school/community scales (interventions) scale: "rate" multiplies each contact's
    # transmission rate; "people" is the share of people who keep that layer's contacts (the rest stay
    # home, the same people every day; values above 1 act as 1). Household contacts scale by rate in both.
    contact_scales: Literal["rate", "people"] = "rate"


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
    topic: Count = 0
    likes: Count = 0
    dislikes: Count = 0
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
    initial_posts: Count = 1000
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


# -- economy (workers choose hours, a planner sets the marginal tax schedule) ----------------------
# 2024 U.S. federal income-tax brackets for single filers (IRS Revenue Procedure 2023-34, section 3.01,
# Table 3): lower bound of each bracket in dollars of taxable income, and its marginal rate.
US_2024_THRESHOLDS = [0.0, 11_600.0, 47_150.0, 100_525.0, 191_950.0, 243_725.0, 609_350.0]
US_2024_RATES = [0.10, 0.12, 0.22, 0.24, 0.32, 0.35, 0.37]


class TaxScheduleSpec(Strict):
    """A piecewise-linear marginal schedule: bracket j taxes income in [thresholds[j], thresholds[j+1]) at rates[j]."""

    thresholds: list[Annotated[float, Field(ge=0)]] = Field(default_factory=lambda: list(US_2024_THRESHOLDS),
                                                            min_length=1, max_length=32)
    rates: list[Fraction] = Field(default_factory=lambda: list(US_2024_RATES), min_length=1, max_length=32)

    @model_validator(mode="after")
    def _brackets(self):
        if len(self.rates) != len(self.thresholds):
            raise ValueError(f"rates: needs one rate per threshold ({len(self.thresholds)}), got {len(self.rates)}")
        if self.thresholds[0] != 0:
            raise ValueError(f"thresholds: the first bracket must start at 0, got {self.thresholds[0]}")
        for i in range(1, len(self.thresholds)):
            if self.thresholds[i] <= self.thresholds[i - 1]:
                raise ValueError(f"thresholds: must be strictly increasing, got {self.thresholds[i]} after "
                                 f"{self.thresholds[i - 1]} (index {i})")
        return self


class GB2Spec(Strict):
    """Generalized beta of the second kind for annual income (dollars); skill = income / full-time hours.

    Density a (x/b)^(ap-1) / (b B(p,q) (1+(x/b)^a)^(p+q)) (McDonald 1984). The defaults are calibrated
    in :mod:`simcore.models.economy.calibration` (median, Gini and 90/10 ratio of U.S. household income,
    Census P60-282, 2023).
    """

    a: float = Field(1.897, gt=0)
    b: float = Field(143_011.0, gt=0)
    p: float = Field(0.6672, gt=0)
    q: float = Field(1.4437, gt=0)


class FixedPlanner(Strict):
    """The schedule stays ``model.params.schedule`` (scheduled edits still apply)."""

    kind: Literal["fixed"]


class SaezPlanner(Strict):
    """Saez (2001) optimal schedule recomputed every year from the simulated incomes, weights and elasticities."""

    kind: Literal["saez"]
    bandwidth: float = Field(0.15, gt=0, le=2, description="half-width, in log income, of the density window")
    top_weight: Fraction | None = Field(None, description="welfare weight g at the top (None: from the Atkinson "
                                                          "weights; 0: the revenue-maximising top rate 1/(1+a e))")


class GradientPlanner(Strict):
    """optax climbs the year's welfare through the softmax-relaxed workers' response."""

    kind: Literal["gradient"]
    learning_rate: float = Field(0.02, gt=0, le=1)
    optimizer: Literal["adam", "sgd"] = "adam"
    updates_per_year: Annotated[int, Field(ge=1, le=100)] = 1
    temperature: float = Field(0.02, gt=0, description="softmax(U / (temperature x full-time gross income))")


class LLMPlanner(Strict):
    """An in-context LLM planner: history of schedules and outcomes in, next schedule out as constrained JSON."""

    kind: Literal["llm"]
    backend: dict[str, Any]
    every: PositiveInt = Field(1, description="years between proposals")
    history: Annotated[int, Field(ge=1, le=50)] = 6
    temperature: float = Field(0.0, ge=0)
    max_tokens: Annotated[int, Field(ge=16, le=1024)] = 96

    @model_validator(mode="after")
    def _backend_kind(self):
        if "kind" not in self.backend:
            raise ValueError("backend: needs a 'kind' (llamacpp, openai, vllm or replay)")
        return self


Planner = Annotated[Union[FixedPlanner, SaezPlanner, GradientPlanner, LLMPlanner], Field(discriminator="kind")]


class EconomyParams(Strict):
    """Workers choose weekly hours each tax year (one step = one year); a planner sets the marginal rates."""

    income: GB2Spec = GB2Spec()
    full_time_hours: float = Field(2080.0, gt=0, description="hours per year at 40 h/week: skill = income / this")
    hours_options: list[Annotated[int, Field(ge=0, le=168)]] = Field(default_factory=lambda: [0, 10, 20, 30, 40, 50, 60],
                                                                    min_length=2, max_length=64)
    weeks_per_year: float = Field(52.0, gt=0, le=52.2)
    elasticity: float = Field(0.4, gt=0, le=5, description="mean Frisch elasticity of hours (LLM Economist: 1/(3.5-1))")
    elasticity_sd: float = Field(0.3, ge=0, le=2, description="sd of log elasticity across workers")
    disutility: float = Field(20.0, gt=0, description="net wage ($/h) at which a 'balanced' worker chooses 40 h/week")
    personas: dict[str, Annotated[float, Field(ge=0)]] = Field(
        default_factory=lambda: {"striver": 1.0, "balanced": 1.0, "caregiver": 1.0, "semi_retired": 1.0},
        description="multipliers on the age-band persona shares (0 removes a persona)")
    schedule: TaxScheduleSpec = TaxScheduleSpec()
    planner: Planner = FixedPlanner(kind="fixed")
    max_rate: Fraction = Field(0.9, description="planners' rates stay in [0, max_rate]")
    transfer_share: Fraction = Field(1.0, description="share of revenue returned as an equal lump sum")
    inequality_aversion: float = Field(1.0, ge=0, le=10, description="Atkinson epsilon of the welfare objective")
    utility_floor: float = Field(1000.0, gt=0, description="dollars added to utility before the Atkinson mean")
    vote_every: Annotated[int, Field(ge=0)] = Field(0, description="years between votes (0: no voting)")
    challenger: TaxScheduleSpec = Field(default_factory=TaxScheduleSpec,
                                        description="the alternative schedule put to the vote")

    @model_validator(mode="after")
    def _options(self):
        h = self.hours_options
        if any(b <= a for a, b in zip(h, h[1:])):
            raise ValueError(f"hours_options: must be strictly increasing, got {h}")
        if self.challenger.thresholds != self.schedule.thresholds:
            raise ValueError("challenger: must use the same thresholds as schedule (rates differ, brackets do not)")
        if any(r > self.max_rate for r in self.schedule.rates) and self.planner.kind in ("saez", "gradient", "llm"):
            raise ValueError(f"max_rate: must be >= every starting rate of schedule ({max(self.schedule.rates)}), "
                             f"got {self.max_rate}")
        return self


class EconomyModel(Strict):
    kind: Literal["economy"]
    params: EconomyParams = EconomyParams()

# the built-in models' ``model:`` blocks; scenarios/registry.py has one entry per model (builder, checks, charts)
Model = Annotated[Union[EpidemicModel, SEIRModel, SocialModel, EconomyModel], Field(discriminator="kind")]


def union_tags(*unions) -> set[str]:
    """The ``kind`` values of discriminated unions of scenario classes."""
    return {tag for u in unions for cls in get_args(get_args(u)[0]) for tag in get_args(cls.model_fields["kind"].annotation)}


# -- interventions, run, output -------------------------------------------------
class InterventionSpec(Strict):
    """Edit a scheduled parameter on steps [start, end): ``multiply``, ``set`` or ``add`` ``value``."""

    name: str = ""
    param: str
    start: Annotated[int, Field(ge=0, le=MAX_STEPS)]
    end: Annotated[int, Field(gt=0, le=MAX_STEPS)]
    value: float
    mode: Literal["multiply", "set", "add"] = "multiply"

    @model_validator(mode="after")
    def _ordered(self):
        if self.end <= self.start:
            raise ValueError(f"end: must be > start ({self.start}), got {self.end}")
        return self


class RunSpec(Strict):
    steps: Annotated[int, Field(gt=0, le=MAX_STEPS)]
    seed: Seed = 0
    chunk_size: Annotated[int, Field(gt=0, le=MAX_STEPS)] = 30
    devices: Annotated[int, Field(gt=0, le=65_536)] = 1
    # sharded runs: graph pulls exchange only the halo each device reads (explicit all_to_all)
    # instead of letting XLA all-gather every source value; costs 8 B per stored contact
    halo: bool = False


class OutputSpec(Strict):
    dir: str = Field("runs", min_length=1, description="where run directories are made; no '..' parts")
    sample_agents: Count = 1000
    sample_every: PositiveInt = 7

    @model_validator(mode="after")
    def _dir_stays(self):
        parts = self.dir.replace("\\", "/").split("/")
        if ".." in parts or "\0" in self.dir:
            raise ValueError(f"dir: must not contain '..' parts or NUL, got {self.dir!r}")
        return self


class DecisionSpec(Strict):
    """One archetype decision: who is grouped, what is asked, how answers become behaviour.

    The archetype's answer is ``P = sum(value[o] * P(o))``, read as the probability of the event
    over one round (``policy.every`` steps), and turned into a per-step hazard
    ``h = 1 - (1 - P)**(1/every)``. What fills the model's per-agent ``target`` depends on the
    model: the epidemic's targets take ``logit(h)`` and map it to behaviour on the device with
    ``model.params.llm_map.<target>`` (``sigmoid(bias + slope * logit(h))``, fitted, see
    ``LogitAffine``); other models' targets take ``scale * h`` (``scale`` is rejected where the
    model maps answers itself).
    """

    name: str = Field(min_length=1)
    target: str = Field(min_length=1)
    group_by: list[str] = Field(min_length=1)
    options: list[str] = Field(min_length=2)
    value: dict[str, float]
    prompt: str = Field(min_length=1)
    scale: float | None = Field(None, ge=0, description="hazard multiplier for models without an on-device "
                                                        "map (default 1); the epidemic uses model.params.llm_map")
    heterogeneity: float = Field(0.0, ge=0, description="sd of per-agent logit noise")
    labels: dict[str, dict[str, str]] = Field(
        default_factory=dict, description="words shown in the prompt for a feature's levels, e.g. "
                                          "{age_band: {65A: 65 or older}} (levels not listed show their code)")

    @model_validator(mode="after")
    def _value_keys(self):
        unknown = sorted(set(self.value) - set(self.options))
        if unknown:
            raise ValueError(f"value: keys {unknown} are not among options {self.options}")
        if len(set(self.options)) != len(self.options):
            raise ValueError(f"options: must be distinct, got {self.options}")
        return self


class PolicySpec(Strict):
    """LLM archetype layer: one call per non-empty archetype (or per agent) per decision, every ``every`` steps."""

    backend: dict[str, Any]
    cache: str | None = Field(None, description="SQLite cache path; default <run_dir>/llm_cache.sqlite")
    every: PositiveInt = 7
    temperature: float = Field(1.0, gt=0)
    n_samples: PositiveInt = Field(1, description="option orders averaged per archetype (bias control)")
    pipelined: bool = False
    start_date: str = "2020-03-01"
    log_prompts: bool = False
    architecture: Literal["archetypes", "per_agent"] = Field(
        "archetypes", description="archetypes: one call per non-empty group_by combination; per_agent: one call "
                                  "per agent (its own group_by levels and statistics), for small populations")
    per_agent_max: PositiveInt = Field(20_000, description="largest population.size per_agent accepts")
    calibration: Literal["none", "content_free"] = Field(
        "none", description="content_free: divide each answer by the answer to the same prompt with every field "
                            "replaced by 'N/A' (contextual calibration, Zhao et al. 2021), per listed option order")
    decisions: list[DecisionSpec] = Field(min_length=1)

    @model_validator(mode="after")
    def _backend_kind(self):
        if "kind" not in self.backend:
            raise ValueError("backend: needs a 'kind' (llamacpp, openai, vllm or replay)")
        try:
            _dt.date.fromisoformat(self.start_date)
        except ValueError:
            raise ValueError(f"start_date: must be a date as YYYY-MM-DD, got {self.start_date!r}") from None
        return self


IDENT = r"^[a-z][a-z0-9_]*$"
LIKERT_5 = ["strongly disagree", "disagree", "neither agree nor disagree", "agree", "strongly agree"]


class PersonaFactorySpec(Strict):
    """``personas.factory``: a short narrative backstory per archetype (per distinct combination of the
    persona templates' fields), generated once per run by the policy's backend from a few-shot completion
    prompt (suited to a base model) and stored in ``personas.parquet`` (``backstory``); prompts read it as
    ``{backstory}``, and ``{persona}`` ends with it when ``into_persona``. Greedy decoding when
    ``temperature`` is 0 (the default); otherwise the backend's sampler seeded from ``run.seed`` and the
    archetype. The seed is part of the cache key either way (it also picks the order of the examples).
    A generation that fails ``retries + 1`` times, or comes back shorter than ``min_chars``, falls back to
    the persona text (counted as ``backstory_fallbacks`` in the manifest)."""

    examples: list[Annotated[str, Field(min_length=1)]] = Field(
        default_factory=lambda: [
            "Persona: a retired teacher in a small town.\nBackstory: She taught for thirty years and still "
            "tutors the neighbours' children; she reads two newspapers a day and distrusts rumours.",
            "Persona: a young delivery driver in a big city.\nBackstory: He works long shifts to support his "
            "younger brothers and follows the news on his phone between drops.",
            "Persona: a nurse with two children.\nBackstory: She works nights at the county hospital and "
            "plans every week around school runs and her mother's appointments."],
        min_length=1, description="few-shot examples, each 'Persona: ...\\nBackstory: ...'")
    prompt: str = Field("{examples}\n\nPersona: {persona}.\nBackstory:", min_length=1,
                        description="completion prompt over {examples} and {persona}")
    max_tokens: int = Field(48, ge=4, le=256, description="length bound of a backstory, in tokens")
    max_chars: int = Field(400, ge=20, le=4000, description="a backstory is cut at the last sentence end within this")
    min_chars: int = Field(10, ge=0, le=1000, description="shorter generations count as failures")
    stop: list[Annotated[str, Field(min_length=1)]] = Field(default_factory=lambda: ["\n"], max_length=8,
                                                            description="generation stops at any of these")
    temperature: float = Field(0.0, ge=0.0, le=2.0, description="0: greedy decoding")
    retries: int = Field(1, ge=0, le=5)
    into_persona: bool = Field(False, description="{persona} ends with the backstory")

    @model_validator(mode="after")
    def _check(self):
        if self.min_chars >= self.max_chars:
            raise ValueError(f"min_chars: {self.min_chars} must be below max_chars ({self.max_chars})")
        return self


class PersonaSpec(Strict):
    """How an agent's (or an archetype's) persona reads: ``{persona}`` in decision and survey prompts.

    Templates are ``str.format`` strings over the model's features (epidemic: ``age_band``,
    ``borough``, ``occupation``, ``labor``, ...; social: ``persona``, ``stance_bin``), shown
    as their words in ``labels`` (levels not listed show their code). With several templates,
    each combination of levels gets one, chosen by a hash of ``run.seed`` and the levels: the
    same seed renders the same personas. At archetype level a persona is rendered from the
    archetype's ``group_by`` levels, so every field a template names must be grouped on.
    """

    templates: list[Annotated[str, Field(min_length=1)]] = Field(min_length=1)
    labels: dict[str, dict[str, str]] = Field(default_factory=dict, description="words for a feature's levels")
    factory: PersonaFactorySpec | None = Field(None, description="LLM-generated backstories per archetype")


class SurveyItemSpec(Strict):
    """One question: ``likert`` (5-point agreement unless ``options`` lists the scale, low to high),
    ``choice`` (``options`` required) or ``yes_no`` (options yes, no)."""

    name: str = Field(pattern=IDENT)
    kind: Literal["likert", "choice", "yes_no"]
    question: str = Field(min_length=1)
    options: list[Annotated[str, Field(min_length=1)]] | None = None

    @model_validator(mode="after")
    def _options(self):
        if self.kind == "yes_no":
            if self.options not in (None, ["yes", "no"]):
                raise ValueError(f"options: a yes_no item's options are yes, no; got {self.options}")
            self.options = ["yes", "no"]
        elif self.kind == "likert" and self.options is None:
            self.options = list(LIKERT_5)
        elif self.options is None:
            raise ValueError("options: a choice item needs its options (at least 2)")
        if len(self.options) < 2:
            raise ValueError(f"options: needs at least 2, got {self.options}")
        if len(set(self.options)) != len(self.options):
            raise ValueError(f"options: must be distinct, got {self.options}")
        return self


class SurveySpec(Strict):
    """A questionnaire given to every archetype (``group_by`` combination) at ``steps``.

    Each item is one log-prob-scored call per archetype and listed option order (``orders``
    rotations of the listed options, averaged). ``prompt`` is the template every item uses:
    ``{question}`` is the item's question, ``{options}`` the listed options; the other fields
    are a decision prompt's (group-by labels, statistics, calendar, schedule, interventions,
    ``{persona}``). Steps must fall on the policy's cadence (multiples of ``policy.every``).
    """

    name: str = Field(pattern=IDENT)
    steps: list[Annotated[int, Field(ge=0, le=MAX_STEPS)]] = Field(min_length=1)
    group_by: list[str] = Field(min_length=1)
    labels: dict[str, dict[str, str]] = Field(default_factory=dict, description="words for a feature's levels")
    orders: PositiveInt = Field(2, description="listed option orders averaged per archetype and item (rotations)")
    prompt: str = Field("Survey question: {question}\nAnswer with one of: {options}.\nRespondent: {persona}.\nAnswer:",
                        min_length=1)
    items: list[SurveyItemSpec] = Field(min_length=1)


class DeepDecisionSpec(Strict):
    """One deep-agent decision: the same targets the archetype policy fills (``{memories}``, ``{observation}``,
    ``{options}``, ``{step}`` are the prompt's fields). ``P = sum(value[o] * P(o))`` as in :class:`DecisionSpec`."""

    target: str = Field(min_length=1)
    options: list[str] = Field(min_length=2)
    value: dict[str, float]
    prompt: str = Field(min_length=1)

    @model_validator(mode="after")
    def _value_keys(self):
        unknown = sorted(set(self.value) - set(self.options))
        if unknown:
            raise ValueError(f"value: keys {unknown} are not among options {self.options}")
        return self


class DeepAgentsSpec(Strict):
    """A few agents with a memory stream, reflections and their own LLM decisions (docs/deep_agents.md).

    Pick them by ``ids``, by a seeded ``sample`` of ``k`` agents, or by ``rule`` (feature -> level codes;
    the first ``k`` matching agents in a seeded order). ``k: 0`` is the same run as no block.
    """

    k: Annotated[int, Field(ge=0, le=INT32_MAX)] = 0
    select: Literal["ids", "sample", "rule"] = "sample"
    ids: list[Annotated[int, Field(ge=0)]] = []
    rule: dict[str, list[str]] = {}
    every: PositiveInt = 7
    observe_every: PositiveInt | None = Field(None, description="observation cadence (default: every); "
                                              "1 = every step, the decisions still every `every` steps")
    household: list[str] = Field(default_factory=list, description="features whose levels among the agent's "
                                 "household members each observation counts (e.g. [disease, isolating])")
    reflect_every: PositiveInt = 14
    top_k: PositiveInt = 5
    decay: float = Field(0.99, gt=0, le=1, description="recency = decay ** (steps since the memory)")
    weights: dict[Literal["recency", "importance", "relevance"], float] = Field(
        default_factory=lambda: {"recency": 1.0, "importance": 1.0, "relevance": 1.0})
    relevance: Literal["lexical", "embedding"] = "lexical"
    reflection_tokens: PositiveInt = 48
    context: str = Field("", description="the agent's turn, shared by its reflection and decisions: a template "
                         "over {memories}, {observation}, {step}; then each decision's prompt is its question alone")
    backend: dict[str, Any] | None = Field(None, description="default: policy.backend")
    decisions: list[DeepDecisionSpec] = []

    @model_validator(mode="after")
    def _picked(self):
        if self.select == "ids" and self.ids and self.k not in (0, len(self.ids)):
            raise ValueError(f"k: must equal len(ids) ({len(self.ids)}) with select: ids, got {self.k}")
        if any(w < 0 for w in self.weights.values()):
            raise ValueError("weights: must be >= 0")
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
    personas: PersonaSpec | None = None
    surveys: list[SurveySpec] = []
    deep_agents: DeepAgentsSpec | None = None

    @model_validator(mode="after")
    def _consistent(self):
        if isinstance(self.graph, MultilayerGraph) and not isinstance(self.population, NYCPopulation):
            raise ValueError("graph.kind: 'multilayer' needs population.kind 'nyc' (it uses households, jobs, schools)")
        _check_graph_fits(self.graph, self.population.size)
        if self.output.sample_agents > self.population.size:
            raise ValueError(
                f"output.sample_agents: must be <= population.size ({self.population.size}), "
                f"got {self.output.sample_agents}"
            )
        return self


def _check_graph_fits(graph, n: int) -> None:
    """Graph parameters the population size must allow (the generators' own preconditions)."""
    if isinstance(graph, ErdosRenyiGraph) and graph.mean_degree > n - 1:
        raise ValueError(f"graph.mean_degree: must be <= population.size - 1 ({n - 1}), got {graph.mean_degree}")
    if isinstance(graph, BarabasiAlbertGraph) and graph.m >= n:
        raise ValueError(f"graph.m: must be < population.size ({n}), got {graph.m}")
    if isinstance(graph, WattsStrogatzGraph) and graph.k >= n:
        raise ValueError(f"graph.k: must be < population.size ({n}), got {graph.k}")
