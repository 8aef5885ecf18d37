r"""Step weight functions of p-values and the weighted-normal (selection-model) likelihood, RoBMA style.

A weight function with steps :math:`s_1 < \dots < s_{J-1}` on the p-value scale gives every
p-value interval :math:`j` (ascending p; :math:`j = 1` is :math:`p \le s_1`) a relative publication
probability :math:`\omega_j`, with :math:`\omega_1 = 1` and :math:`\omega` non-increasing in p.  The
p-value is one-sided, :math:`p = 1 - \Phi(y/\text{se})` (a positive effect is the expected
direction, RoBMA's ``effect_direction = "positive"``), or two-sided, :math:`p = 2[1 - \Phi(|y|/\text{se})]`.

Prior: the cumulative Dirichlet of RoBMA (Bartoš, Maier, Wagenmakers, Doucouliagos & Stanley 2023,
*Res Synth Methods* 14, 99-116, section 2.2; Maier, Bartoš & Wagenmakers 2023, *Psychol Methods*
28, 107-122, eq. 4):

.. math::

    \eta \sim \operatorname{Dirichlet}(\alpha_1, \dots, \alpha_J), \qquad
    \omega_j = \sum_{i=j}^{J} \eta_i ,

so :math:`\omega_1 = 1 \ge \omega_2 \ge \dots \ge \omega_J = \eta_J > 0`.  With RoBMA's default
:math:`\alpha = (1, \dots, 1)` the weights :math:`(\omega_2, \dots, \omega_J)` are uniform on the
ordered region (the order in which :math:`\alpha` is listed is then immaterial).  The quadrature
and bridge sampling work on the probit-ratio coordinates of :meth:`WeightFunction.omega_from_x`.

Likelihood (Vevea & Hedges 1995, *Psychometrika* 60, 419-435, eqs. 3-5; Hedges 1992): an effect
:math:`y_i` drawn from :math:`N(m_i, s_i^2)` is published with probability proportional to
:math:`w(p_i)`, so its density is

.. math::

    f(y_i) = \frac{w(p_i)\, \phi\big((y_i - m_i)/s_i\big) / s_i}{A_i}, \qquad
    A_i = \sum_{r} w_r \big[\Phi\big((\text{se}_i c_r - m_i)/s_i\big)
          - \Phi\big((\text{se}_i c_{r-1} - m_i)/s_i\big)\big],

the sum running over the regions of the z-statistic :math:`y/\text{se}` that the steps cut out
(:math:`c_r = \Phi^{-1}(1 - s)` for one-sided steps, :math:`\pm\Phi^{-1}(1 - s/2)` for two-sided
ones), each carrying the weight of its p-value interval.  In the random-effects model
:math:`m_i = \mu` and :math:`s_i^2 = v_i + \tau^2` (the study effect integrated out, as in RoBMA's
weighted-normal likelihood); the three-level version is in :mod:`alliancemeta.studies.bayes.robma`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from scipy import special

SIDES = ("one.sided", "two.sided")
#: Parameter points handled together in vectorised likelihoods (bounds memory to CHUNK x k x regions).
CHUNK = 512


@dataclass(frozen=True)
class WeightFunction:
    """A step weight function of p-values with a cumulative-Dirichlet prior on its weights.

    ``side`` is ``one.sided`` or ``two.sided``; ``steps`` the p-value cut-points (ascending, in (0, 1));
    ``alpha`` the Dirichlet concentration, one per p-value interval (``len(steps) + 1``).
    """

    side: str
    steps: tuple[float, ...]
    alpha: tuple[float, ...]

    def __post_init__(self):
        if self.side not in SIDES:
            raise ValueError(f"weight function side {self.side!r}: expected one of {', '.join(SIDES)}")
        steps = np.asarray(self.steps, dtype=float)
        if steps.size == 0 or np.any(steps <= 0) or np.any(steps >= 1) or np.any(np.diff(steps) <= 0):
            raise ValueError(f"weight function steps {self.steps!r}: expected ascending values in (0, 1)")
        if len(self.alpha) != steps.size + 1 or any(a <= 0 for a in self.alpha):
            raise ValueError(f"weight function alpha {self.alpha!r}: expected {steps.size + 1} positive values "
                             "(one per p-value interval)")

    @property
    def J(self) -> int:
        """Number of p-value intervals (weights), ``len(steps) + 1``."""
        return len(self.steps) + 1

    @property
    def label(self) -> str:
        """Short name, e.g. ``2s(.05,.1)`` or ``1s(.025,.05,.5)``."""
        body = ",".join(f"{s:g}".removeprefix("0") for s in self.steps)
        return f"{1 if self.side == 'one.sided' else 2}s({body})"

    @classmethod
    def from_config(cls, spec: Mapping, key: str = "weightfunction") -> WeightFunction:
        """From ``{side: one.sided, steps: [.025, .05], alpha: [1, 1, 1]}`` (alpha defaults to ones)."""
        try:
            steps = tuple(float(s) for s in spec["steps"])
            alpha = tuple(float(a) for a in spec.get("alpha", [1.0] * (len(steps) + 1)))
            return cls(str(spec["side"]), steps, alpha)
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{key}: {err}") from None

    def as_config(self) -> dict:
        return {"side": self.side, "steps": list(self.steps), "alpha": list(self.alpha)}

    # -- regions of the z-statistic -------------------------------------------------------------

    def z_cuts(self) -> tuple[np.ndarray, np.ndarray]:
        r"""Cut-points on :math:`z = y/\text{se}` (ascending) and the weight index of each region.

        Returns ``(cuts, index)`` with ``len(index) == len(cuts) + 1``: region ``r`` is
        :math:`(c_{r-1}, c_r]` (with :math:`c_0 = -\infty`, :math:`c_{R} = \infty`) and has weight
        :math:`\omega_{\text{index}[r]}` (0-based: index 0 is :math:`\omega_1 = 1`).
        """
        steps = np.asarray(self.steps, dtype=float)
        J = self.J
        if self.side == "one.sided":
            cuts = special.ndtri(1.0 - steps)[::-1]  # ascending in z = descending in p
            index = np.arange(J)[::-1]
        else:
            a = special.ndtri(1.0 - steps / 2.0)  # |z| cut-points, descending
            cuts = np.concatenate([-a, a[::-1]])
            index = np.concatenate([np.arange(J), np.arange(J - 2, -1, -1)])
        return cuts, index

    def region_of(self, yi, sei) -> np.ndarray:
        """Region (0-based, as :meth:`z_cuts`) of each observed z-statistic.

        A p-value equal to a step belongs to the interval below it (p <= s, as metafor's ``selmodel``):
        one-sided, :math:`z = c` lies above the cut; two-sided, :math:`|z| = a` lies outside.
        """
        cuts, _ = self.z_cuts()
        z = np.asarray(yi, dtype=float) / np.asarray(sei, dtype=float)
        if self.side == "one.sided":
            return np.searchsorted(cuts, z, side="right")
        return np.searchsorted(cuts, z, side="left") + np.isin(z, cuts[cuts > 0])

    def interval_of(self, yi, sei) -> np.ndarray:
        """p-value interval (0-based weight index) of each observed effect."""
        _, index = self.z_cuts()
        return index[self.region_of(yi, sei)]

    # -- omega and its prior ----------------------------------------------------------------------

    @staticmethod
    def omega_from_x(x: np.ndarray) -> np.ndarray:
        r"""Weights ``(..., J)`` from the probit-ratio coordinates ``x`` ``(..., J-1)``.

        :math:`\omega_{j+1}/\omega_j = r_j = \Phi(x_j)`, :math:`\omega_1 = 1`: the ordered weights are a
        product of ratios in (0, 1), and the probit makes every tail of the posterior Gaussian
        (a posterior with positive density at :math:`\omega = 1`, i.e. no selection, has a light
        tail in :math:`x` instead of the exponential tail of a logit or log-ratio coordinate).
        """
        x = np.asarray(x, dtype=float)
        log_r = special.log_ndtr(x)
        log_omega = np.concatenate([np.zeros((*x.shape[:-1], 1)), np.cumsum(log_r, axis=-1)], axis=-1)
        return np.exp(log_omega)

    @staticmethod
    def x_from_omega(omega: np.ndarray) -> np.ndarray:
        omega = np.asarray(omega, dtype=float)
        return special.ndtri(omega[..., 1:] / omega[..., :-1])

    @staticmethod
    def omega_from_eta(eta: np.ndarray) -> np.ndarray:
        r""":math:`\omega_j = \sum_{i \ge j}\eta_i` (reverse cumulative sum), so :math:`\omega_1 = 1`."""
        eta = np.asarray(eta, dtype=float)
        return np.cumsum(eta[..., ::-1], axis=-1)[..., ::-1]

    def log_prior_x(self, x: np.ndarray) -> np.ndarray:
        r"""Log-density of the probit-ratio coordinates ``x`` (shape ``(N, J-1)``) under the cumulative Dirichlet.

        With :math:`\eta_j = \omega_j - \omega_{j+1}` (:math:`\eta_J = \omega_J`; a linear map of unit
        determinant), :math:`\omega_{j+1} = \prod_{i \le j} r_i` (Jacobian :math:`\prod_i r_i^{J-1-i}`) and
        :math:`r_j = \Phi(x_j)` (Jacobian :math:`\prod_j \phi(x_j)`):

        .. math::

            \log p(x) = \log\operatorname{Dir}(\eta; \alpha) + \sum_{i=1}^{J-2} (J-1-i)\log r_i
                + \sum_{j=1}^{J-1} \log\phi(x_j).
        """
        x = np.atleast_2d(np.asarray(x, dtype=float))
        J = self.J
        log_r = special.log_ndtr(x)
        log_omega = np.concatenate([np.zeros((x.shape[0], 1)), np.cumsum(log_r, axis=1)], axis=1)
        # log eta_j = log omega_j + log(1 - r_j) for j < J; log eta_J = log omega_J
        log_1m_r = special.log_ndtr(-x)
        log_eta = np.concatenate([log_omega[:, :-1] + log_1m_r, log_omega[:, -1:]], axis=1)
        alpha = np.asarray(self.alpha)
        out = special.gammaln(alpha.sum()) - special.gammaln(alpha).sum() + log_eta @ (alpha - 1.0)
        powers = np.arange(J - 2, -1, -1, dtype=float)  # J-1-i for i = 1..J-1 (the last is 0)
        out += log_r @ powers
        out += np.sum(-0.5 * x**2 - 0.5 * np.log(2.0 * np.pi), axis=1)
        return out

    def prior_draws(self, size: int, rng: np.random.Generator) -> np.ndarray:
        """Draws of omega ``(size, J)`` from the prior."""
        return self.omega_from_eta(rng.dirichlet(self.alpha, size))


def log_selection_normalizer(mean: np.ndarray, sd: np.ndarray, sei: np.ndarray, cuts: np.ndarray,
                             weights: np.ndarray) -> np.ndarray:
    r"""Log of :math:`A = \sum_r w_r P(Y \in \text{region } r)` for :math:`Y \sim N(\text{mean}, \text{sd}^2)`.

    ``mean``/``sd`` broadcast against each other (any shape ``S``; ``sei`` broadcasts with them);
    ``weights`` has shape ``S' + (R,)`` broadcastable to ``S + (R,)`` with one weight per region.
    Uses :math:`A = w_R + \sum_{r<R} (w_r - w_{r+1})\,\Phi((\text{se}\,c_r - \text{mean})/\text{sd})`.
    """
    z = (sei[..., None] * cuts - mean[..., None]) / sd[..., None]
    cdf = special.ndtr(z)
    diff = weights[..., :-1] - weights[..., 1:]
    return np.log(weights[..., -1] + np.sum(diff * cdf, axis=-1))


def selection_loglik(yi: np.ndarray, vi: np.ndarray, mu: np.ndarray, tau: np.ndarray, omega: np.ndarray,
                     wf: WeightFunction) -> np.ndarray:
    r"""Log-likelihood of the random-effects selection model at many parameter points.

    Parameters
    ----------
    yi, vi : ndarray, shape (k,)
        Effects and sampling variances.
    mu, tau : ndarray, shape (N,)
        Mean and heterogeneity SD (tau = 0: equal effects).
    omega : ndarray, shape (N, J)
        Weights of the p-value intervals (``omega[:, 0] == 1``).

    Returns
    -------
    ndarray, shape (N,)
        :math:`\sum_i \log f(y_i)` with :math:`f` the weighted normal of the module docstring
        (:math:`m_i = \mu`, :math:`s_i^2 = v_i + \tau^2`).
    """
    yi, vi = np.asarray(yi, dtype=float), np.asarray(vi, dtype=float)
    mu, tau = np.atleast_1d(mu).astype(float), np.atleast_1d(tau).astype(float)
    omega = np.atleast_2d(omega).astype(float)
    sei = np.sqrt(vi)
    cuts, index = wf.z_cuts()
    obs = wf.interval_of(yi, sei)
    n = mu.size
    out = np.empty(n)
    step = max(1, CHUNK * 64 // max(yi.size, 1))
    for s in range(0, n, step):
        m, t, om = mu[s : s + step, None], tau[s : s + step, None], omega[s : s + step]
        sd = np.sqrt(vi[None, :] + t**2)
        w = om[:, None, index]  # (n, 1, R)
        log_a = log_selection_normalizer(m, sd, sei[None, :], cuts, w)
        resid = (yi[None, :] - m) / sd
        ll = np.log(om[:, obs]) - 0.5 * resid**2 - np.log(sd) - 0.5 * np.log(2.0 * np.pi) - log_a
        out[s : s + step] = ll.sum(axis=1)
    return out
