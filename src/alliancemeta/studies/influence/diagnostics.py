"""Leave-one-out estimates, influence diagnostics, hat values and Baujat data for ``rma.uni`` models.

As ``metafor``'s ``leave1out``, ``influence``, ``hatvalues`` and ``baujat`` (Viechtbauer & Cheung 2010,
*Res Synth Methods* 1, 112-125; Baujat et al. 2002, *Stat Med* 21, 2641-2652), computed from the
deleted fits of :func:`~alliancemeta.studies.influence.deletions.deletion_fits`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

from alliancemeta.core.inference import critical_value, p_value
from alliancemeta.studies.influence.deletions import DeletionFits, deletion_fits
from alliancemeta.studies.random_effects import MetaFit


def _i2_h2(method: str, tau2, vt, QE, df):
    if method == "FE":
        with np.errstate(divide="ignore", invalid="ignore"):
            I2 = np.where(QE > 0, np.maximum(0.0, 100.0 * (QE - df) / QE), 0.0)
        return I2, QE / df
    return 100.0 * tau2 / (vt + tau2), tau2 / vt + 1.0


# --------------------------------------------------------------------------------------------------
# leave1out
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RefitSeries:
    """One intercept-only fit per row (a deletion or a cumulative step), with metafor's columns."""

    estimate: np.ndarray
    se: np.ndarray
    stat: np.ndarray  # z or t (metafor's zval / tval)
    pval: np.ndarray
    ci_lb: np.ndarray
    ci_ub: np.ndarray
    Q: np.ndarray
    Qp: np.ndarray
    tau2: np.ndarray
    I2: np.ndarray
    H2: np.ndarray


@dataclass(frozen=True)
class LeaveOneOut(RefitSeries):
    """``metafor::leave1out``: the pooled effect with each effect size left out in turn."""


def require_intercept_only(fit: MetaFit, what: str) -> None:
    if fit.p != 1 or not np.allclose(fit.X[:, 0], 1.0):
        raise ValueError(f"{what} is defined for intercept-only models (no moderators), as in metafor")


def leave1out(fit: MetaFit, deleted: DeletionFits | None = None) -> LeaveOneOut:
    r"""Leave-one-out estimates, as ``metafor::leave1out(res)`` for an intercept-only model.

    Row i refits the model without effect size i (same estimator, test and level): estimate,
    standard error, test statistic, p-value, confidence interval, :math:`Q_E` with its p-value,
    :math:`\tau^2`, :math:`I^2` and :math:`H^2` of the reduced data (definitions as
    :func:`alliancemeta.studies.random_effects.random_effects`).  Computed by :func:`deletion_fits`.
    """
    require_intercept_only(fit, "leave1out")
    d = deletion_fits(fit) if deleted is None else deleted
    est = d.beta[:, 0]
    se = np.sqrt(d.vb[:, 0, 0])
    with np.errstate(divide="ignore", invalid="ignore"):
        stat = est / se
    crit = critical_value(fit.level, d.ddf)
    I2, H2 = _i2_h2(fit.method, d.tau2, d.vt, d.QE, d.QE_df)
    return LeaveOneOut(
        estimate=est,
        se=se,
        stat=stat,
        pval=p_value(stat, d.ddf),
        ci_lb=est - crit * se,
        ci_ub=est + crit * se,
        Q=d.QE,
        Qp=stats.chi2.sf(d.QE, d.QE_df),
        tau2=d.tau2,
        I2=I2,
        H2=H2,
    )


# --------------------------------------------------------------------------------------------------
# influence
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Influence:
    """``metafor::influence`` for an ``rma.uni`` model: case diagnostics per effect size.

    ``weight`` and ``hat`` come from the full model; the other columns from the fit without the
    effect size.  ``inf`` marks the influential cases by metafor's rules (see :func:`influence`).
    """

    rstudent: np.ndarray
    dffits: np.ndarray
    cooks_distance: np.ndarray
    cov_ratio: np.ndarray
    tau2_del: np.ndarray
    QE_del: np.ndarray
    hat: np.ndarray
    weight: np.ndarray  # percent
    dfbetas: np.ndarray  # (k, p)
    inf: np.ndarray  # bool
    resid: np.ndarray  # y_i - x_i' beta_(-i) (deleted residual)
    se_resid: np.ndarray


def hat_values(fit: MetaFit) -> np.ndarray:
    r"""Diagonal of the hat matrix :math:`H = X(X'WX)^{-1}X'W`: :math:`h_i = w_i x_i'(X'WX)^{-1}x_i`."""
    w = fit.weights
    A = np.linalg.inv((fit.X.T * w) @ fit.X)
    h = w * np.einsum("ij,jk,ik->i", fit.X, A, fit.X)
    return np.where(h > 1 - 10 * np.finfo(float).eps, 1.0, h)


