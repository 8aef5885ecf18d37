r"""The shared inference block: critical values, p-values and Wald tests for every frequentist model.

One place decides how a test statistic becomes a p-value and an interval, so that the random-effects,
meta-regression, three-level, cluster-robust, influence and session models all read alike:

- ``df = inf`` is a normal (z) reference, finite ``df`` a t reference (``test="t"``, Knapp–Hartung with
  ``df = k - p``, Satterthwaite df of CR2 or of mixed models); ``df <= 0`` has no reference and gives NaN.
- Two-sided critical value :math:`c = F^{-1}(1 - \alpha/2)` with :math:`\alpha = 1 - \text{level}`, so the
  interval is :math:`\hat\beta \pm c\,SE` and the p-value :math:`2\,(1 - F(|z|))`.
- Wald test of m coefficients :math:`Q_M = b'V_b^{-1}b`: :math:`\chi^2_m` with a normal reference, and
  :math:`F_{m,\,df}` of :math:`Q_M/m` with a t reference (metafor's ``QM`` for ``test="z"`` and
  ``test="t"``/``"knha"``; Viechtbauer 2010, *J Stat Softw* 36(3), section 3.3).

Every function is vectorised over ``stat`` and ``df`` (numpy broadcasting).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class Prediction:
    """A predicted effect with its standard error, confidence and prediction interval."""

    pred: float
    se: float
    ci_lb: float
    ci_ub: float
    pi_lb: float
    pi_ub: float


def upper_quantile(level: float) -> float:
    r"""The probability :math:`1 - \alpha/2` of a two-sided interval at confidence ``level``."""
    return 1 - (1 - level) / 2


def critical_value(level: float, df=np.inf):
    """Two-sided critical value at ``level``: normal for infinite ``df``, t with ``df`` otherwise; NaN for df <= 0.

    Returns a float for scalar ``df`` and an array otherwise.
    """
    q = upper_quantile(level)
    df_arr = np.asarray(df, dtype=float)
    if df_arr.ndim == 0:
        if np.isinf(df_arr):
            return float(stats.norm.ppf(q))
        return float(stats.t.ppf(q, float(df_arr))) if df_arr > 0 else np.nan
    finite = np.isfinite(df_arr)
    positive = np.where(finite & (df_arr > 0), df_arr, np.nan)
    return np.where(finite, stats.t.ppf(q, positive), stats.norm.ppf(q))


def p_value(stat, df=np.inf):
    """Two-sided p-value of ``stat`` against the normal (``df = inf``) or t distribution; NaN for df <= 0."""
    stat = np.abs(np.asarray(stat, dtype=float))
    df_arr = np.asarray(df, dtype=float)
    if df_arr.ndim == 0:
        if np.isinf(df_arr):
            out = 2 * stats.norm.sf(stat)
        elif df_arr > 0:
            out = 2 * stats.t.sf(stat, float(df_arr))
        else:
            out = np.full(stat.shape, np.nan)
        return float(out) if np.ndim(out) == 0 else out
    finite = np.isfinite(df_arr)
    positive = np.where(finite & (df_arr > 0), df_arr, np.nan)
    return np.where(finite, 2.0 * stats.t.sf(stat, positive), 2.0 * stats.norm.sf(stat))


def wald_interval(estimate, se, level: float, df=np.inf):
    """Lower and upper bounds ``estimate -/+ c * se`` with the critical value of :func:`critical_value`."""
    crit = critical_value(level, df)
    return estimate - crit * se, estimate + crit * se


@dataclass(frozen=True)
class WaldTest:
    """Omnibus test of m coefficients: ``QM`` (chi-square, or F = chi-square / m with a t reference)."""

    QM: float
    QM_df: tuple[float, float]  # (m, inf) for chi-square, (m, df) for F
    QM_pval: float


def wald_test(b, vb, df=np.inf) -> WaldTest:
    r"""Wald test that the coefficients ``b`` (covariance ``vb``) are all zero.

    .. math:: Q_M = b'V_b^{-1}b \sim \chi^2_m \quad\text{or}\quad Q_M/m \sim F_{m,\,df}

    NaN when there is nothing to test or a standard error is zero (metafor reports no test then).
    """
    b = np.atleast_1d(np.asarray(b, dtype=float))
    vb = np.atleast_2d(np.asarray(vb, dtype=float))
    m = b.size
    testable = m > 0 and bool(np.all(np.diag(vb) > 0))
    QM = float(b @ np.linalg.solve(vb, b)) if testable else np.nan
    if np.isfinite(df):
        QM = QM / m if m else np.nan
        pval = float(stats.f.sf(QM, m, df)) if df > 0 else np.nan
        return WaldTest(QM, (float(m), float(df)), pval)
    return WaldTest(QM, (float(m), np.inf), float(stats.chi2.sf(QM, m)))
