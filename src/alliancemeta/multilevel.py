r"""Three-level meta-analysis (effects nested in studies) with cluster-robust CR2 inference.

The model is metafor's ``rma.mv(yi, vi, mods, random = ~ 1 | study/effect)``:

.. math::

    y_{ij} = x_{ij}'\beta + u_j + w_{ij} + \varepsilon_{ij}, \quad
    u_j \sim N(0, \sigma^2_{study}),\; w_{ij} \sim N(0, \sigma^2_{within}),\;
    \varepsilon_{ij} \sim N(0, v_{ij})

for effect i of study j (Konstantopoulos 2011, *Res Synth Methods* 2, 61-76; Cheung 2014,
*Psychol Methods* 19, 211-229).  The marginal covariance is block diagonal by study with blocks
:math:`V_j = D_j + \sigma^2_{study} 11'`, :math:`D_j = \operatorname{diag}(v_{ij} + \sigma^2_{within})`,
so with :math:`a = 1/\operatorname{diag}(D_j)`, :math:`S_j = \sum_i a_{ij}` and
:math:`\gamma_j = \sigma^2_{study} / (1 + \sigma^2_{study} S_j)` (Sherman-Morrison)

.. math::

    V_j^{-1} = \operatorname{diag}(a) - \gamma_j a a', \qquad
    \log|V_j| = \sum_i \log(v_{ij} + \sigma^2_{within}) + \log(1 + \sigma^2_{study} S_j).

Every quantity of the REML fit (likelihood, score, expected and observed information) reduces to
sums over effects and over studies, so a fit costs O(k p^2) per iteration and no k x k matrix is
formed.  The variance components are estimated by projected Newton steps on the restricted
log-likelihood (Fisher scoring when the observed information is not positive definite), which
finds boundary estimates at exactly 0.  Cluster-robust inference follows the CR2 bias-reduced
linearisation with Satterthwaite degrees of freedom (Bell & McCaffrey 2002, *Surv Methodol* 28,
169-181; Tipton 2015, *Psychol Methods* 20, 375-393; Pustejovsky & Tipton 2018, *J Bus Econ Stat*
36, 672-683), as ``metafor::robust(fit, cluster, clubSandwich = TRUE)`` computes it.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import pandas as pd
from scipy import linalg, stats

from alliancemeta.meta import ConvergenceError, Prediction, _trace_P, _wls

TESTS = ("z", "t")
TABLE_TESTS = ("z", "t", "cr2")
MULTILEVEL_COLUMNS = (
    "test", "k", "n_studies", "estimate", "se", "stat", "pval", "ci_lb", "ci_ub", "pi_lb", "pi_ub",
    "sigma2_study", "sigma2_within", "r", "r_ci_lb", "r_ci_ub",
)  # fmt: skip

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
#: clubSandwich's ``matrix_power`` treats eigenvalues <= 1e-12 as zero when it forms the inverse
#: square roots of the CR2 adjustment (and of the HTZ Omega matrix); the same cut-off keeps the
#: results identical for clusters whose adjustment matrix is singular.
CR2_EIGEN_TOL = 1e-12


# --------------------------------------------------------------------------------------------------
# clusters
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Clusters:
    """Rows grouped by cluster: ``order`` sorts the rows so that every cluster is contiguous."""

    labels: np.ndarray  # cluster label per code, in order of first appearance
    codes: np.ndarray  # code (0..J-1) per row, original row order
    order: np.ndarray  # permutation of the rows that sorts them by code (stable)
    sizes: np.ndarray  # rows per cluster
    starts: np.ndarray  # first sorted row of each cluster

    @property
    def n(self) -> int:
        return int(self.sizes.size)

    def sums(self, values: np.ndarray) -> np.ndarray:
        """Per-cluster sums of ``values`` given in sorted row order (1-D or 2-D along axis 0)."""
        return np.add.reduceat(values, self.starts, axis=0)

    def spread(self, per_cluster: np.ndarray) -> np.ndarray:
        """Repeat per-cluster values over the cluster's (sorted) rows."""
        return np.repeat(per_cluster, self.sizes, axis=0)


