"""Checkpoints: deterministic rebuild, exact restore, atomic files, resume after a real SIGKILL."""
import json
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import polars as pl
import pytest

from conftest import SIMCORE, kill_when
from scenarios import load_scenario
from simcore.checkpoint import (
    CheckpointError, latest_checkpoint, list_checkpoints, load_checkpoint, save_checkpoint,
    save_simulation, restore_simulation, truncate_outputs,
)
from simcore.models import build
from simcore.session import drive
from simcore.runs import make_simulation, resume_run, run_scenario

SEIR = {"name": "ck", "population": {"kind": "homogeneous", "size": 3000},
        "graph": {"kind": "erdos_renyi", "mean_degree": 8},
        "model": {"kind": "seir", "params": {"beta": 0.06, "initial_infected": 0.01}},
        "run": {"steps": 40, "chunk_size": 10}, "output": {"sample_agents": 50, "sample_every": 5}}


def _same(x, y) -> bool:  # bit identity (NaN placeholders included)
    x, y = np.asarray(x), np.asarray(y)
    return x.shape == y.shape and x.dtype == y.dtype and x.tobytes() == y.tobytes()


def _leaves_equal(a, b) -> bool:
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    return len(la) == len(lb) and all(_same(x, y) for x, y in zip(la, lb))


def _collect(sim, n):
    rows = []
    drive(sim, n, on_chunk=lambda s, c: rows.append(c.metrics))
    return {k: np.concatenate([r[k] for r in rows]) for k in rows[0]}


@pytest.mark.parametrize("spec", ["seir", "covid_small"])
def test_build_is_deterministic(spec):
    """Checkpoints omit population and graph because build() rebuilds them bit for bit."""
    sc = load_scenario(SEIR) if spec == "seir" else load_scenario("covid_small", ["population.size=4000"])
    a, b = build(sc, seed=3), build(sc, seed=3)
    assert _leaves_equal(a.params, b.params)
    assert _leaves_equal(a.state, b.state)
    assert all(np.array_equal(a.schedule[k], b.schedule[k]) for k in a.schedule)
    assert np.array_equal(a.sample_idx, b.sample_idx)
    c = build(sc, seed=4)
    assert not _leaves_equal(a.params, c.params)  # the seed matters, so the test can fail


def test_save_restore_continues_exactly(tmp_path):
    sc = load_scenario(SEIR)
    sim = make_simulation(sc, build(sc, seed=1), 1)
    _collect(sim, 20)
    path = save_simulation(sim, tmp_path / "checkpoints", scenario=sc, steps=40)
    assert path.name == "step=20" and (path / "meta.json").exists()
    meta = json.loads((path / "meta.json").read_text())
    assert meta["step"] == 20 and meta["seed"] == 1 and meta["scenario"]["name"] == "ck"

    resumed, _ = restore_simulation(path)
    assert resumed.step == 20 and _leaves_equal(resumed.state, sim.state)
    ref = _collect(sim, 20)  # the original continues: the reference
    rest = _collect(resumed, 20)
    assert ref["I"].max() > 0
    for k in ref:
        assert np.array_equal(ref[k], rest[k]), k


def test_live_edits_survive(tmp_path):
    """Schedule edits and set_param changes made during a run are part of the checkpoint."""
    sc = load_scenario("covid_small", ["population.size=3000", "run.steps=30"])
    built = build(sc, seed=0)
    sim = make_simulation(sc, built, 0)
    sim.intervene("community_scale", 0.25, start=12, end=20, mode="set")
    target = built.model.decision_targets[0] if built.model.decision_targets else "beta"
    new_value = np.full(np.shape(sim.params[target]), 0.01, np.float32)
    sim.set_param(target, new_value)
    path = save_simulation(sim, tmp_path, scenario=sc, steps=30)

    again = make_simulation(sc, build(sc, seed=0), 0)
    load_checkpoint(path).restore_into(again)
    assert np.array_equal(again.schedule["community_scale"], sim.schedule["community_scale"])
    assert again.schedule["community_scale"][15] == pytest.approx(0.25)
    assert np.array_equal(np.asarray(again.params[target]), new_value)


