"""One check of a scenario before anything is allocated.

``simcore validate``, ``simcore run``, the server's uploads and experiment files all call
:func:`check_scenario` on a schema-valid :class:`~scenarios.Scenario` (``scenarios.load_scenario``
does the YAML and the schema, including graph sizes the population cannot satisfy). It adds what
needs to know the model, without building a population or a graph:

- interventions against the model's scheduled parameters, the graph kind against the model, the
  social model's capacities (``simcore.models.check``);
- the LLM policy's decision targets, group-by features and prompt fields against what the model
  offers (``simcore.models.policy_interface``), and the backend's kind and keys;
- ``run.devices`` against the devices there are and the population size;
- the memory floor against this machine's devices (``simcore.plan.check_floor``; ``simcore plan``
  measures the full figure);
- with ``backend=True``, the LLM backend itself is started (or reached) once and closed.

Every failure is a :class:`~scenarios.ScenarioError` (``field: reason``; exit code 2).
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Mapping

from scenarios import Scenario, ScenarioError, load_scenario


def check_scenario(scenario: Scenario, *, memory: bool = True, backend: bool = False) -> Scenario:
    from .models import check, policy_interface, scheduled_params

    check(scenario)
    if scenario.policy is not None:
        from llm_policy.backends import check_backend_spec
        from llm_policy.policy import check_policy_names

        iface = policy_interface(scenario)
        check_policy_names(scenario.policy, scenario.model.kind, iface["decision_targets"], iface["features"],
                           iface["stats"], scheduled=tuple(scheduled_params(scenario)),
                           interventions=scenario.interventions, n_agents=scenario.population.size,
                           decision_logits=iface["decision_logits"])
        try:
            check_backend_spec(scenario.policy.backend)
        except ValueError as exc:
            key, _, reason = str(exc).partition(": ")
            raise ScenarioError(f"policy.backend.{key}", reason) from None
    if scenario.personas is not None or scenario.surveys:
        _check_people(scenario)
    if scenario.deep_agents is not None:
        _check_deep_agents(scenario)
    _check_devices(scenario)
    if memory:
        from .plan import check_floor

        check_floor(scenario)
    if backend and scenario.policy is not None:
        start_backend(scenario)
    return scenario


def _check_people(scenario: Scenario) -> None:
    """``personas:`` templates and ``surveys:`` against the model's features and the run (llm_policy.surveys)."""
    from llm_policy.personas import check_personas
    from llm_policy.surveys import check_surveys

    from .models import policy_interface, scheduled_params

    iface = policy_interface(scenario)
    check_personas(scenario.personas, iface["features"], has_policy=scenario.policy is not None)
    check_surveys(scenario.surveys, features=iface["features"], stats_names=iface["stats"], steps=scenario.run.steps,
                  every=scenario.policy.every if scenario.policy is not None else None,
                  scheduled=tuple(scheduled_params(scenario)), interventions=scenario.interventions,
                  personas=scenario.personas)


def _check_deep_agents(scenario: Scenario) -> None:
    """``deep_agents:`` against the population and the model's features and targets (llm_policy.deep)."""
    from llm_policy.deep import check_deep_agents

    from .models import policy_interface

    iface = policy_interface(scenario)
    spec = scenario.deep_agents
    check_deep_agents(spec, n_agents=scenario.population.size, features=iface["features"],
                      decision_targets=iface["decision_targets"],
                      policy_every=scenario.policy.every if scenario.policy is not None else None)
    if spec.backend is not None:
        from llm_policy.backends import check_backend_spec

        try:
            check_backend_spec(spec.backend)
        except ValueError as exc:
            key, _, reason = str(exc).partition(": ")
            raise ScenarioError(f"deep_agents.backend.{key}", reason) from None


def _check_devices(scenario: Scenario) -> None:
    """What sharding would refuse after the build (simcore.engine.sharding): too many devices, uneven split."""
    import jax

    d, n = scenario.run.devices, scenario.population.size
    if d <= 1 or jax.process_count() > 1:  # a multi-process run's mesh is checked as it forms
        return
    if d > jax.device_count():
        raise ScenarioError("run.devices", f"{d} requested but only {jax.device_count()} available "
                                           f"({jax.default_backend()}); on CPU set "
                                           f"XLA_FLAGS=--xla_force_host_platform_device_count=N")
    if n % d:
        raise ScenarioError("run.devices", f"{n:,} agents do not split evenly over {d} devices; "
                                           f"make population.size a multiple of {d}")


def start_backend(scenario: Scenario) -> str:
    """Start (or reach) the scenario's LLM backend, score one short test prompt with the first
    decision's options (not cached), close it; returns the backend's identity."""
    from llm_policy.policy import open_backend
    from llm_policy.types import ScoreRequest

    spec = dict(scenario.policy.backend)
    kind = spec.get("kind")
    if kind != "replay":
        spec.pop("cache", None)  # the test prompt stays out of the response cache
    b = open_backend(spec)
    try:
        if kind != "replay":  # a replay cache answers only the prompts it has seen
            options = tuple(" " + o for o in scenario.policy.decisions[0].options)
            (res,) = b.score([ScoreRequest("Reply with one of the options. Answer:", options)])
            if res.error:
                raise ScenarioError("policy.backend", f"backend {kind!r} started but a test call failed: {res.error}")
        return str(getattr(b, "identity", kind))
    finally:
        b.close()


def load_checked(source: str | Path | Mapping, overrides: Iterable[str] = (), **kw) -> Scenario:
    """``load_scenario`` then :func:`check_scenario`: a scenario ``run`` will accept."""
    return check_scenario(load_scenario(source, overrides), **kw)
