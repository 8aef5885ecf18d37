"""The distribution of true effects against R (fixture: tests/reference/distribution.json, made by
tests/reference/refs_distribution.R: MetaUtility's published computations written out on metafor and boot).

- ``point/*``: metafor's tau^2 and ``se.tau2`` for every estimator, the normal-model share with its
  delta-method SE and interval, the calibrated estimates and their shares above the thresholds;
- ``boot/*``: a bootstrap run in R with ``boot::boot`` whose resampling (``boot.array(indices = TRUE)``) is
  stored; the package refits the same resamples, and its BCa and percentile intervals are compared with
  ``boot.ci`` on R's replicates and on its own, and the whole ``distribution_table`` with the R rows.
"""

from __future__ import annotations

from functools import cache

import numpy as np
import pandas as pd
import pytest
from conftest import ROOT, RTOL, as_array, assert_close, load_ref

from alliancemeta.core.effects import escalc_cor
from alliancemeta.studies.distribution import (
    BootstrapIntervalError,
    bca_interval,
    bootstrap_replicates,
    calibrated_estimates,
    distribution_table,
    percentile_interval,
    se_tau2,
    share_above_normal,
    share_normal_delta,
)
from alliancemeta.studies.random_effects import estimate_tau2, random_effects

CASES: dict = load_ref("distribution")["cases"]
POINT = sorted(k for k in CASES if k.startswith("point/"))
BOOT = sorted(k for k in CASES if k.startswith("boot/"))
#: The bootstrap replicates refit metafor (threshold 1e-12) and the package (exact optimum) on the same
#: resamples: the normal-model shares agree to round-off of tau^2 (measured < 1e-10); the calibrated shares
#: are counts and agree exactly.
REPLICATE_RTOL = 1e-8


@cache
def read_data(name: str) -> pd.DataFrame:
    if name == "mcdaniel1994":
        frame = pd.read_csv(ROOT / "tests/reference/data/mcdaniel1994.csv")
        es = escalc_cor(frame["ri"], frame["ni"], "ZCOR")
    else:
        path = {"molloy2014": "data/raw/molloy2014.csv"}.get(name, "data/raw/alliance_synthetic.csv")
        frame = pd.read_csv(ROOT / path)
        if name == "alliance_synthetic_40":
            frame = frame[frame["study_id"].isin(frame["study_id"].unique()[:40])].reset_index(drop=True)
        es = escalc_cor(frame["r"], frame["n"], "ZCOR")
    return frame.assign(yi=es.yi, vi=es.vi)


@pytest.mark.parametrize("key", POINT)
def test_tau2_and_its_standard_error_for_every_estimator(key):
    case = CASES[key]
    frame = read_data(case["dataset"])
    for method, ref in case["rma"].items():
        tau2 = estimate_tau2(frame["yi"], frame["vi"], method=method).tau2
        assert_close(tau2, ref["tau2"], what=f"{key} {method} tau2")
        assert_close(se_tau2(frame["yi"], frame["vi"], ref["tau2"], method), ref["se.tau2"],
                     what=f"{key} {method} se.tau2")  # fmt: skip


@pytest.mark.parametrize("key", POINT)
def test_normal_share_and_delta_method(key):
    case = CASES[key]
    frame = read_data(case["dataset"])
    fit = random_effects(frame["yi"], frame["vi"], method="REML", test="z")
    st2 = se_tau2(frame["yi"], frame["vi"], fit.tau2, "REML")
    for j, q in enumerate(case["q"]):
        ns = share_normal_delta(fit.estimate, fit.se[0], fit.tau2, st2, q, case["level"])
        ref = case["normal"]
        for attr, name in (("share", "share"), ("se", "se"), ("ci_lb", "ci.lb"), ("ci_ub", "ci.ub")):
            assert_close(getattr(ns, attr), as_array(ref[name])[j], what=f"{key} q={q:.4f} {name}")


@pytest.mark.parametrize("key", POINT)
def test_calibrated_estimates_and_shares(key):
    case = CASES[key]
    frame = read_data(case["dataset"])
    fit = random_effects(frame["yi"], frame["vi"], method="REML")
    cal = calibrated_estimates(frame["yi"], frame["vi"], fit.estimate, fit.tau2)
    assert_close(cal, case["calibrated_estimates"], what=f"{key} calibrated estimates")
    shares = [np.mean(cal > q) for q in case["q"]]
    assert_close(shares, case["calibrated"]["share"], rtol=0, atol=0, what=f"{key} calibrated shares")


