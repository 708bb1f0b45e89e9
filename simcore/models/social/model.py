"""OASIS-like social platform (X / Reddit) as fixed-capacity device arrays.

Substeps, in order (each a pure ``(state, params, key) -> state``):

1. ``activate``   users wake by their 24-hour activity profile; up to ``active_cap`` of them act;
2. ``recommend``  a feed of k post ids per active user, mixed from the interest (OASIS R*F*S),
                  Reddit-hot, in-network and random recommenders;
3. ``act``        one action per active user (Gumbel-max over do_nothing, create_post and
                  like/dislike/repost/quote/comment/follow/unfollow/mute of each feed item);
                  reading the feed moves stances (Deffuant bounded confidence); new posts go
                  into the ring buffer and the topic-cluster lists; follow edits the edge rows;
4. ``maintain``   every ``compact_every`` steps, valid follow slots move to the front of each row.

Posts live in a ring buffer of ``post_capacity`` slots; a post id is a global sequence number,
its slot ``id % capacity``; a slot is valid for id x while ``post_id[slot] == x``.
The follow graph is an edge buffer partitioned by follower: ``follows[u]`` holds up to
``max_followees`` followee ids, -1 marking a free slot (the validity mask).

Scheduled parameters: ``activity_scale``, ``post_scale``, ``like_scale``, ``repost_scale``,
``follow_scale`` (multipliers on activation and action odds).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from ...engine import Model, uniform
from ...engine.ops import active_indices
from . import recsys

ACTIONS = ("do_nothing", "create_post", "like", "dislike", "repost", "quote", "comment", "follow", "unfollow",
           "mute")
NOTHING, CREATE, LIKE, DISLIKE, REPOST, QUOTE, COMMENT, FOLLOW, UNFOLLOW, MUTE = range(10)
ITEM_ACTIONS = ACTIONS[2:]  # chosen per feed item
KINDS = ("original", "repost", "quote", "comment")
STANCE_BINS = ("strongly_against", "against", "neutral", "for", "strongly_for")
# persona -> (activity multiplier, post odds multiplier, engagement odds multiplier)
PERSONAS = {
    "lurker": (0.5, 0.2, 0.7),
    "regular": (1.0, 1.0, 1.0),
    "creator": (1.5, 4.0, 1.0),
    "bot": (3.0, 2.0, 3.0),
}
SCHEDULED = ("activity_scale", "post_scale", "like_scale", "repost_scale", "follow_scale")
DECISION_TARGETS = ("post_llm", "like_llm", "repost_llm", "comment_llm", "follow_llm")
FEATURES = ("persona", "stance_bin")  # keys of features(), known without building (tests/test_validation.py)
STATS = ("stance", "extremity", "followers", "followees")  # keys of stats()
EXTREME = 0.8  # |stance| above this counts as extreme


@jax.tree_util.register_dataclass
@dataclass
class SocialState:
    # users [N]
    interest: jax.Array  # float32 [N, D], unit vectors
    stance: jax.Array  # float32 [N] in [-1, 1]
    followers: jax.Array  # int32 [N]
    followees: jax.Array  # int32 [N]
    follows: jax.Array  # int32 [N, Kf], followee ids, -1 = free slot
    muted: jax.Array  # int32 [N, Mu], muted author ids (ring), -1 = free
    mute_ptr: jax.Array  # int32 [N]
    last_posts: jax.Array  # int32 [N, 2], the user's two newest post ids (-1 = none)
    # posts, ring buffer [P]
    post_id: jax.Array  # int32, -1 = never written
    author: jax.Array  # int32
    created: jax.Array  # int32 step
    topic: jax.Array  # float32 [P, D], unit vectors
    pstance: jax.Array  # float32
    kind: jax.Array  # int8
    parent: jax.Array  # int32 post id (-1 = none)
    root: jax.Array  # int32 post id
    depth: jax.Array  # int16, repost/quote/comment depth below the root
    likes: jax.Array  # int32
    dislikes: jax.Array  # int32
    reposts: jax.Array  # int32 (reposts + quotes)
    comments: jax.Array  # int32
    cluster: jax.Array  # int16 topic cluster
    n_posts: jax.Array  # int32 scalar, ids handed out so far
    # candidate generation: newest posts per topic cluster (ring per cluster)
    cluster_posts: jax.Array  # int32 [C, L]
    cluster_ptr: jax.Array  # int32 [C]
    # this step (read by metrics / events)
    active: jax.Array  # int32 [A], user ids, N = empty slot
    feed: jax.Array  # int32 [A, k] post ids, -1 = empty
    ev_action: jax.Array  # int8 [A]
    ev_post: jax.Array  # int32 [A]
    ev_parent: jax.Array  # int32 [A]
    ev_root: jax.Array  # int32 [A]
    ev_target: jax.Array  # int32 [A]
    n_dropped: jax.Array  # int32 scalar, active users beyond the cap this step
    n_follow_full: jax.Array  # int32 scalar, follows refused because the row was full
    feed_distance: jax.Array  # float32 scalar, mean |stance - post stance| over read items
    feed_fill: jax.Array  # float32 scalar, mean valid feed items per active user
    # tracked seed cascades [R]
    cascade_size: jax.Array  # int32, reposts + quotes below tracked roots
    cascade_depth: jax.Array  # int32, max depth reached


@dataclass(frozen=True)
class SocialConfig:
    n_users: int
    dim: int
    n_topics: int
    post_capacity: int
    max_followees: int
    mute_slots: int
    feed_size: int
    slots: tuple[tuple[str, int], ...]  # (recommender, k) in feed order
    cluster_list: int
    clusters_per_user: int
    hot_candidates: int
    chunk: int
    active_cap: int
    step_seconds: float
    recency_steps: float  # steps per recency unit
    compact_every: int
    n_seeds: int
    tracked: tuple[str, ...]
    personas: tuple[str, ...]
    record_events: bool = True

    def k(self, name: str) -> int:
        return dict(self.slots).get(name, 0)


def _replace(st: SocialState, **kw) -> SocialState:
    return SocialState(**{**st.__dict__, **kw})


def _normalize(x, axis=-1):
    return x / jnp.maximum(jnp.linalg.norm(x, axis=axis, keepdims=True), 1e-6)


def post_valid(st: SocialState, ids):
    P = st.post_id.shape[0]
    return (ids >= 0) & (st.post_id[jnp.maximum(ids, 0) % P] == ids)


# -- 1. activation ------------------------------------------------------------------------------------
def hour_of_step(cfg: SocialConfig, step, start_hour):
    return ((start_hour + step * (cfg.step_seconds / 3600.0)) % 24).astype(jnp.int32)


def activate(cfg: SocialConfig, st: SocialState, p, key):
    hour = hour_of_step(cfg, p["step"], p["start_hour"])
    prob = p["activity"][:, hour].astype(jnp.float32) / 255.0 * p["activity_scale"]
    awake = uniform(key, (cfg.n_users,)) < prob
    idx = active_indices(awake, cfg.active_cap, cfg.n_users)
    dropped = jnp.maximum(jnp.sum(awake, dtype=jnp.int32) - cfg.active_cap, 0)
    return _replace(st, active=idx, n_dropped=dropped)


# -- 2. recommendation ------------------------------------------------------------------------------------
def hot_list(cfg: SocialConfig, st: SocialState, p, size: int):
    """Global top ``size`` posts by Reddit hot score (ids, -1 where fewer valid posts)."""
    secs = st.created.astype(jnp.float32) * cfg.step_seconds
    hot = recsys.hot_relative(st.likes, st.dislikes, secs)
    hot = jnp.where(st.post_id >= 0, hot, -jnp.inf)
    val, slot = jax.lax.top_k(hot, size)
    return jnp.where(jnp.isfinite(val), st.post_id[slot], -1)


def _rf(cfg: SocialConfig, st: SocialState, p, ids):
    slot = jnp.maximum(ids, 0) % cfg.post_capacity
    dt = (p["step"] - st.created[slot]).astype(jnp.float32) / cfg.recency_steps
    return recsys.recency(dt) * recsys.author_factor(st.followers[st.author[slot]])


def _muted(st: SocialState, users, authors):
    """[A, M] bool: author is in the user's mute list."""
    mut = st.muted[jnp.minimum(users, st.muted.shape[0] - 1)]
    return jnp.any(authors[..., None] == mut[:, None, :], axis=-1)


