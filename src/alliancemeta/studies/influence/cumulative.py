"""Cumulative meta-analysis, as ``metafor::cumul``: the model refitted as effect sizes are added in order."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from alliancemeta.studies.influence.diagnostics import RefitSeries, require_intercept_only
from alliancemeta.studies.random_effects import MetaFit, random_effects


@dataclass(frozen=True, kw_only=True)
class Cumulative(RefitSeries):
    """``metafor::cumul(res, order=...)``: row j pools the first j effect sizes in ``order``."""

    order: np.ndarray  # indices into the original data, in cumulative order


def cumul(fit: MetaFit, order=None) -> Cumulative:
    """Cumulative meta-analysis, as ``metafor::cumul(res, order=order)``.

    Effect sizes are added one at a time in increasing ``order`` (e.g. publication year; ties keep
    the input order, as R's ``order()``; missing values go last); without ``order`` in input order.
    Each step refits the model with the same estimator, test and level, except that a single
    effect size is tested with ``z``, as metafor does when k = 1.  The steps are separate fits of
    growing data (k small fits, O(k^2) in total), which is fast for any realistic k.
    """
    require_intercept_only(fit, "cumul")
    k = fit.k
    if order is None:
        perm = np.arange(k)
    else:
        key = np.asarray(order, dtype=float)
        if key.shape != (k,):
            raise ValueError(f"order must have one value per effect size ({k}); got {key.size}")
        perm = np.argsort(key, kind="stable")
    cols = {
        name: np.empty(k)
        for name in ("estimate", "se", "stat", "pval", "ci_lb", "ci_ub", "Q", "Qp", "tau2", "I2", "H2")
    }
    yi, vi = fit.yi[perm], fit.vi[perm]
    for j in range(k):
        test = "z" if j == 0 else fit.test
        f = random_effects(yi[: j + 1], vi[: j + 1], method=fit.method, test=test, level=fit.level)
        vals = (
            f.estimate,
            f.se[0],
            f.stat_values[0],
            f.pvals[0],
            f.ci_lbs[0],
            f.ci_ubs[0],
            f.QE,
            f.QE_pval,
            f.tau2,
            f.I2,
            f.H2,
        )
        for name, val in zip(cols, vals, strict=True):
            cols[name][j] = val
    return Cumulative(order=perm, **cols)
