"""Session-level descriptives, rupture-repair episodes and the client-level early-alliance correlation.

All three work on the raw outcome (descriptives) or state the sign convention they use
(client-level: positive r = stronger early alliance, better residualised change).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from alliancemeta.sessions.data import SUBSCALES, aligned_outcome

# --------------------------------------------------------------------------------------------------
# descriptives
# --------------------------------------------------------------------------------------------------

DESCRIPTIVE_COLUMNS = (
    "section", "group", "level", "session", "n_clients", "n_therapists", "n_sites", "n_sessions",
    "sessions_per_client_mean", "sessions_per_client_sd", "sessions_per_client_min",
    "sessions_per_client_median", "sessions_per_client_max", "alliance_mean", "alliance_sd",
    "outcome_mean", "outcome_sd",
    *(f"{s}_{stat}" for s in SUBSCALES for stat in ("mean", "sd")),
)  # fmt: skip


def _describe(part: pd.DataFrame) -> dict:
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


def descriptives_table(frame: pd.DataFrame, groups=()) -> pd.DataFrame:
    """``tables/descriptives.csv``: counts and means/SDs (sample SD, ddof = 1) of alliance, raw outcome
    and subscales, in three sections: ``overall``; ``group`` (one row per level of every grouping
    column from the config; a client's level is taken from its first session); ``session`` (one
    row per session number, over the clients observed at it).  Columns that do not apply, or whose
    variable is absent, are empty."""
    rows = [{"section": "overall", "group": "all", "level": "all", "session": np.nan, **_describe(frame)}]
    for g in groups:
        level_of_client = frame.groupby("client")[g].first()
        for level in sorted(level_of_client.dropna().unique(), key=str):
            part = frame[frame["client"].map(level_of_client).eq(level)]
            rows.append({"section": "group", "group": g, "level": str(level), "session": np.nan, **_describe(part)})
    for session, part in frame.groupby("session", sort=True):
        rows.append({"section": "session", "group": "all", "level": "all", "session": session, **_describe(part)})
    out = pd.DataFrame(rows)
    out["session"] = out["session"].astype("Int64")
    return out.loc[:, list(DESCRIPTIVE_COLUMNS)]


# --------------------------------------------------------------------------------------------------
# rupture-repair episodes
# --------------------------------------------------------------------------------------------------

#: A rupture is a drop from one session to the next of at least this many fluctuation SDs.  Stiles
#: et al. (2004) used 2 SD and Strauss et al. (2006) 1 SD; 1.5 sits between them.
RUPTURE_SD = 1.5
#: The alliance must recover within this many sessions after the dip (Stiles et al. 2004: 1-3).
REPAIR_WINDOW = 3
#: Repaired = back to at least the pre-rupture score minus this many fluctuation SDs, so that
#: ordinary session noise does not turn a full recovery into an "unrepaired" rupture.
REPAIR_SLACK = 1.0
#: Clients need at least this many consecutive session-to-session changes for a stable scale.
MIN_CHANGES = 4
#: 1 / Phi^-1(3/4): turns a median absolute deviation into a normal-consistent SD.
MAD_TO_SD = 1.482602218505602

RUPTURE_COLUMNS = (
    "kind", "client", "therapist", "site", "session", "alliance_before", "alliance_dip", "drop",
    "fluctuation_sd", "drop_sd", "status", "repair_session", "sessions_to_repair",
    "n_clients", "n_clients_with_episode", "n_episodes", "n_repaired", "n_unrepaired", "n_censored",
)  # fmt: skip


@dataclass(frozen=True)
class RuptureEpisode:
    client: str
    session: int  # the dip
    alliance_before: float
    alliance_dip: float
    fluctuation_sd: float  # the scale s_i used (the stricter of own and pooled)
    status: str  # repaired, unrepaired, censored (observation ended inside the window)
    repair_session: int | None

    @property
    def drop(self) -> float:
        return self.alliance_before - self.alliance_dip


def _changes(sessions: np.ndarray, alliance: np.ndarray) -> np.ndarray:
    """Session-to-session alliance changes between consecutive sessions only."""
    return np.diff(alliance)[np.diff(sessions) == 1]


def robust_sd(changes: np.ndarray) -> float:
    """:math:`1.4826\\,\\operatorname{median}|\\Delta - \\operatorname{median}\\Delta|`, or the ordinary SD
    when more than half of the changes are equal (MAD = 0)."""
    mad = MAD_TO_SD * np.median(np.abs(changes - np.median(changes)))
    return float(mad) if mad > 0 else float(np.std(changes, ddof=1))


def fluctuation_sd(sessions: np.ndarray, alliance: np.ndarray) -> float:
    """Robust SD of one client's session-to-session alliance changes (:func:`robust_sd`); nan with
    fewer than :data:`MIN_CHANGES` changes.  The MAD keeps the rupture's own drop and rebound from
    inflating the scale against which it is judged."""
    changes = _changes(sessions, alliance)
    return robust_sd(changes) if changes.size >= MIN_CHANGES else np.nan


def detect_ruptures(
    frame: pd.DataFrame, threshold: float = RUPTURE_SD, window: int = REPAIR_WINDOW, slack: float = REPAIR_SLACK
) -> tuple[list[RuptureEpisode], int]:
    """Rupture-repair episodes by a V-shape rule in the spirit of Stiles et al. (2004).

    The scale of client *i* is the stricter of its own and the sample's fluctuation,
    :math:`s_i = \\max(s_i^{\\text{own}}, s^{\\text{pooled}})` (robust SDs of session-to-session
    changes, :func:`fluctuation_sd`), as proposed for crisis-repair sequences in *BMC Medical
    Research Methodology* 12:10 (2012), so that a client with very stable ratings does not turn
    every quarter-point wobble into a rupture.  Session *t* is a rupture when the previous session
    *t - 1* was observed and

    .. math:: A_{i,t-1} - A_{it} \\ge c\\, s_i \\quad (c = \\text{threshold});

    it is *repaired* when one of the sessions *t + 1 .. t + window* has
    :math:`A \\ge A_{i,t-1} - \\text{slack}\\cdot s_i`, *censored* when the client's record ends
    before the window does without a repair (e.g. dropout), and *unrepaired* otherwise.  The
    search resumes after the repair session (or after the dip when unrepaired), so episodes do not
    overlap.  Clients with fewer than :data:`MIN_CHANGES` consecutive changes are not assessed.
    Returns the episodes and the number of clients assessed.
    """
    by_client = [
        (client, part["session"].to_numpy(), part["alliance"].to_numpy(dtype=float))
        for client, part in frame.groupby("client", sort=True)
    ]
    pooled = robust_sd(np.concatenate([_changes(s, a) for _, s, a in by_client]))
    episodes: list[RuptureEpisode] = []
    n_clients = 0
    for client, sessions, alliance in by_client:
        own = fluctuation_sd(sessions, alliance)
        if not np.isfinite(own):
            continue
        s = max(own, pooled)
        if s <= 0:
            continue
        n_clients += 1
        position = {int(t): k for k, t in enumerate(sessions)}
        last = int(sessions[-1])
        k = 1
        while k < sessions.size:
            t = int(sessions[k])
            before = position.get(t - 1)
            if before is None or alliance[before] - alliance[k] < threshold * s:
                k += 1
                continue
            target = alliance[before] - slack * s
            repair = next(
                (t + h for h in range(1, window + 1) if t + h in position and alliance[position[t + h]] >= target),
                None,
            )
            status = "repaired" if repair is not None else ("censored" if last < t + window else "unrepaired")
            episodes.append(RuptureEpisode(str(client), t, alliance[before], alliance[k], s, status, repair))
            k = position[repair] + 1 if repair is not None else k + 1
    return episodes, n_clients


def ruptures_table(frame: pd.DataFrame, **rule) -> pd.DataFrame:
    """``tables/ruptures.csv``: one ``episode`` row per detected episode, then one ``summary`` row
    (counts over the clients with a usable fluctuation scale; ``drop``/``drop_sd`` there are means
    over episodes).  ``rule`` passes ``threshold``, ``window`` and ``slack`` to :func:`detect_ruptures`."""
    episodes, n_clients = detect_ruptures(frame, **rule)
    first = frame.groupby("client").first()
    rows = []
    for e in episodes:
        rows.append({
            "kind": "episode", "client": e.client,
            "therapist": first.at[e.client, "therapist"] if "therapist" in first else None,
            "site": first.at[e.client, "site"] if "site" in first else None,
            "session": e.session, "alliance_before": e.alliance_before, "alliance_dip": e.alliance_dip,
            "drop": e.drop, "fluctuation_sd": e.fluctuation_sd, "drop_sd": e.drop / e.fluctuation_sd,
            "status": e.status, "repair_session": e.repair_session,
            "sessions_to_repair": None if e.repair_session is None else e.repair_session - e.session,
        })  # fmt: skip
    status = [e.status for e in episodes]
    rows.append({
        "kind": "summary",
        "drop": float(np.mean([e.drop for e in episodes])) if episodes else np.nan,
        "drop_sd": float(np.mean([e.drop / e.fluctuation_sd for e in episodes])) if episodes else np.nan,
        "n_clients": n_clients, "n_clients_with_episode": len({e.client for e in episodes}),
        "n_episodes": len(episodes), "n_repaired": status.count("repaired"),
        "n_unrepaired": status.count("unrepaired"), "n_censored": status.count("censored"),
    })  # fmt: skip
    out = pd.DataFrame(rows, columns=list(RUPTURE_COLUMNS))
    for col in ("session", "repair_session", "sessions_to_repair", "n_clients", "n_clients_with_episode",
                "n_episodes", "n_repaired", "n_unrepaired", "n_censored"):  # fmt: skip
        out[col] = out[col].astype("Int64")
    return out


# --------------------------------------------------------------------------------------------------
# client level: early alliance vs residualised outcome change
# --------------------------------------------------------------------------------------------------

#: Early alliance = mean over the sessions up to this one (a common early-alliance window).
EARLY_SESSIONS = 3
CLIENT_LEVEL_COLUMNS = ("group", "level", "n", "r", "ci_lb", "ci_ub", "pval", "yi", "vi")


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
    crit = stats.norm.ppf(0.5 + level / 2)
    return Correlation(r, n, float(np.tanh(z - crit * np.sqrt(v))), float(np.tanh(z + crit * np.sqrt(v))),
                       float(2 * stats.norm.sf(abs(z) / np.sqrt(v))), z, v)  # fmt: skip


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


def client_level_table(frame: pd.DataFrame, outcome_lower_is_better: bool, groups=(), level: float = 0.95):
    """``tables/client_level.csv``: r between early alliance and residualised outcome change (positive
    = stronger early alliance, better change), overall and within each level of every grouping
    column (levels with fewer than 4 clients are skipped).  The residualisation is done once, over
    all clients, so subgroup correlations share one baseline adjustment."""
    change = client_change(frame, outcome_lower_is_better)
    rows = []

    def add(group, lvl, part):
        if len(part) >= 4:
            c = fisher_correlation(part["early_alliance"], part["residual_change"], level)
            rows.append((group, lvl, c.n, c.r, c.ci_lb, c.ci_ub, c.pval, c.yi, c.vi))

    add("all", "all", change)
    for g in groups:
        level_of_client = frame.groupby("client")[g].first().reindex(change.index)
        for lvl in sorted(level_of_client.dropna().unique(), key=str):
            add(g, str(lvl), change[level_of_client.eq(lvl).to_numpy()])
    return pd.DataFrame(rows, columns=list(CLIENT_LEVEL_COLUMNS))
