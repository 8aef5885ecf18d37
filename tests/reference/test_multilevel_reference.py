"""The three-level engine against metafor and clubSandwich (fixture: tests/reference/multilevel.json,
made by tests/reference/refs_multilevel.R).

Each case reads the CSV the R script fitted, rebuilds the design matrix from the recorded column
names, fits the model with :mod:`alliancemeta.studies.multilevel` and compares every quantity metafor
reports: the REML variance components, coefficients, tests, intervals, Q statistics, log-likelihood,
the multilevel I^2 (computed in R from the dense P matrix), ``predict``, ``robust(clubSandwich=TRUE)``
(CR2, Satterthwaite df, HTZ Wald test) with its ``predict``, and ``aggregate(struct="CS")``.
"""

from __future__ import annotations

import re
from functools import cache

import numpy as np
import pandas as pd
import pytest
from conftest import ATOL, ROOT, RTOL, as_array, assert_close, load_ref

from alliancemeta.core.effects import escalc_cor
from alliancemeta.studies.multilevel.aggregate import aggregate_within_studies
from alliancemeta.studies.multilevel.model import three_level
from alliancemeta.studies.multilevel.robust import robust_cr2

CASES: dict = load_ref("multilevel")["cases"]
FIT_CASES = sorted(k for k in CASES if k.split("/")[0] in ("three_level", "metareg", "boundary"))
AGG_CASES = sorted(k for k in CASES if k.startswith("aggregate/"))
FREE_BOUNDARY_CASES = sorted(k for k in CASES if k.startswith("boundary_free/"))

#: rma.mv maximises the REML likelihood with nlminb on numerical derivatives; at its tightest
#: setting the stored sigma2 lie within about 1e-8 (relative) of the optimum, so our exact optimum
#: may have a log-likelihood that is higher by round-off but never lower by more than this.
LOGLIK_ATOL = 1e-9
#: Interval bounds are differences est -/+ crit * se; when a bound lies near 0 its relative error is
#: that of the two terms amplified by their cancellation (konstantopoulos2011 ~ year, t: ci.lb = 0.0029
#: from 0.19 - 0.19, where nlminb's 1e-8 in sigma2 shows up as 1.4e-6 relative).  Bounds are therefore
#: compared at RTOL relative to the larger of the two terms, the precision the inputs carry.
BOUNDS = ("ci.lb", "ci.ub", "pi.lb", "pi.ub")
#: With sigma2 fixed at metafor's estimates (the ``at_estimate`` blocks: ``rma.mv(sigma2 = ...)``) no
#: optimiser is involved and everything downstream (GLS, tests, predict, I^2, CR2, Satterthwaite df,
#: HTZ, logLik) must agree to round-off: measured at most 1e-13 except for konstantopoulos2011 ~ year,
#: whose uncentred year makes X'WX ill-conditioned (condition number 1.6e11), where round-off grows to
#: 1.6e-10 (robust vb) and 6e-10 (a confidence bound near 0).
AT_ESTIMATE_RTOL = 1e-9

FIT_FIELDS = (
    ("sigma2", "sigma2"),
    ("b", "beta"),
    ("se", "se"),
    ("zval", "stat"),
    ("pval", "pval"),
    ("ci.lb", "ci_lb"),
    ("ci.ub", "ci_ub"),
    ("QE", "QE"),
    ("QEp", "QE_pval"),
    ("QM", "QM"),
    ("QMp", "QM_pval"),
    ("logLik", "loglik"),
    ("k", "k"),
    ("p", "p"),
    ("n_clusters", "n_clusters"),
    ("I2", "I2"),
)
ROBUST_FIELDS = (
    ("b", "beta"),
    ("se", "se"),
    ("tval", "stat"),
    ("df", "df"),
    ("pval", "pval"),
    ("ci.lb", "ci_lb"),
    ("ci.ub", "ci_ub"),
    ("QM", "QM"),
    ("QMp", "QM_pval"),
)
PRED_FIELDS = (
    ("pred", "pred"),
    ("se", "se"),
    ("ci.lb", "ci_lb"),
    ("ci.ub", "ci_ub"),
    ("pi.lb", "pi_lb"),
    ("pi.ub", "pi_ub"),
)


