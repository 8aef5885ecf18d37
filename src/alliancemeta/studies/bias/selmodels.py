r"""Selection models for a random-effects model, as ``metafor::selmodel()`` (metafor 3.8-1).

One function, :func:`selmodel`, fits every weight function of metafor's ``selmodel(res, type=...)``
that SPEC §5 ``selection_models.csv`` lists, by maximum likelihood:

==================  ==============================================  =====================  ==========
type                weight :math:`w(p; \delta)` of a one-sided p     bounds on delta        p clipped
==================  ==============================================  =====================  ==========
``stepfun``         :math:`\delta_j` for :math:`s_{j-1} < p \le s_j`  [0, 100], delta_1 = 1  no
``beta``            :math:`p^{\delta_1-1}(1-p)^{\delta_2-1}`          [1e-5, 100] each       [1e-5, 1-1e-5]
``halfnorm``        :math:`\exp(-\delta p^2)`                         [0, 100]               no
``negexp``          :math:`\exp(-\delta p)`                           [0, 100]               no
``logistic``        :math:`2\exp(-\delta p)/(1+\exp(-\delta p))`      [0, 100]               no
``power``           :math:`(1-p)^{\delta}`                            [0, 100]               [1e-5, 1-1e-5]
==================  ==============================================  =====================  ==========

(Vevea & Hedges 1995, *Psychometrika* 60, 419-435, step function; Citkowicz & Vevea 2017, *Psychol
Methods* 22, 28-41, beta; Preston, Ashby & Smyth 2004, *Biometrics* 60, 338-346, half-normal,
negative-exponential, logistic and power.)  The p-values are one-sided, :math:`p_i =
1 - \Phi(y_i/\sqrt{v_i})` (metafor's ``alternative="greater"``), the weights carry no precision
term (metafor's default: ``prec`` not given) and the continuous types have no step (metafor's
default ``steps = 0``).

The density of an observed effect is the random-effects density re-weighted by the selection
function (Iyengar & Greenhouse 1988; metafor's ``.selmodel.ll.cont``):

.. math::

    \ell(\beta, \tau^2, \delta) = \sum_i \Big[\log w(p_i; \delta) + \log\phi\big((y_i-\mu_i)/s_i\big)
        - \log s_i - \log A_i\Big], \qquad s_i^2 = v_i + \tau^2, \; \mu_i = x_i'\beta,

    A_i = \int_{-\infty}^{\infty} w\big(1 - \Phi(y/\sqrt{v_i}); \delta\big)\,
          \frac{1}{s_i}\phi\Big(\frac{y - \mu_i}{s_i}\Big)\,dy .

metafor evaluates :math:`A_i` with R's adaptive ``integrate()`` (relative tolerance 1.2e-4 by
default) and its derivatives by finite differences.  Here :math:`A_i` and its first and second
derivatives in :math:`(\mu_i, \tau^2, \delta)` are computed together from one fixed quadrature
rule (:class:`_Quadrature`): in :math:`z = y/\sqrt{v_i}` the one-sided p-value is the fixed
:math:`1-\Phi(z)`, so the weights at the nodes do not depend on the study and only the normal
density does.  Beyond :math:`\pm L` the weight is constant (the p-value is clipped at 1e-5 for
``beta`` and ``power``, :math:`L = \Phi^{-1}(1 - 10^{-5})`; for the others :math:`L = 8.5`, where
the weight equals its limit to double precision), so the two tails are normal probabilities in
closed form and composite Gauss-Legendre quadrature covers :math:`[-L, L]`; checked against
adaptive quadrature at 1e-13 to a relative 3e-13 (``tests/unit/studies/test_selmodels.py``).

The step function (``stepfun``) has a closed-form :math:`A_i`: its likelihood and analytic derivatives
are :class:`alliancemeta.studies.bias.selection.StepLikelihood` (the 3PSM of ``publication_bias.csv``),
maximised by the same bounded Newton method as the other types (:func:`_maximise_bounded`, which also
converges where :func:`~alliancemeta.studies.bias.selection.selmodel_stepfun`'s optimiser stalls, e.g. on
molloy2014 with y and its standard errors scaled by 2.34).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
from scipy import special, stats

from alliancemeta.core.errors import ConvergenceError
from alliancemeta.studies.bias.common import as_arrays
from alliancemeta.studies.bias.selection import StepLikelihood, ml_loglik
from alliancemeta.studies.random_effects import MetaFit, random_effects

#: The weight functions of metafor's ``selmodel`` implemented here (``type=`` values).
SELMODEL_TYPES = ("stepfun", "beta", "halfnorm", "negexp", "logistic", "power")

#: Convergence: every free parameter within this many standard errors of the optimum (the scaled
#: gradient :math:`|g_j|\sqrt{[(-H)^{-1}]_{jj}}`).  Newton's method converges quadratically, so
#: the last accepted step is far smaller; round-off in the summed gradient is ~1e-12 here.
CONT_GTOL = 1e-9
CONT_MAX_NEWTON = 200
#: Take the full Newton step once it moves every free parameter by less than this many standard errors.
NEWTON_SMALL_STEP = 1e-2
#: metafor's test for a selection parameter at its bound (selmodel.rma.uni): within
#: ``.Machine$double.eps^0.25`` of ``delta.min`` or ``100 * .Machine$double.eps^0.25`` of ``delta.max``.
BOUND_TOL_LOW = np.finfo(float).eps ** 0.25
BOUND_TOL_HIGH = 100 * np.finfo(float).eps ** 0.25
#: Bounds on the step function's weights (metafor's delta.min, delta.max for stepfun).
STEP_DELTA_MIN, STEP_DELTA_MAX = 0.0, 100.0
#: Quadrature: panel width in z and Gauss-Legendre nodes per panel (see the module docstring).  The
#: beta weight, up to p^(-1) or (1-p)^99 near the clipping points, needs the narrower panels.
QUAD_PANEL_WIDTH = {"beta": 0.5}
QUAD_PANEL_WIDTH_DEFAULT = 1.0
QUAD_NODES = 16
#: Outside [-L, L] the weights of the unclipped types equal their limits to double precision
#: (1 - Phi(8.5) = 9.5e-18).
QUAD_L_UNCLIPPED = 8.5


@dataclass(frozen=True)
class _Family:
    """A weight function: its parameters' bounds, start and null values, p-value clipping."""

    name: str
    n_delta: int
    delta_min: tuple[float, ...]
    delta_max: tuple[float, ...]
    delta_init: tuple[float, ...]
    delta_h0: tuple[float, ...]  # no selection (metafor's H0.delta)
    pval_min: float

    def logw(self, p: np.ndarray, delta: np.ndarray):
        r""":math:`\log w(p;\delta)`, its gradient and Hessian in delta (shapes (n,), (n, d), (n, d, d))."""
        p = np.asarray(p, dtype=float)
        n, nd = p.size, self.n_delta
        d2 = np.zeros((n, nd, nd))
        if self.name == "halfnorm":
            g = -(p**2)[:, None]
        elif self.name == "negexp":
            g = -p[:, None]
        elif self.name == "power":
            g = np.log1p(-p)[:, None]
        elif self.name == "beta":
            g = np.column_stack([np.log(p), np.log1p(-p)])
        elif self.name == "logistic":
            x = delta[0] * p
            sig = special.expit(x)
            lw = np.log(2.0) - np.logaddexp(0.0, x)
            g = (-p * sig)[:, None]
            d2[:, 0, 0] = -(p**2) * sig * (1.0 - sig)
            return lw, g, d2
        else:  # pragma: no cover - guarded by selmodel()
            raise ValueError(self.name)
        if self.name == "beta":
            lw = g @ (np.asarray(delta) - 1.0)
        else:
            lw = g[:, 0] * delta[0]
        return lw, g, d2


