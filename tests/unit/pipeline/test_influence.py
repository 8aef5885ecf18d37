"""Vectorised leave-one-out diagnostics against k full refits with the engine.

The brief's contract: every leave-one-out and influence quantity equals refitting
``random_effects`` on the data without effect size i, to a relative 1e-9, for every estimator.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from alliancemeta.core.effects import escalc_cor
from alliancemeta.core.seeds import derive_seed
from alliancemeta.core.settings import Dataset
from alliancemeta.pipeline.influence import FIGURES, write_gosh, write_influence, write_influence_figures
from alliancemeta.studies.gosh import gosh
from alliancemeta.studies.influence.deletions import (
    deletion_fits,
)
from alliancemeta.studies.influence.diagnostics import influence, leave1out
from alliancemeta.studies.random_effects import TAU2_THRESHOLD, random_effects
from tests.unit.pipeline.settings import meta_settings

ROOT = __import__("pathlib").Path(__file__).resolve().parents[3]

#: Agreement with full refits.  Both sides solve for tau^2 to near machine precision, but the
#: engine's Fisher scoring may stop once tau^2 changes by less than TAU2_THRESHOLD = 1e-12
#: (absolute), i.e. ~1e-10 relative for tau^2 ~ 0.01; 1e-9 leaves a margin of ten.
REFIT_RTOL = 1e-9
#: Absolute floor on tau^2 and what moves with it: ten times the engine's stopping threshold on
#: tau^2 changes (so a boundary tau^2 = 0 approached in steps may read ~1e-13), scaled by 1/vt for
#: I^2 and H^2, which divide tau^2 by the typical within-study variance vt.
REFIT_ATOL = 10 * TAU2_THRESHOLD
#: Cook's distance squares dfb = beta - beta_(-i), a difference of two nearly equal numbers: the ~1e-12
#: relative agreement of the betas becomes ~1e-12 |beta| / |dfb| in dfb (seen: 1.9e-9 relative on a
#: deletion that moves beta by 1e-3 of its value), so it is compared at 1e-7.
COOKS_RTOL = 1e-7


def molloy():
    d = pd.read_csv(ROOT / "data/raw/molloy2014.csv")
    es = escalc_cor(d["r"], d["n"])
    return es.yi, es.vi, d["year"].to_numpy(float)


def simulated(k, seed, tau=0.1):
    rng = np.random.default_rng(seed)
    n = rng.integers(15, 400, k)
    vi = 1.0 / (n - 3.0)
    yi = 0.25 + rng.normal(0, tau, k) + rng.normal(0, np.sqrt(vi))
    return yi, vi


def refits(fit):
    """The k deleted fits by brute force."""
    out = []
    for i in range(fit.k):
        keep = np.arange(fit.k) != i
        out.append(
            random_effects(fit.yi[keep], fit.vi[keep], X=fit.X[keep], method=fit.method, test=fit.test, level=fit.level)
        )
    return out


def check_against_refits(fit):
    d = deletion_fits(fit)
    ref = refits(fit)

    def close(mine, theirs, what, atol=REFIT_ATOL, rtol=REFIT_RTOL):
        np.testing.assert_allclose(
            mine, np.array(theirs), rtol=rtol, atol=atol, err_msg=f"{fit.method}/{fit.test}: {what}"
        )

    close(d.tau2, [r.tau2 for r in ref], "tau2")
    close(d.beta, [r.beta for r in ref], "beta")
    close(d.vb, [r.vb for r in ref], "vb")
    close(d.QE, [r.QE for r in ref], "QE")
    close(d.s2w, [r.s2w for r in ref], "s2w")
    if fit.p == 1:
        loo = leave1out(fit, d)
        close(loo.estimate, [r.estimate for r in ref], "estimate")
        close(loo.se, [r.se[0] for r in ref], "se")
        close(loo.ci_lb, [r.ci_lbs[0] for r in ref], "ci_lb")
        close(loo.ci_ub, [r.ci_ubs[0] for r in ref], "ci_ub")
        close(loo.pval, [r.pvals[0] for r in ref], "pval")
        # I2 and H2 scale tau^2 by 1/vt, and so does the absolute floor on tau^2
        close(loo.I2, [r.I2 for r in ref], "I2", atol=100 * REFIT_ATOL / d.vt.min())
        close(loo.H2, [r.H2 for r in ref], "H2", atol=REFIT_ATOL / d.vt.min())
        close(loo.Qp, [r.QE_pval for r in ref], "Q p-value")
    # influence measures from the refits, written out from their definitions
    inf = influence(fit, d)
    X = fit.X
    dfb = np.array([fit.beta - r.beta for r in ref])
    cooks = np.einsum("ni,ij,nj->n", dfb, np.linalg.inv(fit.vb), dfb)
    close(inf.cooks_distance, cooks, "Cook's distance", rtol=COOKS_RTOL)
    close(inf.cov_ratio, [np.linalg.det(r.vb) / np.linalg.det(fit.vb) for r in ref], "COVRATIO")
    delpred = np.array([X[i] @ r.beta for i, r in enumerate(ref)])
    vdel = np.array([X[i] @ r.vb @ X[i] for i, r in enumerate(ref)])
    s2w = np.array([r.s2w for r in ref])
    t2 = np.array([r.tau2 for r in ref])
    close(inf.rstudent, (fit.yi - delpred) / np.sqrt(fit.vi * s2w + vdel + t2 * s2w), "rstudent")


def test_write_influence_tables(tmp_path):
    yi, vi, year = molloy()
    studies = tmp_path / "studies.csv"
    pd.DataFrame({"study": [f"s{i}" for i in range(yi.size)], "yi": yi, "vi": vi, "year": year}).to_csv(
        studies, index=False
    )
    paths = [tmp_path / f"{n}.csv" for n in ("influence", "cumulative", "baujat")]
    write_influence(studies, *paths, meta_settings("REML", "knha"))
    table = pd.read_csv(paths[0])
    assert list(table.columns[:15]) == [
        "study", "rstudent", "dffits", "cooks_distance", "cov_ratio", "tau2_del", "QE_del", "hat", "weight",
        "loo_estimate", "loo_se", "loo_ci_lb", "loo_ci_ub", "loo_tau2", "loo_I2",
    ]  # fmt: skip
    assert len(table) == yi.size and table["weight"].sum() == pytest.approx(100)
    cumulative = pd.read_csv(paths[1])
    assert (cumulative["order_by"] == "year").all() and cumulative["order_value"].is_monotonic_increasing
    # without years the table says so
    pd.DataFrame({"study": [f"s{i}" for i in range(yi.size)], "yi": yi, "vi": vi}).to_csv(studies, index=False)
    write_influence(studies, *paths, meta_settings("DL", "z"))
    assert (pd.read_csv(paths[1])["order_by"] == "input").all()
    assert list(pd.read_csv(paths[2]).columns) == ["study", "x", "y"]


def test_write_influence_with_two_effect_sizes_logs_and_writes_nan(tmp_path, caplog):
    studies = tmp_path / "studies.csv"
    pd.DataFrame({"study": ["a", "b"], "yi": [0.2, 0.4], "vi": [0.01, 0.02], "year": [2001, 2000]}).to_csv(
        studies, index=False
    )
    paths = [tmp_path / f"{n}.csv" for n in ("influence", "cumulative", "baujat")]
    with caplog.at_level("WARNING", logger="alliancemeta.pipeline.influence"):
        write_influence(studies, *paths, meta_settings("REML", "knha"))
    assert "not computed" in caplog.text and "k > p + 1" in caplog.text
    table = pd.read_csv(paths[0])
    assert table["rstudent"].isna().all() and table["weight"].sum() == pytest.approx(100)
    assert list(pd.read_csv(paths[1])["study"]) == ["b", "a"]  # by year
    assert pd.read_csv(paths[2])["y"].isna().all()


def test_influence_figures_are_written_and_reproducible(tmp_path):
    yi, vi, year = molloy()
    studies = tmp_path / "studies.csv"
    pd.DataFrame({"study": [f"s{i}" for i in range(yi.size)], "yi": yi, "vi": vi, "year": year}).to_csv(
        studies, index=False
    )
    meta = meta_settings("REML", "knha")
    for folder in ("a", "b"):
        outputs = {n: (tmp_path / folder / f"{n}.pdf", tmp_path / folder / f"{n}.png") for n in FIGURES}
        write_influence_figures(studies, outputs, dataset=Dataset("molloy2014", False), meta=meta)
    for name in FIGURES:
        pdf = tmp_path / "a" / f"{name}.pdf"
        assert pdf.stat().st_size > 1000 and (tmp_path / "a" / f"{name}.png").read_bytes()[:4] == b"\x89PNG", name
        assert pdf.read_bytes() == (tmp_path / "b" / f"{name}.pdf").read_bytes(), f"{name}.pdf differs between runs"


def test_influence_figures_for_two_effect_sizes_say_why(tmp_path):
    studies = tmp_path / "s.csv"
    pd.DataFrame({"study": ["a", "b"], "yi": [0.2, 0.4], "vi": [0.01, 0.02]}).to_csv(studies, index=False)
    outputs = {n: (tmp_path / f"{n}.pdf", tmp_path / f"{n}.png") for n in FIGURES}
    write_influence_figures(studies, outputs, dataset=Dataset("tiny", True),
                            meta=meta_settings("REML", "knha"))
    assert all(pdf.exists() and png.exists() for pdf, png in outputs.values())


def test_write_gosh_all_and_random_subsets_and_one_effect(tmp_path):
    yi, vi = simulated(12, 4)
    studies = tmp_path / "studies.csv"
    pd.DataFrame({"study": [f"s{i}" for i in range(yi.size)], "yi": yi, "vi": vi}).to_csv(studies, index=False)
    meta = meta_settings("DL", "z")._replace(gosh_max_k=12, gosh_subsets=500)
    out = [tmp_path / n for n in ("g.csv", "g.pdf", "g.png")]
    write_gosh(studies, *out, dataset=Dataset("toy", True), meta=meta, seed=3)
    table = pd.read_csv(out[0])
    assert table["model"].tolist() == ["FE"] * 4 + ["DL"] * 4
    assert set(table["subsets"]) == {"all"} and set(table["n_subsets"]) == {2**12 - 1}
    (_fe, dl) = gosh(yi, vi, ("FE", "DL"), max_k=12, subsets=500)
    est = table.set_index(["model", "statistic"]).loc[("DL", "estimate")]
    np.testing.assert_allclose([est["mean"], est["q95"]], [dl.estimate.mean(), np.quantile(dl.estimate, 0.95)])
    assert out[1].read_bytes().startswith(b"%PDF") and out[2].read_bytes().startswith(b"\x89PNG")
    # above gosh_max_k: gosh_subsets random subsets drawn from the seed derived for this dataset
    write_gosh(studies, *out, dataset=Dataset("toy", True), meta=meta._replace(gosh_max_k=11), seed=3)
    table = pd.read_csv(out[0])
    assert set(table["subsets"]) == {"random"} and set(table["n_subsets"]) == {500}
    assert f"(seed {derive_seed(3, 'gosh/toy')})" in table["note"].iloc[0]
    # one effect: rows without values and the reason
    pd.DataFrame({"study": ["a"], "yi": [0.2], "vi": [0.01]}).to_csv(studies, index=False)
    write_gosh(studies, *out, dataset=Dataset("toy", True), meta=meta, seed=3)
    table = pd.read_csv(out[0])
    assert (table["n_subsets"] == 0).all() and table["note"].str.contains("k = 1").all()
