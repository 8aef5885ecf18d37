"""Descriptives, rupture-repair detection and the client-level early-alliance correlation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from alliancemeta.pipeline.sessions import (
    CLIENT_LEVEL_COLUMNS,
    DESCRIPTIVE_COLUMNS,
    RUPTURE_COLUMNS,
    client_level_table,
    descriptives_table,
    ruptures_table,
)
from alliancemeta.sessions.data import read_session_table
from alliancemeta.sessions.descriptives import EARLY_SESSIONS, client_change, fisher_correlation
from alliancemeta.sessions.ruptures import MAD_TO_SD, detect_ruptures, fluctuation_sd
from alliancemeta.sessions.synthetic import simulate_sessions

ROOT = Path(__file__).resolve().parents[3]
BUNDLED = ROOT / "data" / "raw" / "alliance_sessions_synthetic.csv"
TRUTH = json.loads((ROOT / "data" / "raw" / "alliance_sessions_synthetic.truth.json").read_text())
#: Share of the simulated, observed rupture episodes that the rule must find at the simulated
#: session.  The dips are 3-5 alliance points against a session-to-session SD of about 1.1, so a
#: miss needs a rare noise excursion at the session before the dip; 0.8 leaves room for those.
MIN_SENSITIVITY = 0.8


@pytest.fixture(scope="module")
def bundled():
    return read_session_table(BUNDLED)


# --- descriptives -------------------------------------------------------------------------------


def test_descriptives_sections_and_counts(bundled):
    table = descriptives_table(bundled, ["gender", "format"])
    assert tuple(table.columns) == DESCRIPTIVE_COLUMNS
    overall = table[table["section"] == "overall"].iloc[0]
    counts = TRUTH["counts"]
    assert (overall["n_clients"], overall["n_therapists"], overall["n_sites"], overall["n_sessions"]) == (
        counts["clients"], counts["therapists"], counts["sites"], counts["sessions"],
    )  # fmt: skip
    assert overall["alliance_mean"] == pytest.approx(bundled["alliance"].mean())
    assert overall["outcome_sd"] == pytest.approx(bundled["outcome"].std(ddof=1))
    per_session = table[table["section"] == "session"]
    assert per_session["n_sessions"].sum() == len(bundled)
    assert list(per_session["session"]) == sorted(bundled["session"].unique())
    for group in ("gender", "format"):
        rows = table[(table["section"] == "group") & (table["group"] == group)]
        assert rows["n_clients"].sum() == overall["n_clients"]  # levels partition the clients
    assert overall["alliance_goal_mean"] == pytest.approx(bundled["alliance_goal"].mean())


def test_descriptives_without_optional_columns():
    frame = pd.DataFrame({"client": ["a", "a", "b", "b"], "session": [1, 2, 1, 2],
                          "alliance": [1.0, 2.0, 3.0, 4.0], "outcome": [5.0, 4.0, 6.0, 5.0]})  # fmt: skip
    table = descriptives_table(frame, [])
    overall = table.iloc[0]
    assert np.isnan(overall["n_therapists"]) and np.isnan(overall["alliance_bond_mean"])
    assert overall["sessions_per_client_mean"] == 2


# --- ruptures -----------------------------------------------------------------------------------


def _client(name, alliance):
    return pd.DataFrame({"client": name, "session": np.arange(1, len(alliance) + 1), "alliance": alliance,
                         "outcome": 50.0})  # fmt: skip


def test_fluctuation_sd_is_the_mad_of_changes():
    sessions = np.arange(1, 8)
    alliance = np.array([10, 11, 10, 12, 11, 11.5, 10.0])
    changes = np.diff(alliance)
    expected = MAD_TO_SD * np.median(np.abs(changes - np.median(changes)))
    assert fluctuation_sd(sessions, alliance) == pytest.approx(expected)
    assert np.isnan(fluctuation_sd(sessions[:4], alliance[:4]))  # three changes are too few
    gap = np.array([1, 2, 4, 5, 7, 8])
    assert np.isnan(fluctuation_sd(gap, alliance[:6]))  # only consecutive sessions count


def test_rupture_statuses():
    base = [10, 10.5, 10, 10.5, 10, 10.5, 10]
    frame = pd.concat([
        _client("repaired", [*base[:5], 6.0, 8.0, 10.0, 10.5, 10.0]),  # dip at 6, back at 8
        _client("unrepaired", [*base[:5], 6.0, 6.5, 6.0, 6.5, 6.0]),  # stays low for the whole window
        _client("censored", [*base[:6], 6.0, 6.5]),  # record ends inside the window
        _client("stable", base * 2),
    ])  # fmt: skip
    episodes, n_clients = detect_ruptures(frame)
    assert n_clients == 4
    found = {(e.client, e.session): e for e in episodes}
    assert set(found) == {("repaired", 6), ("unrepaired", 6), ("censored", 7)}
    assert found["repaired", 6].status == "repaired" and found["repaired", 6].repair_session == 8
    assert found["unrepaired", 6].status == "unrepaired" and found["unrepaired", 6].repair_session is None
    assert found["censored", 7].status == "censored"
    assert found["repaired", 6].drop == pytest.approx(4.0)


def test_stricter_threshold_finds_fewer(bundled):
    loose, _ = detect_ruptures(bundled, threshold=1.5)
    strict, _ = detect_ruptures(bundled, threshold=2.5)
    assert {(e.client, e.session) for e in strict} < {(e.client, e.session) for e in loose}


def test_rule_finds_the_simulated_ruptures(bundled):
    episodes, _ = detect_ruptures(bundled)
    found = {(e.client, e.session) for e in episodes}
    simulated = {(e["client"], e["session"]) for e in TRUTH["rupture_episodes"] if e["observed"]}
    sensitivity = len(simulated & found) / len(simulated)
    assert sensitivity >= MIN_SENSITIVITY
    assert all(e.drop >= 1.5 * e.fluctuation_sd for e in episodes)


def test_ruptures_table_summary(bundled):
    table = ruptures_table(bundled)
    assert tuple(table.columns) == RUPTURE_COLUMNS
    episodes, summary = table[table["kind"] == "episode"], table[table["kind"] == "summary"].iloc[0]
    assert summary["n_episodes"] == len(episodes)
    assert summary["n_repaired"] + summary["n_unrepaired"] + summary["n_censored"] == len(episodes)
    assert summary["n_clients_with_episode"] == episodes["client"].nunique()
    repaired = episodes[episodes["status"] == "repaired"]
    assert (repaired["sessions_to_repair"].between(1, 3)).all()
    assert episodes["therapist"].notna().all()


# --- client level -------------------------------------------------------------------------------


def test_fisher_correlation_matches_scipy():
    rng = np.random.default_rng(5)
    x = rng.normal(size=50)
    y = 0.4 * x + rng.normal(size=50)
    c = fisher_correlation(x, y)
    r, _ = stats.pearsonr(x, y)
    assert c.r == pytest.approx(r)
    assert c.yi == pytest.approx(np.arctanh(r)) and c.vi == pytest.approx(1 / 47)
    assert c.ci_lb == pytest.approx(np.tanh(np.arctanh(r) - 1.959963984540054 / np.sqrt(47)))
    assert c.pval == pytest.approx(2 * stats.norm.sf(np.arctanh(r) * np.sqrt(47)))
    with pytest.raises(ValueError, match="n >= 4"):
        fisher_correlation(x[:3], y[:3])


def test_client_change_definitions(bundled):
    change = client_change(bundled, outcome_lower_is_better=True)
    assert (change["last_session"] > EARLY_SESSIONS).all()
    early = bundled[bundled["session"] <= EARLY_SESSIONS].groupby("client")["alliance"].mean()
    np.testing.assert_allclose(change["early_alliance"], early.reindex(change.index))
    # residualised change is uncorrelated with the starting level and has mean zero
    assert abs(np.corrcoef(change["pre"], change["residual_change"])[0, 1]) < 1e-10
    assert abs(change["residual_change"].mean()) < 1e-9


def test_client_level_sign_and_groups():
    frame, _ = simulate_sessions(4, n_sites=2, n_therapists=6, n_clients=80)
    better_low = client_level_table(frame, True, ["format"], 0.95)
    assert tuple(better_low.columns) == CLIENT_LEVEL_COLUMNS
    better_high = client_level_table(frame, False, ["format"], 0.95)
    np.testing.assert_allclose(better_low["r"], -better_high["r"])  # the convention only flips the sign
    overall = better_low.iloc[0]
    assert (overall["group"], overall["level"]) == ("all", "all")
    assert better_low.loc[better_low["group"] == "format", "n"].sum() == overall["n"]