@cache
def read_data(path: str) -> pd.DataFrame:
    frame = pd.read_csv(ROOT / path)
    if "yi" not in frame.columns:  # raw correlations (data/raw/alliance_synthetic.csv): escalc("ZCOR")
        es = escalc_cor(frame["r"], frame["n"], "ZCOR")
        frame = frame.assign(yi=es.yi, vi=es.vi)
    return frame


def design(frame: pd.DataFrame, case: dict) -> np.ndarray:
    """The model matrix from R's column names: ``intrcpt``, numeric columns and factor dummies."""
    cols = [np.ones(len(frame))]
    variable = re.sub(r"[~\s]", "", case["mods"]) if "mods" in case else None
    for name in case["X_colnames"][1:]:
        if name in frame.columns:
            cols.append(frame[name].to_numpy(float))
        else:
            assert variable is not None and name.startswith(variable), name
            cols.append((frame[variable].astype(str) == name[len(variable) :]).to_numpy(float))
    return np.column_stack(cols)


def fit_case(key: str, block: str = "estimated"):
    """The fixture case and our fit: REML-estimated, or with sigma2 fixed at metafor's estimates."""
    case = CASES[key]
    frame = read_data(case["data"])
    X = design(frame, case)
    ref = case if block == "estimated" else case["at_estimate"]
    sigma2 = (None, None) if block == "estimated" else tuple(ref["fit"]["sigma2"])
    fit = three_level(frame["yi"], frame["vi"], frame[case["cluster"]], X=X, test=case["test"], sigma2=sigma2)
    return case, ref, fit, (RTOL if block == "estimated" else AT_ESTIMATE_RTOL)


def bound_atol(ref: dict, lb: str, ub: str, est: str, rtol: float) -> np.ndarray:
    """rtol times the larger of |estimate| and crit * se, recovered from the reference interval."""
    half = (as_array(ref[ub]) - as_array(ref[lb])) / 2.0
    return rtol * np.maximum(np.abs(as_array(ref[est])), half)


def assert_fields_close(obj, ref: dict, fields, rtol: float, what: str, est: str = "b") -> None:
    """Compare ``fields`` at ``rtol``; interval bounds relative to the larger of their two terms."""
    for rkey, attr in fields:
        actual, expected = np.atleast_1d(np.asarray(getattr(obj, attr), dtype=float)), as_array(ref[rkey])
        assert actual.shape == expected.shape, f"{what} {rkey}"
        floors = np.full(expected.shape, ATOL)
        if rkey in BOUNDS:
            lo, hi = ("ci.lb", "ci.ub") if rkey.startswith("ci") else ("pi.lb", "pi.ub")
            floors = np.maximum(ATOL, bound_atol(ref, lo, hi, est, rtol))
        for a, e, t in zip(actual, expected, floors, strict=True):
            assert_close(a, float(e), rtol=rtol, atol=float(t), what=f"{what} {rkey}")


def x_new(case: dict, p: int) -> np.ndarray:
    return np.asarray(case["x_new"], dtype=float) if "x_new" in case else np.eye(p)[0]


BLOCKS = ("estimated", "at_estimate")


@pytest.mark.parametrize("block", BLOCKS)
@pytest.mark.parametrize("key", FIT_CASES)
def test_three_level_fit(key, block):
    case, ref, fit, rtol = fit_case(key, block)
    what = f"{key} [{block}]:"
    ref_fit = ref["fit"]
    assert_fields_close(fit, ref_fit, FIT_FIELDS, rtol, what)
    assert_close(fit.vb.ravel(), np.ravel(ref_fit["vb"]).tolist(), rtol=rtol, what=f"{what} vb")
    assert_close([fit.I2_study, fit.I2_within], ref_fit["I2_levels"], rtol=rtol, what=f"{what} I2 per level")
    assert_close(fit.QM_df[0], ref_fit["QMdf"][0], what=f"{what} QMdf")
    if case["test"] == "t":
        assert_close(np.full(fit.p, fit.ddf), ref_fit["ddf"], what=f"{what} ddf")
        assert_close(fit.QM_df[1], ref_fit["QMdf"][1], what=f"{what} QMdf")
    else:
        assert all(v is None for v in np.atleast_1d(ref_fit["ddf"]))
        assert not np.isfinite(fit.ddf)
    assert fit.converged
    if block == "estimated":  # our optimum is never worse than metafor's
        assert fit.loglik >= ref_fit["logLik"] - LOGLIK_ATOL


