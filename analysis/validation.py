"""Observed-vs-simulated validation metrics and figures (no JAX).

A *forecast frame* is the long table ``simcore calibrate`` writes to ``forecast.parquet``:
``series, borough, period, index, held_out, observed, simulated, lo, hi`` (``lo``/``hi`` the 80 % band).

Metrics per series, borough and split (``fit`` / ``held_out`` / ``all``):
- MAE and RMSE of the simulated median against the observed;
- NRMSE = RMSE / max(observed) (OASIS's normalisation);
- peak-timing error = index of the simulated peak minus index of the observed peak (weeks; over ``all``);
- coverage = share of observed values inside the 80 % band;
- interval score of the 80 % band (Gneiting & Raftery 2007, the COVID-19 Forecast Hub's score at one level):
  width + (2 / 0.2) x the distance by which the observed falls outside it, averaged over the periods;
  ``interval_score_norm`` divides it by max(observed), as NRMSE does. Lower is better: a band is paid for its
  width and fined for every miss, so a band that covers everything by being wide scores badly too, which
  coverage alone cannot say.

:func:`coverage_if_calibrated` says how far one forecast's coverage can be from 80 % by chance.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl


def nrmse(observed, simulated) -> float:
    obs, sim = np.asarray(observed, float), np.asarray(simulated, float)
    return float(np.sqrt(np.mean((sim - obs) ** 2)) / max(float(obs.max()), 1e-12))


def series_metrics(observed, simulated, lo=None, hi=None) -> dict:
    obs, sim = np.asarray(observed, float), np.asarray(simulated, float)
    if obs.shape != sim.shape or obs.size == 0:
        raise ValueError(f"observed and simulated must be non-empty and the same shape, got {obs.shape}, {sim.shape}")
    err = sim - obs
    rmse = float(np.sqrt(np.mean(err ** 2)))
    peak = max(float(obs.max()), 1e-12)  # OASIS's normaliser, for NRMSE and the interval score alike
    out = {"n": int(obs.size), "mae": float(np.mean(np.abs(err))), "rmse": rmse, "nrmse": rmse / peak,
           "peak_error": int(np.argmax(sim)) - int(np.argmax(obs))}
    if lo is not None and hi is not None:
        lo, hi = np.asarray(lo, float), np.asarray(hi, float)
        out["coverage"] = float(np.mean((obs >= lo) & (obs <= hi)))
        score = float(np.mean(interval_score(obs, lo, hi)))
        out["interval_score"] = score
        out["interval_score_norm"] = score / peak
    return out


def interval_score(observed, lo, hi, alpha: float = 0.2) -> np.ndarray:
    """The interval score of a central (1 - ``alpha``) band per value: (hi - lo) + (2 / alpha) x (lo - y) when
    y < lo, + (2 / alpha) x (y - hi) when y > hi (Gneiting & Raftery 2007, eq. 43). A proper score: its
    expectation is lowest for the true alpha / 2 and 1 - alpha / 2 quantiles."""
    y, lo, hi = (np.asarray(a, float) for a in (observed, lo, hi))
    return (hi - lo) + (2.0 / alpha) * (np.maximum(lo - y, 0.0) + np.maximum(y - hi, 0.0))


def validation_table(frame: pl.DataFrame) -> pl.DataFrame:
    """One row per series, borough and split with :func:`series_metrics`."""
    rows = []
    for (series, borough), g in frame.sort("index").group_by(["series", "borough"], maintain_order=True):
        for split, sel in (("all", None), ("fit", False), ("held_out", True)):
            sub = g if sel is None else g.filter(pl.col("held_out") == sel)
            if sub.height == 0:
                continue
            m = series_metrics(sub["observed"], sub["simulated"], sub["lo"], sub["hi"])
            if split != "all":
                m["peak_error"] = None  # a peak is a property of the whole curve
            rows.append({"series": series, "borough": borough, "split": split, **m})
    return pl.DataFrame(rows, schema_overrides={"peak_error": pl.Int64})


def headline(table: pl.DataFrame) -> dict:
    """The numbers the README's targets name: citywide deaths, worst borough, unemployment, forecast coverage."""
    def pick(series, borough, split):
        r = table.filter((pl.col("series") == series) & (pl.col("borough") == borough) & (pl.col("split") == split))
        return r.to_dicts()[0] if r.height else None

    out = {}
    d_all = pick("deaths", "citywide", "all")
    if d_all:
        out["deaths_citywide_nrmse"] = d_all["nrmse"]
        out["deaths_peak_error_weeks"] = d_all["peak_error"]
    ho = held_out(table)
    if "deaths" in ho:
        out["forecast_deaths_citywide_nrmse"] = ho["deaths"]["nrmse"]
        out["forecast_deaths_citywide_coverage80"] = ho["deaths"]["coverage80"]
        out["forecast_deaths_citywide_interval_score"] = ho["deaths"]["interval_score_norm"]
        out["forecast_coverage80_pooled"] = ho["coverage80_pooled"]
    boro = table.filter((pl.col("series") == "deaths") & (pl.col("borough") != "citywide") & (pl.col("split") == "all"))
    if boro.height:
        out["deaths_borough_nrmse_max"] = float(boro["nrmse"].max())
        out["deaths_borough_nrmse"] = dict(zip(boro["borough"], boro["nrmse"]))
    un = table.filter((pl.col("series") == "unemployment") & (pl.col("split") == "all"))
    if un.height:
        out["unemployment_mae_pp"] = float(100 * un["mae"].mean())
    return out


