"""Session-level data preparation: reading, sign alignment, alliance decomposition and lags.

Sign convention (SPEC §4: positive = a stronger alliance goes with a better outcome).  Every model
works on the *aligned* outcome

.. math:: y = \\begin{cases} -\\text{outcome} & \\text{if lower outcome is better} \\\\
                              \\text{outcome} & \\text{otherwise,} \\end{cases}

so that positive alliance coefficients mean "more alliance, better outcome", a positive ``session``
coefficient means improvement over sessions and ``outcome_lag`` keeps its sign.  Descriptive tables
and figures show the raw outcome.

Alliance decomposition (centring within cluster; Enders & Tofighi 2007; Curran & Bauer 2011; as
used for the alliance by Falkenström et al. 2013, 2017 and, for therapists, Baldwin, Wampold &
Imel 2007).  For session *t* of client *i* seen by therapist *j*, with :math:`\\bar A_i` the
client's mean over the observed sessions, :math:`\\bar A_{(j)}` the mean of the client means of the
therapist's clients (every client counts once) and :math:`\\bar A` the mean of all client means,

.. math::

    A^W_{it} = A_{it} - \\bar A_i, \\qquad A^B_i = \\bar A_i - \\bar A_{(j)}, \\qquad
    A^T_j = \\bar A_{(j)} - \\bar A,

so that :math:`A_{it} = \\bar A + A^T_j + A^B_i + A^W_{it}` exactly.  Without a therapist column (or
with fewer than :data:`MIN_THERAPISTS` therapists) :math:`A^B_i = \\bar A_i - \\bar A` and there is no
therapist term.  Client means use all observed
sessions, including later ones (the usual person-mean centring; Falkenström et al. 2017 discuss the
alternatives).
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd

#: Columns read as labels, never as numbers (ids such as 001 keep their zeros).
LABEL_COLUMNS = ("client", "therapist", "site", "case")
SUBSCALES = ("alliance_goal", "alliance_task", "alliance_bond")
#: The therapist level (therapist random intercept and the ``alliance_therapist`` term) needs at least
#: this many therapists.  With an intercept and a therapist-level slope, J therapists leave J - 2
#: degrees of freedom for the therapist variance: with 2 it is not identified at all and with 3-4
#: REML is unstable, so below 5 the therapist column is ignored by the models.
MIN_THERAPISTS = 5


def read_session_table(path: str | os.PathLike) -> pd.DataFrame:
    """Read a (validated, processed) session table; ids as strings, sorted by client and session."""
    head = pd.read_csv(path, nrows=0)
    dtype = {c: str for c in LABEL_COLUMNS if c in head.columns}
    frame = pd.read_csv(path, dtype=dtype, keep_default_na=True)
    missing = [c for c in ("client", "session", "alliance", "outcome") if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}: session table lacks required column(s) {', '.join(missing)}")
    return frame.sort_values(["client", "session"], kind="stable").reset_index(drop=True)


def has_therapist(frame: pd.DataFrame) -> bool:
    """True when a therapist column nests clients in at least :data:`MIN_THERAPISTS` therapists."""
    return "therapist" in frame.columns and frame["therapist"].nunique() >= MIN_THERAPISTS


def aligned_outcome(outcome, outcome_lower_is_better: bool) -> np.ndarray:
    """The outcome with the reporting sign: higher = better (see the module docstring)."""
    outcome = np.asarray(outcome, dtype=float)
    return -outcome if outcome_lower_is_better else outcome


def decompose_alliance(frame: pd.DataFrame, outcome_lower_is_better: bool) -> pd.DataFrame:
    """Add ``y`` (aligned outcome) and the alliance components ``alliance_within``,
    ``alliance_between`` and (with therapists) ``alliance_therapist`` to a copy of ``frame``."""
    out = frame.copy()
    out["y"] = aligned_outcome(out["outcome"], outcome_lower_is_better)
    client_mean = out.groupby("client", sort=False)["alliance"].transform("mean")
    out["alliance_within"] = out["alliance"] - client_mean
    clients = out.assign(_mean=client_mean).groupby("client", sort=False).agg(mean=("_mean", "first"))
    grand = float(clients["mean"].mean())
    if has_therapist(out):
        clients["therapist"] = out.groupby("client", sort=False)["therapist"].first()
        therapist_mean = clients.groupby("therapist")["mean"].mean()
        t_mean = out["therapist"].map(therapist_mean)
        out["alliance_between"] = client_mean - t_mean
        out["alliance_therapist"] = t_mean - grand
    else:
        out["alliance_between"] = client_mean - grand
    return out


def lag_frame(decomposed: pd.DataFrame) -> pd.DataFrame:
    """Rows whose previous session (session - 1) was observed, with ``alliance_within_lag`` and
    ``outcome_lag`` (aligned) taken from it.  A client's first session, and any session after a
    missed one, has no lag and is dropped, so a lag always spans exactly one session."""
    ordered = decomposed.sort_values(["client", "session"], kind="stable")
    prev = ordered.groupby("client", sort=False)[["session", "alliance_within", "y"]].shift(1)
    keep = (prev["session"] == ordered["session"] - 1).to_numpy()
    out = ordered.assign(alliance_within_lag=prev["alliance_within"], outcome_lag=prev["y"])
    return out.loc[keep].reset_index(drop=True)


def client_summary(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per client: therapist/site (when present), number of sessions, first and last session."""
    grouped = frame.groupby("client", sort=True)
    out = pd.DataFrame(
        {"n_sessions": grouped.size(), "first": grouped["session"].min(), "last": grouped["session"].max()}
    )
    for col in ("therapist", "site"):
        if col in frame.columns:
            out[col] = grouped[col].first()
    return out
