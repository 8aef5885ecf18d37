"""Selection models of metafor's selmodel (alliancemeta.studies.bias.selmodels) and the selection_models.csv
table: the weights, the likelihood against brute-force integration, derivatives, invariances and the
NaN-with-note paths (the R comparison is tests/reference/test_selmodels_reference.py)."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate, stats

from alliancemeta.studies.bias import selection_table, selmodels
from alliancemeta.studies.bias.selection import selmodel_stepfun
from alliancemeta.studies.bias.selmodels import FAMILIES, _ContinuousLikelihood, selmodel
from alliancemeta.studies.random_effects import random_effects
from tests.unit.studies.selection_settings import selection_kwargs

ROOT = Path(__file__).resolve().parents[3]
CONTINUOUS = ("beta", "halfnorm", "negexp", "logistic", "power")
#: Gauss-Legendre against adaptive quadrature at 1e-13: measured 3e-13 at worst (beta with delta at 1e-5
#: or 100), so 1e-11 leaves room for the adaptive integrator's own error.
QUAD_RTOL = 1e-11
#: Central differences with h ~ 1e-5 relative: truncation ~1e-10, round-off ~1e-11 / h.
FD_RTOL = 1e-5


def molloy():
    d = pd.read_csv(ROOT / "data/raw/molloy2014.csv")
    return np.arctanh(d["r"].to_numpy()), 1.0 / (d["n"].to_numpy() - 3.0)


def metafor_weight(name, p, delta):
    """metafor 3.8-1's wi.fun for each type (steps = 0, preci = 1), p already clipped."""
    if name == "beta":
        return p ** (delta[0] - 1) * (1 - p) ** (delta[1] - 1)
    if name == "halfnorm":
        return np.exp(-delta[0] * p**2) / np.exp(-delta[0] * 0**2)
    if name == "negexp":
        return np.exp(-delta[0] * p) / np.exp(-delta[0] * 0)
    if name == "logistic":
        return (2 * np.exp(-delta[0] * p) / (1 + np.exp(-delta[0] * p))) / (2 * np.exp(0) / (1 + np.exp(0)))
    if name == "power":
        return (1 - p) ** delta[0] / (1 - 0) ** delta[0]
    raise ValueError(name)


DELTAS = {"beta": [(0.5, 2.0), (3.0, 0.7), (1.0, 1.0)], "halfnorm": [(0.3,), (7.0,)], "negexp": [(0.3,), (7.0,)],
          "logistic": [(0.3,), (7.0,)], "power": [(0.3,), (7.0,)]}  # fmt: skip


@pytest.mark.parametrize("name", CONTINUOUS)
def test_log_weights_match_metafor_definitions_and_derivatives(name):
    fam = FAMILIES[name]
    p = np.clip(np.linspace(0, 1, 41), fam.pval_min, 1 - fam.pval_min)
    if fam.pval_min == 0:
        p = p[1:-1]  # p = 0 and 1 give log(0) for beta only; the unclipped types are finite anyway
    for d in DELTAS[name]:
        d = np.asarray(d, dtype=float)
        lw, g, h = fam.logw(p, d)
        np.testing.assert_allclose(np.exp(lw), metafor_weight(name, p, d), rtol=1e-13)
        for j in range(fam.n_delta):
            e = np.zeros_like(d)
            e[j] = 1e-6
            lp, gp, _ = fam.logw(p, d + e)
            lm, gm, _ = fam.logw(p, d - e)
            np.testing.assert_allclose(g[:, j], (lp - lm) / 2e-6, rtol=1e-6, atol=1e-9)
            np.testing.assert_allclose(h[:, :, j], (gp - gm) / 2e-6, rtol=1e-6, atol=1e-9)


