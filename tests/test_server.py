"""The live dashboard's REST API and SSE stream, against a real uvicorn on 127.0.0.1.

Runs use covid_small shrunk to 5,000 agents and a few dozen steps. Compiled programs
go to a persistent XLA cache under .pytest_cache, so only the first session pays
the compile (two scan lengths: 5 and 1).
"""
from __future__ import annotations

import json

import httpx
import numpy as np
import pyarrow.parquet as pq
import pytest

from scenarios import load_scenario
from server.app import ServerConfig, create_app
from server.testing import ServerThread, iter_sse, wait_until

SMALL = ["population.size=5000", "output.sample_agents=100", "run.chunk_size=5"]


def small(steps: int) -> list[str]:
    return [*SMALL, f"run.steps={steps}"]


@pytest.fixture(scope="module")
def compile_cache(request, tmp_path_factory):
    cache = getattr(request.config, "cache", None)  # absent under -p no:cacheprovider
    return str(cache.mkdir("simcore-jax") if cache is not None else tmp_path_factory.mktemp("jax-cache"))


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="module")
def server(runs_dir, compile_cache):
    cfg = ServerConfig(runs_dir=runs_dir, max_runs=3, compile_cache=compile_cache)
    with ServerThread(create_app(cfg)) as srv:
        yield srv


@pytest.fixture
def client(server):
    with httpx.Client(base_url=server.url, timeout=120) as c:
        yield c


def start(client, steps: int, paused: bool = True, extra: list[str] = ()) -> str:
    r = client.post("/api/runs", json={"scenario": "covid_small", "overrides": [*small(steps), *extra],
                                        "start_paused": paused})
    assert r.status_code == 201, r.text
    assert r.headers["location"] == f"/api/runs/{r.json()['id']}"
    return r.json()["id"]


def detail(client, run_id: str) -> dict:
    r = client.get(f"/api/runs/{run_id}")
    assert r.status_code == 200, r.text
    return r.json()


def wait_status(client, run_id: str, *statuses: str, timeout: float = 240) -> dict:
    return wait_until(lambda: (d := detail(client, run_id))["status"] in statuses and d, timeout,
                      what=f"{run_id} to be {statuses}")


def finish(client, run_id: str) -> dict:
    """Stop a run if it still lives; wait until its worker has closed the writer."""
    d = detail(client, run_id)
    if d["status"] in ("queued", "building", "running", "paused"):
        client.post(f"/api/runs/{run_id}/stop")
    return wait_status(client, run_id, "stopped", "completed", "failed")


def metrics(client, run_id: str, **params) -> dict:
    r = client.get(f"/api/runs/{run_id}/metrics", params=params)
    assert r.status_code == 200, r.text
    return r.json()["columns"]


# -- scenarios and validation -----------------------------------------------------------------
def test_info_and_builtin_scenarios(client):
    info = client.get("/api/info").json()
    assert info["auth_required"] is False and info["max_runs"] == 3
    names = {s["name"]: s for s in client.get("/api/scenarios").json()}
    assert "covid_small" in names
    assert names["covid_small"]["agents"] == 50_000
    assert "community_scale" in names["covid_small"]["scheduled_params"]
    text = client.get("/api/scenarios/covid_small")
    assert text.status_code == 200 and "name: covid_small" in text.text
    assert client.get("/api/scenarios/nope").status_code == 404


def test_validate_reports_the_cli_error_with_its_field(client, capsys):
    from simcore.cli import main

    r = client.post("/api/scenarios/validate", json={"scenario": "covid_small", "overrides": ["population.size=-5"]})
    assert r.status_code == 422
    body = r.json()
    assert body["field"] == "population.size" and body["reason"] == "must be > 0, got -5"
    assert main(["validate", "covid_small", "--set", "population.size=-5"]) == 2
    assert capsys.readouterr().err.strip() == f"error: {body['detail']}"  # the very same text as the CLI


