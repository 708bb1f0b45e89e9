"""``simcore report DIR``: a self-contained HTML report (figures embedded as base64 PNG) plus the PNGs.

For a run directory: headline numbers, epidemic curves, flows, behaviour
(isolation, unemployment) and per-borough small multiples. For an experiment
directory: the paired summary (differences with bootstrap CIs and test p-values),
curves per arm with CI bands, paired differences over time and per-outcome
forest plots. The report has no external references: one file to mail or archive.
"""
from __future__ import annotations

import base64
import html
import json
import math
import time
from pathlib import Path
from typing import Any, Sequence

import polars as pl

from . import plots
from .metrics import breakdown_metrics, epidemic_summary
from .readers import kind_of, read_manifest, scan_metrics

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1100px;color:#222;padding:0 1rem}
h1{font-size:1.6rem;margin-bottom:.2rem} h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #ddd;padding-bottom:.2rem}
.meta{color:#666;font-size:.9rem} table{border-collapse:collapse;font-size:.85rem;margin:.5rem 0}
td,th{border:1px solid #ddd;padding:.25rem .5rem;text-align:right} th{background:#f5f5f5}
td.l,th.l{text-align:left} figure{margin:1rem 0} figure img{max-width:100%;border:1px solid #eee}
figcaption{color:#555;font-size:.85rem} .grid{display:grid;grid-template-columns:1fr 1fr;gap:1rem}
"""


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "NaN"
        if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e6):
            return f"{v:.3e}"
        return f"{v:,.4g}" if abs(v) < 1e4 else f"{v:,.0f}"
    return html.escape(str(v))


def html_table(df: pl.DataFrame, max_rows: int = 200) -> str:
    cols = df.columns
    head = "".join(f'<th class="{"l" if df.schema[c] == pl.String else ""}">{html.escape(c)}</th>' for c in cols)
    body = []
    for row in df.head(max_rows).iter_rows():
        cells = "".join(f'<td class="{"l" if isinstance(v, str) else ""}">{_fmt(v)}</td>' for v in row)
        body.append(f"<tr>{cells}</tr>")
    more = f"<p class='meta'>{df.height - max_rows} more rows not shown</p>" if df.height > max_rows else ""
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>{more}"


def _dict_table(d: dict[str, Any]) -> str:
    rows = "".join(f'<tr><th class="l">{html.escape(str(k))}</th><td>{_fmt(v)}</td></tr>' for k, v in d.items())
    return f"<table>{rows}</table>"


class _Doc:
    def __init__(self, out: Path, title: str):
        self.out = out
        self.title = title
        self.parts: list[str] = []
        self.figures: list[Path] = []

    def h2(self, text: str) -> None:
        self.parts.append(f"<h2>{html.escape(text)}</h2>")

    def raw(self, text: str) -> None:
        self.parts.append(text)

    def figure(self, fig, name: str, caption: str = "") -> None:
        path = self.out / f"{name}.png"
        plots.save(fig, path)
        self.figures.append(path)
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        cap = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
        self.parts.append(f'<figure><img alt="{html.escape(name)}" src="data:image/png;base64,{data}">{cap}</figure>')

    def write(self, meta: str) -> Path:
        doc = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(self.title)}</title>"
               f"<style>{_CSS}</style></head><body><h1>{html.escape(self.title)}</h1><p class='meta'>{meta}</p>"
               + "".join(self.parts) + "</body></html>")
        path = self.out / "report.html"
        tmp = path.with_name(".report.html.tmp")
        tmp.write_text(doc)
        tmp.replace(path)
        return path


def write_report(directory: str | Path, out: str | Path | None = None, *,
                 outcomes: Sequence[str] | None = None) -> Path:
    """Write ``report.html`` and its PNGs into ``out`` (default ``DIR/report``); returns the HTML path."""
    directory = Path(directory)
    kind = kind_of(directory)
    out = Path(out) if out is not None else directory / "report"
    out.mkdir(parents=True, exist_ok=True)
    if kind == "run":
        return _run_report(directory, out)
    return _experiment_report(directory, out, outcomes)


def _stamp() -> str:
    return time.strftime("%Y-%m-%d %H:%M")


def _run_report(run_dir: Path, out: Path) -> Path:
    manifest = read_manifest(run_dir)
    m = scan_metrics(run_dir).sort("step").collect()
    sc = manifest.get("scenario") or {}
    doc = _Doc(out, f"Run report: {sc.get('name', run_dir.name)}")
    doc.h2("Run")
    doc.raw(_dict_table({
        "directory": str(run_dir), "status": manifest.get("status"), "model": manifest.get("model"),
        "agents": manifest.get("n_agents"), "seed": manifest.get("seed"),
        "steps": f"{manifest.get('steps_done')} of {manifest.get('steps')}",
        "device": (manifest.get("device") or {}).get("kind"), "started": manifest.get("start_time"),
        "ended": manifest.get("end_time"), "resumed": len(manifest.get("resumed") or []),
    }))
    if sc.get("interventions"):
        doc.raw(html_table(pl.DataFrame(sc["interventions"])))
    doc.h2("Headline numbers")
    doc.raw(_dict_table(epidemic_summary(m, manifest.get("n_agents"))))
    doc.h2("Epidemic")
    comps = [c for c in plots.COMPARTMENTS if c in m.columns]
    if comps:
        doc.figure(plots.epidemic_curves(m, comps, title="compartments"), "compartments")
    flows = [c for c in ("new_infections", "new_cases", "new_deaths") if c in m.columns]
    if flows:
        doc.figure(plots.epidemic_curves(m, flows, title="daily flows", log=True), "flows")
    behaviour = [c for c in ("isolating_share", "unemployment_rate") if c in m.columns]
    if behaviour:
        fig = plots.epidemic_curves(m, behaviour, title="behaviour")
        fig.axes[0].set_ylabel("share")
        doc.figure(fig, "behaviour")
    by_borough = [x for x in breakdown_metrics(m.columns) if x in ("I", "new_infections", "new_deaths",
                                                                   "unemployment_rate", "isolating_share")]
    if by_borough:
        doc.h2("By borough")
        for metric in by_borough:
            doc.figure(plots.borough_small_multiples(m, metric), f"borough_{metric}")
    if "reported_deaths__borough_bronx" in m.columns and (manifest.get("population") or sc.get("population") or {}
                                                          ).get("kind", "nyc") == "nyc":
        _observed_section(doc, m, manifest, sc)
    _survey_section(doc, run_dir)
    return doc.write(f"generated {_stamp()} from {html.escape(str(run_dir))}")


def _observed_section(doc: "_Doc", m: pl.DataFrame, manifest: dict, sc: dict) -> None:
    """Observed NYC series (DOHMH, LAUS) against the run's observation-model output, step 0 = policy start date."""
    from . import validation
    from .observed import ObservedError

    start = (sc.get("policy") or {}).get("start_date") or "2020-03-01"
    try:
        frame = validation.run_vs_observed(m, manifest.get("n_agents") or 1, start=start)
    except ObservedError as exc:
        doc.h2("Observed vs simulated (New York City)")
        doc.raw(f"<p>not shown: {html.escape(str(exc))}</p>")
        return
    if frame.height == 0:
        return
    doc.h2("Observed vs simulated (New York City)")
    doc.raw(f"<p>Weekly counts from step 0 = {html.escape(start)}; simulated counts scaled to the census "
            "population. NRMSE = RMSE / max of the observed (OASIS).</p>")
    path = validation.plot_forecast(frame, doc.out / "observed.png")
    doc.figures.append(path)
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    doc.raw(f'<figure><img alt="observed" src="data:image/png;base64,{data}"></figure>')
    # a run has no band (lo = hi = simulated): its coverage and interval score say nothing
    table = validation.validation_table(frame).filter(pl.col("split") == "all").drop(
        "split", "coverage", "interval_score", "interval_score_norm", strict=False)
    doc.raw(html_table(table))


def _survey_section(doc: "_Doc", run_dir: Path) -> None:
    """Survey results (issue 14): population shares per item and step, and one figure per item."""
    from .surveys import plot_item, read_surveys, survey_summary

    rows = read_surveys(run_dir)
    if rows.is_empty():
        return
    doc.h2("Surveys")
    doc.raw(html_table(survey_summary(rows)))
    for (survey, item), _ in rows.group_by("survey", "item", maintain_order=True):
        doc.figure(plot_item(rows, survey, item), f"survey_{survey}_{item}")


def _experiment_report(exp_dir: Path, out: Path, outcomes: Sequence[str] | None) -> Path:
    from .readers import load_experiment, read_experiment_summary

    res = load_experiment(exp_dir)
    info = json.loads((exp_dir / "experiment.json").read_text())
    doc = _Doc(out, f"Experiment report: {info.get('name', exp_dir.name)}")
    doc.h2("Design")
    doc.raw(_dict_table({
        "directory": str(exp_dir), "scenario": (info.get("scenario") or {}).get("name"), "model": info.get("model"),
        "agents": info.get("n_agents"), "arms": ", ".join(res.arms), "seeds": ", ".join(map(str, res.seeds)),
        "steps": res.steps, "branch step": res.branch_step or "none (arms run from step 0)",
        "replicates": info.get("replicates"),
    }))
    arm_rows = [{"arm": a.get("name", ""), "overrides": "; ".join(a.get("overrides") or []),
                 "remove": ", ".join(a.get("remove") or []),
                 "add": "; ".join(f"{iv['param']} {iv['mode']} {iv['value']} [{iv['start']},{iv['end']})"
                                  for iv in a.get("interventions") or [])} for a in info.get("arm_specs") or []]
    if arm_rows:
        doc.raw(html_table(pl.DataFrame(arm_rows)))
    if res.timing:
        doc.raw(_dict_table({k: round(v, 3) if isinstance(v, float) else v for k, v in res.timing.items()}))
    summary = read_experiment_summary(exp_dir)
    if outcomes:
        summary = res.summary(list(outcomes), ci=float(info.get("ci", 0.95)))
    doc.h2("Paired differences (arm minus baseline, per seed)")
    doc.raw("<p class='meta'>Mean difference with a percentile bootstrap CI; p-values of the paired t, Welch, "
            "Mann-Whitney and Kolmogorov-Smirnov tests. Arms share random numbers with the baseline.</p>")
    if summary.height:
        doc.raw(html_table(summary.select("arm", "outcome", "baseline_mean", "arm_mean", "diff_mean", "ci_low",
                                          "ci_high", "rel_diff", "effect_size", "p_paired_t", "p_welch",
                                          "p_mannwhitney", "p_ks")))
        figs = []
        for outcome in summary["outcome"].unique(maintain_order=True).to_list():
            figs.append((plots.summary_forest(summary, outcome), f"forest_{_safe(outcome)}"))
        doc.raw("<div class='grid'>")
        for fig, name in figs:
            doc.figure(fig, name)
        doc.raw("</div>")
    metrics = list(dict.fromkeys(o.split(":")[0] for o in summary["outcome"].to_list())) if summary.height else \
        [m for m in res.metric_names if "__" not in m and m != "wall_seconds"]
    if not outcomes and not info.get("outcomes"):  # default outcomes: plot the headline metrics first, at most 6
        metrics = sorted(metrics, key=lambda m: (m not in _HEADLINE, _HEADLINE.index(m) if m in _HEADLINE else 0))[:6]
    ci = float(info.get("ci", 0.95))
    for metric in metrics:
        doc.h2(metric)
        cumulative = metric.startswith("new_")
        doc.figure(res.plot(metric, "curves", ci=ci), f"curves_{_safe(metric)}",
                   f"mean over seeds per arm, {int(ci * 100)}% bootstrap CI of the mean")
        if len(res.arms) > 1:
            doc.figure(res.plot(metric, "effect", ci=ci, cumulative=cumulative), f"effect_{_safe(metric)}",
                       "paired difference to the baseline" + (" (cumulative)" if cumulative else ""))
    boroughs = [x for x in breakdown_metrics(res.metric_names) if x in ("I", "new_infections", "unemployment_rate")]
    if boroughs:
        doc.h2("Baseline by borough")
        for metric in boroughs:
            cols = {c: res.series(c)[res.baseline] for c in res.metric_names if c.startswith(f"{metric}__borough_")}
            doc.figure(plots.borough_small_multiples(cols, metric, ci=ci), f"borough_{_safe(metric)}",
                       f"baseline mean over seeds with {int(ci * 100)}% CI")
    return doc.write(f"generated {_stamp()} from {html.escape(str(exp_dir))}")


_HEADLINE = ["new_infections", "new_deaths", "I", "unemployment_rate", "isolating_share", "new_cases"]


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "_-" else "_" for c in name)


__all__ = ["html_table", "write_report"]
