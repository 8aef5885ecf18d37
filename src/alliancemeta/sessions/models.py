"""Linear mixed models of session-level alliance and outcome (statsmodels ``MixedLM``, REML).

Three models, all on the aligned outcome *y* (higher = better; :mod:`alliancemeta.sessions.data`):

``within_between`` (Falkenström et al. 2013; Zilcha-Mano 2017; the three-level decomposition of
Baldwin, Wampold & Imel 2007)

.. math::

    y_{ijt} = \\beta_0 + \\beta_W A^W_{it} + \\beta_B A^B_i + \\beta_T A^T_j + \\beta_S t
              + u_{0j} + r_{0i} + r_{1i} t + e_{ijt}

with a therapist intercept :math:`u_{0j} \\sim N(0, \\sigma^2_T)`, client intercept and session slope
:math:`r_{0i} \\sim N(0, \\sigma^2_C)`, :math:`r_{1i} \\sim N(0, \\sigma^2_{CS})` (uncorrelated, lme4's
``(1 + session || client)``; the slope is dropped when its fit fails to converge or its variance
is estimated at zero) and :math:`e \\sim N(0, \\sigma^2)`.

``lagged`` (Falkenström, Granström & Holmqvist 2013; Falkenström et al. 2017)

.. math:: y_{ijt} = \\beta_0 + \\beta_W A^W_{i,t-1} + \\phi\\, y_{ij,t-1} + \\beta_S t + u_{0j} + r_{0i} + e_{ijt}

on sessions whose previous session was observed.  The lagged alliance is person-mean centred, so
its coefficient is a within-client effect free of stable between-client confounding.  The lagged
outcome enters uncentred with a random intercept, which violates the assumption that the random
intercept is independent of the regressors (the lagged outcome contains it): :math:`\\phi` is
biased upward and the bias leaks into :math:`\\beta_W` to the extent that the lagged alliance
predicts the lagged outcome.  Centring the lagged outcome instead gives the Nickell (1981) bias of
order :math:`-(1+\\phi)/(T-1)` in short series.  Falkenström et al. (2017) discuss both and point to
dynamic panel estimators (GMM, ML-SEM) where they matter.  We keep the common, simple form: on data
from :mod:`alliancemeta.sessions.synthetic` (no outcome autoregression, 8-20 sessions) 40 replicates
gave a mean bias of -0.03 for :math:`\\beta_W` against a standard error of 0.14.  No random session
slope is fitted (the lagged outcome already carries each client's trajectory).  In the table this
coefficient is reported under the term ``alliance_within``.

``therapist`` (Baldwin, Wampold & Imel 2007): the client's alliance split into the therapist's
mean and the client's deviation from it, :math:`y = \\beta_0 + \\beta_T A^T_j + \\beta_B A^B_i +
\\beta_S t + u_{0j} + r_{0i} (+ r_{1i} t) + e`, with the contrast ``therapist_minus_between``
:math:`\\beta_T - \\beta_B` (their test of whether therapist differences in alliance matter more
than client differences).  Needs a therapist column.

Estimation: the REML criterion is maximised by statsmodels in two stages, L-BFGS from scaled
starting values (:func:`_start`) and BFGS from its solution to a gradient norm of :data:`GTOL`;
iterations and the final gradient are reported, and a fit that does not converge raises.  Fixed
effects and their covariance are then computed by generalised least squares
given the REML variance components,

.. math::

    \\hat\\beta = (X'V^{-1}X)^{-1}X'V^{-1}y, \\qquad
    \\widehat{\\operatorname{Var}}(\\hat\\beta) = (X'V^{-1}X)^{-1},

the covariance that lme4 and nlme report (statsmodels' default inverts the full observed
information, which adds fixed-random cross terms).  Tests and intervals are Wald z.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from statsmodels.regression.mixed_linear_model import MixedLM, MixedLMParams, VCSpec
from threadpoolctl import threadpool_limits

from alliancemeta.core.errors import ConvergenceError
from alliancemeta.core.inference import critical_value, p_value
from alliancemeta.sessions.data import has_therapist, lag_frame

MODELS = ("within_between", "lagged", "therapist")
#: Gradient-norm tolerance for BFGS on statsmodels' REML criterion (log-likelihood / n).  The default
#: 1e-5 leaves fixed effects about 1e-4 (relative) from the optimum; 1e-9 brings them to about 1e-7,
#: so results do not depend on the optimiser's path and agree with lme4 run to tight tolerances.
GTOL = 1e-9
#: BFGS stops with a precision-loss flag when its line search can no longer lower the criterion in
#: floating point, sometimes just above GTOL.  Such a fit counts as converged when the gradient is
#: below this, 10x stricter than statsmodels' own default (1e-5); anything else raises.
GTOL_ACCEPT = 1e-6
MAX_ITER = 2000
#: A random-slope variance below this fraction of the residual variance counts as zero (boundary).
BOUNDARY = 1e-8
#: A therapist variance below this fraction of the residual variance in a fit that stalled is taken
#: to be on the boundary (the sqrt parameterisation approaches zero only slowly, so BFGS stalls
#: there); the model is refitted with it fixed at zero, which is lme4's boundary solution.
ZERO_VARIANCE = 1e-3
#: The boundary refit must reach at least the REML log-likelihood of the stalled fit, less this.
BOUNDARY_LOGLIK_TOL = 1e-6

TERMS = {
    "within_between": ("alliance_within", "alliance_between", "alliance_therapist", "session"),
    "lagged": ("alliance_within_lag", "outcome_lag", "session"),
    "therapist": ("alliance_therapist", "alliance_between", "session"),
}
#: BLAS threads for the likelihood: its matrices are per therapist (or client), at most a few hundred
#: rows, where threaded BLAS only adds synchronisation.  Measured on the bundled data on 2 busy
#: cores: 12 s with OpenBLAS's default threads, 1.6 s with one.
BLAS_THREADS = 1
#: Names under which the model's columns are reported (the lag is implied by the model name).
REPORTED_TERM = {"alliance_within_lag": "alliance_within"}


@dataclass(frozen=True)
class MixedModelFit:
    """A fitted linear mixed model; arrays are per term (``terms`` starts with ``Intercept``).

    ``variances`` maps ``therapist``, ``client``, ``client_session`` (when fitted) and ``residual``
    to the REML variance estimates.
    """

    model: str
    terms: tuple[str, ...]
    estimate: np.ndarray
    se: np.ndarray
    stat: np.ndarray
    pval: np.ndarray
    ci_lb: np.ndarray
    ci_ub: np.ndarray
    vcov: np.ndarray = field(repr=False)
    variances: dict[str, float]
    random_slope: bool
    n_obs: int
    n_clients: int
    n_therapists: int
    reml_loglik: float
    converged: bool
    iterations: int
    gradient: float  # max |d REML criterion / d theta| at the solution (statsmodels scales it by 1/n)
    level: float
    notes: tuple[str, ...] = ()

    def coef(self, term: str) -> float:
        return float(self.estimate[self.terms.index(term)])

    def contrast(self, weights: dict[str, float]) -> tuple[float, float]:
        """Estimate and SE of a linear combination of the coefficients."""
        c = np.array([weights.get(t, 0.0) for t in self.terms])
        return float(c @ self.estimate), float(np.sqrt(c @ self.vcov @ c))


def _design(data: pd.DataFrame, terms) -> tuple[np.ndarray, np.ndarray]:
    y = data["y"].to_numpy(dtype=float)
    X = np.column_stack([np.ones(len(data)), *(data[t].to_numpy(dtype=float) for t in terms)])
    return y, X


def _random_parts(data: pd.DataFrame, nested: bool, random_slope: bool):
    """Grouping and random-effect design for statsmodels: therapist groups with client variance
    components when ``nested``, else client groups (the slope a variance component either way)."""
    session = data["session"].to_numpy(dtype=float)
    key = "therapist" if nested else "client"
    groups = data[key].to_numpy()
    indices = data.groupby(key, sort=True).indices  # VCSpec wants the groups in sorted order
    names, mats = [], []
    if nested:
        clients = data["client"].to_numpy()
        indicators = []
        for rows in indices.values():
            codes, _ = pd.factorize(clients[rows])
            indicator = np.zeros((rows.size, codes.max() + 1))
            indicator[np.arange(rows.size), codes] = 1.0
            indicators.append(indicator)
        names.append("client")
        mats.append(indicators)
        if random_slope:
            names.append("client_session")
            mats.append([ind * session[rows, None] for ind, rows in zip(indicators, indices.values(), strict=True)])
    elif random_slope:
        names.append("client_session")
        mats.append([session[rows, None] for rows in indices.values()])
    if not names:
        return groups, None
    colnames = [
        [[f"{name}{k}" for k in range(m.shape[1])] for m in group_mats]
        for name, group_mats in zip(names, mats, strict=True)
    ]
    return groups, VCSpec(names, colnames, mats)


def _gls(data, y, X, variances: dict[str, float], nested: bool):
    """GLS fixed effects and (X'V^-1 X)^-1 given the variance components, one group at a time.

    Within a therapist (or, without therapists, a client) block,
    :math:`V = \\sigma^2 I + \\sigma^2_T J + \\sum_i Z_i \\operatorname{diag}(\\sigma^2_C, \\sigma^2_{CS}) Z_i'`.
    """
    p = X.shape[1]
    xtvx = np.zeros((p, p))
    xtvy = np.zeros(p)
    session = data["session"].to_numpy(dtype=float)
    clients = data["client"].to_numpy()
    key = "therapist" if nested else "client"
    for rows in data.groupby(key, sort=False).indices.values():
        n = rows.size
        V = np.eye(n) * variances["residual"]
        if nested:
            V += variances["therapist"]
        codes, _ = pd.factorize(clients[rows])
        same = codes[:, None] == codes[None, :]
        V += variances["client"] * same
        if "client_session" in variances:
            V += variances["client_session"] * same * np.outer(session[rows], session[rows])
        chol = np.linalg.cholesky(V)
        Xw = np.linalg.solve(chol, X[rows])
        yw = np.linalg.solve(chol, y[rows])
        xtvx += Xw.T @ Xw
        xtvy += Xw.T @ yw
    vcov = np.linalg.inv(xtvx)
    return vcov @ xtvy, vcov


def _start(model: MixedLM, session: np.ndarray, nested: bool, random_slope: bool) -> MixedLMParams:
    """Starting values relative to the residual variance (statsmodels profiles it out): group
    intercept 0.1 (therapists) or 1 (clients), client intercept 1, and a slope variance that adds
    0.1 residual variances at the average squared session number.  statsmodels' own start puts
    every variance at the residual variance, which for the slope is absurdly large (sessions run
    to 20 and more) and can leave L-BFGS stuck after one step."""
    start = MixedLMParams(model.k_fe, model.k_re, model.k_vc)
    start.fe_params = np.zeros(model.k_fe)
    start.cov_re = np.eye(1) * (0.1 if nested else 1.0)
    vcomp = ([1.0] if nested else []) + ([0.1 / np.mean(session**2)] if random_slope else [])
    start.vcomp = np.array(vcomp, dtype=float)
    return start


def _fit_once(data, terms, nested, random_slope):
    """REML fit in two stages: L-BFGS (robust) from :func:`_start`, then BFGS from its solution to a
    gradient norm of :data:`GTOL` (precise).  If that does not converge, the same is tried from
    statsmodels' default start."""
    y, X = _design(data, terms)
    groups, exog_vc = _random_parts(data, nested, random_slope)
    model = MixedLM(y, X, groups, exog_re=np.ones((len(data), 1)), exog_vc=exog_vc)
    iterations = 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for start in (_start(model, data["session"].to_numpy(dtype=float), nested, random_slope), None):
            first = model.fit(reml=True, method=["lbfgs"], start_params=start, maxiter=MAX_ITER, full_output=True)
            result = model.fit(
                reml=True, method=["bfgs"], start_params=first.params_object, gtol=GTOL, maxiter=MAX_ITER,
                full_output=True,
            )
            gradient = float(np.max(np.abs(result.hist[-1]["gopt"])))
            converged = bool(result.converged) or gradient <= GTOL_ACCEPT
            iterations += int(first.hist[-1].get("iterations", 0)) + int(result.hist[-1].get("gcalls", 0))
            if converged:
                break
    notes = tuple(sorted({str(w.message) for w in caught})) if not converged else ()
    variances = {"residual": float(result.scale)}
    vcomp = dict(zip(exog_vc.names, np.asarray(result.vcomp, dtype=float), strict=True)) if exog_vc else {}
    group_var = float(np.asarray(result.cov_re)[0, 0])
    if nested:
        variances["therapist"] = group_var
        variances["client"] = vcomp["client"]
    else:
        variances["client"] = group_var
    if random_slope:
        variances["client_session"] = vcomp["client_session"]
    return y, X, result, variances, converged, iterations, gradient, notes


def fit_mixed_model(
    data: pd.DataFrame, model: str, terms, *, nested: bool, random_slope: bool = True, level: float = 0.95
) -> MixedModelFit:
    """Fit one REML mixed model of ``y`` on ``terms`` (see the module docstring).

    The random slope for session is tried first when ``random_slope``; if that fit does not converge
    or puts the slope variance on the boundary, the intercept-only model is fitted instead and a
    note says so.  A fit that stalls with the therapist variance near zero is refitted with it fixed
    at zero (reported as 0).  A fit that still does not converge raises :class:`ConvergenceError`.
    """
    with threadpool_limits(limits=BLAS_THREADS, user_api="blas"):
        return _fit_mixed_model(data, model, terms, nested=nested, random_slope=random_slope, level=level)


def _fit_mixed_model(data, model, terms, *, nested, random_slope, level) -> MixedModelFit:
    notes: list[str] = []
    slope, nested_fit, boundary_loglik = random_slope, nested, None
    while True:
        y, X, result, variances, converged, iterations, gradient, caught = _fit_once(data, terms, nested_fit, slope)
        if not converged and nested_fit and variances["therapist"] < ZERO_VARIANCE * variances["residual"]:
            notes.append(
                f"therapist variance at the boundary ({variances['therapist']:.3g} when the optimiser stalled): "
                "refitted with it fixed at zero"
            )
            nested_fit, boundary_loglik = False, float(result.llf)
            continue
        if slope and (not converged or variances["client_session"] < BOUNDARY * variances["residual"]):
            reason = "did not converge" if not converged else "has its variance at zero"
            notes.append(f"random session slope dropped: the model with it {reason}")
            slope = False
            continue
        break
    if not converged:
        raise ConvergenceError(
            f"mixed model {model!r} did not converge: REML gradient {gradient:.3g} after {iterations} "
            f"iterations (tolerance {GTOL}); check for clients or therapists with too little data"
            + (f" (statsmodels: {'; '.join(caught)})" if caught else "")
        )
    if boundary_loglik is not None and result.llf < boundary_loglik - BOUNDARY_LOGLIK_TOL:
        raise ConvergenceError(
            f"mixed model {model!r}: the refit with the therapist variance at zero reaches a lower REML "
            f"log-likelihood ({result.llf:.8f}) than the stalled fit ({boundary_loglik:.8f}), so the "
            "optimum is not on the boundary; check the therapist column"
        )
    if nested and not nested_fit:
        variances = {**variances, "therapist": 0.0}
    beta, vcov = _gls(data, y, X, variances, nested_fit)
    se = np.sqrt(np.diag(vcov))
    z = beta / se
    crit = critical_value(level)
    return MixedModelFit(
        model=model,
        terms=("Intercept", *terms),
        estimate=beta,
        se=se,
        stat=z,
        pval=p_value(z),
        ci_lb=beta - crit * se,
        ci_ub=beta + crit * se,
        vcov=vcov,
        variances=variances,
        random_slope=slope,
        n_obs=len(data),
        n_clients=int(data["client"].nunique()),
        n_therapists=int(data["therapist"].nunique()) if nested else 0,
        reml_loglik=float(result.llf),
        converged=converged,
        iterations=iterations,
        gradient=gradient,
        level=level,
        notes=tuple(notes),
    )


def fit_session_models(decomposed: pd.DataFrame, level: float = 0.95) -> dict[str, MixedModelFit]:
    """Fit ``within_between``, ``lagged`` and (with therapists) ``therapist`` to a decomposed table."""
    nested = has_therapist(decomposed)
    fits = {}
    wb_terms = tuple(t for t in TERMS["within_between"] if nested or t != "alliance_therapist")
    fits["within_between"] = fit_mixed_model(decomposed, "within_between", wb_terms, nested=nested, level=level)
    lagged = lag_frame(decomposed)
    fits["lagged"] = fit_mixed_model(lagged, "lagged", TERMS["lagged"], nested=nested, random_slope=False, level=level)
    if nested:
        fits["therapist"] = fit_mixed_model(decomposed, "therapist", TERMS["therapist"], nested=True, level=level)
    return fits


