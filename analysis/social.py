"""Social-platform analysis: cascades, polarization, herd effect, the follow graph.

Cascades follow OASIS's definitions on the repost tree (reposts and quotes; a node is a post,
its parent the post it reposts): **scale** = distinct users who reposted into the cascade,
**depth** = the longest root-to-node path, **max breadth** = the most nodes on one depth level.
All are given per step (cumulative up to that step) so simulated and observed curves can be
compared with :func:`nrmse`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from simcore import rundir

REPOST, QUOTE = 4, 5  # action codes (simcore.models.social.ACTIONS)


def read_events(run_dir: str | Path) -> pl.DataFrame:
    """All of a run's events (``events/part-*.parquet``) in step order."""
    files = rundir.partition_files(run_dir, "events")
    if not files:
        raise FileNotFoundError(f"no events in {run_dir}/events (was model.params.record_events false?)")
    return pl.concat([pl.read_parquet(f) for f in files]).sort("step")


def repost_depths(post, parent, roots) -> np.ndarray:
    """Depth of each repost/quote node below its root (the root is 0, its direct reposts 1).

    ``post``/``parent`` are node ids and the ids they repost; ``roots`` are the cascade roots.
    A node whose parent is neither a root nor a listed node (e.g. a repost of a comment) gets -1.
    """
    post, parent = np.asarray(post, np.int64), np.asarray(parent, np.int64)
    if len(post) == 0:
        return np.zeros(0, np.int64)
    order = np.argsort(post)
    pos = np.clip(np.searchsorted(post[order], parent), 0, len(post) - 1)
    pidx = np.where(post[order][pos] == parent, order[pos], -1)  # index of the parent node, -1 if none
    depth = np.where(np.isin(parent, np.asarray(roots, np.int64)), 1, -1)
    for _ in range(len(post)):  # one vectorized pass per tree level
        up = np.where(pidx >= 0, depth[np.maximum(pidx, 0)], -1)
        new = np.where((depth < 0) & (up > 0), up + 1, depth)
        if np.array_equal(new, depth):
            break
        depth = new
    return depth


def cascade_table(events: pl.DataFrame, roots) -> pl.DataFrame:
    """Per root and step: cumulative ``scale``, ``depth`` and ``max_breadth`` of its repost tree."""
    roots = np.asarray(list(roots), np.int64)
    steps = np.sort(events["step"].unique().to_numpy()).astype(np.int64)
    ev = events.filter(pl.col("action").is_in([REPOST, QUOTE]) & pl.col("root").is_in(roots.tolist()))
    depth = repost_depths(ev["post"].to_numpy(), ev["parent"].to_numpy(), roots)
    ev = ev.with_columns(pl.Series("depth", depth, dtype=pl.Int64)).filter(pl.col("depth") > 0)
    frames = []
    for r in roots:  # a handful of tracked roots; the work per root is vectorized
        e = ev.filter(pl.col("root") == int(r))
        st, dp = e["step"].to_numpy(), e["depth"].to_numpy()
        first_step = np.sort(e.group_by("agent").agg(pl.col("step").min())["step"].to_numpy())
        scale = np.searchsorted(first_step, steps, side="right")  # distinct reposting users so far
        levels = int(dp.max()) + 1 if len(dp) else 1
        level = np.zeros((len(steps), levels), np.int64)
        np.add.at(level, (np.searchsorted(steps, st), dp), 1)
        level = np.cumsum(level, axis=0)  # nodes per depth level, up to each step
        has = level > 0
        depth_t = np.where(has[:, 1:].any(axis=1), levels - 1 - np.argmax(has[:, ::-1], axis=1), 0)
        frames.append(pl.DataFrame({"root": np.full(len(steps), int(r), np.int64), "step": steps,
                                    "scale": scale.astype(np.int64), "depth": depth_t.astype(np.int64),
                                    "max_breadth": level[:, 1:].max(axis=1, initial=0).astype(np.int64)}))
    return pl.concat(frames)


