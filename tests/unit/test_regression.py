import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from alliancemeta.core.inputs import read_studies
from alliancemeta.studies.regression import ModeratorError, design_matrix, fit_moderators, moderator_tables, r_squared

ROOT = Path(__file__).resolve().parents[2]
RTOL = 1e-6  # SPEC §6 agreement with metafor


def _metareg_cases():
    cases = json.loads((ROOT / "tests/reference/meta.json").read_text())["cases"]
    return {name: case for name, case in cases.items() if name.startswith("metareg/")}


@pytest.mark.parametrize("name", sorted(_metareg_cases()))
def test_design_and_r2_match_metafor(name):
    """The pipeline's own design matrix (not a test helper) reproduces R's model.matrix and metafor's R^2."""
    case = _metareg_cases()[name]
    mods = re.findall(r"[a-z_]+", case["mods"].replace("factor", ""))
    frame = read_studies(ROOT / case["data"], mods)
    mf = fit_moderators(frame, mods, case["requested"]["method"], case["requested"]["test"])
    assert mf.design.terms == [re.sub(r"factor\((\w+)\)", r"\1", c) for c in case["fit"]["X_colnames"]]
    np.testing.assert_allclose(mf.fit.beta, case["fit"]["b"], rtol=RTOL)
    np.testing.assert_allclose(r_squared(mf.fit), case["fit"]["R2"], rtol=RTOL, atol=1e-8)
    np.testing.assert_allclose(mf.fit.QM_pval, case["fit"]["QMp"], rtol=RTOL)


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
    coefs, tests = moderator_tables(frame, ["rater", "age"], tests=("knha", "z"))
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
    _, tests = moderator_tables(frame, ["const"], tests=("knha",))
    assert np.isnan(tests.loc[0, "QM"]) and "constant" in tests.loc[0, "note"]


def test_single_effect_level_is_flagged():
    frame = _frame()
    frame.loc[0, "rater"] = "parent"
    _, tests = moderator_tables(frame, ["rater"], tests=("knha",))
    assert "rater=parent" in tests.loc[0, "note"]
