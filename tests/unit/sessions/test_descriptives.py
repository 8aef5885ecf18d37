"""Descriptives (with the client-level alliance distribution) and the client-level early-alliance analysis."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from alliancemeta.pipeline.sessions import (
    CLIENT_LEVEL_COLUMNS,
    DESCRIPTIVE_COLUMNS,
    client_level_table,
    descriptives_table,
)
from alliancemeta.sessions.data import read_session_table
from alliancemeta.sessions.descriptives import (
    EARLY_SESSIONS,
    client_change,
    describe,
    fisher_correlation,
    partial_correlation,
)
from alliancemeta.sessions.synthetic import simulate_sessions

ROOT = Path(__file__).resolve().parents[3]
BUNDLED = ROOT / "data" / "raw" / "alliance_sessions_synthetic.csv"
TRUTH = json.loads((ROOT / "data" / "raw" / "alliance_sessions_synthetic.truth.json").read_text())
Z975 = 1.959963984540054


@pytest.fixture(scope="module")
def bundled():
    return read_session_table(BUNDLED)


# --- descriptives -------------------------------------------------------------------------------


def test_descriptives_sections_and_counts(bundled):
    table = descriptives_table(bundled, ["gender", "format"], alliance_max=15)
    assert tuple(table.columns) == DESCRIPTIVE_COLUMNS
    overall = table[table["section"] == "overall"].iloc[0]
    counts = TRUTH["counts"]
    assert (overall["n_clients"], overall["n_therapists"], overall["n_sites"], overall["n_sessions"]) == (
        counts["clients"], counts["therapists"], counts["sites"], counts["sessions"],
    )  # fmt: skip
    assert overall["alliance_mean"] == pytest.approx(bundled["alliance"].mean())  # blank cells left out
    assert overall["outcome_sd"] == pytest.approx(bundled["outcome"].std(ddof=1))
    means = bundled.groupby("client")["alliance"].mean()
    assert overall["alliance_client_median"] == pytest.approx(means.median())
    assert overall["alliance_client_q25"] == pytest.approx(means.quantile(0.25))
    assert overall["alliance_client_q75"] == pytest.approx(means.quantile(0.75))
    per_session = table[table["section"] == "session"]
    assert per_session["n_sessions"].sum() == len(bundled)
    for group in ("gender", "format"):
        rows = table[(table["section"] == "group") & (table["group"] == group)]
        assert rows["n_clients"].sum() == overall["n_clients"]  # levels partition the clients
    women = table[(table["group"] == "gender") & (table["level"] == "female")].iloc[0]
    female = bundled.groupby("client")["gender"].first().eq("female")
    assert women["alliance_client_median"] == pytest.approx(means[female].median())
    assert descriptives_table(bundled, [])["alliance_ceiling_share"].isna().all()  # no alliance_max: empty


def test_ceiling_share_counts_clients_at_the_maximum():
    frame = pd.DataFrame({"client": ["a", "a", "b", "b", "c", "d"], "session": [1, 2, 1, 2, 1, 1],
                          "alliance": [5.0, 5.0, 5.0, 4.5, 5.0, np.nan], "outcome": 1.0})  # fmt: skip
    row = describe(frame, alliance_max=5.0)
    assert row["alliance_ceiling_share"] == pytest.approx(2 / 3)  # a and c; d has no rating
    assert row["alliance_client_median"] == pytest.approx(5.0)
    assert np.isnan(describe(frame)["alliance_ceiling_share"])


def test_descriptives_without_optional_columns():
    frame = pd.DataFrame({"client": ["a", "a", "b", "b"], "session": [1, 2, 1, 2],
                          "alliance": [1.0, 2.0, 3.0, 4.0], "outcome": [5.0, 4.0, 6.0, 5.0]})  # fmt: skip
    overall = descriptives_table(frame, []).iloc[0]
    assert np.isnan(overall["n_therapists"]) and np.isnan(overall["alliance_bond_mean"])
    assert overall["sessions_per_client_mean"] == 2


# --- correlations -------------------------------------------------------------------------------


def test_fisher_correlation_matches_scipy():
    rng = np.random.default_rng(5)
    x = rng.normal(size=50)
    y = 0.4 * x + rng.normal(size=50)
    c = fisher_correlation(x, y)
    r, _ = stats.pearsonr(x, y)
    assert c.r == pytest.approx(r) and c.q == 0
    assert c.yi == pytest.approx(np.arctanh(r)) and c.vi == pytest.approx(1 / 47)
    assert c.ci_lb == pytest.approx(np.tanh(np.arctanh(r) - Z975 / np.sqrt(47)))
    assert c.pval == pytest.approx(2 * stats.norm.sf(np.arctanh(r) * np.sqrt(47)))
    with pytest.raises(ValueError, match="n >= 4"):
        fisher_correlation(x[:3], y[:3])


def test_partial_correlation_is_the_regression_t_test():
    """r_xy.z is the correlation of residuals; its t statistic r sqrt((n-2-q)/(1-r^2)) equals the t of x in the
    regression of y on x and z (the classical identity), and its Fisher variance is 1/(n - 3 - q)."""
    rng = np.random.default_rng(7)
    n = 60
    z = rng.normal(size=(n, 2))
    x = z @ [0.5, -0.3] + rng.normal(size=n)
    y = 0.3 * x + z @ [1.0, 0.2] + rng.normal(size=n)
    c = partial_correlation(x, y, z)
    assert c.q == 2 and c.vi == pytest.approx(1 / (n - 5))
    X = np.column_stack([np.ones(n), x, z])
    beta, rss, *_ = np.linalg.lstsq(X, y, rcond=None)
    se = np.sqrt(rss[0] / (n - 4) * np.linalg.inv(X.T @ X)[1, 1])
    t_partial = c.r * np.sqrt((n - 2 - 2) / (1 - c.r**2))
    assert t_partial == pytest.approx(beta[1] / se, rel=1e-10)


@given(st.integers(0, 10_000))
@settings(max_examples=25, deadline=None)
def test_partial_correlation_invariances(seed):
    rng = np.random.default_rng(seed)
    n = 20
    x, y, z = rng.normal(size=n), rng.normal(size=n), rng.normal(size=(n, 1))
    c = partial_correlation(x, y, z)
    assert -1 <= c.r <= 1 and c.ci_lb <= c.r <= c.ci_ub
    assert partial_correlation(y, x, z).r == pytest.approx(c.r, abs=1e-12)  # symmetric
    assert partial_correlation(3 * x + 2, -y, z).r == pytest.approx(-c.r, abs=1e-12)  # affine in x, sign in y
    assert partial_correlation(x, y + 5 * z[:, 0], z).r == pytest.approx(c.r, abs=1e-10)  # z partialled out


# --- client level -------------------------------------------------------------------------------


def test_client_change_baseline_precedes_the_alliance():
    frame = pd.DataFrame({
        "client": ["a"] * 5 + ["b"] * 5 + ["c"] * 3,
        "session": [1, 2, 3, 4, 5] * 2 + [1, 2, 3],
        "alliance": [np.nan, 10, 11, 12, 12, 9, 9, 9, 9, 9, 8, 8, 8],
        "outcome": [40, 38, 36, 30, 28, np.nan, 50, 49, 47, 45, 60, 59, 58],
    })  # fmt: skip
    change = client_change(frame, outcome_lower_is_better=True)
    assert list(change.index) == ["a"]  # b has no outcome at or before its first rating; c none after session 3
    a = change.loc["a"]
    assert a["baseline"] == -40 and a["baseline_session"] == 1  # before the first rating (session 2)
    assert a["post"] == -28 and a["last_session"] == 5
    assert a["early_alliance"] == pytest.approx(10.5)  # sessions 2 and 3 (session 1 blank)
    bundled_change = client_change(read_session_table(BUNDLED), True)
    assert (bundled_change["last_session"] > EARLY_SESSIONS).all()


def test_client_level_rows_sign_and_own_residualisation():
    frame, _ = simulate_sessions(4, n_sites=2, n_therapists=6, n_clients=90)
    low = client_level_table(frame, True, ["format"], 0.95, covariates=["age"])
    assert tuple(low.columns) == CLIENT_LEVEL_COLUMNS
    high = client_level_table(frame, False, ["format"], 0.95, covariates=["age"])
    np.testing.assert_allclose(low["r"], -high["r"])  # the convention only flips the sign
    overall = low.iloc[0]
    assert (overall["group"], overall["level"], overall["q"]) == ("all", "all", 2)  # baseline and age
    assert overall["vi"] == pytest.approx(1 / (overall["n"] - 5))
    assert set(low.loc[low["group"] == "site", "level"]) == {"s1", "s2"}
    # each subset is residualised on its own: the site row equals the overall analysis of that site alone
    s1 = client_level_table(frame[frame["site"] == "s1"], True, [], 0.95, covariates=["age"]).iloc[0]
    row = low[(low["group"] == "site") & (low["level"] == "s1")].iloc[0]
    assert row["r"] == pytest.approx(s1["r"], rel=1e-12) and row["n"] == s1["n"]
