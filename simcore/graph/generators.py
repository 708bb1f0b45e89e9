"""Vectorized random-graph and contact-layer generators returning symmetric CSRs.

Every generator takes ``seed`` (anything ``np.random.default_rng`` accepts,
including a ``Generator``) and is O(n + E) or O(E log E) in numpy, with no
Python loop over nodes or edges. Loops only run over blocks, rounds or a few
top-up/jump iterations.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .csr import CSR, _check_n_nodes, _csr_from_counts, _indptr_dtype, _symmetric_from_upper, from_edges

__all__ = [
    "erdos_renyi",
    "barabasi_albert",
    "watts_strogatz",
    "stochastic_block",
    "group_layer",
    "matching_layer",
]

# Below this many candidate pairs, enumerate them all instead of skipping.
_DENSE_PAIRS = 1 << 20
# Entries produced per block in group_layer; bounds temporaries to ~100 MB.
_GROUP_CHUNK = 1 << 22
# Up to this many strata, matching_layer shuffles each stratum in place per
# round; above, it uses a permutation plus a stable sort by stratum.
_LOOP_STRATA = 256


def _bernoulli_indices(rng: np.random.Generator, n_pairs: int, p: float) -> np.ndarray:
    """Sorted int64 indices in ``[0, n_pairs)``, each present independently with prob ``p``.

    Geometric skip sampling (Batagelj & Brandes 2005): gaps between kept
    indices are Geometric(p), so the cost is O(kept) not O(n_pairs), the
    output is already sorted and there are no duplicates to remove.
    Memory: 8 B per kept index (plus a ~6 sigma over-draw).
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"edge probability must be in [0, 1], got {p}")
    if n_pairs <= 0 or p == 0.0:
        return np.empty(0, dtype=np.int64)
    if p == 1.0:
        return np.arange(n_pairs, dtype=np.int64)
    if n_pairs <= _DENSE_PAIRS:
        return np.flatnonzero(rng.random(n_pairs) < p).astype(np.int64)
    parts = []
    last = -1
    while True:
        remaining = n_pairs - 1 - last
        mean = remaining * p
        k = int(mean + 6.0 * np.sqrt(mean * (1.0 - p)) + 16)
        idx = np.cumsum(rng.geometric(p, size=k))
        idx += last
        if idx[-1] >= n_pairs - 1:
            parts.append(idx[: np.searchsorted(idx, n_pairs)])
            break
        # Over-draw fell short (rare): continue the same skip chain.
        parts.append(idx)
        last = int(idx[-1])
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def _triangle_split(idx: np.ndarray, s: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted linear indices into the strict upper triangle of an ``s x s`` matrix
    (row-major) -> (row counts int64 of length s, column int64 per index)."""
    r = np.arange(s + 1, dtype=np.int64)
    row_start = r * (2 * s - r - 1) // 2
    counts = np.diff(np.searchsorted(idx, row_start))
    # col = idx - row_start[row] + row + 1
    cols = idx - np.repeat(row_start[:-1] - r[:-1] - 1, counts)
    return counts, cols


def _rect_split(idx: np.ndarray, a: int, b: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted linear indices into a row-major ``a x b`` matrix -> (row counts, cols)."""
    row_start = np.arange(a + 1, dtype=np.int64) * b
    counts = np.diff(np.searchsorted(idx, row_start))
    cols = idx - np.repeat(row_start[:-1], counts)
    return counts, cols


def erdos_renyi(n: int, mean_degree: float, seed=None) -> CSR:
    """G(n, p) with ``p = mean_degree / (n - 1)``.

    Each of the n(n-1)/2 pairs is present independently, so the edge count
    is Binomial(n(n-1)/2, p) and degrees are Binomial(n-1, p) ~ Poisson.
    Pairs are drawn by geometric skipping over the upper triangle, which
    yields distinct pairs already sorted: O(n + E) sampling, one int64 sort
    of E keys to build the mirrored half, no dedupe pass.

    Memory: output 8 B per undirected edge + 4 B per node; peak ~40 B per
    undirected edge (e.g. ~200 MB for n=1M, mean degree 10).
    """
    n = _check_n_nodes(n)
    if mean_degree < 0:
        raise ValueError(f"mean_degree must be >= 0, got {mean_degree}")
    rng = np.random.default_rng(seed)
    if n < 2:
        return _csr_from_counts(np.zeros(n, dtype=np.int64), np.empty(0, dtype=np.int32))
    p = float(mean_degree) / (n - 1)
    if p > 1.0:
        raise ValueError(f"mean_degree={mean_degree} exceeds n-1={n - 1}")
    idx = _bernoulli_indices(rng, n * (n - 1) // 2, p)
    counts, cols = _triangle_split(idx, n)
    del idx
    return _symmetric_from_upper(n, counts, cols.astype(np.int32), loops_twice=False)


def barabasi_albert(n: int, m: int, seed=None) -> CSR:
    """Barabasi-Albert linear preferential attachment, ``m`` edges per new node.

    Start: node ``m`` linked to nodes ``0..m-1`` (m edges, a star). Then each
    node ``t = m+1 .. n-1`` adds m edges whose targets are uniform random
    slots of the endpoint list as it stood before ``t`` arrived, i.e. chosen
    with probability proportional to degree. A slot holding another new
    edge's (still unknown) target is resolved by pointer jumping: every
    pointer moves strictly backwards, the chains are short (each hop lands on
    an unresolved slot with prob. ~1/2), so it takes ~log E rounds over a
    shrinking active set: O(E) work in expectation.

    Deviation from sequential BA (e.g. networkx): node t's m targets are drawn
    independently (with replacement) instead of as m distinct nodes; the
    rare repeated target becomes a single edge after dedupe, so the edge count
    is slightly below ``m * (n - m)`` (measured loss: 0.016% of edges at
    n=200k, 0.004% at n=1M, m=3; it hits mostly the earliest, highest-degree
    nodes). The degree law P(k) = 2m(m+1)/(k(k+1)(k+2)) and its k^-3 tail are
    reproduced (tests check both).

    Memory: ~50 B per edge peak (int64 slot pointers, edges, CSR build).
    """
    n = _check_n_nodes(n)
    m = int(m)
    if m < 1 or m >= n:
        raise ValueError(f"need 1 <= m < n, got m={m}, n={n}")
    rng = np.random.default_rng(seed)
    n_new = n - m - 1
    n_edges = m + m * n_new
    # Edge i owns endpoint slots 2i (its source) and 2i+1 (its target).
    src = np.empty(n_edges, dtype=np.int64)
    src[:m] = m
    src[m:] = np.repeat(np.arange(m + 1, n, dtype=np.int64), m)
    slot = np.empty(n_edges, dtype=np.int64)
    slot[:m] = 2 * np.arange(m, dtype=np.int64) + 1  # seed targets: known
    if n_new:
        # Node t sees 2 * m * (t - m) slots; pick one uniformly per edge.
        n_slots = 2 * m * (src[m:] - m)
        slot[m:] = (rng.random(n_new * m) * n_slots).astype(np.int64)
        np.minimum(slot[m:], n_slots - 1, out=slot[m:])  # float rounding guard
        del n_slots

    def unresolved(s: np.ndarray) -> np.ndarray:
        # Odd slot of a non-seed edge: the target is itself a pick.
        return (s & 1).astype(bool) & (s > 2 * m)

    active = np.flatnonzero(unresolved(slot))
    while active.size:
        # Reading already-advanced pointers makes this partial pointer doubling.
        slot[active] = slot[(slot[active] - 1) >> 1]
        active = active[unresolved(slot[active])]
    even = (slot & 1) == 0
    dst = np.where(even, src[slot >> 1], (slot - 1) >> 1)
    del slot, even
    return from_edges(src, dst, n, symmetric=True, dedupe=True, drop_self_loops=True)


def watts_strogatz(n: int, k: int, p: float, seed=None) -> CSR:
    """Watts-Strogatz small world: ring lattice with ``k`` neighbours (k/2 per
    side, k even), then each lattice edge (i, i+j) has its far end replaced,
    with probability ``p``, by a uniform node other than i.

    Deviation from networkx: a rewired edge that lands on an existing edge is
    dropped by dedupe instead of re-drawn, so a fraction of about
    ``p * k / n`` of the edges is lost (negligible for large n). ``p = 0``
    gives exactly the ring lattice.

    Memory: ~40 B per undirected edge peak; output 4 B * (n*k + n + 1).
    """
    n = _check_n_nodes(n)
    k = int(k)
    if k % 2 or k < 0:
        raise ValueError(f"k must be even and >= 0, got {k}")
    if k >= n:
        raise ValueError(f"k must be < n, got k={k}, n={n}")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be in [0, 1], got {p}")
    rng = np.random.default_rng(seed)
    half = k // 2
    src = np.repeat(np.arange(n, dtype=np.int64), half)
    dst = src + np.tile(np.arange(1, half + 1, dtype=np.int64), n)
    dst[dst >= n] -= n
    if p > 0.0:
        rewire = np.flatnonzero(rng.random(src.shape[0]) < p)
        u = src[rewire]
        # Uniform over the n-1 nodes other than u.
        w = rng.integers(0, n - 1, size=rewire.shape[0], dtype=np.int64)
        w += w >= u
        dst[rewire] = w
        del rewire, u, w
    return from_edges(src, dst, n, symmetric=True, dedupe=True, drop_self_loops=True)


def stochastic_block(sizes: Sequence[int], p_matrix, seed=None) -> tuple[CSR, np.ndarray]:
    """Stochastic block model: nodes of block a and b are linked independently
    with probability ``p_matrix[a][b]`` (symmetric matrix, diagonal = within).

    Nodes are numbered block by block. For each block pair the pairs are drawn
    by geometric skipping (exact Bernoulli per pair, so the edge count is
    Binomial(#pairs, p)); the loop runs over the B(B+1)/2 block pairs, not
    over nodes. Returns ``(csr, block)`` with ``block`` the int32 block id of
    every node.

    Memory: ~40 B per undirected edge peak; output 8 B per edge + 8 B per node
    (indptr and block).
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    if sizes.ndim != 1 or (sizes < 0).any():
        raise ValueError(f"sizes must be a 1-D list of non-negative ints, got {sizes}")
    P = np.asarray(p_matrix, dtype=np.float64)
    B = sizes.shape[0]
    if P.shape != (B, B):
        raise ValueError(f"p_matrix must have shape ({B}, {B}), got {P.shape}")
    if not np.allclose(P, P.T):
        raise ValueError("p_matrix must be symmetric")
    if (P < 0).any() or (P > 1).any():
        raise ValueError("p_matrix entries must be in [0, 1]")
    n = _check_n_nodes(int(sizes.sum()))
    rng = np.random.default_rng(seed)
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    block = np.repeat(np.arange(B, dtype=np.int32), sizes)
    srcs, dsts = [], []
    for a in range(B):
        sa = int(sizes[a])
        for b in range(a, B):
            sb = int(sizes[b])
            if a == b:
                idx = _bernoulli_indices(rng, sa * (sa - 1) // 2, float(P[a, a]))
                counts, cols = _triangle_split(idx, sa)
            else:
                idx = _bernoulli_indices(rng, sa * sb, float(P[a, b]))
                counts, cols = _rect_split(idx, sa, sb)
            srcs.append(np.repeat(np.arange(offsets[a], offsets[a + 1], dtype=np.int64), counts))
            dsts.append(cols + offsets[b])
    src = np.concatenate(srcs) if srcs else np.empty(0, dtype=np.int64)
    dst = np.concatenate(dsts) if dsts else np.empty(0, dtype=np.int64)
    del srcs, dsts
    # Pairs are distinct and u < v by construction: skip the dedupe pass.
    csr = from_edges(src, dst, n, symmetric=True, dedupe=False, drop_self_loops=False)
    return csr, block


def group_layer(group, max_neighbors: int, seed=None) -> CSR:
    """Contacts inside groups (households, workplaces, school classes).

    ``group`` is an int array of length n; ``-1`` (any negative) means no
    group. A group of size ``s <= max_neighbors + 1`` becomes a clique
    (degree s-1). A larger group becomes a ring lattice over its members:
    each member is linked to the ``max_neighbors // 2`` nearest members on
    each side (degree ``2 * (max_neighbors // 2)``, so an odd
    ``max_neighbors`` is rounded down). The member order is by node id, or a
    random permutation within each group when ``seed`` is given. Both
    patterns use symmetric offsets, so the result is symmetric with no
    duplicates or self loops by construction.

    No edge sort: degrees give ``indptr`` by cumsum and neighbour ids are
    computed arithmetically as
    ``members[group_start + (pos + offset) % size]``. The only sort is one
    sort of length n listing members by group (a value sort of packed
    ``group << 32 | tag`` keys when group ids are < 2**32, else a stable
    argsort). Rows are not sorted by
    neighbour id.

    Memory: output 4 B per directed entry + 4 B per node; about 40 B per node
    of temporaries plus ~100 MB of chunked per-entry scratch.
    """
    group = np.asarray(group)
    if group.ndim != 1 or not np.issubdtype(group.dtype, np.integer):
        raise ValueError(f"group must be a 1-D integer array, got {group.dtype} {group.shape}")
    max_neighbors = int(max_neighbors)
    if max_neighbors < 0:
        raise ValueError(f"max_neighbors must be >= 0, got {max_neighbors}")
    n = _check_n_nodes(group.shape[0])
    members = np.flatnonzero(group >= 0)
    gvals = group[members] if members.shape[0] < n else group
    rng = np.random.default_rng(seed) if seed is not None else None
    gmax = int(gvals.max()) if gvals.shape[0] else -1
    shuffle = None
    if rng is not None and gmax < 4 * n + 1024:
        # Order only matters inside ring groups; leaving clique members (e.g. all
        # households) unshuffled keeps their keys presorted and skips the work.
        gi = gvals.astype(np.intp, copy=False)
        ring = np.bincount(gi, minlength=gmax + 1) > max_neighbors + 1
        shuffle = ring[gi]
        del gi
        del ring
        if not shuffle.any():
            rng = None
        elif shuffle.all():
            shuffle = None
    if gvals.shape[0] and gmax < 2**32:
        # Sort packed (group << 32 | tag) values: a value sort is ~2x faster than an
        # argsort and leaves members/groups readable sequentially from the keys.
        if rng is not None:
            # tag = slot in a random permutation, so ties within a group are shuffled.
            if shuffle is None:
                perm = rng.permutation(members.shape[0])
                if members.shape[0] < n:
                    perm = members[perm]
            else:
                perm = members.copy()
                sub = np.flatnonzero(shuffle)
                perm[sub] = members[sub[rng.permutation(sub.shape[0])]]
                del sub
            key = group[perm].astype(np.uint64)
            key <<= np.uint64(32)
            key |= np.arange(perm.shape[0], dtype=np.uint64)
        else:
            key = gvals.astype(np.uint64)
            key <<= np.uint64(32)
            key |= members.astype(np.uint64)
        del gvals
        if key.shape[0] > 1 and not (key[1:] >= key[:-1]).all():
            key.sort()  # skipped when ids are already grouped in order (typical households)
        tag = (key & np.uint64(0xFFFFFFFF)).astype(np.int64)
        members = (perm[tag] if rng is not None else tag).astype(np.int32)
        del tag
        key >>= np.uint64(32)
        gsorted = key
    else:
        if rng is not None:
            # Shuffle first; the stable sort keeps that order inside each group.
            perm = rng.permutation(members.shape[0])
            members = members[perm]
            gvals = gvals[perm]
        order = np.argsort(gvals, kind="stable")
        members = members[order].astype(np.int32)
        gsorted = gvals[order]
        del order, gvals
    nm = members.shape[0]
    if nm == 0:
        return _csr_from_counts(np.zeros(n, dtype=np.int64), np.empty(0, dtype=np.int32))

    new_group = np.empty(nm, dtype=bool)
    new_group[0] = True
    np.not_equal(gsorted[1:], gsorted[:-1], out=new_group[1:])
    del gsorted
    starts = np.flatnonzero(new_group).astype(np.int32)
    sizes = np.diff(np.append(starts, np.int32(nm))).astype(np.int32)
    run = np.cumsum(new_group, dtype=np.int32) - 1
    del new_group

    half = max_neighbors // 2
    deg_g = np.where(sizes <= max_neighbors + 1, sizes - 1, 2 * half).astype(np.int32)

    # Per-node attributes (0 for nodes without a group).
    size_n = np.zeros(n, dtype=np.int32)
    start_n = np.zeros(n, dtype=np.int32)
    pos_n = np.zeros(n, dtype=np.int32)
    deg_n = np.zeros(n, dtype=np.int32)
    size_n[members] = sizes[run]
    start_n[members] = starts[run]
    pos_n[members] = np.arange(nm, dtype=np.int32) - starts[run]
    deg_n[members] = deg_g[run]
    del run, sizes, starts, deg_g

    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(deg_n, out=indptr[1:])
    total = int(indptr[-1])
    indices = np.empty(total, dtype=np.int32)

    # Chunk over rows so per-entry temporaries stay bounded for 100M+ entries.
    cuts = np.searchsorted(indptr, np.arange(0, total, _GROUP_CHUNK, dtype=np.int64), side="right") - 1
    cuts = np.unique(np.append(cuts, n))
    for r0, r1 in zip(cuts[:-1], cuts[1:]):
        e0, e1 = int(indptr[r0]), int(indptr[r1])
        if e1 == e0:
            continue
        d = deg_n[r0:r1]
        j = np.arange(e1 - e0, dtype=np.int32)
        j -= np.repeat((indptr[r0:r1] - e0).astype(np.int32), d)
        s = np.repeat(size_n[r0:r1], d)
        # Offsets 1..h then s-h..s-1 (ring); for a clique (d = s-1) the jump is 0.
        jump = np.repeat(size_n[r0:r1] - 1 - d, d)
        h = np.repeat(d >> 1, d)
        q = j + 1
        q += np.where(j >= h, jump, 0)
        del j, h, jump
        q += np.repeat(pos_n[r0:r1], d)
        q -= np.where(q >= s, s, 0)
        del s
        q += np.repeat(start_n[r0:r1], d)
        indices[e0:e1] = members[q]
    return CSR(indptr=indptr.astype(_indptr_dtype(total)), indices=indices)


def matching_layer(n: int, rounds: int, seed=None, strata=None, *, dedupe: bool = False) -> CSR:
    """Random contacts: ``rounds`` random perfect-ish matchings.

    Each round draws a random permutation (inside each stratum when
    ``strata``, an int array of length n such as borough, is given) and pairs
    consecutive elements, so every node gets one partner per round; the odd
    one out of a stratum gets none that round. Symmetric by construction and
    built without sorting edges (rows list partners in round order).

    The same pair can be drawn in two rounds; by default such repeats are
    kept as parallel entries (two contacts). This is rare citywide (~rounds^2
    / 2n per node) but common in tiny strata; pass ``dedupe=True`` to collapse
    them (costs one edge sort).

    Memory: 4 B * n * rounds scratch (partner table) + output 4 B per entry;
    per round ~24 B per node of temporaries.
    """
    n = _check_n_nodes(n)
    rounds = int(rounds)
    if rounds < 0:
        raise ValueError(f"rounds must be >= 0, got {rounds}")
    rng = np.random.default_rng(seed)
    if strata is None:
        work = np.arange(n, dtype=np.int32)
        seg_start = np.zeros(1, dtype=np.int64)
        seg_size = np.array([n], dtype=np.int64)
        codes = None
    else:
        strata = np.asarray(strata)
        if strata.shape != (n,):
            raise ValueError(f"strata must have shape ({n},), got {strata.shape}")
        _, codes = np.unique(strata, return_inverse=True)
        n_strata = int(codes.max()) + 1 if n else 0
        # Small code dtypes make a stable sort a radix sort (O(n)).
        code_dtype = np.uint8 if n_strata <= 256 else np.uint16 if n_strata <= 65536 else np.int32
        codes = codes.astype(code_dtype)
        work = np.argsort(codes, kind="stable").astype(np.int32)
        seg_size = np.bincount(codes, minlength=n_strata).astype(np.int64)
        seg_start = np.cumsum(seg_size) - seg_size
    # Pair sorted positions (2i, 2i+1) inside each segment; fixed across rounds.
    seg_of_pos = np.repeat(np.arange(seg_size.shape[0]), seg_size)
    pos = np.arange(n, dtype=np.int64) - seg_start[seg_of_pos]
    lead = np.flatnonzero(((pos & 1) == 0) & (pos + 1 < seg_size[seg_of_pos]))
    del seg_of_pos, pos
    loop_segments = seg_size.shape[0] <= _LOOP_STRATA
    bounds = list(zip(seg_start.tolist(), (seg_start + seg_size).tolist()))

    partner = np.full((n, rounds), -1, dtype=np.int32)
    for r in range(rounds):
        # Shuffling the previous arrangement again is still a fresh uniform draw.
        if loop_segments:
            for s0, s1 in bounds:
                rng.shuffle(work[s0:s1])
        else:
            work = work[rng.permutation(n)]
            work = work[np.argsort(codes[work], kind="stable")]
        a = work[lead]
        b = work[lead + 1]
        partner[a, r] = b
        partner[b, r] = a
    del work, lead
    has = partner >= 0
    counts = has.sum(axis=1)
    flat = partner.reshape(-1)
    del partner
    if int(counts.sum()) < flat.shape[0]:
        # Squeeze out the few -1 holes in place, block by block, instead of
        # allocating a second n * rounds table.
        has = has.reshape(-1)
        w = 0
        for b0 in range(0, flat.shape[0], _GROUP_CHUNK):
            vals = flat[b0 : b0 + _GROUP_CHUNK][has[b0 : b0 + _GROUP_CHUNK]]
            flat[w : w + vals.shape[0]] = vals
            w += vals.shape[0]
        flat = flat[:w]
    del has
    csr = _csr_from_counts(counts, flat)
    if dedupe:
        src = np.repeat(np.arange(n, dtype=np.int32), counts)
        return from_edges(src, csr.indices, n, symmetric=False, dedupe=True, drop_self_loops=False)
    return csr
