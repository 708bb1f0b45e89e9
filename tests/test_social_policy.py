"""The shipped social LLM scenario (polarization_llm_small) end to end: scripted answers recorded, then replayed."""
from __future__ import annotations

import math

import polars as pl
import pytest

import llm_policy.backends as backends
from llm_policy.backends import ScriptedBackend
from scenarios.loader import load_scenario
from simcore.runs import run_scenario


def _script(prompt, options):
    """Every archetype posts often, likes at P = 0.99 per round and never reposts; creators post most."""
    if "Question:" in prompt:  # the survey items: a fixed answer per option position (tests/test_surveys.py)
        return [-0.5 * k for k in range(len(options))]
    query = prompt.rsplit("\n\n", 1)[1]
    if "Will repost:" in query:
        p = 1e-6
    elif "Will like:" in query:
        p = 0.99
    else:
        p = 0.95 if "posts every day" in query else 0.5
    lp = {" yes": math.log(p), " no": math.log1p(-p)}
    return [lp[o] for o in options]


SHORT = ["run.steps=36", "surveys.0.steps=[0, 24]"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("social_llm")
    patch = pytest.MonkeyPatch()
    patch.setattr(backends, "make_backend", lambda spec: ScriptedBackend(_script, identity="scripted:social"))
    try:
        llm = run_scenario(load_scenario("polarization_llm_small", [*SHORT]), base / "llm")
    finally:
        patch.undo()
    cache = llm / "llm_cache.sqlite"
    replay = run_scenario(load_scenario("polarization_llm_small", [
        *SHORT, f"policy.backend={{kind: replay, cache: '{cache}'}}"]), base / "replay")
    heuristic = run_scenario(load_scenario("polarization_llm_small", ["run.steps=36", "policy=null", "surveys=[]"]),
                             base / "heuristic")
    return llm, replay, heuristic


def test_calls_are_logged_once_per_archetype_and_round(runs):
    llm, replay, _ = runs
    calls = pl.read_parquet(llm / "llm_calls.parquet")
    # 3 rounds (steps 0, 12, 24) x 3 decisions x the non-empty persona x stance-bin archetypes
    assert sorted(calls["step"].unique()) == [0, 12, 24]
    assert calls["prompt"].null_count() == len(calls)  # log_prompts is off: hashes only
    assert set(calls["decision"]) == {"post", "repost", "like"}
    per_round = calls.group_by("step", "decision").agg(pl.col("group_size").sum(), pl.len())
    assert (per_round["group_size"] == 2000).all() and (per_round["len"] <= 15).all()
    assert (calls["n_samples"] == 2).all() and not calls["fallback"].any()
    assert calls["archetype"].str.contains("persona=").all() and calls["archetype"].str.contains("stance_bin=").all()
    # the decision prompts show {persona}, rendered per archetype from personas: (creators "post every day")
    post = calls.filter(pl.col("decision") == "post")
    creator = post["archetype"].str.contains("persona=creator")
    assert post.filter(creator)["p_event"].to_numpy() == pytest.approx(0.95, abs=1e-6)
    assert post.filter(~creator)["p_event"].to_numpy() == pytest.approx(0.5, abs=1e-6)
    like = calls.filter(pl.col("decision") == "like")
    assert like["p_event"].to_numpy() == pytest.approx(0.99, abs=1e-6)
    # the replayed run asks the same questions and gets the same answers, from the cache alone
    again = pl.read_parquet(replay / "llm_calls.parquet")
    assert again.select("step", "decision", "archetype", "p_event").equals(
        calls.select("step", "decision", "archetype", "p_event"))


def test_decisions_change_behaviour_versus_heuristic(runs):
    llm, replay, heuristic = runs
    m, r, h = (pl.read_parquet(d / "metrics.parquet") for d in (llm, replay, heuristic))
    model_cols = [c for c in m.columns if not c.startswith("llm_") and c != "wall_seconds"]
    assert m.select(model_cols).equals(r.select(model_cols))  # the replay reproduces the run bit for bit
    # repost answers of ~0 remove reposts
    assert m["n_repost"].sum() == 0 < h["n_repost"].sum()
    share = {k: (m[k].sum() / m["active"].sum(), h[k].sum() / h["active"].sum()) for k in ("n_like", "n_create_post")}
    # P(like) = 0.99 per 12 h is a per-step probability h = 0.32, total like odds 0.47 against doing nothing:
    # far below the heuristic's, which likes on ~60 % of activations
    assert share["n_like"][0] < 0.5 * share["n_like"][1]
    # P(post) of 0.5-0.95 per 12 h is above the heuristic's posting odds
    assert share["n_create_post"][0] > 1.2 * share["n_create_post"][1]
    assert m["llm_calls"].sum() > 0 and "llm_calls" not in h.columns
