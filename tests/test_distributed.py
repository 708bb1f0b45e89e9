"""Multi-process runs with jax.distributed on loopback: 2 processes x 2 CPU devices each.

The two-process run must give exactly the metrics and sampled agents of a
single-process, single-device run with the same seed, with one part file per
process and a manifest that lists them.
"""
import json
import math
import subprocess
import sys
import zlib

import polars as pl
import pytest

from conftest import ROOT, SIMCORE
from llm_servers import FakeCompletionServer, free_port

def run_processes(args, env, cwd, n=2, devices_each=2, timeout=600):
    port = free_port()
    procs = []
    for pid in range(n):
        penv = dict(env, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices_each}",
                    JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES=str(n), JAX_PROCESS_ID=str(pid))
        procs.append(subprocess.Popen(SIMCORE + ["run", *args, "--distributed", "--quiet"], env=penv, cwd=cwd,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    out = []
    try:
        for p in procs:
            so, se = p.communicate(timeout=timeout)
            out.append((p.returncode, so, se))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return out


def run_single(args, env, cwd):
    res = subprocess.run(SIMCORE + ["run", *args, "--quiet"], env=env, cwd=cwd, capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]


def metrics(run_dir):
    df = pl.read_parquet(run_dir / "metrics.parquet")
    return df.drop([c for c in df.columns if c in ("wall_seconds", "llm_seconds")])


def samples(run_dir):
    return (pl.scan_parquet(run_dir / "agents" / "**" / "*.parquet", hive_partitioning=True).collect()
            .sort(["step", "agent"]))


def check_layout(run_dir, n_agents, n_proc=2):
    m = json.loads((run_dir / "manifest.json").read_text())
    assert m["status"] == "completed" and m["device"]["processes"] == n_proc and m["device"]["count"] == 4
    hosts = m["hosts"]
    assert [h["process_id"] for h in hosts] == list(range(n_proc))
    block = n_agents // n_proc
    assert [h["owned_agents"] for h in hosts] == [[[i * block, (i + 1) * block]] for i in range(n_proc)]
    for h in hosts:
        assert h["status"] == "completed"
        mine = [f for f in h["files"] if f.startswith("agents/")]
        assert mine and all(f.endswith(f"part-{h['process_id']}.parquet") for f in mine)
        lo, hi = h["owned_agents"][0]
        for f in mine:  # every part is readable and holds only its own process's agents
            agents = pl.read_parquet(run_dir / f)["agent"]
            assert agents.len() > 0 and agents.min() >= lo and agents.max() < hi
    assert set(m["files"]) == {f for h in hosts for f in h["files"]} and "metrics.parquet" in m["files"]
    assert all((run_dir / f).is_file() for f in m["files"])
    return m


def test_two_process_run_equals_single_process_run(cli_env, tmp_path):
    args = ["covid_small", "--set", "population.size=8000", "--set", "output.sample_agents=400",
            "--steps", "21", "--seed", "3"]
    res = run_processes(args + ["--out", str(tmp_path / "multi")], cli_env, tmp_path)
    for rc, so, se in res:
        assert rc == 0, se[-3000:]
        assert "run directory:" in so
    run_single(args + ["--out", str(tmp_path / "single")], cli_env, tmp_path)
    multi, single = tmp_path / "multi", tmp_path / "single"
    check_layout(multi, 8000)
    a, b = metrics(multi), metrics(single)
    assert a.columns == b.columns and a.equals(b)
    assert a["new_infections"].sum() > 50  # an epidemic happened: the equality is not between two empty runs
    sa, sb = samples(multi), samples(single)
    assert sa.height == sb.height == 400 * 3 and sa.equals(sb)


def test_two_process_llm_round_is_asked_once_and_shared(cli_env, tmp_path):
    # prompt-dependent answers, so a process that asked on its own would diverge
    def dist(prompt):
        p = 0.2 + 0.6 * (zlib.crc32(prompt.encode()) % 1000) / 1000
        return {" yes": math.log(p / 2), " no": math.log((1 - p) / 2), " keep": math.log((1 - p) / 2),
                " lose": math.log(p / 2)}

    args = ["covid_nyc", "--set", "population.size=8000", "--set", "output.sample_agents=100", "--steps", "15",
            "--set", "policy.backend={kind: openai, endpoints: [URL], model: fake-model, check_first_tokens: false}"]
    counts = []
    with FakeCompletionServer(dist) as srv:
        args = [a.replace("URL", srv.url) for a in args]
        res = run_processes(args + ["--out", str(tmp_path / "multi")], cli_env, tmp_path)
        for rc, _, se in res:
            assert rc == 0, se[-3000:]
        counts.append(srv.completions)
        run_single(args + ["--out", str(tmp_path / "single")], cli_env, tmp_path)
        counts.append(srv.completions - counts[0])
    assert counts[0] == counts[1] > 0  # only process 0 asked; the single run asked the same questions
    multi, single = tmp_path / "multi", tmp_path / "single"
    check_layout(multi, 8000)
    a, b = metrics(multi), metrics(single)
    assert a.equals(b) and a["llm_calls"].sum() > 0
    calls = pl.read_parquet(multi / "llm_calls.parquet")
    ref = pl.read_parquet(single / "llm_calls.parquet")
    keep = ["step", "decision", "archetype", "group_size", "value"]
    assert calls.select(keep).equals(ref.select(keep)) and calls["value"].is_not_nan().all()


@pytest.mark.parametrize("env, message", [
    ({"JAX_NUM_PROCESSES": "2"}, "JAX_COORDINATOR_ADDRESS: must be set when JAX_NUM_PROCESSES is"),
    ({"JAX_NUM_PROCESSES": "2", "JAX_COORDINATOR_ADDRESS": "127.0.0.1:1"}, "JAX_PROCESS_ID: must be set"),
    ({"JAX_NUM_PROCESSES": "2", "JAX_COORDINATOR_ADDRESS": "127.0.0.1:1", "JAX_PROCESS_ID": "2"},
     "JAX_PROCESS_ID: must be in [0, 2) for JAX_NUM_PROCESSES=2, got 2"),
    ({"JAX_NUM_PROCESSES": "two"}, "JAX_NUM_PROCESSES: must be an integer, got 'two'"),
    ({}, "JAX_NUM_PROCESSES: no multi-process set-up found"),
])
def test_bad_multi_process_environment_is_a_clear_error(cli_env, tmp_path, env, message):
    clean = {k: v for k, v in cli_env.items() if not k.startswith(("JAX_", "SLURM_", "OMPI_"))}
    res = subprocess.run(SIMCORE + ["run", "covid_small", "--set", "population.size=2000", "--distributed",
                                    "--out", str(tmp_path / "r")], env={**clean, **env}, cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 2, res.stderr[-2000:]
    assert message in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "r").exists()


def test_agents_that_do_not_split_evenly_are_a_clear_error(cli_env, tmp_path):
    env = dict(cli_env, XLA_FLAGS="--xla_force_host_platform_device_count=4")
    res = subprocess.run(SIMCORE + ["run", "covid_small", "--set", "population.size=2002", "--devices", "4",
                                    "--out", str(tmp_path / "r")], env=env, cwd=tmp_path, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 2
    assert "run.devices: 2,002 agents do not split evenly over 4 devices" in res.stderr
    assert not (tmp_path / "r").exists()


def test_two_process_social_run_splits_events_by_owner(cli_env, tmp_path):
    args = ["misinformation_small", "--set", "population.size=2000", "--steps", "12", "--seed", "1"]
    res = run_processes(args + ["--out", str(tmp_path / "multi")], cli_env, tmp_path)
    for rc, _, se in res:
        assert rc == 0, se[-3000:]
    run_single(args + ["--out", str(tmp_path / "single")], cli_env, tmp_path)
    multi, single = tmp_path / "multi", tmp_path / "single"
    m = check_layout(multi, 2000)
    assert metrics(multi).equals(metrics(single))
    for h in m["hosts"]:  # each process wrote events, and only its own users'
        lo, hi = h["owned_agents"][0]
        parts = [f for f in h["files"] if f.startswith("events/")]
        assert parts and all(f.endswith(f"-p{h['process_id']}.parquet") for f in parts)
        agents = pl.concat([pl.read_parquet(multi / f) for f in parts])["agent"]
        assert agents.min() >= lo and agents.max() < hi
    keys = ["step", "agent", "action", "post"]
    ev_multi = pl.read_parquet(multi / "events" / "*.parquet").sort(keys)
    ev_single = pl.read_parquet(single / "events" / "*.parquet").sort(keys)
    assert ev_multi.height > 100 and ev_multi.equals(ev_single.select(ev_multi.columns))