FAMILIES = {
    "beta": _Family("beta", 2, (1e-5, 1e-5), (100.0, 100.0), (1.0, 1.0), (1.0, 1.0), 1e-5),
    "halfnorm": _Family("halfnorm", 1, (0.0,), (100.0,), (1.0,), (0.0,), 0.0),
    "negexp": _Family("negexp", 1, (0.0,), (100.0,), (1.0,), (0.0,), 0.0),
    "logistic": _Family("logistic", 1, (0.0,), (100.0,), (1.0,), (0.0,), 0.0),
    "power": _Family("power", 1, (0.0,), (100.0,), (1.0,), (0.0,), 1e-5),
}


@dataclass(frozen=True)
class SelModelFit:
    """A selection model fitted by maximum likelihood, with ``metafor::selmodel`` names.

    ``beta``/``se``/``zval``/``pval``/``ci_lb``/``ci_ub``: the adjusted effect (first coefficient)
    with z-based Wald inference, as metafor; ``delta``/``se_delta``: the selection parameters
    (for ``stepfun`` the first, fixed at 1, included with se NaN); ``LRT``: likelihood-ratio test
    of no selection (delta at ``delta_h0``) against the ML random-effects model with log-likelihood
    ``ll0``, :math:`\\chi^2` with ``LRT_df`` df.  ``at_bound`` names every parameter that ends at (or,
    for delta, within metafor's tolerance of) a bound, e.g. ``("tau2",)`` or ``("delta",)``.
    ``vcov``: inverse observed information over (beta, tau2, free deltas) in the natural
    parameters, as metafor's Hessian with ``htransf=FALSE``; NaN rows/columns for parameters held at
    a bound.
    """

    type: str
    beta: float
    se: float
    zval: float
    pval: float
    ci_lb: float
    ci_ub: float
    tau2: float
    se_tau2: float
    delta: np.ndarray
    se_delta: np.ndarray
    ll: float
    ll0: float
    LRT: float
    LRT_df: int
    LRT_pval: float
    k: int
    level: float
    steps: np.ndarray | None
    counts: np.ndarray | None  # observed p-values per step interval (stepfun)
    at_bound: tuple[str, ...]
    iterations: int
    betas: np.ndarray = field(repr=False)  # all coefficients
    vcov: np.ndarray = field(repr=False)

    @property
    def delta_at_bound(self) -> bool:
        """True when a selection parameter is (almost) at its bound: metafor warns; SPEC rows are NaN."""
        return "delta" in self.at_bound


