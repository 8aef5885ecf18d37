"""SYNTHETIC session-level alliance data: a seeded generator with known, documented parameters.

Every value produced here is simulated; the bundled file ``data/raw/alliance_sessions_synthetic.csv``
is labelled SYNTHETIC in its name, in ``data/raw/README.md`` and in every report caption, and must
never be cited as evidence about the alliance.  Its purpose is to exercise the session-level
analyses on data whose true parameters are known and that have the features which make real
session data hard (Falkenström, Finkel, Sandell, Rubel & Holmqvist 2017; Hamaker, Asparouhov &
Muthén's dynamic structural equation models, Asparouhov, Hamaker & Muthén 2018; McNeish & Hamaker
2020): outcome autoregression, feedback from symptoms to the next alliance, correlated client trends
in alliance and symptoms, client differences in the alliance effect, missed sessions, missing
cells and dropout.  The truth is written next to the data (``*.truth.json``), with the estimand
that each true value belongs to.

Design (sites > therapists > cases > clients > sessions; defaults in
:class:`SessionSimulationParameters`; raw outcome scale, where *lower is better*):

- **Nesting.**  Therapists are split evenly over the sites; every therapist sees at least
  :data:`MIN_CASELOAD` clients, the rest are allocated with gamma-distributed caseload weights.
  A therapist's clients are grouped into *cases*: single clients in ``individual`` or ``group``
  format, two clients in ``couple`` and three or four in ``family`` format.  Members of a case are
  seen together: they share the planned sessions, the missed sessions and the dropout.
- **Client level** (all values at the reference session :math:`c` = ``session_centre``).  With
  therapist *j*, case *k*, client *i*:

  .. math::

      \\mu^A_i &= \\mu_A + \\tau^A_j + \\gamma_{\\text{format}} + \\kappa_k + \\epsilon^A_i, \\\\
      \\mu^Y_i &= \\mu_Y + \\text{site}_s + v_j + \\beta_T \\tau^A_j
                 + \\beta_B (\\gamma_{\\text{format}} + \\kappa_k + \\epsilon^A_i)
                 + \\beta_{\\text{split}}\\, \\Delta_k + \\beta_{\\text{age}} (\\text{age}_i - 40) + \\epsilon^Y_i,

  with a therapist alliance component :math:`\\tau^A_j`, a shared case component :math:`\\kappa_k`
  (couples and families only; the share of the client-level alliance variance it carries is
  ``case_alliance_share``) and :math:`\\Delta_k` the within-case *spread* of the members' latent
  alliance levels :math:`\\mu^A_i` (absolute difference for two members, SD with ``ddof = 1`` for
  three or four; 0 for single clients).  ``format`` and ``age`` act on one outcome only each (format
  on the alliance, age on symptoms), so neither confounds an alliance effect.
- **Trends.**  Client *i* has linear trends :math:`g^A_i` (alliance per session) and
  :math:`g^Y_i` (symptoms per session), bivariate normal with correlation ``trend_correlation``
  (negative: clients whose alliance rises fastest improve fastest, the confound of Wang & Maxwell
  2015 that biases a person-mean-centred lagged alliance).
- **Session level** (Asparouhov et al. 2018, eq. 1-4: a bivariate VAR(1) of the within-client
  deviations from the client's trend lines).  With :math:`a_{it}` the alliance and :math:`y_{it}`
  the symptom deviation from the trend line at session *t*,

  .. math::

      w_{it} &= \\phi_A w_{i,t-1} + \\delta\\, y_{i,t-1} + e^A_{it}, \\qquad a_{it} = w_{it} + d_{it}, \\\\
      y_{it} &= \\phi_Y y_{i,t-1} + (\\beta_W + b_i)\\, a_{i,t-1} + e^Y_{it}, \\\\
      A^*_{it} &= \\mu^A_i + g^A_i (t - c) + a_{it}, \\qquad Y_{it} = \\mu^Y_i + g^Y_i (t - c) + y_{it},

  with correlated innovations :math:`(e^A, e^Y)` (SDs ``sd_alliance_innovation``,
  ``sd_outcome_innovation``, correlation ``innovation_correlation``: the same-session
  association), random client slopes :math:`b_i \\sim N(0, \\sigma_b^2)` of the lagged alliance
  effect, feedback :math:`\\delta` from symptoms to the next alliance, rupture dips
  :math:`d_{it}` (below) and the first session's :math:`(w, y)` drawn from the stationary
  distribution of the client's VAR.  The process runs through missed sessions (they happen in time,
  only the measurement is missing).
- **Rupture-repair episodes.**  A share of clients has one episode: at a session drawn from
  ``4 .. planned - 3`` the alliance dips by a depth drawn from ``rupture_depth`` and recovers
  linearly over 1-3 sessions (:math:`d = -D(1 - k/L)` for ``k = 0 .. L``).  The dip feeds the next
  session's symptoms through :math:`\\beta_W + b_i` like any other alliance deviation.  The truth
  counts the episodes whose dip session was observed and those whose recovery session was observed.
- **Measurement.**  The alliance is the sum of the three Bordin subscales (3-15); each subscale is
  :math:`A^*/3` plus a client profile and session noise centred over the three subscales, rounded
  to the 0.25 grid of a four-item mean and clipped to [1, 5], so the subscales are collinear with
  the total and ``alliance`` is *defined* as their exact sum.  Rounding is the only measurement
  error (SD about 0.125 on the sum).  Symptoms (OQ-45-like, 0-180) are rounded to integers.
- **Missing data.**  After session 1 each planned session is missed with probability
  ``p_missed_session`` (the row is absent: a gap in the session numbers).  In attended sessions the
  alliance (with its subscales) and the outcome are left blank independently with probabilities
  ``p_missing_alliance`` and ``p_missing_outcome`` (MCAR).  After every attended session from
  session 3 on, the case drops out with probability
  :math:`\\operatorname{logit}^{-1}(\\operatorname{logit}(p_0) + \\lambda_A z^A + \\lambda_Y z^Y)`,
  where :math:`z^A, z^Y` are the members' mean *observed* alliance and (aligned, higher = better)
  outcome in standard units (a blank counts as 0): low alliance and early improvement both end
  treatment.  Dropout depends on observed values only (missing at random), the case that
  likelihood-based models handle without bias.
- **Covariates**: ``gender`` (female/male), ``age`` (years) and ``format`` per client.

The truth file gives the parameters on the raw outcome scale and, under ``reported``, every effect
with the sign convention of the analysis tables (outcome aligned so that positive = better:
alliance-outcome effects and the symptom trend change sign, autoregressions do not).  Under
``estimands`` each true value is described in words, with the table term that estimates it.

:meth:`SessionSimulationParameters.static` switches the dynamics off (no outcome autoregression,
feedback, trend correlation, random slopes, gaps, blank cells): data on which the classical
person-mean-centred lagged mixed model is unbiased, for tests of the estimation machinery.

Regenerate the bundled file byte for byte with::

    python -m alliancemeta.sessions.synthetic --seed 20261121 --out data/raw/alliance_sessions_synthetic.csv
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import linalg

from alliancemeta.core.tables import atomic_path, write_csv

SEED = 20261121
#: Every therapist sees at least this many clients, so therapist means are defined and estimable.
MIN_CASELOAD = 3
#: Dropout is possible only after this session, so every client contributes early-alliance data.
FIRST_DROPOUT_SESSION = 3
#: Quarter points: a WAI-SR subscale is the mean of four 1-5 items.
SUBSCALE_GRID = 0.25
SUBSCALE_RANGE = (1.0, 5.0)
OUTCOME_RANGE = (0.0, 180.0)
AGE_RANGE = (18, 80)
#: Age is centred here in the outcome equation (years).
AGE_CENTRE = 40.0
FORMATS = ("individual", "group", "couple", "family")
COLUMNS = (
    "site", "therapist", "case", "client", "session", "gender", "age", "format",
    "alliance", "alliance_goal", "alliance_task", "alliance_bond", "outcome",
)  # fmt: skip


@dataclass(frozen=True)
class SessionSimulationParameters:
    """True parameters of the session-level generator (alliance on the 3-15 sum scale, outcome on a
    0-180 symptom scale where lower is better; effects in raw units, see the module docstring)."""

    n_sites: int = 4
    n_therapists: int = 35
    n_clients: int = 350
    planned_sessions: tuple[int, int] = (8, 20)
    #: reference session at which the client levels mu^A_i, mu^Y_i are defined
    session_centre: float = 7.0
    # formats: probabilities of a case's format (individual, group, couple, family)
    format_probabilities: tuple[float, float, float, float] = (0.55, 0.2, 0.15, 0.1)
    share_female: float = 0.65
    age_mean: float = 38.0
    age_sd: float = 12.0
    # alliance levels
    mu_alliance: float = 11.0
    sd_alliance_therapist: float = 0.5
    sd_alliance_client: float = 1.1
    case_alliance_share: float = 0.4
    group_format_shift: float = -0.4
    sd_subscale_profile: float = 0.2
    sd_subscale_noise: float = 0.15
    # outcome levels
    mu_outcome: float = 80.0
    sd_site: float = 3.0
    sd_outcome_therapist: float = 4.0
    sd_outcome_client: float = 12.0
    beta_therapist: float = -6.0
    beta_between: float = -3.0
    beta_split: float = 2.0
    beta_age: float = 0.1
    # trends (per session)
    mean_alliance_trend: float = 0.06
    sd_alliance_trend: float = 0.08
    mean_outcome_trend: float = -1.3
    sd_outcome_trend: float = 0.5
    trend_correlation: float = -0.5
    # within-client dynamics
    alliance_ar: float = 0.3
    outcome_ar: float = 0.35
    beta_within_lag: float = -1.6
    sd_within_slope: float = 0.6
    outcome_to_alliance: float = -0.02
    sd_alliance_innovation: float = 0.75
    sd_outcome_innovation: float = 7.0
    innovation_correlation: float = -0.2
    # rupture-repair episodes
    share_rupture: float = 0.3
    rupture_depth: tuple[float, float] = (3.0, 5.0)
    rupture_repair_sessions: tuple[int, int] = (1, 3)
    # missing data and dropout
    p_missed_session: float = 0.07
    p_missing_alliance: float = 0.04
    p_missing_outcome: float = 0.03
    dropout_base: float = 0.03
    dropout_alliance: float = -0.5  # log-odds per SD of the observed alliance
    dropout_outcome: float = 0.3  # log-odds per SD of the observed aligned outcome (feeling better)

    @classmethod
    def static(cls, **changes) -> SessionSimulationParameters:
        """Parameters without the dynamic features: no outcome autoregression, symptom feedback, trend
        correlation or random alliance slopes, no missed sessions or blank cells (dropout stays)."""
        base = {
            "outcome_ar": 0.0, "outcome_to_alliance": 0.0, "trend_correlation": 0.0, "sd_within_slope": 0.0,
            "sd_alliance_trend": 0.0, "mean_alliance_trend": 0.0, "innovation_correlation": 0.0,
            "p_missed_session": 0.0, "p_missing_alliance": 0.0, "p_missing_outcome": 0.0,
        }  # fmt: skip
        return cls(**{**base, **changes})

    def alliance_sd(self) -> float:
        """Approximate marginal SD of the alliance (standard unit of the dropout model)."""
        return float(np.sqrt(self.sd_alliance_therapist**2 + self.sd_alliance_client**2
                             + self.sd_alliance_innovation**2 / (1 - self.alliance_ar**2)))  # fmt: skip

    def outcome_sd(self) -> float:
        """Approximate marginal SD of the outcome (standard unit of the dropout model)."""
        return float(np.sqrt(self.sd_site**2 + self.sd_outcome_therapist**2 + self.sd_outcome_client**2
                             + self.sd_outcome_innovation**2 / (1 - self.outcome_ar**2)))  # fmt: skip


@dataclass(frozen=True)
class RuptureEpisode:
    client: str
    session: int
    depth: float
    repair_sessions: int
    observed: bool  # the dip session was attended
    repair_observed: bool  # the session at which the alliance is back was attended


def _allocate_clients(rng: np.random.Generator, p: SessionSimulationParameters) -> np.ndarray:
    """Therapist index of every client: MIN_CASELOAD each, the rest by gamma caseload weights."""
    if p.n_clients < MIN_CASELOAD * p.n_therapists:
        raise ValueError(f"n_clients must be at least {MIN_CASELOAD} x n_therapists")
    weights = rng.gamma(4.0, 1.0, p.n_therapists)
    extra = rng.choice(p.n_therapists, size=p.n_clients - MIN_CASELOAD * p.n_therapists, p=weights / weights.sum())
    return np.sort(np.concatenate([np.repeat(np.arange(p.n_therapists), MIN_CASELOAD), extra]))


def _form_cases(rng: np.random.Generator, client_therapist: np.ndarray, p: SessionSimulationParameters):
    """Group each therapist's clients into cases; returns (case index, format index) per client.

    Formats are drawn per case with ``format_probabilities``; a couple needs two and a family three
    or four of the therapist's remaining clients, otherwise the case becomes individual."""
    n = client_therapist.size
    case = np.empty(n, dtype=int)
    fmt = np.empty(n, dtype=int)
    k = i = 0
    probs = np.asarray(p.format_probabilities, dtype=float)
    probs = probs / probs.sum()
    while i < n:
        remaining = int(np.sum(client_therapist[i:] == client_therapist[i]))
        f = int(rng.choice(len(FORMATS), p=probs))
        size = {0: 1, 1: 1, 2: 2, 3: int(rng.integers(3, 5))}[f]
        if size > remaining:
            f, size = 0, 1
        case[i : i + size] = k
        fmt[i : i + size] = f
        i += size
        k += 1
    return case, fmt


