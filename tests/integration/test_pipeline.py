"""Run the real Snakemake pipeline on the tiny config and check the output contract of SPEC §5.

The workflow (Snakefile, workflow/) is used in place; the working directory is a temporary copy of
tests/integration/{config,data}, so the run writes nothing into the repository.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
SNAKEMAKE = Path(sys.executable).with_name("snakemake")

#: SPEC §5 column contracts (extra columns may only follow these).
CONTRACTS = {
    "random_effects.csv": [
        "estimator", "test", "k", "estimate", "se", "stat", "pval", "ci_lb", "ci_ub", "pi_lb", "pi_ub", "tau2",
        "tau2_ci_lb", "tau2_ci_ub", "I2", "I2_ci_lb", "I2_ci_ub", "H2", "Q", "Q_df", "Q_pval", "r", "r_ci_lb",
        "r_ci_ub", "r_pi_lb", "r_pi_ub",
    ],
    "multilevel.csv": [
        "test", "k", "n_studies", "estimate", "se", "stat", "pval", "ci_lb", "ci_ub", "pi_lb", "pi_ub",
        "sigma2_study", "sigma2_within", "r", "r_ci_lb", "r_ci_ub",
    ],
    "moderators.csv": ["moderator", "term", "estimate", "se", "stat", "pval", "ci_lb", "ci_ub"],
    "moderator_tests.csv": [
        "moderator", "test", "k", "QM", "QM_df", "QM_pval", "QE", "QE_df", "QE_pval", "tau2", "R2",
    ],
    "publication_bias.csv": ["method", "statistic", "pval", "estimate", "ci_lb", "ci_ub", "k0"],
    "influence.csv": [
        "study", "rstudent", "dffits", "cooks_distance", "cov_ratio", "tau2_del", "QE_del", "hat", "weight",
        "loo_estimate", "loo_se", "loo_ci_lb", "loo_ci_ub", "loo_tau2", "loo_I2",
    ],
    "influence_multilevel.csv": [
        "study_id", "k", "cooks_distance", "dfbetas", "rstudent_X2", "rstudent_df", "rstudent_pval", "rstandard_X2",
        "hat", "sigma2_study_del", "sigma2_within_del", "loo_estimate", "loo_se", "loo_pval", "loo_ci_lb", "loo_ci_ub",
        "loo_r", "loo_r_ci_lb", "loo_r_ci_ub", "influential",
    ],
    "bayes.csv": ["parameter", "mean", "sd", "eti_lb", "eti_ub", "ess_bulk", "ess_tail", "r_hat"],
    "prior_sensitivity.csv": ["prior", "parameter", "mean", "sd", "eti_lb", "eti_ub"],
    "mixed_models.csv": ["model", "engine", "term", "estimate", "se", "ci_lb", "ci_ub", "pval"],
}  # fmt: skip


def run(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(SNAKEMAKE), "-s", str(ROOT / "Snakefile"), "--directory", str(workdir), "--cores", "2", *args],
        capture_output=True, text=True, check=False, timeout=1500,
    )


def digest(paths) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(paths)}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("pipeline")
    shutil.copytree(HERE / "config", work / "config")
    shutil.copytree(HERE / "data", work / "data")
    proc = run(work)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return work


@pytest.mark.slow
def test_contract_tables(workdir):
    tables = sorted((workdir / "results").rglob("tables/*.csv"))
    names = {t.name for t in tables}
    assert "random_effects.csv" in names
    for table in tables:
        if table.name in CONTRACTS:
            columns = list(pd.read_csv(table, nrows=0).columns)
            expected = CONTRACTS[table.name]
            assert columns[: len(expected)] == expected, table
    re_table = pd.read_csv(workdir / "results/studies/tiny_synthetic/tables/random_effects.csv")
    assert list(zip(re_table.estimator, re_table.test, strict=True)) == [
        ("REML", "knha"), ("REML", "z"), ("DL", "knha"), ("DL", "z"),
    ]
    assert (re_table.k == 14).all()
    for figure in ("forest.pdf", "forest.png"):
        assert (workdir / "results/studies/tiny_synthetic/figures" / figure).stat().st_size > 1000


@pytest.mark.slow
def test_provenance_records_inputs(workdir):
    prov = json.loads((workdir / "results/provenance.json").read_text())
    data = workdir / "data/tiny_synthetic.csv"
    assert prov["inputs"]["data/tiny_synthetic.csv"]["sha256"] == hashlib.sha256(data.read_bytes()).hexdigest()
    assert prov["seed"] == 7
    assert prov["packages"]["numpy"]


@pytest.mark.slow
def test_rerun_is_byte_identical_and_nothing_to_do(workdir):
    tables = list((workdir / "results").rglob("*.csv"))
    before = digest(tables)
    proc = run(workdir, "--dry-run")
    assert proc.returncode == 0
    assert "Nothing to be done" in proc.stdout + proc.stderr
    shutil.rmtree(workdir / "results")
    proc = run(workdir)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert digest(tables) == before


@pytest.mark.slow
def test_bad_input_stops_before_any_job_and_keeps_results(workdir, tmp_path):
    good = digest((workdir / "results").rglob("*.*"))
    bad = tmp_path / "bad"
    shutil.copytree(workdir, bad, ignore=shutil.ignore_patterns(".snakemake"))
    data = bad / "data/tiny_synthetic.csv"
    lines = data.read_text().splitlines()
    fields = lines[11].split(",")
    fields[2] = "1.7"
    lines[11] = ",".join(fields)
    data.write_text("\n".join(lines) + "\n")
    before = digest((bad / "results").rglob("*.*"))
    proc = run(bad)
    assert proc.returncode != 0
    assert "data/tiny_synthetic.csv line 12, column r: 1.7 is outside [-1, 1]" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert digest((bad / "results").rglob("*.*")) == before
    assert digest((workdir / "results").rglob("*.*")) == good
