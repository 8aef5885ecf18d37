r"""Location-scale meta-analysis: moderators of the heterogeneity itself, as ``metafor::rma(..., scale = ~ Z)``.

The location-scale model (Viechtbauer & López-López 2022, *Res Synth Methods* 13, 697-715) lets
:math:`\tau^2` depend on moderators through a log link:

.. math::

    y_i = x_i'\beta + u_i + \varepsilon_i, \quad u_i \sim N(0, \tau^2_i),\;
    \log\tau^2_i = z_i'\alpha, \quad \varepsilon_i \sim N(0, v_i).

For given :math:`\alpha`, :math:`\hat\beta` is the weighted least-squares estimate with
:math:`w_i = 1/(v_i + \tau^2_i)`; :math:`\alpha` maximises the restricted (REML, metafor's default) or
profile (ML) log-likelihood.  With :math:`P = W - WX(X'WX)^{-1}X'W`, :math:`u = Py` and
:math:`t_i = \tau^2_i`, the derivatives with respect to :math:`t` are

.. math::

    \frac{\partial\ell}{\partial t_i} = \tfrac12(u_i^2 - c_i), \qquad
    \frac{\partial^2\ell}{\partial t_i\partial t_j} = -u_iu_jP_{ij} + \tfrac12 D_{ij},

with :math:`c = \operatorname{diag}P`, :math:`D = P\circ P` (REML) or :math:`c = w`,
:math:`D = \operatorname{diag}(w^2)` (ML), and by the chain rule (:math:`\partial t_i/\partial\alpha = t_iz_i`)
the observed information of :math:`\alpha` is
:math:`-Z'T\,H_t\,TZ - Z'\operatorname{diag}(g\circ t)Z`.  Because :math:`P` is diagonal minus a rank-p
term, every product reduces to sums over effects: O(k p^2 q) per Newton step, no k x k matrix.

Standard errors of :math:`\alpha` come from the inverse of this observed information, which is what
metafor computes numerically (``numDeriv::hessian`` of the same log-likelihood at the optimum);
those of :math:`\beta` from :math:`(X'WX)^{-1}`.  ``QS`` is the Wald test of the scale coefficients
other than the intercept; the likelihood-ratio test compares with the homogeneous model
(:math:`\tau^2` constant, same fixed effects), with both models fitted by the same method: REML
likelihoods are comparable here because the fixed effects are the same, as ``metafor::anova``
requires (it refuses REML comparisons of models with different X).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import linalg, stats

from alliancemeta.core.errors import ConvergenceError
from alliancemeta.studies.random_effects import estimate_tau2
from alliancemeta.studies.regression import Design, ModeratorError, design_matrix, is_categorical

METHODS = ("REML", "ML")
TESTS = ("z", "t")
LOCATION_SCALE_COLUMNS = ("moderator", "part", "term", "estimate", "se", "stat", "pval", "ci_lb", "ci_ub")
LOCATION_SCALE_TEST_COLUMNS = ("moderator", "QS", "QS_df", "QS_pval", "LRT", "LRT_pval")
#: Trailing columns of ``location_scale_tests.csv``: effects analysed and why a moderator was not fitted.
LOCATION_SCALE_TEST_EXTRA = ("k", "note")

#: Convergence: the Newton step changes no effect's log tau^2 by more than this (log tau^2 is
#: unit-free, so this is a relative change of tau^2 of 1e-10, far inside metafor's nlminb tolerance).
LOG_TAU2_TOL = 1e-10
MAX_ITER = 200
MAX_HALVINGS = 60
#: A Newton step changes no effect's log tau^2 by more than this (a factor e^2 in tau^2): from a poor
#: start, a full step could jump onto the flat plateau tau^2 ~ 0, where the score vanishes and the
#: iteration could not return to an interior maximum.
MAX_LOG_STEP = 2.0
#: A step is accepted when the log-likelihood falls by no more than this relative amount (round-off).
LL_SLACK = 1e-12
#: tau^2_i / v_i below this means the fitted heterogeneity of that effect vanishes: the maximum lies at
#: alpha -> -infinity (tau^2 -> 0 in a level), where no finite estimate or standard error exists.
TAU2_VANISHING = 1e-8
#: Levels of a factor moderator need at least this many effects for their own log tau^2: with fewer,
#: the level's heterogeneity rests on one or two residuals and its coefficient is not estimable in practice.
MIN_EFFECTS_PER_LEVEL = 3


class LocationScaleError(ValueError):
    """A location-scale model cannot be estimated (boundary, non-convergence); the message says why.

    ``vanishing`` marks the effects whose fitted tau^2 heads to 0 when that is the reason (else None).
    """

    def __init__(self, message: str, vanishing: np.ndarray | None = None):
        super().__init__(message)
        self.vanishing = vanishing


@dataclass(frozen=True)
class LocationScaleFit:
    """A fitted location-scale model with metafor's names (``b``/``alpha`` with their inference).

    ``beta``..``ci_ub`` are the location coefficients, ``alpha``..``alpha_ci_ub`` the scale
    coefficients (log tau^2), ``tau2`` the fitted tau^2 per effect, ``QM`` the Wald test of the
    location moderators and ``QS`` that of the scale moderators, ``loglik`` the maximised
    (restricted) log-likelihood in metafor's form.
    """

    method: str
    test: str
    level: float
    k: int
    p: int
    q: int
    beta: np.ndarray
    se: np.ndarray
    vb: np.ndarray
    stat: np.ndarray
    pval: np.ndarray
    ci_lb: np.ndarray
    ci_ub: np.ndarray
    alpha: np.ndarray
    alpha_se: np.ndarray
    va: np.ndarray
    alpha_stat: np.ndarray
    alpha_pval: np.ndarray
    alpha_ci_lb: np.ndarray
    alpha_ci_ub: np.ndarray
    tau2: np.ndarray
    QM: float
    QM_df: tuple[float, float]
    QM_pval: float
    QS: float
    QS_df: tuple[float, float]
    QS_pval: float
    loglik: float
    iterations: int
    converged: bool
    yi: np.ndarray = field(repr=False)
    vi: np.ndarray = field(repr=False)
    X: np.ndarray = field(repr=False)
    Z: np.ndarray = field(repr=False)


# --------------------------------------------------------------------------------------------------
# the log-likelihood and its derivatives in O(k)
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Evaluation:
    alpha: np.ndarray
    loglik: float
    beta: np.ndarray
    vb: np.ndarray
    tau2: np.ndarray
    grad: np.ndarray | None = None
    observed: np.ndarray | None = None
    fisher: np.ndarray | None = None


def _intercept_columns(M: np.ndarray) -> np.ndarray:
    return np.flatnonzero(np.all(M == 1.0, axis=0))


def _tested_columns(M: np.ndarray) -> np.ndarray:
    """metafor's default ``btt``/``att``: every coefficient but the intercept (all when it is the only one)."""
    q = M.shape[1]
    ints = _intercept_columns(M)
    if q == 1:
        return np.arange(1)
    return np.array([j for j in range(q) if j not in ints]) if ints.size else np.arange(q)


