"""Unit tests of the three-level engine: the O(k) algebra against dense matrices, reductions to
``rma.uni``, invariances, boundary estimates, CR2 against a dense implementation of its definition,
aggregation, the pipeline table and input errors."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import linalg

from alliancemeta.studies.multilevel.aggregate import aggregate_within_studies
from alliancemeta.studies.multilevel.clusters import group_clusters
from alliancemeta.studies.multilevel.model import ThreeLevelREML, reml_loglik, three_level
from alliancemeta.studies.multilevel.robust import robust_cr2
from alliancemeta.studies.random_effects import random_effects

#: Dense and O(k) versions of the same formula differ only by round-off.
TIGHT = 1e-10


def simulate(n_clusters=12, seed=1, sigma_study=0.15, sigma_within=0.08, moderator=False, shuffle=True):
    """A small three-level dataset with string cluster labels, unsorted rows and unequal cluster sizes."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 5, n_clusters)
    sizes[0] = 1
    cluster = np.repeat([f"s{j:02d}" for j in range(n_clusters)], sizes)
    k = cluster.size
    n = rng.integers(30, 250, k)
    vi = 1.0 / (n - 3.0)
    x = rng.normal(size=k)
    u = rng.normal(0, sigma_study, n_clusters)
    codes = np.repeat(np.arange(n_clusters), sizes)
    yi = 0.3 + (0.1 * x if moderator else 0) + u[codes] + rng.normal(0, sigma_within, k) + rng.normal(0, np.sqrt(vi))
    X = np.column_stack([np.ones(k), x]) if moderator else None
    if shuffle:
        perm = rng.permutation(k)
        cluster, vi, yi, x = cluster[perm], vi[perm], yi[perm], x[perm]
        X = None if X is None else X[perm]
    return yi, vi, cluster, X


# --------------------------------------------------------------------------------------------------
# dense references (k x k matrices), written from the textbook formulas
# --------------------------------------------------------------------------------------------------


def dense_V(vi, cluster, sigma2):
    Z = (np.asarray(cluster)[:, None] == np.unique(cluster)[None, :]).astype(float)
    return np.diag(vi + sigma2[1]) + sigma2[0] * Z @ Z.T, Z


def dense_reml(yi, vi, cluster, X, sigma2):
    X = np.ones((yi.size, 1)) if X is None else X
    k, p = X.shape
    V, Z = dense_V(vi, cluster, sigma2)
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
    Vr = [Z @ Z.T, np.eye(k)]
    Py = P @ yi
    grad = np.array([-0.5 * np.trace(P @ A) + 0.5 * Py @ A @ Py for A in Vr])
    fisher = np.array([[0.5 * np.trace(P @ A @ P @ B) for B in Vr] for A in Vr])
    observed = np.array([[Py @ A @ P @ B @ Py for B in Vr] for A in Vr]) - fisher
    return ll, beta, np.linalg.inv(F), grad, fisher, observed


def dense_cr2(yi, vi, cluster, X, sigma2, beta):
    """CR2 and Satterthwaite P matrices exactly as clubSandwich defines them, cluster by cluster."""
    X = np.ones((yi.size, 1)) if X is None else X
    labels = list(dict.fromkeys(cluster))
    V, _ = dense_V(vi, cluster, sigma2)
    W = np.linalg.inv(V)
    M = np.linalg.inv(X.T @ W @ X)
    e = yi - X @ beta
    meat = 0
    G_list, H_list = [], []
    Lm = np.linalg.cholesky(M)
    for lab in labels:
        idx = np.flatnonzero(np.asarray(cluster) == lab)
        Xj, Tj, Wj = X[idx], V[np.ix_(idx, idx)], W[np.ix_(idx, idx)]
        R = np.linalg.cholesky(Tj).T  # upper, T = R'R
        G = R @ (np.eye(idx.size) - Xj @ M @ Xj.T @ Wj) @ Tj @ R.T
        Aj = R.T @ np.real(linalg.inv(linalg.sqrtm(G))) @ R
        Ej = Xj.T @ Wj @ Aj
        meat = meat + np.outer(Ej @ e[idx], Ej @ e[idx])
        G_list.append(M @ Ej @ R.T)
        H_list.append(M @ Ej @ Xj @ Lm)
    vb = M @ meat @ M
    return vb, G_list, np.stack(H_list, axis=-1)  # H: (p, u, J)


