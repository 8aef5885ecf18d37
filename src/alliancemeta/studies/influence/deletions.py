r"""The vectorised leave-one-out engine: all k deletions of an ``rma.uni`` model together.

Deleting study i changes the data *and* the between-study variance, so every deletion has its
own weights :math:`w_j(\tau^2_{(-i)}) = 1/(v_j + \tau^2_{(-i)})`.  Every quantity a deleted fit
needs (the WLS normal equations, RSS, the Fisher-scoring terms, Q, tr P) is a sum

.. math:: S^{(a)}_i(t) = \sum_{j \ne i} w_j(t)^a f_j, \qquad a = 1, 2, 3,

of per-study features :math:`f_j \in \{1,\ x_jx_j',\ x_j\tilde y_j,\ \tilde y_j^2\}` evaluated at the
deletion's own :math:`t = \tau^2_{(-i)}`.  Such a sum is the *total* over all j minus the i-th term,
and the total at any t is expanded around one centre :math:`c` (the full-data estimate): with
:math:`s = 1/(\min_j v_j + c)`, :math:`r_j = w_j(c)/s \in (0, 1]` and :math:`d = (t - c)s`,

.. math::

    \sum_j w_j(t)^a f_j = s^a \sum_{m \ge 0} \binom{-a}{m} d^m G_{a+m}, \qquad
    G_n = \sum_j r_j^n f_j ,

so the k deletions share one table of power moments :math:`G_n` (computed once, O(k)), and each
evaluation of all k sums costs O(k M) for M series terms.  Deleting one of k studies moves
:math:`\tau^2` by O(1/k), so :math:`|d| \ll 1` and a handful of terms reach double precision; the
number of terms is chosen from the largest :math:`|d|` so that the truncation error is below
:data:`SERIES_TOL` relative to :math:`\sum_j r_j^a |f_j|`.  Deletions with
:math:`|d| >` :data:`SERIES_MAX_RATIO` (small k, or a study whose removal changes
:math:`\tau^2` a lot) are summed exactly, pairwise, in row blocks that never hold a k x k matrix.
The outcomes are replaced by the full-fit residuals :math:`\tilde y = y - X\hat\beta` (WLS is
linear in y, so :math:`\hat\beta_{(-i)} = \hat\beta + \tilde\beta_{(-i)}`), which keeps the sums
free of cancellation.

Each deletion's :math:`\tau^2_{(-i)}` is then the root of a scalar equation, solved for all k
deletions at once: the ML/REML score equation, or :math:`Q(\tau^2) = k - 1 - p` for PM and EB (the
engine's EB fixed point).  Every row keeps a bracket and steps by secant, Fisher scoring (Newton with
the expected information) or bisection, warm-started at the full-data estimate, until its step is
below the engine's root tolerance (machine precision).  A row whose equation is not positive at
:math:`\tau^2 = 0` is at the boundary for PM/EB; for ML/REML the likelihood may still have an
interior maximum beside the boundary one, so such a row starts, as the engine does, from its own HE
estimate, and the boundary wins when its likelihood is higher (metafor's ``ll0check``).  DL, HE, HS,
SJ and FE are closed forms of the same sums.  The results equal k full refits with
:func:`alliancemeta.studies.random_effects.random_effects` to round-off (tests compare them at a relative 1e-9 for
every estimator); ``benchmarks/bench_influence.py`` times them (k = 10,000 in well under a second).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from scipy import special

from alliancemeta.core.errors import ConvergenceError
from alliancemeta.studies.random_effects import MetaFit

#: Largest scaled distance |d| = |t - c| / (min v + c) at which a deletion's sums use the power
#: series; the series then needs at most :data:`SERIES_MAX_TERMS` terms.  Farther deletions are
#: summed exactly (pairwise, O(k) each).
SERIES_MAX_RATIO = 0.25
#: Truncation bound of the series relative to the sum of absolute terms: below double precision.
SERIES_TOL = 2.0**-56
#: Highest power a of the weights that any estimator needs (REML's tr(PP) uses w^3).
MAX_POWER = 3


def _terms_needed(q: float, power: int) -> int:
    """Smallest M with C(power + M, M + 1) q^(M+1) <= SERIES_TOL / 2 (the first omitted term)."""
    if q == 0.0:
        return 0
    term, m = 1.0, 0
    while True:
        # ratio of consecutive |binom(-a, m)| q^m terms is q (a + m) / (m + 1)
        term *= q * (power + m) / (m + 1)
        m += 1
        if term <= SERIES_TOL / 2:
            return m - 1


SERIES_MAX_TERMS = _terms_needed(SERIES_MAX_RATIO, MAX_POWER) + 1
#: Elements per block of the exact pairwise sums (8 MB of float64).
PAIRWISE_BLOCK = 1 << 20
#: Root-finding tolerances of the per-deletion tau^2 equations, as the engine's Brent step.
ROOT_XTOL = 1e-15
ROOT_RTOL = 4 * np.finfo(float).eps
ROOT_MAX_ITER = 500


# --------------------------------------------------------------------------------------------------
# sums over j != i of w_j(t_i)^a f_j, for every deletion at once
# --------------------------------------------------------------------------------------------------


def _features(X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-study features [1, vec(x x'), x y, y^2]: every sum a WLS fit needs is a weighted total."""
    k, p = X.shape
    return np.hstack(
        [np.ones((k, 1)), (X[:, :, None] * X[:, None, :]).reshape(k, p * p), X * y[:, None], (y * y)[:, None]]
    )