class _LocationScale:
    def __init__(self, yi, vi, X, Z, reml: bool):
        self.y, self.v, self.X, self.Z = yi, vi, X, Z
        self.reml = reml
        self.k, self.p = X.shape
        self.q = Z.shape[1]
        if reml:
            _sign, logdet_xtx = np.linalg.slogdet(X.T @ X)
            self.const = -0.5 * (self.k - self.p) * np.log(2.0 * np.pi) + 0.5 * logdet_xtx
        else:
            self.const = -0.5 * self.k * np.log(2.0 * np.pi)

    def evaluate(self, alpha, derivatives: bool = False) -> _Evaluation:
        r"""(Restricted) log-likelihood at :math:`\alpha`, metafor's ``.ll.rma.ls`` with ``REMLf = TRUE``.

        .. math::

            \ell_R = -\tfrac{k-p}{2}\log 2\pi + \tfrac12\log|X'X| - \tfrac12\sum_i\log(v_i + \tau^2_i)
                     - \tfrac12\log|X'WX| - \tfrac12\sum_i w_ie_i^2

        (ML: :math:`-\tfrac k2\log 2\pi` and no determinant terms), with the score and observed and
        expected information described in the module docstring.
        """
        X, Z, y, v = self.X, self.Z, self.y, self.v
        eta = Z @ alpha
        t = np.exp(eta)
        w = 1.0 / (v + t)
        F = X.T @ (X * w[:, None])
        cf = linalg.cho_factor(F, lower=True)
        Q = linalg.cho_solve(cf, np.eye(self.p))
        beta = Q @ (X.T @ (w * y))
        e = y - X @ beta
        u = w * e  # P y
        ll = self.const - 0.5 * float(np.sum(np.log(v + t))) - 0.5 * float(e @ u)
        if self.reml:
            ll -= float(np.sum(np.log(np.diag(cf[0]))))
        if not derivatives:
            return _Evaluation(np.asarray(alpha, dtype=float), ll, beta, Q, t)

        h = np.einsum("ij,jk,ik->i", X, Q, X)  # x_i'Qx_i
        p_diag = w - w * w * h
        c = p_diag if self.reml else w
        g = 0.5 * (u * u - c)  # d ll / d t_i
        grad = Z.T @ (g * t)
        TZ = Z * t[:, None]
        # Z'T((uu') o P)TZ = Z' diag(t^2 u^2 w) Z - C'QC with C = X' diag(w t u) Z
        C = X.T @ (TZ * (w * u)[:, None])
        uPu = (TZ * (u * u * w)[:, None]).T @ TZ - C.T @ Q @ C
        # D term: REML P o P, ML diag(w^2)
        if self.reml:
            D = (TZ * (w * w - 2.0 * w**3 * h)[:, None]).T @ TZ
            Gs = [Q @ (X.T @ (X * (w * w * TZ[:, r])[:, None])) for r in range(self.q)]
            D += np.array([[np.sum(Gs[r] * Gs[s].T) for s in range(self.q)] for r in range(self.q)])
        else:
            D = (TZ * (w * w)[:, None]).T @ TZ
        hessian = -uPu + 0.5 * D + (Z * (g * t)[:, None]).T @ Z
        observed = -0.5 * (hessian + hessian.T)
        fisher = 0.25 * (D + D.T)
        return _Evaluation(np.asarray(alpha, dtype=float), ll, beta, Q, t, grad, observed, fisher)

    def start(self) -> np.ndarray:
        """log of the homogeneous-model tau^2 (floored at 1% of the mean sampling variance) for the intercept."""
        alpha = np.zeros(self.q)
        try:
            tau2 = estimate_tau2(self.y, self.v, self.X, "REML" if self.reml else "ML").tau2
        except ConvergenceError:
            tau2 = 0.0
        base = np.log(max(tau2, 0.01 * float(np.mean(self.v))))
        ints = _intercept_columns(self.Z)
        if ints.size:
            alpha[ints[0]] = base
        else:  # no intercept column: the least-squares alpha with Z alpha = base
            alpha = np.linalg.lstsq(self.Z, np.full(self.k, base), rcond=None)[0]
        return alpha