class _Quadrature:
    r"""Composite Gauss-Legendre rule on [-L, L] in :math:`z = y/\sqrt{v_i}`, plus the two tails."""

    def __init__(self, family: _Family):
        pmin = family.pval_min
        L = float(stats.norm.isf(pmin)) if pmin > 0 else QUAD_L_UNCLIPPED
        n_panels = int(np.ceil(2 * L / QUAD_PANEL_WIDTH.get(family.name, QUAD_PANEL_WIDTH_DEFAULT)))
        edges = np.linspace(-L, L, n_panels + 1)
        x, w = np.polynomial.legendre.leggauss(QUAD_NODES)
        half = np.diff(edges) / 2
        mid = (edges[:-1] + edges[1:]) / 2
        self.L = L
        self.z = (mid[:, None] + half[:, None] * x[None, :]).ravel()
        self.W = (half[:, None] * w[None, :]).ravel()
        # the p-value at each node and in the two tails (z > L: p -> pmin or 0; z < -L: p -> 1 - pmin)
        self.p = np.clip(stats.norm.sf(self.z), pmin, 1 - pmin)
        self.p_tails = np.array([pmin, 1.0 - pmin])


class _ContinuousLikelihood:
    """Log-likelihood of a continuous-weight selection model with its analytic gradient and Hessian.

    Parameters ``theta = (beta_1..beta_p, tau2, delta_1..delta_d)``.  For a study with
    :math:`\\sigma_i = \\sqrt{v_i}` the integral is

    .. math::

        A_i = \\sum_m W_m\\, w(p_m;\\delta)\\, \\frac{\\sigma_i}{s_i}\\phi(u_{im})
              + w(p_{hi};\\delta)\\,\\bar\\Phi(c^+_i) + w(p_{lo};\\delta)\\,\\Phi(c^-_i),
        \\quad u_{im} = \\frac{\\sigma_i z_m - \\mu_i}{s_i},\\;
        c^\\pm_i = \\frac{\\pm\\sigma_i L - \\mu_i}{s_i},

    and derivatives in :math:`\\mu_i` and :math:`V = \\tau^2` of a normal density are Hermite
    polynomials, :math:`\\partial^a_\\mu\\partial^b_V f = f\\,He_{a+2b}(u)/(2^b s^{a+2b})` (the
    heat equation :math:`\\partial_V f = \\tfrac12\\partial^2_\\mu f`); those of the tail
    probabilities follow by integrating once more.
    """

    def __init__(self, yi, vi, X, family: _Family):
        self.yi, self.vi, self.X = yi, vi, X
        self.p = X.shape[1]
        self.family = family
        self.quad = _Quadrature(family)
        self.sig = np.sqrt(vi)
        pmin = family.pval_min
        self.pvals = np.clip(stats.norm.sf(yi / self.sig), pmin, 1 - pmin)
        self.n_theta = self.p + 1 + family.n_delta
        self._last = None  # the last full evaluation (the optimum is evaluated again by the summary)

    def split(self, theta):
        p = self.p
        return theta[:p], theta[p], theta[p + 1 :]

    def evaluate(self, theta, order: int = 2):
        """(ll, gradient, Hessian); ``order`` 0 or 1 skips the derivatives not needed."""
        if order == 2 and self._last is not None and np.array_equal(self._last[0], theta):
            return self._last[1]
        out = self._evaluate(np.asarray(theta, dtype=float), order)
        if order == 2:
            self._last = (np.array(theta, dtype=float), out)
        return out

    def _evaluate(self, theta, order: int):
        beta, tau2, delta = self.split(theta)
        fam, q = self.family, self.quad
        yi, X, sig = self.yi, self.X, self.sig
        s2 = self.vi + tau2
        s = np.sqrt(s2)
        mu = X @ beta
        e = yi - mu
        # weights at the nodes and tails, and the observed log-weights
        lw_n, g_n, h_n = fam.logw(q.p, delta)
        lw_t, g_t, h_t = fam.logw(q.p_tails, delta)
        lw_o, g_o, h_o = fam.logw(self.pvals, delta)
        w_n, w_t = np.exp(lw_n), np.exp(lw_t)
        # node densities (k, M) and tail probabilities (k, 2)
        u = (sig[:, None] * q.z[None, :] - mu[:, None]) / s[:, None]
        D = np.exp(-0.5 * u * u)
        D *= q.W[None, :]
        D *= (sig / (s * np.sqrt(2 * np.pi)))[:, None]
        c = np.column_stack([(sig * q.L - mu) / s, (-sig * q.L - mu) / s])
        T = np.column_stack([special.ndtr(-c[:, 0]), special.ndtr(c[:, 1])])
        nd = fam.n_delta
        if order == 0:
            A = D @ w_n + T @ w_t
        else:
            # columns: w, dw/ddelta (nd), d2w/ddelta2 (nd^2) at the nodes and in the tails
            Wn = np.column_stack([w_n, w_n[:, None] * g_n])
            Wt = np.column_stack([w_t, w_t[:, None] * g_t])
            if order == 2:
                Wn = np.column_stack(
                    [Wn, (w_n[:, None, None] * (h_n + g_n[:, :, None] * g_n[:, None, :])).reshape(-1, nd * nd)]
                )
                Wt = np.column_stack(
                    [Wt, (w_t[:, None, None] * (h_t + g_t[:, :, None] * g_t[:, None, :])).reshape(-1, nd * nd)]
                )
            # moments sum_m D u^j W_m (j = 0..4); the Hermite sums follow from them
            Du = D * u
            Du2 = Du * u
            N0 = D @ Wn  # nodes only
            M0 = N0 + T @ Wt  # with the tails: A and its delta derivatives
            M1 = Du @ Wn[:, : 1 + nd]
            M2 = Du2 @ Wn[:, : 1 + nd]
            A = M0[:, 0]
        with np.errstate(divide="ignore"):
            ll = float(np.sum(lw_o - 0.5 * np.log(2 * np.pi * s2) - 0.5 * e * e / s2 - np.log(A)))
        if order == 0:
            return ll, None, None
        phic = stats.norm.pdf(c)
        sgn = np.array([1.0, -1.0])  # the lower tail is Phi(c) = 1 - bar Phi(c)
        # tail derivatives: d/dmu barPhi(c) = phi/s, d/dV = phi c/(2 s^2), and second derivatives
        Tm = sgn * phic / s[:, None]
        TV = sgn * phic * c / (2 * s2[:, None])
        He1 = M1  # sum D He_1(u) W
        He2 = M2 - N0[:, : 1 + nd]  # sum D He_2(u) W
        A_m = He1[:, 0] / s + Tm @ w_t
        A_V = He2[:, 0] / (2 * s2) + TV @ w_t
        A_d = M0[:, 1 : 1 + nd]  # (k, d), tails included
        g_mu = e / s2 - A_m / A
        g_V = -0.5 / s2 + 0.5 * e * e / s2**2 - A_V / A
        g_d = g_o - A_d / A[:, None]
        grad = np.concatenate([X.T @ g_mu, [g_V.sum()], g_d.sum(axis=0)])
        if order == 1:
            return ll, grad, None
        Du3 = Du2 * u
        M3 = Du3 @ w_n
        M4 = (Du3 * u) @ w_n
        He3 = M3 - 3 * M1[:, 0]
        He4 = M4 - 6 * M2[:, 0] + 3 * N0[:, 0]
        Tmm = sgn * phic * c / s2[:, None]
        TmV = sgn * phic * (c * c - 1) / (2 * s[:, None] ** 3)
        TVV = sgn * phic * c * (c * c - 3) / (4 * s2[:, None] ** 2)
        A_mm = He2[:, 0] / s2 + Tmm @ w_t
        A_mV = He3 / (2 * s**3) + TmV @ w_t
        A_VV = He4 / (4 * s2**2) + TVV @ w_t
        A_md = He1[:, 1:] / s[:, None] + Tm @ Wt[:, 1 : 1 + nd]
        A_Vd = He2[:, 1:] / (2 * s2[:, None]) + TV @ Wt[:, 1 : 1 + nd]
        A_dd = M0[:, 1 + nd :].reshape(-1, nd, nd)
        h_mm = -1 / s2 - A_mm / A + A_m**2 / A**2
        h_mV = -e / s2**2 - A_mV / A + A_m * A_V / A**2
        h_VV = 0.5 / s2**2 - e * e / s2**3 - A_VV / A + A_V**2 / A**2
        h_md = -A_md / A[:, None] + (A_m / A**2)[:, None] * A_d
        h_Vd = -A_Vd / A[:, None] + (A_V / A**2)[:, None] * A_d
        h_dd = h_o - A_dd / A[:, None, None] + A_d[:, :, None] * A_d[:, None, :] / (A**2)[:, None, None]
        p = self.p
        H = np.zeros((self.n_theta, self.n_theta))
        H[:p, :p] = (X.T * h_mm) @ X
        H[:p, p] = H[p, :p] = X.T @ h_mV
        H[p, p] = h_VV.sum()
        H[:p, p + 1 :] = X.T @ h_md
        H[p + 1 :, :p] = H[:p, p + 1 :].T
        H[p, p + 1 :] = H[p + 1 :, p] = h_Vd.sum(axis=0)
        H[p + 1 :, p + 1 :] = h_dd.sum(axis=0)
        return ll, grad, H


