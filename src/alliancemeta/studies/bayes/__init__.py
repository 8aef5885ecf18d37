r"""Bayesian meta-analysis: exact where it can be (quadrature over tau), fast where it cannot (nutpie).

Modules (import names from the module that defines them):

- :mod:`.priors`      prior specifications (config -> numpy and PyMC)
- :mod:`.quadrature`  exact posterior of the normal–normal model and meta-regression by one-dimensional
  integration over tau (as the R package bayesmeta); prior sensitivity
- :mod:`.averaging`   exact Bayesian model averaging over effect x heterogeneity (metaBMA/RoBMA)
- :mod:`.models`      PyMC models: random effects, meta-regression, three-level, equal effects
- :mod:`.summary`     posterior tables, marginal pointwise log-likelihood, LOO comparison

Sampling, diagnostics and the retry-then-stop policy are the package's one MCMC path,
:mod:`alliancemeta.core.mcmc`; the stage that fits every model of a dataset is
:mod:`alliancemeta.pipeline.bayes`.  Typical use::

    from alliancemeta.core.mcmc import fit
    from alliancemeta.studies.bayes.models import REPORTED, build_meta_model
    from alliancemeta.studies.bayes.priors import MetaPriors
    from alliancemeta.studies.bayes.quadrature import exact_posterior
    from alliancemeta.studies.bayes.summary import summarise

    priors = MetaPriors.from_config({"prior_mu": {"dist": "normal", "mu": 0, "sigma": 1},
                                     "prior_tau": {"dist": "halfnormal", "sigma": 0.5}})
    exact_posterior(yi, vi, priors).summary(level=0.95)          # exact, ~10 ms at k = 300
    result = fit(build_meta_model(yi, vi, priors), sampler_settings, seed=1, label="random effects",
                 var_names=REPORTED)
    summarise(result.idata, level=0.95)                          # rows mu, tau, r, theta_new
"""
