"""The CHE working model against metafor and clubSandwich (fixture: tests/reference/che.json, made by
tests/reference/refs_che.R).

Each case reads the CSV the R script fitted, builds the design matrix from the recorded column names, fits
``che_fit`` (``vcalc`` + ``rma.mv(random = ~ 1 | study/es)`` by REML) and compares with three blocks:

- ``polished``: metafor's fit at the exact REML optimum (nlminb's estimate refined by Newton steps in R),
  against our estimated fit at RTOL: sigma2, coefficients, tests, intervals, QE, QM, logLik, ``predict``,
  ``robust(clubSandwich = TRUE)`` (CR2, Satterthwaite df, HTZ QM) and its ``predict``;
- ``at_estimate``: everything downstream of sigma2 with sigma2 fixed at metafor's own (nlminb) estimate,
  against our fit at the same fixed sigma2 (no optimiser involved);
- the free nlminb fit itself: our restricted log-likelihood is at least as high.
"""

from __future__ import annotations

import re
from functools import cache

import numpy as np
import pandas as pd
import pytest
from conftest import ATOL, ROOT, RTOL, as_array, assert_close, load_ref

from alliancemeta.core.effects import escalc_cor
from alliancemeta.studies.multilevel.che import che_fit, che_table, robust_cr2_che, vcalc_dense

CASES: dict = load_ref("che")["cases"]
FIT_CASES = sorted(k for k in CASES if k.split("/")[0] in ("che", "metareg"))

#: With sigma2 fixed (``rma.mv(sigma2 = ...)``) no optimiser is involved: GLS, tests, CR2 and HTZ agree to
#: round-off (measured at most 5e-14).
AT_ESTIMATE_RTOL = 1e-9
#: nlminb's free estimate lies within ~2e-6 (relative) of the optimum, so its log-likelihood may be lower
#: than ours by round-off-sized amounts but never higher by more than this.
LOGLIK_ATOL = 1e-9
BOUNDS = ("ci.lb", "ci.ub", "pi.lb", "pi.ub")

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
    if "yi" not in frame.columns:  # data/raw/alliance_synthetic.csv: escalc("ZCOR")
        es = escalc_cor(frame["r"], frame["n"], "ZCOR")
        frame = frame.assign(yi=es.yi, vi=es.vi)
    return frame


def design(frame: pd.DataFrame, case: dict) -> np.ndarray:
    cols = [np.ones(len(frame))]
    variable = re.sub(r"[~\s]", "", case["mods"]) if "mods" in case else None
    for name in case["X_colnames"][1:]:
        assert variable is not None and name.startswith(variable), name
        cols.append((frame[variable].astype(str) == name[len(variable) :]).to_numpy(float))
    return np.column_stack(cols)


def fit_case(key: str, sigma2=(None, None)):
    case = CASES[key]
    frame = read_data(case["data"])
    X = design(frame, case)
    fit = che_fit(frame["yi"], frame["vi"], frame[case["cluster"]], case["rho"], X=X, test=case["test"], sigma2=sigma2)
    return case, fit


def compare_blocks(ref: dict, fit, rtol: float, key: str) -> None:
    for r_name, attr in FIT_FIELDS:
        expected = ref["fit"][r_name]
        actual = getattr(fit, attr)
        if r_name in ("ci.lb", "ci.ub"):
            half = (as_array(ref["fit"]["ci.ub"]) - as_array(ref["fit"]["ci.lb"])) / 2
            atol = float(rtol * np.max(np.maximum(np.abs(as_array(ref["fit"]["b"])), half)))
            assert_close(actual, expected, rtol=rtol, atol=atol, what=f"{key} fit.{r_name}")
        elif r_name == "logLik":
            assert_close(actual, expected, rtol=0, atol=LOGLIK_ATOL, what=f"{key} logLik")
        else:
            assert_close(actual, expected, rtol=rtol, what=f"{key} fit.{r_name}")
    assert_close(fit.vb.ravel(), np.ravel(ref["fit"]["vb"]), rtol=rtol, what=f"{key} vb")
    if np.isfinite(fit.ddf):  # metafor stores the residual df once per coefficient
        assert_close(np.full(fit.p, fit.ddf), ref["fit"]["ddf"], rtol=0, what=f"{key} ddf")
    x_new = ref.get("x_new")
    pred = fit.predict(x_new)
    rob = robust_cr2_che(fit)
    rpred = rob.predict(x_new)
    for block, ours in (("predict", pred), ("robust_predict", rpred)):
        half = (ref[block]["ci.ub"] - ref[block]["ci.lb"]) / 2
        for r_name, attr in PRED_FIELDS:
            atol = rtol * max(abs(ref[block]["pred"]), half) if r_name in BOUNDS else ATOL
            assert_close(getattr(ours, attr), ref[block][r_name], rtol=rtol, atol=atol, what=f"{key} {block}.{r_name}")
    for r_name, attr in ROBUST_FIELDS:
        expected = ref["robust"][r_name]
        if r_name in ("ci.lb", "ci.ub"):
            half = (as_array(ref["robust"]["ci.ub"]) - as_array(ref["robust"]["ci.lb"])) / 2
            atol = float(rtol * np.max(np.maximum(np.abs(as_array(ref["robust"]["b"])), half)))
            assert_close(getattr(rob, attr), expected, rtol=rtol, atol=atol, what=f"{key} robust.{r_name}")
        else:
            assert_close(getattr(rob, attr), expected, rtol=rtol, what=f"{key} robust.{r_name}")
    assert_close(rob.QM_df, ref["robust"]["QMdf"], rtol=rtol, what=f"{key} robust.QMdf")
    assert_close(rob.vb.ravel(), np.ravel(ref["robust"]["vb"]), rtol=rtol, what=f"{key} robust.vb")


