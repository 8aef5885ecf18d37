"""Session-level data preparation: reading, sign alignment, alliance decomposition, time, lags, covariates.

Sign convention (SPEC §4: positive = a stronger alliance goes with a better outcome).  Every model
works on the *aligned* outcome

.. math:: y = \\begin{cases} -\\text{outcome} & \\text{if lower outcome is better} \\\\
                              \\text{outcome} & \\text{otherwise,} \\end{cases}

so that positive alliance coefficients mean "more alliance, better outcome", a positive ``session``
coefficient means improvement over sessions and ``outcome_lag`` keeps its sign.  Descriptive tables
and figures show the raw outcome.

**Missing cells.**  A blank ``alliance`` or ``outcome`` cell is a missing measurement (NaN); the row
stays, so the session still counts when lags are formed.  Every quantity below uses the observed
values only, and each model then uses the complete cases of its own columns.

**Alliance decomposition** (centring within cluster; Enders & Tofighi 2007; Curran & Bauer 2011; as
used for the alliance by Falkenström et al. 2013, 2017 and, for therapists, Baldwin, Wampold &
Imel 2007).  For session *t* of client *i* seen by therapist *j*, with :math:`\\bar A_i` the
client's mean over the sessions with an observed alliance, :math:`\\bar A_{(j)}` the mean of the
client means of the therapist's clients (every client with a mean counts once) and :math:`\\bar A`
the mean of all client means,

.. math::

    A^W_{it} = A_{it} - \\bar A_i, \\qquad A^B_i = \\bar A_i - \\bar A_{(j)}, \\qquad
    A^T_j = \\bar A_{(j)} - \\bar A,

so that :math:`A_{it} = \\bar A + A^T_j + A^B_i + A^W_{it}` exactly.  Without a therapist column (or
with fewer than :data:`MIN_THERAPISTS` therapists) :math:`A^B_i = \\bar A_i - \\bar A` and there is no
therapist term.  Client means use all observed sessions, including later ones (the usual
person-mean centring; Falkenström et al. 2017 discuss the alternatives).  The Bordin subscales
(``alliance_goal``, ``alliance_task``, ``alliance_bond``) are decomposed the same way when present.

**Time.**  ``session_c`` is the session number centred at the dataset's mean session number (over
all rows), a grand centre: the intercept and the client-intercept variance then describe clients at
that session.  The models give each client a random session slope correlated with the client
intercept (an unstructured covariance), a parameterisation that is invariant to where time is
centred, so the fixed effects do not depend on the centre; centring keeps the intercept-slope
covariance small and the problem well conditioned.

**Lags** (:func:`lag_frame`).  The previous session's alliance deviation :math:`A^W_{i,t-1}` and the
previous aligned outcome centred at the client's mean outcome, :math:`y_{i,t-1} - \\bar y_i`, for the
sessions whose previous session *t - 1* has a row; a lag across a missed session, or from a blank
cell, is missing.

**Split alliance** (:func:`split_frame`).  In couple and family therapy (a ``case`` groups the
clients seen together) the within-case spread of the members' client means,

.. math::

    S_k = \\begin{cases} |\\bar A_{i_1} - \\bar A_{i_2}| & \\text{two members,} \\\\
          \\operatorname{SD}(\\bar A_i : i \\in k) \\;(\\text{ddof} = 1) & \\text{three or more,} \\end{cases}

defined per case, not per session: the split is a property of the therapy (the members' stable
alliance levels differ; Friedlander et al. 2006; Escudero et al. 2008), a per-session spread would
add session noise and be undefined whenever a member misses a session or a rating, and the
generator of the bundled data defines its true effect on the same case-level spread.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from alliancemeta.core.errors import InputError

#: Columns read as labels, never as numbers (ids such as 001 keep their zeros).
LABEL_COLUMNS = ("client", "therapist", "site", "case")
SUBSCALES = ("alliance_goal", "alliance_task", "alliance_bond")
#: The therapist level (therapist random intercept and the ``alliance_therapist`` term) needs at least
#: this many therapists.  With an intercept and a therapist-level slope, J therapists leave J - 2
#: degrees of freedom for the therapist variance: with 2 it is not identified at all and with 3-4
#: REML is unstable, so below 5 the therapist column is ignored by the models.
MIN_THERAPISTS = 5
#: The split-alliance model needs at least this many cases with two or more clients: its case-level
#: predictor and the case random intercept are estimated from them alone (with fewer, the case
#: variance and the split coefficient are little more than noise).
MIN_SPLIT_CASES = 10


def read_session_table(path: str | os.PathLike) -> pd.DataFrame:
    """Read a (validated, processed) session table; ids as strings, blanks as NaN, sorted by client and session."""
    head = pd.read_csv(path, nrows=0)
    dtype = {c: str for c in LABEL_COLUMNS if c in head.columns}
    frame = pd.read_csv(path, dtype=dtype, keep_default_na=True)
    missing = [c for c in ("client", "session", "alliance", "outcome") if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}: session table lacks required column(s) {', '.join(missing)}")
    for col in ("alliance", "outcome", *SUBSCALES):
        if col in frame.columns:
            frame[col] = frame[col].astype(float)
    return frame.sort_values(["client", "session"], kind="stable").reset_index(drop=True)


def has_therapist(frame: pd.DataFrame) -> bool:
    """True when a therapist column nests clients in at least :data:`MIN_THERAPISTS` therapists."""
    return "therapist" in frame.columns and frame["therapist"].nunique() >= MIN_THERAPISTS


def has_subscales(frame: pd.DataFrame) -> bool:
    """True when all three Bordin subscales are present with at least one observed value each."""
    return all(c in frame.columns and frame[c].notna().any() for c in SUBSCALES)


def multi_client_cases(frame: pd.DataFrame) -> int:
    """Number of cases (``case`` column) that group two or more clients (0 without a case column)."""
    if "case" not in frame.columns:
        return 0
    return int((frame.groupby("case")["client"].nunique() >= 2).sum())


def aligned_outcome(outcome, outcome_lower_is_better: bool) -> np.ndarray:
    """The outcome with the reporting sign: higher = better (see the module docstring)."""
    outcome = np.asarray(outcome, dtype=float)
    return -outcome if outcome_lower_is_better else outcome


def session_centre(frame: pd.DataFrame) -> float:
    """The grand centre of time: the mean session number over all rows."""
    return float(frame["session"].mean())


def _components(out: pd.DataFrame, column: str, nested: bool) -> None:
    """Add ``{column}_within``, ``_between`` and (``nested``) ``_therapist`` from the observed values of ``column``."""
    client_mean = out.groupby("client", sort=False)[column].transform("mean")  # NaN when never observed
    out[f"{column}_within"] = out[column] - client_mean
    clients = pd.DataFrame({"mean": client_mean, "client": out["client"]}).groupby("client", sort=False).first()
    grand = float(clients["mean"].mean())
    if nested:
        clients["therapist"] = out.groupby("client", sort=False)["therapist"].first()
        therapist_mean = clients.groupby("therapist")["mean"].mean()
        t_mean = out["therapist"].map(therapist_mean)
        out[f"{column}_between"] = client_mean - t_mean
        out[f"{column}_therapist"] = t_mean - grand
    else:
        out[f"{column}_between"] = client_mean - grand


def decompose_alliance(frame: pd.DataFrame, outcome_lower_is_better: bool) -> pd.DataFrame:
    """A copy of ``frame`` with ``y`` (aligned outcome), ``session_c`` (centred session) and the alliance
    components ``alliance_within``, ``alliance_between`` and (with therapists) ``alliance_therapist``, and the
    same for every Bordin subscale present (see the module docstring)."""
    out = frame.copy()
    out["y"] = aligned_outcome(out["outcome"], outcome_lower_is_better)
    out["session_c"] = out["session"] - session_centre(out)
    nested = has_therapist(out)
    for column in ("alliance", *(s for s in SUBSCALES if s in out.columns)):
        _components(out, column, nested)
    return out


def lag_frame(decomposed: pd.DataFrame) -> pd.DataFrame:
    """Rows whose previous session (session - 1) has a row, with ``alliance_within_lag`` (the previous
    session's within-client alliance deviation) and ``outcome_lag`` (the previous aligned outcome minus the
    client's mean aligned outcome) taken from it.  A client's first session, and any session after a missed
    one, has no lag and is dropped, so a lag always spans exactly one session; a lag from a blank cell is NaN.

    The lagged outcome is person-mean centred: entered uncentred, it contains the client's random intercept
    (and trend), which biases its coefficient upward and, through the correlation of the lagged alliance with
    the lagged outcome, the alliance effect (see :mod:`alliancemeta.sessions.models`)."""
    ordered = decomposed.sort_values(["client", "session"], kind="stable")
    y_within = ordered["y"] - ordered.groupby("client", sort=False)["y"].transform("mean")
    prev = ordered.assign(_yw=y_within).groupby("client", sort=False)[["session", "alliance_within", "_yw"]].shift(1)
    keep = (prev["session"] == ordered["session"] - 1).to_numpy()
    out = ordered.assign(alliance_within_lag=prev["alliance_within"], outcome_lag=prev["_yw"])
    return out.loc[keep].reset_index(drop=True)


def case_spread(levels: np.ndarray) -> float:
    """Within-case spread of client means: |difference| for two, SD (ddof = 1) for three or more, NaN for one."""
    levels = np.asarray(levels, dtype=float)
    levels = levels[np.isfinite(levels)]
    if levels.size < 2:
        return np.nan
    if levels.size == 2:
        return float(abs(levels[0] - levels[1]))
    return float(np.std(levels, ddof=1))


def split_frame(decomposed: pd.DataFrame) -> pd.DataFrame:
    """The rows of clients in cases with two or more clients, with ``alliance_own_within`` (= ``alliance_within``),
    ``alliance_own_between`` (= ``alliance_between``), ``alliance_split`` (:func:`case_spread` of the members'
    client means; NaN when fewer than two members have an observed alliance) and ``n_members``.

    Only couples and families enter: in individual therapy there is no split, and coding it 0 would equate
    "no partner" with "no disagreement" and confound the split with the treatment format."""
    if "case" not in decomposed.columns:
        raise InputError("the split-alliance model needs a 'case' column grouping the clients seen together")
    client_mean = decomposed.groupby("client", sort=False)["alliance"].mean()
    case_of = decomposed.groupby("client", sort=False)["case"].first()
    members = case_of.groupby(case_of).size()
    spread = client_mean.groupby(case_of).apply(lambda m: case_spread(m.to_numpy()))
    keep = decomposed["case"].map(members).to_numpy() >= 2
    out = decomposed.loc[keep].copy()
    out["alliance_own_within"] = out["alliance_within"]
    out["alliance_own_between"] = out["alliance_between"]
    out["alliance_split"] = out["case"].map(spread).astype(float)
    out["n_members"] = out["case"].map(members).astype(int)
    return out.reset_index(drop=True)


# --------------------------------------------------------------------------------------------------
# client-level covariates
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Covariates:
    """Client-level covariate columns expanded for a model: ``terms`` are the design columns added to the data
    (numeric covariates under their own name, categorical ones as treatment-coded dummies ``NAME[T.level]``
    against the first level in sorted order, as R's ``factor`` does), ``reference`` the reference level of each
    categorical covariate."""

    terms: tuple[str, ...]
    reference: dict[str, str]
    numeric: tuple[str, ...]


def add_covariates(frame: pd.DataFrame, covariates: Sequence[str]) -> tuple[pd.DataFrame, Covariates]:
    """``frame`` with the design columns of the client-level ``covariates`` added (see :class:`Covariates`).

    A covariate must be constant within each client (a client-level variable); a blank value is missing and
    makes the client's rows incomplete for every model that uses it.  Raises :class:`InputError` naming the
    column otherwise."""
    out = frame.copy()
    terms: list[str] = []
    reference: dict[str, str] = {}
    numeric: list[str] = []
    for col in covariates:
        if col not in out.columns:
            raise InputError(f"covariate {col!r} named in the config (sessions.NAME.covariates) is not a column of "
                             f"the session table; the columns are {', '.join(map(str, out.columns))}")  # fmt: skip
        if col in ("client", "session", "alliance", "outcome", *SUBSCALES):
            raise InputError(f"covariate {col!r}: a covariate must be a client-level column, not a session variable")
        values = out[col]
        varying = values.groupby(out["client"]).nunique(dropna=True)
        if (varying > 1).any():
            client = varying.index[int(np.flatnonzero((varying > 1).to_numpy())[0])]
            raise InputError(f"covariate {col!r} varies within client {client!r}; a covariate must be constant "
                             "within each client (a client-level variable)")  # fmt: skip
        per_client = values.groupby(out["client"]).transform("first")
        as_number = pd.to_numeric(per_client, errors="coerce")
        if as_number.notna().sum() == per_client.notna().sum():
            out[col] = as_number.astype(float)
            terms.append(col)
            numeric.append(col)
            continue
        levels = sorted(per_client.dropna().astype(str).unique())
        if len(levels) < 2:
            raise InputError(f"covariate {col!r} has {len(levels)} level(s); a categorical covariate needs two or "
                             "more (drop it from sessions.NAME.covariates)")  # fmt: skip
        reference[col] = levels[0]
        labels = per_client.astype(str).where(per_client.notna())
        for level in levels[1:]:
            name = f"{col}[T.{level}]"
            out[name] = np.where(labels.isna(), np.nan, (labels == level).astype(float))
            terms.append(name)
    return out, Covariates(tuple(terms), reference, tuple(numeric))


def client_summary(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per client: therapist/site/case (when present), number of sessions, first and last session."""
    grouped = frame.groupby("client", sort=True)
    out = pd.DataFrame(
        {"n_sessions": grouped.size(), "first": grouped["session"].min(), "last": grouped["session"].max()}
    )
    for col in ("therapist", "site", "case"):
        if col in frame.columns:
            out[col] = grouped[col].first()
    return out
