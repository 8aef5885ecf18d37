r"""Small-study effects and publication bias: the tests and adjustments of metafor and PET-PEESE.

Every function follows one ``metafor`` routine (3.8-1) so that numbers compare one to one with R:

- :func:`regtest`  Egger's regression test, ``regtest(res, model="rma", predictor="sei")``
  (Egger et al. 1997, *BMJ* 315, 629-634; Sterne & Egger 2005), with the limit estimate
- :func:`ranktest`  Begg & Mazumdar's (1994, *Biometrics* 50, 1088-1101) rank correlation test
- :func:`trimfill`  Duval & Tweedie's (2000, *Biometrics* 56, 455-463; *JASA* 95, 89-98) trim and fill
- :func:`pet`, :func:`peese`, :func:`pet_peese`  Stanley & Doucouliagos (2014, *Res Synth Methods*
  5, 60-78), weighted least squares as ``lm(yi ~ sei, weights = 1/vi)``
- :func:`selmodel_stepfun`  the step-function selection model (Vevea & Hedges 1995,
  *Psychometrika* 60, 419-435; three-parameter model of Iyengar & Greenhouse 1988 / McShane et al.
  2016), ``selmodel(res, type="stepfun", steps=0.025)``, fitted by maximum likelihood here
- :func:`fsn_rosenthal`  Rosenthal's (1979, *Psychol Bull* 86, 638-641) fail-safe N

:func:`publication_bias_table` assembles SPEC §5 ``publication_bias.csv``.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from alliancemeta.meta import ConvergenceError, MetaFit, random_effects
from alliancemeta.tables import write_csv

log = logging.getLogger(__name__)

#: Fewest effect sizes for Egger's test, the rank test and the selection model: with k < 3 the
#: regression on the standard error has no residual degree of freedom and a rank correlation of
#: two points carries no information.
MIN_K = 3


def _arrays(yi, vi):
    yi = np.asarray(yi, dtype=float)
    vi = np.asarray(vi, dtype=float)
    if yi.shape != vi.shape or yi.ndim != 1:
        raise ValueError("yi and vi must be 1-d arrays of equal length")
    if not (np.all(np.isfinite(yi)) and np.all(np.isfinite(vi))):
        raise ValueError("yi and vi must be finite")
    if np.any(vi <= 0):
        raise ValueError("sampling variances vi must be > 0")
    return yi, vi


def _require_k(k: int, what: str, minimum: int = MIN_K) -> None:
    if k < minimum:
        raise ValueError(f"{what} needs at least {minimum} effect sizes; got k = {k}")


# --------------------------------------------------------------------------------------------------
# Egger's regression test
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RegTest:
    r"""Egger's regression test on the model :math:`y_i = \beta_0 + \beta_1\sqrt{v_i} + u_i + e_i`.

    ``stat``/``pval`` test :math:`\beta_1 = 0` (z, or t with k-2 df for ``t``/``knha``);
    ``est``/``ci_lb``/``ci_ub`` are :math:`\hat\beta_0`, the limit estimate as the standard error
    goes to 0.
    """

    stat: float
    pval: float
    ddf: float
    est: float
    ci_lb: float
    ci_ub: float
    fit: MetaFit


def regtest(fit: MetaFit) -> RegTest:
    """Egger's test as ``metafor::regtest(res, model="rma", predictor="sei")``.

    The meta-regression on the standard error uses the estimator, test and level of ``fit``, so
    with ``test="knha"`` the statistic is a t with k - 2 degrees of freedom.
    """
    _require_k(fit.k, "Egger's regression test")
    if fit.p != 1:
        raise ValueError("Egger's test here takes an intercept-only model")
    X = np.column_stack([np.ones(fit.k), np.sqrt(fit.vi)])
    reg = random_effects(fit.yi, fit.vi, X=X, method=fit.method, test=fit.test, level=fit.level)
    return RegTest(
        stat=float(reg.stat_values[1]),
        pval=float(reg.pvals[1]),
        ddf=reg.ddf,
        est=float(reg.beta[0]),
        ci_lb=float(reg.ci_lbs[0]),
        ci_ub=float(reg.ci_ubs[0]),
        fit=reg,
    )


# --------------------------------------------------------------------------------------------------
# rank correlation test
# --------------------------------------------------------------------------------------------------

#: R computes Kendall's exact null distribution with counts up to n! in double precision, which
#: overflows from n = 171 on (R then returns NaN).  Up to this n the exact p-value is used, as R
#: does; above it, the normal approximation (which R uses whenever there are ties).
KENDALL_EXACT_MAX_N = 170


@dataclass(frozen=True)
class RankTest:
    """Begg's rank correlation test: Kendall's tau-b between standardised effects and variances."""

    tau: float
    pval: float
    exact: bool  # exact null distribution (no ties, k <= KENDALL_EXACT_MAX_N) or normal approximation
    statistic: float  # T (concordant pairs) when exact, else z


def _kendall_lower_tail(q: int, n: int) -> float:
    """P(T <= q) for the number of concordant pairs T of n untied pairs under independence.

    The distribution of T is that of the number of inversions of a random permutation (the
    Mahonian numbers), built by the recursion :math:`P_n(j) = \\frac1n\\sum_{i=0}^{n-1}P_{n-1}(j-i)`
    (Kendall 1938).  Only the lower tail up to q is needed, so the work is O(n q).
    """
    if q < 0:
        return 0.0
    if q >= n * (n - 1) // 2:
        return 1.0
    prob = np.zeros(q + 1)
    prob[0] = 1.0
    for m in range(2, n + 1):
        cs = np.cumsum(prob)
        shifted = np.zeros(q + 1)
        if m <= q:
            shifted[m:] = cs[: q + 1 - m]
        prob = (cs - shifted) / m
    return float(prob.sum())


def _tie_sizes(x: np.ndarray) -> np.ndarray:
    _, counts = np.unique(x, return_counts=True)
    return counts[counts > 1].astype(float)


def ranktest(yi, vi) -> RankTest:
    r"""Rank correlation test, as ``metafor::ranktest`` (which calls ``cor.test(method="kendall")``).

    .. math::

        \hat\theta = \frac{\sum_i y_i/v_i}{\sum_i 1/v_i}, \quad
        y_i^* = \frac{y_i - \hat\theta}{\sqrt{v_i - (\sum_j 1/v_j)^{-1}}}, \quad
        \tau = \text{Kendall's } \tau_b(y^*, v)

    Two-sided p-value: from the exact null distribution of the number of concordant pairs when
    there are no ties (as R, for k <= :data:`KENDALL_EXACT_MAX_N`), otherwise from the normal
    approximation with R's tie-corrected variance of Kendall's S (Kendall 1970, eq. 4.4), without
    continuity correction.  Equal sample sizes give tied variances, so most real data sets take
    the normal branch.  Beyond k = 170 without ties R returns NaN; the normal approximation is
    used there instead (a documented, deliberate difference).
    """
    yi, vi = _arrays(yi, vi)
    n = yi.size
    _require_k(n, "the rank correlation test")
    wi = 1.0 / vi
    theta = float(np.sum(wi * yi) / np.sum(wi))
    vstar = vi - 1.0 / np.sum(wi)
    ystar = (yi - theta) / np.sqrt(vstar)
    tau = float(stats.kendalltau(ystar, vi, variant="b").statistic)
    ties = min(np.unique(ystar).size, np.unique(vi).size) < n
    if not ties and n <= KENDALL_EXACT_MAX_N:
        q = int(np.round((tau + 1) * n * (n - 1) / 4))
        if q > n * (n - 1) / 4:
            p = _kendall_lower_tail(n * (n - 1) // 2 - q, n)  # P(T >= q) by symmetry
        else:
            p = _kendall_lower_tail(q, n)
        return RankTest(tau, min(2 * p, 1.0), True, float(q))
    xt, yt = _tie_sizes(ystar), _tie_sizes(vi)
    T0 = n * (n - 1) / 2
    T1 = np.sum(xt * (xt - 1)) / 2
    T2 = np.sum(yt * (yt - 1)) / 2
    S = tau * np.sqrt((T0 - T1) * (T0 - T2))
    v0 = n * (n - 1) * (2 * n + 5)
    vt = np.sum(xt * (xt - 1) * (2 * xt + 5))
    vu = np.sum(yt * (yt - 1) * (2 * yt + 5))
    v1 = np.sum(xt * (xt - 1)) * np.sum(yt * (yt - 1))
    v2 = np.sum(xt * (xt - 1) * (xt - 2)) * np.sum(yt * (yt - 1) * (yt - 2))
    var_S = (v0 - vt - vu) / 18 + v1 / (2 * n * (n - 1)) + v2 / (9 * n * (n - 1) * (n - 2))
    z = float(S / np.sqrt(var_S))
    return RankTest(tau, float(2 * min(stats.norm.cdf(z), stats.norm.sf(z))), False, z)


# --------------------------------------------------------------------------------------------------
# trim and fill
# --------------------------------------------------------------------------------------------------

TRIMFILL_MAX_ITER = 100  # metafor's default maxiter


@dataclass(frozen=True)
class TrimFill:
    """Trim-and-fill result: the model refitted with the imputed studies (metafor's names).

    ``yi_fill``/``vi_fill`` are the imputed effect sizes only (mirror images of the k0 most
    extreme studies on the ``side`` where studies seem to be missing), for the funnel plot.
    ``p_k0`` is the test of k0 = 0 that exists for the R0 estimator only (NaN for L0).
    """

    estimate: float
    se: float
    stat: float
    pval: float
    ci_lb: float
    ci_ub: float
    tau2: float
    k0: int
    se_k0: float
    side: str
    estimator: str
    p_k0: float
    yi_fill: np.ndarray
    vi_fill: np.ndarray
    iterations: int
    fit: MetaFit


def trimfill(fit: MetaFit, estimator: str = "L0", side: str | None = None) -> TrimFill:
    r"""Trim and fill (Duval & Tweedie 2000), as ``metafor::trimfill(res, estimator=...)``.

    Side: unless given, studies are taken to be missing on the ``left`` when the slope of the
    meta-regression of :math:`y_i` on :math:`\sqrt{v_i}` (same estimator) is positive and on the
    ``right`` otherwise (metafor's rule).  Effects are mirrored so that the missing side is the
    left, sorted, and iterated: fit the model to the k - k0 smallest-in-magnitude-on-the-right
    effects, rank :math:`|y_i - \hat\theta|` (ties by position), and with :math:`S_r` the sum of the
    positive signed ranks

    .. math::

        L_0 = \frac{4S_r - k(k+1)}{2k - 1}, \qquad R_0 = \gamma^* - 1

    (:math:`\gamma^*` the length of the rightmost run of positive ranks), rounded half to even,
    truncated at 0, until k0 repeats.  The k0 most extreme effects are mirrored about the last
    :math:`\hat\theta` and the model (same estimator, test and level as ``fit``; metafor uses its
    default ``z`` unless ``test`` is passed on, which the reference fixtures do) is refitted to all
    k + k0 effects.  :math:`SE(L_0)` and :math:`SE(R_0)` follow Duval & Tweedie (2000, eqs. 7, 9).
    """
    estimator = estimator.upper()
    if estimator not in ("L0", "R0"):
        raise ValueError(f"unknown trim-and-fill estimator {estimator!r}; expected L0 or R0")
    if fit.p != 1:
        raise ValueError("trim and fill is only defined for models without moderators")
    k = fit.k
    _require_k(k, "trim and fill", 2)
    yi, vi = fit.yi, fit.vi
    if side is None:
        X = np.column_stack([np.ones(k), np.sqrt(vi)])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            slope = random_effects(yi, vi, X=X, method=fit.method).beta[1]
        side = "right" if slope < 0 else "left"
    elif side not in ("left", "right"):
        raise ValueError("side must be 'left' or 'right'")
    sign = -1.0 if side == "right" else 1.0
    ys = sign * yi
    order = np.argsort(ys, kind="stable")
    ys, vs = ys[order], vi[order]

    k0, k0_prev, it = 0, -1, 0
    beta = np.nan
    se_k0 = np.nan
    while k0 != k0_prev:
        k0_prev = k0
        it += 1
        if it > TRIMFILL_MAX_ITER:
            raise ConvergenceError(f"trim and fill did not converge in {TRIMFILL_MAX_ITER} iterations")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            beta = random_effects(ys[: k - k0], vs[: k - k0], method=fit.method).estimate
        centred = ys - beta
        ranks = stats.rankdata(np.abs(centred), method="ordinal")
        signed = np.sign(centred) * ranks
        if estimator == "R0":
            negative = signed[signed < 0]
            if negative.size == 0:
                raise ValueError("trim and fill (R0) is undefined: no effect lies below the trimmed estimate")
            k0_raw = (k - np.max(-negative)) - 1
            se_k0 = np.sqrt(2 * max(0.0, k0_raw) + 2)
        else:
            Sr = np.sum(signed[signed > 0])
            k0_raw = (4 * Sr - k * (k + 1)) / (2 * k - 1)
            var_sr = (
                k * (k + 1) * (2 * k + 1) + 10 * k0_raw**3 + 27 * k0_raw**2 + 17 * k0_raw
                - 18 * k * k0_raw**2 - 18 * k * k0_raw + 6 * k**2 * k0_raw
            ) / 24  # fmt: skip
            se_k0 = 4 * np.sqrt(var_sr) / (2 * k - 1)
        k0 = int(max(0, np.round(k0_raw)))
        se_k0 = max(0.0, se_k0)
        if k0 >= k:
            raise ValueError("trim and fill imputes as many studies as there are; the data are too asymmetric")

    if k0 > 0:
        y_fill = sign * (2 * beta - ys[k - k0 :])
        v_fill = vs[k - k0 :]
        refit = random_effects(
            np.concatenate([yi, y_fill]),
            np.concatenate([vi, v_fill]),
            method=fit.method,
            test=fit.test,
            level=fit.level,
        )
    else:
        y_fill = v_fill = np.empty(0)
        refit = fit
    p_k0 = np.nan
    if estimator == "R0":
        # metafor: 1 - sum_{m=-1}^{k0-1} choose(m+1, m+1) 0.5^(m+2), the R0 test of k0 = 0
        m = np.arange(-1, k0)
        p_k0 = float(1 - np.sum(0.5 ** (m + 2)))
    return TrimFill(
        estimate=refit.estimate,
        se=float(refit.se[0]),
        stat=float(refit.stat_values[0]),
        pval=float(refit.pvals[0]),
        ci_lb=float(refit.ci_lbs[0]),
        ci_ub=float(refit.ci_ubs[0]),
        tau2=refit.tau2,
        k0=k0,
        se_k0=float(se_k0),
        side=side,
        estimator=estimator,
        p_k0=p_k0,
        yi_fill=y_fill,
        vi_fill=v_fill,
        iterations=it,
        fit=refit,
    )


# --------------------------------------------------------------------------------------------------
# PET, PEESE and the conditional PET-PEESE estimate
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WLSRegression:
    r"""Weighted least squares :math:`y_i = b_0 + b_1 z_i + e_i`, weights :math:`1/v_i`, as R's ``lm``.

    The residual variance is estimated (:math:`\hat\sigma^2 = \sum_i w_i e_i^2/(k-2)`), tests and
    intervals use t with k - 2 df.  ``intercept``... refer to :math:`b_0` (the effect at zero
    standard error), ``slope``... to :math:`b_1`.
    """

    intercept: float
    se: float
    tval: float
    pval: float
    ci_lb: float
    ci_ub: float
    slope: float
    slope_se: float
    slope_tval: float
    slope_pval: float
    df: int
    sigma: float
    predictor: str  # "sei" (PET) or "vi" (PEESE)


def _wls_lm(yi, vi, z, level: float, predictor: str) -> WLSRegression:
    k = yi.size
    _require_k(k, f"the WLS regression on {predictor}")
    X = np.column_stack([np.ones(k), z])
    w = 1.0 / vi
    XtW = X.T * w
    A = np.linalg.inv(XtW @ X)
    b = A @ (XtW @ yi)
    e = yi - X @ b
    df = k - 2
    sigma2 = float(np.sum(w * e * e) / df)
    se = np.sqrt(sigma2 * np.diag(A))
    t = b / se
    p = 2 * stats.t.sf(np.abs(t), df)
    crit = stats.t.ppf(1 - (1 - level) / 2, df)
    return WLSRegression(
        intercept=float(b[0]),
        se=float(se[0]),
        tval=float(t[0]),
        pval=float(p[0]),
        ci_lb=float(b[0] - crit * se[0]),
        ci_ub=float(b[0] + crit * se[0]),
        slope=float(b[1]),
        slope_se=float(se[1]),
        slope_tval=float(t[1]),
        slope_pval=float(p[1]),
        df=df,
        sigma=float(np.sqrt(sigma2)),
        predictor=predictor,
    )


def pet(yi, vi, level: float = 0.95) -> WLSRegression:
    r"""Precision-effect test: ``lm(yi ~ sqrt(vi), weights = 1/vi)`` (Stanley & Doucouliagos 2014, eq. 1)."""
    yi, vi = _arrays(yi, vi)
    return _wls_lm(yi, vi, np.sqrt(vi), level, "sei")


def peese(yi, vi, level: float = 0.95) -> WLSRegression:
    r"""Precision-effect estimate with standard error: ``lm(yi ~ vi, weights = 1/vi)`` (ibid., eq. 2)."""
    yi, vi = _arrays(yi, vi)
    return _wls_lm(yi, vi, vi, level, "vi")


#: One-sided significance level of PET's intercept that switches the conditional estimate to
#: PEESE (Stanley & Doucouliagos 2014, sec. 3: "if H0: beta0 = 0 is rejected at 5%, one-tailed").
PET_PEESE_ALPHA = 0.05


@dataclass(frozen=True)
class PetPeese:
    """The conditional PET-PEESE estimate: ``chosen`` is ``"peese"`` or ``"pet"``."""

    chosen: str
    estimate: WLSRegression
    pet: WLSRegression
    peese: WLSRegression
    pet_one_sided_p: float
    direction: float


def pet_peese(yi, vi, direction: float = 1.0, level: float = 0.95) -> PetPeese:
    r"""Conditional PET-PEESE (Stanley & Doucouliagos 2014, *Res Synth Methods* 5, 60-78, sec. 3).

    Rule: PEESE when PET's intercept differs from 0 at one-sided :data:`PET_PEESE_ALPHA` = .05 in
    the expected ``direction`` of the effect (+1: positive effects, as the alliance-outcome
    correlation; the pipeline passes the sign of the headline random-effects estimate), that is
    when :math:`P(T_{k-2} \ge \text{direction}\cdot t_{b_0}) < .05`; otherwise PET.  Because PET is
    biased towards zero when there is a genuine effect and PEESE is less biased then, the test of
    a genuine effect decides which approximation to report.  (Stanley 2017, *Soc Psychol Personal
    Sci* 8, 581-591, uses two-sided .10, which is the same decision for effects in the expected
    direction.)
    """
    if direction == 0 or not np.isfinite(direction):
        raise ValueError("direction must be +1 or -1")
    direction = float(np.sign(direction))
    p_res, e_res = pet(yi, vi, level), peese(yi, vi, level)
    p_one = float(stats.t.sf(direction * p_res.tval, p_res.df))
    chosen = "peese" if p_one < PET_PEESE_ALPHA else "pet"
    return PetPeese(chosen, e_res if chosen == "peese" else p_res, p_res, e_res, p_one, direction)


# --------------------------------------------------------------------------------------------------
# step-function selection model
# --------------------------------------------------------------------------------------------------

#: Bounds on the selection weights, metafor's ``delta.min``/``delta.max`` for ``stepfun``.
DELTA_MIN, DELTA_MAX = 0.0, 100.0
#: Convergence: the largest scaled gradient |g_j| * sqrt([H^{-1}]_jj) at the optimum, i.e. how
#: many standard errors a Newton step would still move a parameter.  1e-8 puts the optimum far
#: below the 1e-6 agreement the project asks for.
SELMODEL_GTOL = 1e-8
SELMODEL_MAX_NEWTON = 100


@dataclass(frozen=True)
class SelectionModel:
    """Step-function selection model fitted by maximum likelihood (``metafor::selmodel`` names).

    ``beta``/``se``/``zval``/``pval``/``ci_lb``/``ci_ub``: adjusted effect (z-based, as metafor);
    ``delta``: selection weights per p-value interval (the first fixed at 1); ``LRT``: likelihood
    ratio test of all estimated deltas = 1 against the ML random-effects model (``ll0``).
    """

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
    ci_lb_delta: np.ndarray
    ci_ub_delta: np.ndarray
    ll: float
    ll0: float
    LRT: float
    LRT_df: int
    LRT_pval: float
    steps: np.ndarray
    counts: np.ndarray  # observed p-values per interval
    iterations: int
    vcov: np.ndarray  # inverse Hessian of -ll over (beta, tau2, delta_2..)


class _StepLikelihood:
    r"""Log-likelihood of the step-function selection model, its gradient and Hessian.

    For :math:`y_i \sim N(\mu_i, \sigma_i^2)`, :math:`\sigma_i^2 = v_i + \tau^2`, observed only
    with relative probability :math:`\delta_j` when its one-sided p-value falls in interval
    :math:`(s_{j-1}, s_j]`:

    .. math::

        \ell = \sum_i \Big[\log\delta_{g_i} + \log\phi\big((y_i-\mu_i)/\sigma_i\big) - \log\sigma_i
               - \log A_i\Big], \qquad
        A_i = \delta_N + \sum_{b=1}^{N-1}(\delta_b - \delta_{b+1})\,\Phi\big((\mu_i - c_{ib})/\sigma_i\big)

    with :math:`c_{ib} = \Phi^{-1}(1 - s_b)\sqrt{v_i}` the effect size at which study i's p-value
    equals :math:`s_b` (Vevea & Hedges 1995, eqs. 3-5; metafor's ``.selmodel.ll.stepfun``).
    Parameters ``theta = (beta_1..beta_p, tau2, delta_2..delta_N)`` (tau2 absent when fixed).
    """

    def __init__(self, yi, vi, X, steps, groups, tau2_fixed: float | None):
        self.yi, self.vi, self.X = yi, vi, X
        self.p = X.shape[1]
        self.steps = steps
        self.N = steps.size
        self.c = stats.norm.isf(steps[:-1])[None, :] * np.sqrt(vi)[:, None]  # (k, N-1) finite boundaries
        self.counts = np.bincount(groups, minlength=self.N).astype(float)
        self.groups = groups
        self.tau2_fixed = tau2_fixed

    def split(self, theta):
        p = self.p
        beta = theta[:p]
        if self.tau2_fixed is None:
            tau2, rest = theta[p], theta[p + 1 :]
        else:
            tau2, rest = self.tau2_fixed, theta[p:]
        delta = np.concatenate([[1.0], rest])
        return beta, tau2, delta

    def evaluate(self, theta, order: int = 2):
        """(ll, gradient, Hessian) at ``theta``; ``order`` 0 or 1 skips the derivatives not needed."""
        beta, tau2, delta = self.split(theta)
        X, yi = self.X, self.yi
        s2 = self.vi + tau2
        s = np.sqrt(s2)
        mu = X @ beta
        e = yi - mu
        u = (mu[:, None] - self.c) / s[:, None]  # (k, N-1)
        Phi = stats.norm.cdf(u)
        phi = stats.norm.pdf(u)
        dd = delta[:-1] - delta[1:]  # coefficient of Phi_b in A
        A = delta[-1] + Phi @ dd
        ll = float(np.sum(np.log(delta[self.groups]) - 0.5 * np.log(2 * np.pi * s2) - 0.5 * e * e / s2 - np.log(A)))
        if order == 0:
            return ll, None, None
        p, N = self.p, self.N
        # dA/dmu_i, dA/dtau2 (per study), dA/ddelta_j = P_ij
        d1m = phi / s[:, None]
        d1t = -phi * u / (2 * s2[:, None])
        A_mu = d1m @ dd
        A_t = d1t @ dd
        Pcum = np.hstack([np.zeros((yi.size, 1)), Phi, np.ones((yi.size, 1))])
        P = np.diff(Pcum, axis=1)[:, 1:]  # intervals 2..N, (k, N-1)
        # gradient
        g_mu = e / s2 - A_mu / A
        g_t = -0.5 / s2 + 0.5 * e * e / s2**2 - A_t / A
        g_d = self.counts[1:] / delta[1:] - (P / A[:, None]).sum(axis=0)
        grads = [X.T @ g_mu]
        if self.tau2_fixed is None:
            grads.append([g_t.sum()])
        grads.append(g_d)
        g = np.concatenate(grads)
        if order == 1:
            return ll, g, None
        # second derivatives of A
        d2mm = -u * phi / s2[:, None]
        d2mt = phi * (u * u - 1) / (2 * s[:, None] ** 3)
        d2tt = phi * u * (3 - u * u) / (4 * s2[:, None] ** 2)
        A_mm, A_mt, A_tt = d2mm @ dd, d2mt @ dd, d2tt @ dd
        # dA/ddelta_j = Phi_j - Phi_{j-1} (j = 2..N); its mu and tau2 derivatives
        D1m = np.hstack([np.zeros((yi.size, 1)), d1m, np.zeros((yi.size, 1))])
        D1t = np.hstack([np.zeros((yi.size, 1)), d1t, np.zeros((yi.size, 1))])
        P_m = np.diff(D1m, axis=1)[:, 1:]
        P_t = np.diff(D1t, axis=1)[:, 1:]
        # Hessian of ll_i = normal part - log A
        h_mm = -1 / s2 - A_mm / A + A_mu**2 / A**2
        h_mt = -e / s2**2 - A_mt / A + A_mu * A_t / A**2
        h_tt = 0.5 / s2**2 - e * e / s2**3 - A_tt / A + A_t**2 / A**2
        h_md = -P_m / A[:, None] + A_mu[:, None] * P / A[:, None] ** 2  # (k, N-1)
        h_td = -P_t / A[:, None] + A_t[:, None] * P / A[:, None] ** 2
        h_dd = np.einsum("ij,il->jl", P / A[:, None], P / A[:, None]) - np.diag(self.counts[1:] / delta[1:] ** 2)
        nt = 0 if self.tau2_fixed is not None else 1
        n = p + nt + N - 1
        H = np.zeros((n, n))
        H[:p, :p] = (X.T * h_mm) @ X
        if nt:
            H[:p, p] = H[p, :p] = X.T @ h_mt
            H[p, p] = h_tt.sum()
            H[p, p + 1 :] = H[p + 1 :, p] = h_td.sum(axis=0)
        H[:p, p + nt :] = X.T @ h_md
        H[p + nt :, :p] = H[:p, p + nt :].T
        H[p + nt :, p + nt :] = h_dd
        return ll, g, H


def _ml_loglik(yi, vi, X, fit: MetaFit) -> float:
    s2 = vi + fit.tau2
    e = yi - X @ fit.beta
    return float(-0.5 * np.sum(np.log(2 * np.pi * s2) + e * e / s2))


def _maximise(lik: _StepLikelihood, theta0, lower, upper):
    r"""Maximise the selection-model log-likelihood by damped Newton steps within the bounds.

    Levenberg-Marquardt: the step solves :math:`(-H + \lambda D)s = g` with D the diagonal of
    :math:`|H|` (so the parameters' very different scales, tau^2 ~ 0.01 and delta ~ 1, do not
    matter); lambda shrinks after a successful step and grows until a step increases the
    log-likelihood.  A step may move a weight delta at most to a tenth of its value (the
    likelihood is -inf at delta = 0 when its interval holds p-values), tau^2 is cut at 0, delta at
    :data:`DELTA_MAX`.  A parameter at a bound whose gradient points outwards is held there.
    Converged when every free parameter is within :data:`SELMODEL_GTOL` standard errors of the
    optimum (scaled gradient); returns (theta, free mask, iterations).

    Why not ``scipy.optimize.minimize``: with these bounds L-BFGS-B's first line search steps onto
    delta = 0, where the log-likelihood is -inf, and stops there; ``trust-constr`` with the same
    analytic derivatives stopped ~1e-8 (relative) short on molloy2014 and did not converge in 2,000
    iterations on alliance_synthetic.  This damped Newton method converges in under ten iterations
    on all the reference datasets.
    """
    theta = np.clip(np.asarray(theta0, dtype=float), lower, upper)
    lam = 1e-3
    for it in range(1, SELMODEL_MAX_NEWTON + 1):
        ll, g, H = lik.evaluate(theta)
        free = ~(((theta <= lower) & (g < 0)) | ((theta >= upper) & (g > 0)))
        Hf, gf = H[np.ix_(free, free)], g[free]
        with np.errstate(invalid="ignore"):
            try:
                cov = np.linalg.inv(-Hf)
                concave = bool(np.all(np.linalg.eigvalsh(-Hf) > 0))
            except np.linalg.LinAlgError:
                cov, concave = None, False
        if concave and np.all(np.abs(gf) * np.sqrt(np.diag(cov)) <= SELMODEL_GTOL):
            return theta, free, it
        D = np.maximum(np.abs(np.diag(Hf)), np.finfo(float).tiny)
        for _ in range(60):
            try:
                step = np.linalg.solve(-Hf + lam * np.diag(D), gf)
            except np.linalg.LinAlgError:
                lam *= 10.0
                continue
            new = theta.copy()
            cand = theta[free] + step
            lo, hi = lower[free], upper[free]
            is_delta = np.zeros(theta.size, dtype=bool)
            is_delta[theta.size - (lik.N - 1) :] = True
            is_delta = is_delta[free]
            cand = np.where(is_delta, np.maximum(cand, theta[free] / 10.0), cand)
            new[free] = np.clip(cand, lo, hi)
            ll_new = lik.evaluate(new, order=0)[0]
            if np.isfinite(ll_new) and ll_new >= ll:
                theta = new
                lam = max(lam / 10.0, 1e-12)
                break
            lam *= 10.0
        else:
            raise ConvergenceError(
                "selection model: no step increases the log-likelihood (flat or ill-posed likelihood)"
            )
    raise ConvergenceError(f"selection model: no optimum within {SELMODEL_MAX_NEWTON} iterations")


def selmodel_stepfun(fit: MetaFit, steps=(0.025,), alternative: str = "greater") -> SelectionModel:
    r"""Step-function selection model, as ``metafor::selmodel(res, type="stepfun", steps=steps)``.

    With the default ``steps=(0.025,)`` this is the three-parameter selection model (3PSM):
    effect :math:`\mu`, :math:`\tau^2` and the relative publication probability
    :math:`\delta_2` of studies whose one-sided p-value (``alternative="greater"``) exceeds .025,
    compared with significant ones (:math:`\delta_1 = 1`).  Likelihood: :class:`_StepLikelihood`.

    As metafor, a REML (or other non-ML) model is first refitted by ML, whose estimates start the
    optimisation and whose log-likelihood is the null of the likelihood-ratio test of
    :math:`\delta_2 = \dots = \delta_N = 1` (:math:`\chi^2` with N - 1 df); an equal-effects model
    keeps :math:`\tau^2 = 0`.  The maximum is found by damped Newton steps with the
    analytic gradient and Hessian (:func:`_maximise`; :math:`\tau^2 \ge 0`,
    :math:`0 \le \delta \le 100` as metafor's bounds) until every parameter is within
    :data:`SELMODEL_GTOL` standard errors of the optimum.  Standard errors are the inverse
    observed information in the natural parameters, as metafor's numerical Hessian
    (``htransf=FALSE``); inference on the effect is z-based, as metafor.

    Raises ``ValueError`` when k < 3, when an interval with an estimated weight holds no observed
    p-value (metafor's check; the weight is then not identified), and
    :class:`~alliancemeta.meta.ConvergenceError` when the optimum is not reached or the Hessian is
    not negative definite there.  Only ``alternative="greater"`` is implemented, the direction
    that selection for positive, significant alliance-outcome correlations implies.
    """
    if alternative != "greater":
        raise ValueError("only alternative='greater' (selection for significant positive effects) is implemented")
    k = fit.k
    _require_k(k, "the selection model")
    steps = np.unique(np.asarray(steps, dtype=float))
    if np.any((steps <= 0) | (steps > 1)):
        raise ValueError("steps must lie in (0, 1]")
    if steps[-1] != 1:
        steps = np.append(steps, 1.0)
    yi, vi, X = fit.yi, fit.vi, fit.X
    pvals = stats.norm.sf(yi / np.sqrt(vi))
    groups = np.searchsorted(steps, pvals, side="left")  # first step with p <= step
    counts = np.bincount(groups, minlength=steps.size)
    if np.any(counts[1:] == 0) or (counts[0] == 0 and steps.size > 1 and False):
        empty = [f"({lo:g}, {hi:g}]" for lo, hi, c in zip(np.r_[0, steps[:-1]], steps, counts, strict=True) if c == 0]
        raise ValueError(
            f"selection model: no observed p-value in interval(s) {', '.join(empty)}; its selection weight "
            "is not identified (choose other steps)"
        )
    fe = fit.method == "FE"
    n_par = fit.p + (0 if fe else 1) + steps.size - 1
    if k < n_par:
        raise ValueError(f"selection model: k = {k} is too small for {n_par} parameters")
    ml = fit if fe or fit.method == "ML" else random_effects(yi, vi, X=X, method="ML", test=fit.test, level=fit.level)
    lik = _StepLikelihood(yi, vi, X, steps, groups, 0.0 if fe else None)
    theta0 = np.concatenate([ml.beta, [] if fe else [ml.tau2], np.ones(steps.size - 1)])
    p = fit.p
    lower = np.concatenate([np.full(p, -np.inf), [] if fe else [0.0], np.full(steps.size - 1, DELTA_MIN)])
    upper = np.concatenate([np.full(p, np.inf), [] if fe else [np.inf], np.full(steps.size - 1, DELTA_MAX)])

    theta, free, iterations = _maximise(lik, theta0, lower, upper)
    ll, _, H = lik.evaluate(theta)
    vcov = np.full(H.shape, np.nan)
    vcov[np.ix_(free, free)] = np.linalg.inv(-H[np.ix_(free, free)])
    beta, tau2, delta = lik.split(theta)
    se_all = np.sqrt(np.diag(vcov))
    se = se_all[:p]
    crit = stats.norm.ppf(1 - (1 - fit.level) / 2)
    zval = beta / se
    se_tau2 = np.nan if fe else float(se_all[p])
    se_delta = np.concatenate([[np.nan], se_all[p + (0 if fe else 1) :]])
    ci_lb_delta = np.maximum(DELTA_MIN, delta - crit * se_delta)
    ci_ub_delta = np.minimum(np.inf, delta + crit * se_delta)
    near = (delta[1:] <= DELTA_MIN + np.finfo(float).eps ** 0.25) | (
        delta[1:] >= DELTA_MAX - 100 * np.finfo(float).eps ** 0.25
    )
    if np.any(near):
        warnings.warn(
            "selection model: a delta estimate is (almost) at its bound; treat results with caution", stacklevel=2
        )
    ll0 = _ml_loglik(yi, vi, X, ml)
    LRT = max(0.0, -2 * (ll0 - ll))
    df = steps.size - 1
    return SelectionModel(
        beta=float(beta[0]),
        se=float(se[0]),
        zval=float(zval[0]),
        pval=float(2 * stats.norm.sf(abs(zval[0]))),
        ci_lb=float(beta[0] - crit * se[0]),
        ci_ub=float(beta[0] + crit * se[0]),
        tau2=float(tau2),
        se_tau2=se_tau2,
        delta=delta,
        se_delta=se_delta,
        ci_lb_delta=ci_lb_delta,
        ci_ub_delta=ci_ub_delta,
        ll=ll,
        ll0=ll0,
        LRT=LRT,
        LRT_df=df,
        LRT_pval=float(stats.chi2.sf(LRT, df)),
        steps=steps,
        counts=counts,
        iterations=iterations,
        vcov=vcov,
    )


# --------------------------------------------------------------------------------------------------
# fail-safe N
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FailSafeN:
    """Rosenthal's fail-safe N with the one-sided p-value of Stouffer's combined test."""

    fsnum: float
    pval: float
    alpha: float


def fsn_rosenthal(yi, vi, alpha: float = 0.05) -> FailSafeN:
    r"""Rosenthal's (1979) fail-safe N, as ``metafor::fsn(yi, vi, type="Rosenthal")``.

    .. math::

        z_i = y_i/\sqrt{v_i}, \quad \bar z = \Big|\sum_i z_i\Big|/\sqrt k, \quad
        p = 1 - \Phi(\bar z), \quad N_{fs} = \max\big(0,\ k(\bar z / z_{1-\alpha})^2 - k\big)

    the number of null studies that would bring Stouffer's combined one-sided test to
    :math:`p = \alpha`, rounded up (metafor: rounded when within :math:`\sqrt{\epsilon}` of an
    integer).
    """
    yi, vi = _arrays(yi, vi)
    k = yi.size
    _require_k(k, "the fail-safe N", 1)
    z_avg = abs(np.sum(yi / np.sqrt(vi)) / np.sqrt(k))
    pval = float(stats.norm.sf(z_avg))
    n = max(0.0, k * (z_avg / stats.norm.isf(alpha)) ** 2 - k)
    n = float(np.ceil(n) if abs(n - np.round(n)) >= np.sqrt(np.finfo(float).eps) else np.round(n))
    return FailSafeN(n, pval, alpha)


# --------------------------------------------------------------------------------------------------
# the SPEC §5 table
# --------------------------------------------------------------------------------------------------

PUBLICATION_BIAS_COLUMNS = ("method", "statistic", "pval", "estimate", "ci_lb", "ci_ub", "k0")
METHODS = (
    "egger", "rank", "trimfill", "pet", "peese", "selection_3psm", "failsafe_rosenthal",  # SPEC §5
    "trimfill_r0", "pet_peese",  # extras
)  # fmt: skip


def _row(method, statistic=np.nan, pval=np.nan, estimate=np.nan, ci_lb=np.nan, ci_ub=np.nan, k0=np.nan):
    return {
        "method": method,
        "statistic": statistic,
        "pval": pval,
        "estimate": estimate,
        "ci_lb": ci_lb,
        "ci_ub": ci_ub,
        "k0": k0,
    }


def _method_row(method: str, fit: MetaFit) -> dict:
    if method == "egger":
        r = regtest(fit)
        return _row(method, r.stat, r.pval, r.est, r.ci_lb, r.ci_ub)
    if method == "rank":
        r = ranktest(fit.yi, fit.vi)
        return _row(method, r.tau, r.pval)
    if method in ("trimfill", "trimfill_r0"):
        r = trimfill(fit, "L0" if method == "trimfill" else "R0")
        return _row(method, r.stat, r.pval, r.estimate, r.ci_lb, r.ci_ub, float(r.k0))
    if method in ("pet", "peese"):
        r = (pet if method == "pet" else peese)(fit.yi, fit.vi, fit.level)
        return _row(method, r.tval, r.pval, r.intercept, r.ci_lb, r.ci_ub)
    if method == "pet_peese":
        pp = pet_peese(fit.yi, fit.vi, direction=np.sign(fit.estimate) or 1.0, level=fit.level)
        r = pp.estimate
        log.info("PET-PEESE: PET one-sided p = %.4g, reporting %s", pp.pet_one_sided_p, pp.chosen.upper())
        return _row(method, r.tval, r.pval, r.intercept, r.ci_lb, r.ci_ub)
    if method == "selection_3psm":
        r = selmodel_stepfun(fit, steps=(0.025,))
        return _row(method, r.LRT, r.LRT_pval, r.beta, r.ci_lb, r.ci_ub)
    if method == "failsafe_rosenthal":
        r = fsn_rosenthal(fit.yi, fit.vi)
        return _row(method, r.fsnum, r.pval)
    raise ValueError(f"unknown publication-bias method {method!r}")


def publication_bias_table(yi, vi, method: str = "REML", test: str = "knha", level: float = 0.95) -> pd.DataFrame:
    """SPEC §5 ``publication_bias.csv``: one row per method of :data:`METHODS`, in that order.

    The headline model ``random_effects(yi, vi, method, test, level)`` feeds Egger's test,
    trim and fill and the selection model; PET and PEESE are WLS with weights 1/vi.  Columns:

    ========================  ==========================  ==============================  =====
    method                    statistic, pval             estimate, ci_lb, ci_ub          k0
    ========================  ==========================  ==============================  =====
    ``egger``                 z or t of the sei slope     limit estimate (intercept)      NaN
    ``rank``                  Kendall's tau, its p        NaN (no estimate)               NaN
    ``trimfill``              z or t of the filled model  filled estimate (L0)            k0
    ``pet``, ``peese``        t of the intercept          intercept (effect at SE = 0)    NaN
    ``selection_3psm``        LRT of delta = 1            adjusted estimate (z-based CI)  NaN
    ``failsafe_rosenthal``    fail-safe N, Stouffer's p   NaN (no estimate)               NaN
    ``trimfill_r0``           as trimfill, R0 estimator   filled estimate (R0)            k0
    ``pet_peese``             t of the chosen intercept   PEESE or PET (see pet_peese)    NaN
    ========================  ==========================  ==============================  =====

    NaN appears only where the quantity does not exist for the method, or when a method cannot
    be computed for these data (too few effect sizes, an empty p-value interval, no convergence):
    then its function raises, the reason is logged as a warning (the rule's log file), and the
    row is written with NaN so that the table keeps its shape.  Estimates are on the Fisher-z
    scale of the input.
    """
    fit = random_effects(yi, vi, method=method, test=test, level=level)
    rows = []
    for name in METHODS:
        try:
            rows.append(_method_row(name, fit))
        except (ValueError, ConvergenceError, np.linalg.LinAlgError) as err:
            log.warning("publication bias: %s not computed (NaN row written): %s", name, err)
            rows.append(_row(name))
    return pd.DataFrame(rows, columns=list(PUBLICATION_BIAS_COLUMNS))


def write_publication_bias(studies, table, method: str = "REML", test: str = "knha", level: float = 0.95) -> None:
    """Read a processed study table (``study, yi, vi``), write ``publication_bias.csv`` atomically."""
    frame = pd.read_csv(studies)
    missing = [c for c in ("yi", "vi") if c not in frame.columns]
    if missing:
        raise ValueError(f"{studies}: processed study table lacks column(s) {', '.join(missing)}")
    out = publication_bias_table(frame["yi"].to_numpy(float), frame["vi"].to_numpy(float), method, test, level)
    write_csv(out, table, PUBLICATION_BIAS_COLUMNS)


__all__ = [
    "METHODS",
    "PUBLICATION_BIAS_COLUMNS",
    "FailSafeN",
    "PetPeese",
    "RankTest",
    "RegTest",
    "SelectionModel",
    "TrimFill",
    "WLSRegression",
    "fsn_rosenthal",
    "peese",
    "pet",
    "pet_peese",
    "publication_bias_table",
    "ranktest",
    "regtest",
    "selmodel_stepfun",
    "trimfill",
    "write_publication_bias",
]
