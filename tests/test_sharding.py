"""Agent-axis sharding over 4 CPU devices gives the single-device metrics exactly."""
import subprocess
import textwrap

from conftest import SIMCORE, run_script_on_devices

SCRIPT = textwrap.dedent("""
    import os, sys, json
    import jax, numpy as np
    assert len(jax.devices()) == 4, jax.devices()
    from scenarios import load_scenario
    from simcore.models import build
    from simcore.runs import make_simulation
    out = {}
    for name, overrides in (("epidemic", ["population.size=20000"]),
                            ("seir", ["population={kind: homogeneous, size: 40000}",
                                      "graph={kind: erdos_renyi, mean_degree: 8}",
                                      "model={kind: seir, params: {beta: 0.08, latent_days: 2}}",
                                      "interventions=[]", "policy=null", "output.sample_agents=100"])):
        res = []
        for run in (["run.devices=1"], ["run.devices=4"], ["run.devices=4", "run.halo=true"]):
            sc = load_scenario("covid_small", overrides + run)
            b = build(sc, steps=40)
            sim = make_simulation(sc, b, 0)
            c = sim.advance(40)
            sharded = str(getattr(jax.tree.leaves(sim.state)[0], "sharding", ""))
            layers = sim.params.get("layers") or {"graph": sim.params["graph"]}
            halos = {k: l.halo.exchange_fraction() for k, l in layers.items() if l.halo is not None}
            res.append((c.metrics, c.samples, sharded, halos))
        (m1, s1, _, _), *rest = res
        for tag, (m4, s4, shard4, halos) in zip(("gspmd", "halo"), rest):
            out[f"{name}-{tag}"] = {
                "differing": [k for k in m1 if not np.array_equal(m1[k], m4[k])],
                "samples_differ": [k for k in s1 if not np.array_equal(s1[k], s4[k])],
                "sharded": "agents" in shard4, "infections": int(m1["new_infections"].sum()), "halos": halos,
            }
    print(json.dumps(out))
""")


def test_sharded_runs_equal_single_device_runs(cli_env):
    out = run_script_on_devices(SCRIPT, cli_env)
    assert set(out) == {"epidemic-gspmd", "epidemic-halo", "seir-gspmd", "seir-halo"}
    for name, r in out.items():
        assert r["sharded"], name
        assert r["infections"] > 100, name  # a real epidemic, not a trivially equal empty one
        assert r["differing"] == [] and r["samples_differ"] == [], (name, r)
    # halo plans exist only when asked for; households are contiguous, so their halo is tiny
    assert out["epidemic-gspmd"]["halos"] == {} and set(out["epidemic-halo"]["halos"]) == {
        "household", "school", "workplace", "community"}
    assert out["epidemic-halo"]["halos"]["household"] < 0.01
    assert 0.5 < out["seir-halo"]["halos"]["graph"] <= 1.0  # a random graph reads most of every block


def test_too_many_devices_is_a_clear_error(cli_env, tmp_path):
    res = subprocess.run(SIMCORE + ["run", "covid_small", "--set", "population.size=2000", "--devices", "8",
                                    "--out", str(tmp_path / "r")], capture_output=True, text=True, env=cli_env,
                         cwd=tmp_path, timeout=300)
    assert res.returncode == 2 and "run.devices: 8 requested but only 1 available" in res.stderr
    assert not (tmp_path / "r").exists()
