"""The model registry: one entry per model, and the only place that maps a ``model.kind`` to a model.

An entry holds what the rest of the house needs to know about a model:

- ``spec``: the pydantic class of the scenario's ``model:`` block (``kind`` literal plus ``params``);
- ``graphs``: the ``graph.kind`` values the model accepts (``("none",)`` for a model without a graph);
- ``scheduled``: the scheduled (intervenable) parameters: a tuple, or ``"module:ATTR"`` resolved lazily;
- ``check``, ``interface``, ``builder``, ``graph_view``: ``"module:function"`` references, imported only
  when called, so that importing this module (and ``scenarios``) never imports JAX or a model;
- ``metric_groups``: the dashboard's charts, ``scenario -> {title: [column, ...]}``, known without building;
- ``graph``: what the dashboard's network view shows (``"contact"``, ``"follow"`` or None);
- ``series_colors``: optional colours of named series and node states on the dashboard;
- ``agent_state``: the categorical column of sampled agents the dashboard filters on (None: none);
- ``interview_context``: ``"module:function"`` giving an interviewed agent's local environment in words
  (``fn(built, state, params, members, metrics, step) -> [line, ...]``, see :mod:`simcore.interviews`;
  None: the features and statistics alone).
- ``calibrate``: whether ``simcore calibrate`` can fit the model (its metrics have the observed series);
- ``host_policies``: ``"module:function"``, ``scenario -> (() -> [HostPolicy, ...]) | None``: the model's
  own host policies (the economy's LLM planner), a factory the run session calls once it runs;
- ``floor_bytes``: ``scenario -> {field: bytes}``, the device bytes the model's own arrays need at the
  least, beyond the 1 B of state and 4 B of row pointer per agent every model has (``simcore plan``'s
  floor, :func:`simcore.plan.floor_bytes`); each figure under the scenario field that sets it.

The built-in entries are the tuple :data:`BUILTIN`; :data:`REGISTRY` is an immutable :class:`Registry` over
them. Adding a model means one module (its substeps and builder) and one entry. A registry with extra
entries is ``REGISTRY.with_entries(entry)``; it validates scenarios of those kinds too
(:meth:`Registry.validate`) and ``simcore.models.build(scenario, registry=...)`` builds them.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Annotated, Any, Callable, Iterable, Mapping, Union, get_args

from pydantic import Field, ValidationError, create_model

from .loader import ScenarioError, format_validation_error
from .schema import EconomyModel, EpidemicModel, Model, Scenario, SEIRModel, SocialModel

FOLLOW_GRAPHS = ("erdos_renyi", "barabasi_albert", "watts_strogatz")

Groups = dict[str, list[str]]


def resolve(ref: str) -> Any:
    """``"package.module:attr"`` -> the attribute (the module is imported now)."""
    module, sep, attr = ref.partition(":")
    if not sep or not module or not attr:
        raise ValueError(f"a reference is 'module:attr', got {ref!r}")
    return getattr(importlib.import_module(module), attr)


def _no_check(scenario: Scenario) -> None:
    return None


@dataclass(frozen=True)
class ModelEntry:
    kind: str
    spec: type
    builder: str
    metric_groups: Callable[[Scenario], Groups]
    graphs: tuple[str, ...]
    scheduled: tuple[str, ...] | str = ()
    interface: str | None = None
    check: str | None = None
    graph: str | None = None
    graph_view: str | None = None
    series_colors: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    agent_state: str | None = None
    floor_bytes: Callable[[Scenario], Mapping[str, float]] | None = None
    host_policies: str | None = None
    calibrate: bool = False
    description: str = ""
    interview_context: str | None = None

    def __post_init__(self):
        kinds = get_args(self.spec.model_fields["kind"].annotation)
        if kinds != (self.kind,):
            raise ValueError(f"entry {self.kind!r}: spec {self.spec.__name__}.kind must be Literal[{self.kind!r}], "
                             f"got {kinds}")
        if (self.graph is None) != (self.graph_view is None):
            raise ValueError(f"entry {self.kind!r}: graph and graph_view go together")
        object.__setattr__(self, "series_colors", MappingProxyType(dict(self.series_colors)))

    # -- known without building (no model module imported unless the entry names one) -------------
    def scheduled_params(self, scenario: Scenario) -> tuple[str, ...]:
        names = resolve(self.scheduled) if isinstance(self.scheduled, str) else self.scheduled
        return tuple(names(scenario) if callable(names) else names)

    def policy_interface(self, scenario: Scenario) -> dict[str, tuple[str, ...]]:
        """What the model offers an archetype policy: ``decision_targets``, ``features``, ``stats``,
        ``decision_logits``."""
        empty = {"decision_targets": (), "features": (), "stats": (), "decision_logits": ()}
        if self.interface is None:
            return empty
        return {**empty, **resolve(self.interface)(scenario)}

    def groups(self, scenario: Scenario) -> Groups:
        return {str(t): list(cols) for t, cols in self.metric_groups(scenario).items()}

    def describe(self, scenario: Scenario) -> dict[str, Any]:
        """What the dashboard needs to draw a run of this model (JSON-able)."""
        return {"kind": self.kind, "metric_groups": self.groups(scenario), "graph": self.graph,
                "series_colors": dict(self.series_colors), "agent_state": self.agent_state}

    def host_policies_for(self, scenario: Scenario) -> Callable[[], list] | None:
        """The factory of the model's own host policies for ``scenario``, or None where it has none."""
        return None if self.host_policies is None else resolve(self.host_policies)(scenario)

    def floor(self, scenario: Scenario) -> dict[str, float]:
        """The model's own least device bytes, by the scenario field that sets each (see ``floor_bytes``)."""
        return {} if self.floor_bytes is None else {k: float(v) for k, v in self.floor_bytes(scenario).items()}

    def check_scenario(self, scenario: Scenario) -> None:
        """The model's semantic checks (graph kind, interventions, its own), without building anything."""
        g = scenario.graph.kind
        if g not in self.graphs:
            if self.graphs == ("none",):
                raise ScenarioError("graph.kind", f"model {self.kind!r} has no contact graph: set graph.kind 'none'")
            if g == "none":
                raise ScenarioError("graph.kind", f"model {self.kind!r} needs a graph, got 'none'")
            raise ScenarioError("graph.kind", f"model {self.kind!r} needs graph.kind "
                                              f"{' or '.join(map(repr, self.graphs))}, got {g!r}")
        names = self.scheduled_params(scenario)
        for i, iv in enumerate(scenario.interventions):
            if iv.param not in names:
                raise ScenarioError(f"interventions[{i}].param",
                                    f"unknown parameter {iv.param!r} for model {self.kind!r} "
                                    f"(scheduled: {', '.join(names)})")
        (resolve(self.check) if self.check else _no_check)(scenario)

    # -- needs the model (imports it, and JAX) ---------------------------------------------------------
    def build(self, scenario: Scenario, seed: int):
        """``simcore.models.Built`` for ``scenario`` (population, graph, state, params, base schedule)."""
        return resolve(self.builder)(scenario, seed)

    def view(self, built) -> Any:
        """The network view's source (``simcore.models.GraphView``) for ``built``, or None without a graph."""
        return None if self.graph_view is None else resolve(self.graph_view)(built)


