r"""The step-function selection model for dependent effect sizes, as the R package metaselection.

Pustejovsky, Citkowicz & Joshi (2025), *Estimation and inference for step-function selection
models in meta-analysis with dependent effects* (preprint, doi:10.31222/osf.io/qg5x6_v1), and the R
package metaselection (``selection_model(..., selection_type = "step", estimator = "CML")``):

- **Marginal model.**  Every effect size, whichever study it comes from, is modelled by the
  step-function selection model of Vevea & Hedges (1995) for its *marginal* distribution: a
  random-effects density :math:`N(\mu, \tau^2 + \sigma_i^2)` (tau^2 the total heterogeneity, between
  and within studies together) re-weighted by :math:`\lambda_h` when the effect's one-sided p-value
  lies in :math:`(\alpha_h, \alpha_{h+1}]` (:math:`\lambda_0 = 1`).
- **Composite likelihood.**  The effects are treated as independent for estimation: the
  estimator maximises the composite (independence) log-likelihood (the paper's eq. 7)

  .. math::

      \ell^M(\beta, \gamma, \zeta) = \sum_j \sum_{i \in j} a_{ij}\, \ell_{ij}(\beta, \gamma, \zeta)
          + p_\beta(\beta) + p_\gamma(\gamma) + p_\zeta(\zeta),

  with :math:`\gamma = \log\tau^2`, :math:`\zeta_h = \log\lambda_h`, weights :math:`a_{ij}` (1, or
  the bootstrap weights) and, by default, metaselection's weak prior penalties
  (:class:`SelectionPriors`, the paper's eqs. 12-14: "penalised marginal likelihood", PML);
  ``priors=None`` gives the unpenalised composite ML estimator, which for independent effects is
  exactly ``metafor::selmodel``'s ML fit.
- **Cluster-robust variance.**  :math:`V = H^{-1}\big(\sum_j S_j S_j'\big)H^{-1}` with
  :math:`S_j` the score of study j (plus its share of the penalty's gradient, allocated in
  proportion to :math:`a_{ij}` as metaselection does) and H the Hessian of :math:`\ell^M` (eq. 9).
- **Cluster bootstrap.**  Pseudo-samples re-weight whole studies: ``two-stage`` (studies drawn with
  replacement, then effects drawn with replacement within each drawn study; Field & Welsh 2007,
  the paper's recommendation), ``multinomial`` (whole studies with replacement) or
  ``exponential`` (fractional random weights per study; Xu et al. 2020).  Each pseudo-sample is
  refitted (warm-started from the full-sample estimate, all replicates at once as stacked Newton
  iterations) and the percentile, basic, studentised and BCa intervals are formed as
  ``simhelpers::bootstrap_CIs`` does (quantiles of type 1; BCa acceleration from the
  leave-one-study-out jackknife), on the (beta, gamma, zeta) scale, then transformed back.

Derivatives are analytic (the paper's appendix; here in the natural parameters and then by the
chain rule).  Interval probabilities are not floored: metaselection floors each at 1e-6
(``min_Bhi``), which only matters when a study has an interval probability below 1e-6.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import special, stats

from alliancemeta.core.errors import ConvergenceError
from alliancemeta.studies.bias.common import as_arrays

_LOG_2PI = float(np.log(2 * np.pi))
_INV_SQRT_2PI = float(1 / np.sqrt(2 * np.pi))
#: Single fit: every parameter within this many (model-based) standard errors of the optimum.
CLUSTER_GTOL = 1e-10
CLUSTER_MAX_NEWTON = 200
#: Bootstrap refits: a looser bound, far below the bootstrap's own Monte Carlo error.
BOOT_GTOL = 1e-8
BOOT_MAX_NEWTON = 60
#: A Newton step smaller than this many standard errors is taken without a line search.
SMALL_STEP = 1e-2
#: Replicates refitted together (memory ~ 40 arrays of BOOT_CHUNK x k doubles).
BOOT_CHUNK = 128
#: A fit or refit whose log tau^2 or log lambda leaves [-LOG_LIMIT, LOG_LIMIT] is diverging to a
#: boundary (tau^2 -> 0 or a weight -> 0 or infinity): it counts as not converged, as in metaselection.
LOG_LIMIT = 30.0
BOOTSTRAP_METHODS = ("two-stage", "multinomial", "exponential")
CI_TYPES = ("percentile", "basic", "student", "bca", "normal", "bias-corrected")
#: metaselection needs three or more clusters ("This method will not provide valid results").
MIN_CLUSTERS = 3


@dataclass(frozen=True)
class SelectionPriors:
    r"""metaselection's prior penalties (``define_priors()``; defaults are the package's and the paper's).

    .. math::

        p_\beta = -c_\beta \sum |\beta - m_\beta|^{L_\beta}, \qquad
        p_\gamma = \tfrac{\alpha}{2}\gamma - \frac{\alpha}{\tau_{mode}} e^{\gamma/2}, \qquad
        p_\zeta = -c_\lambda \sum (\zeta_h - \log\lambda_{mode})^{L_\lambda}

    (the :math:`\gamma` penalty is the log density, on the :math:`\gamma = 2\log\tau` scale, of a gamma
    prior on :math:`\tau` with shape :math:`\alpha` and rate :math:`\alpha/\tau_{mode}`, largest at
    :math:`\tau = \tau_{mode}`; Chung et al. 2013).  The defaults were set for standardised mean
    differences; on the bundled SYNTHETIC alliance data (Fisher z, 401 effects in 295 studies) they move
    the 3PSM estimate by 1.1e-4, a hundredth of its standard error.
    """

    beta_mean: float = 0.0
    beta_precision: float = 1.0 / 16.0
    beta_L: float = 4.0
    tau_mode: float = 0.20
    tau_alpha: float = 1.0
    lambda_mode: float = 0.5
    lambda_precision: float = 1.0 / 54.0
    lambda_L: float = 4.0

    def evaluate(self, theta: np.ndarray):
        """Penalty, gradient, Hessian diagonal for theta of shape (..., 2 + H) = (beta, gamma, zeta)."""
        b = theta[..., :1] - self.beta_mean
        g = theta[..., 1:2]
        z = theta[..., 2:] - np.log(self.lambda_mode)
        glam = self.tau_alpha / self.tau_mode
        Lb, Lz = self.beta_L, self.lambda_L
        val = (
            -self.beta_precision * np.sum(np.abs(b) ** Lb, axis=-1)
            + (0.5 * self.tau_alpha * g - glam * np.exp(g / 2))[..., 0]
            - self.lambda_precision * np.sum(z**Lz, axis=-1)
        )
        grad = np.concatenate(
            [
                -self.beta_precision * Lb * np.sign(b) * np.abs(b) ** (Lb - 1),
                0.5 * (self.tau_alpha - glam * np.exp(g / 2)),
                -self.lambda_precision * Lz * np.sign(z) * np.abs(z) ** (Lz - 1),
            ],
            axis=-1,
        )
        hdiag = np.concatenate(
            [
                -self.beta_precision * Lb * (Lb - 1) * np.abs(b) ** (Lb - 2),
                -0.25 * glam * np.exp(g / 2),
                -self.lambda_precision * Lz * (Lz - 1) * np.abs(z) ** (Lz - 2),
            ],
            axis=-1,
        )
        return val, grad, hdiag


#: metaselection's default penalties (``priors = define_priors()``).
METASELECTION_PRIORS = SelectionPriors()


class _CompositeStep:
    r"""Weighted composite log-likelihood of the step-function model, batched over parameter rows.

    For effect i with :math:`\sigma_i = \sqrt{v_i}`, :math:`s_i^2 = \sigma_i^2 + \tau^2`, the
    threshold :math:`a_{ih} = \sigma_i\Phi^{-1}(1-\alpha_h)` and
    :math:`G_{ih} = \bar\Phi\big((a_{ih} - \mu)/s_i\big)` (the probability that its p-value is below
    :math:`\alpha_h`),

    .. math::

        \ell_i = \log\lambda_{g_i} - \tfrac12\log(2\pi s_i^2) - \frac{(y_i - \mu)^2}{2s_i^2} - \log A_i,
        \qquad A_i = \lambda_H + \sum_{h=1}^{H}(\lambda_{h-1} - \lambda_h)\,G_{ih}

    (Vevea & Hedges 1995, eqs. 3-5; the paper's eqs. 4-6).  ``theta`` rows are
    (beta, gamma = log tau^2, zeta_1..zeta_H = log lambda); ``W`` rows are effect weights.
    """

    def __init__(self, yi, vi, steps, priors: SelectionPriors | None):
        self.yi, self.vi = yi, vi
        self.sig = np.sqrt(vi)
        self.steps = np.asarray(steps, dtype=float)  # alpha_1..alpha_H (without 1)
        self.H = self.steps.size
        self.q = 2 + self.H
        self.a = self.sig[:, None] * stats.norm.isf(self.steps)[None, :]  # (k, H)
        pvals = stats.norm.sf(yi / self.sig)
        self.groups = np.searchsorted(np.append(self.steps, 1.0), pvals, side="left")  # 0..H
        self.onehot = (self.groups[:, None] == np.arange(1, self.H + 1)[None, :]).astype(float)  # (k, H)
        self.priors = priors

    def evaluate(self, theta, W, order: int = 2, contributions: bool = False):
        """Per row of ``theta`` (n, q) and ``W`` (n, k): ll (n,), gradient (n, q), Hessian (n, q, q).

        ``contributions=True`` also returns the weighted per-effect scores (n, k, q) without the
        penalty.  The log-likelihood includes the constant :math:`-\\tfrac12\\log 2\\pi` per effect
        (weighted) and the penalty.  Written for speed: every (n, k) array is made once.
        """
        n = theta.shape[0]
        Hn = self.H
        beta = theta[:, :1]  # (n, 1)
        V = np.exp(theta[:, 1:2])
        lam = np.exp(theta[:, 2:])  # (n, H)
        lam_full = np.concatenate([np.ones((n, 1)), lam], axis=1)  # lambda_0..lambda_H
        dd = lam_full[:, :-1] - lam_full[:, 1:]  # (n, H): coefficient of G_h in A
        s2 = self.vi[None, :] + V  # (n, k)
        is2 = 1.0 / s2
        s = np.sqrt(s2)
        e = self.yi[None, :] - beta
        c = (self.a[None, :, :] - beta[:, :, None]) * (1.0 / s)[:, :, None]  # (n, k, H)
        G = special.ndtr(-c)  # P(p <= alpha_h)
        A = np.einsum("nkh,nh->nk", G, dd) + lam_full[:, -1:]
        iA = 1.0 / A
        log_lam_g = np.concatenate([np.zeros((n, 1)), theta[:, 2:]], axis=1)[:, self.groups]  # (n, k)
        er = e * is2
        lli = log_lam_g - 0.5 * (_LOG_2PI + np.log(s2) + e * er) - np.log(A)
        ll = np.einsum("nk,nk->n", W, lli)
        if self.priors is not None:
            pen, pgrad, phess = self.priors.evaluate(theta)
            ll = ll + pen
        if order == 0:
            return ll, None, None, None
        phi = np.exp(-0.5 * c * c) * _INV_SQRT_2PI
        is_ = (1.0 / s)[:, :, None]
        Gm = phi * is_
        GV = phi * c * (0.5 * is2)[:, :, None]
        A_m = np.einsum("nkh,nh->nk", Gm, dd)
        A_V = np.einsum("nkh,nh->nk", GV, dd)
        # interval probabilities B_j = G_{j+1} - G_j (j = 1..H; G_{H+1} = 1) and their derivatives
        B = np.empty_like(G)
        B[:, :, :-1] = G[:, :, 1:] - G[:, :, :-1]
        B[:, :, -1] = 1.0 - G[:, :, -1]
        lB = lam[:, None, :] * B * iA[:, :, None]  # lambda_j B_j / A
        l_V = 0.5 * (er * er - is2) - A_V * iA  # natural-scale score in tau^2
        S_beta = er - A_m * iA
        S_zeta = self.onehot[None, :, :] - lB  # (n, k, H)
        grad = np.empty((n, self.q))
        grad[:, 0] = np.einsum("nk,nk->n", W, S_beta)
        grad[:, 1] = V[:, 0] * np.einsum("nk,nk->n", W, l_V)
        grad[:, 2:] = np.einsum("nk,nkh->nh", W, S_zeta)
        S = None
        if contributions:
            S = np.empty((n, W.shape[1], self.q))
            S[:, :, 0] = W * S_beta
            S[:, :, 1] = W * (V * l_V)
            S[:, :, 2:] = W[:, :, None] * S_zeta
        if self.priors is not None:
            grad = grad + pgrad
        if order == 1:
            return ll, grad, None, S
        c2 = c * c
        Gmm = 2.0 * GV  # phi c / s^2
        GmV = phi * (c2 - 1) * (0.5 * is2)[:, :, None] * is_
        GVV = GV * (c2 - 3) * (0.5 * is2)[:, :, None]  # phi c (c^2 - 3) / (4 s^4)
        A_mm = np.einsum("nkh,nh->nk", Gmm, dd)
        A_mV = np.einsum("nkh,nh->nk", GmV, dd)
        A_VV = np.einsum("nkh,nh->nk", GVV, dd)
        iA2 = iA * iA
        h_mm = A_m * A_m * iA2 - A_mm * iA - is2
        h_mV = A_m * A_V * iA2 - A_mV * iA - er * is2
        h_VV = A_V * A_V * iA2 - A_VV * iA + is2 * (0.5 * is2 - er * er)
        B_m = np.empty_like(G)
        B_m[:, :, :-1] = Gm[:, :, 1:] - Gm[:, :, :-1]
        B_m[:, :, -1] = -Gm[:, :, -1]
        B_V = np.empty_like(G)
        B_V[:, :, :-1] = GV[:, :, 1:] - GV[:, :, :-1]
        B_V[:, :, -1] = -GV[:, :, -1]
        # lambda_j d2 l / (d mu d lambda_j) = -lambda_j B_mj / A + A_mu lambda_j B_j / A^2, likewise for V
        lam3iA = lam[:, None, :] * iA[:, :, None]
        h_ml = (A_m * iA)[:, :, None] * lB - B_m * lam3iA
        h_Vl = (A_V * iA)[:, :, None] * lB - B_V * lam3iA
        Hm = np.empty((n, self.q, self.q))
        Hm[:, 0, 0] = np.einsum("nk,nk->n", W, h_mm)
        Hm[:, 0, 1] = Hm[:, 1, 0] = V[:, 0] * np.einsum("nk,nk->n", W, h_mV)
        Hm[:, 1, 1] = (
            V[:, 0] ** 2 * np.einsum("nk,nk->n", W, h_VV)
            + grad[:, 1]
            - (pgrad[:, 1] if self.priors is not None else 0.0)
        )
        Hm[:, 0, 2:] = Hm[:, 2:, 0] = np.einsum("nk,nkh->nh", W, h_ml)
        Hm[:, 1, 2:] = Hm[:, 2:, 1] = V * np.einsum("nk,nkh->nh", W, h_Vl)
        Hzz = np.einsum("nk,nkj,nkl->njl", W, lB, lB)
        Hzz -= np.einsum("nk,nkj->nj", W, lB)[:, :, None] * np.eye(Hn)[None, :, :]
        Hm[:, 2:, 2:] = Hzz
        if self.priors is not None:
            Hm = Hm + phess[:, :, None] * np.eye(self.q)[None, :, :]
        return ll, grad, Hm, S


def _newton_batch(lik: _CompositeStep, theta0, W, gtol, max_iter, fail_outside: float | None, codes=None):
    r"""Maximise every row's weighted composite log-likelihood by Newton steps with step halving.

    Each row is frozen once converged (every parameter within ``gtol`` model-based standard errors
    of its optimum, :math:`-H` positive definite), so a row's result does not depend on the other
    rows it is refitted with.  Where :math:`-H` is not positive definite the step uses
    :math:`-H + \mu I` with :math:`\mu` lifting its smallest eigenvalue.  A Newton step that moves
    every parameter by less than :data:`SMALL_STEP` standard errors is taken without a line search
    (Newton's method converges quadratically there, and the change in log-likelihood is at the
    level of round-off); larger steps are halved until the log-likelihood does not decrease.  A
    row whose gamma or zeta leaves [-fail_outside, fail_outside] is diverging to a boundary and
    stops as not converged.  With ``codes`` (cluster codes) the cluster-robust sandwich of each row
    is formed from the evaluation that shows it converged.  Returns (theta, converged, iterations,
    vcov or None).
    """
    theta = np.array(theta0, dtype=float, copy=True)
    n, q = theta.shape
    converged = np.zeros(n, dtype=bool)
    failed = np.zeros(n, dtype=bool)
    iters = np.zeros(n, dtype=int)
    vcov = np.full((n, q, q), np.nan) if codes is not None else None
    eye = np.eye(q)
    active = np.arange(n)
    for _ in range(max_iter):
        if active.size == 0:
            break
        th, Wa = theta[active], W[active]
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):  # non-finite rows are handled below
            ll, g, Hm, S = lik.evaluate(th, Wa, contributions=codes is not None)
        iters[active] += 1
        negH = -Hm
        finite = np.isfinite(ll) & np.all(np.isfinite(g), axis=1) & np.all(np.isfinite(Hm), axis=(1, 2))
        negH[~finite] = eye
        g = np.where(finite[:, None], g, 0.0)
        eig = np.linalg.eigvalsh(negH)
        pd = eig[:, 0] > 0
        cov = np.linalg.inv(np.where(pd[:, None, None], negH, eye))
        se = np.sqrt(np.abs(np.einsum("nii->ni", cov)))
        done = finite & pd & np.all(np.abs(g) * se <= gtol, axis=1)
        converged[active[done]] = True
        if codes is not None and np.any(done):
            vcov[active[done]] = _sandwich_from(lik, th[done], Wa[done], S[done], -cov[done], codes)
        bad = ~finite
        failed[active[bad]] = True
        keep = ~done & ~bad
        if not np.any(keep):
            break
        act = active[keep]
        th, Wa, g, negH, eig, ll, se, pd = (a[keep] for a in (th, Wa, g, negH, eig, ll, se, pd))
        shift = np.where(pd, 0.0, -eig[:, 0] + 1e-3 * np.abs(eig[:, -1]) + 1e-12)
        step = np.linalg.solve(negH + shift[:, None, None] * eye[None], g[:, :, None])[:, :, 0]
        t = np.ones(act.size)
        new = th + step
        pending = ~(pd & np.all(np.abs(step) <= SMALL_STEP * se, axis=1))
        for _ in range(40):
            if not np.any(pending):
                break
            with np.errstate(divide="ignore", invalid="ignore", over="ignore"):  # a trial step may overshoot
                ll_new = lik.evaluate(new[pending], Wa[pending], order=0)[0]
            ok = np.isfinite(ll_new) & (ll_new >= ll[pending])
            idx = np.flatnonzero(pending)
            pending[idx[ok]] = False
            t[pending] /= 2.0
            new[pending] = th[pending] + t[pending, None] * step[pending]
        theta[act] = np.where(pending[:, None], th, new)
        failed[act[pending]] = True
        if fail_outside is not None:
            out = np.any(np.abs(theta[act, 1:]) > fail_outside, axis=1)
            failed[act[out]] = True
        active = act[~failed[act]]
    return theta, converged & ~failed, iters, vcov


def _cluster_sums(S: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Sum (n, k, q) per-effect rows into (n, J, q) per-cluster rows (codes 0..J-1, every cluster present)."""
    order = np.argsort(codes, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(codes[order]) != 0])
    return np.add.reduceat(S[:, order, :], starts, axis=1)


