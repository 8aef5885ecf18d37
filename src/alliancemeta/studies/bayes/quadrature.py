r"""Exact posterior of the normal–normal (random-effects) model by one-dimensional quadrature over tau.

Model (Fisher-z scale), with a normal prior on the coefficients and any prior on :math:`\tau`:

.. math::

    y_i \mid \beta, \tau \sim N(x_i'\beta,\; v_i + \tau^2), \qquad
    \beta \sim N(b_0, \Sigma_0), \qquad \tau \sim p(\tau).

Given :math:`\tau`, the coefficients are conjugate, so they integrate out analytically
(Röver 2020, *J Stat Softw* 93(6), eqs. 9-13, the ``bayesmeta`` package; Higgins, Thompson &
Spiegelhalter 2009).  With :math:`W = \operatorname{diag}(1/(v_i + \tau^2))`:

.. math::

    A(\tau) = X'WX + \Sigma_0^{-1}, \quad
    b(\tau) = A^{-1}(X'Wy + \Sigma_0^{-1} b_0), \quad
    \beta \mid \tau, y \sim N(b(\tau), A^{-1}),

    \log p(y \mid \tau) = -\tfrac12\Big[k\log 2\pi + \sum_i \log(v_i + \tau^2) + \log|\Sigma_0|
        + \log|A| + y'Wy + b_0'\Sigma_0^{-1}b_0 - b'Ab\Big],

    p(\tau \mid y) = p(\tau)\, p(y \mid \tau) / p(y).

The one remaining integral runs over :math:`t = \log\tau`, where every prior used here gives a
smooth integrand :math:`p(\tau \mid y)\,\tau` that decays at both ends (like :math:`e^t` at
:math:`\tau \to 0`).  A coarse scan locates the region where the integrand is within
:math:`e^{-50}` of its maximum; composite Gauss–Legendre panels on that region give the posterior
weights of the nodes.  Everything else follows exactly from the conditional normals:

- :math:`\beta_j \mid y` is the mixture :math:`\sum_n w_n N(b_j(\tau_n), A^{-1}_{jj}(\tau_n))`, whose
  CDF is evaluated exactly and inverted with Brent's method for quantiles;
- :math:`\theta_{\text{new}} \mid y = \sum_n w_n N(b(\tau_n), A^{-1}(\tau_n) + \tau_n^2)`;
- :math:`r = \tanh\mu` has quantiles :math:`\tanh` of those of :math:`\mu` and moments from
  Gauss–Hermite quadrature of each normal component;
- quantiles of :math:`\tau` integrate the density inside the panel that holds them.

The normalising constant :math:`p(y)` (``log_evidence``) comes for free and gives Bayes factors,
e.g. against the equal-effects model :math:`p(y \mid \tau = 0)`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd
from scipy import optimize, special, stats

from alliancemeta.core.errors import AllianceMetaError
from alliancemeta.studies.bayes.priors import MU_DISTS, TAU_DISTS, MetaPriors, as_priors, parse_prior

#: The quadrature range keeps every tau whose integrand (in log tau) is within exp(-LOG_DROP) of the
#: maximum: the mass left out is then below ~1e-20 of the total for all priors used here.
LOG_DROP = 50.0
#: Scan limits relative to the typical within-study SD sqrt(median v_i).  Below the floor the
#: integrand behaves like tau * p(tau=0 | y), so the neglected mass is ~1e-10 relative; above the
#: ceiling the posterior tail decays at least like the prior's times tau^-(k-p).
TAU_FLOOR_REL = 1e-10
TAU_CEIL_REL = 1e8
#: When the support of tau is unbounded, the integrand at the scan ceiling must be this far (in log
#: units) below the maximum; the tail beyond it then holds < ~1e-13 of the mass (it decays at least
#: like tau^-1 in log tau for every proper prior), else the posterior is reported as (nearly) improper.
LOG_DROP_CEILING = 30.0
#: Points of the coarse scan (in log tau) that locates the posterior region.
N_SCAN = 400
#: Gauss–Legendre panels and nodes per panel: 1,024 nodes integrate the smooth log-tau integrand
#: to ~1e-12 relative (see tests: doubling the panels changes summaries by < 1e-10).
N_PANELS = 64
N_GL = 16
#: Gauss–Hermite nodes for E[tanh(mu)] under each normal component.
N_GH = 64
#: Nodes evaluated together (bounds memory to CHUNK x k doubles).
CHUNK = 256
#: Brent tolerance for quantiles (absolute, on the Fisher-z / tau scale).
QUANTILE_XTOL = 1e-13

_GL_X, _GL_W = np.polynomial.legendre.leggauss(N_GL)
_GH_X, _GH_W = np.polynomial.hermite_e.hermegauss(N_GH)
_GH_W = _GH_W / np.sqrt(2.0 * np.pi)


class QuadratureError(AllianceMetaError, RuntimeError):
    """The posterior could not be located or integrated (e.g. it is improper)."""


# --------------------------------------------------------------------------------------------------
# conditional posterior of beta given tau, and the marginal likelihood p(y | tau)
# --------------------------------------------------------------------------------------------------


class _Conditional:
    """Evaluate log p(y | tau), E[beta | tau, y] and Cov[beta | tau, y] for many tau at once."""

    def __init__(self, yi: np.ndarray, vi: np.ndarray, X: np.ndarray, b0: np.ndarray, sd0: np.ndarray):
        self.yi, self.vi, self.X = yi, vi, X
        k, p = X.shape
        self.k, self.p = k, p
        self.XX = (X[:, :, None] * X[:, None, :]).reshape(k, p * p)
        self.Xy = X * yi[:, None]
        self.y2 = yi * yi
        self.prec0 = np.diag(1.0 / sd0**2)
        self.pb0 = self.prec0 @ b0
        self.const = k * np.log(2.0 * np.pi) + 2.0 * np.sum(np.log(sd0)) + float(b0 @ self.pb0)

    def __call__(self, tau: np.ndarray, moments: bool = True):
        tau = np.atleast_1d(np.asarray(tau, dtype=float))
        n, p = tau.size, self.p
        loglik = np.empty(n)
        mean = np.empty((n, p)) if moments else None
        cov = np.empty((n, p, p)) if moments else None
        for s in range(0, n, CHUNK):
            t2 = tau[s : s + CHUNK] ** 2
            total = self.vi[None, :] + t2[:, None]
            W = 1.0 / total
            A = (W @ self.XX).reshape(-1, p, p) + self.prec0
            c = W @ self.Xy + self.pb0
            L = np.linalg.cholesky(A)
            b = np.linalg.solve(A, c[:, :, None])[:, :, 0]
            logdet_A = 2.0 * np.sum(np.log(np.diagonal(L, axis1=1, axis2=2)), axis=1)
            quad = W @ self.y2 - np.einsum("np,np->n", c, b)
            loglik[s : s + CHUNK] = -0.5 * (self.const + np.log(total).sum(axis=1) + logdet_A + quad)
            if moments:
                mean[s : s + CHUNK] = b
                cov[s : s + CHUNK] = np.linalg.inv(A)
        return loglik, mean, cov


# --------------------------------------------------------------------------------------------------
# the posterior
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExactPosterior:
    r"""Posterior of a normal–normal model on a quadrature grid over tau.

    ``tau`` are the nodes, ``weight`` their normalised posterior weights; ``mean``/``cov`` the
    conditional posterior moments of the coefficients at each node; ``log_evidence`` is
    :math:`\log p(y)`.  Summaries are exact up to the quadrature error (~1e-10).
    """

    terms: tuple[str, ...]
    priors: MetaPriors
    k: int
    tau: np.ndarray = field(repr=False)
    weight: np.ndarray = field(repr=False)
    mean: np.ndarray = field(repr=False)
    cov: np.ndarray = field(repr=False)
    log_evidence: float
    edges: np.ndarray = field(repr=False)  # panel edges on log tau
    panel_cum: np.ndarray = field(repr=False)  # posterior mass below each edge
    log_joint: Callable[[np.ndarray], np.ndarray] = field(repr=False)  # log p(tau) + log p(y | tau)
    log_evidence_fe: float = np.nan  # log p(y | tau = 0), the equal-effects marginal likelihood

    @property
    def p(self) -> int:
        return len(self.terms)

    # -- tau ---------------------------------------------------------------------------------

    def tau_density(self, x) -> np.ndarray:
        """Posterior density of tau at ``x``."""
        x = np.atleast_1d(np.asarray(x, dtype=float))
        out = np.zeros_like(x)
        ok = x >= 0
        if ok.any():
            out[ok] = np.exp(self.log_joint(x[ok]) - self.log_evidence)
        return out

    def _t_mass(self, a: float, b: float) -> float:
        """Posterior mass of log tau in [a, b] (both inside one panel) by Gauss–Legendre."""
        half = 0.5 * (b - a)
        t = a + half * (_GL_X + 1.0)
        return float(half * np.dot(_GL_W, np.exp(self.log_joint(np.exp(t)) + t - self.log_evidence)))

    def tau_cdf(self, x: float) -> float:
        if x <= 0:
            return 0.0
        t = np.log(x)
        if t <= self.edges[0]:
            return 0.0
        if t >= self.edges[-1]:
            return 1.0
        j = int(np.searchsorted(self.edges, t, side="right")) - 1
        return float(self.panel_cum[j] + self._t_mass(self.edges[j], t))

    def tau_quantile(self, q: float) -> float:
        j = int(np.clip(np.searchsorted(self.panel_cum, q, side="right") - 1, 0, self.edges.size - 2))
        a, b = self.edges[j], self.edges[j + 1]

        def f(t):
            return self.panel_cum[j] + (self._t_mass(a, t) if t > a else 0.0) - q

        if f(b) <= 0:
            return float(np.exp(b))
        return float(np.exp(optimize.brentq(f, a, b, xtol=1e-14, rtol=4 * np.finfo(float).eps)))

    # -- mixtures of normals -----------------------------------------------------------------

    def _mixture(self, which: str):
        """(means, sds) of the normal components of a coefficient or of theta_new."""
        if which == "theta_new":
            m = self.mean[:, 0]
            return m, np.sqrt(self.cov[:, 0, 0] + self.tau**2)
        j = self.terms.index(which)
        return self.mean[:, j], np.sqrt(self.cov[:, j, j])

    def mixture_cdf(self, which: str, x: float) -> float:
        m, s = self._mixture(which)
        return float(np.dot(self.weight, special.ndtr((x - m) / s)))

    def mixture_density(self, which: str, x) -> np.ndarray:
        m, s = self._mixture(which)
        x = np.atleast_1d(np.asarray(x, dtype=float))
        return (self.weight[None, :] * stats.norm.pdf(x[:, None], m[None, :], s[None, :])).sum(axis=1)

    def mixture_quantile(self, which: str, q: float) -> float:
        m, s = self._mixture(which)
        live = self.weight > 0
        lo = float(np.min(m[live] - 40.0 * s[live]))
        hi = float(np.max(m[live] + 40.0 * s[live]))
        return float(optimize.brentq(lambda x: self.mixture_cdf(which, x) - q, lo, hi,
                                     xtol=QUANTILE_XTOL, rtol=4 * np.finfo(float).eps))

    def _mixture_moments(self, which: str, f: Callable | None = None) -> tuple[float, float]:
        m, s = self._mixture(which)
        if f is None:
            mean = float(np.dot(self.weight, m))
            var = float(np.dot(self.weight, s**2 + (m - mean) ** 2))
            return mean, np.sqrt(max(var, 0.0))
        vals = f(m[:, None] + s[:, None] * _GH_X[None, :])
        e1 = vals @ _GH_W
        e2 = (vals**2) @ _GH_W
        mean = float(np.dot(self.weight, e1))
        var = float(np.dot(self.weight, e2)) - mean**2
        return mean, np.sqrt(max(var, 0.0))

    # -- summaries ----------------------------------------------------------------------------

    def parameters(self) -> list[str]:
        """Row names of :meth:`summary`: ``mu, tau, r, theta_new`` (intercept-only) or terms + ``tau``."""
        if self.p == 1:
            return ["mu", "tau", "r", "theta_new"]
        return [*self.terms, "tau"]

    def _row(self, name: str, level: float, thresholds: Sequence[float]) -> dict:
        lo_q, hi_q = (1.0 - level) / 2.0, (1.0 + level) / 2.0
        if name == "tau":
            mean = float(np.dot(self.weight, self.tau))
            sd = float(np.sqrt(max(np.dot(self.weight, (self.tau - mean) ** 2), 0.0)))
            lb, ub = self.tau_quantile(lo_q), self.tau_quantile(hi_q)
            probs = [1.0 - self.tau_cdf(c) for c in thresholds]
        elif name == "r":
            mean, sd = self._mixture_moments(self.terms[0], np.tanh)
            lb = float(np.tanh(self.mixture_quantile(self.terms[0], lo_q)))
            ub = float(np.tanh(self.mixture_quantile(self.terms[0], hi_q)))
            probs = [1.0 - self.mixture_cdf(self.terms[0], float(np.arctanh(c))) for c in thresholds]
        else:
            which = self.terms[0] if name == "mu" else name
            mean, sd = self._mixture_moments(which)
            lb, ub = self.mixture_quantile(which, lo_q), self.mixture_quantile(which, hi_q)
            probs = [1.0 - self.mixture_cdf(which, c) for c in thresholds]
        row = {"parameter": name, "mean": mean, "sd": sd, "eti_lb": lb, "eti_ub": ub}
        for c, pr in zip(thresholds, probs, strict=True):
            row[f"p_gt_{c:g}"] = min(max(pr, 0.0), 1.0)
        return row

    def summary(self, level: float = 0.95, thresholds: Sequence[float] = (0.0, 0.1)) -> pd.DataFrame:
        r"""Posterior mean, SD, equal-tailed interval and :math:`P(\cdot > c)` of every parameter.

        The probabilities are on each parameter's own scale; for ``r`` they are
        :math:`P(r > 0)` and :math:`P(r > .1)`.
        """
        return pd.DataFrame([self._row(name, level, thresholds) for name in self.parameters()])

    def linear_map(self, T: np.ndarray, terms: Sequence[str] | None = None) -> ExactPosterior:
        r"""The posterior of :math:`\gamma = T\beta`: conditional moments :math:`T m` and :math:`T C T'` per node.

        Exact, because the conditional posterior of :math:`\beta` given tau is normal.  Used to report
        uncentred coefficients from a model fitted with centred moderators.
        """
        T = np.asarray(T, dtype=float)
        mean = self.mean @ T.T
        cov = np.einsum("ij,njk,lk->nil", T, self.cov, T)
        return replace(self, mean=mean, cov=cov, terms=self.terms if terms is None else tuple(terms))

    def log_bayes_factor_fe(self) -> float:
        r"""Log Bayes factor of random over equal effects, :math:`\log p(y) - \log p(y \mid \tau = 0)`."""
        return self.log_evidence - self.log_evidence_fe


def as_arrays(yi, vi, X):
    yi = np.asarray(yi, dtype=float)
    vi = np.asarray(vi, dtype=float)
    if yi.ndim != 1 or yi.shape != vi.shape or yi.size == 0:
        raise ValueError("yi and vi must be 1-D arrays of the same, non-zero length")
    if not (np.all(np.isfinite(yi)) and np.all(np.isfinite(vi))):
        raise ValueError("yi and vi must be finite")
    if np.any(vi <= 0):
        raise ValueError("sampling variances vi must be > 0")
    X = np.ones((yi.size, 1)) if X is None else np.asarray(X, dtype=float)
    if X.ndim == 1:
        X = X[:, None]
    if X.shape[0] != yi.size:
        raise ValueError("X must have one row per effect size")
    return yi, vi, X


def exact_posterior(yi, vi, priors, X=None, terms: Sequence[str] | None = None) -> ExactPosterior:
    r"""Posterior of the normal–normal model (optionally a meta-regression) by quadrature over tau.

    Parameters
    ----------
    yi, vi : array_like
        Fisher-z effect sizes and sampling variances.
    priors : MetaPriors or mapping
        ``mu`` must be normal (it is the intercept's prior; slopes get N(0, ``beta_sigma``)); any
        supported ``tau`` prior.
    X : array_like, optional
        Design matrix whose first column is the intercept; intercept-only when omitted.
    terms : sequence of str, optional
        Names of the columns of ``X`` (default ``mu`` for intercept-only, else ``b0, b1, ...``).

    Returns
    -------
    ExactPosterior
        See the module docstring for the formulas.  Runs in ~10 ms at k = 300.
    """
    yi, vi, X = as_arrays(yi, vi, X)
    pri = as_priors(priors)
    if pri.mu.dist != "normal":
        raise ValueError("exact_posterior needs a normal prior on mu (conjugacy)")
    k, p = X.shape
    if terms is None:
        terms = ("mu",) if p == 1 else tuple(f"b{j}" for j in range(p))
    terms = tuple(terms)
    if len(terms) != p:
        raise ValueError(f"{len(terms)} term names for {p} columns of X")
    b0 = np.zeros(p)
    b0[0] = pri.mu["mu"]
    sd0 = np.full(p, pri.beta_sigma)
    sd0[0] = pri.mu["sigma"]
    cond = _Conditional(yi, vi, X, b0, sd0)
    grid = integrate_over_tau(lambda tau: cond(tau, moments=False)[0], pri.tau, float(np.sqrt(np.median(vi))))
    _, mean, cov = cond(grid.tau)
    fe = float(cond(np.zeros(1), moments=False)[0][0])
    return ExactPosterior(terms, pri, k, grid.tau, grid.weight, mean, cov, grid.log_evidence, grid.edges,
                          grid.panel_cum, grid.log_joint, fe)


@dataclass(frozen=True)
class TauGrid:
    """Quadrature nodes over tau with normalised posterior weights and the log normalising constant."""

    tau: np.ndarray
    weight: np.ndarray
    edges: np.ndarray  # panel edges on log tau
    panel_cum: np.ndarray  # posterior mass below each edge
    log_evidence: float
    log_joint: Callable[[np.ndarray], np.ndarray]


def integrate_over_tau(loglik: Callable[[np.ndarray], np.ndarray], tau_prior, scale: float) -> TauGrid:
    r"""Integrate :math:`p(\tau)\,L(\tau)` over :math:`\tau` on Gauss–Legendre panels in :math:`\log\tau`.

    ``loglik`` maps an array of tau values to :math:`\log L(\tau)` (e.g. :math:`\log p(y \mid \tau)`
    with the coefficients integrated out); ``scale`` is a typical within-study SD that sets the scan
    limits (:data:`TAU_FLOOR_REL`, :data:`TAU_CEIL_REL`).  See the module docstring.
    """

    def log_joint(tau):
        tau = np.atleast_1d(np.asarray(tau, dtype=float))
        lp = tau_prior.logpdf(tau)
        out = np.full(tau.shape, -np.inf)
        ok = np.isfinite(lp)
        if ok.any():
            out[ok] = lp[ok] + loglik(tau[ok])
        return out

    def g(t):  # integrand on log tau
        t = np.atleast_1d(np.asarray(t, dtype=float))
        return log_joint(np.exp(t)) + t

    s_lo, s_hi = tau_prior.support()
    t_min = np.log(s_lo) if s_lo > 0 else np.log(scale * TAU_FLOOR_REL)
    t_max = np.log(min(s_hi, scale * TAU_CEIL_REL))
    coarse = np.linspace(t_min, t_max, N_SCAN)
    gc = g(coarse)
    if not np.any(np.isfinite(gc)):
        raise QuadratureError("the posterior of tau is zero everywhere on the scan; check the tau prior")
    i = int(np.nanargmax(np.where(np.isfinite(gc), gc, -np.inf)))
    lo_i, hi_i = max(i - 1, 0), min(i + 1, N_SCAN - 1)
    res = optimize.minimize_scalar(lambda t: -g(t)[0], bounds=(coarse[lo_i], coarse[hi_i]), method="bounded",
                                   options={"xatol": 1e-10})
    gmax = max(float(gc[i]), float(-res.fun))
    above = np.flatnonzero(gc > gmax - LOG_DROP)
    a = coarse[max(above[0] - 1, 0)]
    b = coarse[min(above[-1] + 1, N_SCAN - 1)]
    if np.isinf(s_hi) and gc[-1] > gmax - LOG_DROP_CEILING:
        raise QuadratureError(
            f"the posterior of tau does not decay below tau = {np.exp(t_max):.3g}; it may be improper"
        )
    edges = np.linspace(a, b, N_PANELS + 1)
    half = 0.5 * np.diff(edges)
    t_nodes = (edges[:-1, None] + half[:, None] * (_GL_X[None, :] + 1.0)).ravel()
    w_nodes = (half[:, None] * _GL_W[None, :]).ravel()
    gv = g(t_nodes)
    shift = float(np.max(gv))
    mass = w_nodes * np.exp(gv - shift)
    total = float(mass.sum())
    if not np.isfinite(total) or total <= 0:
        raise QuadratureError("the posterior of tau could not be normalised")
    weight = mass / total
    panel_cum = np.concatenate([[0.0], np.cumsum(weight.reshape(N_PANELS, N_GL).sum(axis=1))])
    panel_cum[-1] = 1.0
    return TauGrid(np.exp(t_nodes), weight, edges, panel_cum, shift + float(np.log(total)), log_joint)


# --------------------------------------------------------------------------------------------------
# prior sensitivity
# --------------------------------------------------------------------------------------------------

SENSITIVITY_COLUMNS = ("prior", "parameter", "mean", "sd", "eti_lb", "eti_ub", "p_gt_0", "p_gt_0.1",
                       "prior_mu", "prior_tau", "log_evidence")


def prior_sensitivity(yi, vi, priors, tau_priors: Sequence, informative_mu=None, level: float = 0.95,
                      X=None, terms=None) -> pd.DataFrame:
    r"""Exact posterior summaries of the random-effects model under alternative priors.

    One block of rows (``mu, tau, r, theta_new``) per prior combination: the configured priors, then
    each of ``tau_priors`` (config ``bayes.sensitivity_priors``) with the configured mu prior, then the
    informative mu prior (config ``bayes.informative_mu``) with the configured tau prior.  Duplicate
    combinations are listed once.  ``log_evidence`` is :math:`\log p(y)` under that prior.
    """
    base = as_priors(priors)
    combos = [base]
    for i, spec in enumerate(tau_priors):
        combos.append(base.with_tau(parse_prior(spec, f"bayes.sensitivity_priors[{i}]", TAU_DISTS)))
    if informative_mu is not None:
        combos.append(base.with_mu(parse_prior(informative_mu, "bayes.informative_mu", MU_DISTS)))
    seen, rows = set(), []
    for pri in combos:
        if pri.label in seen:
            continue
        seen.add(pri.label)
        post = exact_posterior(yi, vi, pri, X=X, terms=terms)
        frame = post.summary(level)
        frame.insert(0, "prior", pri.label)
        frame["prior_mu"] = pri.mu.label
        frame["prior_tau"] = pri.tau.label
        frame["log_evidence"] = post.log_evidence
        rows.append(frame)
    return pd.concat(rows, ignore_index=True).loc[:, list(SENSITIVITY_COLUMNS)]
