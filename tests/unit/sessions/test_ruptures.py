"""Reliable-change rupture-repair episodes, their regression-to-the-mean null and their outcome."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from alliancemeta.core.errors import ModelError
from alliancemeta.pipeline.sessions import RUPTURE_COLUMNS, RUPTURE_OUTCOME_COLUMNS, ruptures_table
from alliancemeta.sessions.data import read_session_table
from alliancemeta.sessions.ruptures import (
    RCI_Z,
    RuptureRule,
    client_outcomes,
    detect_ruptures,
    rtm_null,
    rupture_outcome,
    rupture_rule,
    scan_counts,
)
from alliancemeta.sessions.synthetic import SessionSimulationParameters, simulate_sessions

ROOT = Path(__file__).resolve().parents[3]
BUNDLED = ROOT / "data" / "raw" / "alliance_sessions_synthetic.csv"
TRUTH = json.loads((ROOT / "data" / "raw" / "alliance_sessions_synthetic.truth.json").read_text())
#: Share of the simulated rupture dips (3-5 alliance points) with ratings at the dip and the session before it that
#: the rule must find at the simulated session.  The reliable-change threshold is about 1.6 points, so a miss needs
#: the session before the dip to be low already or an earlier (noise) episode whose repair window covers the dip.
MIN_SENSITIVITY = 0.8


@pytest.fixture(scope="module")
def bundled():
    return read_session_table(BUNDLED)


def _client(name, alliance, outcome=50.0):
    return pd.DataFrame({"client": name, "session": np.arange(1, len(alliance) + 1), "alliance": alliance,
                         "outcome": outcome})  # fmt: skip


def test_threshold_is_jacobson_truax():
    rule = RuptureRule(0.85, 3, sd=2.0)
    assert rule.se_diff == pytest.approx(2.0 * np.sqrt(2 * 0.15))
    assert rule.threshold == pytest.approx(RCI_Z * 2.0 * np.sqrt(0.3))
    frame = pd.concat([_client("a", [10.0, 11, 12]), _client("b", [12.0, 12, 12]), _client("c", [np.nan, 8.0, 9])])
    assert rupture_rule(frame, 0.9, 2).sd == pytest.approx(np.std([10, 12, 8], ddof=1))  # first ratings
    with pytest.raises(ModelError, match="reliability"):
        rupture_rule(frame, 1.0, 3)


def test_rupture_statuses():
    rule = RuptureRule(0.85, 3, sd=2.0)  # threshold 2.147
    base = [10, 10.5, 10, 10.5, 10]
    frame = pd.concat([
        _client("repaired", [*base, 6.0, 7.0, 9.5, 10.5, 10.0]),  # dip at 6; 9.5 is a reliable rise, >= 10 - 2.147
        _client("not_back", [*base, 6.0, 7.0, 7.5, 7.9, 7.5, 7.5]),  # rises reliably (7.9 - 6 < 2.147: no)
        _client("censored", [*base, 10.5, 6.0, 6.5]),  # record ends inside the window
        _client("gap", [*base, 6.0, np.nan, np.nan, np.nan, 10.0]),  # no rating inside the window
        _client("stable", base * 2),
    ])  # fmt: skip
    episodes, n_clients = detect_ruptures(frame, rule)
    assert n_clients == 5
    found = {e.client: e for e in episodes}
    assert set(found) == {"repaired", "not_back", "censored", "gap"}
    assert found["repaired"].status == "repaired" and found["repaired"].repair_session == 8
    assert found["not_back"].status == "unrepaired"
    assert found["censored"].status == "censored" and found["censored"].session == 7
    assert found["gap"].status == "unrepaired"
    assert found["repaired"].rci == pytest.approx(4.0 / rule.se_diff)


def test_vectorised_scan_equals_the_episode_rule(bundled):
    """scan_counts (used by the null) gives, client by client, the counts of detect_ruptures."""
    rule = rupture_rule(bundled, 0.85, 3)
    episodes, _ = detect_ruptures(bundled, rule)
    rated = bundled[bundled["alliance"].notna()]
    clients = sorted(rated["client"].unique())
    first = rated.groupby("client")["session"].min()
    span = int((rated.groupby("client")["session"].max() - first).max()) + 1
    values = np.full((len(clients), span), np.nan)
    last = np.zeros(len(clients), dtype=int)
    for i, c in enumerate(clients):
        part = rated[rated["client"] == c]
        cols = part["session"].to_numpy() - first[c]
        values[i, cols] = part["alliance"].to_numpy()
        last[i] = cols.max()
    counts = scan_counts(values, last, rule.threshold, rule.repair_within)
    expected = np.zeros_like(counts)
    for e in episodes:
        i = clients.index(e.client)
        expected[i, 0] += 1
        expected[i, {"repaired": 1, "unrepaired": 2, "censored": 3}[e.status]] += 1
    np.testing.assert_array_equal(counts, expected)


def test_rule_finds_the_simulated_ruptures(bundled):
    rule = rupture_rule(bundled, 0.85, 3)
    episodes, _ = detect_ruptures(bundled, rule)
    found = {(e.client, e.session) for e in episodes}
    with_rating = bundled[bundled["alliance"].notna()]
    rated = set(zip(with_rating["client"], with_rating["session"], strict=True))
    # detectable: the dip and the session before it have ratings (a blank cell or a missed session hides a drop)
    simulated = {(e["client"], e["session"]) for e in TRUTH["rupture_episodes"]
                 if (e["client"], e["session"]) in rated and (e["client"], e["session"] - 1) in rated}  # fmt: skip
    assert len(simulated) > 60
    assert len(simulated & found) / len(simulated) >= MIN_SENSITIVITY
    assert all(e.drop > rule.threshold for e in episodes)
    stricter, _ = detect_ruptures(bundled, rupture_rule(bundled, 0.95, 3))
    assert len(stricter) > len(episodes)  # a more reliable score makes smaller drops reliable


def test_null_is_seeded_and_finds_no_excess_repairs_without_ruptures():
    params = SessionSimulationParameters.static(share_rupture=0.0, mean_outcome_trend=0.0)
    frame, _ = simulate_sessions(12, n_sites=1, n_therapists=10, n_clients=150, params=params)
    rule = rupture_rule(frame, 0.85, 3)
    episodes, _ = detect_ruptures(frame, rule)
    a = rtm_null(frame, rule, episodes, seed=5, n_null=49)
    b = rtm_null(frame, rule, episodes, seed=5, n_null=49)
    np.testing.assert_array_equal(a.counts, b.counts)
    assert a.counts.shape == (49, 5)
    # without rupture-repair dynamics the observed repair share is an ordinary draw from the null
    assert 0.01 < a.pval < 0.99
    assert a.sd_within == pytest.approx(0.75 / np.sqrt(1 - 0.3**2), rel=0.25)  # the generator's fluctuation SD


def test_ruptures_table(bundled):
    table, episodes, rule, null = ruptures_table(bundled, 0.85, 3, seed=1)
    assert tuple(table.columns) == RUPTURE_COLUMNS
    assert list(table["kind"].iloc[-2:]) == ["summary", "rtm_null"]
    ep, summary, nul = table[table["kind"] == "episode"], table.iloc[-2], table.iloc[-1]
    assert summary["n_episodes"] == len(ep) == len(episodes)
    assert summary["n_repaired"] + summary["n_unrepaired"] + summary["n_censored"] == len(ep)
    assert summary["n_clients_with_episode"] == ep["client"].nunique()
    assert nul["n_episodes"] == int(np.median(null.counts[:, 0]))
    assert (ep["fluctuation_sd"] == rule.se_diff).all() and (ep["drop_sd"] > RCI_Z).all()
    assert ep.loc[ep["status"] == "repaired", "sessions_to_repair"].between(1, 3).all()
    assert ep["therapist"].notna().all()


def test_rupture_outcome_ols_without_therapists():
    frame, _ = simulate_sessions(9, n_sites=2, n_therapists=8, n_clients=120)
    frame = frame.drop(columns="therapist")
    rule = rupture_rule(frame, 0.85, 3)
    episodes, _ = detect_ruptures(frame, rule)
    rows, n, method = rupture_outcome(frame, episodes, True, 0.95)
    assert method.startswith("ordinary least squares")
    data = client_outcomes(frame, True)
    assert n <= len(data)
    got = {r.term: r for r in rows}
    assert list(got) == ["repaired", "unrepaired", "censored", "baseline_outcome", "rated_changes",
                         "repaired_minus_unrepaired"]  # fmt: skip
    # the same regression by hand
    counts = pd.DataFrame([(e.client, e.status) for e in episodes], columns=["client", "status"])
    table = pd.crosstab(counts["client"], counts["status"]).reindex(data.index).fillna(0)
    rated = frame[frame["alliance"].notna()].groupby("client")["session"].apply(lambda s: int(np.sum(np.diff(s) == 1)))
    keep = rated.reindex(data.index) > 0
    X = np.column_stack([np.ones(keep.sum()), *(table.loc[keep, c] if c in table else np.zeros(keep.sum())
                                                for c in ("repaired", "unrepaired", "censored")),
                         data.loc[keep, "baseline"], rated.reindex(data.index)[keep]])  # fmt: skip
    beta = np.linalg.lstsq(X, data.loc[keep, "change"].to_numpy(), rcond=None)[0]
    assert got["unrepaired"].estimate == pytest.approx(beta[2], rel=1e-9)
    assert got["repaired_minus_unrepaired"].estimate == pytest.approx(beta[1] - beta[2], rel=1e-9)
    assert tuple(c for c in RUPTURE_OUTCOME_COLUMNS) == ("term", "estimate", "se", "ci_lb", "ci_ub", "pval", "df", "n")
