"""The written summary and the APA tables: every number comes from the tables, sections follow the tables."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from alliancemeta.core.effects import escalc_cor
from alliancemeta.core.settings import Dataset, load_settings
from alliancemeta.pipeline.bias import publication_bias_table
from alliancemeta.pipeline.meta import moderator_tables, random_effects_table
from alliancemeta.report.apa import build_tables
from alliancemeta.report.checklist import NOT_HERE, checklist
from alliancemeta.report.numbers import bounded, interval, percent, small
from alliancemeta.report.summary import sample_size, study_summary

ROOT = Path(__file__).resolve().parents[3]
SETTINGS = load_settings({"meta": {"estimators": ["REML", "DL"], "tests": ["knha", "z"]}})


@pytest.fixture(scope="module")
def molloy():
    raw = pd.read_csv(ROOT / "data/raw/molloy2014.csv")
    es = escalc_cor(raw["r"], raw["n"])
    studies = raw.assign(yi=es.yi, vi=es.vi)
    meta = SETTINGS.meta
    tables = {
        "random_effects": random_effects_table(studies["yi"], studies["vi"], meta.estimators, meta.tests, meta.level),
        "publication_bias": publication_bias_table(studies["yi"], studies["vi"], meta.method, meta.test, meta.level),
    }
    tables["moderators"], tables["moderator_tests"] = moderator_tables(
        studies, ["controls", "meanage"], meta.method, meta.tests, meta.level
    )
    return studies, tables


def test_headline_numbers_are_the_tables(molloy):
    studies, tables = molloy
    text = study_summary(tables, studies, Dataset("molloy2014", False), SETTINGS.meta, None,
                         "conscientiousness", "medication adherence")
    head = tables["random_effects"].iloc[0]
    assert f"k = {int(head['k'])} effect sizes (N = {int(studies['n'].sum()):,})" in text.headline
    assert f"r = {bounded(head['r'])}, 95% CI {interval(head['r_ci_lb'], head['r_ci_ub'])}" in text.headline
    assert f"was {interval(head['r_pi_lb'], head['r_pi_ub'])}" in text.headline
    assert f"τ = {small(np.sqrt(head['tau2']))}" in text.headline
    i2_ci = interval(head["I2_ci_lb"], head["I2_ci_ub"], percent)
    assert f"I² = {percent(head['I2'])} (95% CI {i2_ci})" in text.headline
    assert f"r² = {bounded(head['r'] ** 2, 3)}" in text.headline
    assert "between conscientiousness and medication adherence" in text.headline
    assert text.markdown.startswith("# molloy2014")  # real data: no SYNTHETIC line
    assert "## References" in text.markdown and "Knapp, G., & Hartung, J. (2003)" in text.markdown
    # sections follow the tables: no three-level or Bayesian paragraphs without their tables
    assert "three-level" not in text.markdown.lower() and "Bayesian" not in text.markdown


def test_synthetic_data_are_marked_in_the_first_line_and_levels_follow_the_config(molloy):
    studies, tables = molloy
    settings = load_settings({"meta": {"estimators": ["REML"], "tests": ["z"], "level": 0.9}})
    meta = settings.meta
    tables = {"random_effects": random_effects_table(studies["yi"], studies["vi"], ("REML",), ("z",), 0.9)}
    text = study_summary(tables, studies, Dataset("demo", True), meta)
    assert text.markdown.splitlines()[0].startswith("**SYNTHETIC data**")
    assert "90% CI" in text.headline and "95%" not in text.markdown


def test_sample_size_counts_each_study_once():
    frame = pd.DataFrame({"study_id": ["a", "a", "b"], "n": [100, 80, 50]})
    assert sample_size(frame) == 150
    assert np.isnan(sample_size(pd.DataFrame({"yi": [0.1]})))


def test_apa_tables_render_in_markdown_and_latex(molloy):
    _, tables = molloy
    apa = build_tables(tables, 0.95, "molloy2014")
    assert set(apa) == {"random_effects", "moderators", "publication_bias"}
    md = apa["random_effects"].markdown(1)
    assert md.startswith("**Table 1**") and "| Estimator | Test | k | r |" in md and "*Note.*" in md
    rows = [line for line in md.splitlines() if line.startswith("| REML")]
    assert len(rows) == 2 and "< .001" in rows[0]
    tex = apa["moderators"].latex(label="tab:m")
    assert tex.count(r"\toprule") == 1 and r"\label{tab:m}" in tex and "%" not in tex.replace(r"\%", "")


def test_checklist_answers_only_what_the_tables_answer(molloy):
    _, tables = molloy
    text = checklist(tables, "molloy2014")
    assert "| 13e | Moderator analyses |" in text and "tables/moderators.csv" in text
    assert NOT_HERE in text  # search, risk of bias, ... are the authors'
    without = checklist({"random_effects": None}, "x")
    assert "No moderators configured" in without and "Publication-bias stage not run." in without