def dense_satterthwaite(c, G_list, H):
    g = np.array([np.sum((c @ G) ** 2) for G in G_list])
    h = np.einsum("i,iuj->uj", c, H)
    P = np.diag(g) - h.T @ h
    return np.trace(P) ** 2 / np.sum(P * P)


# --------------------------------------------------------------------------------------------------
# the likelihood algebra
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("moderator", [False, True])
@pytest.mark.parametrize("sigma2", [(0.02, 0.01), (0.0, 0.03), (0.05, 0.0), (0.0, 0.0), (1.3, 0.4)])
def test_likelihood_and_derivatives_match_dense(moderator, sigma2):
    yi, vi, cluster, X = simulate(moderator=moderator)
    model = ThreeLevelREML(yi, vi, np.ones((yi.size, 1)) if X is None else X, group_clusters(cluster))
    ev = model.evaluate(np.array(sigma2), derivatives=True)
    ll, beta, vb, grad, fisher, observed = dense_reml(yi, vi, cluster, X, np.array(sigma2))
    np.testing.assert_allclose(ev.loglik, ll, rtol=TIGHT)
    np.testing.assert_allclose(ev.beta, beta, rtol=TIGHT)
    np.testing.assert_allclose(ev.vb, vb, rtol=TIGHT)
    scale = np.max(np.abs(fisher))
    np.testing.assert_allclose(ev.grad, grad, rtol=1e-9, atol=TIGHT * scale)
    np.testing.assert_allclose(ev.fisher, fisher, rtol=1e-9, atol=TIGHT * scale)
    np.testing.assert_allclose(ev.observed, observed, rtol=1e-9, atol=TIGHT * scale)


def test_gradient_is_the_derivative_of_the_likelihood():
    yi, vi, cluster, X = simulate(moderator=True, seed=4)
    theta = np.array([0.03, 0.02])
    ev = ThreeLevelREML(yi, vi, X, group_clusters(cluster)).evaluate(theta, derivatives=True)
    h = 1e-6
    for r in range(2):
        e = np.zeros(2)
        e[r] = h
        fd = (reml_loglik((yi, vi, cluster, X), theta + e) - reml_loglik((yi, vi, cluster, X), theta - e)) / (2 * h)
        np.testing.assert_allclose(ev.grad[r], fd, rtol=1e-6)


def test_fit_is_a_stationary_point_of_the_dense_likelihood():
    yi, vi, cluster, X = simulate(n_clusters=25, seed=7, moderator=True)
    fit = three_level(yi, vi, cluster, X)
    assert fit.converged and 0 < fit.iterations < 50
    assert np.all(fit.sigma2 > 0)
    _, beta, vb, grad, fisher, _ = dense_reml(yi, vi, cluster, X, fit.sigma2)
    np.testing.assert_allclose(grad, 0.0, atol=1e-7 * np.max(np.abs(fisher)) * np.max(fit.sigma2))
    np.testing.assert_allclose(fit.beta, beta, rtol=TIGHT)
    np.testing.assert_allclose(fit.vb, vb, rtol=TIGHT)
    # no point on a grid around the optimum is better
    for ds in (-1e-3, 1e-3):
        for dw in (-1e-3, 1e-3):
            cand = np.maximum(fit.sigma2 + np.array([ds, dw]), 0)
            assert reml_loglik(fit, cand) <= fit.loglik


