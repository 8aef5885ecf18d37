"""Unit tests of the simulation study's data-generating process and of how each method's performance is scored.

The generator is checked against its definition: the sample correlations against correlations computed from
simulated raw data, the moments of the true effects and of the sampling errors (mean, variance, within-study
correlation), the step-function selection against Bayes' rule, and reproducibility by seed.  The scoring is
checked on hand-made cases: each method's interval is the one its own fitting function returns, coverage,
bias, RMSE and their Monte-Carlo SEs follow their formulas, and failed fits are counted, not dropped.
"""

from __future__ import annotations

import warnings
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from alliancemeta.studies.bayes.quadrature import exact_posterior
from alliancemeta.studies.multilevel.che import che_fit, robust_cr2_che
from alliancemeta.studies.multilevel.model import three_level
from alliancemeta.studies.multilevel.robust import robust_cr2
from alliancemeta.studies.random_effects import random_effects
from alliancemeta.studies.simulation import (
    CONDITION_COLUMNS,
    METHODS,
    SUMMARY_COLUMNS,
    Condition,
    MethodResult,
    evaluate,
    performance,
    sample_correlations,
    simulate_meta,
    standardised_effects,
    summarise,
)

PRIORS = {"prior_mu": {"dist": "normal", "mu": 0, "sigma": 1}, "prior_tau": {"dist": "halfnormal", "sigma": 0.5}}
#: Monte-Carlo checks allow this many standard errors (the seeds are fixed, so a pass is reproducible; 4 SEs
#: keep a correct generator from failing by chance under a changed seed).
N_SE = 4.0
#: The same fit computed twice through the same code path agrees to round-off.
TIGHT = 1e-12


def condition(**changes) -> Condition:
    values = dict(
        name="test", k=30, effects_mean=2.0, effects_max=6, n_median=70, n_sdlog=0.8, n_min=15, n_max=3000,
        mu_r=0.28, tau2=0.0125, within_share=0.2, rho=0.6, selection=(1, 1, 1), true_effects="normal",
    )  # fmt: skip
    values.update(changes)
    return Condition(**values)


# --------------------------------------------------------------------------------------------------
# the sample correlations
# --------------------------------------------------------------------------------------------------


def test_sample_correlations_have_the_distribution_of_correlations_from_raw_data():
    """Bartlett's Wishart draw gives the exact law of r from n bivariate-normal cases (two-sample KS)."""
    rng = np.random.default_rng(11)
    size, n, theta = 20_000, 12, 0.6
    r = sample_correlations(np.full((size, 1), theta), np.full(size, n), 0.5, rng)[:, 0]
    x = rng.standard_normal((size, n))
    y = np.tanh(theta) * x + np.sqrt(1 - np.tanh(theta) ** 2) * rng.standard_normal((size, n))
    xc, yc = x - x.mean(1, keepdims=True), y - y.mean(1, keepdims=True)
    raw = (xc * yc).sum(1) / np.sqrt((xc**2).sum(1) * (yc**2).sum(1))
    assert stats.ks_2samp(r, raw).pvalue > 0.01
    # and both are skewed away from the bound, unlike a normal Fisher-z draw
    assert stats.skew(r) < -0.3


def test_sampling_errors_have_variance_one_over_n_minus_3_and_within_study_correlation_rho():
    rng = np.random.default_rng(3)
    size, n, rho = 20_000, 40, 0.5
    z = np.arctanh(sample_correlations(np.zeros((size, 3)), np.full(size, n), rho, rng))
    se_mean = np.sqrt(1 / (n - 3) / size)
    assert np.all(np.abs(z.mean(0)) < N_SE * se_mean)
    assert np.allclose(z.var(0), 1 / (n - 3), rtol=N_SE * np.sqrt(2 / size))
    corr = np.corrcoef(z.T)[np.triu_indices(3, 1)]
    assert np.all(np.abs(corr - rho) < N_SE * (1 - rho**2) / np.sqrt(size))


def test_a_single_effect_per_study_ignores_rho():
    theta, n = np.full((5, 1), 0.3), np.full(5, 50)
    a = sample_correlations(theta, n, 0.0, np.random.default_rng(1))
    b = sample_correlations(theta, n, 0.9, np.random.default_rng(1))
    assert np.array_equal(a, b)


@pytest.mark.parametrize("kind", ["normal", "skewed", "mixture"])
def test_standardised_true_effects_have_mean_0_and_variance_1(kind):
    x = standardised_effects(kind, 200_000, np.random.default_rng(5))
    assert abs(x.mean()) < N_SE / np.sqrt(x.size)
    assert abs(x.var() - 1) < 0.02
    skew = stats.skew(x)
    if kind == "normal":
        assert abs(skew) < 0.03
    elif kind == "skewed":
        assert skew == pytest.approx(np.sqrt(2), abs=0.1)  # gamma(2): 2 / sqrt(2)
    else:
        assert skew > 0.5  # a small high component


