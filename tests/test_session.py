"""The run session: one loop for every path, and every path with what a run has.

LLM runs here use a scripted backend (``ScriptedBackend``, a deterministic test double)
injected through the session's ``backend=``: the same policy, cache, call log and
checkpoints as a real backend, without a model.
"""
from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import polars as pl
import pytest

from conftest import ROOT, kill_when
from scenarios import load_scenario

NYC = ["population.size=2000", "run.chunk_size=7", "output.sample_agents=50"]
NONDETERMINISTIC = ["wall_seconds", "llm_seconds"]  # clocks
# the resumed run re-asks the round the kill interrupted; those answers now come from its cache
LOG_CLOCK = ["latency_s"]


def script(prompt: str, options) -> list[float]:
    """Deterministic answers: older people isolate more; a trend word shifts the answer a little."""
    query = prompt.rsplit("\n\n", 1)[-1]
    p = 0.8 if "Age 65 or older," in query else 0.3
    if "rising" in query:
        p += 0.1
    return [math.log(p), math.log(1 - p)]


class Counting:
    """A factory of scripted backends that counts the prompts they are asked (cache misses)."""

    def __init__(self) -> None:
        self.asked = 0
        self._lock = threading.Lock()

    def __call__(self):
        from llm_policy.backends import ScriptedBackend

        def fn(prompt, options):
            with self._lock:
                self.asked += 1
            return script(prompt, options)

        return ScriptedBackend(fn)


def nyc(steps: int, *extra: str):
    return load_scenario("covid_nyc", [*NYC, f"run.steps={steps}", *extra])


def llm_rows(run_dir: Path, drop=LOG_CLOCK) -> pl.DataFrame:
    return pl.read_parquet(run_dir / "llm_calls.parquet").drop(drop)


def model_metrics(run_dir: Path, drop=("llm_cache_hits",)) -> pl.DataFrame:
    return pl.read_parquet(run_dir / "metrics.parquet").sort("step").drop([*NONDETERMINISTIC, *drop])


# -- one loop ---------------------------------------------------------------------------------------
def test_one_loop_the_engine_has_none_and_knows_no_session(cli_env):
    from simcore.engine import Simulation
    from simcore.engine import ensemble
    from simcore.session import drive

    assert not hasattr(Simulation, "run") and not hasattr(Simulation, "boundaries")
    assert not hasattr(ensemble.Ensemble, "run")
    assert not hasattr(ensemble, "_RUNNERS") and not hasattr(ensemble, "compiled_for")
    code = ("import sys, simcore.engine, simcore.engine.ensemble, simcore.checkpoint; "
            "bad = [m for m in ('simcore.session', 'simcore.runs', 'llm_policy') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    res = subprocess.run([sys.executable, "-c", code], env=cli_env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr  # the engine and checkpoints import no session/LLM

    # the loop: chunks cut at a policy's cadence and at the allowance; a cut chunk never repeats a round
    from simcore.engine import build_schedule
    from simcore.graph import erdos_renyi
    from simcore.models import seir

    csr = erdos_renyi(500, 4, seed=1)
    state, params, base = seir.init(csr, beta=0.05, initial_infected=1e-2, seed=2)
    sim = Simulation(seir.make_model(), state, params, build_schedule(base, 30), seed=2, chunk_size=10)

    class Every5:
        every = 5

        def __init__(self):
            self.seen = []

        def update(self, s):
            self.seen.append(s.step)

    pol, lengths = Every5(), []
    budget = iter([3, None, 0])
    done = drive(sim, 30, policies=[pol], allowance=lambda: next(budget),
                 on_chunk=lambda s, c: lengths.append(len(c.steps)))
    assert (done, lengths, pol.seen) == (5, [3, 2], [0])  # 3 allowed, then on to the round at 5, then stop
    done = drive(sim, 25, policies=[pol], on_chunk=lambda s, c: lengths.append(len(c.steps)))
    assert done == 25 and pol.seen == [0, 5, 10, 15, 20, 25] and max(lengths) <= 5


def test_experiments_own_their_compiled_programs():
    from simcore.experiments import Experiment

    seir_spec = {"name": "own", "population": {"kind": "homogeneous", "size": 500},
                 "graph": {"kind": "erdos_renyi", "mean_degree": 4}, "model": {"kind": "seir", "params": {}},
                 "run": {"steps": 12, "seed": 0, "chunk_size": 6}, "output": {"sample_agents": 0}}
    half = [{"name": "half", "param": "contact_scale", "start": 3, "end": 12, "value": 0.5}]
    a = Experiment(seir_spec, seeds=[0, 1]).arm("half", half)
    b = Experiment(seir_spec, seeds=[0, 1]).arm("half", half)
    assert a.programs is not b.programs and len(a.programs) == 0
    ra = a.run()
    assert len(a.programs) == 1 and len(b.programs) == 0  # arms of one model share one set; nothing global
    rb = b.run()
    assert ra.metrics.equals(rb.metrics)


# -- resume of an LLM run after SIGKILL --------------------------------------------------------------
CHILD = """
import sys, time
sys.path.insert(0, {tests!r})
from test_session import nyc, Counting
from simcore.session import RunSession

def on_chunk(session, chunk, cols):
    if session.sim.step >= 15:  # checkpoints at 7 and 14 are on disk; wait here to be killed
        open({marker!r}, "w").write(str(session.sim.step))
        time.sleep(600)

with RunSession(nyc(28), {out!r}, checkpoint_every=7, backend=Counting()) as s:
    s.run(on_chunk=on_chunk)
"""


def test_llm_run_resumed_after_sigkill_has_the_full_log_and_the_same_metrics(cli_env, tmp_path):
    from simcore.session import RunSession, resume_run

    killed, marker = tmp_path / "killed", tmp_path / "marker"
    code = CHILD.format(tests=str(ROOT / "tests"), marker=str(marker), out=str(killed))
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], env=cli_env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    kill_when(proc, marker.exists, timeout=400, what="the child never reached step 15", poll=0.2)
    manifest = json.loads((killed / "manifest.json").read_text())
    assert manifest["status"] == "running" and manifest["steps_done"] < 28  # really killed partway
    assert "llm_totals" not in manifest  # nothing closed it

    resumed = resume_run(killed, backend=Counting())
    ref = tmp_path / "ref"
    with RunSession(nyc(28), ref, checkpoint_every=7, backend=Counting()) as s:
        s.run()

    a, b = json.loads((ref / "manifest.json").read_text()), json.loads((resumed / "manifest.json").read_text())
    assert b["status"] == "completed" and b["steps_done"] == 28 and b["resumed"][0]["from_step"] == 14
    assert model_metrics(resumed).equals(model_metrics(ref))
    assert model_metrics(resumed)["llm_calls"].sum() > 0
    log_a, log_b = llm_rows(ref, [*LOG_CLOCK, "cache_hit"]), llm_rows(resumed, [*LOG_CLOCK, "cache_hit"])
    assert log_b.height == log_a.height == pl.read_parquet(ref / "llm_calls.parquet").height
    assert log_b.equals(log_a)  # the full log: rows before the checkpoint kept, the rest recomputed once
    assert sorted(set(log_b["step"])) == [0, 7, 14, 21]
    for key in ("calls", "fallbacks", "prompt_tokens", "completion_tokens"):
        assert b["llm_totals"][key] == a["llm_totals"][key], key
    assert b["llm_totals"]["calls"] == log_b["n_samples"].sum()


