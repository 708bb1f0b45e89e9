"""The NYC epidemic model: invariants, determinism, interventions, crash safety."""
from simcore.session import drive
import json
import os
import signal
import subprocess
import time

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest

from conftest import SIMCORE
from scenarios import load_scenario
from simcore.engine import Simulation
from simcore.models import build
from simcore.runs import make_simulation

SMALL = ["population.size=20000"]


def _metrics(overrides, steps=60, seed=0):
    sc = load_scenario("covid_small", SMALL + list(overrides))
    built = build(sc, seed=seed, steps=steps)
    sim = make_simulation(sc, built, seed)
    chunks = []
    drive(sim, steps, on_chunk=lambda s, c: chunks.append(c))
    return {k: np.concatenate([c.metrics[k] for c in chunks]) for k in chunks[0].metrics}


def test_invariants_and_breakdowns_add_up():
    m = _metrics([], steps=40)
    n = 20_000
    np.testing.assert_array_equal(m["S"] + m["E"] + m["I"] + m["R"] + m["M"], n)
    assert np.all(np.diff(m["S"]) <= 0) and np.all(np.diff(m["M"]) >= 0)
    boroughs = [k for k in m if k.startswith("new_infections__borough_")]
    ages = [k for k in m if k.startswith("new_infections__age_")]
    assert len(boroughs) == 5 and len(ages) == 6
    np.testing.assert_array_equal(sum(m[k] for k in boroughs), m["new_infections"])
    np.testing.assert_array_equal(sum(m[k] for k in ages), m["new_infections"])
    np.testing.assert_array_equal(-np.diff(m["S"]), m["new_infections"][1:])
    assert 0 <= m["isolating_share"].min() and m["isolating_share"].max() <= 1
    assert 0.02 < m["unemployment_rate"][0] < 0.07  # Feb 2020 baseline of the tables (about 4%)


def test_determinism_per_seed():
    a, b, c = _metrics([], 30, 1), _metrics([], 30, 1), _metrics([], 30, 2)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert not np.array_equal(a["new_infections"], c["new_infections"])


def test_lockdown_lowers_attack_rate_and_raises_unemployment_same_seed():
    none = _metrics(["interventions=[]", "model.params.isolation.base=-30"], steps=90)
    lock = _metrics(["interventions=[{param: community_scale, start: 10, end: 90, value: 0.3},"
                     "{param: workplace_scale, start: 10, end: 90, value: 0.3},"
                     "{param: school_scale, start: 10, end: 90, value: 0.0, mode: set},"
                     "{param: lockdown, start: 10, end: 90, value: 1.0, mode: set}]",
                     "model.params.isolation.base=-30"], steps=90)
    assert (lock["R"][-1] + lock["M"][-1]) < 0.5 * (none["R"][-1] + none["M"][-1])
    assert lock["unemployment_rate"][-1] > none["unemployment_rate"][-1] + 0.03
    # identical before the lockdown starts: common random numbers
    np.testing.assert_array_equal(none["new_infections"][:10], lock["new_infections"][:10])


def test_laus_counts_leave_out_job_losers_not_yet_searching():
    """An observation only: the simulation is the same whatever ``not_searching``; with it 0 LAUS counts every
    unemployed agent; with every pause-time loser idle, nobody finding work and nobody starting to search, LAUS
    unemployment stays where it was when the order began (the losers leave the labour force instead)."""
    slugs = ["bronx", "brooklyn", "manhattan", "queens", "staten_island"]
    counted = _metrics([], steps=45)
    for b in slugs:
        np.testing.assert_array_equal(counted[f"laus_unemployed__borough_{b}"], counted[f"unemployed__borough_{b}"])
        np.testing.assert_array_equal(counted[f"laus_labor_force__borough_{b}"], counted[f"labor_force__borough_{b}"])
    frozen = _metrics(["model.params.employment.not_searching=1.0", "model.params.employment.search_delay_days=1e9",
                       "model.params.employment.return_base=0.0"], steps=45)
    no_return = _metrics(["model.params.employment.return_base=0.0"], steps=45)
    for k in ("S", "new_deaths", "unemployment_rate", "isolating_share"):
        np.testing.assert_array_equal(frozen[k], no_return[k])  # the simulation itself is untouched
    start = 21  # covid_small's pause_order: lockdown = 1 from step 21; a loss on step t is idle from step t
    for b in slugs:
        u, laus_u = frozen[f"unemployed__borough_{b}"], frozen[f"laus_unemployed__borough_{b}"]
        lf, laus_lf = frozen[f"labor_force__borough_{b}"], frozen[f"laus_labor_force__borough_{b}"]
        assert u[-1] > u[start - 1] + 20  # the pause did cost jobs
        np.testing.assert_array_equal(laus_u[:start], u[:start])
        # unemployed agents who die leave the count too, so it can only fall by the borough's deaths
        deaths = np.cumsum(frozen[f"new_deaths__borough_{b}"][start:])
        assert np.all(laus_u[start:] <= u[start - 1] + 0.01) and np.all(laus_u[start:] >= u[start - 1] - deaths - 0.01)
        np.testing.assert_allclose(lf - laus_lf, u - laus_u, atol=1e-3)


