"""Write tests/reference/data/lmm_sessions.csv: the bundled SYNTHETIC session data after the package's
alliance decomposition and lag, the exact table that refs_lmm.R (lme4/lmerTest) and
test_lmm_reference.py both fit.  Run from the repository root: ``.venv/bin/python tests/reference/make_lmm_data.py``.

``y_slope`` is ``y`` plus a SYNTHETIC client-specific intercept and ``alliance_within`` slope, drawn with
seed :data:`SEED` from a bivariate normal (SDs :data:`SLOPE_SD`, correlation :data:`SLOPE_CORR`): the bundled data
have no random alliance slope (their generator has none, so REML puts its variance at zero), and this column gives
the reference a correlated random slope away from the boundary.

Rows are sorted by client and session; rows with a blank alliance or outcome cell are left out (the complete
cases of the within/between models).  ``alliance_within_lag`` and ``outcome_lag`` (the package's person-mean-centred
lagged outcome) are empty where the previous session (session - 1) has no row or a blank cell
(:func:`alliancemeta.sessions.data.lag_frame`), so the lagged model fits the rows where both are present.  Floats are
written with 17 significant digits, so both sides read the same doubles.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from alliancemeta.core.tables import write_csv
from alliancemeta.sessions.data import decompose_alliance, lag_frame, read_session_table

ROOT = Path(__file__).resolve().parents[2]
RAW = ROOT / "data" / "raw" / "alliance_sessions_synthetic.csv"
OUT = ROOT / "tests" / "reference" / "data" / "lmm_sessions.csv"
COLUMNS = ("therapist", "client", "session", "y", "y_slope", "alliance_within", "alliance_between",
           "alliance_therapist", "alliance_within_lag", "outcome_lag")  # fmt: skip
SEED = 20261121
SLOPE_SD = (3.0, 1.5)  # client intercept and alliance_within slope added to y (outcome points)
SLOPE_CORR = 0.4


def lmm_sessions() -> pd.DataFrame:
    """The decomposed bundled data with the lag columns (missing where there is no lag), complete in y and alliance."""
    decomposed = decompose_alliance(read_session_table(RAW), outcome_lower_is_better=True)
    lagged = lag_frame(decomposed)[["client", "session", "alliance_within_lag", "outcome_lag"]]
    out = decomposed.merge(lagged, on=["client", "session"], how="left", validate="one_to_one")
    out = out.dropna(subset=["y", "alliance_within"])
    out = out.sort_values(["client", "session"], kind="stable").reset_index(drop=True)
    codes, uniques = pd.factorize(out["client"], sort=True)
    cov = np.array([[SLOPE_SD[0] ** 2, SLOPE_CORR * SLOPE_SD[0] * SLOPE_SD[1]],
                    [SLOPE_CORR * SLOPE_SD[0] * SLOPE_SD[1], SLOPE_SD[1] ** 2]])  # fmt: skip
    effects = np.random.default_rng(SEED).multivariate_normal(np.zeros(2), cov, size=len(uniques))
    out["y_slope"] = out["y"] + effects[codes, 0] + effects[codes, 1] * out["alliance_within"]
    return out.sort_values(["client", "session"], kind="stable").reset_index(drop=True).loc[:, list(COLUMNS)]


if __name__ == "__main__":
    write_csv(lmm_sessions(), OUT)
    print(f"wrote {OUT.relative_to(ROOT)}")