def _candidate_ok(cfg, st, users, ids):
    slot = jnp.maximum(ids, 0) % cfg.post_capacity
    authors = st.author[slot]
    return post_valid(st, ids) & (authors != users[:, None]) & ~_muted(st, users, authors)


def interest_feed(cfg: SocialConfig, st: SocialState, p, users, hot_ids, k: int):
    """OASIS interest recommender over cluster + hot candidates, exact R*F*S, top-k per user.

    Every candidate comes from the cluster lists [C, L] or the hot list [H], so their topic, R*F,
    author and validity are gathered once per step; per user only whole cluster blocks are read.
    """
    P = cfg.post_capacity
    in_hot = jnp.zeros(P, bool).at[jnp.where(hot_ids >= 0, hot_ids % P, P)].set(True, mode="drop")

    def block(ids):
        slot = jnp.maximum(ids, 0) % P
        ok = post_valid(st, ids)
        return st.topic[slot], jnp.where(ok, _rf(cfg, st, p, ids), 0.0), st.author[slot], ok

    cl_ids = st.cluster_posts
    c_topic, c_rf, c_auth, c_ok = block(cl_ids)
    # a hot post is a candidate through the hot list only, so no feed gets it twice
    c_ok = c_ok & ~in_hot[jnp.maximum(cl_ids, 0) % P]
    h_topic, h_rf, h_auth, h_ok = block(hot_ids)

    def one_chunk(u):
        n = u.shape[0]
        vec = st.interest[jnp.minimum(u, cfg.n_users - 1)]
        _, best = jax.lax.top_k(vec @ p["centroids"].T, cfg.clusters_per_user)
        sim_c = jnp.einsum("cd,cpld->cpl", vec, c_topic[best]).reshape(n, -1)
        sim_h = vec @ h_topic.T
        sim = jnp.concatenate([sim_c, sim_h], axis=1)
        rf = jnp.concatenate([c_rf[best].reshape(n, -1), jnp.broadcast_to(h_rf, (n, h_rf.shape[0]))], axis=1)
        ids = jnp.concatenate([cl_ids[best].reshape(n, -1), jnp.broadcast_to(hot_ids, (n, hot_ids.shape[0]))], axis=1)
        auth = jnp.concatenate([c_auth[best].reshape(n, -1), jnp.broadcast_to(h_auth, (n, h_auth.shape[0]))], axis=1)
        ok = jnp.concatenate([c_ok[best].reshape(n, -1), jnp.broadcast_to(h_ok, (n, h_ok.shape[0]))], axis=1)
        ok = ok & (auth != u[:, None]) & ~_muted(st, u, auth)
        return recsys.topk_ids(jnp.where(ok, rf * sim, -jnp.inf), ids, k)

    return recsys.chunked(one_chunk, cfg.chunk, users)


