r"""The correlated-and-hierarchical-effects (CHE) working model with model-based and CR2 inference.

Pustejovsky & Tipton (2022), *Prev Sci* 23, 425-438, recommend as a default for dependent effect
sizes the CHE working model: within study j the sampling errors of different effects are assumed to
correlate at a common :math:`\rho` (metafor ``vcalc(vi, cluster = study, obs = effect, rho = rho)``),

.. math::

    \operatorname{Cov}(\varepsilon_{ij}, \varepsilon_{i'j}) = \rho\sqrt{v_{ij}v_{i'j}} \quad (i \ne i'),

and the true effects vary between studies and between effects within studies (``rma.mv(yi, V,
random = ~ 1 | study/effect)``), with CR2 cluster-robust inference guarding against a wrong
:math:`\rho` (``robust(fit, cluster = study, clubSandwich = TRUE)``).  The marginal covariance of
study j is

.. math::

    V_j = D_j + U_jCU_j', \quad D_j = \operatorname{diag}\big((1-\rho)v_{ij} + \sigma^2_{within}\big),\;
    U_j = [\,s_j,\; 1\,],\; s_{ij} = \sqrt{v_{ij}},\; C = \operatorname{diag}(\rho, \sigma^2_{study}),

diagonal plus rank 2.  With :math:`a = 1/\operatorname{diag}(D_j)`,
:math:`M_j = U_j'D_j^{-1}U_j` (2 x 2) and :math:`G_j = C(I + M_jC)^{-1}` (symmetric), the Woodbury
identity and the matrix determinant lemma give

.. math::

    V_j^{-1} = D_j^{-1} - D_j^{-1}U_jG_jU_j'D_j^{-1}, \qquad
    \log|V_j| = \sum_i \log d_{ij} + \log|I + M_jC|,

so the restricted likelihood, its score and its expected and observed information reduce to sums
over effects and studies (O(k) per evaluation, no k x k matrix), exactly as for the three-level
model of :mod:`alliancemeta.studies.multilevel.model`, whose projected Newton optimiser is reused.
With :math:`\rho = 0` the model is the three-level model.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd
from scipy import linalg, stats

from alliancemeta.core.errors import ConvergenceError
from alliancemeta.core.inference import Prediction
from alliancemeta.studies.multilevel.clusters import Clusters
from alliancemeta.studies.multilevel.model import _Evaluation, _validate, moderator_columns, solve_reml
from alliancemeta.studies.multilevel.robust import RobustResult, _inv_sqrt_psd
from alliancemeta.studies.random_effects import wls

TESTS = ("z", "t")
TABLE_TESTS = ("z", "t", "cr2")
CHE_COLUMNS = (
    "rho", "test", "k", "n_studies", "estimate", "se", "stat", "df", "pval", "ci_lb", "ci_ub", "sigma2_study",
    "sigma2_within", "r", "r_ci_lb", "r_ci_ub",
)  # fmt: skip
#: Trailing columns after the SPEC contract: prediction interval (Fisher z), the restricted
#: log-likelihood, Newton iterations and a note for a model that could not be estimated.
CHE_EXTRA_COLUMNS = ("pi_lb", "pi_ub", "loglik", "iterations", "note")


# --------------------------------------------------------------------------------------------------
# the working sampling covariance (vcalc)
# --------------------------------------------------------------------------------------------------


def _check_rho(rho) -> float:
    rho = float(rho)
    if not (np.isfinite(rho) and 0.0 <= rho < 1.0):
        raise ValueError(f"the CHE working correlation rho must lie in [0, 1); got {rho!r}")
    return rho


def vcalc_dense(vi, cluster, rho: float) -> np.ndarray:
    r"""The k x k sampling covariance of ``metafor::vcalc(vi, cluster, obs = effect, rho = rho)``.

    :math:`V_{ii'} = v_i` for :math:`i = i'`, :math:`\rho\sqrt{v_iv_{i'}}` for two effects of one
    cluster and 0 otherwise.  Dense, for small data and for checking the O(k) algebra; the model
    itself never forms it.
    """
    vi = np.asarray(vi, dtype=float).ravel()
    rho = _check_rho(rho)
    cluster = np.asarray(cluster, dtype=object)
    same = cluster[:, None] == cluster[None, :]
    s = np.sqrt(vi)
    V = np.where(same, rho * np.outer(s, s), 0.0)
    np.fill_diagonal(V, vi)
    return V


# --------------------------------------------------------------------------------------------------
# the block operator and the restricted likelihood in O(k)
# --------------------------------------------------------------------------------------------------


class _Blocks:
    r"""The inverse of :math:`V = \oplus_j (D_j + U_jCU_j')` at one value of the variance components."""

    def __init__(self, g: Clusters, v: np.ndarray, s: np.ndarray, rho: float, s_s: float, s_w: float):
        self.g = g
        self.s = s
        d = (1.0 - rho) * v + s_w
        if np.any(d <= 0.0):
            raise FloatingPointError("a diagonal element of D is not positive")
        self.d = d
        a = 1.0 / d
        self.a = a
        m11, m12, m22 = g.sums(a * s * s), g.sums(a * s), g.sums(a)
        c1, c2 = rho, s_s
        det = (1.0 + m11 * c1) * (1.0 + m22 * c2) - m12 * m12 * c1 * c2
        if np.any(det <= 0.0):
            raise FloatingPointError("a study block of V is not positive definite")
        self.det = det
        # G = C (I + M C)^{-1}, symmetric 2 x 2 per cluster: entries g11, g12, g22
        self.g11 = c1 * (1.0 + m22 * c2) / det
        self.g12 = -c1 * c2 * m12 / det
        self.g22 = c2 * (1.0 + m11 * c1) / det
        self.m12, self.m22 = m12, m22

    @property
    def logdet(self) -> float:
        return float(np.sum(np.log(self.d)) + np.sum(np.log(self.det)))

    def _G(self, b1, b2):
        """G_j [b1; b2] per cluster (b arrays of shape (J,) or (J, m))."""
        if b1.ndim == 1:
            return self.g11 * b1 + self.g12 * b2, self.g12 * b1 + self.g22 * b2
        return (self.g11[:, None] * b1 + self.g12[:, None] * b2, self.g12[:, None] * b1 + self.g22[:, None] * b2)

    def solve(self, values: np.ndarray) -> np.ndarray:
        """V^{-1} @ values for a (k,) or (k, m) array in cluster-sorted order."""
        g, s = self.g, self.s
        a = self.a if values.ndim == 1 else self.a[:, None]
        sc = s if values.ndim == 1 else s[:, None]
        av = a * values
        c1, c2 = self._G(g.sums(sc * av), g.sums(av))
        return av - a * (sc * g.spread(c1) + g.spread(c2))

    def one_vinv_one(self) -> np.ndarray:
        """1'V_j^{-1}1 per cluster."""
        m12, m22 = self.m12, self.m22
        return m22 - (self.g11 * m12 * m12 + 2.0 * self.g12 * m12 * m22 + self.g22 * m22 * m22)

    def vinv_one(self) -> np.ndarray:
        """V^{-1}1 (the per-cluster column sums of V^{-1}) in sorted row order."""
        return self.solve(np.ones_like(self.a))

    def traces(self) -> tuple[float, float, float]:
        r"""tr(V^{-1}), tr(V^{-2}) and :math:`\sum_j 1'V_j^{-2}1`.

        With :math:`N_j = U_j'A^2U_j`, :math:`T_j = U_j'A^3U_j`:
        :math:`\operatorname{tr}V_j^{-1} = \sum a - \operatorname{tr}(G_jN_j)` and
        :math:`\operatorname{tr}V_j^{-2} = \sum a^2 - 2\operatorname{tr}(G_jT_j) + \operatorname{tr}(G_jN_jG_jN_j)`.
        """
        g, a, s = self.g, self.a, self.s
        a2, a3 = a * a, a * a * a
        n11, n12, n22 = g.sums(a2 * s * s), g.sums(a2 * s), g.sums(a2)
        t11, t12, t22 = g.sums(a3 * s * s), g.sums(a3 * s), g.sums(a3)
        g11, g12, g22 = self.g11, self.g12, self.g22
        tr_gn = g11 * n11 + 2.0 * g12 * n12 + g22 * n22
        tr_gt = g11 * t11 + 2.0 * g12 * t12 + g22 * t22
        # GN = [[g11 n11 + g12 n12, g11 n12 + g12 n22], [g12 n11 + g22 n12, g12 n12 + g22 n22]]
        p11 = g11 * n11 + g12 * n12
        p12 = g11 * n12 + g12 * n22
        p21 = g12 * n11 + g22 * n12
        p22 = g12 * n12 + g22 * n22
        tr_gngn = p11 * p11 + 2.0 * p12 * p21 + p22 * p22
        tr_v1 = float(a.sum() - tr_gn.sum())
        tr_v2 = float(a2.sum() - 2.0 * tr_gt.sum() + tr_gngn.sum())
        one_v2_one = float(np.sum(g.sums(self.vinv_one() ** 2)))
        return tr_v1, tr_v2, one_v2_one


