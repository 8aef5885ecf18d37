"""PyMC models, sampling, diagnostics, summaries and LOO, checked against exact computations.

Fast tests build models and evaluate log-densities (no sampling), exercise the diagnostics and
the retry logic with scripted samplers, and run one real nutpie fit of the random-effects model on
molloy2014 (compiled once per module, ~5 s) that must agree with the exact quadrature posterior
within Monte-Carlo error and be bit-for-bit reproducible.  Slow tests sample the meta-regression
and three-level models and recover known parameters.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import arviz as az
import numpy as np
import pandas as pd
import pytest
import xarray as xr
from scipy import integrate, stats

from alliancemeta.core.errors import SamplingError
from alliancemeta.core.mcmc import CompiledModel, diagnose, fit, sample
from alliancemeta.core.seeds import derive_seed
from alliancemeta.core.settings import SamplerSettings
from alliancemeta.core.tables import write_csv
from alliancemeta.studies.bayes.models import REPORTED, build_meta_model
from alliancemeta.studies.bayes.priors import MetaPriors
from alliancemeta.studies.bayes.quadrature import exact_posterior
from alliancemeta.studies.bayes.summary import (
    SUMMARY_COLUMNS,
    compare_models,
    pointwise_log_likelihood,
    summarise,
    with_log_likelihood,
    with_study_effects,
)

ROOT = Path(__file__).resolve().parents[3]
PRIORS = MetaPriors.from_config({"prior_mu": {"dist": "normal", "mu": 0, "sigma": 1},
                                 "prior_tau": {"dist": "halfnormal", "sigma": 0.5}})


def sampler(draws=1000, tune=1000, chains=4, sampler="nutpie", target_accept=0.9, retry_target_accept=0.99):
    """Sampler settings as the config's ``bayes`` section gives them (every key explicit: no defaults in code)."""
    return SamplerSettings(draws, tune, chains, sampler, target_accept, retry_target_accept, "bayes")


SETTINGS = sampler()
#: MCMC vs exact: a posterior mean differs from the exact one by N(0, MCSE^2); 4 MCSE fails by
#: chance with probability 6e-5 per comparison.
N_MCSE = 4.0


def molloy():
    frame = pd.read_csv(ROOT / "data" / "raw" / "molloy2014.csv")
    return np.arctanh(frame["r"].to_numpy()), 1.0 / (frame["n"].to_numpy() - 3.0), frame


def three_level_data(seed=3, n_clusters=14):
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 4, n_clusters)
    cluster = np.repeat([f"S{j:02d}" for j in range(n_clusters)], sizes)
    rng.shuffle(cluster)
    k = cluster.size
    vi = 1.0 / (rng.integers(30, 200, k) - 3.0)
    _, codes = np.unique(cluster, return_inverse=True)
    u = rng.normal(0, 0.12, n_clusters)
    yi = rng.normal(0.28 + u[codes] + rng.normal(0, 0.06, k), np.sqrt(vi))
    return yi, vi, cluster


def point(model, **values):
    """Initial point with some free variables set (on their transformed scale where needed)."""
    pt = model.initial_point()
    for name, value in values.items():
        key = f"{name}_log__" if f"{name}_log__" in pt else name
        pt[key] = np.log(value) if key.endswith("_log__") else np.asarray(value, dtype=float)
    return pt


# --------------------------------------------------------------------------------------------------
# model structure (no sampling)
# --------------------------------------------------------------------------------------------------


def test_random_effects_model_structure_and_log_density():
    yi, vi, frame = molloy()
    model = build_meta_model(yi, vi, PRIORS, study=frame["study"])
    assert {rv.name for rv in model.free_RVs} == {"mu", "tau", "z", "z_new"}
    assert {d.name for d in model.deterministics} == {"theta", "r", "theta_new"}
    assert list(model.coords["study"]) == list(frame["study"])
    assert model.named_vars_to_dims["z"] == ("study",)
    logps = model.point_logps()
    assert all(np.isfinite(v) for v in logps.values())
    # the log-density equals the textbook normal-normal formula at a chosen point
    mu, tau, z = 0.1, 0.2, np.linspace(-1, 1, yi.size)
    pt = point(model, mu=mu, tau=tau, z=z)
    expected = (stats.norm.logpdf(mu, 0, 1) + stats.halfnorm.logpdf(tau, scale=0.5) + np.log(tau)
                + stats.norm.logpdf(z).sum() + stats.norm.logpdf(0.0)
                + stats.norm.logpdf(yi, mu + tau * z, np.sqrt(vi)).sum())
    assert model.compile_logp()(pt) == pytest.approx(expected, rel=1e-10)  # PyTensor's log-erf path