def _spread(levels: np.ndarray) -> float:
    """Within-case spread: |difference| for two members, SD (ddof = 1) for more, 0 for one."""
    if levels.size == 1:
        return 0.0
    if levels.size == 2:
        return float(abs(levels[0] - levels[1]))
    return float(np.std(levels, ddof=1))


def _stationary_cov(transition: np.ndarray, innovation_cov: np.ndarray) -> np.ndarray:
    """Stationary covariance :math:`\\Sigma = B\\Sigma B' + Q` of a VAR(1) (discrete Lyapunov equation)."""
    if np.max(np.abs(np.linalg.eigvals(transition))) >= 1.0:
        raise ValueError("the within-client VAR(1) is not stationary for these parameters")
    return linalg.solve_discrete_lyapunov(transition, innovation_cov)


def _dynamics(rng, T: int, beta_i: float, dips: np.ndarray, p: SessionSimulationParameters):
    """Alliance and symptom deviations from the trend lines over ``T`` sessions (raw scale)."""
    s_a, s_y, r = p.sd_alliance_innovation, p.sd_outcome_innovation, p.innovation_correlation
    Q = np.array([[s_a**2, r * s_a * s_y], [r * s_a * s_y, s_y**2]])
    B = np.array([[p.alliance_ar, p.outcome_to_alliance], [beta_i, p.outcome_ar]])
    L0 = np.linalg.cholesky(_stationary_cov(B, Q))
    LQ = np.linalg.cholesky(Q)
    z = rng.standard_normal((T, 2))
    w = np.empty(T)
    y = np.empty(T)
    w[0], y[0] = L0 @ z[0]
    for t in range(1, T):
        e = LQ @ z[t]
        w[t] = p.alliance_ar * w[t - 1] + p.outcome_to_alliance * y[t - 1] + e[0]
        y[t] = p.outcome_ar * y[t - 1] + beta_i * (w[t - 1] + dips[t - 1]) + e[1]
    return w + dips, y


