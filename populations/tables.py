"""Marginal tables for synthetic populations, read from small CSVs.

Every CSV starts with ``#`` comment lines; one of them must be ``# source: ...``
naming the public source and year. The first non-comment line is the header.
Share columns must sum to 1 within ``SHARE_TOL`` and are then renormalised so
float rounding in the file cannot bias the sampling CDFs. Any malformed table
raises ``ValueError`` naming the file and the column - there are no fallbacks.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

DATA_DIR = Path(__file__).with_name("data")
#: named table sets shipped with the package
NAMED_TABLES: dict[str, Path] = {"nyc": DATA_DIR}
SHARE_TOL = 1e-6
#: age (years) from which a person may head a household
ADULT_AGE = 20

FILES = {
    "boroughs": "boroughs.csv",
    "age": "age_bands.csv",
    "sex": "sex.csv",
    "household_size": "household_size.csv",
    "labour": "labour.csv",
    "occupation": "occupation.csv",
}

NONE_OCCUPATION = "none"


class _Csv:
    """One parsed CSV file; every accessor raises ValueError naming file + column."""

    def __init__(self, path: Path):
        self.path = path
        if not path.is_file():
            raise FileNotFoundError(f"{path}: table file not found")
        with path.open(newline="", encoding="utf-8") as fh:
            lines = fh.read().splitlines()
        self.notes = [ln.lstrip("#").strip() for ln in lines if ln.startswith("#")]
        body = [ln for ln in lines if ln.strip() and not ln.startswith("#")]
        sources = [n.split(":", 1)[1].strip() for n in self.notes if n.lower().startswith("source:")]
        if not sources or not sources[0]:
            raise ValueError(f"{path}: missing '# source: ...' header comment naming the public source")
        self.source = sources[0]
        if not body:
            raise ValueError(f"{path}: no header row")
        reader = csv.reader(body)
        self.columns = [c.strip() for c in next(reader)]
        self.rows = [[c.strip() for c in r] for r in reader]
        if not self.rows:
            raise ValueError(f"{path}: no data rows")
        for i, r in enumerate(self.rows):
            if len(r) != len(self.columns):
                raise ValueError(
                    f"{path}: data row {i + 1} has {len(r)} fields, header has {len(self.columns)}"
                )

    def _err(self, column: str, msg: str) -> ValueError:
        return ValueError(f"{self.path}: column '{column}': {msg}")

    def raw(self, column: str) -> list[str]:
        if column not in self.columns:
            raise self._err(column, f"missing (columns present: {self.columns})")
        j = self.columns.index(column)
        return [r[j] for r in self.rows]

    def labels(self, column: str) -> tuple[str, ...]:
        vals = self.raw(column)
        if any(v == "" for v in vals):
            raise self._err(column, "empty label")
        if len(set(vals)) != len(vals):
            raise self._err(column, f"duplicate labels {vals}")
        return tuple(vals)

    def floats(self, column: str, *, lo: float = 0.0, hi: float = math.inf) -> np.ndarray:
        out = np.empty(len(self.rows))
        for i, v in enumerate(self.raw(column)):
            try:
                out[i] = float(v)
            except ValueError:
                raise self._err(column, f"row {i + 1}: cannot parse {v!r} as a number") from None
            if not (lo <= out[i] <= hi):  # also rejects nan
                raise self._err(column, f"row {i + 1}: value {v} outside [{lo}, {hi}]")
        return out

    def ints(self, column: str, *, lo: int = 0, allow_empty: bool = False) -> np.ndarray:
        out = np.empty(len(self.rows), dtype=np.int64)
        for i, v in enumerate(self.raw(column)):
            if v == "" and allow_empty:
                out[i] = -1
                continue
            try:
                out[i] = int(v)
            except ValueError:
                raise self._err(column, f"row {i + 1}: cannot parse {v!r} as an integer") from None
            if out[i] < lo:
                raise self._err(column, f"row {i + 1}: value {v} below {lo}")
        return out

    def shares(self, column: str) -> np.ndarray:
        s = self.floats(column, lo=0.0, hi=1.0)
        total = float(s.sum())
        if abs(total - 1.0) > SHARE_TOL:
            raise self._err(column, f"shares sum to {total:.9g}, expected 1 (tolerance {SHARE_TOL:g})")
        return s / total


@dataclass(frozen=True, eq=False)
class Tables:
    """Typed marginal tables. Row order defines the integer codes."""

    name: str
    boroughs: tuple[str, ...]
    borough_population: np.ndarray  # int64, persons per borough
    age_bands: tuple[str, ...]
    age_min: np.ndarray  # int64, lowest age in band
    age_share: np.ndarray  # float64, sums to 1
    sexes: tuple[str, ...]
    sex_share: np.ndarray
    household_sizes: np.ndarray  # int64 size value per row ("7+" stands as 7)
    household_size_labels: tuple[str, ...]
    household_share: np.ndarray  # share of households (not persons)
    participation: np.ndarray  # per age band, share of all persons in labour force
    unemployment: np.ndarray  # per age band, share of labour force unemployed
    school_enrollment: np.ndarray  # per age band
    occupations: tuple[str, ...]  # index 0 is "none"
    occupation_share: np.ndarray  # len(occupations) - 1, for codes 1..K
    occupation_lockdown_sensitivity: np.ndarray  # len(occupations), 0 for "none"
    occupation_essential: np.ndarray  # bool, len(occupations), False for "none"
    sources: dict[str, str] = field(default_factory=dict)

    @property
    def adult_mask(self) -> np.ndarray:
        return self.age_min >= ADULT_AGE

    @property
    def mean_household_size(self) -> float:
        return float(self.household_sizes @ self.household_share)


def load_tables(source: str | Path = "nyc") -> Tables:
    """Load and validate a table set.

    ``source`` is a shipped name (``"nyc"``) or a directory holding the six CSVs
    named in ``FILES``.
    """
    if isinstance(source, str) and source in NAMED_TABLES:
        name, root = source, NAMED_TABLES[source]
    else:
        root = Path(source)
        name = str(root)
        if not root.is_dir():
            raise ValueError(
                f"tables {source!r}: neither a named table set {sorted(NAMED_TABLES)} nor a directory"
            )
    f = {k: _Csv(root / v) for k, v in FILES.items()}

    b = f["boroughs"]
    boroughs = b.labels("borough")
    pop = b.ints("population", lo=1)

    a = f["age"]
    bands = a.labels("age_band")
    age_min = a.ints("min_age", lo=0)
    age_max = a.ints("max_age", lo=0, allow_empty=True)
    if np.any(np.diff(age_min) <= 0):
        raise ValueError(f"{a.path}: column 'min_age': bands must be in increasing age order")
    # contiguous bands: each band ends the year before the next begins, only the last is open
    last_ok = age_max[-1] == -1 or age_max[-1] >= age_min[-1]
    if np.any(age_max[:-1] != age_min[1:] - 1) or not last_ok:
        raise ValueError(f"{a.path}: column 'max_age': bands must be contiguous (max_age = next min_age - 1)")
    age_share = a.shares("share")
    if not np.any((age_min >= ADULT_AGE) & (age_share > 0)):
        raise ValueError(f"{a.path}: column 'min_age': no band with min_age >= {ADULT_AGE} and positive share")

    s = f["sex"]
    sexes = s.labels("sex")
    sex_share = s.shares("share")

    h = f["household_size"]
    hh_sizes = h.ints("size", lo=1)
    if len(set(hh_sizes.tolist())) != len(hh_sizes):
        raise ValueError(f"{h.path}: column 'size': duplicate sizes")
    hh_labels = h.labels("label") if "label" in h.columns else tuple(map(str, hh_sizes))
    hh_share = h.shares("share")

    lab = f["labour"]
    lab_bands = lab.labels("age_band")
    if lab_bands != bands:
        raise ValueError(
            f"{lab.path}: column 'age_band': {lab_bands} must list the bands of {a.path.name} in order {bands}"
        )
    participation = lab.floats("participation", hi=1.0)
    unemployment = lab.floats("unemployment", hi=1.0)
    enrollment = lab.floats("school_enrollment", hi=1.0)

    o = f["occupation"]
    occ = o.labels("occupation")
    if NONE_OCCUPATION in occ:
        raise ValueError(f"{o.path}: column 'occupation': code 0 '{NONE_OCCUPATION}' is implicit, do not list it")
    occ_share = o.shares("share")
    sens = o.floats("lockdown_sensitivity", hi=1.0)
    ess = o.ints("essential", lo=0)
    if np.any(ess > 1):
        raise ValueError(f"{o.path}: column 'essential': values must be 0 or 1")

    return Tables(
        name=name,
        boroughs=boroughs,
        borough_population=pop,
        age_bands=bands,
        age_min=age_min,
        age_share=age_share,
        sexes=sexes,
        sex_share=sex_share,
        household_sizes=hh_sizes,
        household_size_labels=hh_labels,
        household_share=hh_share,
        participation=participation,
        unemployment=unemployment,
        school_enrollment=enrollment,
        occupations=(NONE_OCCUPATION, *occ),
        occupation_share=occ_share,
        occupation_lockdown_sensitivity=np.concatenate([[0.0], sens]),
        occupation_essential=np.concatenate([[False], ess.astype(bool)]),
        sources={k: c.source for k, c in f.items()},
    )