def test_meta_regression_and_equal_effects_structure():
    yi, vi, frame = molloy()
    X = np.column_stack([np.ones(yi.size), frame["meanage"] - frame["meanage"].mean()])
    model = build_meta_model(yi, vi, PRIORS, X=X, terms=["intrcpt", "meanage"], marginal=True)
    assert model.named_vars_to_dims["b"] == ("term",)
    assert list(model.coords["term"]) == ["intrcpt", "meanage"]
    assert {rv.name for rv in model.free_RVs} == {"b", "tau"}
    assert np.isfinite(model.compile_logp()(model.initial_point()))
    fe = build_meta_model(yi, vi, PRIORS, fixed=True)
    assert {rv.name for rv in fe.free_RVs} == {"mu"}
    assert "theta_new" not in fe.named_vars  # no heterogeneity, no predictive spread


def test_tau2_prior_creates_the_variance_and_its_root():
    yi, vi, _ = molloy()
    priors = MetaPriors.from_config({"prior_mu": {"dist": "normal", "mu": 0, "sigma": 1},
                                     "prior_tau": {"dist": "inversegamma", "alpha": 1, "beta": 0.15, "on": "tau2"}})
    model = build_meta_model(yi, vi, priors, marginal=True)
    assert "tau2" in {rv.name for rv in model.free_RVs}
    assert "tau" in {d.name for d in model.deterministics}


def test_three_level_marginal_matches_dense_multivariate_normal():
    yi, vi, cluster = three_level_data()
    model = build_meta_model(yi, vi, PRIORS, cluster=cluster, marginal=True)
    # clusters keep their order of first appearance
    assert list(model.coords["cluster"]) == list(dict.fromkeys(cluster))
    mu, s_study, s_within = 0.25, 0.15, 0.07
    pt = point(model, mu=mu, sigma_study=s_study, sigma_within=s_within)
    same = cluster[:, None] == cluster[None, :]
    cov = np.diag(vi + s_within**2) + s_study**2 * same
    dense = stats.multivariate_normal(np.full(yi.size, mu), cov).logpdf(yi)
    priors = (stats.norm.logpdf(mu) + stats.norm.logpdf(0.0)
              + sum(stats.halfnorm.logpdf(s, scale=0.5) + np.log(s) for s in (s_study, s_within)))
    assert model.compile_logp()(pt) == pytest.approx(priors + dense, abs=1e-8)  # PyTensor's log-erf path
    latent = build_meta_model(yi, vi, PRIORS, cluster=cluster)
    assert {rv.name for rv in latent.free_RVs} == {"mu", "sigma_study", "sigma_within", "u", "e", "z_new"}
    assert latent.named_vars_to_dims["u"] == ("cluster",)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"study": ["a", "a", "b"]}, "labels must be unique"),
        ({"fixed": True, "cluster": [1, 1, 2]}, "no clusters"),
        ({"X": np.ones((3, 2)), "terms": ["a"]}, "unique names"),
        ({"cluster": [1, 2]}, "one identifier per effect"),
    ],
)
def test_model_input_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_meta_model([0.1, 0.2, 0.3], [0.01, 0.02, 0.03], PRIORS, **kwargs)


# --------------------------------------------------------------------------------------------------
# log-likelihoods and summaries on constructed draws
# --------------------------------------------------------------------------------------------------


def fake_idata(posterior: dict, yi, vi, cluster_idx=None, diverging=None):
    post = {k: np.asarray(v) for k, v in posterior.items()}
    chains, draws = next(iter(post.values())).shape[:2]
    const = {"vi": vi} if cluster_idx is None else {"vi": vi, "cluster_idx": cluster_idx}
    div = np.zeros((chains, draws), bool) if diverging is None else diverging
    return az.from_dict(posterior=post, observed_data={"y": yi}, constant_data=const,
                        sample_stats={"diverging": div},
                        dims={"y": ["study"], "vi": ["study"], "cluster_idx": ["study"]},
                        coords={"study": [f"s{i}" for i in range(len(yi))]})


