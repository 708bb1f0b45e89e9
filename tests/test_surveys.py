"""Surveys and personas (issue 14): per-archetype answers, size-weighted distributions, option-order averaging,
personas.parquet, resume without duplicated rows, and bad specs refused with exit 2 naming the field."""
from __future__ import annotations

import itertools
import math
import subprocess
import sys

import numpy as np
import polars as pl
import pytest

import llm_policy.backends as backends
from analysis.surveys import distributions, likert_means, plot_item, read_surveys
from llm_policy.backends import ScriptedBackend
from llm_policy.personas import persona_table, render_persona
from scenarios import ScenarioError
from scenarios.loader import load_scenario
from scenarios.schema import PersonaSpec
from simcore.validation import check_scenario

BIAS = 1.0  # the scripted model's pull towards the option listed first
STANCE = {"strongly against": -2, "against": -1, "undecided": 0, "in favour": 1, "strongly in favour": 2}


def _base(prompt: str, n: int) -> np.ndarray:
    """The archetype's own leaning: later options gain with the stance shown in the persona."""
    first_line = prompt.rsplit("Respondent: ", 1)[-1]  # the persona (after the shared item text)
    stance = next(v for k, v in sorted(STANCE.items(), key=lambda kv: -len(kv[0])) if k in first_line)
    return 0.4 * stance * np.arange(n)


def _listed_first(prompt: str, options) -> int:
    listed = prompt.rsplit("Answer with one of: ", 1)[1]
    return min(range(len(options)), key=lambda i: listed.find(options[i].strip()) if options[i].strip() in listed
               else 10**6)


def _script(prompt, options):
    if "Question:" not in prompt:  # the decisions: answer 0.5
        return [math.log(0.5)] * len(options)
    lp = _base(prompt, len(options))
    lp[_listed_first(prompt, options)] += BIAS
    return list(lp - np.logaddexp.reduce(lp))


def _expected(prompt_first_line: str, n: int, orders: int) -> np.ndarray:
    """The order-averaged answer: rotation k lists option k first."""
    base = _base(prompt_first_line, n)
    out = []
    for k in range(orders):
        lp = base.copy()
        lp[k % n] += BIAS
        out.append(np.exp(lp - np.logaddexp.reduce(lp)))
    return np.mean(out, axis=0)


OVERRIDES = ["population.size=600", "run.steps=25", "surveys.0.steps=[0, 24]", "output.sample_agents=50"]


@pytest.fixture()
def scripted(monkeypatch):
    monkeypatch.setattr(backends, "make_backend", lambda spec: ScriptedBackend(_script, identity="scripted:survey"))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from simcore.runs import run_scenario

    patch = pytest.MonkeyPatch()
    patch.setattr(backends, "make_backend", lambda spec: ScriptedBackend(_script, identity="scripted:survey"))
    try:
        sc = load_scenario("polarization_llm_small", OVERRIDES)
        return run_scenario(sc, tmp_path_factory.mktemp("surveys") / "run"), sc
    finally:
        patch.undo()


def test_one_row_per_archetype_item_option_with_orders_averaged(run):
    run_dir, sc = run
    rows = read_surveys(run_dir)
    assert sorted(rows["step"].unique()) == [0, 24]
    assert set(rows["item"]) == {"good_faith", "changed_mind", "source"}
    assert (rows["orders"] == 2).all() and (rows["orders_asked"] == 2).all() and not rows["fallback"].any()
    # every agent answers every item once per step
    sizes = rows.filter(pl.col("option_index") == 0).group_by("step", "item").agg(pl.col("group_size").sum())
    assert (sizes["group_size"] == 600).all()
    # probabilities per archetype and item sum to 1, and equal the analytic average over 2 listed orders,
    # which differs from the answer in the order as written (so averaging was applied, not only recorded)
    words = sc.personas.labels["stance_bin"]
    for key, part in rows.group_by("step", "item", "archetype"):
        part = part.sort("option_index")
        probs = part["prob"].to_numpy()
        assert probs.sum() == pytest.approx(1.0, abs=1e-9)
        line = words[part["stance_bin"][0]]
        want = _expected(line, len(probs), 2)
        np.testing.assert_allclose(probs, want, atol=1e-9)
        assert not np.allclose(probs, _expected(line, len(probs), 1), atol=1e-3)
        assert part["prob_sd"][0] > 0  # the two orders disagreed on the option each listed first