# -- LLM arms in an experiment -----------------------------------------------------------------------
def test_llm_arms_get_their_own_log_metrics_and_a_cache_a_second_run_hits(tmp_path):
    from simcore.experiments import Experiment

    cache = tmp_path / "shared_cache.sqlite"
    counting = Counting()

    def experiment():
        return (Experiment(load_scenario("covid_nyc", [*NYC, "run.steps=14", f"policy.cache={cache}"]), seeds=[3],
                           backend=counting)
                .arm("early", [{"name": "early", "param": "community_scale", "start": 2, "end": 14, "value": 0.2}]))

    first = experiment().run(tmp_path / "one")
    asked = counting.asked
    assert asked > 0
    for arm in ("baseline", "early"):
        d = tmp_path / "one" / f"arm={arm}" / "seed=3"
        log = pl.read_parquet(d / "llm_calls.parquet")
        assert sorted(set(log["step"])) == [0, 7]
        manifest = json.loads((d / "manifest.json").read_text())
        assert manifest["llm_totals"]["calls"] == log["n_samples"].sum() > 0
        assert manifest["llm_cache"] == str(cache)
        m = pl.read_parquet(d / "metrics.parquet")
        assert m["llm_calls"].sum() == manifest["llm_totals"]["calls"]
    per_arm = first.metrics.group_by("arm").agg(pl.col("llm_calls").sum())
    assert per_arm["llm_calls"].min() > 0

    second = experiment().run(tmp_path / "two")
    assert counting.asked == asked  # every answer came from the cache
    for arm in ("baseline", "early"):
        log = pl.read_parquet(tmp_path / "two" / f"arm={arm}" / "seed=3" / "llm_calls.parquet")
        assert log["cache_hit"].all()
    drop = ["llm_cache_hits", "llm_seconds"]
    assert second.metrics.drop(drop).equals(first.metrics.drop(drop))
    assert (second.metrics["llm_cache_hits"] == second.metrics["llm_calls"]).all()


