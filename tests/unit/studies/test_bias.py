"""Publication-bias methods: properties that hold whatever R says (the R comparison is in
tests/reference/test_bias_reference.py)."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from alliancemeta.core.effects import escalc_cor
from alliancemeta.studies.bias.failsafe import fsn_rosenthal
from alliancemeta.studies.bias.rank import _kendall_lower_tail, ranktest
from alliancemeta.studies.bias.regression_tests import pet, pet_peese, regtest
from alliancemeta.studies.bias.selection import StepLikelihood, ml_loglik, selmodel_stepfun
from alliancemeta.studies.bias.trim_and_fill import trimfill
from alliancemeta.studies.random_effects import random_effects

ROOT = Path(__file__).resolve().parents[3]


def molloy():
    d = pd.read_csv(ROOT / "data/raw/molloy2014.csv")
    es = escalc_cor(d["r"], d["n"])
    return es.yi, es.vi


def simulated(k, seed, mu=0.25, tau=0.1, select=False):
    """Correlation-like data; with ``select`` non-significant results are published with prob. 0.2."""
    rng = np.random.default_rng(seed)
    y, v = [], []
    while len(y) < k:
        n = rng.integers(20, 300)
        vi = 1.0 / (n - 3.0)
        yi = mu + rng.normal(0, tau) + rng.normal(0, math.sqrt(vi))
        if select and yi / math.sqrt(vi) < 1.959963984540054 and rng.uniform() > 0.2:
            continue
        y.append(yi)
        v.append(vi)
    return np.array(y), np.array(v)


# --- rank test -------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [3, 4, 5, 6, 7])
def test_kendall_exact_distribution_by_enumeration(n):
    """P(T <= q) for the number of concordant pairs, against all n! orderings."""
    counts = np.zeros(n * (n - 1) // 2 + 1)
    for perm in itertools.permutations(range(n)):
        conc = sum(perm[i] < perm[j] for i in range(n) for j in range(i + 1, n))
        counts[conc] += 1
    cdf = np.cumsum(counts) / counts.sum()
    for q in range(-1, counts.size + 1):
        expected = 0.0 if q < 0 else 1.0 if q >= counts.size else cdf[q]
        assert _kendall_lower_tail(q, n) == pytest.approx(expected, rel=1e-13, abs=1e-300)


def test_ranktest_exact_small_tail_is_accurate():
    """A perfectly ordered sample: p = 2/n! exactly (only one of n! orderings is as extreme)."""
    n = 12
    vi = np.linspace(0.01, 0.05, n)
    yi = 0.3 + 5 * (vi - vi.mean())  # y* strictly increasing in v
    r = ranktest(yi, vi)
    assert r.exact and r.tau == pytest.approx(1.0)
    assert r.pval == pytest.approx(2 / math.factorial(n), rel=1e-12)


def test_ranktest_ties_use_normal_approximation():
    yi, vi = molloy()
    r = ranktest(yi, vi)
    assert not r.exact and -1 <= r.tau <= 1 and 0 < r.pval <= 1


def test_ranktest_large_k_without_ties_is_normal():
    rng = np.random.default_rng(1)
    vi = rng.uniform(0.001, 0.05, 400)
    yi = rng.normal(0.2, 0.1, 400)
    assert not ranktest(yi, vi).exact


# --- Egger, PET, PEESE ----------------------------------------------------------------------------


def test_regtest_uses_the_models_test():
    yi, vi = molloy()
    knha = regtest(random_effects(yi, vi, test="knha"))
    z = regtest(random_effects(yi, vi, test="z"))
    assert knha.ddf == yi.size - 2 and np.isinf(z.ddf)
    assert knha.est == pytest.approx(z.est)  # same point estimate, different inference
    assert knha.fit.X.shape == (yi.size, 2)


def test_pet_peese_recover_a_line_exactly():
    vi = np.linspace(0.002, 0.05, 20)
    yi = 0.1 + 2.0 * np.sqrt(vi) + 1e-3 * np.sin(np.arange(20))
    p = pet(yi, vi)
    assert p.intercept == pytest.approx(0.1, abs=2e-3) and p.slope == pytest.approx(2.0, abs=2e-2)
    assert p.df == 18


def test_pet_matches_statsmodels_wls():
    sm = pytest.importorskip("statsmodels.api")
    yi, vi = molloy()
    ref = sm.WLS(yi, sm.add_constant(np.sqrt(vi)), weights=1 / vi).fit()
    p = pet(yi, vi)
    assert (p.intercept, p.se, p.tval, p.pval) == pytest.approx(
        (ref.params[0], ref.bse[0], ref.tvalues[0], ref.pvalues[0]), rel=1e-10
    )
    lo, hi = ref.conf_int()[0]
    assert (p.ci_lb, p.ci_ub) == pytest.approx((lo, hi), rel=1e-10)


def test_pet_peese_rule():
    yi, vi = simulated(60, 2, mu=0.3, tau=0.05)  # a genuine effect: PET's intercept is significant
    pp = pet_peese(yi, vi)
    assert pp.pet_one_sided_p < 0.05 and pp.chosen == "peese" and pp.estimate is pp.peese
    null_y, null_v = simulated(30, 3, mu=0.0, tau=0.0)
    pp0 = pet_peese(null_y, null_v)
    assert pp0.chosen == "pet" or pp0.pet_one_sided_p < 0.05
    # the one-sided test follows the expected direction
    neg = pet_peese(-yi, vi, direction=-1)
    assert neg.chosen == "peese" and neg.pet_one_sided_p == pytest.approx(pp.pet_one_sided_p)
    assert pet_peese(-yi, vi, direction=1).chosen == "pet"


# --- trim and fill --------------------------------------------------------------------------------


def test_trimfill_mirror_data_mirror_result():
    yi, vi = molloy()
    a = trimfill(random_effects(yi, vi, method="REML", test="knha"))
    b = trimfill(random_effects(-yi, vi, method="REML", test="knha"))
    assert a.side == "left" and b.side == "right"
    assert a.k0 == b.k0 > 0
    assert b.estimate == pytest.approx(-a.estimate, rel=1e-10)
    np.testing.assert_allclose(b.yi_fill, -a.yi_fill, rtol=1e-10)


def test_trimfill_fills_mirror_images_about_the_trimmed_estimate():
    yi, vi = simulated(40, 2, mu=0.1, tau=0.02, select=True)  # strong selection: k0 = 8 on the left
    tf = trimfill(random_effects(yi, vi, method="REML"))
    assert tf.k0 > 0 and tf.yi_fill.size == tf.k0 == tf.vi_fill.size
    assert tf.fit.k == yi.size + tf.k0
    assert tf.estimate < random_effects(yi, vi).estimate  # imputed studies pull the estimate down
    assert set(np.round(tf.vi_fill, 12)) <= set(np.round(vi, 12))


def test_trimfill_symmetric_data_impute_nothing():
    # deviations summing to 0 whose signed ranks interleave: S_r = 18 = k(k+1)/4, so L0 = 0
    vi = np.full(8, 0.02)
    yi = 0.2 + np.array([-4.1, -3, -2.1, -1, 1.1, 2, 3.1, 4]) * 0.01
    fit = random_effects(yi, vi)
    tf = trimfill(fit, side="left")
    assert tf.k0 == 0 and tf.fit is fit and tf.yi_fill.size == 0


# --- selection model ------------------------------------------------------------------------------


def test_selection_likelihood_derivatives():
    yi, vi = simulated(25, 8, select=True)
    X = np.column_stack([np.ones(25), np.linspace(-1, 1, 25)])
    steps = np.array([0.025, 0.5, 1.0])
    groups = np.searchsorted(steps, stats.norm.sf(yi / np.sqrt(vi)))
    lik = StepLikelihood(yi, vi, X, steps, groups, None)
    theta = np.array([0.2, 0.05, 0.02, 0.4, 0.7])
    _, g, H = lik.evaluate(theta)
    h = 1e-6
    for j in range(theta.size):
        e = np.zeros(theta.size)
        e[j] = h
        lp, gp, _ = lik.evaluate(theta + e, 1)
        lm, gm, _ = lik.evaluate(theta - e, 1)
        assert g[j] == pytest.approx((lp - lm) / (2 * h), rel=1e-6, abs=1e-6)
        np.testing.assert_allclose(H[j], (gp - gm) / (2 * h), rtol=1e-5, atol=1e-4)


def test_selection_likelihood_at_no_selection_is_the_random_effects_likelihood():
    yi, vi = molloy()
    ml = random_effects(yi, vi, method="ML")
    steps = np.array([0.025, 1.0])
    groups = np.searchsorted(steps, stats.norm.sf(yi / np.sqrt(vi)))
    lik = StepLikelihood(yi, vi, ml.X, steps, groups, None)
    ll, _, _ = lik.evaluate(np.array([ml.estimate, ml.tau2, 1.0]), 0)
    assert ll == pytest.approx(ml_loglik(yi, vi, ml.X, ml), rel=1e-13)


def test_selection_model_corrects_selected_data():
    yi, vi = simulated(200, 11, mu=0.1, tau=0.05, select=True)
    fit = random_effects(yi, vi, method="REML")
    sm = selmodel_stepfun(fit)
    assert sm.delta[1] < 0.5 and sm.LRT_pval < 0.01
    assert abs(sm.beta - 0.1) < abs(fit.estimate - 0.1)
    assert sm.counts.sum() == yi.size and sm.LRT >= 0


def test_selection_model_refuses_an_empty_interval():
    yi = np.linspace(0.5, 0.7, 5)
    vi = np.full(5, 0.01)  # every one-sided p-value < .025: the weight of p > .025 is not identified
    with pytest.raises(ValueError, match="no observed p-value"):
        selmodel_stepfun(random_effects(yi, vi), steps=(0.025,))
    with pytest.raises(ValueError, match="no observed p-value"):
        selmodel_stepfun(random_effects(yi, vi), steps=(0.025, 0.5))


def test_selection_model_equal_effects_keeps_tau2_zero():
    yi, vi = simulated(50, 4, tau=0.0, select=True)
    sm = selmodel_stepfun(random_effects(yi, vi, method="FE"))
    assert sm.tau2 == 0 and np.isnan(sm.se_tau2) and np.isfinite(sm.se)


# --- fail-safe N ----------------------------------------------------------------------------------


def test_fsn_is_the_number_that_brings_stouffer_to_alpha():
    yi, vi = molloy()
    f = fsn_rosenthal(yi, vi)
    z = yi / np.sqrt(vi)
    stouffer = lambda extra: z.sum() / math.sqrt(yi.size + extra)  # noqa: E731
    assert stouffer(f.fsnum) <= 1.6448536269514722 < stouffer(f.fsnum - 1)
    assert f.fsnum == int(f.fsnum)


# --- the table ------------------------------------------------------------------------------------


# --- figures --------------------------------------------------------------------------------------


