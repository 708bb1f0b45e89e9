"""Observed New York City series (package data in ``analysis/data/nyc``; sources in its README), read with polars.

- :func:`load_daily`     daily cases, hospitalizations and deaths per borough (long: date, borough, series...);
- :func:`weekly`         7-day sums from a window's first day, per borough (and ``citywide``), full weeks only;
- :func:`load_unemployment` monthly LAUS labour force, employed, unemployed and rate per borough.

Every check failure raises :class:`ObservedError` with a ``field`` (``--observed`` or ``--window``) and a reason,
so the command line can print one ``field: reason`` line.
"""
from __future__ import annotations

import datetime as dt
from importlib import resources
from pathlib import Path

import polars as pl

BOROUGHS = ("Bronx", "Brooklyn", "Manhattan", "Queens", "Staten Island")
PREFIX = {"Bronx": "BX", "Brooklyn": "BK", "Manhattan": "MN", "Queens": "QN", "Staten Island": "SI"}
SERIES = ("cases", "hospitalizations", "deaths")
_RAW = {"cases": "CASE_COUNT", "hospitalizations": "HOSPITALIZED_COUNT", "deaths": "DEATH_COUNT"}
DAILY_FILE = "cases_hosp_deaths_by_day.csv"
LAUS_FILE = "unemployment_by_borough_monthly.csv"
LAUS_COLUMNS = ("borough", "year", "month", "labor_force", "employed", "unemployed", "unemployment_rate_pct")
CITYWIDE = "citywide"


class ObservedError(ValueError):
    def __init__(self, field: str, reason: str):
        self.field, self.reason = field, reason
        super().__init__(f"{field}: {reason}")


def source_dir(source: str | Path) -> Path:
    """``nyc`` (the packaged series) or a directory holding files with the same names and columns."""
    if str(source) == "nyc":
        return Path(str(resources.files("analysis"))) / "data" / "nyc"
    path = Path(source)
    if not path.is_dir():
        raise ObservedError("--observed", f"unknown observed data {str(source)!r} (built-in: nyc; or a directory "
                                          f"holding {DAILY_FILE} and {LAUS_FILE})")
    return path


def _read_csv(path: Path, columns) -> pl.DataFrame:
    if not path.is_file():
        raise ObservedError("--observed", f"missing file {path}")
    try:
        df = pl.read_csv(path, infer_schema_length=10_000)
    except (pl.exceptions.ComputeError, OSError, UnicodeDecodeError) as exc:
        raise ObservedError("--observed", f"cannot read {path.name}: {exc}") from None
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ObservedError("--observed", f"{path.name}: missing columns {missing}")
    return df


def load_daily(source: str | Path = "nyc") -> pl.DataFrame:
    """Long table ``date, borough, cases, hospitalizations, deaths`` (borough includes ``citywide``)."""
    path = source_dir(source) / DAILY_FILE
    raw_cols = ["date_of_interest"] + [_RAW[s] for s in SERIES] + [f"{PREFIX[b]}_{_RAW[s]}" for b in BOROUGHS
                                                                   for s in SERIES]
    df = _read_csv(path, raw_cols)
    date = pl.col("date_of_interest").str.strptime(pl.Date, "%m/%d/%Y", strict=False)
    df = df.with_columns(date.alias("date"))
    bad = df.filter(pl.col("date").is_null())
    if bad.height:
        raise ObservedError("--observed", f"{path.name}: unparseable date_of_interest "
                                          f"{bad['date_of_interest'][0]!r} (expected MM/DD/YYYY)")
    frames = []
    for name, prefix in [(CITYWIDE, "")] + [(b, PREFIX[b] + "_") for b in BOROUGHS]:
        cols = [pl.col(f"{prefix}{_RAW[s]}").cast(pl.Float64).alias(s) for s in SERIES]
        frames.append(df.select(pl.col("date"), pl.lit(name).alias("borough"), *cols))
    out = pl.concat(frames).sort("borough", "date")
    for s in SERIES:
        if out[s].null_count() or (out[s] < 0).any():
            raise ObservedError("--observed", f"{path.name}: column {s} has missing or negative counts")
    dup = out.group_by("borough", "date").len().filter(pl.col("len") > 1)
    if dup.height:
        raise ObservedError("--observed", f"{path.name}: date {dup['date'][0]} appears more than once")
    return out