def network_feed(cfg: SocialConfig, st: SocialState, p, users, k: int):
    """Followees' newest posts ranked by popularity (likes + reposts + comments + 1) x R."""
    rows = st.follows[jnp.minimum(users, cfg.n_users - 1)]
    cand = st.last_posts[jnp.maximum(rows, 0)]
    cand = jnp.where((rows >= 0)[..., None], cand, -1).reshape(users.shape[0], -1)
    slot = jnp.maximum(cand, 0) % cfg.post_capacity
    pop = (st.likes[slot] + st.reposts[slot] + st.comments[slot] + 1).astype(jnp.float32)
    dt = (p["step"] - st.created[slot]).astype(jnp.float32) / cfg.recency_steps
    score = jnp.where(_candidate_ok(cfg, st, users, cand), pop * recsys.recency(dt), -jnp.inf)
    return recsys.topk_ids(score, cand, k)


def random_feed(cfg: SocialConfig, st: SocialState, key, n: int, k: int):
    """k distinct posts per user, uniform over the ids still in the ring buffer."""
    lo = jnp.maximum(st.n_posts - cfg.post_capacity, 0)
    offset = recsys.sample_distinct(key, n, k, (st.n_posts - lo).astype(jnp.int32))
    return jnp.where(offset >= 0, offset + lo, -1)


