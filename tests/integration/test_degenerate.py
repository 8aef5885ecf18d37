"""Degenerate but valid data run through every stage (SPEC §7, issue 6): k = 1, k = 2, identical effects
(tau^2 = 0), no study_id/year/moderators, and a session dataset with a single therapist and a single site."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent / "degenerate"
SNAKEMAKE = Path(sys.executable).with_name("snakemake")


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("degenerate")
    shutil.copytree(HERE / "config", work / "config")
    shutil.copytree(HERE / "data", work / "data")
    proc = subprocess.run(
        [str(SNAKEMAKE), "-s", str(ROOT / "Snakefile"), "--directory", str(work), "--cores", "2"],
        capture_output=True, text=True, check=False, timeout=1500,
    )
    logs = "\n".join(p.read_text()[-1500:] for p in (work / "logs").rglob("*.log") if "Error" in p.read_text())
    assert proc.returncode == 0, proc.stderr[-3000:] + logs
    return work / "results"


@pytest.mark.slow
def test_single_study_is_reported_with_explanation(results):
    table = pd.read_csv(results / "studies/one_study/tables/random_effects.csv")
    assert (table["k"] == 1).all()
    assert table["note"].str.contains("k = 1").all()
    assert table["estimate"].notna().all() and table["se"].notna().all()


@pytest.mark.slow
def test_two_studies_and_homogeneous_effects(results):
    two = pd.read_csv(results / "studies/two_studies/tables/random_effects.csv")
    assert two["note"].str.contains("k = 2").all()
    hom = pd.read_csv(results / "studies/homogeneous/tables/random_effects.csv")
    assert (hom["tau2"] == 0).all()
    assert hom["note"].str.contains("tau\\^2 estimated at 0").all()


@pytest.mark.slow
def test_stages_without_their_inputs_are_skipped(results):
    tables = {p.name for p in (results / "studies/two_studies/tables").iterdir()}
    assert "multilevel.csv" not in tables and "moderators.csv" not in tables
    assert {"random_effects.csv", "bayes.csv", "publication_bias.csv", "influence.csv"} <= tables


@pytest.mark.slow
def test_single_therapist_single_site(results):
    tables = {p.name for p in (results / "sessions/one_therapist/tables").iterdir()}
    assert "site_effects.csv" not in tables
    models = pd.read_csv(results / "sessions/one_therapist/tables/mixed_models.csv")
    assert "alliance_within" in set(models["term"])
