"""The multiverse rules on the tiny integration config: batches as jobs, the gathered table and its contract,
the summary and the specification curve (the run is shared with test_pipeline.py and test_slurm.py: the
fixture integration_run of conftest.py)."""

from __future__ import annotations

import subprocess

import pandas as pd
import pytest
from workflow_copy import INTEGRATION_MULTIVERSE, quiet_env, snakemake_command

from alliancemeta.studies.multiverse import MULTIVERSE_COLUMNS, SUMMARY_COLUMNS

pytestmark = pytest.mark.slow
RESULTS = "results/studies/tiny_synthetic"
#: Columns the multiverse row REML/knha/ignore/none/all shares with random_effects.csv (SPEC §5).
SHARED = ("k", "estimate", "se", "ci_lb", "ci_ub", "pval", "r", "r_ci_lb", "r_ci_ub", "tau2")


def read_text_table(path) -> pd.DataFrame:
    """A table with every cell as the text in the file, so equality is equality of the written bytes."""
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def test_multiverse_table_contract_and_batches(integration_run):
    work = integration_run.work
    table = read_text_table(work / RESULTS / "tables/multiverse.csv")
    assert list(table.columns[: len(MULTIVERSE_COLUMNS)]) == list(MULTIVERSE_COLUMNS)
    assert table["spec_id"].astype(int).tolist() == list(range(1, len(table) + 1))
    assert len(table) == 168  # 2 subsets x (ignore 33 + aggregate 33 + three-level 9 + CHE 9), see workflow_copy
    assert set(table["dependence"]) == {"ignore", "aggregate", "three_level", "che"}
    assert set(table["outliers"]) == {"none", "studentized", "cooks"}
    assert set(table["subset"]) == {"all", "rater=client"}
    assert (table.loc[table["estimator"] != "bayes", "prior"] == "").all()
    assert (table.loc[table["estimator"] == "bayes", "prior"] != "").all()
    logs = sorted((work / "logs/multiverse").glob("batch_tiny_synthetic_*.log"))
    assert len(logs) == -(-len(table) // INTEGRATION_MULTIVERSE["batch_size"]) == 3
    assert not list((work / RESULTS / "multiverse").glob("batch_*.csv"))  # temporary, removed after gathering
    summary = read_text_table(work / RESULTS / "tables/multiverse_summary.csv")
    assert list(summary.columns) == list(SUMMARY_COLUMNS)
    assert summary.iloc[0]["n_specs"] == "168"


def test_reml_knha_row_equals_random_effects_csv(integration_run):
    work = integration_run.work
    table = read_text_table(work / RESULTS / "tables/multiverse.csv")
    ref = read_text_table(work / RESULTS / "tables/random_effects.csv")
    ref = ref[(ref["estimator"] == "REML") & (ref["test"] == "knha")].iloc[0]
    row = table[
        (table["estimator"] == "REML") & (table["test"] == "knha") & (table["dependence"] == "ignore")
        & (table["outliers"] == "none") & (table["subset"] == "all")
    ]  # fmt: skip
    assert len(row) == 1
    for column in SHARED:
        assert row.iloc[0][column] == ref[column], column


def test_specification_curve_and_nothing_to_do_on_rerun(integration_run):
    snakefile, work, _ = integration_run
    for suffix in ("pdf", "png"):
        assert (work / RESULTS / f"figures/specification_curve.{suffix}").stat().st_size > 10_000
    proc = subprocess.run(
        snakemake_command(snakefile, work, "--cores", "1", "-n", "multiverse_all"),
        capture_output=True, text=True, check=False, timeout=600, env=quiet_env(),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Nothing to be done" in proc.stdout + proc.stderr
