"""Location-scale models against metafor (fixture: tests/reference/location_scale.json, made by
tests/reference/refs_location_scale.R).

Each case refits ``rma(yi, vi, mods, scale = ~ mod)`` with :func:`location_scale` on the rows R used and
compares with the ``polished`` block (metafor's likelihood maximised exactly, its numDeriv Hessian there):
location and scale coefficients, standard errors, z (or t) tests, intervals, fitted tau^2 and logLik; the
likelihood-ratio test with ``anova(full, scale = ~ 1)`` and the homogeneous model; the design of factors
(C-locale treatment coding); and the ``location_scale.csv`` rows.  Moderators for which metafor's optimum
lies at tau^2 -> 0 in a level (``vanishing``) must be reported as not estimable.
"""

from __future__ import annotations

import re
from functools import cache

import numpy as np
import pandas as pd
import pytest
from conftest import ROOT, RTOL, as_array, assert_close, load_ref

from alliancemeta.core.effects import escalc_cor
from alliancemeta.studies.location_scale import (
    LocationScaleError,
    location_scale,
    location_scale_table,
    scale_lrt,
)
from alliancemeta.studies.regression import design_matrix

CASES: dict = load_ref("location_scale")["cases"]
KEYS = sorted(CASES)
FITTED = [k for k in KEYS if not CASES[k]["vanishing"]]
VANISHING = [k for k in KEYS if CASES[k]["vanishing"]]
#: metafor's free nlminb fit stops short of the maximum (rel.tol 1e-12 or its default 1e-10) and takes
#: the covariance of alpha from a numerical Hessian there: against it our values agree to about 1e-6
#: (measured); the exact comparison is with the polished block at RTOL.
FREE_FIT_RTOL = 1e-4
#: metafor takes the covariance of alpha from numDeriv::hessian (Richardson, r = 8) of its objective; that
#: numerical Hessian is off by a few 1e-6 (relative; measured at most 4.4e-6 on these data).  The exact
#: observed information, written out with dense matrices in R (``va``), is the RTOL reference; our value
#: also agrees with a 60-digit finite-difference Hessian (tests/unit/studies/test_location_scale.py).
NUMDERIV_RTOL = 1e-5
#: log-likelihoods compared absolutely (they are O(1)-O(100)); the polished optimum is exact to ~1e-12.
LOGLIK_ATOL = 1e-8


def values(x):
    """A fixture vector: R's named vectors (the polished alpha, named by Z's columns) are JSON objects."""
    return as_array(list(x.values()) if isinstance(x, dict) else x)


@cache
def read_data(path: str) -> pd.DataFrame:
    frame = pd.read_csv(ROOT / path)
    if "yi" not in frame.columns:
        es = escalc_cor(frame["r"], frame["n"], "ZCOR")
        frame = frame.assign(yi=es.yi, vi=es.vi)
    return frame


def variables(formula: str | None) -> list[str]:
    return [] if formula is None else re.findall(r"[A-Za-z_][A-Za-z_0-9.]*", formula)


def case_data(key: str):
    """The rows R fitted (complete cases of the case's variables), with X and Z in R's column order."""
    case = CASES[key]
    scale_vars, mod_vars = variables(case["scale"]), variables(case.get("mods"))
    frame = read_data(case["data"]).dropna(subset=scale_vars + mod_vars).reset_index(drop=True)
    assert len(frame) == case["n_rows"]
    Zd = design_matrix(frame, scale_vars)
    assert ["intrcpt", *Zd.terms[1:]] == list(case["Z_colnames"])
    X = None
    if mod_vars:
        Xd = design_matrix(frame, mod_vars)
        assert ["intrcpt", *Xd.terms[1:]] == list(case["X_colnames"])
        X = Xd.X
    return case, frame, X, Zd.X


