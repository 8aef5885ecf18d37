r"""Rupture-repair episodes on a reliable-change threshold, their regression-to-the-mean null and their outcome.

**Threshold** (Jacobson & Truax 1991, *J Consult Clin Psychol* 59, 12-19, eq. 1-2).  With the reliability
:math:`r_{xx}` of the alliance score (config ``ruptures.reliability``) and :math:`s` the cross-sectional SD of
the clients' first alliance ratings (the population SD to which a reliability coefficient refers; Jacobson &
Truax use the pre-treatment SD), the standard error of a difference between two ratings is

.. math:: S_{\text{diff}} = s\sqrt{2(1 - r_{xx})},

and a change is reliable when :math:`|\Delta| / S_{\text{diff}} > 1.96` (the reliable change index, RCI).

**Episodes.**  Session *t* is a *rupture* when the previous session *t - 1* has a rating and
:math:`A_{i,t-1} - A_{it} > 1.96\,S_{\text{diff}}` (a reliable drop).  It is *repaired* when one of the sessions
*t + 1 .. t + W* (``repair_within``) has a rating that is both a reliable rise from the dip,
:math:`A - A_{it} > 1.96\,S_{\text{diff}}`, and back to the pre-rupture level within one reliable change,
:math:`A \ge A_{i,t-1} - 1.96\,S_{\text{diff}}`; *censored* when the client's last rating comes before *t + W*
without a repair (e.g. dropout); *unrepaired* otherwise.  The search resumes after the repair (or after the
dip), so episodes do not overlap.  Requiring the return to be reliable keeps measurement error from turning a
dip into a repair, but not regression to the mean: ratings fluctuate around each client's own level, a dip
selected for being deep is followed by a rise on average, and a transient dip *is* what a repair looks like.

**Regression-to-the-mean null** (:func:`rtm_null`).  How many episodes, and how many "repairs", the rule finds in
series that have no rupture-repair dynamics at all: each client's ratings are replaced by the client's own linear
trend (least squares over its ratings; the mean with fewer than three) plus a stationary Gaussian AR(1)
fluctuation, observed at the client's own rated sessions; the same rule with the same threshold is applied,
``n_null`` times with a seeded generator.  The fluctuation's SD :math:`s_w` and autocorrelation :math:`\rho` are
pooled over the clients' residuals with robust scales, so that the rupture dips in the data do not inflate them:
:math:`s_w` is the normal-consistent MAD of the residuals and :math:`s_\Delta` that of the lag-1 differences of
residuals in consecutive sessions (both scaled by :math:`\sqrt{N/(N - p)}` for the trend parameters), and
:math:`\rho = 1 - s_\Delta^2 / (2 s_w^2)`, from :math:`\operatorname{Var}(\Delta) = 2\sigma^2(1 - \rho)`.  The
observed share of repaired among the repaired and unrepaired
episodes is compared with the null share (one-sided Monte-Carlo p-value, Davison & Hinkley 1997, eq. 4.11): a
repair rate at the null rate means that the "repairs" are indistinguishable from regression to the client's
mean.

**Outcome** (:func:`rupture_outcome`).  Per client, the aligned outcome change from the baseline (the first
outcome at or before the client's first alliance rating) to the last outcome, regressed on the numbers of
repaired, unrepaired and censored episodes, adjusted for the baseline and for the number of rated
session-to-session changes (the exposure: longer records have more chances of a rupture and more time to
change); with therapists (:data:`~alliancemeta.sessions.data.MIN_THERAPISTS`) a random therapist intercept (REML,
Satterthwaite df), else ordinary least squares with t(n - p) inference.  Positive = more improvement.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from alliancemeta.core.errors import ModelError
from alliancemeta.core.inference import critical_value, p_value
from alliancemeta.sessions.data import aligned_outcome, has_therapist
from alliancemeta.sessions.lmm import MixedModelError, RandomTerm, fit_lmm

#: Jacobson & Truax's criterion: a reliable change exceeds 1.96 standard errors of a difference.
RCI_Z = 1.96
#: Per-client trends of the null need at least this many ratings (with fewer the client's mean is used).
MIN_TREND_POINTS = 3
#: Replicates of the regression-to-the-mean null (odd, so the median count is an integer).
N_NULL = 199
#: 1 / Phi^-1(3/4): turns a median absolute deviation into a normal-consistent SD.
MAD_TO_SD = 1.482602218505602


@dataclass(frozen=True)
class RuptureRule:
    """The reliable-change rule: ``sd`` the SD of the first ratings, ``se_diff`` = sd sqrt(2 (1 - reliability)),
    ``threshold`` = 1.96 se_diff."""

    reliability: float
    repair_within: int
    sd: float

    @property
    def se_diff(self) -> float:
        return float(self.sd * np.sqrt(2.0 * (1.0 - self.reliability)))

    @property
    def threshold(self) -> float:
        return RCI_Z * self.se_diff


@dataclass(frozen=True)
class RuptureEpisode:
    client: str
    session: int  # the dip
    alliance_before: float
    alliance_dip: float
    se_diff: float
    status: str  # repaired, unrepaired, censored (the record ended inside the window)
    repair_session: int | None

    @property
    def drop(self) -> float:
        return self.alliance_before - self.alliance_dip

    @property
    def rci(self) -> float:
        """The reliable change index of the drop."""
        return self.drop / self.se_diff


def _rated(frame: pd.DataFrame) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Per client (sorted): the sessions with an alliance rating and the ratings."""
    rated = frame[frame["alliance"].notna()]
    return [(str(c), p["session"].to_numpy(dtype=int), p["alliance"].to_numpy(dtype=float))
            for c, p in rated.groupby("client", sort=True)]  # fmt: skip