def _direction(H: np.ndarray, grad: np.ndarray) -> np.ndarray | None:
    try:
        cf = linalg.cho_factor(H, lower=True)
    except linalg.LinAlgError:
        return None
    return linalg.cho_solve(cf, grad)


def _maximise(model: _LocationScale, what: str) -> tuple[_Evaluation, int]:
    """Newton ascent with observed information (Fisher scoring when it is not positive definite),
    steps capped at :data:`MAX_LOG_STEP` and halved until the log-likelihood does not fall, to
    :data:`LOG_TAU2_TOL` in every effect's log tau^2.  An iterate with some
    :math:`\tau^2_i/v_i <` :data:`TAU2_VANISHING` is heading for the boundary (``_Vanishing``)."""
    alpha = model.start()
    ev = model.evaluate(alpha, derivatives=True)
    for it in range(1, MAX_ITER + 1):
        if np.min(ev.tau2 / model.v) < TAU2_VANISHING:
            raise _Vanishing(ev)
        steps = [d for d in (_direction(ev.observed, ev.grad), _direction(ev.fisher, ev.grad)) if d is not None]
        if not steps:
            steps = [np.linalg.lstsq(ev.fisher, ev.grad, rcond=None)[0]]
        if np.max(np.abs(model.Z @ steps[0])) <= LOG_TAU2_TOL:
            return ev, it - 1
        accepted = None
        for step in steps:
            size = min(1.0, MAX_LOG_STEP / max(float(np.max(np.abs(model.Z @ step))), 1e-300))
            for _ in range(MAX_HALVINGS):
                cand = ev.alpha + size * step
                if np.all(np.isfinite(model.Z @ cand)) and np.max(model.Z @ cand) < 700.0:
                    ev_c = model.evaluate(cand, derivatives=True)
                    if ev_c.loglik >= ev.loglik - LL_SLACK * (1.0 + abs(ev.loglik)):
                        accepted = ev_c
                        break
                size /= 2.0
            if accepted is not None:
                break
        if accepted is None:
            raise ConvergenceError(
                f"{what}: no step improves the log-likelihood (iteration {it}, alpha = {ev.alpha.tolist()})"
            )
        ev = accepted
    if np.min(ev.tau2 / model.v) < TAU2_VANISHING:
        raise _Vanishing(ev)
    raise ConvergenceError(f"{what} did not converge in {MAX_ITER} iterations (alpha = {ev.alpha.tolist()})")


