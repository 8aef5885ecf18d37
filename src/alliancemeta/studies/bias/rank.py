"""Begg & Mazumdar's (1994, *Biometrics* 50, 1088-1101) rank correlation test, as ``metafor::ranktest``."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

from alliancemeta.studies.bias.common import as_arrays, require_k

#: R computes Kendall's exact null distribution with counts up to n! in double precision, which
#: overflows from n = 171 on (R then returns NaN).  Up to this n the exact p-value is used, as R
#: does; above it, the normal approximation (which R uses whenever there are ties).
KENDALL_EXACT_MAX_N = 170


@dataclass(frozen=True)
class RankTest:
    """Begg's rank correlation test: Kendall's tau-b between standardised effects and variances."""

    tau: float
    pval: float
    exact: bool  # exact null distribution (no ties, k <= KENDALL_EXACT_MAX_N) or normal approximation
    statistic: float  # T (concordant pairs) when exact, else z


def _kendall_lower_tail(q: int, n: int) -> float:
    """P(T <= q) for the number of concordant pairs T of n untied pairs under independence.

    The distribution of T is that of the number of inversions of a random permutation (the
    Mahonian numbers), built by the recursion :math:`P_n(j) = \\frac1n\\sum_{i=0}^{n-1}P_{n-1}(j-i)`
    (Kendall 1938).  Only the lower tail up to q is needed, so the work is O(n q).
    """
    if q < 0:
        return 0.0
    if q >= n * (n - 1) // 2:
        return 1.0
    prob = np.zeros(q + 1)
    prob[0] = 1.0
    for m in range(2, n + 1):
        cs = np.cumsum(prob)
        shifted = np.zeros(q + 1)
        if m <= q:
            shifted[m:] = cs[: q + 1 - m]
        prob = (cs - shifted) / m
    return float(prob.sum())


def _tie_sizes(x: np.ndarray) -> np.ndarray:
    _, counts = np.unique(x, return_counts=True)
    return counts[counts > 1].astype(float)


def ranktest(yi, vi) -> RankTest:
    r"""Rank correlation test, as ``metafor::ranktest`` (which calls ``cor.test(method="kendall")``).

    .. math::

        \hat\theta = \frac{\sum_i y_i/v_i}{\sum_i 1/v_i}, \quad
        y_i^* = \frac{y_i - \hat\theta}{\sqrt{v_i - (\sum_j 1/v_j)^{-1}}}, \quad
        \tau = \text{Kendall's } \tau_b(y^*, v)

    Two-sided p-value: from the exact null distribution of the number of concordant pairs when
    there are no ties (as R, for k <= :data:`KENDALL_EXACT_MAX_N`), otherwise from the normal
    approximation with R's tie-corrected variance of Kendall's S (Kendall 1970, eq. 4.4), without
    continuity correction.  Equal sample sizes give tied variances, so most real data sets take
    the normal branch.  Beyond k = 170 without ties R returns NaN; the normal approximation is
    used there instead (a documented, deliberate difference).
    """
    yi, vi = as_arrays(yi, vi)
    n = yi.size
    require_k(n, "the rank correlation test")
    wi = 1.0 / vi
    theta = float(np.sum(wi * yi) / np.sum(wi))
    vstar = vi - 1.0 / np.sum(wi)
    ystar = (yi - theta) / np.sqrt(vstar)
    tau = float(stats.kendalltau(ystar, vi, variant="b").statistic)
    ties = min(np.unique(ystar).size, np.unique(vi).size) < n
    if not ties and n <= KENDALL_EXACT_MAX_N:
        q = int(np.round((tau + 1) * n * (n - 1) / 4))
        if q > n * (n - 1) / 4:
            p = _kendall_lower_tail(n * (n - 1) // 2 - q, n)  # P(T >= q) by symmetry
        else:
            p = _kendall_lower_tail(q, n)
        return RankTest(tau, min(2 * p, 1.0), True, float(q))
    xt, yt = _tie_sizes(ystar), _tie_sizes(vi)
    T0 = n * (n - 1) / 2
    T1 = np.sum(xt * (xt - 1)) / 2
    T2 = np.sum(yt * (yt - 1)) / 2
    S = tau * np.sqrt((T0 - T1) * (T0 - T2))
    v0 = n * (n - 1) * (2 * n + 5)
    vt = np.sum(xt * (xt - 1) * (2 * xt + 5))
    vu = np.sum(yt * (yt - 1) * (2 * yt + 5))
    v1 = np.sum(xt * (xt - 1)) * np.sum(yt * (yt - 1))
    v2 = np.sum(xt * (xt - 1) * (xt - 2)) * np.sum(yt * (yt - 1) * (yt - 2))
    var_S = (v0 - vt - vu) / 18 + v1 / (2 * n * (n - 1)) + v2 / (9 * n * (n - 1) * (n - 2))
    z = float(S / np.sqrt(var_S))
    return RankTest(tau, float(2 * min(stats.norm.cdf(z), stats.norm.sf(z))), False, z)
