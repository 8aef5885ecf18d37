"""Simulation study of the lagged alliance effect: classical, detrended and latent (DSEM) estimators.

One replicate simulates a SYNTHETIC session table (:func:`alliancemeta.sessions.synthetic.simulate_sessions`)
and fits three estimators of the within-client lagged alliance effect on the next outcome:

``lagged``
    the classical model of :mod:`alliancemeta.sessions.models` (person-mean-centred lagged alliance,
    uncentred lagged outcome, random intercepts), fitted exactly as the pipeline does
    (:func:`~alliancemeta.sessions.data.decompose_alliance`, :func:`~alliancemeta.sessions.data.lag_frame`,
    rows with a blank lag or outcome dropped);
``lagged_detrended``
    :func:`alliancemeta.sessions.dsem.fit_detrended_lagged` (person-specific OLS trends removed first);
``lagged_latent``
    :func:`alliancemeta.sessions.dsem.fit_lagged_latent` (latent means and trends, imputed cells).

:func:`summarise` reports, per estimator and term over the replicates that produced an estimate,

.. math::

    \\text{bias} = \\bar{\\hat\\theta} - \\theta, \\quad
    \\text{RMSE} = \\sqrt{\\overline{(\\hat\\theta - \\theta)^2}}, \\quad
    \\text{coverage} = \\overline{[\\text{lb} \\le \\theta \\le \\text{ub}]},

with Monte Carlo standard errors :math:`s_{\\hat\\theta}/\\sqrt{R}` for the bias and
:math:`\\sqrt{c(1-c)/R}` for the coverage (Morris, White & Crowther 2019, *Statistics in Medicine*
38, 2074-2102, Table 6), the mean reported SE next to the empirical SD of the estimates, and the
number of replicates in which the estimator failed (no estimate: MCMC that did not pass its checks
after the retry, or a MixedLM that did not converge even at the boundary).  A MixedLM whose REML
fit stalls (in the classical lagged model the lagged outcome can absorb the client differences, so
the client variance goes to 0, a boundary that :mod:`alliancemeta.sessions.models` does not handle)
is refitted with the client variance fixed at 0 (:func:`_client_variance_at_zero`, status
``ok: refitted ...``), so that failures of the optimiser do not select the replicates on which the
classical estimators are judged.  No file I/O here: the driver is
``benchmarks/sim_sessions.py``.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from alliancemeta.core.mcmc import SamplerSettings, SamplingError, sub_seed
from alliancemeta.sessions.data import decompose_alliance, has_therapist, lag_frame
from alliancemeta.sessions.dsem import (
    DETRENDED_TERMS,
    detrended_lag_frame,
    fit_lagged_latent,
    lagged_latent_rows,
)
from alliancemeta.sessions.models import TERMS as MIXED_TERMS
from alliancemeta.sessions.models import fit_mixed_model
from alliancemeta.sessions.synthetic import SessionSimulationParameters, simulate_sessions
from alliancemeta.studies.random_effects import ConvergenceError

ESTIMATORS = ("lagged", "lagged_detrended", "lagged_latent")
#: Truth key (``truth["reported"]``) of each reported term.
TRUTH_KEY = {
    "alliance_within": "alliance_within_lag",
    "outcome_to_alliance": "outcome_to_alliance",
    "outcome_lag": "outcome_lag",
    "alliance_lag": "alliance_lag",
    "alliance_between": "alliance_between",
    "alliance_therapist": "alliance_therapist",
    "session": "session",
    "alliance_session": "alliance_session",
}
#: Terms compared for the MixedLM estimators (their ``session`` coefficient is conditional on the
#: lagged outcome, a different estimand, so it is left out).
MIXEDLM_TERMS = {"alliance_within_lag": "alliance_within", "outcome_lag": "outcome_lag"}
RESULT_COLUMNS = ("replicate", "data_seed", "estimator", "term", "truth", "estimate", "se", "ci_lb", "ci_ub",
                  "status", "attempts", "seconds")  # fmt: skip
SUMMARY_COLUMNS = ("estimator", "term", "truth", "n_estimates", "n_failed", "mean_estimate", "bias", "bias_mcse",
                   "rmse", "coverage", "coverage_mcse", "mean_se", "sd_estimate")  # fmt: skip


@dataclass(frozen=True)
class StudyDesign:
    """One scenario of the study: sizes, true parameters, interval level and MCMC settings.

    ``session_centre`` of the parameters is passed to the latent model as its time centre, so that
    its ``alliance_between`` estimates the between-client regression at the session the truth refers to.
    """

    name: str = "realistic"
    n_clients: int = 120
    n_therapists: int = 12
    n_sites: int = 3
    params: SessionSimulationParameters = field(default_factory=SessionSimulationParameters)
    level: float = 0.95
    settings: SamplerSettings = field(default_factory=lambda: SamplerSettings(draws=2000, tune=1000, chains=4,
                                                                              cores=1))  # fmt: skip
    estimators: tuple[str, ...] = ESTIMATORS

    def describe(self) -> dict:
        p = dataclasses.replace(self.params, n_clients=self.n_clients, n_therapists=self.n_therapists,
                                n_sites=self.n_sites)  # fmt: skip
        return {"name": self.name, "level": self.level, "settings": dataclasses.asdict(self.settings),
                "parameters": dataclasses.asdict(p)}  # fmt: skip


@dataclass(frozen=True)
class _BoundaryFit:
    terms: tuple[str, ...]
    estimate: np.ndarray
    se: np.ndarray
    ci_lb: np.ndarray
    ci_ub: np.ndarray


def _client_variance_at_zero(data: pd.DataFrame, terms, level: float) -> _BoundaryFit:
    """REML fit with the client intercept variance fixed at 0 (therapist random intercept only).

    The classical lagged model puts the client intercept variance on the boundary when the lagged
    outcome absorbs the client differences; :func:`alliancemeta.sessions.models.fit_mixed_model`
    handles a therapist variance at zero but not a client variance, and stalls.  This is lme4's
    boundary solution (checked on such a replicate: lme4 reports the client variance as 0 and the
    same fixed effects to 1e-5).  statsmodels finds the therapist and residual variances (BFGS to the
    gradient tolerance of :mod:`alliancemeta.sessions.models`; Nelder-Mead first if that fails); fixed
    effects and their covariance
    are the GLS ones, :math:`V_j = \\sigma^2 I + \\sigma^2_T J` per therapist."""
    from scipy import stats
    from statsmodels.regression.mixed_linear_model import MixedLM

    from alliancemeta.sessions.models import GTOL, GTOL_ACCEPT, MAX_ITER

    y = data["y"].to_numpy(dtype=float)
    X = np.column_stack([np.ones(len(data)), *(data[t].to_numpy(dtype=float) for t in terms)])
    groups = data["therapist"].to_numpy()
    model = MixedLM(y, X, groups)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # statsmodels warns while it explores the boundary
        for methods in (["bfgs"], ["nm", "bfgs"]):  # L-BFGS from statsmodels' start can diverge here
            result = model.fit(reml=True, method=methods, gtol=GTOL, maxiter=MAX_ITER, full_output=True)
            gradient = float(np.max(np.abs(result.hist[-1]["gopt"])))
            if np.isfinite(result.llf) and (result.converged or gradient <= GTOL_ACCEPT):
                break
        else:
            raise ConvergenceError(f"boundary refit did not converge either (REML gradient {gradient:.3g})")
    sigma2, tau2 = float(result.scale), float(np.asarray(result.cov_re)[0, 0])
    xtvx = np.zeros((X.shape[1], X.shape[1]))
    xtvy = np.zeros(X.shape[1])
    for rows in data.groupby("therapist", sort=False).indices.values():
        n = rows.size
        vinv = (np.eye(n) - tau2 / (sigma2 + n * tau2)) / sigma2  # Sherman-Morrison
        xtvx += X[rows].T @ vinv @ X[rows]
        xtvy += X[rows].T @ vinv @ y[rows]
    vcov = np.linalg.inv(xtvx)
    beta = vcov @ xtvy
    se = np.sqrt(np.diag(vcov))
    crit = stats.norm.ppf(0.5 + level / 2)
    return _BoundaryFit(("Intercept", *terms), beta, se, beta - crit * se, beta + crit * se)


def _mixedlm_rows(data: pd.DataFrame, terms, model: str, level: float) -> list[tuple]:
    """Fit the MixedLM as :mod:`alliancemeta.sessions.models` does (random intercepts for therapist and
    client, no random slope for the naive model, an uncorrelated random session slope for the
    detrended one); if its REML fit stalls, refit with the client variance at 0 (status says so)."""
    status = "ok"
    try:
        fit = fit_mixed_model(data, model, terms, nested=has_therapist(data), random_slope=model != "lagged",
                              level=level)  # fmt: skip
    except ConvergenceError as err:
        fit = _client_variance_at_zero(data, terms, level)
        status = f"ok: refitted with the client variance at 0 ({str(err)[:100]})"
    rows = []
    for name, term in MIXEDLM_TERMS.items():
        k = fit.terms.index(name)
        rows.append((model, term, fit.estimate[k], fit.se[k], fit.ci_lb[k], fit.ci_ub[k], status, 1))
    return rows


def _naive_data(frame: pd.DataFrame) -> pd.DataFrame:
    return lag_frame(decompose_alliance(frame, True)).dropna(subset=["y", "alliance_within_lag", "outcome_lag"])


def run_replicate(design: StudyDesign, replicate: int, seed: int) -> pd.DataFrame:
    """Simulate replicate ``replicate`` (data seed and MCMC seed derived from ``seed`` with
    :func:`~alliancemeta.core.mcmc.sub_seed`) and fit the design's estimators; one row per estimator
    and term (:data:`RESULT_COLUMNS`); a failed estimator gives rows with status ``failed: ...``
    and NaN estimates."""
    data_seed = sub_seed(seed, f"{design.name}/data/{replicate}")
    frame, truth = simulate_sessions(data_seed, n_sites=design.n_sites, n_therapists=design.n_therapists,
                                     n_clients=design.n_clients, params=design.params)  # fmt: skip
    rows = []
    for estimator in design.estimators:
        start = time.perf_counter()
        terms = list(MIXEDLM_TERMS.values()) if estimator != "lagged_latent" else list(TRUTH_KEY)
        try:
            if estimator == "lagged":
                out = _mixedlm_rows(_naive_data(frame), MIXED_TERMS["lagged"], "lagged", design.level)
            elif estimator == "lagged_detrended":
                out = _mixedlm_rows(detrended_lag_frame(frame, True), DETRENDED_TERMS, "lagged_detrended",
                                    design.level)  # fmt: skip
            elif estimator == "lagged_latent":
                fit = fit_lagged_latent(
                    frame, outcome_lower_is_better=True, seed=sub_seed(seed, f"{design.name}/mcmc/{replicate}"),
                    settings=design.settings, time_centre=design.params.session_centre,
                )  # fmt: skip
                table = lagged_latent_rows(fit.idata, design.level)
                out = [(estimator, r.term, r.estimate, r.se, r.ci_lb, r.ci_ub, "ok", fit.attempts)
                       for r in table.itertuples()]  # fmt: skip
            else:
                raise ValueError(f"unknown estimator {estimator!r}; expected one of {', '.join(ESTIMATORS)}")
        except (ConvergenceError, SamplingError) as err:
            message = f"failed: {type(err).__name__}: {str(err)[:200]}"
            out = [(estimator, term, np.nan, np.nan, np.nan, np.nan, message, 0) for term in terms]
        seconds = time.perf_counter() - start
        for est, term, *values, status, attempts in out:
            rows.append((replicate, data_seed, est, term, float(truth["reported"][TRUTH_KEY[term]]), *values,
                         status, attempts, seconds))  # fmt: skip
    return pd.DataFrame(rows, columns=list(RESULT_COLUMNS))


def summarise(results: pd.DataFrame) -> pd.DataFrame:
    """Bias, RMSE and coverage with Monte Carlo SEs per estimator and term (module docstring)."""
    rows = []
    order = {e: i for i, e in enumerate(ESTIMATORS)}
    terms = {t: i for i, t in enumerate(TRUTH_KEY)}
    for (estimator, term), g in results.groupby(["estimator", "term"], sort=False):
        ok = g[g["status"].str.startswith("ok")]
        n = len(ok)
        truth = float(g["truth"].iloc[0])
        err = ok["estimate"].to_numpy() - truth
        covered = ((ok["ci_lb"] <= truth) & (truth <= ok["ci_ub"])).to_numpy()
        sd = float(np.std(ok["estimate"], ddof=1)) if n > 1 else np.nan
        cov = float(covered.mean()) if n else np.nan
        rows.append((
            estimator, term, truth, n, len(g) - n, float(ok["estimate"].mean()) if n else np.nan,
            float(err.mean()) if n else np.nan, sd / np.sqrt(n) if n > 1 else np.nan,
            float(np.sqrt(np.mean(err**2))) if n else np.nan, cov,
            float(np.sqrt(cov * (1 - cov) / n)) if n else np.nan, float(ok["se"].mean()) if n else np.nan, sd,
        ))  # fmt: skip
    out = pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS))
    key = out["estimator"].map(order).fillna(99) * 100 + out["term"].map(terms).fillna(99)
    return out.iloc[np.argsort(key.to_numpy(), kind="stable")].reset_index(drop=True)
