r"""Linear mixed models by profiled REML or ML, for two nested levels, at lme4/lmerTest parity.

The model (sessions in clients in therapists; Bates, Mächler, Bolker & Walker 2015, *J Stat Softw* 67(1),
section 3) is

.. math::

    y = X\beta + Z_C b_C + Z_T b_T + e, \qquad
    b_C = (I \otimes \Lambda_C)\, u_C,\quad b_T = (I \otimes \Lambda_T)\, u_T,\quad
    u \sim N(0, \sigma^2 I),\quad e \sim N(0, \sigma^2 I),

with one random vector of :math:`q` terms per client (an intercept and any random slopes) and, optionally, one of
:math:`r` terms per therapist.  Each client belongs to one therapist.  :math:`\Lambda_C` (:math:`q \times q`) is
lme4's relative covariance factor: lower triangular for an unstructured covariance (``(1 + x | client)``) or
diagonal (``(1 + x || client)``); its non-zero elements form :math:`\theta`, ordered column by column, and the
covariance of a client's effects is :math:`\sigma^2 \Lambda_C \Lambda_C'`.  Likewise :math:`\Lambda_T`.

**Profiled deviance** (Bates et al. 2015, eqs. 34 and 41).  With :math:`V = I + Z \Lambda\Lambda' Z'` (the
marginal covariance in units of :math:`\sigma^2`), :math:`R_X'R_X = X'V^{-1}X`, the penalised residual sum of
squares :math:`r^2(\theta) = \min_\beta (y - X\beta)'V^{-1}(y - X\beta)` and
:math:`\log|L_\theta|^2 = \log|V| = \log|I + \Lambda'Z'Z\Lambda|`,

.. math::

    d_{ML}(\theta) = \log|L_\theta|^2 + n\Bigl(1 + \log\frac{2\pi r^2}{n}\Bigr), \qquad
    d_{REML}(\theta) = \log|L_\theta|^2 + \log|R_X|^2 + (n - p)\Bigl(1 + \log\frac{2\pi r^2}{n - p}\Bigr),

with :math:`\hat\sigma^2 = r^2 / n` (ML) or :math:`r^2/(n-p)` (REML) and
:math:`\widehat{\operatorname{Var}}(\hat\beta) = \hat\sigma^2 (X'V^{-1}X)^{-1}` (lme4's ``vcov``).

**Nesting.**  :math:`V` is block diagonal by therapist, and inside a therapist block it is a client-block-diagonal
matrix plus a rank-:math:`r` therapist term.  Two Woodbury steps reduce every quantity to sums of per-client and
per-therapist cross-products: with the per-client Gram matrix :math:`G_i = M_i'M_i` of
:math:`M_i = [Z_i \; T_i \; X_i \; y_i]` (computed once),
:math:`A_i = I + \Lambda_C' Z_i'Z_i \Lambda_C = L_{A_i}L_{A_i}'` and :math:`W_i = I + Z_i\Lambda_C\Lambda_C'Z_i'`,

.. math::

    M_i' W_i^{-1} M_i = G_i - C_i'C_i, \quad C_i = L_{A_i}^{-1}\Lambda_C' Z_i'M_i, \qquad
    S_j = \sum_{i \in j} [T\,X\,y]_i' W_i^{-1} [T\,X\,y]_i,

then :math:`B_j = I + \Lambda_T' S_{j,TT} \Lambda_T = L_{B_j}L_{B_j}'`,
:math:`E_j = L_{B_j}^{-1}\Lambda_T' S_{j,T\cdot}` and
:math:`[X\,y]'V^{-1}[X\,y] = \sum_j (S_{j,[Xy]} - E_{j,[Xy]}'E_{j,[Xy]})`, while
:math:`\log|L_\theta|^2 = \sum_i \log|A_i| + \sum_j \log|B_j|` (the block Cholesky factor of lme4's
:math:`L_\theta` with clients ordered first).  One evaluation costs
:math:`O(n_{clients}(q + r + p)^2 q)`, independent of the number of rows, and no :math:`n \times n` or
(number of random effects)\ :sup:`2` matrix is formed.

**Gradient.**  With :math:`P = V^{-1} - V^{-1}X(X'V^{-1}X)^{-1}X'V^{-1}`, :math:`\hat e = y - X\hat\beta` and
:math:`\partial_k V = Z\,\partial_k(\Lambda\Lambda')\,Z'` (Harville 1977, *JASA* 72, 320-338),

.. math::

    \frac{\partial d_{REML}}{\partial\theta_k} = \operatorname{tr}(P\,\partial_k V)
        - \frac{n-p}{r^2}\,\hat e'V^{-1}\partial_k V\,V^{-1}\hat e

(ML: :math:`V^{-1}` in place of :math:`P` and :math:`n` in place of :math:`n-p`).  Both terms are sums over
clients (therapists) of :math:`q\times q` (:math:`r\times r`) blocks :math:`Z_i'PZ_i` and :math:`Z_i'V^{-1}\hat e`,
which the same Woodbury steps give.

**Optimisation.**  Negating a column of :math:`\Lambda` leaves :math:`\Lambda\Lambda'` and the deviance unchanged,
so lme4's bounded problem (diagonal elements of :math:`\Lambda \ge 0`) is solved without bounds and the columns
are then flipped into lme4's region; a variance at the boundary becomes the interior point :math:`\theta_k = 0`,
where the deviance is even in :math:`\theta_k`.  L-BFGS with the analytic gradient starts from lme4's start
(:math:`\Lambda = I`); saddle-free Newton steps (Hessian: central differences of the analytic gradient, absolute
eigenvalues, backtracking) follow until the Newton decrement (the predicted further decrease of the deviance) is
below :data:`NEWTON_POLISH_RTOL` times the deviance, and one full Newton step ends the polish.  The fit is converged
when that decrement is below :data:`CONVERGED_DECREMENT_TOL` (else :class:`MixedModelError`); iterations, deviance
evaluations and the decrement are reported.  A diagonal element of :math:`\Lambda` that ends below
:data:`SNAP_TOL` is set to exactly 0 when that does not raise the deviance beyond round-off, and a fit is
*singular* (at the boundary) when a diagonal element of :math:`\Lambda` is below :data:`SINGULAR_TOL` (lme4's
``isSingular``).

**Satterthwaite degrees of freedom** exactly as lmerTest 3.1 defines them (Kuznetsova, Brockhoff & Christensen
2017, *J Stat Softw* 82(13), section 3.2; lmerTest's ``as_lmerModLT``, ``devfun_vp``, ``get_covbeta``,
``contest1D``): the variance parameters are :math:`\tau = (\theta, \sigma)`, the deviance
:math:`d(\tau) = \log|L_\theta|^2 + r^2(\theta)/\sigma^2 + (n - p_R)\log(2\pi\sigma^2) [+ \log|R_X|^2]`
(:math:`p_R = p` for REML, 0 for ML) has Hessian :math:`H`, :math:`A = 2H^{+}` (Moore-Penrose inverse over the
eigenvalues above :data:`HESSIAN_EIGEN_TOL`) and for a contrast :math:`L`

.. math::

    \nu = \frac{2\,(L'\hat\Sigma_\beta L)^2}{g'Ag}, \qquad
    g_k = L'\frac{\partial\, \sigma^2 (X'V^{-1}X)^{-1}}{\partial\tau_k}L, \qquad
    \frac{\partial (X'V^{-1}X)^{-1}}{\partial\theta_k} = (X'V^{-1}X)^{-1}X'V^{-1}\partial_kV\,V^{-1}X(X'V^{-1}X)^{-1}.

lmerTest differentiates numerically (numDeriv, Richardson extrapolation); here the Jacobian is analytic, the
:math:`\sigma` rows of the Hessian are analytic and the :math:`\theta\theta` block is the Richardson-extrapolated
central difference of the analytic gradient (error :math:`O(h^4)`, about 1e-10 relative).  t statistics,
p-values and intervals use the t distribution with :math:`\nu` degrees of freedom.

Failures (non-finite input, too few groups, clients under several therapists, collinear fixed effects,
non-convergence) raise :class:`MixedModelError` naming the model (``label``), what failed and what to try.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import optimize, stats
from threadpoolctl import threadpool_limits

#: lme4's ``isSingular`` tolerance: a diagonal element of Lambda below this is at the boundary.
SINGULAR_TOL = 1e-4
#: A diagonal element of Lambda below this in absolute value is tried at exactly zero after convergence.
SNAP_TOL = 1e-6
#: Newton polishing: once the Newton decrement (the predicted further decrease of the deviance) is below this times
#: max(1, |deviance|), the iterate is deep in Newton's quadratic region; one full step more (without line search,
#: whose test would be lost in round-off) then brings theta to within round-off of the optimum.
NEWTON_POLISH_RTOL = 1e-12
#: Deviance increase accepted as round-off (relative to max(1, |deviance|)) for the final step and for setting a
#: vanishing diagonal element of Lambda to exactly zero.
ROUNDOFF_RTOL = 1e-13
#: The fit counts as converged when the final Newton decrement is below this (deviance units; the log-likelihood
#: is then within half of it of the optimum and theta within about 1e-3 of its standard error) or below
#: :data:`CONVERGED_DECREMENT_RTOL` times |deviance| (the round-off of the deviance grows with the number of rows).
CONVERGED_DECREMENT_TOL = 1e-6
CONVERGED_DECREMENT_RTOL = 1e-12
MAX_NEWTON = 50
MAX_LBFGS = 2000
#: lmerTest's eigenvalue threshold for the Hessian of the deviance (``as_lmerModLT(tol = 1e-8)``): eigenvalues in
#: (-tol, tol) are treated as zero (left out of the generalised inverse), negative ones are reported.
HESSIAN_EIGEN_TOL = 1e-8
#: Relative step of the central differences of the gradient (Richardson-extrapolated over h and h/2; absolute
#: step for parameters smaller than :data:`FD_MIN_SCALE`).
FD_STEP = 1e-3
FD_MIN_SCALE = 1e-2
#: The response counts as an exact linear function of the fixed effects when the least-squares residual sum of squares
#: is below this fraction of its centred sum of squares.
EXACT_FIT_RTOL = 1e-20
#: BLAS threads: every matrix is tiny (a few rows), where threads only add synchronisation.
BLAS_THREADS = 1


class MixedModelError(RuntimeError):
    """A mixed model could not be fitted; the message names the model, what failed and what to try."""


@dataclass(frozen=True)
class RandomTerm:
    """Random effects of one grouping level: ``group`` is the column of group labels, ``slopes`` the columns with
    random slopes; ``correlated`` gives an unstructured covariance (lme4 ``(1 + x | g)``), else a diagonal one
    (``(1 + x || g)``); ``intercept=False`` drops the random intercept (``(0 + x | g)``)."""

    group: str
    slopes: tuple[str, ...] = ()
    correlated: bool = True
    intercept: bool = True

    @property
    def names(self) -> tuple[str, ...]:
        return (("(Intercept)",) if self.intercept else ()) + tuple(self.slopes)


@dataclass(frozen=True)
class Contrast:
    """A linear combination :math:`L'\\beta` with its Satterthwaite t test and interval."""

    L: np.ndarray
    estimate: float
    se: float
    df: float
    stat: float
    pval: float
    ci_lb: float
    ci_ub: float
    level: float


@dataclass(frozen=True)
class VarComp:
    """One row of lme4's ``as.data.frame(VarCorr(fit), order = "lower.tri")``: a variance (``var2`` is None;
    ``sdcor`` the SD) or a covariance (``sdcor`` the correlation)."""

    group: str
    var1: str | None
    var2: str | None
    vcov: float
    sdcor: float


@dataclass(frozen=True)
class LmmFit:
    """A fitted linear mixed model; arrays are per fixed-effect ``terms`` (``(Intercept)`` first).

    ``theta`` is lme4's relative covariance factor (client level first, then therapist; ``theta_names`` as lme4
    names them), ``cov_re`` the covariance matrix of each level's random effects, ``varcorr`` lme4's variance table.
    ``df`` are lmerTest's Satterthwaite degrees of freedom, ``stat`` the t statistics; ``vcov_varpar`` (lmerTest's
    ``A``, order ``theta`` then ``sigma``) and ``jacobian`` (d vcov / d (theta, sigma)) give the df of any contrast.
    """

    label: str
    terms: tuple[str, ...]
    estimate: np.ndarray
    se: np.ndarray
    vcov: np.ndarray = field(repr=False)
    df: np.ndarray
    stat: np.ndarray
    pval: np.ndarray
    ci_lb: np.ndarray
    ci_ub: np.ndarray
    level: float
    sigma: float
    theta: np.ndarray
    theta_names: tuple[str, ...]
    cov_re: Mapping[str, np.ndarray] = field(repr=False)
    re_names: Mapping[str, tuple[str, ...]] = field(repr=False)
    varcorr: tuple[VarComp, ...] = field(repr=False)
    reml: bool
    loglik: float
    deviance: float
    n_obs: int
    n_groups: Mapping[str, int]
    singular: bool
    converged: bool
    iterations: int
    evaluations: int
    newton_decrement: float
    hessian: np.ndarray = field(repr=False)
    vcov_varpar: np.ndarray = field(repr=False)
    jacobian: np.ndarray = field(repr=False)
    notes: tuple[str, ...] = ()

    def coef(self, term: str) -> float:
        return float(self.estimate[self.terms.index(term)])

    def contrast(self, weights: Mapping[str, float] | Sequence[float], level: float | None = None) -> Contrast:
        """Satterthwaite t test of :math:`L'\\beta` (lmerTest ``contest1D``); ``weights`` maps terms to weights
        (others 0) or gives the full vector ``L``."""
        if isinstance(weights, Mapping):
            unknown = set(weights) - set(self.terms)
            if unknown:
                raise MixedModelError(
                    f"mixed model {self.label!r}: contrast names unknown terms {sorted(unknown)}; "
                    f"the terms are {list(self.terms)}"
                )
            L = np.array([float(weights.get(t, 0.0)) for t in self.terms])
        else:
            L = np.asarray(weights, dtype=float)
            if L.shape != (len(self.terms),):
                raise MixedModelError(
                    f"mixed model {self.label!r}: a contrast needs {len(self.terms)} weights, got {L.shape}"
                )
        return _contrast(L, self.estimate, self.vcov, self.jacobian, self.vcov_varpar, level or self.level)

    def coefficients(self) -> pd.DataFrame:
        """One row per fixed effect: ``term, estimate, se, df, stat, pval, ci_lb, ci_ub``."""
        return pd.DataFrame(
            {
                "term": self.terms,
                "estimate": self.estimate,
                "se": self.se,
                "df": self.df,
                "stat": self.stat,
                "pval": self.pval,
                "ci_lb": self.ci_lb,
                "ci_ub": self.ci_ub,
            }
        )

    def variance_components(self) -> pd.DataFrame:
        """lme4's variance table (``group, var1, var2, vcov, sdcor``), residual last."""
        return pd.DataFrame([vars(v) for v in self.varcorr], columns=["group", "var1", "var2", "vcov", "sdcor"])