def _subscales(rng, latent, profile, p: SessionSimulationParameters) -> tuple[np.ndarray, int]:
    """Three subscale scores per session (columns goal, task, bond) that sum to ``latent`` before rounding."""
    noise = rng.normal(0.0, p.sd_subscale_noise, (latent.size, 3))
    noise -= noise.mean(axis=1, keepdims=True)
    raw = latent[:, None] / 3.0 + profile[None, :] + noise
    grid = np.round(raw / SUBSCALE_GRID) * SUBSCALE_GRID
    return np.clip(grid, *SUBSCALE_RANGE), int(np.sum((grid < SUBSCALE_RANGE[0]) | (grid > SUBSCALE_RANGE[1])))


def simulate_sessions(
    seed: int = SEED,
    n_sites: int | None = None,
    n_therapists: int | None = None,
    n_clients: int | None = None,
    params: SessionSimulationParameters | None = None,
) -> tuple[pd.DataFrame, dict]:
    """Simulate a SYNTHETIC session-level dataset (see the module docstring for the model).

    Parameters
    ----------
    seed : int
        Seed of the numpy ``Generator`` (PCG64); the same seed gives the same data on every platform.
    n_sites, n_therapists, n_clients : int, optional
        Override the sizes in ``params`` (convenient for small test datasets).
    params : SessionSimulationParameters, optional
        The true parameters; defaults to :class:`SessionSimulationParameters`.

    Returns
    -------
    frame : DataFrame
        One row per attended client-session with the columns of :data:`COLUMNS`, sorted by client
        and session; blank (NaN) ``alliance`` (with its subscales) or ``outcome`` cells are missing
        measurements, absent session numbers are missed sessions.
    truth : dict
        The parameters, the estimands with their true values on the raw and on the reporting scale
        (positive = stronger alliance, better outcome), and the realised counts.
    """
    p = params or SessionSimulationParameters()
    overrides = {"n_sites": n_sites, "n_therapists": n_therapists, "n_clients": n_clients}
    p = dataclasses.replace(p, **{k: v for k, v in overrides.items() if v is not None})
    if p.n_therapists < p.n_sites:
        raise ValueError("need at least one therapist per site")
    if p.planned_sessions[0] < 7:
        raise ValueError("planned_sessions must start at 7 or more (rupture episodes need sessions 4 .. planned - 3)")
    rng = np.random.default_rng(seed)

    therapist_site = np.arange(p.n_therapists) * p.n_sites // p.n_therapists
    client_therapist = _allocate_clients(rng, p)
    client_case, client_format = _form_cases(rng, client_therapist, p)
    n, n_cases = p.n_clients, int(client_case.max()) + 1
    site_effect = rng.normal(0.0, p.sd_site, p.n_sites)
    tau_a = rng.normal(0.0, p.sd_alliance_therapist, p.n_therapists)
    v = rng.normal(0.0, p.sd_outcome_therapist, p.n_therapists)

    female = rng.random(n) < p.share_female
    age = np.clip(np.round(rng.normal(p.age_mean, p.age_sd, n)), *AGE_RANGE).astype(int)
    multi = np.bincount(client_case, minlength=n_cases)[client_case] > 1
    kappa = rng.normal(0.0, p.sd_alliance_client * np.sqrt(p.case_alliance_share), n_cases)[client_case] * multi
    indiv_sd = p.sd_alliance_client * np.where(multi, np.sqrt(1.0 - p.case_alliance_share), 1.0)
    eps_a = rng.normal(0.0, 1.0, n) * indiv_sd
    client_alliance = p.group_format_shift * (client_format == 1) + kappa + eps_a  # deviation from mu + tau_j
    level_a = p.mu_alliance + tau_a[client_therapist] + client_alliance
    spread = np.array([_spread(level_a[client_case == k]) for k in range(n_cases)])[client_case]
    level_y = (
        p.mu_outcome + site_effect[therapist_site[client_therapist]] + v[client_therapist]
        + p.beta_therapist * tau_a[client_therapist] + p.beta_between * client_alliance + p.beta_split * spread
        + p.beta_age * (age - AGE_CENTRE) + rng.normal(0.0, p.sd_outcome_client, n)
    )  # fmt: skip
    trend_z = rng.standard_normal((n, 2))
    trend_a = p.mean_alliance_trend + p.sd_alliance_trend * trend_z[:, 0]
    trend_y = p.mean_outcome_trend + p.sd_outcome_trend * (
        p.trend_correlation * trend_z[:, 0] + np.sqrt(1.0 - p.trend_correlation**2) * trend_z[:, 1]
    )
    slope = p.beta_within_lag + p.sd_within_slope * rng.standard_normal(n)
    profile = rng.normal(0.0, p.sd_subscale_profile, (n, 3))
    profile -= profile.mean(axis=1, keepdims=True)
    planned = rng.integers(p.planned_sessions[0], p.planned_sessions[1] + 1, n_cases)

    width, t_width, k_width = len(str(n)), len(str(p.n_therapists)), len(str(n_cases))
    base_logit = np.log(p.dropout_base / (1 - p.dropout_base))
    sd_a, sd_y = p.alliance_sd(), p.outcome_sd()
    rows, episodes = [], []
    counts = dict.fromkeys(("dropouts", "missed_sessions", "missing_alliance", "missing_outcome",
                            "subscale_scores_clipped", "outcomes_clipped"), 0)  # fmt: skip
    for k in range(n_cases):
        members = np.flatnonzero(client_case == k)
        T = int(planned[k])
        session = np.arange(1, T + 1)
        missed = np.concatenate([[False], rng.random(T - 1) < p.p_missed_session])
        alliance, sub, outcome, client_episodes = [], [], [], []
        for i in members:
            dips = np.zeros(T)
            if rng.random() < p.share_rupture:
                onset = int(rng.integers(4, T - 3 + 1))  # 1-based session of the dip
                depth = float(rng.uniform(*p.rupture_depth))
                repair = int(rng.integers(p.rupture_repair_sessions[0], p.rupture_repair_sessions[1] + 1))
                steps = np.arange(repair + 1)
                dips[onset - 1 + steps] = -depth * (1.0 - steps / repair)
                client_episodes.append((i, onset, depth, repair))
            a_dev, y_dev = _dynamics(rng, T, float(slope[i]), dips, p)
            latent_a = level_a[i] + trend_a[i] * (session - p.session_centre) + a_dev
            s, clipped = _subscales(rng, latent_a, profile[i], p)
            counts["subscale_scores_clipped"] += clipped
            y = np.round(level_y[i] + trend_y[i] * (session - p.session_centre) + y_dev)
            counts["outcomes_clipped"] += int(np.sum((y < OUTCOME_RANGE[0]) | (y > OUTCOME_RANGE[1])))
            y = np.clip(y, *OUTCOME_RANGE)
            a = s.sum(axis=1)
            blank_a = rng.random(T) < p.p_missing_alliance
            blank_y = rng.random(T) < p.p_missing_outcome
            a[blank_a] = np.nan
            s[blank_a] = np.nan
            y[blank_y] = np.nan
            alliance.append(a)
            sub.append(s)
            outcome.append(y)
        # dropout after attended sessions FIRST_DROPOUT_SESSION .. T-1, from the members' observed values
        alliance_m, outcome_m = np.array(alliance), np.array(outcome)
        z = (np.nan_to_num((alliance_m - p.mu_alliance) / sd_a).mean(axis=0) * p.dropout_alliance
             + np.nan_to_num((p.mu_outcome - outcome_m) / sd_y).mean(axis=0) * p.dropout_outcome)  # fmt: skip
        draws = rng.random(T)
        last = T
        for t in range(FIRST_DROPOUT_SESSION, T):
            if missed[t - 1]:
                continue
            if draws[t - 1] < 1.0 / (1.0 + np.exp(-(base_logit + z[t - 1]))):
                last = t
                counts["dropouts"] += len(members)
                break
        attended = ~missed & (session <= last)
        last_attended = int(session[attended].max())
        counts["missed_sessions"] += len(members) * int(np.sum(missed & (session < last_attended)))
        for m, i in enumerate(members):
            client_id = f"c{i + 1:0{width}d}"
            for ci, onset, depth, repair in client_episodes:
                if ci == i:
                    episodes.append(
                        RuptureEpisode(
                            client_id,
                            onset,
                            depth,
                            repair,
                            bool(attended[onset - 1]),
                            bool(onset + repair <= last and attended[onset + repair - 1]),
                        )
                    )
            counts["missing_alliance"] += int(np.sum(np.isnan(alliance[m][attended])))
            counts["missing_outcome"] += int(np.sum(np.isnan(outcome[m][attended])))
            j = client_therapist[i]
            for t in np.flatnonzero(attended):
                rows.append(
                    (
                        f"s{therapist_site[j] + 1}", f"t{j + 1:0{t_width}d}", f"k{k + 1:0{k_width}d}", client_id,
                        t + 1, "female" if female[i] else "male", int(age[i]), FORMATS[client_format[i]],
                        float(alliance[m][t]), *(float(x) for x in sub[m][t]), float(outcome[m][t]),
                    )
                )  # fmt: skip
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    frame = frame.sort_values(["client", "session"], kind="stable").reset_index(drop=True)
    truth = _truth(seed, p, frame, episodes, counts)
    return frame, truth


