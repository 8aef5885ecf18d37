r"""Session-level descriptive statistics and the client-level early-alliance analysis.

:func:`describe` summarises a part of a session table: counts, means and SDs over sessions (raw outcome), and the
distribution of the *client* mean alliance (median, quartiles, share of clients at the scale maximum), so that
statements such as "median alliance 4.8 of 5; women 4.88 vs men 4.67" can be reproduced from a client table.

:func:`early_alliance_correlation` relates early alliance to outcome change at the client level: the partial
correlation of the early alliance (mean over sessions 1-:data:`EARLY_SESSIONS`) with the last outcome, controlling
for the baseline outcome (taken at or before the client's first alliance rating, so that it precedes the alliance
it is compared with) and for the configured client covariates:

.. math::

    r_{AY\cdot Z} = \operatorname{corr}(e_A, e_Y), \qquad e_A = A - Z\hat\gamma_A,\; e_Y = Y - Z\hat\gamma_Y,

with *Z* the intercept, the baseline and *q - 1* covariate columns.  On the Fisher scale
:math:`z = \operatorname{atanh} r` has variance :math:`1/(n - 3 - q)` for a partial correlation with *q*
variables partialled out (Fisher 1924; the simple correlation's :math:`1/(n-3)` is the case q = 0), so
``yi = z``, ``vi = 1/(n - 3 - q)``, the interval is :math:`\tanh(z \pm z_{1-\alpha/2}\sqrt{v})` and the p-value is
the matching two-sided z test.  Positive r = a stronger early alliance goes with a better outcome than the
baseline predicts (the outcome is sign-aligned, :func:`alliancemeta.sessions.data.aligned_outcome`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from alliancemeta.core.inference import critical_value, p_value
from alliancemeta.sessions.data import SUBSCALES, aligned_outcome

#: Early alliance = mean over the rated sessions up to this one (a common early-alliance window).
EARLY_SESSIONS = 3
#: A client mean counts as at the scale maximum when within this of it (ratings are sums of item means, so a
#: mean of maximal ratings equals the maximum up to round-off).
CEILING_ATOL = 1e-9


def client_alliance(part: pd.DataFrame) -> pd.Series:
    """Each client's mean over its observed alliance ratings (clients without any are left out)."""
    return part.groupby("client")["alliance"].mean().dropna()


def describe(part: pd.DataFrame, alliance_max: float | None = None) -> dict:
    """Counts (clients, therapists, sites, sessions), sessions per client, mean and SD of the alliance, the raw
    outcome and any Bordin subscale over the rows of ``part`` (blank cells left out), and the median, quartiles
    (linear interpolation, R's type 7) and ceiling share (share at ``alliance_max``; NaN without one) of the
    client mean alliance."""
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
    means = client_alliance(part).to_numpy()
    if means.size:
        q25, median, q75 = np.quantile(means, [0.25, 0.5, 0.75])
    else:
        q25 = median = q75 = np.nan
    row["alliance_client_median"] = median
    row["alliance_client_q25"] = q25
    row["alliance_client_q75"] = q75
    row["alliance_ceiling_share"] = (
        float(np.mean(means >= alliance_max - CEILING_ATOL)) if alliance_max is not None and means.size else np.nan
    )
    return row


# --------------------------------------------------------------------------------------------------
# client level: early alliance vs outcome change
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Correlation:
    """A (partial) correlation with its Fisher-z interval and test; ``yi``/``vi`` on the Fisher scale, ``q`` the
    number of variables partialled out (0 for a simple correlation, as ``escalc("ZCOR")``)."""

    r: float
    n: int
    q: int
    ci_lb: float
    ci_ub: float
    pval: float
    yi: float
    vi: float


