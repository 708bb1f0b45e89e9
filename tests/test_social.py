"""Social-platform model: recommenders, follow graph, cascades, opinion dynamics, scenario validation."""
from __future__ import annotations

import math
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import polars as pl
import pytest

from analysis import social as an
from scenarios import load_scenario
from simcore.models import build
from simcore.models.social import model as sm
from simcore.models.social import recsys
from simcore.runs import make_simulation, run_scenario

from conftest import SIMCORE


# -- scoring formulas --------------------------------------------------------------------------------------------
def test_reddit_hot_matches_formula():
    t = 1134028003 + 45000  # one 45000-s unit after Reddit's epoch
    assert recsys.reddit_hot(10, 3, t) == pytest.approx(math.log10(7) + 1.0, abs=1e-9)
    assert recsys.reddit_hot(2, 12, t) == pytest.approx(-1.0 + 1.0, abs=1e-9)  # s = -10
    assert recsys.reddit_hot(5, 5, t) == pytest.approx(1.0, abs=1e-9)  # s = 0: order 0, sign 0
    assert recsys.reddit_hot(1, 0, 1_700_000_000) == pytest.approx((1_700_000_000 - 1134028003) / 45000, abs=1e-9)


def test_device_hot_score_equals_formula():
    start = 1_700_000_000.0
    likes = np.array([0, 1, 7, 120, 3, 50_000], np.int32)
    dislikes = np.array([0, 0, 2, 20, 40, 1], np.int32)
    secs = np.array([0, 3600, 86_400, 7 * 86_400, 12_345, 30 * 86_400], np.float32)
    dev = np.asarray(recsys.hot_relative(jnp.asarray(likes), jnp.asarray(dislikes), jnp.asarray(secs)), np.float64)
    full = dev + recsys.hot_offset(start)
    ref = recsys.reddit_hot(likes, dislikes, start + secs.astype(np.float64))
    np.testing.assert_allclose(full, ref, rtol=1e-6, atol=2e-6)
    # ranking is what the feed uses: same order as the float64 formula
    assert list(np.argsort(dev)) == list(np.argsort(ref))


def test_recency_decays_and_stays_positive():
    dt = jnp.arange(0.0, 400.0, 1.0)
    r = np.asarray(recsys.recency(dt))
    assert r[0] == pytest.approx(math.log(2.718), abs=1e-6)
    assert np.all(np.diff(r[:171]) < 0)  # strictly decreasing up to the clamp
    assert np.all(np.isfinite(r)) and np.all(r > 0)
    assert np.all(r[171:] == r[170])  # clamped: old posts keep the smallest positive weight


def test_author_factor():
    f = np.asarray(recsys.author_factor(jnp.array([0, 999, 999_999])))
    np.testing.assert_allclose(f, [1.0, 1.0, math.log(1_000_000) / math.log(1000)], rtol=1e-6)


def test_split_slots():
    assert recsys.split_slots(10, {"interest": 0.6, "hot": 0.1, "network": 0.2, "random": 0.1}) == \
        {"interest": 6, "hot": 1, "network": 2, "random": 1}
    assert sum(recsys.split_slots(7, {"a": 1, "b": 1, "c": 1}).values()) == 7


# -- the interest recommender against brute force -----------------------------------------------------------------
def _small(extra=(), **params):
    data = {"name": "t", "population": {"kind": "homogeneous", "size": 300},
            "graph": {"kind": "erdos_renyi", "mean_degree": 4},
            "model": {"kind": "social", "params": {"post_capacity": 2000, "initial_posts": 200, **params}},
            "run": {"steps": 10, "seed": 3, "chunk_size": 10}, "output": {"sample_agents": 0}}
    return load_scenario(data, list(extra))


def test_interest_recommender_returns_true_topk():
    # every post is a candidate (4 clusters, all listed), so top-k over candidates = top-k over all posts
    sc = _small(n_topics=4, cluster_list=512, clusters_per_user=4, hot_candidates=8, feed_size=5, activity_rate=0.3)
    b = build(sc)
    cfg = b.model.substeps[1].args[0]
    st = b.state
    # mute one author for user 0 to check the mute filter as well
    st = sm._replace(st, muted=st.muted.at[0, 0].set(int(st.author[0])))
    users = jnp.arange(cfg.active_cap, dtype=jnp.int32) % cfg.n_users
    step = 5
    p = {**b.params, "step": jnp.int32(step)}
    k = 5
    fn = jax.jit(lambda s, pp, h: sm.interest_feed(cfg, s, pp, users, h, k))
    hot = sm.hot_list(cfg, st, p, cfg.hot_candidates)
    got = np.asarray(fn(st, p, hot))
    # brute force in float64 over every valid post
    n_posts = int(st.n_posts)
    ids = np.arange(n_posts)
    topic = np.asarray(st.topic, np.float64)[ids]
    author = np.asarray(st.author)[ids]
    followers = np.asarray(st.followers)
    dt = np.clip((step - np.asarray(st.created)[ids]) / cfg.recency_steps, 0, 170)
    rf = np.log((271.8 - dt) / 100) * np.maximum(1, np.log(followers[author] + 1) / np.log(1000))
    vec = np.asarray(st.interest, np.float64)
    muted = np.asarray(st.muted)
    for row, u in enumerate(np.asarray(users)[:50]):
        score = rf * (topic @ vec[u])
        score[(author == u) | np.isin(author, muted[u][muted[u] >= 0])] = -np.inf
        want = set(np.argsort(-score, kind="stable")[:k].tolist())
        assert set(got[row].tolist()) == want, f"user {u}"