def test_people_contact_scales_equal_rate_scales_without_interventions():
    """With every scale at 1, keeping whole people's contacts is keeping everyone's: the same run, bit for bit."""
    rate = _metrics(["interventions=[]"], steps=30)
    people = _metrics(["interventions=[]", "model.params.contact_scales=people"], steps=30)
    for k in rate:
        np.testing.assert_array_equal(rate[k], people[k])


def test_people_contact_scales_cut_whole_contacts():
    """``contact_scales: people``: a scale is the share of people who keep a layer's contacts, the same people
    every day and nested across scales; the rest neither infect nor are infected in that layer. With the
    wave-1 pause shape (community 0.3, workplaces 0.4 from day 10), cutting whole contacts cuts infections
    more than scaling each contact's rate, because a contact kept for days at a high rate transmits almost
    surely whatever its rate's multiplier."""
    from simcore.models.epidemic import stay_home_ranks

    ranks = stay_home_ranks(200_000, 0)
    assert np.array_equal(ranks, stay_home_ranks(200_000, 0))  # fixed per agent and seed
    for v in (0.1, 0.3, 0.7):
        share = float(np.mean(ranks < v))
        assert abs(share - v) < 4 * np.sqrt(v * (1 - v) / ranks.size), (v, share)
    assert np.all((ranks < 0.3) <= (ranks < 0.4))  # who goes to the community also goes to work
    pause = ["interventions=[{param: community_scale, start: 10, end: 60, value: 0.3},"
             "{param: workplace_scale, start: 10, end: 60, value: 0.4},"
             "{param: school_scale, start: 10, end: 60, value: 0.0, mode: set}]",
             "model.params.beta.workplace=1.2", "model.params.beta.community=0.6"]
    rate = _metrics(pause, steps=60)
    people = _metrics(pause + ["model.params.contact_scales=people"], steps=60)
    np.testing.assert_array_equal(rate["new_infections"][:10], people["new_infections"][:10])
    after_rate, after_people = rate["new_infections"][20:].sum(), people["new_infections"][20:].sum()
    assert after_people < 0.7 * after_rate, (after_people, after_rate)


def test_isolation_rises_with_case_growth():
    m = _metrics(["interventions=[]"], steps=40)
    early, later = m["isolating_share"][:3].mean(), m["isolating_share"][20:40].max()
    assert later > early + 0.05


def test_killed_run_leaves_readable_parquet(cli_env, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen(
        SIMCORE + ["run", "covid_small", "--set", "population.size=20000", "--set", "run.chunk_size=2",
                   "--steps", "2000", "--set", "output.sample_every=1", "--out", str(out), "--quiet"],
        env=cli_env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    steps_done = 0
    while time.time() < deadline:
        mf = out / "manifest.json"
        if mf.exists():
            steps_done = json.loads(mf.read_text()).get("steps_done", 0)
            if steps_done >= 20:
                break
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert steps_done >= 20, proc.stderr.read().decode()[-2000:]
    from simcore import rundir

    assert not (out / "metrics.parquet").exists()  # killed: never compacted, the flushes are part files
    table = rundir.read_table(out, "metrics")
    steps = table.column("step").to_pylist()
    assert steps == list(range(len(steps))) and len(steps) >= 20
    for part in (out / "agents").glob("step=*/part-0.parquet"):
        assert pq.read_table(part).num_rows > 0
    assert not list(out.rglob("*.parquet.tmp")) or all(p.name.startswith(".") for p in out.rglob("*.tmp"))
    assert json.loads((out / "manifest.json").read_text())["status"] == "running"
