r"""The three-level model fitted by REML in O(k), as ``metafor::rma.mv(yi, vi, mods, random = ~ 1 | study/effect)``.

The O(k) restricted likelihood with its score and information (:class:`ThreeLevelREML`), the projected
Newton optimiser (:func:`_maximise_reml`), the fit (:func:`three_level`, :class:`MultilevelFit`) and
:func:`reml_loglik`; the algebra is set out in :mod:`alliancemeta.studies.multilevel`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
from scipy import linalg, stats

from alliancemeta.core.errors import ConvergenceError
from alliancemeta.core.inference import Prediction, critical_value, p_value, wald_test
from alliancemeta.studies.multilevel.clusters import Clusters, group_clusters
from alliancemeta.studies.random_effects import trace_p, wls

TESTS = ("z", "t")

#: Convergence threshold on the Newton step for (sigma2_study, sigma2_within), relative to the
#: larger of the current sigma2 and the mean sampling variance (the data's own scale, so that the
#: criterion does not depend on the units of yi).  Newton converges quadratically, so iterating to
#: near machine precision costs a couple of extra iterations and makes the estimate independent of
#: the starting value (metafor's nlminb stops within about 1e-8 of the optimum).
SIGMA2_TOL = 1e-12
#: Newton/Fisher iterations allowed before giving up with a :class:`ConvergenceError`.
MAX_ITER = 200
#: Step halvings tried before a direction is abandoned.
MAX_HALVINGS = 60
#: A step is accepted when the restricted log-likelihood falls by no more than this (relative)
#: amount: near the optimum the change is at the level of floating-point round-off.
LL_SLACK = 1e-12


# --------------------------------------------------------------------------------------------------
# the restricted likelihood in O(k)
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Evaluation:
    theta: np.ndarray  # (sigma2_study, sigma2_within)
    loglik: float  # restricted log-likelihood, metafor's definition (with + 1/2 log|X'X|)
    beta: np.ndarray
    vb: np.ndarray  # (X'V^{-1}X)^{-1}
    grad: np.ndarray | None = None  # score with respect to theta
    fisher: np.ndarray | None = None  # expected information
    observed: np.ndarray | None = None  # observed information (minus the Hessian)


class ThreeLevelREML:
    """Data of a three-level model in cluster-sorted order and the O(k) REML algebra."""

    def __init__(self, yi, vi, X, groups: Clusters):
        o = groups.order
        self.y = yi[o]
        self.v = vi[o]
        self.X = X[o]
        self.g = groups
        self.k, self.p = X.shape
        _sign, logdet_xtx = np.linalg.slogdet(X.T @ X)
        self.half_logdet_xtx = 0.5 * logdet_xtx
        self.const = -0.5 * (self.k - self.p) * np.log(2.0 * np.pi)

    def _vinv(self, values, a, gamma):
        """V^{-1} @ values for a (k,) or (k, m) array, via Sherman-Morrison per cluster."""
        av = a * values if values.ndim == 1 else a[:, None] * values
        corr = self.g.spread(gamma * self.g.sums(av) if values.ndim == 1 else gamma[:, None] * self.g.sums(av))
        return av - (a * corr if values.ndim == 1 else a[:, None] * corr)

    def evaluate(self, theta, derivatives: bool = False) -> _Evaluation:
        r"""Restricted log-likelihood (metafor's ``REMLf = TRUE`` form) and, optionally, its derivatives.

        .. math::

            \ell_R = -\tfrac{k-p}{2}\log 2\pi + \tfrac12\log|X'X| - \tfrac12\log|V|
                     - \tfrac12\log|X'V^{-1}X| - \tfrac12 r'V^{-1}r

        Score and information (Harville 1977, *JASA* 72, 320-338) with :math:`V_{study} = ZZ'`,
        :math:`V_{within} = I` and :math:`P = V^{-1} - V^{-1}X(X'V^{-1}X)^{-1}X'V^{-1}`:
        :math:`s_r = -\tfrac12\operatorname{tr}(PV_r) + \tfrac12 y'PV_rPy`,
        :math:`\mathcal I_{rs} = \tfrac12\operatorname{tr}(PV_rPV_s)` (expected) and
        :math:`\mathcal J_{rs} = y'PV_rPV_sPy - \tfrac12\operatorname{tr}(PV_rPV_s)` (observed).
        """
        s_s, s_w = float(theta[0]), float(theta[1])
        g, X, y = self.g, self.X, self.y
        d = self.v + s_w
        a = 1.0 / d
        S = g.sums(a)
        denom = 1.0 + s_s * S
        gamma = s_s / denom
        Xt = self._vinv(X, a, gamma)  # V^{-1} X
        F = X.T @ Xt
        F = 0.5 * (F + F.T)
        cf = linalg.cho_factor(F, lower=True)
        Q = linalg.cho_solve(cf, np.eye(self.p))
        beta = Q @ (Xt.T @ y)
        resid = y - X @ beta
        u = self._vinv(resid, a, gamma)  # P y
        logdet_v = float(np.sum(np.log(d)) + np.sum(np.log(denom)))
        logdet_f = 2.0 * float(np.sum(np.log(np.diag(cf[0]))))
        ll = self.const + self.half_logdet_xtx - 0.5 * logdet_v - 0.5 * logdet_f - 0.5 * float(resid @ u)
        if not derivatives:
            return _Evaluation(np.array([s_s, s_w]), ll, beta, Q)

        sum_a2 = g.sums(a * a)
        one_v_one = S / denom  # 1' V_j^{-1} 1
        xbar = g.sums(Xt)  # Z' V^{-1} X, (J, p)
        ubar = g.sums(u)  # Z' P y
        C_I = Xt.T @ Xt
        C_Z = xbar.T @ xbar
        # traces of P V_r
        tr_p = float(a.sum() - gamma @ sum_a2) - float(np.sum(Q * C_I))
        tr_pz = float(one_v_one.sum()) - float(np.sum(Q * C_Z))
        grad = np.array([-0.5 * tr_pz + 0.5 * float(ubar @ ubar), -0.5 * tr_p + 0.5 * float(u @ u)])

        # tr(P A P B) = tr(V~AV~B) - 2 tr(Q X~'B V~ A X~) + tr(Q C_A Q C_B), X~ = V^{-1}X
        Y2 = self._vinv(Xt, a, gamma)
        ybar = g.sums(Y2)
        t0_ii = float(np.sum(sum_a2 - 2.0 * gamma * g.sums(a**3) + gamma**2 * sum_a2**2))
        t0_iz = float(np.sum(sum_a2 / denom**2))
        t0_zz = float(np.sum(one_v_one**2))
        t1_ii = float(np.sum(Q * (Xt.T @ Y2)))
        t1_iz = float(np.trace(Q @ (xbar.T @ ybar)))
        t1_zz = float(np.sum(Q * ((xbar * one_v_one[:, None]).T @ xbar)))
        QCI, QCZ = Q @ C_I, Q @ C_Z
        t2_ii = float(np.sum(QCI * QCI.T))
        t2_iz = float(np.sum(QCI * QCZ.T))
        t2_zz = float(np.sum(QCZ * QCZ.T))
        tr_ss = t0_zz - 2.0 * t1_zz + t2_zz
        tr_sw = t0_iz - 2.0 * t1_iz + t2_iz
        tr_ww = t0_ii - 2.0 * t1_ii + t2_ii
        fisher = 0.5 * np.array([[tr_ss, tr_sw], [tr_sw, tr_ww]])

        # y'P V_r P V_s P y = (V_r u)' P (V_s u) with u = Py and z = ZZ'u (constant within clusters),
        # using l'Pr = l'V^{-1}r - (X~'l)'Q(X~'r), V_j^{-1}1 = a/denom_j and X~'z = xbar'ubar
        xu = Xt.T @ u
        xz = xbar.T @ ubar
        au_bar = g.sums(a * u)
        q_ss = float(np.sum(ubar**2 * one_v_one)) - float(xz @ Q @ xz)
        q_sw = float(np.sum(au_bar * ubar / denom)) - float(xu @ Q @ xz)
        q_ww = float(u @ self._vinv(u, a, gamma)) - float(xu @ Q @ xu)
        observed = np.array([[q_ss, q_sw], [q_sw, q_ww]]) - fisher
        return _Evaluation(np.array([s_s, s_w]), ll, beta, Q, grad, fisher, observed)

    def start(self) -> np.ndarray:
        """metafor's starting values: half each of max(0.002, var(e_FE) - 1/mean(1/v))."""
        fe = wls(self.y, self.X, 1.0 / self.v)
        total = max(0.002, float(np.var(fe.resid, ddof=1)) - 1.0 / float(np.mean(1.0 / self.v)))
        return np.array([total / 2.0, total / 2.0])


@dataclass(frozen=True)
class _Optimum:
    evaluation: _Evaluation
    iterations: int
    converged: bool


def _newton_direction(H: np.ndarray, grad: np.ndarray) -> np.ndarray | None:
    """Solve H step = grad when H is positive definite, else None."""
    try:
        cf = linalg.cho_factor(H, lower=True)
    except linalg.LinAlgError:
        return None
    return linalg.cho_solve(cf, grad)


def _maximise_reml(model: ThreeLevelREML, tied: bool, fixed=(None, None)) -> _Optimum:
    """Projected Newton ascent on the REML log-likelihood over theta >= 0.

    Parameterised as theta = B phi + offset with phi >= 0: ``fixed`` holds values for components
    that are not estimated (metafor's ``sigma2 = c(NA, 0)``), and ``tied`` restricts theta to
    sigma2_study = sigma2_within (used when every cluster holds one effect, so that only their sum
    is identified).
    """
    offset = np.array([0.0 if f is None else float(f) for f in fixed])
    free_cols = [i for i, f in enumerate(fixed) if f is None]
    if tied and len(free_cols) == 2:
        B = np.array([[0.5], [0.5]])
        phi = np.array([float(np.sum(model.start()))])
    else:
        B = np.eye(2)[:, free_cols]
        phi = model.start()[free_cols]
    if phi.size == 0:
        return _Optimum(model.evaluate(offset), 0, True)
    scale = float(np.mean(model.v))
    ev = model.evaluate(B @ phi + offset, derivatives=True)
    for it in range(1, MAX_ITER + 1):
        grad = B.T @ ev.grad
        free = ~((phi <= 0.0) & (grad <= 0.0))
        if not free.any():
            return _Optimum(ev, it - 1, True)
        steps = []
        for info in (ev.observed, ev.fisher):
            H = (B.T @ info @ B)[np.ix_(free, free)]
            direction = _newton_direction(H, grad[free])
            if direction is None and info is ev.fisher:
                direction = np.linalg.lstsq(H, grad[free], rcond=None)[0]
            if direction is not None:
                step = np.zeros_like(phi)
                step[free] = direction
                steps.append(step)
        full = np.maximum(phi + steps[0], 0.0) - phi
        if np.max(np.abs(full)) <= SIGMA2_TOL * max(scale, float(np.max(phi))):
            return _Optimum(ev, it - 1, True)
        accepted = None
        for step in steps:
            t = 1.0
            for _ in range(MAX_HALVINGS):
                cand = np.maximum(phi + t * step, 0.0)
                ev_c = model.evaluate(B @ cand + offset, derivatives=True)
                if ev_c.loglik >= ev.loglik - LL_SLACK * (1.0 + abs(ev.loglik)):
                    accepted = (cand, ev_c)
                    break
                t /= 2.0
            if accepted is not None:
                break
        if accepted is None:
            return _Optimum(ev, it, False)
        phi, ev = accepted
    return _Optimum(ev, MAX_ITER, False)


# --------------------------------------------------------------------------------------------------
# the fitted model
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MultilevelFit:
    """A fitted three-level model (``rma.mv`` with ``random = ~ 1 | study/effect``), metafor's names.

    ``sigma2`` is ``(sigma2_study, sigma2_within)``; ``beta``/``se``/``stat``/``pval``/``ci_lb``/
    ``ci_ub`` are per coefficient; ``I2``, ``I2_study`` and ``I2_within`` are in percent.
    """

    test: str
    level: float
    k: int
    p: int
    n_clusters: int
    beta: np.ndarray
    se: np.ndarray
    vb: np.ndarray
    stat: np.ndarray
    pval: np.ndarray
    ci_lb: np.ndarray
    ci_ub: np.ndarray
    sigma2: np.ndarray
    QE: float
    QE_df: int
    QE_pval: float
    QM: float
    QM_df: tuple[float, float]
    QM_pval: float
    I2: float
    I2_study: float
    I2_within: float
    ddf: float  # k - p for test="t" (metafor's dfs="residual"); inf for z
    iterations: int
    converged: bool
    loglik: float
    yi: np.ndarray = field(repr=False)
    vi: np.ndarray = field(repr=False)
    X: np.ndarray = field(repr=False)
    clusters: Clusters = field(repr=False)

    @property
    def estimate(self) -> float:
        return float(self.beta[0])

    @property
    def sigma2_study(self) -> float:
        return float(self.sigma2[0])

    @property
    def sigma2_within(self) -> float:
        return float(self.sigma2[1])

    @property
    def crit(self) -> float:
        return critical_value(self.level, self.ddf)

    def predict(self, x_new=None) -> Prediction:
        r"""Predicted effect with confidence and prediction interval, as ``metafor::predict.rma``.

        .. math:: \hat\mu \pm c\,SE, \qquad \hat\mu \pm c\sqrt{SE^2 + \sigma^2_{study} + \sigma^2_{within}}

        with c the normal quantile for ``z`` and the t quantile with k - p df for ``t`` (the
        model's residual df; ``predict.rma`` uses the same critical value for both intervals).
        """
        x = np.eye(self.p)[0] if x_new is None else np.asarray(x_new, dtype=float)
        pred = float(x @ self.beta)
        se = float(np.sqrt(x @ self.vb @ x))
        crit = self.crit
        pi_se = np.sqrt(se**2 + float(np.sum(self.sigma2)))
        return Prediction(pred, se, pred - crit * se, pred + crit * se, pred - crit * pi_se, pred + crit * pi_se)


def _validate(yi, vi, cluster, X):
    yi = np.asarray(yi, dtype=float).ravel()
    vi = np.asarray(vi, dtype=float).ravel()
    if yi.size != vi.size:
        raise ValueError(f"yi and vi have different lengths ({yi.size} and {vi.size})")
    n_cluster = len(cluster)
    if n_cluster != yi.size:
        raise ValueError(f"cluster has length {n_cluster} but there are {yi.size} effect sizes")
    if not (np.all(np.isfinite(yi)) and np.all(np.isfinite(vi))):
        raise ValueError("yi and vi must be finite")
    if np.any(vi <= 0):
        i = int(np.flatnonzero(vi <= 0)[0])
        raise ValueError(f"sampling variances vi must be > 0 (vi[{i}] = {float(vi[i])!r})")
    if X is None:
        X = np.ones((yi.size, 1))
    else:
        X = np.asarray(X, dtype=float)
        X = X[:, None] if X.ndim == 1 else X
        if X.shape[0] != yi.size:
            raise ValueError(f"X has {X.shape[0]} rows but there are {yi.size} effect sizes")
        if not np.all(np.isfinite(X)):
            raise ValueError("X must be finite")
        if np.linalg.matrix_rank(X) < X.shape[1]:
            raise ValueError("the moderators are collinear: the design matrix is not of full column rank")
    groups = group_clusters(cluster)
    if groups.n < 2:
        raise ValueError(f"a three-level model needs at least 2 clusters (studies); got {groups.n}")
    if yi.size <= X.shape[1]:
        raise ValueError(f"k = {yi.size} effect sizes cannot estimate {X.shape[1]} coefficients and 2 variances")
    return yi, vi, X, groups


def moderator_columns(X: np.ndarray) -> np.ndarray:
    """metafor's default ``btt``: every coefficient except an intercept in the first column."""
    p = X.shape[1]
    return np.arange(1, p) if p > 1 and np.allclose(X[:, 0], 1.0) else np.arange(p)


def solve_reml(model: ThreeLevelREML, groups: Clusters, fixed: tuple, what: str, tied_note: str,
                advice: str = "", stacklevel: int = 2) -> _Optimum:
    """Maximise the REML likelihood of ``model`` and insist on convergence.

    When every cluster holds one effect (and no component is fixed) the two variances are not
    separately identified: their sum is estimated and split equally, with a warning that starts with
    ``tied_note``.  A failed search raises :class:`ConvergenceError` naming ``what``.
    """
    tied = bool(np.all(groups.sizes == 1)) and fixed == (None, None)
    if tied:
        warnings.warn(
            f"{tied_note}: sigma2_study and sigma2_within are not separately identified; their sum is "
            "estimated (rma.uni REML tau^2) and split equally",
            stacklevel=stacklevel + 1,
        )
    opt = _maximise_reml(model, tied, fixed)
    if not opt.converged:
        raise ConvergenceError(
            f"{what} did not converge in {opt.iterations} iterations "
            f"(last sigma2 = {opt.evaluation.theta.tolist()}){advice}"
        )
    return opt


def three_level(yi, vi, cluster, X=None, test: str = "z", level: float = 0.95, sigma2=(None, None)) -> MultilevelFit:
    r"""Fit the three-level random-effects model by REML, as ``metafor::rma.mv``.

    Equivalent R call: ``rma.mv(yi, vi, mods = X, random = ~ 1 | cluster/effect, test = test)``
    (each row its own effect).  Tests: ``z`` (normal) and ``t`` (t with k - p df, metafor's
    default ``dfs = "residual"``).  :math:`Q_E` uses :math:`W = \operatorname{diag}(1/v_i)` as in
    ``rma.mv``.  Multilevel :math:`I^2` (Cheung 2014, eqs. 16-17; Nakagawa & Santos 2012,
    *Evol Ecol* 26, 1253-1274) with the typical within-study variance of Higgins & Thompson (2002):

    .. math::

        I^2_l = 100\,\frac{\sigma^2_l}{\sigma^2_{study} + \sigma^2_{within} + (k-p)/\operatorname{tr}P},
        \quad P = W - WX(X'WX)^{-1}X'W,\; W = \operatorname{diag}(1/v_i)

    and ``I2`` is their sum.  When every cluster holds a single effect the two variances are not
    separately identified; the model then equals ``rma.uni`` REML with
    :math:`\tau^2 = \sigma^2_{study} + \sigma^2_{within}`, the sum is estimated and split equally
    (the split metafor's optimiser reaches from its symmetric start) and a warning is issued.

    Parameters
    ----------
    yi, vi : array_like
        Effect sizes and sampling variances (> 0).
    cluster : array_like
        Study identifier per effect (any labels); at least two distinct values.
    X : array_like, optional
        Design matrix including the intercept column; intercept only when omitted.
    test : {"z", "t"}
    level : float
        Confidence level of the intervals.
    sigma2 : pair of float or None
        ``(sigma2_study, sigma2_within)``; a number fixes that component at the value (>= 0)
        instead of estimating it, as metafor's ``rma.mv(sigma2 = c(NA, 0))``.

    Raises
    ------
    ConvergenceError
        When the REML maximisation does not converge (never returns an unconverged value).
    """
    test = test.lower()
    if test not in TESTS:
        raise ValueError(f"unknown test {test!r}; expected one of {', '.join(TESTS)}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1); got {level!r}")
    yi, vi, X, groups = _validate(yi, vi, cluster, X)
    k, p = X.shape
    model = ThreeLevelREML(yi, vi, X, groups)
    fixed = tuple(None if s is None or (isinstance(s, float) and np.isnan(s)) else float(s) for s in sigma2)
    if len(fixed) != 2 or any(f is not None and not (np.isfinite(f) and f >= 0) for f in fixed):
        raise ValueError(f"sigma2 must be a pair of None or values >= 0; got {sigma2!r}")
    opt = solve_reml(
        model, groups, fixed, what="REML estimation of the three-level model",
        tied_note="every cluster holds a single effect",
        advice="; check for extreme sampling variances or clusters that a moderator separates perfectly",
        stacklevel=3,
    )  # fmt: skip
    ev = opt.evaluation
    sigma2 = ev.theta.copy()
    beta, vb = ev.beta, ev.vb
    se = np.sqrt(np.diag(vb))
    stat = beta / se
    dfr = k - p
    ddf = float(dfr) if test == "t" else np.inf
    pval = p_value(stat, ddf)
    crit = critical_value(level, ddf)
    btt = moderator_columns(X)
    omnibus = wald_test(beta[btt], vb[np.ix_(btt, btt)], ddf)
    QM, QM_df, QM_pval = omnibus.QM, omnibus.QM_df, omnibus.QM_pval

    w0 = 1.0 / vi
    fe = wls(yi, X, w0)
    QE = max(0.0, fe.rss)
    vt = dfr / trace_p(X, w0, fe.A)
    total = float(np.sum(sigma2)) + vt
    return MultilevelFit(
        test=test,
        level=level,
        k=k,
        p=p,
        n_clusters=groups.n,
        beta=beta,
        se=se,
        vb=vb,
        stat=stat,
        pval=np.asarray(pval, dtype=float),
        ci_lb=beta - crit * se,
        ci_ub=beta + crit * se,
        sigma2=sigma2,
        QE=QE,
        QE_df=dfr,
        QE_pval=float(stats.chi2.sf(QE, dfr)),
        QM=QM,
        QM_df=QM_df,
        QM_pval=QM_pval,
        I2=100.0 * float(np.sum(sigma2)) / total,
        I2_study=100.0 * float(sigma2[0]) / total,
        I2_within=100.0 * float(sigma2[1]) / total,
        ddf=ddf,
        iterations=opt.iterations,
        converged=opt.converged,
        loglik=ev.loglik,
        yi=yi,
        vi=vi,
        X=X,
        clusters=groups,
    )


def reml_loglik(fit_or_data, sigma2) -> float:
    """Restricted log-likelihood of a three-level model at ``sigma2 = (study, within)``.

    ``fit_or_data`` is a :class:`MultilevelFit` or a tuple ``(yi, vi, cluster, X)``.  Computed in
    O(k) (see :meth:`ThreeLevelREML.evaluate`); metafor's ``logLik`` of a REML ``rma.mv`` fit.
    """
    if isinstance(fit_or_data, MultilevelFit):
        model = ThreeLevelREML(fit_or_data.yi, fit_or_data.vi, fit_or_data.X, fit_or_data.clusters)
    else:
        yi, vi, cluster, X = fit_or_data
        model = ThreeLevelREML(*_validate(yi, vi, cluster, X))
    return model.evaluate(np.asarray(sigma2, dtype=float)).loglik