WEEKLY = ("cases", "hospitalizations", "deaths")


def held_out(table: pl.DataFrame) -> dict:
    """The forecast's scores on the held-out split: per weekly series, citywide NRMSE, MAE, 80 % coverage and
    the band's interval score over max(observed);
    the coverage pooled over every borough and weekly series (``coverage80_pooled``: 15 curves instead of one,
    so a better-sampled check of the bands than one citywide series of autocorrelated weeks); unemployment's
    mean absolute error over boroughs and held-out months, in percentage points. Empty without held-out rows."""
    ho = table.filter(pl.col("split") == "held_out")
    out: dict = {}
    for series in WEEKLY:
        r = ho.filter((pl.col("series") == series) & (pl.col("borough") == "citywide"))
        if r.height:
            row = r.row(0, named=True)
            out[series] = {"nrmse": row["nrmse"], "mae": row["mae"], "coverage80": row["coverage"],
                           "interval_score_norm": row["interval_score_norm"]}
    boro = ho.filter(pl.col("series").is_in(WEEKLY) & (pl.col("borough") != "citywide"))
    if boro.height:
        out["coverage80_pooled"] = float((boro["coverage"] * boro["n"]).sum() / boro["n"].sum())
    un = ho.filter(pl.col("series") == "unemployment")
    if un.height:
        out["unemployment_mae_pp"] = float(100 * un["mae"].mean())
    return out


