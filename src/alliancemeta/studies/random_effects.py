"""Equal- and random-effects meta-analysis and meta-regression (the ``rma.uni`` family).

Every quantity follows metafor's definitions so that values compare one to one with R, but the
computations are O(k p^2): no k x k matrix is ever formed.  With W = diag(w),
A = (X'WX)^{-1} and P = W - W X A X' W, the quantities metafor builds from P reduce to

.. math::

    y'Py = \\sum_i w_i e_i^2, \\quad y'PPy = \\sum_i w_i^2 e_i^2, \\quad
    \\operatorname{tr}P = \\sum_i w_i - \\operatorname{tr}(A X'W^2X),

    \\operatorname{tr}(PP) = \\sum_i w_i^2 - 2\\operatorname{tr}(A X'W^3X) + \\operatorname{tr}(A X'W^2X A X'W^2X),

where e are the weighted least-squares residuals.  References: Viechtbauer (2005), *J Educ Behav
Stat* 30, 261-293 (estimators); Viechtbauer (2010), *J Stat Softw* 36(3) (metafor); Knapp &
Hartung (2003), *Stat Med* 22, 2693-2710; Viechtbauer (2007), *Stat Med* 26, 37-52 (Q-profile).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
from scipy import optimize, stats

from alliancemeta.core.errors import ConvergenceError
from alliancemeta.core.inference import Prediction, critical_value, p_value, wald_test

ESTIMATORS = ("FE", "DL", "HE", "HS", "SJ", "ML", "REML", "EB", "PM")
TESTS = ("z", "t", "knha")

#: Convergence threshold on the change in tau^2 for the iterative estimators (ML, REML, EB).
#: metafor stops at 1e-5; we iterate to near machine precision so results do not depend on the path.
TAU2_THRESHOLD = 1e-12
MAX_ITER = 1000


@dataclass(frozen=True)
class WLS:
    """Weighted least-squares pieces shared by every estimator."""

    beta: np.ndarray  # (p,)
    A: np.ndarray  # (X'WX)^{-1}, (p, p)
    resid: np.ndarray  # y - X beta, (k,)
    rss: float  # sum w e^2  (= y'Py)


def _xtwx(X: np.ndarray, w: np.ndarray) -> np.ndarray:
    """X'WX.  Intercept-only models use an elementwise sum: on a busy machine a BLAS call on a
    k-vector can cost milliseconds (thread start-up), more than the arithmetic itself."""
    if X.shape[1] == 1:
        return np.array([[np.sum(w * X[:, 0] ** 2)]])
    return X.T @ (X * w[:, None])


def _xtwy(X: np.ndarray, w: np.ndarray, y: np.ndarray) -> np.ndarray:
    if X.shape[1] == 1:
        return np.array([np.sum(w * X[:, 0] * y)])
    return X.T @ (w * y)


def _xb(X: np.ndarray, beta: np.ndarray) -> np.ndarray:
    return X[:, 0] * beta[0] if X.shape[1] == 1 else X @ beta


def wls(yi: np.ndarray, X: np.ndarray, w: np.ndarray) -> WLS:
    if X.shape[1] == 1 and X[0, 0] == 1.0 and yi.size and np.all(X[:, 0] == 1.0):
        # intercept only: the weighted mean, without any linear-algebra call
        sw = w.sum()
        mu = np.sum(w * yi) / sw
        resid = yi - mu
        return WLS(np.array([mu]), np.array([[1.0 / sw]]), resid, float(np.sum(w * resid * resid)))
    A = np.linalg.inv(_xtwx(X, w))
    beta = A @ _xtwy(X, w, yi)
    resid = yi - _xb(X, beta)
    return WLS(beta, A, resid, float(np.sum(w * resid * resid)))


def trace_p(X: np.ndarray, w: np.ndarray, A: np.ndarray) -> float:
    """tr(P) = sum(w) - tr(A X'W^2 X)."""
    return float(w.sum() - np.trace(A @ _xtwx(X, w * w)))


def trace_pp(X: np.ndarray, w: np.ndarray, A: np.ndarray) -> float:
    """tr(PP) without forming P (see module docstring)."""
    B = A @ _xtwx(X, w * w)
    C = A @ _xtwx(X, w**3)
    return float(np.sum(w * w) - 2.0 * np.trace(C) + np.trace(B @ B))


def q_gen(tau2: float, yi: np.ndarray, vi: np.ndarray, X: np.ndarray) -> float:
    r"""Generalised Q statistic :math:`Q(\tau^2) = \sum_i (y_i - x_i'\hat\beta(\tau^2))^2 / (v_i + \tau^2)`."""
    return wls(yi, X, 1.0 / (vi + tau2)).rss


# --------------------------------------------------------------------------------------------------
# tau^2 estimators
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tau2Estimate:
    tau2: float
    iterations: int
    converged: bool


def _q_and_slope(tau2: float, yi, vi, X) -> tuple[float, float]:
    r"""Q(tau2) and its derivative :math:`dQ/d\tau^2 = -\sum_i w_i^2 e_i^2` (the envelope theorem:
    beta-hat minimises the weighted sum of squares, so only the weights' dependence counts)."""
    w = 1.0 / (vi + tau2)
    fit = wls(yi, X, w)
    return fit.rss, -float(np.sum((w * fit.resid) ** 2))


def _solve_q_equation(yi, vi, X, target) -> float:
    """Root of Q(tau2) = target on [0, inf); 0 when Q(0) is already at or below target.

    Q is decreasing in tau2.  Newton's method with the exact slope, safeguarded by the bracket that
    the iterates build up (bisection whenever a step would leave it), converges in a handful of O(k)
    evaluations, to a relative 4 machine epsilons in tau2.
    """
    q, slope = _q_and_slope(0.0, yi, vi, X)
    if q <= target:
        return 0.0
    lo, hi, t = 0.0, np.inf, 0.0
    for _ in range(MAX_ITER):
        f = q - target
        if f > 0:
            lo = t
        else:
            hi = t
        if f == 0.0:
            return t
        new = t - f / slope if slope < 0 else np.inf
        if not lo < new < hi:
            new = 0.5 * (lo + hi) if np.isfinite(hi) else max(2.0 * lo, 1.0)
        if abs(new - t) <= 4 * np.finfo(float).eps * abs(new) or (hi - lo) <= 4 * np.finfo(float).eps * lo:
            return new
        t = new
        q, slope = _q_and_slope(t, yi, vi, X)
    raise ConvergenceError("the Q-profile equation for tau^2 did not converge; check for extreme sampling variances")


def _score_and_information(yi, vi, X, tau2, reml: bool) -> tuple[float, float]:
    """Score (times 2) and expected information (times 2) of the (restricted) log-likelihood in tau2."""
    w = 1.0 / (vi + tau2)
    fit = wls(yi, X, w)
    if reml:
        return np.sum((w * fit.resid) ** 2) - trace_p(X, w, fit.A), trace_pp(X, w, fit.A)
    return np.sum((w * fit.resid) ** 2) - w.sum(), np.sum(w * w)


def _fisher_scoring(yi, vi, X, method, tau2_init) -> Tau2Estimate:
    """ML and REML by Fisher scoring from ``tau2_init``, as metafor iterates, made robust.

    Fisher steps use the expected information, which can overshoot: on small, awkward data metafor's
    full steps oscillate around the optimum and never converge.  Here the iterates are watched for
    a sign change of the score; once one brackets the root, Brent's method finishes it to machine
    precision.  Steps that would leave [0, inf) are cut to the boundary, and at tau2 = 0 with a
    non-positive score the boundary is the maximum.
    """
    reml = method == "REML"
    tau2 = max(0.0, tau2_init)
    pos = neg = None  # tau2 values with positive / negative score
    for it in range(1, MAX_ITER + 1):
        score, info = _score_and_information(yi, vi, X, tau2, reml)
        if score > 0:
            pos = tau2
        elif score < 0:
            neg = tau2
        if tau2 == 0.0 and score <= 0.0:
            return Tau2Estimate(0.0, it, True)
        if pos is not None and neg is not None and abs(pos - neg) > TAU2_THRESHOLD * max(1.0, tau2):
            root = optimize.brentq(
                lambda t2: _score_and_information(yi, vi, X, t2, reml)[0], min(pos, neg), max(pos, neg),
                xtol=1e-15, rtol=4 * np.finfo(float).eps, maxiter=500, full_output=True,
            )
            return Tau2Estimate(root[0], it + root[1].iterations, root[1].converged)
        adj = score / info
        new = max(0.0, tau2 + adj)
        if abs(new - tau2) <= TAU2_THRESHOLD * max(1.0, new):
            return Tau2Estimate(new, it, True)
        tau2 = new
    return Tau2Estimate(tau2, MAX_ITER, False)


def _loglik(yi, vi, X, tau2, reml: bool) -> float:
    k, p = X.shape
    w = 1.0 / (vi + tau2)
    fit = wls(yi, X, w)
    ll = -0.5 * np.sum(np.log(vi + tau2)) - 0.5 * fit.rss
    if reml:
        _, logdet = np.linalg.slogdet(np.linalg.inv(fit.A))
        return float(ll - 0.5 * (k - p) * np.log(2 * np.pi) - 0.5 * logdet)
    return float(ll - 0.5 * k * np.log(2 * np.pi))


def estimate_tau2(yi, vi, X=None, method: str = "REML") -> Tau2Estimate:
    r"""Estimate the between-study variance :math:`\tau^2` with one of metafor's estimators.

    Parameters
    ----------
    yi, vi : array_like
        Effect sizes and their sampling variances.
    X : array_like, optional
        Moderator matrix including the intercept column; intercept only when omitted.
    method : {"FE", "DL", "HE", "HS", "SJ", "ML", "REML", "EB", "PM"}
        ``FE`` fixes tau^2 = 0.  Formulas as ``metafor::rma.uni`` (Viechtbauer 2005; Veroniki et al.
        2016, *Res Synth Methods* 7, 55-79):

        - DL: :math:`\max(0, (Q_E - (k-p)) / \operatorname{tr}P_0)` with :math:`W = V^{-1}`
        - HE: :math:`(RSS_{OLS} - \sum_i v_i(1 - h_i)) / (k - p)` with OLS hat values :math:`h_i`
        - HS: :math:`(Q_E - k) / \sum_i w_i`
        - SJ: :math:`\tau_0^2\, Q(\tau_0^2) / (k - p)` with :math:`\tau_0^2 = \operatorname{var}(y)(k-1)/k`
        - ML, REML: Fisher scoring from the HE estimate (likelihood-safeguarded steps)
        - PM, EB: root of :math:`Q(\tau^2) = k - p` (the fixed point of metafor's EB iteration)

    Returns
    -------
    Tau2Estimate
        Negative estimates are truncated at 0, as metafor does.  Raises :class:`ConvergenceError`
        when an iterative estimator fails, never returns an unconverged value.
    """
    yi = np.asarray(yi, dtype=float)
    vi = np.asarray(vi, dtype=float)
    X = np.ones((yi.size, 1)) if X is None else np.asarray(X, dtype=float)
    k, p = X.shape
    method = method.upper()
    if method not in ESTIMATORS:
        raise ValueError(f"unknown tau^2 estimator {method!r}; expected one of {', '.join(ESTIMATORS)}")
    if method == "FE" or k <= p:
        return Tau2Estimate(0.0, 0, True)
    if method == "DL":
        w = 1.0 / vi
        fit = wls(yi, X, w)
        return Tau2Estimate(max(0.0, (fit.rss - (k - p)) / trace_p(X, w, fit.A)), 0, True)
    if method == "HS":
        w = 1.0 / vi
        return Tau2Estimate(max(0.0, (wls(yi, X, w).rss - k) / w.sum()), 0, True)
    if method == "SJ":
        tau2_0 = float(np.var(yi))  # var(y) * (k-1)/k, numpy's default ddof=0
        w = 1.0 / (vi + tau2_0)
        return Tau2Estimate(max(0.0, tau2_0 * wls(yi, X, w).rss / (k - p)), 0, True)
    if method in ("PM", "EB"):
        # metafor's EB iteration has the fixed point Q(tau2) = k - p, the Paule-Mandel equation
        # (Viechtbauer 2005, sec. 2.6); solving it directly cannot oscillate.
        return Tau2Estimate(_solve_q_equation(yi, vi, X, k - p), 0, True)
    tau2_he = _tau2_he(yi, vi, X)
    if method in ("HE",):
        return Tau2Estimate(max(0.0, tau2_he), 0, True)
    est = _fisher_scoring(yi, vi, X, method, tau2_he)
    if not est.converged:
        raise ConvergenceError(
            f"{method} Fisher scoring did not converge in {MAX_ITER} iterations; "
            "try estimator PM or DL, or check the data for extreme sampling variances"
        )
    if method in ("ML", "REML") and est.tau2 > 0:
        # as metafor's ll0check: the boundary tau2 = 0 can beat an interior stationary point
        reml = method == "REML"
        if _loglik(yi, vi, X, 0.0, reml) > _loglik(yi, vi, X, est.tau2, reml):
            warnings.warn(f"{method} log-likelihood is higher at tau^2 = 0; using the boundary", stacklevel=2)
            return Tau2Estimate(0.0, est.iterations, True)
    return est


def _tau2_he(yi, vi, X) -> float:
    k, p = X.shape
    fit = wls(yi, X, np.ones(k))
    hat = np.einsum("ij,jk,ik->i", X, fit.A, X)
    return (fit.rss - float(np.sum(vi * (1.0 - hat)))) / (k - p)


# --------------------------------------------------------------------------------------------------
# the fitted model
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MetaFit:
    """A fitted equal- or random-effects model (``rma.uni``) with metafor's names.

    ``beta``/``se``/``stat``/``pval``/``ci_lb``/``ci_ub`` are per coefficient; ``estimate`` and
    friends give the first coefficient (the pooled effect in an intercept-only model).
    """

    method: str
    test: str
    k: int
    p: int
    beta: np.ndarray
    se: np.ndarray
    vb: np.ndarray
    stat_values: np.ndarray
    pvals: np.ndarray
    ci_lbs: np.ndarray
    ci_ubs: np.ndarray
    tau2: float
    QE: float
    QE_df: int
    QE_pval: float
    I2: float
    H2: float
    vt: float
    ddf: float  # residual df for t-based tests; inf for z
    s2w: float  # Knapp-Hartung scale factor (1 for z and t)
    QM: float
    QM_df: tuple[float, float]
    QM_pval: float
    iterations: int
    level: float
    yi: np.ndarray = field(repr=False)
    vi: np.ndarray = field(repr=False)
    X: np.ndarray = field(repr=False)
    weights: np.ndarray = field(repr=False)  # 1/(vi + tau2)

    @property
    def estimate(self) -> float:
        return float(self.beta[0])

    @property
    def crit(self) -> float:
        return critical_value(self.level, self.ddf)

    def predict(self, x_new=None) -> Prediction:
        """Predicted effect with confidence and prediction interval, as ``metafor::predict``.

        .. math:: \\hat\\mu \\pm c\\sqrt{SE^2 + \\tau^2}

        where c is the critical value of the model's test (t with k-p df for ``t``/``knha``).
        """
        x_new = np.eye(self.p)[0] if x_new is None else np.asarray(x_new, dtype=float)
        pred = float(x_new @ self.beta)
        se = float(np.sqrt(x_new @ self.vb @ x_new))
        crit = self.crit
        pi_se = np.sqrt(se**2 + self.tau2)
        return Prediction(pred, se, pred - crit * se, pred + crit * se, pred - crit * pi_se, pred + crit * pi_se)


def _as_design(yi, X):
    yi = np.asarray(yi, dtype=float)
    if X is None:
        return np.ones((yi.size, 1))
    X = np.asarray(X, dtype=float)
    return X[:, None] if X.ndim == 1 else X


def random_effects(
    yi, vi, X=None, method: str = "REML", test: str = "z", level: float = 0.95, tau2: float | None = None
) -> MetaFit:
    r"""Fit an equal-effects (``method="FE"``) or random/mixed-effects model, as ``metafor::rma.uni``.

    .. math::

        y_i = x_i'\beta + u_i + \varepsilon_i, \quad u_i \sim N(0, \tau^2),\;
        \varepsilon_i \sim N(0, v_i)

        \hat\beta = (X'WX)^{-1}X'Wy, \quad W = \operatorname{diag}(1 / (v_i + \hat\tau^2))

    Tests: ``z`` (normal), ``t`` (t with k-p df) and ``knha`` (Knapp & Hartung 2003: the
    covariance is scaled by :math:`s^2_w = \sum_i w_i e_i^2/(k-p)` and t with k-p df; not
    truncated at 1, as metafor's ``test="knha"``).  Heterogeneity: :math:`Q_E` with
    :math:`W = V^{-1}`; :math:`I^2 = 100\,\hat\tau^2/(\hat\tau^2 + \tilde v)` and
    :math:`H^2 = 1 + \hat\tau^2/\tilde v` with the typical within-study variance
    :math:`\tilde v = (k-p)/\operatorname{tr}P_0` (Higgins & Thompson 2002, eq. 9; metafor's
    ``i2def="1"``); for FE models :math:`I^2 = 100\max(0, (Q_E - (k-p))/Q_E)`, :math:`H^2 = Q_E/(k-p)`.

    Parameters
    ----------
    yi, vi : array_like
        Effect sizes and sampling variances (> 0).
    X : array_like, optional
        Design matrix including the intercept column.
    method, test, level :
        tau^2 estimator (:data:`ESTIMATORS`), test (:data:`TESTS`), confidence level.
    tau2 : float, optional
        Fix tau^2 at this value instead of estimating it.
    """
    yi = np.asarray(yi, dtype=float)
    vi = np.asarray(vi, dtype=float)
    X = _as_design(yi, X)
    k, p = X.shape
    method = method.upper()
    test = test.lower()
    if test not in TESTS:
        raise ValueError(f"unknown test {test!r}; expected one of {', '.join(TESTS)}")
    if yi.shape != vi.shape or yi.size != k:
        raise ValueError("yi, vi and X must describe the same number of effect sizes")
    if np.any(~np.isfinite(yi)) or np.any(~np.isfinite(vi)):
        raise ValueError("yi and vi must be finite")
    if np.any(vi <= 0):
        raise ValueError("sampling variances vi must be > 0")
    if np.linalg.matrix_rank(X) < p:
        raise ValueError("the moderators are collinear: the design matrix is not of full column rank")

    if k == 1 and test != "z":
        # as metafor: with one effect size there are no residual df for a t or Knapp-Hartung test
        warnings.warn(f"k = 1: setting test to 'z' (test {test!r} needs k > 1)", stacklevel=2)
        test = "z"
    if tau2 is not None:
        t2 = Tau2Estimate(float(tau2), 0, True)
    else:
        t2 = estimate_tau2(yi, vi, X, method)
    w = 1.0 / (vi + t2.tau2)
    fit = wls(yi, X, w)

    dfr = k - p
    if test == "knha":
        # metafor sets the scale to 0 when the residuals vanish (all yi equal), not to a tiny number
        s2w = fit.rss / dfr if fit.rss > np.finfo(float).eps else 0.0
    else:
        s2w = 1.0
    vb = s2w * fit.A
    se = np.sqrt(np.diag(vb))
    with np.errstate(divide="ignore", invalid="ignore"):
        zval = fit.beta / se
    ddf = float(dfr) if test in ("t", "knha") else np.inf
    pvals = p_value(zval, ddf)
    crit = critical_value(level, ddf)

    # omnibus test of the moderators (all coefficients except the intercept, when there is one)
    btt = np.arange(1, p) if p > 1 and np.allclose(X[:, 0], 1.0) else np.arange(p)
    omnibus = wald_test(fit.beta[btt], vb[np.ix_(btt, btt)], ddf)
    QM, QM_df, QM_pval = omnibus.QM, omnibus.QM_df, omnibus.QM_pval

    # heterogeneity, always with inverse-variance weights of the equal-effects model
    if dfr > 0:
        w0 = 1.0 / vi
        fit0 = wls(yi, X, w0)
        QE = max(0.0, fit0.rss)
        QE_pval = float(stats.chi2.sf(QE, dfr))
        vt = dfr / trace_p(X, w0, fit0.A)
        if method == "FE":
            I2 = max(0.0, 100.0 * (QE - dfr) / QE) if QE > 0 else 0.0
            H2 = QE / dfr
        else:
            I2 = 100.0 * t2.tau2 / (vt + t2.tau2)
            H2 = t2.tau2 / vt + 1.0
    else:
        QE, QE_pval, I2, H2, vt = 0.0, 1.0, 0.0, 1.0, 0.0

    return MetaFit(
        method=method,
        test=test,
        k=k,
        p=p,
        beta=fit.beta,
        se=se,
        vb=vb,
        stat_values=zval,
        pvals=np.asarray(pvals, dtype=float),
        ci_lbs=fit.beta - crit * se,
        ci_ubs=fit.beta + crit * se,
        tau2=t2.tau2,
        QE=QE,
        QE_df=dfr,
        QE_pval=QE_pval,
        I2=I2,
        H2=H2,
        vt=vt,
        ddf=ddf,
        s2w=s2w,
        QM=QM,
        QM_df=QM_df,
        QM_pval=QM_pval,
        iterations=t2.iterations,
        level=level,
        yi=yi,
        vi=vi,
        X=X,
        weights=w,
    )


# --------------------------------------------------------------------------------------------------
# Q-profile confidence interval for tau^2, I^2 and H^2
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HeterogeneityCI:
    tau2: float
    tau2_ci_lb: float
    tau2_ci_ub: float
    I2: float
    I2_ci_lb: float
    I2_ci_ub: float
    H2: float
    H2_ci_lb: float
    H2_ci_ub: float


def confint_tau2(fit: MetaFit, level: float | None = None) -> HeterogeneityCI:
    r"""Q-profile confidence interval for :math:`\tau^2` (Viechtbauer 2007), as ``metafor::confint``.

    The bounds solve :math:`Q(\tau^2) = \chi^2_{k-p;\,1-\alpha/2}` (lower) and
    :math:`Q(\tau^2) = \chi^2_{k-p;\,\alpha/2}` (upper), truncated at 0 when Q(0) already lies below
    the critical value.  I^2 and H^2 bounds follow from the tau^2 bounds through the typical
    within-study variance :math:`\tilde v`.  Roots are found to machine precision (metafor's
    ``uniroot`` stops at a tolerance of about 1.2e-4 unless told otherwise).
    """
    level = fit.level if level is None else level
    dfr = fit.k - fit.p
    if dfr < 1:
        nan = np.nan
        return HeterogeneityCI(fit.tau2, nan, nan, fit.I2, nan, nan, fit.H2, nan, nan)
    alpha = 1.0 - level
    crit_u = stats.chi2.isf(alpha / 2, dfr)
    crit_l = stats.chi2.ppf(alpha / 2, dfr)
    lb = _solve_q_equation(fit.yi, fit.vi, fit.X, crit_u)
    ub = _solve_q_equation(fit.yi, fit.vi, fit.X, crit_l)
    vt = fit.vt

    def i2(t2):
        return 100.0 * t2 / (vt + t2)

    def h2(t2):
        return t2 / vt + 1.0

    return HeterogeneityCI(fit.tau2, lb, ub, fit.I2, i2(lb), i2(ub), fit.H2, h2(lb), h2(ub))
