"""Deep agents (llm_policy.deep): decisions reach only them, K = 0 is no block, retrieval, reflections, resume."""
from __future__ import annotations

import math
import subprocess

import numpy as np
import polars as pl
import pytest

from conftest import SIMCORE
from llm_policy.deep import Memory, lexical_relevance, retrieval_scores, top_memories
from scenarios import ScenarioError, load_scenario
from scenarios.schema import Scenario
from simcore.validation import check_scenario

NYC = ["population.size=2000", "run.chunk_size=7", "output.sample_agents=50"]
IDS = [3, 17, 404, 1999]
DEEP = {"select": "ids", "ids": IDS, "every": 7, "reflect_every": 14, "top_k": 3,
        "decisions": [{"target": "isolate_llm", "options": ["yes", "no"], "value": {"yes": 1.0},
                       "prompt": "Memories:\n{memories}\nNow: {observation}\nDeep agent. Will you isolate next week "
                                 "({options})? Answer:"}]}
P_DEEP = 0.6  # the scripted deep agents' P(yes)


def script(prompt: str, options) -> list[float]:
    if "Deep agent." in prompt:
        return [math.log(P_DEEP), math.log(1 - P_DEEP)]
    query = prompt.rsplit("\n\n", 1)[-1]
    p = 0.8 if "Age 65 or older," in query else 0.3
    return [math.log(p), math.log(1 - p)]


def backend():
    from llm_policy.backends import ScriptedBackend

    return ScriptedBackend(script, text_fn=lambda prompt, seed: " should be careful: cases matter.\nignored")


def scenario(steps: int, deep: dict | None, *extra: str) -> Scenario:
    sc = load_scenario("covid_nyc", [*NYC, f"run.steps={steps}", *extra])
    if deep is None:
        return sc
    return Scenario.model_validate({**sc.model_dump(), "deep_agents": deep})


def run(sc, run_dir, steps=None, **kw):
    from simcore.session import RunSession

    with RunSession(sc, run_dir, backend=backend, **kw) as s:
        s.run(steps)
        params = {k: np.asarray(s.sim.params[k]) for k in ("isolate_llm", "work_llm")}
        s.close("stopped" if steps is not None and steps < s.steps else None)
    return params


def metrics(run_dir) -> pl.DataFrame:
    from simcore import rundir

    return pl.from_arrow(rundir.read_table(run_dir, "metrics")).drop(["wall_seconds", "llm_seconds"], strict=False)


def deep_rows(run_dir) -> pl.DataFrame:
    from simcore import rundir

    return pl.from_arrow(rundir.read_table(run_dir, "deep_agents"))


def test_decisions_reach_the_deep_agents_and_no_others(tmp_path):
    ref = run(scenario(14, None), tmp_path / "ref")
    got = run(scenario(14, DEEP), tmp_path / "deep")
    others = np.ones(2000, bool)
    others[IDS] = False
    # the archetype policy's values for every other agent are untouched (its grouping draws the same noise)
    for k in ("isolate_llm", "work_llm"):
        np.testing.assert_array_equal(got[k][others], ref[k][others])
    np.testing.assert_array_equal(got["work_llm"][IDS], ref["work_llm"][IDS])  # not a deep decision
    h = 1 - (1 - P_DEEP) ** (1 / 7)
    np.testing.assert_allclose(got["isolate_llm"][IDS], np.float32(math.log(h) - math.log1p(-h)), rtol=1e-6)
    assert not np.allclose(ref["isolate_llm"][IDS], got["isolate_llm"][IDS])
    rows = deep_rows(tmp_path / "deep")
    dec = rows.filter(pl.col("kind") == "decision")
    assert sorted(dec["agent_id"].unique().to_list()) == IDS and sorted(dec["step"].unique().to_list()) == [0, 7]
    np.testing.assert_allclose(dec["p"].to_numpy(), P_DEEP, rtol=1e-6)
    assert (dec["target"] == "isolate_llm").all()
    obs = rows.filter(pl.col("kind") == "observation")
    assert obs.height == 2 * len(IDS)
    first, later = obs.filter(pl.col("step") == 0), obs.filter(pl.col("step") == 7)
    assert first["text"].str.contains("borough").all()  # the whole row first, then only what changed
    assert not later["text"].str.contains("borough").any() and later["text"].str.starts_with("Day 7: ").all()
    assert obs["importance"].min() >= 1 and obs["importance"].max() <= 10
    assert rows.schema["importance"] == pl.Float32 and rows.schema["p"] == pl.Float32


