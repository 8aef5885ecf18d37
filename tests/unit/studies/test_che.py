"""Unit tests of the CHE working model: the O(k) Woodbury algebra against dense k x k matrices, reductions
(rho = 0 is the three-level model, one effect per study is rma.uni), invariances, CR2 and its Satterthwaite df
against a dense implementation of their definitions, the che.csv table and input errors."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import linalg, stats

from alliancemeta.studies.multilevel.che import (
    CHE_COLUMNS,
    CHE_EXTRA_COLUMNS,
    _CorrelatedHierarchical,
    che_fit,
    che_loglik,
    che_table,
    robust_cr2_che,
    vcalc_dense,
)
from alliancemeta.studies.multilevel.clusters import group_clusters
from alliancemeta.studies.multilevel.model import three_level
from alliancemeta.studies.multilevel.robust import robust_cr2
from alliancemeta.studies.random_effects import random_effects

#: Dense and O(k) versions of the same formula differ only by round-off.
TIGHT = 1e-10


def simulate(n_clusters=12, seed=1, rho=0.5, moderator=False, shuffle=True, max_size=6):
    """Dependent effects with correlated sampling errors, string labels, unsorted rows, unequal study sizes."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, max_size, n_clusters)
    sizes[0] = 1
    codes = np.repeat(np.arange(n_clusters), sizes)
    cluster = np.array([f"s{j:02d}" for j in codes])
    k = codes.size
    vi = 1.0 / (rng.integers(30, 250, k) - 3.0)
    x = rng.normal(size=k)
    V = vcalc_dense(vi, cluster, rho)
    err = np.linalg.cholesky(V) @ rng.normal(size=k)
    yi = 0.3 + (0.1 * x if moderator else 0) + rng.normal(0, 0.12, n_clusters)[codes] + rng.normal(0, 0.08, k) + err
    X = np.column_stack([np.ones(k), x]) if moderator else None
    if shuffle:
        perm = rng.permutation(k)
        cluster, vi, yi, x = cluster[perm], vi[perm], yi[perm], x[perm]
        X = None if X is None else X[perm]
    return yi, vi, cluster, X


def dense_V(vi, cluster, rho, sigma2):
    Z = (np.asarray(cluster)[:, None] == np.unique(cluster)[None, :]).astype(float)
    return vcalc_dense(vi, cluster, rho) + sigma2[0] * Z @ Z.T + sigma2[1] * np.eye(vi.size), Z


def dense_reml(yi, vi, cluster, X, rho, sigma2):
    """Restricted log-likelihood, GLS and the Harville derivatives from k x k matrices."""
    X = np.ones((yi.size, 1)) if X is None else X
    k, p = X.shape
    V, Z = dense_V(vi, cluster, rho, sigma2)
    Vi = np.linalg.inv(V)
    F = X.T @ Vi @ X
    beta = np.linalg.solve(F, X.T @ Vi @ yi)
    r = yi - X @ beta
    ll = (
        -0.5 * (k - p) * np.log(2 * np.pi)
        + 0.5 * np.linalg.slogdet(X.T @ X)[1]
        - 0.5 * np.linalg.slogdet(V)[1]
        - 0.5 * np.linalg.slogdet(F)[1]
        - 0.5 * r @ Vi @ r
    )
    P = Vi - Vi @ X @ np.linalg.solve(F, X.T @ Vi)
    Py = P @ yi
    Vr = [Z @ Z.T, np.eye(k)]
    grad = np.array([-0.5 * np.trace(P @ A) + 0.5 * Py @ A @ Py for A in Vr])
    fisher = np.array([[0.5 * np.trace(P @ A @ P @ B) for B in Vr] for A in Vr])
    observed = np.array([[Py @ A @ P @ B @ Py for B in Vr] for A in Vr]) - fisher
    return ll, beta, np.linalg.inv(F), grad, fisher, observed


