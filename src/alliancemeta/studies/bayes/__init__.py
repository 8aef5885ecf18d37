r"""Bayesian meta-analysis: exact where it can be (quadrature over tau), fast where it cannot (nutpie).

Modules:

- :mod:`.priors`      prior specifications (config -> numpy and PyMC)
- :mod:`.quadrature`  exact posterior of the normal–normal model and meta-regression
  by one-dimensional integration over tau (as the R package bayesmeta); prior sensitivity
- :mod:`.averaging`   exact Bayesian model averaging over effect x heterogeneity (metaBMA/RoBMA)
- :mod:`.models`      PyMC models: random effects, meta-regression, three-level, equal effects
- :mod:`~alliancemeta.core.mcmc`    nutpie / PyMC NUTS sampling, diagnostics, one automatic retry
- :mod:`.summary`     posterior tables, marginal pointwise log-likelihood, LOO comparison
- :mod:`.pipeline`    everything for one dataset, written to the SPEC §5 outputs

Typical use::

    from alliancemeta.studies.bayes import MetaPriors, build_meta_model, exact_posterior, sample, summarise

    priors = MetaPriors.from_config({"prior_mu": {"dist": "normal", "mu": 0, "sigma": 1},
                                     "prior_tau": {"dist": "halfnormal", "sigma": 0.5}})
    exact_posterior(yi, vi, priors).summary()          # exact, ~10 ms at k = 300
    idata = sample(build_meta_model(yi, vi, priors), {"draws": 1000}, seed=1)
    summarise(idata)                                   # rows mu, tau, r, theta_new
"""

from __future__ import annotations

import importlib

#: Public names and the submodule that defines them.  Imported lazily (PEP 562), so that the
#: quadrature path (``alliancemeta.studies.bayes.quadrature``) does not pay for importing PyMC (~4 s).
_EXPORTS = {
    "build_meta_model": "models",
    "REPORTED": "models",
    "DEFAULT_SENSITIVITY_PRIORS": "priors",
    "MetaPriors": "priors",
    "Prior": "priors",
    "PriorError": "priors",
    "normal_prior_from_pooled": "priors",
    "parse_prior": "priors",
    "ExactPosterior": "quadrature",
    "exact_posterior": "quadrature",
    "prior_sensitivity": "quadrature",
    "compare_models": "summary",
    "pointwise_log_likelihood": "summary",
    "summarise": "summary",
    "with_log_likelihood": "summary",
    "write_bayes": "pipeline",
    "model_averaging": "averaging",
    "write_exact_tables": "averaging",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"alliancemeta.studies.bayes.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'alliancemeta.studies.bayes' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_EXPORTS])
