"""Session-level data preparation and REML mixed models (statsmodels MixedLM)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import statsmodels.formula.api as smf

from alliancemeta.core.errors import ConvergenceError
from alliancemeta.pipeline.sessions import MIXED_MODEL_COLUMNS, mixed_models_table, variance_components_table
from alliancemeta.sessions import models as sessions_models
from alliancemeta.sessions.data import aligned_outcome, decompose_alliance, lag_frame, read_session_table
from alliancemeta.sessions.models import fit_mixed_model, fit_session_models
from alliancemeta.sessions.synthetic import simulate_sessions

ROOT = Path(__file__).resolve().parents[3]
BUNDLED = ROOT / "data" / "raw" / "alliance_sessions_synthetic.csv"
TRUTH = json.loads((ROOT / "data" / "raw" / "alliance_sessions_synthetic.truth.json").read_text())
IDENTITY_ATOL = 1e-12  # the decomposition is exact up to round-off on values of about 10


def small(seed=3, n_clients=90, n_therapists=9, n_sites=3):
    frame, truth = simulate_sessions(seed, n_sites=n_sites, n_therapists=n_therapists, n_clients=n_clients)
    return frame, truth


# --- data preparation ---------------------------------------------------------------------------


def test_decomposition_adds_up_and_centres():
    frame, _ = small()
    d = decompose_alliance(frame, outcome_lower_is_better=True)
    client_means = d.groupby("client")["alliance"].mean()
    grand = client_means.mean()
    parts = grand + d["alliance_therapist"] + d["alliance_between"] + d["alliance_within"]
    np.testing.assert_allclose(parts, d["alliance"], atol=IDENTITY_ATOL)
    np.testing.assert_allclose(d.groupby("client")["alliance_within"].sum(), 0, atol=IDENTITY_ATOL)
    per_client = d.groupby("client").first()
    # client deviations average to zero within each therapist, every client counted once
    np.testing.assert_allclose(per_client.groupby("therapist")["alliance_between"].mean(), 0, atol=IDENTITY_ATOL)
    # the grand mean is the mean of client means, so therapist components average to zero over clients
    np.testing.assert_allclose(per_client["alliance_therapist"].mean(), 0, atol=IDENTITY_ATOL)
    np.testing.assert_array_equal(d["y"], -frame["outcome"])


def test_without_therapists_between_is_relative_to_the_grand_mean():
    frame, _ = small()
    d = decompose_alliance(frame.drop(columns="therapist"), outcome_lower_is_better=False)
    assert "alliance_therapist" not in d
    means = d.groupby("client")["alliance"].mean()
    between = d.groupby("client")["alliance_between"].first()
    np.testing.assert_allclose(between, means - means.mean(), atol=IDENTITY_ATOL)
    np.testing.assert_array_equal(d["y"], frame["outcome"])


def test_aligned_outcome_sign():
    np.testing.assert_array_equal(aligned_outcome([1.0, 2.0], True), [-1.0, -2.0])
    np.testing.assert_array_equal(aligned_outcome([1.0, 2.0], False), [1.0, 2.0])


def test_lag_spans_exactly_one_session():
    frame = pd.DataFrame({
        "client": ["a"] * 5 + ["b"] * 3, "session": [1, 2, 3, 5, 6, 1, 2, 3],
        "alliance": [10, 11, 12, 9, 10, 8, 9, 10], "outcome": [50, 48, 47, 45, 44, 60, 58, 57],
    })  # fmt: skip
    lagged = lag_frame(decompose_alliance(frame, outcome_lower_is_better=True))
    assert list(zip(lagged["client"], lagged["session"], strict=True)) == [
        ("a", 2), ("a", 3), ("a", 6), ("b", 2), ("b", 3)
    ]  # session 5 of "a" follows a missed session 4: no lag
    a6 = lagged[(lagged["client"] == "a") & (lagged["session"] == 6)].iloc[0]
    assert a6["outcome_lag"] == -45
    assert a6["alliance_within_lag"] == pytest.approx(9 - np.mean([10, 11, 12, 9, 10]))


def test_read_session_table_keeps_ids_as_text(tmp_path):
    path = tmp_path / "s.csv"
    path.write_text("client,session,alliance,outcome,therapist\n007,2,10,5,01\n007,1,11,6,01\n")
    frame = read_session_table(path)
    assert list(frame["client"]) == ["007", "007"] and list(frame["session"]) == [1, 2]
    assert frame["therapist"].iloc[0] == "01"


# --- mixed models -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bundled_fits():
    decomposed = decompose_alliance(read_session_table(BUNDLED), outcome_lower_is_better=True)
    return fit_session_models(decomposed)


@pytest.mark.parametrize(
    ("model", "term", "truth_key"),
    [
        ("lagged", "alliance_within_lag", "alliance_within_lag"),
        ("within_between", "alliance_between", "alliance_between"),
        ("within_between", "alliance_therapist", "alliance_therapist"),
        ("therapist", "alliance_between", "alliance_between"),
        ("therapist", "alliance_therapist", "alliance_therapist"),
    ],
)
def test_bundled_data_recover_the_true_effects(bundled_fits, model, term, truth_key):
    """The 95% CI of every alliance effect on the bundled data covers the value it was simulated with
    (reporting sign: positive = better)."""
    fit = bundled_fits[model]
    k = fit.terms.index(term)
    true = TRUTH["reported"][truth_key]
    assert fit.ci_lb[k] <= true <= fit.ci_ub[k], (model, term, fit.estimate[k], true)


def test_bundled_fits_converge_with_tight_gradients(bundled_fits):
    for fit in bundled_fits.values():
        assert fit.converged and fit.gradient <= sessions_models.GTOL_ACCEPT
        assert fit.iterations > 0
    assert bundled_fits["within_between"].random_slope  # the simulated slopes vary, so it is kept
    assert bundled_fits["lagged"].n_obs < bundled_fits["within_between"].n_obs  # first sessions have no lag


def test_small_data_recover_the_lagged_effect_within_three_se():
    frame, truth = small(seed=11, n_clients=120, n_therapists=12)
    fits = fit_session_models(decompose_alliance(frame, True))
    lag = fits["lagged"]
    k = lag.terms.index("alliance_within_lag")
    assert abs(lag.estimate[k] - truth["reported"]["alliance_within_lag"]) < 3 * lag.se[k]
    assert lag.coef("session") > 0  # clients improve; positive = better after sign alignment


def test_gls_reproduces_statsmodels_formula_fit_without_therapists():
    """Client-grouped random-intercept model: our GLS recomputation equals statsmodels' own estimate."""
    frame, _ = small()
    data = lag_frame(decompose_alliance(frame.drop(columns="therapist"), True))
    fit = fit_mixed_model(data, "lagged", sessions_models.TERMS["lagged"], nested=False, random_slope=False)
    ref = smf.mixedlm("y ~ alliance_within_lag + outcome_lag + session", data, groups="client").fit(
        reml=True, method=["lbfgs"]
    )
    np.testing.assert_allclose(fit.estimate, ref.fe_params.to_numpy(), rtol=1e-4)
    assert fit.n_therapists == 0 and set(fit.variances) == {"client", "residual"}