def dense_cr2(fit):
    """CR2 (Pustejovsky & Tipton 2018, eq. 7, general form with (I - H)Phi(I - H)') and the Satterthwaite df
    of every coefficient as 2 E[V]^2 / Var[V] under the working model (Bell & McCaffrey 2002)."""
    yi, X, cluster = fit.yi, fit.X, fit.clusters.labels[fit.clusters.codes]
    k, p = X.shape
    Phi, _ = dense_V(fit.vi, cluster, fit.rho, fit.sigma2)
    W = np.linalg.inv(Phi)
    M = np.linalg.inv(X.T @ W @ X)
    IH = np.eye(k) - X @ M @ X.T @ W
    e = yi - X @ fit.beta
    meat = np.zeros((p, p))
    g_rows = []  # per cluster: rows of the p x k matrix mapping y to the cluster's contribution
    for lab in dict.fromkeys(cluster):
        idx = np.flatnonzero(cluster == lab)
        D = np.linalg.cholesky(Phi[np.ix_(idx, idx)]).T  # upper: Phi_j = D'D
        B = D @ (IH @ Phi @ IH.T)[np.ix_(idx, idx)] @ D.T
        A = D.T @ np.real(linalg.inv(linalg.sqrtm(B))) @ D
        E = X[idx].T @ W[np.ix_(idx, idx)] @ A
        meat += np.outer(E @ e[idx], E @ e[idx])
        g_rows.append(M @ E @ IH[idx])  # (p, k): c'g_j'y is cluster j's part of c'(beta-hat - beta)
    vb = M @ meat @ M
    df = []
    for i in range(p):
        G = np.array([g[i] for g in g_rows])  # (J, k)
        S = G @ Phi @ G.T
        df.append(np.trace(S) ** 2 / np.sum(S * S))
    return vb, np.array(df)


# --------------------------------------------------------------------------------------------------
# the covariance and the likelihood algebra
# --------------------------------------------------------------------------------------------------


def test_vcalc_dense_structure():
    vi = np.array([0.04, 0.09, 0.01, 0.16])
    V = vcalc_dense(vi, ["a", "a", "b", "a"], 0.5)
    np.testing.assert_allclose(np.diag(V), vi)
    assert V[0, 1] == pytest.approx(0.5 * 0.2 * 0.3) and V[0, 3] == pytest.approx(0.5 * 0.2 * 0.4)
    assert V[0, 2] == 0 and V[2, 3] == 0
    np.testing.assert_array_equal(V, V.T)


@pytest.mark.parametrize("moderator", [False, True])
@pytest.mark.parametrize("rho", [0.0, 0.3, 0.9])
@pytest.mark.parametrize("sigma2", [(0.02, 0.01), (0.0, 0.03), (0.05, 0.0), (0.0, 0.0), (1.3, 0.4)])
def test_likelihood_and_derivatives_match_dense(moderator, rho, sigma2):
    yi, vi, cluster, X = simulate(moderator=moderator, rho=rho)
    Xd = np.ones((yi.size, 1)) if X is None else X
    g = group_clusters(cluster)
    ev = _CorrelatedHierarchical(yi, vi, Xd, g, rho).evaluate(np.array(sigma2), derivatives=True)
    o = g.order  # the engine works in cluster-sorted order; the dense reference in the same order
    ll, beta, vb, grad, fisher, observed = dense_reml(yi[o], vi[o], cluster[o], Xd[o], rho, np.array(sigma2))
    np.testing.assert_allclose(ev.loglik, ll, rtol=TIGHT)
    np.testing.assert_allclose(ev.beta, beta, rtol=TIGHT)
    np.testing.assert_allclose(ev.vb, vb, rtol=TIGHT)
    scale = np.max(np.abs(fisher))
    pairs = (("grad", ev.grad, grad), ("fisher", ev.fisher, fisher), ("observed", ev.observed, observed))
    for name, ours, ref in pairs:
        np.testing.assert_allclose(ours, ref, rtol=1e-9, atol=TIGHT * scale, err_msg=name)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), rho=st.floats(0.0, 0.95), s_s=st.floats(0.0, 0.2), s_w=st.floats(0.0, 0.2))
def test_loglik_matches_dense_for_random_data(seed, rho, s_s, s_w):
    yi, vi, cluster, _ = simulate(n_clusters=8, seed=seed, rho=rho)
    fit_data = _CorrelatedHierarchical(yi, vi, np.ones((yi.size, 1)), group_clusters(cluster), rho)
    ll = fit_data.evaluate(np.array([s_s, s_w])).loglik
    np.testing.assert_allclose(ll, dense_reml(yi, vi, cluster, None, rho, (s_s, s_w))[0], rtol=1e-9)


def test_fit_is_the_reml_maximum():
    yi, vi, cluster, X = simulate(n_clusters=30, seed=7, moderator=True, rho=0.6)
    fit = che_fit(yi, vi, cluster, 0.6, X=X)
    assert fit.converged and 0 < fit.iterations < 50 and np.all(fit.sigma2 > 0)
    _, beta, vb, grad, fisher, _ = dense_reml(yi, vi, cluster, X, 0.6, fit.sigma2)
    np.testing.assert_allclose(grad, 0.0, atol=1e-7 * np.max(np.abs(fisher)) * np.max(fit.sigma2))
    np.testing.assert_allclose(fit.beta, beta, rtol=TIGHT)
    np.testing.assert_allclose(fit.vb, vb, rtol=TIGHT)
    for ds in (-1e-3, 1e-3):
        for dw in (-1e-3, 1e-3):
            assert che_loglik(fit, np.maximum(fit.sigma2 + np.array([ds, dw]), 0)) <= fit.loglik