@pytest.mark.parametrize("request_body, field, reason_part", [
    ({"scenario": "no_such"}, "scenario", "unknown built-in scenario"),
    ({"scenario": "/etc/passwd"}, "scenario", "unknown built-in scenario"),  # names only, never paths
    ({"yaml": "name: x\npopulation: {size: 10\n"}, "scenario", "invalid YAML"),
    ({"yaml": "- a\n- b\n"}, "scenario", "mapping at the top level"),
    ({"yaml": "a: &x [1, 2]\nb: *x\n"}, "scenario", "aliases"),
    ({"yaml": "[" * 5000 + "]" * 5000}, "scenario", "nested deeper than"),
    ({"yaml": "policy:\n" + "".join(f"  k{i}: [1, 2]\n" for i in range(8000))}, "scenario", "YAML nodes"),
    ({"scenario": "covid_small", "overrides": ["population.bogus=1"]}, "population.bogus", "unknown key"),
    ({"scenario": "covid_small", "overrides": ["no_equals_sign"]}, "overrides", "expected dotted.key=value"),
    ({"scenario": "covid_small", "overrides": ["interventions.0.param=nope"]}, "interventions[0].param",
     "unknown parameter"),
    ({"scenario": "covid_small", "overrides": ["population.size=20000000"]}, "population.size", "on this server"),
    ({"scenario": "covid_nyc", "overrides": ["policy.backend.kind=openai",
                                             "policy.backend.endpoints=[http://169.254.169.254]"]},
     "policy.backend.kind", "only 'llamacpp'"),
    ({"scenario": "covid_nyc", "overrides": ["policy.backend.model_path=/etc/shadow"]},
     "policy.backend.model_path", "not accepted over HTTP"),
    ({"scenario": "covid_nyc", "overrides": ["policy.cache=/tmp/elsewhere.sqlite"]}, "policy.cache",
     "not accepted over HTTP"),
    ({"scenario": "covid_small", "yaml": "name: x"}, "scenario", "exactly one"),
    ({}, "scenario", "exactly one"),
    ({"scenario": "covid_small", "overrides": "population.size=5"}, "overrides", ""),
])
def test_invalid_scenarios_give_422_with_the_field(client, request_body, field, reason_part):
    for path in ("/api/scenarios/validate", "/api/runs"):
        r = client.post(path, json=request_body)
        assert r.status_code == 422, r.text
        assert r.json()["field"] == field
        assert reason_part in r.json()["reason"]


def test_builtin_llm_policy_is_accepted_over_http(client):
    r = client.post("/api/scenarios/validate", json={"scenario": "covid_nyc", "overrides": ["population.size=5000"]})
    assert r.status_code == 200, r.text
    assert r.json()["scenario"]["policy"]["backend"] == {"kind": "llamacpp", "n_ctx": 1024}


def test_upload_validates_like_a_file(client):
    text = client.get("/api/scenarios/covid_small").text
    r = client.post("/api/scenarios/validate", json={"yaml": text, "overrides": ["population.size=5000"]})
    assert r.status_code == 200, r.text
    assert r.json()["agents"] == 5000 and r.json()["model"] == "epidemic"
    bad = text.replace("size: 50000", "size: -5")
    r = client.post("/api/scenarios/validate", json={"yaml": bad})
    assert (r.status_code, r.json()["field"], r.json()["reason"]) == (422, "population.size", "must be > 0, got -5")


