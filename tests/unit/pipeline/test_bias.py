"""The bias stage: ``publication_bias.csv`` and the funnel plot (the methods themselves are tested in
tests/unit/studies/test_bias.py and against R in tests/reference/test_bias_reference.py)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from alliancemeta.core.effects import escalc_cor
from alliancemeta.core.seeds import derive_seed
from alliancemeta.core.settings import Dataset
from alliancemeta.pipeline.bias import (
    METHODS,
    publication_bias_table,
    write_funnel,
    write_publication_bias,
    write_selection_models,
)
from alliancemeta.studies.bias.regression_tests import regtest
from alliancemeta.studies.bias.selection_table import selection_models_table
from alliancemeta.studies.random_effects import random_effects
from tests.unit.pipeline.settings import meta_settings

ROOT = Path(__file__).resolve().parents[3]
META = meta_settings("REML", "knha")


def molloy():
    d = pd.read_csv(ROOT / "data/raw/molloy2014.csv")
    es = escalc_cor(d["r"], d["n"])
    return es.yi, es.vi


def test_table_rows_and_columns():
    yi, vi = molloy()
    t = publication_bias_table(yi, vi, "REML", "knha", 0.95)
    assert list(t.columns) == ["method", "statistic", "pval", "estimate", "ci_lb", "ci_ub", "k0"]
    assert list(t["method"]) == list(METHODS)
    row = t.set_index("method")
    assert row.loc[["rank", "failsafe_rosenthal"], ["estimate", "ci_lb", "ci_ub"]].isna().all().all()
    assert row["k0"].notna().sum() == 2 and row.loc["trimfill", "k0"] >= 0
    assert row.drop(columns="k0").drop(index=["rank", "failsafe_rosenthal"]).notna().all().all()


def test_too_few_studies_give_nan_rows_and_a_logged_reason(caplog):
    with pytest.raises(ValueError, match="at least 3"):
        regtest(random_effects([0.2, 0.3], [0.01, 0.02]))
    with caplog.at_level(logging.WARNING, logger="alliancemeta.pipeline.bias"):
        t = publication_bias_table([0.2, 0.3], [0.01, 0.02], "REML", "knha", 0.95).set_index("method")
    assert t.loc[["egger", "rank", "selection_3psm", "pet", "peese"], "statistic"].isna().all()
    assert "egger not computed" in caplog.text and "at least 3" in caplog.text
    assert np.isfinite(t.loc["failsafe_rosenthal", "statistic"])


def test_write_publication_bias(tmp_path):
    yi, vi = molloy()
    studies = tmp_path / "s.csv"
    pd.DataFrame({"study": range(yi.size), "yi": yi, "vi": vi}).to_csv(studies, index=False)
    out = tmp_path / "tables" / "publication_bias.csv"
    write_publication_bias(studies, out, META)
    table = pd.read_csv(out)
    assert table.shape == (len(METHODS), 7)
    assert not list(out.parent.glob(".*.tmp"))


def test_funnel_is_written_and_reproducible(tmp_path):
    d = pd.read_csv(ROOT / "data/raw/molloy2014.csv")
    es = escalc_cor(d["r"], d["n"])
    studies = tmp_path / "s.csv"
    pd.DataFrame({"study": d["study"], "yi": es.yi, "vi": es.vi, "year": d["year"]}).to_csv(studies, index=False)
    for folder in ("a", "b"):
        write_funnel(studies, tmp_path / folder / "f.pdf", tmp_path / folder / "f.png",
                     dataset=Dataset("molloy2014", False), meta=META)
    pdf, png = tmp_path / "a" / "f.pdf", tmp_path / "a" / "f.png"
    assert pdf.stat().st_size > 1000 and png.read_bytes()[:4] == b"\x89PNG"
    assert pdf.read_bytes() == (tmp_path / "b" / "f.pdf").read_bytes(), "funnel.pdf differs between runs"


def test_funnel_for_two_effect_sizes_is_drawn(tmp_path):
    studies = tmp_path / "s.csv"
    pd.DataFrame({"study": ["a", "b"], "yi": [0.2, 0.4], "vi": [0.01, 0.02]}).to_csv(studies, index=False)
    write_funnel(studies, tmp_path / "f.pdf", tmp_path / "f.png", dataset=Dataset("tiny", True), meta=META)
    assert (tmp_path / "f.pdf").exists() and (tmp_path / "f.png").exists()


def test_write_selection_models_single_and_dependent(tmp_path):
    rng = np.random.default_rng(8)
    n = rng.integers(20, 300, 40)
    study_id = np.repeat([f"S{i:02d}" for i in range(16)], [3, 3, 2, 2, 3, 2, 2, 3, 3, 2, 2, 3, 3, 2, 3, 2])
    theta = np.repeat(rng.normal(0.25, 0.1, 16), np.bincount(np.unique(study_id, return_inverse=True)[1]))
    yi = theta + rng.normal(0, np.sqrt(1 / (n - 3)))
    studies = tmp_path / "studies.csv"
    frame = pd.DataFrame({"study": [f"e{i}" for i in range(40)], "study_id": study_id, "yi": yi, "vi": 1 / (n - 3)})
    frame.to_csv(studies, index=False)
    meta = META._replace(selection_models={**META.selection_models, "n_boot": 120})
    out = tmp_path / "selection_models.csv"
    write_selection_models(studies, out, dataset=Dataset("toy", True), meta=meta, seed=5)
    table = pd.read_csv(out)
    assert table["type"].tolist() == ["stepfun_3psm", "stepfun_4psm", "beta", "halfnorm", "negexp", "logistic",
                                      "power", "clustered_3psm", "clustered_4psm"]  # fmt: skip
    seed = derive_seed(5, "selection_models/toy")
    direct = selection_models_table(yi, 1 / (n - 3), study_id, level=meta.level, seed=seed, **meta.selection_models)
    np.testing.assert_allclose(table["estimate"], direct["estimate"], rtol=1e-12)
    np.testing.assert_allclose(table["ci_lb"], direct["ci_lb"], rtol=1e-12)
    # without study_id: metafor's seven models only
    frame.drop(columns="study_id").to_csv(studies, index=False)
    write_selection_models(studies, out, dataset=Dataset("toy", True), meta=meta, seed=5)
    assert len(pd.read_csv(out)) == 7
