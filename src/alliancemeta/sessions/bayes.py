"""Bayesian multilevel version of the ``within_between`` model (PyMC, sampled with nutpie).

The likelihood is the one of :mod:`alliancemeta.sessions.models`,

.. math::

    y_{ijt} \\sim N(\\beta_0 + \\textstyle\\sum_k \\beta_k x_{k,ijt} + u_j + r_{0i} + r_{1i} t,\\; \\sigma^2),
    \\quad u_j \\sim N(0, \\sigma_T^2),\\; r_{0i} \\sim N(0, \\sigma_C^2),\\; r_{1i} \\sim N(0, \\sigma_{CS}^2),

fitted on standardised variables: :math:`\\tilde y = (y - \\bar y)/s_y`, :math:`\\tilde x_k =
(x_k - \\bar x_k)/s_{x_k}`.  Priors on that scale are weakly informative (in the spirit of the
rstanarm/brms defaults; Gelman et al. 2008): :math:`\\tilde\\beta_0 \\sim N(0, 1)`,
:math:`\\tilde\\beta_k \\sim N(0, 1)` (a one-SD change of a predictor moving the outcome by more
than two SDs is a priori unlikely), :math:`\\tilde\\sigma, \\tilde\\sigma_T, \\tilde\\sigma_C \\sim
\\text{Half-}N(1)`, :math:`\\tilde\\sigma_{CS} \\sim \\text{Half-}N(0.1)` (per session).  Random
effects are parameterised as described in :func:`build_within_between_model`.  Coefficients are
reported on the data scale, :math:`\\beta_k = \\tilde\\beta_k s_y / s_{x_k}`, as deterministic nodes
``beta`` (dims ``term``).

The model is sampled through the package's one MCMC path (:func:`alliancemeta.core.mcmc.fit`): r_hat
<= 1.01, ess_bulk >= 400 and no divergences for every coefficient and standard deviation
(:data:`DIAGNOSED`), one automatic retry, then a :class:`~alliancemeta.core.mcmc.SamplingError` that stops
the rule before anything is written.
"""

from __future__ import annotations

from dataclasses import dataclass

import arviz as az
import numpy as np
import pandas as pd
import pymc as pm

from alliancemeta.core.inference import upper_quantile
from alliancemeta.core.mcmc import ESS_BULK_MIN, R_HAT_MAX
from alliancemeta.sessions.data import has_therapist

#: Standard deviations summarised next to the coefficients (data scale).
SD_PARAMETERS = ("sd_therapist", "sd_client", "sd_client_session", "sigma")
#: Parameters whose convergence is checked: the coefficients and the standard deviations.
DIAGNOSED = ("beta", *SD_PARAMETERS)


@dataclass(frozen=True)
class BayesSummary:
    """Posterior summaries (data scale) of ``parameters``: the coefficients (``beta`` per term,
    named by the term) followed by the standard deviations of :data:`SD_PARAMETERS` present in the
    model; ``n_terms`` says how many of the leading parameters are coefficients."""

    parameters: tuple[str, ...]
    n_terms: int
    mean: np.ndarray
    sd: np.ndarray
    eti_lb: np.ndarray
    eti_ub: np.ndarray
    ess_bulk: np.ndarray
    ess_tail: np.ndarray
    r_hat: np.ndarray
    divergences: int
    level: float

    @property
    def terms(self) -> tuple[str, ...]:
        return self.parameters[: self.n_terms]

    @property
    def passed(self) -> np.ndarray:
        """Per parameter: r_hat, bulk ESS and (for all) the divergence count within the limits of
        :mod:`alliancemeta.core.mcmc`."""
        return (self.r_hat <= R_HAT_MAX) & (self.ess_bulk >= ESS_BULK_MIN) & (self.divergences == 0)


def _level_values(data: pd.DataFrame, column: str, key: str, index) -> np.ndarray:
    """The value of a cluster-constant column per cluster, in the order of ``index``."""
    return data.groupby(key, sort=False)[column].first().reindex(index).to_numpy(dtype=float)


