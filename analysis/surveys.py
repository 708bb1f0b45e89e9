"""Survey results (``surveys.parquet``): population distributions and a plot. Polars only, no JAX.

``surveys.parquet`` has one row per (survey, step, item, archetype, option) with the
archetype's ``group_size``, one column per grouping feature and ``prob``, the option's
probability averaged over ``orders`` listed option orders (see ``llm_policy.surveys``).
A population distribution is the size-weighted mean of ``prob`` over archetypes:

    share(option) = sum_a size_a * prob_a(option) / sum_a size_a

overall, or within each level of any grouping feature (``by``). Archetypes whose calls
failed (``fallback`` with no order answered, NaN ``prob``) are left out of both sums, and
``coverage`` says which share of the population answered.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import polars as pl

from simcore import rundir

KEYS = ("survey", "step", "item", "kind", "option_index", "option")


def read_surveys(run_dir: str | Path) -> pl.DataFrame:
    """The run's survey rows; an empty frame (with the key columns) where it ran no survey."""
    if not rundir.has_table(run_dir, "surveys"):
        return pl.DataFrame(schema={"survey": pl.Utf8, "step": pl.Int64, "item": pl.Utf8, "kind": pl.Utf8,
                                    "option_index": pl.Int64, "option": pl.Utf8, "group_size": pl.Int64,
                                    "prob": pl.Float64})
    return rundir.scan_table(run_dir, "surveys").collect()  # compacted file and parts of a running run


def distributions(rows: pl.DataFrame, by: str | Sequence[str] | None = None) -> pl.DataFrame:
    """Population share of each option, per (survey, step, item), overall or by grouping features.

    Columns: the keys, ``by``'s columns, ``share`` (size-weighted mean of ``prob``),
    ``respondents`` (agents in archetypes that answered) and ``coverage`` (their share of the
    agents in the cell).
    """
    by = [by] if isinstance(by, str) else list(by or [])
    missing = [b for b in by if b not in rows.columns]
    if missing:
        raise KeyError(f"by: {missing[0]!r} is not a grouping feature of these surveys "
                       f"(columns: {', '.join(rows.columns)})")
    keys = [*KEYS, *by]
    answered = pl.col("prob").is_not_nan() & pl.col("prob").is_not_null()
    size = pl.col("group_size").cast(pl.Float64)
    return (rows.group_by(keys)
            .agg((pl.when(answered).then(size * pl.col("prob")).otherwise(0.0)).sum().alias("_num"),
                 pl.when(answered).then(size).otherwise(0.0).sum().alias("respondents"),
                 size.sum().alias("_all"))
            .with_columns((pl.col("_num") / pl.col("respondents")).alias("share"),
                          (pl.col("respondents") / pl.col("_all")).alias("coverage"))
            .drop("_num", "_all")
            .sort(keys))


def likert_means(rows: pl.DataFrame, by: str | Sequence[str] | None = None) -> pl.DataFrame:
    """Mean score of each Likert item (options scored 1..n in their listed order, low to high)."""
    dist = distributions(rows.filter(pl.col("kind") == "likert"), by)
    by = [by] if isinstance(by, str) else list(by or [])
    return (dist.group_by(["survey", "step", "item", *by])
            .agg(((pl.col("option_index") + 1) * pl.col("share")).sum().alias("mean_score"),
                 pl.col("option_index").max().add(1).alias("points"))
            .sort(["survey", "step", "item", *by]))


def survey_summary(rows: pl.DataFrame) -> pl.DataFrame:
    """One row per (survey, step, item, option): the population share, for the report."""
    if rows.is_empty():
        return pl.DataFrame()
    return distributions(rows).select("survey", "step", "item", "option", "share", "coverage")


def plot_item(rows: pl.DataFrame, survey: str, item: str, *, by: str | None = None, ax=None):
    """Stacked bars of an item's population shares per survey step (or per level of ``by`` at the last step)."""
    from . import plots

    fig, ax = plots._axes(ax)
    sel = rows.filter((pl.col("survey") == survey) & (pl.col("item") == item))
    if sel.is_empty():
        raise KeyError(f"item: no rows for {survey}.{item}")
    if by is None:
        dist = distributions(sel)
        x_col = "step"
    else:
        dist = distributions(sel.filter(pl.col("step") == sel["step"].max()), by)
        x_col = by
    xs = dist[x_col].unique(maintain_order=True).sort().to_list()
    options = dist.sort("option_index")["option"].unique(maintain_order=True).to_list()
    bottom = [0.0] * len(xs)
    for option in options:
        part = dist.filter(pl.col("option") == option)
        share = dict(zip(part[x_col].to_list(), part["share"].to_list()))
        heights = [share.get(x, 0.0) for x in xs]
        ax.bar([str(x) for x in xs], heights, bottom=bottom, label=option)
        bottom = [b + h for b, h in zip(bottom, heights)]
    ax.set_ylabel("population share")
    ax.set_xlabel(x_col)
    ax.set_ylim(0, 1)
    ax.set_title(f"{survey}.{item}")
    ax.legend(fontsize="small", loc="upper right")
    return fig