def test_pointwise_log_likelihood_effect_and_study_level():
    yi, vi, cluster = three_level_data()
    rng = np.random.default_rng(1)
    mu, tau = rng.normal(0.28, 0.01, (2, 3)), np.abs(rng.normal(0.1, 0.01, (2, 3)))
    re = fake_idata({"mu": mu, "tau": tau}, yi, vi)
    ll = pointwise_log_likelihood(re, "effect")
    assert ll.dims == ("chain", "draw", "study")
    np.testing.assert_allclose(ll.values, stats.norm.logpdf(yi, mu[..., None], np.sqrt(vi + tau[..., None] ** 2)))
    codes, labels = pd.factorize(pd.Series(cluster))
    by_study = pointwise_log_likelihood(with_log_likelihood(re, "study", codes, np.asarray(labels)), "study")
    np.testing.assert_allclose(by_study.values.sum(-1), ll.values.sum(-1), rtol=1e-12)
    # three-level: each study's block is one multivariate normal
    s_s, s_w = np.full((2, 3), 0.12), np.full((2, 3), 0.05)
    tl = fake_idata({"mu": mu, "sigma_study": s_s, "sigma_within": s_w}, yi, vi, cluster_idx=codes)
    ll3 = pointwise_log_likelihood(tl, "study")
    j = 0
    rows = codes == j
    cov = np.diag(vi[rows] + 0.05**2) + 0.12**2
    dense = stats.multivariate_normal(np.full(rows.sum(), mu[1, 2]), cov).logpdf(yi[rows])
    assert ll3.values[1, 2, j] == pytest.approx(dense, rel=1e-12)
    with pytest.raises(ValueError, match="dependent effects"):
        pointwise_log_likelihood(tl, "effect")


def test_study_effects_are_drawn_from_their_conditional_normals():
    yi, vi = np.array([0.1, 0.5, -0.2]), np.array([0.01, 0.04, 0.02])
    mu, tau = np.full((4, 5000), 0.2), np.full((4, 5000), 0.15)
    idata = fake_idata({"mu": mu, "tau": tau}, yi, vi)
    theta = with_study_effects(idata, seed=3).posterior["theta"].values.reshape(-1, 3)
    prec = 1 / vi + 1 / 0.15**2
    mean, var = (yi / vi + 0.2 / 0.15**2) / prec, 1 / prec
    se = np.sqrt(var / theta.shape[0])
    assert np.all(np.abs(theta.mean(0) - mean) < 4 * se)
    assert np.all(np.abs(theta.var(0) / var - 1) < 4 * np.sqrt(2 / theta.shape[0]))
    again = with_study_effects(idata, seed=3).posterior["theta"].values.reshape(-1, 3)
    np.testing.assert_array_equal(theta, again)


def test_summarise_columns_and_probabilities():
    rng = np.random.default_rng(2)
    mu = rng.normal(0.2, 0.05, (4, 500))
    idata = fake_idata({"mu": mu, "tau": np.abs(rng.normal(0.1, 0.02, (4, 500))), "r": np.tanh(mu),
                        "theta_new": rng.normal(0.2, 0.1, (4, 500))}, [0.1, 0.2], [0.01, 0.01])
    table = summarise(idata).set_index("parameter")
    assert list(table.reset_index().columns) == list(SUMMARY_COLUMNS)
    assert list(table.index) == ["mu", "tau", "r", "theta_new"]
    x = mu.ravel()
    assert table.loc["mu", "eti_lb"] == pytest.approx(np.quantile(x, 0.025), rel=1e-15)
    assert table.loc["mu", "p_gt_0.1"] == np.mean(x > 0.1)
    assert table.loc["r", "p_gt_0"] == np.mean(np.tanh(x) > 0)
    assert table.loc["mu", "r_hat"] < 1.01 and table.loc["mu", "ess_bulk"] > 1000


# --------------------------------------------------------------------------------------------------
# diagnostics and the automatic retry (scripted samplers, no MCMC)
# --------------------------------------------------------------------------------------------------