class _Vanishing(Exception):
    """Internal: the fitted tau^2 of some effects is heading to 0 (alpha to -infinity)."""

    def __init__(self, evaluation: _Evaluation):
        super().__init__("tau^2 -> 0")
        self.evaluation = evaluation


def _loglik_homogeneous(yi, vi, X, tau2: float, reml: bool) -> float:
    """The log-likelihood of the model with constant tau^2 (the same form as :meth:`_LocationScale.evaluate`)."""
    k, p = X.shape
    w = 1.0 / (vi + tau2)
    F = X.T @ (X * w[:, None])
    beta = np.linalg.solve(F, X.T @ (w * yi))
    e = yi - X @ beta
    ll = -0.5 * float(np.sum(np.log(vi + tau2))) - 0.5 * float(np.sum(w * e * e))
    if reml:
        return (
            ll - 0.5 * (k - p) * np.log(2 * np.pi) + 0.5 * np.linalg.slogdet(X.T @ X)[1] - 0.5 * np.linalg.slogdet(F)[1]
        )
    return ll - 0.5 * k * np.log(2 * np.pi)


def location_scale(
    yi, vi, X=None, Z=None, method: str = "REML", test: str = "z", level: float = 0.95
) -> LocationScaleFit:
    r"""Fit a location-scale model, as ``metafor::rma(yi, vi, mods = X, scale = Z, method = method)``.

    Log link, :math:`\tau^2_i = \exp(z_i'\alpha)`.  Location: :math:`\hat\beta = (X'WX)^{-1}X'Wy`
    with covariance :math:`(X'WX)^{-1}`; scale: :math:`\hat\alpha` maximises the (restricted)
    log-likelihood, covariance the inverse observed information (see the module docstring).  Tests:
    ``z`` (metafor's default) or ``t`` (k - p df for the location and k - q for the scale
    coefficients, as metafor's ``test = "t"``).  ``QM`` tests the location moderators and ``QS`` the
    scale moderators (all but the intercept; chi-square, or F/m for ``t``).

    Raises
    ------
    LocationScaleError
        When the fitted :math:`\tau^2` of some effects vanishes (:math:`\tau^2_i/v_i <`
        :data:`TAU2_VANISHING`: the maximum lies at :math:`\alpha \to -\infty`, e.g. no heterogeneity
        within one level of a factor) or when the maximisation does not converge.
    """
    method = method.upper()
    if method not in METHODS:
        raise ValueError(f"location-scale models are fitted by ML or REML; got {method!r}")
    test = test.lower()
    if test not in TESTS:
        raise ValueError(f"unknown test {test!r}; expected one of {', '.join(TESTS)}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1); got {level!r}")
    yi = np.asarray(yi, dtype=float).ravel()
    vi = np.asarray(vi, dtype=float).ravel()
    if yi.size != vi.size:
        raise ValueError(f"yi and vi have different lengths ({yi.size} and {vi.size})")
    if not (np.all(np.isfinite(yi)) and np.all(np.isfinite(vi))) or np.any(vi <= 0):
        raise ValueError("yi must be finite and vi finite and > 0")
    k = yi.size
    X = np.ones((k, 1)) if X is None else np.asarray(X, dtype=float).reshape(k, -1)
    Z = np.ones((k, 1)) if Z is None else np.asarray(Z, dtype=float).reshape(k, -1)
    p, q = X.shape[1], Z.shape[1]
    for name, M in (("X (location)", X), ("Z (scale)", Z)):
        if not np.all(np.isfinite(M)):
            raise ValueError(f"{name} must be finite")
        if np.linalg.matrix_rank(M) < M.shape[1]:
            raise ValueError(f"the design matrix {name} is not of full column rank")
    if k <= p + q:
        raise LocationScaleError(f"k = {k} effect sizes cannot estimate {p} location and {q} scale coefficients")
    model = _LocationScale(yi, vi, X, Z, reml=method == "REML")
    what = f"{method} estimation of the location-scale model"
    try:
        ev, iterations = _maximise(model, what)
    except _Vanishing as vanish:
        low = vanish.evaluation.tau2 / vi < TAU2_VANISHING
        raise LocationScaleError(
            f"tau^2 -> 0 for {int(low.sum())} of {k} effect sizes (the maximum lies at log tau^2 -> -infinity); "
            "no finite scale estimates exist",
            vanishing=low,
        ) from None
    try:
        va = linalg.cho_solve(linalg.cho_factor(ev.observed, lower=True), np.eye(q))
    except linalg.LinAlgError:
        raise LocationScaleError(
            f"{what}: the observed information of the scale coefficients is not positive "
            "definite at the optimum; no standard errors exist"
        ) from None
    q_crit = 1.0 - (1.0 - level) / 2.0
    beta, vb = ev.beta, ev.vb
    se = np.sqrt(np.diag(vb))
    stat = beta / se
    alpha = ev.alpha
    a_se = np.sqrt(np.diag(va))
    a_stat = alpha / a_se
    btt, att = _tested_columns(X), _tested_columns(Z)
    QM = float(beta[btt] @ np.linalg.solve(vb[np.ix_(btt, btt)], beta[btt]))
    QS = float(alpha[att] @ np.linalg.solve(va[np.ix_(att, att)], alpha[att]))
    if test == "t":
        crit, a_crit = stats.t.ppf(q_crit, k - p), stats.t.ppf(q_crit, k - q)
        pval, a_pval = 2.0 * stats.t.sf(np.abs(stat), k - p), 2.0 * stats.t.sf(np.abs(a_stat), k - q)
        QM, QS = QM / btt.size, QS / att.size
        QM_df, QS_df = (float(btt.size), float(k - p)), (float(att.size), float(k - q))
        QM_pval = float(stats.f.sf(QM, *QM_df))
        QS_pval = float(stats.f.sf(QS, *QS_df))
    else:
        crit = a_crit = stats.norm.ppf(q_crit)
        pval, a_pval = 2.0 * stats.norm.sf(np.abs(stat)), 2.0 * stats.norm.sf(np.abs(a_stat))
        QM_df, QS_df = (float(btt.size), np.inf), (float(att.size), np.inf)
        QM_pval, QS_pval = float(stats.chi2.sf(QM, btt.size)), float(stats.chi2.sf(QS, att.size))
    return LocationScaleFit(
        method=method, test=test, level=level, k=k, p=p, q=q, beta=beta, se=se, vb=vb, stat=stat,
        pval=np.asarray(pval, dtype=float), ci_lb=beta - crit * se, ci_ub=beta + crit * se, alpha=alpha,
        alpha_se=a_se, va=va, alpha_stat=a_stat, alpha_pval=np.asarray(a_pval, dtype=float),
        alpha_ci_lb=alpha - a_crit * a_se, alpha_ci_ub=alpha + a_crit * a_se, tau2=ev.tau2, QM=QM, QM_df=QM_df,
        QM_pval=QM_pval, QS=QS, QS_df=QS_df, QS_pval=QS_pval, loglik=ev.loglik, iterations=iterations,
        converged=True, yi=yi, vi=vi, X=X, Z=Z,
    )  # fmt: skip


