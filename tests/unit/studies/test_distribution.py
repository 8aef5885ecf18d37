"""Unit tests of the distribution of true effects: the normal share and its delta method, calibrated
estimates, the batched bootstrap fits against one-by-one fits, BCa pieces against their definitions,
reproducibility and the distribution.csv table."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from alliancemeta.studies.distribution import (
    DISTRIBUTION_COLUMNS,
    DISTRIBUTION_EXTRA_COLUMNS,
    BootstrapIntervalError,
    _batch_tau2,
    bca_interval,
    bootstrap_replicates,
    calibrated_estimates,
    distribution_table,
    empirical_influence_reg,
    norm_inter,
    percentile_interval,
    se_tau2,
    share_above_normal,
    share_normal_delta,
)
from alliancemeta.studies.random_effects import estimate_tau2


def simulate(k=40, seed=1, tau=0.12, n_clusters=None):
    rng = np.random.default_rng(seed)
    vi = 1.0 / (rng.integers(30, 300, k) - 3.0)
    yi = 0.25 + rng.normal(0, tau, k) + rng.normal(0, np.sqrt(vi))
    cluster = None if n_clusters is None else np.sort(rng.integers(0, n_clusters, k))
    return yi, vi, cluster


def test_share_above_normal():
    assert share_above_normal(0.3, 0.01, 0.3) == pytest.approx(0.5)
    assert share_above_normal(0.3, 0.01, 0.4) == pytest.approx(stats.norm.sf(1.0))
    assert share_above_normal(0.3, 0.0, 0.2) == 1.0 and share_above_normal(0.3, 0.0, 0.4) == 0.0


def test_delta_method_is_the_derivative_of_the_share():
    mu, tau2, q, se_mu, se_t2 = 0.25, 0.02, 0.3, 0.03, 0.008
    ns = share_normal_delta(mu, se_mu, tau2, se_t2, q)
    h = 1e-7
    d_mu = (share_above_normal(mu + h, tau2, q) - share_above_normal(mu - h, tau2, q)) / (2 * h)
    d_t2 = (share_above_normal(mu, tau2 + h, q) - share_above_normal(mu, tau2 - h, q)) / (2 * h)
    np.testing.assert_allclose(ns.se, np.hypot(d_mu * se_mu, d_t2 * se_t2), rtol=1e-6)
    assert 0 <= ns.ci_lb < ns.share < ns.ci_ub <= 1


def test_calibrated_estimates_shrink_towards_the_mean():
    yi, vi, _ = simulate()
    cal = calibrated_estimates(yi, vi, 0.25, 0.01)
    assert np.all(np.abs(cal - 0.25) <= np.abs(yi - 0.25))
    np.testing.assert_allclose(calibrated_estimates(yi, vi, 0.25, 0.0), 0.25)
    # their variance is tau2 on average when the model holds (Wang & Lee 2019): far less than that of yi
    assert np.var(cal) < np.var(yi)


@pytest.mark.parametrize("method", ["REML", "ML", "DL", "PM", "EB", "HE", "HS", "SJ"])
def test_se_tau2_matches_dense_formulas(method):
    """metafor's se.tau2 expressions with the k x k P matrices written out."""
    yi, vi, _ = simulate(k=15, seed=2)
    k, p = yi.size, 1
    X = np.ones((k, 1))
    tau2 = estimate_tau2(yi, vi, method=method).tau2

    def P_of(w):
        W = np.diag(w)
        return W - W @ X @ np.linalg.inv(X.T @ W @ X) @ X.T @ W

    V = np.diag(vi)
    if method == "REML":
        P = P_of(1 / (vi + tau2))
        expected = np.sqrt(2 / np.sum(P * P))
    elif method == "ML":
        expected = np.sqrt(2 / np.sum((1 / (vi + tau2)) ** 2))
    elif method in ("PM", "EB"):
        expected = np.sqrt(2 * k**2 / (k - p) / np.sum(1 / (vi + tau2)) ** 2)
    elif method in ("DL", "HS"):
        P = P_of(1 / vi)
        var = 2 * (k - p) + 4 * tau2 * np.trace(P) + 2 * tau2**2 * np.sum(P * P)
        expected = np.sqrt(var) / (np.trace(P) if method == "DL" else np.sum(1 / vi))
    elif method == "HE":
        P = np.eye(k) - X @ np.linalg.inv(X.T @ X) @ X.T
        PV = P @ V
        expected = np.sqrt((2 * np.sum(PV * PV.T) + 4 * tau2 * np.trace(PV) + 2 * tau2**2 * (k - p)) / (k - p) ** 2)
    else:  # SJ
        t0 = np.var(yi)
        P = P_of(1 / (vi + t0))
        PV = P @ V
        var = 2 * np.sum(PV * PV.T) + 4 * tau2 * np.sum(PV * P) + 2 * tau2**2 * np.sum(P * P)
        expected = np.sqrt(t0**2 / (k - p) ** 2 * var)
    np.testing.assert_allclose(se_tau2(yi, vi, tau2, method), expected, rtol=1e-10)


# Both solvers stop once a tau^2 step is below 1e-12 (absolute for tau^2 < 1, BATCH_TOL); near tau^2 = 0 their
# stopping points can differ by a few such steps, which is far below anything a table shows.
TAU2_ATOL = 1e-11


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), method=st.sampled_from(["REML", "ML", "DL"]), tau=st.floats(0.0, 0.3))
def test_batched_fits_equal_one_by_one_fits_on_expanded_rows(seed, method, tau):
    yi, vi, _ = simulate(k=12, seed=seed, tau=tau)
    rng = np.random.default_rng(seed)
    F = np.zeros((30, yi.size))
    np.add.at(F, (np.repeat(np.arange(30), yi.size), rng.integers(0, yi.size, 30 * yi.size)), 1.0)
    tau2, pending = _batch_tau2(yi, vi, F, method)
    for b in np.flatnonzero(~pending):
        rows = np.repeat(np.arange(yi.size), F[b].astype(int))
        ref = estimate_tau2(yi[rows], vi[rows], method=method).tau2
        np.testing.assert_allclose(tau2[b], ref, rtol=1e-8, atol=TAU2_ATOL)


