"""Session-level mixed models against lme4 (tests/reference/sessions.json from refs_sessions.R)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import ROOT, assert_close, load_ref

from alliancemeta.sessions.data import decompose_alliance, lag_frame, read_session_table
from alliancemeta.sessions.models import fit_session_models

#: Both sides maximise the same REML criterion to near machine precision (statsmodels: BFGS to a
#: gradient norm of 1e-9 after L-BFGS; lme4: BOBYQA with rhoend = 1e-12).  The criterion is flat
#: along the therapist variance: it changes by < 1e-10 over a relative 1e-5 of it, so two exact
#: optimisers may stop a few 1e-6 apart there (observed: 3e-6).  Fixed effects depend on the
#: variances only weakly and agree to 1e-7 (observed max 8e-8); standard errors, which scale with
#: the variances, to 6e-7.  The constants leave a factor of >= 3 for platform round-off.
FIXED_RTOL = 1e-6
SE_RTOL = 1e-5
VARIANCE_RTOL = 1e-5
LOGLIK_ATOL = 1e-8  # absolute, on a REML log-likelihood of about -12,000

REF = load_ref("sessions")["cases"]


@pytest.fixture(scope="module")
def fits():
    frame = read_session_table(ROOT / REF["data"]["path"])
    decomposed = decompose_alliance(frame, REF["data"]["outcome_lower_is_better"])
    return decomposed, fit_session_models(decomposed)


def test_data_preparation_matches(fits):
    decomposed, _ = fits
    assert len(decomposed) == REF["data"]["n_rows"]
    assert len(lag_frame(decomposed)) == REF["data"]["n_lagged"]


@pytest.mark.parametrize("model", ["within_between", "lagged", "therapist"])
def test_mixedlm_matches_lme4(fits, model):
    _, all_fits = fits
    fit, ref = all_fits[model], REF[model]
    assert fit.n_obs == ref["n_obs"]
    assert fit.terms[1:] == tuple(ref["terms"][1:])
    assert fit.random_slope == ("client_session" in ref["variances"])
    assert_close(fit.estimate, ref["estimate"], rtol=FIXED_RTOL, what=f"{model} fixed effects")
    assert_close(fit.se, ref["se"], rtol=SE_RTOL, what=f"{model} standard errors")
    for name, value in ref["variances"].items():
        assert_close(fit.variances[name], value, rtol=VARIANCE_RTOL, what=f"{model} variance {name}")
    assert set(fit.variances) == set(ref["variances"])
    np.testing.assert_allclose(fit.reml_loglik, ref["reml_loglik"], rtol=0, atol=LOGLIK_ATOL)