#: Estimands: key -> (reported sign relative to raw, table term, description).  ``-1`` flips the
#: sign of effects on the outcome (aligned scale: positive = better).
ESTIMANDS = {
    "alliance_within_lag": (
        "beta_within_lag",
        -1,
        "lagged_latent: alliance_within (lagged: alliance_within)",
        "mean over clients of the within-client effect of the previous session's alliance deviation (from the "
        "client's latent linear trend) on this session's outcome deviation, the previous outcome held fixed; "
        "outcome points per alliance point",
    ),
    "outcome_to_alliance": (
        "outcome_to_alliance",
        -1,
        "lagged_latent: outcome_to_alliance",
        "within-client effect of the previous session's (aligned) outcome deviation on this session's alliance "
        "deviation, the previous alliance held fixed; alliance points per outcome point",
    ),
    "outcome_lag": (
        "outcome_ar",
        1,
        "lagged_latent: outcome_lag",
        "autoregression of the outcome deviations from the client's trend line (same on both scales)",
    ),
    "alliance_lag": (
        "alliance_ar",
        1,
        "lagged_latent: alliance_lag",
        "autoregression of the alliance deviations from the client's trend line (outside rupture dips)",
    ),
    "alliance_between": (
        "beta_between",
        -1,
        "lagged_latent, within_between, therapist: alliance_between",
        "regression of the client's latent outcome level on the client's latent alliance level (both at the "
        "reference session session_centre), within therapists",
    ),
    "alliance_therapist": (
        "beta_therapist",
        -1,
        "lagged_latent, within_between, therapist: alliance_therapist",
        "regression of the therapist's outcome level on the therapist's alliance level (the expected alliance "
        "of the therapist's clients)",
    ),
    "session": (
        "mean_outcome_trend",
        -1,
        "lagged_latent, within_between, lagged: session",
        "mean over clients of the linear outcome trend per session (aligned: positive = improvement)",
    ),
    "alliance_session": (
        "mean_alliance_trend",
        1,
        "lagged_latent: alliance_session",
        "mean over clients of the linear alliance trend per session",
    ),
    "alliance_split": (
        "beta_split",
        -1,
        "split: alliance_split",
        "effect on a member's outcome level of the within-case spread of the members' latent alliance levels "
        "(absolute difference for two members, SD with ddof = 1 for three or four)",
    ),
}