def parse_window(text: str) -> tuple[dt.date, dt.date]:
    """``START:END`` (ISO dates, both inclusive) -> dates; ``--window: reason`` otherwise."""
    parts = str(text).split(":")
    if len(parts) != 2:
        raise ObservedError("--window", f"expected START:END as YYYY-MM-DD:YYYY-MM-DD, got {text!r}")
    try:
        start, end = (dt.date.fromisoformat(p.strip()) for p in parts)
    except ValueError:
        raise ObservedError("--window", f"dates must be YYYY-MM-DD, got {text!r}") from None
    if end < start + dt.timedelta(days=13):
        raise ObservedError("--window", f"END must be at least 13 days after START (two full weeks), got {text!r}")
    return start, end


def check_range(daily: pl.DataFrame, start: dt.date, end: dt.date) -> None:
    lo, hi = daily["date"].min(), daily["date"].max()
    if start < lo or end > hi:
        raise ObservedError("--window", f"{start}:{end} is outside the observed dates {lo}:{hi}")
    days = daily.filter((pl.col("borough") == CITYWIDE) & pl.col("date").is_between(start, end))
    expected = (end - start).days + 1
    if days.height != expected:
        raise ObservedError("--observed", f"{expected - days.height} days between {start} and {end} are missing")


def weekly(daily: pl.DataFrame, start: dt.date, end: dt.date) -> pl.DataFrame:
    """Sums over 7-day weeks counted from ``start`` (week 0 = start .. start+6); a trailing partial week is dropped.

    Columns: ``week`` (0-based), ``week_start`` (date), ``borough``, one column per series.
    """
    check_range(daily, start, end)
    n_weeks = ((end - start).days + 1) // 7
    last = start + dt.timedelta(days=7 * n_weeks - 1)
    d = daily.filter(pl.col("date").is_between(start, last))
    d = d.with_columns(((pl.col("date") - pl.lit(start)).dt.total_days() // 7).cast(pl.Int32).alias("week"))
    out = d.group_by("borough", "week").agg(pl.col(list(SERIES)).sum()).sort("borough", "week")
    return out.with_columns((pl.lit(start) + pl.duration(days=pl.col("week") * 7)).alias("week_start"))


def load_unemployment(source: str | Path = "nyc") -> pl.DataFrame:
    """Monthly LAUS per borough: ``borough, year, month, labor_force, employed, unemployed, rate`` (rate in 0..1)."""
    path = source_dir(source) / LAUS_FILE
    df = _read_csv(path, LAUS_COLUMNS)
    unknown = sorted(set(df["borough"].unique()) - set(BOROUGHS))
    if unknown:
        raise ObservedError("--observed", f"{path.name}: unknown borough {unknown[0]!r}")
    if not df["month"].is_between(1, 12).all():
        raise ObservedError("--observed", f"{path.name}: month must be 1..12")
    if (df["labor_force"] <= 0).any() or (df["unemployed"] < 0).any():
        raise ObservedError("--observed", f"{path.name}: labor_force must be > 0 and unemployed >= 0")
    return df.select(
        "borough", "year", "month", "labor_force", "employed", "unemployed",
        (pl.col("unemployed") / pl.col("labor_force")).alias("rate"),
    ).sort("borough", "year", "month")


def monthly_unemployment(source: str | Path, start: dt.date, end: dt.date) -> pl.DataFrame:
    """LAUS months overlapping ``start..end`` (checked to be present for every borough)."""
    df = load_unemployment(source)
    months = []
    y, m = start.year, start.month
    while (y, m) <= (end.year, end.month):
        months.append((y, m))
        y, m = (y + 1, 1) if m == 12 else (y, m + 1)
    key = pl.col("year") * 100 + pl.col("month")
    want = [a * 100 + b for a, b in months]
    out = df.filter(key.is_in(want))
    if out.height != len(want) * len(BOROUGHS):
        raise ObservedError("--window", f"LAUS months {months[0]}..{months[-1]} are not all in the observed data "
                                        f"({df['year'].min()}..{df['year'].max()})")
    return out
