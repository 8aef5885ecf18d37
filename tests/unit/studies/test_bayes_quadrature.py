"""Priors and the exact quadrature path, checked against independent computations (no PyMC needed).

Independent checks: the prior densities against scipy's distributions and against normalisation;
the quadrature posterior against brute-force 2-D grid integration over (mu, tau); the marginal
likelihood against scipy's multivariate normal with beta integrated out (dense covariance);
the meta-regression against the same dense formulas integrated with scipy's adaptive ``quad``;
limits (tau -> 0 gives the conjugate normal posterior); simulation-based calibration (slow).
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd
import pytest
from scipy import integrate, stats

from alliancemeta.core.settings import validate_config
from alliancemeta.studies.bayes import quadrature as quad
from alliancemeta.studies.bayes.averaging import _Mixture, model_averaging
from alliancemeta.studies.bayes.priors import (
    EARLIER_ALLIANCE_R,
    MU_DISTS,
    POOLED_2018,
    TAU_DISTS,
    MetaPriors,
    PriorError,
    normal_prior_from_pooled,
    parse_prior,
)
from alliancemeta.studies.bayes.quadrature import exact_posterior, prior_sensitivity

ROOT = Path(__file__).resolve().parents[3]

#: Quadrature vs brute force: the 2-D Simpson grid below is accurate to ~1e-7 relative, so the
#: comparison is limited by the grid, not by the quadrature.
GRID_RTOL = 2e-6
#: Quadrature vs adaptive scipy quad / closed forms: both are near machine precision.
TIGHT = 1e-8

DEFAULT = MetaPriors(parse_prior({"dist": "normal", "mu": 0, "sigma": 1}, "m", MU_DISTS),
                     parse_prior({"dist": "halfnormal", "sigma": 0.5}, "t", TAU_DISTS))


def molloy():
    frame = pd.read_csv(ROOT / "data" / "raw" / "molloy2014.csv")
    return np.arctanh(frame["r"].to_numpy()), 1.0 / (frame["n"].to_numpy() - 3.0), frame


def with_tau(spec):
    return DEFAULT.with_tau(parse_prior(spec, "t", TAU_DISTS))


# --------------------------------------------------------------------------------------------------
# priors
# --------------------------------------------------------------------------------------------------

#: The configuration's defaults, read from the schema (where every default is written once).
CONFIG_DEFAULTS = validate_config({})

TAU_SPECS = [
    *CONFIG_DEFAULTS["bayes"]["sensitivity_priors"],
    {"dist": "halfstudent_t", "nu": 3, "sigma": 0.3},
    {"dist": "inversegamma", "alpha": 1, "beta": 0.15, "on": "tau2"},
    {"dist": "uniform", "lower": 0.01, "upper": 1.5},
]


@pytest.mark.parametrize("spec", TAU_SPECS, ids=lambda s: f"{s['dist']}-{s.get('on', 'tau')}")
def test_tau_prior_density_integrates_to_one(spec):
    prior = parse_prior(spec, "bayes.prior_tau", TAU_DISTS)
    lo, hi = prior.support()
    total = sum(integrate.quad(lambda t: float(np.exp(prior.logpdf(t))), a, b, limit=400, epsabs=1e-12)[0]
                for a, b in ((lo, min(hi, 1.0)), (min(hi, 1.0), hi)) if b > a)
    assert total == pytest.approx(1.0, abs=1e-7)


def test_tau_prior_densities_match_scipy():
    t = np.linspace(0.01, 3, 50)
    cases = {
        "halfnormal": ({"sigma": 0.5}, stats.halfnorm(scale=0.5)),
        "halfcauchy": ({"beta": 0.3}, stats.halfcauchy(scale=0.3)),
        "inversegamma": ({"alpha": 1.0, "beta": 0.075}, stats.invgamma(1.0, scale=0.075)),
        "uniform": ({"lower": 0.0, "upper": 2.0}, stats.uniform(0, 2)),
    }
    for dist, (params, ref) in cases.items():
        prior = parse_prior({"dist": dist, **params}, "k", TAU_DISTS)
        np.testing.assert_allclose(prior.logpdf(t), ref.logpdf(t), rtol=1e-12, err_msg=dist)
    # on tau2: p(tau) = 2 tau p_tau2(tau^2)
    prior = parse_prior({"dist": "inversegamma", "alpha": 1, "beta": 0.15, "on": "tau2"}, "k", TAU_DISTS)
    np.testing.assert_allclose(prior.logpdf(t), np.log(2 * t) + stats.invgamma(1, scale=0.15).logpdf(t**2))
    assert prior.label == "tau2 ~ InvGamma(1, 0.15)"


@pytest.mark.parametrize(
    ("spec", "allowed", "message"),
    [
        ({"dist": "lognormal", "sigma": 1}, TAU_DISTS, "bayes.prior_tau: unknown prior distribution 'lognormal'"),
        ({"dist": "halfnormal", "sigma": 1}, MU_DISTS, "needs a normal prior"),
        ({"dist": "halfnormal"}, TAU_DISTS, "bayes.prior_tau.sigma: missing"),
        ({"dist": "halfnormal", "sigma": -1}, TAU_DISTS, "bayes.prior_tau.sigma: -1 must be > 0"),
        ({"dist": "halfnormal", "sigma": 0.5, "scale": 2}, TAU_DISTS, "unknown parameter(s) scale"),
        ({"dist": "halfnormal", "sigma": "wide"}, TAU_DISTS, "bayes.prior_tau.sigma: 'wide' is not a number"),
        ({"dist": "uniform", "lower": 1, "upper": 0.5}, TAU_DISTS, "0 <= lower < upper"),
        ({"dist": "halfnormal", "sigma": 0.5, "on": "tau3"}, TAU_DISTS, "bayes.prior_tau.on"),
        ("halfnormal", TAU_DISTS, "expected a mapping with a 'dist' entry"),
    ],
)
def test_bad_prior_specs_name_the_key(spec, allowed, message):
    with pytest.raises(PriorError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_prior(spec, "bayes.prior_tau", allowed)


def test_config_defaults_and_unknown_mu_prior():
    priors = MetaPriors.from_config(CONFIG_DEFAULTS["bayes"])
    assert priors.label == "mu ~ Normal(0, 1); tau ~ HalfNormal(0.5)"
    with pytest.raises(PriorError, match=r"bayes\.prior_mu: unknown prior distribution 'cauchy'"):
        MetaPriors.from_config({"prior_mu": {"dist": "cauchy", "beta": 1}})


def test_informative_prior_derivation():
    prior = normal_prior_from_pooled(*POOLED_2018, earlier_r=EARLIER_ALLIANCE_R)
    se = (np.arctanh(0.299) - np.arctanh(0.256)) / (2 * stats.norm.ppf(0.975))
    between = np.std(np.arctanh(EARLIER_ALLIANCE_R), ddof=1)
    assert prior["mu"] == pytest.approx(np.arctanh(0.278), rel=1e-15)
    assert prior["sigma"] == pytest.approx(np.sqrt(se**2 + between**2), rel=1e-14)
    # the schema default of bayes.informative_mu is this derivation rounded to 4 decimals
    default = CONFIG_DEFAULTS["bayes"]["informative_mu"]
    assert default["dist"] == "normal"
    assert (round(prior["mu"], 4), round(prior["sigma"], 4)) == (default["mu"], default["sigma"])


# --------------------------------------------------------------------------------------------------
# quadrature vs brute force
# --------------------------------------------------------------------------------------------------


def brute_force(yi, vi, priors, mu_grid, tau_grid):
    """Posterior summaries by Simpson integration of p(mu, tau | y) on a dense 2-D grid."""
    M, T = np.meshgrid(mu_grid, tau_grid, indexing="ij")
    lp = -0.5 * ((M - priors.mu["mu"]) / priors.mu["sigma"]) ** 2 + priors.tau.logpdf(tau_grid)[None, :]
    lp -= 0.5 * np.log(2 * np.pi * priors.mu["sigma"] ** 2)
    for y, v in zip(yi, vi, strict=True):
        s2 = v + T**2
        lp -= 0.5 * (np.log(2 * np.pi * s2) + (y - M) ** 2 / s2)
    dens = np.exp(lp - lp.max())
    p_mu = integrate.simpson(dens, x=tau_grid, axis=1)
    Z = integrate.simpson(p_mu, x=mu_grid)
    p_mu /= Z
    p_tau = integrate.simpson(dens, x=mu_grid, axis=0) / Z
    out = {}
    for name, x, p in (("mu", mu_grid, p_mu), ("tau", tau_grid, p_tau)):
        mean = integrate.simpson(x * p, x=x)
        out[name] = (mean, np.sqrt(integrate.simpson((x - mean) ** 2 * p, x=x)))
    r_mean = integrate.simpson(np.tanh(mu_grid) * p_mu, x=mu_grid)
    out["r"] = (r_mean, np.sqrt(integrate.simpson((np.tanh(mu_grid) - r_mean) ** 2 * p_mu, x=mu_grid)))
    out["log_evidence"] = np.log(Z) + lp.max()
    return out


class NestedQuad:
    """CDFs by adaptive scipy quad over tau of dense closed forms (grids are too coarse for tail areas)."""

    OPTS: ClassVar[dict] = {"limit": 400, "epsabs": 1e-13, "epsrel": 1e-12}

    def __init__(self, yi, vi, priors, log_evidence, upper):
        self.yi, self.vi, self.priors, self.log_evidence, self.upper = yi, vi, priors, log_evidence, upper

    def density(self, tau):
        cov = np.diag(self.vi + tau**2) + self.priors.mu["sigma"] ** 2
        mean = np.full(self.yi.size, self.priors.mu["mu"])
        return float(np.exp(stats.multivariate_normal(mean, cov).logpdf(self.yi) + self.priors.tau.logpdf(tau)
                            - self.log_evidence))

    def mu_cdf(self, c):
        def cond(tau):
            w = 1.0 / (self.vi + tau**2)
            prec = w.sum() + 1.0 / self.priors.mu["sigma"] ** 2
            m = (np.dot(w, self.yi) + self.priors.mu["mu"] / self.priors.mu["sigma"] ** 2) / prec
            return stats.norm.cdf(c, m, 1.0 / np.sqrt(prec))

        return integrate.quad(lambda t: self.density(t) * cond(t), 0.0, self.upper, **self.OPTS)[0]

    def tau_cdf(self, c):
        return integrate.quad(self.density, 0.0, c, **self.OPTS)[0]

    def tau_moments(self):
        m1 = integrate.quad(lambda t: t * self.density(t), 0.0, self.upper, **self.OPTS)[0]
        m2 = integrate.quad(lambda t: t * t * self.density(t), 0.0, self.upper, **self.OPTS)[0]
        return m1, np.sqrt(m2 - m1**2)


@pytest.mark.parametrize("spec", [{"dist": "halfnormal", "sigma": 0.5}, {"dist": "uniform", "upper": 2.0},
                                  {"dist": "inversegamma", "alpha": 1, "beta": 0.075}],
                         ids=lambda s: s["dist"])
def test_quadrature_matches_brute_force_grid(spec):
    yi, vi, _ = molloy()
    yi, vi = yi[:6], vi[:6]  # small k: a wide posterior is the hard case for a grid and for quadrature
    priors = with_tau(spec)
    post = exact_posterior(yi, vi, priors)
    # wide enough that the truncated mass is < 1e-9: at large tau, mu | tau spreads out
    upper = min(priors.tau.support()[1], 4.0)
    ref = brute_force(yi, vi, priors, np.linspace(-2.5, 3.0, 3001), np.linspace(0.0, upper, 3001))
    nested = NestedQuad(yi, vi, priors, post.log_evidence, priors.tau.support()[1])
    table = post.summary().set_index("parameter")
    for name in ("mu", "r"):
        assert table.loc[name, "mean"] == pytest.approx(ref[name][0], rel=GRID_RTOL)
        assert table.loc[name, "sd"] == pytest.approx(ref[name][1], rel=GRID_RTOL)
    # tau: the inverse-gamma's exp(-beta/tau) rise defeats the grid; adaptive quad to infinity instead
    assert table.loc["tau", "mean"] == pytest.approx(ref["tau"][0], rel=1e-4)
    assert (table.loc["tau", "mean"], table.loc["tau", "sd"]) == pytest.approx(nested.tau_moments(), rel=TIGHT)
    assert post.log_evidence == pytest.approx(ref["log_evidence"], abs=1e-6)
    # tail areas at the quadrature's quantiles and thresholds, by adaptive integration
    assert nested.mu_cdf(table.loc["mu", "eti_lb"]) == pytest.approx(0.025, abs=TIGHT)
    assert nested.mu_cdf(table.loc["mu", "eti_ub"]) == pytest.approx(0.975, abs=TIGHT)
    assert nested.tau_cdf(table.loc["tau", "eti_lb"]) == pytest.approx(0.025, abs=TIGHT)
    assert nested.tau_cdf(table.loc["tau", "eti_ub"]) == pytest.approx(0.975, abs=TIGHT)
    assert 1.0 - nested.mu_cdf(np.arctanh(0.1)) == pytest.approx(table.loc["r", "p_gt_0.1"], abs=TIGHT)
    assert 1.0 - nested.mu_cdf(0.0) == pytest.approx(table.loc["r", "p_gt_0"], abs=TIGHT)
    assert table.loc["r", "eti_lb"] == pytest.approx(np.tanh(table.loc["mu", "eti_lb"]), rel=1e-14)


def test_theta_new_is_the_predictive_mixture():
    yi, vi, _ = molloy()
    post = exact_posterior(yi, vi, DEFAULT)
    row = post.summary().set_index("parameter").loc["theta_new"]
    # independent: E and Var of mu + tau z from the node moments of mu and tau
    e_mu = np.dot(post.weight, post.mean[:, 0])
    var = np.dot(post.weight, post.cov[:, 0, 0] + post.mean[:, 0] ** 2 + post.tau**2) - e_mu**2
    assert row["mean"] == pytest.approx(e_mu, rel=1e-14)
    assert row["sd"] == pytest.approx(np.sqrt(var), rel=1e-12)
    assert post.mixture_cdf("theta_new", row["eti_ub"]) == pytest.approx(0.975, abs=1e-12)


def test_marginal_likelihood_matches_dense_multivariate_normal():
    """p(y | tau) with beta integrated out is N(X b0, V + tau^2 I + X S0 X')."""
    yi, vi, frame = molloy()
    X = np.column_stack([np.ones(yi.size), frame["meanage"].to_numpy() - 40.0])
    priors = DEFAULT
    post = exact_posterior(yi, vi, priors, X=X, terms=("intrcpt", "age"))
    S0 = np.diag([1.0, priors.beta_sigma**2])
    for tau in (0.0, 0.03, 0.2, 1.5):
        cov = np.diag(vi + tau**2) + X @ S0 @ X.T
        dense = stats.multivariate_normal(mean=np.zeros(yi.size), cov=cov).logpdf(yi)
        # rel 1e-9: the dense covariance (entries ~400 from the uncentred age) costs scipy ~1e-10
        assert post.log_joint(np.array([tau]))[0] - priors.tau.logpdf(tau) == pytest.approx(dense, rel=1e-9)
        if tau == 0.0:
            assert post.log_evidence_fe == pytest.approx(dense, rel=1e-9)


def test_meta_regression_matches_adaptive_integration():
    """Posterior means of tau and the slope, and p(y), by scipy quad over tau with dense GLS algebra."""
    yi, vi, frame = molloy()
    x = frame["meanage"].to_numpy() - frame["meanage"].mean()
    X = np.column_stack([np.ones(yi.size), x])
    priors = DEFAULT
    post = exact_posterior(yi, vi, priors, X=X, terms=("intrcpt", "meanage"))
    S0inv = np.diag([1.0, 1.0 / priors.beta_sigma**2])

    def joint(tau):
        cov = np.diag(vi + tau**2) + X @ np.linalg.inv(S0inv) @ X.T
        return np.exp(stats.multivariate_normal(np.zeros(yi.size), cov).logpdf(yi) + priors.tau.logpdf(tau)
                      - post.log_evidence)

    def slope(tau):
        Winv = np.diag(1.0 / (vi + tau**2))
        return np.linalg.solve(X.T @ Winv @ X + S0inv, X.T @ Winv @ yi)[1]

    opts = {"limit": 500, "epsabs": 1e-13, "epsrel": 1e-11}
    mass = integrate.quad(joint, 0, 3, **opts)[0]
    mean_tau = integrate.quad(lambda t: t * joint(t), 0, 3, **opts)[0]
    mean_slope = integrate.quad(lambda t: slope(t) * joint(t), 0, 3, **opts)[0]
    table = post.summary().set_index("parameter")
    assert mass == pytest.approx(1.0, abs=1e-9)
    assert table.loc["tau", "mean"] == pytest.approx(mean_tau, rel=TIGHT)
    assert table.loc["meanage", "mean"] == pytest.approx(mean_slope, rel=TIGHT)
    assert list(table.index) == ["intrcpt", "meanage", "tau"]


def test_tau_near_zero_gives_the_conjugate_equal_effects_posterior():
    yi, vi, _ = molloy()
    post = exact_posterior(yi, vi, with_tau({"dist": "uniform", "lower": 0, "upper": 1e-9}))
    prec = np.sum(1 / vi) + 1.0
    mean = np.sum(yi / vi) / prec
    table = post.summary().set_index("parameter")
    assert table.loc["mu", "mean"] == pytest.approx(mean, rel=1e-9)
    assert table.loc["mu", "sd"] == pytest.approx(np.sqrt(1 / prec), rel=1e-9)
    assert table.loc["mu", "eti_ub"] == pytest.approx(mean + stats.norm.ppf(0.975) / np.sqrt(prec), rel=1e-9)
    assert table.loc["tau", "eti_ub"] <= 1e-9


def test_quadrature_is_converged_in_the_number_of_panels(monkeypatch):
    yi, vi, _ = molloy()
    base = exact_posterior(yi, vi, DEFAULT).summary()
    monkeypatch.setattr(quad, "N_PANELS", 2 * quad.N_PANELS)
    fine = exact_posterior(yi, vi, DEFAULT).summary()
    cols = ["mean", "sd", "eti_lb", "eti_ub", "p_gt_0", "p_gt_0.1"]
    np.testing.assert_allclose(base[cols].to_numpy(), fine[cols].to_numpy(), rtol=1e-10, atol=1e-12)


def test_tau_quantile_and_cdf_are_inverse():
    yi, vi, _ = molloy()
    post = exact_posterior(yi, vi, with_tau({"dist": "halfcauchy", "beta": 0.3}))
    for q in (1e-4, 0.025, 0.5, 0.975, 0.9999):
        assert post.tau_cdf(post.tau_quantile(q)) == pytest.approx(q, abs=1e-12)
    t = np.linspace(0.0, 1.0, 20001)
    assert integrate.simpson(post.tau_density(t), x=t) == pytest.approx(post.tau_cdf(1.0), abs=1e-8)


@pytest.mark.parametrize("k", [1, 2])
def test_tiny_k_with_heavy_tailed_prior_is_proper(k):
    yi, vi, _ = molloy()
    post = exact_posterior(yi[:k], vi[:k], with_tau({"dist": "halfcauchy", "beta": 0.3}))
    table = post.summary()
    assert np.all(np.isfinite(table[["mean", "sd", "eti_lb", "eti_ub"]].to_numpy()))
    assert post.tau_quantile(0.975) > 0.3  # the data say little; the heavy prior tail survives


def test_input_errors():
    with pytest.raises(ValueError, match="vi must be > 0"):
        exact_posterior([0.1, 0.2], [0.01, 0.0], DEFAULT)
    with pytest.raises(ValueError, match="same, non-zero length"):
        exact_posterior([0.1, 0.2], [0.01], DEFAULT)
    with pytest.raises(ValueError, match="term names"):
        exact_posterior([0.1, 0.2, 0.3], [0.01] * 3, DEFAULT, X=np.ones((3, 1)), terms=("a", "b"))


# --------------------------------------------------------------------------------------------------
# prior sensitivity
# --------------------------------------------------------------------------------------------------


def test_prior_sensitivity_rejects_bad_entry_with_its_index():
    yi, vi, _ = molloy()
    with pytest.raises(PriorError, match=r"bayes.sensitivity_priors\[1\]: unknown prior distribution 'gamma'"):
        prior_sensitivity(yi, vi, DEFAULT, [{"dist": "halfnormal", "sigma": 1}, {"dist": "gamma", "alpha": 1}])


# --------------------------------------------------------------------------------------------------
# model averaging
# --------------------------------------------------------------------------------------------------


def test_model_averaging_evidences_and_mixture():
    yi, vi, _ = molloy()
    table = model_averaging(yi, vi, DEFAULT).set_index("model")
    k = yi.size
    # independent marginal likelihoods: closed forms with dense covariances, adaptive quad over tau
    fixed_null = stats.norm.logpdf(yi, 0, np.sqrt(vi)).sum()
    fixed = stats.multivariate_normal(np.zeros(k), np.diag(vi) + 1.0).logpdf(yi)
    prior = DEFAULT.tau

    def null_joint(t):
        return np.exp(stats.norm.logpdf(yi, 0, np.sqrt(vi + t**2)).sum() + prior.logpdf(t) - table.loc[
            "random_null", "log_evidence"])

    assert table.loc["fixed_null", "log_evidence"] == pytest.approx(fixed_null, rel=1e-12)
    assert table.loc["fixed", "log_evidence"] == pytest.approx(fixed, rel=1e-10)
    assert integrate.quad(null_joint, 0, np.inf, limit=400, epsabs=1e-13)[0] == pytest.approx(1.0, abs=1e-9)
    models = table.loc[["fixed_null", "fixed", "random_null", "random"]]
    post = np.exp(models["log_evidence"] - models["log_evidence"].max())
    np.testing.assert_allclose(models["post_prob"], post / post.sum(), rtol=1e-12)
    bf = table.loc["inclusion:effect", "bf_inclusion"]
    p_eff = models.loc[["fixed", "random"], "post_prob"].sum()
    assert bf == pytest.approx(p_eff / (1 - p_eff), rel=1e-10)  # prior odds 1
    avg = table.loc["model_averaged"]
    assert avg["mu_mean"] == pytest.approx((models["post_prob"] * models["mu_mean"]).sum(), rel=1e-12)
    assert avg["p_r_gt_0.1"] == pytest.approx((models["post_prob"] * models["p_r_gt_0.1"]).sum(), rel=1e-10)
    assert avg["mu_eti_lb"] < models.loc["random", "mu_eti_lb"]  # the atom at 0 pulls the lower end down


def test_model_averaged_quantiles_respect_the_atom_at_zero():
    mix = _Mixture(atom=0.6, weights=np.array([0.4]), means=np.array([0.5]), sds=np.array([0.1]))
    assert mix.quantile(0.025) == 0.0 and mix.quantile(0.5) == 0.0
    assert mix.quantile(0.975) == pytest.approx(0.5 + 0.1 * stats.norm.ppf(0.375 / 0.4), rel=1e-10)
    assert mix.cdf(0.0) - mix.cdf(0.0, left=True) == pytest.approx(0.6)


def test_model_averaging_favours_the_null_for_null_data_and_checks_prior_probs():
    _, vi, _ = molloy()
    table = model_averaging(np.zeros(vi.size), vi, DEFAULT).set_index("model")
    assert table.loc["inclusion:effect", "bf_inclusion"] < 1 / 3
    assert table.loc["inclusion:heterogeneity", "bf_inclusion"] < 1
    with pytest.raises(ValueError, match="four non-negative model probabilities"):
        model_averaging(np.zeros(3), vi[:3], DEFAULT, prior_prob=[0.5, 0.5])
    with pytest.raises(ValueError, match="effect component needs prior probability"):
        model_averaging(np.zeros(3), vi[:3], DEFAULT, prior_prob=[0.5, 0.0, 0.5, 0.0])


# --------------------------------------------------------------------------------------------------
# simulation-based calibration (slow)
# --------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_simulation_based_calibration_of_the_exact_posterior():
    """Draw (mu, tau) from the prior, data from the model: the posterior CDF at the truth is U(0, 1).

    Talts et al. (2018), *Validating Bayesian inference algorithms with simulation-based
    calibration*, arXiv:1804.06788.  A wrong likelihood, prior density or quadrature shows up as
    a non-uniform rank distribution (KS test) or as coverage far from 95%.
    """
    rng = np.random.default_rng(20261121)
    priors = with_tau({"dist": "halfnormal", "sigma": 0.2})
    reps, k = 300, 12
    u_mu, u_tau, covered = [], [], 0
    for _ in range(reps):
        mu = rng.normal(priors.mu["mu"], priors.mu["sigma"])
        tau = abs(rng.normal(0, 0.2))
        vi = 1 / (rng.integers(20, 200, k) - 3.0)
        yi = rng.normal(mu + tau * rng.normal(size=k), np.sqrt(vi))
        post = exact_posterior(yi, vi, priors)
        u_mu.append(post.mixture_cdf("mu", mu))
        u_tau.append(post.tau_cdf(tau))
        covered += post.mixture_quantile("mu", 0.025) <= mu <= post.mixture_quantile("mu", 0.975)
    assert stats.kstest(u_mu, "uniform").pvalue > 1e-3
    assert stats.kstest(u_tau, "uniform").pvalue > 1e-3
    assert abs(covered / reps - 0.95) < 3.5 * np.sqrt(0.95 * 0.05 / reps)


@pytest.mark.slow
def test_parameter_recovery_at_alliance_values():
    """Known mu = atanh(.28), tau = .1, k = 100: every posterior recovers them; 95% intervals cover."""
    rng = np.random.default_rng(7)
    mu, tau, k, reps = np.arctanh(0.28), 0.1, 100, 40
    hits_mu = hits_tau = 0
    for _ in range(reps):
        vi = 1 / (rng.integers(30, 300, k) - 3.0)
        yi = rng.normal(mu + tau * rng.normal(size=k), np.sqrt(vi))
        table = exact_posterior(yi, vi, DEFAULT).summary().set_index("parameter")
        assert abs(table.loc["mu", "mean"] - mu) < 4 * table.loc["mu", "sd"]
        hits_mu += table.loc["mu", "eti_lb"] <= mu <= table.loc["mu", "eti_ub"]
        hits_tau += table.loc["tau", "eti_lb"] <= tau <= table.loc["tau", "eti_ub"]
    assert hits_mu >= 33 and hits_tau >= 33  # P(Binomial(40, .95) < 33) < 0.3%
