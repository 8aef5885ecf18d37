"""SYNTHETIC session-level alliance data: a seeded generator with known, documented parameters.

Every value produced here is simulated; the bundled file ``data/raw/alliance_sessions_synthetic.csv``
is labelled SYNTHETIC in its name, in ``data/raw/README.md`` and in every report caption, and must
never be cited as evidence about the alliance.  Its purpose is to exercise the session-level
analyses (:mod:`alliancemeta.pipeline.sessions`) on data whose true parameters are known, so that recovery
can be tested; the truth is written next to the data (``*.truth.json``).

Design (sites > therapists > clients > sessions; defaults in :class:`SessionSimulationParameters`):

- **Nesting.**  Therapists are split evenly over the sites; every therapist sees at least
  :data:`MIN_CASELOAD` clients, the rest are allocated with gamma-distributed caseload weights.
- **Sessions and dropout.**  Each client has 8-20 planned sessions.  After every attended session
  from session 3 on, the client drops out with probability
  :math:`\\operatorname{logit}^{-1}(\\operatorname{logit}(p_0) + \\delta\\, s_{it}/\\sigma_s)`: a random
  (MCAR) part :math:`p_0` plus an informative part driven by the client's *observed* alliance state
  (a low-alliance session, e.g. an unrepaired rupture, makes dropout likelier).  Dropout therefore
  depends on observed values only (missing at random), the case that likelihood-based mixed models
  handle without bias.
- **Alliance** (sum of the three Bordin subscales, 3-15; each subscale a WAI-SR-like item mean on
  1-5, rounded to the 0.25 grid of a four-item mean).  The latent alliance of client *i* of
  therapist *j* at session *t* is

  .. math::

      A^*_{ijt} = \\mu_A + u_j + b_i + s_{it}, \\qquad s_{it} = w_{it} + d_{it},

  with a therapist component :math:`u_j \\sim N(0, \\sigma_u^2)`, a trait-like client component
  :math:`b_i \\sim N(\\gamma_{\\text{group}}\\,[\\text{format = group}], \\sigma_b^2)`, a state-like
  stationary AR(1) fluctuation :math:`w_{it}` (autocorrelation :math:`\\rho`, SD :math:`\\sigma_s`)
  and rupture dips :math:`d_{it}` (below).  The subscales are
  :math:`A^*/3 + \\text{profile}_{ik} + e_{itk}` with client profiles and session noise that are
  centred over the three subscales, so they sum to :math:`A^*` before rounding; the observed
  ``alliance`` is *defined* as ``alliance_goal + alliance_task + alliance_bond`` (exactly, since
  quarter points are exact in binary floating point).  Rounding and clipping to [1, 5] are the only
  measurement error (SD about 0.125 on the sum), which attenuates effects by about 1-2%.
- **Rupture-repair episodes.**  A share of clients has one episode: at a session drawn from
  ``4 .. planned - 3`` the alliance state dips by a depth drawn from ``rupture_depth`` and recovers
  linearly over 1-3 sessions (:math:`d = -D(1 - k/L)` for ``k = 0 .. L``).  The truth counts the
  episodes whose dip session was observed and those whose recovery session was observed.
- **Outcome** (symptom score, **lower is better**, OQ-45-like 0-180 total, rounded to integers and
  clipped to [0, 180]; with the defaults clipping is essentially never needed and its count is
  in the truth).  With the therapist's caseload mean trait :math:`\\bar b_j`,

  .. math::

      Y_{ijt} = \\mu_Y + \\text{site}_{s} + v_j + c_i + (g + g_i)(t - 1)
              + \\beta_T (u_j + \\bar b_j) + \\beta_B (b_i - \\bar b_j)
              + \\beta_W\\, s_{i,t-1} + \\varepsilon_{ijt},

  where :math:`s_{i0} = 0`.  The therapist-level alliance :math:`u_j + \\bar b_j` (the therapist's
  true caseload mean, Baldwin, Wampold & Imel 2007) and the client's deviation from it
  :math:`b_i - \\bar b_j` are exactly the latent counterparts of the analysis' ``alliance_therapist``
  and ``alliance_between``; the lagged within-client effect :math:`\\beta_W` acts from the state at
  the previous session on the next session's symptoms (Falkenström, Granström & Holmqvist 2013).
  The same-session within-client association is not a parameter of this model: it arises only
  through the autocorrelation of the state.
- Covariates: ``gender`` (female/male) and ``format`` (individual/group) per client.

What the analyses should find (see the ``notes`` of the truth file): the lagged within-client
effect without bias; the between-client effect somewhat attenuated (observed client means include
the state fluctuation and the dips; 40 replicates gave 2.71 on average for a true 3.0, well inside
the standard error of about 0.65); the therapist effect with a wide interval (30 therapists).
Because the alliance components shift the whole symptom trajectory from session 1 on, early
alliance predicts *residualised change* only through the lagged within-client effect, so the
client-level correlation is small by construction.

The truth file gives the parameters on the raw outcome scale (negative = alliance lowers
symptoms) and, under ``reported``, with the sign convention of the analysis tables (positive = a
stronger alliance goes with a better outcome).

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
COLUMNS = (
    "site", "therapist", "client", "session", "gender", "format",
    "alliance", "alliance_goal", "alliance_task", "alliance_bond", "outcome",
)  # fmt: skip


@dataclass(frozen=True)
class SessionSimulationParameters:
    """True parameters of the session-level generator (alliance on the 3-15 sum scale, outcome on a
    0-180 symptom scale where lower is better)."""

    n_sites: int = 4
    n_therapists: int = 30
    n_clients: int = 300
    planned_sessions: tuple[int, int] = (8, 20)
    # alliance
    mu_alliance: float = 11.2
    sd_alliance_therapist: float = 0.5
    sd_alliance_trait: float = 1.1
    sd_alliance_state: float = 0.8
    rho_alliance_state: float = 0.3
    group_format_shift: float = -0.4
    share_group_format: float = 0.3
    share_female: float = 0.65
    sd_subscale_profile: float = 0.2
    sd_subscale_noise: float = 0.15
    # rupture-repair episodes
    share_rupture: float = 0.3
    rupture_depth: tuple[float, float] = (3.0, 5.0)
    rupture_repair_sessions: tuple[int, int] = (1, 3)
    # dropout
    dropout_base: float = 0.03
    dropout_alliance: float = -0.5  # log-odds per state SD
    # outcome
    mu_outcome: float = 80.0
    sd_site: float = 3.0
    sd_outcome_therapist: float = 4.0
    sd_outcome_client: float = 12.0
    slope_session: float = -1.3
    sd_slope_session: float = 0.4
    sd_residual: float = 7.0
    beta_therapist: float = -6.0
    beta_between: float = -3.0
    beta_within_lag: float = -1.6


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


def _ar1(rng: np.random.Generator, n: int, rho: float, sd: float) -> np.ndarray:
    """Stationary AR(1) series with marginal SD ``sd``."""
    x = np.empty(n)
    x[0] = rng.normal(0.0, sd)
    innov = rng.normal(0.0, sd * np.sqrt(1.0 - rho**2), n)
    for t in range(1, n):
        x[t] = rho * x[t - 1] + innov[t]
    return x


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
        and session.
    truth : dict
        The parameters, the realised counts (clients, sessions, dropouts, rupture episodes) and the
        effects with the reporting sign convention (positive = stronger alliance, better outcome).
    """
    p = params or SessionSimulationParameters()
    overrides = {"n_sites": n_sites, "n_therapists": n_therapists, "n_clients": n_clients}
    p = dataclasses.replace(p, **{k: v for k, v in overrides.items() if v is not None})
    if p.n_therapists < p.n_sites:
        raise ValueError("need at least one therapist per site")
    rng = np.random.default_rng(seed)

    therapist_site = np.arange(p.n_therapists) * p.n_sites // p.n_therapists
    client_therapist = _allocate_clients(rng, p)
    site_effect = rng.normal(0.0, p.sd_site, p.n_sites)
    u = rng.normal(0.0, p.sd_alliance_therapist, p.n_therapists)
    v = rng.normal(0.0, p.sd_outcome_therapist, p.n_therapists)

    n = p.n_clients
    female = rng.random(n) < p.share_female
    group = rng.random(n) < p.share_group_format
    b = p.group_format_shift * group + rng.normal(0.0, p.sd_alliance_trait, n)
    caseload = np.bincount(client_therapist, None, p.n_therapists)
    caseload_mean = np.bincount(client_therapist, b, p.n_therapists) / caseload
    c = rng.normal(0.0, p.sd_outcome_client, n)
    g = rng.normal(p.slope_session, p.sd_slope_session, n)
    planned = rng.integers(p.planned_sessions[0], p.planned_sessions[1] + 1, n)
    profile = rng.normal(0.0, p.sd_subscale_profile, (n, 3))
    profile -= profile.mean(axis=1, keepdims=True)

    width = len(str(n))
    t_width = len(str(p.n_therapists))
    rows, episodes = [], []
    n_dropout = n_clip_subscale = n_clip_outcome = 0
    for i in range(n):
        j = client_therapist[i]
        T = int(planned[i])
        state = _ar1(rng, T, p.rho_alliance_state, p.sd_alliance_state)
        has_rupture = rng.random() < p.share_rupture
        onset = depth = repair = None
        if has_rupture:
            onset = int(rng.integers(4, T - 3 + 1))  # 1-based session of the dip
            depth = float(rng.uniform(*p.rupture_depth))
            repair = int(rng.integers(p.rupture_repair_sessions[0], p.rupture_repair_sessions[1] + 1))
            k = np.arange(repair + 1)
            state[onset - 1 + k] -= depth * (1.0 - k / repair)
        latent = p.mu_alliance + u[j] + b[i] + state
        sub, clipped = _subscales(rng, latent, profile[i], p)
        n_clip_subscale += clipped
        # dropout after sessions FIRST_DROPOUT_SESSION .. T-1, driven by the attended session's state
        attended = T
        draws = rng.random(T)
        base_logit = np.log(p.dropout_base / (1 - p.dropout_base))
        for t in range(FIRST_DROPOUT_SESSION, T):
            logit = base_logit + p.dropout_alliance * state[t - 1] / p.sd_alliance_state
            if draws[t - 1] < 1.0 / (1.0 + np.exp(-logit)):
                attended = t
                n_dropout += 1
                break
        lag = np.concatenate([[0.0], state[:-1]])
        session = np.arange(1, T + 1)
        y = (
            p.mu_outcome + site_effect[therapist_site[j]] + v[j] + c[i] + g[i] * (session - 1)
            + p.beta_therapist * (u[j] + caseload_mean[j]) + p.beta_between * (b[i] - caseload_mean[j])
            + p.beta_within_lag * lag + rng.normal(0.0, p.sd_residual, T)
        )  # fmt: skip
        y_round = np.round(y)
        n_clip_outcome += int(np.sum((y_round[:attended] < OUTCOME_RANGE[0]) | (y_round[:attended] > OUTCOME_RANGE[1])))
        y_round = np.clip(y_round, *OUTCOME_RANGE)
        client_id = f"c{i + 1:0{width}d}"
        if has_rupture:
            episodes.append(
                RuptureEpisode(client_id, onset, depth, repair, onset <= attended, onset + repair <= attended)
            )
        for t in range(attended):
            rows.append(
                (
                    f"s{therapist_site[j] + 1}", f"t{j + 1:0{t_width}d}", client_id, t + 1,
                    "female" if female[i] else "male", "group" if group[i] else "individual",
                    float(sub[t].sum()), float(sub[t, 0]), float(sub[t, 1]), float(sub[t, 2]), int(y_round[t]),
                )
            )  # fmt: skip
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    truth = _truth(seed, p, frame, episodes, n_dropout, n_clip_subscale, n_clip_outcome)
    return frame, truth


