"""Shared access to the R reference fixtures (tests/reference/<topic>.json)."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
ROOT = HERE.parent.parent

#: SPEC §6: agreement with metafor to a relative 1e-6.  The R scripts run metafor's iterative
#: solvers with tightened tolerances (threshold/tol = 1e-12), so the remaining differences are
#: floating-point round-off, far below this bound.
RTOL = 1e-6
#: Absolute floor for quantities whose reference value is (near) zero, e.g. tau^2 = 0 or a p-value
#: of 1e-12, where a relative comparison is meaningless.
ATOL = 1e-10


@cache
def load_ref(topic: str) -> dict:
    """The parsed fixture tests/reference/<topic>.json (with its `versions` and `cases`)."""
    return json.loads((HERE / f"{topic}.json").read_text())


def as_array(value) -> np.ndarray:
    """A JSON value as a float array; null becomes nan."""
    return np.atleast_1d(np.asarray(value, dtype=float))


def assert_close(actual, expected, rtol: float = RTOL, atol: float = ATOL, what: str = "") -> None:
    np.testing.assert_allclose(
        np.atleast_1d(np.asarray(actual, dtype=float)), as_array(expected), rtol=rtol, atol=atol, err_msg=what
    )