@dataclass(frozen=True)
class ScaleLRT:
    """Likelihood-ratio test of a location-scale model against the homogeneous model (same X, same method)."""

    LRT: float
    df: int
    pval: float
    loglik_full: float
    loglik_reduced: float
    tau2_reduced: float


def scale_lrt(fit: LocationScaleFit) -> ScaleLRT:
    r"""LRT of the scale moderators: :math:`2(\ell_{full} - \ell_0)` on q - 1 df, as ``anova(full, reduced)``.

    The reduced model is ``rma(yi, vi, mods = X, scale = ~ 1, method = fit.method)``, i.e. the usual
    random-effects model with one :math:`\tau^2`, whose maximum is ``rma.uni``'s estimate (including the
    boundary :math:`\tau^2 = 0`, which the log link only approaches).  Both models share the fixed
    effects, so REML likelihoods are comparable (``metafor::anova`` uses the REML deviances); the
    statistic is truncated at 0 as there.
    """
    reml = fit.method == "REML"
    tau2_0 = estimate_tau2(fit.yi, fit.vi, fit.X, fit.method).tau2
    ll0 = _loglik_homogeneous(fit.yi, fit.vi, fit.X, tau2_0, reml)
    df = fit.q - 1
    lrt = max(0.0, 2.0 * (fit.loglik - ll0))
    return ScaleLRT(lrt, df, float(stats.chi2.sf(lrt, df)) if df > 0 else np.nan, fit.loglik, ll0, tau2_0)


