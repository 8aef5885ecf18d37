"""The selection model for dependent effects (alliancemeta.studies.bias.clustered_selection): derivatives,
penalties, its relation to metafor's 3PSM, the cluster-robust sandwich, the bootstrap weights, intervals and
reproducibility (metaselection's own numbers are compared in tests/reference/test_clustered_selection_reference.py)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alliancemeta.core.errors import ConvergenceError
from alliancemeta.studies.bias import clustered_selection as cs
from alliancemeta.studies.bias.clustered_selection import (
    METASELECTION_PRIORS,
    SelectionBootstrap,
    _CompositeStep,
    _Weights,
    bootstrap_clustered_selmodel,
    clustered_selmodel,
)
from alliancemeta.studies.bias.selection_sim import simulate_dependent_selection
from alliancemeta.studies.bias.selection_table import selection_models_table
from alliancemeta.studies.bias.selmodels import selmodel
from tests.unit.studies.selection_settings import selection_kwargs

#: Central differences with h = 1e-6: truncation ~1e-12, round-off ~1e-10 on sums of ~100 terms.
FD_RTOL = 1e-6


def data(n_studies=25, seed=5, lam=0.4):
    return simulate_dependent_selection(n_studies, 0.25, 0.12, 0.06, 0.6, lambdas=(lam,), seed=seed)


@pytest.mark.parametrize("steps", [(0.025,), (0.025, 0.5)])
@pytest.mark.parametrize("priors", [None, METASELECTION_PRIORS])
def test_gradient_and_hessian_match_finite_differences(steps, priors):
    d = data()
    lik = _CompositeStep(d.yi.to_numpy(), d.vi.to_numpy(), np.array(steps), priors)
    rng = np.random.default_rng(1)
    W = rng.integers(0, 3, size=(2, len(d))).astype(float)  # bootstrap-like weights, zeros included
    theta = np.array([[0.21, np.log(0.02), *np.log([0.5, 0.3][: len(steps)])], [0.3, -3.0, *[0.2, -1.0][: len(steps)]]])
    _, g, H, S = lik.evaluate(theta, W, contributions=True)
    np.testing.assert_allclose(S.sum(axis=1) + (priors.evaluate(theta)[1] if priors else 0), g, rtol=1e-12)
    for j in range(theta.shape[1]):
        e = np.zeros_like(theta)
        e[:, j] = 1e-6
        llp, gp, _, _ = lik.evaluate(theta + e, W, order=1)
        llm, gm, _, _ = lik.evaluate(theta - e, W, order=1)
        np.testing.assert_allclose(g[:, j], (llp - llm) / 2e-6, rtol=FD_RTOL, atol=1e-6)
        np.testing.assert_allclose(H[:, :, j], (gp - gm) / 2e-6, rtol=FD_RTOL, atol=1e-5)


def test_prior_penalties_are_metaselections():
    """define_priors(): -beta^4/16, gamma/2 - 5 exp(gamma/2), -(zeta - log(1/2))^4 / 54 (the paper's eqs. 12-14)."""
    theta = np.array([[0.3, -2.0, -0.4, 0.7]])
    val, grad, hdiag = METASELECTION_PRIORS.evaluate(theta)
    z = theta[0, 2:] - np.log(0.5)
    expected = -(0.3**4) / 16 + (-2.0 / 2 - 5 * np.exp(-1.0)) - np.sum(z**4) / 54
    assert val[0] == pytest.approx(expected, rel=1e-14)
    for j in range(4):
        e = np.zeros_like(theta)
        e[0, j] = 1e-6
        vp, gp, _ = METASELECTION_PRIORS.evaluate(theta + e)
        vm, gm, _ = METASELECTION_PRIORS.evaluate(theta - e)
        assert grad[0, j] == pytest.approx((vp - vm)[0] / 2e-6, rel=1e-7)
        assert hdiag[0, j] == pytest.approx((gp - gm)[0, j] / 2e-6, rel=1e-6)


@pytest.mark.parametrize("steps", [(0.025,), (0.025, 0.5)])
def test_unpenalised_composite_ml_is_metafors_selection_model(steps):
    """The composite likelihood ignores the clustering: without penalties its maximum is selmodel's ML fit,
    and the model-based covariance is selmodel's (after the log transformations)."""
    d = data(40, seed=11)
    yi, vi = d.yi.to_numpy(), d.vi.to_numpy()
    fit = clustered_selmodel(yi, vi, d.study_id, steps=steps, priors=None)
    ref = selmodel(yi, vi, "stepfun", steps=steps)
    assert fit.beta == pytest.approx(ref.beta, rel=1e-8)
    assert fit.tau2 == pytest.approx(ref.tau2, rel=1e-7)
    np.testing.assert_allclose(fit.delta, ref.delta, rtol=1e-7)
    assert fit.ll == pytest.approx(ref.ll, rel=1e-12)
    assert np.sqrt(fit.vcov_model[0, 0]) == pytest.approx(ref.se, rel=1e-6)
    assert fit.tau2 * np.sqrt(fit.vcov_model[1, 1]) == pytest.approx(ref.se_tau2, rel=1e-6)


def test_sandwich_by_hand():
    """V = H^{-1} (sum_j S_j S_j') H^{-1}, the penalty's gradient shared equally among the effects."""
    d = data()
    yi, vi, cl = d.yi.to_numpy(), d.vi.to_numpy(), d.study_id.to_numpy()
    fit = clustered_selmodel(yi, vi, cl)
    lik = _CompositeStep(yi, vi, fit.steps, METASELECTION_PRIORS)
    _, _, H, S = lik.evaluate(fit.theta[None], np.ones((1, yi.size)), contributions=True)
    S = S[0] + METASELECTION_PRIORS.evaluate(fit.theta[None])[1][0] / yi.size
    Sj = np.array([S[cl == j].sum(axis=0) for j in np.unique(cl)])
    Hinv = np.linalg.inv(H[0])
    np.testing.assert_allclose(fit.vcov, Hinv @ Sj.T @ Sj @ Hinv, rtol=1e-10)
    assert np.abs(S.sum(axis=0)).max() < 1e-6  # the penalised score vanishes at the estimate


def test_penalty_keeps_tau2_at_zero_estimable():
    """Homogeneous effects: the unpenalised composite likelihood has tau^2 -> 0 (gamma -> -inf) and no
    interior maximum; metaselection's penalty keeps it finite."""
    rng = np.random.default_rng(3)
    vi = np.full(60, 0.01)
    yi = 0.3 + rng.normal(0, 0.05, 60)  # less spread than the sampling error: tau^2 = 0
    cluster = np.repeat(np.arange(20), 3)
    with pytest.raises(ConvergenceError, match="no interior maximum"):
        clustered_selmodel(yi, vi, cluster, priors=None)
    fit = clustered_selmodel(yi, vi, cluster)
    assert 0 < fit.tau2 < 0.01


def test_input_checks():
    d = data()
    yi, vi = d.yi.to_numpy(), d.vi.to_numpy()
    with pytest.raises(ValueError, match="at least 3"):
        clustered_selmodel(yi, vi, np.arange(yi.size) % 2)
    with pytest.raises(ValueError, match="one entry per effect"):
        clustered_selmodel(yi, vi, d.study_id[:-1])
    with pytest.raises(ValueError, match="not identified"):
        clustered_selmodel(np.abs(yi) + 1.0, vi, d.study_id, steps=(0.025, 0.5))
    t = selection_models_table(yi, vi, np.arange(yi.size) % 2, **selection_kwargs(n_boot=0)).set_index("type")
    assert np.isnan(t.loc["clustered_3psm", "estimate"]) and "at least 3" in t.loc["clustered_3psm", "note"]


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), method=st.sampled_from(cs.BOOTSTRAP_METHODS))
def test_bootstrap_weights(seed, method):
    codes = np.repeat(np.arange(7), [1, 2, 3, 3, 5, 1, 2])
    W = _Weights(codes, method).draw([np.random.default_rng([seed, r]) for r in range(6)])
    assert W.shape == (6, codes.size) and np.all(W >= 0)
    per_study = np.array([[W[r, codes == j] for j in range(7)] for r in range(6)], dtype=object)
    if method == "exponential":
        assert all(np.all(w == w[0]) and w[0] > 0 for w in per_study.ravel())
        return
    first = np.array([[w.sum() / w.size for w in row] for row in per_study])  # a_j (two-stage: on average)
    if method == "multinomial":
        assert all(np.all(w == w[0]) for w in per_study.ravel())
    totals = np.array([[w.sum() for w in row] for row in per_study])
    a = totals / np.bincount(codes)  # sum of an effect's weights in study j is a_j * k_j
    assert np.allclose(a, np.round(a)) and np.all(a.sum(axis=1) == 7)
    assert np.allclose(first, a)