def test_uniform_below_is_exact_multiply_high():
    rng = np.random.default_rng(0)
    bits = rng.integers(0, 2**32, 5000, dtype=np.uint64)
    bits[:4] = [0, 1, 2**32 - 1, 2**31]
    for bound in (1, 2, 7, 10_000, 2**20 + 3, 2**31 - 1):
        got = np.asarray(recsys.uniform_below(jnp.asarray(bits.astype(np.uint32)), bound))
        np.testing.assert_array_equal(got, (bits * np.uint64(bound)) >> np.uint64(32))


@pytest.mark.parametrize("m,k", [(50, 10), (10, 10), (6, 10), (0, 4), (1, 1)])
def test_sample_distinct_rows_are_distinct_and_uniform(m, k):
    rows = np.asarray(jax.jit(lambda key, m: recsys.sample_distinct(key, 20_000, k, m))(jax.random.key(1), jnp.int32(m)))
    taken = rows >= 0
    assert (taken.sum(axis=1) == min(m, k)).all()
    assert ((rows < m) | ~taken).all()
    for row in rows[:500]:
        assert len(set(row[row >= 0].tolist())) == min(m, k)
    if m > k:  # every id is in a row with probability k/m: binomial, 5 sigma
        counts = np.bincount(rows[taken], minlength=m)
        expect, sd = 20_000 * k / m, math.sqrt(20_000 * (k / m) * (1 - k / m))
        assert np.abs(counts - expect).max() < 5 * sd


@pytest.mark.parametrize("mix", ["random", "hot", "interest", "network", "mixed"])
def test_feeds_never_offer_a_post_twice(mix):
    shares = {"interest": 0.0, "hot": 0.0, "network": 0.0, "random": 0.0}
    shares.update({"interest": 0.4, "hot": 0.2, "network": 0.2, "random": 0.2} if mix == "mixed" else {mix: 1.0})
    sc = _small([f"model.params.feed.{name}={v}" for name, v in shares.items()], feed_size=8, activity_rate=1.0,
                initial_posts=30)
    sim = make_simulation(sc, build(sc), 3)
    for _ in range(3):
        sim.advance(1)
        feed = np.asarray(sim.state.feed)
        live = np.asarray(sim.state.active) < 300
        assert (feed[live] >= 0).any()
        for row in feed[live]:
            ids = row[row >= 0]
            assert ids.size == np.unique(ids).size


# -- full steps: follow graph consistency and determinism ----------------------------------------------------------
@pytest.fixture(scope="module")
def churn():
    """A small platform with heavy follow/unfollow/mute traffic, 12 steps."""
    sc = _small(["model.params.actions.follow=0.3", "model.params.actions.unfollow=0.5", "model.params.actions.mute=0.05",
                 "model.params.compact_every=4", "model.params.max_followees=6",
                 "model.params.feed.interest=0.5", "model.params.feed.network=0.3", "model.params.feed.random=0.2"],
                activity_rate=0.5)
    b = build(sc)
    sim = make_simulation(sc, b, 3)
    s0 = sim.state
    chunk = sim.advance(12)
    return sim, s0, chunk


def test_follow_graph_stays_consistent(churn):
    sim, _, chunk = churn
    assert chunk.metrics["n_follow"].sum() > 20 and chunk.metrics["n_unfollow"].sum() > 20
    assert chunk.metrics["n_mute"].sum() > 0
    st = jax.device_get(sim.state)
    f = np.asarray(st.follows)
    n = f.shape[0]
    for u in range(n):  # small n; a per-row check is the clearest statement of "no duplicates"
        row = f[u][f[u] >= 0]
        assert len(np.unique(row)) == len(row), f"duplicate followee in row {u}: {row}"
        assert u not in row
    np.testing.assert_array_equal(np.asarray(st.followees), (f >= 0).sum(axis=1))
    np.testing.assert_array_equal(np.asarray(st.followers), np.bincount(f[f >= 0], minlength=n))
    # 12 steps with compact_every=4: compacted after step 11, so valid slots come first in every row
    valid = f >= 0
    assert np.all(valid[:, :-1] >= valid[:, 1:])
    assert chunk.metrics["edges"][-1] == valid.sum()