def influence(fit: MetaFit, deleted: DeletionFits | None = None) -> Influence:
    r"""Case diagnostics of every effect size, as ``metafor::influence(res)`` (Viechtbauer & Cheung 2010).

    With :math:`\hat\beta_{(-i)}, V_{(-i)}, \tau^2_{(-i)}, s^2_{w(-i)}` from the fit without
    effect size i (:math:`s^2_w = 1` unless ``test="knha"``), :math:`h_i` and :math:`w_i` from the
    full fit:

    .. math::

        \text{rstudent}_i = \frac{y_i - x_i'\hat\beta_{(-i)}}
            {\sqrt{s^2_{w(-i)}(v_i + \tau^2_{(-i)}) + x_i'V_{(-i)}x_i}}, \qquad
        \text{DFFITS}_i = \frac{x_i'\hat\beta - x_i'\hat\beta_{(-i)}}
            {\sqrt{s^2_{w(-i)}\,h_i\,(\tau^2_{(-i)} + v_i)}}

        D_i = (\hat\beta - \hat\beta_{(-i)})'V^{-1}(\hat\beta - \hat\beta_{(-i)}), \qquad
        \text{COVRATIO}_i = \det V_{(-i)} / \det V

        \text{DFBETAS}_{ij} = \frac{\hat\beta_j - \hat\beta_{(-i)j}}
            {\sqrt{s^2_{w(-i)}\,[(X'W(\tau^2_{(-i)})X)^{-1}]_{jj}}}

    An effect size is flagged influential (``inf``) when :math:`|\text{DFFITS}| > 3\sqrt{p/(k-p)}`,
    or the :math:`\chi^2_p` cdf at :math:`D_i` exceeds 0.5, or :math:`h_i > 3p/k`, or any
    :math:`|\text{DFBETAS}| > 1` (metafor's rules).
    """
    d = deletion_fits(fit) if deleted is None else deleted
    k, p = fit.X.shape
    X, yi, vi = fit.X, fit.yi, fit.vi
    hat = hat_values(fit)
    weight = 100.0 * fit.weights / fit.weights.sum()
    pred_full = X @ fit.beta
    delpred = np.einsum("ij,ij->i", X, d.beta)
    vdelpred = np.einsum("ij,ijk,ik->i", X, d.vb, X)
    resid = yi - delpred
    resid = np.where(np.abs(resid) < 100 * np.finfo(float).eps, 0.0, resid)
    se_resid = np.sqrt(vi * d.s2w + vdelpred + d.tau2 * d.s2w)
    with np.errstate(divide="ignore", invalid="ignore"):
        rstudent = resid / se_resid
        dffits = (pred_full - delpred) / np.sqrt(d.s2w * hat * (d.tau2 + vi))
        dfb = fit.beta[None, :] - d.beta
        dfbetas = dfb / np.sqrt(d.s2w[:, None] * d.vb_all_diag)
    # a Knapp-Hartung fit to identical effects has s2w = 0 and so vb = 0: no deletion moves beta, and
    # the pseudo-inverse gives the honest Cook's distance 0 where an inverse would fail; the covariance
    # ratio 0/0 stays undefined (NaN)
    vb_inv = np.linalg.pinv(fit.vb)
    cooks = np.einsum("ni,ij,nj->n", dfb, vb_inv, dfb)
    with np.errstate(divide="ignore", invalid="ignore"):
        cov_ratio = np.linalg.det(d.vb) / np.linalg.det(fit.vb)
    with np.errstate(invalid="ignore"):
        inf = (
            (np.abs(dffits) > 3 * np.sqrt(p / (k - p)))
            | (stats.chi2.cdf(cooks, p) > 0.5)
            | (hat > 3 * p / k)
            | np.any(np.abs(dfbetas) > 1, axis=1)
        )
    return Influence(rstudent, dffits, cooks, cov_ratio, d.tau2, d.QE, hat, weight, dfbetas, inf, resid, se_resid)


# --------------------------------------------------------------------------------------------------
# Baujat plot data
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Baujat:
    r"""Baujat et al. (2002) plot data, as ``metafor::baujat(res)``.

    ``x``: contribution to the heterogeneity statistic, :math:`(y_i - x_i'\hat\beta)^2/(v_i + \hat\tau^2)`;
    ``y``: influence on the pooled result, :math:`(x_i'\hat\beta_{(-i)} - x_i'\hat\beta)^2 / x_i'V_{(-i)}x_i`.
    """

    x: np.ndarray
    y: np.ndarray


def baujat(fit: MetaFit, deleted: DeletionFits | None = None) -> Baujat:
    """Baujat plot coordinates of every effect size (see :class:`Baujat`)."""
    d = deletion_fits(fit) if deleted is None else deleted
    X = fit.X
    pred_full = X @ fit.beta
    delpred = np.einsum("ij,ij->i", X, d.beta)
    vdelpred = np.einsum("ij,ijk,ik->i", X, d.vb, X)
    x = (fit.yi - pred_full) ** 2 / (fit.tau2 + fit.vi)
    return Baujat(x=x, y=(delpred - pred_full) ** 2 / vdelpred)
