"""Unit tests of the three-level engine: the O(k) algebra against dense matrices, reductions to
``rma.uni``, invariances, boundary estimates, CR2 against a dense implementation of its definition,
aggregation, the pipeline table and input errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy import linalg

from alliancemeta.pipeline.meta import MULTILEVEL_COLUMNS, multilevel_table, random_effects_table, summary_row
from alliancemeta.studies.multilevel.model import three_level
from alliancemeta.studies.multilevel.robust import robust_cr2
from alliancemeta.studies.random_effects import ESTIMATORS, TESTS, random_effects

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


def test_multilevel_table():
    yi, vi, cluster, _ = simulate(n_clusters=20, seed=17)
    frame = pd.DataFrame({"study": [f"e{i}" for i in range(yi.size)], "study_id": cluster, "yi": yi, "vi": vi})
    table = multilevel_table(frame, level=0.95)
    assert tuple(table.columns[: len(MULTILEVEL_COLUMNS)]) == MULTILEVEL_COLUMNS
    assert list(table["test"]) == ["z", "t", "cr2"]
    fit = three_level(yi, vi, cluster, test="t")
    np.testing.assert_allclose(table["I2"], fit.I2, rtol=1e-15)
    np.testing.assert_allclose(table["I2_study"] + table["I2_within"], table["I2"], rtol=1e-12)
    rob = robust_cr2(fit)
    t_row, cr2_row = table.iloc[1], table.iloc[2]
    np.testing.assert_allclose(t_row["ci_lb"], fit.ci_lb[0], rtol=1e-12)
    np.testing.assert_allclose(cr2_row["se"], rob.se[0], rtol=1e-12)
    np.testing.assert_allclose(cr2_row["pval"], rob.pval[0], rtol=1e-12)
    np.testing.assert_allclose(table["r"], np.tanh(table["estimate"]), rtol=1e-15)
    np.testing.assert_allclose(table["r_ci_ub"], np.tanh(table["ci_ub"]), rtol=1e-15)
    assert (table["k"] == yi.size).all() and (table["n_studies"] == 20).all()
    assert (table["pi_lb"] < table["ci_lb"]).all()
    with pytest.raises(ValueError, match="study_id"):
        multilevel_table(frame.drop(columns="study_id"), 0.95)
    with pytest.raises(ValueError, match="unknown multilevel test"):
        multilevel_table(frame, 0.95, tests=("knha",))


effect_sets = st.integers(3, 40).flatmap(
    lambda k: st.tuples(
        arrays(np.float64, k, elements=st.floats(-1.5, 1.5, allow_nan=False)),
        arrays(np.float64, k, elements=st.floats(1e-3, 0.5, allow_nan=False)),
    )
)



@settings(max_examples=60, deadline=None)
@given(effect_sets, st.sampled_from(["REML", "DL", "PM", "FE"]), st.sampled_from(["z", "knha", "t"]))
def test_interval_and_range_properties(data, method, test):
    yi, vi = data
    fit = random_effects(yi, vi, method=method, test=test)
    row = summary_row(fit)
    assert row["ci_lb"] <= row["estimate"] <= row["ci_ub"]
    assert row["pi_lb"] <= row["ci_lb"] + 1e-12 and row["pi_ub"] >= row["ci_ub"] - 1e-12
    assert 0.0 <= row["I2"] <= 100.0
    for key in ("r", "r_ci_lb", "r_ci_ub", "r_pi_lb", "r_pi_ub"):
        assert -1.0 <= row[key] <= 1.0
    if method == "PM":
        # the Q-profile interval inverts the same Q statistic that PM sets to k - 1, so it always contains
        # the PM estimate; it need not contain REML's or DL's (Viechtbauer 2007, sec. 4)
        assert row["tau2_ci_lb"] <= row["tau2"] + 1e-12 and row["tau2"] <= row["tau2_ci_ub"] + 1e-12


@pytest.mark.parametrize(
    ("yi", "vi"),
    [
        # huge samples: n = 10 million per study, vi ~ 1e-7
        (np.array([0.28, 0.281, 0.279, 0.2805]), np.full(4, 1 / (10_000_000 - 3))),
        # extreme heterogeneity: effects spread over most of the Fisher-z range with tiny sampling error
        (np.array([-2.0, -0.5, 0.3, 1.1, 2.5, 0.0]), np.full(6, 1e-4)),
    ],
)
def test_extreme_but_valid_data_give_finite_tables(yi, vi):
    table = random_effects_table(yi, vi, ESTIMATORS, TESTS, 0.95)
    numeric = table.drop(columns=["estimator", "test", "note"])
    assert np.isfinite(numeric.drop(columns=["tau2_ci_lb", "tau2_ci_ub", "I2_ci_lb", "I2_ci_ub"]).to_numpy()).all()
    assert (table["r"].abs() <= 1).all() and (table["I2"] <= 100).all()

