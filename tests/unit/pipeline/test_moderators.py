"""moderators.csv and moderator_tests.csv: dropped rows, unanalysable moderators, notes."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from alliancemeta.pipeline.meta import moderator_tables
from alliancemeta.studies.regression import ModeratorError, design_matrix

ROOT = Path(__file__).resolve().parents[3]


def _frame():
    rng = np.random.default_rng(5)
    k = 30
    return pd.DataFrame({
        "study": [f"s{i}" for i in range(k)],
        "yi": rng.normal(0.3, 0.15, k),
        "vi": rng.uniform(0.005, 0.05, k),
        "rater": rng.choice(["client", "therapist", "observer"], k),
        "age": rng.normal(35, 8, k),
        "const": np.full(k, 1.0),
    })



def test_missing_values_dropped_per_model_and_counted():
    frame = _frame()
    frame.loc[[0, 1, 2], "age"] = np.nan
    coefs, tests = moderator_tables(frame, ["rater", "age"], "REML", ("knha", "z"), 0.95)
    by = tests.set_index(["moderator", "test"])
    assert by.loc[("rater", "knha"), "k"] == 30
    assert by.loc[("age", "knha"), "k"] == 27
    assert by.loc[("age", "knha"), "n_dropped"] == 3
    assert "3 effect size(s) with a missing value dropped" in by.loc[("rater+age", "z"), "note"]
    assert set(coefs["test"]) == {"knha"}


def test_constant_and_collinear_moderators_are_explained():
    frame = _frame()
    with pytest.raises(ModeratorError, match="constant"):
        design_matrix(frame, ["const"])
    frame["age2"] = 2 * frame["age"]
    with pytest.raises(ModeratorError, match="collinear"):
        design_matrix(frame, ["age", "age2"])
    _, tests = moderator_tables(frame, ["const"], "REML", ("knha",), 0.95)
    assert np.isnan(tests.loc[0, "QM"]) and "constant" in tests.loc[0, "note"]


def test_single_effect_level_is_flagged():
    frame = _frame()
    frame.loc[0, "rater"] = "parent"
    _, tests = moderator_tables(frame, ["rater"], "REML", ("knha",), 0.95)
    assert "rater=parent" in tests.loc[0, "note"]

