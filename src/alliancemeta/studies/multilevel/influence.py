r"""Influence diagnostics of the three-level model: what ``metafor`` offers for ``rma.mv`` fits.

For a fit of :func:`alliancemeta.studies.multilevel.three_level` (``rma.mv(yi, vi, random = ~ 1 | study/effect)``)
this module computes, deleting one *unit* at a time (a whole study, metafor's ``cluster = study``, or a
single effect size) and refitting the model by REML:

* Cook's distance (``cooks.distance.rma.mv``), the Mahalanobis distance of the coefficient shift in the
  metric of the full-data covariance: :math:`D_u = (\hat\beta - \hat\beta_{(-u)})'V_{\hat\beta}^{-1}
  (\hat\beta - \hat\beta_{(-u)})` (all coefficients: metafor's ``btt`` default for ``rma.mv``);
* DFBETAS (``dfbetas.rma.mv``): :math:`(\hat\beta_j - \hat\beta_{(-u)j}) / \sqrt{[(X'V(\hat\sigma^2_{(-u)})^{-1}
  X)^{-1}]_{jj}}`, the shift in units of its standard error under the *full* data at the *deleted*
  variance components;
* studentized deleted residuals (``rstudent.rma.mv``): for each effect i of unit u,
  :math:`e_i = y_i - x_i'\hat\beta_{(-u)}` with :math:`SE_i = \sqrt{M_{ii} + x_i'V_{(-u)}x_i}`, where
  :math:`M = V(\hat\sigma^2_{(-u)})` is the marginal covariance at the deleted variance components, and the
  unit's multivariate standardized residual

  .. math:: X^2_u = e_u'\left(M_{uu} + X_uV_{(-u)}X_u'\right)^{-1}e_u ,

  asymptotically :math:`\chi^2_{k_u}` when the unit fits the model (metafor's documentation of
  ``rstudent.rma.mv``); for single effects :math:`X^2_i = z_i^2`;
* the leave-one-out fits themselves: :math:`\hat\sigma^2_{(-u)}`, :math:`\hat\beta_{(-u)}`, their SEs and
  intervals (with the model's test: z, or t with :math:`k_{(-u)} - p` df).

Without deletion (``hatvalues.rma.mv``, ``rstandard.rma.mv``): the diagonal of the hat matrix of the
marginal model :math:`H = X(X'V^{-1}X)^{-1}X'V^{-1}`, :math:`h_i = x_i'(X'V^{-1}X)^{-1}(V^{-1}X)_i`
(the rows of :math:`V^{-1}X` by Sherman-Morrison per study, O(k p^2), no k x k matrix), and the
standardized residuals :math:`e = y - X\hat\beta` with :math:`\operatorname{Var}(e) = (I-H)V(I-H)' =
V - X(X'V^{-1}X)^{-1}X'`, per effect and as the study's :math:`X^2_j = e_j'(V_j - X_jV_{\hat\beta}X_j')^{-1}e_j`.

Every n_u x n_u inverse above is taken by the Woodbury identity around the Sherman-Morrison inverse
:math:`V_u^{-1} = \operatorname{diag}(a) - \gamma aa'` of the unit's block, so a study of any size costs
O(n_u p^2) (Viechtbauer & Cheung 2010, *Res Synth Methods* 1, 112-125; Viechtbauer 2021, "Model checking
in meta-analysis", *Handbook of Meta-Analysis*, ch. 12).

Refits
------
Each deletion is a full REML refit with the engine of :mod:`alliancemeta.studies.multilevel` (projected Newton on
the restricted likelihood, O(k) per iteration), warm-started at the full-data :math:`\hat\sigma^2` as
metafor does (``sigma2.init``), on the cluster-sorted data with the unit's rows removed.  From a boundary
estimate (a component at 0) the projected Newton step frees the component as soon as the deleted data's
score for it is positive; metafor's nlminb, which works on log(sigma2) from its near-zero estimate, can stay
stuck there (one study of the SYNTHETIC reference case, documented in
``tests/reference/test_influence_multilevel_reference.py``), so its diagnostics for such a deletion are not
at the REML optimum while ours are (equal to a refit from scratch).  Convergence of
every refit is checked: one that fails raises :class:`~alliancemeta.studies.random_effects.ConvergenceError` naming the
study.  A deletion after which the model cannot be fitted (fewer than two studies left, or a moderator
no longer estimable) gives NaN for that unit with a warning, as metafor's ``NA``.

Flagging
--------
metafor has no cut-offs for ``rma.mv`` diagnostics (``plot.infl.rma.uni``/``print.infl.rma.uni`` exist
for ``rma.uni`` only), so a unit is flagged ``influential`` by the ``rma.uni`` rules of
:func:`alliancemeta.studies.influence.influence`, transferred to the deleted unit: Cook's distance beyond the
median of :math:`\chi^2_p` (``pchisq(D, p) > 0.5``), any :math:`|\text{DFBETAS}| > 1`, or the unit's
leverage :math:`\sum_{i \in u} h_i` (the trace of its block of H; the leverages sum to p) above three
times the average, :math:`3p/n_{units}`.  The chi-square rule rather than the regression rule
:math:`D > 4/n`: metafor's Cook's distance is not divided by p nor by a residual variance, it is a
squared shift in standard-error units, whose natural reference is :math:`\chi^2_p`; :math:`4/n` would
flag, at 295 studies, every study that moves the pooled estimate by more than 0.12 of its SE.  The same
rules flag the single-level ``influence.csv``, so the two tables read alike.  DFFITS and the covariance
ratio have no ``rma.mv`` version in metafor and are not computed.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field

import numpy as np
from scipy import linalg, stats

from alliancemeta.core.inference import critical_value, p_value
from alliancemeta.studies.multilevel.clusters import Clusters
from alliancemeta.studies.multilevel.model import MultilevelFit, ThreeLevelREML, solve_reml

log = logging.getLogger(__name__)

LEVELS = ("study", "effect")
#: Deleted residuals smaller than this multiple of machine epsilon are set to exactly 0, as metafor's
#: ``rstudent``/``rstandard`` do (and ``lm.influence``), so a perfectly fitted effect reads 0, not 1e-17.
RESID_ZERO = 100 * np.finfo(float).eps
#: The influential-unit rules (see the module docstring): Cook's distance above this quantile of
#: chi^2_p, |DFBETAS| above this bound, leverage above this multiple of the average p / n_units.
COOKS_QUANTILE = 0.5
DFBETAS_BOUND = 1.0
HAT_MULTIPLE = 3.0
#: Fewest studies for study deletion: deleting one of two studies leaves a single cluster, which
#: cannot identify sigma2_study.
MIN_STUDIES = 3


@dataclass(frozen=True)
class MultilevelInfluence:
    """Deletion diagnostics of a three-level fit, metafor's names where it has them.

    Per *unit* (a study for ``level="study"``, an effect size for ``level="effect"``; in order of first
    appearance, resp. input order): ``units`` (labels), ``k`` (effects deleted), ``cooks_distance``,
    ``dfbetas`` (n, p), ``rstudent_X2`` with ``rstudent_df`` (= k) and its chi-square ``rstudent_pval``,
    ``rstandard_X2`` (no deletion), ``hat_unit`` (the unit's leverage, the sum of its ``hat``),
    ``sigma2_del`` (n, 2), ``beta_del`` (n, p), ``vb_del`` (n, p, p), the leave-one-out intervals of the
    first coefficient (``loo_*``), refit ``iterations`` and ``influential``.

    Per *effect size* (input order): ``hat`` (``hatvalues``), ``rstudent``/``rstudent_resid``/
    ``rstudent_se`` (the ``obs`` part of ``rstudent(res, cluster)``: deleted residual of the effect when
    its unit is left out) and ``rstandard``/``rstandard_resid``/``rstandard_se``.
    """

    level: str
    test: str
    p: int
    units: np.ndarray
    k: np.ndarray
    cooks_distance: np.ndarray
    dfbetas: np.ndarray
    rstudent_X2: np.ndarray
    rstudent_df: np.ndarray
    rstudent_pval: np.ndarray
    rstandard_X2: np.ndarray
    hat_unit: np.ndarray
    sigma2_del: np.ndarray
    beta_del: np.ndarray = field(repr=False)
    vb_del: np.ndarray = field(repr=False)
    loo_estimate: np.ndarray = field(repr=False)
    loo_se: np.ndarray = field(repr=False)
    loo_stat: np.ndarray = field(repr=False)
    loo_pval: np.ndarray = field(repr=False)
    loo_ci_lb: np.ndarray = field(repr=False)
    loo_ci_ub: np.ndarray = field(repr=False)
    iterations: np.ndarray = field(repr=False)
    influential: np.ndarray = field(repr=False)
    cooks_cutoff: float = field(repr=False)
    hat_cutoff: float = field(repr=False)
    hat: np.ndarray = field(repr=False)
    rstudent: np.ndarray = field(repr=False)
    rstudent_resid: np.ndarray = field(repr=False)
    rstudent_se: np.ndarray = field(repr=False)
    rstandard: np.ndarray = field(repr=False)
    rstandard_resid: np.ndarray = field(repr=False)
    rstandard_se: np.ndarray = field(repr=False)


# --------------------------------------------------------------------------------------------------
# the model on a subset of the cluster-sorted rows, warm-started
# --------------------------------------------------------------------------------------------------


class _WarmThreeLevel(ThreeLevelREML):
    """A three-level model on already cluster-sorted data whose REML search starts at ``start``."""

    def __init__(self, y, v, X, groups: Clusters, start: np.ndarray):
        super().__init__(y, v, X, groups)
        self._start = np.asarray(start, dtype=float)

    def start(self) -> np.ndarray:
        return self._start.copy()


def _sorted_groups(codes: np.ndarray, labels: np.ndarray) -> Clusters:
    """Clusters of rows that are already sorted by ``codes`` (empty clusters dropped)."""
    sizes_all = np.bincount(codes, minlength=labels.size)
    present = sizes_all > 0
    sizes = sizes_all[present]
    starts = np.concatenate(([0], np.cumsum(sizes)[:-1]))
    new_codes = np.repeat(np.arange(sizes.size), sizes)
    return Clusters(labels[present], new_codes, np.arange(codes.size), sizes, starts)


@dataclass(frozen=True)
class _Refit:
    theta: np.ndarray
    beta: np.ndarray
    vb: np.ndarray
    k: int
    iterations: int


def _refit(full: ThreeLevelREML, keep: np.ndarray, start: np.ndarray, fixed, unit_label) -> _Refit | None:
    """REML fit to the sorted rows ``keep`` (a boolean mask); None when the model is not estimable."""
    g = full.g
    codes = np.repeat(np.arange(g.n), g.sizes)[keep]
    groups = _sorted_groups(codes, g.labels)
    X = full.X[keep]
    k, p = X.shape
    if groups.n < 2 or k <= p or np.linalg.matrix_rank(X) < p:
        reason = (
            "fewer than two studies remain" if groups.n < 2
            else f"k = {k} effects cannot estimate {p} coefficients" if k <= p
            else "a coefficient is no longer estimable (the moderators become collinear)"
        )  # fmt: skip
        warnings.warn(f"deleting {unit_label}: {reason}; its diagnostics are NaN", stacklevel=3)
        return None
    model = _WarmThreeLevel(full.y[keep], full.v[keep], X, groups, start)
    opt = solve_reml(
        model, groups, fixed, what=f"REML refit of the three-level model without {unit_label}",
        tied_note=f"deleting {unit_label} leaves one effect per study", stacklevel=4,
    )  # fmt: skip
    ev = opt.evaluation
    return _Refit(ev.theta.copy(), ev.beta, ev.vb, k, opt.iterations)


# --------------------------------------------------------------------------------------------------
# Sherman-Morrison / Woodbury pieces of one unit's block
# --------------------------------------------------------------------------------------------------


def _block_inverse_apply(d: np.ndarray, s_study: float, values: np.ndarray) -> np.ndarray:
    r""":math:`(\operatorname{diag}(d) + \sigma^2_{study}11')^{-1}` @ ``values`` ((n,) or (n, m))."""
    a = 1.0 / d
    gamma = s_study / (1.0 + s_study * a.sum())
    av = a * values if values.ndim == 1 else a[:, None] * values
    corr = gamma * av.sum(axis=0)
    return av - (a * corr if values.ndim == 1 else np.outer(a, corr))


def _quadratic_woodbury(e, Xr, d, s_study, inner, sign: float) -> float:
    r""":math:`e'(B + \text{sign}\,X_rGX_r')^{-1}e` with :math:`B = \operatorname{diag}(d) + \sigma^2 11'`,
    given ``inner`` :math:`= G^{-1} + \text{sign}\,X_r'B^{-1}X_r` (p x p); NaN when it is not positive definite.
    """
    Be = _block_inverse_apply(d, s_study, e)
    h = Xr.T @ Be
    try:
        cf = linalg.cho_factor(inner, lower=True)
    except linalg.LinAlgError:
        return np.nan
    return float(e @ Be - sign * h @ linalg.cho_solve(cf, h))


# --------------------------------------------------------------------------------------------------
# the diagnostics
# --------------------------------------------------------------------------------------------------


def _units(fit: MultilevelFit, level: str):
    """Labels, per-unit sorted row positions and display names of the deletion units."""
    g = fit.clusters
    if level == "study":
        rows = [np.arange(s, s + n) for s, n in zip(g.starts, g.sizes, strict=True)]
        names = [f"study {label!r}" for label in g.labels]
        return g.labels, rows, names
    inverse = np.empty(fit.k, dtype=np.intp)
    inverse[g.order] = np.arange(fit.k)
    rows = [np.array([inverse[i]]) for i in range(fit.k)]
    names = [f"effect size {i + 1} (study {g.labels[g.codes[i]]!r})" for i in range(fit.k)]
    return np.arange(fit.k), rows, names


def _hat_and_rstandard(full: ThreeLevelREML, fit: MultilevelFit):
    """hat values, standardized residuals and per-cluster pieces at the full-data sigma2 (sorted order)."""
    s_s, s_w = float(fit.sigma2[0]), float(fit.sigma2[1])
    g = full.g
    d = full.v + s_w
    a = 1.0 / d
    gamma = s_s / (1.0 + s_s * g.sums(a))
    Xt = full._vinv(full.X, a, gamma)  # V^{-1} X
    Q = fit.vb
    hat = np.einsum("ij,jk,ik->i", full.X, Q, Xt)
    hat = np.where(hat > 1 - 10 * np.finfo(float).eps, 1.0, hat)
    e = full.y - full.X @ fit.beta
    e = np.where(np.abs(e) < RESID_ZERO, 0.0, e)
    var_e = d + s_s - np.einsum("ij,jk,ik->i", full.X, Q, full.X)
    with np.errstate(invalid="ignore"):
        se = np.sqrt(var_e)
    F = full.X.T @ Xt
    F_cluster = g.sums(full.X[:, :, None] * Xt[:, None, :])  # X_j' V_j^{-1} X_j, (J, p, p)
    return hat, e, se, F, F_cluster


def multilevel_influence(
    fit: MultilevelFit, level: str = "study", reestimate: bool = True, fixed=(False, False)
) -> MultilevelInfluence:
    r"""Leave-one-unit-out diagnostics of a three-level fit (see the module docstring for the formulas).

    Equivalent R calls (``res <- rma.mv(yi, vi, random = ~ 1 | study/effect)``):
    ``cooks.distance(res, cluster=study)``, ``dfbetas(res, cluster=study)``,
    ``rstudent(res, cluster=study)``, ``rstandard(res, cluster=study)`` and ``hatvalues(res)`` for
    ``level="study"``; the same without ``cluster`` for ``level="effect"`` (then ``rstandard_X2`` is the
    squared standardized residual of the effect).

    Parameters
    ----------
    fit : MultilevelFit
        The full-data fit of :func:`alliancemeta.studies.multilevel.three_level`.
    level : {"study", "effect"}
        Delete whole studies (clusters) or single effect sizes.
    reestimate : bool
        Re-estimate the variance components in every deleted fit (metafor's default); ``False`` keeps
        them at the full-data values (metafor's ``reestimate=FALSE``, a faster approximation).
    fixed : pair of bool
        Components that were fixed in ``fit`` (``three_level(..., sigma2=(value, None))``): they stay at
        the fit's values in every refit, as metafor keeps ``sigma2`` values given to ``rma.mv``.

    Raises
    ------
    ValueError
        For an unknown ``level`` or fewer than :data:`MIN_STUDIES` studies.
    ConvergenceError
        When a refit does not converge (the message names the study).
    """
    _check(fit, level)
    sigma2 = np.asarray(fit.sigma2, dtype=float)
    if reestimate:
        fixed_values = tuple(float(s) if f else None for s, f in zip(sigma2, fixed, strict=True))
    else:
        fixed_values = (float(sigma2[0]), float(sigma2[1]))
    return _influence(fit, level, [fixed_values] * _n_units(fit, level))


def multilevel_influence_at(fit: MultilevelFit, sigma2_del, level: str = "study") -> MultilevelInfluence:
    """:func:`multilevel_influence` with every deleted fit's variance components fixed at ``sigma2_del``.

    ``sigma2_del`` is an (n_units, 2) array of ``(sigma2_study, sigma2_within)`` per deletion, in the
    order of :attr:`MultilevelInfluence.units`, e.g. another program's estimates: the diagnostics then
    follow from them without any optimisation, which checks the formulas apart from the optimiser.
    """
    _check(fit, level)
    values = np.asarray(sigma2_del, dtype=float)
    n = _n_units(fit, level)
    if values.shape != (n, 2) or not np.all(np.isfinite(values)) or np.any(values < 0):
        raise ValueError(f"sigma2_del must be an ({n}, 2) array of finite values >= 0; got shape {values.shape}")
    return _influence(fit, level, [(float(a), float(b)) for a, b in values])


def _check(fit: MultilevelFit, level: str) -> None:
    if level not in LEVELS:
        raise ValueError(f"unknown deletion level {level!r}; expected one of {', '.join(LEVELS)}")
    if fit.n_clusters < MIN_STUDIES:
        raise ValueError(
            f"leave-one-study-out diagnostics of the three-level model need at least {MIN_STUDIES} studies; "
            f"got {fit.n_clusters}"
        )


def _n_units(fit: MultilevelFit, level: str) -> int:
    return fit.n_clusters if level == "study" else fit.k


def _influence(fit: MultilevelFit, level: str, fixed_per_unit) -> MultilevelInfluence:
    """The diagnostics, refitting deletion u with the variance components ``fixed_per_unit[u]``
    (a pair of None = estimate, or a value = fixed), warm-started at the full-data estimate."""
    g = fit.clusters
    full = ThreeLevelREML(fit.yi, fit.vi, fit.X, g)
    p = fit.p
    sigma2 = np.asarray(fit.sigma2, dtype=float)
    labels, unit_rows, names = _units(fit, level)
    n = len(unit_rows)

    hat_s, e_s, se_s, F, F_cluster = _hat_and_rstandard(full, fit)
    vb_inv = np.linalg.pinv(fit.vb)

    nan_n = np.full(n, np.nan)
    k_unit = np.array([r.size for r in unit_rows])
    sigma2_del = np.full((n, 2), np.nan)
    beta_del = np.full((n, p), np.nan)
    vb_del = np.full((n, p, p), np.nan)
    dfbetas = np.full((n, p), np.nan)
    cooks, X2_student, X2_standard, hat_unit = nan_n.copy(), nan_n.copy(), nan_n.copy(), nan_n.copy()
    k_del = np.full(n, np.nan)
    iterations = np.zeros(n, dtype=int)
    r_resid = np.full(fit.k, np.nan)
    r_se = np.full(fit.k, np.nan)
    every = np.ones(fit.k, dtype=bool)

    for u, rows in enumerate(unit_rows):
        Xr = full.X[rows]
        hat_unit[u] = hat_s[rows].sum()
        # rstandard X2 of the unit: e'(V_u - X_u Q X_u')^{-1} e, inner = Q^{-1} - X_u'V_u^{-1}X_u
        d_full = full.v[rows] + sigma2[1]
        if level == "study":
            inner = F - F_cluster[u]
        else:
            inner = F - Xr.T @ _block_inverse_apply(d_full, float(sigma2[0]), Xr)
        X2_standard[u] = _quadratic_woodbury(e_s[rows], Xr, d_full, float(sigma2[0]), inner, -1.0)

        keep = every.copy()
        keep[rows] = False
        refit = _refit(full, keep, sigma2, fixed_per_unit[u], names[u])
        if refit is None:
            continue
        theta, b_u, V_u = refit.theta, refit.beta, refit.vb
        sigma2_del[u], beta_del[u], vb_del[u] = theta, b_u, V_u
        k_del[u], iterations[u] = refit.k, refit.iterations
        dfb = fit.beta - b_u
        cooks[u] = float(dfb @ vb_inv @ dfb)
        vb_at_del = full.evaluate(theta).vb  # all data, variance components of the deleted fit
        dfbetas[u] = dfb / np.sqrt(np.diag(vb_at_del))
        # rstudent: deleted residuals of the unit's effects and the unit's multivariate X2
        e = full.y[rows] - Xr @ b_u
        e = np.where(np.abs(e) < RESID_ZERO, 0.0, e)
        d = full.v[rows] + theta[1]
        r_resid[rows] = e
        r_se[rows] = np.sqrt(d + theta[0] + np.einsum("ij,jk,ik->i", Xr, V_u, Xr))
        inner_del = np.linalg.inv(V_u) + Xr.T @ _block_inverse_apply(d, float(theta[0]), Xr)
        X2_student[u] = _quadratic_woodbury(e, Xr, d, float(theta[0]), inner_del, 1.0)

    # back to input order for the per-effect arrays
    o = g.order

    def unsort(values):
        out = np.empty_like(values)
        out[o] = values
        return out

    with np.errstate(divide="ignore", invalid="ignore"):
        rstudent_z = r_resid / r_se
        rstandard_z = e_s / se_s
    ddf = k_del - p if fit.test == "t" else np.full(n, np.inf)
    est = beta_del[:, 0]
    se = np.sqrt(vb_del[:, 0, 0])
    with np.errstate(divide="ignore", invalid="ignore"):
        stat = est / se
    with np.errstate(invalid="ignore"):
        pval = p_value(stat, ddf)
        crit = critical_value(fit.level, ddf)
    cooks_cutoff = float(stats.chi2.ppf(COOKS_QUANTILE, p))
    hat_cutoff = HAT_MULTIPLE * p / n
    with np.errstate(invalid="ignore"):
        influential = (cooks > cooks_cutoff) | np.any(np.abs(dfbetas) > DFBETAS_BOUND, axis=1) | (hat_unit > hat_cutoff)
        rstudent_pval = stats.chi2.sf(X2_student, k_unit)
    return MultilevelInfluence(
        level=level,
        test=fit.test,
        p=p,
        units=np.asarray(labels, dtype=object),
        k=k_unit,
        cooks_distance=cooks,
        dfbetas=dfbetas,
        rstudent_X2=X2_student,
        rstudent_df=k_unit.copy(),
        rstudent_pval=rstudent_pval,
        rstandard_X2=X2_standard,
        hat_unit=hat_unit,
        sigma2_del=sigma2_del,
        beta_del=beta_del,
        vb_del=vb_del,
        loo_estimate=est,
        loo_se=se,
        loo_stat=stat,
        loo_pval=pval,
        loo_ci_lb=est - crit * se,
        loo_ci_ub=est + crit * se,
        iterations=iterations,
        influential=influential,
        cooks_cutoff=cooks_cutoff,
        hat_cutoff=hat_cutoff,
        hat=unsort(hat_s),
        rstudent=unsort(rstudent_z),
        rstudent_resid=unsort(r_resid),
        rstudent_se=unsort(r_se),
        rstandard=unsort(rstandard_z),
        rstandard_resid=unsort(e_s),
        rstandard_se=unsort(se_s),
    )


# --------------------------------------------------------------------------------------------------
# the pipeline's table and figure
# --------------------------------------------------------------------------------------------------