def test_unknown_distribution_of_true_effects_is_an_error():
    with pytest.raises(ValueError, match="unknown distribution"):
        standardised_effects("uniform", 3, np.random.default_rng(0))


# --------------------------------------------------------------------------------------------------
# the generated meta-analyses
# --------------------------------------------------------------------------------------------------


def test_simulated_meta_analysis_has_the_design_moments():
    cond = condition(k=4000, tau2=0.02, within_share=0.3, rho=0.5, mu_r=0.1, effects_mean=2.5)
    data = simulate_meta(cond, seed=7)
    assert list(data.columns) == ["study_id", "yi", "vi", "n", "r", "theta"]
    assert data["study_id"].nunique() == cond.k and data.attrs["n_generated"] == cond.k
    sizes = data.groupby("study_id").size()
    # 1 + Poisson(1.5) capped at 6
    expected_mean = 1 + sum(min(j, 5) * stats.poisson.pmf(j, 1.5) for j in range(40))
    assert sizes.mean() == pytest.approx(expected_mean, abs=N_SE * np.sqrt(1.5 / cond.k))
    assert sizes.max() <= cond.effects_max
    n = data.groupby("study_id")["n"].first()
    assert np.median(n) == pytest.approx(cond.n_median, rel=0.05)
    assert n.min() >= cond.n_min and n.max() <= cond.n_max
    assert np.allclose(data["vi"], 1 / (data["n"] - 3))
    assert np.allclose(np.round(np.tanh(data["yi"]), 2), data["r"])  # reported r has two decimals
    # true effects: mean mu, variance tau2 split between and within studies
    theta = data["theta"].to_numpy()
    assert theta.mean() == pytest.approx(cond.mu, abs=N_SE * np.sqrt(cond.tau2 / cond.k))
    study_mean = data.groupby("study_id")["theta"].transform("mean")
    ss_within = float(np.sum((theta - study_mean.to_numpy()) ** 2))
    assert ss_within / (sizes.to_numpy() - 1).sum() == pytest.approx(cond.tau2_within, rel=0.1)
    assert theta.var() == pytest.approx(cond.tau2, rel=0.1)
    # sampling errors: mean about 0 (Fisher z is biased by about rho/(2(n-1))), variance 1/(n-3)
    err = data["yi"].to_numpy() - theta
    assert abs(err.mean()) < 0.01
    assert np.mean(err**2 / data["vi"]) == pytest.approx(1.0, abs=0.05)


def test_within_study_sampling_errors_correlate_at_about_rho():
    cond = condition(k=6000, effects_mean=2, effects_max=2, tau2=0.0, mu_r=0.0, rho=0.7, n_median=200, n_sdlog=0.2)
    data = simulate_meta(cond, seed=2)
    pairs = data[data.groupby("study_id")["yi"].transform("size") == 2]
    err = (pairs["yi"] - pairs["theta"]).to_numpy().reshape(-1, 2)
    corr = np.corrcoef(err.T)[0, 1]
    assert corr == pytest.approx(cond.rho, abs=N_SE * (1 - cond.rho**2) / np.sqrt(len(err)))


def test_selection_follows_the_step_function_by_bayes_rule():
    """With weights (1, w, w), P(primary effect significant | published) = P(sig) / (P(sig) + w (1 - P(sig)))."""
    base = condition(k=6000, mu_r=0.15, effects_mean=1, effects_max=1, n_median=60)
    w = 0.3
    free = simulate_meta(base, seed=4)
    chosen = simulate_meta(replace(base, selection=(1, w, w)), seed=4)

    def significant(frame):
        return stats.norm.sf(frame["yi"] / np.sqrt(frame["vi"])) < 0.025

    p_sig = significant(free).mean()
    expected = p_sig / (p_sig + w * (1 - p_sig))
    observed = significant(chosen).mean()
    se = np.sqrt(expected * (1 - expected) / base.k) + np.sqrt(p_sig * (1 - p_sig) / base.k)
    assert observed == pytest.approx(expected, abs=N_SE * se)
    # studies were generated until k were published: k / (P(sig) + w (1 - P(sig))) on average
    ratio = chosen.attrs["n_generated"] / base.k
    assert ratio == pytest.approx(1 / (p_sig + w * (1 - p_sig)), rel=0.05)
    # and selection inflates the mean effect
    assert chosen["yi"].mean() > free["yi"].mean()


