"""Session-level descriptive statistics and the client-level early-alliance correlation.

:func:`describe` summarises a part of a session table (raw outcome).  The client-level correlation
relates early alliance to residualised outcome change; positive r = a stronger early alliance goes with a
better residualised change (the outcome is sign-aligned, :func:`alliancemeta.sessions.data.aligned_outcome`).
The tables are assembled by :mod:`alliancemeta.pipeline.sessions`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from alliancemeta.core.inference import critical_value, p_value
from alliancemeta.sessions.data import SUBSCALES, aligned_outcome


def describe(part: pd.DataFrame) -> dict:
    """Counts (clients, therapists, sites, sessions), sessions per client, and mean and SD of the alliance,
    the raw outcome and any Bordin subscale of the rows in ``part``."""
    per_client = part.groupby("client").size()
    row = {
        "n_clients": part["client"].nunique(),
        "n_therapists": part["therapist"].nunique() if "therapist" in part else np.nan,
        "n_sites": part["site"].nunique() if "site" in part else np.nan,
        "n_sessions": len(part),
        "sessions_per_client_mean": per_client.mean(),
        "sessions_per_client_sd": per_client.std(ddof=1) if len(per_client) > 1 else np.nan,
        "sessions_per_client_min": per_client.min(),
        "sessions_per_client_median": per_client.median(),
        "sessions_per_client_max": per_client.max(),
    }
    for col in ("alliance", "outcome", *SUBSCALES):
        present = col in part and part[col].notna().any()
        row[f"{col}_mean"] = part[col].mean() if present else np.nan
        row[f"{col}_sd"] = part[col].std(ddof=1) if present and part[col].notna().sum() > 1 else np.nan
    return row


# --------------------------------------------------------------------------------------------------
# client level: early alliance vs residualised outcome change
# --------------------------------------------------------------------------------------------------

#: Early alliance = mean over the sessions up to this one (a common early-alliance window).
EARLY_SESSIONS = 3


@dataclass(frozen=True)
class Correlation:
    """A Pearson correlation with its Fisher-z interval and test; ``yi``/``vi`` as ``escalc("ZCOR")``."""

    r: float
    n: int
    ci_lb: float
    ci_ub: float
    pval: float
    yi: float
    vi: float


def fisher_correlation(x, y, level: float = 0.95) -> Correlation:
    r"""Pearson r with :math:`z = \operatorname{atanh} r`, :math:`v = 1/(n-3)`, CI
    :math:`\tanh(z \pm z_{1-\alpha/2}\sqrt v)` and the two-sided test of :math:`z/\sqrt v` (Fisher 1921)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    n = x.size
    if n < 4:
        raise ValueError(f"a correlation with a Fisher-z interval needs n >= 4, got {n}")
    r = float(np.corrcoef(x, y)[0, 1])
    z, v = float(np.arctanh(r)), 1.0 / (n - 3)
    crit = critical_value(level)
    return Correlation(r, n, float(np.tanh(z - crit * np.sqrt(v))), float(np.tanh(z + crit * np.sqrt(v))),
                       float(p_value(z / np.sqrt(v))), z, v)  # fmt: skip


def client_change(frame: pd.DataFrame, outcome_lower_is_better: bool) -> pd.DataFrame:
    """Per client: early alliance (mean over sessions <= :data:`EARLY_SESSIONS`), the aligned outcome
    at the first and the last session, and the residualised change (residual of last on first by
    ordinary least squares over the clients; positive = better than expected from the start).
    Clients without an early alliance score or without a session after the early window are left
    out, so the outcome change always follows the early alliance."""
    y = aligned_outcome(frame["outcome"], outcome_lower_is_better)
    data = frame.assign(_y=y)
    grouped = data.groupby("client", sort=True)
    early = data[data["session"] <= EARLY_SESSIONS].groupby("client")["alliance"].mean()
    out = pd.DataFrame({
        "early_alliance": early.reindex(grouped.size().index),
        "pre": grouped["_y"].first(), "post": grouped["_y"].last(), "last_session": grouped["session"].max(),
    })  # fmt: skip
    out = out[out["early_alliance"].notna() & (out["last_session"] > EARLY_SESSIONS)].copy()
    X = np.column_stack([np.ones(len(out)), out["pre"].to_numpy()])
    coef, *_ = np.linalg.lstsq(X, out["post"].to_numpy(), rcond=None)
    out["residual_change"] = out["post"].to_numpy() - X @ coef
    return out