@dataclass(frozen=True)
class _Unpacked:
    s: np.ndarray  # sum w^a               (n,)
    M: np.ndarray  # sum w^a x x'          (n, p, p)
    b: np.ndarray  # sum w^a x y           (n, p)
    c: np.ndarray  # sum w^a y^2           (n,)


def _unpack(S: np.ndarray, p: int) -> _Unpacked:
    n = S.shape[0]
    return _Unpacked(S[:, 0], S[:, 1 : 1 + p * p].reshape(n, p, p), S[:, 1 + p * p : 1 + p * p + p], S[:, -1])


class _DeletionSums:
    """Sums :math:`\\sum_{j \\ne i} w_j(t_i)^a f_j` for many deletions i, by the centred power series."""

    def __init__(self, vi: np.ndarray, F: np.ndarray, center: float):
        self.vi = vi
        self.F = F
        self.center = float(center)
        self.scale = 1.0 / (float(vi.min()) + self.center)
        r = 1.0 / ((vi + self.center) * self.scale)
        n = SERIES_MAX_TERMS + MAX_POWER + 1
        R = np.empty((n, vi.size))
        R[0] = 1.0
        for m in range(1, n):
            R[m] = R[m - 1] * r
        self.moments = R @ F  # G_n = sum_j r_j^n f_j
        self.log_total = float(np.sum(np.log(vi + self.center)))
        self.series_calls = 0
        self.exact_rows = 0

    def _split(self, t):
        d = (t - self.center) * self.scale
        return d, np.abs(d) <= SERIES_MAX_RATIO

    def sums(self, idx: np.ndarray, t: np.ndarray, power: int) -> np.ndarray:
        """Rows ``idx`` (deleted studies) at their ``t``: sum over j != i of w_j(t_i)^power f_j."""
        out = np.empty((idx.size, self.F.shape[1]))
        d, series = self._split(t)
        if series.any():
            ds = d[series]
            M = _terms_needed(float(np.abs(ds).max()), power)
            m = np.arange(M + 1)
            coef = (-1.0) ** m * special.comb(power + m - 1, m, exact=False)
            P = ds[:, None] ** m[None, :] * coef
            total = self.scale**power * (P @ self.moments[power : power + M + 1])
            own = idx[series]
            out[series] = total - (1.0 / (self.vi[own] + t[series]))[:, None] ** power * self.F[own]
            self.series_calls += 1
        if not series.all():
            exact = ~series
            out[exact] = self._pairwise(idx[exact], t[exact], power)
            self.exact_rows += int(exact.sum())
        return out

    def log_sums(self, idx: np.ndarray, t: np.ndarray) -> np.ndarray:
        """Rows ``idx`` at their ``t``: sum over j != i of log(v_j + t_i)."""
        out = np.empty(idx.size)
        d, series = self._split(t)
        if series.any():
            ds = d[series]
            M = max(1, _terms_needed(float(np.abs(ds).max()), 1))
            m = np.arange(1, M + 1)
            coef = (-1.0) ** (m + 1) / m
            total = self.log_total + (ds[:, None] ** m[None, :] * coef) @ self.moments[1 : M + 1, 0]
            out[series] = total - np.log(self.vi[idx[series]] + t[series])
        if not series.all():
            exact = ~series
            rows, ts = idx[exact], t[exact]
            vals = np.empty(rows.size)
            for sl in self._blocks(rows.size):
                L = np.log(self.vi[None, :] + ts[sl, None])
                L[np.arange(L.shape[0]), rows[sl]] = 0.0
                vals[sl] = L.sum(axis=1)
            out[exact] = vals
        return out

    def _blocks(self, n: int):
        step = max(1, PAIRWISE_BLOCK // self.vi.size)
        for start in range(0, n, step):
            yield slice(start, min(n, start + step))

    def _pairwise(self, rows: np.ndarray, ts: np.ndarray, power: int) -> np.ndarray:
        out = np.empty((rows.size, self.F.shape[1]))
        for sl in self._blocks(rows.size):
            W = 1.0 / (self.vi[None, :] + ts[sl, None])
            W[np.arange(W.shape[0]), rows[sl]] = 0.0
            out[sl] = (W**power) @ self.F
        return out


# --------------------------------------------------------------------------------------------------
# per-deletion WLS pieces
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Pieces:
    A: np.ndarray  # (X'WX)^{-1}              (n, p, p)
    beta: np.ndarray  # WLS coefficients (of the residual outcomes)  (n, p)
    rss: np.ndarray  # sum w e^2
    wwee: np.ndarray  # sum w^2 e^2
    s1: np.ndarray  # sum w
    s2: np.ndarray  # sum w^2
    AM2: np.ndarray  # A X'W^2X                 (n, p, p)


def _pieces(S1: np.ndarray, S2: np.ndarray, p: int) -> _Pieces:
    u1, u2 = _unpack(S1, p), _unpack(S2, p)
    A = np.linalg.inv(u1.M)
    beta = np.einsum("nij,nj->ni", A, u1.b)
    rss = u1.c - np.einsum("ni,ni->n", u1.b, beta)
    wwee = u2.c - 2.0 * np.einsum("ni,ni->n", u2.b, beta) + np.einsum("ni,nij,nj->n", beta, u2.M, beta)
    return _Pieces(A, beta, rss, wwee, u1.s, u2.s, A @ u2.M)


def _trace(M: np.ndarray) -> np.ndarray:
    return np.einsum("nii->n", M)


class _Problem:
    """The k deletion problems of one fitted model (residual outcomes, features, sums objects)."""

    def __init__(self, fit: MetaFit):
        self.fit = fit
        self.X = fit.X
        self.k, self.p = fit.X.shape
        self.k1 = self.k - 1  # studies left after a deletion
        self.df = self.k1 - self.p
        self.vi = fit.vi
        self.ytil = fit.yi - fit.X @ fit.beta
        self.F = _features(self.X, self.ytil)
        self.idx = np.arange(self.k)
        self.fe = _DeletionSums(self.vi, self.F, 0.0)
        self._around: dict[float, _DeletionSums] = {0.0: self.fe}

    def sums_around(self, center: float) -> _DeletionSums:
        if center not in self._around:
            self._around[center] = _DeletionSums(self.vi, self.F, center)
        return self._around[center]

    def pieces(self, sums: _DeletionSums, idx, t) -> _Pieces:
        return _pieces(sums.sums(idx, t, 1), sums.sums(idx, t, 2), self.p)

    # scalar equations g_i(t) = 0 with a positive slope estimate ~ -g'(t) for Newton-type steps
    def equation(self, method: str, sums: _DeletionSums, idx, t):
        pc = self.pieces(sums, idx, t)
        if method in ("PM", "EB"):
            return pc.rss - self.df, pc.wwee
        if method == "ML":
            return pc.wwee - pc.s1, pc.s2
        # REML: score = y'PPy - tr P, expected information = tr(PP)
        M3 = _unpack(sums.sums(idx, t, 3), self.p).M
        trP = pc.s1 - _trace(pc.AM2)
        trPP = pc.s2 - 2.0 * _trace(pc.A @ M3) + np.einsum("nij,nji->n", pc.AM2, pc.AM2)
        return pc.wwee - trP, trPP

    def loglik(self, sums: _DeletionSums, idx, t, reml: bool) -> np.ndarray:
        """Log-likelihood up to terms that do not depend on tau^2 (they cancel in comparisons)."""
        pc = self.pieces(sums, idx, t)
        ll = -0.5 * sums.log_sums(idx, t) - 0.5 * pc.rss
        if reml:
            ll = ll + 0.5 * np.linalg.slogdet(pc.A)[1]
        return ll


def _solve_roots(problem: _Problem, method: str, sums: _DeletionSums, idx, t_start, g0):
    """Roots of the equations g_i(t) = 0 on [0, inf) (g decreasing through a root; a maximum of the
    likelihood for ML/REML), all rows together, each from its own start.

    Each row keeps a bracket [lo, hi]: ``hi`` is the smallest t seen with g < 0, ``lo`` the largest
    with g > 0 (t = 0 counts when g_i(0) = g0 > 0).  A step is the secant through the last two
    iterates when it falls inside the bracket, else the Fisher/Newton step ``t + g/slope``, else
    bisection of a complete bracket, or, with no upper end yet, the Newton step upwards.  A row
    whose g(0) <= 0 has no valid lower end: it follows Fisher steps down and stops at the boundary
    t = 0 when a step would cross it (as the engine's cut steps do), or at an interior root when its
    iterates find g > 0.  A row stops when its step is below ROOT_XTOL + ROOT_RTOL * t.
    """
    n = idx.size
    t = np.asarray(t_start, dtype=float).copy()
    lo = np.zeros(n)
    lo_valid = np.asarray(g0, dtype=float) > 0
    hi = np.full(n, np.inf)
    t_prev = np.full(n, np.nan)
    g_prev = np.full(n, np.nan)
    iterations = np.zeros(n, dtype=int)
    active = np.ones(n, dtype=bool)
    for it in range(1, ROOT_MAX_ITER + 1):
        a = np.flatnonzero(active)
        if a.size == 0:
            break
        ta = t[a]
        g, slope = problem.equation(method, sums, idx[a], ta)
        iterations[a] = it
        pos, neg = g > 0, g < 0
        lo[a] = np.where(pos, ta, lo[a])
        hi[a] = np.where(neg, np.minimum(ta, hi[a]), hi[a])
        lo_valid[a] |= pos
        with np.errstate(divide="ignore", invalid="ignore"):
            newton = np.where(slope > 0, ta + g / slope, np.nan)
            secant = ta - g * (ta - t_prev[a]) / (g - g_prev[a])
        la, ha, va = lo[a], hi[a], lo_valid[a]
        inside_s = np.isfinite(secant) & (secant > la) & (secant < ha)
        inside_n = np.isfinite(newton) & (newton > la) & (newton < ha)
        upward = np.where(np.isfinite(newton) & (newton > ta), newton, 2.0 * ta + 1e-8)
        fallback = np.where(va & np.isfinite(ha), 0.5 * (la + ha), np.where(va, upward, 0.0))
        cand = np.where(inside_s, secant, np.where(inside_n, newton, fallback))
        done = (g == 0.0) | (np.abs(cand - ta) <= ROOT_XTOL + ROOT_RTOL * np.abs(cand))
        done |= va & np.isfinite(ha) & (ha - la <= ROOT_XTOL + ROOT_RTOL * ha)
        t_prev[a], g_prev[a] = ta, g
        t[a] = np.where(g == 0.0, ta, cand)
        active[a[done]] = False
    if active.any():
        bad = idx[active]
        raise ConvergenceError(
            f"{method} tau^2 of the leave-one-out fits did not converge in {ROOT_MAX_ITER} iterations "
            f"(deleting effect size(s) {', '.join(str(i + 1) for i in bad[:5])}); try estimator DL or PM"
        )
    return t, iterations


def _he_deleted(problem: _Problem) -> np.ndarray:
    """Hedges' (HE) tau^2 of every deleted data set: OLS sums are totals minus the i-th term."""
    X, v, F, p, k = problem.X, problem.vi, problem.F, problem.p, problem.k
    Fv = (X[:, :, None] * X[:, None, :] * v[:, None, None]).reshape(k, p * p)
    u = _unpack(F.sum(axis=0)[None, :] - F, p)
    A = np.linalg.inv(u.M)
    beta = np.einsum("nij,nj->ni", A, u.b)
    rss = u.c - np.einsum("ni,ni->n", u.b, beta)
    sum_vh = _trace(A @ (Fv.sum(axis=0)[None, :] - Fv).reshape(k, p, p))  # sum_j v_j h_j (OLS hat values)
    return np.maximum(0.0, (rss - (v.sum() - v - sum_vh)) / problem.df)


def _deleted_tau2(problem: _Problem) -> tuple[np.ndarray, np.ndarray]:
    """tau^2 of every leave-one-out fit with the model's estimator, and the iterations used."""
    fit, df, idx = problem.fit, problem.df, problem.idx
    method = fit.method
    k1 = problem.k1
    zeros = np.zeros(problem.k)
    iters = np.zeros(problem.k, dtype=int)
    if method == "FE":
        return zeros, iters
    if method in ("DL", "HS"):
        pc = problem.pieces(problem.fe, idx, zeros)
        if method == "DL":
            trP = pc.s1 - _trace(pc.AM2)
            return np.maximum(0.0, (pc.rss - df) / trP), iters
        return np.maximum(0.0, (pc.rss - k1) / pc.s1), iters
    if method == "HE":
        return _he_deleted(problem), iters
    if method == "SJ":
        # tau0^2 = var(y_(-i)) (divisor k - 1), from the centred outcomes for accuracy
        yc = fit.yi - fit.yi.mean()
        s_y, s_yy = yc.sum() - yc, (yc * yc).sum() - yc * yc
        tau0 = s_yy / k1 - (s_y / k1) ** 2
        sums = problem.sums_around(float(np.var(fit.yi)))
        pc = problem.pieces(sums, idx, tau0)
        return np.maximum(0.0, tau0 * pc.rss / df), iters
    if method not in ("ML", "REML", "PM", "EB"):
        raise ValueError(f"leave-one-out fits are not available for estimator {method!r}")

    # iterative estimators: a root search warm-started at the full-data estimate.  Q(tau^2)
    # decreases, so PM/EB have no interior root when Q(0) <= k - 1 - p.  The likelihood can have an
    # interior maximum beside the boundary one; where the score at 0 is not positive, ML/REML
    # start, as the engine does, from the deleted data's HE estimate (or the full-data estimate).
    g0, _ = problem.equation(method, problem.fe, idx, zeros)
    tau2 = zeros.copy()
    start = np.full(problem.k, fit.tau2)
    if method in ("ML", "REML"):
        start = np.where(g0 > 0, fit.tau2, np.maximum(fit.tau2, _he_deleted(problem)))
    search = (g0 > 0) | ((start > 0) & (method in ("ML", "REML")))
    if search.any():
        sums = problem.sums_around(fit.tau2)
        rows = idx[search]
        start = start[search]
        roots, it = _solve_roots(problem, method, sums, rows, start, g0[search])
        tau2[search] = roots
        iters[search] = it
        if method in ("ML", "REML"):
            # as the engine (metafor's ll0check): the boundary can beat an interior stationary point
            reml = method == "REML"
            pos = rows[roots > 0]
            if pos.size:
                ll_t = problem.loglik(sums, pos, tau2[pos], reml)
                ll_0 = problem.loglik(problem.fe, pos, np.zeros(pos.size), reml)
                worse = ll_0 > ll_t
                if worse.any():
                    warnings.warn(
                        f"{method} log-likelihood is higher at tau^2 = 0 for {int(worse.sum())} "
                        "leave-one-out fit(s); using the boundary",
                        stacklevel=3,
                    )
                    tau2[pos[worse]] = 0.0
    return tau2, iters


# --------------------------------------------------------------------------------------------------
# the k deleted fits
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeletionFits:
    """The k leave-one-out fits of a model, row i with effect size i deleted (metafor's names).

    ``vb_all_diag`` is the diagonal of :math:`(X'W(\\tau^2_{(-i)})X)^{-1}` over *all* k effect
    sizes, which metafor's DFBETAS standardise by.
    """

    tau2: np.ndarray  # (k,)
    beta: np.ndarray  # (k, p)
    vb: np.ndarray  # (k, p, p)
    s2w: np.ndarray  # (k,)
    QE: np.ndarray  # (k,)
    QE_df: int
    vt: np.ndarray  # typical within-study variance of the deleted data
    ddf: float  # k - 1 - p for t/knha tests, inf for z
    vb_all_diag: np.ndarray  # (k, p)
    iterations: np.ndarray  # (k,) root-finding iterations (0 for closed-form estimators)


def deletion_fits(fit: MetaFit) -> DeletionFits:
    """All k leave-one-out refits of ``fit`` (same estimator, test and level), vectorised.

    See the module docstring for the algorithm.  Requires k - 1 > p, so that every deleted model
    keeps residual degrees of freedom.
    """
    k, p = fit.X.shape
    if k - 1 <= p:
        raise ValueError(f"leave-one-out diagnostics need k > p + 1 effect sizes; got k = {k}, p = {p}")
    problem = _Problem(fit)
    tau2, iterations = _deleted_tau2(problem)
    idx, df = problem.idx, problem.df

    # the deleted fits at their own tau^2: totals around the full-data estimate minus the i-th term
    center = fit.tau2 if fit.method not in ("FE",) else 0.0
    sums = problem.sums_around(center)
    S1 = sums.sums(idx, tau2, 1)
    S2 = sums.sums(idx, tau2, 2)
    pc = _pieces(S1, S2, p)
    beta = fit.beta[None, :] + pc.beta
    if fit.test == "knha":
        eps = np.finfo(float).eps
        s2w = np.where(pc.rss > eps, pc.rss / df, 0.0)
    else:
        s2w = np.ones(k)
    vb = s2w[:, None, None] * pc.A

    # metafor standardises DFBETAS by the covariance over all k studies at tau2_(-i)
    w_own = 1.0 / (fit.vi + tau2)
    M_all = _unpack(S1, p).M + w_own[:, None, None] * (fit.X[:, :, None] * fit.X[:, None, :])
    vb_all_diag = np.diagonal(np.linalg.inv(M_all), axis1=1, axis2=2)

    # heterogeneity of the deleted data, always with the equal-effects weights 1/v
    fe = problem.pieces(problem.fe, idx, np.zeros(k))
    QE = np.maximum(0.0, fe.rss)
    vt = df / (fe.s1 - _trace(fe.AM2))
    ddf = float(df) if fit.test in ("t", "knha") else np.inf
    return DeletionFits(tau2, beta, vb, s2w, QE, df, vt, ddf, vb_all_diag.copy(), iterations)
