"""Vectorized recommenders: OASIS interest score R*F*S, Reddit hot, in-network, random.

Nothing here builds a users x posts matrix. The interest recommender scores, per active
user, only a candidate set (the newest posts of the user's best topic clusters plus the
global hot list), in chunks of users under ``lax.map`` so memory is bounded by
``chunk x candidates x dim``.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

REDDIT_EPOCH = 1134028003.0  # Reddit's hot-score origin (seconds)
HOT_DIVISOR = 45000.0
RECENCY_CAP = 170.0  # delta-t clamp: keeps R = ln((271.8 - dt)/100) defined and > 0 (R(170) = 0.0178)


def recency(dt):
    """OASIS recency R = ln((271.8 - dt)/100), dt clamped to [0, 170] so R stays in [0.0178, 1]."""
    dt = jnp.clip(dt, 0.0, RECENCY_CAP)
    return jnp.log((271.8 - dt) / 100.0)


def author_factor(followers):
    """OASIS F = max(1, log_1000(followers + 1))."""
    return jnp.maximum(1.0, jnp.log1p(followers.astype(jnp.float32)) / math.log(1000.0))


def reddit_hot(likes, dislikes, t_seconds):
    """Reddit's hot score, exactly, in float64 on the host (reference and analysis)."""
    s = np.asarray(likes, np.float64) - np.asarray(dislikes, np.float64)
    order = np.log10(np.maximum(np.abs(s), 1.0))
    return np.sign(s) * order + (np.asarray(t_seconds, np.float64) - REDDIT_EPOCH) / HOT_DIVISOR


def hot_offset(start_epoch: float) -> float:
    """The constant that turns :func:`hot_relative` into the full Reddit score (float64, host)."""
    return (float(start_epoch) - REDDIT_EPOCH) / HOT_DIVISOR


def hot_relative(likes, dislikes, seconds_since_start):
    """Reddit hot minus ``hot_offset(start_epoch)``: same ranking, small enough for float32 on device."""
    s = (likes - dislikes).astype(jnp.float32)
    order = jnp.log10(jnp.maximum(jnp.abs(s), 1.0))
    return jnp.sign(s) * order + seconds_since_start / HOT_DIVISOR


def topk_ids(scores, ids, k):
    """Top-k candidate ids per row (-1 where the score is -inf)."""
    val, pos = jax.lax.top_k(scores, k)
    out = jnp.take_along_axis(ids, pos, axis=1)
    return jnp.where(jnp.isfinite(val), out, -1)


def uniform_below(bits, bound):
    """Map uniform uint32 ``bits`` to integers in ``[0, bound)`` (``bound`` >= 1, int32, broadcasts).

    Lemire's multiply-high: ``floor(bits * bound / 2**32)``, computed exactly in 16-bit halves
    (no 64-bit integers under JAX's default x32). One draw per value, where ``jax.random.randint``
    spends two draws and a modulo (16.8 of 30 ms in a 100k-user random feed); the bias is at most
    ``bound / 2**32`` per value.
    """
    b = jnp.asarray(bound).astype(jnp.uint32)
    lo16 = jnp.uint32(0xFFFF)
    ah, al, bh, bl = bits >> 16, bits & lo16, b >> 16, b & lo16
    lh, hl = al * bh, ah * bl
    mid = ((al * bl) >> 16) + (lh & lo16) + (hl & lo16)
    return (ah * bh + (lh >> 16) + (hl >> 16) + (mid >> 16)).astype(jnp.int32)


def sample_distinct(key, n_rows: int, k: int, m):
    """``k`` distinct integers from ``[0, m)`` per row, uniform over k-subsets (-1 pads when m < k).

    Robert Floyd's algorithm, vectorized over rows: step i draws t from ``[0, j]`` with
    ``j = m - k + i`` and takes j instead when t was drawn already (j cannot have been). k steps of
    at most k comparisons, no sort; OASIS's random recommender samples without replacement too.
    """
    bits = jax.random.bits(key, (k, n_rows), jnp.uint32)
    chosen = []
    for i in range(k):
        j = m - k + i
        t = uniform_below(bits[i], jnp.maximum(j + 1, 1))
        if chosen:
            taken = jnp.any(jnp.stack(chosen) == t, axis=0)
            t = jnp.where(taken, j, t)
        chosen.append(jnp.where(j >= 0, t, -1))
    return jnp.stack(chosen, axis=1)


def chunked(fn, chunk: int, *arrays):
    """Apply ``fn`` to row chunks of ``arrays`` (leading dim a multiple of ``chunk``), concatenated."""
    n = arrays[0].shape[0]
    if n <= chunk:
        return fn(*arrays)
    split = [a.reshape((n // chunk, chunk) + a.shape[1:]) for a in arrays]
    out = jax.lax.map(lambda xs: fn(*xs), tuple(split))
    return out.reshape((n,) + out.shape[2:])


def split_slots(k: int, shares: dict[str, float]) -> dict[str, int]:
    """Largest-remainder rounding of k feed slots over recommenders with positive share."""
    total = sum(v for v in shares.values() if v > 0)
    raw = {name: k * v / total for name, v in shares.items() if v > 0}
    out = {name: int(math.floor(v)) for name, v in raw.items()}
    rest = k - sum(out.values())
    for name in sorted(raw, key=lambda n: (-(raw[n] - out[n]), n))[:rest]:
        out[name] += 1
    return {name: out.get(name, 0) for name in shares}
