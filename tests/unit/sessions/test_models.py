"""Session-level data preparation and the REML mixed models built on the lme4-parity engine."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alliancemeta.core.errors import InputError
from alliancemeta.pipeline.sessions import MIXED_MODEL_COLUMNS, mixed_models_table, variance_components_table
from alliancemeta.sessions import models as sessions_models
from alliancemeta.sessions.data import (
    add_covariates,
    aligned_outcome,
    case_spread,
    decompose_alliance,
    lag_frame,
    read_session_table,
    split_frame,
)
from alliancemeta.sessions.lmm import RandomTerm, fit_lmm
from alliancemeta.sessions.models import SessionModelError, fit_model, fit_session_models, model_specs
from alliancemeta.sessions.synthetic import simulate_sessions

ROOT = Path(__file__).resolve().parents[3]
BUNDLED = ROOT / "data" / "raw" / "alliance_sessions_synthetic.csv"
TRUTH = json.loads((ROOT / "data" / "raw" / "alliance_sessions_synthetic.truth.json").read_text())
IDENTITY_ATOL = 1e-12  # the decomposition is exact up to round-off on values of about 10
#: The bundled data's estimates must lie within this many standard errors of the value they were simulated with
#: (the lagged and split estimates carry known biases of about one SE: person-mean centring in short series and
#: the spread of noisy client means; see sessions.models).
TRUTH_SE = 3.0


def small(seed=3, n_clients=90, n_therapists=9, n_sites=3):
    return simulate_sessions(seed, n_sites=n_sites, n_therapists=n_therapists, n_clients=n_clients)


@pytest.fixture(scope="module")
def small_decomposed():
    frame, _ = small()
    return decompose_alliance(frame, outcome_lower_is_better=True)


# --- data preparation ---------------------------------------------------------------------------


def test_decomposition_adds_up_over_observed_cells(small_decomposed):
    d = small_decomposed
    assert d["alliance"].isna().any()  # the generator leaves blank cells
    client_means = d.groupby("client")["alliance"].mean()
    grand = client_means.mean()
    parts = grand + d["alliance_therapist"] + d["alliance_between"] + d["alliance_within"]
    observed = d["alliance"].notna()
    np.testing.assert_allclose(parts[observed], d.loc[observed, "alliance"], atol=IDENTITY_ATOL)
    assert d.loc[~observed, "alliance_within"].isna().all()  # a blank cell has no within-client deviation
    assert d.loc[~observed, "alliance_between"].notna().all()  # but its client still has a mean
    np.testing.assert_allclose(d.groupby("client")["alliance_within"].sum(), 0, atol=IDENTITY_ATOL)
    per_client = d.groupby("client").first()
    np.testing.assert_allclose(per_client.groupby("therapist")["alliance_between"].mean(), 0, atol=IDENTITY_ATOL)
    np.testing.assert_allclose(per_client["alliance_therapist"].mean(), 0, atol=IDENTITY_ATOL)
    np.testing.assert_array_equal(d["y"], -d["outcome"])
    assert d["session_c"].mean() == pytest.approx(0.0, abs=1e-12)
    for s in ("alliance_goal", "alliance_task", "alliance_bond"):
        total = d[f"{s}_within"] + d[f"{s}_between"] + d[f"{s}_therapist"] + d.groupby("client")[s].mean().mean()
        np.testing.assert_allclose(total[d[s].notna()], d.loc[d[s].notna(), s], atol=IDENTITY_ATOL)


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


def test_lag_spans_exactly_one_session_and_respects_blank_cells():
    frame = pd.DataFrame({
        "client": ["a"] * 6 + ["b"] * 3, "session": [1, 2, 3, 5, 6, 7, 1, 2, 3],
        "alliance": [10, 11, 12, 9, np.nan, 10, 8, 9, 10], "outcome": [50, 48, 47, 45, 44, np.nan, 60, 58, 57],
    })  # fmt: skip
    lagged = lag_frame(decompose_alliance(frame, outcome_lower_is_better=True))
    assert list(zip(lagged["client"], lagged["session"], strict=True)) == [
        ("a", 2), ("a", 3), ("a", 6), ("a", 7), ("b", 2), ("b", 3)
    ]  # session 5 of "a" follows a missed session 4: no lag
    a6 = lagged[(lagged["client"] == "a") & (lagged["session"] == 6)].iloc[0]
    a_mean_y = -np.mean([50, 48, 47, 45, 44])
    assert a6["outcome_lag"] == pytest.approx(-45 - a_mean_y)  # person-mean centred, aligned
    assert a6["alliance_within_lag"] == pytest.approx(9 - np.mean([10, 11, 12, 9, 10]))
    a7 = lagged[(lagged["client"] == "a") & (lagged["session"] == 7)].iloc[0]
    assert np.isnan(a7["alliance_within_lag"])  # the previous alliance cell is blank
    assert a7["outcome_lag"] == pytest.approx(-44 - a_mean_y)


def test_read_session_table_keeps_ids_as_text_and_blanks(tmp_path):
    path = tmp_path / "s.csv"
    path.write_text("client,session,alliance,outcome,therapist\n007,2,,5,01\n007,1,11,6,01\n")
    frame = read_session_table(path)
    assert list(frame["client"]) == ["007", "007"] and list(frame["session"]) == [1, 2]
    assert frame["therapist"].iloc[0] == "01" and np.isnan(frame["alliance"].iloc[1])


@given(st.lists(st.floats(1, 5, allow_nan=False), min_size=2, max_size=4))
@settings(max_examples=40, deadline=None)
def test_case_spread_definition(levels):
    got = case_spread(np.array(levels))
    expected = abs(levels[0] - levels[1]) if len(levels) == 2 else np.std(levels, ddof=1)
    assert got == pytest.approx(expected, abs=1e-12)
    assert got >= 0


def test_split_frame_keeps_couples_and_families_only():
    frame = pd.DataFrame({
        "client": ["a", "a", "b", "b", "c", "c", "d", "d", "e", "e", "f", "f"],
        "case": ["k1", "k1", "k1", "k1", "k2", "k2", "k2", "k2", "k2", "k2", "k3", "k3"],
        "session": [1, 2] * 6,
        "alliance": [10, 12, 8, 8, 9, 9, 11, 11, 13, 13, 7, 9], "outcome": 50.0,
    })  # fmt: skip
    out = split_frame(decompose_alliance(frame, True))
    assert set(out["client"]) == set("abcde")  # f is alone in its case
    spread = out.groupby("case")["alliance_split"].first()
    assert spread["k1"] == pytest.approx(abs(11 - 8))
    assert spread["k2"] == pytest.approx(np.std([9, 11, 13], ddof=1))
    assert (out["n_members"] == out["case"].map({"k1": 2, "k2": 3})).all()
    with pytest.raises(InputError, match="case"):
        split_frame(decompose_alliance(frame.drop(columns="case"), True))


def test_covariates_numeric_and_treatment_coded():
    frame = pd.DataFrame({"client": ["a", "a", "b", "c", "c"], "session": [1, 2, 1, 1, 2], "alliance": 1.0,
                          "outcome": 1.0, "age": [30, 30, 41, np.nan, np.nan],
                          "format": ["group", "group", "couple", "individual", "individual"]})  # fmt: skip
    out, cov = add_covariates(frame, ["age", "format"])
    assert cov.terms == ("age", "format[T.group]", "format[T.individual]")
    assert cov.reference == {"format": "couple"} and cov.numeric == ("age",)
    np.testing.assert_array_equal(out["format[T.group]"], [1, 1, 0, 0, 0])
    np.testing.assert_array_equal(out["format[T.individual]"], [0, 0, 0, 1, 1])
    assert out["age"].isna().sum() == 2
    with pytest.raises(InputError, match="varies within client 'a'"):
        add_covariates(frame.assign(age=[30, 31, 41, 50, 50]), ["age"])
    with pytest.raises(InputError, match="'gender' named in the config"):
        add_covariates(frame, ["gender"])


# --- model specifications -----------------------------------------------------------------------


def test_specifications_follow_the_settings(small_decomposed):
    d, cov = add_covariates(small_decomposed, ["age", "gender"])
    specs = model_specs(d, covariates=cov.terms)
    wb = specs["within_between"]
    assert wb.fixed == ("alliance_within", "alliance_between", "alliance_therapist", "session_c", "age",
                        "gender[T.male]")  # fmt: skip
    assert wb.client == RandomTerm("client", ("session_c", "alliance_within"))
    assert wb.upper == RandomTerm("therapist")
    assert specs["lagged"].client == RandomTerm("client", ("session_c", "alliance_within_lag"))
    assert specs["therapist"].client == RandomTerm("client", ("session_c",))
    assert specs["components"].client.slopes == ("session_c", "alliance_goal_within", "alliance_task_within",
                                                  "alliance_bond_within")  # fmt: skip
    assert specs["split"].upper == RandomTerm("case") and "alliance_split" in specs["split"].fixed
    plain = model_specs(d, detrend=False, random_slopes=False)
    assert plain["lagged"].client == RandomTerm("client")
    assert plain["within_between"].client == RandomTerm("client", ("session_c",))
    assert plain["split"].client == RandomTerm("client", ("session_c",))


def test_models_the_data_do_not_support(small_decomposed):
    bare = small_decomposed.drop(columns=["case", "alliance_goal", "alliance_task", "alliance_bond"])
    specs = model_specs(bare.drop(columns="therapist").pipe(lambda d: decompose_alliance(d, True)))
    assert {m for m, s in specs.items() if isinstance(s, sessions_models.Unavailable)} == {
        "therapist", "components", "split"}  # fmt: skip
    few = small_decomposed[small_decomposed["therapist"].isin(["t1", "t2", "t3"])]
    fits, _ = fit_session_models(decompose_alliance(few, True), random_slopes=False)
    th = fits["therapist"]
    assert th.fit is None and "3 therapist(s)" in th.error
    rows = mixed_models_table({"therapist": th})
    assert list(rows["term"]) == ["alliance_therapist", "alliance_between", "session", "therapist_minus_between"]
    assert rows["estimate"].isna().all() and (rows["note"] == th.error).all()


def test_complete_cases_and_engine_equivalence(small_decomposed):
    spec = model_specs(small_decomposed)["within_between"]
    result = fit_model(spec)
    complete = small_decomposed.dropna(subset=list(spec.columns))
    assert result.n_obs == len(complete) < result.n_available == len(small_decomposed)
    direct = fit_lmm(complete, "y", spec.fixed, spec.client, spec.upper, label="direct")
    np.testing.assert_array_equal(result.fit.estimate, direct.estimate)
    assert any("rows complete" in n for n in result.notes)


def test_required_model_failure_names_the_model(small_decomposed):
    spec = model_specs(small_decomposed)["lagged"]
    broken = sessions_models.ModelSpec("lagged", spec.data.assign(outcome_lag=1.0), spec.fixed, spec.client, spec.upper)
    with pytest.raises(SessionModelError, match=r"'lagged'.*constant.*random_slopes: false"):
        fit_model(broken)
    optional = sessions_models.ModelSpec("split", broken.data, broken.fixed, broken.client, broken.upper)
    result = fit_model(optional)
    assert result.fit is None and "constant" in result.error


def test_variance_inflation_is_one_over_one_minus_r2():
    rng = np.random.default_rng(4)
    x1 = rng.normal(size=200)
    x2 = 0.8 * x1 + 0.6 * rng.normal(size=200)
    x3 = rng.normal(size=200)
    frame = pd.DataFrame({"a": x1, "b": x2, "c": x3})
    vif = sessions_models.variance_inflation(frame, ["a", "b", "c"])
    for col in "abc":
        others = np.column_stack([np.ones(200), frame.drop(columns=col).to_numpy()])
        fitted = others @ np.linalg.lstsq(others, frame[col].to_numpy(), rcond=None)[0]
        r2 = 1 - np.sum((frame[col] - fitted) ** 2) / np.sum((frame[col] - frame[col].mean()) ** 2)
        assert vif[col] == pytest.approx(1 / (1 - r2), rel=1e-10)


# --- the bundled data ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bundled_fits():
    decomposed = decompose_alliance(read_session_table(BUNDLED), outcome_lower_is_better=True)
    d, cov = add_covariates(decomposed, ["age"])
    return fit_session_models(d, covariates=cov.terms)[0]


@pytest.mark.parametrize(
    ("model", "term", "truth_key"),
    [
        ("lagged", "alliance_within_lag", "alliance_within_lag"),
        ("within_between", "alliance_between", "alliance_between"),
        ("within_between", "alliance_therapist", "alliance_therapist"),
        ("therapist", "alliance_therapist", "alliance_therapist"),
        ("within_between", "session_c", "session"),
        ("split", "alliance_split", "alliance_split"),
    ],
)
def test_bundled_data_recover_the_true_effects(bundled_fits, model, term, truth_key):
    """Every alliance effect on the bundled data lies within TRUTH_SE standard errors of the value it was
    simulated with (reporting sign: positive = better)."""
    fit = bundled_fits[model].fit
    k = fit.terms.index(term)
    true = TRUTH["reported"][truth_key]
    assert abs(fit.estimate[k] - true) < TRUTH_SE * fit.se[k], (model, term, fit.estimate[k], true)


def test_bundled_tables(bundled_fits):
    assert set(bundled_fits) == {"within_between", "lagged", "therapist", "components", "split"}
    assert all(r.fit is not None and r.fit.converged for r in bundled_fits.values())
    table = mixed_models_table(bundled_fits)
    assert tuple(table.columns) == MIXED_MODEL_COLUMNS
    assert "(Intercept)" not in set(table["term"]) and "session_c" not in set(table["term"])
    assert set(table.loc[table["model"] == "lagged", "term"]) == {"alliance_within", "outcome_lag", "session", "age"}
    th = table[table["model"] == "therapist"].set_index("term")
    diff = th.loc["therapist_minus_between"]
    assert diff["estimate"] == pytest.approx(th.loc["alliance_therapist", "estimate"]
                                             - th.loc["alliance_between", "estimate"])  # fmt: skip
    assert (table["ci_lb"] < table["estimate"]).all() and (table["estimate"] < table["ci_ub"]).all()
    assert table["pval"].between(0, 1).all() and (table["df"] > 1).all()
    comp = table[table["model"] == "components"]
    assert comp.loc[comp["term"].str.startswith("alliance_"), "note"].str.startswith("VIF ").all()
    var = variance_components_table(bundled_fits)
    wb = var[(var["model"] == "within_between") & var["term2"].isna()].set_index(["group", "term"], drop=False)
    np.testing.assert_allclose(wb["sd"] ** 2, wb["variance"])
    assert set(wb["group"]) == {"client", "therapist", "residual"}
    split = var[var["model"] == "split"]
    assert set(split["group"]) == {"client", "case", "residual"} and (split["n_cases"] >= 10).all()