def brute_force_A(name, delta, mu, vi, tau2):
    """A_i by adaptive quadrature over y, split where the clipped weight has its kinks (scalar math for speed)."""
    fam = FAMILIES[name]
    sig, s = math.sqrt(vi), math.sqrt(vi + tau2)
    pmin = fam.pval_min

    def f(y):
        p = min(max(0.5 * math.erfc(y / sig / math.sqrt(2)), pmin), 1 - pmin)
        return metafor_weight(name, p, delta) * math.exp(-0.5 * ((y - mu) / s) ** 2) / (s * math.sqrt(2 * math.pi))

    L = stats.norm.isf(pmin) if pmin > 0 else 8.5
    cuts = [-np.inf, -L * sig, mu, L * sig, np.inf] if abs(mu) < L * sig else [-np.inf, -L * sig, L * sig, np.inf]
    return sum(integrate.quad(f, a, b, epsabs=0, epsrel=1e-13, limit=400)[0] for a, b in itertools.pairwise(cuts))


def check_against_brute_force(name, deltas, params):
    yi = np.array([0.31, -0.05, 0.9])
    vi = np.array([1 / 97, 1 / 17, 1 / 1200])
    fam = FAMILIES[name]
    lik = _ContinuousLikelihood(yi, vi, np.ones((3, 1)), fam)
    for d in deltas:
        for mu, tau2 in params:
            theta = np.concatenate([[mu, tau2], d])
            ll = lik.evaluate(theta, order=0)[0]
            A = np.array([brute_force_A(name, np.asarray(d), mu, v, tau2) for v in vi])
            p = np.clip(stats.norm.sf(yi / np.sqrt(vi)), fam.pval_min, 1 - fam.pval_min)
            direct = np.sum(
                np.log(metafor_weight(name, p, d)) + stats.norm.logpdf(yi, mu, np.sqrt(vi + tau2)) - np.log(A)
            )
            assert ll == pytest.approx(direct, rel=QUAD_RTOL, abs=QUAD_RTOL)


#: Extreme weights for the brute-force check: delta at metafor's bounds (beta: p^(-1) and (1-p)^99 near the
#: clipping points, the hardest integrands).
EXTREME = {"beta": (1e-5, 100.0), "halfnorm": (100.0,), "negexp": (100.0,), "logistic": (100.0,), "power": (100.0,)}


@pytest.mark.parametrize("name", CONTINUOUS)
def test_likelihood_equals_brute_force_integration(name):
    check_against_brute_force(name, [*DELTAS[name], EXTREME[name]], [(0.2, 0.01), (-0.4, 0.3), (1.5, 0.0)])


@pytest.mark.parametrize("name", CONTINUOUS)
def test_gradient_and_hessian_match_finite_differences(name):
    yi, vi = molloy()
    X = np.column_stack([np.ones(yi.size), np.linspace(-1, 1, yi.size)])  # a moderator: checks the X blocks
    lik = _ContinuousLikelihood(yi, vi, X, FAMILIES[name])
    theta = np.concatenate([[0.12, 0.03, 0.02], DELTAS[name][0]])
    _, g, H = lik.evaluate(theta)
    for j in range(theta.size):
        h = 1e-6 * max(1.0, abs(theta[j]))
        tp, tm = theta.copy(), theta.copy()
        tp[j] += h
        tm[j] -= h
        llp, gp, _ = lik.evaluate(tp, order=1)
        llm, gm, _ = lik.evaluate(tm, order=1)
        assert g[j] == pytest.approx((llp - llm) / (2 * h), rel=FD_RTOL, abs=1e-6)
        np.testing.assert_allclose(H[:, j], (gp - gm) / (2 * h), rtol=FD_RTOL, atol=1e-5)


@pytest.mark.parametrize("name", CONTINUOUS)
def test_no_selection_gives_the_ml_random_effects_likelihood(name):
    """At metafor's H0.delta the weight is 1 everywhere: ll = the ML random-effects log-likelihood."""
    yi, vi = molloy()
    fam = FAMILIES[name]
    ml = random_effects(yi, vi, method="ML")
    lik = _ContinuousLikelihood(yi, vi, ml.X, fam)
    ll = lik.evaluate(np.concatenate([ml.beta, [ml.tau2], fam.delta_h0]), order=0)[0]
    s2 = vi + ml.tau2
    ll0 = -0.5 * np.sum(np.log(2 * np.pi * s2) + (yi - ml.beta[0]) ** 2 / s2)
    assert ll == pytest.approx(ll0, rel=1e-13)