# --------------------------------------------------------------------------------------------------
# reductions, invariances, boundaries
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("test", ["z", "t"])
def test_single_effect_per_cluster_is_rma_uni(test):
    yi, vi, _, _ = simulate(n_clusters=30, seed=3)
    cluster = np.arange(yi.size)
    with pytest.warns(UserWarning, match="not separately identified"):
        fit = three_level(yi, vi, cluster, test=test)
    uni = random_effects(yi, vi, method="REML", test=test)
    np.testing.assert_allclose(np.sum(fit.sigma2), uni.tau2, rtol=1e-9)
    assert fit.sigma2[0] == fit.sigma2[1]
    np.testing.assert_allclose(fit.beta, uni.beta, rtol=1e-9)
    np.testing.assert_allclose(fit.se, uni.se, rtol=1e-8)
    np.testing.assert_allclose(fit.pval, uni.pvals, rtol=1e-7)
    np.testing.assert_allclose(fit.QE, uni.QE, rtol=1e-12)
    np.testing.assert_allclose(fit.I2, uni.I2, rtol=1e-8)
    pm, pu = fit.predict(), uni.predict()
    np.testing.assert_allclose([pm.pi_lb, pm.pi_ub], [pu.pi_lb, pu.pi_ub], rtol=1e-8)


def test_row_order_does_not_matter():
    yi, vi, cluster, X = simulate(n_clusters=20, seed=11, moderator=True, shuffle=False)
    perm = np.random.default_rng(0).permutation(yi.size)
    a = three_level(yi, vi, cluster, X, test="t")
    b = three_level(yi[perm], vi[perm], cluster[perm], X[perm], test="t")
    for attr in ("sigma2", "beta", "se", "pval", "ci_lb", "QE", "loglik", "I2"):
        np.testing.assert_allclose(getattr(a, attr), getattr(b, attr), rtol=1e-9, err_msg=attr)
    ra, rb = robust_cr2(a), robust_cr2(b)
    for attr in ("se", "df", "pval", "QM"):
        np.testing.assert_allclose(getattr(ra, attr), getattr(rb, attr), rtol=1e-9, err_msg=attr)


def test_cluster_labels_only_group():
    yi, vi, cluster, _ = simulate(seed=5)
    relabelled = pd.Series(cluster).map({c: i * 7 for i, c in enumerate(sorted(set(cluster)))}).to_numpy()
    a, b = three_level(yi, vi, cluster), three_level(yi, vi, relabelled)
    np.testing.assert_allclose(a.sigma2, b.sigma2, rtol=1e-12)


def test_boundary_estimates_are_exactly_zero():
    yi, vi, cluster, _ = simulate(n_clusters=15, seed=2)
    # within-study deviations far smaller than the sampling error: sigma2_within at its boundary
    codes = group_clusters(cluster).codes
    means = np.bincount(codes, yi) / np.bincount(codes)
    squeezed = means[codes] + 0.05 * (yi - means[codes])
    fit = three_level(squeezed, vi, cluster)
    assert fit.sigma2_within == 0.0 and fit.sigma2_study > 0
    # and the dense score points out of the feasible region at the boundary (KKT)
    grad = dense_reml(squeezed, vi, cluster, None, fit.sigma2)[3]
    assert grad[1] <= 0
    # identical effects: both components at 0
    flat = three_level(np.full(yi.size, 0.3), vi, cluster)
    assert np.all(flat.sigma2 == 0.0)
    np.testing.assert_allclose(flat.estimate, 0.3, rtol=1e-14)


def test_fixed_variance_components():
    yi, vi, cluster, X = simulate(n_clusters=20, seed=9, moderator=True)
    fit = three_level(yi, vi, cluster, X)
    at = three_level(yi, vi, cluster, X, sigma2=tuple(fit.sigma2))
    assert at.iterations == 0
    np.testing.assert_allclose(at.beta, fit.beta, rtol=1e-13)
    np.testing.assert_allclose(at.loglik, fit.loglik, rtol=1e-13)
    # one component fixed at 0: the other is the one-dimensional REML optimum
    one = three_level(yi, vi, cluster, X, sigma2=(None, 0.0))
    assert one.sigma2_within == 0.0 and one.loglik <= fit.loglik
    grad = dense_reml(yi, vi, cluster, X, one.sigma2)[3]
    np.testing.assert_allclose(grad[0], 0.0, atol=1e-6)
    with pytest.raises(ValueError, match="sigma2 must be"):
        three_level(yi, vi, cluster, X, sigma2=(-0.1, None))