def test_k0_equals_no_block(tmp_path):
    run(scenario(14, None), tmp_path / "a")
    run(scenario(14, {"select": "sample", "k": 0, "every": 7}), tmp_path / "b")
    assert metrics(tmp_path / "a").equals(metrics(tmp_path / "b"))
    from simcore import rundir

    assert not rundir.has_table(tmp_path / "b", "deep_agents")


def test_retrieval_ranks_by_the_documented_score():
    mems = [Memory(0, "observation", "cases rising in my borough", 4.0),
            Memory(6, "observation", "went to work today", 1.0),
            Memory(7, "reflection", "cases are rising so I should isolate", 8.0)]
    q = "should I isolate because cases are rising"
    rel = np.array([lexical_relevance(q, m.text) for m in mems])
    # W(q) = {should, isolate, because, cases, are, rising} (6 words of >= 3 letters); W(m) = {cases, rising,
    # borough}, {went, work, today}, {cases, are, rising, should, isolate}: overlaps 2, 0, 5 of min sizes 3, 3, 5
    np.testing.assert_allclose(rel, [3 / 4, 1 / 4, 6 / 6])
    scores = retrieval_scores(mems, 10, rel, 0.9, {"recency": 1.0, "importance": 1.0, "relevance": 1.0})
    expect = [0.9 ** 10 * 0.4 * 3 / 4, 0.9 ** 4 * 0.1 * 1 / 4, 0.9 ** 3 * 0.8 * 1.0]
    np.testing.assert_allclose(scores, expect)
    assert top_memories(scores, mems, 2) == [2, 0]
    # recency alone (the other weights 0) puts the newest first
    s2 = retrieval_scores(mems, 10, rel, 0.9, {"recency": 1.0, "importance": 0.0, "relevance": 0.0})
    assert top_memories(s2, mems, 3) == [2, 1, 0]


def test_reflections_every_r_steps_and_resume_equals_uninterrupted(tmp_path):
    deep = {**DEEP, "reflect_every": 7}
    run(scenario(28, deep), tmp_path / "full")
    run(scenario(28, deep), tmp_path / "cut", steps=14, checkpoint_every=7)
    from simcore.session import resume_run

    resume_run(tmp_path / "cut", backend=backend)
    full = deep_rows(tmp_path / "full")
    refl = full.filter(pl.col("kind") == "reflection")
    assert sorted(refl["step"].unique().to_list()) == [7, 14, 21]
    assert refl.height == 3 * len(IDS) and (refl["importance"] == 8).all()
    assert (refl["text"] == "This person should be careful: cases matter.").all()  # cut at the line's end
    assert metrics(tmp_path / "cut").equals(metrics(tmp_path / "full"))
    assert deep_rows(tmp_path / "cut").equals(full)


