"""Vectorized synthetic populations sampled from marginal tables.

Agent ids are ordered borough-major and households are contiguous runs of ids,
so a household is fully described by its start offset and size. Everything is
numpy-vectorized; the only Python loops run over boroughs or group strata
(at most boroughs x occupations), never over agents.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .tables import Tables, load_tables

# Code -> label tuples for the shipped "nyc" tables (tests check they match the CSVs).
BOROUGHS: tuple[str, ...] = ("Bronx", "Brooklyn", "Manhattan", "Queens", "Staten Island")
AGE_BANDS: tuple[str, ...] = ("U19", "20t29", "30t39", "40t49", "50t64", "65A")
SEXES: tuple[str, ...] = ("male", "female")
LABOR: tuple[str, ...] = ("not_in_labor_force", "employed", "unemployed")
OCCUPATIONS: tuple[str, ...] = (
    "none",
    "health",
    "transport",
    "grocery",
    "office",
    "service",
    "education",
    "construction_manufacturing",
)
NOT_IN_LABOR_FORCE, EMPLOYED, UNEMPLOYED = 0, 1, 2

CATEGORICAL: tuple[str, ...] = ("borough", "age_band", "sex", "occupation", "labor")
GROUP_IDS: tuple[str, ...] = ("household", "workplace", "school")


@dataclass(eq=False)
class Population:
    """A synthetic population: one small-integer array per attribute.

    ``attributes`` holds int8 categorical codes (``CATEGORICAL``; decode with
    ``labels[key][code]``) and int32 group ids (``GROUP_IDS``; dense 0..G-1,
    -1 = not a member). ``agent_weight`` is the number of real persons one
    agent stands for.
    """

    n: int
    attributes: dict[str, np.ndarray]
    labels: dict[str, tuple[str, ...]]
    households: int
    workplaces: int = 0
    classes: int = 0
    agent_weight: float = 1.0
    seed: int | None = None
    tables: Tables | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        # cheap structural checks only (O(#attributes)); see validate() for invariants
        for key in CATEGORICAL + GROUP_IDS:
            if key not in self.attributes:
                raise ValueError(f"Population: missing attribute {key!r}")
        for key, arr in self.attributes.items():
            if arr.shape != (self.n,):
                raise ValueError(f"Population: attribute {key!r} has shape {arr.shape}, expected ({self.n},)")
        for key in CATEGORICAL:
            if self.attributes[key].dtype != np.int8:
                raise ValueError(f"Population: {key!r} must be int8, got {self.attributes[key].dtype}")
            if key not in self.labels:
                raise ValueError(f"Population: no labels for categorical {key!r}")
        for key in GROUP_IDS:
            if self.attributes[key].dtype != np.int32:
                raise ValueError(f"Population: {key!r} must be int32, got {self.attributes[key].dtype}")

    def __getitem__(self, key: str) -> np.ndarray:
        return self.attributes[key]

    @property
    def nbytes(self) -> int:
        return int(sum(a.nbytes for a in self.attributes.values()))

    @property
    def bytes_per_agent(self) -> float:
        return self.nbytes / self.n

    def household_sizes(self) -> np.ndarray:
        """int32 size of each household (index = household id)."""
        return np.bincount(self.attributes["household"], minlength=self.households).astype(np.int32)

    def household_offsets(self) -> np.ndarray:
        """int64 CSR offsets: household h is agents ``offsets[h]:offsets[h+1]``."""
        out = np.zeros(self.households + 1, dtype=np.int64)
        np.cumsum(self.household_sizes(), out=out[1:])
        return out

    def group_sizes(self, key: str) -> np.ndarray:
        """Member count per group id for ``workplace``/``school``/``household``."""
        ids = self.attributes[key]
        g = {"household": self.households, "workplace": self.workplaces, "school": self.classes}[key]
        return np.bincount(ids[ids >= 0], minlength=g).astype(np.int32)

    def validate(self) -> None:
        """Check the population invariants (O(n)); raises ValueError on the first violation."""
        a = self.attributes
        for key in CATEGORICAL:
            k = len(self.labels[key])
            if self.n and (a[key].min() < 0 or a[key].max() >= k):
                raise ValueError(f"{key}: codes outside 0..{k - 1}")
        hh = a["household"]
        d = np.diff(hh)
        if self.n and (hh[0] != 0 or np.any((d != 0) & (d != 1)) or hh[-1] != self.households - 1):
            raise ValueError("household: ids must be contiguous runs 0..H-1 in agent order")
        if np.any(np.diff(a["borough"])[d == 0] != 0):
            raise ValueError("household: a household spans two boroughs")
        emp = a["labor"] == EMPLOYED
        if np.any(emp != (a["occupation"] != 0)):
            raise ValueError("occupation: must be 0 exactly for agents that are not employed")
        if np.any(emp != (a["workplace"] >= 0)):
            raise ValueError("workplace: must be -1 exactly for agents that are not employed")
        for key, g in (("workplace", self.workplaces), ("school", self.classes)):
            ids = a[key][a[key] >= 0]
            if ids.size and (ids.max() != g - 1 or np.unique(ids).size != g):
                raise ValueError(f"{key}: group ids must be dense 0..{g - 1}")

    def to_arrow(self, *, categorical: bool = False):
        """pyarrow Table, one column per attribute (zero-copy for the code arrays).

        ``categorical=True`` turns the int8 codes into dictionary columns with the labels.
        """
        import pyarrow as pa

        cols = {}
        for key, arr in self.attributes.items():
            if categorical and key in self.labels:
                cols[key] = pa.DictionaryArray.from_arrays(pa.array(arr), pa.array(list(self.labels[key])))
            else:
                cols[key] = pa.array(arr)
        return pa.table(cols)

    def to_polars(self, *, categorical: bool = False):
        import polars as pl

        return pl.from_arrow(self.to_arrow(categorical=categorical))


# ---------------------------------------------------------------------------
# sampling helpers


def _cdf(p: np.ndarray) -> np.ndarray:
    c = np.cumsum(p)
    c[-1] = 1.0  # u < 1 always lands in a category despite rounding
    return c


def _uniform(rng: np.random.Generator, k: int) -> np.ndarray:
    # float32: half the memory/bandwidth of float64; 2^-24 resolution is ample for shares
    return rng.random(k, dtype=np.float32)


def _codes(u: np.ndarray, cdf: np.ndarray) -> np.ndarray:
    """Inverse-CDF categorical codes (int8) for uniforms u in [0, 1).

    One compare-and-add pass per category boundary: for the handful of
    categories here this is several times faster than np.searchsorted.
    Zero-share categories (repeated boundaries) are never produced.
    """
    out = np.zeros(u.shape, dtype=np.int8)
    for c in cdf[:-1].astype(np.float32):
        out += u >= c
    return out


def _draw(rng: np.random.Generator, cdf: np.ndarray, k: int) -> np.ndarray:
    """k iid categorical codes (int8) from a CDF."""
    return _codes(_uniform(rng, k), cdf)


def allocate(n: int, weights: np.ndarray) -> np.ndarray:
    """Split n into integer parts proportional to weights (largest remainder, sums exactly to n)."""
    q = n * (np.asarray(weights, dtype=np.float64) / np.sum(weights))
    base = np.floor(q).astype(np.int64)
    rest = n - int(base.sum())
    base[np.argsort(-(q - base), kind="stable")[:rest]] += 1
    return base


def _partition(
    rng: np.random.Generator, total: int, draw: Callable[[np.random.Generator, int], np.ndarray], mean: float
) -> np.ndarray:
    """Split ``total`` members into runs with iid sizes from ``draw``.

    Draws a batch of sizes a bit larger than needed, cumsums, truncates where
    the running total reaches ``total`` and cuts the last run to fit exactly.
    """
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    batch = int(total / mean * 1.1) + 64
    sizes = draw(rng, batch).astype(np.int64)
    cs = np.cumsum(sizes)
    while cs[-1] < total:  # rare: extend rather than fail
        more = draw(rng, batch).astype(np.int64)
        sizes = np.concatenate([sizes, more])
        cs = np.concatenate([cs, cs[-1] + np.cumsum(more)])
    last = int(np.searchsorted(cs, total))  # first run reaching total
    sizes = sizes[: last + 1].copy()
    sizes[last] = total - (cs[last - 1] if last else 0)
    return sizes


def _assign_groups(
    rng: np.random.Generator,
    members: np.ndarray,
    key: np.ndarray,
    n_keys: int,
    draw: Callable[[np.random.Generator, int], np.ndarray],
    mean: float,
    out: np.ndarray,
) -> int:
    """Write dense group ids into ``out[members]``; groups never cross ``key`` strata.

    Members are shuffled before the (stable) sort by stratum so that groups do
    not follow agent order - otherwise housemates would end up co-workers.
    Returns the number of groups.
    """
    if members.size == 0:
        return 0
    perm = rng.permutation(members.size)
    order = members[perm[np.argsort(key[perm], kind="stable")]]
    counts = np.bincount(key, minlength=n_keys)
    sizes = np.concatenate([_partition(rng, int(c), draw, mean) for c in counts])
    out[order] = np.repeat(np.arange(sizes.size, dtype=np.int32), sizes)
    return int(sizes.size)


def _age_cdfs(tab: Tables, head_frac: float, borough: str) -> tuple[np.ndarray, np.ndarray]:
    """CDFs for household heads and for the other members of a borough.

    Heads (first members, a fraction f of agents) are drawn from the adult part
    of the age table, q_a = p_a [adult] / sum_adult p. The other members use
    r = (p - f q) / (1 - f), so that f q + (1 - f) r = p: the overall age
    marginal equals the table exactly in expectation given the realised
    household count. r >= 0 iff f <= adult share.
    """
    p = tab.age_share
    adult = tab.adult_mask
    adult_share = float(p[adult].sum())
    q = np.where(adult, p, 0.0) / adult_share
    if head_frac >= 1.0:  # every agent heads a household; no other members to draw
        return _cdf(q), _cdf(q)
    if head_frac > adult_share:
        # only reachable for tiny n (the table-level check in sample_population
        # guarantees 1/mean size <= adult share): heads must be adults, so adults
        # end up over-represented; say so instead of hiding it
        warnings.warn(
            f"{borough}: household heads are {head_frac:.3f} of agents but adults only "
            f"{adult_share:.3f} of the age table; non-heads drawn as children only, "
            "adults over-represented (increase n)",
            stacklevel=3,
        )
        head_frac = adult_share
    r = np.clip((p - head_frac * q) / (1.0 - head_frac), 0.0, None)  # clip: float dust only
    return _cdf(q), _cdf(r / r.sum())


def _coerce_tables(tables: str | Path | Tables) -> Tables:
    return tables if isinstance(tables, Tables) else load_tables(tables)


# ---------------------------------------------------------------------------


def sample_population(
    n: int,
    seed: int,
    tables: str | Path | Tables = "nyc",
    *,
    scale_to: float | None = None,
    workplace_mean_size: float = 10.0,
    class_mean_size: float = 20.0,
) -> Population:
    """Sample ``n`` agents from the marginal ``tables`` (name, directory or Tables).

    - boroughs get agents in proportion to their census population (exact integer split);
    - households: sizes drawn per borough from the household-size table, the
      last one cut to fit; the first member of each household is an adult,
      the others are drawn so the overall age marginal matches the table;
    - sex independent of everything; labour status by age band
      (participation x (1 - unemployment) employed); students by age band;
    - occupation (1..K, 0 = none) for employed agents;
    - workplaces: employed agents grouped within (borough, occupation), sizes
      geometric with mean ``workplace_mean_size``;
    - school classes: students grouped within (borough, age band), sizes
      1 + Poisson(``class_mean_size`` - 1) (classes are roughly even in size).

    ``scale_to`` is the real population the agents stand for (default: the
    census total of the tables); it only sets ``Population.agent_weight``.
    The result is a deterministic function of (n, seed, tables, sizes).
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    n = int(n)
    if workplace_mean_size < 1 or class_mean_size < 1:
        raise ValueError("workplace_mean_size and class_mean_size must be >= 1")
    tab = _coerce_tables(tables)
    for key, labels in (("borough", tab.boroughs), ("age_band", tab.age_bands), ("sex", tab.sexes),
                        ("occupation", tab.occupations)):
        if len(labels) > 127:  # codes are int8
            raise ValueError(f"tables {tab.name}: {len(labels)} {key} categories exceed the int8 code range")
    total_pop = float(tab.borough_population.sum())
    if scale_to is None:
        scale_to = total_pop
    if not scale_to > 0:
        raise ValueError(f"scale_to must be positive, got {scale_to!r}")
    adult_share = float(tab.age_share[tab.adult_mask].sum())
    if 1.0 / tab.mean_household_size > adult_share:
        raise ValueError(
            f"tables {tab.name}: households of mean size {tab.mean_household_size:.3f} need "
            f"{1 / tab.mean_household_size:.3f} of agents to be adult heads, but the age table has "
            f"only {adult_share:.3f} adults"
        )

    rng = np.random.default_rng(seed)
    n_b = allocate(n, tab.borough_population)
    nb_codes = len(tab.boroughs)

    # --- households: per borough, contiguous runs of ids
    hh_cdf = _cdf(tab.household_share)

    def draw_hh(r: np.random.Generator, k: int) -> np.ndarray:
        return tab.household_sizes[_draw(r, hh_cdf, k)]

    hh_sizes = [_partition(rng, int(c), draw_hh, tab.mean_household_size) for c in n_b]
    h_b = np.array([s.size for s in hh_sizes], dtype=np.int64)
    sizes = np.concatenate(hh_sizes)
    households = int(sizes.size)
    household = np.repeat(np.arange(households, dtype=np.int32), sizes)
    head = np.zeros(n, dtype=bool)
    head[np.cumsum(sizes) - sizes] = True
    del sizes, hh_sizes

    borough = np.repeat(np.arange(nb_codes, dtype=np.int8), n_b)

    # --- age: adult heads, adjusted distribution for the other members
    age_band = np.empty(n, dtype=np.int8)
    start = 0
    for b in range(nb_codes):
        stop = start + int(n_b[b])
        if stop > start:
            cdf_head, cdf_other = _age_cdfs(tab, h_b[b] / n_b[b], tab.boroughs[b])
            u = _uniform(rng, stop - start)
            age_band[start:stop] = np.where(head[start:stop], _codes(u, cdf_head), _codes(u, cdf_other))
        start = stop
    del head

    sex = _draw(rng, _cdf(tab.sex_share), n)

    # --- labour: one uniform splits employed / unemployed / not in labour force
    p_lf = tab.participation.astype(np.float32)
    p_emp = (tab.participation * (1.0 - tab.unemployment)).astype(np.float32)
    u = _uniform(rng, n)
    labor = (u < p_lf[age_band]).astype(np.int8) * np.int8(UNEMPLOYED)  # in labour force -> 2
    labor[u < p_emp[age_band]] = EMPLOYED
    student = _uniform(rng, n) < tab.school_enrollment.astype(np.float32)[age_band]
    del u

    # --- occupation for employed agents (codes 1..K)
    employed = np.flatnonzero(labor == EMPLOYED)
    occupation = np.zeros(n, dtype=np.int8)
    occupation[employed] = _draw(rng, _cdf(tab.occupation_share), employed.size) + 1

    # --- workplaces within (borough, occupation); classes within (borough, age band)
    n_occ = len(tab.occupations)
    workplace = np.full(n, -1, dtype=np.int32)
    workplaces = _assign_groups(
        rng,
        employed,
        borough[employed].astype(np.int16) * n_occ + occupation[employed],
        nb_codes * n_occ,
        lambda r, k: r.geometric(1.0 / workplace_mean_size, k),
        workplace_mean_size,
        workplace,
    )
    del employed
    students = np.flatnonzero(student)
    del student
    n_age = len(tab.age_bands)
    school = np.full(n, -1, dtype=np.int32)
    classes = _assign_groups(
        rng,
        students,
        borough[students].astype(np.int16) * n_age + age_band[students],
        nb_codes * n_age,
        lambda r, k: 1 + r.poisson(class_mean_size - 1.0, k),
        class_mean_size,
        school,
    )
    del students

    return Population(
        n=n,
        attributes={
            "borough": borough,
            "age_band": age_band,
            "sex": sex,
            "occupation": occupation,
            "labor": labor,
            "household": household,
            "workplace": workplace,
            "school": school,
        },
        labels={
            "borough": tab.boroughs,
            "age_band": tab.age_bands,
            "sex": tab.sexes,
            "occupation": tab.occupations,
            "labor": LABOR,
        },
        households=households,
        workplaces=workplaces,
        classes=classes,
        agent_weight=float(scale_to) / n,
        seed=int(seed),
        tables=tab,
    )