def coverage_if_calibrated(draws: np.ndarray, fit_weeks: int, series: tuple = WEEKLY,
                           target: tuple[float, float] = (0.6, 0.95), observed: dict | None = None) -> dict:
    """The held-out coverage one forecast would score if its model were right: how far from 80 % chance alone
    takes it, on these weeks.

    ``draws`` [K, D, W, B, S]: D posterior-predictive draws of each of K runs (``simcore calibrate``'s band:
    weeks W, boroughs B, weekly ``series`` S). Every draw in turn plays the observed city, against the 80 %
    band (10 and 90 % quantiles) of the other K - 1 runs' draws, and scores its coverage of the weeks from
    ``fit_weeks`` on: citywide deaths (the boroughs summed, as the band sums them) and pooled over boroughs
    and series. Why: the weeks of one epidemic share their errors (a forecast that starts high stays high),
    so a perfectly calibrated band covers all eleven held-out weeks, or almost none, far more often than
    independent weeks would (0.8^11 = 9 %). Returns, for ``deaths_citywide`` and ``pooled``, the 10 / 50 /
    90 % quantiles of those coverages, the share of them inside ``target`` and the share at 1; with the
    forecast's ``observed`` coverages (same keys), also ``p_as_far``: the share of calibrated forecasts whose
    coverage is at least as far from 0.8 (a two-sided p-value of "the band is right")."""
    draws = np.asarray(draws, np.float64)
    k, d, w, b, s = draws.shape
    if k < 2 or w <= fit_weeks:
        raise ValueError(f"need two runs or more and held-out weeks, got {k} runs, {w} weeks, {fit_weeks} fitted")
    held = draws[:, :, fit_weeks:]
    city = held[..., list(series).index("deaths")].sum(axis=-1)  # [K, D, H]
    scores: dict[str, list[np.ndarray]] = {"deaths_citywide": [], "pooled": []}
    for i in range(k):
        others = np.delete(held, i, axis=0).reshape(-1, *held.shape[2:])
        lo, hi = np.quantile(others, [0.1, 0.9], axis=0)
        scores["pooled"].append(((held[i] >= lo) & (held[i] <= hi)).mean(axis=(1, 2, 3)))
        c_others = np.delete(city, i, axis=0).reshape(-1, city.shape[-1])
        c_lo, c_hi = np.quantile(c_others, [0.1, 0.9], axis=0)
        scores["deaths_citywide"].append(((city[i] >= c_lo) & (city[i] <= c_hi)).mean(axis=1))
    out = {}
    for name, parts in scores.items():
        c = np.concatenate(parts)
        q10, q50, q90 = np.quantile(c, [0.1, 0.5, 0.9])
        out[name] = {"q10": float(q10), "median": float(q50), "q90": float(q90),
                     "in_target": float(np.mean((c >= target[0]) & (c <= target[1]))),
                     "at_one": float(np.mean(c == 1.0)), "forecasts": int(c.size)}
        if observed is not None and name in observed:
            dist = abs(observed[name] - 0.8) - 1e-9  # coverages are counts over weeks: ties are as far
            out[name] |= {"observed": float(observed[name]), "p_as_far": float(np.mean(np.abs(c - 0.8) >= dist))}
    return out


def unemployment_errors(frame: pl.DataFrame) -> pl.DataFrame:
    """Per borough and month: simulated minus observed unemployment rate, in percentage points."""
    return (frame.filter(pl.col("series") == "unemployment")
            .select("borough", "period", (100 * (pl.col("simulated") - pl.col("observed"))).alias("error_pp")))