def baseline_sd(frame: pd.DataFrame) -> float:
    """SD (ddof = 1) of every client's first alliance rating."""
    first = frame[frame["alliance"].notna()].sort_values(["client", "session"]).groupby("client")["alliance"].first()
    if len(first) < 2:
        raise ModelError(f"ruptures: {len(first)} client(s) with an alliance rating; the reliable-change threshold "
                         "needs the SD of at least two clients' first ratings")  # fmt: skip
    return float(first.std(ddof=1))


def rupture_rule(frame: pd.DataFrame, reliability: float, repair_within: int) -> RuptureRule:
    """The rule for this table (:func:`baseline_sd` of its first ratings)."""
    if not 0.0 < reliability < 1.0:
        raise ModelError(f"ruptures: reliability {reliability} must lie strictly between 0 and 1")
    if repair_within < 1:
        raise ModelError(f"ruptures: repair_within {repair_within} must be at least 1")
    return RuptureRule(float(reliability), int(repair_within), baseline_sd(frame))


def _episodes(sessions, alliance, threshold: float, window: int):
    """(dip index, before index, status, repair index or -1) of one client's episodes (module docstring)."""
    position = {int(t): k for k, t in enumerate(sessions)}
    last = int(sessions[-1])
    out = []
    k = 1
    n = len(sessions)
    while k < n:
        t = int(sessions[k])
        before = position.get(t - 1)
        if before is None or not alliance[before] - alliance[k] > threshold:
            k += 1
            continue
        floor = alliance[before] - threshold
        repair = -1
        for h in range(1, window + 1):
            j = position.get(t + h)
            if j is not None and alliance[j] - alliance[k] > threshold and alliance[j] >= floor:
                repair = j
                break
        status = "repaired" if repair >= 0 else ("censored" if last < t + window else "unrepaired")
        out.append((k, before, status, repair))
        k = repair + 1 if repair >= 0 else k + 1
    return out


def _assessed(sessions: np.ndarray) -> bool:
    """A client is assessed when it has at least one pair of ratings in consecutive sessions."""
    return bool(np.any(np.diff(sessions) == 1))


def detect_ruptures(frame: pd.DataFrame, rule: RuptureRule) -> tuple[list[RuptureEpisode], int]:
    """Every episode (module docstring) and the number of clients assessed (with two consecutive ratings)."""
    episodes: list[RuptureEpisode] = []
    n_clients = 0
    for client, sessions, alliance in _rated(frame):
        if not _assessed(sessions):
            continue
        n_clients += 1
        for k, before, status, repair in _episodes(sessions, alliance, rule.threshold, rule.repair_within):
            episodes.append(RuptureEpisode(client, int(sessions[k]), float(alliance[before]), float(alliance[k]),
                                           rule.se_diff, status, int(sessions[repair]) if repair >= 0 else None))
    return episodes, n_clients