class Registry:
    """An immutable mapping ``kind -> ModelEntry``."""

    def __init__(self, entries: Iterable[ModelEntry]):
        table: dict[str, ModelEntry] = {}
        for e in entries:
            if e.kind in table:
                raise ValueError(f"model kind {e.kind!r} registered twice")
            table[e.kind] = e
        self._entries = MappingProxyType(table)
        specs = tuple(e.spec for e in table.values())
        if set(specs) == set(get_args(get_args(Model)[0])):
            self._scenario = Scenario
        else:
            union = Annotated[Union[specs], Field(discriminator="kind")] if len(specs) > 1 else specs[0]
            self._scenario = create_model("Scenario", __base__=Scenario, model=(union, ...))

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def __contains__(self, kind: object) -> bool:
        return kind in self._entries

    def __iter__(self):
        return iter(self._entries.values())

    def entry(self, kind: str) -> ModelEntry:
        try:
            return self._entries[kind]
        except KeyError:
            raise ScenarioError("model.kind", f"must be one of {list(self._entries)}, got {kind!r}") from None

    def entry_for(self, scenario: Scenario) -> ModelEntry:
        return self.entry(scenario.model.kind)

    def with_entries(self, *extra: ModelEntry) -> "Registry":
        return Registry((*self._entries.values(), *extra))

    @property
    def scenario_class(self) -> type[Scenario]:
        """The scenario schema whose ``model:`` is any of this registry's specs."""
        return self._scenario

    def validate(self, data: Mapping[str, Any]) -> Scenario:
        try:
            return self._scenario.model_validate(data)
        except ValidationError as exc:
            raise format_validation_error(exc, self.kinds) from None