def test_bootstrap_is_reproducible_and_independent_of_chunking(monkeypatch):
    d = data()
    fit = clustered_selmodel(d.yi.to_numpy(), d.vi.to_numpy(), d.study_id)
    a = bootstrap_clustered_selmodel(fit, n_boot=30, seed=7)
    b = bootstrap_clustered_selmodel(fit, n_boot=30, seed=7)
    np.testing.assert_array_equal(a.estimates, b.estimates)
    monkeypatch.setattr(cs, "BOOT_CHUNK", 7)
    c = bootstrap_clustered_selmodel(fit, n_boot=30, seed=7)
    np.testing.assert_array_equal(a.estimates, c.estimates)
    np.testing.assert_array_equal(a.se, c.se)
    np.testing.assert_array_equal(a.jackknife, c.jackknife)
    assert not np.array_equal(a.estimates, bootstrap_clustered_selmodel(fit, n_boot=30, seed=8).estimates)


def test_bootstrap_refits_are_converged_fits():
    d = data()
    yi, vi, cl = d.yi.to_numpy(), d.vi.to_numpy(), d.study_id.to_numpy()
    fit = clustered_selmodel(yi, vi, cl)
    boot = bootstrap_clustered_selmodel(fit, n_boot=5, seed=2, method="multinomial")
    assert boot.n_ok == 5
    jack0 = clustered_selmodel(yi[cl != 0], vi[cl != 0], cl[cl != 0])
    np.testing.assert_allclose(boot.jackknife[0], jack0.theta, rtol=1e-7, atol=1e-9)