def test_unconverged_fit_raises(monkeypatch):
    import alliancemeta.studies.multilevel.model as ml  # _maximise_reml reads MAX_ITER from its own module

    yi, vi, cluster, X = simulate(n_clusters=20, seed=9, moderator=True)
    monkeypatch.setattr(ml, "MAX_ITER", 1)
    with pytest.raises(ml.ConvergenceError, match="did not converge"):
        ml.three_level(yi, vi, cluster, X)


def test_multilevel_i2_partitions_the_total():
    yi, vi, cluster, X = simulate(n_clusters=20, seed=9, moderator=True)
    fit = three_level(yi, vi, cluster, X)
    np.testing.assert_allclose(fit.I2, fit.I2_study + fit.I2_within, rtol=1e-14)
    W = np.diag(1 / vi)
    P = W - W @ X @ np.linalg.solve(X.T @ W @ X, X.T @ W)
    typical = (fit.k - fit.p) / np.trace(P)
    np.testing.assert_allclose(fit.I2_study, 100 * fit.sigma2[0] / (fit.sigma2.sum() + typical), rtol=1e-12)


def test_t_test_uses_residual_df():
    yi, vi, cluster, X = simulate(n_clusters=20, seed=9, moderator=True)
    fit = three_level(yi, vi, cluster, X, test="t", level=0.9)
    assert fit.ddf == fit.k - 2
    pred = fit.predict([1.0, 0.5])
    from scipy import stats

    crit = stats.t.ppf(0.95, fit.k - 2)
    np.testing.assert_allclose(pred.pi_ub - pred.pred, crit * np.sqrt(pred.se**2 + fit.sigma2.sum()), rtol=1e-12)


# --------------------------------------------------------------------------------------------------
# CR2
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("moderator", [False, True])
def test_cr2_matches_dense_definition(moderator):
    yi, vi, cluster, X = simulate(n_clusters=14, seed=21, moderator=moderator)
    fit = three_level(yi, vi, cluster, X)
    rob = robust_cr2(fit)
    vb, G_list, H = dense_cr2(yi, vi, cluster, X, fit.sigma2, fit.beta)
    np.testing.assert_allclose(rob.vb, vb, rtol=1e-9)
    for i in range(fit.p):
        c = np.eye(fit.p)[i]
        np.testing.assert_allclose(rob.df[i], dense_satterthwaite(c, G_list, H), rtol=1e-9)
    c = np.ones(fit.p) / 2
    np.testing.assert_allclose(rob.satterthwaite_df(c), dense_satterthwaite(c, G_list, H), rtol=1e-9)


def test_htz_with_one_constraint_is_the_satterthwaite_t_test():
    yi, vi, cluster, X = simulate(n_clusters=18, seed=8, moderator=True)
    rob = robust_cr2(three_level(yi, vi, cluster, X))
    F, q, df, pval = rob.wald_test([[0.0, 1.0]])
    assert q == 1
    np.testing.assert_allclose(df, rob.df[1], rtol=1e-10)
    np.testing.assert_allclose(F, rob.stat[1] ** 2, rtol=1e-10)
    np.testing.assert_allclose(pval, rob.pval[1], rtol=1e-9)
    np.testing.assert_allclose(rob.QM, F, rtol=1e-12)


def test_cr2_on_many_clusters():
    rng = np.random.default_rng(0)
    J = 2000
    cluster = np.concatenate([np.arange(J), rng.integers(0, J, 4000)])
    vi = 1 / rng.integers(20, 300, cluster.size)
    yi = 0.3 + rng.normal(0, 0.1, J)[cluster] + rng.normal(0, np.sqrt(vi + 0.003))
    fit = three_level(yi, vi, cluster)
    rob = robust_cr2(fit)
    assert fit.n_clusters == J and rob.n_clusters == J
    assert np.all(np.isfinite(rob.se)) and rob.df[0] > 100