@pytest.mark.parametrize("deep, field", [
    ({"select": "ids", "ids": [5, 2000]}, "deep_agents.ids"),
    ({"select": "sample", "k": 2001}, "deep_agents.k"),
    ({"select": "sample", "k": 3, "every": 7, "reflect_every": 10}, "deep_agents.reflect_every"),
    ({"select": "rule", "k": 3, "rule": {"shoe_size": ["42"]}}, "deep_agents.rule.shoe_size"),
    ({"select": "sample", "k": 3, "decisions": [{**DEEP["decisions"][0], "target": "fly"}]},
     "deep_agents.decisions[0].target"),
])
def test_validation_names_the_field(deep, field, tmp_path, cli_env):
    sc = scenario(14, deep)
    with pytest.raises(ScenarioError) as exc:
        check_scenario(sc, memory=False)
    assert exc.value.field == field
    path = tmp_path / "s.yaml"
    import yaml

    path.write_text(yaml.safe_dump(sc.model_dump(mode="json")))
    proc = subprocess.run([*SIMCORE, "validate", str(path)], capture_output=True, text=True, env=cli_env, cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith(f"error: {field}:"), proc.stderr
    assert "Traceback" not in proc.stderr


def test_rule_selection_is_seeded_and_matches_the_rule():
    from llm_policy.deep import select_agents
    from scenarios.schema import DeepAgentsSpec

    rng = np.random.default_rng(0)
    feats = {"age_band": rng.integers(0, 3, 500), "borough": rng.integers(0, 2, 500)}
    labels = {"age_band": ("young", "mid", "old"), "borough": ("BK", "QN")}
    spec = DeepAgentsSpec(select="rule", k=10, rule={"age_band": ["old"], "borough": ["QN"]})
    a = select_agents(spec, feats, labels, 500, seed=1)
    assert len(a) == 10 and len(set(a)) == 10
    assert (feats["age_band"][a] == 2).all() and (feats["borough"][a] == 1).all()
    np.testing.assert_array_equal(a, select_agents(spec, feats, labels, 500, seed=1))
    assert not np.array_equal(a, select_agents(spec, feats, labels, 500, seed=2))
    with pytest.raises(ScenarioError, match="deep_agents.rule"):
        select_agents(DeepAgentsSpec(select="rule", k=500, rule={"age_band": ["old"]}), feats, labels, 500, seed=1)


def test_failed_deep_calls_fall_back_to_the_heuristic_and_are_counted(tmp_path):
    from llm_policy.backends import ScriptedBackend
    from simcore.session import RunSession

    def failing(prompt, options):
        if "Deep agent." in prompt:
            raise TimeoutError("injected")
        return script(prompt, options)

    def no_json(prompt, schema):
        from llm_policy.types import BackendError

        raise BackendError("injected")

    sc = scenario(14, {**DEEP, "reflect_every": 7}, "policy.every=14")
    with RunSession(sc, tmp_path / "r", backend=lambda: ScriptedBackend(failing, json_fn=no_json)) as s:
        s.run()
        iso = np.asarray(s.sim.params["isolate_llm"])
        stats = s.deep_agents.stats
    assert np.isnan(iso[IDS]).all()  # NaN: the model's heuristic decides for them
    assert stats.fallbacks == 2 * len(IDS) + len(IDS) and stats.calls == 3 * len(IDS)  # 2 decisions, 1 reflection
    rows = deep_rows(tmp_path / "r")
    assert rows.filter(pl.col("kind") == "decision")["p"].is_nan().all()


def test_context_mode_one_thread_per_agent_reflection_then_questions(tmp_path):
    """With ``context`` each agent's turn is one thread: the context (memories retrieved once for the round and
    today's observation), its reflection, then each decision's question; what the backend is asked is exactly
    that concatenation, and the decisions still reach the deep agents alone."""
    from llm_policy.backends import ScriptedBackend
    from simcore.session import RunSession

    deep = {**DEEP, "reflect_every": 7, "context": "Deep agent. Day {step}. Memories:\n{memories}\nNow: {observation}",
            "decisions": [{**DEEP["decisions"][0], "prompt": "Will you isolate next week ({options})? Answer:"}]}
    made = []

    def make():
        made.append(ScriptedBackend(script, text_fn=lambda prompt, seed: " should be careful: cases matter.\nno"))
        return made[-1]

    with RunSession(scenario(14, deep), tmp_path / "r", backend=make) as s:
        s.run()
        iso = np.asarray(s.sim.params["isolate_llm"])
    h = 1 - (1 - P_DEEP) ** (1 / 7)
    np.testing.assert_allclose(iso[IDS], np.float32(math.log(h) - math.log1p(-h)), rtol=1e-6)
    asked = [r.prompt for b in made for batch in b.calls for r in batch if r.prompt.startswith("Deep agent. Day 7.")]
    reflected = [p for b in made for p, _, _ in b.completions if p.startswith("Deep agent. Day 7.")]
    assert len(asked) == len(reflected) == len(IDS)
    for prompt in reflected:  # the reflection continues the context
        assert prompt.endswith("\nWhat this person concludes: This person") and "\nNow: Day 7: " in prompt
    for prompt in asked:  # the question follows the context, the reflection and its line break
        head, question = prompt.split(" should be careful: cases matter.", 1)
        assert head in reflected and question == "\nWill you isolate next week (yes or no)? Answer:"
    rows = deep_rows(tmp_path / "r")
    assert rows.filter((pl.col("kind") == "reflection"))["step"].unique().to_list() == [7]


def test_context_mode_validation_names_the_field():
    deep = {**DEEP, "context": "Memories:\n{memories}\n{mood}"}
    with pytest.raises(ScenarioError) as exc:
        check_scenario(scenario(14, deep), memory=False)
    assert exc.value.field == "deep_agents.context"
    deep = {**DEEP, "context": "Memories:\n{memories}"}  # a question after a context has no {memories} of its own
    with pytest.raises(ScenarioError) as exc:
        check_scenario(scenario(14, deep), memory=False)
    assert exc.value.field == "deep_agents.decisions[0].prompt"


def test_a_deep_agent_run_without_a_policy_is_interviewed_from_its_own_cache(tmp_path):
    """No policy: block (as covid_deep_small): the deep agents' answers go to the run's response cache, the
    checkpoint's deep row count is not taken for an llm_calls count, and an interview's restore replays the
    deep rounds from the cache instead of failing."""
    from simcore.interviews import interview
    from simcore import rundir

    made = []

    def make():
        made.append(backend())
        return made[-1]

    sc = scenario(14, {**DEEP, "reflect_every": 7}, "policy=null")
    from simcore.session import RunSession

    with RunSession(sc, tmp_path / "r", backend=make, checkpoint_every=7) as s:
        s.run()
    assert (tmp_path / "r" / "llm_cache.sqlite").is_file() and not rundir.has_table(tmp_path / "r", "llm_calls")
    row = interview(tmp_path / "r", 10, "How are you?", agent=IDS[0], options="fine|not fine", backend=backend)
    assert row["step"] == 10 and "Your memories:" in row["prompt"]


def test_daily_observations_with_the_household_between_weekly_decisions(tmp_path):
    """observe_every: 1 stores an observation on every step where something changed (always at a decision step),
    each with the agent's household members' levels counted; decisions stay weekly; an unknown household
    feature is refused by name."""
    from simcore.session import RunSession

    deep = {**DEEP, "observe_every": 1, "household": ["disease", "isolating"]}
    with RunSession(scenario(14, deep), tmp_path / "r", backend=backend) as s:
        s.run()
        mates = s.deep_agents.mates
        hh = np.asarray(s.built.population.attributes["household"])
    rows = deep_rows(tmp_path / "r")
    obs = rows.filter(pl.col("kind") == "observation")
    steps = sorted(obs["step"].unique().to_list())
    assert {0, 7} <= set(steps) and len(steps) > 2  # days between the decisions, where something changed
    assert sorted(rows.filter(pl.col("kind") == "decision")["step"].unique().to_list()) == [0, 7]
    for j, a in enumerate(IDS):
        assert sorted(mates[j].tolist()) == sorted(set(np.flatnonzero(hh == hh[a]).tolist()) - {a})
        first = obs.filter((pl.col("agent_id") == a) & (pl.col("step") == 0))["text"][0]
        if len(mates[j]):
            assert "household disease" in first and "household isolating" in first
        else:
            assert "household disease lives alone" in first
    bad = {**DEEP, "household": ["shoe_size"]}
    with pytest.raises(ScenarioError) as exc:
        check_scenario(scenario(14, bad), memory=False)
    assert exc.value.field == "deep_agents.household[0]"
