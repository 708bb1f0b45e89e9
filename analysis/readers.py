"""Lazy polars readers for run and experiment directories.

Run directory (``simcore run``; layout and files: :mod:`simcore.rundir`, which imports no JAX)::

    manifest.json, metrics.parquet (+ metrics.parts/ while running or after a kill),
    llm_calls.parquet (+ llm_calls.parts/), agents/step=N/part-0.parquet, events/part-*.parquet

Experiment directory (``simcore experiment`` / ``Experiment.run(out=...)``)::

    experiment.json, experiment.parquet (paired summary), experiment_metrics.parquet,
    arm=NAME/seed=S/{manifest.json, metrics.parquet}

Hive partition folders become typed columns: ``step`` (Int64) for agent samples,
``arm`` (String) and ``seed`` (Int64) for experiments.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl

from simcore import rundir

AGENTS_HIVE = {"step": pl.Int64}
EXPERIMENT_HIVE = {"arm": pl.String, "seed": pl.Int64}
METRICS_KEYS = {"step": pl.Int64}
SUMMARY_SCHEMA = {
    "arm": pl.String, "outcome": pl.String, "metric": pl.String, "reducer": pl.String, "n": pl.Int64,
    "baseline_mean": pl.Float64, "arm_mean": pl.Float64, "diff_mean": pl.Float64, "ci_low": pl.Float64,
    "ci_high": pl.Float64, "ci": pl.Float64, "rel_diff": pl.Float64, "diff_sd": pl.Float64,
    "effect_size": pl.Float64, "p_paired_t": pl.Float64, "p_welch": pl.Float64, "p_mannwhitney": pl.Float64,
    "p_ks": pl.Float64,
}


class NotAResultDir(rundir.RunDirError):
    """Not a run or experiment directory, or a table it lacks (a ``ValueError``)."""

    def __init__(self, reason: str, field: str = ""):
        super().__init__(field, reason)


def kind_of(path: str | Path) -> str:
    """``"run"`` or ``"experiment"``; raises :class:`NotAResultDir` otherwise."""
    path = Path(path)
    if (path / "experiment.json").exists():
        return "experiment"
    if rundir.is_run_dir(path) and rundir.has_table(path, "metrics"):
        return "run"
    raise NotAResultDir(f"not a run or experiment directory: {path}")


def read_manifest(run_dir: str | Path) -> dict[str, Any]:
    """:func:`simcore.rundir.read_manifest`; :class:`NotAResultDir` where it is missing or corrupt."""
    try:
        return rundir.read_manifest(run_dir)
    except rundir.ManifestError as exc:
        raise NotAResultDir(exc.reason) from None


def _check_keys(lf: pl.LazyFrame, keys: dict, where: Path) -> pl.LazyFrame:
    schema = lf.collect_schema()
    missing = [k for k in keys if k not in schema]
    if missing:
        raise NotAResultDir(f"{where}: missing column(s) {missing}")
    return lf.with_columns([pl.col(k).cast(t) for k, t in keys.items() if schema[k] != t])


def scan_metrics(run_dir: str | Path) -> pl.LazyFrame:
    """Per-step metrics of one run (``step`` Int64 plus one column per metric).

    A run still going, or killed, is read up to its last flush (compacted file plus parts).
    """
    if not rundir.has_table(run_dir, "metrics"):
        raise NotAResultDir(f"no metrics.parquet in {run_dir}")
    return _check_keys(rundir.scan_table(run_dir, "metrics"), METRICS_KEYS, Path(run_dir) / "metrics.parquet")


def scan_llm_calls(run_dir: str | Path) -> pl.LazyFrame:
    """One row per LLM call of a run (``llm_calls``), up to its last flush."""
    if not rundir.has_table(run_dir, "llm_calls"):
        raise NotAResultDir(f"no llm_calls in {run_dir} (the run has no LLM policy?)")
    return _check_keys(rundir.scan_table(run_dir, "llm_calls"), METRICS_KEYS, Path(run_dir) / "llm_calls.parquet")


def scan_agents(run_dir: str | Path, *, labels: bool = False) -> pl.LazyFrame:
    """Sampled agent rows, one partition per sampled step (``step`` from the folder name).

    ``labels=True`` decodes categorical codes (disease, labor, borough...) with the manifest's label tables.
    """
    if not rundir.agent_steps(run_dir):
        raise NotAResultDir(f"no agents/ samples in {run_dir} (output.sample_agents was 0?)")
    lf = rundir.scan_table(run_dir, "agents")
    if labels:
        lf = decode_labels(lf, read_manifest(run_dir).get("labels") or {})
    return lf


def decode_labels(lf: pl.LazyFrame, labels: dict[str, list[str]]) -> pl.LazyFrame:
    """Replace integer code columns by their labels (``<name>_label`` columns added, codes kept)."""
    schema = lf.collect_schema()
    exprs = []
    for name, table in labels.items():
        if name in schema and table:
            exprs.append(pl.col(name).cast(pl.Int64)
                         .replace_strict(list(range(len(table))), list(table), default=None, return_dtype=pl.String)
                         .alias(f"{name}_label"))
    return lf.with_columns(exprs) if exprs else lf


def scan_events(run_dir: str | Path) -> pl.LazyFrame:
    files = rundir.partition_files(run_dir, "events")
    if not files:
        raise NotAResultDir(f"no events in {run_dir}")
    return _check_keys(pl.scan_parquet(files), METRICS_KEYS, Path(run_dir) / "events")


def scan_experiment(exp_dir: str | Path) -> pl.LazyFrame:
    """Per-step metrics of every arm and seed (``arm`` String, ``seed`` Int64 from the folder names)."""
    exp_dir = Path(exp_dir)
    if not any(exp_dir.glob("arm=*/seed=*/metrics.parquet")):
        raise NotAResultDir(f"no arm=*/seed=*/metrics.parquet under {exp_dir}")
    lf = pl.scan_parquet(exp_dir / "arm=*" / "seed=*" / "metrics.parquet", hive_partitioning=True,
                         hive_schema=EXPERIMENT_HIVE)
    return _check_keys(lf, METRICS_KEYS, exp_dir).sort("arm", "seed", "step")


def read_experiment_summary(exp_dir: str | Path) -> pl.DataFrame:
    """The paired summary (``experiment.parquet``), with its columns' types checked."""
    path = Path(exp_dir) / "experiment.parquet"
    if not path.exists():
        raise NotAResultDir(f"no experiment.parquet in {exp_dir}")
    df = pl.read_parquet(path)
    if df.height == 0:
        return pl.DataFrame(schema=SUMMARY_SCHEMA)
    bad = {k: (df.schema.get(k), t) for k, t in SUMMARY_SCHEMA.items() if df.schema.get(k) != t}
    if bad:
        raise NotAResultDir(f"{path}: unexpected column types {bad}")
    return df


def read_experiment_info(exp_dir: str | Path) -> dict[str, Any]:
    path = Path(exp_dir) / "experiment.json"
    if not path.exists():
        raise NotAResultDir(f"no experiment.json in {exp_dir}")
    return json.loads(path.read_text())


def load_experiment(exp_dir: str | Path):
    """The :class:`analysis.results.ExperimentResults` saved in an experiment directory (imports no JAX)."""
    from .results import ExperimentResults

    return ExperimentResults.load(exp_dir)


__all__ = ["AGENTS_HIVE", "EXPERIMENT_HIVE", "NotAResultDir", "SUMMARY_SCHEMA", "decode_labels", "kind_of",
           "load_experiment", "read_experiment_info", "read_experiment_summary", "read_manifest", "scan_agents",
           "scan_events", "scan_experiment", "scan_llm_calls", "scan_metrics"]
