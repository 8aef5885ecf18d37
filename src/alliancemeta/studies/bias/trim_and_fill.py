"""Duval & Tweedie's (2000, *Biometrics* 56, 455-463; *JASA* 95, 89-98) trim and fill, as ``metafor::trimfill``."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from scipy import stats

from alliancemeta.core.errors import ConvergenceError
from alliancemeta.studies.bias.common import require_k
from alliancemeta.studies.random_effects import MetaFit, random_effects

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
    require_k(k, "trim and fill", 2)
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
