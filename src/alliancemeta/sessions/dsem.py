"""``lagged_latent``: a dynamic multilevel model of alliance and outcome (DSEM-style; PyMC + nutpie).

Why.  The classical lagged mixed model (:mod:`alliancemeta.sessions.models`, ``lagged``) centres the
lagged alliance on the client's *observed* mean and enters the lagged outcome with a random
intercept.  On realistic session data three things bias it: client trends (alliance rising while
symptoms fall, differently from client to client) leak into the person-mean-centred lag (Wang &
Maxwell 2015); feedback from symptoms to the next alliance makes the person mean depend on future
outcomes (the Nickell 1981 bias of short panels; Falkenström, Finkel, Sandell, Rubel & Holmqvist
2017); and observed client means measure the latent means with error (Lüdtke et al. 2008).  A
dynamic structural equation model (Asparouhov, Hamaker & Muthén 2018; McNeish & Hamaker 2020)
separates the levels with latent, model-estimated client means and trends instead.

Model (alliance *A*, outcome *Y* aligned so that higher = better, client *i*, therapist *j*,
session *t*, :math:`t_c = t - c` with the time centre *c*; both variables standardised by their
observed mean and SD for sampling, coefficients reported on the data scale).

*Between level* (latent client levels at session *c*, hierarchically centred):

.. math::

    \\mu^A_i &\\sim N(\\alpha_A + \\tau^A_j,\\; \\sigma^2_{A}), \\\\
    \\mu^Y_i &\\sim N(\\alpha_Y + v_j + \\beta_T \\tau^A_j
                     + \\beta_B (\\mu^A_i - \\alpha_A - \\tau^A_j),\\; \\sigma^2_{Y}),

with therapist effects :math:`\\tau^A_j \\sim N(0, \\sigma^2_{TA})`, :math:`v_j \\sim N(0, \\sigma^2_{TY})`
(non-centred; without a therapist level, :data:`~alliancemeta.sessions.data.MIN_THERAPISTS`, they are
absent).  :math:`\\beta_B` is ``alliance_between`` (the client-level regression, within therapists,
of the latent outcome level on the latent alliance level) and :math:`\\beta_T` is
``alliance_therapist``.  With ``detrend`` (default) each client has latent linear trends
:math:`g^A_i = \\gamma_A + \\sigma_{gA} z_{1i}`, :math:`g^Y_i = \\gamma_Y + \\sigma_{gY}(\\rho_g z_{1i} +
\\sqrt{1-\\rho_g^2} z_{2i})` (non-centred), estimated jointly with everything else rather than
removed from the observed series beforehand (which biases the lags in short series); without it
the trends are the common :math:`\\gamma_A, \\gamma_Y`.  :math:`\\gamma_Y` is reported as
``session`` and :math:`\\gamma_A` as ``alliance_session``.

*Within level* (:mod:`alliancemeta.sessions.dsem_likelihood`): the deviations
:math:`a_{it} = A_{it} - \\mu^A_i - g^A_i t_c` and :math:`y_{it} = Y_{it} - \\mu^Y_i - g^Y_i t_c`
follow a bivariate VAR(1),

.. math::

    a_{it} &= \\phi_A a_{i,t-1} + \\delta\\, y_{i,t-1} + e^A_{it}, \\\\
    y_{it} &= \\phi_Y y_{i,t-1} + (\\beta_W + b_i)\\, a_{i,t-1} + e^Y_{it},

with :math:`(e^A, e^Y)` bivariate normal (SDs :math:`\\sigma_{eA}, \\sigma_{eY}`, correlation
:math:`\\rho_e`: the same-session association), random client slopes :math:`b_i \\sim N(0, \\sigma_b^2)`
of the lagged alliance effect (``random_slopes``; they enter the likelihood linearly and are
integrated out in closed form, so the sampler never meets their funnel), and each client's first
session drawn from a bivariate normal with its own SDs and correlation (no stationarity assumed).
Terms: ``alliance_within`` :math:`\\beta_W` (previous session's alliance deviation -> this session's
outcome), ``outcome_to_alliance`` :math:`\\delta`, ``outcome_lag`` :math:`\\phi_Y`, ``alliance_lag``
:math:`\\phi_A`.

*Sessions and missing cells.*  Each client's cells run without gaps from the first to the last
observed session; a missed session is a cell whose values are both missing, and every missing
alliance or outcome value is a parameter imputed by the sampler (flat prior: the within-level
density of the cell is its distribution), so a lag across a missed session is never taken from the
previous *row*.  Rows whose session numbers are not consecutive therefore stay linked through the
imputed session in between, as in Mplus' DSEM with ``TINTERVAL``.

Priors (on the standardised scale, where one unit is one SD of the observed variable; weakly
informative in the sense of Gelman et al. 2008 and the brms/rstanarm defaults):

- intercepts :math:`\\alpha_A, \\alpha_Y \\sim N(0, 1)` (the data are centred);
- between-level slopes :math:`\\beta_B, \\beta_T \\sim N(0, 1)`: a one-SD difference in alliance level
  moving the outcome level by more than two SDs is a priori unlikely;
- mean trends :math:`\\gamma_A, \\gamma_Y \\sim N(0, 0.2)` per session (0.2 SD per session is 4 SDs
  over 20 sessions: far beyond what psychotherapy change looks like);
- lagged effects :math:`\\phi_A, \\phi_Y, \\beta_W, \\delta \\sim N(0, 0.5)`: standardised lagged
  effects in session data are mostly below 0.3 (Falkenström et al. 2017; Zilcha-Mano 2017), and
  0.5 leaves the whole stationary range in reach; stationarity is not imposed;
- SDs of client and therapist levels, of the innovations and of the first session
  :math:`\\sim \\text{Half-}N(1)`; SDs of the client trends :math:`\\sim \\text{Half-}N(0.1)` per session;
  SD of the random alliance slopes :math:`\\sigma_b \\sim \\text{Half-}N(0.25)` (half the scale of the
  fixed effect's prior);
- correlations :math:`\\rho_g, \\rho_e, \\rho_0`: :math:`(\\rho + 1)/2 \\sim \\text{Beta}(2, 2)`, the
  LKJ(:math:`\\eta = 2`) distribution of a 2x2 correlation (Lewandowski, Kurowicka & Joe 2009),
  which keeps mass away from +-1.

Sampling: the project's one MCMC path (:func:`alliancemeta.core.mcmc.fit`: nutpie with numba, the
reported terms and variance parameters checked for r_hat <= 1.01, ess_bulk >= 400 and no divergence, one
retry with ``retry_target_accept`` and twice the draws, then :class:`~alliancemeta.core.errors.SamplingError`).
The client-trend SDs and their correlation mix slowest; the pipeline samples this model with
``sessions_bayes.lagged_latent_scale`` times the configured draws and tuning steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import arviz as az
import numpy as np
import pandas as pd
import pymc as pm
import pytensor.tensor as pt

from alliancemeta.core.errors import ModelError
from alliancemeta.core.mcmc import Diagnostics, fit
from alliancemeta.core.settings import SamplerSettings
from alliancemeta.sessions.data import aligned_outcome, has_therapist
from alliancemeta.sessions.dsem_likelihood import lagged_latent_loglik

MODEL = "lagged_latent"
#: Reported coefficients (rows of ``mixed_models.csv``), in SPEC order; ``alliance_therapist`` only
#: with a therapist level; ``session`` and ``alliance_session`` are the mean trends.
TERMS = ("alliance_within", "outcome_to_alliance", "outcome_lag", "alliance_lag", "alliance_between",
         "alliance_therapist", "session", "alliance_session")  # fmt: skip
#: Variance parameters (data scale), summarised separately by :func:`lagged_latent_variances`.
VARIANCE_PARAMETERS = (
    "sd_client_alliance", "sd_client_outcome", "sd_therapist_alliance", "sd_therapist_outcome",
    "sd_alliance_trend", "sd_outcome_trend", "trend_correlation", "sd_within_slope",
    "sd_alliance_innovation", "sd_outcome_innovation", "innovation_correlation",
    "sd_initial_alliance", "sd_initial_outcome", "initial_correlation",
)  # fmt: skip
#: Fewer pairs of consecutive sessions with both values observed than this leave the seven
#: within-level parameters without data; the model is then refused with an explanation.
MIN_LAGGED_PAIRS = 30
#: Columns of :func:`lagged_latent_summary`.
SUMMARY_COLUMNS = ("name", "estimate", "se", "ci_lb", "ci_ub", "ess_bulk", "ess_tail", "r_hat")


class LaggedLatentError(ModelError):
    """The data cannot support the ``lagged_latent`` model (the message says why and what to use instead)."""


# --------------------------------------------------------------------------------------------------
# data layout
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SessionGrid:
    """Client-session cells without gaps (see the module docstring), standardised values.

    ``alliance`` and ``outcome`` are per cell, standardised with ``*_mean`` and ``*_sd``, NaN where
    missing (blank cell or missed session); ``first`` marks each client's first cell (whose previous
    session is not in the data); ``time`` is ``session - time_centre``.
    """

    clients: tuple[str, ...]
    therapists: tuple[str, ...]
    client_therapist: np.ndarray | None
    cell_client: np.ndarray
    session: np.ndarray
    time: np.ndarray
    first: np.ndarray
    alliance: np.ndarray
    outcome: np.ndarray
    time_centre: float
    alliance_mean: float
    alliance_sd: float
    outcome_mean: float
    outcome_sd: float
    n_rows: int
    n_missed_sessions: int
    n_lagged_pairs: int

    @property
    def n_cells(self) -> int:
        return int(self.cell_client.size)


def session_grid(
    frame: pd.DataFrame, *, outcome_lower_is_better: bool, time_centre: float | None = None
) -> SessionGrid:
    """Lay ``frame`` (columns ``client``, ``session``, ``alliance``, ``outcome``, optional ``therapist``)
    out on the gap-free session grid; ``time_centre`` defaults to the mean session number of the rows."""
    data = frame.sort_values(["client", "session"], kind="stable")
    if data.duplicated(["client", "session"]).any():
        raise LaggedLatentError(f"{MODEL}: a client-session pair occurs twice; expected one row per client-session")
    y = aligned_outcome(data["outcome"], outcome_lower_is_better)
    a = data["alliance"].to_numpy(dtype=float)
    codes, clients = pd.factorize(data["client"].astype(str), sort=True)
    session = data["session"].to_numpy(dtype=np.int64)
    first_session = np.full(len(clients), np.iinfo(np.int64).max)
    last_session = np.full(len(clients), np.iinfo(np.int64).min)
    np.minimum.at(first_session, codes, session)
    np.maximum.at(last_session, codes, session)
    length = last_session - first_session + 1
    start = np.concatenate([[0], np.cumsum(length)[:-1]])
    n_cells = int(length.sum())
    cell_client = np.repeat(np.arange(len(clients)), length)
    cell_session = np.arange(n_cells) - np.repeat(start, length) + np.repeat(first_session, length)
    first = np.zeros(n_cells, dtype=bool)
    first[start] = True
    position = start[codes] + session - first_session[codes]
    a_mean, a_sd, y_mean, y_sd = np.nanmean(a), np.nanstd(a), np.nanmean(y), np.nanstd(y)
    if not (np.isfinite(a_sd) and a_sd > 0 and np.isfinite(y_sd) and y_sd > 0):
        raise LaggedLatentError(f"{MODEL}: alliance and outcome must vary (observed SDs {a_sd:.3g}, {y_sd:.3g})")
    alliance = np.full(n_cells, np.nan)
    outcome = np.full(n_cells, np.nan)
    alliance[position] = (a - a_mean) / a_sd
    outcome[position] = (y - y_mean) / y_sd
    both = np.isfinite(alliance) & np.isfinite(outcome)
    pairs = int(np.sum(both[1:] & both[:-1] & ~first[1:]))
    therapists, client_therapist = (), None
    if has_therapist(data):
        per_client = data.groupby(codes, sort=True)["therapist"].first().astype(str)
        t_codes, t_names = pd.factorize(per_client, sort=True)
        therapists, client_therapist = tuple(t_names), t_codes.astype(np.int64)
    centre = float(np.mean(session)) if time_centre is None else float(time_centre)
    return SessionGrid(
        clients=tuple(clients), therapists=therapists, client_therapist=client_therapist,
        cell_client=cell_client.astype(np.int64), session=cell_session, time=(cell_session - centre).astype(float),
        first=first, alliance=alliance, outcome=outcome, time_centre=centre, alliance_mean=float(a_mean),
        alliance_sd=float(a_sd), outcome_mean=float(y_mean), outcome_sd=float(y_sd), n_rows=len(data),
        n_missed_sessions=n_cells - len(data), n_lagged_pairs=pairs,
    )  # fmt: skip


# --------------------------------------------------------------------------------------------------
# model
# --------------------------------------------------------------------------------------------------


def build_lagged_latent_model(
    frame: pd.DataFrame | SessionGrid,
    *,
    outcome_lower_is_better: bool = True,
    detrend: bool = True,
    random_slopes: bool = True,
    time_centre: float | None = None,
) -> pm.Model:
    """The PyMC model of the module docstring.

    Parameters
    ----------
    frame : DataFrame or SessionGrid
        Long session table (``client``, ``session``, ``alliance``, ``outcome``, optional
        ``therapist``; blank cells allowed) or its :func:`session_grid`.
    outcome_lower_is_better : bool
        Sign alignment of the outcome (ignored for a ``SessionGrid``, which is aligned already).
    detrend : bool
        Latent client-specific linear trends of alliance and outcome (else common trends only).
    random_slopes : bool
        Random client slopes of the lagged alliance effect.
    time_centre : float, optional
        Session at which the client levels are defined (default: the mean session number).

    Returns
    -------
    pymc.Model
        Coordinates ``client``, ``therapist`` (with a therapist level), ``alliance_cell`` and
        ``outcome_cell`` (grid cells imputed); data-scale deterministics named as in
        :data:`TERMS` and :data:`VARIANCE_PARAMETERS`.
    """
    grid = (
        frame
        if isinstance(frame, SessionGrid)
        else session_grid(frame, outcome_lower_is_better=outcome_lower_is_better, time_centre=time_centre)
    )
    if grid.n_lagged_pairs < MIN_LAGGED_PAIRS:
        raise LaggedLatentError(
            f"{MODEL}: only {grid.n_lagged_pairs} pairs of consecutive sessions with alliance and outcome both "
            f"observed (at least {MIN_LAGGED_PAIRS} needed for the within-client dynamics); use the "
            "within_between model for data with few sessions per client"
        )
    miss_a = np.flatnonzero(np.isnan(grid.alliance))
    miss_y = np.flatnonzero(np.isnan(grid.outcome))
    nested = grid.client_therapist is not None
    coords = {"client": list(grid.clients), "alliance_cell": miss_a, "outcome_cell": miss_y}
    if nested:
        coords["therapist"] = list(grid.therapists)
    n_clients = len(grid.clients)
    s_a, s_y = grid.alliance_sd, grid.outcome_sd
    with pm.Model(coords=coords) as model:
        # between level: latent client levels (hierarchically centred), therapist effects (non-centred)
        alpha_a = pm.Normal("intercept_alliance_std", 0.0, 1.0)
        alpha_y = pm.Normal("intercept_outcome_std", 0.0, 1.0)
        beta_b = pm.Normal("beta_between_std", 0.0, 1.0)
        sd_la = pm.HalfNormal("sd_client_alliance_std", 1.0)
        sd_ly = pm.HalfNormal("sd_client_outcome_std", 1.0)
        mu_a, mu_y = alpha_a, alpha_y
        if nested:
            beta_t = pm.Normal("beta_therapist_std", 0.0, 1.0)
            sd_ta = pm.HalfNormal("sd_therapist_alliance_std", 1.0)
            sd_ty = pm.HalfNormal("sd_therapist_outcome_std", 1.0)
            z_ta = pm.Normal("therapist_alliance_z", 0.0, 1.0, dims="therapist")
            z_ty = pm.Normal("therapist_outcome_z", 0.0, 1.0, dims="therapist")
            tau_a = (sd_ta * z_ta)[grid.client_therapist]
            mu_a = alpha_a + tau_a
            mu_y = alpha_y + (sd_ty * z_ty)[grid.client_therapist] + beta_t * tau_a
        level_a = pm.Normal("level_alliance", mu_a, sd_la, dims="client")
        level_y = pm.Normal("level_outcome", mu_y + beta_b * (level_a - mu_a), sd_ly, dims="client")
        # trends
        gamma_a = pm.Normal("trend_alliance_std", 0.0, 0.2)
        gamma_y = pm.Normal("trend_outcome_std", 0.0, 0.2)
        if detrend:
            sd_ga = pm.HalfNormal("sd_alliance_trend_std", 0.1)
            sd_gy = pm.HalfNormal("sd_outcome_trend_std", 0.1)
            rho_g = pm.Deterministic("trend_correlation", 2.0 * pm.Beta("trend_correlation_u", 2.0, 2.0) - 1.0)
            z_ga = pm.Normal("trend_alliance_z", 0.0, 1.0, dims="client")
            z_gy = pm.Normal("trend_outcome_z", 0.0, 1.0, dims="client")
            trend_a = gamma_a + sd_ga * z_ga
            trend_y = gamma_y + sd_gy * (rho_g * z_ga + pt.sqrt(1.0 - rho_g**2) * z_gy)
        else:
            trend_a = pt.alloc(gamma_a, n_clients)
            trend_y = pt.alloc(gamma_y, n_clients)
        # within level (the random slopes b_i are integrated out in the likelihood)
        beta_w = pm.Normal("beta_within_std", 0.0, 0.5)
        sd_b = pm.HalfNormal("sd_within_slope_std", 0.25) if random_slopes else pt.as_tensor(0.0)
        phi_a = pm.Normal("alliance_lag", 0.0, 0.5)
        phi_y = pm.Normal("outcome_lag", 0.0, 0.5)
        delta = pm.Normal("outcome_to_alliance_std", 0.0, 0.5)
        sigma_a = pm.HalfNormal("sd_alliance_innovation_std", 1.0)
        sigma_y = pm.HalfNormal("sd_outcome_innovation_std", 1.0)
        rho = pm.Deterministic("innovation_correlation", 2.0 * pm.Beta("innovation_correlation_u", 2.0, 2.0) - 1.0)
        sigma0_a = pm.HalfNormal("sd_initial_alliance_std", 1.0)
        sigma0_y = pm.HalfNormal("sd_initial_outcome_std", 1.0)
        rho0 = pm.Deterministic("initial_correlation", 2.0 * pm.Beta("initial_correlation_u", 2.0, 2.0) - 1.0)
        a_miss = pm.Flat("alliance_missing", dims="alliance_cell") if miss_a.size else pt.zeros(0)
        y_miss = pm.Flat("outcome_missing", dims="outcome_cell") if miss_y.size else pt.zeros(0)
        theta = pt.stack([phi_a, phi_y, delta, sigma_a, sigma_y, rho, sigma0_a, sigma0_y, rho0, beta_w, sd_b])
        logp = lagged_latent_loglik(
            level_a, level_y, trend_a, trend_y, a_miss, y_miss, theta, grid.cell_client, grid.time,
            grid.first, np.nan_to_num(grid.alliance), np.nan_to_num(grid.outcome), miss_a, miss_y,
        )[0]  # fmt: skip
        pm.Potential("within_client_likelihood", logp)
        # data-scale summaries
        pm.Deterministic("alliance_within", beta_w * s_y / s_a)
        pm.Deterministic("outcome_to_alliance", delta * s_a / s_y)
        pm.Deterministic("alliance_between", beta_b * s_y / s_a)
        pm.Deterministic("session", gamma_y * s_y)
        pm.Deterministic("alliance_session", gamma_a * s_a)
        pm.Deterministic("sd_client_alliance", sd_la * s_a)
        pm.Deterministic("sd_client_outcome", sd_ly * s_y)
        if nested:
            pm.Deterministic("alliance_therapist", beta_t * s_y / s_a)
            pm.Deterministic("sd_therapist_alliance", sd_ta * s_a)
            pm.Deterministic("sd_therapist_outcome", sd_ty * s_y)
        if detrend:
            pm.Deterministic("sd_alliance_trend", sd_ga * s_a)
            pm.Deterministic("sd_outcome_trend", sd_gy * s_y)
        if random_slopes:
            pm.Deterministic("sd_within_slope", sd_b * s_y / s_a)
        pm.Deterministic("sd_alliance_innovation", sigma_a * s_a)
        pm.Deterministic("sd_outcome_innovation", sigma_y * s_y)
        pm.Deterministic("sd_initial_alliance", sigma0_a * s_a)
        pm.Deterministic("sd_initial_outcome", sigma0_y * s_y)
    return model


def reported_names(idata_or_model) -> list[str]:
    """The reported terms and variance parameters present in a model or posterior (diagnostics set)."""
    names = idata_or_model.posterior.data_vars if hasattr(idata_or_model, "posterior") else idata_or_model.named_vars
    return [v for v in (*TERMS, *VARIANCE_PARAMETERS) if v in names]


# --------------------------------------------------------------------------------------------------
# fitting
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LaggedLatentFit:
    """A checked posterior of the ``lagged_latent`` model and what it was fitted to."""

    idata: az.InferenceData
    diagnostics: Diagnostics
    attempts: int
    target_accept: float
    backend: str
    detrend: bool
    random_slopes: bool
    time_centre: float
    n_rows: int
    n_cells: int
    n_clients: int
    n_therapists: int
    n_missed_sessions: int
    n_imputed_alliance: int
    n_imputed_outcome: int


def fit_lagged_latent(
    frame: pd.DataFrame,
    *,
    outcome_lower_is_better: bool,
    seed: int,
    settings: SamplerSettings,
    detrend: bool,
    random_slopes: bool,
    time_centre: float | None = None,
    label: str = MODEL,
) -> LaggedLatentFit:
    """Build the model and sample it through :func:`alliancemeta.core.mcmc.fit`, checking every term and variance
    parameter of :func:`reported_names` (the per-client latent values are not checked one by one, but a divergence
    anywhere fails).  Raises :class:`LaggedLatentError` when the data cannot support the model and
    :class:`~alliancemeta.core.errors.SamplingError` when it does not converge after the retry."""
    grid = session_grid(frame, outcome_lower_is_better=outcome_lower_is_better, time_centre=time_centre)
    model = build_lagged_latent_model(grid, detrend=detrend, random_slopes=random_slopes)
    result = fit(model, settings, seed, label, reported_names(model))
    return LaggedLatentFit(
        idata=result.idata, diagnostics=result.diagnostics, attempts=result.attempts,
        target_accept=float(result.target_accept), backend=result.backend, detrend=detrend,
        random_slopes=random_slopes, time_centre=grid.time_centre, n_rows=grid.n_rows, n_cells=grid.n_cells,
        n_clients=len(grid.clients), n_therapists=len(grid.therapists), n_missed_sessions=grid.n_missed_sessions,
        n_imputed_alliance=int(np.isnan(grid.alliance).sum()), n_imputed_outcome=int(np.isnan(grid.outcome).sum()),
    )  # fmt: skip


# --------------------------------------------------------------------------------------------------
# summaries
# --------------------------------------------------------------------------------------------------


def _summary(idata, names, level: float) -> pd.DataFrame:
    post = idata.posterior
    alpha = (1.0 - level) / 2.0
    rows = []
    ess_bulk = az.ess(post[names], method="bulk")
    ess_tail = az.ess(post[names], method="tail")
    r_hat = az.rhat(post[names])
    for name in names:
        draws = post[name].to_numpy().reshape(-1)
        lb, ub = np.quantile(draws, [alpha, 1.0 - alpha])
        rows.append((name, float(draws.mean()), float(draws.std(ddof=1)), float(lb), float(ub),
                     float(ess_bulk[name]), float(ess_tail[name]), float(r_hat[name])))  # fmt: skip
    return pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS))


def lagged_latent_summary(idata, level: float) -> pd.DataFrame:
    """Posterior mean (``estimate``), SD (``se``), equal-tailed interval at ``level`` and diagnostics of every term of
    :data:`TERMS` and variance parameter of :data:`VARIANCE_PARAMETERS` present, terms first (columns
    :data:`SUMMARY_COLUMNS`; data scale: SDs in alliance or outcome units, per session for the trends)."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie strictly between 0 and 1, got {level!r}")
    return _summary(idata, reported_names(idata), level)