def recommend(cfg: SocialConfig, st: SocialState, p, key):
    users = st.active
    n = users.shape[0]
    n_hot = max(cfg.hot_candidates, cfg.k("hot"), 1)
    # the global hot list (a top-k over every post) serves the interest and hot recommenders only
    needs_hot = any(k > 0 and name in ("interest", "hot") for name, k in cfg.slots)
    hot_ids = hot_list(cfg, st, p, n_hot) if needs_hot else None
    parts, may_repeat = [], False
    for name, k in cfg.slots:
        if k == 0:
            continue
        if name == "interest":
            parts.append(interest_feed(cfg, st, p, users, hot_ids[: cfg.hot_candidates], k))
        elif name == "hot":
            parts.append(jnp.broadcast_to(hot_ids[:k], (n, k)))
        elif name == "network":
            parts.append(network_feed(cfg, st, p, users, k))
            may_repeat = True  # a followee listed twice would offer its posts twice
        elif name == "random":
            parts.append(random_feed(cfg, st, key, n, k))
    feed = jnp.concatenate(parts, axis=1)
    # one feed: valid, not one's own, not muted, no post twice
    feed = jnp.where(_candidate_ok(cfg, st, users, feed), feed, -1)
    if len(parts) > 1 or may_repeat:
        # hot, interest and random lists hold distinct posts by construction (the sort is 40% of a
        # single-recommender feed at 100k users), so only mixes and in-network ones are deduplicated
        srt = jnp.sort(feed, axis=1)
        dup = jnp.concatenate([jnp.zeros((n, 1), bool), srt[:, 1:] == srt[:, :-1]], axis=1)
        feed = jnp.where(dup | (srt < 0), -1, srt)
    return _replace(st, feed=feed)


# -- 3. actions ---------------------------------------------------------------------------------------------
def _odds_override(logits, target):
    """Archetype decision: total odds (vs nothing) of this action become v/(1-v), spread like the heuristic."""
    v = jnp.clip(target, 0.0, 0.999)[:, None]
    share = jax.nn.log_softmax(logits, axis=-1)
    forced = jnp.log(v) - jnp.log1p(-v) + share
    return jnp.where(jnp.isnan(target)[:, None], logits, forced)


