"""The SYNTHETIC session-level generator: reproducibility, structure and the truth file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from alliancemeta.sessions.synthetic import (
    COLUMNS,
    OUTCOME_RANGE,
    SEED,
    SUBSCALE_GRID,
    SUBSCALE_RANGE,
    simulate_sessions,
)

ROOT = Path(__file__).resolve().parents[2]
BUNDLED = ROOT / "data" / "raw" / "alliance_sessions_synthetic.csv"
TRUTH = ROOT / "data" / "raw" / "alliance_sessions_synthetic.truth.json"


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
    frame = pd.read_csv(BUNDLED, dtype={"client": str, "therapist": str, "site": str})
    return frame, json.loads(TRUTH.read_text())


def test_columns_and_labels(bundled):
    frame, truth = bundled
    assert tuple(frame.columns) == COLUMNS
    assert "SYNTHETIC" in truth["description"]
    assert set(frame["gender"]) == {"female", "male"}
    assert set(frame["format"]) == {"individual", "group"}


def test_subscales_sum_to_the_alliance_exactly(bundled):
    frame, _ = bundled
    sub = frame[["alliance_goal", "alliance_task", "alliance_bond"]].to_numpy()
    assert np.array_equal(sub.sum(axis=1), frame["alliance"].to_numpy())  # exact, not approximate
    assert sub.min() >= SUBSCALE_RANGE[0] and sub.max() <= SUBSCALE_RANGE[1]
    assert np.array_equal(sub / SUBSCALE_GRID, np.round(sub / SUBSCALE_GRID))


def test_nesting_sessions_and_dropout(bundled):
    frame, truth = bundled
    p = truth["parameters"]
    assert frame.groupby("client")["therapist"].nunique().max() == 1
    assert frame.groupby("therapist")["site"].nunique().max() == 1
    per_client = frame.groupby("client")["session"].agg(["min", "max", "size"])
    assert (per_client["min"] == 1).all()
    assert (per_client["max"] == per_client["size"]).all()  # consecutive sessions: dropout truncates
    assert per_client["size"].min() >= 3 and per_client["size"].max() <= p["planned_sessions"][1]
    assert 0 < truth["counts"]["dropouts"] < p["n_clients"]
    counts = truth["counts"]
    assert (counts["sites"], counts["therapists"], counts["clients"], counts["sessions"]) == (
        frame["site"].nunique(), frame["therapist"].nunique(), frame["client"].nunique(), len(frame),
    )  # fmt: skip


def test_outcome_scale_and_truth_signs(bundled):
    frame, truth = bundled
    assert frame["outcome"].between(*OUTCOME_RANGE).all()
    assert np.array_equal(frame["outcome"], np.round(frame["outcome"]))
    assert truth["outcome_lower_is_better"] is True
    for term, raw in truth["effects_raw"].items():
        assert truth["reported"][term] == -raw


def test_rupture_counts_match_the_episode_list(bundled):
    frame, truth = bundled
    episodes = truth["rupture_episodes"]
    counts = truth["counts"]
    assert counts["rupture_episodes_simulated"] == len(episodes) > 0
    assert counts["rupture_episodes_observed"] == sum(e["observed"] for e in episodes)
    last = frame.groupby("client")["session"].max()
    for e in episodes:
        assert e["observed"] == (e["session"] <= last[e["client"]])
        assert e["repair_observed"] == (e["session"] + e["repair_sessions"] <= last[e["client"]])
        lo, hi = truth["parameters"]["rupture_depth"]
        assert lo <= e["depth"] <= hi


def test_seed_and_size_overrides():
    a, ta = simulate_sessions(7, n_sites=2, n_therapists=6, n_clients=30)
    b, _ = simulate_sessions(7, n_sites=2, n_therapists=6, n_clients=30)
    c, _ = simulate_sessions(8, n_sites=2, n_therapists=6, n_clients=30)
    pd.testing.assert_frame_equal(a, b)
    assert not a.equals(c)
    assert (a["site"].nunique(), a["therapist"].nunique(), a["client"].nunique()) == (2, 6, 30)
    assert ta["parameters"]["n_clients"] == 30


def test_too_few_clients_per_therapist_is_refused():
    with pytest.raises(ValueError, match="n_clients"):
        simulate_sessions(1, n_therapists=10, n_clients=20)