def _maximise_bounded(lik, theta0, lower, upper, gtol: float = CONT_GTOL, max_iter: int = CONT_MAX_NEWTON):
    r"""Maximise ``lik`` within box bounds by damped (Levenberg-Marquardt) Newton steps.

    A parameter at a bound whose gradient points outwards is held there (an active set).  Near the
    optimum (the Newton step moves every free parameter by less than :data:`NEWTON_SMALL_STEP`
    standard errors and :math:`-H_F` is positive definite) the full Newton step is taken: it
    converges quadratically, and the change in log-likelihood it makes is below round-off, so it
    cannot be judged by it.  Otherwise the step solves :math:`(-H_F + \lambda D)s = g_F`, with D the
    diagonal of :math:`|H_F|` (tau^2 ~ 0.01 and delta ~ 1 are scaled alike), is clipped to the bounds
    and is accepted when the log-likelihood increases; lambda shrinks after a success and grows
    otherwise.  Converged when :math:`-H_F` is positive definite and every free parameter is within
    ``gtol`` standard errors of the optimum.  Returns (theta, free mask, iterations).
    """
    theta = np.clip(np.asarray(theta0, dtype=float), lower, upper)
    lam = 1e-3
    for it in range(1, max_iter + 1):
        ll, g, H = lik.evaluate(theta)
        if not (np.isfinite(ll) and np.all(np.isfinite(g)) and np.all(np.isfinite(H))):
            raise ConvergenceError("the log-likelihood or its derivatives are not finite at the current parameters")
        free = ~(((theta <= lower) & (g < 0)) | ((theta >= upper) & (g > 0)))
        if not np.any(free):
            return theta, free, it
        Hf, gf = H[np.ix_(free, free)], g[free]
        eig, vec = np.linalg.eigh(-Hf)
        D = np.maximum(np.abs(np.diag(Hf)), np.finfo(float).tiny)
        if eig[0] > 0:
            cov = np.linalg.inv(-Hf)
            se = np.sqrt(np.diag(cov))
            if np.all(np.abs(gf) * se <= gtol):
                return theta, free, it
            newton = cov @ gf
            if np.all(np.abs(newton) <= NEWTON_SMALL_STEP * se):
                theta = theta.copy()
                theta[free] = np.clip(theta[free] + newton, lower[free], upper[free])
                continue
        elif np.all(np.abs(gf) / np.sqrt(D) <= gtol):
            # a stationary point that is not a maximum (a saddle): leave it along negative curvature
            theta = _escape_saddle(lik, theta, free, ll, eig[0], vec[:, 0], lower, upper)
            continue
        for _ in range(80):
            try:
                step = np.linalg.solve(-Hf + lam * np.diag(D), gf)
            except np.linalg.LinAlgError:
                lam *= 10.0
                continue
            new = theta.copy()
            new[free] = np.clip(theta[free] + step, lower[free], upper[free])
            ll_new = lik.evaluate(new, order=0)[0]
            if np.isfinite(ll_new) and ll_new > ll:
                theta = new
                lam = max(lam / 10.0, 1e-12)
                break
            lam *= 10.0
        else:
            if eig[0] > 0:
                raise ConvergenceError("no step increases the log-likelihood (a flat or ill-posed likelihood)")
            theta = _escape_saddle(lik, theta, free, ll, eig[0], vec[:, 0], lower, upper)
    raise ConvergenceError(f"no optimum within {max_iter} Newton iterations")


