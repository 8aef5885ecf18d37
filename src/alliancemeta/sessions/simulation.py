"""Simulation study of the lagged alliance effect: classical, detrended and latent (DSEM) estimators.

One replicate simulates a SYNTHETIC session table (:func:`alliancemeta.sessions.synthetic.simulate_sessions`)
and fits three estimators of the within-client lagged alliance effect on the next outcome:

``lagged``
    the pipeline's ``lagged`` REML model (:mod:`alliancemeta.sessions.models`, lme4-parity engine) with
    ``detrend: false``: person-mean-centred lagged alliance, lagged outcome, fixed session trend, random client
    intercept and alliance slope, therapist intercept;
``lagged_detrended``
    the same model with ``detrend: true`` (the pipeline default): client outcome trends as a random session slope;
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
after the retry, or a REML fit that did not converge).  No file I/O here: the driver is
``benchmarks/sim_sessions.py``.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from alliancemeta.core.errors import ConvergenceError, SamplingError
from alliancemeta.core.seeds import derive_seed
from alliancemeta.core.settings import SamplerSettings
from alliancemeta.sessions.data import decompose_alliance
from alliancemeta.sessions.dsem import LaggedLatentError, fit_lagged_latent, lagged_latent_summary
from alliancemeta.sessions.models import fit_model, model_specs
from alliancemeta.sessions.synthetic import SessionSimulationParameters, simulate_sessions

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
#: Terms compared for the REML estimators (their ``session`` coefficient is conditional on the lagged outcome, a
#: different estimand, so it is left out): fitted name -> reported name.
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
    settings: SamplerSettings = field(default_factory=lambda: SamplerSettings(2000, 1000, 4, "nutpie", 0.9, 0.99,
                                                                              "simulation"))  # fmt: skip
    estimators: tuple[str, ...] = ESTIMATORS

    def describe(self) -> dict:
        p = dataclasses.replace(self.params, n_clients=self.n_clients, n_therapists=self.n_therapists,
                                n_sites=self.n_sites)  # fmt: skip
        return {"name": self.name, "level": self.level, "settings": self.settings._asdict(),
                "parameters": dataclasses.asdict(p)}  # fmt: skip


def _mixedlm_rows(frame: pd.DataFrame, estimator: str, level: float) -> list[tuple]:
    """The pipeline's ``lagged`` REML model without (``lagged``) or with (``lagged_detrended``) detrending."""
    decomposed = decompose_alliance(frame, True)
    spec = model_specs(decomposed, detrend=estimator == "lagged_detrended", random_slopes=True)["lagged"]
    result = fit_model(spec, level=level)
    if result.fit is None:
        raise ConvergenceError(result.error)
    fit = result.fit
    status = "ok: singular fit" if fit.singular else "ok"
    rows = []
    for name, term in MIXEDLM_TERMS.items():
        k = fit.terms.index(name)
        rows.append((estimator, term, fit.estimate[k], fit.se[k], fit.ci_lb[k], fit.ci_ub[k], status, 1))
    return rows


def run_replicate(design: StudyDesign, replicate: int, seed: int) -> pd.DataFrame:
    """Simulate replicate ``replicate`` (data seed and MCMC seed derived from ``seed`` with
    :func:`~alliancemeta.core.seeds.derive_seed`) and fit the design's estimators; one row per estimator
    and term (:data:`RESULT_COLUMNS`); a failed estimator gives rows with status ``failed: ...``
    and NaN estimates."""
    data_seed = derive_seed(seed, f"{design.name}/data/{replicate}")
    frame, truth = simulate_sessions(data_seed, n_sites=design.n_sites, n_therapists=design.n_therapists,
                                     n_clients=design.n_clients, params=design.params)  # fmt: skip
    rows = []
    for estimator in design.estimators:
        start = time.perf_counter()
        terms = list(MIXEDLM_TERMS.values()) if estimator != "lagged_latent" else list(TRUTH_KEY)
        try:
            if estimator in ("lagged", "lagged_detrended"):
                out = _mixedlm_rows(frame, estimator, design.level)
            elif estimator == "lagged_latent":
                fit = fit_lagged_latent(
                    frame, outcome_lower_is_better=True, seed=derive_seed(seed, f"{design.name}/mcmc/{replicate}"),
                    settings=design.settings, detrend=True, random_slopes=True,
                    time_centre=design.params.session_centre,
                )  # fmt: skip
                table = lagged_latent_summary(fit.idata, design.level)
                table = table[table["name"].isin(TRUTH_KEY)]
                out = [(estimator, r.name, r.estimate, r.se, r.ci_lb, r.ci_ub, "ok", fit.attempts)
                       for r in table.itertuples()]  # fmt: skip
            else:
                raise ValueError(f"unknown estimator {estimator!r}; expected one of {', '.join(ESTIMATORS)}")
        except (ConvergenceError, SamplingError, LaggedLatentError) as err:
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