def test_same_seed_and_replicate_give_identical_data_and_others_differ():
    cond = condition(k=12, selection=(1, 0.4, 0.2), true_effects="mixture")
    a = simulate_meta(cond, seed=123, replicate=5)
    b = simulate_meta(cond, seed=123, replicate=5)
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    assert a.attrs == b.attrs
    assert not simulate_meta(cond, seed=123, replicate=6)["yi"].equals(a["yi"])
    assert not simulate_meta(cond, seed=124, replicate=5)["yi"].equals(a["yi"])


def test_condition_fields_are_checked_and_typed():
    c = condition(k=30.0, tau2=0, selection=[1, 0.5, 0.5])
    assert isinstance(c.k, int) and isinstance(c.tau2, float) and c.selection == (1.0, 0.5, 0.5)
    assert repr(c) == repr(condition(tau2=0.0, selection=(1.0, 0.5, 0.5)))
    assert c.mu == pytest.approx(np.arctanh(0.28))
    assert c.tau2_study + c.tau2_within == c.tau2
    row = c.as_row()
    assert set(row) == set(CONDITION_COLUMNS) and row["selection"] == "1;0.5;0.5"
    for bad, match in [
        ({"k": 1}, "k must be"),
        ({"k": 2.5}, "k must be an integer"),
        ({"effects_mean": 7}, "effects_mean"),
        ({"n_min": 5}, "n_min"),
        ({"rho": 1.0}, "rho"),
        ({"selection": (1, 0, 1)}, "selection"),
        ({"selection": (1, 1)}, "selection"),
        ({"true_effects": "t"}, "true_effects"),
        ({"mu_r": 1.0}, "mu_r"),
    ]:
        with pytest.raises(ValueError, match=match):
            condition(**bad)
    with pytest.raises(ValueError, match="missing"):
        Condition.from_mapping("x", {"k": 3})


# --------------------------------------------------------------------------------------------------
# the methods and their scoring
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def replicate():
    return simulate_meta(condition(k=12), seed=99, replicate=0)


def test_each_method_reports_its_own_fit(replicate):
    yi, vi, cluster = replicate["yi"].to_numpy(), replicate["vi"].to_numpy(), replicate["study_id"].to_numpy()
    results = {r.method: r for r in evaluate(replicate, METHODS, 0.9, estimator="REML", che_rho=0.5, priors=PRIORS)}
    assert list(results) == list(METHODS) and not any(r.failed for r in results.values())
    z = random_effects(yi, vi, method="REML", test="z", level=0.9)
    knha = random_effects(yi, vi, method="REML", test="knha", level=0.9)
    ml = three_level(yi, vi, cluster, test="t", level=0.9)
    cr2 = robust_cr2(ml)
    che = robust_cr2_che(che_fit(yi, vi, cluster, 0.5, level=0.9))
    post = exact_posterior(yi, vi, PRIORS)
    mu_row = post.summary(0.9).set_index("parameter").loc["mu"]
    expected = {
        "z": (z.estimate, z.ci_lbs[0], z.ci_ubs[0]),
        "knha": (knha.estimate, knha.ci_lbs[0], knha.ci_ubs[0]),
        "three_level": (ml.estimate, ml.ci_lb[0], ml.ci_ub[0]),
        "cr2": (cr2.estimate, cr2.ci_lb[0], cr2.ci_ub[0]),
        "che": (che.estimate, che.ci_lb[0], che.ci_ub[0]),
        "bayes": (mu_row["mean"], mu_row["eti_lb"], mu_row["eti_ub"]),
    }
    for method, (est, lb, ub) in expected.items():
        got = results[method]
        np.testing.assert_allclose([got.estimate, got.ci_lb, got.ci_ub], [est, lb, ub], rtol=1e-9, err_msg=method)
    # the t interval of the three-level model uses k - 1 df; CR2 its Satterthwaite df
    assert ml.ddf == len(yi) - 1 and np.isfinite(cr2.df[0])
    assert results["knha"].estimate == pytest.approx(results["z"].estimate, abs=TIGHT)


def test_coverage_and_width_of_a_hand_made_interval():
    res = MethodResult("z", 0.3, 0.05, 0.2, 0.4, False, "")
    assert res.covered(0.2) == 1.0 and res.covered(0.4) == 1.0 and res.covered(0.3) == 1.0
    assert res.covered(0.41) == 0.0 and res.covered(0.1) == 0.0
    assert res.width == pytest.approx(0.2)
    failed = MethodResult("z", np.nan, np.nan, np.nan, np.nan, True, "why")
    assert np.isnan(failed.covered(0.3))