# -- pipelined rounds --------------------------------------------------------------------------------
def test_pipelined_run_is_deterministic_and_its_last_round_lands(tmp_path):
    from simcore.session import RunSession

    runs = []
    for name in ("a", "b"):
        counting = Counting()
        with RunSession(nyc(21, "policy.pipelined=true"), tmp_path / name, backend=counting) as s:
            s.run()
        runs.append((tmp_path / name, counting.asked))
    (a, asked), (b, _) = runs
    assert model_metrics(a).equals(model_metrics(b))
    log = llm_rows(a)
    assert log.equals(llm_rows(b))
    # rounds computed at 0, 7, 14 apply one cadence later; the last one (14 -> 21) is not dropped
    assert sorted(set(zip(log["computed_at_step"], log["step"]))) == [(0, 7), (7, 14), (14, 21)]
    totals = json.loads((a / "manifest.json").read_text())["llm_totals"]
    assert totals["calls"] == log["n_samples"].sum()
    assert asked == log["prompt_hash"].n_unique()  # the backend saw each distinct prompt once; every one is logged
    # the metrics count the rounds that applied within the run
    assert model_metrics(a)["llm_calls"].sum() == log.filter(pl.col("step") < 21)["n_samples"].sum()


def test_pipelined_run_stopped_and_resumed_equals_an_uninterrupted_one(tmp_path):
    from simcore.session import RunSession, resume_run

    stopped = tmp_path / "stopped"
    with RunSession(nyc(28, "policy.pipelined=true"), stopped, checkpoint_every=7, backend=Counting()) as s:
        s.run(should_stop=lambda: s.sim.step >= 10)
    assert json.loads((stopped / "manifest.json").read_text())["status"] == "stopped"
    meta = json.loads((stopped / "checkpoints" / "step=14" / "meta.json").read_text())
    (state,) = meta["policies"]
    assert [(p["step"], p["decision"]) for p in state["pending"]] == [(7, 0), (7, 1)]  # the round in flight
    assert (stopped / "checkpoints" / "step=14" / "policies.npz").exists()
    resume_run(stopped, backend=Counting())
    ref = tmp_path / "ref"
    with RunSession(nyc(28, "policy.pipelined=true"), ref, checkpoint_every=7, backend=Counting()) as s:
        s.run()
    assert model_metrics(stopped).equals(model_metrics(ref))
    drop = [*LOG_CLOCK, "cache_hit"]
    assert llm_rows(stopped, drop).equals(llm_rows(ref, drop))


# -- live server runs --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def compile_cache(request, tmp_path_factory):
    cache = getattr(request.config, "cache", None)
    return str(cache.mkdir("simcore-jax") if cache is not None else tmp_path_factory.mktemp("jax-cache"))


def test_live_server_run_checkpoints_and_resumes(tmp_path, compile_cache):
    import httpx
    import yaml

    from server.app import ServerConfig, create_app
    from server.testing import ServerThread, wait_until
    from simcore.session import RunSession, run_scenario

    runs = tmp_path / "runs"
    cfg = ServerConfig(runs_dir=runs, max_runs=2, compile_cache=compile_cache, checkpoint_every=10)
    app = create_app(cfg)
    overrides = ["population.size=5000", "output.sample_agents=100", "run.chunk_size=5", "run.steps=30"]
    with ServerThread(app) as srv, httpx.Client(base_url=srv.url, timeout=120) as c:
        r = c.post("/api/runs", json={"scenario": "covid_small", "overrides": overrides, "start_paused": True})
        run_id = r.json()["id"]
        detail = lambda: c.get(f"/api/runs/{run_id}").json()  # noqa: E731
        wait_until(lambda: detail()["status"] == "paused", 240, what="paused")
        assert isinstance(app.state.manager.get_live(run_id)._session, RunSession)  # the server's loop is the session's
        assert c.post(f"/api/runs/{run_id}/step", json={"n": 12}).json()["run"]["step"] == 12
        c.post(f"/api/runs/{run_id}/interventions", json={"param": "community_scale", "value": 0.5})
        c.post(f"/api/runs/{run_id}/stop")
        wait_until(lambda: detail()["status"] == "stopped", 120, what="stopped")
        steps = sorted(int(p.name.split("=")[1]) for p in (runs / run_id / "checkpoints").iterdir())
        assert steps == [10, 12]  # every 10 steps, and where it stopped

        r = c.post(f"/api/runs/{run_id}/resume")
        assert r.status_code == 200, r.text
        wait_until(lambda: detail()["status"] == "completed", 240, what="the resumed run to complete")
        manifest = json.loads((runs / run_id / "manifest.json").read_text())
        assert manifest["resumed"][0]["from_step"] == 12 and manifest["steps_done"] == 30
        assert manifest["live_interventions"][0]["param"] == "community_scale"
        history = c.get(f"/api/runs/{run_id}/metrics").json()["columns"]["step"]
        assert history == list(range(30))
        assert c.post(f"/api/runs/{run_id}/resume").status_code == 409  # completed: nothing to resume
        spec = yaml.safe_load(c.get(f"/api/runs/{run_id}/scenario.yaml").text)

    # the steered, stopped and resumed run equals the CLI runner on its exported scenario
    replay = run_scenario(load_scenario(spec), tmp_path / "replay")
    cols = ["S", "E", "I", "R", "M", "new_infections"]
    a = pl.read_parquet(runs / run_id / "metrics.parquet").sort("step").select(cols)
    b = pl.read_parquet(replay / "metrics.parquet").sort("step").select(cols)
    assert a.equals(b)