def partial_correlation(x, y, Z=None, level: float = 0.95) -> Correlation:
    r"""The correlation of ``x`` and ``y`` after partialling out the columns of ``Z`` (an intercept is always
    included; ``Z`` None gives the simple correlation), with :math:`v = 1/(n - 3 - q)` (module docstring)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    n = x.size
    Z = np.zeros((n, 0)) if Z is None else np.asarray(Z, dtype=float).reshape(n, -1)
    q = Z.shape[1]
    if n - 3 - q < 1:
        raise ValueError(f"a correlation with {q} variable(s) partialled out needs n >= {q + 4}, got {n}")
    D = np.column_stack([np.ones(n), Z])
    ex = x - D @ np.linalg.lstsq(D, x, rcond=None)[0]
    ey = y - D @ np.linalg.lstsq(D, y, rcond=None)[0]
    denom = np.sqrt((ex @ ex) * (ey @ ey))
    r = float(ex @ ey / denom) if denom > 0 else np.nan
    z, v = float(np.arctanh(r)), 1.0 / (n - 3 - q)
    crit = critical_value(level)
    return Correlation(r, n, q, float(np.tanh(z - crit * np.sqrt(v))), float(np.tanh(z + crit * np.sqrt(v))),
                       float(p_value(z / np.sqrt(v))), z, v)  # fmt: skip


def fisher_correlation(x, y, level: float = 0.95) -> Correlation:
    """The simple Pearson correlation with Fisher's :math:`v = 1/(n-3)` (q = 0)."""
    return partial_correlation(x, y, None, level)


def client_change(frame: pd.DataFrame, outcome_lower_is_better: bool) -> pd.DataFrame:
    """Per client: ``early_alliance`` (mean over rated sessions <= :data:`EARLY_SESSIONS`), ``baseline`` (the first
    aligned outcome at or before the client's first alliance rating) and ``post`` (the last aligned outcome after
    the early window), with their sessions.  Clients without an early rating, a baseline or a later outcome are
    left out, so the baseline precedes (or coincides with) the alliance and the outcome follows it."""
    d = frame.assign(_y=aligned_outcome(frame["outcome"], outcome_lower_is_better))
    rated = d[d["alliance"].notna()]
    first_rating = rated.groupby("client")["session"].min()
    early = rated[rated["session"] <= EARLY_SESSIONS].groupby("client")["alliance"].mean()
    d = d.assign(_first=d["client"].map(first_rating))
    pre = d[(d["session"] <= d["_first"]) & d["_y"].notna()].sort_values(["client", "session"]).groupby("client")
    post = d[(d["session"] > EARLY_SESSIONS) & d["_y"].notna()].sort_values(["client", "session"]).groupby("client")
    out = pd.DataFrame({"early_alliance": early})
    out = out.join(pre["_y"].first().rename("baseline"), how="inner").join(pre["session"].first().rename(
        "baseline_session"), how="inner")  # fmt: skip
    out = out.join(post["_y"].last().rename("post"), how="inner").join(post["session"].last().rename("last_session"),
                                                                      how="inner")  # fmt: skip
    return out.sort_index()


def early_alliance_correlation(change: pd.DataFrame, covariates: pd.DataFrame | None, level: float) -> Correlation:
    """:func:`partial_correlation` of ``early_alliance`` and ``post`` given ``baseline`` and the covariate columns
    (one row per client, aligned with ``change``) that vary within these clients."""
    Z = [change["baseline"].to_numpy(dtype=float)]
    if covariates is not None:
        for col in covariates.columns:
            values = covariates[col].to_numpy(dtype=float)
            if np.unique(values).size > 1:
                Z.append(values)
    return partial_correlation(change["early_alliance"], change["post"], np.column_stack(Z), level)


def client_covariates(frame: pd.DataFrame, terms: Sequence[str], clients) -> pd.DataFrame:
    """The covariate design columns ``terms`` per client (first row of each client), in the order of ``clients``."""
    if not terms:
        return pd.DataFrame(index=pd.Index(clients))
    return frame.groupby("client")[list(terms)].first().reindex(clients)