def _sandwich_from(lik: _CompositeStep, theta, W, S, Hinv, codes) -> np.ndarray:
    """Cluster-robust sandwich H^{-1} (sum_j S_j S_j') H^{-1} per row (metaselection's eq. 9).

    The penalty's gradient is shared among effects in proportion to their weights before the
    scores are summed by cluster, as metaselection's ``step_score(contributions = TRUE)``.
    """
    if lik.priors is not None:
        _, pgrad, _ = lik.priors.evaluate(theta)
        share = W / W.sum(axis=1, keepdims=True)
        S = S + share[:, :, None] * pgrad[:, None, :]
    Sj = _cluster_sums(S, codes)
    meat = np.einsum("njp,njq->npq", Sj, Sj)
    return Hinv @ meat @ np.swapaxes(Hinv, 1, 2)


@dataclass(frozen=True)
class ClusteredSelectionFit:
    """Step-function selection model for dependent effects (metaselection's ``selection_model``).

    ``theta``: (beta, gamma = log tau^2, zeta_h = log lambda_h); ``vcov``: cluster-robust
    sandwich on theta; ``vcov_model``: inverse negative Hessian (model-based, as if independent).
    ``beta``/``se``/``ci_lb``/``ci_ub``: the adjusted mean effect with the sandwich SE and a Wald
    interval; ``tau2``/``se_tau2``, ``lambdas``/``se_lambdas``: back-transformed, SEs by the delta
    method (as metaselection prints them); ``delta``: (1, lambda_1, ..., lambda_H), metafor's order.
    ``ll``: composite log-likelihood without the penalty (metaselection's ``ll``).
    """

    steps: np.ndarray
    theta: np.ndarray
    vcov: np.ndarray
    vcov_model: np.ndarray
    beta: float
    se: float
    zval: float
    pval: float
    ci_lb: float
    ci_ub: float
    tau2: float
    se_tau2: float
    lambdas: np.ndarray
    se_lambdas: np.ndarray
    delta: np.ndarray
    ll: float
    k: int
    n_studies: int
    counts: np.ndarray  # effects per p-value interval
    study_counts: np.ndarray  # studies with an effect in each interval
    priors: SelectionPriors | None
    level: float
    iterations: int
    yi: np.ndarray = field(repr=False)
    vi: np.ndarray = field(repr=False)
    cluster: np.ndarray = field(repr=False)  # integer codes 0..n_studies-1