# -- controlling a run --------------------------------------------------------------------------
def test_start_pause_step_intervene_resume_stop(client, runs_dir):
    run_id = start(client, steps=400, paused=True)
    d = wait_status(client, run_id, "paused")
    assert d["step"] == 0 and d["live"] is True

    r = client.post(f"/api/runs/{run_id}/step", json={"n": 3})
    assert r.status_code == 200 and r.json()["applied"], r.text
    assert r.json()["run"]["step"] == 3 and r.json()["run"]["status"] == "paused"
    r = client.post(f"/api/runs/{run_id}/step")  # one step by default
    assert r.json()["run"]["step"] == 4
    assert metrics(client, run_id)["step"] == [0, 1, 2, 3]  # answered with the rows on disk

    r = client.post(f"/api/runs/{run_id}/interventions", json={"param": "community_scale", "value": 0.25})
    assert r.status_code == 200, r.text
    rec = r.json()["result"]
    assert (rec["step"], rec["param"], rec["value"], rec["mode"], rec["start"], rec["end"]) == \
        (4, "community_scale", 0.25, "set", 4, 400)
    assert r.json()["run"]["schedule_now"]["community_scale"] == pytest.approx(0.25)
    manifest = json.loads((runs_dir / run_id / "manifest.json").read_text())
    assert manifest["live_interventions"][0]["param"] == "community_scale"
    assert manifest["live_interventions"][0]["step"] == 4

    r = client.post(f"/api/runs/{run_id}/interventions", json={"param": "lockdown", "value": 2, "mode": "multiply",
                                                              "start": 1})
    assert r.status_code == 422 and r.json()["field"] == "start"  # the past is fixed
    r = client.post(f"/api/runs/{run_id}/interventions", json={"param": "beta", "value": 1})
    assert r.status_code == 422 and r.json()["field"] == "param"
    r = client.post(f"/api/runs/{run_id}/interventions", json={"param": "lockdown", "value": 1, "mode": "scale"})
    assert r.status_code == 422 and r.json()["field"] == "mode"

    r = client.post(f"/api/runs/{run_id}/resume")
    assert r.status_code == 200 and r.json()["run"]["status"] == "running"
    assert client.post(f"/api/runs/{run_id}/step").status_code == 409  # step needs a paused run
    wait_until(lambda: detail(client, run_id)["step"] >= 20, what="run to advance")
    r = client.post(f"/api/runs/{run_id}/pause")
    assert r.json()["run"]["status"] == "paused"
    at = r.json()["run"]["step"]
    assert metrics(client, run_id)["step"] == list(range(at))  # paused: everything shown is on disk
    assert detail(client, run_id)["step"] == at  # paused means paused
    r = client.post(f"/api/runs/{run_id}/stop")
    assert r.status_code == 200
    d = wait_status(client, run_id, "stopped")
    assert d["step"] == at < 400

    manifest = json.loads((runs_dir / run_id / "manifest.json").read_text())
    assert manifest["status"] == "stopped" and manifest["steps_done"] == at
    table = pq.read_table(runs_dir / run_id / "metrics.parquet")
    assert table["step"].to_pylist() == list(range(at))  # flushed, nothing lost or repeated
    assert client.post(f"/api/runs/{run_id}/pause").status_code == 409  # finished runs take no commands


def test_live_intervention_changes_the_run_and_stays_reproducible(client, runs_dir):
    from simcore.runs import run_scenario

    base = start(client, steps=40, paused=False)
    steered = start(client, steps=40, paused=True)
    wait_status(client, steered, "paused")
    client.post(f"/api/runs/{steered}/step", json={"n": 10})
    r = client.post(f"/api/runs/{steered}/interventions",
                    json={"param": "household_scale", "value": 0.0, "mode": "set", "end": 35})
    assert r.status_code == 200, r.text
    client.post(f"/api/runs/{steered}/resume")
    for run_id in (base, steered):
        assert wait_status(client, run_id, "completed")["step"] == 40
    cols = ["S", "E", "I", "R", "M", "new_infections"]
    a = metrics(client, base, columns=",".join(cols))
    b = metrics(client, steered, columns=",".join(cols))
    assert a["S"][:10] == b["S"][:10]  # same seed, same past
    assert a["new_infections"][12:35] != b["new_infections"][12:35]  # no household transmission from step 10

    # the exported scenario replays the steered run through the ordinary CLI runner, bit for bit
    text = client.get(f"/api/runs/{steered}/scenario.yaml").text
    import yaml

    spec = yaml.safe_load(text)
    live = [iv for iv in spec["interventions"] if iv["name"].startswith("live_")]
    assert live == [{"name": "live_0_household_scale", "param": "household_scale", "start": 10, "end": 35,
                     "value": 0.0, "mode": "set"}]
    replay = run_scenario(load_scenario(spec), runs_dir.parent / "replay")
    table = pq.read_table(replay / "metrics.parquet", columns=cols)
    for c in cols:
        assert table[c].to_pylist() == b[c], c


