r"""GOSH: the model fitted to every subset (or to random subsets) of the effect sizes.

A GOSH analysis ("graphical display of study heterogeneity"; Olkin, Dahabreh & Trikalinos 2012,
*Res Synth Methods* 3, 214-223) fits the same meta-analytic model to all :math:`2^k - 1` non-empty
subsets of the k effect sizes, or, when that is too many, to a random sample of subsets, and looks
at the distribution of the pooled estimate and the heterogeneity statistics across subsets.  The
quantities and conventions are those of ``metafor::gosh`` (``gosh.rma``, metafor 3.8-1):

- **subsets**: every subset with at least ``min_k`` effects (metafor: p = 1 for an intercept-only
  model).  Subsets are listed by size, and within one size in the order of ``expand.grid`` (the
  inclusion pattern read as a binary number with effect 1 as the lowest bit, ascending).
- **random subsets**: metafor draws the size m with probability :math:`\binom{k}{m}/2^k` and then
  m effects at random, which is the same as including every effect independently with probability
  1/2 and discarding subsets smaller than ``min_k``.  That is what :func:`random_subsets` does,
  from a PCG64 stream seeded with an integer, so the same seed gives the same subsets bit for bit
  (not R's stream: the subsets differ from R's, their distribution does not).  Subsets are drawn
  with replacement, as metafor does, and then ordered by size like the exhaustive list.
- **per subset** (:math:`S`, :math:`k_S = |S|`, :math:`w_i = 1/v_i`):

  .. math::

      \hat\theta_{FE} = \frac{\sum_S w_i y_i}{\sum_S w_i}, \quad
      Q = \sum_S w_i (y_i - \hat\theta_{FE})^2, \quad
      \hat\theta = \frac{\sum_S y_i / (v_i + \hat\tau^2)}{\sum_S 1 / (v_i + \hat\tau^2)}

  For FE and DL metafor's ``gosh`` uses closed forms (its "model 1/2" fast path):
  :math:`I^2 = \max(0, 100 (Q - (k_S - 1)) / Q)` and :math:`H^2 = Q / (k_S - 1)` for both, so for DL
  :math:`H^2` may fall below 1 when :math:`\hat\tau^2 = 0` (``rma.uni`` would report 1).  For every
  other estimator each subset is a full ``rma.uni`` fit: :math:`I^2 = 100\hat\tau^2/(\tilde v +
  \hat\tau^2)`, :math:`H^2 = 1 + \hat\tau^2/\tilde v` with the typical within-study variance
  :math:`\tilde v = (k_S - 1)/(\sum_S w_i - \sum_S w_i^2 / \sum_S w_i)` (Higgins & Thompson 2002,
  eq. 9).  A subset of one effect has Q = 0, :math:`\tau^2 = 0`, :math:`I^2 = 0`, :math:`H^2 = 1`.
- **one deliberate difference**: for ML and REML each subset gets the global maximum of its
  likelihood, as :func:`~alliancemeta.studies.random_effects.estimate_tau2` does, where metafor keeps
  an interior local maximum unless the boundary :math:`\tau^2 = 0` beats it by more than 1.2e-4 (see
  :data:`LL0_TOL`; ``fit_subsets(..., ll0_tol=METAFOR_LL0_TOL)`` reproduces metafor exactly).

Computation.  A subset is a column of a 0/1 membership matrix M (k x b, b subsets per batch), so
every sum over a subset is a matrix product: :math:`\sum_S w_i^a f_i = (f^\top (M \circ W^{a}))`
with :math:`W_{ij} = 1/(v_i + \tau^2_j)`, for the features :math:`f \in \{1, y, y^2\}` of the effects
centred at their full-data equal-effects mean (so the one-pass :math:`Q = \sum w y^2 - (\sum w y)^2 /
\sum w` carries no cancellation error worth speaking of).  Everything at :math:`\tau^2 = 0` (FE, DL,
HE, HS and the starting values) is one product of a 13 x k matrix with M; SJ needs one more pass.
PM/EB solve :math:`Q(\tau^2) = k_S - 1` and ML/REML their score equations for all subsets of a batch
at once (below), each subset with its own convergence check; finished subsets leave the work arrays.
The memberships are stored as packed bits (k/8 bytes per subset), never as a k x n boolean matrix;
batches hold about :data:`BATCH_ELEMENTS` matrix entries, which keeps them in the processor's cache.

Root finding (ML, REML).  With the sums :math:`S_a = \sum w^a`, :math:`E_a = \sum w^a (y -
\hat\theta)^2`, :math:`F = \sum w^2 (y - \hat\theta)` the REML score (times 2) and its derivative are

.. math::

    U(\tau^2) = E_2 - \operatorname{tr}P, \quad \operatorname{tr}P = S_1 - S_2/S_1, \qquad
    U'(\tau^2) = -2E_3 + 2F^2/S_1 + \operatorname{tr}(PP), \quad
    \operatorname{tr}(PP) = S_2 - 2S_3/S_1 + S_2^2/S_1^2

(ML: :math:`U = E_2 - S_1`, :math:`U' = -2E_3 + 2F^2/S_1 + S_2`; Viechtbauer 2005, *J Educ Behav
Stat* 30, 261-293, eqs. 10-12 for the intercept-only model).  The likelihood of a small subset can
have several local maxima, so the iteration follows ``rma.uni``'s path to pick the same one: Fisher
scoring (:math:`\Delta = U/\operatorname{tr}(PP)`, resp. :math:`U/S_2`) from the HE estimate, a step
that would make :math:`\tau^2` negative halved until it does not.  It is accelerated where that is
safe: once a sign change of U brackets a root, Newton steps (:math:`-U/U'`) inside the bracket
(bisection when a step would leave it); before that, a Newton step only when it is short,
:math:`|\Delta| \le` :data:`NEWTON_TRUST` :math:`(\tau^2 + \bar v)` with :math:`\bar v = S_2/S_3` at
:math:`\tau^2 = 0` (an average of the v weighted towards the smallest), so the weights change by a
bounded factor and the step cannot jump over another local maximum.  A subset has converged when
its step is below :data:`ROOT_RTOL` :math:`\cdot\tau^2` (Newton steps then leave an error of the
order of the square of that); it is at the boundary 0 when :math:`U(0) \le 0` and the iterates,
all with negative U, fall below :data:`BOUNDARY_RTOL` :math:`\cdot \bar v`.  Then, as metafor's
``ll0check``, an interior solution is replaced by 0 when the log-likelihood there is higher (see
:data:`LL0_TOL`).  The few subsets not finished after :data:`MAX_VECTOR_ITER` steps (Fisher scoring
crawling along a flat likelihood) are pooled and rerun on the same path with up to :data:`MAX_ITER`
steps; a subset that still has not converged gets NaN for every statistic and is counted in
``n_failed``, never returned as a silent number.  PM and EB use the same iteration on
:math:`Q(\tau^2) - (k_S - 1)`, decreasing and convex, from 0 (Newton then converges monotonically).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from alliancemeta.studies.random_effects import ESTIMATORS

if TYPE_CHECKING:
    import pandas as pd

#: Most subsets an exhaustive analysis may list (all of k = 23): each subset's results take about 50 bytes
#: per model plus the enumeration's work arrays, so more would break the 2 GiB memory budget; a larger
#: ``meta.gosh_max_k`` is refused with a message to use random subsets.
MAX_EXACT_SUBSETS = (1 << 23) - 1
#: Matrix entries (effects x subsets) per batch: 2^17 doubles = 1 MiB per array, small enough to stay
#: in the processor's cache across the dozen arrays of one Newton step.
BATCH_ELEMENTS = 1 << 17
#: Steps per batch before a subset is set aside for the pooled slow path (the accelerated iteration needs
#: 3-8 steps on ordinary data; rma.uni's path can crawl along a flat likelihood for a hundred and more).
MAX_VECTOR_ITER = 40
#: The root finding drops finished subsets from its work arrays once fewer than this share still iterate.
COMPACT_FRACTION = 0.5
#: Most steps for the slow subsets (rma.uni's Fisher scoring can crawl along a flat likelihood).
MAX_ITER = 2000
#: Convergence of the vectorised root finding: a step below ROOT_RTOL * tau^2 or ROOT_ATOL.  Near the root
#: the steps are Newton steps, so the error left after such a step is of the order of its square.
ROOT_RTOL = 1e-12
ROOT_ATOL = 1e-16
#: A Newton step shorter than NEWTON_FINAL * (tau^2 + v) ends the iteration where the observed curvature
#: is at least half the expected one: the error it leaves, of the order of its square relative to
#: tau^2 + v, is below 1e-14 of that scale, so the step that would confirm it is not taken.
NEWTON_FINAL = 1e-7
#: Before a sign change brackets the root, a Newton step is taken only when it is shorter than
#: NEWTON_TRUST * (tau^2 + v), v = sum w^2 / sum w^3 at tau^2 = 0 (an average of the subset's sampling
#: variances weighted towards the smallest): the weights 1/(v + tau^2) then change by a bounded factor, so
#: the local model holds and the step cannot jump over another local maximum; otherwise rma.uni's Fisher step.
NEWTON_TRUST = 0.5
#: A subset whose equation is negative at 0 and at every point visited is at the boundary once the
#: iterates fall below BOUNDARY_RTOL * v (v as for NEWTON_TRUST; rma.uni's halved Fisher steps approach 0
#: geometrically, and no root can hide that close to 0 on the scale of the sampling variances).
BOUNDARY_RTOL = 1e-10
#: ``ll0check``: an interior ML/REML solution is replaced by the boundary tau^2 = 0 when the log-likelihood
#: there is higher by more than this margin (above round-off of a log-likelihood of O(k)), so every subset
#: gets the global maximum, as :func:`~alliancemeta.studies.random_effects.estimate_tau2` does.  metafor keeps
#: the interior local maximum unless the boundary is better by more than its ``control$tol``
#: (.Machine$double.eps^0.25 = 1.2e-4); on molloy2014 this happens in a handful of the 65,535 subsets.
LL0_TOL = 1e-10
#: metafor's margin (``rma.uni``'s default ``control$tol``), for exact parity with ``metafor::gosh``.
METAFOR_LL0_TOL = np.finfo(float).eps ** 0.25

GOSH_STATISTICS = ("estimate", "tau2", "I2", "Q")
GOSH_SUMMARY_COLUMNS = ("model", "statistic", "n_subsets", "mean", "sd", "q05", "q50", "q95")
#: Trailing columns of ``gosh_summary.csv``: the value on all k effects, how the subsets were chosen,
#: how many subsets could not be fitted, and the estimate's quantiles back-transformed to r.
GOSH_EXTRA_COLUMNS = ("full", "k", "subsets", "n_failed", "r_mean", "r_q05", "r_q50", "r_q95", "note")


# --------------------------------------------------------------------------------------------------
# subsets
# --------------------------------------------------------------------------------------------------


def n_subsets_total(k: int, min_k: int = 1) -> int:
    r"""Number of subsets with at least ``min_k`` of k effects, :math:`\sum_{m \ge min_k}\binom{k}{m}`."""
    return sum(math.comb(k, m) for m in range(max(min_k, 0), k + 1))


def _n_bytes(k: int) -> int:
    return (k + 7) // 8


def subset_sizes(packed: np.ndarray) -> np.ndarray:
    """Number of effects in each subset of a packed membership array (n, ceil(k/8))."""
    return np.bitwise_count(packed).sum(axis=1, dtype=np.int64)


def unpack_subsets(packed: np.ndarray, k: int) -> np.ndarray:
    """Boolean membership matrix (n, k) of packed subsets: column j says whether effect j+1 is included."""
    return np.unpackbits(packed, axis=1, count=k, bitorder="little").astype(bool)


def all_subsets(k: int, min_k: int = 1) -> np.ndarray:
    """Every subset of k effects with at least ``min_k`` members, in metafor's ``gosh`` order.

    Returns packed memberships, shape (n, ceil(k/8)), uint8, bit j (little-endian bit order) for
    effect j+1: subsets by size, and within one size by the binary number of the inclusion pattern
    (``expand.grid`` order, in which the first effect varies fastest).
    """
    total = n_subsets_total(k, min_k)
    if k > 62 or total > MAX_EXACT_SUBSETS:
        raise ValueError(
            f"all {total:,} subsets of k = {k} effects are too many to enumerate (at most {MAX_EXACT_SUBSETS:,}); "
            "use random subsets (lower meta.gosh_max_k)"
        )
    masks = np.arange(1 << k, dtype=np.uint64)
    sizes = np.bitwise_count(masks)
    # a stable sort by size keeps ascending mask order within each size, as R's order() does
    order = np.argsort(sizes, kind="stable")
    order = order[sizes[order] >= min_k]
    masks = masks[order]
    return np.ascontiguousarray(masks.astype("<u8").view(np.uint8).reshape(-1, 8)[:, : _n_bytes(k)])


def random_subsets(k: int, n: int, seed: int, min_k: int = 1) -> np.ndarray:
    """``n`` random subsets of k effects, each effect included with probability 1/2, size >= ``min_k``.

    The bits come from ``numpy.random.PCG64(seed)`` raw 64-bit outputs, ceil(k/64) words per
    candidate subset; candidates smaller than ``min_k`` are skipped.  The result is the first ``n``
    valid candidates of that stream, so it depends on ``seed`` only (not on chunking or platform).
    Subsets are returned in the order drawn, packed as in :func:`all_subsets`.
    """
    if n < 1:
        raise ValueError("the number of random subsets must be at least 1")
    if not 1 <= min_k <= k:
        raise ValueError(f"min_k = {min_k} must lie in [1, k = {k}]")
    words = (k + 63) // 64
    nbytes = _n_bytes(k)
    last_mask = np.uint8((1 << (k - 8 * (nbytes - 1))) - 1)
    bitgen = np.random.PCG64(int(seed))
    out = np.empty((n, nbytes), dtype=np.uint8)
    filled = 0
    chunk = 1 << 16
    while filled < n:
        raw = bitgen.random_raw(chunk * words).astype("<u8", copy=False)
        cand = raw.view(np.uint8).reshape(chunk, 8 * words)[:, :nbytes].copy()
        cand[:, -1] &= last_mask
        cand = cand[subset_sizes(cand) >= min_k]
        take = min(n - filled, cand.shape[0])
        out[filled : filled + take] = cand[:take]
        filled += take
    return out


# --------------------------------------------------------------------------------------------------
# vectorised fits
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SubsetFits:
    """Per-subset statistics of one model (arrays in the order of the memberships given)."""

    k: np.ndarray  # effects in the subset
    estimate: np.ndarray  # pooled estimate (Fisher-z scale for correlations)
    tau2: np.ndarray
    I2: np.ndarray  # percent
    H2: np.ndarray
    QE: np.ndarray  # Cochran's Q with inverse-variance weights
    n_failed: int  # subsets whose tau^2 did not converge in MAX_ITER steps (all values NaN)
    n_slow: int  # subsets that needed more than MAX_VECTOR_ITER steps
    max_iterations: int  # most steps any subset needed


class _Data:
    """The k effects, centred at their equal-effects mean ``center`` (so sums carry no offset)."""

    def __init__(self, yi: np.ndarray, vi: np.ndarray):
        self.vi = vi
        self.w = w = 1.0 / vi
        self.center = float(np.sum(w * yi) / np.sum(w))
        yc = yi - self.center
        self.F = np.vstack([np.ones_like(yc), yc, yc * yc])  # features 1, y, y^2 (3, k)
        # everything any estimator needs at tau^2 = 0, as one matrix product with the memberships:
        # rows 0-2: sums of 1, y, y^2; row 3: of v; rows 4-6, 7-9, 10-12: of w F, w^2 F, w^3 F
        self.A0 = np.vstack([self.F, vi[None, :], w * self.F, w**2 * self.F, w**3 * self.F])


class _Batch:
    """One batch of subsets: membership matrix M (k, b) of 0/1 doubles and its sums at tau^2 = 0."""

    def __init__(self, M: np.ndarray, data: _Data):
        self.data = data
        with np.errstate(divide="ignore"):
            self.vm = data.vi[:, None] / M  # v where included, inf elsewhere: 1 / (vm + t) = M o W
        self.G0 = data.A0 @ M  # (13, b)
        self.ks = self.G0[0]

    @classmethod
    def _subset(cls, batch: _Batch, cols: np.ndarray) -> _Batch:
        """The batch restricted to the subsets ``cols``."""
        out = cls.__new__(cls)
        out.data = batch.data
        out.vm = batch.vm[:, cols]
        out.G0 = batch.G0[:, cols]
        out.ks = out.G0[0]
        return out

    def sums0(self, powers: int) -> list[np.ndarray]:
        """The sums of w^a F at tau^2 = 0, a = 1..powers (no pass over the matrix)."""
        return [self.G0[4 + 3 * a : 7 + 3 * a] for a in range(powers)]

    def sums(self, t: np.ndarray, powers: int, vm: np.ndarray | None = None) -> list[np.ndarray]:
        """[F @ (M o W^a) for a = 1..powers], each (3, b): sums of w^a, w^a y, w^a y^2 per subset,
        with :math:`W_{ij} = 1/(v_i + t_j)`; ``vm`` is a column subset of :attr:`vm` matching ``t``."""
        W = (self.vm if vm is None else vm) + t[None, :]
        np.reciprocal(W, out=W)
        F = self.data.F
        out = [F @ W]
        if powers > 1:
            Wa = W * W
            out.append(F @ Wa)
            if powers > 2:
                Wa *= W
                out.append(F @ Wa)
        return out

    def pooled(self, t: np.ndarray) -> np.ndarray:
        """Weighted mean of each subset (centred scale) with weights 1/(v + t)."""
        S = self.sums(t, 1)[0]
        return S[1] / S[0]

    def fe(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        r"""Sum of w, sum of w^2, the equal-effects mean (centred scale) and
        :math:`Q = \sum w y^2 - (\sum w y)^2 / \sum w` (y centred at the full-data mean, so the
        cancellation costs a few digits at most: measured 3e-13 relative to metafor's two-pass Q)."""
        S1, T1, U1 = self.G0[4:7]
        mu = T1 / S1
        return S1, self.G0[7], mu, np.maximum(U1 - T1 * mu, 0.0)

    def he(self) -> np.ndarray:
        r"""HE estimate (Hedges 1983): :math:`(\sum (y - \bar y)^2 - (1 - 1/k)\sum v) / (k - 1)`."""
        ks, sy, syy, sv = self.G0[0:4]
        rss = np.maximum(syy - sy * sy / ks, 0.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            return (rss - (1.0 - 1.0 / ks) * sv) / (ks - 1.0)


def _equation(S: list[np.ndarray], kind: str, ks: np.ndarray):
    """The estimating equation U(t) of each subset from its sums ``S`` (see :meth:`_Batch.sums`),
    the Fisher information (expected -dU/dt) and the derivative dU/dt (module docstring)."""
    S1, T1, U1 = S[0]
    S2, T2, U2 = S[1]
    mu = T1 / S1
    E2 = U2 - 2.0 * mu * T2 + mu * mu * S2
    if kind == "q":  # Q(t) - (k - 1): decreasing and convex
        return (U1 - T1 * mu) - (ks - 1.0), E2, -E2
    S3, T3, U3 = S[2]
    E3 = U3 - 2.0 * mu * T3 + mu * mu * S3
    F = T2 - mu * S2
    if kind == "REML":
        info = S2 - 2.0 * S3 / S1 + (S2 / S1) ** 2
        U = E2 - (S1 - S2 / S1)
    else:
        info = S2
        U = E2 - S1
    return U, info, -2.0 * E3 + 2.0 * F * F / S1 + info


def _solve_tau2(batch: _Batch, t0: np.ndarray, method: str, max_iter: int) -> tuple[np.ndarray, int]:
    """Root of the estimating equation of every subset of a batch (module docstring, *Root finding*).

    Follows ``rma.uni``'s path (Fisher scoring from ``t0``; a step that would make tau^2 negative is
    halved until it does not) so that the same local maximum is found when the likelihood has
    several, and accelerates it: Newton steps once a sign change brackets the root, and before that
    when the Newton step is short (:data:`NEWTON_TRUST`).  Returns tau^2 (NaN where not converged
    in ``max_iter`` steps) and the number of steps taken.
    """
    ks = batch.ks
    b = ks.size
    kind = "q" if method in ("PM", "EB") else method
    powers = 2 if kind == "q" else 3
    U0 = _equation(batch.sums0(powers), kind, ks)[0]  # U(0) <= 0: tau^2 = 0 is a local solution
    # scale of the trust region: sum w^2 / sum w^3, an average of v weighted towards the smallest
    vref = batch.G0[7] / batch.G0[10]
    result = np.full(b, np.nan)
    # state of the compacted columns (vm's columns); `pos` lists those still iterating
    vm = batch.vm
    cols = np.arange(b)
    tc = np.maximum(t0, 0.0)
    lo = np.where(U0 > 0, 0.0, -1.0)  # largest t with U > 0 seen (-1: none)
    hi = np.full(b, np.inf)  # smallest t with U < 0 seen
    pos = np.arange(b)
    steps = 0
    for it in range(1, max_iter + 1):
        steps = it
        S = [s[:, pos] for s in batch.sums(tc, powers, vm)]
        t = tc[pos]
        c = cols[pos]
        U, info, dU = _equation(S, kind, ks[c])
        lo_a = np.where(U > 0, t, lo[pos])
        hi_a = np.where(U < 0, t, hi[pos])
        with np.errstate(divide="ignore", invalid="ignore"):
            fisher = U / info
            newton = np.where(dU < 0, -U / dU, np.nan)
            # rma.uni halves a step that would make tau^2 negative until it does not
            halve = np.exp2(np.ceil(np.log2(np.where(t + fisher < 0, -fisher / t, 1.0))))
        f_new = np.where(t + fisher < 0, np.maximum(t + fisher / halve, 0.0), t + fisher)
        n_new = t + newton
        bracketed = (lo_a >= 0) & np.isfinite(hi_a)
        in_bracket = (n_new > lo_a) & (n_new < hi_a)
        trusted = (np.abs(newton) <= NEWTON_TRUST * (t + vref[c])) & (n_new > 0) & in_bracket
        new = np.where(bracketed, np.where(in_bracket, n_new, np.nan), np.where(trusted, n_new, f_new))
        # inside a bracket: Fisher when Newton leaves it, bisection when both do
        f_in = (f_new > lo_a) & (f_new < hi_a)
        new = np.where(np.isnan(new), np.where(f_in, f_new, 0.5 * (np.maximum(lo_a, 0.0) + hi_a)), new)
        conv = np.abs(new - t) <= np.maximum(ROOT_RTOL * new, ROOT_ATOL)
        # a short Newton step at a well-curved root leaves an error of the order of its square: done
        took_newton = (new == n_new) & (np.abs(dU) >= 0.5 * info)
        conv |= took_newton & (np.abs(newton) <= NEWTON_FINAL * (t + vref[c]))
        # U = 0 exactly, or the boundary: at t = 0 with U <= 0, or approaching it with no positive U seen
        exact = U == 0.0
        boundary = ((U0[c] <= 0) & (lo_a < 0) & (U < 0) & (t <= BOUNDARY_RTOL * vref[c])) | ((t == 0.0) & (U <= 0.0))
        value = np.where(exact, t, np.where(boundary, 0.0, new))
        finished = (conv | exact | boundary) & np.isfinite(value)
        result[c[finished]] = value[finished]
        tc[pos] = new
        lo[pos] = lo_a
        hi[pos] = hi_a
        pos = pos[~finished]
        if pos.size == 0:
            break
        if pos.size < COMPACT_FRACTION * tc.size:  # drop the finished columns from the work arrays
            vm, cols, tc, lo, hi = vm[:, pos], cols[pos], tc[pos], lo[pos], hi[pos]
            pos = np.arange(pos.size)
    return result, steps


def _boundary_wins(batch: _Batch, t: np.ndarray, cols: np.ndarray, reml: bool, tol: float) -> np.ndarray:
    r"""Whether log L(0) - log L(t) > ``tol`` for the subsets ``cols`` (ML or REML; constants cancel):

    .. math:: \Delta = \tfrac12\sum\log(1 + t w_i) + \tfrac12(Q(t) - Q(0)) \;[+ \tfrac12\log(S_1(t)/S_1(0))]

    Since :math:`x/(1 + x) \le \log(1 + x) \le x`, the sum of logs lies between :math:`t S_1(t)` and
    :math:`t S_1(0)`; it is evaluated (one pass of logarithms) only for the subsets those bounds leave open.
    """
    vm = batch.vm[:, cols]
    S1, T1, U1 = batch.sums(t, 1, vm)[0]
    S1_0, T1_0, U1_0 = batch.G0[4:7, cols]
    rest = 0.5 * ((U1 - T1 * T1 / S1) - (U1_0 - T1_0 * T1_0 / S1_0))
    if reml:
        rest += 0.5 * np.log(S1 / S1_0)
    wins = rest + 0.5 * t * S1 > tol
    open_ = np.flatnonzero(~wins & (rest + 0.5 * t * S1_0 > tol))
    if open_.size:
        with np.errstate(divide="ignore"):
            wm = 1.0 / vm[:, open_]  # w where included, 0 elsewhere
        wins[open_] = rest[open_] + 0.5 * np.log1p(t[open_][None, :] * wm).sum(axis=0) > tol
    return wins


def _tau2_batch(batch: _Batch, method: str, max_iter: int, ll0_tol: float = LL0_TOL) -> tuple[np.ndarray, int]:
    """tau^2 of every subset of a batch (FE: 0); NaN where the iteration has not converged in
    ``max_iter`` steps.  Also returns the number of steps taken."""
    ks = batch.ks
    multi = ks > 1
    S1, S2, _, Q = batch.fe()
    tau2 = np.zeros(ks.size)
    with np.errstate(divide="ignore", invalid="ignore"):
        if method == "DL":
            tau2 = np.where(multi, np.maximum(0.0, (Q - (ks - 1.0)) / (S1 - S2 / S1)), 0.0)
        elif method == "HE":
            tau2 = np.where(multi, np.maximum(0.0, batch.he()), 0.0)
        elif method == "HS":
            tau2 = np.where(multi, np.maximum(0.0, (Q - ks) / S1), 0.0)
        elif method == "SJ":
            ks_, sy, syy = batch.G0[0:3]
            t0 = np.maximum(syy - sy * sy / ks_, 0.0) / ks  # var(y) (k - 1) / k
            S1t, T1t, U1t = batch.sums(t0, 1)[0]
            tau2 = np.where(multi, t0 * np.maximum(U1t - T1t * T1t / S1t, 0.0) / (ks - 1.0), 0.0)
    if method not in ("ML", "REML", "PM", "EB") or not multi.any():
        return tau2, 0
    cols = np.flatnonzero(multi)
    sub = batch if cols.size == ks.size else _Batch._subset(batch, cols)
    t0 = np.zeros(cols.size) if method in ("PM", "EB") else np.maximum(0.0, sub.he())
    sol, steps = _solve_tau2(sub, t0, method, max_iter)
    if method in ("ML", "REML"):
        inner = np.flatnonzero(sol > 0.0)  # NaN (unconverged) compares False
        if inner.size:
            sol[inner[_boundary_wins(sub, sol[inner], inner, method == "REML", ll0_tol)]] = 0.0
    tau2[cols] = sol
    return tau2, steps


def _finish(batch: _Batch, method: str, tau2: np.ndarray) -> tuple[np.ndarray, ...]:
    """estimate, tau2, I2, H2, Q of every subset of a batch given its tau^2 (NaN: not estimated)."""
    ks = batch.ks
    multi = ks > 1
    S1, S2, mu_fe, Q = batch.fe()
    failed = np.isnan(tau2)
    Q = np.where(multi, Q, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        if method in ("FE", "DL"):  # metafor's gosh fast path
            I2 = np.where(multi & (Q > 0.0), np.maximum(0.0, 100.0 * (Q - (ks - 1.0)) / Q), 0.0)
            H2 = np.where(multi, Q / (ks - 1.0), 1.0)
        else:
            vt = (ks - 1.0) / (S1 - S2 / S1)
            I2 = np.where(multi, 100.0 * tau2 / (vt + tau2), 0.0)
            H2 = np.where(multi, 1.0 + tau2 / vt, 1.0)
    estimate = mu_fe if method == "FE" else batch.pooled(np.where(failed, 0.0, tau2))
    nan = np.where(failed, np.nan, 0.0)
    return estimate + batch.data.center + nan, tau2, I2 + nan, H2 + nan, Q + nan


def _check_data(yi, vi) -> tuple[np.ndarray, np.ndarray]:
    yi = np.asarray(yi, dtype=float)
    vi = np.asarray(vi, dtype=float)
    if yi.ndim != 1 or yi.shape != vi.shape:
        raise ValueError("yi and vi must be one-dimensional arrays of the same length")
    if not (np.all(np.isfinite(yi)) and np.all(np.isfinite(vi))):
        raise ValueError("yi and vi must be finite")
    if np.any(vi <= 0):
        raise ValueError("sampling variances vi must be > 0")
    if yi.size < 2:
        raise ValueError(f"GOSH needs at least 2 effect sizes (got k = {yi.size})")
    return yi, vi


def fit_subsets(
    yi,
    vi,
    packed: np.ndarray,
    method: str = "FE",
    batch_elements: int = BATCH_ELEMENTS,
    ll0_tol: float = LL0_TOL,
) -> SubsetFits:
    """Fit ``method`` (FE DL HE HS SJ ML REML EB PM) to every subset in ``packed``.

    Parameters
    ----------
    yi, vi : array_like
        The k effect sizes and sampling variances.
    packed : ndarray of uint8, shape (n, ceil(k/8))
        Subset memberships as returned by :func:`all_subsets` or :func:`random_subsets`.
    method : str
        tau^2 estimator, as ``rma.uni``'s ``method``; definitions in the module docstring.
    batch_elements : int
        Matrix entries per batch (memory and speed trade-off; the results do not depend on it
        beyond round-off of summation order inside BLAS).
    ll0_tol : float
        ML/REML: margin by which the log-likelihood at tau^2 = 0 must exceed that of an interior
        solution to replace it (:data:`LL0_TOL`, the global maximum); ``METAFOR_LL0_TOL`` reproduces
        metafor, which keeps the interior local maximum unless the boundary is better by more.

    Returns
    -------
    SubsetFits
        Arrays of length n in the order of ``packed``.
    """
    yi, vi = _check_data(yi, vi)
    method = method.upper()
    if method not in ESTIMATORS:
        raise ValueError(f"unknown tau^2 estimator {method!r}; expected one of {', '.join(ESTIMATORS)}")
    k = yi.size
    if packed.ndim != 2 or packed.shape[1] != _n_bytes(k):
        raise ValueError(f"packed memberships must have shape (n, {_n_bytes(k)}) for k = {k}")
    n = packed.shape[0]
    sizes = subset_sizes(packed)
    if np.any(sizes < 1):
        raise ValueError("every subset must contain at least one effect")
    data = _Data(yi, vi)
    names = ("estimate", "tau2", "I2", "H2", "QE")
    out = {name: np.empty(n) for name in names}
    b = max(64, batch_elements // k)
    max_steps = 0

    def run(rows, max_iter):
        nonlocal max_steps
        # unpack the transposed bytes: effects come out as rows, already contiguous
        M = np.unpackbits(packed[rows].T, axis=0, count=k, bitorder="little").astype(np.float64)
        batch = _Batch(M, data)
        tau2, steps = _tau2_batch(batch, method, max_iter, ll0_tol)
        max_steps = max(max_steps, steps)
        for name, value in zip(names, _finish(batch, method, tau2), strict=True):
            out[name][rows] = value
        return np.isnan(tau2)

    # most subsets converge within MAX_VECTOR_ITER steps; the few slow ones are pooled and rerun
    # (the same path, deterministic) with up to MAX_ITER steps, so they do not hold up every batch
    slow = [start + np.flatnonzero(run(slice(start, min(n, start + b)), MAX_VECTOR_ITER)) for start in range(0, n, b)]
    slow = np.concatenate(slow) if slow else np.empty(0, dtype=np.int64)
    for start in range(0, slow.size, b):
        run(slow[start : start + b], MAX_ITER)
    n_failed = int(np.isnan(out["tau2"]).sum())
    return SubsetFits(k=sizes, **out, n_failed=n_failed, n_slow=int(slow.size), max_iterations=max_steps)


# --------------------------------------------------------------------------------------------------
# the analysis
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GoshResult:
    """A GOSH analysis of one model: per-subset statistics, subsets ordered by size (as metafor).

    ``membership`` holds the subsets as packed bits; :meth:`incl` unpacks rows of it into metafor's
    ``incl`` matrix.  ``full`` holds the same statistics on all k effects (the reference point of
    the figure).  ``exact`` says whether every subset was fitted or a random sample (``seed``).
    """

    method: str
    k: int
    min_k: int
    exact: bool
    seed: int | None
    membership: np.ndarray
    fits: SubsetFits
    full: SubsetFits

    @property
    def n_subsets(self) -> int:
        return int(self.membership.shape[0])

    @property
    def k_subset(self) -> np.ndarray:
        return self.fits.k

    @property
    def estimate(self) -> np.ndarray:
        return self.fits.estimate

    @property
    def tau2(self) -> np.ndarray:
        return self.fits.tau2

    @property
    def I2(self) -> np.ndarray:
        return self.fits.I2

    @property
    def H2(self) -> np.ndarray:
        return self.fits.H2

    @property
    def QE(self) -> np.ndarray:
        return self.fits.QE

    @property
    def n_failed(self) -> int:
        return self.fits.n_failed

    def incl(self, rows=None) -> np.ndarray:
        """Boolean inclusion matrix (rows x k) of the given subset rows (all when omitted)."""
        packed = self.membership if rows is None else self.membership[np.asarray(rows)]
        return unpack_subsets(packed, self.k)


def gosh_subsets(
    k: int, *, max_k: int, subsets: int, seed: int = 0, min_k: int = 1
) -> tuple[np.ndarray, bool]:
    """The subsets of a GOSH analysis, ordered by size: all of them when ``k <= max_k`` or when
    there are no more than ``subsets`` of them (metafor's rule), else ``subsets`` random ones.

    Returns the packed memberships and whether they are exhaustive.
    """
    if k < 2:
        raise ValueError(f"GOSH needs at least 2 effect sizes (got k = {k})")
    if not 1 <= min_k <= k:
        raise ValueError(f"min_k = {min_k} must lie in [1, k = {k}]")
    if subsets < 2:
        raise ValueError(f"the number of random subsets must be at least 2 (got {subsets})")
    total = n_subsets_total(k, min_k)
    if k <= max_k or total <= subsets:
        return all_subsets(k, min_k), True
    packed = random_subsets(k, subsets, seed, min_k)
    order = np.argsort(subset_sizes(packed), kind="stable")
    return packed[order], False


def gosh(
    yi,
    vi,
    methods=("FE",),
    *,
    max_k: int,
    subsets: int,
    seed: int = 0,
    min_k: int = 1,
) -> tuple[GoshResult, ...]:
    """GOSH analysis (Olkin, Dahabreh & Trikalinos 2012) of one or more models on the same subsets.

    Parameters
    ----------
    yi, vi : array_like
        Effect sizes (e.g. Fisher z) and sampling variances, k >= 2.
    methods : sequence of str
        tau^2 estimators (``FE`` for the equal-effects model); duplicates are fitted once.  The
        pipeline passes ``("FE", headline)``.
    max_k, subsets, seed :
        All subsets when ``k <= max_k`` (or when there are at most ``subsets``), else ``subsets``
        random subsets drawn from ``seed`` (settings ``meta.gosh_max_k``, ``meta.gosh_subsets``, and
        a seed derived from the config seed).
    min_k : int
        Smallest subset size (metafor: the number of model coefficients, 1).

    Returns
    -------
    tuple of GoshResult
        One per distinct method, in the order given.  Subsets whose tau^2 could not be estimated
        are NaN and counted in ``n_failed`` (a warning names the model).
    """
    yi, vi = _check_data(yi, vi)
    k = yi.size
    packed, exact = gosh_subsets(k, max_k=max_k, subsets=subsets, seed=seed, min_k=min_k)
    full_set = np.packbits(np.ones((1, k), dtype=np.uint8), axis=1, bitorder="little")
    results = []
    for method in dict.fromkeys(m.upper() for m in methods):
        fits = fit_subsets(yi, vi, packed, method)
        full = fit_subsets(yi, vi, full_set, method)
        if fits.n_failed:
            warnings.warn(
                f"GOSH {method}: tau^2 could not be estimated in {fits.n_failed:,} of {packed.shape[0]:,} subsets "
                "(reported as NaN and left out of the summaries); try estimator DL or PM",
                stacklevel=2,
            )
        results.append(GoshResult(method, k, min_k, exact, None if exact else int(seed), packed, fits, full))
    return tuple(results)


# --------------------------------------------------------------------------------------------------
# the summary table (SPEC §5: gosh_summary.csv)
# --------------------------------------------------------------------------------------------------


def _describe(values: np.ndarray) -> dict:
    x = values[np.isfinite(values)]
    if x.size == 0:
        return {"n_subsets": 0, "mean": np.nan, "sd": np.nan, "q05": np.nan, "q50": np.nan, "q95": np.nan}
    q05, q50, q95 = np.quantile(x, [0.05, 0.5, 0.95])  # R's default type 7
    return {
        "n_subsets": int(x.size),
        "mean": float(np.mean(x)),
        "sd": float(np.std(x, ddof=1)) if x.size > 1 else np.nan,
        "q05": float(q05),
        "q50": float(q50),
        "q95": float(q95),
    }


def _note(res: GoshResult) -> str:
    notes = (
        []
        if res.exact
        else [f"{res.n_subsets:,} random subsets of {n_subsets_total(res.k, res.min_k):,} (seed {res.seed})"]
    )
    if res.n_failed:
        notes.append(f"tau^2 did not converge in {res.n_failed:,} subsets (left out); try estimator DL or PM")
    return "; ".join(notes)


def gosh_summary_unavailable(methods, k: int, reason: str) -> pd.DataFrame:
    """``gosh_summary.csv`` when no GOSH analysis is possible (e.g. k < 2): the same rows and
    columns as :func:`gosh_summary_table`, no values, and ``reason`` in the ``note`` column."""
    import pandas as pd

    rows = [
        {"model": m, "statistic": s, "n_subsets": 0, "k": k, "n_failed": 0, "note": reason}
        for m in dict.fromkeys(x.upper() for x in methods)
        for s in GOSH_STATISTICS
    ]
    return pd.DataFrame(rows, columns=[*GOSH_SUMMARY_COLUMNS, *GOSH_EXTRA_COLUMNS])


def gosh_summary_table(results) -> pd.DataFrame:
    """``gosh_summary.csv``: the distribution of estimate, tau2, I2 and Q over the subsets.

    One row per model and statistic with columns :data:`GOSH_SUMMARY_COLUMNS` (``n_subsets`` counts
    the subsets with a value; ``sd`` with n - 1; quantiles as R's ``quantile`` type 7), then
    :data:`GOSH_EXTRA_COLUMNS`: ``full`` (the statistic on all k effects), ``k``, ``subsets``
    (``all`` or ``random``), ``n_failed``, for the estimate row the mean of the back-transformed
    estimates ``r_mean = mean(tanh(estimate))`` and the quantiles on the r scale (tanh of the Fisher-z
    quantiles, which it preserves because it is monotone; meaningful for Fisher-z effects only), and
    a plain-language ``note`` (subsets that could not be fitted, the seed of random subsets).
    """
    import pandas as pd

    if isinstance(results, GoshResult):
        results = (results,)
    rows = []
    for res in results:
        for statistic, values, full in (
            ("estimate", res.estimate, res.full.estimate[0]),
            ("tau2", res.tau2, res.full.tau2[0]),
            ("I2", res.I2, res.full.I2[0]),
            ("Q", res.QE, res.full.QE[0]),
        ):
            row = {"model": res.method, "statistic": statistic, **_describe(values)}
            row.update(full=float(full), k=res.k, subsets="all" if res.exact else "random", n_failed=res.n_failed)
            row["note"] = _note(res)
            if statistic == "estimate":
                ok = values[np.isfinite(values)]
                r_mean = float(np.mean(np.tanh(ok))) if ok.size else np.nan
                row.update(
                    r_mean=r_mean, r_q05=np.tanh(row["q05"]), r_q50=np.tanh(row["q50"]), r_q95=np.tanh(row["q95"])
                )
            else:
                row.update(r_mean=np.nan, r_q05=np.nan, r_q50=np.nan, r_q95=np.nan)
            rows.append(row)
    return pd.DataFrame(rows, columns=[*GOSH_SUMMARY_COLUMNS, *GOSH_EXTRA_COLUMNS])