def plot_forecast(frame: pl.DataFrame, path: str | Path, title: str = "") -> Path:
    """Small multiples: rows = series (deaths, hospitalizations, cases, unemployment), columns = citywide + boroughs."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = [s for s in ("deaths", "hospitalizations", "cases", "unemployment") if s in set(frame["series"])]
    boroughs = ["citywide"] + sorted(set(frame["borough"]) - {"citywide"})
    fig, axes = plt.subplots(len(series), len(boroughs), figsize=(2.8 * len(boroughs), 2.2 * len(series)),
                             squeeze=False, sharex="row")
    for i, s in enumerate(series):
        for j, b in enumerate(boroughs):
            ax = axes[i][j]
            g = frame.filter((pl.col("series") == s) & (pl.col("borough") == b)).sort("index")
            if g.height == 0:
                ax.axis("off")
                continue
            x = g["index"].to_numpy()
            ax.fill_between(x, g["lo"].to_numpy(), g["hi"].to_numpy(), color="tab:blue", alpha=0.25, lw=0)
            ax.plot(x, g["simulated"].to_numpy(), color="tab:blue", lw=1.5, label="simulated (80% band)")
            ax.plot(x, g["observed"].to_numpy(), "o", color="black", ms=3, label="observed")
            held = g.filter(pl.col("held_out"))
            if held.height:
                ax.axvline(float(held["index"].min()) - 0.5, color="grey", ls="--", lw=0.8)
            if i == 0:
                ax.set_title(b, fontsize=9)
            if j == 0:
                ax.set_ylabel(s + (" rate" if s == "unemployment" else " / week"), fontsize=8)
            ax.tick_params(labelsize=7)
    axes[0][0].legend(fontsize=6, loc="upper left")
    if title:
        fig.suptitle(title + "  (dashed: start of held-out data)", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


SIM_COLUMNS = {"cases": "reported_cases", "hospitalizations": "hospital_admissions", "deaths": "reported_deaths"}


def run_vs_observed(metrics: pl.DataFrame, n_agents: int, start: str = "2020-03-01", observed: str = "nyc",
                    fit_end: str | None = None) -> pl.DataFrame:
    """A forecast frame (no bands: ``lo = hi = simulated``) from a run's ``metrics.parquet``.

    Step 0 is ``start``; simulated per-borough counts are scaled by census persons per agent (``build`` gives
    boroughs agents in proportion to their census population). Monthly unemployment is LAUS-style:
    the month's mean unemployed over its mean labour force.
    """
    import datetime as dt

    from populations.tables import load_tables

    from . import observed as obs

    tables = load_tables("nyc")
    scale = float(tables.borough_population.sum()) / max(int(n_agents), 1)
    first = dt.date.fromisoformat(start)
    days = int(metrics["step"].max()) + 1
    last = first + dt.timedelta(days=days - 1)
    wk = obs.weekly(obs.load_daily(observed), first, last)
    cut = dt.date.fromisoformat(fit_end) if fit_end else last
    m = metrics.sort("step").with_columns((pl.col("step") // 7).alias("week"))
    rows = []
    for b in obs.BOROUGHS + (obs.CITYWIDE,):
        slug = b.lower().replace(" ", "_")
        ob = wk.filter(pl.col("borough") == b).sort("week")
        for s, col in SIM_COLUMNS.items():
            name = col if b == obs.CITYWIDE else f"{col}__borough_{slug}"
            if name not in m.columns:
                continue
            sim = m.group_by("week").agg(pl.col(name).sum()).sort("week")
            for w, o in zip(ob["week"], ob[s]):
                v = float(sim.filter(pl.col("week") == w)[name][0]) * scale
                ws = first + dt.timedelta(days=7 * int(w))
                rows.append({"series": s, "borough": b, "period": ws.isoformat(), "index": int(w),
                             "held_out": ws > cut, "observed": float(o), "simulated": v, "lo": v, "hi": v})
    laus = obs.monthly_unemployment(observed, first, last)
    dates = [first + dt.timedelta(days=int(t)) for t in m["step"]]
    m = m.with_columns(pl.Series("ym", [d.year * 100 + d.month for d in dates]))
    for b in obs.BOROUGHS:
        slug = b.lower().replace(" ", "_")
        # as LAUS counts (without job losers not yet searching); runs written before that observation
        # existed carry only the agents' counts, which is what it reduces to with not_searching 0
        prefix = "laus_" if f"laus_unemployed__borough_{slug}" in m.columns else ""
        u, lf = f"{prefix}unemployed__borough_{slug}", f"{prefix}labor_force__borough_{slug}"
        if u not in m.columns:
            continue
        g = m.group_by("ym").agg(pl.col(u).mean(), pl.col(lf).mean()).sort("ym")
        for i, row in enumerate(g.iter_rows(named=True)):
            y, mo = divmod(int(row["ym"]), 100)
            o = laus.filter((pl.col("borough") == b) & (pl.col("year") == y) & (pl.col("month") == mo))
            if o.height == 0:
                continue
            v = row[u] / max(row[lf], 1.0)
            rows.append({"series": "unemployment", "borough": b, "period": f"{y:04d}-{mo:02d}-01", "index": i,
                         "held_out": dt.date(y, mo, 1) > cut, "observed": float(o["rate"][0]), "simulated": v,
                         "lo": v, "hi": v})
    return pl.DataFrame(rows)
