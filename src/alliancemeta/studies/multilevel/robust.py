r"""Cluster-robust CR2 inference for a three-level fit: Satterthwaite df and the HTZ Wald test.

As ``metafor::robust(fit, cluster, clubSandwich = TRUE)`` (Bell & McCaffrey 2002; Tipton 2015;
Pustejovsky & Tipton 2018).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import stats

from alliancemeta.core.inference import Prediction, critical_value, p_value
from alliancemeta.studies.multilevel.model import MultilevelFit, moderator_columns

#: clubSandwich's ``matrix_power`` treats eigenvalues <= 1e-12 as zero when it forms the inverse
#: square roots of the CR2 adjustment (and of the HTZ Omega matrix); the same cut-off keeps the
#: results identical for clusters whose adjustment matrix is singular.
CR2_EIGEN_TOL = 1e-12


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
        crit = critical_value(self.level, df)
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
    pval = p_value(stat, df)
    crit = critical_value(fit.level, df)
    btt = moderator_columns(fit.X)
    if p == 1 and btt.size == 1:
        QM, QM_df, QM_pval = float(stat[0] ** 2), (1.0, float(df[0])), float(pval[0])
    else:
        F, q, dfd, QM_pval = partial.wald_test(np.eye(p)[btt])
        QM, QM_df = F, (q, max(0.0, dfd))
    return RobustResult(
        fit.level, J, fit.beta, se, vb, stat, df, pval, fit.beta - crit * se, fit.beta + crit * se,
        QM, QM_df, QM_pval, fit.sigma2, K, Hm,
    )  # fmt: skip
