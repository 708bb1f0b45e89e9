"""Initial platform state from a scenario: users, personas, activity profiles, follow rows, seed posts."""
from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from scenarios.loader import ScenarioError

from . import recsys
from .model import PERSONAS, SCHEDULED, DECISION_TARGETS, SocialConfig, SocialState

FIELD = "model.params"


def active_cap(activity: np.ndarray, chunk: int) -> tuple[int, int]:
    """(capacity, chunk): the busiest hour's expected active users + 25% + 6 sd, in whole chunks."""
    p = activity.astype(np.float64) / 255.0
    mean = p.sum(axis=0)
    sd = np.sqrt((p * (1 - p)).sum(axis=0))
    need = int(math.ceil(float(np.max(1.25 * mean + 6 * sd)))) + 64
    need = min(need, activity.shape[0])
    c = min(chunk, need)
    return int(math.ceil(need / c) * c), c


def _unit(x):
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-6)


def init(prm, n: int, csr, seed: int):
    """``prm`` is the scenario's SocialParams; ``csr`` the initial graph (row u: users u follows)."""
    rng = np.random.default_rng([seed, 0x50C1A1])
    D, T = prm.embedding_dim, prm.n_topics
    names = tuple(prm.personas)
    shares = np.array([prm.personas[k] for k in names], np.float64)
    persona = rng.choice(len(names), size=n, p=shares / shares.sum()).astype(np.int8)
    pm = np.array([PERSONAS[k] for k in names], np.float32)  # [n_personas, 3]

    # activity: a diurnal profile per user (evening peak, per-user phase), mean over the day = activity_rate
    peak = rng.normal(20.0, 3.0, n)
    hours = np.arange(24)
    shape = 1.0 + prm.diurnal_amplitude * np.cos(2 * np.pi * (hours[None, :] - peak[:, None]) / 24.0)
    mult = pm[persona, 0] / float(np.sum(shares / shares.sum() * pm[:, 0]))
    prob = np.clip(prm.activity_rate * mult[:, None] * shape, 0.0, 1.0)
    activity = np.rint(prob * 255).astype(np.uint8)
    cap, chunk = active_cap(activity, prm.recommend_chunk)
    P = prm.post_capacity
    if cap > P:
        raise ScenarioError(f"{FIELD}.post_capacity", f"must be >= the per-step active-user capacity ({cap}), got {P}")

    # embeddings: topic centroids plus a stance axis, so interest similarity carries stance (homophily)
    centroids = _unit(rng.normal(size=(T, D))).astype(np.float32)
    axis = _unit(rng.normal(size=D)).astype(np.float32)
    c = prm.stance_topic_coupling
    stance = np.clip(rng.normal(0.0, prm.initial_stance_sd, n), -1, 1).astype(np.float32)
    fav = rng.integers(0, T, n)
    interest = _unit(centroids[fav] + c * stance[:, None] * axis + 0.3 * rng.normal(size=(n, D))).astype(np.float32)

    # follow rows from the graph: the first max_followees neighbours of each user
    Kf = prm.max_followees
    indptr = np.asarray(csr.indptr, np.int64)
    deg = np.diff(indptr)
    take = np.minimum(deg, Kf)
    rows = np.repeat(np.arange(n), take)
    within = np.arange(int(take.sum())) - np.repeat(np.cumsum(take) - take, take)
    follows = np.full((n, Kf), -1, np.int32)
    follows[rows, within] = np.asarray(csr.indices)[indptr[rows] + within]
    followees = take.astype(np.int32)
    followers = np.bincount(follows[follows >= 0], minlength=n).astype(np.int32)

    # posts: seeds first (ids 0..S-1, tracked), then background posts with random authors
    seed_authors, seed_stance, seed_topic, seed_lab, seed_likes, seed_dislikes = [], [], [], [], [], []
    by_followers = np.argsort(-followers, kind="stable")
    used = 0
    for r, spec in enumerate(prm.seed_posts):
        if spec.popular_authors:
            who = by_followers[used: used + spec.accounts]
            used += spec.accounts
        else:
            who = rng.choice(n, spec.accounts, replace=False)
        if spec.topic >= T:
            raise ScenarioError(f"{FIELD}.seed_posts[{r}].topic", f"must be < n_topics ({T}), got {spec.topic}")
        seed_authors += list(who)
        seed_stance += [spec.stance] * len(who)
        seed_topic += [_unit(centroids[spec.topic] + c * spec.stance * axis)] * len(who)
        seed_lab += [r] * len(who)
        seed_likes += [spec.likes] * len(who)
        seed_dislikes += [spec.dislikes] * len(who)
    S = len(seed_authors)
    B = prm.initial_posts
    if S + B > P:
        raise ScenarioError(f"{FIELD}.initial_posts", f"seed posts ({S}) + initial_posts must be <= post_capacity ({P}), got {B}")
    b_auth = rng.integers(0, n, B)
    b_stance = np.clip(stance[b_auth] * (1 + prm.post_extremity) + 0.05 * rng.normal(size=B), -1, 1)
    b_topic = _unit(interest[b_auth] + 0.3 * rng.normal(size=(B, D)))
    steps_per_day = max(1, int(round(24 * 60 / prm.minutes_per_step)))
    b_created = -rng.integers(1, steps_per_day + 1, B)  # posted during the day before the start

    total = S + B
    post_id = np.full(P, -1, np.int32)
    post_id[:total] = np.arange(total)
    topic = np.zeros((P, D), np.float32)
    if S:
        topic[:S] = np.array(seed_topic)
    topic[S:total] = b_topic
    pstance = np.zeros(P, np.float32)
    pstance[:S] = seed_stance
    pstance[S:total] = b_stance
    author = np.zeros(P, np.int32)
    author[:S] = seed_authors
    author[S:total] = b_auth
    created = np.zeros(P, np.int32)
    created[S:total] = b_created
    likes = np.zeros(P, np.int32)
    likes[:S] = seed_likes
    dislikes = np.zeros(P, np.int32)
    dislikes[:S] = seed_dislikes
    root = np.full(P, -1, np.int32)
    root[:total] = np.arange(total)
    cluster = np.argmax(topic @ centroids.T, axis=1).astype(np.int16)
    last_posts = np.full((n, 2), -1, np.int32)
    # newest post per author (ids ascend, so later assignment wins), and newest per cluster
    last_posts[author[:total], 0] = np.arange(total)
    L = prm.cluster_list
    cluster_posts = np.full((T, L), -1, np.int32)
    cluster_ptr = np.zeros(T, np.int32)
    for t in range(T):  # T <= 1024 clusters, host-side, once
        ids = np.nonzero(cluster[:total] == t)[0][-L:]
        cluster_posts[t, : len(ids)] = ids
        cluster_ptr[t] = len(ids) % L

    slots = recsys.split_slots(prm.feed_size, prm.feed.model_dump())
    n_tracked = len(prm.seed_posts)
    cfg = SocialConfig(
        n_users=n, dim=D, n_topics=T, post_capacity=P, max_followees=Kf, mute_slots=prm.mute_slots,
        feed_size=prm.feed_size, slots=tuple(slots.items()), cluster_list=L,
        clusters_per_user=min(prm.clusters_per_user, T), hot_candidates=prm.hot_candidates, chunk=chunk,
        active_cap=cap, step_seconds=prm.minutes_per_step * 60.0,
        recency_steps=prm.recency_unit_minutes / prm.minutes_per_step, compact_every=prm.compact_every,
        n_seeds=S, tracked=tuple(s.label for s in prm.seed_posts), personas=names, record_events=prm.record_events,
    )
    A, k = cap, prm.feed_size
    i32 = lambda a: jnp.asarray(a, jnp.int32)  # noqa: E731
    state = SocialState(
        interest=jnp.asarray(interest), stance=jnp.asarray(stance), followers=i32(followers),
        followees=i32(followees), follows=i32(follows), muted=jnp.full((n, prm.mute_slots), -1, jnp.int32),
        mute_ptr=jnp.zeros(n, jnp.int32), last_posts=i32(last_posts),
        post_id=i32(post_id), author=i32(author), created=i32(created), topic=jnp.asarray(topic),
        pstance=jnp.asarray(pstance), kind=jnp.zeros(P, jnp.int8), parent=jnp.full(P, -1, jnp.int32),
        root=i32(root), depth=jnp.zeros(P, jnp.int16), likes=i32(likes), dislikes=i32(dislikes),
        reposts=jnp.zeros(P, jnp.int32), comments=jnp.zeros(P, jnp.int32), cluster=jnp.asarray(cluster),
        n_posts=jnp.int32(total), cluster_posts=i32(cluster_posts), cluster_ptr=i32(cluster_ptr),
        active=jnp.full(A, n, jnp.int32), feed=jnp.full((A, k), -1, jnp.int32),
        ev_action=jnp.zeros(A, jnp.int8), ev_post=jnp.full(A, -1, jnp.int32), ev_parent=jnp.full(A, -1, jnp.int32),
        ev_root=jnp.full(A, -1, jnp.int32), ev_target=jnp.full(A, -1, jnp.int32),
        n_dropped=jnp.int32(0), n_follow_full=jnp.int32(0), feed_distance=jnp.float32(0), feed_fill=jnp.float32(0),
        cascade_size=jnp.zeros(n_tracked, jnp.int32), cascade_depth=jnp.zeros(n_tracked, jnp.int32),
    )
    w = prm.actions
    f32 = lambda v: jnp.asarray(v, jnp.float32)  # noqa: E731
    params = {
        "persona": jnp.asarray(persona), "persona_mult": f32(pm), "activity": jnp.asarray(activity),
        "start_hour": f32(prm.start_hour), "centroids": jnp.asarray(centroids), "axis": jnp.asarray(axis),
        "coupling": f32(c),
        "action_weights": f32([w.create_post, w.like, w.dislike, w.repost, w.quote, w.comment, w.follow, w.unfollow,
                               w.mute]),
        "similarity_weight": f32(prm.similarity_weight), "stance_weight": f32(prm.stance_weight),
        "popularity_weight": f32(prm.popularity_weight), "herd_weight": f32(prm.herd_weight),
        "herd_scale": f32(prm.herd_scale), "post_extremity": f32(prm.post_extremity),
        "extremity_posting": f32(prm.extremity_posting), "interest_rate": f32(prm.interest_rate),
        "confidence": f32(prm.confidence), "convergence": f32(prm.convergence),
        "seed_label": jnp.asarray(np.array(seed_lab, np.int32) if S else np.zeros(1, np.int32)),
    }
    for name in DECISION_TARGETS:  # archetype decisions, filled between chunks; NaN = heuristic
        params[name] = jnp.full(n, jnp.nan, jnp.float32)
    base = {name: 1.0 for name in SCHEDULED}
    info = {"active_cap": cap, "feed_slots": slots, "seed_posts": S, "initial_posts": B,
            "follow_rows_truncated": int(np.sum(deg > Kf)), "hot_offset": recsys.hot_offset(prm.start_epoch),
            "seed_labels": [s.label for s in prm.seed_posts], "seed_post_label": seed_lab,
            "bytes_per_user": None, "bytes_per_post": None}
    user_leaves = [state.interest, state.stance, state.followers, state.followees, state.follows, state.muted,
                   state.mute_ptr, state.last_posts, params["persona"], params["activity"]] + \
                  [params[t] for t in DECISION_TARGETS]
    post_leaves = [state.post_id, state.author, state.created, state.topic, state.pstance, state.kind, state.parent,
                   state.root, state.depth, state.likes, state.dislikes, state.reposts, state.comments, state.cluster]
    info["bytes_per_user"] = sum(x.nbytes for x in user_leaves) / n
    info["bytes_per_post"] = sum(x.nbytes for x in post_leaves) / P
    return cfg, state, params, base, info