# --------------------------------------------------------------------------------------------------
# aggregation
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rho", [0.0, 0.5, 0.8, -0.2])
def test_aggregate_is_gls_with_compound_symmetry(rho):
    yi, vi, cluster, _ = simulate(seed=13)
    agg = aggregate_within_studies(yi, vi, cluster, rho)
    labels = list(dict.fromkeys(cluster))
    assert agg.yi.size == len(labels)
    for j, lab in enumerate(labels):
        idx = np.flatnonzero(cluster == lab)
        s = np.sqrt(vi[idx])
        V = rho * np.outer(s, s)
        np.fill_diagonal(V, vi[idx])
        W = np.linalg.inv(V)
        np.testing.assert_allclose(agg.vi[j], 1 / W.sum(), rtol=1e-12)
        np.testing.assert_allclose(agg.yi[j], (W @ yi[idx]).sum() / W.sum(), rtol=1e-12)


def test_aggregate_errors():
    yi, vi, cluster, _ = simulate(seed=13)
    with pytest.raises(ValueError, match="not positive definite"):
        aggregate_within_studies(yi, vi, cluster, 1.0)
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        aggregate_within_studies(yi, vi, cluster, 1.5)
    with pytest.raises(ValueError, match="same length"):
        aggregate_within_studies(yi[:-1], vi, cluster, 0.5)
    # rho = 1 is fine when every cluster holds one effect
    agg = aggregate_within_studies([0.1, 0.2], [0.01, 0.02], ["a", "b"], 1.0)
    np.testing.assert_array_equal(agg.yi, [0.1, 0.2])
    np.testing.assert_array_equal(agg.vi, [0.01, 0.02])


# --------------------------------------------------------------------------------------------------
# the pipeline table
# --------------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------------------------------


def test_bad_input():
    yi, vi, cluster, X = simulate(moderator=True)
    with pytest.raises(ValueError, match="different lengths"):
        three_level(yi[:-1], vi, cluster)
    with pytest.raises(ValueError, match="cluster has length"):
        three_level(yi, vi, cluster[:-1])
    with pytest.raises(ValueError, match="at least 2 clusters"):
        three_level(yi, vi, np.zeros(yi.size))
    bad = vi.copy()
    bad[3] = 0.0
    with pytest.raises(ValueError, match=r"vi\[3\] = 0.0"):
        three_level(yi, bad, cluster)
    bad[3] = -0.1
    with pytest.raises(ValueError, match="must be > 0"):
        three_level(yi, bad, cluster)
    nan = yi.copy()
    nan[0] = np.nan
    with pytest.raises(ValueError, match="finite"):
        three_level(nan, vi, cluster)
    missing = cluster.astype(object)
    missing[2] = None
    with pytest.raises(ValueError, match="missing"):
        three_level(yi, vi, missing)
    with pytest.raises(ValueError, match="collinear"):
        three_level(yi, vi, cluster, np.column_stack([X, 2 * X[:, 1]]))
    with pytest.raises(ValueError, match="rows"):
        three_level(yi, vi, cluster, X[:-1])
    with pytest.raises(ValueError, match="unknown test"):
        three_level(yi, vi, cluster, test="knha")


def test_no_warning_for_ordinary_data():
    yi, vi, cluster, _ = simulate(seed=31)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        three_level(yi, vi, cluster)


def test_units_of_the_effect_size_do_not_matter():
    """Rescaling yi by c scales sigma2 by c^2 exactly (the convergence criterion is scale-free)."""
    yi, vi, cluster, _ = simulate(n_clusters=20, seed=19)
    a = three_level(yi, vi, cluster)
    b = three_level(yi * 1e-4, vi * 1e-8, cluster)
    np.testing.assert_allclose(b.sigma2 * 1e8, a.sigma2, rtol=1e-10)
    np.testing.assert_allclose(b.pval, a.pval, rtol=1e-10)
