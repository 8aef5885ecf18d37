"""Input checks shared by the publication-bias methods: the effect-size arrays and the fewest k."""

from __future__ import annotations

import numpy as np

#: Fewest effect sizes for Egger's test, the rank test and the selection model: with k < 3 the
#: regression on the standard error has no residual degree of freedom and a rank correlation of
#: two points carries no information.
MIN_K = 3


def as_arrays(yi, vi):
    yi = np.asarray(yi, dtype=float)
    vi = np.asarray(vi, dtype=float)
    if yi.shape != vi.shape or yi.ndim != 1:
        raise ValueError("yi and vi must be 1-d arrays of equal length")
    if not (np.all(np.isfinite(yi)) and np.all(np.isfinite(vi))):
        raise ValueError("yi and vi must be finite")
    if np.any(vi <= 0):
        raise ValueError("sampling variances vi must be > 0")
    return yi, vi


def require_k(k: int, what: str, minimum: int = MIN_K) -> None:
    if k < minimum:
        raise ValueError(f"{what} needs at least {minimum} effect sizes; got k = {k}")
