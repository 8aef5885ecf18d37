"""Aggregation of dependent effects within studies, as ``metafor::aggregate(..., struct = "CS")``."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from alliancemeta.studies.multilevel.clusters import group_clusters


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