@pytest.mark.parametrize("block", BLOCKS)
@pytest.mark.parametrize("key", FIT_CASES)
def test_three_level_predict(key, block):
    case, ref, fit, rtol = fit_case(key, block)
    pred = fit.predict(x_new(case, fit.p))
    assert_fields_close(pred, ref["predict"], PRED_FIELDS, rtol, f"{key} [{block}]: predict", est="pred")


@pytest.mark.parametrize("block", BLOCKS)
@pytest.mark.parametrize("key", FIT_CASES)
def test_robust_cr2(key, block):
    case, ref, fit, rtol = fit_case(key, block)
    what = f"{key} [{block}]: robust"
    rob = robust_cr2(fit)
    assert_fields_close(rob, ref["robust"], ROBUST_FIELDS, rtol, what)
    assert_close(rob.vb.ravel(), np.ravel(ref["robust"]["vb"]).tolist(), rtol=rtol, what=f"{what} vb")
    assert_close(rob.QM_df, ref["robust"]["QMdf"], rtol=rtol, what=f"{what} QMdf")
    pred = rob.predict(x_new(case, fit.p))
    assert_fields_close(pred, ref["robust_predict"], PRED_FIELDS, rtol, f"{what} predict", est="pred")


def test_boundary_estimate_is_exactly_zero():
    """The simulated data put sigma2_within at the boundary: we return 0 exactly, metafor ~1e-12."""
    for test in ("z", "t"):
        _, _, fit, _ = fit_case(f"boundary/within_zero/{test}")
        assert fit.sigma2_within == 0.0
        assert fit.sigma2_study > 0.0


@pytest.mark.parametrize("key", FREE_BOUNDARY_CASES)
def test_boundary_beats_metafor_free_fit(key):
    """metafor's free fit stops just inside the boundary; the exact boundary optimum is at least as good."""
    _, case, fit, _ = fit_case(key)
    ref = case["fit"]
    assert 0.0 < ref["sigma2"][1] < 1e-8
    assert fit.sigma2_within == 0.0
    assert fit.loglik >= ref["logLik"] - LOGLIK_ATOL
    # and the estimates agree with the free fit to the optimiser's own accuracy
    assert_close(fit.sigma2_study, ref["sigma2"][0], rtol=1e-5)
    assert_close(fit.beta, ref["b"], rtol=1e-7)


@pytest.mark.parametrize("key", AGG_CASES)
def test_aggregate(key):
    case = CASES[key]
    frame = read_data(case["data"])
    agg = aggregate_within_studies(frame["yi"], frame["vi"], frame[case["cluster"]], case["rho"])
    assert_close(agg.yi, case["yi"], what=f"{key}: yi")
    assert_close(agg.vi, case["vi"], what=f"{key}: vi")
    order = pd.unique(frame[case["cluster"]].astype(str))
    assert list(order) == list(case["clusters"])


def test_fixture_covers_required_cases():
    """The fixture holds the cases the engine is validated on (guards against a truncated JSON)."""
    keys = set(CASES)
    for ds in ("konstantopoulos2011", "crede2010"):
        for test in ("z", "t"):
            assert f"three_level/{ds}/{test}" in keys
    assert any(k.startswith("metareg/") for k in keys)
    assert {"boundary/within_zero/z", "aggregate/crede2010/rho0.5", "aggregate/crede2010/rho0.8"} <= keys
    assert RTOL <= 1e-6 and ATOL <= 1e-10