def _cluster_codes(cluster, k: int) -> np.ndarray:
    cluster = np.asarray(cluster)
    if cluster.shape != (k,):
        raise ValueError("cluster must have one entry per effect size")
    if np.any(cluster != cluster):  # NaN labels
        raise ValueError("cluster contains missing labels")
    return np.unique(cluster, return_inverse=True)[1].ravel()


def _start(yi, vi, H) -> np.ndarray:
    """metaselection's ``find_starting_values``: inverse-variance mean, moment tau^2, no selection."""
    beta = float(np.sum(yi / vi) / np.sum(1 / vi))
    gamma = float(np.log(max(1e-4, np.mean((yi - beta) ** 2) - np.mean(vi))))
    return np.concatenate([[beta, gamma], np.zeros(H)])


def clustered_selmodel(
    yi, vi, cluster, steps=(0.025,), priors: SelectionPriors | None = METASELECTION_PRIORS, level: float = 0.95
) -> ClusteredSelectionFit:
    r"""Fit the step-function selection model to dependent effects, as metaselection's ``selection_model``.

    ``selection_model(data, yi, vi, cluster, selection_type = "step", steps, estimator = "CML",
    vcov_type = "robust", priors = define_priors())``: composite (penalised) maximum likelihood over
    all effects, cluster-robust sandwich variance by ``cluster`` (see the module docstring).

    Parameters
    ----------
    yi, vi : array_like
        Effect sizes and sampling variances (> 0).
    cluster : array_like
        Study (cluster) label of each effect.
    steps : sequence of float
        One-sided p-value cut points in (0, 1): (0.025,) for the 3PSM, (0.025, 0.5) for the 4PSM.
    priors : SelectionPriors or None
        Penalties (default metaselection's); ``None`` for unpenalised composite ML.
    level : float
        Confidence level of the Wald (sandwich) intervals.

    Raises
    ------
    ValueError
        Fewer than :data:`MIN_CLUSTERS` clusters, k too small, or a p-value interval without effects
        (its weight is not identified; metafor's check).
    ConvergenceError
        No optimum was found (without penalties tau^2 -> 0 or a weight -> 0 puts it at infinity in
        the log scale).
    """
    yi, vi = as_arrays(yi, vi)
    k = yi.size
    codes = _cluster_codes(cluster, k)
    n_clusters = int(codes.max()) + 1 if k else 0
    if n_clusters < MIN_CLUSTERS:
        raise ValueError(f"{n_clusters} studies: the cluster-robust selection model needs at least {MIN_CLUSTERS}")
    steps = np.unique(np.asarray(steps, dtype=float))
    if steps.size == 0 or np.any((steps <= 0) | (steps >= 1)):
        raise ValueError("steps must lie strictly between 0 and 1")
    H = steps.size
    if k < 2 + H:
        raise ValueError(f"k = {k} is too small for the {2 + H} parameters")
    lik = _CompositeStep(yi, vi, steps, priors)
    counts = np.bincount(lik.groups, minlength=H + 1)
    study_counts = np.array([np.unique(codes[lik.groups == h]).size for h in range(H + 1)])
    if np.any(counts == 0):
        bounds = np.r_[0.0, steps, 1.0]
        empty = [f"({bounds[h]:g}, {bounds[h + 1]:g}]" for h in range(H + 1) if counts[h] == 0]
        raise ValueError(f"no effect size has a one-sided p-value in {', '.join(empty)}: its weight is not identified")
    W = np.ones((1, k))
    theta, ok, iters, vc = _newton_batch(
        lik, _start(yi, vi, H)[None, :], W, CLUSTER_GTOL, CLUSTER_MAX_NEWTON, LOG_LIMIT, codes
    )
    if not ok[0]:
        what = "penalised " if priors is not None else ""
        raise ConvergenceError(
            f"clustered selection model: the {what}composite likelihood has no interior maximum within "
            f"{CLUSTER_MAX_NEWTON} Newton steps (tau^2 -> 0 or a selection weight -> 0 or infinity); "
            "use metaselection's penalties (priors) or fewer steps"
        )
    theta, vcov = theta[0], vc[0]
    vcov_model = np.linalg.inv(-lik.evaluate(theta[None, :], W)[2][0])
    se_theta = np.sqrt(np.diag(vcov))
    crit = float(stats.norm.ppf(1 - (1 - level) / 2))
    beta, se = float(theta[0]), float(se_theta[0])
    zval = beta / se
    tau2 = float(np.exp(theta[1]))
    lambdas = np.exp(theta[2:])
    lik0 = _CompositeStep(yi, vi, steps, None)
    ll = float(lik0.evaluate(theta[None, :], W, order=0)[0][0])
    return ClusteredSelectionFit(
        steps=steps,
        theta=theta,
        vcov=vcov,
        vcov_model=vcov_model,
        beta=beta,
        se=se,
        zval=zval,
        pval=float(2 * stats.norm.sf(abs(zval))),
        ci_lb=beta - crit * se,
        ci_ub=beta + crit * se,
        tau2=tau2,
        se_tau2=tau2 * float(se_theta[1]),
        lambdas=lambdas,
        se_lambdas=lambdas * se_theta[2:],
        delta=np.concatenate([[1.0], lambdas]),
        ll=ll,
        k=k,
        n_studies=n_clusters,
        counts=counts,
        study_counts=study_counts,
        priors=priors,
        level=level,
        iterations=int(iters[0]),
        yi=yi,
        vi=vi,
        cluster=codes,
    )