# --------------------------------------------------------------------------------------------------
# reductions and invariances
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("test", ["z", "t"])
def test_rho_zero_is_the_three_level_model(test):
    yi, vi, cluster, X = simulate(n_clusters=20, seed=5, moderator=True)
    a, b = che_fit(yi, vi, cluster, 0.0, X=X, test=test), three_level(yi, vi, cluster, X, test=test)
    for attr in ("sigma2", "beta", "se", "pval", "ci_lb", "ci_ub", "QE", "QM", "QM_pval", "loglik"):
        np.testing.assert_allclose(getattr(a, attr), getattr(b, attr), rtol=1e-9, atol=1e-14, err_msg=attr)
    ra, rb = robust_cr2_che(a), robust_cr2(b)
    for attr in ("se", "df", "pval", "ci_lb", "QM", "QM_pval"):
        np.testing.assert_allclose(getattr(ra, attr), getattr(rb, attr), rtol=1e-9, err_msg=attr)


def test_one_effect_per_study_is_rma_uni_whatever_rho():
    yi, vi, _, _ = simulate(n_clusters=30, seed=3)
    uni = random_effects(yi, vi, method="REML")
    for rho in (0.2, 0.8):
        with pytest.warns(UserWarning, match="not separately identified"):
            fit = che_fit(yi, vi, np.arange(yi.size), rho)
        np.testing.assert_allclose(np.sum(fit.sigma2), uni.tau2, rtol=1e-9)
        np.testing.assert_allclose(fit.beta, uni.beta, rtol=1e-9)
        np.testing.assert_allclose(fit.se, uni.se, rtol=1e-8)


def test_row_order_and_labels_do_not_matter():
    yi, vi, cluster, X = simulate(n_clusters=20, seed=11, moderator=True, shuffle=False)
    perm = np.random.default_rng(0).permutation(yi.size)
    relabel = np.array([f"study {c}" for c in cluster])
    a = che_fit(yi, vi, cluster, 0.5, X=X, test="t")
    b = che_fit(yi[perm], vi[perm], relabel[perm], 0.5, X=X[perm], test="t")
    for attr in ("sigma2", "beta", "se", "pval", "QE", "loglik"):
        np.testing.assert_allclose(getattr(a, attr), getattr(b, attr), rtol=1e-9, err_msg=attr)
    ra, rb = robust_cr2_che(a), robust_cr2_che(b)
    for attr in ("se", "df", "pval", "QM"):
        np.testing.assert_allclose(getattr(ra, attr), getattr(rb, attr), rtol=1e-9, err_msg=attr)


def test_fixed_sigma2_and_boundary():
    yi, vi, cluster, _ = simulate(n_clusters=15, seed=2)
    fixed = che_fit(yi, vi, cluster, 0.5, sigma2=(0.01, 0.0))
    np.testing.assert_array_equal(fixed.sigma2, [0.01, 0.0])
    np.testing.assert_allclose(fixed.loglik, dense_reml(yi, vi, cluster, None, 0.5, (0.01, 0.0))[0], rtol=TIGHT)
    half = che_fit(yi, vi, cluster, 0.5, sigma2=(None, 0.0))
    assert half.sigma2[1] == 0.0 and half.loglik >= che_loglik(half, (half.sigma2[0] * 1.01, 0.0))


def test_higher_rho_moves_variance_out_of_the_study_component():
    """With more sampling covariance assumed within studies, less of the shared study-level spread is left
    for sigma2_study (Pustejovsky & Tipton 2022, section 5)."""
    yi, vi, cluster, _ = simulate(n_clusters=40, seed=9, rho=0.5)
    s_study = [che_fit(yi, vi, cluster, rho).sigma2_study for rho in (0.0, 0.4, 0.8)]
    assert s_study[0] >= s_study[1] >= s_study[2]


# --------------------------------------------------------------------------------------------------
# CR2
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("moderator", [False, True])
@pytest.mark.parametrize("rho", [0.2, 0.8])
def test_cr2_matches_dense_definition(moderator, rho):
    yi, vi, cluster, X = simulate(n_clusters=14, seed=21, moderator=moderator, rho=rho)
    fit = che_fit(yi, vi, cluster, rho, X=X)
    rob = robust_cr2_che(fit)
    vb, df = dense_cr2(fit)
    np.testing.assert_allclose(rob.vb, vb, rtol=1e-9)
    np.testing.assert_allclose(rob.df, df, rtol=1e-8)
    np.testing.assert_allclose(rob.ci_ub - rob.ci_lb, 2 * rob.se * stats.t.ppf(0.975, df), rtol=1e-8)