@pytest.mark.parametrize("key", FIT_CASES)
def test_che_fit_matches_polished_optimum(key):
    case, fit = fit_case(key)
    ref = dict(case["polished"], x_new=case.get("x_new"))
    compare_blocks(ref, fit, RTOL, key)
    # the polished point is metafor's maximum: its own logLik there is at least that at nlminb's estimate
    check = case["polished"]["check"]
    assert check["metafor_loglik_at_polished"] >= check["metafor_loglik_at_metafor"] - LOGLIK_ATOL
    assert check.get("boundary_grad") is None or as_array(check["boundary_grad"]).max() < 0


@pytest.mark.parametrize("key", FIT_CASES)
def test_che_downstream_of_sigma2_matches_at_metafor_estimate(key):
    case = CASES[key]
    _, fit = fit_case(key, sigma2=tuple(case["at_estimate"]["fit"]["sigma2"]))
    compare_blocks(dict(case["at_estimate"], x_new=case.get("x_new")), fit, AT_ESTIMATE_RTOL, key)


@pytest.mark.parametrize("key", FIT_CASES)
def test_our_optimum_is_at_least_metafors(key):
    case, fit = fit_case(key)
    assert fit.loglik >= case["fit"]["logLik"] - LOGLIK_ATOL
    # and nlminb's free estimate is close: documented distance (its own tolerance), not a test of ours
    assert_close(fit.sigma2, case["fit"]["sigma2"], rtol=1e-5, atol=1e-9, what=f"{key} nlminb sigma2")


def test_vcalc_block_matches_metafor():
    case = CASES["vcalc/assink2016/rho0.5"]
    frame = read_data(case["data"])
    rows = np.asarray(case["rows"]) - 1
    V = vcalc_dense(frame["vi"].to_numpy()[rows], frame[case["cluster"]].to_numpy()[rows], case["rho"])
    assert_close(V, np.asarray(case["V"], dtype=float), rtol=1e-15, atol=0, what="vcalc")


@pytest.mark.parametrize("dataset", ["assink2016", "alliance_synthetic"])
def test_che_table_rows_match_metafor(dataset):
    keys = sorted(k for k in FIT_CASES if k.startswith(f"che/{dataset}/") and k.endswith("/z"))
    if not keys:
        pytest.skip(f"no CHE cases for {dataset}")
    case = CASES[keys[0]]
    frame = read_data(case["data"]).rename(columns={case["cluster"]: "study_id"})
    rhos = sorted({CASES[k]["rho"] for k in keys})
    table = che_table(frame, rhos=rhos)
    for rho in rhos:
        pol = CASES[f"che/{dataset}/rho{rho:g}/z"]["polished"]
        pol_t = CASES[f"che/{dataset}/rho{rho:g}/t"]["polished"]
        rows = table[table["rho"] == rho].set_index("test")
        assert_close(
            rows.loc["z", ["estimate", "se", "pval", "ci_lb", "ci_ub"]].to_numpy(float),
            [pol["fit"][f] for f in ("b", "se", "pval", "ci.lb", "ci.ub")],
            what=f"{dataset} {rho} z",
        )
        assert_close(
            rows.loc["t", ["pval", "ci_lb", "ci_ub", "df"]].to_numpy(float),
            [pol_t["fit"][f] for f in ("pval", "ci.lb", "ci.ub", "ddf")],
            what=f"{dataset} {rho} t",
        )
        assert_close(
            rows.loc["cr2", ["se", "df", "pval", "ci_lb", "ci_ub"]].to_numpy(float),
            [pol["robust"][f] for f in ("se", "df", "pval", "ci.lb", "ci.ub")],
            what=f"{dataset} {rho} cr2",
        )
        assert_close(
            rows.loc["z", ["sigma2_study", "sigma2_within"]].to_numpy(float),
            pol["fit"]["sigma2"],
            what=f"{dataset} {rho} sigma2",
        )