def test_metrics_ranges_columns_and_csv(client):
    run_id = start(client, steps=20, paused=False)
    wait_status(client, run_id, "completed")
    cols = metrics(client, run_id, start=5, end=9, columns="S,I")
    assert list(cols) == ["step", "S", "I"]
    assert cols["step"] == [5, 6, 7, 8]
    full = metrics(client, run_id)
    assert {"S", "E", "I", "R", "M", "wall_seconds", "new_infections"} <= set(full)
    assert np.all(np.asarray(full["S"]) + np.asarray(full["E"]) + np.asarray(full["I"]) + np.asarray(full["R"])
                  + np.asarray(full["M"]) == 5000)
    r = client.get(f"/api/runs/{run_id}/metrics", params={"columns": "S,nope"})
    assert r.status_code == 422 and r.json()["field"] == "columns" and "nope" in r.json()["reason"]
    r = client.get(f"/api/runs/{run_id}/metrics", params={"columns": "S", "start": 18, "format": "csv"})
    assert r.headers["content-type"].startswith("text/csv")
    assert r.text.splitlines()[0].replace('"', "") == "step,S" and len(r.text.splitlines()) == 3
    assert client.get(f"/api/runs/{run_id}/metrics", params={"start": -1}).status_code == 422


def test_agents_files_archive_and_network(client, runs_dir):
    run_id = start(client, steps=20, paused=False)
    wait_status(client, run_id, "completed")
    agents = client.get(f"/api/runs/{run_id}/agents", params={"limit": 10}).json()
    assert agents["steps"] == [0, 7, 14] and agents["step"] == 14 and agents["total"] == 100
    assert len(agents["columns"]["agent"]) == 10
    assert set(agents["columns"]["disease"]) <= {"S", "E", "I", "R", "M"}  # decoded with the manifest labels
    only_s = client.get(f"/api/runs/{run_id}/agents", params={"step": 0, "state": "S", "limit": 1000}).json()
    assert set(only_s["columns"]["disease"]) == {"S"} and 0 < only_s["total"] <= 100
    assert client.get(f"/api/runs/{run_id}/agents", params={"step": 3}).status_code == 422

    files = {f["path"]: f["bytes"] for f in client.get(f"/api/runs/{run_id}/files").json()}
    assert {"manifest.json", "metrics.parquet", "agents/step=7/part-0.parquet"} <= set(files)
    r = client.get(f"/api/runs/{run_id}/files/agents/step=7/part-0.parquet")
    assert r.status_code == 200 and r.content == (runs_dir / run_id / "agents/step=7/part-0.parquet").read_bytes()
    r = client.get(f"/api/runs/{run_id}/archive.zip")
    import io
    import zipfile

    names = zipfile.ZipFile(io.BytesIO(r.content)).namelist()
    assert f"{run_id}/metrics.parquet" in names and len(names) == len(files)

    net = client.get(f"/api/runs/{run_id}/network").json()
    n = len(net["nodes"])
    assert 2 <= n <= 150 and len(net["x"]) == n and len(net["state"]) == n and net["step"] == 20
    assert net["layers"] == ["household", "workplace", "school", "community"]
    assert all(0 <= i < n and 0 <= j < n and i < j for i, j, _ in net["edges"])
    assert net["labels"] == ["S", "E", "I", "R", "M"]