class _CorrelatedHierarchical:
    """Data of a CHE model in cluster-sorted order and its O(k) REML algebra.

    Duck-typed to the three-level engine (``evaluate``, ``start``, ``v``) so that
    :func:`alliancemeta.studies.multilevel.model._maximise_reml` optimises it unchanged.
    """

    def __init__(self, yi, vi, X, groups: Clusters, rho: float):
        o = groups.order
        self.y = yi[o]
        self.v = vi[o]
        self.s = np.sqrt(self.v)
        self.X = X[o]
        self.g = groups
        self.rho = rho
        self.k, self.p = X.shape
        _sign, logdet_xtx = np.linalg.slogdet(X.T @ X)
        self.half_logdet_xtx = 0.5 * logdet_xtx
        self.const = -0.5 * (self.k - self.p) * np.log(2.0 * np.pi)

    def blocks(self, theta) -> _Blocks:
        return _Blocks(self.g, self.v, self.s, self.rho, float(theta[0]), float(theta[1]))

    def evaluate(self, theta, derivatives: bool = False) -> _Evaluation:
        r"""Restricted log-likelihood (metafor's ``REMLf = TRUE`` form) and, optionally, its derivatives.

        .. math::

            \ell_R = -\tfrac{k-p}{2}\log 2\pi + \tfrac12\log|X'X| - \tfrac12\log|V|
                     - \tfrac12\log|X'V^{-1}X| - \tfrac12 r'V^{-1}r

        Score :math:`s_r = -\tfrac12\operatorname{tr}(PV_r) + \tfrac12 y'PV_rPy`, expected information
        :math:`\tfrac12\operatorname{tr}(PV_rPV_s)` and observed information
        :math:`y'PV_rPV_sPy - \tfrac12\operatorname{tr}(PV_rPV_s)` with :math:`V_{study} = ZZ'` and
        :math:`V_{within} = I` (Harville 1977, *JASA* 72, 320-338), where
        :math:`P = V^{-1} - V^{-1}X(X'V^{-1}X)^{-1}X'V^{-1}`.  Traces of products with P split as

        .. math::

            \operatorname{tr}(PAPB) = \operatorname{tr}(V^{-1}AV^{-1}B)
                - 2\operatorname{tr}(Q\tilde X'BV^{-1}A\tilde X) + \operatorname{tr}(QC_AQC_B),

        :math:`\tilde X = V^{-1}X`, :math:`Q = (X'V^{-1}X)^{-1}`, :math:`C_A = \tilde X'A\tilde X`.
        """
        s_s, s_w = float(theta[0]), float(theta[1])
        g, X, y = self.g, self.X, self.y
        B = self.blocks(theta)
        Xt = B.solve(X)  # V^{-1} X
        F = X.T @ Xt
        F = 0.5 * (F + F.T)
        cf = linalg.cho_factor(F, lower=True)
        Q = linalg.cho_solve(cf, np.eye(self.p))
        beta = Q @ (Xt.T @ y)
        resid = y - X @ beta
        u = B.solve(resid)  # P y
        logdet_f = 2.0 * float(np.sum(np.log(np.diag(cf[0]))))
        ll = self.const + self.half_logdet_xtx - 0.5 * B.logdet - 0.5 * logdet_f - 0.5 * float(resid @ u)
        if not derivatives:
            return _Evaluation(np.array([s_s, s_w]), ll, beta, Q)

        one_v_one = B.one_vinv_one()  # 1'V_j^{-1}1
        tr_v1, tr_v2, one_v2_one = B.traces()
        xbar = g.sums(Xt)  # Z'V^{-1}X, (J, p)
        ubar = g.sums(u)  # Z'Py
        C_I = Xt.T @ Xt
        C_Z = xbar.T @ xbar
        tr_p = tr_v1 - float(np.sum(Q * C_I))
        tr_pz = float(one_v_one.sum()) - float(np.sum(Q * C_Z))
        grad = np.array([-0.5 * tr_pz + 0.5 * float(ubar @ ubar), -0.5 * tr_p + 0.5 * float(u @ u)])

        Y2 = B.solve(Xt)  # V^{-2} X
        ybar = g.sums(Y2)
        t0_ii, t0_iz, t0_zz = tr_v2, one_v2_one, float(np.sum(one_v_one**2))
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

        # y'P V_r P V_s P y = (V_r u)' P (V_s u), l'Pr = l'V^{-1}r - (X~'l)'Q(X~'r); ZZ'u is constant
        # within clusters, so (ZZ'u)'V^{-1}(ZZ'u) = sum_j ubar_j^2 1'V_j^{-1}1
        xu = Xt.T @ u
        xz = xbar.T @ ubar
        w = B.solve(u)  # V^{-1} u
        q_ss = float(np.sum(ubar**2 * one_v_one)) - float(xz @ Q @ xz)
        q_sw = float(np.sum(ubar * g.sums(w))) - float(xu @ Q @ xz)
        q_ww = float(u @ w) - float(xu @ Q @ xu)
        observed = np.array([[q_ss, q_sw], [q_sw, q_ww]]) - fisher
        return _Evaluation(np.array([s_s, s_w]), ll, beta, Q, grad, fisher, observed)

    def start(self) -> np.ndarray:
        """The three-level engine's starting values: half each of max(0.002, var(e_FE) - 1/mean(1/v))."""
        fe = wls(self.y, self.X, 1.0 / self.v)
        total = max(0.002, float(np.var(fe.resid, ddof=1)) - 1.0 / float(np.mean(1.0 / self.v)))
        return np.array([total / 2.0, total / 2.0])