def test_distributions_equal_size_weighted_groupby(run):
    run_dir, _ = run
    rows = read_surveys(run_dir)
    for by in (None, "stance_bin", "persona"):
        got = distributions(rows, by)
        keys = ["step", "item", "option"] + ([by] if by else [])
        want = {}
        for r in rows.iter_rows(named=True):  # a plain loop over the per-archetype answers
            k = tuple(r[c] for c in keys)
            num, den = want.get(k, (0.0, 0.0))
            want[k] = (num + r["group_size"] * r["prob"], den + r["group_size"])
        assert len(got) == len(want)
        for r in got.iter_rows(named=True):
            num, den = want[tuple(r[c] for c in keys)]
            assert r["share"] == pytest.approx(num / den, rel=1e-12) and r["coverage"] == 1.0
    overall = distributions(rows)
    assert overall.group_by("step", "item").agg(pl.col("share").sum())["share"].to_numpy() == pytest.approx(1.0)
    # the leaning rises with stance: the mean Likert score is higher among those strongly in favour
    means = likert_means(rows, "stance_bin").filter(pl.col("step") == 0)
    score = dict(zip(means["stance_bin"], means["mean_score"]))
    assert score["strongly_for"] > score["neutral"] > score["strongly_against"]
    assert plot_item(rows, "opinion", "source", by="stance_bin").axes
    with pytest.raises(KeyError, match="by: 'shoe_size'"):
        distributions(rows, "shoe_size")


def test_personas_parquet_and_report(run, tmp_path):
    from analysis.report import write_report

    run_dir, sc = run
    personas = pl.read_parquet(run_dir / "personas.parquet")
    assert personas["n_agents"].sum() == 600
    for r in personas.iter_rows(named=True):
        assert r["persona_text"] == render_persona(sc.personas, sc.run.seed, {"persona": r["persona"],
                                                                               "stance_bin": r["stance_bin"]})
    creator = personas.filter((pl.col("persona") == "creator") & (pl.col("stance_bin") == "neutral"))
    assert creator["persona_text"].to_list() == ["A user who posts every day, undecided"]
    page = write_report(run_dir, tmp_path / "report").read_text()
    assert "Surveys" in page and "good_faith" in page


def test_persona_rendering_is_deterministic_by_seed():
    spec = PersonaSpec(templates=["Aged {age_band}, lives in {borough}.", "A {borough} resident aged {age_band}.",
                                  "{age_band}, {borough}"], labels={"age_band": {"65A": "65 or older"}})
    ages, boroughs = ("U19", "20t29", "65A"), ("BX", "BK", "MN", "QN", "SI")
    feats = {"age_band": np.repeat(np.arange(3), 5), "borough": np.tile(np.arange(5), 3)}
    labels = {"age_band": ages, "borough": boroughs}
    a, b = persona_table(spec, 7, feats, labels), persona_table(spec, 7, feats, labels)
    assert a == b and len(a["persona_text"]) == 15
    others = [persona_table(spec, s, feats, labels)["template"] for s in range(8, 12)]
    assert any(t != a["template"] for t in others)  # the seed picks the templates
    assert "Aged 65 or older, lives in MN." in a["persona_text"] or "A MN resident aged 65 or older." in \
        a["persona_text"] or "65 or older, MN" in a["persona_text"]


@pytest.mark.parametrize("override, field", [
    ("surveys.0.prompt='{persona} {question} {shoe_size}'", "surveys[0].prompt: unknown field {shoe_size}"),
    ("surveys.0.steps=[0, 72]", "surveys[0].steps[1]: step 72 is beyond the run"),
    ("surveys.0.steps=[5]", "surveys[0].steps[0]: step 5 is not on the policy's cadence"),
    ("surveys.0.items.2.options=null", "surveys[0].items[2].options: a choice item needs its options"),
    ("surveys.0.items.0.kind=ranking", "surveys[0].items[0].kind"),
    ("surveys.0.group_by=[stance_bin]", "surveys[0].group_by: the prompt uses {persona}"),
    ("personas.templates=['{persona} from {borough}']", "personas.templates[0]: unknown field {borough}"),
])
def test_bad_specs_are_refused_naming_the_field(override, field):
    with pytest.raises(ScenarioError) as err:
        check_scenario(load_scenario("polarization_llm_small", [override]), memory=False)
    assert field in str(err.value)


def test_cli_exits_2_with_one_line():
    res = subprocess.run([sys.executable, "-m", "simcore", "validate", "polarization_llm_small", "--set",
                          "surveys.0.items.1.question=Do you {agree}?"], capture_output=True, text=True)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "surveys[0].items[1].question: unknown field {agree}" in res.stderr + res.stdout


def test_resume_neither_duplicates_nor_loses_survey_rows(scripted, tmp_path):
    from simcore.session import resume_run
    from simcore.runs import run_scenario

    sc = load_scenario("polarization_llm_small", ["population.size=600", "run.steps=36", "run.chunk_size=12",
                                                  "surveys.0.steps=[0, 12, 24]", "output.sample_agents=50"])
    whole = read_surveys(run_scenario(sc, tmp_path / "whole"))
    calls = itertools.count()
    part = run_scenario(sc, tmp_path / "part", checkpoint_every=12, should_stop=lambda: next(calls) >= 2)
    assert sorted(read_surveys(part)["step"].unique()) != [0, 12, 24]  # it did stop early
    resumed = read_surveys(resume_run(part))
    cols = ["survey", "step", "item", "archetype", "option", "prob", "group_size"]
    assert resumed.select(cols).sort(cols).equals(whole.select(cols).sort(cols))