def test_performance_on_a_hand_made_case():
    mu = 0.3
    estimate = np.array([0.25, 0.35, 0.31, np.nan, 0.5])
    lb = np.array([0.20, 0.32, 0.25, np.nan, 0.45])
    ub = np.array([0.30, 0.40, 0.37, np.nan, 0.55])
    failed = np.array([False, False, False, True, False])
    out = performance(estimate, lb, ub, failed, mu)
    ok = ~failed
    e = estimate[ok]
    assert out["n_replicates"] == 5 and out["n_failed"] == 1
    assert out["coverage"] == pytest.approx(2 / 4)  # 0.25 [.20, .30] and 0.31 [.25, .37] cover .3
    assert out["coverage_mcse"] == pytest.approx(np.sqrt(0.5 * 0.5 / 4))
    assert out["bias"] == pytest.approx(np.mean(e) - mu)
    assert out["bias_mcse"] == pytest.approx(np.std(e, ddof=1) / 2)
    assert out["rmse"] == pytest.approx(np.sqrt(np.mean((e - mu) ** 2)))
    mse = np.mean((e - mu) ** 2)
    assert out["rmse_mcse"] == pytest.approx(np.sqrt(np.sum(((e - mu) ** 2 - mse) ** 2) / 12) / (2 * out["rmse"]))
    assert out["width"] == pytest.approx(np.mean(ub[ok] - lb[ok]))
    assert out["bias_r"] == pytest.approx(np.mean(np.tanh(e)) - np.tanh(mu))
    assert out["width_r"] == pytest.approx(np.mean(np.tanh(ub[ok]) - np.tanh(lb[ok])))


def test_all_failed_gives_nan_measures_with_the_counts():
    out = performance([np.nan] * 3, [np.nan] * 3, [np.nan] * 3, [True] * 3, 0.3)
    assert out["n_replicates"] == 3 and out["n_failed"] == 3
    assert all(np.isnan(out[c]) for c in SUMMARY_COLUMNS[3:])


def test_failed_fits_are_recorded_with_their_reason_and_counted(replicate):
    one_study = replicate.assign(study_id=1).head(3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # evaluate turns warnings into notes, it never lets them out
        results = evaluate(one_study, METHODS, 0.95, estimator="REML", che_rho=0.5, priors=PRIORS)
    by = {r.method: r for r in results}
    for method in ("three_level", "cr2", "che"):  # a multilevel model needs at least two studies
        assert by[method].failed and "at least 2 clusters" in by[method].note and np.isnan(by[method].estimate)
    for method in ("z", "knha", "bayes"):
        assert not by[method].failed
    rows = pd.DataFrame([{"method": r.method, "estimate": r.estimate, "ci_lb": r.ci_lb, "ci_ub": r.ci_ub,
                          "failed": r.failed} for r in results] * 2)  # fmt: skip
    summary = summarise(rows, mu=0.3).set_index("method")
    assert list(summary.index) == list(METHODS)
    assert summary.loc["cr2", "n_failed"] == 2 and summary.loc["cr2", "n_replicates"] == 2
    assert np.isnan(summary.loc["cr2", "coverage"])
    assert summary.loc["z", "n_failed"] == 0


def test_warnings_of_a_valid_fit_go_to_its_note():
    data = simulate_meta(condition(k=8, effects_mean=1, effects_max=1), seed=1)
    by = {r.method: r for r in evaluate(data, ["three_level"], 0.95, estimator="REML", che_rho=0.5, priors=PRIORS)}
    assert not by["three_level"].failed and "not separately identified" in by["three_level"].note


def test_unknown_method_is_an_error(replicate):
    with pytest.raises(ValueError, match="unknown simulation method"):
        evaluate(replicate, ["z", "gls"], 0.95, estimator="REML", che_rho=0.5, priors=PRIORS)


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.tuples(st.floats(-1, 1), st.floats(0, 0.5), st.booleans()), min_size=1, max_size=30),
    st.floats(-0.5, 0.5),
)
def test_mse_is_bias_squared_plus_variance_and_coverage_is_a_proportion(draws, mu):
    est = np.array([d[0] for d in draws])
    half = np.array([d[1] for d in draws])
    failed = np.array([d[2] for d in draws])
    out = performance(np.where(failed, np.nan, est), est - half, est + half, failed, mu)
    assert out["n_failed"] == failed.sum() and out["n_replicates"] == len(draws)
    if failed.all():
        return
    e = est[~failed]
    assert out["rmse"] ** 2 == pytest.approx(out["bias"] ** 2 + np.var(e), abs=1e-12)
    assert 0.0 <= out["coverage"] <= 1.0
    lb, ub = (est - half)[~failed], (est + half)[~failed]
    assert out["coverage"] == pytest.approx(np.mean((lb <= mu) & (mu <= ub)))