def test_cr2_intercept_only_qm_is_t_squared():
    yi, vi, cluster, _ = simulate(n_clusters=14, seed=4)
    rob = robust_cr2_che(che_fit(yi, vi, cluster, 0.5))
    np.testing.assert_allclose(rob.QM, rob.stat[0] ** 2)
    np.testing.assert_allclose(rob.QM_pval, rob.pval[0])


# --------------------------------------------------------------------------------------------------
# the table and errors
# --------------------------------------------------------------------------------------------------


def frame_of(yi, vi, cluster):
    return pd.DataFrame({"study": [f"e{i}" for i in range(yi.size)], "study_id": cluster, "yi": yi, "vi": vi})


def test_che_table_contract():
    yi, vi, cluster, _ = simulate(n_clusters=16, seed=8)
    table = che_table(frame_of(yi, vi, cluster), rhos=(0.2, 0.5, 0.8), level=0.9)
    assert tuple(table.columns) == (*CHE_COLUMNS, *CHE_EXTRA_COLUMNS)
    assert list(table["rho"]) == [0.2] * 3 + [0.5] * 3 + [0.8] * 3
    assert list(table["test"]) == ["z", "t", "cr2"] * 3
    assert (table["note"] == "").all()
    row = table.iloc[4]  # rho 0.5, t
    fit = che_fit(yi, vi, cluster, 0.5, test="t", level=0.9)
    np.testing.assert_allclose(
        row[["estimate", "se", "stat", "pval", "ci_lb", "ci_ub"]].to_numpy(float),
        [fit.beta[0], fit.se[0], fit.stat[0], fit.pval[0], fit.ci_lb[0], fit.ci_ub[0]],
    )
    assert row["df"] == yi.size - 1 and np.isnan(table.iloc[3]["df"])
    np.testing.assert_allclose(table["r"], np.tanh(table["estimate"]))
    cr2 = table.iloc[5]
    rob = robust_cr2_che(che_fit(yi, vi, cluster, 0.5, level=0.9))
    np.testing.assert_allclose([cr2["se"], cr2["df"], cr2["pval"]], [rob.se[0], rob.df[0], rob.pval[0]])
    # the three tests share the fit
    assert table.groupby("rho")[["estimate", "sigma2_study", "sigma2_within"]].nunique().eq(1).all().all()


def test_che_table_reports_an_unestimable_model_as_nan_rows():
    frame = pd.DataFrame({"study_id": ["a"] * 4, "yi": [0.1, 0.2, 0.3, 0.25], "vi": [0.01] * 4})
    table = che_table(frame, rhos=(0.5,))
    assert len(table) == 3 and table["estimate"].isna().all()
    assert table["note"].str.contains("rho = 0.5").all() and table["note"].str.contains("2 clusters").all()


def test_che_table_is_deterministic():
    yi, vi, cluster, _ = simulate(n_clusters=16, seed=8)
    a = che_table(frame_of(yi, vi, cluster), (0.2, 0.5, 0.8))
    b = che_table(frame_of(yi, vi, cluster), (0.2, 0.5, 0.8))
    pd.testing.assert_frame_equal(a, b)


@pytest.mark.parametrize("rho", [-0.1, 1.0, np.nan])
def test_invalid_rho(rho):
    yi, vi, cluster, _ = simulate()
    with pytest.raises(ValueError, match="rho must lie in"):
        che_fit(yi, vi, cluster, rho)


def test_input_errors():
    yi, vi, cluster, _ = simulate()
    with pytest.raises(ValueError, match="unknown test"):
        che_fit(yi, vi, cluster, 0.5, test="knha")
    with pytest.raises(ValueError, match="lacks column"):
        che_table(pd.DataFrame({"yi": yi, "vi": vi}), (0.5,))
    with pytest.raises(ValueError, match="unknown CHE test"):
        che_table(frame_of(yi, vi, cluster), (0.5,), tests=("z", "hc0"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        che_fit(yi, vi, cluster, 0.5)  # no warning for an ordinary fit


def test_che_table_notes_a_fit_warning():
    yi, vi, _, _ = simulate(n_clusters=20, seed=3)
    table = che_table(frame_of(yi, vi, np.arange(yi.size)), rhos=(0.5,))
    assert table["estimate"].notna().all()
    assert table["note"].str.contains("not separately identified").all()
