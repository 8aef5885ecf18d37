"""Vectorised leave-one-out diagnostics against k full refits with the engine.

The brief's contract: every leave-one-out and influence quantity equals refitting
``random_effects`` on the data without effect size i, to a relative 1e-9, for every estimator.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from alliancemeta.core.effects import escalc_cor
from alliancemeta.studies.influence.cumulative import cumul
from alliancemeta.studies.influence.deletions import (
    MAX_POWER,
    SERIES_MAX_RATIO,
    SERIES_MAX_TERMS,
    SERIES_TOL,
    _DeletionSums,
    _features,
    _terms_needed,
    deletion_fits,
)
from alliancemeta.studies.influence.diagnostics import baujat, influence, leave1out
from alliancemeta.studies.random_effects import ESTIMATORS, TAU2_THRESHOLD, random_effects

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


@pytest.mark.parametrize("test", ["z", "knha"])
@pytest.mark.parametrize("method", ESTIMATORS)
def test_molloy_every_estimator_matches_refits(method, test):
    yi, vi, _ = molloy()
    check_against_refits(random_effects(yi, vi, method=method, test=test))


@pytest.mark.parametrize("method", ["REML", "ML", "PM", "DL", "SJ", "HE"])
def test_k300_matches_refits(method):
    """At k = 300 the deletions move tau^2 little, so the power-series path does the work."""
    yi, vi = simulated(300, 7)
    check_against_refits(random_effects(yi, vi, method=method, test="knha"))


@pytest.mark.parametrize("method", ["REML", "PM", "DL", "HE"])
def test_meta_regression_matches_refits(method):
    yi, vi = simulated(40, 3)
    rng = np.random.default_rng(4)
    X = np.column_stack([np.ones(40), rng.normal(size=40), rng.integers(0, 2, 40)])
    check_against_refits(random_effects(yi, vi, X=X, method=method, test="z"))


@settings(max_examples=25, deadline=None)
@given(
    k=st.integers(3, 40),
    seed=st.integers(0, 2**31),
    tau=st.sampled_from([0.0, 0.05, 0.3]),
    method=st.sampled_from(["REML", "ML", "PM", "EB"]),
)
@example(k=19, seed=460, tau=0.0, method="ML")  # Cook's distance at 1.9e-9 relative: see COOKS_RTOL
def test_random_data_match_refits(k, seed, tau, method):
    """Any data, including tau^2 = 0 boundaries and deletions that change tau^2 a lot."""
    yi, vi = simulated(k, seed, tau)
    check_against_refits(random_effects(yi, vi, method=method, test="knha"))


def test_series_and_pairwise_sums_agree():
    """The power series and the exact pairwise sums are two evaluations of the same totals."""
    yi, vi = simulated(500, 11)
    X = np.ones((500, 1))
    F = _features(X, yi - yi.mean())
    sums = _DeletionSums(vi, F, center=0.01)
    rng = np.random.default_rng(0)
    idx = np.arange(500)
    scale = sums.scale
    t = 0.01 + rng.uniform(-1, 1, 500) * SERIES_MAX_RATIO / scale * 0.99
    t = np.maximum(t, 0.0)
    for power in (1, 2, 3):
        series = sums.sums(idx, t, power)
        exact = sums._pairwise(idx, t, power)
        np.testing.assert_allclose(series, exact, rtol=1e-13, atol=1e-13 * np.abs(exact).max())
    np.testing.assert_allclose(
        sums.log_sums(idx, t), np.array([np.sum(np.log(np.delete(vi, i) + t[i])) for i in idx]), rtol=1e-14
    )
    assert sums.series_calls == 3 and sums.exact_rows == 0


def test_far_deletions_use_the_exact_path():
    yi, vi = simulated(20, 5)
    F = _features(np.ones((20, 1)), yi)
    sums = _DeletionSums(vi, F, center=0.0)
    far = np.full(20, 10.0 / sums.scale)
    np.testing.assert_allclose(sums.sums(np.arange(20), far, 2), sums._pairwise(np.arange(20), far, 2), rtol=1e-15)
    assert sums.exact_rows == 20


def test_terms_needed_bounds_the_first_omitted_term():
    from scipy.special import comb

    for q in (1e-6, 0.01, 0.1, SERIES_MAX_RATIO):
        for a in (1, 2, 3):
            M = _terms_needed(q, a)
            assert comb(a + M, M + 1) * q ** (M + 1) <= SERIES_TOL / 2
            if M > 0:
                assert comb(a + M - 1, M) * q**M > SERIES_TOL / 2 * (1 - 1e-12)  # M is minimal
    assert SERIES_MAX_TERMS >= _terms_needed(SERIES_MAX_RATIO, MAX_POWER)


def test_influence_flags_a_planted_outlier():
    yi, vi = simulated(30, 2, tau=0.02)
    yi[4] = 1.5
    inf = influence(random_effects(yi, vi, method="REML", test="knha"))
    assert inf.inf[4]
    assert np.argmax(np.abs(inf.rstudent)) == 4
    assert inf.weight.sum() == pytest.approx(100.0)


def test_baujat_x_sums_to_generalised_q():
    yi, vi, _ = molloy()
    fit = random_effects(yi, vi, method="REML")
    b = baujat(fit)
    w = 1.0 / (vi + fit.tau2)
    assert b.x.sum() == pytest.approx(np.sum(w * (yi - fit.estimate) ** 2), rel=1e-12)
    assert np.all(b.y >= 0)


def test_cumulative_steps_are_fits_of_growing_prefixes():
    yi, vi, year = molloy()
    fit = random_effects(yi, vi, method="REML", test="knha")
    year = year.copy()
    year[3] = np.nan  # missing years go last
    cu = cumul(fit, order=year)
    assert cu.order[-1] == 3
    np.testing.assert_array_equal(cu.order, np.argsort(year, kind="stable"))
    first = random_effects(yi[cu.order[:1]], vi[cu.order[:1]], method="REML", test="z")
    assert cu.se[0] == pytest.approx(first.se[0]) == pytest.approx(np.sqrt(vi[cu.order[0]]))
    j = 9
    f = random_effects(yi[cu.order[: j + 1]], vi[cu.order[: j + 1]], method="REML", test="knha")
    assert (cu.estimate[j], cu.ci_lb[j], cu.tau2[j], cu.I2[j]) == pytest.approx((f.estimate, f.ci_lbs[0], f.tau2, f.I2))
    assert cu.estimate[-1] == pytest.approx(fit.estimate, rel=1e-12)


def test_input_order_without_years():
    yi, vi, _ = molloy()
    cu = cumul(random_effects(yi, vi))
    np.testing.assert_array_equal(cu.order, np.arange(yi.size))


def test_too_few_effects_and_moderators_are_refused():
    yi, vi = simulated(2, 1)
    with pytest.raises(ValueError, match="k > p"):
        deletion_fits(random_effects(yi, vi))
    yi, vi = simulated(10, 1)
    X = np.column_stack([np.ones(10), np.arange(10.0)])
    with pytest.raises(ValueError, match="intercept-only"):
        leave1out(random_effects(yi, vi, X=X))
    with pytest.raises(ValueError, match="intercept-only"):
        cumul(random_effects(yi, vi, X=X))