# --------------------------------------------------------------------------------------------------
# regression-to-the-mean null
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NullResult:
    """Counts per replicate of the null (columns episodes, repaired, unrepaired, censored, clients with an
    episode), the pooled AR(1) parameters, the observed and null repair shares and the Monte-Carlo p-value."""

    counts: np.ndarray  # (n_null, 5)
    rho: float
    sd_within: float
    observed_share: float
    null_share: float
    pval: float

    def median(self, column: int) -> int:
        return int(np.median(self.counts[:, column]))


def _trend(sessions: np.ndarray, alliance: np.ndarray) -> tuple[float, float, float, int]:
    """Least-squares line of one client's ratings: (intercept at the centre, slope, centre, number of parameters);
    the mean (slope 0) with fewer than :data:`MIN_TREND_POINTS` ratings."""
    centre = float(sessions.mean())
    if sessions.size >= MIN_TREND_POINTS:
        X = np.column_stack([np.ones(sessions.size), sessions - centre])
        a, b = np.linalg.lstsq(X, alliance, rcond=None)[0]
        return float(a), float(b), centre, 2
    return float(alliance.mean()), 0.0, centre, 1


def scan_counts(values: np.ndarray, last: np.ndarray, threshold: float, window: int) -> np.ndarray:
    """The episode rule of the module docstring on many series at once.

    ``values`` (S, T) holds series on a dense session grid (column = session - first session, NaN where there is
    no rating), ``last`` the column of each series' last rating.  Returns per series the numbers of episodes,
    repaired, unrepaired and censored episodes, (S, 4); identical to :func:`detect_ruptures` series by series
    (a test checks it), but vectorised over the series: the scan runs over the session columns, with each
    series' next admissible dip column as its state."""
    S, T = values.shape
    counts = np.zeros((S, 4), dtype=int)
    next_ok = np.zeros(S, dtype=int)
    rated = np.isfinite(values)
    for t in range(1, T):
        prev, cur = values[:, t - 1], values[:, t]
        with np.errstate(invalid="ignore"):
            rupture = (next_ok <= t) & rated[:, t - 1] & rated[:, t] & (prev - cur > threshold)
        if not rupture.any():
            continue
        repaired_at = np.full(S, -1)
        for h in range(1, window + 1):
            if t + h >= T:
                break
            cand = values[:, t + h]
            with np.errstate(invalid="ignore"):
                back = (cand - cur > threshold) & (cand >= prev - threshold)
                ok = rupture & (repaired_at < 0) & rated[:, t + h] & back
            repaired_at[ok] = t + h
        repaired = rupture & (repaired_at >= 0)
        censored = rupture & ~repaired & (last < t + window)
        counts[:, 0] += rupture
        counts[:, 1] += repaired
        counts[:, 2] += rupture & ~repaired & ~censored
        counts[:, 3] += censored
        next_ok = np.where(repaired, repaired_at + 1, np.where(rupture, t + 1, next_ok))
    return counts