# --------------------------------------------------------------------------------------------------
# Cluster bootstrap
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SelectionBootstrap:
    """Cluster-bootstrap replicates of a :class:`ClusteredSelectionFit` and their confidence intervals.

    ``estimates`` (n_ok, q) and ``se`` (the replicates' sandwich SEs, for the studentised interval)
    are on the (beta, gamma, zeta) scale; ``jackknife`` holds the leave-one-study-out estimates that
    give the BCa acceleration.  ``n_boot`` replicates were drawn and ``n_ok`` converged (the others
    are dropped, as metaselection drops refits that fail).
    """

    method: str
    n_boot: int
    seed: int
    level: float
    theta: np.ndarray
    se_theta: np.ndarray
    estimates: np.ndarray = field(repr=False)
    se: np.ndarray | None = field(repr=False)
    jackknife: np.ndarray | None = field(repr=False)

    @property
    def n_ok(self) -> int:
        return int(self.estimates.shape[0])

    @property
    def boot_se(self) -> np.ndarray:
        """Standard deviation of the replicates (theta scale)."""
        return np.std(self.estimates, axis=0, ddof=1) if self.n_ok > 1 else np.full(self.theta.size, np.nan)

    def ci_theta(self, ci_type: str = "percentile") -> np.ndarray:
        r"""(q, 2) interval on the (beta, gamma, zeta) scale, as ``simhelpers::bootstrap_CIs``.

        With :math:`\theta^*_{(p)}` the type-1 (inverse empirical CDF) quantile of the replicates,
        :math:`a = (1 + \text{level})/2`: percentile :math:`[\theta^*_{(1-a)}, \theta^*_{(a)}]`; basic
        :math:`[2\hat\theta - \theta^*_{(a)}, 2\hat\theta - \theta^*_{(1-a)}]`; studentised
        :math:`\hat\theta - \widehat{se}\,t^*_{(\cdot)}` with :math:`t^* = (\theta^* - \hat\theta)/se^*`;
        normal :math:`2\hat\theta - \bar\theta^* \pm z\,sd(\theta^*)`; bias-corrected and BCa (Efron
        1987) with :math:`z_0 = \Phi^{-1}(\#\{\theta^* < \hat\theta\}/B)` and acceleration
        :math:`\sum I_j^3 / (6 (\sum I_j^2)^{3/2})`, :math:`I_j = \hat\theta - \hat\theta_{-j}`
        (leave-one-study-out jackknife).  Appendix "Bootstrap CI construction" of the paper.
        """
        if ci_type not in CI_TYPES:
            raise ValueError(f"unknown bootstrap interval {ci_type!r}; expected one of {', '.join(CI_TYPES)}")
        q = self.theta.size
        if self.n_ok == 0:
            return np.full((q, 2), np.nan)
        probs = np.array([(1 - self.level) / 2, (1 + self.level) / 2])
        est, boot = self.theta, self.estimates
        out = np.empty((q, 2))
        for j in range(q):
            b = boot[:, j]
            if ci_type == "percentile":
                out[j] = _type1(b, probs)
            elif ci_type == "basic":
                out[j] = 2 * est[j] - _type1(b, probs)[::-1]
            elif ci_type == "student":
                if self.se is None:
                    raise ValueError("the studentised interval needs the replicates' sandwich SEs (studentized=True)")
                t = (b - est[j]) / self.se[:, j]
                out[j] = est[j] - self.se_theta[j] * _type1(t, probs)[::-1]
            elif ci_type == "normal":
                out[j] = 2 * est[j] - b.mean() + stats.norm.ppf(probs) * b.std(ddof=1)
            else:
                w = stats.norm.ppf(np.mean(b < est[j]))
                if ci_type == "bias-corrected":
                    p = stats.norm.cdf(2 * w + stats.norm.ppf(probs))
                else:
                    if self.jackknife is None:
                        raise ValueError("the BCa interval needs the jackknife (bca=True)")
                    infl = est[j] - self.jackknife[:, j]
                    accel = np.sum(infl**3) / (6 * np.sum(infl**2) ** 1.5)
                    wz = w + stats.norm.ppf(probs)
                    p = stats.norm.cdf(w + wz / (1 - accel * wz))
                out[j] = _type1(b, p)
        return out

    def ci(self, ci_type: str = "percentile") -> np.ndarray:
        """(q, 2) interval for (beta, tau2, lambda_1..lambda_H): tau2 and lambda back-transformed by exp."""
        out = self.ci_theta(ci_type)
        out[1:] = np.exp(out[1:])
        return out