def test_interval_formulas():
    """simhelpers::bootstrap_CIs with quantile type 1 (R: quantile(1:10, c(.025, .975), type = 1) = 1, 10)."""
    est = np.arange(1.0, 11.0)
    boot = SelectionBootstrap("two-stage", 10, 0, 0.95, np.array([5.2]), np.array([1.0]), est[:, None],
                              np.full((10, 1), 2.0), np.linspace(4.0, 6.0, 5)[:, None])  # fmt: skip
    np.testing.assert_array_equal(boot.ci_theta("percentile")[0], [1.0, 10.0])
    np.testing.assert_array_equal(boot.ci_theta("basic")[0], [2 * 5.2 - 10, 2 * 5.2 - 1])
    t = (est - 5.2) / 2.0
    np.testing.assert_allclose(boot.ci_theta("student")[0], [5.2 - t.max(), 5.2 - t.min()])
    sd = est.std(ddof=1)
    np.testing.assert_allclose(
        boot.ci_theta("normal")[0], 2 * 5.2 - est.mean() + np.array([-1, 1]) * 1.959963984540054 * sd
    )
    # the jackknife here is symmetric about 5.2: acceleration 0, so BCa is the bias-corrected interval
    np.testing.assert_array_equal(boot.ci_theta("bca"), boot.ci_theta("bias-corrected"))
    ci = boot.ci("percentile")
    np.testing.assert_array_equal(ci, boot.ci_theta("percentile"))  # beta is not transformed


def test_table_clustered_rows_with_bootstrap():
    d = data(30, seed=4)
    t = selection_models_table(d.yi, d.vi, d.study_id, **selection_kwargs(n_boot=150, seed=3)).set_index("type")
    row = t.loc["clustered_3psm"]
    fit = clustered_selmodel(d.yi.to_numpy(), d.vi.to_numpy(), d.study_id)
    boot = bootstrap_clustered_selmodel(fit, n_boot=150, seed=3, studentized=False, bca=False)
    assert row["estimate"] == fit.beta and row["se"] == fit.se
    assert (row["ci_lb"], row["ci_ub"]) == tuple(boot.ci("percentile")[0])
    assert row["ci_method"] == "percentile (two-stage cluster bootstrap)" and row["n_boot"] == boot.n_ok
    assert row["ci_lb_sandwich"] == fit.ci_lb and row["delta"].startswith("1;")