def rtm_null(frame: pd.DataFrame, rule: RuptureRule, episodes: list[RuptureEpisode], seed: int,
             n_null: int = N_NULL) -> NullResult:
    """The regression-to-the-mean null of the module docstring, ``n_null`` replicates from ``seed``."""
    clients = [(s, a) for _, s, a in _rated(frame) if _assessed(s)]
    trends = [_trend(s, a) for s, a in clients]
    resid = [a - (c0 + c1 * (s - centre)) for (s, a), (c0, c1, centre, _) in zip(clients, trends, strict=True)]
    all_resid = np.concatenate(resid)
    dof = sum(r.size - t[3] for r, t in zip(resid, trends, strict=True))
    diffs = np.concatenate([np.diff(r)[np.diff(s) == 1] for (s, _), r in zip(clients, resid, strict=True)])
    if dof <= 0 or diffs.size < 2:
        raise ModelError("ruptures: too few ratings per client for the regression-to-the-mean null")
    # robust scales (rupture dips are outliers that would inflate least-squares moments): the normal-consistent
    # MAD of the residuals, corrected for the trend parameters fitted per client, and of the lag-1 differences,
    # whose variance is 2 sd^2 (1 - rho) for a stationary AR(1)
    correction = np.sqrt(all_resid.size / dof)
    sd_w = MAD_TO_SD * float(np.median(np.abs(all_resid - np.median(all_resid)))) * correction
    sd_diff = MAD_TO_SD * float(np.median(np.abs(diffs - np.median(diffs)))) * correction
    if not sd_w > 0:
        raise ModelError("ruptures: the alliance ratings do not vary within clients; no regression-to-the-mean null")
    rho = float(np.clip(1.0 - sd_diff**2 / (2.0 * sd_w**2), -0.99, 0.99))
    # each client's trend on a dense grid of its sessions, NaN where it has no rating
    first = np.array([int(s[0]) for s, _ in clients])
    T = max(int(s[-1]) - int(s[0]) + 1 for s, _ in clients)
    grid = first[:, None] + np.arange(T)[None, :]
    base = np.full((len(clients), T), np.nan)
    last = np.empty(len(clients), dtype=int)
    for i, ((s, _), (c0, c1, centre, _)) in enumerate(zip(clients, trends, strict=True)):
        cols = s - first[i]
        base[i, cols] = c0 + c1 * (grid[i, cols] - centre)
        last[i] = cols[-1]
    rng = np.random.default_rng(seed)
    innovation_sd = sd_w * np.sqrt(1.0 - rho**2)
    z = rng.standard_normal((n_null, len(clients), T))
    series = np.empty_like(z)
    series[:, :, 0] = sd_w * z[:, :, 0]
    for t in range(1, T):
        series[:, :, t] = rho * series[:, :, t - 1] + innovation_sd * z[:, :, t]
    values = (base[None, :, :] + series).reshape(n_null * len(clients), T)
    per_series = scan_counts(values, np.tile(last, n_null), rule.threshold, rule.repair_within)
    per_series = per_series.reshape(n_null, len(clients), 4)
    counts = np.column_stack([per_series.sum(axis=1), (per_series[:, :, 0] > 0).sum(axis=1)])
    decided = counts[:, 1] + counts[:, 2]
    null_shares = np.where(decided > 0, counts[:, 1] / np.maximum(decided, 1), np.nan)
    status = [e.status for e in episodes]
    n_dec = status.count("repaired") + status.count("unrepaired")
    observed = status.count("repaired") / n_dec if n_dec else np.nan
    finite = null_shares[np.isfinite(null_shares)]
    pval = float((1 + np.sum(finite >= observed)) / (finite.size + 1)) if np.isfinite(observed) else np.nan
    return NullResult(counts, rho, sd_w, float(observed), float(np.mean(finite)) if finite.size else np.nan, pval)


# --------------------------------------------------------------------------------------------------
# ruptures and outcome change
# --------------------------------------------------------------------------------------------------

#: Terms of rupture_outcome.csv: the three episode counts, the adjustments, then the contrast.
OUTCOME_TERMS = ("repaired", "unrepaired", "censored", "baseline_outcome", "rated_changes")


@dataclass(frozen=True)
class OutcomeRow:
    term: str
    estimate: float
    se: float
    ci_lb: float
    ci_ub: float
    pval: float
    df: float


def client_outcomes(frame: pd.DataFrame, outcome_lower_is_better: bool) -> pd.DataFrame:
    """Per client: ``baseline`` (the first aligned outcome at or before the client's first alliance rating),
    ``post`` (the last aligned outcome after the baseline session), ``change`` = post - baseline,
    and the sessions of both; clients without either are left out."""
    d = frame.assign(_y=aligned_outcome(frame["outcome"], outcome_lower_is_better))
    first_rating = d[d["alliance"].notna()].groupby("client")["session"].min()
    d = d[d["client"].isin(first_rating.index)]
    d = d.assign(_first=d["client"].map(first_rating))
    pre = d[(d["session"] <= d["_first"]) & d["_y"].notna()].sort_values(["client", "session"])
    pre = pre.groupby("client").first()[["session", "_y"]].rename(columns={"session": "baseline_session",
                                                                        "_y": "baseline"})  # fmt: skip
    d = d.join(pre, on="client", how="inner")
    post = d[(d["session"] > d["baseline_session"]) & d["_y"].notna()].sort_values(["client", "session"])
    post = post.groupby("client").last()[["session", "_y"]].rename(columns={"session": "post_session", "_y": "post"})
    out = pre.join(post, how="inner")
    out["change"] = out["post"] - out["baseline"]
    return out