def test_concurrent_run_limit(client):
    live = [r for r in client.get("/api/runs").json() if r["status"] in ("queued", "building", "running", "paused")]
    for r in live:
        finish(client, r["id"])
    ids = [start(client, steps=100, paused=True) for _ in range(3)]
    r = client.post("/api/runs", json={"scenario": "covid_small", "overrides": small(10)})
    assert r.status_code == 429 and "limit 3" in r.json()["detail"]
    finish(client, ids[0])
    fourth = start(client, steps=100, paused=True)  # a slot is free again
    for run_id in [*ids[1:], fourth]:
        finish(client, run_id)


def test_unknown_runs_are_404(client):
    for path in ("/api/runs/nope", "/api/runs/nope/metrics", "/api/runs/nope/files", "/api/runs/nope/stream",
                 "/api/runs/nope/agents", "/api/runs/nope/scenario.yaml", "/api/runs/nope/network"):
        assert client.get(path).status_code == 404, path
    for op in ("pause", "resume", "step", "stop"):
        assert client.post(f"/api/runs/nope/{op}").status_code == 404


# -- the live stream ---------------------------------------------------------------------------------
def test_hub_slices_rows_across_chunks_and_filters_columns():
    from server.runs import Hub

    hub = Hub()
    hub.extend(0, {"S": np.array([10, 9, 8]), "x": np.array([0.5, np.nan, 1.5])})
    hub.extend(3, {"S": np.array([7, 6]), "x": np.array([2.0, 2.5]), "llm_calls": np.array([4, 0])})
    assert hub.n == 5
    assert json.loads(hub.payload(1, 4, None)) == [{"step": 1, "S": 9, "x": None}, {"step": 2, "S": 8, "x": 1.5},
                                                    {"step": 3, "S": 7, "x": 2.0, "llm_calls": 4}]
    assert json.loads(hub.payload(2, 5, ["S", "llm_calls", "absent"])) == [
        {"step": 2, "S": 8}, {"step": 3, "S": 7, "llm_calls": 4}, {"step": 4, "S": 6, "llm_calls": 0}]
    assert hub.payload(5, 5, None) == "[]"
    hub.subscribers = 1
    hub.finish()  # no event loop attached: decided at once
    assert not hub.released  # someone is still streaming from memory
    hub.subscribers = 0
    hub.release_if_idle()
    assert hub.released and hub.n == 5



def read_events(response, until: str = "end", limit: int = 10_000):
    out = []
    for event, data, ev_id in iter_sse(response.iter_lines()):
        out.append((event, json.loads(data), ev_id))
        if event == until or len(out) >= limit:
            break
    return out


def test_sse_mid_run_client_gets_history_then_live_rows_in_order(client, server):
    run_id = start(client, steps=60, paused=True)
    wait_status(client, run_id, "paused")
    assert client.post(f"/api/runs/{run_id}/step", json={"n": 12}).json()["run"]["step"] == 12
    with httpx.Client(base_url=server.url, timeout=120) as sse, \
            sse.stream("GET", f"/api/runs/{run_id}/stream", params={"columns": "S,I", "interval": 0}) as resp:
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
        lines = resp.iter_lines()
        events = iter_sse(lines)
        first, data, ev_id = next(events)
        assert first == "history"
        history = json.loads(data)
        assert [r["step"] for r in history] == list(range(12)) and ev_id == "11"
        assert set(history[0]) == {"step", "S", "I"}
        client.post(f"/api/runs/{run_id}/resume")  # now live rows follow
        live_rows, statuses = [], []
        for event, data, _ in events:
            if event == "metrics":
                live_rows.extend(json.loads(data))
            elif event == "status":
                statuses.append(json.loads(data)["status"])
            elif event == "end":
                assert json.loads(data)["status"] == "completed"
                break
    assert [r["step"] for r in live_rows] == list(range(12, 60))  # complete, in order, no duplicates
    assert "running" in statuses and statuses[-1] == "completed"
    assert metrics(client, run_id, columns="S,I")["S"] == [r["S"] for r in history + live_rows]