def test_same_seed_same_run(churn):
    sim, s0, first = churn
    sim.state, sim.step = s0, 0
    again = sim.advance(12)
    for name in ("n_like", "n_follow", "stance_var", "posts_total", "edges"):
        np.testing.assert_array_equal(first.metrics[name], again.metrics[name])
    for name in ("agent", "action", "post", "target"):
        np.testing.assert_array_equal(first.events[name], again.events[name])


def test_decision_targets_override_heuristics(churn):
    """Archetype values replace the heuristic odds; NaN keeps the heuristic (runs after the tests above)."""
    sim, s0, base = churn
    n = sim.model.substeps[0].args[0].n_users
    sim.state, sim.step = s0, 0
    sim.set_param("repost_llm", np.zeros(n, np.float32))
    sim.set_param("like_llm", np.full(n, 0.95, np.float32))
    forced = sim.advance(12)
    assert forced.metrics["n_repost"].sum() == 0 < base.metrics["n_repost"].sum()
    share = forced.metrics["n_like"].sum() / forced.metrics["active"].sum()
    assert share > 0.5 > base.metrics["n_like"].sum() / base.metrics["active"].sum()
    sim.set_param("repost_llm", np.full(n, np.nan, np.float32))
    sim.set_param("like_llm", np.full(n, np.nan, np.float32))


def test_other_seed_differs():
    sc = _small(activity_rate=0.3)
    a = make_simulation(sc, build(sc, seed=1), 1).advance(3)
    b = make_simulation(sc, build(sc, seed=2), 2).advance(3)
    assert not np.array_equal(a.events["action"], b.events["action"])


# -- cascades -------------------------------------------------------------------------------------------------------
def _events(rows):
    return pl.DataFrame(rows, schema=["step", "agent", "action", "post", "parent", "root", "target"], orient="row")


def test_cascade_metrics_on_hand_built_tree():
    R, Q, LIKE, COMMENT = 4, 5, 2, 6
    ev = _events([
        (0, 9, 1, 0, -1, 0, -1),  # create root 0
        (1, 1, R, 10, 0, 0, 9), (1, 2, R, 11, 0, 0, 9),  # depth 1: two nodes
        (1, 5, LIKE, 0, -1, 0, 9),  # a like is not part of the tree
        (2, 3, R, 12, 10, 0, 1),  # depth 2
        (2, 4, Q, 13, 12, 0, 3),  # depth 3 (quote)
        (2, 1, R, 14, 11, 0, 2),  # depth 2, user 1 again
        (2, 6, COMMENT, 15, 0, 0, 9),  # comments are not reposts
        (3, 7, R, 20, 19, 19, 8),  # another cascade
    ])
    t = an.cascade_table(ev, [0]).sort("step")
    assert t["step"].to_list() == [0, 1, 2, 3]
    assert t["scale"].to_list() == [0, 2, 4, 4]
    assert t["depth"].to_list() == [0, 1, 3, 3]
    assert t["max_breadth"].to_list() == [0, 2, 2, 2]


def test_nrmse():
    assert an.nrmse([1, 2, 3], [1, 2, 4]) == pytest.approx(math.sqrt(1 / 3) / 4)
    with pytest.raises(ValueError):
        an.nrmse([1, 2], [0, 0])


def test_polarization_indices():
    rng = np.random.default_rng(0)
    two = np.concatenate([np.full(500, -0.9), np.full(500, 0.9)]) + rng.normal(0, 0.02, 1000)
    one = rng.normal(0, 0.2, 1000)
    a, b = an.polarization_indices(two), an.polarization_indices(one)
    assert a["bimodality"] > 5 / 9 > b["bimodality"]
    assert a["extreme_share"] > 0.9 and b["extreme_share"] < 0.01
    assert a["variance"] > b["variance"]


