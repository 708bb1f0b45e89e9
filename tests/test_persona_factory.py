"""The persona factory (issue 14, item 1): a backstory per archetype from ``backend.complete``, deterministic by
seed, kept in the one response cache, stored in personas.parquet, read as {backstory}; failures fall back to the
persona text and are counted; bad blocks are refused naming the field."""
from __future__ import annotations

import json
import math

import numpy as np
import polars as pl
import pytest

import llm_policy.backends as backends
from llm_policy.backends import ScriptedBackend
from llm_policy.cache import CachedBackend, ResponseCache, complete_key
from llm_policy.personas import backstory_prompt, backstory_seed, generate_backstories, render_persona
from scenarios import ScenarioError
from scenarios.loader import load_scenario
from scenarios.schema import PersonaSpec
from simcore.validation import check_scenario

SPEC = PersonaSpec(templates=["A {persona} user, {stance_bin}"], factory={"max_tokens": 20, "retries": 1})
COMBOS = [{"persona": p, "stance_bin": s} for p in ("creator", "lurker") for s in ("left", "neutral")]


def _story(prompt: str, seed: int) -> str:
    who = prompt.rsplit("Persona: ", 1)[1].split(".")[0]
    return f" Story of {who} number {seed % 97}.\nPersona: should be cut by the stop rule"


def test_prompt_is_few_shot_and_ends_open_for_a_base_model():
    p = backstory_prompt(SPEC, 7, COMBOS[0])
    assert p.endswith("Persona: A creator user, left.\nBackstory:")
    assert p.count("Backstory:") == len(SPEC.factory.examples) + 1


def test_same_seed_same_backstories_other_seed_other_key(tmp_path):
    b1 = ScriptedBackend(lambda p, o: [0.0] * len(o), text_fn=_story)
    a, fa, _ = generate_backstories(SPEC, 7, b1, COMBOS)
    b, _, _ = generate_backstories(SPEC, 7, ScriptedBackend(lambda p, o: [0.0] * len(o), text_fn=_story), COMBOS)
    assert a == b and fa == 0 and len(set(a)) == 4
    assert a[0] == f"Story of A creator user, left number {backstory_seed(7, COMBOS[0]) % 97}."  # stopped at "\n"
    assert [c[2] for c in b1.completions] == [backstory_seed(7, c) for c in COMBOS]
    assert all(c[1] == 20 for c in b1.completions)  # the length bound reaches the backend
    f = SPEC.factory
    keys = {s: complete_key("scripted:test", backstory_prompt(SPEC, s, COMBOS[0]), f.max_tokens, tuple(f.stop),
                            f.temperature, backstory_seed(s, COMBOS[0])) for s in (7, 8)}
    assert keys[7] != keys[8]
    # the seed is in the key even with the prompt held fixed (greedy decoding would otherwise share it)
    p = backstory_prompt(SPEC, 7, COMBOS[0])
    assert complete_key("x", p, 20, ("\n",), 0.0, 1) != complete_key("x", p, 20, ("\n",), 0.0, 2)


def test_cached_second_run_makes_no_backend_calls(tmp_path):
    path = tmp_path / "cache.sqlite"
    first = ScriptedBackend(lambda p, o: [0.0] * len(o), text_fn=_story)
    with ResponseCache(path) as cache:
        a, _, _ = generate_backstories(SPEC, 7, CachedBackend(first, cache), COMBOS)
    assert len(first.completions) == 4
    second = ScriptedBackend(lambda p, o: [0.0] * len(o), text_fn=lambda p, s: "never asked")
    with ResponseCache(path) as cache:
        b, _, _ = generate_backstories(SPEC, 7, CachedBackend(second, cache), COMBOS)
        assert cache.hits == 4 and cache.misses == 0
    assert b == a and second.completions == []
    # replay serves the same texts from the same file
    replay = backends.ReplayBackend(path, identity="scripted:test")
    assert generate_backstories(SPEC, 7, replay, COMBOS)[0] == a


def test_failures_retry_then_fall_back_to_the_persona_text_and_are_counted():
    tries: dict[str, int] = {}

    def flaky(prompt, seed):
        tries[prompt] = tries.get(prompt, 0) + 1
        if "lurker" in prompt:
            raise RuntimeError("backend down")
        if "neutral" in prompt:
            return " ok"  # shorter than min_chars
        return _story(prompt, seed)

    texts, fallbacks, errors = generate_backstories(SPEC, 7, ScriptedBackend(lambda p, o: [], text_fn=flaky), COMBOS)
    assert fallbacks == 3 and len(errors) == 6  # 3 archetypes x (1 + 1 retry)
    assert set(tries.values()) == {1, 2}
    assert texts[1] == render_persona(SPEC, 7, COMBOS[1]) and texts[2] == render_persona(SPEC, 7, COMBOS[2])
    assert texts[0].startswith("Story of")


