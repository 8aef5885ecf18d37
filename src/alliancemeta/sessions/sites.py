"""Two-stage pooling of per-site within-client alliance effects (Flückiger et al. 2020).

Stage 1 fits, separately in every site, the session-level mixed models ``within_between`` and ``lagged`` of
:mod:`alliancemeta.sessions.models` in a reduced form and keeps the within-client alliance coefficient
:math:`\\hat\\beta_{W,s}` with its squared standard error :math:`v_s`.  Stage 2 pools them with the random-effects
engine of :mod:`alliancemeta.studies.random_effects` (:math:`y_s = \\hat\\beta_{W,s}`, :math:`v_s = SE_s^2`, tau^2
by the configured estimator, the configured test), the individual-participant-data two-stage approach of
Flückiger, Rubel, Del Re et al. (2020, *J Consult Clin Psychol* 88, 829-843) for the session-to-session
alliance-symptom relation.

The alliance decomposition is the one of the whole dataset: within-client deviations do not depend on the other
sites.  The per-site models (REML, :func:`alliancemeta.sessions.lmm.fit_lmm`, Satterthwaite t intervals) have a
client random intercept only (no therapist level, no ``alliance_therapist`` term, no random slopes, no
covariates): a site rarely has the therapists needed to estimate a therapist variance (see
:data:`alliancemeta.sessions.data.MIN_THERAPISTS`) or the clients needed for a random-slope covariance, and the
coefficient of interest is a within-client effect, which is orthogonal to every client- and therapist-level term
by construction.  Each site model uses the complete cases of its columns.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from alliancemeta.core.errors import ModelError
from alliancemeta.sessions.data import lag_frame
from alliancemeta.sessions.lmm import LmmFit, MixedModelError, RandomTerm, fit_lmm
from alliancemeta.studies.random_effects import MetaFit, random_effects

#: model -> (fixed effects, the within-client alliance term pooled)
SITE_MODELS = {
    "within_between": (("alliance_within", "alliance_between", "session_c"), "alliance_within"),
    "lagged": (("alliance_within_lag", "outcome_lag", "session_c"), "alliance_within_lag"),
}


def _site_fit(part: pd.DataFrame, model: str, site: str, level: float) -> tuple[LmmFit, pd.DataFrame]:
    fixed, _ = SITE_MODELS[model]
    data = (lag_frame(part) if model == "lagged" else part).dropna(subset=["y", *fixed])
    try:
        return fit_lmm(data, "y", fixed, RandomTerm("client"), None, level=level, label=f"{model} in site {site}"), data
    except MixedModelError as err:
        raise ModelError(f"{err} [two-stage pooling, stage 1; a site with too few clients can be merged with "
                         "another or dropped from the site column]") from None  # fmt: skip


@dataclass(frozen=True)
class SiteEffect:
    """Stage 1 in one site: the within-client alliance coefficient of one model."""

    site: str
    n_clients: int
    n_sessions: int
    fit: LmmFit
    term: str

    @property
    def index(self) -> int:
        return self.fit.terms.index(self.term)


@dataclass(frozen=True)
class TwoStage:
    """One model's two-stage result: the per-site effects and their random-effects pool."""

    model: str
    sites: tuple[SiteEffect, ...]
    pooled: MetaFit


def two_stage(decomposed: pd.DataFrame, method: str, test: str, level: float) -> list[TwoStage]:
    """Stage 1 per site and model (:data:`SITE_MODELS`), stage 2 random-effects pooling; needs >= 2 sites."""
    sites = sorted(decomposed["site"].unique(), key=str)
    if len(sites) < 2:
        raise ValueError(f"two-stage pooling needs at least two sites, found {len(sites)}")
    out = []
    for model, (_, term) in SITE_MODELS.items():
        stage1 = []
        for site in sites:
            fit, data = _site_fit(decomposed[decomposed["site"] == site], model, str(site), level)
            stage1.append(SiteEffect(str(site), int(data["client"].nunique()), len(data), fit, term))
        yi = np.array([s.fit.estimate[s.index] for s in stage1])
        vi = np.array([s.fit.se[s.index] for s in stage1]) ** 2
        out.append(TwoStage(model, tuple(stage1), random_effects(yi, vi, method=method, test=test, level=level)))
    return out