def build_within_between_model(data: pd.DataFrame, terms, random_slope: bool = True) -> pm.Model:
    """The PyMC model of the module docstring for a decomposed session table (column ``y``).

    Client intercepts are hierarchically centred (Gelfand, Sahu & Carlin 1995) on the therapist
    intercept :math:`+ \\beta_B A^B_i`, and therapist intercepts are
    :math:`\\beta_0 + \\beta_T A^T_j + \\sigma_T z_j` (non-centred); only session-level terms enter
    the observation mean.  With about ten sessions per client the data pin each client intercept
    down, the regime in which centring samples far better (the fully non-centred form left the
    between-level coefficients with ess_bulk near 200 in 2000 draws), while the therapist level,
    with few therapists and a modest variance, samples better non-centred (the centred form gave
    sd_therapist ess_bulk near 300).  The random session slopes stay non-centred.
    """
    nested = has_therapist(data)
    y = data["y"].to_numpy(dtype=float)
    y_mean, y_sd = y.mean(), y.std()
    client_idx, clients = pd.factorize(data["client"])
    session = data["session"].to_numpy(dtype=float)
    levels = {t: ("therapist" if t == "alliance_therapist" else "client" if t == "alliance_between" else "obs")
              for t in terms}  # fmt: skip
    obs_terms = [t for t in terms if levels[t] == "obs"]
    coords = {"term": list(terms), "obs_term": obs_terms, "client": list(clients), "obs": np.arange(y.size)}
    if nested:
        _, therapists = pd.factorize(data["therapist"])
        coords["therapist"] = list(therapists)
        client_therapist = pd.Index(therapists).get_indexer(data.groupby("client", sort=False)["therapist"].first()
                                                            .reindex(clients))  # fmt: skip
    x_mean = {t: data[t].mean() for t in terms}
    x_sd = {t: data[t].std(ddof=0) for t in terms}

    def std(values, t):
        return (np.asarray(values, dtype=float) - x_mean[t]) / x_sd[t]

    with pm.Model(coords=coords) as model:
        beta0 = pm.Normal("beta0_std", 0.0, 1.0)
        beta_std = pm.Normal("beta_std", 0.0, 1.0, dims="term")
        b = {t: beta_std[k] for k, t in enumerate(terms)}
        sigma = pm.HalfNormal("sigma_std", 1.0)
        sd_client = pm.HalfNormal("sd_client_std", 1.0)
        if nested:
            sd_therapist = pm.HalfNormal("sd_therapist_std", 1.0)
            mu_t = beta0 + sum(
                b[t] * std(_level_values(data, t, "therapist", therapists), t)
                for t in terms if levels[t] == "therapist"
            )  # fmt: skip
            z_therapist = pm.Normal("z_therapist", 0.0, 1.0, dims="therapist")
            r_therapist = mu_t + sd_therapist * z_therapist
            mu_c = r_therapist[client_therapist]
            pm.Deterministic("sd_therapist", sd_therapist * y_sd)
        else:
            mu_c = beta0
        mu_c = mu_c + sum(b[t] * std(_level_values(data, t, "client", clients), t) for t in terms
                          if levels[t] == "client")  # fmt: skip
        r_client = pm.Normal("r_client", mu_c, sd_client, dims="client")
        X_obs = np.column_stack([std(data[t], t) for t in obs_terms])
        beta_obs = pm.math.stack([b[t] for t in obs_terms])
        mu = r_client[client_idx] + pm.math.dot(pm.Data("X_obs", X_obs, dims=("obs", "obs_term")), beta_obs)
        if random_slope:
            sd_slope = pm.HalfNormal("sd_client_session_std", 0.1)
            z_slope = pm.Normal("z_client_session", 0.0, 1.0, dims="client")
            mu = mu + (sd_slope * z_slope)[client_idx] * session
            pm.Deterministic("sd_client_session", sd_slope * y_sd)
        pm.Normal("y_std", mu, sigma, observed=(y - y_mean) / y_sd, dims="obs")
        scale = np.array([y_sd / x_sd[t] for t in terms])
        pm.Deterministic("beta", beta_std * scale, dims="term")
        pm.Deterministic("sigma", sigma * y_sd)
        pm.Deterministic("sd_client", sd_client * y_sd)
    return model


def summarise_posterior(idata: az.InferenceData, level: float) -> BayesSummary:
    """Posterior mean, SD, equal-tailed interval at ``level`` and diagnostics (ess_bulk, ess_tail,
    rank-normalised r_hat; Vehtari et al. 2021) of every coefficient and standard deviation."""
    post = idata.posterior
    names = [str(t) for t in post["beta"].coords["term"].values]
    sds = [v for v in SD_PARAMETERS if v in post]
    draws = [post["beta"].sel(term=t) for t in names] + [post[v] for v in sds]
    flat = np.stack([d.to_numpy().reshape(-1) for d in draws])
    alpha = 1.0 - upper_quantile(level)
    ds = post[["beta", *sds]]
    ess_bulk, ess_tail, r_hat = (az.ess(ds, method="bulk"), az.ess(ds, method="tail"), az.rhat(ds))

    def collect(result):
        return np.concatenate([result["beta"].to_numpy(), [float(result[v]) for v in sds]])

    stats_ = idata.sample_stats
    divergences = int(stats_["diverging"].sum()) if "diverging" in stats_ else 0
    return BayesSummary(
        parameters=(*names, *sds),
        n_terms=len(names),
        mean=flat.mean(axis=1),
        sd=flat.std(axis=1, ddof=1),
        eti_lb=np.quantile(flat, alpha, axis=1),
        eti_ub=np.quantile(flat, 1 - alpha, axis=1),
        ess_bulk=collect(ess_bulk),
        ess_tail=collect(ess_tail),
        r_hat=collect(r_hat),
        divergences=divergences,
        level=level,
    )


