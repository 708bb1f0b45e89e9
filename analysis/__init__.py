"""Analysis of run and experiment directories.

- :mod:`analysis.readers`  lazy polars scans (metrics, agent samples, events, experiments) with typed hive columns;
- :mod:`analysis.metrics`  standard epidemic numbers (attack rate, peak, deaths, unemployment, growth);
- :mod:`analysis.stats`    vectorized percentile bootstrap, paired effects, scipy tests;
- :mod:`analysis.plots`    matplotlib figures (curves with CI bands, arm differences, borough small multiples);
- :mod:`analysis.report`   a self-contained HTML report (``simcore report DIR``).
"""
from .metrics import borough_columns, epidemic_summary
from .readers import (
    kind_of, load_experiment, read_experiment_summary, read_manifest, scan_agents, scan_events, scan_experiment,
    scan_metrics,
)
from .stats import bootstrap_ci, compare

__all__ = [
    "bootstrap_ci", "borough_columns", "compare", "epidemic_summary", "kind_of", "load_experiment",
    "read_experiment_summary", "read_manifest", "scan_agents", "scan_events", "scan_experiment", "scan_metrics",
]
