"""The weighted-normal likelihood of RoBMA's selection models against metafor's ``selmodel(type="stepfun")``.

For every weight function of RoBMA-PSMA (one- and two-sided) the log-likelihood of
:func:`alliancemeta.studies.bayes.weightfunctions.selection_loglik`, evaluated at metafor's estimates
(beta, tau2, delta), must equal metafor's maximised log-likelihood (fixture ``robma.json`` from
``refs_robma.R``).  The log-likelihood at a maximum is insensitive to where the optimiser stopped.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import RTOL, assert_close, load_ref

from alliancemeta.studies.bayes.weightfunctions import selection_loglik
from tests.unit.studies.robma_settings import psma_weightfunctions

CASES = load_ref("robma")["cases"]
WEIGHTFUNCTIONS = {wf.label: wf for wf in psma_weightfunctions()}


@pytest.mark.parametrize("name", sorted(CASES))
def test_selection_loglik_matches_metafor(name):
    case = CASES[name]
    wf = WEIGHTFUNCTIONS[case["weightfunction"]]
    yi, vi = np.asarray(case["yi"], float), np.asarray(case["vi"], float)
    omega = np.asarray(case["delta"], float)[None, :]
    assert omega.shape[1] == wf.J
    ll = selection_loglik(yi, vi, np.array([case["beta"]]), np.array([np.sqrt(case["tau2"])]), omega, wf)
    assert_close(ll[0], case["ll"], rtol=RTOL, what=name)
