"""The MixedLM comparison estimators of the lagged_latent work against lme4 (tests/reference/dsem.json,
from refs_dsem.R): the detrended lagged model on the bundled SYNTHETIC data and the classical lagged
model at the client-variance boundary."""

from __future__ import annotations

import numpy as np
import pandas as pd
from conftest import ROOT, assert_close, load_ref

from alliancemeta.sessions.dsem import DETRENDED_TERMS, _ols_residuals, detrended_lag_frame, fit_detrended_lagged
from alliancemeta.sessions.models import TERMS
from alliancemeta.sessions.simulation import _client_variance_at_zero

#: Both sides maximise the same REML criterion to near machine precision (statsmodels: BFGS to a
#: gradient norm of 1e-9; lme4: BOBYQA with rhoend = 1e-12), as in test_sessions_reference.py, whose
#: tolerances and reasons carry over: fixed effects to 1e-6, standard errors and variances (which
#: move with the flat directions of the criterion) to 1e-5.
FIXED_RTOL = 1e-6
SE_RTOL = 1e-5
VARIANCE_RTOL = 1e-5
LOGLIK_ATOL = 1e-7  # absolute, on a REML log-likelihood of about -10,000
#: OLS residuals computed by closed-form sums here and by lm()'s QR in R.
RESIDUAL_ATOL = 1e-10

REF = load_ref("dsem")["cases"]


def read(path: str) -> pd.DataFrame:
    return pd.read_csv(ROOT / path, dtype={"client": str, "therapist": str, "site": str, "case": str})


def test_detrending_and_lag_rows_match():
    ref = REF["detrended_lagged"]
    frame = read(ref["data"]).sort_values(["client", "session"], kind="stable")
    resid = _ols_residuals(frame["alliance"].to_numpy(), frame["session"].to_numpy(float), frame["client"].to_numpy())
    first = np.asarray(ref["residual_alliance_first"], dtype=float)
    np.testing.assert_allclose(resid[: first.size], first, atol=RESIDUAL_ATOL)
    assert len(frame) == ref["n_rows"]
    assert len(detrended_lag_frame(frame, outcome_lower_is_better=True)) == ref["n_lagged"] == ref["n_obs"]


def test_detrended_lagged_mixedlm_matches_lme4():
    ref = REF["detrended_lagged"]
    fit = fit_detrended_lagged(read(ref["data"]), outcome_lower_is_better=True)
    assert fit.n_obs == ref["n_obs"] and fit.random_slope
    assert fit.terms[1:] == DETRENDED_TERMS and len(ref["terms"]) == len(fit.terms)
    assert_close(fit.estimate, ref["estimate"], rtol=FIXED_RTOL, what="fixed effects")
    assert_close(fit.se, ref["se"], rtol=SE_RTOL, what="standard errors")
    assert set(fit.variances) == set(ref["variances"])
    for name, value in ref["variances"].items():
        assert_close(fit.variances[name], value, rtol=VARIANCE_RTOL, what=f"variance {name}")
    np.testing.assert_allclose(fit.reml_loglik, ref["reml_loglik"], rtol=0, atol=LOGLIK_ATOL)


def test_client_variance_boundary_refit_matches_lme4():
    ref = REF["boundary_lagged"]
    assert ref["singular"] and ref["variances"]["client"] == 0  # lme4 puts the client variance at 0
    data = read(ref["data"])
    fit = _client_variance_at_zero(data, TERMS["lagged"], level=0.95)
    assert len(data) == ref["n_obs"]
    assert_close(fit.estimate, ref["estimate"], rtol=FIXED_RTOL, what="fixed effects")
    assert_close(fit.se, ref["se"], rtol=SE_RTOL, what="standard errors")
