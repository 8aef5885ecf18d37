"""Regression tests for small-study effects: Egger's test and PET, PEESE, PET-PEESE.

- :func:`regtest`  Egger's regression test, ``metafor::regtest(res, model="rma", predictor="sei")``
  (Egger et al. 1997, *BMJ* 315, 629-634; Sterne & Egger 2005), with the limit estimate
- :func:`pet`, :func:`peese`, :func:`pet_peese`  Stanley & Doucouliagos (2014, *Res Synth Methods*
  5, 60-78), weighted least squares as ``lm(yi ~ sei, weights = 1/vi)``
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

from alliancemeta.core.inference import critical_value, p_value
from alliancemeta.studies.bias.common import as_arrays, require_k
from alliancemeta.studies.random_effects import MetaFit, random_effects

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
    require_k(fit.k, "Egger's regression test")
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
    require_k(k, f"the WLS regression on {predictor}")
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
    p = p_value(t, df)
    crit = critical_value(level, df)
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
    yi, vi = as_arrays(yi, vi)
    return _wls_lm(yi, vi, np.sqrt(vi), level, "sei")


def peese(yi, vi, level: float = 0.95) -> WLSRegression:
    r"""Precision-effect estimate with standard error: ``lm(yi ~ vi, weights = 1/vi)`` (ibid., eq. 2)."""
    yi, vi = as_arrays(yi, vi)
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