def nrmse(a, b) -> float:
    """Normalized RMSE as OASIS reports it: sqrt(mean((a - b)^2)) / max(b); ``b`` is the reference."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    top = np.max(b)
    if top == 0:
        raise ValueError("max(b) is 0: NRMSE is undefined")
    return float(np.sqrt(np.mean((a - b) ** 2)) / top)


def bimodality_coefficient(x) -> float:
    """Sarle's b = (skew^2 + 1) / (excess kurtosis + 3 (n-1)^2 / ((n-2)(n-3))); > 5/9 hints at two modes."""
    x = np.asarray(x, np.float64)
    n = len(x)
    if n < 4:
        raise ValueError(f"need >= 4 values, got {n}")
    d = x - x.mean()
    m2 = np.mean(d**2)
    if m2 == 0:
        raise ValueError("all values equal: bimodality is undefined")
    skew = np.mean(d**3) / m2**1.5
    kurt = np.mean(d**4) / m2**2 - 3.0
    return float((skew**2 + 1) / (kurt + 3 * (n - 1) ** 2 / ((n - 2) * (n - 3))))


def polarization_indices(stance, extreme: float = 0.8) -> dict[str, float]:
    """Stance variance, mean |stance|, share with |stance| > ``extreme``, bimodality coefficient."""
    s = np.asarray(stance, np.float64)
    return {"variance": float(np.var(s)), "extremity": float(np.mean(np.abs(s))),
            "extreme_share": float(np.mean(np.abs(s) > extreme)), "bimodality": bimodality_coefficient(s)}


def herd_ratios(metrics: pl.DataFrame, groups=("up", "down", "neutral"), baseline: str = "neutral") -> pl.DataFrame:
    """Per seeded group: votes gained after the start and ratios to the baseline group.

    Reads ``likes__<g>``/``dislikes__<g>`` from metrics (cumulative counters of the seeded posts);
    the gain is last row minus the seeded value (first row minus that step's own votes is not
    separable, so the first row is taken as the seeded state).
    """
    first, last = metrics.sort("step").row(0, named=True), metrics.sort("step").row(-1, named=True)
    rows = []
    for g in groups:
        up = last[f"likes__{g}"] - first[f"likes__{g}"]
        down = last[f"dislikes__{g}"] - first[f"dislikes__{g}"]
        rows.append({"group": g, "likes_gained": up, "dislikes_gained": down, "net_gained": up - down,
                     "like_share": up / (up + down) if up + down else float("nan")})
    base = next(r for r in rows if r["group"] == baseline)
    for r in rows:
        r["net_vs_baseline"] = r["net_gained"] - base["net_gained"]
        r["like_share_ratio"] = (r["like_share"] / base["like_share"]
                                 if base["like_share"] and np.isfinite(base["like_share"]) else float("nan"))
    return pl.DataFrame(rows)


# -- follow graph ------------------------------------------------------------------------------------------------
def follow_edges(follows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(follower, followee) arrays from the model's ``follows`` rows (-1 = free slot)."""
    f = np.asarray(follows)
    src, col = np.nonzero(f >= 0)
    return src.astype(np.int64), f[src, col].astype(np.int64)


def degree_distribution(src, dst, n: int) -> pl.DataFrame:
    """Counts of users by in-degree (followers) and out-degree (followees)."""
    ind = np.bincount(np.asarray(dst), minlength=n)
    outd = np.bincount(np.asarray(src), minlength=n)
    top = int(max(ind.max(initial=0), outd.max(initial=0)))
    return pl.DataFrame({"degree": np.arange(top + 1), "in_count": np.bincount(ind, minlength=top + 1),
                         "out_count": np.bincount(outd, minlength=top + 1)})


def stance_assortativity(src, dst, stance) -> float:
    """Pearson correlation of stance at the two ends of follow edges (> 0: people follow alike)."""
    s = np.asarray(stance, np.float64)
    a, b = s[np.asarray(src)], s[np.asarray(dst)]
    if len(a) < 2 or a.std() == 0 or b.std() == 0:
        raise ValueError("need >= 2 edges with varying stance")
    return float(np.corrcoef(a, b)[0, 1])


def to_networkx_sample(src, dst, n: int, k: int, *, stance=None, seed: int = 0):
    """networkx DiGraph on ``k`` sampled users and the follow edges among them (stance as node attribute)."""
    import networkx as nx

    rng = np.random.default_rng(seed)
    nodes = np.sort(rng.choice(n, min(k, n), replace=False))
    src, dst = np.asarray(src), np.asarray(dst)
    keep = np.isin(src, nodes) & np.isin(dst, nodes)
    G = nx.DiGraph()
    if stance is None:
        G.add_nodes_from(nodes.tolist())
    else:
        G.add_nodes_from((int(u), {"stance": float(stance[u])}) for u in nodes)
    G.add_edges_from(zip(src[keep].tolist(), dst[keep].tolist()))
    return G
