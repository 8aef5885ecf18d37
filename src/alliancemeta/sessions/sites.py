"""Two-stage pooling of per-site within-client alliance effects (Flückiger et al. 2020).

Stage 1 fits, separately in every site, the session-level mixed models of
:mod:`alliancemeta.sessions.models` (``within_between`` and ``lagged``) and keeps the
within-client alliance coefficient :math:`\\hat\\beta_{W,s}` with its squared standard error
:math:`v_s`.  Stage 2 pools them with the random-effects engine of :mod:`alliancemeta.studies.random_effects`
(:math:`y_s = \\hat\\beta_{W,s}`, :math:`v_s = SE_s^2`, tau^2 by the configured estimator, the configured
test), the individual-participant-data two-stage approach of Flückiger, Rubel, Del Re et al. (2020,
*J Consult Clin Psychol* 88, 829-843) for the session-to-session alliance-symptom relation.

The alliance decomposition is the one of the whole dataset: within-client deviations do not
depend on the other sites.  The per-site models have a client random intercept only (no therapist
level, no ``alliance_therapist`` term, no random session slope): a site rarely has the therapists
needed to estimate a therapist variance (see :data:`alliancemeta.sessions.data.MIN_THERAPISTS`),
and the coefficient of interest is a within-client effect, which is orthogonal to every
client- and therapist-level term by construction.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from alliancemeta.sessions.data import lag_frame
from alliancemeta.sessions.models import TERMS, fit_mixed_model
from alliancemeta.studies.random_effects import random_effects

SITE_MODELS = {"within_between": "alliance_within", "lagged": "alliance_within_lag"}
SITE_COLUMNS = (
    "model", "term", "site", "n_clients", "n_sessions", "estimate", "se", "ci_lb", "ci_ub", "pval", "weight",
    "method", "test", "tau2", "I2", "Q", "Q_df", "Q_pval", "pi_lb", "pi_ub",
)  # fmt: skip


def _site_fit(part: pd.DataFrame, model: str, level: float):
    terms = [t for t in TERMS[model] if t != "alliance_therapist"]
    data = lag_frame(part) if model == "lagged" else part
    return fit_mixed_model(data, model, terms, nested=False, random_slope=False, level=level), data


def site_effects_table(
    decomposed: pd.DataFrame, method: str = "REML", test: str = "knha", level: float = 0.95
) -> pd.DataFrame:
    """``tables/site_effects.csv``: per model, one row per site (stage 1, Wald z intervals, weight
    in percent of the pooled model) and a ``pooled`` row (stage 2: estimate, CI and PI by ``test``,
    tau^2, I^2, Q).  The term is reported as ``alliance_within`` for both models (the lagged model's
    is the previous session's within-client alliance).  Needs at least two sites."""
    sites = sorted(decomposed["site"].unique(), key=str)
    if len(sites) < 2:
        raise ValueError(f"two-stage pooling needs at least two sites, found {len(sites)}")
    rows = []
    for model, term in SITE_MODELS.items():
        stage1 = []
        for site in sites:
            part = decomposed[decomposed["site"] == site]
            fit, data = _site_fit(part, model, level)
            k = fit.terms.index(term)
            stage1.append((site, data["client"].nunique(), len(data), fit.estimate[k], fit.se[k], fit.ci_lb[k],
                           fit.ci_ub[k], fit.pval[k]))  # fmt: skip
        yi = np.array([r[3] for r in stage1])
        vi = np.array([r[4] for r in stage1]) ** 2
        pooled = random_effects(yi, vi, method=method, test=test, level=level)
        weight = 100 * pooled.weights / pooled.weights.sum()
        for r, w in zip(stage1, weight, strict=True):
            rows.append({"model": model, "term": "alliance_within", "site": str(r[0]), "n_clients": r[1],
                         "n_sessions": r[2], "estimate": r[3], "se": r[4], "ci_lb": r[5], "ci_ub": r[6],
                         "pval": r[7], "weight": w})  # fmt: skip
        pred = pooled.predict()
        rows.append({
            "model": model, "term": "alliance_within", "site": "pooled",
            "n_clients": sum(r[1] for r in stage1), "n_sessions": sum(r[2] for r in stage1),
            "estimate": pooled.estimate, "se": float(pooled.se[0]), "ci_lb": float(pooled.ci_lbs[0]),
            "ci_ub": float(pooled.ci_ubs[0]), "pval": float(pooled.pvals[0]), "weight": 100.0,
            "method": method, "test": test, "tau2": pooled.tau2, "I2": pooled.I2, "Q": pooled.QE,
            "Q_df": pooled.QE_df, "Q_pval": pooled.QE_pval, "pi_lb": pred.pi_lb, "pi_ub": pred.pi_ub,
        })  # fmt: skip
    out = pd.DataFrame(rows, columns=list(SITE_COLUMNS))
    out["Q_df"] = out["Q_df"].astype("Int64")
    return out