def _escape_saddle(lik, theta, free, ll, eig_min, direction, lower, upper):
    """Step from a saddle point along the direction of negative curvature, to whichever side is higher.

    Trial steps are multiples of :math:`1/\\sqrt{|\\lambda_{min}|}` (the distance over which the
    log-likelihood would rise by 1/2 along that direction if it were quadratic), both ways.
    """
    scale = 1.0 / np.sqrt(abs(eig_min))
    best, best_ll = None, ll
    for t in scale * np.array([1.0, -1.0, 2.0, -2.0, 4.0, -4.0, 0.5, -0.5, 8.0, -8.0, 0.25, -0.25]):
        cand = theta.copy()
        cand[free] = np.clip(theta[free] + t * direction, lower[free], upper[free])
        cand_ll = lik.evaluate(cand, order=0)[0]
        if np.isfinite(cand_ll) and cand_ll > best_ll:
            best, best_ll = cand, cand_ll
    if best is None:
        raise ConvergenceError("stuck at a saddle point of the log-likelihood (no direction of ascent found)")
    return best


def _at_bound_delta(delta, dmin, dmax) -> bool:
    delta, dmin, dmax = (np.asarray(a, dtype=float) for a in (delta, dmin, dmax))
    return bool(np.any(delta <= dmin + BOUND_TOL_LOW) or np.any(delta >= dmax - BOUND_TOL_HIGH))


