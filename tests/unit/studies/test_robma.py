"""RoBMA-PSMA: weight functions, selection likelihoods, marginal likelihoods and the ensemble table.

Independent checks: densities integrate to one over the data (single-level and both three-level
selection likelihoods, by brute-force integration over y); the prior of the weights integrates to
one; marginal likelihoods against brute-force tensor-grid integration in the *constrained*
parameters (mu, tau, omega, PET/PEESE coefficient) on small data; the no-bias models against the
project's exact quadrature (:mod:`alliancemeta.studies.bayes.quadrature`); bridge sampling against
a Gaussian whose normalising constant is known; quadrature against MCMC + bridge sampling (slow).
"""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate, special, stats

from alliancemeta.studies.bayes import robma as R
from alliancemeta.studies.bayes.bridge import bridge_sampling
from alliancemeta.studies.bayes.priors import MetaPriors, parse_prior
from alliancemeta.studies.bayes.quadrature import exact_posterior
from alliancemeta.studies.bayes.weightfunctions import WeightFunction, selection_loglik
from tests.unit.studies.robma_settings import psma_weightfunctions, robma_settings

#: Brute-force tensor grids are accurate to ~1e-7 relative on these smooth, bounded integrands
#: (checked by doubling the grid); the adaptive quadrature must match them within its own reported
#: error estimate (times a safety factor) or this floor.
BRUTE_ATOL = 1e-5
ERR_FACTOR = 3.0


