"""Effect sizes for correlations: Fisher z, sampling variances and conversions to r.

All functions are vectorised over numpy arrays and follow metafor's ``escalc`` names
(``ZCOR``, ``COR``, ``UCOR``) so values compare one to one with R.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import special

MEASURES = ("ZCOR", "COR", "UCOR")


@dataclass(frozen=True)
class EffectSizes:
    """Effect sizes ``yi`` and sampling variances ``vi`` on one measure's scale."""

    yi: np.ndarray
    vi: np.ndarray
    measure: str


def r_to_z(r):
    r"""Fisher's variance-stabilising transformation, :math:`z = \operatorname{atanh}(r)`."""
    return np.arctanh(np.asarray(r, dtype=float))


def z_to_r(z):
    r"""Back-transformation from Fisher z to r, :math:`r = \tanh(z)`."""
    return np.tanh(np.asarray(z, dtype=float))


def escalc_cor(r, n, measure: str = "ZCOR") -> EffectSizes:
    r"""Effect sizes for Pearson correlations, as ``metafor::escalc(measure, ri, ni)``.

    .. math::

        \text{ZCOR: } y_i = \operatorname{atanh}(r_i),\; v_i = 1/(n_i - 3)

        \text{COR: } y_i = r_i,\; v_i = (1 - r_i^2)^2 / (n_i - 1)

        \text{UCOR: } y_i = r_i\,{}_2F_1\!\left(\tfrac12, \tfrac12; \tfrac{n_i - 2}{2}; 1 - r_i^2\right),\;
        v_i = (1 - y_i^2)^2 / (n_i - 1)

    References: Fisher (1921); Olkin & Pratt (1958) for the unbiased UCOR estimator; metafor
    ``escalc`` documentation for the variance formulas.
    """
    r = np.asarray(r, dtype=float)
    n = np.asarray(n, dtype=float)
    measure = measure.upper()
    if measure == "ZCOR":
        return EffectSizes(r_to_z(r), 1.0 / (n - 3.0), measure)
    if measure == "COR":
        return EffectSizes(r.copy(), (1.0 - r**2) ** 2 / (n - 1.0), measure)
    if measure == "UCOR":
        yi = r * _hyp2f1_half_half(n, 1.0 - r**2)
        return EffectSizes(yi, (1.0 - yi**2) ** 2 / (n - 1.0), measure)
    raise ValueError(f"unknown measure {measure!r}; expected one of {', '.join(MEASURES)}")


def _hyp2f1_half_half(n, x):
    r"""Gauss hypergeometric :math:`{}_2F_1(\tfrac12, \tfrac12; (n-2)/2; x)` for the UCOR correction.

    scipy's ``hyp2f1`` returns NaN for large third arguments (n in the thousands); there the power
    series :math:`\sum_j t_j`, :math:`t_{j+1} = t_j (\tfrac12 + j)^2 x / ((c + j)(j + 1))`,
    converges in a few terms because c is large, so it is summed directly.
    """
    c = (np.asarray(n, dtype=float) - 2.0) / 2.0
    x = np.asarray(x, dtype=float)
    c, x = np.broadcast_arrays(c, x)
    out = np.asarray(special.hyp2f1(0.5, 0.5, c, x), dtype=float).copy()
    bad = ~np.isfinite(out)
    if bad.any():
        cb, xb = c[bad], x[bad]
        term = np.ones_like(cb)
        total = np.ones_like(cb)
        for j in range(10_000):
            term = term * (0.5 + j) ** 2 * xb / ((cb + j) * (j + 1.0))
            total += term
            if np.all(np.abs(term) <= 1e-17 * total):
                break
        out[bad] = total
    return out


def r_from_t(t, df):
    r"""Correlation from a t statistic with ``df`` degrees of freedom: :math:`r = t / \sqrt{t^2 + df}`.

    Reference: Rosenthal (1991), *Meta-analytic procedures for social research*, eq. 2.16.
    """
    t = np.asarray(t, dtype=float)
    return t / np.sqrt(t**2 + np.asarray(df, dtype=float))


def r_from_f(f, df_error, sign=1.0):
    r"""Correlation from an F(1, df) statistic: :math:`r = \pm\sqrt{F / (F + df)}`.

    An F test with one numerator degree of freedom carries no sign, so the direction must be
    supplied (``sign`` = +1 when a stronger alliance went with a better outcome).
    Reference: Rosenthal (1991), eq. 2.17.
    """
    f = np.asarray(f, dtype=float)
    return np.sign(sign) * np.sqrt(f / (f + np.asarray(df_error, dtype=float)))


def r_from_d(d, n1=None, n2=None):
    r"""Point-biserial correlation from a standardised mean difference.

    .. math:: r = d / \sqrt{d^2 + a}, \quad a = (n_1 + n_2)^2 / (n_1 n_2)

    with :math:`a = 4` when group sizes are not given (equal groups).
    Reference: Borenstein, Hedges, Higgins & Rothstein (2009), *Introduction to Meta-Analysis*, eq. 7.5.
    """
    d = np.asarray(d, dtype=float)
    if n1 is None or n2 is None:
        a = 4.0
    else:
        n1 = np.asarray(n1, dtype=float)
        n2 = np.asarray(n2, dtype=float)
        a = (n1 + n2) ** 2 / (n1 * n2)
    return d / np.sqrt(d**2 + a)


def r_from_beta(beta):
    r"""Approximate r from a standardised regression coefficient.

    .. math:: r \approx \beta + 0.05\,\lambda, \quad \lambda = 1 \text{ if } \beta \ge 0 \text{ else } 0

    valid for :math:`|\beta| < 0.5`. Reference: Peterson & Brown (2005), *J Appl Psychol* 90, 175-181, eq. 2.
    Values of :math:`|\beta| \ge 0.5` raise, because the approximation was not calibrated there.
    """
    beta = np.asarray(beta, dtype=float)
    if np.any(np.abs(beta) >= 0.5):
        raise ValueError("the beta-to-r approximation (Peterson & Brown 2005) holds only for |beta| < 0.5")
    return beta + 0.05 * (beta >= 0)