# --------------------------------------------------------------------------------------------------
# the location_scale.csv tables
# --------------------------------------------------------------------------------------------------


def _nan_rows(name: str, terms: Sequence[str]) -> list[dict]:
    rows = [{"moderator": name, "part": "location", "term": "intrcpt"}]
    rows += [{"moderator": name, "part": "scale", "term": t} for t in terms]
    return rows


def _level_counts_note(frame: pd.DataFrame, mod: str, design: Design) -> str | None:
    values = frame.loc[design.rows, mod]
    if not is_categorical(values):
        return None
    counts = values.astype(str).value_counts()
    few = counts[counts < MIN_EFFECTS_PER_LEVEL]
    if few.empty:
        return None
    listed = ", ".join(f"{mod}={lv} ({n})" for lv, n in sorted(few.items()))
    return (
        f"level(s) with fewer than {MIN_EFFECTS_PER_LEVEL} effect sizes cannot carry their own tau^2: {listed}; "
        "merge levels or drop the moderator from studies.NAME.scale_moderators"
    )


def _vanishing_note(frame: pd.DataFrame, mod: str, design: Design, low: np.ndarray, method: str) -> str:
    """Name where tau^2 vanishes: the factor levels (or the moderator range) of the effects marked ``low``."""
    values = frame.loc[design.rows, mod]
    if is_categorical(values):
        where = "level(s) " + ", ".join(f"{mod}={lv}" for lv in sorted(values.astype(str)[low].unique()))
    else:
        x = values.to_numpy(float)[low]
        where = f"{mod} in [{x.min():g}, {x.max():g}]"
    return (
        f"tau^2 -> 0 in {where}: the {method} maximum lies at log tau^2 -> -infinity there, so the "
        "scale coefficients have no finite estimate"
    )


