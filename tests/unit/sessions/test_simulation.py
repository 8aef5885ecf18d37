"""The session-level simulation study's machinery (``sessions/simulation.py``): replicates and their summary.

The study itself (lagged_latent on 120 clients per replicate) runs in ``benchmarks/sim_sessions.py``."""

from __future__ import annotations

import numpy as np
import pandas as pd

from alliancemeta.core.settings import SamplerSettings
from alliancemeta.sessions.simulation import (
    RESULT_COLUMNS,
    SUMMARY_COLUMNS,
    TRUTH_KEY,
    StudyDesign,
    run_replicate,
    summarise,
)

SETTINGS = SamplerSettings(500, 500, 4, "nutpie", 0.9, 0.99, "simulation")


def test_replicate_rows_and_reproducibility():
    design = StudyDesign(name="t", n_clients=60, n_therapists=6, n_sites=2, settings=SETTINGS,
                         estimators=("lagged", "lagged_detrended"))  # fmt: skip
    a = run_replicate(design, 0, 5)
    b = run_replicate(design, 0, 5)
    assert tuple(a.columns) == RESULT_COLUMNS
    assert a["estimator"].tolist() == ["lagged", "lagged", "lagged_detrended", "lagged_detrended"]
    assert set(a["term"]) == {"alliance_within", "outcome_lag"}
    assert a["status"].str.startswith("ok").all()
    p = design.params  # the truth on the aligned scale (outcome sign-flipped: positive = better)
    assert (a["truth"] == a["term"].map({"alliance_within": -p.beta_within_lag, "outcome_lag": p.outcome_ar})).all()
    pd.testing.assert_frame_equal(a.drop(columns="seconds"), b.drop(columns="seconds"))
    assert (a["ci_lb"] < a["estimate"]).all() and (a["estimate"] < a["ci_ub"]).all()
    other = run_replicate(design, 1, 5)
    assert other["data_seed"].iloc[0] != a["data_seed"].iloc[0]


def test_summary_formulas():
    rng = np.random.default_rng(1)
    est = 1.0 + rng.normal(0, 0.2, 50)
    results = pd.DataFrame({
        "replicate": range(52), "data_seed": 0, "estimator": "lagged", "term": "alliance_within", "truth": 1.1,
        "estimate": [*est, np.nan, np.nan], "se": 0.2, "ci_lb": [*(est - 0.4), np.nan, np.nan],
        "ci_ub": [*(est + 0.4), np.nan, np.nan], "status": ["ok"] * 50 + ["failed: x"] * 2, "attempts": 1,
        "seconds": 1.0,
    })  # fmt: skip
    s = summarise(results).iloc[0]
    assert tuple(summarise(results).columns) == SUMMARY_COLUMNS
    assert (s.n_estimates, s.n_failed) == (50, 2)
    np.testing.assert_allclose(s.bias, est.mean() - 1.1)
    np.testing.assert_allclose(s.rmse, np.sqrt(np.mean((est - 1.1) ** 2)))
    np.testing.assert_allclose(s.bias_mcse, est.std(ddof=1) / np.sqrt(50))
    cover = np.mean((est - 0.4 <= 1.1) & (1.1 <= est + 0.4))
    np.testing.assert_allclose([s.coverage, s.coverage_mcse], [cover, np.sqrt(cover * (1 - cover) / 50)])
    assert set(TRUTH_KEY) >= {"alliance_within", "outcome_to_alliance", "outcome_lag"}
