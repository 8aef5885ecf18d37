"""Unit tests of location-scale models: the O(k) derivatives against dense matrices and finite differences,
the reduction to rma.uni, invariance to how the scale moderator is coded, the boundary diagnosis, the
likelihood-ratio test and the location_scale.csv tables."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alliancemeta.studies.location_scale import (
    LOCATION_SCALE_COLUMNS,
    LOCATION_SCALE_TEST_COLUMNS,
    LOCATION_SCALE_TEST_EXTRA,
    MIN_EFFECTS_PER_LEVEL,
    LocationScaleError,
    _LocationScale,
    location_scale,
    location_scale_table,
    scale_lrt,
)
from alliancemeta.studies.random_effects import random_effects


def simulate(k=60, seed=1, alpha=(-4.0, 0.8), moderator="numeric"):
    """Heteroscedastic true effects: log tau^2 linear in x (numeric) or in a three-level factor."""
    rng = np.random.default_rng(seed)
    vi = 1.0 / (rng.integers(30, 300, k) - 3.0)
    if moderator == "numeric":
        x = rng.normal(size=k)
        Z = np.column_stack([np.ones(k), x])
        tau2 = np.exp(alpha[0] + alpha[1] * x)
    else:
        x = rng.choice(["a", "b", "c"], size=k)
        Z = np.column_stack([np.ones(k), x == "b", x == "c"]).astype(float)
        tau2 = np.exp(alpha[0] + Z[:, 1:] @ np.array([alpha[1], -alpha[1]]))
    yi = 0.25 + rng.normal(0, np.sqrt(tau2 + vi))
    return yi, vi, x, Z


def dense(yi, vi, X, Z, alpha, reml=True):
    """Log-likelihood, score and observed information from k x k matrices (independent of the O(k) code)."""
    k, p = X.shape
    t = np.exp(Z @ alpha)
    V = np.diag(vi + t)
    Vi = np.linalg.inv(V)
    F = X.T @ Vi @ X
    P = Vi - Vi @ X @ np.linalg.solve(F, X.T @ Vi)
    beta = np.linalg.solve(F, X.T @ Vi @ yi)
    e = yi - X @ beta
    ll = -0.5 * np.sum(np.log(vi + t)) - 0.5 * e @ Vi @ e
    if reml:
        ll += -0.5 * (k - p) * np.log(2 * np.pi) + 0.5 * np.linalg.slogdet(X.T @ X)[1] - 0.5 * np.linalg.slogdet(F)[1]
    else:
        ll += -0.5 * k * np.log(2 * np.pi)
    u = P @ yi
    c = np.diag(P) if reml else np.diag(Vi)
    g = 0.5 * (u * u - c)
    D = P * P if reml else np.diag(np.diag(Vi) ** 2)
    Ht = -np.outer(u, u) * P + 0.5 * D
    T = np.diag(t)
    H = Z.T @ T @ Ht @ T @ Z + Z.T @ np.diag(g * t) @ Z
    return ll, Z.T @ (g * t), -H, 0.5 * Z.T @ T @ D @ T @ Z


@pytest.mark.parametrize("reml", [True, False])
@pytest.mark.parametrize("location", [False, True])
def test_derivatives_match_dense(reml, location):
    yi, vi, x, Z = simulate(k=25, seed=3)
    X = np.column_stack([np.ones(yi.size), np.sin(x)]) if location else np.ones((yi.size, 1))
    alpha = np.array([-3.5, 0.4])
    ev = _LocationScale(yi, vi, X, Z, reml).evaluate(alpha, derivatives=True)
    ll, grad, observed, fisher = dense(yi, vi, X, Z, alpha, reml)
    np.testing.assert_allclose(ev.loglik, ll, rtol=1e-12)
    np.testing.assert_allclose(ev.grad, grad, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(ev.observed, observed, rtol=1e-9)
    np.testing.assert_allclose(ev.fisher, fisher, rtol=1e-9)


def test_gradient_and_observed_information_are_derivatives_of_the_loglik():
    yi, vi, _x, Z = simulate(k=40, seed=5, moderator="factor")
    model = _LocationScale(yi, vi, np.ones((yi.size, 1)), Z, True)
    alpha = np.array([-3.0, 0.5, -0.7])
    ev = model.evaluate(alpha, derivatives=True)
    h = 1e-5
    for r in range(3):
        e = np.zeros(3)
        e[r] = h
        fd = (model.evaluate(alpha + e).loglik - model.evaluate(alpha - e).loglik) / (2 * h)
        np.testing.assert_allclose(ev.grad[r], fd, rtol=1e-6)
        fd2 = -(model.evaluate(alpha + e, True).grad - model.evaluate(alpha - e, True).grad) / (2 * h)
        np.testing.assert_allclose(ev.observed[:, r], fd2, rtol=1e-5, atol=1e-8)


def test_observed_information_matches_a_60_digit_finite_difference_hessian():
    """metafor differentiates numerically (numDeriv, error ~1e-6); the analytic information is exact."""
    from decimal import Decimal, getcontext

    getcontext().prec = 60
    yi, vi, _x, Z = simulate(k=20, seed=8)
    model = _LocationScale(yi, vi, np.ones((yi.size, 1)), Z, True)
    alpha = np.array([-3.2, 0.3])
    y, v, z = ([Decimal(float(a)) for a in arr] for arr in (yi, vi, Z[:, 1]))

    def loglik(a0, a1):  # REML without constants, intercept-only location
        t = [(a0 + a1 * zi).exp() for zi in z]
        w = [1 / (vi_ + ti) for vi_, ti in zip(v, t, strict=True)]
        S = sum(w)
        mu = sum(wi * yi_ for wi, yi_ in zip(w, y, strict=True)) / S
        ssq = sum(wi * (yi_ - mu) ** 2 for wi, yi_ in zip(w, y, strict=True))
        return -sum((vi_ + ti).ln() for vi_, ti in zip(v, t, strict=True)) / 2 - S.ln() / 2 - ssq / 2

    a = [Decimal(float(x)) for x in alpha]
    h = Decimal("1e-15")
    H = np.empty((2, 2))
    for i in range(2):
        for j in range(2):

            def at(di, dj, i=i, j=j):
                b = list(a)
                b[i] += di
                b[j] += dj
                return loglik(*b)

            H[i, j] = float((at(h, h) - at(h, -h) - at(-h, h) + at(-h, -h)) / (4 * h * h))
    np.testing.assert_allclose(model.evaluate(alpha, derivatives=True).observed, -H, rtol=1e-12)


def test_intercept_only_scale_is_rma_uni():
    yi, vi, _x, _Z = simulate(seed=2)
    fit = location_scale(yi, vi)
    uni = random_effects(yi, vi, method="REML")
    np.testing.assert_allclose(np.exp(fit.alpha[0]), uni.tau2, rtol=1e-9)
    np.testing.assert_allclose(fit.beta, uni.beta, rtol=1e-10)
    np.testing.assert_allclose(fit.se, uni.se, rtol=1e-9)
    assert scale_lrt(fit).LRT == pytest.approx(0.0, abs=1e-9)
    assert np.isnan(scale_lrt(fit).pval)


@pytest.mark.parametrize("method", ["REML", "ML"])
def test_fit_is_a_maximum_with_zero_score(method):
    yi, vi, _x, Z = simulate(seed=7)
    fit = location_scale(yi, vi, Z=Z, method=method)
    ll, grad, observed, _ = dense(yi, vi, np.ones((yi.size, 1)), Z, fit.alpha, reml=method == "REML")
    np.testing.assert_allclose(fit.loglik, ll, rtol=1e-12)
    np.testing.assert_allclose(grad, 0.0, atol=1e-8 * np.max(np.abs(observed)))
    np.testing.assert_allclose(fit.va, np.linalg.inv(observed), rtol=1e-6)
    assert np.all(np.linalg.eigvalsh(observed) > 0)


def test_recentring_the_moderator_changes_only_the_intercept():
    yi, vi, x, Z = simulate(seed=11)
    a = location_scale(yi, vi, Z=Z)
    b = location_scale(yi, vi, Z=np.column_stack([np.ones(yi.size), 2.0 * (x - 1.0)]))
    np.testing.assert_allclose(a.tau2, b.tau2, rtol=1e-8)
    np.testing.assert_allclose(b.alpha[1] * 2.0, a.alpha[1], rtol=1e-8)
    np.testing.assert_allclose(b.alpha_se[1] * 2.0, a.alpha_se[1], rtol=1e-6)
    np.testing.assert_allclose([a.QS, a.loglik], [b.QS, b.loglik], rtol=1e-8)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), slope=st.floats(-1.0, 1.0))
def test_lrt_is_nonnegative_and_qs_is_the_wald_statistic(seed, slope):
    yi, vi, _x, Z = simulate(k=50, seed=seed, alpha=(-3.5, slope))
    try:
        fit = location_scale(yi, vi, Z=Z)
    except LocationScaleError:
        return  # heterogeneity vanishing somewhere is a legitimate outcome for a random draw
    lrt = scale_lrt(fit)
    assert lrt.LRT >= 0 and 0 <= lrt.pval <= 1 and lrt.df == 1
    assert fit.loglik >= lrt.loglik_reduced - 1e-9
    np.testing.assert_allclose(fit.QS, (fit.alpha[1] / fit.alpha_se[1]) ** 2, rtol=1e-12)


def test_vanishing_heterogeneity_in_a_level_is_an_error_naming_it():
    rng = np.random.default_rng(4)
    k = 60
    vi = 1.0 / (rng.integers(50, 300, k) - 3.0)
    g = np.repeat(["calm", "wild"], k // 2)
    tau = np.where(g == "wild", 0.3, 0.0)
    yi = 0.2 + rng.normal(0, np.sqrt(vi) * np.where(g == "calm", 0.3, 1.0)) + rng.normal(0, tau)
    Z = np.column_stack([np.ones(k), g == "wild"]).astype(float)
    with pytest.raises(LocationScaleError, match="tau\\^2 -> 0") as info:
        location_scale(yi, vi, Z=Z)
    assert info.value.vanishing is not None and np.all(g[info.value.vanishing] == "calm")
    coefs, tests = location_scale_table(pd.DataFrame({"yi": yi, "vi": vi, "group": g}), ["group"])
    assert coefs["estimate"].isna().all() and list(coefs["part"]) == ["location", "scale", "scale"]
    assert "group=calm" in tests.loc[0, "note"] and np.isnan(tests.loc[0, "QS"])


def frame_with_moderators(seed=1):
    yi, vi, x, _Z = simulate(k=80, seed=seed)
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "yi": yi, "vi": vi, "x": x, "rater": rng.choice(["client", "observer", "therapist"], yi.size),
        "constant": "same", "rare": np.where(np.arange(yi.size) < MIN_EFFECTS_PER_LEVEL - 1, "few", "many"),
    })  # fmt: skip


def test_table_contract_and_values():
    frame = frame_with_moderators()
    frame.loc[3, "x"] = np.nan
    coefs, tests = location_scale_table(frame, ["x", "rater", "constant", "rare"], level=0.9)
    assert tuple(coefs.columns) == LOCATION_SCALE_COLUMNS
    assert tuple(tests.columns) == (*LOCATION_SCALE_TEST_COLUMNS, *LOCATION_SCALE_TEST_EXTRA)
    assert list(tests["moderator"]) == ["x", "rater", "constant", "rare"]
    x_rows = coefs[coefs["moderator"] == "x"]
    assert list(x_rows["part"]) == ["location", "scale", "scale"] and list(x_rows["term"]) == ["intrcpt"] * 2 + ["x"]
    keep = frame["x"].notna()
    fit = location_scale(frame.loc[keep, "yi"], frame.loc[keep, "vi"],
                         Z=np.column_stack([np.ones(keep.sum()), frame.loc[keep, "x"]]), level=0.9)  # fmt: skip
    np.testing.assert_allclose(x_rows["estimate"], [fit.beta[0], *fit.alpha])
    np.testing.assert_allclose(x_rows["ci_ub"], [fit.ci_ub[0], *fit.alpha_ci_ub])
    assert tests.loc[0, "k"] == keep.sum() and "1 effect size(s) with a missing x dropped" in tests.loc[0, "note"]
    assert list(coefs[coefs["moderator"] == "rater"]["term"]) == [
        "intrcpt",
        "intrcpt",
        "raterobserver",
        "ratertherapist",
    ]
    assert tests.loc[1, "QS_df"] == 2
    assert "single level" in tests.loc[2, "note"] and np.isnan(tests.loc[2, "QS"])
    assert "rare=few (2)" in tests.loc[3, "note"] and coefs[coefs["moderator"] == "rare"]["estimate"].isna().all()


def test_table_is_deterministic():
    frame = frame_with_moderators(seed=3)
    a = location_scale_table(frame, ["x", "rater"])
    b = location_scale_table(frame, ["x", "rater"])
    pd.testing.assert_frame_equal(a[0], b[0])
    pd.testing.assert_frame_equal(a[1], b[1])


def test_input_errors():
    yi, vi, _x, Z = simulate()
    with pytest.raises(ValueError, match="ML or REML"):
        location_scale(yi, vi, Z=Z, method="DL")
    with pytest.raises(ValueError, match="full column rank"):
        location_scale(yi, vi, Z=np.column_stack([Z, Z[:, 1]]))
    with pytest.raises(ValueError, match="not a column"):
        location_scale_table(pd.DataFrame({"yi": yi, "vi": vi}), ["nope"])
