"""The model registry: one entry per model, no drift between an entry and the model it names,
and a new model is one module plus one entry (a toy model registered here, build.py untouched)."""
from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
import polars as pl
import pytest

from simcore.session import drive
import yaml
from pydantic import Field

from scenarios import REGISTRY, ModelEntry, Registry, ScenarioError, builtin_names, load_scenario
from scenarios.registry import BUILTIN
from scenarios.schema import Model, Scenario, Strict, union_tags

# one short run per model: (scenario, overrides)
SHORT = {
    "epidemic": ("covid_small", ["population.size=3000", "output.sample_agents=20"]),
    "social": ("polarization_small", ["population.size=400", "model.params.post_capacity=2000",
                                      "model.params.initial_posts=100", "output.sample_agents=20"]),
    "economy": ("tax_saez_small", ["population.size=1000", "output.sample_agents=20"]),
    "seir": (None, []),  # no built-in scenario: SEIR_SCENARIO
}
SEIR_SCENARIO = {"name": "seir_short", "population": {"kind": "homogeneous", "size": 2000},
                 "graph": {"kind": "erdos_renyi", "mean_degree": 6}, "model": {"kind": "seir"},
                 "run": {"steps": 3, "seed": 2}, "output": {"sample_agents": 20}}


def test_every_builtin_model_has_one_entry_and_scenarios_import_no_jax():
    kinds = {load_scenario(name).model.kind for name in builtin_names()}
    assert kinds <= set(REGISTRY.kinds)
    assert set(REGISTRY.kinds) == union_tags(Model) == set(SHORT)  # the schema's models are the registry's
    assert REGISTRY.scenario_class is Scenario
    with pytest.raises(ValueError, match="registered twice"):
        Registry((*BUILTIN, BUILTIN[0]))
    with pytest.raises(ScenarioError, match="model.kind: must be one of"):
        REGISTRY.entry("nope")
    # the light part (schema, names, metric groups) needs no JAX: scenarios imports none
    code = ("import sys, scenarios; sc = scenarios.load_scenario('polarization_small'); "
            "scenarios.REGISTRY.entry_for(sc).describe(sc); print('jax' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


@pytest.mark.parametrize("kind", sorted(SHORT))
def test_an_entrys_groups_and_schedule_are_what_a_short_run_of_its_model_writes(kind, tmp_path):
    from simcore.cli import main
    from simcore.models import build

    name, overrides = SHORT[kind]
    if name is None:
        name = str(tmp_path / "seir.yaml")
        (tmp_path / "seir.yaml").write_text(yaml.safe_dump(SEIR_SCENARIO))
    out = tmp_path / "run"
    args = ["run", name, "--steps", "3", "--out", str(out)]
    for o in overrides:
        args += ["--set", o]
    assert main(args) == 0
    columns = set(pl.read_parquet(out / "metrics.parquet").columns)
    sc = load_scenario(name, overrides)
    entry = REGISTRY.entry_for(sc)
    groups = entry.groups(sc)
    assert groups, f"{kind} declares no charts"
    missing = {c for cols in groups.values() for c in cols} - columns
    assert not missing, f"{kind}'s metric groups name columns its run does not write: {sorted(missing)}"
    built = build(sc, steps=3)
    assert tuple(built.schedule) == entry.scheduled_params(sc)  # the names interventions are checked against
    assert built.metric_groups == groups
    view = entry.view(built)
    assert (view is None) == (entry.graph is None)
    if view is not None:
        assert view.kind == entry.graph
        nodes = np.arange(10, dtype=np.int32)
        codes = view.state(built.state, nodes)
        assert codes.shape == (10,) and ((0 <= codes) & (codes < len(view.labels))).all()
    if entry.agent_state is not None:
        assert entry.agent_state in built.model.labels


# -- a toy model, registered without touching simcore/models/build.py -------------------------------
class ToyParams(Strict):
    growth: float = Field(0.5, ge=0)
    start: float = Field(1.0, gt=0)


class ToyModel(Strict):
    kind: Literal["toy"]
    params: ToyParams = ToyParams()


@jax.tree_util.register_dataclass
@dataclass
class ToyState:
    value: jax.Array  # float32 [N]


def build_toy(scenario, seed):
    """The toy's builder: every agent's value grows by ``growth`` x ``boost`` per step."""
    from simcore.engine import Model as EngineModel
    from simcore.models import Built

    n = scenario.population.size

    def grow(st, p, key):
        return ToyState(st.value * (1 + p["growth"] * p["boost"]))

    def metrics(st, p):
        return {"total": jnp.sum(st.value), "mean": jnp.mean(st.value)}

    model = EngineModel(name="toy", substeps=(grow,), metrics=metrics)
    prm = scenario.model.params
    state = ToyState(jnp.full(n, prm.start, jnp.float32))
    return Built(model, state, {"growth": jnp.float32(prm.growth)}, {"boost": 1.0}, n, np.empty(0, np.int32))


def _toy_groups(scenario):
    return {"Toy value": ["total", "mean"]}


TOY = ModelEntry("toy", ToyModel, f"{__name__}:build_toy", _toy_groups, graphs=("none",), scheduled=("boost",))


def _toy_scenario(**model):
    return {"name": "toy", "population": {"kind": "homogeneous", "size": 10}, "graph": {"kind": "none"},
            "model": {"kind": "toy", **model}, "run": {"steps": 3, "seed": 0}, "output": {"sample_agents": 0},
            "interventions": [{"param": "boost", "start": 1, "end": 2, "value": 0.0, "mode": "set"}]}


def test_a_new_model_is_one_module_and_one_entry():
    from simcore.engine import Simulation
    from simcore.models import build, check

    reg = REGISTRY.with_entries(TOY)
    assert reg.kinds == (*REGISTRY.kinds, "toy") and "toy" not in REGISTRY
    sc = reg.validate(_toy_scenario(params={"growth": 1.0}))
    assert isinstance(sc, Scenario) and sc.model.params.growth == 1.0
    with pytest.raises(ScenarioError, match=r"model.params.growth: must be >= 0"):
        reg.validate(_toy_scenario(params={"growth": -1}))
    with pytest.raises(ScenarioError, match=r"model.kind: must be one of .*'toy'"):
        reg.validate(_toy_scenario() | {"model": {"kind": "toyz"}})
    with pytest.raises(ScenarioError, match="model.kind"):
        REGISTRY.validate(_toy_scenario())  # the built-in registry knows no toy
    bad = reg.validate({**_toy_scenario(), "interventions": [{"param": "nope", "start": 0, "end": 1, "value": 1}]})
    with pytest.raises(ScenarioError, match=r"interventions\[0\].param: unknown parameter 'nope' for model 'toy' "
                                            r"\(scheduled: boost\)"):
        check(bad, reg)
    with pytest.raises(ScenarioError, match="model 'toy' has no contact graph"):
        check(reg.validate({**_toy_scenario(), "graph": {"kind": "erdos_renyi", "mean_degree": 2}}), reg)

    built = build(sc, registry=reg)
    assert built.metric_groups == {"Toy value": ["total", "mean"]}
    sim = Simulation(built.model, built.state, built.params, built.schedule, seed=0, chunk_size=3)
    rows = []
    drive(sim, 3, on_chunk=lambda s, chunk: rows.append(chunk.metrics["mean"]))
    # doubles on steps 0 and 2; the intervention sets boost to 0 on step 1
    np.testing.assert_allclose(np.concatenate(rows), [2.0, 2.0, 4.0])


def test_what_plan_calibrate_and_the_session_ask_of_an_entry():
    """The knowledge plan, calibrate and the session used to switch on model.kind for, from the entries."""
    from simcore.calibrate import resolve_fit
    from simcore.plan import floor_bytes

    social = load_scenario("polarization_small", ["population.size=1000"])
    own = REGISTRY.entry_for(social).floor(social)
    prm = social.model.params
    assert own == {"population.size": 1000 * 4.0 * prm.max_followees,
                   "model.params.post_capacity": prm.post_capacity * 4.0 * prm.embedding_dim}
    assert floor_bytes(social)[2] == "model.params.post_capacity"  # posts outweigh everything else here
    assert REGISTRY.entry("seir").floor(social) == {}
    assert [e.kind for e in REGISTRY if e.calibrate] == ["epidemic"]
    with pytest.raises(ScenarioError, match="calibrate needs model 'epidemic', got 'social'"):
        resolve_fit(social, "model.params.x")
    fixed = load_scenario("tax_saez_small")
    assert REGISTRY.entry_for(fixed).host_policies_for(fixed) is None
    llm = load_scenario("tax_llm_planner_small")
    factory = REGISTRY.entry_for(llm).host_policies_for(llm)
    assert callable(factory) and REGISTRY.entry("social").host_policies_for(social) is None