def act(cfg: SocialConfig, st: SocialState, p, key):
    k_choice, k_topic, k_stance = jax.random.split(key, 3)
    N, P, A = cfg.n_users, cfg.post_capacity, cfg.active_cap
    users = st.active
    live = users < N
    u = jnp.minimum(users, N - 1)
    feed = st.feed
    fvalid = (feed >= 0) & live[:, None]
    fslot = jnp.maximum(feed, 0) % P
    s_u = st.stance[u]
    vec = st.interest[u]
    persona = p["persona"][u]
    s_p = st.pstance[fslot]
    authors = st.author[fslot]
    sim = jnp.einsum("ad,akd->ak", vec, st.topic[fslot])
    agree = 2.0 * (1.0 - jnp.abs(s_u[:, None] - s_p) / 2.0) - 1.0  # +1 same stance, -1 opposite
    pop = jnp.log1p((st.likes[fslot] + st.reposts[fslot] + st.comments[fslot]).astype(jnp.float32))
    herd = p["herd_weight"] * jnp.tanh((st.likes[fslot] - st.dislikes[fslot]).astype(jnp.float32) / p["herd_scale"])
    following = jnp.any(authors[..., None] == st.follows[u][:, None, :], axis=-1)
    pm = p["persona_mult"][persona]  # [A, 3]
    engage = jnp.log(pm[:, 2])[:, None]
    ws, wt, wp = p["similarity_weight"], p["stance_weight"], p["popularity_weight"]
    lw = jnp.log(jnp.maximum(p["action_weights"], 1e-30))  # [9]: create, like, ..., mute

    def item(i, extra, scale=1.0):
        return lw[i] + jnp.log(scale) + engage + extra

    rows = [
        item(1, ws * sim + wt * agree + wp * pop + herd, p["like_scale"]),  # like
        item(2, -wt * agree + wp * pop - herd),  # dislike
        item(3, ws * sim + wt * agree + wp * pop, p["repost_scale"]),  # repost
        item(4, ws * sim + wp * pop),  # quote
        item(5, ws * sim + wp * pop),  # comment
        jnp.where(following, -jnp.inf, item(6, ws * sim + wt * agree, p["follow_scale"])),  # follow
        jnp.where(following, item(7, -wt * agree), -jnp.inf),  # unfollow
        item(8, -2.0 * wt * agree),  # mute
    ]
    rows = [jnp.where(fvalid, r, -jnp.inf) for r in rows]
    for a, name in ((0, "like_llm"), (2, "repost_llm"), (4, "comment_llm"), (5, "follow_llm")):
        rows[a] = _odds_override(rows[a], p[name][u])
    post_logit = (lw[0] + jnp.log(p["post_scale"] * pm[:, 1]) + p["extremity_posting"] * jnp.abs(s_u))
    v = jnp.clip(p["post_llm"][u], 0.0, 0.999)
    post_logit = jnp.where(jnp.isnan(p["post_llm"][u]), post_logit, jnp.log(v) - jnp.log1p(-v))
    logits = jnp.concatenate([jnp.zeros((A, 1)), post_logit[:, None], jnp.stack(rows, axis=1).reshape(A, -1)], axis=1)
    choice = jnp.argmax(logits + jax.random.gumbel(k_choice, logits.shape), axis=1)
    k = cfg.feed_size
    action = jnp.where(choice < 2, choice, 2 + (choice - 2) // k).astype(jnp.int32)
    action = jnp.where(live, action, NOTHING)
    j = jnp.where(choice < 2, 0, (choice - 2) % k)
    target_post = jnp.take_along_axis(feed, j[:, None], axis=1)[:, 0]
    tslot = jnp.maximum(target_post, 0) % P
    target_user = st.author[tslot]
    on_post = action >= LIKE

    # reading the feed: Deffuant bounded confidence, mu per read post within the confidence bound
    diff = s_p - s_u[:, None]
    near = fvalid & (jnp.abs(diff) < p["confidence"])
    pull = p["convergence"] * jnp.sum(jnp.where(near, diff, 0.0), axis=1)
    new_stance = jnp.clip(s_u + pull, -1.0, 1.0)
    n_read = jnp.sum(fvalid)
    # order-independent: the active slots are split over devices where active_cap >= n_users
    feed_distance = exact_sum(jnp.where(fvalid, jnp.abs(diff), 0.0), 2.0) / jnp.maximum(n_read, 1)
    feed_fill = n_read / jnp.maximum(jnp.sum(live), 1)

    # interest drifts toward what one likes or reposts
    lam = p["interest_rate"]
    pulled = _normalize((1 - lam) * vec + lam * st.topic[tslot])
    new_vec = jnp.where(((action == LIKE) | (action == REPOST))[:, None], pulled, vec)

    # -- new posts: originals, reposts, quotes, comments
    creates = (action == CREATE) | (action == REPOST) | (action == QUOTE) | (action == COMMENT)
    rank = jnp.cumsum(creates, dtype=jnp.int32) - 1
    new_id = jnp.where(creates, st.n_posts + rank, -1)
    wslot = jnp.where(creates, new_id % P, P)  # P = dropped by the scatter
    n_new = jnp.sum(creates, dtype=jnp.int32)
    own_stance = jnp.clip(new_stance * (1 + p["post_extremity"]) + 0.05 * jax.random.normal(k_stance, (A,)), -1, 1)
    noise = 0.3 * jax.random.normal(k_topic, (A, cfg.dim))
    own_topic = _normalize(new_vec + noise + p["coupling"] * (own_stance - new_stance)[:, None] * p["axis"])
    derived = action != CREATE
    ptopic = jnp.where(derived[:, None], st.topic[tslot], own_topic)
    pst = jnp.where(action == REPOST, st.pstance[tslot], own_stance)
    kind = jnp.select([action == REPOST, action == QUOTE, action == COMMENT], [1, 2, 3], 0).astype(jnp.int8)
    parent = jnp.where(derived, target_post, -1)
    root = jnp.where(derived, st.root[tslot], new_id)
    depth = jnp.where(derived, st.depth[tslot] + 1, 0).astype(jnp.int16)
    cl = jnp.argmax(ptopic @ p["centroids"].T, axis=1).astype(jnp.int16)

    def put(arr, val):
        return arr.at[wslot].set(val.astype(arr.dtype), mode="drop")

    # counters of the acted-on post (only if it is still in the buffer)
    tvalid = on_post & post_valid(st, target_post)
    cslot = lambda m: jnp.where(m & tvalid, tslot, P)  # noqa: E731
    one = jnp.ones(A, jnp.int32)
    likes = st.likes.at[cslot(action == LIKE)].add(one, mode="drop")
    dislikes = st.dislikes.at[cslot(action == DISLIKE)].add(one, mode="drop")
    reposts = st.reposts.at[cslot((action == REPOST) | (action == QUOTE))].add(one, mode="drop")
    comments = st.comments.at[cslot(action == COMMENT)].add(one, mode="drop")
    # a slot being overwritten starts from zero
    zero = jnp.zeros(A, jnp.int32)
    likes, dislikes, reposts, comments = (put(c, zero) for c in (likes, dislikes, reposts, comments))

    last_posts = st.last_posts.at[jnp.where(creates, u, N)].set(
        jnp.stack([new_id, st.last_posts[u, 0]], axis=1), mode="drop")

    # -- follow graph: each active user edits only its own row, so rows never conflict
    rows_f = st.follows[u]
    free = rows_f < 0
    has_free = jnp.any(free, axis=1)
    want_follow = (action == FOLLOW) & (target_user != u)
    do_follow = want_follow & has_free
    mute = action == MUTE
    hit = rows_f == target_user[:, None]
    is_following = jnp.any(hit, axis=1)
    do_unfollow = ((action == UNFOLLOW) | mute) & is_following
    col = jnp.where(do_follow, jnp.argmax(free, axis=1), jnp.argmax(hit, axis=1))
    row_idx = jnp.where(do_follow | do_unfollow, u, N)
    follows = st.follows.at[row_idx, col].set(jnp.where(do_follow, target_user, -1), mode="drop")
    delta = do_follow.astype(jnp.int32) - do_unfollow.astype(jnp.int32)
    followees = st.followees.at[jnp.where(live, u, N)].add(delta, mode="drop")
    followers = st.followers.at[jnp.where(delta != 0, target_user, N)].add(delta, mode="drop")
    mptr = st.mute_ptr[u]
    muted = st.muted.at[jnp.where(mute, u, N), mptr % cfg.mute_slots].set(target_user, mode="drop")
    mute_ptr = st.mute_ptr.at[jnp.where(mute, u, N)].add(1, mode="drop")

    # -- topic-cluster lists: the newest ``cluster_list`` posts of each cluster
    C, L = st.cluster_posts.shape
    ckey = jnp.where(creates, cl.astype(jnp.int32), C)
    order = jnp.argsort(ckey, stable=True)
    sk = ckey[order]
    first = jnp.searchsorted(sk, sk, side="left")
    crank = jnp.arange(A) - first
    count = jnp.bincount(sk, length=C + 1)[:C]
    skc = jnp.minimum(sk, C - 1)
    keep = (sk < C) & (crank >= count[skc] - L)
    pos = (st.cluster_ptr[skc] + crank) % L
    cluster_posts = st.cluster_posts.at[jnp.where(keep, sk, C), pos].set(new_id[order], mode="drop")
    cluster_ptr = st.cluster_ptr + count

    # -- tracked seed cascades (roots 0..n_seeds-1): reposts and quotes below them
    if cfg.tracked:
        R = len(cfg.tracked)
        spread = (action == REPOST) | (action == QUOTE)
        lab = jnp.where(spread & (root >= 0) & (root < cfg.n_seeds), p["seed_label"][jnp.clip(root, 0, cfg.n_seeds - 1)], R)
        cascade_size = st.cascade_size + jnp.bincount(lab, length=R + 1)[:R]
        cascade_depth = jnp.maximum(st.cascade_depth, jax.ops.segment_max(
            depth.astype(jnp.int32), lab, num_segments=R + 1)[:R])
    else:
        cascade_size, cascade_depth = st.cascade_size, st.cascade_depth

    return _replace(
        st,
        stance=st.stance.at[jnp.where(live, u, N)].set(new_stance, mode="drop"),
        interest=st.interest.at[jnp.where(live, u, N)].set(new_vec, mode="drop"),
        followers=followers, followees=followees, follows=follows, muted=muted, mute_ptr=mute_ptr,
        last_posts=last_posts,
        post_id=put(st.post_id, new_id), author=put(st.author, u), created=put(st.created, jnp.full(A, p["step"])),
        topic=st.topic.at[wslot].set(ptopic, mode="drop"), pstance=put(st.pstance, pst), kind=put(st.kind, kind),
        parent=put(st.parent, parent), root=put(st.root, root), depth=put(st.depth, depth),
        likes=likes, dislikes=dislikes, reposts=reposts, comments=comments, cluster=put(st.cluster, cl),
        n_posts=st.n_posts + n_new, cluster_posts=cluster_posts, cluster_ptr=cluster_ptr,
        ev_action=action.astype(jnp.int8),
        ev_post=jnp.where(creates, new_id, jnp.where((action == LIKE) | (action == DISLIKE), target_post, -1)),
        ev_parent=jnp.where(derived & creates, target_post, -1),
        ev_root=jnp.where(creates, root, jnp.where(on_post, st.root[tslot], -1)),
        ev_target=jnp.where((action == CREATE) | (action == NOTHING), -1, target_user),
        n_follow_full=jnp.sum(want_follow & ~has_free, dtype=jnp.int32),
        feed_distance=feed_distance, feed_fill=feed_fill,
        cascade_size=cascade_size, cascade_depth=cascade_depth,
    )


# -- 4. maintenance ------------------------------------------------------------------------------------------
def compact_rows(follows):
    """Valid slots first in every row, order kept (a stable partition)."""
    order = jnp.argsort(follows < 0, axis=1, stable=True)
    return jnp.take_along_axis(follows, order, axis=1)


def maintain(cfg: SocialConfig, st: SocialState, p, key):
    due = (p["step"] + 1) % cfg.compact_every == 0
    return _replace(st, follows=jax.lax.cond(due, compact_rows, lambda f: f, st.follows))


# -- reductions ------------------------------------------------------------------------------------------------
def exact_sum(x, bound: float):
    """Sum of float32 ``x`` (|x| <= ``bound``) whose bits do not depend on the summation order.

    A float sum over the agent axis is per-shard partial sums plus an all-reduce under sharding,
    a different order than on one device, so its last bits differ. Here every term is rounded to a
    multiple of 2^-F (|term| < 2^30 units, so about 2^-30 relative to ``bound``) and the integers are
    summed exactly: int32 digit columns narrow enough that no column can overflow, since integer
    addition is associative. The digit totals are then combined in a fixed order.
    """
    n = max(int(np.prod(x.shape)), 2)
    F = 30 - max(0, math.ceil(math.log2(bound)))
    nb = math.ceil(math.log2(n))  # n <= 2^nb terms
    B = 31 - nb  # low digits in [0, 2^B): a column sums to < 2^31
    if B < 1:
        raise ValueError(f"exact_sum: {n} terms are too many for int32 digit columns")
    m = 1 + math.ceil((nb + 1) / B)  # top digit |t| <= 2^(30 - B(m-1)) <= 2^(30 - nb - 1): no overflow
    q = jnp.round(x.reshape(-1).astype(jnp.float32) * np.float32(2.0**F)).astype(jnp.int32)
    cols = [jnp.sum((q >> (B * i)) & ((1 << B) - 1), dtype=jnp.int32) for i in range(m - 1)]
    cols.append(jnp.sum(q >> (B * (m - 1)), dtype=jnp.int32))
    total = jnp.float32(0.0)
    for i in reversed(range(m)):  # most significant first
        total = total + cols[i].astype(jnp.float32) * np.float32(2.0 ** (B * i - F))
    return total


def exact_mean(x, bound: float):
    return exact_sum(x, bound) / np.float32(max(int(np.prod(x.shape)), 1))


def bimodality(x):
    """Sarle's bimodality coefficient with the sample-size correction; > 5/9 suggests bimodality.

    ``x`` lies in [-1, 1] (stances), so deviations from the mean lie in [-2, 2].
    """
    n = x.shape[0]
    d = x - exact_mean(x, 1.0)
    m2 = exact_mean(d**2, 4.0)
    skew = exact_mean(d**3, 8.0) / jnp.maximum(m2, 1e-12) ** 1.5
    kurt = exact_mean(d**4, 16.0) / jnp.maximum(m2, 1e-12) ** 2 - 3.0
    corr = 3.0 * (n - 1) ** 2 / ((n - 2) * (n - 3))
    return (skew**2 + 1.0) / (kurt + corr)


def metrics(cfg: SocialConfig, st: SocialState, p):
    s = st.stance
    mean = exact_mean(s, 1.0)
    live = st.active < cfg.n_users
    counts = jnp.bincount(jnp.where(live, st.ev_action.astype(jnp.int32), len(ACTIONS)), length=len(ACTIONS) + 1)
    out = {
        "active": jnp.sum(live, dtype=jnp.int32), "active_dropped": st.n_dropped,
        "posts_total": st.n_posts, "edges": jnp.sum(st.followees),
        # order-independent sums: a run sharded over the agent axis gives the same bits
        "stance_mean": mean, "stance_var": exact_mean((s - mean) ** 2, 4.0), "extremity": exact_mean(jnp.abs(s), 1.0),
        "extreme_share": jnp.sum(jnp.abs(s) > EXTREME, dtype=jnp.int32) / np.float32(cfg.n_users),
        "bimodality": bimodality(s),
        "feed_stance_distance": st.feed_distance, "feed_fill": st.feed_fill, "follow_refused": st.n_follow_full,
    }
    for i, name in enumerate(ACTIONS):
        out[f"n_{name}"] = counts[i]
    if cfg.tracked:
        seeds = jnp.arange(cfg.n_seeds)
        valid = post_valid(st, seeds)
        slot = seeds % cfg.post_capacity
        lab = p["seed_label"]
        for r, name in enumerate(cfg.tracked):
            mine = valid & (lab == r)
            out[f"cascade_size__{name}"] = st.cascade_size[r]
            out[f"cascade_depth__{name}"] = st.cascade_depth[r]
            out[f"likes__{name}"] = jnp.sum(jnp.where(mine, st.likes[slot], 0))
            out[f"dislikes__{name}"] = jnp.sum(jnp.where(mine, st.dislikes[slot], 0))
            out[f"reposts__{name}"] = jnp.sum(jnp.where(mine, st.reposts[slot], 0))
    return out


def stance_bin(s):
    return jnp.digitize(s, jnp.array([-0.6, -0.2, 0.2, 0.6])).astype(jnp.int8)


def sample(st: SocialState, p, idx):
    return {"agent": idx, "stance": st.stance[idx], "followers": st.followers[idx], "followees": st.followees[idx],
            "persona": p["persona"][idx]}


def events(st: SocialState, p):
    return {"valid": st.ev_action != NOTHING, "agent": st.active, "action": st.ev_action, "post": st.ev_post,
            "parent": st.ev_parent, "root": st.ev_root, "target": st.ev_target}


def features(st: SocialState, p):
    return {"persona": p["persona"], "stance_bin": stance_bin(st.stance)}


def stats(st: SocialState, p):
    return {"stance": st.stance, "extremity": jnp.abs(st.stance), "followers": st.followers.astype(jnp.float32),
            "followees": st.followees.astype(jnp.float32)}


def make_model(cfg: SocialConfig) -> Model:
    return Model(
        name="social",
        substeps=tuple(partial(f, cfg) for f in (activate, recommend, act, maintain)),
        metrics=partial(metrics, cfg),
        sample=sample,
        events=events if cfg.record_events else None,
        labels={"action": ACTIONS, "kind": KINDS, "persona": cfg.personas, "stance_bin": STANCE_BINS},
        features=features,
        stats=stats,
        decision_targets=DECISION_TARGETS,
    )