def rupture_outcome(frame: pd.DataFrame, episodes: list[RuptureEpisode], outcome_lower_is_better: bool,
                    level: float) -> tuple[list[OutcomeRow], int, str]:
    """Coefficients of the outcome-change regression of the module docstring (one :class:`OutcomeRow` per term of
    :data:`OUTCOME_TERMS`, then ``repaired_minus_unrepaired``), the number of clients and the method."""
    rated = [(c, s) for c, s, _ in _rated(frame) if _assessed(s)]
    exposure = pd.Series({c: int(np.sum(np.diff(s) == 1)) for c, s in rated}, dtype=float)
    data = client_outcomes(frame, outcome_lower_is_better).join(exposure.rename("rated_changes"), how="inner")
    for status in ("repaired", "unrepaired", "censored"):
        per = pd.Series([e.client for e in episodes if e.status == status], dtype=object).value_counts()
        data[status] = per.reindex(data.index).fillna(0).astype(float)
    data = data.rename(columns={"baseline": "baseline_outcome"})
    data = data.assign(client=data.index.astype(str))
    terms = list(OUTCOME_TERMS)
    if "therapist" in frame.columns and has_therapist(frame):
        data["therapist"] = frame.groupby("client")["therapist"].first().reindex(data.index).to_numpy()
    n = len(data)
    if n <= len(terms) + 2:
        raise ModelError(f"rupture_outcome: {n} clients with a baseline and a later outcome are too few for "
                         f"{len(terms)} predictors")  # fmt: skip
    constant = [t for t in terms if data[t].nunique() < 2]
    contrast = {"repaired": 1.0, "unrepaired": -1.0}
    if constant:
        # e.g. no censored episode at all: the count is a column of zeros and carries no information
        terms = [t for t in terms if t not in constant]
    if "therapist" in data.columns:
        try:
            fit = fit_lmm(data, "change", terms, RandomTerm("therapist"), None, level=level, label="rupture_outcome")
        except MixedModelError as err:
            raise ModelError(f"{err} [rupture_outcome: outcome change on rupture counts, clients in therapists]") \
                from None
        method = "REML, random therapist intercept, Satterthwaite df"
        rows = [OutcomeRow(t, fit.estimate[k], fit.se[k], fit.ci_lb[k], fit.ci_ub[k], fit.pval[k], fit.df[k])
                for k, t in enumerate(fit.terms) if t != "(Intercept)"]  # fmt: skip
        if {"repaired", "unrepaired"} <= set(terms):
            c = fit.contrast(contrast)
            rows.append(OutcomeRow("repaired_minus_unrepaired", c.estimate, c.se, c.ci_lb, c.ci_ub, c.pval, c.df))
    else:
        X = np.column_stack([np.ones(n), data[terms].to_numpy(dtype=float)])
        y = data["change"].to_numpy(dtype=float)
        coef, *_ = np.linalg.lstsq(X, y, rcond=None)
        resid = y - X @ coef
        df = n - X.shape[1]
        vcov = float(resid @ resid) / df * np.linalg.inv(X.T @ X)
        crit = critical_value(level, df)
        method = "ordinary least squares, t tests"
        rows = []
        for k, t in enumerate(terms, start=1):
            se = float(np.sqrt(vcov[k, k]))
            rows.append(OutcomeRow(t, float(coef[k]), se, coef[k] - crit * se, coef[k] + crit * se,
                                   float(p_value(coef[k] / se, df)), float(df)))  # fmt: skip
        if {"repaired", "unrepaired"} <= set(terms):
            L = np.zeros(X.shape[1])
            L[1 + terms.index("repaired")], L[1 + terms.index("unrepaired")] = 1.0, -1.0
            est, se = float(L @ coef), float(np.sqrt(L @ vcov @ L))
            rows.append(OutcomeRow("repaired_minus_unrepaired", est, se, est - crit * se, est + crit * se,
                                   float(p_value(est / se, df)), float(df)))  # fmt: skip
    for t in constant:
        rows.insert(OUTCOME_TERMS.index(t), OutcomeRow(t, np.nan, np.nan, np.nan, np.nan, np.nan, np.nan))
    return rows, n, method