def selmodel(yi, vi, type: str, steps=None, X=None, level: float = 0.95) -> SelModelFit:
    r"""Fit a selection model by maximum likelihood, as ``metafor::selmodel(rma(yi, vi, method="ML"), type)``.

    Parameters
    ----------
    yi, vi : array_like
        Effect sizes and sampling variances (> 0).
    type : str
        One of :data:`SELMODEL_TYPES` (metafor's names); see the module docstring for the weights.
    steps : sequence of float, optional
        For ``stepfun`` only (required there): the p-value cut points, e.g. ``(0.025,)`` for the
        three-parameter model (3PSM) or ``(0.025, 0.5)`` for the four-parameter model.
    X : array_like, optional
        Design matrix with the intercept (meta-regression); default intercept only.
    level : float
        Confidence level of the Wald intervals (metafor's ``level``).

    Notes
    -----
    As metafor: the model without selection is fitted by ML (``rma(method="ML")``); its estimates
    start the optimisation (tau^2 + 0.001, as metafor's ``tau2.init``; delta at metafor's
    ``delta.init``) and its log-likelihood ``ll0`` is the null of the likelihood-ratio test.
    The optimum is found by damped Newton steps with analytic derivatives (:func:`_maximise_bounded`;
    for ``stepfun`` on the closed-form likelihood of
    :class:`~alliancemeta.studies.bias.selection.StepLikelihood`) until every free parameter is within
    :data:`CONT_GTOL` standard errors of it.  Standard errors are the inverse
    observed information in (beta, tau2, delta), as metafor's ``htransf=FALSE``; a parameter held at
    a bound (tau2 = 0, or delta at 0 where no selection is estimated) gets no standard error and
    the others are conditional on it.

    Raises
    ------
    ValueError
        k smaller than the number of parameters (metafor's check), an empty step interval
        (``stepfun``), an unknown type or bad input.
    ConvergenceError
        The optimum was not reached (message says why).
    """
    if type not in SELMODEL_TYPES:
        raise ValueError(f"unknown selection model type {type!r}; expected one of {', '.join(SELMODEL_TYPES)}")
    yi, vi = as_arrays(yi, vi)
    k = yi.size
    ml = random_effects(yi, vi, X=X, method="ML", test="z", level=level)
    if type == "stepfun":
        return _fit_stepfun(yi, vi, ml, steps, level)
    if steps is not None:
        raise ValueError(f"steps apply to type='stepfun' only (metafor's default steps = 0 for {type!r})")
    fam = FAMILIES[type]
    p = ml.p
    n_par = p + 1 + fam.n_delta
    if k < n_par:
        raise ValueError(f"k = {k} is too small for the {n_par} parameters of the {type} selection model")
    lik = _ContinuousLikelihood(yi, vi, ml.X, fam)
    lower = np.concatenate([np.full(p, -np.inf), [0.0], fam.delta_min])
    upper = np.concatenate([np.full(p, np.inf), [np.inf], fam.delta_max])
    theta0 = np.concatenate([ml.beta, [ml.tau2 + 0.001], fam.delta_init])
    theta, free, iterations = _maximise_bounded(lik, theta0, lower, upper, CONT_GTOL, CONT_MAX_NEWTON)
    return _summarise(lik, ml, theta, free, iterations, type, level, fam.n_delta, fam.delta_min, fam.delta_max)