def test_stepfun_agrees_with_selection_py():
    """The same likelihood as selection.selmodel_stepfun (the publication_bias.csv 3PSM), another optimiser."""
    yi, vi = molloy()
    fit = selmodel(yi, vi, "stepfun", steps=(0.025,))
    ref = selmodel_stepfun(random_effects(yi, vi, method="ML"), steps=(0.025,))
    assert fit.beta == pytest.approx(ref.beta, rel=1e-9) and fit.se == pytest.approx(ref.se, rel=1e-8)
    assert fit.LRT == pytest.approx(ref.LRT, rel=1e-9)
    np.testing.assert_allclose(fit.delta, ref.delta, rtol=1e-8)
    np.testing.assert_array_equal(fit.counts, ref.counts)


@settings(max_examples=5, deadline=None)
@given(scale=st.floats(0.2, 5.0), name=st.sampled_from(("beta", "power", "stepfun")), seed=st.integers(0, 2**16))
def test_scale_and_order_invariance(scale, name, seed):
    """p-values depend on y / sqrt(v) only: scaling y and sqrt(v) by c scales beta by c and tau2 by c^2,
    leaves delta and the LRT unchanged and shifts ll by -k log c; the order of the studies does not matter."""
    yi, vi = molloy()
    steps = (0.025,) if name == "stepfun" else None
    a = selmodel(yi, vi, name, steps=steps)
    perm = np.random.default_rng(seed).permutation(yi.size)
    b = selmodel(scale * yi[perm], scale**2 * vi[perm], name, steps=steps)
    assert b.beta == pytest.approx(scale * a.beta, rel=1e-7, abs=1e-10)
    assert b.tau2 == pytest.approx(scale**2 * a.tau2, rel=1e-6, abs=1e-12)
    np.testing.assert_allclose(b.delta, a.delta, rtol=1e-6)
    assert b.LRT == pytest.approx(a.LRT, rel=1e-7, abs=1e-9)
    assert b.ll == pytest.approx(a.ll - yi.size * np.log(scale), rel=1e-10)


def test_converges_to_a_stationary_point_of_the_likelihood():
    yi, vi = molloy()
    fit = selmodel(yi, vi, "beta")
    lik = _ContinuousLikelihood(yi, vi, np.ones((yi.size, 1)), FAMILIES["beta"])
    _, g, H = lik.evaluate(np.concatenate([[fit.beta, fit.tau2], fit.delta]))
    assert np.max(np.abs(g) * np.sqrt(np.diag(np.linalg.inv(-H)))) < 1e-8
    assert np.all(np.linalg.eigvalsh(-H) > 0)


def test_boundary_delta_is_flagged_and_equals_the_ml_model():
    """Without selection in the data, negexp's delta ends at its lower bound 0: the ML random-effects model."""
    yi, vi = molloy()
    fit = selmodel(yi, vi, "negexp")
    ml = random_effects(yi, vi, method="ML")
    assert fit.delta_at_bound and fit.delta[0] == 0.0
    assert fit.beta == pytest.approx(ml.beta[0], rel=1e-9)
    assert fit.tau2 == pytest.approx(ml.tau2, rel=1e-7)
    assert fit.LRT == pytest.approx(0.0, abs=1e-9)
    assert np.isnan(fit.se_delta[0])


def test_errors_for_bad_arguments():
    yi, vi = molloy()
    with pytest.raises(ValueError, match="unknown selection model type"):
        selmodel(yi, vi, "cauchy")
    with pytest.raises(ValueError, match="needs steps"):
        selmodel(yi, vi, "stepfun")
    with pytest.raises(ValueError, match=r"stepfun.? only"):
        selmodel(yi, vi, "beta", steps=(0.025,))
    with pytest.raises(ValueError, match="too small"):
        selmodel(yi[:3], vi[:3], "beta")


# ---- the table -------------------------------------------------------------------------------------------