@pytest.mark.parametrize("key", FITTED)
def test_location_scale_matches_metafor(key):
    case, frame, X, Z = case_data(key)
    fit = location_scale(frame["yi"], frame["vi"], X=X, Z=Z, method=case["method"], test=case["test"])
    pol = case["polished"]
    assert_close(fit.alpha, values(pol["alpha"]), what=f"{key} alpha")
    assert_close(fit.va.ravel(), np.ravel(pol["va"]), what=f"{key} va")
    assert_close(fit.alpha_se, values(pol["se.alpha"]), what=f"{key} se.alpha")
    assert_close(fit.va.ravel(), np.ravel(pol["va_numderiv"]), rtol=NUMDERIV_RTOL, atol=1e-12,
                 what=f"{key} va as metafor computes it")  # fmt: skip
    for r_name, attr in (("b", "beta"), ("se", "se"), ("zval", "stat"), ("pval", "pval"), ("ci.lb", "ci_lb"),
                         ("ci.ub", "ci_ub"), ("tau2", "tau2")):  # fmt: skip
        assert_close(getattr(fit, attr), pol[r_name], what=f"{key} {r_name}")
    assert_close(fit.loglik, pol["logLik"], rtol=0, atol=LOGLIK_ATOL, what=f"{key} logLik")
    # tests of the scale coefficients with metafor's formulas at the polished alpha and va
    free = case["fit"]
    att = np.arange(1, fit.q)
    va = np.asarray(pol["va"], dtype=float).reshape(fit.q, fit.q)
    alpha = values(pol["alpha"])
    qs = float(alpha[att] @ np.linalg.solve(va[np.ix_(att, att)], alpha[att]))
    assert_close(fit.QS, qs / (att.size if case["test"] == "t" else 1), what=f"{key} QS")
    assert_close(fit.QS_df[0], free["QSdf"][0], rtol=0, what=f"{key} QSdf")
    # metafor's own free fit is close (its optimiser's tolerance)
    for r_name, attr in (("alpha", "alpha"), ("se.alpha", "alpha_se"), ("QS", "QS"), ("QSp", "QS_pval"),
                         ("QM", "QM"), ("QMp", "QM_pval"), ("zval.alpha", "alpha_stat")):  # fmt: skip
        assert_close(getattr(fit, attr), free[r_name], rtol=FREE_FIT_RTOL, atol=1e-10, what=f"{key} free {r_name}")
    assert fit.loglik >= free["logLik"] - LOGLIK_ATOL


@pytest.mark.parametrize("key", FITTED)
def test_likelihood_ratio_test_matches_anova(key):
    case, frame, X, Z = case_data(key)
    fit = location_scale(frame["yi"], frame["vi"], X=X, Z=Z, method=case["method"], test=case["test"])
    lrt = scale_lrt(fit)
    hom = case["homogeneous"]
    assert_close(lrt.tau2_reduced, hom["tau2"], atol=1e-10, what=f"{key} homogeneous tau2")
    assert_close(lrt.loglik_reduced, hom["logLik"], rtol=0, atol=LOGLIK_ATOL, what=f"{key} homogeneous logLik")
    # metafor's reduced location-scale fit (log link) can only approach tau2 = 0: never above the exact maximum
    assert case["reduced"]["logLik"] <= hom["logLik"] + LOGLIK_ATOL
    exact = max(0.0, 2.0 * (case["polished"]["logLik"] - hom["logLik"]))
    assert_close(lrt.LRT, exact, rtol=RTOL, atol=1e-8, what=f"{key} LRT")
    assert lrt.df == case["anova"]["df"]
    assert_close(lrt.LRT, case["anova"]["LRT"], rtol=FREE_FIT_RTOL, atol=1e-6, what=f"{key} anova LRT")
    assert_close(lrt.pval, case["anova"]["pval"], rtol=FREE_FIT_RTOL, atol=1e-6, what=f"{key} anova pval")


@pytest.mark.parametrize("key", VANISHING)
def test_vanishing_heterogeneity_is_not_estimable(key):
    case, frame, X, Z = case_data(key)
    assert min(as_array(case["fit"]["tau2"]) / frame["vi"].to_numpy()) < 1e-6  # metafor's alpha runs off
    with pytest.raises(LocationScaleError, match="tau\\^2 -> 0") as info:
        location_scale(frame["yi"], frame["vi"], X=X, Z=Z, method=case["method"], test=case["test"])
    low = info.value.vanishing
    ratio = as_array(case["fit"]["tau2"]) / frame["vi"].to_numpy()
    assert np.all(ratio[low] < 1e-4)  # the effects we flag are those whose tau2 metafor drove towards 0


@pytest.mark.parametrize("dataset", sorted({CASES[k]["dataset"] for k in KEYS if k.startswith("ls/")}))
def test_location_scale_table_rows(dataset):
    keys = [k for k in KEYS if k.startswith(f"ls/{dataset}/")]
    frame = read_data(CASES[keys[0]]["data"])
    mods = [k.split("/")[-1] for k in keys]
    coefs, tests = location_scale_table(frame, mods)
    for key, mod in zip(keys, mods, strict=True):
        case = CASES[key]
        rows = coefs[coefs["moderator"] == mod]
        trow = tests[tests["moderator"] == mod].iloc[0]
        if case["vanishing"]:
            assert rows["estimate"].isna().all() and "tau^2 -> 0" in trow["note"], key
            continue
        pol = case["polished"]
        assert_close(rows["estimate"], [as_array(pol["b"])[0], *values(pol["alpha"])], what=f"{key} table estimates")
        assert_close(rows["se"], [as_array(pol["se"])[0], *values(pol["se.alpha"])], what=f"{key} table se")
        assert trow["k"] == case["n_rows"]
        exact_lrt = max(0.0, 2.0 * (pol["logLik"] - case["homogeneous"]["logLik"]))
        assert_close(trow["LRT"], exact_lrt, atol=1e-8, what=f"{key} table LRT")
