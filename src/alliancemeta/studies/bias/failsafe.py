"""Rosenthal's (1979, *Psychol Bull* 86, 638-641) fail-safe N, as ``metafor::fsn(type="Rosenthal")``."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

from alliancemeta.studies.bias.common import as_arrays, require_k


@dataclass(frozen=True)
class FailSafeN:
    """Rosenthal's fail-safe N with the one-sided p-value of Stouffer's combined test."""

    fsnum: float
    pval: float
    alpha: float


def fsn_rosenthal(yi, vi, alpha: float = 0.05) -> FailSafeN:
    r"""Rosenthal's (1979) fail-safe N, as ``metafor::fsn(yi, vi, type="Rosenthal")``.

    .. math::

        z_i = y_i/\sqrt{v_i}, \quad \bar z = \Big|\sum_i z_i\Big|/\sqrt k, \quad
        p = 1 - \Phi(\bar z), \quad N_{fs} = \max\big(0,\ k(\bar z / z_{1-\alpha})^2 - k\big)

    the number of null studies that would bring Stouffer's combined one-sided test to
    :math:`p = \alpha`, rounded up (metafor: rounded when within :math:`\sqrt{\epsilon}` of an
    integer).
    """
    yi, vi = as_arrays(yi, vi)
    k = yi.size
    require_k(k, "the fail-safe N", 1)
    z_avg = abs(np.sum(yi / np.sqrt(vi)) / np.sqrt(k))
    pval = float(stats.norm.sf(z_avg))
    n = max(0.0, k * (z_avg / stats.norm.isf(alpha)) ** 2 - k)
    n = float(np.ceil(n) if abs(n - np.round(n)) >= np.sqrt(np.finfo(float).eps) else np.round(n))
    return FailSafeN(n, pval, alpha)