def test_sse_last_event_id_resumes_and_past_runs_replay_from_parquet(client, server):
    run_id = start(client, steps=30, paused=False)
    wait_status(client, run_id, "completed")
    hub = server.config.app.state.manager.live[run_id].hub
    wait_until(lambda: hub.released, 10, what="the finished run to release its rows")  # Parquet has them
    with client.stream("GET", f"/api/runs/{run_id}/stream", headers={"Last-Event-ID": "19"}) as resp:
        events = read_events(resp)
    assert events[0][0] == "history"
    assert [r["step"] for r in events[0][1]] == list(range(20, 30))
    assert events[-1][0] == "end"


def test_restart_lists_past_runs_from_disk(client, runs_dir, compile_cache):
    run_id = start(client, steps=15, paused=False)
    wait_status(client, run_id, "completed")
    live_net = client.get(f"/api/runs/{run_id}/network").json()
    assert live_net["step"] == 15 and len(live_net["state"]) == len(live_net["nodes"])
    before = {r["id"]: r for r in client.get("/api/runs").json()}
    cfg = ServerConfig(runs_dir=runs_dir, compile_cache=compile_cache)
    with ServerThread(create_app(cfg)) as again, httpx.Client(base_url=again.url, timeout=60) as c2:
        after = {r["id"]: r for r in c2.get("/api/runs").json()}
        assert set(before) <= set(after)
        past = after[run_id]
        assert (past["status"], past["step"], past["steps"], past["live"]) == ("completed", 15, 15, False)
        assert c2.get(f"/api/runs/{run_id}").json()["scheduled_params"][0] == "household_scale"
        assert c2.post(f"/api/runs/{run_id}/pause").status_code == 409  # not live in this process
        with c2.stream("GET", f"/api/runs/{run_id}/stream") as resp:
            events = read_events(resp)
        assert [e[0] for e in events] == ["history", "status", "end"]
        assert [r["step"] for r in events[0][1]] == list(range(15))
        net = c2.get(f"/api/runs/{run_id}/network").json()  # from the run directory: its last state
        assert net == live_net


def test_server_shutdown_stops_live_runs_with_files_flushed(runs_dir, compile_cache):
    cfg = ServerConfig(runs_dir=runs_dir, compile_cache=compile_cache)
    srv = ServerThread(create_app(cfg)).start()
    with httpx.Client(base_url=srv.url, timeout=120) as c:
        running = start(c, steps=100_000, paused=False)
        paused = start(c, steps=100, paused=True)
        wait_until(lambda: detail(c, running)["step"] >= 10, what="the run to step")
        wait_status(c, paused, "paused")
    srv.stop()
    for run_id in (running, paused):
        m = json.loads((runs_dir / run_id / "manifest.json").read_text())
        assert m["status"] == "stopped" and "end_time" in m
        steps = pq.read_table(runs_dir / run_id / "metrics.parquet")["step"].to_pylist() \
            if (runs_dir / run_id / "metrics.parquet").exists() else []
        assert steps == list(range(m["steps_done"]))
    assert m["steps_done"] == 0  # the paused run never stepped