# -- the built-in models ---------------------------------------------------------------------------
COMPARTMENT_COLORS = {"S": "#2563eb", "E": "#f59e0b", "I": "#dc2626", "R": "#16a34a", "M": "#374151",
                      "new_infections": "#dc2626", "new_cases": "#f59e0b", "new_deaths": "#374151"}

# the follow graph's node colours: stance bins, against (blue) to for (red)
STANCE_COLORS = {"strongly_against": "#1d4ed8", "against": "#60a5fa", "neutral": "#9ca3af", "for": "#f87171",
                 "strongly_for": "#b91c1c"}


def _seir_groups(scenario: Scenario) -> Groups:
    return {"Compartments": ["S", "E", "I", "R"], "New infections": ["new_infections"]}


def _epidemic_groups(scenario: Scenario) -> Groups:
    return {"Epidemic compartments": ["S", "E", "I", "R", "M"],
            "New infections / cases / deaths": ["new_infections", "new_cases", "new_deaths"],
            "Behaviour": ["isolating_share", "unemployment_rate"]}


def _social_groups(scenario: Scenario) -> Groups:
    return {"Stance and polarization": ["stance_mean", "stance_var", "extremity", "extreme_share", "bimodality"],
            "Posts": ["n_create_post", "n_repost", "n_quote", "n_comment"],
            "Actions": ["active", "n_like", "n_dislike", "n_follow", "n_unfollow", "n_mute"],
            "Feeds": ["feed_stance_distance", "feed_fill"]}


def _economy_groups(scenario: Scenario) -> Groups:
    n_brackets = len(scenario.model.params.schedule.rates)
    return {
        "Output and revenue": ["output", "revenue"],
        "Inequality": ["gini_pre", "gini_post"],
        "Welfare": ["welfare_utilitarian", "welfare_atkinson"],
        "Marginal rates by bracket": [f"rate_b{b}" for b in range(n_brackets)],
        "Labour": ["mean_hours", "participation_rate"],
        "Voting and planner": ["vote_share", "challenger_elected", "planner_fallbacks"],
    }


def _epidemic_floor(scenario: Scenario) -> dict[str, float]:
    # int8 disease state and attributes (7 B in all) and 4 contact layers' row pointers, beyond the common 1 + 4 B
    return {"population.size": scenario.population.size * (7.0 + 4 * 4 - 1.0)}


def _social_floor(scenario: Scenario) -> dict[str, float]:
    # the follow slots (int32 per followee) and the post ring's float32 embeddings
    prm = scenario.model.params
    return {"population.size": scenario.population.size * 4.0 * prm.max_followees,
            "model.params.post_capacity": prm.post_capacity * 4.0 * prm.embedding_dim}


_B = "simcore.models.build"
BUILTIN: tuple[ModelEntry, ...] = (
    ModelEntry("epidemic", EpidemicModel, f"{_B}:build_epidemic", _epidemic_groups, graphs=("multilayer",),
               scheduled="simcore.models.epidemic:SCHEDULED", interface=f"{_B}:epidemic_interface",
               graph="contact", graph_view=f"{_B}:contact_view", series_colors=COMPARTMENT_COLORS,
               agent_state="disease", floor_bytes=_epidemic_floor, calibrate=True,
               description="SEIRM on a household/work/school/community contact graph",
               interview_context="simcore.models.epidemic:interview_context"),
    ModelEntry("seir", SEIRModel, f"{_B}:build_seir", _seir_groups, graphs=FOLLOW_GRAPHS,
               scheduled=("contact_scale",), graph="contact", graph_view=f"{_B}:contact_view",
               series_colors=COMPARTMENT_COLORS, agent_state="disease",
               description="plain network SEIR (analytic checks, Mesa comparison)"),
    ModelEntry("social", SocialModel, f"{_B}:build_social", _social_groups, graphs=FOLLOW_GRAPHS,
               scheduled="simcore.models.social:SCHEDULED", interface=f"{_B}:social_interface",
               check=f"{_B}:check_social", graph="follow", graph_view=f"{_B}:follow_view",
               series_colors=STANCE_COLORS, agent_state="persona", floor_bytes=_social_floor,
               description="OASIS-like social platform: posts, feeds, follows, stances"),
    ModelEntry("economy", EconomyModel, f"{_B}:build_economy", _economy_groups, graphs=("none",),
               scheduled="simcore.models.economy:SCHEDULED", interface=f"{_B}:economy_interface",
               check=f"{_B}:check_economy", agent_state="persona", host_policies="llm_policy.planner:host_policies",
               description="workers choose hours under a planner's tax schedule"),
)

REGISTRY = Registry(BUILTIN)
