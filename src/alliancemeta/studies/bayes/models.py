r"""PyMC models of the meta-analysis: random effects, meta-regression, three-level, equal effects.

All models are on the Fisher-z scale with known sampling variances :math:`v_i`:

.. math::

    \text{random effects:}\quad y_i \sim N(\theta_i, v_i), \quad
        \theta_i = x_i'\beta + \tau z_i, \quad z_i \sim N(0, 1)

    \text{three-level:}\quad \theta_{ij} = x_{ij}'\beta + \sigma_{\text{study}} u_j
        + \sigma_{\text{within}} e_{ij}, \quad u_j, e_{ij} \sim N(0, 1)

    \text{equal effects:}\quad y_i \sim N(x_i'\beta, v_i)

with :math:`\beta_0 \sim` the ``mu`` prior, slopes :math:`\sim N(0, \sigma_\beta^2)` and every SD
:math:`\sim` the ``tau`` prior.  The non-centred form (:math:`\theta = \mu + \tau z`) samples
without divergences when the data say little about :math:`\tau` (Betancourt & Girolami 2015;
Papaspiliopoulos, Roberts & Sköld 2007).  With ``marginal=True`` the effect-level deviations are
integrated out analytically instead (:math:`y_i \sim N(x_i'\beta, v_i + \tau^2)`, and
:math:`y_{ij} \sim N(x_{ij}'\beta + \sigma_{\text{study}} u_j, v_{ij} + \sigma^2_{\text{within}})`),
and for the three-level model both levels are integrated out (a compound-symmetric normal per study,
see :func:`_three_level_loglik`; the data then enter through a ``pm.Potential``).  That is the same
posterior for every parameter except the study effects, with far fewer dimensions: at k = 401
effects in 295 studies (mostly one effect each) the latent three-level model mixes poorly for
:math:`\sigma_{\text{within}}` (bulk ESS ~500 of 8,000 draws), the marginal one does not.

For intercept-only models the predictive effect of a new study,
:math:`\theta_{\text{new}} = \mu + \sqrt{\tau^2}\, z_{\text{new}}` (three-level:
:math:`\sqrt{\sigma^2_{\text{study}} + \sigma^2_{\text{within}}}`), and :math:`r = \tanh\mu` are
deterministic nodes of the model.  Data enter as ``pm.Data`` (``yi``, ``vi``, ``X``,
``cluster_idx``) so that they travel into the ``constant_data`` group of the posterior.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import pymc as pm

from alliancemeta.studies.bayes.priors import as_priors
from alliancemeta.studies.bayes.quadrature import as_arrays

#: Parameters reported in tables and checked for convergence, in table order (``b`` is per term).
REPORTED = ("mu", "b", "tau", "sigma_study", "sigma_within", "r", "theta_new")


def _labels(values, k: int, what: str) -> list[str]:
    if values is None:
        return [str(i + 1) for i in range(k)]
    labels = [str(v) for v in values]
    if len(labels) != k:
        raise ValueError(f"{what}: {len(labels)} labels for {k} effect sizes")
    if len(set(labels)) != k:
        raise ValueError(f"{what}: labels must be unique")
    return labels


def build_meta_model(
    yi,
    vi,
    priors,
    X=None,
    cluster=None,
    *,
    study: Sequence | None = None,
    terms: Sequence[str] | None = None,
    fixed: bool = False,
    marginal: bool = False,
) -> pm.Model:
    """Build a Bayesian meta-analysis as a PyMC model (no sampling; see :func:`sample`).

    Parameters
    ----------
    yi, vi : array_like
        Fisher-z effect sizes and their sampling variances.
    priors : MetaPriors or mapping
        Priors (see :class:`~alliancemeta.studies.bayes.priors.MetaPriors`); a config-style mapping with
        ``prior_mu``/``prior_tau`` is accepted.
    X : array_like, optional
        Design matrix with the intercept in the first column (meta-regression; coefficients ``b``
        with dim ``term``).  Intercept-only when omitted (coefficient ``mu``).
    cluster : array_like, optional
        Study identifier of each effect: a three-level model with ``sigma_study`` and
        ``sigma_within`` (dim ``cluster``, in order of first appearance).
    study : sequence, optional
        Unique labels of the effects (coordinate ``study``); ``1..k`` when omitted.
    terms : sequence of str, optional
        Names of the columns of ``X`` (coordinate ``term``).
    fixed : bool
        Equal-effects model (tau = 0); ``cluster`` must then be omitted.
    marginal : bool
        Integrate the effect-level deviations out analytically (see module docstring).

    Returns
    -------
    pymc.Model
    """
    yi, vi, Xa = as_arrays(yi, vi, X)
    pri = as_priors(priors)
    k, p = Xa.shape
    intercept_only = X is None
    if fixed and cluster is not None:
        raise ValueError("an equal-effects model has no clusters; drop `cluster` or `fixed`")
    coords = {"study": _labels(study, k, "study")}
    if not intercept_only:
        terms = [f"b{j}" for j in range(p)] if terms is None else [str(t) for t in terms]
        if len(terms) != p or len(set(terms)) != p:
            raise ValueError(f"terms: need {p} unique names for the columns of X")
        coords["term"] = terms
    if cluster is not None:
        cluster = np.asarray(cluster)
        if cluster.shape != (k,):
            raise ValueError("cluster must give one identifier per effect size")
        codes, uniques = pd.factorize(pd.Series(cluster).astype(str), sort=False)
        coords["cluster"] = [str(u) for u in uniques]
    b0 = np.zeros(p)
    b0[0] = pri.mu["mu"]
    sd0 = np.full(p, pri.beta_sigma)
    sd0[0] = pri.mu["sigma"]

    with pm.Model(coords=coords) as model:
        y_data = pm.Data("yi", yi, dims="study")
        v_data = pm.Data("vi", vi, dims="study")
        if intercept_only:
            mu = pri.mu.pymc("mu")
            location = mu
        else:
            X_data = pm.Data("X", Xa, dims=("study", "term"))
            b = pm.Normal("b", mu=b0, sigma=sd0, dims="term")
            location = pm.math.dot(X_data, b)
        se = pm.math.sqrt(v_data)
        total_sd = None
        if fixed:
            pm.Normal("y", mu=location, sigma=se, observed=y_data, dims="study")
        elif cluster is None:
            tau = pri.tau.pymc("tau")
            total_sd = tau
            if marginal:
                pm.Normal("y", mu=location, sigma=pm.math.sqrt(v_data + tau**2), observed=y_data, dims="study")
            else:
                z = pm.Normal("z", 0.0, 1.0, dims="study")
                theta = pm.Deterministic("theta", location + tau * z, dims="study")
                pm.Normal("y", mu=theta, sigma=se, observed=y_data, dims="study")
        else:
            idx = pm.Data("cluster_idx", codes.astype("int64"), dims="study")
            sigma_study = pri.tau.pymc("sigma_study")
            sigma_within = pri.tau.pymc("sigma_within")
            total_sd = pm.math.sqrt(sigma_study**2 + sigma_within**2)
            if marginal:
                pm.Potential("y_marginal", _three_level_loglik(y_data - location, v_data, idx, len(uniques),
                                                               sigma_study, sigma_within))
            else:
                u = pm.Normal("u", 0.0, 1.0, dims="cluster")
                e = pm.Normal("e", 0.0, 1.0, dims="study")
                theta = pm.Deterministic("theta", location + sigma_study * u[idx] + sigma_within * e, dims="study")
                pm.Normal("y", mu=theta, sigma=se, observed=y_data, dims="study")
        if intercept_only:
            pm.Deterministic("r", pm.math.tanh(mu))
            if total_sd is not None:
                z_new = pm.Normal("z_new", 0.0, 1.0)
                pm.Deterministic("theta_new", mu + total_sd * z_new)
    return model


def _three_level_loglik(resid, v, idx, n_clusters: int, sigma_study, sigma_within):
    r"""Log-likelihood of the three-level model with both random effects integrated out.

    Per study j the effects are :math:`N(X\beta, D + \sigma^2_{\text{study}} 11')` with
    :math:`D = \operatorname{diag}(v_i + \sigma^2_{\text{within}})`; Sherman–Morrison gives the
    closed form in :mod:`alliancemeta.studies.bayes.summary` from three per-study sums, here accumulated in
    O(k) with ``inc_subtensor``.
    """
    import pytensor.tensor as pt

    d = v + sigma_within**2
    zeros = pt.zeros(n_clusters)
    s1 = pt.inc_subtensor(zeros[idx], 1.0 / d)
    s2 = pt.inc_subtensor(zeros[idx], resid / d)
    s2s = sigma_study**2
    c = 1.0 + s2s * s1
    k = resid.shape[0]
    return -0.5 * (k * np.log(2.0 * np.pi) + pt.sum(pt.log(d)) + pt.sum(pt.log(c)) + pt.sum(resid**2 / d)
                   - s2s * pt.sum(s2**2 / c))


def model_kind(idata) -> str:
    """``fixed_effect``, ``random_effects`` or ``three_level``, read from the posterior's variables."""
    post = idata.posterior
    if "sigma_study" in post:
        return "three_level"
    if "tau" in post:
        return "random_effects"
    return "fixed_effect"
