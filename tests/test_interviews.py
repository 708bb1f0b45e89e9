"""Interviews (simcore.interviews): restore at step N, context, answers, the interviews table, CLI and server.

The runs here use scripted backends (deterministic test doubles): the run records its answers in its own
response cache, and the interview's restore replays them from there, as it does for a real run.
"""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import httpx
import jax
import numpy as np
import pyarrow.parquet as pq
import pytest

from llm_policy.backends import ScriptedBackend
from llm_policy.types import softmax
from scenarios import load_scenario
from test_session import Counting, nyc


def answer_script(prompt: str, options) -> list[float]:
    """An interview's answer: depends on the prompt (its length), so a wrong prompt gives other numbers."""
    return [-(len(prompt) % 7) * 0.1 * k for k in range(len(options))]


class FreeText:
    """A backend whose free answers run far past any bound unless the schema and max_tokens cut them."""

    identity = "scripted:free"

    def __init__(self) -> None:
        self.asked: list[tuple[str, dict, int]] = []

    def score(self, requests):
        raise AssertionError("a free answer is generated, not scored")

    def generate_json(self, prompt, schema, *, max_tokens=64, temperature=0.0):
        self.asked.append((prompt, schema, max_tokens))
        text = "I would stay home. " * 500
        return {"answer": text[: schema["properties"]["answer"]["maxLength"]]}

    def close(self) -> None:
        pass


@pytest.fixture(scope="module")
def covid_run(tmp_path_factory):
    """A 2,000-agent covid_nyc run with a scripted LLM policy, checkpoints every 7 steps, stopped at 28 of 35."""
    from simcore.session import RunSession

    out = tmp_path_factory.mktemp("interviews") / "run"
    with RunSession(nyc(35), out, checkpoint_every=7, backend=Counting()) as s:
        s.run(28)
    return out


def scripted():
    return ScriptedBackend(answer_script, identity="scripted:interview")


def resumed_state(run: Path, tmp: Path, checkpoint_step: int, step: int):
    """The state a `simcore resume` from ``checkpoint_step`` has at ``step`` (on a copy of the run)."""
    from simcore.session import RunSession

    copy = tmp / f"resume-{checkpoint_step}-{step}"
    shutil.copytree(run, copy)
    session = RunSession.resume(copy, checkpoint=copy / "checkpoints" / f"step={checkpoint_step}", backend=Counting())
    with session:
        session.run(step - checkpoint_step)
        assert session.sim.step == step
        return jax.device_get(session.sim.state)


def files_of(run: Path) -> dict:
    """Every file of a run but its SQLite response cache (whose WAL files come and go as readers open it)."""
    return {p.relative_to(run): (p.stat().st_mtime_ns, p.stat().st_size) for p in run.rglob("*")
            if p.is_file() and not p.name.startswith("llm_cache.sqlite")}


def cache_entries(run: Path) -> int:
    from llm_policy.cache import ResponseCache

    with ResponseCache(run / "llm_cache.sqlite") as cache:
        return len(cache)


def assert_same_state(a, b) -> None:
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb):
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and x.shape == y.shape
        assert x.tobytes() == y.tobytes()  # bit for bit


@pytest.mark.parametrize("step,from_ckpt", [(10, 7), (14, 7), (21, 14)])
def test_restored_state_is_the_resumed_runs_state_bit_for_bit(covid_run, tmp_path, step, from_ckpt):
    from simcore.interviews import restore

    before, cached = files_of(covid_run), cache_entries(covid_run)
    r = restore(covid_run, step)
    assert r.step == step and r.checkpoint_step == max(s for s in (7, 14, 21, 28) if s <= step)
    # a resume from an earlier checkpoint than the restore's own reaches the very same state
    assert_same_state(r.state, resumed_state(covid_run, tmp_path, from_ckpt, step))
    assert files_of(covid_run) == before  # the run's own files untouched
    assert cache_entries(covid_run) == cached  # its response cache only read