def test_table_columns_and_rows():
    yi, vi = molloy()
    t = selection_table.selection_models_table(yi, vi, **selection_kwargs())
    assert tuple(t.columns) == selection_table.SELECTION_MODEL_COLUMNS + selection_table.EXTRA_COLUMNS
    assert list(t["type"]) == list(selection_table.TYPES)
    row = t.set_index("type").loc["stepfun_3psm"]
    fit = selmodel(yi, vi, "stepfun", steps=(0.025,))
    assert row["estimate"] == fit.beta and row["LRT_pval"] == fit.LRT_pval
    assert [float(x) for x in row["delta"].split(";")] == list(fit.delta)  # 17 digits round-trip
    assert row["ci_method"] == "wald" and row["note"] == ""


def test_table_nan_rows_say_why():
    yi, vi = molloy()
    t = selection_table.selection_models_table(yi, vi, **selection_kwargs()).set_index("type")
    for name in ("negexp", "logistic"):  # molloy2014: delta at 0 (no selection)
        assert t.loc[name, ["estimate", "se", "LRT"]].isna().all()
        assert "lower bound" in t.loc[name, "note"] and "ML random-effects" in t.loc[name, "note"]
    # all effects positive with p < .5: the 4PSM's third interval is empty
    pos = np.abs(yi) + 0.2
    t = selection_table.selection_models_table(pos, vi, **selection_kwargs()).set_index("type")
    assert np.isnan(t.loc["stepfun_4psm", "estimate"])
    assert "no observed p-value" in t.loc["stepfun_4psm", "note"]
    # k = 3: too few studies for the four parameters of the beta model
    t = selection_table.selection_models_table(yi[:3], vi[:3], **selection_kwargs()).set_index("type")
    assert np.isnan(t.loc["beta", "estimate"]) and "too small" in t.loc["beta", "note"]


def test_table_reports_non_convergence(monkeypatch):
    monkeypatch.setattr(selmodels, "CONT_MAX_NEWTON", 1)
    yi, vi = molloy()
    t = selection_table.selection_models_table(yi, vi, **selection_kwargs()).set_index("type")
    assert np.isnan(t.loc["beta", "estimate"])
    assert "no optimum within 1 Newton iterations" in t.loc["beta", "note"]


def test_clustered_rows_only_when_clusters_group_rows():
    yi, vi = molloy()
    t = selection_table.selection_models_table(yi, vi, cluster=np.arange(yi.size), **selection_kwargs(n_boot=0))
    assert "clustered_3psm" not in set(t["type"])
    cluster = np.repeat(np.arange(8), 2)
    t = selection_table.selection_models_table(yi, vi, cluster=cluster, **selection_kwargs(n_boot=0)).set_index("type")
    assert list(t.index[-2:]) == ["clustered_3psm", "clustered_4psm"]
    assert t.loc["clustered_3psm", "n_studies"] == 8 and t.loc["clustered_3psm", "ci_method"] == "sandwich"
    assert np.isnan(t.loc["clustered_3psm", "LRT"])


class _Saddle:
    """ll(x, y) = -x^2 + y^2 - y^4: a saddle at the origin, maxima at y = +-1/sqrt(2)."""

    def evaluate(self, theta, order=2):
        x, y = theta
        ll = -(x**2) + y**2 - y**4
        g = np.array([-2 * x, 2 * y - 4 * y**3])
        H = np.array([[-2.0, 0.0], [0.0, 2 - 12 * y**2]])
        return ll, (g if order else None), (H if order == 2 else None)


def test_optimiser_leaves_a_saddle_point():
    """Started at a stationary point that is not a maximum, the optimiser moves along negative curvature
    (hackshaw1998's beta model has such a saddle on the way from metafor's starting values)."""
    bounds = np.full(2, -np.inf), np.full(2, np.inf)
    theta, free, _ = selmodels._maximise_bounded(_Saddle(), np.zeros(2), *bounds)
    np.testing.assert_allclose(np.abs(theta), [0.0, 1 / np.sqrt(2)], atol=1e-9)
    assert free.all()