def location_scale_table(
    frame: pd.DataFrame, moderators: Sequence[str], level: float = 0.95, method: str = "REML"
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``location_scale.csv`` and ``location_scale_tests.csv`` (SPEC §5): one model per moderator.

    Each model has an intercept-only location part and log tau^2 linear in the moderator (metafor
    ``rma(yi, vi, scale = ~ mod)``; factors treatment-coded with the first sorted level as reference,
    as :func:`alliancemeta.studies.regression.design_matrix`), fitted by ``method`` (REML, metafor's
    default) with z tests.  Rows with a missing moderator value are dropped for that model (the note
    says how many).  The tests table holds ``QS`` (Wald test of the scale coefficients but the
    intercept) and the likelihood-ratio test against the homogeneous model (:func:`scale_lrt`), with
    trailing ``k`` and ``note``.  A moderator that cannot be fitted (constant, a level with fewer than
    :data:`MIN_EFFECTS_PER_LEVEL` effects, tau^2 -> 0 in a level, non-convergence) gets NaN rows and the
    reason in ``note``.
    """
    missing = [c for c in ("yi", "vi") if c not in frame.columns]
    if missing:
        raise ValueError(f"the study table lacks column(s) {', '.join(missing)}")
    coef_rows, test_rows = [], []
    for mod in moderators:
        if mod not in frame.columns:
            raise ValueError(f"scale moderator {mod!r} is not a column of the study table")
        try:
            design = design_matrix(frame, [mod])
        except ModeratorError as err:
            coef_rows += _nan_rows(mod, ["intrcpt"])
            test_rows.append({"moderator": mod, "k": int(frame[mod].notna().sum()), "note": str(err)})
            continue
        k = int(design.rows.sum())
        dropped = int((~design.rows).sum())
        notes = [f"{dropped} effect size(s) with a missing {mod} dropped"] if dropped else []
        few = _level_counts_note(frame, mod, design)
        yi = frame["yi"].to_numpy(float)[design.rows]
        vi = frame["vi"].to_numpy(float)[design.rows]
        if few is not None:
            coef_rows += _nan_rows(mod, design.terms)
            test_rows.append({"moderator": mod, "k": k, "note": "; ".join([*notes, few])})
            continue
        try:
            fit = location_scale(yi, vi, Z=design.X, method=method, level=level)
            lrt = scale_lrt(fit)
        except LocationScaleError as err:
            reason = str(err) if err.vanishing is None else _vanishing_note(frame, mod, design, err.vanishing, method)
            coef_rows += _nan_rows(mod, design.terms)
            test_rows.append({"moderator": mod, "k": k, "note": "; ".join([*notes, reason])})
            continue
        except ConvergenceError as err:
            coef_rows += _nan_rows(mod, design.terms)
            test_rows.append({"moderator": mod, "k": k, "note": "; ".join([*notes, f"{mod}: {err}"])})
            continue
        coef_rows.append(
            {
                "moderator": mod,
                "part": "location",
                "term": "intrcpt",
                "estimate": fit.beta[0],
                "se": fit.se[0],
                "stat": fit.stat[0],
                "pval": fit.pval[0],
                "ci_lb": fit.ci_lb[0],
                "ci_ub": fit.ci_ub[0],
            }
        )
        for j, term in enumerate(design.terms):
            coef_rows.append(
                {
                    "moderator": mod,
                    "part": "scale",
                    "term": term,
                    "estimate": fit.alpha[j],
                    "se": fit.alpha_se[j],
                    "stat": fit.alpha_stat[j],
                    "pval": fit.alpha_pval[j],
                    "ci_lb": fit.alpha_ci_lb[j],
                    "ci_ub": fit.alpha_ci_ub[j],
                }
            )
        test_rows.append(
            {
                "moderator": mod,
                "QS": fit.QS,
                "QS_df": fit.QS_df[0],
                "QS_pval": fit.QS_pval,
                "LRT": lrt.LRT,
                "LRT_pval": lrt.pval,
                "k": k,
                "note": "; ".join(notes),
            }
        )
    coefs = pd.DataFrame(coef_rows, columns=list(LOCATION_SCALE_COLUMNS))
    tests = pd.DataFrame(test_rows, columns=[*LOCATION_SCALE_TEST_COLUMNS, *LOCATION_SCALE_TEST_EXTRA])
    tests["note"] = tests["note"].fillna("")
    return coefs, tests