def group_clusters(cluster) -> Clusters:
    """Factorise a cluster variable (labels of any hashable type); missing labels are an error."""
    series = pd.Series(np.asarray(cluster, dtype=object) if not isinstance(cluster, pd.Series) else cluster)
    if series.isna().any():
        raise ValueError(f"cluster has missing values (first at position {int(np.flatnonzero(series.isna())[0])})")
    codes, labels = pd.factorize(series, sort=False)
    codes = np.asarray(codes, dtype=np.intp)
    order = np.argsort(codes, kind="stable")
    sizes = np.bincount(codes, minlength=len(labels))
    starts = np.concatenate(([0], np.cumsum(sizes)[:-1]))
    return Clusters(np.asarray(labels, dtype=object), codes, order, sizes, starts)


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


class _ThreeLevel:
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
        fe = _wls(self.y, self.X, 1.0 / self.v)
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


def _maximise_reml(model: _ThreeLevel, tied: bool, fixed=(None, None)) -> _Optimum:
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
        q = 1.0 - (1.0 - self.level) / 2.0
        if np.isfinite(self.ddf):
            return float(stats.t.ppf(q, self.ddf)) if self.ddf > 0 else np.nan
        return float(stats.norm.ppf(q))

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


def _moderator_columns(X: np.ndarray) -> np.ndarray:
    """metafor's default ``btt``: every coefficient except an intercept in the first column."""
    p = X.shape[1]
    return np.arange(1, p) if p > 1 and np.allclose(X[:, 0], 1.0) else np.arange(p)


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
    model = _ThreeLevel(yi, vi, X, groups)
    fixed = tuple(None if s is None or (isinstance(s, float) and np.isnan(s)) else float(s) for s in sigma2)
    if len(fixed) != 2 or any(f is not None and not (np.isfinite(f) and f >= 0) for f in fixed):
        raise ValueError(f"sigma2 must be a pair of None or values >= 0; got {sigma2!r}")
    tied = bool(np.all(groups.sizes == 1)) and fixed == (None, None)
    if tied:
        warnings.warn(
            "every cluster holds a single effect: sigma2_study and sigma2_within are not separately "
            "identified; their sum is estimated (rma.uni REML tau^2) and split equally",
            stacklevel=2,
        )
    opt = _maximise_reml(model, tied, fixed)
    if not opt.converged:
        raise ConvergenceError(
            f"REML estimation of the three-level model did not converge in {opt.iterations} iterations "
            f"(last sigma2 = {opt.evaluation.theta.tolist()}); check for extreme sampling variances or "
            "clusters that a moderator separates perfectly"
        )
    ev = opt.evaluation
    sigma2 = ev.theta.copy()
    beta, vb = ev.beta, ev.vb
    se = np.sqrt(np.diag(vb))
    stat = beta / se
    q = 1.0 - (1.0 - level) / 2.0
    dfr = k - p
    btt = _moderator_columns(X)
    m = btt.size
    QM = float(beta[btt] @ np.linalg.solve(vb[np.ix_(btt, btt)], beta[btt]))
    if test == "t":
        ddf = float(dfr)
        pval = 2.0 * stats.t.sf(np.abs(stat), ddf)
        crit = stats.t.ppf(q, ddf)
        QM /= m
        QM_df = (float(m), ddf)
        QM_pval = float(stats.f.sf(QM, m, ddf))
    else:
        ddf = np.inf
        pval = 2.0 * stats.norm.sf(np.abs(stat))
        crit = stats.norm.ppf(q)
        QM_df = (float(m), np.inf)
        QM_pval = float(stats.chi2.sf(QM, m))

    w0 = 1.0 / vi
    fe = _wls(yi, X, w0)
    QE = max(0.0, fe.rss)
    vt = dfr / _trace_P(X, w0, fe.A)
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
    O(k) (see :meth:`_ThreeLevel.evaluate`); metafor's ``logLik`` of a REML ``rma.mv`` fit.
    """
    if isinstance(fit_or_data, MultilevelFit):
        model = _ThreeLevel(fit_or_data.yi, fit_or_data.vi, fit_or_data.X, fit_or_data.clusters)
    else:
        yi, vi, cluster, X = fit_or_data
        model = _ThreeLevel(*_validate(yi, vi, cluster, X))
    return model.evaluate(np.asarray(sigma2, dtype=float)).loglik


# --------------------------------------------------------------------------------------------------
# cluster-robust CR2 inference
# --------------------------------------------------------------------------------------------------


def _inv_sqrt_psd(G: np.ndarray) -> np.ndarray:
    """Symmetric inverse square root of a stack of symmetric matrices (eigenvalues <= tol dropped)."""
    vals, vecs = np.linalg.eigh(G)
    keep = vals > CR2_EIGEN_TOL
    inv = np.where(keep, 1.0 / np.sqrt(np.where(keep, vals, 1.0)), 0.0)
    return (vecs * inv[..., None, :]) @ np.swapaxes(vecs, -1, -2)


@dataclass(frozen=True)
class RobustResult:
    """CR2 cluster-robust inference for a :class:`MultilevelFit` (``robust(..., clubSandwich=TRUE)``).

    ``df`` are the Satterthwaite degrees of freedom per coefficient; ``QM`` is the HTZ Wald test
    of the moderators (the squared t statistic of the intercept for intercept-only models).
    """

    level: float
    n_clusters: int
    beta: np.ndarray
    se: np.ndarray
    vb: np.ndarray
    stat: np.ndarray
    df: np.ndarray
    pval: np.ndarray
    ci_lb: np.ndarray
    ci_ub: np.ndarray
    QM: float
    QM_df: tuple[float, float]
    QM_pval: float
    sigma2: np.ndarray
    K: np.ndarray = field(repr=False)  # per cluster M E_j Theta_j E_j' M, (J, p, p)
    H: np.ndarray = field(repr=False)  # per cluster M E_j X_j L, L L' = M, (J, p, p)

    @property
    def estimate(self) -> float:
        return float(self.beta[0])

    def satterthwaite_df(self, contrast) -> float:
        r"""Satterthwaite df of the CR2 variance of :math:`c'\hat\beta` (Bell & McCaffrey 2002).

        With :math:`g_j = c'K_jc` and :math:`h_j = H_j'c`, the matrix of clubSandwich's
        ``get_P_array`` is :math:`P = \operatorname{diag}(g) - [h_j'h_l]_{jl}` and
        :math:`\nu = (\operatorname{tr}P)^2 / \lVert P\rVert_F^2`, evaluated without forming the
        J x J matrix: :math:`\lVert P\rVert_F^2 = \sum_j g_j^2 - 2\sum_j g_j h_j'h_j +
        \lVert \sum_j h_jh_j'\rVert_F^2`.
        """
        c = np.asarray(contrast, dtype=float)
        g = np.einsum("i,jik,k->j", c, self.K, c)
        h = np.einsum("i,jik->jk", c, self.H)
        hh = np.einsum("jk,jk->j", h, h)
        S = h.T @ h
        trace = g.sum() - hh.sum()
        frob2 = float(g @ g - 2.0 * (g @ hh) + np.sum(S * S))
        return float(trace**2 / frob2)

    def wald_test(self, C) -> tuple[float, float, float, float]:
        r"""HTZ Wald test of :math:`C\beta = 0` (Pustejovsky & Tipton 2018, section 3.2).

        Returns ``(F, q, df_denom, pval)`` with :math:`F = \delta\,Q/q`,
        :math:`\delta = (\nu - q + 1)/\nu`, :math:`Q = (C\hat\beta)'(CV^{CR2}C')^{-1}C\hat\beta` and
        :math:`\nu = q(q+1)/\sum_{s,t}\operatorname{Var}_{st}`, as clubSandwich's ``Wald_test(test="HTZ")``.
        """
        C = np.atleast_2d(np.asarray(C, dtype=float))
        q = C.shape[0]
        Kc = C @ self.K @ C.T  # (J, q, q)
        Hc = C @ self.H  # (J, q, u)
        omega = Kc.sum(axis=0) - np.einsum("jau,jbu->ab", Hc, Hc)
        T = _inv_sqrt_psd(omega)
        Kt = T @ Kc @ T  # (J, q, q)
        Ht = T @ Hc

        def inner(x, alpha, beta_, y, gam, delta):
            # <diag(x) - [alpha_j'beta_l], diag(y) - [gam_j'delta_l]>_F over the J x J cluster matrices
            return float(
                x @ y
                - x @ np.einsum("ju,ju->j", gam, delta)
                - y @ np.einsum("ju,ju->j", alpha, beta_)
                + np.sum((gam.T @ alpha) * (beta_.T @ delta).T)
            )

        total = 0.0
        for s in range(q):
            for t in range(q):
                hs, ht = Ht[:, s, :], Ht[:, t, :]
                total += inner(Kt[:, s, t], hs, ht, Kt[:, t, s], ht, hs)
                total += inner(Kt[:, s, s], hs, hs, Kt[:, t, t], ht, ht)
        nu = q * (q + 1) / total
        b = C @ self.beta
        Q = float(b @ np.linalg.solve(C @ self.vb @ C.T, b))
        delta = max((nu - q + 1.0) / nu, 0.0)
        df = nu - q + 1.0
        F = delta * Q / q
        pval = float(stats.f.sf(F, q, df)) if df > 0 else np.nan
        return F, float(q), float(df), pval

    def predict(self, x_new=None) -> Prediction:
        r"""Prediction with CR2 standard error and Satterthwaite df, as ``predict`` on a robust fit.

        metafor's ``predict.rma`` for a ``robust.rma`` object from clubSandwich takes the estimate,
        SE and df of ``clubSandwich::linear_contrast`` and uses the same t quantile for the
        prediction interval: :math:`\hat\mu \pm t_{\nu}\sqrt{SE_{CR2}^2 + \sum\sigma^2}`.
        """
        p = self.beta.size
        x = np.eye(p)[0] if x_new is None else np.asarray(x_new, dtype=float)
        pred = float(x @ self.beta)
        se = float(np.sqrt(x @ self.vb @ x))
        df = self.satterthwaite_df(x)
        crit = float(stats.t.ppf(1.0 - (1.0 - self.level) / 2.0, df)) if df > 0 else np.nan
        pi_se = np.sqrt(se**2 + float(np.sum(self.sigma2)))
        return Prediction(pred, se, pred - crit * se, pred + crit * se, pred - crit * pi_se, pred + crit * pi_se)


def robust_cr2(fit: MultilevelFit) -> RobustResult:
    r"""CR2 cluster-robust variance with Satterthwaite df, as ``robust(fit, cluster, clubSandwich=TRUE)``.

    The clusters are the model's studies; the working weights are the model's
    :math:`W_j = V_j^{-1}` and the CR2 target is the fitted :math:`\Theta_j = V_j` (clubSandwich's
    ``vcovCR.rma.mv`` with ``inverse_var = TRUE``).  With :math:`M = (X'WX)^{-1}`, the upper
    Cholesky factor :math:`R_j` of :math:`\Theta_j` (:math:`\Theta_j = R_j'R_j`) and residuals
    :math:`e_j = y_j - X_j\hat\beta`:

    .. math::

        A_j = R_j' \left[R_j(\Theta_j - X_jMX_j')R_j'\right]^{-1/2} R_j, \qquad
        V^{CR2} = M\Big[\sum_j X_j'W_jA_je_je_j'A_jW_jX_j\Big]M

    (Bell & McCaffrey 2002; Pustejovsky & Tipton 2018, eq. 7).  Per-coefficient Satterthwaite df
    follow :meth:`RobustResult.satterthwaite_df` with :math:`K_j = ME_j\Theta_jE_j'M`,
    :math:`H_j = ME_jX_jL`, :math:`E_j = X_j'W_jA_j`, :math:`LL' = M`.  Clusters are processed in
    batches of equal size (stacked small matrices), so the cost is O(sum of n_j^3).
    """
    g = fit.clusters
    o = g.order
    X = fit.X[o]
    v = fit.vi[o]
    resid = (fit.yi - fit.X @ fit.beta)[o]
    s_s, s_w = float(fit.sigma2[0]), float(fit.sigma2[1])
    M = fit.vb
    p = fit.p
    L = np.linalg.cholesky(M)
    J = g.n
    K = np.empty((J, p, p))
    Hm = np.empty((J, p, p))
    comps = np.empty((J, p))
    for m in np.unique(g.sizes):
        cl = np.flatnonzero(g.sizes == m)
        rows = g.starts[cl][:, None] + np.arange(m)
        Xb = X[rows]  # (nc, m, p)
        d = v[rows] + s_w
        a = 1.0 / d
        theta = np.full((cl.size, m, m), s_s)
        diag = np.arange(m)
        theta[:, diag, diag] += d
        gamma = s_s / (1.0 + s_s * a.sum(axis=1))
        W = -gamma[:, None, None] * a[:, :, None] * a[:, None, :]
        W[:, diag, diag] += a
        Lt = np.linalg.cholesky(theta)  # lower; R = Lt'
        Bm = theta - (Xb @ M) @ np.swapaxes(Xb, 1, 2)
        G = np.swapaxes(Lt, 1, 2) @ Bm @ Lt
        G = 0.5 * (G + np.swapaxes(G, 1, 2))
        A = Lt @ _inv_sqrt_psd(G) @ np.swapaxes(Lt, 1, 2)
        E = np.swapaxes(Xb, 1, 2) @ W @ A  # (nc, p, m)
        comps[cl] = np.einsum("jpm,jm->jp", E, resid[rows])
        ME = M @ E
        K[cl] = ME @ theta @ np.swapaxes(ME, 1, 2)
        Hm[cl] = ME @ Xb @ L
    vb = M @ (comps.T @ comps) @ M
    vb = 0.5 * (vb + vb.T)
    se = np.sqrt(np.diag(vb))
    stat = fit.beta / se
    partial = RobustResult(
        fit.level, J, fit.beta, se, vb, stat, np.full(p, np.nan), np.full(p, np.nan),
        np.full(p, np.nan), np.full(p, np.nan), np.nan, (np.nan, np.nan), np.nan, fit.sigma2, K, Hm,
    )  # fmt: skip
    df = np.array([partial.satterthwaite_df(np.eye(p)[i]) for i in range(p)])
    pval = 2.0 * stats.t.sf(np.abs(stat), df)
    crit = stats.t.ppf(1.0 - (1.0 - fit.level) / 2.0, df)
    btt = _moderator_columns(fit.X)
    if p == 1 and btt.size == 1:
        QM, QM_df, QM_pval = float(stat[0] ** 2), (1.0, float(df[0])), float(pval[0])
    else:
        F, q, dfd, QM_pval = partial.wald_test(np.eye(p)[btt])
        QM, QM_df = F, (q, max(0.0, dfd))
    return RobustResult(
        fit.level, J, fit.beta, se, vb, stat, df, pval, fit.beta - crit * se, fit.beta + crit * se,
        QM, QM_df, QM_pval, fit.sigma2, K, Hm,
    )  # fmt: skip


# --------------------------------------------------------------------------------------------------
# aggregation of dependent effects
# --------------------------------------------------------------------------------------------------


class Aggregated(NamedTuple):
    """One effect per cluster, in order of the clusters' first appearance."""

    yi: np.ndarray
    vi: np.ndarray


