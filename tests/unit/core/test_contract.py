"""The column-wise contract check agrees with jsonschema applied row by row (Snakemake's ``validate``)."""

from __future__ import annotations

from pathlib import Path

import jsonschema
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alliancemeta.core.contract import check_contract, contract_violations, load_schema
from alliancemeta.core.errors import InputError
from alliancemeta.core.inputs import read_sessions, read_studies

ROOT = Path(__file__).resolve().parents[3]
SCHEMAS = ROOT / "workflow" / "schemas"
SESSIONS = load_schema(SCHEMAS / "sessions.schema.yaml")
STUDIES = load_schema(SCHEMAS / "studies.schema.yaml")


def rowwise_valid(frame: pd.DataFrame, schema) -> bool:
    """Every row valid as a JSON record with its missing cells left out (what snakemake.utils.validate checks)."""
    validator = jsonschema.Draft202012Validator(schema)
    records = frame.to_dict("records")
    return all(validator.is_valid({k: v for k, v in r.items() if pd.notnull(v)}) for r in records)


def test_bundled_inputs_keep_their_contracts():
    studies = read_studies(ROOT / "data/raw/alliance_synthetic.csv", ())
    sessions = read_sessions(ROOT / "data/raw/alliance_sessions_synthetic.csv", ()).frame
    assert contract_violations(studies, STUDIES) == [] and rowwise_valid(studies, STUDIES)
    assert contract_violations(sessions, SESSIONS) == [] and rowwise_valid(sessions, SESSIONS)


@pytest.mark.parametrize(
    ("column", "values", "message"),
    [
        ("session", [1, 0, 2], "column 'session', row 1: 0 is not at least 1"),
        ("session", [1.0, 2.5, 3.0], "column 'session', row 1: 2.5 is not an integer"),
        ("client", ["a", "", "c"], "column 'client', row 1: '' is shorter than 1 character(s)"),
        ("client", ["a", 7, "c"], "column 'client', row 1: 7 is not a string"),
        ("alliance", [4.0, "high", 5.0], "column 'alliance', row 1: 'high' is not a number"),
        ("alliance", [4.0, True, 5.0], "column 'alliance', row 1: True is not a number"),
        ("client", ["a", None, "c"], "column 'client', row 1: missing, but the column is required in every row"),
    ],
)
def test_each_broken_rule_names_column_row_value_and_expectation(column, values, message):
    frame = pd.DataFrame({"client": ["a", "b", "c"], "session": [1, 2, 3], "alliance": [4.0, 5.0, np.nan]})
    frame[column] = pd.Series(values, dtype=object if any(isinstance(v, (str, bool)) for v in values) else None)
    problems = contract_violations(frame, SESSIONS)
    assert message in problems, problems
    assert not rowwise_valid(frame, SESSIONS)


def test_missing_required_column_and_the_error_of_check_contract(tmp_path):
    frame = pd.DataFrame({"client": ["a"], "alliance": [4.0]})
    assert contract_violations(frame, SESSIONS) == ["required column 'session' is missing"]
    with pytest.raises(InputError, match=r"data/x\.csv: the ingested table breaks its contract \(sessions"):
        check_contract(frame, SCHEMAS / "sessions.schema.yaml", "data/x.csv")


def test_a_keyword_it_cannot_check_is_refused():
    schema = {"type": "object", "properties": {"client": {"type": "string", "pattern": "^c"}}}
    with pytest.raises(ValueError, match=r"client\.pattern"):
        contract_violations(pd.DataFrame({"client": ["c1"]}), schema)


cells = {
    "client": st.one_of(st.sampled_from(["c1", "c2", ""]), st.none(), st.integers(0, 3)),
    "session": st.one_of(st.integers(-1, 4), st.sampled_from([1.5, 2.0, np.nan])),
    "alliance": st.one_of(st.floats(-10, 10), st.sampled_from([np.nan, np.inf, "x", True]), st.none()),
}


@settings(max_examples=300, deadline=None)
@given(st.lists(st.fixed_dictionaries(cells), min_size=1, max_size=6), st.booleans())
def test_agrees_with_jsonschema_row_by_row(rows, typed):
    frame = pd.DataFrame(rows)
    if typed:  # columns as pandas infers them from the cells (numeric where it can), else all object
        frame = frame.infer_objects()
    else:
        frame = frame.astype(object)
    assert (contract_violations(frame, SESSIONS) == []) == rowwise_valid(frame, SESSIONS)