def test_survey_rounds_are_appended_as_parts_and_compacted_at_close(scripted, tmp_path):
    """A round writes only its own rows (one part file); closing merges them into surveys.parquet."""
    import pyarrow.parquet as pq

    from simcore import rundir
    from simcore.session import RunSession

    sc = load_scenario("polarization_llm_small", ["population.size=600", "run.steps=24", "run.chunk_size=12",
                                                  "surveys.0.steps=[0, 12]", "output.sample_agents=50"])
    d = tmp_path / "run"
    session = RunSession(sc, d).open()
    session.run(13)  # both rounds asked (steps 0 and 12), the run not closed
    parts = sorted((d / "surveys.parts").glob("part-*.parquet"))
    assert [sorted(set(pq.read_table(p).column("step").to_pylist())) for p in parts] == [[0], [12]]
    assert not (d / "surveys.parquet").exists()
    during = read_surveys(d)
    session.run()
    session.close()
    assert not (d / "surveys.parts").exists() and rundir.table_files(d, "surveys") == [d / "surveys.parquet"]
    assert read_surveys(d).equals(during)  # the same rows, now in one file


@pytest.mark.parametrize("bias", [0.0, BIAS])
def test_probe_measures_order_and_temperature_sensitivity_per_item(bias, monkeypatch):
    from llm_policy.probe import probe_surveys
    from simcore.models import build
    from simcore.runs import make_archetype_policy

    def script(prompt, options):
        if "Question:" not in prompt:
            return [math.log(0.5)] * len(options)
        lp = _base(prompt, len(options))
        lp[_listed_first(prompt, options)] += bias
        return list(lp - np.logaddexp.reduce(lp))

    monkeypatch.setattr(backends, "make_backend", lambda spec: ScriptedBackend(script))
    sc = load_scenario("polarization_llm_small", ["population.size=300", "output.sample_agents=10"])
    built = build(sc)
    policy = make_archetype_policy(sc, built)
    out = probe_surveys(policy, sc.surveys, built.state, built.params, step=0, schedule=built.schedule)
    by_item = {s["item"]: s for s in out.summary}
    assert set(by_item) == {"good_faith", "changed_mind", "source"}
    assert len(out.rows) == sum(15 * len(i.options) for i in sc.surveys[0].items)  # every archetype, every order
    for s in by_item.values():
        assert s["failed"] == 0 and s["temperature_sensitivity"] > 0  # the leanings sharpen as T falls
        if bias == 0:
            assert s["order_sensitivity"] == pytest.approx(0, abs=1e-12)
            assert s["first_listed_gain"] == pytest.approx(0, abs=1e-12)
        else:
            assert s["order_sensitivity"] > 0.1 and s["first_listed_gain"] > 0.1


@pytest.mark.slow
def test_pipelined_policy_gives_the_same_survey_answers(run, scripted, tmp_path):
    from simcore.runs import run_scenario

    run_dir, _ = run
    sc = load_scenario("polarization_llm_small", [*OVERRIDES, "policy.pipelined=true"])
    piped = read_surveys(run_scenario(sc, tmp_path / "piped"))
    cols = ["step", "item", "archetype", "option", "prob"]
    # step 0's grouping sees the same state; later rounds may differ (pipelined decisions apply one round late)
    a = piped.filter(pl.col("step") == 0).select(cols).sort(cols)
    b = read_surveys(run_dir).filter(pl.col("step") == 0).select(cols).sort(cols)
    assert a.equals(b) and set(piped["step"]) == {0, 24}


def test_llm_probe_cli_reports_survey_items(scripted, tmp_path, capsys):
    from simcore.cli import main

    out = tmp_path / "probe.parquet"
    rc = main(["llm-probe", "polarization_llm_small", "--size", "300", "--step", "0", "--out", str(out)])
    text = capsys.readouterr().out
    assert rc in (0, None) and "survey opinion.source (choice): 15 archetypes, 0 failed" in text
    assert "option order: sensitivity" in text and "temperature: sensitivity" in text
    rows = pl.read_parquet(out)
    assert rows.filter(pl.col("decision") == "survey:opinion.source").height == 15 * 3


def test_run_refuses_a_persona_field_that_is_a_label_but_not_a_feature(scripted, tmp_path):
    from simcore.runs import run_scenario

    sc = load_scenario("polarization_llm_small", ["population.size=300", "output.sample_agents=10",
                                                  "personas.templates=['A user who {action}']"])
    with pytest.raises(ScenarioError, match=r"personas.templates\[0\]: unknown field \{action\}"):
        run_scenario(sc, tmp_path / "run")
    assert not (tmp_path / "run").exists()  # refused before any file