def test_norm_inter_on_known_values():
    t = np.arange(1.0, 100.0)  # 99 replicates: (R + 1) alpha is an integer at alpha = 0.05
    np.testing.assert_allclose(norm_inter(t, [0.05, 0.95]), [5.0, 95.0])
    # between order statistics: interpolation on the normal quantile scale
    alpha = 0.0512
    k = 5
    frac = (stats.norm.ppf(alpha) - stats.norm.ppf(k / 100)) / (stats.norm.ppf((k + 1) / 100) - stats.norm.ppf(k / 100))
    np.testing.assert_allclose(norm_inter(t, [alpha]), [5.0 + frac])
    np.testing.assert_allclose(norm_inter(t, [0.001, 0.9999]), [1.0, 99.0])  # extreme order statistics


def test_bca_of_a_smooth_statistic_is_near_the_percentile_interval_and_uses_its_pieces():
    rng = np.random.default_rng(0)
    x = rng.normal(size=30)
    idx = rng.integers(0, 30, (2000, 30))
    freq = np.zeros((2000, 30))
    np.add.at(freq, (np.repeat(np.arange(2000), 30), idx.ravel()), 1.0)
    t = x[idx].mean(axis=1)
    lo, hi = bca_interval(x.mean(), t, freq)
    plo, phi = percentile_interval(t)
    assert abs(lo - plo) < 0.05 and abs(hi - phi) < 0.05
    # for the mean the regression estimate of the influence values is close to x - mean(x)
    L = empirical_influence_reg(t, freq)
    np.testing.assert_allclose(L, x - x.mean(), atol=0.1)
    assert abs(L.sum()) < 1e-10


def test_bca_failures_carry_boots_messages():
    freq = np.ones((50, 5))
    with pytest.raises(BootstrapIntervalError, match="'w' is infinite"):
        bca_interval(0.0, np.ones(50), freq)  # no replicate below t0
    rng = np.random.default_rng(1)
    small = rng.integers(0, 3, (4, 10)).astype(float)  # fewer replicates than units
    with pytest.raises(BootstrapIntervalError, match="'a' is NA"):
        bca_interval(0.5, np.array([0.1, 0.9, 0.4, 0.6]), small)


def test_clusters_are_resampled_whole():
    yi, vi, cluster = simulate(k=30, n_clusters=8, seed=4)
    boot = bootstrap_replicates(yi, vi, [0.1], "REML", 50, seed=3, cluster=cluster)
    assert boot.freq.shape == (50, len(np.unique(cluster)))
    np.testing.assert_array_equal(boot.freq.sum(axis=1), len(np.unique(cluster)))


def test_table_contract_and_reproducibility():
    yi, vi, cluster = simulate(k=60, n_clusters=25, seed=5)
    a = distribution_table(yi, vi, (0.1, 0.2, 0.3), seed=11, n_boot=300, cluster=cluster)
    b = distribution_table(yi, vi, (0.1, 0.2, 0.3), seed=11, n_boot=300, cluster=cluster)
    c = distribution_table(yi, vi, (0.1, 0.2, 0.3), seed=12, n_boot=300, cluster=cluster)
    assert tuple(a.columns) == (*DISTRIBUTION_COLUMNS, *DISTRIBUTION_EXTRA_COLUMNS)
    pd.testing.assert_frame_equal(a, b)
    boot_rows = a["ci_method"].isin(["bca", "percentile"])
    assert not a.loc[boot_rows, "ci_lb"].equals(c.loc[boot_rows, "ci_lb"])
    assert list(a["method"]) == ["normal", "calibrated"] * 3
    np.testing.assert_allclose(a["threshold_z"], np.repeat(np.arctanh([0.1, 0.2, 0.3]), 2))
    assert a["share"].between(0, 1).all()
    assert (a["n_units"] == len(np.unique(cluster))).all() and (
        a.loc[a["method"] == "calibrated", "n_boot"] == 300
    ).all()
    # shares fall as the threshold rises
    assert np.all(np.diff(a.loc[a["method"] == "normal", "share"]) < 0)


def test_too_few_replicates_for_bca_is_reported():
    yi, vi, _ = simulate(k=40, seed=6)
    table = distribution_table(yi, vi, (0.2,), seed=1, n_boot=30)
    cal = table[table["method"] == "calibrated"].iloc[0]
    assert np.isnan(cal["ci_lb"]) and "more replicates than units" in cal["note"]


def test_input_errors():
    yi, vi, _ = simulate()
    with pytest.raises(ValueError, match="correlations"):
        distribution_table(yi, vi, (1.5,))
    with pytest.raises(ValueError, match="level"):
        distribution_table(yi, vi, (0.1,), level=95)


def test_unestimable_model_gives_nan_rows_with_a_note(monkeypatch):
    import alliancemeta.studies.distribution as dist
    from alliancemeta.studies.random_effects import ConvergenceError

    def fail(*args, **kwargs):
        raise ConvergenceError("REML Fisher scoring did not converge")

    monkeypatch.setattr(dist, "random_effects", fail)
    yi, vi, _ = simulate()
    table = dist.distribution_table(yi, vi, (0.1, 0.3))
    assert len(table) == 4 and table["share"].isna().all()
    assert table["note"].str.contains("could not be estimated").all()
