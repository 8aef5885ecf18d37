"""Three-level influence diagnostics against direct refits and dense-matrix definitions.

The contract: every deleted fit equals :func:`three_level` on the data without the study (or effect size),
and every diagnostic equals its definition evaluated with dense k x k matrices on a small dataset.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from alliancemeta.core.settings import Dataset
from alliancemeta.pipeline.influence import (
    INFLUENCE_MULTILEVEL_COLUMNS,
    influence_multilevel_table,
    write_influence_multilevel,
)
from alliancemeta.studies.multilevel.influence import multilevel_influence
from alliancemeta.studies.multilevel.model import three_level
from tests.unit.pipeline.settings import meta_settings

ROOT = __import__("pathlib").Path(__file__).resolve().parents[3]

#: Agreement of a warm-started deletion with a cold-started refit: both iterate Newton steps until the
#: step in sigma2 is below 1e-12 of the data's scale, so they agree to ~1e-11 (measured 7e-12 on the
#: 295 studies of alliance_synthetic); 1e-8 is the brief's contract.
REFIT_RTOL = 1e-8
#: Absolute floor for sigma2 at the boundary 0 and for coefficients near 0.
REFIT_ATOL = 1e-12
#: Dense-matrix and O(k) versions of the same formula differ by round-off only.
DENSE_RTOL = 1e-9


@pytest.fixture(scope="module")
def kon():
    d = pd.read_csv(ROOT / "tests/reference/data/konstantopoulos2011.csv")
    return d["yi"].to_numpy(), d["vi"].to_numpy(), d["district"].to_numpy(), d["year"].to_numpy(float)


@pytest.fixture(scope="module")
def crede():
    d = pd.read_csv(ROOT / "tests/reference/data/crede2010.csv")
    X = np.column_stack([np.ones(len(d)), (d["criterion"] == "gpa").to_numpy(float)])
    return d["yi"].to_numpy(), d["vi"].to_numpy(), d["studyid"].to_numpy(), X

#: the three-level model with the t test (the headline knha maps to t)
META_T = meta_settings("REML", "knha")


def assert_refit_equal(inf, u, direct):
    np.testing.assert_allclose(inf.sigma2_del[u], direct.sigma2, rtol=REFIT_RTOL, atol=REFIT_ATOL)
    np.testing.assert_allclose(inf.beta_del[u], direct.beta, rtol=REFIT_RTOL, atol=REFIT_ATOL)
    np.testing.assert_allclose(inf.vb_del[u], direct.vb, rtol=REFIT_RTOL, atol=REFIT_ATOL)
    for mine, theirs in ((inf.loo_ci_lb, direct.ci_lb), (inf.loo_ci_ub, direct.ci_ub), (inf.loo_pval, direct.pval)):
        np.testing.assert_allclose(mine[u], theirs[0], rtol=REFIT_RTOL, atol=REFIT_ATOL)


def test_table_and_figure(tmp_path, kon):
    yi, vi, cl, _ = kon
    studies = tmp_path / "studies.csv"
    pd.DataFrame({"study": [f"s{i}" for i in range(yi.size)], "yi": yi, "vi": vi, "study_id": cl}).to_csv(
        studies, index=False
    )
    table, pdf, png = tmp_path / "t.csv", tmp_path / "f.pdf", tmp_path / "f.png"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        write_influence_multilevel(studies, table, pdf, png, dataset=Dataset("kon_synthetic", True), meta=META_T)
    out = pd.read_csv(table)
    assert tuple(out.columns) == INFLUENCE_MULTILEVEL_COLUMNS
    assert list(out["study_id"]) == list(pd.unique(cl))
    fit = three_level(yi, vi, cl.astype(str), test="t")
    expected = influence_multilevel_table(fit, multilevel_influence(fit))
    np.testing.assert_allclose(out["loo_ci_lb"], expected["loo_ci_lb"], rtol=1e-15)
    np.testing.assert_allclose(out["rstudent_pval"], expected["rstudent_pval"], rtol=1e-15)
    assert pdf.stat().st_size > 0 and png.stat().st_size > 0
    with pytest.raises(ValueError, match="lacks column"):
        write_influence_multilevel(tmp_path / "t.csv", table, pdf, png, dataset=Dataset("x", False), meta=META_T)