def test_follow_graph_analysis():
    follows = np.array([[1, 2, -1], [2, -1, -1], [-1, -1, -1], [0, -1, -1]])
    src, dst = an.follow_edges(follows)
    assert sorted(zip(src.tolist(), dst.tolist())) == [(0, 1), (0, 2), (1, 2), (3, 0)]
    deg = an.degree_distribution(src, dst, 4)
    assert deg["in_count"].to_list()[:3] == [1, 2, 1]  # user 3 has 0 followers, 0 and 1 one, 2 has two
    stance = np.array([0.5, 0.6, 0.7, -0.8])
    side = np.array([0.9, 0.8, -0.9, -0.7])
    assert an.stance_assortativity([0, 1, 2, 3], [1, 0, 3, 2], side) > 0.9  # alike follow alike
    assert an.stance_assortativity([0, 1, 2, 3], [2, 3, 0, 1], side) < -0.9  # across the divide
    G = an.to_networkx_sample(src, dst, 4, 4, stance=stance)
    assert G.number_of_edges() == 4 and G.nodes[3]["stance"] == pytest.approx(-0.8)


def test_misinformation_run_writes_cascades(tmp_path):
    sc = load_scenario("misinformation_small", ["run.steps=24", "run.chunk_size=12"])
    run_dir = run_scenario(sc, tmp_path / "run")
    metrics = pl.read_parquet(run_dir / "metrics.parquet").sort("step")
    ev = an.read_events(run_dir)
    assert set(ev.columns) >= {"step", "agent", "action", "post", "parent", "root", "target"}
    import json
    info = json.loads((run_dir / "manifest.json").read_text())["build_info"]
    labels = np.array(info["seed_post_label"])
    for r, name in enumerate(info["seed_labels"]):
        roots = np.nonzero(labels == r)[0]
        spread = ev.filter(pl.col("action").is_in([4, 5]) & pl.col("root").is_in(roots.tolist()))
        assert metrics[f"cascade_size__{name}"][-1] == spread.height
    rumor = np.nonzero(labels == 0)[0]
    table = an.cascade_table(ev, rumor).group_by("step").agg(pl.col("scale").sum()).sort("step")
    assert table["scale"][-1] > 0  # the rumor spread
    assert np.all(np.diff(table["scale"].to_numpy()) >= 0)


# -- opinion dynamics ------------------------------------------------------------------------------------------------
def _extremity(feed_overrides):
    sc = load_scenario("polarization_small", ["run.steps=40", *feed_overrides])
    b = build(sc)
    return make_simulation(sc, b, sc.run.seed).advance(40).metrics


def test_polarization_rises_under_interest_recommender_not_random():
    interest = _extremity([])
    rand = _extremity(["model.params.feed.interest=0", "model.params.feed.random=1"])
    assert interest["extremity"][-1] > interest["extremity"][0]
    assert interest["stance_var"][-1] > interest["stance_var"][0]
    assert rand["extremity"][-1] < rand["extremity"][0]
    assert interest["feed_stance_distance"][-1] < rand["feed_stance_distance"][-1]  # echo chamber


def test_herd_effect_upvoted_gain_more():
    sc = load_scenario("herd_effect_small")
    m = make_simulation(sc, build(sc), 0).advance(24).metrics
    df = pl.DataFrame({"step": np.arange(24), **{k: v for k, v in m.items() if "__" in k}})
    h = an.herd_ratios(df).to_dicts()
    by = {r["group"]: r for r in h}
    assert by["up"]["net_gained"] > by["down"]["net_gained"]


# -- scenario validation ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("overrides, message", [
    # a small post buffer, so feed_size (capped at 256 by the schema) can exceed it
    (["model.params.post_capacity=100", "model.params.feed_size=200"],
     "model.params.feed_size: must be <= post_capacity (100), got 200"),
    (["model.params.personas={troll: 1.0}"], "model.params.personas: unknown persona 'troll'"),
    (["model.params.post_capacity=500", "model.params.initial_posts=10"],
     "model.params.post_capacity: must be >= the peak active users"),
    (["model.params.initial_posts=6000"], "model.params.initial_posts: seed posts (0) + initial_posts must be <= "
                                          "post_capacity (5000), got 6000"),
    (["model.params.seed_posts=[{label: a, topic: 99}]"], "model.params.seed_posts[0].topic: must be < n_topics (32)"),
    (["interventions=[{param: contact_scale, start: 0, end: 5, value: 0.5}]"],
     "interventions[0].param: unknown parameter 'contact_scale' for model 'social'"),
])
def test_bad_values_exit_2(overrides, message, cli_env):
    args = [a for o in overrides for a in ("--set", o)]
    res = subprocess.run([*SIMCORE, "validate", "polarization_small", *args],
                         capture_output=True, text=True, env=cli_env, timeout=120)
    assert res.returncode == 2, res.stderr
    assert message in res.stderr


def test_builtin_social_scenarios_validate(cli_env):
    for name in ("misinformation", "polarization", "herd_effect"):
        res = subprocess.run([*SIMCORE, "validate", name], capture_output=True, text=True, env=cli_env, timeout=120)
        assert res.returncode == 0, res.stderr