def small_data(k=8, seed=3, mu=0.25, tau=0.1, three_level=False):
    rng = np.random.default_rng(seed)
    n = rng.integers(20, 200, k)
    vi = 1.0 / (n - 3.0)
    yi = mu + tau * rng.standard_normal(k) + np.sqrt(vi) * rng.standard_normal(k)
    cluster = np.repeat(np.arange((k + 1) // 2), 2)[:k] if three_level else None
    return yi, vi, cluster


def spec_named(name, priors=None):
    priors = robma_settings().priors if priors is None else priors
    return {s.name: s for s in R.model_set(priors)}[name]


def bound(name, yi, vi, cluster=None, **kw):
    priors = robma_settings().priors
    spec = spec_named(name, priors)
    data = R.RobmaData.build(yi, vi, cluster)
    return R.RobmaModel(spec, data, priors, R._layout(spec, data.three_level), **kw)


# ------------------------------------------------------------------------------------------------
# weight functions
# ------------------------------------------------------------------------------------------------


def test_default_ensemble_is_robma_psma():
    wfs = psma_weightfunctions()
    assert [w.label for w in wfs] == ["2s(.05)", "2s(.05,.1)", "1s(.05)", "1s(.025,.05)", "1s(.05,.5)",
                                      "1s(.025,.05,.5)"]
    specs = R.model_set(robma_settings().priors)
    assert len(specs) == 36
    prob = np.array([s.prior_prob for s in specs])
    assert prob.sum() == pytest.approx(1.0, abs=1e-15)
    by = {s.name: s.prior_prob for s in specs}
    assert by["random:none"] == pytest.approx(0.5 * 0.5 * 0.5)
    assert by["random:1s(.05)"] == pytest.approx(0.5 * 0.5 * 0.5 * 0.5 / 6)
    assert by["fixed_null:pet"] == pytest.approx(0.5 * 0.5 * 0.5 * 0.25)
    pri = robma_settings().priors
    assert pri.mu["sigma"] == 0.5 and pri.tau["beta"] == 0.075 and pri.tau["alpha"] == 1.0
    assert pri.pet["beta"] == 1.0 and pri.peese["beta"] == 10.0


def test_regions_one_and_two_sided():
    one = WeightFunction("one.sided", (0.025, 0.05), (1, 1, 1))
    cuts, index = one.z_cuts()
    np.testing.assert_allclose(cuts, [stats.norm.ppf(0.95), stats.norm.ppf(0.975)])
    assert list(index) == [2, 1, 0]
    # p = 0.01 -> interval 0; p = 0.03 -> 1; p = 0.3 -> 2
    z = stats.norm.isf([0.01, 0.03, 0.3])
    assert list(one.interval_of(z, np.ones(3))) == [0, 1, 2]
    two = WeightFunction("two.sided", (0.05, 0.10), (1, 1, 1))
    cuts, index = two.z_cuts()
    a, b = stats.norm.isf(0.025), stats.norm.isf(0.05)
    np.testing.assert_allclose(cuts, [-a, -b, b, a])
    assert list(index) == [0, 1, 2, 1, 0]
    z = np.array([-3.0, -1.8, 0.0, 1.8, 3.0])
    assert list(two.interval_of(z, np.ones(5))) == [0, 1, 2, 1, 0]


@given(st.lists(st.floats(-6, 6), min_size=1, max_size=3))
@settings(max_examples=50, deadline=None)
def test_omega_coordinates_round_trip_and_order(x):
    x = np.array(x)
    omega = WeightFunction.omega_from_x(x)
    assert omega[0] == 1.0
    assert np.all(np.diff(omega) <= 0) and np.all(omega > 0)
    np.testing.assert_allclose(WeightFunction.x_from_omega(omega), x, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("alpha", [(1.0, 1.0), (2.0, 1.0, 0.5), (1.0, 1.0, 1.0)])
def test_weight_prior_integrates_to_one(alpha):
    wf = WeightFunction("one.sided", tuple(np.linspace(0.05, 0.5, len(alpha) - 1)), alpha)
    x, w = np.polynomial.legendre.leggauss(200)
    x, w = 9 * x, 9 * w
    if wf.J == 2:
        total = np.sum(w * np.exp(wf.log_prior_x(x[:, None])))
    else:
        X = np.stack(np.meshgrid(x, x, indexing="ij"), -1).reshape(-1, 2)
        total = np.sum(np.outer(w, w).ravel() * np.exp(wf.log_prior_x(X)))
    assert total == pytest.approx(1.0, abs=1e-9)


def test_weight_prior_matches_cumulative_dirichlet_draws():
    wf = WeightFunction("one.sided", (0.025, 0.05), (2.0, 1.0, 0.5))
    rng = np.random.default_rng(1)
    omega = wf.prior_draws(200_000, rng)
    x = WeightFunction.x_from_omega(omega)
    # E[omega_2] under the prior, by quadrature of the density in x versus Monte Carlo
    g, w = np.polynomial.legendre.leggauss(120)
    g, w = 9 * g, 9 * w
    X = np.stack(np.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
    dens = np.outer(w, w).ravel() * np.exp(wf.log_prior_x(X))
    e_quad = np.sum(dens * WeightFunction.omega_from_x(X)[:, 1])
    assert e_quad == pytest.approx(omega[:, 1].mean(), abs=4 * omega[:, 1].std() / np.sqrt(omega.shape[0]))
    assert np.all(np.isfinite(x))


# ------------------------------------------------------------------------------------------------
# selection likelihoods
# ------------------------------------------------------------------------------------------------


def test_selection_loglik_without_selection_is_normal():
    yi, vi, _ = small_data()
    for wf in psma_weightfunctions():
        ll = selection_loglik(yi, vi, np.array([0.2]), np.array([0.15]), np.ones((1, wf.J)), wf)
        ref = stats.norm.logpdf(yi, 0.2, np.sqrt(vi + 0.15**2)).sum()
        assert ll[0] == pytest.approx(ref, rel=1e-12)


@pytest.mark.parametrize("wf", psma_weightfunctions(), ids=lambda w: w.label)
def test_weighted_normal_density_integrates_to_one(wf):
    rng = np.random.default_rng(7)
    omega = wf.omega_from_eta(rng.dirichlet(np.ones(wf.J)))
    vi = np.array([0.02])
    def f(y):
        return np.exp(selection_loglik(np.array([y]), vi, np.array([0.1]), np.array([0.2]), omega[None], wf))[0]

    cuts = np.sort(np.r_[wf.z_cuts()[0] * np.sqrt(vi[0]), -3.0, 3.0])
    total = sum(integrate.quad(f, a, b, epsabs=1e-13, epsrel=1e-12)[0] for a, b in itertools.pairwise(cuts))
    total += integrate.quad(f, -np.inf, -3.0)[0] + integrate.quad(f, 3.0, np.inf)[0]
    assert total == pytest.approx(1.0, abs=1e-9)


def _two_effect_density(loglik, y1, y2):
    return np.exp(loglik(np.array([y1, y2])))


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["joint", "conditional"])
def test_three_level_selection_density_integrates_to_one(kind):
    wf = WeightFunction("one.sided", (0.025, 0.5), (1, 1, 1))
    vi = np.array([0.03, 0.05])
    omega = np.array([[1.0, 0.4, 0.15]])
    fn = R.three_level_joint_selection_loglik if kind == "joint" else R.three_level_selection_loglik

    def loglik(y):
        data = R.RobmaData.build(y, vi, np.array([1, 1]))
        return fn(data, np.array([0.1]), np.array([0.03]), np.array([0.01]), omega, wf, 32)[0]

    g, w = np.polynomial.legendre.leggauss(12)
    edges = np.r_[-1.6, np.sort(np.r_[wf.z_cuts()[0][:, None] * np.sqrt(vi)[None, :]].ravel()), 1.9]
    nodes, weights = [], []
    for a, b in itertools.pairwise(edges):
        nodes.append(a + (b - a) * (g + 1) / 2)
        weights.append(w * (b - a) / 2)
    nodes, weights = np.concatenate(nodes), np.concatenate(weights)
    total = 0.0
    for y1, w1 in zip(nodes, weights, strict=True):
        for y2, w2 in zip(nodes, weights, strict=True):
            total += w1 * w2 * _two_effect_density(loglik, y1, y2)
    # the grid cuts at every discontinuity of either coordinate (cuts of both SEs), so it is accurate
    assert total == pytest.approx(1.0, abs=2e-4)


def test_three_level_reduces_to_single_level():
    yi, vi, cluster = small_data(k=6, three_level=True)
    wf = WeightFunction("one.sided", (0.05,), (1, 1))
    omega = np.array([[1.0, 0.3]])
    data = R.RobmaData.build(yi, vi, cluster)
    single = selection_loglik(data.yi, data.vi, np.array([0.2]), np.array([0.12]), omega, wf)
    for fn in (R.three_level_joint_selection_loglik, R.three_level_selection_loglik):
        rho0 = fn(data, np.array([0.2]), np.array([0.0]), np.array([0.12**2]), omega, wf, 16)
        assert rho0[0] == pytest.approx(single[0], rel=1e-10)
    # every study with one effect: the joint likelihood is the single-level one for any split of tau^2
    ones = R.RobmaData.build(yi, vi, np.arange(6))
    mixed = R.three_level_joint_selection_loglik(ones, np.array([0.2]), np.array([0.6 * 0.12**2]),
                                                 np.array([0.4 * 0.12**2]), omega, wf, 16)
    assert mixed[0] == pytest.approx(single[0], rel=1e-10)


def test_gh_nodes_converge():
    yi, vi, cluster = small_data(k=10, three_level=True, tau=0.2)
    wf = WeightFunction("one.sided", (0.025, 0.5), (1, 1, 1))
    data = R.RobmaData.build(yi, vi, cluster)
    omega = np.array([[1.0, 0.5, 0.2]])
    vals = [R.three_level_joint_selection_loglik(data, np.array([0.1]), np.array([0.03]), np.array([0.01]), omega,
                                                 wf, q)[0] for q in (robma_settings().gh_nodes, 64)]
    # the default rule is accurate to ~1e-5 in the log-likelihood when tau is large relative to the SEs
    assert vals[0] == pytest.approx(vals[1], abs=1e-4)


# ------------------------------------------------------------------------------------------------
# marginal likelihoods
# ------------------------------------------------------------------------------------------------


def test_no_bias_models_match_exact_quadrature():
    yi, vi, _ = small_data(k=7)
    pri = robma_settings().priors
    meta = MetaPriors(pri.mu, pri.tau)
    exact = exact_posterior(yi, vi, meta)
    res = R.quadrature(bound("random:none", yi, vi))
    # at k = 7 the posterior of (mu, log tau) is far from Gaussian (a funnel with polynomial tails in mu):
    # the adaptive rule must stay within its own error estimate of the exact one-dimensional quadrature
    assert abs(res.log_evidence - exact.log_evidence) <= max(ERR_FACTOR * res.error, 1e-8)
    fe = R.quadrature(bound("fixed:none", yi, vi))
    assert fe.log_evidence == pytest.approx(exact.log_evidence_fe, abs=1e-9)
    null = R.quadrature(bound("fixed_null:none", yi, vi))
    assert null.log_evidence == pytest.approx(stats.norm.logpdf(yi, 0, np.sqrt(vi)).sum(), rel=1e-14)
    # posterior of mu: mean and 95% interval against the exact mixture
    tab = exact.summary().set_index("parameter")
    mu = res.marginals["mu"]
    assert mu.expect() == pytest.approx(tab.loc["mu", "mean"], abs=1e-3 * tab.loc["mu", "sd"] + 10 * res.error)


def _gl(a, b, n):
    x, w = np.polynomial.legendre.leggauss(n)
    return a + (b - a) * (x + 1) / 2, w * (b - a) / 2


def _brute(model, axes):
    """log of the integral over a tensor grid in constrained parameters (prior densities on that scale)."""
    grids = [_gl(*ax[1:]) for ax in axes]
    mesh = np.meshgrid(*[g[0] for g in grids], indexing="ij")
    wts = np.prod(np.meshgrid(*[g[1] for g in grids], indexing="ij"), axis=0).ravel()
    P = model.priors
    pts = {ax[0]: m.ravel() for ax, m in zip(axes, mesh, strict=True)}
    n = wts.size
    mu = pts.get("mu", np.zeros(n))
    tau = pts.get("tau", np.zeros(n))
    logp = np.zeros(n)
    if "mu" in pts:
        logp += P.mu.logpdf(mu)
    if "tau" in pts:
        logp += P.tau.logpdf(tau)
    spec, D = model.spec, model.data
    if spec.bias == "selection":
        omega = np.column_stack([np.ones(n), pts["omega2"]])  # J = 2: uniform prior on omega_2
        ll = selection_loglik(D.yi, D.vi, mu, tau, omega, spec.wf)
    else:
        b = pts["b"]
        logp += (P.pet if spec.bias == "pet" else P.peese).logpdf(b)
        x = D.sei if spec.bias == "pet" else D.vi
        sd = np.sqrt(D.vi[None, :] + tau[:, None] ** 2)
        ll = stats.norm.logpdf(D.yi[None, :], mu[:, None] + b[:, None] * x[None, :], sd).sum(1)
    return float(special.logsumexp(logp + ll, b=wts))


@pytest.mark.parametrize("name", ["fixed:1s(.05)", "random_null:1s(.05)",
                                  *[pytest.param(n, marks=pytest.mark.slow)
                                    for n in ("random:1s(.05)", "random:2s(.05)", "random:pet", "random:peese")]])
def test_marginal_likelihood_against_brute_force(name):
    yi, vi, _ = small_data(k=6, seed=11)
    model = bound(name, yi, vi)
    res = R.quadrature(model)
    axes = []
    if model.spec.effect:
        axes.append(("mu", -0.6, 1.0, 120))
    if model.spec.heterogeneity:
        axes.append(("tau", 1e-9, 1.5, 160))
    if model.spec.bias == "selection":
        axes.append(("omega2", 0.0, 1.0, 80))
    if model.spec.bias == "pet":
        axes.append(("b", 0.0, 40.0, 200))
    if model.spec.bias == "peese":
        axes.append(("b", 0.0, 400.0, 200))
    if model.spec.bias in ("pet", "peese"):
        # the Cauchy tail beyond the grid: the likelihood there is negligible (|b x| >> |y|), the prior mass is not
        pass
    brute = _brute(model, axes)
    assert abs(res.log_evidence - brute) <= max(ERR_FACTOR * res.error, BRUTE_ATOL), (res.log_evidence, brute,
                                                                                       res.error)


@pytest.mark.slow
def test_bridge_sampling_recovers_known_constant():
    rng = np.random.default_rng(5)
    d = 3
    A = rng.standard_normal((d, d))
    cov = A @ A.T + d * np.eye(d)
    mean = rng.standard_normal(d)
    draws = rng.multivariate_normal(mean, cov, size=(4, 1000))
    log_c = 12.345
    inv = np.linalg.inv(cov)
    logdet = np.linalg.slogdet(cov)[1]

    def log_q(x):
        z = x - mean
        return log_c - 0.5 * (np.einsum("ni,ij,nj->n", z, inv, z) + logdet + d * np.log(2 * np.pi))

    res = bridge_sampling(draws, log_q, seed=1)
    assert res.log_evidence == pytest.approx(log_c, abs=max(4 * res.error, 1e-3))
    assert 0 < res.error < 0.05


# ------------------------------------------------------------------------------------------------
# the ensemble and its table
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_fit():  # ~1 minute: the tests using it are marked slow
    yi, vi, _ = small_data(k=10, seed=2)
    return R.fit_robma(yi, vi, None, robma_settings(), seed=1)


@pytest.mark.slow
def test_table_structure_and_inclusion_bayes_factors(small_fit):
    tab = R.robma_summary(small_fit, 0.95)
    assert tuple(tab.columns) == R.ROBMA_COLUMNS
    models = tab.iloc[:36]
    assert models["post_prob"].sum() == pytest.approx(1.0, abs=1e-12)
    incl = tab.set_index("model")
    for comp, mask in small_fit.masks().items():
        prior_in = small_fit.prior_prob[mask].sum()
        post_in = small_fit.post_prob[mask].sum()
        bf = (post_in / (1 - post_in)) / (prior_in / (1 - prior_in))
        assert incl.loc[f"robma:inclusion:{comp}", "bf_inclusion"] == pytest.approx(bf, rel=1e-9)
    avg = incl.loc["robma:model_averaged"]
    assert avg["mu_eti_lb"] <= avg["mu_median"] <= avg["mu_eti_ub"]
    assert avg["r_eti_lb"] == pytest.approx(np.tanh(avg["mu_eti_lb"]))
    assert set(models["method"]) <= {"closed_form", "quadrature"}
    assert np.all(models["log_evidence_error"] >= 0)


@pytest.mark.slow
def test_model_averaged_mean_is_mixture_of_conditional_means(small_fit):
    tab = R.robma_summary(small_fit, 0.95).set_index("model")
    models = tab.iloc[:36]
    mix = float(np.dot(models["post_prob"], models["mu_mean"]))
    assert tab.loc["robma:model_averaged", "mu_mean"] == pytest.approx(mix, abs=1e-9)


@pytest.mark.slow
def test_robma_table_appends_after_exact_rows():
    from alliancemeta.studies.bayes.averaging import model_averaging

    yi, vi, _ = small_data(k=6, seed=4)
    exact = model_averaging(yi, vi, {"prior_mu": {"dist": "normal", "mu": 0, "sigma": 1},
                                     "prior_tau": {"dist": "halfnormal", "sigma": 0.5}})
    settings_ = robma_settings(components=["pet", "peese"])
    tab = R.robma_table(R.fit_robma(yi, vi, None, settings_, seed=0), 0.95, exact_rows=exact)
    assert list(tab["model"].iloc[: len(exact)]) == list(exact["model"])
    assert tab["model"].iloc[len(exact)] == "robma:fixed_null:none"
    assert tab["model"].is_unique
    assert len(R.model_set(settings_.priors)) == 12


def test_config_errors_name_the_key():
    base = robma_settings()
    section = {**base.priors.as_config(), "gh_nodes": 12, "selection_likelihood": "joint", "method": "auto",
               "sensitivity": {}}

    def settings_with(**over):
        return R.RobmaSettings.from_config({**section, **over}, base.sampler)

    with pytest.raises(ValueError, match=r"bayes\.robma\.prior_prob\.bias"):
        settings_with(prior_prob={**base.priors.prob, "bias": 1.0})
    with pytest.raises(ValueError, match=r"bayes\.robma\.components"):
        settings_with(components=["funnel"])
    with pytest.raises(ValueError, match="weightfunctions"):
        settings_with(weightfunctions=[{"side": "one.sided", "steps": [0.5, 0.05]}])
    with pytest.raises(ValueError, match="selection_likelihood"):
        settings_with(selection_likelihood="product")
    with pytest.raises(ValueError, match=r"bayes\.robma\.sensitivity\.wide: unknown key"):
        settings_with(sensitivity={"wide": {"prior_sigma": 1}})
    with pytest.raises(ValueError, match=r"bayes\.robma\.sensitivity\.bad"):
        settings_with(sensitivity={"bad": {"weightfunctions": [{"side": "one.sided", "steps": [0.5, 0.05]}]}})
    assert parse_prior({"dist": "halfcauchy", "beta": 10}, "x", ("halfcauchy",)).kw["beta"] == 10


@pytest.mark.slow
def test_three_level_ensemble_runs_by_quadrature():
    yi, vi, cluster = small_data(k=8, seed=9, three_level=True)
    s = robma_settings(weightfunctions=[{"side": "one.sided", "steps": [0.05]}])
    fit = R.fit_robma(yi, vi, cluster, s, seed=2)
    assert fit.three_level and fit.n_studies == 4
    assert len(fit.models) == 4 * 4
    assert all(m.method in ("closed_form", "quadrature") for m in fit.models)
    assert np.isclose(fit.post_prob.sum(), 1.0)


# ------------------------------------------------------------------------------------------------
# quadrature versus MCMC + bridge sampling (slow)
# ------------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("name,three", [("random:1s(.025,.05)", False), ("random:pet", False),
                                        ("random:1s(.05)", True)])
def test_quadrature_matches_mcmc_bridge(name, three):
    yi, vi, cluster = small_data(k=12, seed=21, three_level=three)
    model = bound(name, yi, vi, cluster)
    quad_res = R.quadrature(model)
    settings_ = robma_settings(bayes={"draws": 1500, "tune": 1000, "chains": 4}).sampler
    mc = R.mcmc_bridge(model, settings_, seed=17)
    assert mc.max_r_hat <= 1.01 and mc.min_ess_bulk >= 400
    combined = np.hypot(mc.error, quad_res.error)
    assert abs(mc.log_evidence - quad_res.log_evidence) <= 4 * combined + 0.02
    mu_q, mu_mc = quad_res.marginals["mu"], mc.marginals["mu"]
    sd = np.sqrt(mu_q.expect(lambda v: v * v) - mu_q.expect() ** 2)
    assert mu_mc.expect() == pytest.approx(mu_q.expect(), abs=0.1 * sd)


def test_worker_processes_give_the_same_ensemble():
    yi, vi, _ = small_data(k=6, seed=5)
    settings_ = robma_settings(components=["pet"], weightfunctions=[{"side": "one.sided", "steps": [0.05]}])
    one = R.robma_summary(R.fit_robma(yi, vi, None, settings_, seed=0), 0.95)
    two = R.robma_summary(R.fit_robma(yi, vi, None, settings_, seed=0, workers=2), 0.95)
    pd.testing.assert_frame_equal(one, two, check_exact=True)


def test_data_sorted_by_cluster_keeps_order_map():
    yi = np.array([0.1, 0.2, 0.3, 0.4])
    data = R.RobmaData.build(yi, np.full(4, 0.01), np.array(["b", "a", "b", "a"]))
    np.testing.assert_array_equal(data.yi, yi[data.order])
    assert list(data.starts) == [0, 2]
    assert pd.Series(data.codes).is_monotonic_increasing


@pytest.mark.slow
def test_prior_sensitivity_covers_bias_priors():
    yi, vi, _ = small_data(k=6, seed=8)
    alt = {"PET Cauchy+(5)": {"prior_pet": {"dist": "halfcauchy", "beta": 5.0}}}
    base = robma_settings(components=["pet"], sensitivity=alt)
    table = R.prior_sensitivity_robma(yi, vi, None, base, seed=0, level=0.95)
    assert list(table["prior"]) == ["default", "PET Cauchy+(5)"]
    # the alternative refits the four PET models only; the no-bias ones are reused
    assert list(table["models_refitted"]) == [8, 4]
    fresh = R.fit_robma(yi, vi, None, base.alternative("PET Cauchy+(5)"), seed=0)
    fresh_row = R.robma_summary(fresh, 0.95).set_index("model")
    assert table["BF_bias"].iloc[1] == fresh_row.loc["robma:inclusion:bias", "bf_inclusion"]
    assert table["mu_mean"].iloc[1] == fresh_row.loc["robma:model_averaged", "mu_mean"]
    assert np.all(np.isfinite(table[["BF_effect", "BF_heterogeneity", "BF_bias", "mu_mean"]].to_numpy()))
    # a wider PET prior spreads the prior mass: the bias Bayes factor changes
    assert table["BF_bias"].iloc[0] != pytest.approx(table["BF_bias"].iloc[1], rel=1e-3)