def test_a_social_run_has_its_own_columns_charts_and_follow_graph(client, runs_dir, compile_cache):
    """What the page draws comes from the model's registry entry: a social run charts posts, actions,
    stance and polarization, and its network view is a piece of its real follow graph, the same from
    the run directory after a restart."""
    from simcore.models import build
    from simcore.models.social.model import STANCE_BINS

    overrides = ["run.steps=6", "output.sample_agents=50", "output.sample_every=3"]
    r = client.post("/api/runs", json={"scenario": "polarization_small", "overrides": overrides})
    assert r.status_code == 201, r.text
    run_id = r.json()["id"]
    d = wait_status(client, run_id, "completed")
    assert d["model"] == "social" and d["graph"] == "follow" and d["agent_state"] == "persona"
    groups = {g["title"]: g["columns"] for g in d["metric_groups"]}
    assert {"Stance and polarization", "Posts", "Actions"} <= set(groups)
    assert "bimodality" in groups["Stance and polarization"] and "n_create_post" in groups["Posts"]
    assert all(c in d["columns"] for cols in groups.values() for c in cols)
    assert not {"S", "E", "I", "R", "M", "new_infections"} & set(d["columns"])
    assert "activity_scale" in d["scheduled_params"]

    cols = metrics(client, run_id, columns="stance_mean,bimodality,n_create_post,active")
    assert cols["step"] == list(range(6))
    assert all(-1 <= v <= 1 for v in cols["stance_mean"]) and sum(cols["n_create_post"]) > 0
    assert all(a >= p for a, p in zip(cols["active"], cols["n_create_post"]))  # one action per active user

    personas = d["agent_states"]
    assert personas and "regular" in personas
    some = client.get(f"/api/runs/{run_id}/agents", params={"state": "regular", "limit": 1000}).json()
    assert some["total"] > 0 and set(some["columns"]["persona"]) == {"regular"}

    net = client.get(f"/api/runs/{run_id}/network").json()
    assert net["graph"] == "follow" and net["layers"] == ["follows"] and net["labels"] == list(STANCE_BINS)
    nodes = np.asarray(net["nodes"])
    assert 2 <= len(nodes) <= 150 and len(net["state"]) == len(nodes) and net["edges"]
    assert all(0 <= c < len(STANCE_BINS) for c in net["state"])
    follows = np.asarray(build(load_scenario("polarization_small", overrides)).state.follows)
    for i, j, _ in net["edges"]:  # every drawn edge is a follow, one way or the other
        a, b = nodes[i], nodes[j]
        assert b in follows[a] or a in follows[b]
    assert net["step"] == 6
    with ServerThread(create_app(ServerConfig(runs_dir=runs_dir, compile_cache=compile_cache))) as again, \
            httpx.Client(base_url=again.url, timeout=60) as c2:
        assert c2.get(f"/api/runs/{run_id}").json()["live"] is False
        assert c2.get(f"/api/runs/{run_id}/network").json() == net  # served from the run directory


def test_a_run_without_a_graph_says_why_live_and_from_disk(client, runs_dir, compile_cache):
    """An economy run has no graph: 409 with the reason, live and (from its manifest) after a restart; a run
    directory without the view's files (written before the view was kept) says it recorded none."""
    r = client.post("/api/runs", json={"scenario": "tax_us_fixed_small",
                                        "overrides": ["population.size=300", "run.steps=3", "output.sample_agents=50"]})
    assert r.status_code == 201, r.text
    run_id = r.json()["id"]
    wait_status(client, run_id, "completed")
    live = client.get(f"/api/runs/{run_id}/network")
    assert live.status_code == 409 and "has no graph to show" in live.json()["detail"]
    covid = start(client, steps=3, paused=False)
    wait_status(client, covid, "completed")
    for name in ("network_nodes.parquet", "network_edges.parquet"):
        (runs_dir / covid / name).unlink()
    with ServerThread(create_app(ServerConfig(runs_dir=runs_dir, compile_cache=compile_cache))) as again, \
            httpx.Client(base_url=again.url, timeout=60) as c2:
        past = c2.get(f"/api/runs/{run_id}/network")
        assert past.status_code == 409 and past.json()["detail"] == live.json()["detail"]
        old = c2.get(f"/api/runs/{covid}/network")
        assert old.status_code == 409 and old.json()["detail"] == "this run recorded no network view"