def test_prng_key_leaves_roundtrip(tmp_path):
    state = {"key": jax.random.key(7), "x": jnp.arange(5, dtype=jnp.int16)}
    path = save_checkpoint(tmp_path, step=3, seed=0, state=state, schedule={"a": np.zeros(4, np.float32)})
    back = load_checkpoint(path).state_like(state)
    assert np.array_equal(jax.random.key_data(back["key"]), jax.random.key_data(state["key"]))
    assert back["x"].dtype == jnp.int16 and np.array_equal(back["x"], state["x"])


def test_mismatched_rebuild_is_refused(tmp_path):
    sc = load_scenario(SEIR)
    sim = make_simulation(sc, build(sc, seed=1), 1)
    path = save_simulation(sim, tmp_path, scenario=sc)
    other = make_simulation(sc, build(sc, seed=2), 1)  # different graph, same root seed
    with pytest.raises(CheckpointError, match="rebuilt parameters differ"):
        load_checkpoint(path).restore_into(other)


def test_incomplete_checkpoints_are_ignored_and_rewrites_are_atomic(tmp_path):
    state = {"x": jnp.zeros(3)}
    sched = {"a": np.zeros(4, np.float32)}
    save_checkpoint(tmp_path, step=5, seed=0, state=state, schedule=sched)
    (tmp_path / "step=9").mkdir()  # no meta.json: a write that never finished
    (tmp_path / ".tmp-step=12-1-abc").mkdir()
    assert [s for s, _ in list_checkpoints(tmp_path)] == [5]
    assert latest_checkpoint(tmp_path).name == "step=5"
    save_checkpoint(tmp_path, step=5, seed=0, state={"x": jnp.ones(3)}, schedule=sched)  # replace in place
    assert np.array_equal(load_checkpoint(tmp_path / "step=5").leaves[0], np.ones(3))
    assert not list(tmp_path.glob(".tmp-*"))


def test_stopped_run_resumes_in_process(tmp_path):
    sc = load_scenario(SEIR)
    ref = run_scenario(sc, tmp_path / "ref")
    calls = iter(range(100))
    run_dir = run_scenario(sc, tmp_path / "run", checkpoint_every=10, should_stop=lambda: next(calls) >= 2)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "stopped" and manifest["steps_done"] == 20
    assert [s for s, _ in list_checkpoints(run_dir)] == [10, 20]
    resume_run(run_dir)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "completed" and manifest["resumed"][0]["from_step"] == 20
    a = pl.read_parquet(ref / "metrics.parquet").drop("wall_seconds")
    b = pl.read_parquet(run_dir / "metrics.parquet").drop("wall_seconds")
    assert a.equals(b)
    # agent samples: same partitions, same rows
    for part in sorted((ref / "agents").iterdir()):
        assert pl.read_parquet(part / "part-0.parquet").equals(pl.read_parquet(run_dir / "agents" / part.name / "part-0.parquet"))
    # the network view's states: each recorded step once, the resumed step included, as in the uninterrupted run
    from simcore import rundir

    states = [pl.from_arrow(rundir.read_table(d, "network_states")).sort(["step", "node"]) for d in (ref, run_dir)]
    assert states[0].height > 0 and states[0]["step"].n_unique() > 2
    assert states[1].equals(states[0]), (states[0]["step"].unique().to_list(), states[1]["step"].unique().to_list())
    with pytest.raises(CheckpointError, match="nothing to resume"):
        resume_run(run_dir)


def test_truncate_outputs_drops_later_rows(tmp_path):
    from simcore.io import atomic_write_table
    import pyarrow as pa

    pl.DataFrame({"step": np.arange(10), "x": np.arange(10.0)}).write_parquet(tmp_path / "metrics.parquet")
    (tmp_path / "events").mkdir()
    atomic_write_table(pa.table({"step": [2, 3, 6, 7]}), tmp_path / "events" / "part-000000.parquet")
    atomic_write_table(pa.table({"step": [8, 9]}), tmp_path / "events" / "part-000001.parquet")
    for s in (0, 5, 7):
        (tmp_path / "agents" / f"step={s}").mkdir(parents=True)
    truncate_outputs(tmp_path, 7)
    assert pl.read_parquet(tmp_path / "metrics.parquet")["step"].to_list() == list(range(7))
    assert pl.read_parquet(tmp_path / "events" / "part-000000.parquet")["step"].to_list() == [2, 3, 6]
    assert not (tmp_path / "events" / "part-000001.parquet").exists()
    assert sorted(p.name for p in (tmp_path / "agents").iterdir()) == ["step=0", "step=5"]