def _type1(x: np.ndarray, probs) -> np.ndarray:
    """R's ``quantile(x, probs, type = 1)``: the inverse of the empirical distribution function."""
    probs = np.asarray(probs, dtype=float)
    if np.any(~np.isfinite(probs)):
        return np.full(probs.shape, np.nan)
    return np.quantile(x, probs, method="inverted_cdf")


def _first_stage(rng: np.random.Generator, m: int, J: int) -> np.ndarray:
    """Studies drawn with replacement: (m, J) counts; a draw of one study J times is redrawn (metaselection)."""
    a = rng.multinomial(J, np.full(J, 1.0 / J), size=m)
    while True:
        bad = np.flatnonzero(a.max(axis=1) == J)
        if bad.size == 0:
            return a
        a[bad] = rng.multinomial(J, np.full(J, 1.0 / J), size=bad.size)


class _Weights:
    """Bootstrap effect weights by chunk: two-stage, multinomial (whole studies) or exponential."""

    def __init__(self, codes: np.ndarray, method: str):
        if method not in BOOTSTRAP_METHODS:
            raise ValueError(f"unknown bootstrap {method!r}; expected one of {', '.join(BOOTSTRAP_METHODS)}")
        self.codes, self.method = codes, method
        self.J = int(codes.max()) + 1
        self.k = codes.size
        sizes = np.bincount(codes, minlength=self.J)
        order = np.argsort(codes, kind="stable")
        starts = np.r_[0, np.cumsum(sizes)[:-1]]
        # effect positions of each study, grouped by study size: {size: (studies, (n_s, size) positions)}
        self.by_size = {}
        for size in np.unique(sizes):
            studies = np.flatnonzero(sizes == size)
            self.by_size[int(size)] = (studies, order[starts[studies][:, None] + np.arange(size)[None, :]])

    def draw(self, rngs: list[np.random.Generator]) -> np.ndarray:
        """One row of effect weights per generator (each replicate has its own random stream)."""
        W = np.empty((len(rngs), self.k))
        for r, rng in enumerate(rngs):
            if self.method == "exponential":
                W[r] = rng.exponential(size=self.J)[self.codes]
                continue
            a = _first_stage(rng, 1, self.J)[0]
            if self.method == "multinomial":
                W[r] = a[self.codes]
                continue
            for size, (studies, pos) in self.by_size.items():
                W[r, pos] = rng.multinomial(a[studies] * size, np.full(size, 1.0 / size))  # (n_s, size)
        return W