def aggregate_within_studies(yi, vi, cluster, rho) -> Aggregated:
    r"""Combine dependent effects within each study under a constant sampling correlation ``rho``.

    As ``metafor::aggregate(escalc, cluster, rho, struct = "CS")`` (weighted, its default): the
    within-study covariance is compound symmetric, :math:`V_j = S_j[(1-\rho)I + \rho 11']S_j` with
    :math:`S_j = \operatorname{diag}(\sqrt{v_{ij}})`, and the effects are combined by GLS

    .. math::

        \bar y_j = \frac{1'V_j^{-1}y_j}{1'V_j^{-1}1}, \qquad \bar v_j = \frac{1}{1'V_j^{-1}1},

    evaluated in closed form with :math:`s_i = v_i^{-1/2}` and :math:`c = \rho/(1 - \rho + m_j\rho)`:
    :math:`1'V_j^{-1}1 = (\sum s_i^2 - c(\sum s_i)^2)/(1-\rho)`,
    :math:`1'V_j^{-1}y = (\sum s_i^2y_i - c\sum s_i\sum s_iy_i)/(1-\rho)`.  With :math:`\rho = 0`
    this is the inverse-variance mean; Borenstein et al. (2009), *Introduction to Meta-Analysis*,
    ch. 24, give the equal-weight composite for the same covariance.  ``rho`` is a scalar or one
    value per cluster (in order of first appearance); it must keep every :math:`V_j` positive definite.
    """
    yi = np.asarray(yi, dtype=float).ravel()
    vi = np.asarray(vi, dtype=float).ravel()
    if yi.size != vi.size or len(cluster) != yi.size:
        raise ValueError(f"yi, vi and cluster must have the same length ({yi.size}, {vi.size}, {len(cluster)})")
    if not (np.all(np.isfinite(yi)) and np.all(np.isfinite(vi))):
        raise ValueError("yi and vi must be finite")
    if np.any(vi <= 0):
        raise ValueError("sampling variances vi must be > 0")
    g = group_clusters(cluster)
    rho = np.broadcast_to(np.asarray(rho, dtype=float), (g.n,)).copy()
    if np.any(~np.isfinite(rho)) or np.any(np.abs(rho) > 1):
        raise ValueError("rho must lie in [-1, 1]")
    m = g.sizes.astype(float)
    # eigenvalues of the correlation matrix: 1 - rho (m - 1 times) and 1 + (m - 1) rho
    eig_min = np.where(m > 1, np.minimum(1.0 - rho, 1.0 + (m - 1.0) * rho), 1.0)
    bad = np.flatnonzero(eig_min <= np.finfo(float).eps)
    if bad.size:
        j = bad[0]
        raise ValueError(
            f"rho = {rho[j]} makes the covariance matrix of cluster {g.labels[j]!r} ({g.sizes[j]} effects) "
            "not positive definite"
        )
    o = g.order
    s = 1.0 / np.sqrt(vi[o])
    y = yi[o]
    s1, s2 = g.sums(s), g.sums(s * s)
    sy, s2y = g.sums(s * y), g.sums(s * s * y)
    single = m == 1
    c = np.where(single, 0.0, rho / np.where(single, 1.0, 1.0 - rho + m * rho))
    one_w_one = s2 - c * s1 * s1
    y_agg = np.where(single, y[g.starts], (s2y - c * s1 * sy) / one_w_one)
    v_agg = np.where(single, vi[o][g.starts], (1.0 - rho) / np.where(single, 1.0, one_w_one))
    return Aggregated(y_agg, v_agg)


