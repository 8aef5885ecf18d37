r"""Exact Bayesian model averaging over effect / no effect and heterogeneity / none.

The four normal–normal models of Gronau et al. (2017, *Comprehensive Results in Social
Psychology* 2, 1-21; the ``metaBMA`` package) and the effect/heterogeneity part of RoBMA (Bartoš,
Maier, Wagenmakers, Doucouliagos & Stanley 2023, *Res Synth Methods* 14, 99-116):

============== ================================ ==================================================
model           mu                               tau
============== ================================ ==================================================
fixed_null      0                                0
fixed           prior_mu                         0
random_null     0                                prior_tau
random          prior_mu                         prior_tau
============== ================================ ==================================================

Every marginal likelihood is exact: the equal-effects ones in closed form (with :math:`\mu`
integrated analytically under its normal prior), the random-effects ones by the quadrature of
:mod:`alliancemeta.studies.bayes.quadrature`.  RoBMA and metaBMA estimate them by bridge sampling from
MCMC output, which takes minutes; here the whole ensemble takes milliseconds.  Posterior model
probabilities are :math:`P(M \mid y) \propto P(M)\, p(y \mid M)`; the inclusion Bayes factor of a
component is its posterior inclusion odds divided by its prior inclusion odds.  The model-averaged
posterior of :math:`\mu` is the mixture of the models' posteriors, with an atom at 0 from the null
models.  The publication-bias (selection) component of RoBMA is not included.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import optimize, special

from alliancemeta.studies.bayes.priors import as_priors
from alliancemeta.studies.bayes.quadrature import (
    QUANTILE_XTOL,
    as_arrays,
    exact_posterior,
    integrate_over_tau,
)

MODELS = ("fixed_null", "fixed", "random_null", "random")
AVERAGING_COLUMNS = ("model", "effect", "heterogeneity", "prior_prob", "log_evidence", "post_prob", "bf_inclusion",
                     "mu_mean", "mu_sd", "mu_eti_lb", "mu_eti_ub", "tau_mean", "p_r_gt_0", "p_r_gt_0.1")
LOG_2PI = float(np.log(2.0 * np.pi))


def _normal_loglik(yi, vi, tau):
    """log prod_i N(y_i | 0, v_i + tau^2) for an array of tau."""
    total = vi[None, :] + np.atleast_1d(tau)[:, None] ** 2
    return -0.5 * np.sum(LOG_2PI + np.log(total) + yi[None, :] ** 2 / total, axis=1)


class _Mixture:
    """Model-averaged posterior of mu: weighted normal mixtures plus an atom at 0."""

    def __init__(self, atom: float, weights: np.ndarray, means: np.ndarray, sds: np.ndarray):
        self.atom, self.weights, self.means, self.sds = atom, weights, means, sds

    def cdf(self, x: float, left: bool = False) -> float:
        cont = float(np.dot(self.weights, special.ndtr((x - self.means) / self.sds)))
        jump = self.atom if (x > 0 or (x == 0 and not left)) else 0.0
        return cont + jump

    def quantile(self, q: float) -> float:
        if self.atom > 0 and self.cdf(0.0, left=True) <= q <= self.cdf(0.0):
            return 0.0
        live = self.weights > 0
        lo = float(np.min(self.means[live] - 40 * self.sds[live])) if live.any() else -1.0
        hi = float(np.max(self.means[live] + 40 * self.sds[live])) if live.any() else 1.0
        lo, hi = min(lo, -1e-12), max(hi, 1e-12)
        return float(optimize.brentq(lambda x: self.cdf(x) - q, lo, hi, xtol=QUANTILE_XTOL))

    def moments(self) -> tuple[float, float]:
        mean = float(np.dot(self.weights, self.means))
        second = float(np.dot(self.weights, self.sds**2 + self.means**2))
        return mean, float(np.sqrt(max(second - mean**2, 0.0)))


def model_averaging(yi, vi, priors, prior_prob: Sequence[float] | None = None, level: float = 0.95) -> pd.DataFrame:
    """Posterior probabilities, inclusion Bayes factors and model-averaged mu of the four models.

    Parameters
    ----------
    yi, vi : array_like
        Fisher-z effect sizes and sampling variances.
    priors : MetaPriors or mapping
        Priors of mu (normal) and tau under the alternative components.
    prior_prob : sequence of 4 floats, optional
        Prior model probabilities in the order of :data:`MODELS` (default 1/4 each, as metaBMA).

    Returns
    -------
    DataFrame
        One row per model (its conditional posterior of mu and tau), a ``model_averaged`` row,
        and ``inclusion:effect`` / ``inclusion:heterogeneity`` rows with the posterior inclusion
        probability (``post_prob``), the inclusion Bayes factor and its log (in ``log_evidence``);
        columns :data:`AVERAGING_COLUMNS`.
    """
    yi, vi, _ = as_arrays(yi, vi, None)
    pri = as_priors(priors)
    prior_prob = np.full(4, 0.25) if prior_prob is None else np.asarray(prior_prob, dtype=float)
    if prior_prob.shape != (4,) or np.any(prior_prob < 0) or not np.isclose(prior_prob.sum(), 1.0):
        raise ValueError("prior_prob: expected four non-negative model probabilities summing to 1")
    lo_q, hi_q = (1.0 - level) / 2.0, (1.0 + level) / 2.0
    c01 = float(np.arctanh(0.1))

    random = exact_posterior(yi, vi, pri)
    m0, s0 = pri.mu["mu"], pri.mu["sigma"]
    prec = 1.0 / s0**2 + np.sum(1.0 / vi)
    fe_mean, fe_sd = (m0 / s0**2 + np.sum(yi / vi)) / prec, 1.0 / np.sqrt(prec)
    null_grid = integrate_over_tau(lambda tau: _normal_loglik(yi, vi, tau), pri.tau, float(np.sqrt(np.median(vi))))
    log_ev = np.array([float(_normal_loglik(yi, vi, 0.0)[0]), random.log_evidence_fe, null_grid.log_evidence,
                       random.log_evidence])
    with np.errstate(divide="ignore"):
        log_post = np.log(prior_prob) + log_ev
    post = np.exp(log_post - np.max(log_post))
    post /= post.sum()

    r_table = random.summary(level).set_index("parameter")
    tau_null = float(np.dot(null_grid.weight, null_grid.tau))
    rows = [
        {"mu_mean": 0.0, "mu_sd": 0.0, "mu_eti_lb": 0.0, "mu_eti_ub": 0.0, "tau_mean": 0.0,
         "p_r_gt_0": 0.0, "p_r_gt_0.1": 0.0},
        {"mu_mean": fe_mean, "mu_sd": fe_sd, "mu_eti_lb": fe_mean + fe_sd * special.ndtri(lo_q),
         "mu_eti_ub": fe_mean + fe_sd * special.ndtri(hi_q), "tau_mean": 0.0,
         "p_r_gt_0": float(special.ndtr(fe_mean / fe_sd)), "p_r_gt_0.1": float(special.ndtr((fe_mean - c01) / fe_sd))},
        {"mu_mean": 0.0, "mu_sd": 0.0, "mu_eti_lb": 0.0, "mu_eti_ub": 0.0, "tau_mean": tau_null,
         "p_r_gt_0": 0.0, "p_r_gt_0.1": 0.0},
        {"mu_mean": r_table.loc["mu", "mean"], "mu_sd": r_table.loc["mu", "sd"],
         "mu_eti_lb": r_table.loc["mu", "eti_lb"], "mu_eti_ub": r_table.loc["mu", "eti_ub"],
         "tau_mean": r_table.loc["tau", "mean"], "p_r_gt_0": r_table.loc["r", "p_gt_0"],
         "p_r_gt_0.1": r_table.loc["r", "p_gt_0.1"]},
    ]
    effect = np.array([False, True, False, True])
    hetero = np.array([False, False, True, True])
    for i, name in enumerate(MODELS):
        rows[i] = {"model": name, "effect": bool(effect[i]), "heterogeneity": bool(hetero[i]),
                   "prior_prob": prior_prob[i], "log_evidence": log_ev[i], "post_prob": post[i],
                   "bf_inclusion": np.nan, **rows[i]}

    m_r, s_r = random._mixture("mu")
    mix = _Mixture(
        atom=float(post[0] + post[2]),
        weights=np.concatenate([[post[1]], post[3] * random.weight]),
        means=np.concatenate([[fe_mean], m_r]),
        sds=np.concatenate([[fe_sd], s_r]),
    )
    mean, sd = mix.moments()
    rows.append({"model": "model_averaged", "effect": np.nan, "heterogeneity": np.nan, "prior_prob": 1.0,
                 "log_evidence": float(np.log(np.dot(prior_prob, np.exp(log_ev - log_ev.max())))) + log_ev.max(),
                 "post_prob": 1.0, "bf_inclusion": np.nan, "mu_mean": mean, "mu_sd": sd,
                 "mu_eti_lb": mix.quantile(lo_q), "mu_eti_ub": mix.quantile(hi_q),
                 "tau_mean": float(post[2] * tau_null + post[3] * r_table.loc["tau", "mean"]),
                 "p_r_gt_0": 1.0 - mix.cdf(0.0), "p_r_gt_0.1": 1.0 - mix.cdf(c01)})
    for label, mask in (("effect", effect), ("heterogeneity", hetero)):
        # inclusion BF = posterior / prior inclusion odds = prior-weighted mean evidence with / without
        prior_in = float(prior_prob[mask].sum())
        if not 0.0 < prior_in < 1.0:
            raise ValueError(f"prior_prob: the {label} component needs prior probability strictly between 0 and 1")
        log_bf = float(special.logsumexp(log_ev[mask], b=prior_prob[mask] / prior_in)
                       - special.logsumexp(log_ev[~mask], b=prior_prob[~mask] / (1.0 - prior_in)))
        rows.append({"model": f"inclusion:{label}", "effect": np.nan, "heterogeneity": np.nan,
                     "prior_prob": prior_in, "log_evidence": log_bf, "post_prob": float(post[mask].sum()),
                     "bf_inclusion": float(np.exp(log_bf))})
    return pd.DataFrame(rows).reindex(columns=list(AVERAGING_COLUMNS))


