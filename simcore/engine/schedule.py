"""Interventions as step-indexed parameter arrays.

A schedule maps a parameter name to an array with one row per step. The scanned
step reads row ``t``; changing a policy means changing rows, never the compiled
program, so counterfactual arms and live interventions need no recompilation.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping

import numpy as np


@dataclass(frozen=True)
class Intervention:
    """Set or multiply ``param`` on steps [start, end). ``index`` picks one entry of a vector parameter."""

    param: str
    start: int
    end: int
    value: float
    mode: str = "multiply"  # or "set" / "add"
    index: int | None = None
    name: str = ""

    def apply(self, table: np.ndarray) -> None:
        rows = slice(max(self.start, 0), max(min(self.end, len(table)), 0))
        target = table[rows] if self.index is None else table[rows, self.index]
        if self.mode == "multiply":
            target = target * self.value
        elif self.mode == "set":
            target = np.full_like(target, self.value)
        elif self.mode == "add":
            target = target + self.value
        else:
            raise ValueError(f"intervention {self.name or self.param}: unknown mode {self.mode!r}")
        if self.index is None:
            table[rows] = target
        else:
            table[rows, self.index] = target


def build_schedule(
    base: Mapping[str, np.ndarray | float],
    n_steps: int,
    interventions: Iterable[Intervention] = (),
) -> dict[str, np.ndarray]:
    """One float32 table per scheduled parameter: ``base`` repeated over ``n_steps`` rows, then edited."""
    tables = {
        name: np.repeat(np.asarray(value, dtype=np.float32)[None], n_steps, axis=0)
        for name, value in base.items()
    }
    for iv in interventions:
        if iv.param not in tables:
            raise KeyError(
                f"intervention {iv.name or iv.param!r}: {iv.param!r} is not a scheduled parameter "
                f"(known: {', '.join(sorted(tables))})"
            )
        table = tables[iv.param]
        if iv.index is not None and (table.ndim != 2 or not 0 <= iv.index < table.shape[1]):
            raise KeyError(f"intervention {iv.name or iv.param!r}: index {iv.index} out of range for {iv.param}")
        iv.apply(table)
    return tables


def extend_schedule(schedule: Mapping[str, np.ndarray], n_steps: int) -> dict[str, np.ndarray]:
    """Pad with the last row so a run can be continued past its planned length."""
    out = {}
    for name, table in schedule.items():
        if len(table) >= n_steps:
            out[name] = table
        else:
            pad = np.repeat(table[-1:], n_steps - len(table), axis=0)
            out[name] = np.concatenate([table, pad])
    return out