def _truth(seed, p: SessionSimulationParameters, frame, episodes, counts) -> dict:
    observed = [e for e in episodes if e.observed]
    effects = {key: getattr(p, name) for key, (name, *_rest) in ESTIMANDS.items()}
    return {
        "description": "SYNTHETIC session-level alliance data; generated by alliancemeta.sessions.synthetic",
        "seed": seed,
        "parameters": {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(p).items()},
        "outcome_lower_is_better": True,
        "alliance_scale": "sum of goal, task and bond subscales (each a 1-5 item mean), range 3-15",
        "effects_raw": effects,
        "reported": {
            "note": "effects with the reporting convention: outcome sign-flipped, so positive = better",
            **{key: sign * getattr(p, name) for key, (name, sign, *_rest) in ESTIMANDS.items()},
        },
        "random_effect_sds_reported": {
            "alliance_within_lag": p.sd_within_slope,
            "alliance_trend": p.sd_alliance_trend,
            "outcome_trend": p.sd_outcome_trend,
            "trend_correlation": -p.trend_correlation,
            "alliance_innovation": p.sd_alliance_innovation,
            "outcome_innovation": p.sd_outcome_innovation,
            "innovation_correlation": -p.innovation_correlation,
        },
        "estimands": {key: {"term": term, "meaning": text} for key, (_n, _s, term, text) in ESTIMANDS.items()},
        "counts": {
            "sites": int(frame["site"].nunique()),
            "therapists": int(frame["therapist"].nunique()),
            "cases": int(frame["case"].nunique()),
            "multi_client_cases": int((frame.groupby("case")["client"].nunique() > 1).sum()),
            "clients": int(frame["client"].nunique()),
            "sessions": len(frame),
            **counts,
            "rupture_episodes_simulated": len(episodes),
            "rupture_episodes_observed": len(observed),
            "rupture_episodes_repair_observed": sum(e.repair_observed for e in observed),
        },
        "notes": [
            "client levels, trends and the within-client VAR(1) are defined at the reference session "
            f"session_centre = {p.session_centre:g}; a model that centres time elsewhere estimates a slightly "
            "different between-client regression (the trends correlate)",
            "the classical lagged mixed model (person-mean-centred lagged alliance) is biased on these data: the "
            "correlated trends and the symptom feedback leak into its lagged alliance coefficient",
            "observed alliance = latent + rounding to the 0.25 subscale grid and clipping to [1, 5] (SD about 0.125 "
            "on the sum), attenuating the alliance effects by about 2%",
            "rupture dips are always negative, start at session 4 or later and recover over 1-3 sessions: they are "
            "part of the alliance deviations (and so act on the next outcome through the lagged alliance effect), "
            "but a model without them sees serially correlated negative shocks, which lengthen the alliance "
            "autocorrelation and flatten the observed alliance and outcome trends a little; alliance_lag, "
            "alliance_session and session are the parameters of the process outside the dips",
            "counts of dropouts, missed sessions and blank cells are per client (members of a case count each); "
            "missed_sessions counts the gaps before each client's last attended session",
        ],
        "rupture_episodes": [{**dataclasses.asdict(e), "depth": round(e.depth, 6)} for e in episodes],
    }


def write_simulated_sessions(seed: int, out: str | Path, **sizes) -> tuple[Path, Path]:
    """Write the SYNTHETIC CSV to ``out`` and its truth to ``out`` with ``.truth.json`` for ``.csv``."""
    out = Path(out)
    frame, truth = simulate_sessions(seed, **sizes)
    write_csv(frame, out, COLUMNS)
    truth_path = out.with_suffix(".truth.json")
    with atomic_path(truth_path) as tmp:
        tmp.write_text(json.dumps(truth, indent=2) + "\n")
    return out, truth_path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m alliancemeta.sessions.synthetic",
        description="Write the SYNTHETIC session-level alliance dataset and its truth file.",
    )
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--out", required=True, help="CSV path; the truth goes to <out stem>.truth.json")
    parser.add_argument("--clients", type=int, default=None, help="number of clients (default 350)")
    parser.add_argument("--therapists", type=int, default=None, help="number of therapists (default 35)")
    parser.add_argument("--sites", type=int, default=None, help="number of sites (default 4)")
    args = parser.parse_args(argv)
    csv, truth = write_simulated_sessions(
        args.seed, args.out, n_clients=args.clients, n_therapists=args.therapists, n_sites=args.sites
    )
    print(f"wrote {csv} and {truth}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
