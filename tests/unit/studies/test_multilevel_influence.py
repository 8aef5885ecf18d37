"""Three-level influence diagnostics against direct refits and dense-matrix definitions.

The contract: every deleted fit equals :func:`three_level` on the data without the study (or effect size),
and every diagnostic equals its definition evaluated with dense k x k matrices on a small dataset.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from alliancemeta.core.errors import ConvergenceError
from alliancemeta.studies.multilevel import model as multilevel_model
from alliancemeta.studies.multilevel.influence import multilevel_influence, multilevel_influence_at
from alliancemeta.studies.multilevel.model import three_level

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


def assert_refit_equal(inf, u, direct):
    np.testing.assert_allclose(inf.sigma2_del[u], direct.sigma2, rtol=REFIT_RTOL, atol=REFIT_ATOL)
    np.testing.assert_allclose(inf.beta_del[u], direct.beta, rtol=REFIT_RTOL, atol=REFIT_ATOL)
    np.testing.assert_allclose(inf.vb_del[u], direct.vb, rtol=REFIT_RTOL, atol=REFIT_ATOL)
    for mine, theirs in ((inf.loo_ci_lb, direct.ci_lb), (inf.loo_ci_ub, direct.ci_ub), (inf.loo_pval, direct.pval)):
        np.testing.assert_allclose(mine[u], theirs[0], rtol=REFIT_RTOL, atol=REFIT_ATOL)


@pytest.mark.parametrize("test", ["z", "t"])
def test_study_deletions_equal_direct_fits(kon, test):
    yi, vi, cl, _ = kon
    fit = three_level(yi, vi, cl, test=test)
    inf = multilevel_influence(fit)
    assert list(inf.units) == list(pd.unique(cl))
    assert inf.iterations.min() >= 1
    for u, label in enumerate(inf.units):
        keep = cl != label
        assert inf.k[u] == np.sum(~keep)
        assert_refit_equal(inf, u, three_level(yi[keep], vi[keep], cl[keep], test=test))


def test_study_deletions_with_moderator_equal_direct_fits(crede):
    yi, vi, cl, X = crede
    fit = three_level(yi, vi, cl, X=X, test="t")
    inf = multilevel_influence(fit)
    for u in range(0, inf.units.size, 7):  # every 7th of the 68 studies keeps the test fast
        keep = cl != inf.units[u]
        assert_refit_equal(inf, u, three_level(yi[keep], vi[keep], cl[keep], X=X[keep], test="t"))


def test_effect_deletions_equal_direct_fits(kon):
    yi, vi, cl, _ = kon
    fit = three_level(yi, vi, cl)
    inf = multilevel_influence(fit, "effect")
    assert np.all(inf.k == 1)
    for i in range(0, fit.k, 5):
        keep = np.arange(fit.k) != i
        assert_refit_equal(inf, i, three_level(yi[keep], vi[keep], cl[keep]))


# --------------------------------------------------------------------------------------------------
# the diagnostics against dense-matrix definitions
# --------------------------------------------------------------------------------------------------


def dense_V(vi, cl, sigma2):
    same = (cl[:, None] == cl[None, :]).astype(float)
    return np.diag(vi + sigma2[1]) + sigma2[0] * same


def dense_gls(yi, vi, cl, X, sigma2):
    Vinv = np.linalg.inv(dense_V(vi, cl, sigma2))
    vb = np.linalg.inv(X.T @ Vinv @ X)
    return vb @ X.T @ Vinv @ yi, vb, Vinv


@pytest.mark.parametrize("level", ["study", "effect"])
def test_diagnostics_match_dense_definitions(kon, level):
    yi, vi, cl, year = kon
    X = np.column_stack([np.ones(yi.size), year - year.mean()])
    fit = three_level(yi, vi, cl, X=X)
    inf = multilevel_influence(fit, level)
    beta, vb, Vinv = dense_gls(yi, vi, cl, X, fit.sigma2)
    H = X @ vb @ X.T @ Vinv
    np.testing.assert_allclose(inf.hat, np.diag(H), rtol=DENSE_RTOL)
    V = dense_V(vi, cl, fit.sigma2)
    ve = (np.eye(fit.k) - H) @ V @ (np.eye(fit.k) - H).T
    e = yi - X @ beta
    np.testing.assert_allclose(inf.rstandard, e / np.sqrt(np.diag(ve)), rtol=DENSE_RTOL)
    units = [np.flatnonzero(cl == label) for label in inf.units] if level == "study" else [[i] for i in range(fit.k)]
    for u, rows in enumerate(units):
        rows = np.asarray(rows)
        keep = np.ones(fit.k, dtype=bool)
        keep[rows] = False
        s_del = inf.sigma2_del[u]
        b_del, vb_del, _ = dense_gls(yi[keep], vi[keep], cl[keep], X[keep], s_del)
        dfb = fit.beta - b_del
        np.testing.assert_allclose(inf.cooks_distance[u], dfb @ np.linalg.inv(fit.vb) @ dfb, rtol=DENSE_RTOL)
        _, vb_at_del, _ = dense_gls(yi, vi, cl, X, s_del)
        np.testing.assert_allclose(inf.dfbetas[u], dfb / np.sqrt(np.diag(vb_at_del)), rtol=DENSE_RTOL)
        M = dense_V(vi, cl, s_del)[np.ix_(rows, rows)] + X[rows] @ vb_del @ X[rows].T
        r = yi[rows] - X[rows] @ b_del
        np.testing.assert_allclose(inf.rstudent[rows], r / np.sqrt(np.diag(M)), rtol=DENSE_RTOL)
        np.testing.assert_allclose(inf.rstudent_X2[u], r @ np.linalg.solve(M, r), rtol=DENSE_RTOL)
        np.testing.assert_allclose(inf.rstandard_X2[u], e[rows] @ np.linalg.solve(ve[np.ix_(rows, rows)], e[rows]),
                                   rtol=DENSE_RTOL)  # fmt: skip
        np.testing.assert_allclose(inf.hat_unit[u], np.trace(H[np.ix_(rows, rows)]), rtol=DENSE_RTOL)
    assert inf.rstudent_pval == pytest.approx(stats.chi2.sf(inf.rstudent_X2, inf.k))


def test_hat_values_sum_to_p(crede):
    yi, vi, cl, X = crede
    for design in (None, X):
        fit = three_level(yi, vi, cl, X=design)
        inf = multilevel_influence(fit)
        assert inf.hat.sum() == pytest.approx(fit.p, rel=1e-12)
        assert inf.hat_unit.sum() == pytest.approx(fit.p, rel=1e-12)
        assert np.all((inf.hat > 0) & (inf.hat < 1))


def test_row_order_invariance(crede):
    yi, vi, cl, X = crede
    fit = three_level(yi, vi, cl, X=X)
    inf = multilevel_influence(fit)
    perm = np.random.default_rng(20261121).permutation(yi.size)
    inf_p = multilevel_influence(three_level(yi[perm], vi[perm], cl[perm], X=X[perm]))
    where = {label: j for j, label in enumerate(inf_p.units)}
    match = np.array([where[label] for label in inf.units])
    for name in ("cooks_distance", "dfbetas", "rstudent_X2", "rstandard_X2", "hat_unit", "sigma2_del",
                 "loo_estimate", "loo_se", "loo_ci_lb", "loo_ci_ub"):  # fmt: skip
        np.testing.assert_allclose(getattr(inf_p, name)[match], getattr(inf, name), rtol=1e-8, atol=1e-12, err_msg=name)
    for name in ("hat", "rstudent", "rstudent_se", "rstandard", "rstandard_se"):
        np.testing.assert_allclose(getattr(inf_p, name), getattr(inf, name)[perm], rtol=1e-8, atol=1e-12, err_msg=name)


# --------------------------------------------------------------------------------------------------
# options, errors and flags
# --------------------------------------------------------------------------------------------------


def test_reestimate_false_and_fixed_components(kon):
    yi, vi, cl, _ = kon
    fit = three_level(yi, vi, cl)
    inf = multilevel_influence(fit, reestimate=False)
    np.testing.assert_array_equal(inf.sigma2_del, np.tile(fit.sigma2, (inf.units.size, 1)))
    assert np.all(inf.iterations == 0)
    fit0 = three_level(yi, vi, cl, sigma2=(None, 0.0))
    inf0 = multilevel_influence(fit0, fixed=(False, True))
    assert np.all(inf0.sigma2_del[:, 1] == 0.0)
    keep = cl != inf0.units[3]
    assert_refit_equal(inf0, 3, three_level(yi[keep], vi[keep], cl[keep], sigma2=(None, 0.0)))


def test_at_given_sigma2_equals_fixed_refits(kon):
    yi, vi, cl, _ = kon
    fit = three_level(yi, vi, cl)
    est = multilevel_influence(fit)
    at = multilevel_influence_at(fit, est.sigma2_del)
    np.testing.assert_allclose(at.cooks_distance, est.cooks_distance, rtol=1e-12)
    np.testing.assert_allclose(at.rstudent_X2, est.rstudent_X2, rtol=1e-12)
    with pytest.raises(ValueError, match="sigma2_del must be"):
        multilevel_influence_at(fit, est.sigma2_del[:-1])


def test_fewer_than_three_studies_is_an_error():
    yi = np.array([0.1, 0.3, 0.2, 0.5, 0.4])
    vi = np.full(5, 0.02)
    fit = three_level(yi, vi, ["a", "a", "a", "b", "b"])
    with pytest.raises(ValueError, match="at least 3 studies; got 2"):
        multilevel_influence(fit)
    with pytest.raises(ValueError, match="unknown deletion level"):
        multilevel_influence(three_level(yi, vi, ["a", "a", "b", "b", "c"]), level="cluster")


def test_failed_refit_names_the_study(kon, monkeypatch):
    yi, vi, cl, _ = kon
    fit = three_level(yi, vi, cl)
    monkeypatch.setattr(multilevel_model, "MAX_ITER", 0)  # _maximise_reml reads it from its own module
    with pytest.raises(ConvergenceError, match="without study 11 did not converge"):
        multilevel_influence(fit)


def test_inestimable_deletion_gives_nan_with_warning(kon):
    yi, vi, cl, _ = kon
    X = np.column_stack([np.ones(yi.size), (cl == cl[0]).astype(float)])  # a moderator only study 11 has
    fit = three_level(yi, vi, cl, X=X)
    with pytest.warns(UserWarning, match="deleting study 11: a coefficient is no longer estimable"):
        inf = multilevel_influence(fit)
    assert np.isnan(inf.cooks_distance[0]) and np.isnan(inf.loo_estimate[0])
    # the study alone determines the moderator: its leverage is at least 1, and the hat rule flags it
    assert inf.hat_unit[0] >= 1.0 > inf.hat_cutoff and inf.influential[0]
    assert np.all(np.isfinite(inf.cooks_distance[1:]))
    assert np.isfinite(inf.rstandard_X2[1:]).all()


def test_an_outlying_heavy_study_is_flagged(kon):
    yi, vi, cl, _ = kon
    yi, vi = yi.copy(), vi.copy()
    heavy = cl == cl[-1]
    yi[heavy] += 1.5
    vi[heavy] /= 20.0
    fit = three_level(yi, vi, cl)
    inf = multilevel_influence(fit)
    u = list(inf.units).index(cl[-1])
    assert inf.influential[u]
    assert inf.cooks_distance[u] > inf.cooks_cutoff == pytest.approx(stats.chi2.ppf(0.5, 1))
    rule = (inf.cooks_distance > inf.cooks_cutoff) | (np.abs(inf.dfbetas[:, 0]) > 1) | (inf.hat_unit > 3 / 11)
    np.testing.assert_array_equal(inf.influential, rule)