def _refit(lik: _CompositeStep, theta: np.ndarray, W: np.ndarray, codes, studentized: bool):
    """Refit every row of W from theta (warm start) in chunks; (estimates, sandwich SEs, converged)."""
    n = W.shape[0]
    est = np.full((n, lik.q), np.nan)
    se = np.full((n, lik.q), np.nan) if studentized else None
    ok = np.zeros(n, dtype=bool)
    for lo in range(0, n, BOOT_CHUNK):
        hi = min(n, lo + BOOT_CHUNK)
        Wc = W[lo:hi]
        th0 = np.repeat(theta[None, :], hi - lo, axis=0)
        th, conv, _, V = _newton_batch(
            lik, th0, Wc, BOOT_GTOL, BOOT_MAX_NEWTON, LOG_LIMIT, codes if studentized else None
        )
        est[lo:hi], ok[lo:hi] = th, conv
        if studentized:
            se[lo:hi] = np.sqrt(np.abs(np.einsum("nii->ni", V)))
    return est, se, ok


def bootstrap_clustered_selmodel(
    fit: ClusteredSelectionFit,
    n_boot: int = 1999,
    seed: int = 0,
    method: str = "two-stage",
    studentized: bool = True,
    bca: bool = True,
) -> SelectionBootstrap:
    r"""Cluster bootstrap of :func:`clustered_selmodel`, as metaselection's ``bootstrap = method``.

    Each of ``n_boot`` pseudo-samples re-weights the effects (module docstring: ``two-stage``,
    ``multinomial``, ``exponential``) and is refitted by Newton steps warm-started at the
    full-sample estimate, :data:`BOOT_CHUNK` replicates at a time as stacked arrays; a replicate
    counts when it converges (:data:`BOOT_GTOL`) before its log tau^2 or log lambda passes
    :data:`LOG_LIMIT`.  ``studentized`` also computes each replicate's sandwich SE, ``bca`` the
    leave-one-study-out jackknife.  Replicate b draws from its own generator, the b-th child of
    ``numpy.random.SeedSequence(seed)``: one seed gives bit-identical replicates, however they are
    batched.
    """
    if n_boot < 0:
        raise ValueError("n_boot must be >= 0")
    lik = _CompositeStep(fit.yi, fit.vi, fit.steps, fit.priors)
    weights = _Weights(fit.cluster, method)
    # one independent stream per replicate, so the pseudo-samples do not depend on how they are batched
    rngs = [np.random.default_rng(child) for child in np.random.SeedSequence(seed).spawn(n_boot)]
    est, se, ok = [], [], []
    for lo in range(0, n_boot, BOOT_CHUNK):
        hi = min(n_boot, lo + BOOT_CHUNK)
        e, s, o = _refit(lik, fit.theta, weights.draw(rngs[lo:hi]), fit.cluster, studentized)
        est.append(e)
        ok.append(o)
        if studentized:
            se.append(s)
    q = lik.q
    ok_all = np.concatenate(ok) if ok else np.zeros(0, dtype=bool)
    estimates = np.concatenate(est)[ok_all] if est else np.zeros((0, q))
    ses = np.concatenate(se)[ok_all] if studentized and se else (np.zeros((0, q)) if studentized else None)
    jack = None
    if bca:
        Wj = np.ones((weights.J, fit.k))
        Wj[fit.cluster, np.arange(fit.k)] = 0.0  # row j leaves study j out
        jack, _, jok = _refit(lik, fit.theta, Wj, fit.cluster, False)
        jack = jack[jok]
    return SelectionBootstrap(
        method=method,
        n_boot=int(n_boot),
        seed=int(seed),
        level=fit.level,
        theta=fit.theta,
        se_theta=np.sqrt(np.diag(fit.vcov)),
        estimates=estimates,
        se=ses,
        jackknife=jack,
    )