# ---------------------------------------------------------------------------------------------------------------
# Relative covariance factors


@dataclass(frozen=True)
class _Factor:
    """Map between a level's theta and its q x q factor Lambda (lower triangular, filled column by column, or
    diagonal)."""

    q: int
    correlated: bool

    @property
    def positions(self) -> tuple[tuple[int, int], ...]:
        if not self.correlated:
            return tuple((a, a) for a in range(self.q))
        return tuple((a, b) for b in range(self.q) for a in range(b, self.q))

    @property
    def size(self) -> int:
        return len(self.positions)

    def lower(self) -> np.ndarray:
        return np.array([0.0 if a == b else -np.inf for a, b in self.positions])

    def start(self) -> np.ndarray:
        return np.array([1.0 if a == b else 0.0 for a, b in self.positions])

    def lam(self, theta: np.ndarray) -> np.ndarray:
        out = np.zeros((self.q, self.q))
        for value, (a, b) in zip(theta, self.positions, strict=True):
            out[a, b] = value
        return out

    def names(self, group: str, terms: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(f"{group}.{terms[a]}" if a == b else f"{group}.{terms[a]}.{terms[b]}" for a, b in self.positions)


# ---------------------------------------------------------------------------------------------------------------
# Batched small linear algebra.  A stack of N small k x k matrices is stored element-major, shape (k, k, N), and a
# stack of k x m right-hand sides as (k, N, m), so that every operation is a loop over the small dimensions of
# vectorised operations on contiguous length-N arrays, or one BLAS product.


def _chol(A: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cholesky factors (k, k, N) of a stack of SPD matrices A (k, k, N) and their log-determinants (N,)."""
    k = A.shape[0]
    L = np.zeros_like(A)
    for j in range(k):
        d = A[j, j] - sum(L[j, m] ** 2 for m in range(j))
        if not np.all(d > 0):
            raise np.linalg.LinAlgError("matrix not positive definite")
        L[j, j] = np.sqrt(d)
        for i in range(j + 1, k):
            L[i, j] = (A[i, j] - sum(L[i, m] * L[j, m] for m in range(j))) / L[j, j]
    logdet = 2.0 * sum(np.log(L[j, j]) for j in range(k))
    return L, logdet


def _fsolve(L: np.ndarray, B: np.ndarray) -> np.ndarray:
    """Solve L X = B for lower-triangular L (k, k, N) and B (k, N, m)."""
    X = np.empty_like(B)
    for a in range(L.shape[0]):
        acc = B[a].copy()
        for m in range(a):
            acc -= L[a, m][:, None] * X[m]
        X[a] = acc / L[a, a][:, None]
    return X


def _left(lam_t: np.ndarray, B: np.ndarray) -> np.ndarray:
    """lam_t @ B[:, n, :] for every n: one small fixed matrix (a, k) times a stack B (k, N, m), as one BLAS call."""
    k, n, m = B.shape
    return (lam_t @ B.reshape(k, n * m)).reshape(lam_t.shape[0], n, m)


def _quadform(lam: np.ndarray, B: np.ndarray, cols: slice) -> np.ndarray:
    """I + lam' B[:, :, cols] lam as (k, k, N), for B = Gram rows (k, N, w) whose ``cols`` are the same k terms."""
    k = lam.shape[0]
    LB = _left(lam.T, B[:, :, cols])  # (k, N, k): (lam' B)[a, n, l]
    out = np.einsum("anl,lb->abn", LB, lam)
    out[range(k), range(k)] += 1.0
    return out


def _stack_gram(C: np.ndarray) -> np.ndarray:
    """sum_n C[:, n, :]' C[:, n, :] for C (k, N, m): one BLAS product."""
    flat = C.reshape(-1, C.shape[-1])
    return flat.T @ flat


# ---------------------------------------------------------------------------------------------------------------
# The fitting problem: per-client cross-products and the profiled deviance with its derivatives


@dataclass
class _Evaluation:
    theta: np.ndarray
    deviance: float
    r2: float
    beta: np.ndarray
    phi: np.ndarray  # (X'V^-1 X)^-1
    ldL2: float
    ldRX2: float
    trace_grad: np.ndarray | None = None  # d/dtheta of log|L|^2 (+ log|RX|^2 for REML)
    quad_grad: np.ndarray | None = None  # d/dtheta of -r^2(theta) (= e'V^-1 dV V^-1 e)
    omega: np.ndarray | None = None  # (m, p, p): X'V^-1 dV_k V^-1 X


class _Problem:
    r"""Cross-products of one model, computed once, and the profiled deviance as a function of theta.

    Columns of :math:`M = [Z\,T\,X\,y]` (widths q, r, p, 1).  Stored: the Z rows of every client's Gram matrix
    ``Gz`` (q, N, w), the T rows summed per therapist ``Gt`` (r, J, w) and the total ``Gsum`` (w, w).  Rows must
    be sorted by therapist, then client.
    """

    def __init__(self, y, X, Zc, client, Zt, therapist, fc: _Factor, ft: _Factor | None, reml: bool):
        self.n, self.p = X.shape
        self.q = Zc.shape[1]
        self.r = 0 if Zt is None else Zt.shape[1]
        self.fc, self.ft, self.reml = fc, ft, reml
        self.m = fc.size + (ft.size if ft is not None else 0)
        M = np.concatenate([Zc] + ([Zt] if Zt is not None else []) + [X, y[:, None]], axis=1)
        self.w = M.shape[1]
        new_client = np.r_[True, client[1:] != client[:-1]]
        cidx = np.cumsum(new_client) - 1
        self.n_clients = int(cidx[-1]) + 1
        self.Gz = np.stack([np.stack([np.bincount(cidx, M[:, a] * M[:, b], self.n_clients) for b in range(self.w)],
                                     axis=1) for a in range(self.q)])  # fmt: skip
        self.Gsum = M.T @ M
        if Zt is not None:
            new_therapist = np.r_[True, therapist[1:] != therapist[:-1]]
            tidx = np.cumsum(new_therapist) - 1
            self.n_therapists = int(tidx[-1]) + 1
            self.t_of_c = tidx[new_client]
            self.tstarts = np.flatnonzero(np.r_[True, self.t_of_c[1:] != self.t_of_c[:-1]])
            q = self.q
            self.Gt = np.stack([np.stack([np.bincount(tidx, M[:, q + a] * M[:, b], self.n_therapists)
                                          for b in range(self.w)], axis=1) for a in range(self.r)])  # fmt: skip
        self.evaluations = 0

    def split(self, theta):
        kc = self.fc.size
        lc = self.fc.lam(theta[:kc])
        lt = self.ft.lam(theta[kc:]) if self.ft is not None else None
        return lc, lt

    def evaluate(self, theta: np.ndarray, derivatives: bool = False, jacobian: bool = False) -> _Evaluation:
        """Deviance at theta (profiled over beta and sigma); with ``derivatives`` the two parts of its gradient;
        with ``jacobian`` also X'V^-1 dV_k V^-1 X for every theta_k."""
        self.evaluations += 1
        q, r, p = self.q, self.r, self.p
        xy = slice(q + r, q + r + p + 1)
        lc, lt = self.split(theta)
        # client level: C = L_A^-1 lam_C' Z'M, and M'W^-1 M = G - C'C per client
        LA, logdetA = _chol(_quadform(lc, self.Gz, slice(0, q)))
        C = _fsolve(LA, _left(lc.T, self.Gz))  # (q, N, w)
        ld = float(logdetA.sum())
        F = self.Gsum[xy, xy] - _stack_gram(C[:, :, xy])
        if r:
            # T_j'W^-1 M summed over the therapist's clients: (r, J, w)
            ST = self.Gt - np.stack(
                [np.add.reduceat(sum(C[a][:, q + t, None] * C[a] for a in range(q)), self.tstarts, axis=0)
                 for t in range(r)]
            )  # fmt: skip
            LB, logdetB = _chol(_quadform(lt, ST, slice(q, q + r)))
            E = _fsolve(LB, _left(lt.T, ST))  # (r, J, w)
            F -= _stack_gram(E[:, :, xy])
            ld += float(logdetB.sum())
        XVX, XVy, yVy = F[:p, :p], F[:p, p], F[p, p]
        LX = np.linalg.cholesky(XVX)
        c = np.linalg.solve(LX, XVy)
        r2 = float(yVy - c @ c)
        if not r2 > 0:
            raise np.linalg.LinAlgError("penalised residual sum of squares is not positive")
        beta = np.linalg.solve(LX.T, c)
        ldRX2 = float(2.0 * np.log(np.diag(LX)).sum())
        phi = np.linalg.inv(XVX)
        phi = 0.5 * (phi + phi.T)
        if self.reml:
            dof = self.n - p
            dev = ld + ldRX2 + dof * (1.0 + np.log(2.0 * np.pi * r2 / dof))
        else:
            dev = ld + self.n * (1.0 + np.log(2.0 * np.pi * r2 / self.n))
        ev = _Evaluation(theta=theta, deviance=float(dev), r2=r2, beta=beta, phi=phi, ldL2=ld, ldRX2=ldRX2)
        if not (derivatives or jacobian):
            return ev
        # Z_i'V^-1 M_i per client (q, N, w) and T_j'V^-1 M_j per therapist (r, J, w)
        ZV = self.Gz - np.stack([sum(C[a][:, b, None] * C[a] for a in range(q)) for b in range(q)])
        levels = [(self.fc, lc, ZV, 0)]
        if r:
            # therapist correction: V^-1 = W^-1 - W^-1 T lam_T B^-1 lam_T' T'W^-1 within a therapist
            Eg = E[:, self.t_of_c, :]  # (r, N, w)
            LBg = LB[:, :, self.t_of_c]
            H = _fsolve(LBg, _left(lt.T, ZV[:, :, q : q + r].transpose(2, 1, 0)))  # (r, N, q)
            # E_j's Z columns sum over all the therapist's clients; a client's own Z block needs H_i'H_i instead
            Eg[:, :, :q] = H
            ZV = ZV - np.stack([sum(H[t][:, b, None] * Eg[t] for t in range(r)) for b in range(q)])
            TV = ST - np.stack([sum(E[k][:, q + t, None] * E[k] for k in range(r)) for t in range(r)])
            levels = [(self.fc, lc, ZV, 0), (self.ft, lt, TV, q)]
        xs = slice(q + r, q + r + p)
        trace_grad, quad_grad, omega = [], [], []
        for factor, lam, UV, offset in levels:
            k = lam.shape[0]
            UVX = UV[:, :, xs]
            UVe = UV[:, :, -1] - UVX @ beta  # (k, N)
            trace_mat = UV[:, :, offset : offset + k].sum(axis=1)
            if self.reml:
                trace_mat = trace_mat - np.tensordot(UVX @ phi, UVX, axes=([1, 2], [1, 2]))
            T1 = trace_mat @ lam
            T2 = (UVe @ UVe.T) @ lam
            for a, b in factor.positions:
                # tr(dD M) with dD = E_ab lam' + lam E_ab' and symmetric M is 2 (M lam)[a, b]
                trace_grad.append(2.0 * T1[a, b])
                quad_grad.append(2.0 * T2[a, b])
            if jacobian:
                LUX = _left(lam.T, np.ascontiguousarray(UVX))
                for a, b in factor.positions:
                    Om = UVX[a].T @ LUX[b]
                    omega.append(Om + Om.T)
        ev.trace_grad = np.array(trace_grad)
        ev.quad_grad = np.array(quad_grad)
        if jacobian:
            ev.omega = np.array(omega)
        return ev

    def dof(self) -> int:
        return self.n - self.p if self.reml else self.n

    def profiled_gradient(self, ev: _Evaluation) -> np.ndarray:
        return ev.trace_grad - self.dof() / ev.r2 * ev.quad_grad


# ---------------------------------------------------------------------------------------------------------------
# Optimisation


def _hessian_fd(fun, x: np.ndarray, richardson: bool) -> np.ndarray:
    """Jacobian of the vector function ``fun`` (a gradient) at x by central differences, Richardson-extrapolated
    over steps h and h/2 when ``richardson``; symmetrised."""
    k = x.size
    H = np.empty((k, k))
    for j in range(k):
        h = FD_STEP * max(abs(x[j]), FD_MIN_SCALE)

        def central(step, j=j):
            e = np.zeros(k)
            e[j] = step
            return (fun(x + e) - fun(x - e)) / (2.0 * step)

        d1 = central(h)
        H[:, j] = (4.0 * central(h / 2.0) - d1) / 3.0 if richardson else d1
    return 0.5 * (H + H.T)


def _optimise(problem: _Problem, label: str):
    """Minimise the profiled deviance over theta without bounds, then flip column signs into lme4's region.

    Negating column b of Lambda (its diagonal element and the elements below it) leaves Lambda Lambda' and hence
    the deviance unchanged, so lme4's constrained problem (diagonal >= 0) and the unconstrained one have the same
    optimum.  Working unconstrained, a variance at the boundary is the interior point theta_k = 0 (where the
    deviance is even in theta_k), which quasi-Newton and Newton steps reach without an active set and without the
    trap of a bound where the gradient vanishes at a local maximum.
    """
    start = np.concatenate([problem.fc.start()] + ([problem.ft.start()] if problem.ft is not None else []))

    def fg(theta):
        ev = problem.evaluate(theta, derivatives=True)
        return ev.deviance, problem.profiled_gradient(ev)

    res = optimize.minimize(
        fg, start, jac=True, method="L-BFGS-B", options={"maxiter": MAX_LBFGS, "ftol": 1e-10, "gtol": 1e-10}
    )
    theta = res.x
    iterations = int(res.nit)
    dev, grad = fg(theta)
    decrement = np.inf
    for _ in range(MAX_NEWTON):
        H = _hessian_fd(lambda t: fg(t)[1], theta, richardson=False)
        vals, vecs = np.linalg.eigh(H)
        scale = max(np.abs(vals).max(), 1.0)
        # saddle-free Newton (|eigenvalues|); directions with no curvature at all are left alone
        keep = np.abs(vals) > 1e-12 * scale
        gproj = vecs.T @ grad
        step = -(vecs[:, keep] @ (gproj[keep] / np.abs(vals[keep])))
        decrement = float(np.sum(gproj[keep] ** 2 / np.abs(vals[keep])))
        if decrement < NEWTON_POLISH_RTOL * max(1.0, abs(dev)):
            trial = theta + step
            dev_t, grad_t = fg(trial)
            if dev_t <= dev + ROUNDOFF_RTOL * max(1.0, abs(dev)):
                theta, dev, grad = trial, dev_t, grad_t
                iterations += 1
            break
        alpha, accepted = 1.0, False
        for _halving in range(30):
            trial = theta + alpha * step
            dev_t, grad_t = fg(trial)
            if dev_t < dev + 1e-4 * alpha * float(grad @ step):
                accepted = True
                break
            alpha /= 2.0
        iterations += 1
        if not accepted:
            break  # no decrease possible in floating point: the decrement says how close we are
        theta, dev, grad = trial, dev_t, grad_t
    if not decrement < max(CONVERGED_DECREMENT_TOL, CONVERGED_DECREMENT_RTOL * abs(dev)):
        raise MixedModelError(
            f"mixed model {label!r} did not converge: after {iterations} iterations the Newton decrement of the "
            f"deviance is {decrement:.3g} (tolerance {CONVERGED_DECREMENT_TOL:g}; L-BFGS-B: {res.message}); "
            "check for groups with too little data, rescale the slope variables, or drop a random slope"
        )
    # A diagonal element of Lambda that has converged to (nearly) zero, where the deviance is flat (even in it),
    # is set to exactly zero when that does not raise the deviance beyond round-off (lme4 reports such boundary
    # estimates as 0).
    diagonal = _diagonal_mask(problem)
    for k in np.flatnonzero(diagonal & (np.abs(theta) < SNAP_TOL) & (theta != 0)):
        trial = theta.copy()
        trial[k] = 0.0
        dev_t = problem.evaluate(trial).deviance
        if dev_t <= dev + ROUNDOFF_RTOL * max(1.0, abs(dev)):
            theta, dev = trial, min(dev, dev_t)
    kc = problem.fc.size
    theta = np.concatenate(
        [_canonical(problem.fc, theta[:kc])] + ([_canonical(problem.ft, theta[kc:])] if problem.ft is not None else [])
    )
    return theta, iterations, decrement


def _diagonal_mask(problem: _Problem) -> np.ndarray:
    lower = [problem.fc.lower()] + ([problem.ft.lower()] if problem.ft is not None else [])
    return np.concatenate(lower) == 0


def _canonical(factor: _Factor, theta: np.ndarray) -> np.ndarray:
    """Flip the sign of every column of Lambda whose diagonal element is negative (Lambda Lambda' unchanged)."""
    out = theta.copy()
    positions = factor.positions
    for b in range(factor.q):
        diag = positions.index((b, b))
        if out[diag] < 0:
            for k, (_a, col) in enumerate(positions):
                if col == b:
                    out[k] = -out[k]
    return out


# ---------------------------------------------------------------------------------------------------------------
# Satterthwaite


def _varpar_hessian(problem: _Problem, theta: np.ndarray, sigma: float) -> np.ndarray:
    """Hessian of lmerTest's deviance in (theta, sigma) (``devfun_vp``): sigma rows analytic, theta block by
    Richardson-extrapolated central differences of the analytic gradient at fixed sigma."""
    s2 = sigma**2

    def grad_theta(t):
        ev = problem.evaluate(t, derivatives=True)
        return ev.trace_grad - ev.quad_grad / s2

    ev = problem.evaluate(theta, derivatives=True)
    m = theta.size
    H = np.empty((m + 1, m + 1))
    H[:m, :m] = _hessian_fd(grad_theta, theta, richardson=True) if m else np.empty((0, 0))
    H[:m, m] = H[m, :m] = 2.0 * ev.quad_grad / sigma**3
    dof = problem.dof()
    H[m, m] = 6.0 * ev.r2 / sigma**4 - 2.0 * dof / s2
    return H


def _contrast(L, beta, vcov, jacobian, vcov_varpar, level) -> Contrast:
    var = float(L @ vcov @ L)
    g = np.einsum("i,kij,j->k", L, jacobian, L)
    denom = float(g @ vcov_varpar @ g)
    df = 2.0 * var**2 / denom if denom > 0 else np.inf
    est = float(L @ beta)
    se = np.sqrt(var)
    t = est / se
    crit = stats.t.ppf(0.5 + level / 2.0, df)
    return Contrast(
        L=L, estimate=est, se=se, df=df, stat=t, pval=float(2.0 * stats.t.sf(abs(t), df)),
        ci_lb=est - crit * se, ci_ub=est + crit * se, level=level,
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------
# Public entry point


def _column(data: pd.DataFrame, name: str, label: str, role: str) -> np.ndarray:
    if name not in data.columns:
        raise MixedModelError(f"mixed model {label!r}: the data have no column {name!r} ({role})")
    try:
        values = data[name].to_numpy(dtype=float)
    except (TypeError, ValueError) as err:
        raise MixedModelError(f"mixed model {label!r}: column {name!r} ({role}) is not numeric") from err
    bad = ~np.isfinite(values)
    if bad.any():
        raise MixedModelError(
            f"mixed model {label!r}: column {name!r} ({role}) has {int(bad.sum())} missing or non-finite "
            f"value(s) (first at row {int(np.flatnonzero(bad)[0])}); drop those rows before fitting"
        )
    return values


def _labels(data: pd.DataFrame, name: str, label: str) -> np.ndarray:
    if name not in data.columns:
        raise MixedModelError(f"mixed model {label!r}: the data have no grouping column {name!r}")
    col = data[name]
    if col.isna().any():
        raise MixedModelError(
            f"mixed model {label!r}: grouping column {name!r} has {int(col.isna().sum())} missing label(s); "
            "drop those rows or give them a label"
        )
    return col.to_numpy()


def fit_lmm(
    data: pd.DataFrame,
    response: str,
    fixed: Sequence[str],
    client: RandomTerm,
    therapist: RandomTerm | None = None,
    *,
    reml: bool = True,
    level: float = 0.95,
    label: str = "lmm",
) -> LmmFit:
    """Fit ``response ~ 1 + fixed`` with random effects ``client`` nested in ``therapist`` (see the module
    docstring), by REML (default) or ML, with lmerTest's Satterthwaite t tests at ``level``.

    Parameters
    ----------
    data
        One row per observation; every used column complete (no NaN).
    response, fixed
        Column names; an intercept is always added (term ``(Intercept)``).
    client
        The lower level (clients): grouping column, random slopes and covariance structure.
    therapist
        The upper level, or None for a single level.  Each client label must occur under one therapist only.
    reml, level, label
        REML or ML; interval level; the model's name in messages.

    Raises
    ------
    MixedModelError
        Non-finite data, too few groups or observations, clients in several therapists, collinear fixed effects,
        non-convergence.
    """
    with threadpool_limits(limits=BLAS_THREADS, user_api="blas"):
        return _fit_lmm(data, response, tuple(fixed), client, therapist, reml, level, label)


def _fit_lmm(data, response, fixed, client, therapist, reml, level, label) -> LmmFit:
    if not 0 < level < 1:
        raise MixedModelError(f"mixed model {label!r}: level must be in (0, 1), got {level}")
    if not client.names:
        raise MixedModelError(f"mixed model {label!r}: the client level has no random effect")
    if therapist is not None and not therapist.names:
        raise MixedModelError(f"mixed model {label!r}: the therapist level has no random effect")
    y = _column(data, response, label, "response")
    n = y.size
    cols = [_column(data, t, label, "fixed effect") for t in fixed]
    c_labels = _labels(data, client.group, label)
    c_code, c_uniques = pd.factorize(c_labels, sort=True)
    n_clients = len(c_uniques)
    if therapist is not None:
        t_labels = _labels(data, therapist.group, label)
        t_code, t_uniques = pd.factorize(t_labels, sort=True)
        pairs = pd.DataFrame({"c": c_code, "t": t_code}).drop_duplicates()
        if pairs["c"].duplicated().any():
            bad = c_uniques[int(pairs.loc[pairs["c"].duplicated(), "c"].iloc[0])]
            raise MixedModelError(
                f"mixed model {label!r}: {client.group} {bad!r} occurs under more than one {therapist.group}; "
                f"{client.group}s must be nested in {therapist.group}s (give each {client.group} a unique label, "
                f"e.g. '{therapist.group}:{client.group}')"
            )
        n_therapists = len(t_uniques)
        order = np.lexsort((c_code, t_code))
    else:
        t_code, n_therapists = None, 0
        order = np.argsort(c_code, kind="stable")
    # lme4's identifiability checks (lmerControl check.nlev.gtr.1, check.nobs.vs.nlev, check.nobs.vs.nRE)
    levels = [(client, n_clients)] + ([(therapist, n_therapists)] if therapist is not None else [])
    n_re = sum(len(term.names) * count for term, count in levels)
    for term, count in levels:
        if count < 2:
            raise MixedModelError(
                f"mixed model {label!r}: grouping factor {term.group!r} has {count} level(s); a random effect "
                "needs at least 2 (drop that level from the model)"
            )
        if count >= n:
            raise MixedModelError(
                f"mixed model {label!r}: grouping factor {term.group!r} has {count} levels for {n} observations; "
                "the random effects are not identifiable from the residual (fewer levels or more data needed)"
            )
    if n_re >= n:
        raise MixedModelError(
            f"mixed model {label!r}: {n_re} random effects for {n} observations; the model is not identifiable "
            "(drop a random slope or use a simpler covariance)"
        )
    X = np.column_stack([np.ones(n), *cols]) if cols else np.ones((n, 1))
    terms = ("(Intercept)", *fixed)
    p = X.shape[1]
    if n <= p:
        raise MixedModelError(f"mixed model {label!r}: {n} observations for {p} fixed effects")
    # Centre y and the non-intercept columns of X: a unit-triangular reparameterisation (det 1) that leaves the
    # deviance unchanged and keeps the normal equations well conditioned; beta and vcov are mapped back below.
    means = X[:, 1:].mean(axis=0)
    Xc = X.copy()
    Xc[:, 1:] -= means
    ybar = float(y.mean())
    yc = y - ybar
    _check_rank(Xc, terms, label)
    ols_rss = float(np.sum((yc - Xc @ np.linalg.lstsq(Xc, yc, rcond=None)[0]) ** 2))
    if not ols_rss > EXACT_FIT_RTOL * max(float(yc @ yc), np.finfo(float).tiny):
        raise MixedModelError(
            f"mixed model {label!r}: the response is an exact linear function of the fixed effects (no residual "
            "variation is left for the variance components); check that the response is not among the predictors"
        )

    def design(term: RandomTerm) -> np.ndarray:
        slopes = [_column(data, s, label, "random slope") for s in term.slopes]
        parts = ([np.ones(n)] if term.intercept else []) + slopes
        return np.column_stack(parts)

    Zc = design(client)
    Zt = design(therapist) if therapist is not None else None
    fc = _Factor(Zc.shape[1], client.correlated)
    ft = _Factor(Zt.shape[1], therapist.correlated) if therapist is not None else None
    problem = _Problem(
        yc[order], Xc[order], Zc[order], c_code[order], None if Zt is None else Zt[order],
        None if t_code is None else t_code[order],
        fc, ft, reml,
    )  # fmt: skip
    try:
        theta, iterations, decrement = _optimise(problem, label)
        ev = problem.evaluate(theta, derivatives=True, jacobian=True)
        sigma = float(np.sqrt(ev.r2 / problem.dof()))
        hessian = _varpar_hessian(problem, theta, sigma)
    except np.linalg.LinAlgError as err:
        raise MixedModelError(
            f"mixed model {label!r}: linear algebra failed ({err}); the fixed-effect design may be (nearly) "
            "collinear or a variance is degenerate: check the predictors and the grouping columns"
        ) from err
    # back to the uncentred parameterisation: beta_0 = beta_c0 + ybar - means'beta_c1, beta_k = beta_ck
    T = np.eye(p)
    T[0, 1:] = -means
    beta = T @ ev.beta
    beta[0] += ybar
    vcov = sigma**2 * (T @ ev.phi @ T.T)
    vcov = 0.5 * (vcov + vcov.T)
    m = theta.size
    jac = np.empty((m + 1, p, p))
    for k in range(m):
        jac[k] = sigma**2 * T @ (ev.phi @ ev.omega[k] @ ev.phi) @ T.T
    jac[m] = 2.0 * sigma * (T @ ev.phi @ T.T)
    notes = []
    vals, vecs = np.linalg.eigh(hessian)
    neg = vals < -HESSIAN_EIGEN_TOL
    zero = np.abs(vals) <= HESSIAN_EIGEN_TOL
    if neg.any():
        notes.append(
            f"the Hessian of the deviance has {int(neg.sum())} negative eigenvalue(s) "
            f"({', '.join(f'{v:.1e}' for v in vals[neg])}): the fit may not be at a minimum"
        )
    if zero.any():
        notes.append(
            f"the Hessian of the deviance has {int(zero.sum())} eigenvalue(s) close to zero "
            f"({', '.join(f'{v:.1e}' for v in vals[zero])}): those directions are left out of the Satterthwaite df"
        )
    pos = vals > HESSIAN_EIGEN_TOL
    vcov_varpar = 2.0 * (vecs[:, pos] / vals[pos]) @ vecs[:, pos].T
    rows = [_contrast(e, beta, vcov, jac, vcov_varpar, level) for e in np.eye(p)]
    # variance components
    lc, lt = problem.split(theta)
    cov_re = {client.group: sigma**2 * lc @ lc.T}
    re_names = {client.group: client.names}
    theta_names = fc.names(client.group, client.names)
    if therapist is not None:
        cov_re[therapist.group] = sigma**2 * lt @ lt.T
        re_names[therapist.group] = therapist.names
        theta_names += ft.names(therapist.group, therapist.names)
    varcorr = []
    for term in [client] + ([therapist] if therapist is not None else []):
        cov = cov_re[term.group]
        sd = np.sqrt(np.diag(cov))
        for b in range(cov.shape[0]):
            for a in range(b, cov.shape[0]):
                if a == b:
                    varcorr.append(VarComp(term.group, term.names[a], None, float(cov[a, a]), float(sd[a])))
                elif term.correlated:
                    corr = cov[a, b] / (sd[a] * sd[b]) if sd[a] > 0 and sd[b] > 0 else np.nan
                    varcorr.append(VarComp(term.group, term.names[b], term.names[a], float(cov[a, b]), float(corr)))
    varcorr.append(VarComp("Residual", None, None, sigma**2, sigma))
    diag_pos = [
        k for k, lo in enumerate(np.concatenate([fc.lower()] + ([ft.lower()] if ft is not None else []))) if lo == 0
    ]
    singular = bool(np.any(theta[diag_pos] < SINGULAR_TOL))
    if singular:
        small = [theta_names[k] for k in diag_pos if theta[k] < SINGULAR_TOL]
        notes.append(f"boundary (singular) fit: {', '.join(small)} at or near zero")
    return LmmFit(
        label=label,
        terms=terms,
        estimate=beta,
        se=np.array([c.se for c in rows]),
        vcov=vcov,
        df=np.array([c.df for c in rows]),
        stat=np.array([c.stat for c in rows]),
        pval=np.array([c.pval for c in rows]),
        ci_lb=np.array([c.ci_lb for c in rows]),
        ci_ub=np.array([c.ci_ub for c in rows]),
        level=level,
        sigma=sigma,
        theta=theta,
        theta_names=theta_names,
        cov_re=cov_re,
        re_names=re_names,
        varcorr=tuple(varcorr),
        reml=reml,
        loglik=-0.5 * ev.deviance,
        deviance=ev.deviance,
        n_obs=n,
        n_groups={client.group: n_clients, **({therapist.group: n_therapists} if therapist is not None else {})},
        singular=singular,
        converged=True,
        iterations=iterations,
        evaluations=problem.evaluations,
        newton_decrement=decrement,
        hessian=hessian,
        vcov_varpar=vcov_varpar,
        jacobian=jac,
        notes=tuple(notes),
    )


def _check_rank(X: np.ndarray, terms: tuple[str, ...], label: str) -> None:
    """Raise when the fixed-effect design is rank deficient (lme4 would drop columns silently)."""
    scale = np.sqrt((X**2).sum(axis=0))
    if np.any(scale == 0):
        bad = terms[int(np.flatnonzero(scale == 0)[0])]
        raise MixedModelError(
            f"mixed model {label!r}: fixed effect {bad!r} is constant, so it is collinear with the intercept; drop it"
        )
    Xs = X / scale
    R = np.linalg.qr(Xs, mode="r")
    d = np.abs(np.diag(R))
    tol = d.max() * max(X.shape) * np.finfo(float).eps * 1e3
    if np.any(d <= tol):
        bad = terms[int(np.flatnonzero(d <= tol)[0])]
        raise MixedModelError(
            f"mixed model {label!r}: the fixed effects are collinear ({bad!r} is a linear combination of the "
            "terms before it, e.g. a client-level variable that is constant, or a centred variable whose means "
            "are all equal); drop it"
        )


# ---------------------------------------------------------------------------------------------------------------
# Rows for the session tables

#: ``mixed_models.csv`` (SPEC §5) with the Satterthwaite ``df`` appended (SPEC "Session level, further models").
MIXED_MODEL_COLUMNS = ("model", "engine", "term", "estimate", "se", "ci_lb", "ci_ub", "pval", "df")
VARIANCE_COLUMNS = ("model", "engine", "group", "var1", "var2", "vcov", "sdcor", "singular", "n_obs", "loglik",
                    "reml", "iterations")  # fmt: skip


def mixed_models_rows(
    fits: Mapping[str, LmmFit],
    contrasts: Mapping[str, Mapping[str, Mapping[str, float]]] | None = None,
    rename: Mapping[str, str] | None = None,
) -> pd.DataFrame:
    """Rows of ``mixed_models.csv`` (engine ``mixedlm``, columns :data:`MIXED_MODEL_COLUMNS`): every fixed effect
    but the intercept of each fit (keyed by model name), terms renamed by ``rename``, then the named contrasts
    ``contrasts[model][name] = {term: weight}``, all with Satterthwaite df, t p-values and intervals at each fit's
    level."""
    rename = rename or {}
    contrasts = contrasts or {}
    rows = []
    for model, fit in fits.items():
        for k, term in enumerate(fit.terms):
            if term == "(Intercept)":
                continue
            rows.append((model, "mixedlm", rename.get(term, term), fit.estimate[k], fit.se[k], fit.ci_lb[k],
                         fit.ci_ub[k], fit.pval[k], fit.df[k]))  # fmt: skip
        for name, weights in contrasts.get(model, {}).items():
            c = fit.contrast(weights)
            rows.append((model, "mixedlm", name, c.estimate, c.se, c.ci_lb, c.ci_ub, c.pval, c.df))
    return pd.DataFrame(rows, columns=list(MIXED_MODEL_COLUMNS))


def variance_rows(fits: Mapping[str, LmmFit]) -> pd.DataFrame:
    """lme4's variance table of every fit (columns :data:`VARIANCE_COLUMNS`; ``sdcor`` is an SD for a variance
    and a correlation for a covariance), with the fit's singularity flag, size, log-likelihood and iterations."""
    rows = [
        (model, "mixedlm", v.group, v.var1, v.var2, v.vcov, v.sdcor, fit.singular, fit.n_obs, fit.loglik, fit.reml,
         fit.iterations)
        for model, fit in fits.items()
        for v in fit.varcorr
    ]  # fmt: skip
    return pd.DataFrame(rows, columns=list(VARIANCE_COLUMNS))
