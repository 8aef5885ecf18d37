"""The contract of an ingested table, checked column by column.

``workflow/schemas/studies.schema.yaml`` and ``sessions.schema.yaml`` describe one row of the tables that
:func:`alliancemeta.core.inputs.read_studies` and :func:`~alliancemeta.core.inputs.read_sessions` return (a
JSON-Schema object; blank cells are missing values, absent from the row's record).  Checking it record by record
with ``jsonschema`` (Snakemake's ``validate``) costs about 0.2 ms per row: three minutes for a million session
rows, paid each time the workflow is planned.  :func:`contract_violations` applies the same schema to whole
columns at once.  It understands the keywords these schemas use (``required``, and per column ``type``,
``minimum``, ``maximum``, ``exclusiveMinimum``, ``exclusiveMaximum``, ``minLength``, ``enum``) and refuses a
schema with any other, so a keyword added to a schema is never silently left unchecked.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from alliancemeta.core.errors import InputError

#: Keywords of a column's schema that :func:`contract_violations` checks (``description`` is documentation).
COLUMN_KEYWORDS = frozenset({"type", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "minLength",
                             "enum", "description"})  # fmt: skip
#: Keywords of the table (row object) schema it understands.
TABLE_KEYWORDS = frozenset({"$schema", "description", "type", "required", "properties"})
_BOUNDS = (
    ("minimum", np.greater_equal, "at least"),
    ("maximum", np.less_equal, "at most"),
    ("exclusiveMinimum", np.greater, "above"),
    ("exclusiveMaximum", np.less, "below"),
)


def load_schema(path: str | os.PathLike) -> dict:
    """A row schema from its YAML file."""
    import yaml

    return yaml.safe_load(Path(path).read_text())


def _unsupported(schema: Mapping) -> list[str]:
    bad = sorted(set(schema) - TABLE_KEYWORDS)
    if schema.get("type", "object") != "object":
        bad.append(f"type {schema['type']!r}")
    for name, rule in schema.get("properties", {}).items():
        bad += [f"{name}.{key}" for key in sorted(set(rule) - COLUMN_KEYWORDS)]
    return bad


def _show(value) -> str:
    return repr(value.item() if isinstance(value, np.generic) else value)


def _first(mask: np.ndarray, index: pd.Index) -> object:
    return index[int(np.flatnonzero(mask)[0])]


def _type_problem(values: pd.Series, kind: str) -> tuple[np.ndarray, str]:
    """Rows of ``values`` (no missing cells) that are not of JSON type ``kind``, and the expectation."""
    if kind == "string":
        return ~values.map(lambda v: isinstance(v, str)).to_numpy(bool), "a string"
    if kind not in ("number", "integer"):
        raise ValueError(f"unsupported JSON type {kind!r}")
    expected = "a number" if kind == "number" else "an integer"
    if pd.api.types.is_bool_dtype(values):
        return np.ones(len(values), bool), expected
    if pd.api.types.is_numeric_dtype(values):
        as_float, bad = values.to_numpy(float), np.zeros(len(values), bool)
    else:  # an object column: every cell must be a number (not a bool, not a string)
        as_float = pd.to_numeric(values, errors="coerce").to_numpy(float)
        bad = ~values.map(lambda v: isinstance(v, (int, float, np.integer, np.floating))
                          and not isinstance(v, (bool, np.bool_))).to_numpy(bool)  # fmt: skip
    if kind == "integer":
        with np.errstate(invalid="ignore"):
            bad |= ~np.isnan(as_float) & (np.floor(as_float) != as_float)
    return bad, expected


def _problem(name: str, values: pd.Series, bad: np.ndarray, text: str) -> str:
    """The message of a broken rule: column, first offending row (index label) and its value, then ``text``."""
    return f"column {name!r}, row {_first(bad, values.index)}: {_show(values.to_numpy()[bad][0])} {text}"


def contract_violations(frame: pd.DataFrame, schema: Mapping) -> list[str]:
    """Every column of ``frame`` that breaks the row schema ``schema``, one message per broken rule naming the
    column, the first offending row (the frame's index), its value and the expectation; [] when the table holds.

    Raises ``ValueError`` for a schema keyword this check does not implement."""
    unsupported = _unsupported(schema)
    if unsupported:
        raise ValueError(f"schema keyword(s) not supported by the column-wise check: {', '.join(unsupported)}")
    problems = []
    for name in schema.get("required", ()):
        if name not in frame.columns:
            problems.append(f"required column {name!r} is missing")
    for name, rule in schema.get("properties", {}).items():
        if name not in frame.columns:
            continue
        column = frame[name]
        present = column.notna().to_numpy(bool)
        if name in schema.get("required", ()) and not present.all():
            problems.append(f"column {name!r}, row {_first(~present, frame.index)}: missing, but the column is "
                            "required in every row")  # fmt: skip
        values = column[present]
        if values.empty:
            continue
        if "type" in rule:
            bad, expected = _type_problem(values, rule["type"])
            if bad.any():
                problems.append(_problem(name, values, bad, f"is not {expected}"))
                continue
        if "enum" in rule:
            bad = ~values.isin(rule["enum"]).to_numpy(bool)
            if bad.any():
                problems.append(_problem(name, values, bad, f"is not one of {list(rule['enum'])}"))
        if "minLength" in rule:
            bad = (values.astype(str).str.len() < rule["minLength"]).to_numpy(bool)
            if bad.any():
                problems.append(_problem(name, values, bad, f"is shorter than {rule['minLength']} character(s)"))
        for key, holds, words in _BOUNDS:
            if key in rule:
                bad = ~holds(values.to_numpy(float), float(rule[key]))
                if bad.any():
                    problems.append(_problem(name, values, bad, f"is not {words} {rule[key]:g}"))
    return problems


def check_contract(frame: pd.DataFrame, schema_path: str | os.PathLike, source: str) -> None:
    """Raise :class:`~alliancemeta.core.errors.InputError` naming ``source`` when ``frame`` breaks its schema."""
    problems = contract_violations(frame, load_schema(schema_path))
    if problems:
        raise InputError(f"{source}: the ingested table breaks its contract ({Path(schema_path).name}): "
                         + "; ".join(problems))  # fmt: skip