def test_resume_cli_errors(tmp_path, capsys):
    from simcore.cli import main

    (tmp_path / "run").mkdir()
    assert main(["resume", str(tmp_path / "run")]) == 2
    assert "error: run_dir: not a run directory" in capsys.readouterr().err
    (tmp_path / "run" / "manifest.json").write_text(json.dumps({"seed": 0, "steps": 10}))
    assert main(["resume", str(tmp_path / "run")]) == 2
    assert "error: run_dir: no checkpoint" in capsys.readouterr().err
    assert main(["resume", str(tmp_path / "run"), "--steps", "0"]) == 2
    assert "error: --steps: must be > 0, got 0" in capsys.readouterr().err
    assert main(["run", "covid_small", "--checkpoint-every", "0", "--out", str(tmp_path / "x")]) == 2
    assert "error: --checkpoint-every: must be > 0, got 0" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_resume_after_sigkill_is_bit_identical(cli_env, tmp_path):
    env = {**cli_env, "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "jax-cache")}  # later processes skip compiling
    args = ["covid_small", "--set", "population.size=20000", "--quiet"]
    killed = tmp_path / "killed"
    proc = subprocess.Popen(SIMCORE + ["run", *args, "--checkpoint-every", "10", "--out", str(killed)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=tmp_path)
    kill_when(proc, lambda: bool(list_checkpoints(killed)), timeout=300, what="no checkpoint within 300 s")
    manifest = json.loads((killed / "manifest.json").read_text())
    assert manifest["status"] == "running" and manifest["steps_done"] < 120  # really killed partway

    res = subprocess.run(SIMCORE + ["resume", str(killed), "--quiet"], capture_output=True, text=True, env=env,
                         cwd=tmp_path, timeout=600)
    assert res.returncode == 0, res.stderr
    ref = tmp_path / "ref"
    res = subprocess.run(SIMCORE + ["run", *args, "--out", str(ref)], capture_output=True, text=True, env=env,
                         cwd=tmp_path, timeout=600)
    assert res.returncode == 0, res.stderr

    a = pl.read_parquet(ref / "metrics.parquet").drop("wall_seconds")
    b = pl.read_parquet(killed / "metrics.parquet").drop("wall_seconds")
    assert b["step"].to_list() == list(range(120))
    assert a.equals(b)
    manifest = json.loads((killed / "manifest.json").read_text())
    assert manifest["status"] == "completed" and manifest["resumed"][0]["previous_status"] == "running"


SHARDED = """
import json, sys
import jax, polars as pl
from scenarios import load_scenario
from simcore.checkpoint import load_checkpoint, latest_checkpoint
from simcore.session import resume_run
from simcore.models import build
from simcore.session import drive
from simcore.runs import make_simulation, resume_run, run_scenario
out = sys.argv[1]
sc = load_scenario("covid_small", ["population.size=8000", "run.steps=30", "run.chunk_size=10"])
ref = run_scenario(sc, out + "/ref")
two = sc.model_copy(update={"run": sc.run.model_copy(update={"devices": 2})})
calls = iter(range(100))
run = run_scenario(two, out + "/run", checkpoint_every=10, should_stop=lambda: next(calls) >= 2)
sim = make_simulation(two, build(two), 0)
load_checkpoint(latest_checkpoint(run)).restore_into(sim)
resume_run(run)
a = pl.read_parquet(ref / "metrics.parquet").drop("wall_seconds")
b = pl.read_parquet(run / "metrics.parquet").drop("wall_seconds")
print(json.dumps({"equal": a.equals(b), "rows": b.height,
                  "sharded": "agents" in str(jax.tree.leaves(sim.state)[0].sharding)}))
"""


def test_resume_of_a_sharded_run(cli_env, tmp_path):
    """Restored state goes back onto the run's device mesh; the metrics equal a single-device run's."""
    import sys

    env = {**cli_env, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    res = subprocess.run([sys.executable, "-c", SHARDED, str(tmp_path)], capture_output=True, text=True, env=env,
                         timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    assert json.loads(res.stdout.strip().splitlines()[-1]) == {"equal": True, "rows": 30, "sharded": True}