# --------------------------------------------------------------------------------------------------
# the multilevel table of the pipeline (SPEC §5)
# --------------------------------------------------------------------------------------------------


def multilevel_table(frame: pd.DataFrame, level: float = 0.95, tests=TABLE_TESTS) -> pd.DataFrame:
    """One row per test of the intercept-only three-level model: ``tables/multilevel.csv``.

    ``frame`` is a processed study table with columns ``study_id`` (the cluster), ``yi`` and ``vi``
    (Fisher z).  Tests: ``z`` and ``t`` (model-based, :func:`three_level`) and ``cr2``
    (:func:`robust_cr2` with Satterthwaite df; its prediction interval uses the CR2 standard
    error and the Satterthwaite t quantile, as ``predict`` on a ``robust.rma`` object does).
    ``r`` columns are the back-transformed (tanh) estimate and confidence bounds.
    """
    missing = [c for c in ("study_id", "yi", "vi") if c not in frame.columns]
    if missing:
        raise ValueError(f"the study table lacks column(s) {', '.join(missing)} needed by the three-level model")
    unknown = [t for t in tests if t not in TABLE_TESTS]
    if unknown:
        raise ValueError(f"unknown multilevel test(s) {', '.join(map(repr, unknown))}; expected {TABLE_TESTS}")
    yi, vi, cluster = frame["yi"].to_numpy(float), frame["vi"].to_numpy(float), frame["study_id"].to_numpy()
    fits: dict[str, MultilevelFit] = {}
    rows = []
    for test in tests:
        base = "z" if test == "cr2" else test
        if base not in fits:
            fits[base] = three_level(yi, vi, cluster, test=base, level=level)
        fit = fits[base]
        if test == "cr2":
            rob = robust_cr2(fit)
            pred = rob.predict()
            stat, pval = float(rob.stat[0]), float(rob.pval[0])
        else:
            pred = fit.predict()
            stat, pval = float(fit.stat[0]), float(fit.pval[0])
        rows.append(
            {
                "test": test,
                "k": fit.k,
                "n_studies": fit.n_clusters,
                "estimate": pred.pred,
                "se": pred.se,
                "stat": stat,
                "pval": pval,
                "ci_lb": pred.ci_lb,
                "ci_ub": pred.ci_ub,
                "pi_lb": pred.pi_lb,
                "pi_ub": pred.pi_ub,
                "sigma2_study": fit.sigma2_study,
                "sigma2_within": fit.sigma2_within,
                "r": float(np.tanh(pred.pred)),
                "r_ci_lb": float(np.tanh(pred.ci_lb)),
                "r_ci_ub": float(np.tanh(pred.ci_ub)),
            }
        )
    return pd.DataFrame(rows, columns=list(MULTILEVEL_COLUMNS))