def replicates(key):
    case = CASES[key]
    frame = read_data(case["dataset"])
    cluster = frame[case["cluster"]] if case.get("cluster") else None
    indices = np.asarray(case["indices"], dtype=np.intp) - 1
    boot = bootstrap_replicates(frame["yi"], frame["vi"], case["q"], "REML", 0, 0, cluster, indices=indices)
    return case, frame, cluster, indices, boot


@pytest.mark.parametrize("key", BOOT)
def test_bootstrap_replicates_match_r(key):
    case, _frame, _cluster, _indices, boot = replicates(key)
    t = np.asarray(case["t"], dtype=float)
    nq = len(case["q"])
    assert boot.failed == 0
    assert_close(boot.calibrated, t[:, :nq], rtol=0, atol=0, what=f"{key} calibrated replicates")
    normal = share_above_normal(boot.mu[:, None], boot.tau2[:, None], np.asarray(case["q"])[None, :])
    assert_close(normal, t[:, nq:], rtol=REPLICATE_RTOL, atol=1e-12, what=f"{key} normal replicates")


@pytest.mark.parametrize("key", BOOT)
def test_bca_and_percentile_intervals_match_boot_ci(key):
    case, _frame, _cluster, _indices, boot = replicates(key)
    t = np.asarray(case["t"], dtype=float)
    for j, ref in enumerate(case["intervals"]):
        stat = case["statistics"][j]
        if ref.get("bca") is not None:
            assert_close(bca_interval(case["t0"][j], t[:, j], boot.freq, case["level"]), ref["bca"],
                         atol=1e-12, what=f"{key} {stat} bca")  # fmt: skip
        else:
            with pytest.raises(BootstrapIntervalError, match=ref["bca_error"].replace("'", ".")):
                bca_interval(case["t0"][j], t[:, j], boot.freq, case["level"])
        assert_close(percentile_interval(t[:, j], case["level"]), ref["perc"], atol=1e-12, what=f"{key} {stat} perc")
        assert_close(np.std(t[:, j], ddof=1), ref["sd"], what=f"{key} {stat} sd")


@pytest.mark.parametrize("key", BOOT)
def test_distribution_table_on_the_same_resamples(key):
    case, frame, cluster, indices, _boot = replicates(key)
    point = CASES[f"point/{case['dataset']}"]
    table = distribution_table(frame["yi"], frame["vi"], case["thresholds"], level=case["level"], cluster=cluster,
                               indices=indices)  # fmt: skip
    nq = len(case["q"])
    for j, r in enumerate(case["thresholds"]):
        rows = table[table["threshold"] == r].set_index("method")
        cal, nor = rows.loc["calibrated"], rows.loc["normal"]
        assert cal["share"] == case["t0"][j]
        ref = case["intervals"][j]
        if ref.get("bca") is not None:
            assert cal["ci_method"] == "bca"
            assert_close([cal["ci_lb"], cal["ci_ub"]], ref["bca"], atol=1e-12, what=f"{key} r={r} calibrated")
        else:
            assert np.isnan(cal["ci_lb"]) and "BCa interval failed" in cal["note"]
        assert_close(nor["share"], case["t0"][nq + j], what=f"{key} r={r} normal share")
        if point["normal"]["extreme"][j]:
            ref = case["intervals"][nq + j]
            assert nor["ci_method"] == ("bca" if ref.get("bca") is not None else "percentile")
            expected = ref["bca"] if ref.get("bca") is not None else ref["perc"]
            assert_close([nor["ci_lb"], nor["ci_ub"]], expected, rtol=RTOL, atol=1e-8, what=f"{key} r={r} normal")
        else:
            assert nor["ci_method"] == "delta"
            assert_close([nor["ci_lb"], nor["ci_ub"]], [point["normal"]["ci.lb"][j], point["normal"]["ci.ub"][j]],
                         what=f"{key} r={r} normal delta")  # fmt: skip
