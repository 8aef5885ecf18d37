"""The SYNTHETIC session-level generator: reproducibility, structure, missing data and the truth file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from alliancemeta.sessions.synthetic import (
    COLUMNS,
    ESTIMANDS,
    FORMATS,
    OUTCOME_RANGE,
    SEED,
    SUBSCALE_GRID,
    SUBSCALE_RANGE,
    SessionSimulationParameters,
    simulate_sessions,
)

ROOT = Path(__file__).resolve().parents[2]
BUNDLED = ROOT / "data" / "raw" / "alliance_sessions_synthetic.csv"
TRUTH = ROOT / "data" / "raw" / "alliance_sessions_synthetic.truth.json"
SUBSCALES = ["alliance_goal", "alliance_task", "alliance_bond"]
LABELS = {"client": str, "therapist": str, "site": str, "case": str}


def read(path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=LABELS)


def test_cli_regenerates_the_bundled_files_byte_for_byte(tmp_path):
    out = tmp_path / "alliance_sessions_synthetic.csv"
    subprocess.run(
        [sys.executable, "-m", "alliancemeta.sessions.synthetic", "--seed", str(SEED), "--out", str(out)],
        check=True, capture_output=True, cwd=ROOT,
    )  # fmt: skip
    assert out.read_bytes() == BUNDLED.read_bytes()
    assert out.with_suffix(".truth.json").read_bytes() == TRUTH.read_bytes()


@pytest.fixture(scope="module")
def bundled():
    return read(BUNDLED), json.loads(TRUTH.read_text())


def test_columns_labels_and_size(bundled):
    frame, truth = bundled
    assert tuple(frame.columns) == COLUMNS
    assert "SYNTHETIC" in truth["description"]
    assert set(frame["gender"]) == {"female", "male"}
    assert set(frame["format"]) == set(FORMATS)
    assert 300 <= frame["client"].nunique() <= 400 and 3500 <= len(frame) <= 5000  # modest, for a fast pipeline
    assert frame["site"].nunique() >= 2


def check_structure(frame: pd.DataFrame) -> None:
    """Invariants every generated table satisfies (bundled file and any seed)."""
    observed = frame["alliance"].notna()
    sub = frame[SUBSCALES].to_numpy()
    # subscales are blank exactly when the total is, and sum to it exactly (quarter points are exact in binary)
    assert np.array_equal(np.isnan(sub).any(axis=1), ~observed.to_numpy())
    assert np.array_equal(np.isnan(sub).all(axis=1), ~observed.to_numpy())
    sub = sub[observed.to_numpy()]
    assert np.array_equal(sub.sum(axis=1), frame.loc[observed, "alliance"].to_numpy())
    assert sub.min() >= SUBSCALE_RANGE[0] and sub.max() <= SUBSCALE_RANGE[1]
    assert np.array_equal(sub / SUBSCALE_GRID, np.round(sub / SUBSCALE_GRID))
    y = frame["outcome"].dropna()
    assert y.between(*OUTCOME_RANGE).all() and np.array_equal(y, np.round(y))
    # nesting: clients in one therapist, case and format; therapists in one site; cases in one therapist
    per_client = frame.groupby("client")
    for col in ("therapist", "site", "case", "format", "gender", "age"):
        assert per_client[col].nunique().max() == 1, col
    assert frame.groupby("therapist")["site"].nunique().max() == 1
    assert frame.groupby("case")["therapist"].nunique().max() == 1
    assert not frame.duplicated(["client", "session"]).any()
    assert (per_client["session"].min() == 1).all()
    # members of a case attend together: the same session numbers
    sessions = per_client["session"].apply(tuple)
    case_of = per_client["case"].first()
    assert (sessions.groupby(case_of).nunique() == 1).all()
    sizes = per_client["case"].first().value_counts()
    fmt = per_client["format"].first().groupby(case_of).first()
    assert (sizes[fmt[fmt == "couple"].index] == 2).all()
    assert sizes[fmt[fmt == "family"].index].between(3, 4).all()
    assert (sizes[fmt[fmt.isin(["individual", "group"])].index] == 1).all()


def test_bundled_structure(bundled):
    check_structure(bundled[0])


def test_realistic_missingness_is_present_and_counted(bundled):
    frame, truth = bundled
    counts = truth["counts"]
    per_client = frame.groupby("client")["session"].agg(["max", "size"])
    gaps = int((per_client["max"] - per_client["size"]).sum())
    assert gaps == counts["missed_sessions"] > 0  # session numbers skip missed sessions
    assert counts["missing_alliance"] == frame["alliance"].isna().sum() > 0
    assert counts["missing_outcome"] == frame["outcome"].isna().sum() > 0
    assert 0 < counts["dropouts"] < counts["clients"]
    assert (counts["sites"], counts["therapists"], counts["cases"], counts["clients"], counts["sessions"]) == (
        frame["site"].nunique(), frame["therapist"].nunique(), frame["case"].nunique(), frame["client"].nunique(),
        len(frame),
    )  # fmt: skip
    assert counts["multi_client_cases"] == int((frame.groupby("case")["client"].nunique() > 1).sum()) > 0


def test_truth_states_every_estimand_with_its_sign(bundled):
    _, truth = bundled
    assert truth["outcome_lower_is_better"] is True
    for key, (name, sign, term, meaning) in ESTIMANDS.items():
        assert truth["effects_raw"][key] == truth["parameters"][name]
        assert truth["reported"][key] == sign * truth["parameters"][name]
        assert truth["estimands"][key] == {"term": term, "meaning": meaning}
    # alliance -> outcome effects lower symptoms on the raw scale and read positive when aligned
    for key in ("alliance_within_lag", "alliance_between", "alliance_therapist", "session"):
        assert truth["effects_raw"][key] < 0 < truth["reported"][key]
    assert truth["reported"]["outcome_lag"] == truth["effects_raw"]["outcome_lag"] > 0


def test_rupture_counts_match_the_episode_list(bundled):
    frame, truth = bundled
    episodes = truth["rupture_episodes"]
    counts = truth["counts"]
    assert counts["rupture_episodes_simulated"] == len(episodes) > 0
    assert counts["rupture_episodes_observed"] == sum(e["observed"] for e in episodes)
    attended = frame.groupby("client")["session"].apply(set)
    for e in episodes:
        assert e["observed"] == (e["session"] in attended[e["client"]])
        lo, hi = truth["parameters"]["rupture_depth"]
        assert lo <= e["depth"] <= hi


def client_slopes(frame: pd.DataFrame, col: str, min_obs: int = 6) -> pd.Series:
    """Per-client OLS slope of ``col`` on session over the observed cells (NaN with fewer than ``min_obs``)."""
    d = frame.loc[frame[col].notna(), ["client", "session", col]]
    g = d.groupby("client")
    t = d["session"] - g["session"].transform("mean")
    x = d[col] - g[col].transform("mean")
    slope = (t * x).groupby(d["client"]).sum() / (t * t).groupby(d["client"]).sum()
    return slope.where(g.size() >= min_obs)


def test_trends_are_correlated_as_simulated(bundled):
    """Clients whose alliance rises faster improve faster (raw symptoms fall): per-client OLS slopes of
    alliance and outcome correlate negatively, the confound the DSEM trends address."""
    frame, truth = bundled
    assert truth["parameters"]["trend_correlation"] < 0
    slopes = pd.DataFrame({c: client_slopes(frame, c) for c in ("alliance", "outcome")}).dropna()
    r = slopes.corr().iloc[0, 1]
    assert r < -0.1, r
    assert slopes["alliance"].mean() > 0 > slopes["outcome"].mean()  # alliance rises, symptoms fall


def test_seed_and_size_overrides():
    a, ta = simulate_sessions(7, n_sites=2, n_therapists=6, n_clients=30)
    b, _ = simulate_sessions(7, n_sites=2, n_therapists=6, n_clients=30)
    c, _ = simulate_sessions(8, n_sites=2, n_therapists=6, n_clients=30)
    pd.testing.assert_frame_equal(a, b)
    assert not a.equals(c)
    assert (a["site"].nunique(), a["therapist"].nunique(), a["client"].nunique()) == (2, 6, 30)
    assert ta["parameters"]["n_clients"] == 30


def test_static_parameters_switch_the_dynamics_off():
    p = SessionSimulationParameters.static()
    frame, truth = simulate_sessions(3, n_clients=60, n_therapists=6, params=p)
    assert truth["reported"]["outcome_lag"] == 0 and truth["reported"]["outcome_to_alliance"] == 0
    assert frame[["alliance", "outcome"]].notna().all().all()
    per_client = frame.groupby("client")["session"].agg(["max", "size"])
    assert (per_client["max"] == per_client["size"]).all()  # no missed sessions: dropout only truncates


def test_too_few_clients_per_therapist_is_refused():
    with pytest.raises(ValueError, match="n_clients"):
        simulate_sessions(1, n_therapists=10, n_clients=20)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), n_therapists=st.integers(2, 6), extra=st.integers(0, 20))
def test_any_seed_gives_a_valid_table(seed, n_therapists, extra):
    frame, truth = simulate_sessions(seed, n_sites=2, n_therapists=n_therapists, n_clients=3 * n_therapists + extra)
    check_structure(frame)
    assert truth["counts"]["sessions"] == len(frame)