def test_restore_differs_between_steps(covid_run):
    """Guards the test above: consecutive steps do differ, so equality there is not vacuous."""
    from simcore.interviews import restore

    a, b = restore(covid_run, 10).state, restore(covid_run, 11).state
    assert any(np.asarray(x).tobytes() != np.asarray(y).tobytes()
               for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


def test_choice_answer_prompt_and_rows(covid_run):
    from simcore.interviews import read_interviews
    from simcore.session import interview

    sampled = int(pq.read_table(next((covid_run / "agents" / "step=7").glob("*.parquet")))["agent"][0].as_py())
    n_before = len(read_interviews(covid_run))
    row = interview(covid_run, 10, "Will you isolate next week?", agent=sampled, options="yes|no|not sure",
                    backend=scripted)
    assert row["options"] == ["yes", "no", "not sure"]
    assert math.isclose(sum(row["probs"]), 1.0, rel_tol=1e-12)
    assert row["probs"] == list(softmax(answer_script(row["prompt"], row["options"])))  # the backend's scores
    assert row["answer"] == row["options"][int(np.argmax(row["probs"]))]
    prompt = row["prompt"]
    assert prompt.startswith("age band: ")  # the persona (no personas: block: feature: level)
    for feature in ("age band", "borough", "case trend", "disease", "isolating", "labor", "occupation"):
        assert f"- {feature}: " in prompt
    assert "weekly cases" in prompt and "household:" in prompt and "reported cases in the last 7 days" in prompt
    assert "Your earlier days:" in prompt and "- day 7: " in prompt and "- day 14: " not in prompt  # up to N only
    assert "Interviewer: Will you isolate next week?" in prompt
    assert row["backend"] == "scripted:interview" and row["tokens"] > 0 and row["checkpoint_step"] == 7

    second = interview(covid_run, 21, "What worries you most?", agent=3, max_tokens=5, backend=FreeText())
    rows = read_interviews(covid_run)
    assert len(rows) == n_before + 2 and rows[-2]["question"] == "Will you isolate next week?"
    assert rows[-1]["answer"] == second["answer"] and rows[-1]["agent_id"] == 3 and rows[-1]["step"] == 21
    assert (covid_run / "interviews.parquet").is_file() and not (covid_run / "interviews.parts").exists()
    assert "- interventions in force: schools_closed" in second["prompt"]  # covid_nyc closes schools at 15


def test_free_answer_respects_its_bound(covid_run):
    from simcore.interviews import CHARS_PER_TOKEN, JSON_FRAME_TOKENS, interview

    backend = FreeText()
    row = interview(covid_run, 14, "How is your week?", agent=0, max_tokens=8, backend=backend)
    (_, schema, max_tokens), = backend.asked
    assert max_tokens == 8 + JSON_FRAME_TOKENS
    assert schema["properties"]["answer"]["maxLength"] == 8 * CHARS_PER_TOKEN
    assert 0 < len(row["answer"]) <= 8 * CHARS_PER_TOKEN and row["probs"] == [] and row["options"] == []


def test_archetype_interview_speaks_for_its_members(covid_run):
    from simcore.interviews import interview, restore

    r = restore(covid_run, 14)
    feats = jax.device_get(r.built.model.features(r.state, r.params))
    labels = r.built.model.labels
    # an archetype that exists at step 14 (the Bronx's case trend then depends on the run's random stream)
    trend = labels["case_trend"][int(feats["case_trend"][feats["borough"] == labels["borough"].index("Bronx")][0])]
    key = f"age_band=65A,borough=Bronx,case_trend={trend}"
    row = interview(covid_run, 14, "Will you isolate?", archetype=key, options="yes|no", backend=scripted)
    mask = ((feats["age_band"] == labels["age_band"].index("65A")) & (feats["borough"] == labels["borough"].index("Bronx"))
            & (feats["case_trend"] == labels["case_trend"].index(trend)))
    assert row["n_members"] == int(mask.sum()) > 0 and row["archetype"] == key and row["agent_id"] is None
    assert f"You speak for the {int(mask.sum()):,} people" in row["prompt"]


BAD = [
    (["{missing}", "--step", "7", "--agent", "1", "q"], "run_dir"),
    (["{run}", "--step", "99", "--agent", "1", "q"], "step"),
    (["{run}", "--step", "3", "--agent", "1", "q"], "step"),  # before the first checkpoint
    (["{run}", "--step", "7", "--agent", "2000", "q"], "agent"),
    (["{run}", "--step", "7", "--archetype", "age_band=nobody,borough=Bronx,case_trend=rising", "q"], "archetype"),
    (["{run}", "--step", "7", "--archetype", "borough=Bronx", "q"], "archetype"),
    (["{run}", "--step", "7", "--agent", "1", "--archetype", "borough=Bronx", "q"], "agent"),
    (["{run}", "--step", "7", "q"], "agent"),
    (["{run}", "--step", "7", "--agent", "1", "  "], "question"),
    (["{run}", "--step", "7", "--agent", "1", "--options", "yes", "q"], "options"),
    (["{run}", "--step", "7", "--agent", "1", "--max-tokens", "0", "q"], "max_tokens"),
    (["{run}", "--step", "7", "--agent", "1", "--backend", "{kind: llamacpp", "q"], "backend"),
    (["{run}", "--step", "7", "--agent", "1", "--backend", "carrier-pigeon", "q"], "backend"),
]


@pytest.mark.parametrize("argv,field", BAD)
def test_bad_input_exits_2_naming_the_field_and_writes_nothing(covid_run, tmp_path, capsys, argv, field):
    from simcore.cli import main

    run = tmp_path / "run"
    shutil.copytree(covid_run, run)
    (run / "interviews.parquet").unlink(missing_ok=True)
    files = sorted(p.relative_to(run) for p in run.rglob("*"))
    args = [a.replace("{run}", str(run)).replace("{missing}", str(tmp_path / "nope")) for a in argv]
    assert main(["interview", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {field}: "), err
    if field == "archetype":
        assert "valid keys: age_band=U19|" in err[0]  # lists what a key may be
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == files
    assert not (tmp_path / "nope").exists()


def test_a_run_without_a_policy_needs_a_backend(tmp_path, capsys):
    from simcore.cli import main
    from simcore.session import RunSession

    run = tmp_path / "plain"
    with RunSession(load_scenario("covid_nyc", ["population.size=2000", "run.steps=14", "run.chunk_size=7",
                                                "policy=null"]), run, checkpoint_every=7) as s:
        s.run()
    assert main(["interview", str(run), "--step", "7", "--agent", "0", "q"]) == 2
    assert capsys.readouterr().err.startswith("error: backend: the run has no policy block")
    assert not (run / "interviews.parquet").exists()


# -- the server -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def social_run(tmp_path_factory):
    """The shipped social LLM scenario, scripted, with checkpoints."""
    from simcore.session import RunSession
    from test_social_policy import _script

    runs = tmp_path_factory.mktemp("server_runs")
    sc = load_scenario("polarization_llm_small", ["run.steps=24", "surveys.0.steps=[0, 12]"])
    with RunSession(sc, runs / "social", checkpoint_every=12,
                    backend=lambda: ScriptedBackend(_script, identity="scripted:social")) as s:
        s.run()
    return runs


@pytest.fixture(scope="module")
def server(social_run, covid_run):
    from server.app import ServerConfig, create_app
    from server.testing import ServerThread

    shutil.copytree(covid_run, social_run / "covid")
    (social_run / "covid" / "interviews.parquet").unlink(missing_ok=True)
    cfg = ServerConfig(runs_dir=social_run, max_runs=1, interview_backend=scripted, checkpoint_every=5)
    with ServerThread(create_app(cfg)) as srv:
        yield srv


@pytest.mark.parametrize("run_id,body", [
    ("covid", {"step": 10, "agent": 4, "question": "Will you isolate?", "options": ["yes", "no"]}),
    ("social", {"step": 18, "agent": 7, "question": "Will you post today?", "options": ["yes", "no"]}),
    ("social", {"step": 12, "archetype": "persona=creator,stance_bin=neutral", "question": "Do you post?",
                "options": ["often", "rarely"]}),
])
def test_server_interviews_a_past_run(server, run_id, body):
    with httpx.Client(base_url=server.url, timeout=300) as c:
        before = c.get(f"/api/runs/{run_id}/interviews").json()
        r = c.post(f"/api/runs/{run_id}/interviews", json=body)
        assert r.status_code == 201, r.text
        row = r.json()
        assert row["step"] == body["step"] and math.isclose(sum(row["probs"]), 1.0, rel_tol=1e-12)
        assert row["probs"] == list(softmax(answer_script(row["prompt"], row["options"])))
        listed = c.get(f"/api/runs/{run_id}/interviews").json()
        assert len(listed) == len(before) + 1 and listed[-1]["prompt"] == row["prompt"]
        if run_id == "social" and "agent" in body:
            assert row["prompt"].startswith("A user who ")  # the scenario's persona template
            assert "- stance bin: " in row["prompt"] and "- persona: " in row["prompt"]
        bad = c.post(f"/api/runs/{run_id}/interviews", json={**body, "step": 10_000})
        assert bad.status_code == 422 and bad.json()["field"] == "step"
        assert len(c.get(f"/api/runs/{run_id}/interviews").json()) == len(listed)
        assert c.post("/api/runs/nope/interviews", json=body).status_code == 404


def test_server_interviews_a_live_run_without_disturbing_it(server):
    """A paused live run: the interview reads its checkpoints on disk; the run stays where it was and goes on."""
    with httpx.Client(base_url=server.url, timeout=300) as c:
        r = c.post("/api/runs", json={"scenario": "covid_small", "start_paused": True, "overrides": [
            "population.size=2000", "output.sample_agents=50", "run.chunk_size=5", "run.steps=40"]})
        assert r.status_code == 201, r.text
        run_id = r.json()["id"]
        from server.testing import wait_until

        wait_until(lambda: c.get(f"/api/runs/{run_id}").json()["status"] == "paused", what="paused")
        assert c.post(f"/api/runs/{run_id}/step", json={"n": 12}).json()["run"]["step"] == 12
        r = c.post(f"/api/runs/{run_id}/interviews", json={"step": 3, "agent": 1, "question": "q", "options": ["a", "b"]})
        assert r.status_code == 422 and r.json()["field"] == "step"  # no checkpoint at or before 3 yet
        r = c.post(f"/api/runs/{run_id}/interviews",
                   json={"step": 12, "agent": 1, "question": "Are you well?", "options": ["yes", "no"]})
        assert r.status_code == 201, r.text
        assert r.json()["checkpoint_step"] == 10 and r.json()["step"] == 12
        d = c.get(f"/api/runs/{run_id}").json()
        assert d["status"] == "paused" and d["step"] == 12 and d["live"] is True
        assert c.post(f"/api/runs/{run_id}/step", json={"n": 3}).json()["run"]["step"] == 15  # goes on
        assert len(c.get(f"/api/runs/{run_id}/interviews").json()) == 1
        c.post(f"/api/runs/{run_id}/stop")


def test_server_refuses_a_backend_over_http(server):
    with httpx.Client(base_url=server.url, timeout=60) as c:
        r = c.post("/api/runs/covid/interviews", json={"step": 7, "agent": 1, "question": "q", "backend": "openai"})
        assert r.status_code == 422 and r.json()["field"] == "backend"


def test_interviews_survive_a_resume(covid_run, tmp_path):
    """Interviews are asked of the run, not written by it: a resume from an earlier checkpoint keeps them."""
    from simcore.interviews import read_interviews
    from simcore.session import interview, resume_run

    run = tmp_path / "run"
    shutil.copytree(covid_run, run)
    interview(run, 21, "Still at home?", agent=2, options="yes|no", backend=scripted)
    rows = read_interviews(run)
    resume_run(run, checkpoint=run / "checkpoints" / "step=14", backend=Counting())
    assert read_interviews(run) == rows
    assert json.loads((run / "manifest.json").read_text())["status"] == "completed"


def test_deep_agent_memories_enter_the_context_up_to_n(covid_run, tmp_path):
    """A run with a deep_agents table (the contract in docs/interviews.md): the agent's rows with step <= N,
    reflections first; no other agent's, nothing later."""
    import pyarrow as pa

    from simcore.interviews import interview

    run = tmp_path / "run"
    shutil.copytree(covid_run, run)
    rows = [  # step, agent, kind, text, importance, target, p
        (7, 3, "observation", "my neighbour coughed all day", 4.0, "", math.nan),
        (7, 3, "decision", "I will keep working", 6.0, "work", 0.8),
        (14, 3, "reflection", "the borough is getting worse", 8.0, "", math.nan),
        (21, 3, "observation", "schools closed last week", 5.0, "", math.nan),
        (14, 4, "reflection", "someone else's thought", 9.0, "", math.nan),
    ]
    cols = list(zip(*rows))
    pq.write_table(pa.table({"step": pa.array(cols[0], pa.int64()), "agent_id": pa.array(cols[1], pa.int64()),
                             "kind": cols[2], "text": cols[3], "importance": pa.array(cols[4], pa.float32()),
                             "target": cols[5], "p": pa.array(cols[6], pa.float32())}), run / "deep_agents.parquet")
    prompt = interview(run, 14, "How are you?", agent=3, options="fine|not fine", backend=scripted)["prompt"]
    memories = prompt.split("Your memories:\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert memories == ["- day 14 (reflection): the borough is getting worse",
                        "- day 7 (observation): my neighbour coughed all day",
                        "- day 7 (decision): I will keep working"]
    plain = interview(run, 14, "How are you?", agent=5, options="fine|not fine", backend=scripted)["prompt"]
    assert "Your memories:" not in plain


@pytest.mark.browser
def test_dashboard_form_asks_and_lists_the_answer(server):
    from test_server_browser import CHROMIUM, FLAGS, _requirements

    reason = _requirements()
    if reason:
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1500})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(server.url + "/#covid")
            page.wait_for_selector("#interview-form", state="visible")
            page.fill("#ivw-step", "14")
            page.fill("#ivw-agent", "6")
            page.fill("#ivw-question", "Do you go to work?")
            page.fill("#ivw-options", "yes | no")
            page.click("#interview-btn")
            page.wait_for_function("document.querySelector('#interview-list li') && "
                                   "document.querySelector('#interview-list li').textContent.includes('agent 6')",
                                   timeout=240_000)
            text = page.text_content("#interview-list li")
            assert "step 14, agent 6: “Do you go to work?”" in text and "yes " in text and "%" in text
            assert "answered in" in page.text_content("#interview-msg")
            assert not errors, errors
        finally:
            browser.close()
    with httpx.Client(base_url=server.url, timeout=60) as c:
        rows = c.get("/api/runs/covid/interviews").json()
        assert rows[-1]["options"] == ["yes", "no"] and rows[-1]["agent_id"] == 6


def test_a_backend_that_ignores_the_bound_gives_no_answer(covid_run, tmp_path, capsys, monkeypatch):
    """A free answer past max_tokens' bound is refused: recorded with its error and no answer (not retried: a
    greedy generation, and the response cache, would give it again)."""
    import llm_policy.backends as backends
    from simcore.cli import main

    class Ignoring(FreeText):
        def generate_json(self, prompt, schema, *, max_tokens=64, temperature=0.0):
            self.asked.append((prompt, schema, max_tokens))
            return {"answer": "words " * 200}

    backend = Ignoring()
    monkeypatch.setattr(backends, "make_backend", lambda spec: backend)
    run = tmp_path / "run"
    shutil.copytree(covid_run, run)
    assert main(["interview", str(run), "--step", "14", "--agent", "1", "--max-tokens", "4", "--backend", "llamacpp",
                 "How are you?"]) == 1
    assert "error: the backend gave no answer: answer outside its bound" in capsys.readouterr().err
    from simcore.interviews import read_interviews

    row = read_interviews(run)[-1]
    assert row["answer"] == "" and row["error"].startswith("answer outside its bound: $.answer: longer than 16")
    assert row["retries"] == 0 and len(backend.asked) == 1


def test_cli_answer_and_the_runs_response_cache(covid_run, tmp_path, capsys, monkeypatch):
    """`--backend KIND` through the CLI; the same interview again is answered from the run's cache."""
    import llm_policy.backends as backends
    from simcore.cli import main

    made = []

    def make(spec):
        made.append((spec, scripted()))
        return made[-1][1]

    monkeypatch.setattr(backends, "make_backend", make)
    run = tmp_path / "run"
    shutil.copytree(covid_run, run)
    argv = ["interview", str(run), "--step", "9", "--agent", "11", "--options", "stay|go", "--backend", "llamacpp",
            "Will you go out tomorrow?"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "agent 11 at step 9 (restored from checkpoint 7" in out and "answer: " in out
    assert "  stay: " in out and "  go: " in out
    from simcore.interviews import read_interviews

    assert main(argv) == 0
    first, second = read_interviews(run)[-2:]
    assert [spec for spec, _ in made] == [{"kind": "llamacpp"}] * 2 and first["probs"] == second["probs"]
    assert len(made[0][1].calls) == 1 and made[1][1].calls == []  # the second answer came from the cache
    assert second["prompt"] == first["prompt"]  # the same restore, the same context