def _truth(seed, p, frame, episodes, n_dropout, n_clip_subscale, n_clip_outcome) -> dict:
    observed = [e for e in episodes if e.observed]
    effects = {
        "alliance_within_lag": p.beta_within_lag,
        "alliance_between": p.beta_between,
        "alliance_therapist": p.beta_therapist,
        "session": p.slope_session,
    }
    return {
        "description": "SYNTHETIC session-level alliance data; generated by alliancemeta.sessions.synthetic",
        "seed": seed,
        "parameters": {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(p).items()},
        "outcome_lower_is_better": True,
        "alliance_scale": "sum of goal, task and bond subscales (each a 1-5 item mean), range 3-15",
        "effects_raw": effects,
        "reported": {
            "note": "effects with the reporting convention: outcome sign-flipped, so positive = better",
            **{k: -v for k, v in effects.items()},
        },
        "counts": {
            "sites": int(frame["site"].nunique()),
            "therapists": int(frame["therapist"].nunique()),
            "clients": int(frame["client"].nunique()),
            "sessions": len(frame),
            "dropouts": n_dropout,
            "subscale_scores_clipped": n_clip_subscale,
            "outcomes_clipped": n_clip_outcome,
            "rupture_episodes_simulated": len(episodes),
            "rupture_episodes_observed": len(observed),
            "rupture_episodes_repair_observed": sum(e.repair_observed for e in observed),
        },
        "notes": [
            "alliance effects shift the whole symptom trajectory (from session 1 on): early alliance predicts "
            "residualised outcome change only through the lagged within-client effect, so that correlation is small",
            "observed alliance = latent + rounding to the 0.25 subscale grid and clipping to [1, 5] (SD about 0.125 "
            "on the sum), attenuating effects by about 1-2%",
            "observed client means include the state fluctuation and rupture dips, so alliance_between is attenuated "
            "(40 replicates: mean 2.71 for a true 3.0, SE about 0.65)",
            "the same-session within-client association is not a parameter: it arises only through the AR(1) state",
        ],
        "rupture_episodes": [
            {**dataclasses.asdict(e), "depth": round(e.depth, 6)} for e in episodes
        ],
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
    parser.add_argument("--clients", type=int, default=None, help="number of clients (default 300)")
    parser.add_argument("--therapists", type=int, default=None, help="number of therapists (default 30)")
    parser.add_argument("--sites", type=int, default=None, help="number of sites (default 4)")
    args = parser.parse_args(argv)
    csv, truth = write_simulated_sessions(
        args.seed, args.out, n_clients=args.clients, n_therapists=args.therapists, n_sites=args.sites
    )
    print(f"wrote {csv} and {truth}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