FACTORY = ["population.size=600", "run.steps=12", "surveys.0.steps=[0]", "output.sample_agents=0",
           "personas.factory={max_tokens: 24, into_persona: true}",
           "surveys.0.prompt='{backstory}\nQuestion: {question}\nAnswer with one of: {options}.\nAnswer:'"]


def test_backstories_stored_in_personas_parquet_and_read_in_prompts(monkeypatch, tmp_path):
    from simcore.runs import run_scenario

    made: list[ScriptedBackend] = []

    def make(spec):
        made.append(ScriptedBackend(lambda p, o: [math.log(1 / len(o))] * len(o), identity="scripted:f",
                                    text_fn=_story))
        return made[-1]

    monkeypatch.setattr(backends, "make_backend", make)
    sc = load_scenario("polarization_llm_small", FACTORY)
    run_dir = run_scenario(sc, tmp_path / "run")
    personas = pl.read_parquet(run_dir / "personas.parquet")
    assert personas["backstory"].to_list() == [
        f"Story of {r['persona_text'].rstrip('.')} number {backstory_seed(sc.run.seed, {'persona': r['persona'], 'stance_bin': r['stance_bin']}) % 97}."
        for r in personas.iter_rows(named=True)]
    prompts = [r.prompt for batch in made[0].calls for r in batch]
    survey_prompts = [p for p in prompts if "Question:" in p]
    assert survey_prompts and {p.split("Question:")[0].strip() for p in survey_prompts} <= set(personas["backstory"])
    decision = [p for p in prompts if "Question:" not in p]
    assert decision and all(any(b in p for b in personas["backstory"]) for p in decision)  # into_persona
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["backstory_fallbacks"] == 0


@pytest.mark.parametrize("override,field", [
    ("personas.factory={max_tokens: 0}", "personas.factory.max_tokens"),
    ("personas.factory={colour: red}", "personas.factory.colour"),
    ("personas.factory={min_chars: 500, max_chars: 100}", "min_chars"),
    ("personas.factory={prompt: 'Who is {name}?'}", "personas.factory.prompt: unknown field {name}"),
    ("surveys.0.prompt='{backstory} {question} {options}'", "uses {backstory}, which needs a personas.factory"),
])
def test_bad_factory_blocks_are_refused_naming_the_field(override, field):
    with pytest.raises(ScenarioError) as err:
        check_scenario(load_scenario("polarization_llm_small", [override]), memory=False)
    assert field in str(err.value)


def test_household_size_levels_equal_a_numpy_count_over_households():
    import jax

    from llm_policy.personas import check_personas, feature_levels
    from simcore.models import build
    from simcore.models.epidemic import HOUSEHOLD_SIZES

    sc = load_scenario("covid_small", ["population.size=3000"])
    built = build(sc)
    hh = np.asarray(built.population.attributes["household"])
    ids, inverse, counts = np.unique(hh, return_inverse=True, return_counts=True)  # members per household id
    size = counts[inverse]
    band = np.where(size == 1, 0, np.where(size == 2, 1, np.where(size <= 4, 2, 3)))
    got = np.asarray(jax.device_get(built.model.features(built.state, built.params)["household_size"]))
    assert got.dtype == np.int8 and got.shape == (3000,)  # one byte per agent
    assert np.array_equal(got, band)
    assert len(np.unique(got)) > 1
    levels = feature_levels(built.model, built.state, built.params)
    assert levels["household_size"] == HOUSEHOLD_SIZES
    check_personas(PersonaSpec(templates=["someone from a household of {household_size}"]), levels)


@pytest.mark.llm
def test_embedded_model_writes_bounded_greedy_backstories():
    pytest.importorskip("llama_cpp")
    from llm_policy.backends.llamacpp import LlamaCppBackend

    b = LlamaCppBackend(n_ctx=1024, n_threads=1)
    try:
        spec = PersonaSpec(templates=["A {persona} user, {stance_bin}"], factory={"max_tokens": 32})
        a, fallbacks, errors = generate_backstories(spec, 1, b, COMBOS[:2])
        again, _, _ = generate_backstories(spec, 1, b, COMBOS[:2])
        raw = b.complete(backstory_prompt(spec, 1, COMBOS[0]), max_tokens=5, stop=("\n",))
    finally:
        b.close()
    assert fallbacks == 0 and errors == [] and a == again  # greedy: the same text again
    assert all(10 <= len(t) <= spec.factory.max_chars and "\n" not in t for t in a)
    assert 0 < len(raw.split()) <= 5  # the token bound holds (a token is at most a word here)