# --------------------------------------------------------------------------------------------------
# the fitted model
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CHEFit:
    """A fitted CHE model (``rma.mv(yi, vcalc(vi, study, obs, rho), random = ~ 1 | study/effect)``).

    metafor's names: ``sigma2`` is ``(sigma2_study, sigma2_within)``; ``beta``, ``se``, ``stat``,
    ``pval``, ``ci_lb``, ``ci_ub`` are per coefficient; ``QE`` uses the working sampling covariance
    (:math:`y'P_0y` with :math:`P_0` built from ``vcalc``'s V, as ``rma.mv`` computes it);
    ``ddf`` is k - p for ``test="t"`` (``dfs = "residual"``) and inf for ``z``.
    """

    rho: float
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
    ddf: float
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
        """
        x = np.eye(self.p)[0] if x_new is None else np.asarray(x_new, dtype=float)
        pred = float(x @ self.beta)
        se = float(np.sqrt(x @ self.vb @ x))
        crit = self.crit
        pi_se = np.sqrt(se**2 + float(np.sum(self.sigma2)))
        return Prediction(pred, se, pred - crit * se, pred + crit * se, pred - crit * pi_se, pred + crit * pi_se)


def che_fit(yi, vi, cluster, rho: float, X=None, test: str = "z", level: float = 0.95, sigma2=(None, None)) -> CHEFit:
    r"""Fit the CHE working model by REML, as ``rma.mv`` with a ``vcalc`` covariance matrix.

    Equivalent R (Pustejovsky & Tipton 2022, section 4)::

        V <- vcalc(vi, cluster = study, obs = effect, rho = rho)
        rma.mv(yi, V, mods = X, random = ~ 1 | study/effect, method = "REML", test = test)

    with every row its own effect (``obs``).  The restricted likelihood is maximised by the projected
    Newton iteration of the three-level engine (observed information, Fisher scoring when that is not
    positive definite; boundary estimates at exactly 0) to a relative step of
    :data:`~alliancemeta.studies.multilevel.model.SIGMA2_TOL`.  Fixed effects are GLS,
    :math:`\hat\beta = (X'V^{-1}X)^{-1}X'V^{-1}y`, with model-based covariance :math:`(X'V^{-1}X)^{-1}`;
    ``z`` uses the normal and ``t`` the t distribution with k - p df.

    Parameters
    ----------
    yi, vi : array_like
        Effect sizes and sampling variances (> 0).
    cluster : array_like
        Study identifier per effect; at least two studies.
    rho : float
        Working correlation of the sampling errors of two effects of one study, in [0, 1).
    X : array_like, optional
        Design matrix including the intercept column; intercept only when omitted.
    test : {"z", "t"}
    level : float
    sigma2 : pair of float or None
        ``(sigma2_study, sigma2_within)``; a number fixes that component (metafor's ``sigma2 = c(NA, 0)``).

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
    rho = _check_rho(rho)
    yi, vi, X, groups = _validate(yi, vi, cluster, X)
    k, p = X.shape
    model = _CorrelatedHierarchical(yi, vi, X, groups, rho)
    fixed = tuple(None if s is None or (isinstance(s, float) and np.isnan(s)) else float(s) for s in sigma2)
    if len(fixed) != 2 or any(f is not None and not (np.isfinite(f) and f >= 0) for f in fixed):
        raise ValueError(f"sigma2 must be a pair of None or values >= 0; got {sigma2!r}")
    opt = solve_reml(
        model, groups, fixed, what=f"REML estimation of the CHE model (rho = {rho:g})",
        tied_note=f"CHE model (rho = {rho:g}): every study holds a single effect",
        advice="; try another rho, the three-level model, or check for extreme sampling variances",
        stacklevel=3,
    )  # fmt: skip
    ev = opt.evaluation
    inference = _model_based(ev.beta, ev.vb, X, test, level)
    # QE with the working sampling covariance: y'P_0y, P_0 from V = vcalc(...) alone
    B0 = model.blocks((0.0, 0.0))
    Xt0 = B0.solve(model.X)
    beta0 = np.linalg.solve(model.X.T @ Xt0, Xt0.T @ model.y)
    r0 = model.y - model.X @ beta0
    QE = max(0.0, float(r0 @ B0.solve(r0)))
    return CHEFit(
        rho=rho, test=test, level=level, k=k, p=p, n_clusters=groups.n, beta=ev.beta, vb=ev.vb,
        sigma2=ev.theta.copy(), QE=QE, QE_df=k - p, QE_pval=float(stats.chi2.sf(QE, k - p)),
        iterations=opt.iterations, converged=opt.converged, loglik=ev.loglik, yi=yi, vi=vi, X=X, clusters=groups,
        **inference,
    )  # fmt: skip


def _model_based(beta: np.ndarray, vb: np.ndarray, X: np.ndarray, test: str, level: float) -> dict:
    """Wald z or t (k - p df) tests, intervals and the omnibus QM of a GLS fit, as ``rma.mv`` reports them."""
    k, p = X.shape
    se = np.sqrt(np.diag(vb))
    stat = beta / se
    q = 1.0 - (1.0 - level) / 2.0
    btt = moderator_columns(X)
    m = btt.size
    QM = float(beta[btt] @ np.linalg.solve(vb[np.ix_(btt, btt)], beta[btt]))
    if test == "t":
        ddf = float(k - p)
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
    return dict(
        se=se,
        stat=stat,
        pval=np.asarray(pval, dtype=float),
        ci_lb=beta - crit * se,
        ci_ub=beta + crit * se,
        QM=QM,
        QM_df=QM_df,
        QM_pval=QM_pval,
        ddf=ddf,
    )


def che_loglik(fit: CHEFit, sigma2) -> float:
    """Restricted log-likelihood of the fitted CHE model's data at ``sigma2 = (study, within)`` (O(k))."""
    model = _CorrelatedHierarchical(fit.yi, fit.vi, fit.X, fit.clusters, fit.rho)
    return model.evaluate(np.asarray(sigma2, dtype=float)).loglik


# --------------------------------------------------------------------------------------------------
# CR2 cluster-robust inference for block covariance matrices
# --------------------------------------------------------------------------------------------------


def robust_cr2_che(fit: CHEFit) -> RobustResult:
    r"""CR2 cluster-robust inference for a CHE fit, as ``robust(fit, cluster = study, clubSandwich = TRUE)``.

    clubSandwich's ``vcovCR.rma.mv`` with working weights :math:`W_j = V_j^{-1}` and target
    :math:`\Theta_j = V_j`, the fitted marginal covariance of study j (here the full CHE block,
    :math:`V_j = S_j[(1-\rho)I + \rho 11']S_j + \sigma^2_{within}I + \sigma^2_{study}11'`).  With
    :math:`M = (X'WX)^{-1}`, :math:`\Theta_j = L_jL_j'` (Cholesky) and residuals
    :math:`e_j = y_j - X_j\hat\beta`:

    .. math::

        A_j = L_j\left[L_j'(\Theta_j - X_jMX_j')L_j\right]^{-1/2}L_j', \qquad
        V^{CR2} = M\Big[\sum_j X_j'W_jA_je_je_j'A_jW_jX_j\Big]M

    (Bell & McCaffrey 2002; Pustejovsky & Tipton 2018, eq. 7), with per-coefficient Satterthwaite df and
    the HTZ Wald test of :class:`~alliancemeta.studies.multilevel.robust.RobustResult`.  This is the
    diagonal-V computation of :func:`~alliancemeta.studies.multilevel.robust.robust_cr2` with the
    sampling part of :math:`\Theta_j` replaced by the ``vcalc`` block; studies are processed in
    batches of equal size (O(sum of n_j^3)).
    """
    g = fit.clusters
    o = g.order
    X = fit.X[o]
    v = fit.vi[o]
    s = np.sqrt(v)
    resid = (fit.yi - fit.X @ fit.beta)[o]
    s_s, s_w = float(fit.sigma2[0]), float(fit.sigma2[1])
    rho = fit.rho
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
        sb = s[rows]
        diag = np.arange(m)
        theta = rho * sb[:, :, None] * sb[:, None, :] + s_s
        theta[:, diag, diag] = v[rows] + s_w + s_s
        Lt = np.linalg.cholesky(theta)
        W = np.linalg.inv(theta)
        W = 0.5 * (W + np.swapaxes(W, 1, 2))
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
    nan = np.full(p, np.nan)
    partial = RobustResult(
        fit.level, J, fit.beta, se, vb, stat, nan, nan, nan, nan, np.nan, (np.nan, np.nan), np.nan, fit.sigma2, K, Hm
    )
    df = np.array([partial.satterthwaite_df(np.eye(p)[i]) for i in range(p)])
    pval = 2.0 * stats.t.sf(np.abs(stat), df)
    crit = stats.t.ppf(1.0 - (1.0 - fit.level) / 2.0, df)
    btt = moderator_columns(fit.X)
    if p == 1 and btt.size == 1:
        QM, QM_df, QM_pval = float(stat[0] ** 2), (1.0, float(df[0])), float(pval[0])
    else:
        F, q, dfd, QM_pval = partial.wald_test(np.eye(p)[btt])
        QM, QM_df = F, (q, max(0.0, dfd))
    return RobustResult(
        fit.level,
        J,
        fit.beta,
        se,
        vb,
        stat,
        df,
        pval,
        fit.beta - crit * se,
        fit.beta + crit * se,
        QM,
        QM_df,
        QM_pval,
        fit.sigma2,
        K,
        Hm,
    )


# --------------------------------------------------------------------------------------------------
# the che.csv table
# --------------------------------------------------------------------------------------------------


def _nan_row(rho: float, test: str, k: int, n_studies: int, note: str) -> dict:
    row = {c: np.nan for c in (*CHE_COLUMNS, *CHE_EXTRA_COLUMNS)}
    row.update(rho=rho, test=test, k=k, n_studies=n_studies, iterations=np.nan, note=note)
    return row


def che_table(
    frame: pd.DataFrame, rhos: Sequence[float], level: float = 0.95, tests: Sequence[str] = TABLE_TESTS
) -> pd.DataFrame:
    """``che.csv`` (SPEC §5): one row per working correlation ``rho`` and test in ``z, t, cr2``.

    ``frame`` is a processed study table with ``study_id`` (the cluster), ``yi`` and ``vi`` (Fisher
    z).  Each rho is one intercept-only :func:`che_fit`; ``z`` and ``t`` rows are its model-based
    tests (``df`` blank for ``z``, k - 1 for ``t``), the ``cr2`` row is :func:`robust_cr2_che` with its
    Satterthwaite df (its prediction interval uses the CR2 SE and the Satterthwaite t quantile, as
    ``predict`` on a ``robust.rma`` object does).  The variance components and the REML fit are the
    same for the three tests.  ``r`` columns back-transform the estimate and its confidence bounds
    (tanh).  A rho whose model cannot be estimated gives NaN rows with the reason in ``note``; warnings of
    a fit (e.g. one effect per study, where only the sum of the variances is identified) go to ``note`` too.
    """
    missing = [c for c in ("study_id", "yi", "vi") if c not in frame.columns]
    if missing:
        raise ValueError(f"the study table lacks column(s) {', '.join(missing)} needed by the CHE model")
    unknown = [t for t in tests if t not in TABLE_TESTS]
    if unknown:
        raise ValueError(f"unknown CHE test(s) {', '.join(map(repr, unknown))}; expected {TABLE_TESTS}")
    yi, vi, cluster = frame["yi"].to_numpy(float), frame["vi"].to_numpy(float), frame["study_id"].to_numpy()
    k, n_studies = int(yi.size), int(pd.Series(cluster).nunique())
    rows = []
    for rho in rhos:
        rho = _check_rho(rho)
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                fit_z = che_fit(yi, vi, cluster, rho, test="z", level=level)
            note = "; ".join(dict.fromkeys(str(w.message) for w in caught))
        except (ConvergenceError, np.linalg.LinAlgError, FloatingPointError, ValueError) as err:
            note = f"CHE model with rho = {rho:g} could not be estimated: {err}"
            rows += [_nan_row(rho, t, k, n_studies, note) for t in tests]
            continue
        for test in tests:
            if test == "cr2":
                rob = robust_cr2_che(fit_z)
                pred = rob.predict()
                stat, pval, df = float(rob.stat[0]), float(rob.pval[0]), float(rob.df[0])
            else:
                fit = fit_z if test == "z" else _with_test(fit_z, test)
                pred = fit.predict()
                stat, pval = float(fit.stat[0]), float(fit.pval[0])
                df = float(fit.ddf) if np.isfinite(fit.ddf) else np.nan
            rows.append(
                {
                    "rho": rho, "test": test, "k": fit_z.k, "n_studies": fit_z.n_clusters, "estimate": pred.pred,
                    "se": pred.se, "stat": stat, "df": df, "pval": pval, "ci_lb": pred.ci_lb, "ci_ub": pred.ci_ub,
                    "sigma2_study": fit_z.sigma2_study, "sigma2_within": fit_z.sigma2_within,
                    "r": float(np.tanh(pred.pred)), "r_ci_lb": float(np.tanh(pred.ci_lb)),
                    "r_ci_ub": float(np.tanh(pred.ci_ub)), "pi_lb": pred.pi_lb, "pi_ub": pred.pi_ub,
                    "loglik": fit_z.loglik, "iterations": fit_z.iterations, "note": note,
                }
            )  # fmt: skip
    return pd.DataFrame(rows, columns=[*CHE_COLUMNS, *CHE_EXTRA_COLUMNS])


def _with_test(fit: CHEFit, test: str) -> CHEFit:
    """The same REML fit with the inference of another model-based test (sigma2 and beta are shared)."""
    return replace(fit, test=test, **_model_based(fit.beta, fit.vb, fit.X, test, fit.level))