def test_diagnose_flags_r_hat_ess_and_divergences():
    rng = np.random.default_rng(3)
    good = fake_idata({"mu": rng.normal(size=(4, 500))}, [0.1], [0.01])
    assert diagnose(good, REPORTED).ok
    stuck = rng.normal(size=(4, 500)) + np.array([0, 0, 0, 3.0])[:, None]
    bad = diagnose(fake_idata({"mu": stuck}, [0.1], [0.01]), REPORTED)
    assert any("r_hat of mu" in p for p in bad.problems)
    sticky = np.cumsum(rng.normal(size=(4, 500)), axis=1)  # a random walk: tiny ESS
    sticky_diag = diagnose(fake_idata({"mu": sticky}, [0.1], [0.01]), REPORTED)
    assert any("ess_bulk of mu" in p for p in sticky_diag.problems)
    div = np.zeros((4, 500), bool)
    div[1, 7] = True
    flagged = diagnose(fake_idata({"mu": rng.normal(size=(4, 500))}, [0.1], [0.01], diverging=div), REPORTED)
    assert flagged.problems == ("1 divergent transition(s) in 2000 draws",)


class Scripted(CompiledModel):
    """A 'compiled model' that returns prepared posteriors, recording the target_accept it was given."""

    def __init__(self, outcomes):
        self.settings = sampler()
        self.backend = "scripted"
        self.outcomes = list(outcomes)
        self.calls = []

    def sample(self, seed, target_accept=None, scale=1):
        self.calls.append((seed, target_accept, scale))
        return self.outcomes.pop(0)