def test_slope_is_dropped_when_its_fit_fails(monkeypatch):
    frame, _ = small()
    data = decompose_alliance(frame, True)
    real = sessions_models._fit_once

    def fake(data, terms, nested, random_slope):
        out = list(real(data, terms, nested, random_slope))
        if random_slope:
            out[4] = False  # pretend the slope model did not converge
        return tuple(out)

    monkeypatch.setattr(sessions_models, "_fit_once", fake)
    fit = fit_mixed_model(data, "within_between", sessions_models.TERMS["within_between"], nested=True)
    assert not fit.random_slope
    assert any("slope dropped" in n for n in fit.notes)
    assert "client_session" not in fit.variances


def test_unconverged_intercept_model_raises(monkeypatch):
    frame, _ = small()
    data = decompose_alliance(frame, True)
    real = sessions_models._fit_once

    def fake(*args):
        out = list(real(*args))
        out[4] = False
        return tuple(out)

    monkeypatch.setattr(sessions_models, "_fit_once", fake)
    with pytest.raises(ConvergenceError, match="did not converge"):
        fit_mixed_model(data, "within_between", sessions_models.TERMS["within_between"], nested=True)


def test_tables(bundled_fits):
    table = mixed_models_table(bundled_fits)
    assert tuple(table.columns) == MIXED_MODEL_COLUMNS
    assert set(table["engine"]) == {"mixedlm"}
    assert set(table["model"]) == {"within_between", "lagged", "therapist"}
    assert "Intercept" not in set(table["term"])
    lag_terms = set(table.loc[table["model"] == "lagged", "term"])
    assert lag_terms == {"alliance_within", "outcome_lag", "session"}
    th = table[table["model"] == "therapist"].set_index("term")
    diff = th.loc["therapist_minus_between"]
    expected = th.loc["alliance_therapist", "estimate"] - th.loc["alliance_between", "estimate"]
    assert diff["estimate"] == pytest.approx(expected)
    assert (table["ci_lb"] < table["estimate"]).all() and (table["estimate"] < table["ci_ub"]).all()
    assert table["pval"].between(0, 1).all()
    var = variance_components_table(bundled_fits)
    wb = var[var["model"] == "within_between"].set_index("component")
    assert set(wb.index) == {"therapist", "client", "client_session", "residual"}
    np.testing.assert_allclose(wb["sd"] ** 2, wb["variance"])


def test_therapist_variance_on_the_boundary_is_refitted_at_zero():
    """Three therapists in one site: REML puts the therapist variance at zero, where BFGS stalls
    (the square-root parameterisation creeps towards zero); the fit is redone without it and then
    equals the client-grouped model."""
    frame, _ = simulate_sessions(21, n_sites=3, n_therapists=9, n_clients=90)
    site = decompose_alliance(frame, True).query("site == 's3'")
    terms = sessions_models.TERMS["within_between"]
    stalled = sessions_models._fit_once(site, terms, True, False)
    assert not stalled[4] and stalled[3]["therapist"] < sessions_models.ZERO_VARIANCE * stalled[3]["residual"]
    fit = fit_mixed_model(site, "within_between", terms, nested=True, random_slope=False)
    assert fit.variances["therapist"] == 0.0
    assert any("boundary" in n for n in fit.notes)
    flat = fit_mixed_model(site, "within_between", terms, nested=False, random_slope=False)
    np.testing.assert_allclose(fit.estimate, flat.estimate, rtol=1e-12)
    assert fit.n_therapists == 3