def _fit_stepfun(yi, vi, ml: MetaFit, steps, level: float) -> SelModelFit:
    r"""The step-function model: :class:`~alliancemeta.studies.bias.selection.StepLikelihood` (closed-form
    :math:`A_i`, analytic derivatives) maximised by :func:`_maximise_bounded`, with metafor's checks.

    Parameters (beta, tau2, delta_2..delta_N), delta_1 = 1; bounds delta in [0, 100].  metafor stops when
    an interval with an estimated weight holds no observed p-value (the weight is not identified).
    """
    if steps is None:
        raise ValueError("type='stepfun' needs steps, e.g. steps=(0.025,)")
    steps = np.unique(np.asarray(steps, dtype=float))
    if steps.size == 0 or np.any((steps <= 0) | (steps > 1)):
        raise ValueError("steps must lie in (0, 1]")
    if steps[-1] != 1:
        steps = np.append(steps, 1.0)
    pvals = stats.norm.sf(yi / np.sqrt(vi))
    groups = np.searchsorted(steps, pvals, side="left")  # the first step with p <= step
    counts = np.bincount(groups, minlength=steps.size)
    if np.any(counts[1:] == 0):
        bounds = np.r_[0.0, steps]
        empty = [f"({bounds[j]:g}, {bounds[j + 1]:g}]" for j in range(1, steps.size) if counts[j] == 0]
        raise ValueError(
            f"no observed p-value in interval(s) {', '.join(empty)}: its selection weight is not identified "
            "(metafor stops here too)"
        )
    p, n_delta = ml.p, steps.size - 1
    n_par = p + 1 + n_delta
    if yi.size < n_par:
        raise ValueError(f"k = {yi.size} is too small for the {n_par} parameters of the step-function selection model")
    lik = StepLikelihood(yi, vi, ml.X, steps, groups, None)
    lower = np.concatenate([np.full(p, -np.inf), [0.0], np.full(n_delta, STEP_DELTA_MIN)])
    upper = np.concatenate([np.full(p, np.inf), [np.inf], np.full(n_delta, STEP_DELTA_MAX)])
    theta0 = np.concatenate([ml.beta, [ml.tau2 + 0.001], np.ones(n_delta)])
    with np.errstate(divide="ignore"):  # a trial step onto delta = 0 has log-likelihood -inf and is refused
        theta, free, iterations = _maximise_bounded(lik, theta0, lower, upper, CONT_GTOL, CONT_MAX_NEWTON)
    fit = _summarise(lik, ml, theta, free, iterations, "stepfun", level, n_delta, lower[p + 1 :], upper[p + 1 :])
    return replace(fit, steps=steps, counts=counts)