def test_fit_retries_once_with_higher_target_accept_then_fails_loudly():
    rng = np.random.default_rng(4)
    good = fake_idata({"mu": rng.normal(size=(4, 500))}, [0.1], [0.01])
    div = np.zeros((4, 500), bool)
    div[0, :3] = True
    bad = fake_idata({"mu": rng.normal(size=(4, 500))}, [0.1], [0.01], diverging=div)
    scripted = Scripted([bad, good])
    with pytest.warns(RuntimeWarning, match="retrying with target_accept=0.99"):
        result = fit(scripted, None, seed=5, label="demo", var_names=REPORTED)
    assert result.attempts == 2 and result.target_accept == 0.99
    assert scripted.calls == [(5, None, 1), (5, 0.99, 2)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with pytest.raises(SamplingError, match=r"demo: MCMC did not converge .* 3 divergent transition"):
            fit(Scripted([bad, bad]), None, seed=5, label="demo", var_names=REPORTED)


def test_sampler_settings_validation_and_fallback(monkeypatch):
    section = {"draws": 10, "tune": 20, "chains": 2, "sampler": "pymc", "target_accept": 0.8,
               "retry_target_accept": 0.95, "prior_mu": {}}
    assert SamplerSettings.from_config(section, "bayes").draws == 10
    with pytest.raises(ValueError, match=r"bayes\.sampler: unknown sampler 'stan'"):
        sampler(sampler="stan")
    with pytest.raises(ValueError, match=r"bayes\.draws"):
        sampler(draws=0)
    with pytest.raises(ValueError, match=r"bayes\.target_accept"):
        sampler(target_accept=1.0)
    import nutpie

    def broken(*args, **kwargs):
        raise RuntimeError("no numba today")

    monkeypatch.setattr(nutpie, "compile_pymc_model", broken)
    yi, vi, _ = molloy()
    with pytest.warns(RuntimeWarning, match="falling back to PyMC NUTS"):
        compiled = CompiledModel(build_meta_model(yi, vi, PRIORS, marginal=True), sampler())
    assert compiled.backend == "pymc" and "no numba today" in compiled.fallback_reason
    assert derive_seed(1, "a") == derive_seed(1, "a") != derive_seed(1, "b")


# --------------------------------------------------------------------------------------------------
# real sampling: random effects on molloy2014 (compiled once)
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compiled_re():
    yi, vi, frame = molloy()
    return CompiledModel(build_meta_model(yi, vi, PRIORS, study=frame["study"]), SETTINGS)


@pytest.fixture(scope="module")
def re_fit(compiled_re):
    return fit(compiled_re, None, seed=20261121, label="molloy2014", var_names=REPORTED)


def test_mcmc_agrees_with_exact_posterior(re_fit):
    yi, vi, _ = molloy()
    mcmc = summarise(re_fit.idata).set_index("parameter")
    exact = exact_posterior(yi, vi, PRIORS).summary().set_index("parameter")
    assert re_fit.diagnostics.ok
    post = re_fit.idata.posterior
    for name in ("mu", "tau", "r", "theta_new"):
        m, e = mcmc.loc[name], exact.loc[name]
        assert abs(m["mean"] - e["mean"]) < N_MCSE * m["mcse_mean"], name
        # relative MC error of an SD is ~1/sqrt(2 ESS) for normal draws; allow for skew and kurtosis
        assert abs(m["sd"] - e["sd"]) < N_MCSE * e["sd"] / np.sqrt(m["ess_bulk"]), name
        for col, q in (("eti_lb", 0.025), ("eti_ub", 0.975)):
            mcse_q = float(az.mcse(post[[name]], method="quantile", prob=q)[name])
            assert abs(m[col] - e[col]) < N_MCSE * mcse_q, (name, col)
        for col in ("p_gt_0", "p_gt_0.1"):
            assert abs(m[col] - e[col]) < 4 * np.sqrt(e[col] * (1 - e[col]) / m["ess_tail"]) + 1e-3, (name, col)


def test_same_seed_gives_identical_table(compiled_re, re_fit, tmp_path):
    again = compiled_re.sample(seed=20261121)
    write_csv(summarise(re_fit.idata), tmp_path / "a.csv")
    write_csv(summarise(again), tmp_path / "b.csv")
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()
    other = compiled_re.sample(seed=1)
    assert not np.array_equal(other.posterior["mu"].values, again.posterior["mu"].values)


def test_posterior_groups_and_metadata(re_fit):
    idata = re_fit.idata
    assert {"posterior", "sample_stats", "observed_data", "constant_data"} <= set(idata.groups())
    assert not [v for v in idata.posterior.data_vars if str(v).endswith("__")]
    assert idata.posterior.attrs["seed"] == 20261121
    assert "created_at" not in idata.posterior.attrs
    assert idata.posterior["theta"].dims == ("chain", "draw", "study")


def test_loo_comparison_runs_on_marginal_log_likelihood(re_fit):
    ll = with_log_likelihood(re_fit.idata, "effect")
    # an equal-effects posterior drawn exactly (conjugate normal) stands in for a second model
    yi, vi, _ = molloy()
    prec = np.sum(1 / vi) + 1.0
    rng = np.random.default_rng(0)
    fe_draws = rng.normal(np.sum(yi / vi) / prec, np.sqrt(1 / prec), (4, 1000))
    fe = with_log_likelihood(fake_idata({"mu": fe_draws}, yi, vi), "effect")
    fe.log_likelihood = fe.log_likelihood.assign_coords(study=ll.log_likelihood["study"].values)
    table = compare_models({"random_effects": ll, "fixed_effect": fe}, "effect")
    assert list(table["model"]) == ["random_effects", "fixed_effect"]  # molloy is heterogeneous
    assert table["elpd_diff"].iloc[1] > 0 and np.isfinite(table[["elpd_loo", "se", "dse"]].to_numpy()).all()
    assert table["weight"].sum() == pytest.approx(1.0)
    assert (table["k"] == yi.size).all()


@pytest.mark.slow
def test_mcmc_parameter_recovery_one_replicate(compiled_re):
    """Data simulated from known mu, tau with molloy's k and variances; same compiled model, new data."""
    yi0, vi, _ = molloy()
    rng = np.random.default_rng(11)
    mu, tau = np.arctanh(0.28), 0.12
    yi = rng.normal(mu + tau * rng.normal(size=vi.size), np.sqrt(vi))
    compiled_re.set_data(yi=yi)
    try:
        result = fit(compiled_re, None, seed=3, label="recovery", var_names=REPORTED)
    finally:
        compiled_re.set_data(yi=yi0)
    table = summarise(result.idata).set_index("parameter")
    exact = exact_posterior(yi, vi, PRIORS).summary().set_index("parameter")
    for name, truth in (("mu", mu), ("tau", tau)):
        assert table.loc[name, "eti_lb"] < truth < table.loc[name, "eti_ub"]
        assert abs(table.loc[name, "mean"] - exact.loc[name, "mean"]) < N_MCSE * table.loc[name, "mcse_mean"]


# --------------------------------------------------------------------------------------------------
# meta-regression and three-level sampling (slow)
# --------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_meta_regression_mcmc_agrees_with_exact():
    yi, vi, frame = molloy()
    X = np.column_stack([np.ones(yi.size), (frame["controls"] == "none").astype(float)])
    result = fit(build_meta_model(yi, vi, PRIORS, X=X, terms=["intrcpt", "controlsnone"], marginal=True),
                 SETTINGS, seed=8, label="regression", var_names=REPORTED)
    mcmc = summarise(result.idata).set_index("parameter")
    exact = exact_posterior(yi, vi, PRIORS, X=X, terms=["intrcpt", "controlsnone"]).summary().set_index("parameter")
    for name in ("intrcpt", "controlsnone", "tau"):
        assert abs(mcmc.loc[name, "mean"] - exact.loc[name, "mean"]) < N_MCSE * mcmc.loc[name, "mcse_mean"], name


def three_level_grid(yi, vi, cluster, n=161, top=1.0):
    """Posterior means of (sigma_study, sigma_within, mu) on a 2-D grid, mu integrated analytically.

    Dense algebra on every grid point: y ~ N(0, D + s_study^2 B + 11') with B the same-study
    indicator (mu ~ N(0, 1) integrated out) and E[mu | sigmas, y] = 1'C^{-1}y / (1'C^{-1}1 + 1).
    """
    s = np.linspace(0.0, top, n)
    S, W = np.meshgrid(s, s, indexing="ij")
    same = (cluster[:, None] == cluster[None, :]).astype(float)
    C = np.diag(vi)[None] + (W.ravel() ** 2)[:, None, None] * np.eye(yi.size) + (S.ravel() ** 2)[:, None, None] * same
    one = np.ones(yi.size)
    Ci_y = np.linalg.solve(C, np.broadcast_to(yi, (C.shape[0], yi.size))[..., None])[..., 0]
    Ci_1 = np.linalg.solve(C, np.broadcast_to(one, (C.shape[0], yi.size))[..., None])[..., 0]
    mu_mean = (Ci_y @ one) / (Ci_1 @ one + 1.0)
    full = C + 1.0
    _, logdet = np.linalg.slogdet(full)
    quad = np.einsum("i,ni->n", yi, np.linalg.solve(full, np.broadcast_to(yi, full.shape[:2])[..., None])[..., 0])
    logp = (-0.5 * (logdet + quad) + stats.halfnorm.logpdf(S.ravel(), scale=0.5)
            + stats.halfnorm.logpdf(W.ravel(), scale=0.5)).reshape(n, n)
    w = np.exp(logp - logp.max())

    def mean(f):
        return integrate.simpson(integrate.simpson(w * f, x=s, axis=1), x=s)

    Z = mean(np.ones_like(w))
    return {"sigma_study": mean(S) / Z, "sigma_within": mean(W) / Z, "mu": mean(mu_mean.reshape(n, n)) / Z}


@pytest.mark.slow
def test_three_level_mcmc_agrees_with_grid_integration():
    yi, vi, cluster = three_level_data()
    ref = three_level_grid(yi, vi, cluster)
    result = fit(build_meta_model(yi, vi, PRIORS, cluster=cluster, marginal=True), SETTINGS, seed=9,
                 label="three-level", var_names=REPORTED)
    mcmc = summarise(result.idata).set_index("parameter")
    for name, value in ref.items():
        # + 2e-4: the grid's own error (spacing 0.006, top 1.0) on the posterior means
        assert abs(mcmc.loc[name, "mean"] - value) < N_MCSE * mcmc.loc[name, "mcse_mean"] + 2e-4, name


@pytest.mark.slow
def test_pymc_nuts_fallback_samples():
    yi, vi, _ = molloy()
    idata = sample(build_meta_model(yi, vi, PRIORS, marginal=True),
                   sampler(draws=300, tune=300, chains=2, sampler="pymc"), seed=4)
    assert idata.posterior.attrs["sampler"].startswith("pymc")
    assert idata.posterior.sizes["draw"] == 300 and "diverging" in idata.sample_stats
    assert isinstance(idata.posterior, xr.Dataset)
