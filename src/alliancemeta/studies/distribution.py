r"""The distribution of true effects: the share of studies' true effects above thresholds of importance.

A pooled mean says little about how many true effects are large.  Mathur & VanderWeele (2019), *Stat
Med* 38, 5267-5288, estimate the proportion of true effects above a threshold q in two ways, both
implemented in their R package MetaUtility (``prop_stronger``), and both reproduced here:

**normal** (their "parametric" method): under the random-effects model the true effects are
:math:`N(\mu, \tau^2)`, so

.. math::

    \hat P(q) = 1 - \Phi\big((q - \hat\mu)/\hat\tau\big),

with the delta-method standard error of their eq. (2),

.. math::

    SE = \varphi\big((q-\hat\mu)/\hat\tau\big)
         \sqrt{\frac{SE_\mu^2}{\hat\tau^2} + \frac{SE_{\tau^2}^2\,(q-\hat\mu)^2}{4\hat\tau^6}}

and the Wald interval truncated to [0, 1].  As ``prop_stronger`` does, the delta method is replaced by a
BCa bootstrap of the same statistic when :math:`\hat P < 0.15` or :math:`> 0.85` (where the delta method
performs poorly), and that by the percentile interval when BCa fails.

**calibrated** (Wang & Lee 2019, *Res Synth Methods* 10, 255-266; Mathur & VanderWeele 2020, *Epidemiology*
31, 356-358, ``estimate.method = "calibrated"``): shrink every estimate towards the mean by the
reliability of the study,

.. math::

    \tilde\theta_i = \hat\mu + \sqrt{\frac{\hat\tau^2}{\hat\tau^2 + v_i}}\,(y_i - \hat\mu),

and take the share of :math:`\tilde\theta_i` above q; its interval is the BCa bootstrap (Efron 1987,
*JASA* 82, 171-185) computed as ``boot::boot.ci(type = "bca")`` does: bias correction
:math:`w = \Phi^{-1}(\#\{t^*_b < \hat t\}/B)`, acceleration :math:`a = \sum l_i^3 / (6(\sum l_i^2)^{3/2})`
from empirical influence values :math:`l` estimated by regressing the bootstrap statistics on the
resampling frequencies (``boot::empinf(type = "reg")``), end points interpolated on the normal quantile
scale (``norm.inter``).  Resampling units are the studies (``cluster``, MetaUtility's ``cluster.name``)
or, without clusters, the effect sizes; one set of B replicates serves every threshold and both methods.

Deviations from MetaUtility, each a deliberate choice: :math:`\hat\mu` and :math:`\hat\tau^2` come from the
headline estimator (MetaUtility's calibrated default is DL); bootstrap interval bounds are not rounded to
two decimals (``prop_stronger`` rounds them); the bootstrap for the extreme normal case resamples studies,
like the calibrated one (``prop_stronger`` resamples rows there).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from alliancemeta.core.errors import ConvergenceError
from alliancemeta.studies.random_effects import estimate_tau2, random_effects

DISTRIBUTION_COLUMNS = ("threshold", "method", "share", "ci_lb", "ci_ub")
#: Trailing columns: the threshold on the Fisher-z scale, the standard error of the share (delta method
#: or bootstrap SD), how the interval was obtained, the bootstrap size and units, the model's mu and tau^2,
#: the number of effects and a note when an interval could not be computed.
DISTRIBUTION_EXTRA_COLUMNS = ("threshold_z", "se", "ci_method", "n_boot", "n_units", "k", "estimate", "tau2", "note")
#: ``prop_stronger`` uses the delta method only for estimates in [0.15, 0.85] and bootstraps otherwise.
EXTREME_SHARE = 0.15


class BootstrapIntervalError(ValueError):
    """A bootstrap interval cannot be computed (boot.ci's errors); the message is boot's."""


# --------------------------------------------------------------------------------------------------
# point estimates
# --------------------------------------------------------------------------------------------------


def share_above_normal(mu, tau2, q):
    r"""Share of :math:`N(\mu, \tau^2)` above q: :math:`1 - \Phi((q - \mu)/\tau)` (vectorised).

    With :math:`\tau^2 = 0` the share is 1 above and 0 below the mean (and NaN at q = mu).
    """
    mu, tau2, q = np.broadcast_arrays(*(np.asarray(x, dtype=float) for x in (mu, tau2, q)))
    with np.errstate(divide="ignore", invalid="ignore"):
        return stats.norm.sf((q - mu) / np.sqrt(tau2))


def calibrated_estimates(yi, vi, mu: float, tau2: float) -> np.ndarray:
    r"""Calibrated (shrunken) estimates :math:`\hat\mu + \sqrt{\hat\tau^2/(\hat\tau^2 + v_i)}(y_i - \hat\mu)`.

    Wang & Lee (2019), eq. 2; MetaUtility ``calib_ests`` given the model's mu and tau^2.
    """
    yi = np.asarray(yi, dtype=float)
    vi = np.asarray(vi, dtype=float)
    return mu + np.sqrt(tau2 / (tau2 + vi)) * (yi - mu)


def se_tau2(yi, vi, tau2: float, method: str) -> float:
    r"""metafor's ``se.tau2`` of an intercept-only ``rma.uni`` fit (closed forms, O(k)).

    With :math:`P = W - ww'/\sum w` for weights w, metafor reports
    REML :math:`\sqrt{2/\operatorname{tr}(PP)}` (:math:`W = (V + \tau^2)^{-1}`), ML :math:`\sqrt{2/\sum w_i^2}`,
    PM/EB :math:`\sqrt{2k^2/((k-1)(\sum w_i)^2)}`, DL and HS the variance of their moment equations
    (:math:`W = V^{-1}`), HE with OLS weights and SJ with the weights at its initial value
    :math:`\tau^2_0 = \operatorname{var}(y)(k-1)/k`; FE has none (NaN).  ``tr(PVPV)``, ``tr(PVP)`` and
    ``tr(PP)`` use, with :math:`S = \sum w`,

    .. math::

        \sum_{ij}P_{ij}^2a_ib_j = \sum_i(w_i^2 - 2w_i^3/S)a_ib_i + (\sum_i w_i^2a_i)(\sum_i w_i^2b_i)/S^2.
    """
    yi = np.asarray(yi, dtype=float)
    vi = np.asarray(vi, dtype=float)
    k, p = yi.size, 1
    method = method.upper()
    t = max(tau2, 0.0)

    def pp(w, a, b):
        S = w.sum()
        return float(np.sum((w * w - 2.0 * w**3 / S) * a * b) + np.sum(w * w * a) * np.sum(w * w * b) / S**2)

    ones = np.ones(k)
    if method == "REML":
        w = 1.0 / (vi + tau2)
        return float(np.sqrt(2.0 / pp(w, ones, ones)))
    if method == "ML":
        w = 1.0 / (vi + tau2)
        return float(np.sqrt(2.0 / np.sum(w * w)))
    if method in ("PM", "EB"):
        w = 1.0 / (vi + tau2)
        return float(np.sqrt(2.0 * k**2 / (k - p) / w.sum() ** 2))
    if method in ("DL", "HS"):
        w = 1.0 / vi
        trP = float(w.sum() - np.sum(w * w) / w.sum())
        var = 2.0 * (k - p) + 4.0 * t * trP + 2.0 * t**2 * pp(w, ones, ones)
        denom = trP if method == "DL" else float(w.sum())
        return float(np.sqrt(var) / denom)
    if method == "HE":
        w = ones
        trPV = float(np.sum(vi) * (1.0 - 1.0 / k))
        return float(np.sqrt((2.0 * pp(w, vi, vi) + 4.0 * t * trPV + 2.0 * t**2 * (k - p)) / (k - p) ** 2))
    if method == "SJ":
        tau2_0 = float(np.var(yi))
        w = 1.0 / (vi + tau2_0)
        var = 2.0 * pp(w, vi, vi) + 4.0 * t * pp(w, vi, ones) + 2.0 * t**2 * pp(w, ones, ones)
        return float(np.sqrt(tau2_0**2 / (k - p) ** 2 * var))
    if method == "FE":
        return np.nan
    raise ValueError(f"unknown tau^2 estimator {method!r}")


@dataclass(frozen=True)
class NormalShare:
    """The normal-model share above q with its delta-method standard error and interval."""

    share: float
    se: float
    ci_lb: float
    ci_ub: float


def share_normal_delta(
    mu: float, se_mu: float, tau2: float, se_t2: float, q: float, level: float = 0.95
) -> NormalShare:
    """Mathur & VanderWeele (2019) eq. 2, as ``prop_stronger(estimate.method = ci.method = "parametric")``."""
    share = float(share_above_normal(mu, tau2, q))
    if not tau2 > 0:
        return NormalShare(share, np.nan, np.nan, np.nan)
    z = (q - mu) / np.sqrt(tau2)
    se = float(np.sqrt(se_mu**2 / tau2 + se_t2**2 * (q - mu) ** 2 / (4.0 * tau2**3)) * stats.norm.pdf(z))
    crit = stats.norm.ppf(1.0 - (1.0 - level) / 2.0)
    return NormalShare(share, se, max(0.0, share - crit * se), min(1.0, share + crit * se))


# --------------------------------------------------------------------------------------------------
# BCa as boot::boot.ci computes it
# --------------------------------------------------------------------------------------------------


def norm_inter(t: np.ndarray, alpha) -> np.ndarray:
    """Quantiles of bootstrap replicates interpolated on the normal scale, as ``boot:::norm.inter``.

    For :math:`r = (B + 1)\\alpha` between order statistics k and k + 1 the value is
    :math:`t_{(k)} + \\frac{\\Phi^{-1}(\\alpha) - \\Phi^{-1}(k/(B+1))}{\\Phi^{-1}((k+1)/(B+1)) - \\Phi^{-1}(k/(B+1))}
    (t_{(k+1)} - t_{(k)})`; the extreme order statistics are used when r falls outside [1, B].
    """
    t = np.sort(np.asarray(t, dtype=float)[np.isfinite(t)])
    R = t.size
    alpha = np.atleast_1d(np.asarray(alpha, dtype=float))
    rk = (R + 1) * alpha
    k = np.trunc(rk).astype(int)
    out = np.empty(alpha.size)
    for i in range(alpha.size):
        if k[i] == rk[i] and 0 < k[i] <= R:
            out[i] = t[k[i] - 1]
        elif k[i] <= 0:
            out[i] = t[0]
        elif k[i] >= R:
            out[i] = t[R - 1]
        else:
            z1 = stats.norm.ppf(alpha[i])
            z2 = stats.norm.ppf(k[i] / (R + 1))
            z3 = stats.norm.ppf((k[i] + 1) / (R + 1))
            out[i] = t[k[i] - 1] + (z1 - z2) / (z3 - z2) * (t[k[i]] - t[k[i] - 1])
    return out


def empirical_influence_reg(t: np.ndarray, freq: np.ndarray) -> np.ndarray:
    """Empirical influence values by regression on the resampling frequencies, as ``boot:::empinf.reg``.

    OLS of the finite :math:`t^*_b` on an intercept and :math:`f_{bi}/n` for units i = 2..n (unit 1 is the
    reference, :math:`l_1 = 0`), then centred: :math:`l_i - \\bar l`.  Needs more replicates than units;
    a rank-deficient regression raises :class:`BootstrapIntervalError` (R's ``glm`` returns NA there).
    """
    t = np.asarray(t, dtype=float)
    fins = np.isfinite(t)
    f = np.asarray(freq, dtype=float)[fins]
    n = f.shape[1]
    A = np.column_stack([np.ones(f.shape[0]), f[:, 1:] / n])
    coef, _res, rank, _sv = np.linalg.lstsq(A, t[fins], rcond=None)
    if rank < A.shape[1]:
        raise BootstrapIntervalError(
            f"estimated adjustment 'a' is NA: {f.shape[0]} finite bootstrap replicates cannot estimate the "
            f"influence of {n} resampling units (use more replicates than units)"
        )
    influence = np.concatenate(([0.0], coef[1:]))
    return influence - influence.mean()


def bca_interval(t0: float, t: np.ndarray, freq: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    r"""BCa interval of ``boot::boot.ci(boot.out, conf = level, type = "bca")`` for one statistic.

    ``t`` are the B bootstrap replicates, ``freq`` the B x n matrix of resampling frequencies
    (``boot.array``).  :math:`\alpha^* = \Phi(w + (w + z_\alpha)/(1 - a(w + z_\alpha)))` for
    :math:`z_\alpha = \Phi^{-1}((1 \mp \text{level})/2)`, then :func:`norm_inter`.  Raises
    :class:`BootstrapIntervalError` with boot's message when w or a is not finite.
    """
    t = np.asarray(t, dtype=float)
    tf = t[np.isfinite(t)]
    with np.errstate(divide="ignore"):
        w = stats.norm.ppf(np.sum(tf < t0) / tf.size)
    if not np.isfinite(w):
        raise BootstrapIntervalError("estimated adjustment 'w' is infinite")
    z = stats.norm.ppf((1.0 + np.array([-level, level])) / 2.0)
    L = empirical_influence_reg(t, freq)
    with np.errstate(invalid="ignore", divide="ignore"):
        a = np.sum(L**3) / (6.0 * np.sum(L**2) ** 1.5)
    if not np.isfinite(a):
        raise BootstrapIntervalError("estimated adjustment 'a' is NA")
    adj = stats.norm.cdf(w + (w + z) / (1.0 - a * (w + z)))
    lo, hi = norm_inter(tf, adj)
    return float(lo), float(hi)


def percentile_interval(t: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval, ``boot::boot.ci(type = "perc")``: :func:`norm_inter` at (1 -/+ level)/2."""
    lo, hi = norm_inter(t, (1.0 + np.array([-level, level])) / 2.0)
    return float(lo), float(hi)


# --------------------------------------------------------------------------------------------------
# the bootstrap and the table
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bootstrap:
    """B replicates of (mu, tau2) and of the calibrated shares above each threshold."""

    freq: np.ndarray  # (B, n_units) resampling frequencies
    mu: np.ndarray  # (B,)
    tau2: np.ndarray  # (B,)
    calibrated: np.ndarray  # (B, n_thresholds)
    failed: int  # replicates whose model could not be fitted (NaN rows)


def _units(cluster, k: int) -> tuple[np.ndarray, int]:
    if cluster is None:
        return np.arange(k), k
    codes, labels = pd.factorize(pd.Series(np.asarray(cluster, dtype=object)), sort=False)
    if np.any(codes < 0):
        raise ValueError("cluster has missing values")
    return np.asarray(codes), len(labels)


#: Fisher-scoring iterations of the batched estimator before a replicate falls back to :func:`estimate_tau2`.
BATCH_MAX_ITER = 100
#: Convergence of the batched Fisher scoring: change in tau^2 relative to max(1, tau^2), as
#: :data:`alliancemeta.studies.random_effects.TAU2_THRESHOLD`.
BATCH_TOL = 1e-12


def _batch_tau2(y: np.ndarray, v: np.ndarray, F: np.ndarray, method: str) -> tuple[np.ndarray, np.ndarray]:
    r"""tau^2 of intercept-only models for many resamples at once, given as row frequencies ``F`` (B x k).

    A resample that repeats row i :math:`f_i` times has the likelihood of the expanded data, so every
    sum of the single fit becomes a frequency-weighted sum: with :math:`w = 1/(v + 	au^2)`,
    :math:`S_r = \sum_i f_iw_i^r`, :math:`e = y - \hat\mu`, REML Fisher scoring
    :math:`	au^2 \leftarrow 	au^2 + (\sum f w^2e^2 - S_1 + S_2/S_1)/(S_2 - 2S_3/S_1 + S_2^2/S_1^2)`
    (ML: :math:`(\sum fw^2e^2 - S_1)/S_2`) from the Hedges (HE) estimate, truncated at 0, then the
    boundary check of :func:`estimate_tau2` (the log-likelihood at 0 against the stationary point);
    DL in closed form (FE: 0).  Returns tau^2 and a mask of the replicates that did not converge (the caller
    refits those one by one).
    """
    n = F.sum(axis=1)
    if method == "FE":
        return np.zeros(F.shape[0]), np.zeros(F.shape[0], dtype=bool)
    if method == "DL":
        w = 1.0 / v
        S1 = F @ w
        mu = (F @ (w * y)) / S1
        Q = np.einsum("bi,i,bi->b", F, w, (y[None, :] - mu[:, None]) ** 2)
        trP = S1 - (F @ (w * w)) / S1
        return np.maximum(0.0, (Q - (n - 1.0)) / trP), np.zeros(F.shape[0], dtype=bool)
    reml = method == "REML"
    ybar = (F @ y) / n
    rss = np.einsum("bi,bi->b", F, (y[None, :] - ybar[:, None]) ** 2)
    tau2 = np.maximum(0.0, (rss - (F @ v) * (1.0 - 1.0 / n)) / (n - 1.0))

    def score_info(t2, Fa):
        w = 1.0 / (v[None, :] + t2[:, None])
        fw = Fa * w
        S1 = fw.sum(axis=1)
        S2 = np.einsum("bi,bi->b", fw, w)
        mu = np.einsum("bi,i->b", fw, y) / S1
        e2w2 = np.einsum("bi,bi->b", fw * w, (y[None, :] - mu[:, None]) ** 2)
        if reml:
            S3 = np.einsum("bi,bi->b", fw * w, w)
            return e2w2 - S1 + S2 / S1, S2 - 2.0 * S3 / S1 + (S2 / S1) ** 2
        return e2w2 - S1, S2

    active = np.ones(tau2.size, dtype=bool)
    for _ in range(BATCH_MAX_ITER):
        if not active.any():
            break
        t = tau2[active]
        score, info = score_info(t, F[active])
        new = np.maximum(0.0, t + score / info)
        done = (np.abs(new - t) <= BATCH_TOL * np.maximum(1.0, new)) | ((t == 0.0) & (score <= 0.0))
        tau2[active] = np.where((t == 0.0) & (score <= 0.0), 0.0, new)
        idx = np.flatnonzero(active)
        active[idx[done]] = False
    # boundary check, as estimate_tau2: the (restricted) log-likelihood at 0 may beat the stationary point
    pos = np.flatnonzero(~active & (tau2 > 0))
    if pos.size:
        ll_hat = _batch_loglik(y, v, F[pos], tau2[pos], reml)
        ll_zero = _batch_loglik(y, v, F[pos], np.zeros(pos.size), reml)
        tau2[pos[ll_zero > ll_hat]] = 0.0
    return tau2, active


def _batch_loglik(y, v, F, t2, reml: bool) -> np.ndarray:
    """(Restricted) log-likelihood of intercept-only models with row frequencies (constants dropped)."""
    w = 1.0 / (v[None, :] + t2[:, None])
    fw = F * w
    S1 = fw.sum(axis=1)
    mu = np.einsum("bi,i->b", fw, y) / S1
    ll = -0.5 * np.einsum("bi,bi->b", F, np.log(v[None, :] + t2[:, None])) - 0.5 * np.einsum(
        "bi,bi->b", fw, (y[None, :] - mu[:, None]) ** 2
    )
    return ll - 0.5 * np.log(S1) if reml else ll


def bootstrap_replicates(
    yi, vi, q_z, method: str, n_boot: int, seed: int, cluster=None, indices: np.ndarray | None = None
) -> Bootstrap:
    """Resample units with replacement and refit: the replicates behind every bootstrap interval.

    Units are clusters (all their rows enter together) or, without ``cluster``, effect sizes.
    ``indices`` (B x n_units, 0-based unit numbers) replaces the random draw, to reproduce a given
    resampling (e.g. R's ``boot.array(..., indices = TRUE)``); otherwise the draw is
    ``numpy.random.default_rng(seed).integers(0, n_units, (n_boot, n_units))``.  REML, ML, DL and FE are
    fitted for all replicates at once (:func:`_batch_tau2`); other estimators, and replicates whose
    batched iteration does not converge, by :func:`estimate_tau2` on the expanded rows.  A replicate
    whose model cannot be fitted is NaN (as ``prop_stronger``'s error handler returns NA) and counted in
    ``failed``.
    """
    yi = np.asarray(yi, dtype=float)
    vi = np.asarray(vi, dtype=float)
    codes, n_units = _units(cluster, yi.size)
    if indices is None:
        indices = np.random.default_rng(seed).integers(0, n_units, size=(n_boot, n_units))
    indices = np.asarray(indices, dtype=np.intp)
    B = indices.shape[0]
    freq = np.zeros((B, n_units))
    np.add.at(freq, (np.repeat(np.arange(B), indices.shape[1]), indices.ravel()), 1.0)
    F = freq[:, codes]  # (B, k) row frequencies
    q_z = np.atleast_1d(np.asarray(q_z, dtype=float))
    method = method.upper()
    if method in ("REML", "ML", "DL", "FE"):
        tau2, pending = _batch_tau2(yi, vi, F, method)
    else:
        tau2, pending = np.full(B, np.nan), np.ones(B, dtype=bool)
    failed = 0
    for b in np.flatnonzero(pending):
        rows = np.repeat(np.arange(yi.size), F[b].astype(np.intp))
        try:
            with warnings.catch_warnings():  # e.g. REML's "higher at tau^2 = 0", expected in some replicates
                warnings.simplefilter("ignore")
                tau2[b] = estimate_tau2(yi[rows], vi[rows], method=method).tau2
        except (ConvergenceError, np.linalg.LinAlgError, ValueError):
            tau2[b] = np.nan
            failed += 1
    w = 1.0 / (vi[None, :] + tau2[:, None])
    fw = F * w
    mu = np.einsum("bi,i->b", fw, yi) / fw.sum(axis=1)
    calib = mu[:, None] + np.sqrt(tau2[:, None] / (tau2[:, None] + vi[None, :])) * (yi[None, :] - mu[:, None])
    above = (calib[:, :, None] > q_z[None, None, :]).astype(float)  # (B, k, n_thresholds)
    shares = np.einsum("bi,bij->bj", F, above) / F.sum(axis=1)[:, None]
    shares[~np.isfinite(tau2)] = np.nan
    return Bootstrap(freq, mu, tau2, shares, failed)


def _interval(t0, t, freq, level, fallback_percentile: bool) -> tuple[float, float, str, str]:
    try:
        lo, hi = bca_interval(t0, t, freq, level)
        return lo, hi, "bca", ""
    except BootstrapIntervalError as err:
        if fallback_percentile:
            lo, hi = percentile_interval(t, level)
            return lo, hi, "percentile", f"BCa failed ({err}); percentile interval"
        return np.nan, np.nan, "", f"BCa interval failed: {err}"


def distribution_table(
    yi,
    vi,
    thresholds: Sequence[float],
    method: str = "REML",
    level: float = 0.95,
    seed: int = 0,
    n_boot: int = 2000,  # MetaUtility's prop_stronger(R = 2000); the pipeline passes meta.distribution_n_boot
    cluster=None,
    test: str = "z",
    indices: np.ndarray | None = None,
) -> pd.DataFrame:
    """``distribution.csv`` (SPEC §5): share of true effects above each threshold, normal and calibrated.

    ``yi``/``vi`` are Fisher z; ``thresholds`` are on the r scale (config ``meta.thresholds``) and are
    converted with atanh.  ``method`` is the headline tau^2 estimator and ``test`` the headline test (its
    SE of mu enters the delta method).  ``cluster`` (``study_id``) makes the bootstrap resample studies.
    One row per threshold and ``method`` in ``normal, calibrated``; see the module docstring for the
    intervals (``ci_method`` says which was used: ``delta``, ``bca`` or ``percentile``).  ``seed`` fixes
    the bootstrap draw (same seed, same table); ``n_boot`` must exceed the number of resampling units
    for BCa (its regression estimate of the acceleration).  When the model itself cannot be estimated the
    rows are NaN with the reason in ``note``.
    """
    yi = np.asarray(yi, dtype=float)
    vi = np.asarray(vi, dtype=float)
    if yi.size != vi.size or yi.size < 1:
        raise ValueError("yi and vi must have the same, positive length")
    thresholds = [float(r) for r in thresholds]
    if any(not -1.0 < r < 1.0 for r in thresholds):
        raise ValueError(f"thresholds are correlations in (-1, 1); got {thresholds}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1); got {level!r}")
    q_z = np.arctanh(thresholds)
    _codes, n_units = _units(cluster, yi.size)

    def unavailable(note: str) -> pd.DataFrame:
        rows = [{"threshold": r, "threshold_z": float(q), "method": m, "k": int(yi.size), "n_units": n_units,
                 "n_boot": 0, "ci_method": "", "note": note}
                for r, q in zip(thresholds, q_z, strict=True) for m in ("normal", "calibrated")]  # fmt: skip
        return pd.DataFrame(rows, columns=[*DISTRIBUTION_COLUMNS, *DISTRIBUTION_EXTRA_COLUMNS])

    if yi.size < 2:
        return unavailable(f"k = {yi.size}: a distribution of true effects needs at least two effects")
    try:
        fit = random_effects(yi, vi, method=method, test=test, level=level)
    except ConvergenceError as err:
        return unavailable(f"the {method} random-effects model could not be estimated: {err}")
    mu, tau2 = fit.estimate, fit.tau2
    st2 = se_tau2(yi, vi, tau2, method)
    calib = calibrated_estimates(yi, vi, mu, tau2)
    boot: Bootstrap | None = None

    def replicates() -> Bootstrap:
        nonlocal boot
        if boot is None:
            boot = bootstrap_replicates(yi, vi, q_z, method, n_boot, seed, cluster, indices)
        return boot

    rows = []
    for j, (r, q) in enumerate(zip(thresholds, q_z, strict=True)):
        base = {"threshold": r, "threshold_z": float(q), "k": int(yi.size), "estimate": mu, "tau2": tau2}
        # normal model
        normal = share_normal_delta(mu, fit.se[0], tau2, st2, q, level)
        row = {**base, "method": "normal", "share": normal.share, "n_boot": 0, "n_units": n_units, "note": ""}
        if EXTREME_SHARE <= normal.share <= 1.0 - EXTREME_SHARE and tau2 > 0:
            row.update(se=normal.se, ci_lb=normal.ci_lb, ci_ub=normal.ci_ub, ci_method="delta")
        else:
            bt = replicates()
            t = share_above_normal(bt.mu, bt.tau2, q)
            lo, hi, how, note = _interval(normal.share, t, bt.freq, level, fallback_percentile=True)
            why = "tau^2 = 0" if not tau2 > 0 else f"share outside [{EXTREME_SHARE}, {1 - EXTREME_SHARE}]"
            row.update(
                se=float(np.nanstd(t, ddof=1)),
                ci_lb=lo,
                ci_ub=hi,
                ci_method=how,
                n_boot=int(t.size),
                note="; ".join(x for x in (f"{why}: bootstrap instead of the delta method", note) if x),
            )
        rows.append(row)
        # calibrated estimates
        share = float(np.mean(calib > q))
        bt = replicates()
        t = bt.calibrated[:, j]
        lo, hi, how, note = _interval(share, t, bt.freq, level, fallback_percentile=False)
        rows.append(
            {
                **base,
                "method": "calibrated",
                "share": share,
                "se": float(np.nanstd(t, ddof=1)),
                "ci_lb": lo,
                "ci_ub": hi,
                "ci_method": how,
                "n_boot": int(t.size),
                "n_units": n_units,
                "note": note,
            }
        )
        if boot is not None and boot.failed:
            for rr in rows[-2:]:
                if rr["n_boot"]:
                    rr["note"] = "; ".join(x for x in (rr["note"], f"{boot.failed} bootstrap fits failed") if x)
    return pd.DataFrame(rows, columns=[*DISTRIBUTION_COLUMNS, *DISTRIBUTION_EXTRA_COLUMNS])
