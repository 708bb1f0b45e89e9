"""Reading a run directory for the API: metrics, sampled agents, files, a reproducible scenario."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from scenarios import ScenarioError
from simcore import rundir


def _json_column(col: pa.ChunkedArray) -> list:
    values = col.to_pylist()
    if pa.types.is_floating(col.type):
        return [None if v is None or not math.isfinite(v) else v for v in values]
    return values


def metric_columns(run_dir: Path) -> list[str]:
    if not rundir.has_table(run_dir, "metrics"):
        return []
    return rundir.table_schema(run_dir, "metrics").names


def empty_metrics() -> pa.Table:
    return pa.table({"step": pa.array([], pa.int64())})


def read_metrics(run_dir: Path, *, start: int | None = None, end: int | None = None,
                 columns: list[str] | None = None) -> pa.Table:
    """Rows with ``start <= step < end`` and the chosen columns (``step`` always first)."""
    if not rundir.has_table(run_dir, "metrics"):  # the compacted file and, while running, its parts
        return empty_metrics()
    names = rundir.table_schema(run_dir, "metrics").names
    if columns:
        unknown = [c for c in columns if c not in names]
        if unknown:
            raise ScenarioError("columns", f"unknown column(s) {', '.join(map(repr, unknown))}")
        columns = ["step"] + [c for c in dict.fromkeys(columns) if c != "step"]
    table = rundir.read_table(run_dir, "metrics", columns=columns)
    mask = None
    if start is not None:
        mask = pc.greater_equal(table["step"], start)
    if end is not None:
        upper = pc.less(table["step"], end)
        mask = upper if mask is None else pc.and_(mask, upper)
    if mask is not None:
        table = table.filter(mask)
    return table.sort_by("step")


def table_to_columns(table: pa.Table) -> dict[str, list]:
    return {name: _json_column(table[name]) for name in table.column_names}


def read_agents(run_dir: Path, step: int, labels: dict[str, list[str]], *, offset: int = 0,
                limit: int = 100, state: str | None = None, state_column: str | None = None) -> dict[str, Any]:
    """One sampled-agents partition, categorical codes decoded with the manifest's labels; ``state`` keeps
    the agents whose ``state_column`` (the model's categorical agent state, e.g. disease) has that label."""
    # one part per process in multi-process runs; ordered by agent id whatever the part count
    try:
        table = rundir.read_table(run_dir, "agents", step=step).sort_by("agent")
    except rundir.MissingTable:
        raise FileNotFoundError(f"no sampled agents at step {step}") from None
    if state is not None:
        names = labels.get(state_column, []) if state_column else []
        if not names or state_column not in table.column_names:
            raise ScenarioError("state", "this model's sampled agents have no state to filter on")
        if state not in names:
            raise ScenarioError("state", f"must be one of {names}, got {state!r}")
        table = table.filter(pc.equal(table[state_column], names.index(state)))
    total = table.num_rows
    table = table.slice(offset, limit)
    cols: dict[str, list] = {}
    for name in table.column_names:
        values = table[name].to_numpy()
        names = labels.get(name)
        if names:
            lut = np.array(list(names) + ["?"], dtype=object)
            codes = np.where((values >= 0) & (values < len(names)), values, len(names))
            cols[name] = lut[codes].tolist()
        else:
            cols[name] = values.tolist()
    return {"step": step, "total": total, "offset": offset, "columns": cols}


def list_files(run_dir: Path) -> list[dict[str, Any]]:
    out = []
    for p in sorted(run_dir.rglob("*")):
        if p.is_file() and not p.name.startswith("."):
            out.append({"path": p.relative_to(run_dir).as_posix(), "bytes": p.stat().st_size})
    return out


def safe_file(run_dir: Path, rel: str) -> Path | None:
    """``rel`` inside ``run_dir`` (symlinks resolved), an existing visible file, or None."""
    if not rel or "\x00" in rel or rel.startswith("/") or "\\" in rel:
        return None
    parts = rel.split("/")
    if any(p in ("", ".", "..") or p.startswith(".") for p in parts):
        return None
    try:
        path = (run_dir / rel).resolve(strict=True)
    except OSError:
        return None
    root = run_dir.resolve()
    if not path.is_relative_to(root) or not path.is_file():
        return None
    return path


def reproducible_scenario(manifest: dict[str, Any]) -> dict[str, Any]:
    """The run's scenario with its live interventions appended as ordinary ones.

    Interventions apply in list order on top of the scheduled base values, and a
    live one edited rows [start, end) after every scenario intervention had been
    applied, so appending them reproduces the schedule the run actually used.
    """
    sc = dict(manifest["scenario"])
    sc["interventions"] = list(sc.get("interventions") or [])
    for i, iv in enumerate(manifest.get("live_interventions") or []):
        sc["interventions"].append({"name": f"live_{i}_{iv['param']}", "param": iv["param"],
                                    "start": int(iv["start"]), "end": int(iv["end"]),
                                    "value": float(iv["value"]), "mode": iv["mode"]})
    sc["run"] = {**sc.get("run", {}), "steps": manifest.get("steps", sc.get("run", {}).get("steps")),
                 "seed": manifest.get("seed", sc.get("run", {}).get("seed"))}
    return sc


def model_view(manifest: dict[str, Any]) -> dict[str, Any]:
    """What the dashboard draws for a run, from its model's registry entry: ``metric_groups``, ``graph``
    (the network view's kind, or None), ``series_colors`` and ``agent_state``. The manifest's own metric
    groups win (they are what the run declared when it ran); none at all when the model is unknown."""
    from scenarios import REGISTRY

    view: dict[str, Any] = {"metric_groups": {}, "graph": None, "series_colors": {}, "agent_state": None}
    sc = manifest.get("scenario")
    if isinstance(sc, dict):
        try:
            scenario = REGISTRY.validate(sc)
        except ScenarioError:
            scenario = None
        if scenario is not None:
            view.update(REGISTRY.entry_for(scenario).describe(scenario))
            view.pop("kind", None)
    if isinstance(manifest.get("metric_groups"), dict) and manifest["metric_groups"]:
        view["metric_groups"] = manifest["metric_groups"]
    return view


def metric_groups(run_dir: Path | None, groups: dict[str, list[str]]) -> list[dict[str, Any]]:
    """The run's charts: ``[{"title", "columns"}]`` from the model's groups, keeping only columns the run
    has (all of them before its first chunk)."""
    have = set(metric_columns(run_dir)) if run_dir is not None else set()
    out = []
    for title, cols in groups.items():
        keep = [c for c in cols if not have or c in have]
        if keep:
            out.append({"title": str(title), "columns": keep})
    return out