def write_multilevel(studies, table, level: float = 0.95, tests=TABLE_TESTS) -> None:
    """Read a processed study table (``study, study_id, yi, vi, ...``) and write ``multilevel.csv``."""
    from alliancemeta.tables import write_csv

    frame = pd.read_csv(studies)
    write_csv(multilevel_table(frame, level, tests), table, MULTILEVEL_COLUMNS)


def write_aggregated_random_effects(studies, table, rho: float = 0.5, estimators=("REML",), tests=("knha",),
                                    level: float = 0.95) -> None:
    """The simpler alternative to the three-level model: aggregate within studies, then pool.

    Effects sharing a ``study_id`` are combined with :func:`aggregate_within_studies` under the
    assumed sampling correlation ``rho`` (config ``meta.aggregate_rho``), and the one-per-study effects
    go through the same random-effects table as ``random_effects.csv`` (its columns, k = studies).
    """
    from alliancemeta.meta import random_effects_table
    from alliancemeta.tables import write_csv

    frame = pd.read_csv(studies)
    agg = aggregate_within_studies(frame["yi"], frame["vi"], frame["study_id"].to_numpy(), rho)
    out = random_effects_table(agg.yi, agg.vi, estimators, tests, level)
    out["rho"] = rho
    write_csv(out, table)