def _summarise(lik, ml: MetaFit, theta, free, iterations, type, level, n_delta, delta_min, delta_max) -> SelModelFit:
    """The result object at the optimum: inverse observed information over the free parameters."""
    p = lik.p
    ll, _, H = lik.evaluate(theta)
    vcov = np.full(H.shape, np.nan)
    vcov[np.ix_(free, free)] = np.linalg.inv(-H[np.ix_(free, free)])
    se_all = np.sqrt(np.diag(vcov))
    beta, tau2, delta = lik.split(theta)
    delta = np.asarray(delta, dtype=float)
    se_delta = se_all[p + 1 :]
    if delta.size > n_delta:  # the step function's first weight, fixed at 1
        se_delta = np.concatenate([[np.nan], se_delta])
    crit = float(stats.norm.ppf(1 - (1 - level) / 2))
    se = float(se_all[0])
    zval = float(beta[0] / se)
    ll0 = ml_loglik(lik.yi, lik.vi, lik.X, ml)
    LRT = max(0.0, -2 * (ll0 - ll))
    at = []
    if tau2 <= 0:
        at.append("tau2")
    if _at_bound_delta(delta[delta.size - n_delta :], delta_min, delta_max):
        at.append("delta")
    return SelModelFit(
        type=type,
        beta=float(beta[0]),
        se=se,
        zval=zval,
        pval=float(2 * stats.norm.sf(abs(zval))),
        ci_lb=float(beta[0] - crit * se),
        ci_ub=float(beta[0] + crit * se),
        tau2=float(tau2),
        se_tau2=float(se_all[p]),
        delta=np.array(delta, dtype=float),
        se_delta=se_delta,
        ll=ll,
        ll0=ll0,
        LRT=LRT,
        LRT_df=n_delta,
        LRT_pval=float(stats.chi2.sf(LRT, n_delta)),
        k=lik.yi.size,
        level=level,
        steps=None,
        counts=None,
        at_bound=tuple(at),
        iterations=iterations,
        betas=np.array(beta, dtype=float),
        vcov=vcov,
    )
